//! keel-raftlog's decoders on any bytes (what its recovery scans): records one after another
//! as the scanner walks them, and the segment header.
#![no_main]

use keel_raftlog::format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = format::decode_seg_header(data);
    let mut pos = 0;
    while pos < data.len() {
        match format::decode(&data[pos..]) {
            Ok((_, used)) => {
                assert!(
                    used > 0 && used <= data.len() - pos,
                    "record of {used} bytes"
                );
                pos += used;
            }
            Err(_) => break,
        }
    }
});
