//! The client protocol parser on any bytes, as a connection would feed it: parse, drop what
//! was consumed, swallow what a refused store asks, until it needs more bytes or closes. Also
//! checks the parser's own promises: it never consumes more than it was given, and a request
//! it finishes always consumed something (otherwise a connection would spin).
#![no_main]

use keel_node::protocol::{parse, Limits, Parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut pos = 0;
    // Each step consumes at least one byte or ends, so this is bounded by the input's length.
    while pos < data.len() {
        let buf = &data[pos..];
        match parse(buf, &limits) {
            Parse::Incomplete => break,
            Parse::Done { consumed, .. } => {
                assert!(
                    consumed > 0 && consumed <= buf.len(),
                    "consumed {consumed} of {}",
                    buf.len()
                );
                pos += consumed;
            }
            Parse::Invalid {
                consumed,
                swallow,
                close,
                ..
            } => {
                assert!(
                    consumed <= buf.len(),
                    "consumed {consumed} of {}",
                    buf.len()
                );
                if close {
                    break;
                }
                assert!(
                    consumed > 0 || swallow > 0,
                    "an error that consumes nothing"
                );
                pos += consumed + swallow;
            }
        }
    }
});
