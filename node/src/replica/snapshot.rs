//! Raft snapshots of a partition, for replicas that fall behind the leader's compacted log.
//!
//! Leader: raft-rs asks the raftlog's snapshot provider; the first ask starts a build task and
//! answers "temporarily unavailable" (raft-rs asks again on the next heartbeat round). The build
//! captures the partition's index entries at the group's applied index, with no await between
//! (so they are exactly that index's state), then reads the values and encodes them. Sending:
//! the data goes as numbered chunk frames ahead of the MsgSnapshot (which carries only the
//! metadata) on the same connection, so they arrive first and in order.
//!
//! Follower: chunks are collected per group; when the MsgSnapshot arrives whole, the partition is
//! replaced in the engine at once (a flush record, then a put per item) and checkpointed, and only
//! then is the message stepped into raft-rs, which persists the snapshot metadata in the
//! raftlog. A crash between the checkpoint and that persistence is repaired at start-up (the
//! checkpoint is ahead of the raftlog: the raftlog is reset to the checkpoint's index and term).
//!
//! Data layout: u8 version, u32 peer count, then per peer: u64 node, u8 length, "IP:PORT" (the
//! leader's address book, so a replica that missed a `member_add` learns where the new member
//! is); u32 item count, then per item: u32 key length, key, u32 flags, u32 exptime, u64 cas,
//! u8 bits, u32 value length, value (little-endian).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::engine::SnapshotItem;

use super::command::DecodeError;

const VERSION: u8 = 2;
/// Bytes of snapshot data per transport frame.
pub const CHUNK_BYTES: usize = 1 << 20;

pub fn encode(peers: &BTreeMap<u64, SocketAddr>, items: &[SnapshotItem]) -> Vec<u8> {
    let size: usize = items.iter().map(|i| 25 + i.key.len() + i.value.len()).sum();
    let mut b = Vec::with_capacity(9 + 64 * peers.len() + size);
    b.push(VERSION);
    b.extend_from_slice(&super::checkpoint::encode_peers(peers));
    b.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for i in items {
        b.extend_from_slice(&(i.key.len() as u32).to_le_bytes());
        b.extend_from_slice(&i.key);
        b.extend_from_slice(&i.flags.to_le_bytes());
        b.extend_from_slice(&i.exptime.to_le_bytes());
        b.extend_from_slice(&i.cas.to_le_bytes());
        b.push(i.bits);
        b.extend_from_slice(&(i.value.len() as u32).to_le_bytes());
        b.extend_from_slice(&i.value);
    }
    b
}

pub type Decoded = (BTreeMap<u64, SocketAddr>, Vec<SnapshotItem>);

/// An item's fixed fields: key length, flags, exptime, cas, bits, value length.
const ITEM_FIXED_BYTES: usize = 4 + 4 + 4 + 8 + 1 + 4;

pub fn decode(b: &[u8]) -> Result<Decoded, DecodeError> {
    let bad = |why| DecodeError {
        what: "snapshot",
        why,
    };
    match b.first() {
        None => return Err(bad("truncated")),
        Some(&v) if v != VERSION => return Err(bad("unknown version")),
        Some(_) => {}
    }
    let (peers, mut at) =
        super::checkpoint::decode_peers(b, 1).ok_or(bad("truncated or bad peer list"))?;
    let count = b.get(at..at + 4).ok_or(bad("truncated"))?;
    let n = u32::from_le_bytes(count.try_into().unwrap()) as usize;
    at += 4;
    // Room for no more items than the bytes left could hold (each takes at least its fixed
    // fields): a count from a peer must not reserve memory the snapshot does not carry.
    let mut items = Vec::with_capacity(n.min((b.len() - at) / ITEM_FIXED_BYTES));
    let mut take = |n: usize| -> Result<&[u8], DecodeError> {
        let s = b.get(at..at + n).ok_or(bad("truncated"))?;
        at += n;
        Ok(s)
    };
    for _ in 0..n {
        let klen = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
        let key = take(klen)?.to_vec();
        let flags = u32::from_le_bytes(take(4)?.try_into().unwrap());
        let exptime = u32::from_le_bytes(take(4)?.try_into().unwrap());
        let cas = u64::from_le_bytes(take(8)?.try_into().unwrap());
        let bits = take(1)?[0];
        let vlen = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
        let value = take(vlen)?.to_vec();
        items.push(SnapshotItem {
            key,
            flags,
            exptime,
            cas,
            bits,
            value,
        });
    }
    if at != b.len() {
        return Err(bad("trailing bytes"));
    }
    Ok((peers, items))
}

/// A chunk frame's body: (group, snapshot index, chunk number, chunk count, bytes).
pub fn encode_chunk(group: u64, index: u64, no: u32, count: u32, bytes: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + bytes.len());
    b.extend_from_slice(&group.to_le_bytes());
    b.extend_from_slice(&index.to_le_bytes());
    b.extend_from_slice(&no.to_le_bytes());
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(bytes);
    b
}

pub fn decode_chunk(b: &[u8]) -> Option<(u64, u64, u32, u32, &[u8])> {
    if b.len() < 24 {
        return None;
    }
    Some((
        u64::from_le_bytes(b[0..8].try_into().unwrap()),
        u64::from_le_bytes(b[8..16].try_into().unwrap()),
        u32::from_le_bytes(b[16..20].try_into().unwrap()),
        u32::from_le_bytes(b[20..24].try_into().unwrap()),
        &b[24..],
    ))
}

/// Chunks being received for one group's snapshot.
#[derive(Default)]
pub struct Incoming {
    pub index: u64,
    pub next: u32,
    pub count: u32,
    pub data: Vec<u8>,
}

impl Incoming {
    /// Adds chunk `no` of `count` for snapshot `index`; chunks of another snapshot or out of
    /// order restart the collection (the leader resends the whole snapshot after a failure).
    pub fn add(&mut self, index: u64, no: u32, count: u32, bytes: &[u8]) {
        if no == 0 || index != self.index || no != self.next || count != self.count {
            *self = Incoming {
                index,
                next: 0,
                count,
                data: Vec::new(),
            };
            if no != 0 {
                return;
            }
        }
        self.data.extend_from_slice(bytes);
        self.next = no + 1;
    }

    /// The whole data of snapshot `index`, if every chunk of it arrived.
    pub fn take(&mut self, index: u64) -> Option<Vec<u8>> {
        (self.index == index && self.count > 0 && self.next == self.count)
            .then(|| std::mem::take(&mut self.data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_round_trip_and_truncation_is_refused() {
        let items = vec![
            SnapshotItem {
                key: b"k1".to_vec(),
                flags: 7,
                exptime: 0,
                cas: 1 << 20,
                bits: 1,
                value: b"value".to_vec(),
            },
            SnapshotItem {
                key: b"k2".to_vec(),
                flags: 0,
                exptime: 1_900_000_000,
                cas: 3,
                bits: 0,
                value: vec![],
            },
        ];
        let peers: BTreeMap<u64, SocketAddr> = [
            (1, "127.0.0.1:7101".parse().unwrap()),
            (4, "[::1]:7401".parse().unwrap()),
        ]
        .into_iter()
        .collect();
        let b = encode(&peers, &items);
        assert_eq!(decode(&b).unwrap(), (peers.clone(), items));
        for cut in 0..b.len() {
            assert!(decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(decode(&long).is_err());
        assert_eq!(
            decode(&encode(&BTreeMap::new(), &[])).unwrap(),
            (BTreeMap::new(), vec![])
        );
    }

    #[test]
    fn chunks_reassemble_only_when_complete_and_in_order() {
        let data: Vec<u8> = (0..250u8).collect();
        let parts: Vec<&[u8]> = data.chunks(100).collect();
        let mut inc = Incoming::default();
        for (i, p) in parts.iter().enumerate() {
            let frame = encode_chunk(5, 42, i as u32, 3, p);
            let (g, idx, no, count, bytes) = decode_chunk(&frame).unwrap();
            assert_eq!((g, idx), (5, 42));
            assert_eq!(inc.take(42), None, "incomplete after chunk {i}");
            inc.add(idx, no, count, bytes);
        }
        assert_eq!(inc.take(42), Some(data.clone()));
        // A missing middle chunk never yields data.
        let mut inc = Incoming::default();
        inc.add(42, 0, 3, parts[0]);
        inc.add(42, 2, 3, parts[2]);
        assert_eq!(inc.take(42), None);
    }
}
