//! A Raft snapshot of a partition and its transport chunks, on any bytes (a peer sends them).
#![no_main]

use keel_node::replica::snapshot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((peers, items)) = snapshot::decode(data) {
        // What decodes must encode to bytes that decode to the same thing.
        let (peers2, items2) = snapshot::decode(&snapshot::encode(&peers, &items)).unwrap();
        assert_eq!((peers, items), (peers2, items2));
    }
    let _ = snapshot::decode_chunk(data);
});
