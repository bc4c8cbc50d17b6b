//! On-disk framing: the segment header block and the record. Pure encode/decode, no I/O.
//!
//! Every integer is fixed-size little-endian. The byte layout is drawn in docs/design.md.

use raft::eraftpb::{ConfState, Entry, EntryType, HardState};

/// Bytes of the segment header block: the first block of every segment holds only the header,
/// so records start block aligned and the header can be written (or overwritten) whole.
pub const SEG_HEADER_BYTES: u64 = keel_nvme::BLOCK_BYTES;
pub const SEG_MAGIC: [u8; 8] = *b"KEELRLSG";
pub const SEG_VERSION: u32 = 1;
/// Bytes of the segment header that carry data (the rest of the block is zero).
const SEG_HEADER_USED: usize = 52;

pub const REC_MAGIC: u32 = u32::from_le_bytes(*b"KRL1");
// Recovery tells padding from a record by the record's first byte.
const _: () = assert!(REC_MAGIC.to_le_bytes()[0] != 0);
pub const REC_HEADER_BYTES: usize = 48;
/// A record's payload is bounded by its u32 length field; the segment bounds it further.
pub const PAYLOAD_BYTES_MAX: usize = u32::MAX as usize;

const _: () = assert!(SEG_HEADER_USED <= SEG_HEADER_BYTES as usize);
const _: () = assert!(REC_HEADER_BYTES % 8 == 0);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegHeader {
    pub seq: u64,
    pub first_lsn: u64,
    pub segment_bytes: u64,
    /// Sequence number of the oldest segment still needed when this one was opened: recovery
    /// starts there, never at an older (stale) segment even if its number happens to continue
    /// the chain.
    pub oldest_seq: u64,
}

pub fn encode_seg_header(out: &mut [u8], h: &SegHeader) {
    assert!(out.len() >= SEG_HEADER_BYTES as usize);
    out[..SEG_HEADER_BYTES as usize].fill(0);
    out[0..8].copy_from_slice(&SEG_MAGIC);
    out[8..12].copy_from_slice(&SEG_VERSION.to_le_bytes());
    out[16..24].copy_from_slice(&h.seq.to_le_bytes());
    out[24..32].copy_from_slice(&h.first_lsn.to_le_bytes());
    out[32..40].copy_from_slice(&h.segment_bytes.to_le_bytes());
    out[40..48].copy_from_slice(&h.oldest_seq.to_le_bytes());
    let crc = crc32c::crc32c(&out[0..48]);
    out[48..52].copy_from_slice(&crc.to_le_bytes());
}

/// `None` when the block holds no valid header (never written, zeroed, torn, or foreign).
pub fn decode_seg_header(b: &[u8]) -> Option<SegHeader> {
    if b.len() < SEG_HEADER_USED || b[0..8] != SEG_MAGIC || u32_at(b, 8) != SEG_VERSION {
        return None;
    }
    if crc32c::crc32c(&b[0..48]) != u32_at(b, 48) {
        return None;
    }
    Some(SegHeader {
        seq: u64_at(b, 16),
        first_lsn: u64_at(b, 24),
        segment_bytes: u64_at(b, 32),
        oldest_seq: u64_at(b, 40),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Entry = 1,
    HardState = 2,
    ConfState = 3,
    Snapshot = 4,
    Compact = 5,
    Create = 6,
    /// One group's whole state, written at the start of every segment.
    State = 7,
    /// The group is gone (its replica moved to another node).
    Drop = 8,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Entry,
            2 => Kind::HardState,
            3 => Kind::ConfState,
            4 => Kind::Snapshot,
            5 => Kind::Compact,
            6 => Kind::Create,
            7 => Kind::State,
            8 => Kind::Drop,
            _ => return None,
        })
    }
}

/// What a record says, decoded. Recovery and live mutations both apply these (see `state.rs`),
/// so memory after recovery is built by the same code as memory before the crash.
#[derive(Clone, Debug, PartialEq)]
pub enum Rec {
    /// Append `entry` at `entry.index`, dropping any entry at or after that index first.
    Entry(Entry),
    HardState(HardState),
    ConfState(ConfState),
    Snapshot {
        index: u64,
        term: u64,
        conf: ConfState,
    },
    Compact {
        index: u64,
        term: u64,
    },
    Create(ConfState),
    State {
        hs: HardState,
        conf: ConfState,
        compacted_index: u64,
        compacted_term: u64,
    },
    /// Forget the group: its entries, hard state and configuration.
    Drop,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub lsn: u64,
    pub group: u64,
    pub rec: Rec,
}

/// Why bytes at a position are not a record. In the newest segment any of these ends the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bad {
    /// A zero magic: padding or never-written space.
    Zero,
    Magic,
    /// Header or payload runs past the bytes available.
    Short,
    Crc,
    Payload(&'static str),
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::Zero => f.write_str("zeros where a record should be"),
            Bad::Magic => f.write_str("bad record magic"),
            Bad::Short => f.write_str("record runs past the end of the segment"),
            Bad::Crc => f.write_str("CRC32C mismatch"),
            Bad::Payload(why) => write!(f, "bad payload: {why}"),
        }
    }
}

/// `record_bytes` of an entry, without building the `Rec`.
pub fn entry_record_bytes(e: &Entry) -> usize {
    REC_HEADER_BYTES + 12 + e.data.len() + e.context.len()
}

/// `record_bytes` of a group's state record, without building the `Rec`.
pub fn state_record_bytes(conf: &ConfState) -> usize {
    REC_HEADER_BYTES + 24 + conf_bytes(conf)
}

fn conf_bytes(c: &ConfState) -> usize {
    20 + 8 * (c.voters.len() + c.learners.len() + c.voters_outgoing.len() + c.learners_next.len())
}

fn put_conf(out: &mut Vec<u8>, c: &ConfState) {
    let lists = [&c.voters, &c.learners, &c.voters_outgoing, &c.learners_next];
    for l in lists {
        out.extend_from_slice(&(l.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(&[c.auto_leave as u8, 0, 0, 0]);
    for l in lists {
        for v in l.iter() {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

fn get_conf(p: &[u8]) -> Result<ConfState, Bad> {
    if p.len() < 20 {
        return Err(Bad::Payload("conf state header"));
    }
    let counts: Vec<usize> = (0..4).map(|i| u32_at(p, i * 4) as usize).collect();
    let total: usize = counts.iter().sum();
    if p.len() != 20 + total * 8 || p[16] > 1 {
        return Err(Bad::Payload("conf state length"));
    }
    let mut at = 20;
    let mut list = |n: usize| {
        let v: Vec<u64> = (0..n).map(|i| u64_at(p, at + i * 8)).collect();
        at += n * 8;
        v
    };
    Ok(ConfState {
        voters: list(counts[0]),
        learners: list(counts[1]),
        voters_outgoing: list(counts[2]),
        learners_next: list(counts[3]),
        auto_leave: p[16] == 1,
        ..Default::default()
    })
}

/// Bytes the record will take on disk (header + payload).
pub fn record_bytes(rec: &Rec) -> usize {
    REC_HEADER_BYTES
        + match rec {
            Rec::Entry(e) => return entry_record_bytes(e),
            Rec::HardState(_) => 8,
            Rec::ConfState(c) | Rec::Create(c) | Rec::Snapshot { conf: c, .. } => conf_bytes(c),
            Rec::Compact { .. } | Rec::Drop => 0,
            Rec::State { conf, .. } => return state_record_bytes(conf),
        }
}

/// Appends the framed record to `out`.
pub fn encode(out: &mut Vec<u8>, r: &Record) {
    let start = out.len();
    let (kind, term, index) = match &r.rec {
        Rec::Entry(e) => (Kind::Entry, e.term, e.index),
        Rec::HardState(hs) => (Kind::HardState, hs.term, hs.commit),
        Rec::ConfState(_) => (Kind::ConfState, 0, 0),
        Rec::Snapshot { index, term, .. } => (Kind::Snapshot, *term, *index),
        Rec::Compact { index, term } => (Kind::Compact, *term, *index),
        Rec::Create(_) => (Kind::Create, 0, 0),
        Rec::Drop => (Kind::Drop, 0, 0),
        Rec::State {
            compacted_index,
            compacted_term,
            ..
        } => (Kind::State, *compacted_term, *compacted_index),
    };
    out.extend_from_slice(&REC_MAGIC.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // CRC, filled below
    out.extend_from_slice(&r.lsn.to_le_bytes());
    out.extend_from_slice(&r.group.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // payload length, filled below
    out.extend_from_slice(&[kind as u8, 0, 0, 0]);
    out.extend_from_slice(&term.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    debug_assert_eq!(out.len() - start, REC_HEADER_BYTES);
    match &r.rec {
        Rec::Entry(e) => {
            let t = e.entry_type as u8;
            out.extend_from_slice(&[t, 0, 0, 0]);
            out.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(e.context.len() as u32).to_le_bytes());
            out.extend_from_slice(&e.data);
            out.extend_from_slice(&e.context);
        }
        Rec::HardState(hs) => out.extend_from_slice(&hs.vote.to_le_bytes()),
        Rec::ConfState(c) | Rec::Create(c) | Rec::Snapshot { conf: c, .. } => put_conf(out, c),
        Rec::Compact { .. } | Rec::Drop => {}
        Rec::State { hs, conf, .. } => {
            out.extend_from_slice(&hs.term.to_le_bytes());
            out.extend_from_slice(&hs.vote.to_le_bytes());
            out.extend_from_slice(&hs.commit.to_le_bytes());
            put_conf(out, conf);
        }
    }
    let payload = out.len() - start - REC_HEADER_BYTES;
    assert!(
        payload <= PAYLOAD_BYTES_MAX,
        "record payload of {payload} bytes"
    );
    out[start + 24..start + 28].copy_from_slice(&(payload as u32).to_le_bytes());
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(out.len() - start, record_bytes(&r.rec));
}

/// Decodes the record at the start of `b`; returns it and its length in bytes.
pub fn decode(b: &[u8]) -> Result<(Record, usize), Bad> {
    if b.len() < 4 {
        return Err(Bad::Short);
    }
    match u32_at(b, 0) {
        0 => return Err(Bad::Zero),
        REC_MAGIC => {}
        _ => return Err(Bad::Magic),
    }
    if b.len() < REC_HEADER_BYTES {
        return Err(Bad::Short);
    }
    let len = REC_HEADER_BYTES + u32_at(b, 24) as usize;
    if b.len() < len {
        return Err(Bad::Short);
    }
    if crc32c::crc32c(&b[8..len]) != u32_at(b, 4) {
        return Err(Bad::Crc);
    }
    let lsn = u64_at(b, 8);
    let group = u64_at(b, 16);
    let kind = Kind::from_u8(b[28]).ok_or(Bad::Payload("unknown kind"))?;
    let term = u64_at(b, 32);
    let index = u64_at(b, 40);
    let p = &b[REC_HEADER_BYTES..len];
    let rec = match kind {
        Kind::Entry => {
            if p.len() < 12 {
                return Err(Bad::Payload("entry header"));
            }
            let entry_type = match p[0] {
                0 => EntryType::EntryNormal,
                1 => EntryType::EntryConfChange,
                2 => EntryType::EntryConfChangeV2,
                _ => return Err(Bad::Payload("entry type")),
            };
            let data_len = u32_at(p, 4) as usize;
            let ctx_len = u32_at(p, 8) as usize;
            if 12 + data_len + ctx_len != p.len() {
                return Err(Bad::Payload("entry lengths"));
            }
            Rec::Entry(Entry {
                entry_type,
                term,
                index,
                data: p[12..12 + data_len].to_vec().into(),
                context: p[12 + data_len..].to_vec().into(),
                ..Default::default()
            })
        }
        Kind::HardState => {
            if p.len() != 8 {
                return Err(Bad::Payload("hard state length"));
            }
            Rec::HardState(HardState {
                term,
                commit: index,
                vote: u64_at(p, 0),
                ..Default::default()
            })
        }
        Kind::ConfState => Rec::ConfState(get_conf(p)?),
        Kind::Snapshot => Rec::Snapshot {
            index,
            term,
            conf: get_conf(p)?,
        },
        Kind::Compact => {
            if !p.is_empty() {
                return Err(Bad::Payload("compact has a payload"));
            }
            Rec::Compact { index, term }
        }
        Kind::Create => Rec::Create(get_conf(p)?),
        Kind::Drop => {
            if !p.is_empty() {
                return Err(Bad::Payload("drop has a payload"));
            }
            Rec::Drop
        }
        Kind::State => {
            if p.len() < 24 {
                return Err(Bad::Payload("state length"));
            }
            let hs = HardState {
                term: u64_at(p, 0),
                vote: u64_at(p, 8),
                commit: u64_at(p, 16),
                ..Default::default()
            };
            Rec::State {
                hs,
                conf: get_conf(&p[24..])?,
                compacted_index: index,
                compacted_term: term,
            }
        }
    };
    Ok((Record { lsn, group, rec }, len))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(voters: &[u64]) -> ConfState {
        ConfState {
            voters: voters.to_vec(),
            learners: vec![9],
            auto_leave: true,
            ..Default::default()
        }
    }

    #[test]
    fn every_kind_round_trips_and_is_sized_exactly() {
        let e = Entry {
            entry_type: EntryType::EntryConfChange,
            term: 3,
            index: 7,
            data: b"data".to_vec().into(),
            context: b"ctx".to_vec().into(),
            ..Default::default()
        };
        let hs = HardState {
            term: 4,
            vote: 2,
            commit: 6,
            ..Default::default()
        };
        let recs = vec![
            Rec::Entry(e),
            Rec::HardState(hs.clone()),
            Rec::ConfState(conf(&[1, 2, 3])),
            Rec::Snapshot {
                index: 10,
                term: 2,
                conf: conf(&[1]),
            },
            Rec::Compact { index: 5, term: 1 },
            Rec::Create(conf(&[])),
            Rec::Drop,
            Rec::State {
                hs,
                conf: conf(&[1, 2]),
                compacted_index: 3,
                compacted_term: 1,
            },
        ];
        for (i, rec) in recs.into_iter().enumerate() {
            let r = Record {
                lsn: 100 + i as u64,
                group: 42,
                rec,
            };
            let mut buf = vec![];
            encode(&mut buf, &r);
            assert_eq!(buf.len(), record_bytes(&r.rec));
            let (back, len) = decode(&buf).unwrap();
            assert_eq!(len, buf.len());
            assert_eq!(back, r);
        }
    }

    #[test]
    fn any_flipped_bit_or_cut_is_rejected() {
        let r = Record {
            lsn: 1,
            group: 1,
            rec: Rec::Compact { index: 5, term: 1 },
        };
        let mut buf = vec![];
        encode(&mut buf, &r);
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&b).is_err(), "bit {bit} flipped and still accepted");
        }
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_err());
        }
    }

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let h = SegHeader {
            seq: 9,
            first_lsn: 1234,
            segment_bytes: 1 << 20,
            oldest_seq: 4,
        };
        let mut b = vec![0u8; SEG_HEADER_BYTES as usize];
        encode_seg_header(&mut b, &h);
        assert_eq!(decode_seg_header(&b), Some(h));
        b[20] ^= 4;
        assert_eq!(decode_seg_header(&b), None);
        assert_eq!(decode_seg_header(&[0; 4096]), None);
    }
}
