//! Raft entry data (a leader proposes it; every replica applies what decodes), forwarded
//! requests and their replies, on any bytes.
#![no_main]

use keel_node::replica::command;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((now, ops)) = command::decode_entry(data) {
        if (1..=command::ENTRY_OPS_MAX).contains(&ops.len()) {
            let again = command::decode_entry(&command::encode_entry(now, ops.iter(), 0)).unwrap();
            // Op has no PartialEq (nothing else compares ops); its Debug form shows every field.
            assert_eq!(format!("{again:?}"), format!("{:?}", (now, ops)));
        }
    }
    let _ = command::decode_forward(data);
    let _ = command::decode_reply(data);
});
