//! What a peer connection carries, on any bytes: the hello, then frames, each frame's payload
//! taken apart as the replica layer does (kind byte; a raft-rs protobuf message, a forward, a
//! reply or a snapshot chunk).
#![no_main]

use keel_node::replica::{command, snapshot};
use keel_node::transport::wire::{decode_frame, Decoded, Hello, FRAME_HEADER_BYTES, HELLO_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((hello, mut rest)) = data.split_first_chunk::<HELLO_BYTES>() else {
        return;
    };
    let _ = Hello::decode(hello);
    while let Ok(Decoded::Frame { consumed }) = decode_frame(rest, 1 << 20) {
        assert!(consumed >= FRAME_HEADER_BYTES && consumed <= rest.len());
        let payload = &rest[FRAME_HEADER_BYTES..consumed];
        match payload.split_first() {
            Some((1, body)) if body.len() >= 8 => {
                let _ = <raft::eraftpb::Message as protobuf::Message>::parse_from_bytes(&body[8..]);
            }
            Some((2, body)) => drop(command::decode_forward(body)),
            Some((3, body)) => drop(command::decode_reply(body)),
            Some((4, body)) => drop(snapshot::decode_chunk(body)),
            _ => {}
        }
        rest = &rest[consumed..];
    }
});
