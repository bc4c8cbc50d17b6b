//! Writes the seed corpus: valid encodings from Keel's own encoders, so the fuzzers start past
//! the magic numbers and checksums and mutate real structure. Run from the repository root:
//! `cargo +nightly run --manifest-path fuzz/Cargo.toml --example seeds` (scripts/fuzz does).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use keel_node::engine::format::{self as vlog, Header, Kind, SegHeader, Superblock};
use keel_node::engine::{Op, OpResult, SnapshotItem, StoreMode};
use keel_node::replica::{checkpoint, command, snapshot};
use keel_node::transport::wire::{encode_frame, Hello};
use keel_raftlog::format as rlog;
use raft::eraftpb::{ConfState, Entry, HardState, Message, MessageType};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).expect("create the corpus directory");
    std::fs::write(dir.join(name), bytes).expect("write a seed");
}

fn store(key: &[u8], data: &[u8]) -> Op {
    Op::Store {
        mode: StoreMode::Set,
        key: key.to_vec(),
        flags: 7,
        exptime: 60,
        cas: Some(41),
        data: data.to_vec(),
        invalidate: false,
    }
}

fn peers() -> BTreeMap<u64, SocketAddr> {
    BTreeMap::from([
        (1, "127.0.0.1:7100".parse().unwrap()),
        (2, "[::1]:7200".parse().unwrap()),
    ])
}

fn main() {
    // The client protocol: one file per family of commands, plus a pipeline of all of them.
    let lines: &[(&str, &[u8])] = &[
        ("storage", b"set k 0 0 5\r\nhello\r\nadd k 1 2 1 noreply\r\nx\r\ncas k 0 0 1 9\r\ny\r\n"),
        ("retrieval", b"get a b c\r\ngets a\r\ngat 10 a b\r\ngats 0 a\r\n"),
        ("arith", b"incr n 1\r\ndecr n 18446744073709551615\r\ntouch k 10\r\ndelete k\r\n"),
        ("meta", b"mg k v c f t s k O123 q\r\nms k 2 T10 F5 I\r\nhi\r\nmd k q\r\nma n N0 J13 MD\r\nmn\r\nme k\r\n"),
        ("other", b"stats\r\nstats settings\r\nflush_all 10\r\nversion\r\nverbosity 1\r\nmembers\r\nadmin_auth 0123456789abcdef\r\nquit\r\n"),
        ("bad", b"set k 0 0 99999999999\r\nget\r\nGET HTTP/1.1\r\nms k S100\r\nshort\r\n"),
    ];
    let mut all = Vec::new();
    for (name, bytes) in lines {
        write("protocol", name, bytes);
        all.extend_from_slice(bytes);
    }
    write("protocol", "pipeline", &all);

    // The value log: a record of each kind, a segment header, a superblock.
    for (i, kind) in [Kind::Put, Kind::Delete, Kind::Touch, Kind::Flush]
        .into_iter()
        .enumerate()
    {
        let (key, value): (&[u8], &[u8]) = (
            b"feature:123",
            if kind == Kind::Put {
                b"value bytes"
            } else {
                b""
            },
        );
        let h = Header {
            seq: 10 + i as u64,
            cas: 99,
            value_len: value.len() as u32,
            flags: 3,
            exptime: 0,
            time: 1_800_000_000,
            key_len: key.len() as u16,
            kind,
            bits: 0,
        };
        let mut out = Vec::new();
        vlog::encode(&mut out, &h, key, value);
        write("value_log", &format!("record-{kind:?}"), &out);
    }
    let mut seg = vec![0u8; vlog::SEG_HEADER_BYTES as usize];
    vlog::encode_seg_header(
        &mut seg,
        &SegHeader {
            seg_no: 3,
            first_seq: 1000,
        },
    );
    write("value_log", "segment-header", &seg);
    let mut sb = vec![0u8; 4096];
    vlog::encode_superblock(
        &mut sb,
        &Superblock {
            shards: 2,
            segment_bytes: 16 << 20,
            device_bytes: 2 << 30,
            region_bytes: 1 << 30,
            raftlog_bytes: 128 << 20,
            node_id: 1,
            device_index: 0,
            device_count: 1,
            first_shard: 0,
            node_shards: 2,
        },
    );
    write("value_log", "superblock", &sb);

    // keel-raftlog: one record of each kind in a row, and a segment header.
    let conf = ConfState {
        voters: vec![1, 2, 3],
        learners: vec![4],
        ..Default::default()
    };
    let mut hs = HardState::default();
    hs.term = 5;
    hs.vote = 2;
    hs.commit = 17;
    let mut entry = Entry::default();
    entry.index = 18;
    entry.term = 5;
    entry.data = command::encode_entry(1_800_000_000, [store(b"k", b"v")].iter(), 16).into();
    let recs = [
        rlog::Rec::Entry(entry),
        rlog::Rec::HardState(hs.clone()),
        rlog::Rec::ConfState(conf.clone()),
        rlog::Rec::Snapshot {
            index: 9,
            term: 4,
            conf: conf.clone(),
        },
        rlog::Rec::Compact { index: 8, term: 4 },
        rlog::Rec::Create(conf.clone()),
        rlog::Rec::State {
            hs,
            conf,
            compacted_index: 8,
            compacted_term: 4,
        },
    ];
    let mut log = Vec::new();
    for (i, rec) in recs.into_iter().enumerate() {
        rlog::encode(
            &mut log,
            &rlog::Record {
                lsn: 100 + i as u64,
                group: 7,
                rec,
            },
        );
    }
    write("raftlog", "records", &log);
    let mut rseg = vec![0u8; rlog::SEG_HEADER_BYTES as usize];
    rlog::encode_seg_header(
        &mut rseg,
        &rlog::SegHeader {
            seq: 4,
            first_lsn: 100,
            segment_bytes: 8 << 20,
            oldest_seq: 2,
        },
    );
    write("raftlog", "segment-header", &rseg);

    // A checkpoint slot.
    let c = checkpoint::Checkpoint {
        generation: 12,
        value_seq: 3400,
        applied: BTreeMap::from([(0, (17, 5)), (1, (4, 2))]),
        peers: peers(),
    };
    write("checkpoint", "slot", &checkpoint::encode(&c));

    // A snapshot and one of its chunks.
    let items = vec![SnapshotItem {
        key: b"feature:9".to_vec(),
        flags: 1,
        exptime: 0,
        cas: 77,
        bits: 0,
        value: b"snapshot value".to_vec(),
    }];
    let snap = snapshot::encode(&peers(), &items);
    write("snapshot", "snapshot", &snap);
    write(
        "snapshot",
        "chunk",
        &snapshot::encode_chunk(7, 18, 0, 1, &snap),
    );

    // Entries, forwards, replies.
    let ops = [
        store(b"a", b"1"),
        Op::Delete {
            key: b"b".to_vec(),
            cas: None,
            invalidate: Some(Some(30)),
        },
    ];
    write(
        "entry",
        "entry",
        &command::encode_entry(1_800_000_000, ops.iter(), 32),
    );
    write(
        "entry",
        "forward",
        &command::encode_forward(5, 1, 1_800_000_000, 3, &ops[0]),
    );
    write(
        "entry",
        "reply",
        &command::encode_reply(5, &OpResult::Stored { cas: 1 << 24 }),
    );

    // A peer connection: a hello, then a frame of each payload kind.
    let hello = Hello {
        from_node: 1,
        from_shard: 0,
        to_node: 2,
        to_shard: 1,
        auth: false,
    };
    let mut conn = hello.encode().to_vec();
    let mut msg = Message::default();
    msg.set_msg_type(MessageType::MsgAppend);
    msg.to = 2;
    msg.from = 1;
    msg.term = 5;
    let mut raft_payload = vec![1u8];
    raft_payload.extend_from_slice(&7u64.to_le_bytes());
    raft_payload.extend_from_slice(&protobuf::Message::write_to_bytes(&msg).unwrap());
    let mut forward = vec![2u8];
    forward.extend_from_slice(&command::encode_forward(5, 1, 1_800_000_000, 3, &ops[0]));
    let mut reply = vec![3u8];
    reply.extend_from_slice(&command::encode_reply(5, &OpResult::Deleted));
    let mut chunk = vec![4u8];
    chunk.extend_from_slice(&snapshot::encode_chunk(7, 18, 0, 1, b"part"));
    for p in [raft_payload, forward, reply, chunk] {
        encode_frame(&p, &mut conn);
    }
    write("peer_frame", "connection", &conn);
    println!("seeds written under fuzz/corpus/");
}
