//! The value log's decoders on any bytes (what recovery reads from a damaged or foreign
//! device): a record, a segment header and the device superblock. They may refuse; they must
//! not panic, and a record they accept lies within the bytes given.
#![no_main]

use keel_node::engine::format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = format::decode(data, 1 << 20) {
        assert!(r.key.len() + r.value.len() + format::HEADER_BYTES <= data.len());
    }
    let _ = format::decode_seg_header(data);
    let _ = format::decode_superblock(data);
});
