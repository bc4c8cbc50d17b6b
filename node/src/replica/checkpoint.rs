//! Engine checkpoints: the value-log seq through which the engine is synced, each Raft
//! group's applied index at that point, and the peer address of every node this node knows
//! (members added at run time are not in `--peers`). Recovery rebuilds the engine as of the checkpoint
//! (ignoring later value-log records) and the Raft log replays from each applied index; the Raft
//! log drops entries a checkpoint covers.
//!
//! Two slots at the start of the shard's region, written alternately, so a torn write of one
//! leaves the other. Slot layout (little-endian; docs/design.md draws it too):
//! ```text
//!  0  u64 magic       CKPT_MAGIC
//!  8  u64 generation  +1 per checkpoint; the valid slot with the highest one wins
//! 16  u64 value_seq   value-log records up to this seq are part of the checkpoint
//! 24  u32 groups      n
//! 28  u32 crc32c      over bytes [0, 28) and [32, end)
//! 32  n x (u64 group, u64 applied index, u64 term of that entry)
//!     u32 peers m, then m x (u64 node, u8 length, that many bytes of "IP:PORT")   (= end)
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;

use keel_nvme::{align_up, Device, IoError, Region};

pub const CKPT_MAGIC: u64 = u64::from_le_bytes(*b"KEELCKP2");
/// One slot; holds 4,265 groups per shard and 512 peers.
pub const SLOT_BYTES: u64 = 128 << 10;
/// Both slots.
pub const AREA_BYTES: u64 = 2 * SLOT_BYTES;
pub const GROUPS_MAX: usize = (SLOT_BYTES as usize - 32 - PEERS_BYTES_MAX) / GROUP_BYTES;
const GROUP_BYTES: usize = 24;
/// Room kept for the peer list: 512 nodes with the longest IPv6 socket address.
const PEERS_BYTES_MAX: usize = 4 + 512 * (9 + 47);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub generation: u64,
    pub value_seq: u64,
    /// group -> (applied index, its term)
    pub applied: BTreeMap<u64, (u64, u64)>,
    /// node -> where its shard 0 accepts peers
    pub peers: BTreeMap<u64, SocketAddr>,
}

fn crc(b: &[u8], end: usize) -> u32 {
    let c = crc32c::crc32c(&b[..28]);
    crc32c::crc32c_append(c, &b[32..end])
}

pub fn encode(c: &Checkpoint) -> Vec<u8> {
    assert!(c.applied.len() <= GROUPS_MAX);
    let n = c.applied.len();
    let peers = encode_peers(&c.peers);
    assert!(
        peers.len() <= PEERS_BYTES_MAX,
        "too many peers for a checkpoint slot"
    );
    let end = 32 + GROUP_BYTES * n + peers.len();
    let mut b = vec![0u8; align_up(end as u64) as usize];
    b[0..8].copy_from_slice(&CKPT_MAGIC.to_le_bytes());
    b[8..16].copy_from_slice(&c.generation.to_le_bytes());
    b[16..24].copy_from_slice(&c.value_seq.to_le_bytes());
    b[24..28].copy_from_slice(&(n as u32).to_le_bytes());
    for (i, (g, (a, t))) in c.applied.iter().enumerate() {
        let at = 32 + GROUP_BYTES * i;
        b[at..at + 8].copy_from_slice(&g.to_le_bytes());
        b[at + 8..at + 16].copy_from_slice(&a.to_le_bytes());
        b[at + 16..at + 24].copy_from_slice(&t.to_le_bytes());
    }
    b[end - peers.len()..end].copy_from_slice(&peers);
    let sum = crc(&b, end);
    b[28..32].copy_from_slice(&sum.to_le_bytes());
    b
}

/// A peer address book as bytes (checkpoints and snapshots carry it): u32 count, then per
/// peer u64 node, u8 length, "IP:PORT".
pub fn encode_peers(peers: &BTreeMap<u64, SocketAddr>) -> Vec<u8> {
    let mut b = (peers.len() as u32).to_le_bytes().to_vec();
    for (node, addr) in peers {
        let a = addr.to_string();
        b.extend_from_slice(&node.to_le_bytes());
        b.push(a.len() as u8);
        b.extend_from_slice(a.as_bytes());
    }
    b
}

/// The address book at `at`: the map and its end offset, or None if it does not fit in `b`.
pub fn decode_peers(b: &[u8], mut at: usize) -> Option<(BTreeMap<u64, SocketAddr>, usize)> {
    let m = u32::from_le_bytes(b.get(at..at + 4)?.try_into().unwrap()) as usize;
    at += 4;
    let mut peers = BTreeMap::new();
    for _ in 0..m.min(PEERS_BYTES_MAX) {
        let node = u64::from_le_bytes(b.get(at..at + 8)?.try_into().unwrap());
        let len = *b.get(at + 8)? as usize;
        let addr = std::str::from_utf8(b.get(at + 9..at + 9 + len)?)
            .ok()?
            .parse()
            .ok()?;
        peers.insert(node, addr);
        at += 9 + len;
    }
    Some((peers, at))
}

/// `None` for a blank, torn or damaged slot.
pub fn decode(b: &[u8]) -> Option<Checkpoint> {
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    if b.len() < 32 || u64_at(0) != CKPT_MAGIC {
        return None;
    }
    let n = u32::from_le_bytes(b[24..28].try_into().unwrap()) as usize;
    if n > GROUPS_MAX || b.len() < 32 + GROUP_BYTES * n {
        return None;
    }
    // A damaged peer count or length only decides which bytes the CRC covers; it fails then.
    let (peers, end) = decode_peers(b, 32 + GROUP_BYTES * n)?;
    if crc(b, end) != u32::from_le_bytes(b[28..32].try_into().unwrap()) {
        return None;
    }
    Some(Checkpoint {
        peers,
        generation: u64_at(8),
        value_seq: u64_at(16),
        applied: (0..n)
            .map(|i| {
                let at = 32 + GROUP_BYTES * i;
                (u64_at(at), (u64_at(at + 8), u64_at(at + 16)))
            })
            .collect(),
    })
}

/// The newest valid checkpoint in `area`, or the empty one of a new shard.
pub async fn load<D: Device>(area: &Region<D>) -> Result<Checkpoint, IoError> {
    let mut best = Checkpoint::default();
    for slot in 0..2 {
        let b = area.read_at(slot * SLOT_BYTES, SLOT_BYTES as usize).await?;
        if let Some(c) = decode(&b) {
            if c.generation > best.generation {
                best = c;
            }
        }
    }
    Ok(best)
}

/// Writes `c` into the slot its generation selects and syncs: once this returns, a crash
/// recovers from `c` (or a later one).
pub async fn store<D: Device>(area: &Region<D>, c: &Checkpoint) -> Result<(), IoError> {
    let bytes = encode(c);
    let mut buf = area.alloc(bytes.len());
    buf.copy_from_slice(&bytes);
    area.write_at(buf, (c.generation % 2) * SLOT_BYTES).await?;
    // fdatasync: the checkpoint is what recovery starts from, so it must be on stable storage
    // before the Raft log drops the entries it covers.
    area.sync().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_any_flipped_bit_is_refused() {
        let c = Checkpoint {
            generation: 7,
            value_seq: 123,
            applied: [(0, (10, 2)), (2, (99, 3)), (64, (1, 1))]
                .into_iter()
                .collect(),
            peers: [
                (1, "127.0.0.1:7101".parse().unwrap()),
                (4, "[::1]:7401".parse().unwrap()),
            ]
            .into_iter()
            .collect(),
        };
        let b = encode(&c);
        assert_eq!(decode(&b), Some(c));
        let end = 32 + GROUP_BYTES * 3 + 4 + 9 + 14 + 9 + 10;
        assert!(b[end..].iter().all(|&x| x == 0), "peers end where expected");
        for bit in 0..end * 8 {
            let mut bad = b.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode(&bad), None, "bit {bit}");
        }
        assert_eq!(decode(&vec![0; 4096]), None);
    }
}
