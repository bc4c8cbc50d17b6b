//! An engine checkpoint slot on any bytes (a torn or foreign slot must be refused, not crash
//! the start), and the peer address book inside it. A slot that decodes encodes back the same.
#![no_main]

use keel_node::replica::checkpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(c) = checkpoint::decode(data) {
        let again = checkpoint::decode(&checkpoint::encode(&c));
        assert_eq!(again.as_ref(), Some(&c));
    }
    let _ = checkpoint::decode_peers(data, 0);
});
