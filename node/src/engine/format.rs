//! On-disk formats of the value log, byte by byte (docs/design.md draws the same tables).
//!
//! All integers are little-endian and fixed size. A record is padded with zeros to a multiple
//! of 8 bytes so the scanner can look for the next header on 8-byte boundaries after damage.
//!
//! Record (header 48 bytes, then key, then value, then zero padding):
//! ```text
//!  0  u32 magic      REC_MAGIC
//!  4  u32 crc32c     over bytes [8, 48 + key_len + value_len)
//!  8  u64 seq        log sequence number, strictly increasing within a shard
//! 16  u64 cas        the item's CAS unique (equal to seq when the item was written by a client)
//! 24  u32 value_len
//! 28  u32 flags      client flags
//! 32  u32 exptime    absolute unix seconds, 0 = never; for Flush: the deadline
//! 36  u32 time       unix seconds when the item was written (kept when GC moves it)
//! 40  u16 key_len
//! 42  u8  kind       1 put, 2 delete, 3 touch, 4 flush
//! 43  u8  bits       item state bits (1 = stale: invalidated by a meta command)
//! 44  u8[4] zero
//! ```
//! Segment header (the first block of every segment in use; a zeroed block means "free"):
//! ```text
//!  0  u64 magic      SEG_MAGIC
//!  8  u32 seg_no
//! 12  u32 version    1
//! 16  u64 first_seq  every record in the segment has seq >= first_seq
//! 24  u32 crc32c     over bytes [0, 24)
//! ```
//! Device superblock (block 0 of each device):
//! ```text
//!  0  u64 magic      DEV_MAGIC
//!  8  u32 version    3
//! 12  u32 shards          on this device (all of the node's when it has one device)
//! 16  u64 segment_bytes   value-log segment size
//! 24  u64 device_bytes
//! 32  u64 region_bytes    per shard: checkpoint slots, then the raftlog, then the value log
//! 40  u64 raftlog_bytes   per shard
//! 48  u64 node_id         the Raft node id whose data this is
//! 56  u32 device_index    this device's place in device.paths
//! 60  u32 device_count    how many devices the node has
//! 64  u32 first_shard     the node's shard that owns this device's first region
//! 68  u32 node_shards     the node's shards on all its devices
//! 72  u32 crc32c     over bytes [0, 72)
//! ```
//! Version 2 (before several devices) ends at byte 56 with the crc over [0, 56); it reads as
//! device 0 of 1 holding every shard, which is what it was, and is never rewritten.

pub const REC_MAGIC: u32 = u32::from_le_bytes(*b"KRec");
pub const SEG_MAGIC: u64 = u64::from_le_bytes(*b"KEELSEG1");
pub const DEV_MAGIC: u64 = u64::from_le_bytes(*b"KEELDEV1");
pub const VERSION: u32 = 1;
pub const SUPERBLOCK_VERSION: u32 = 3;
/// The one-device superblock, still read.
pub const SUPERBLOCK_VERSION_ONE_DEVICE: u32 = 2;
pub const HEADER_BYTES: usize = 48;
pub const SEG_HEADER_BYTES: u64 = keel_nvme::BLOCK_BYTES;
/// Regions begin after the superblock, aligned to 1 MiB.
pub const DATA_START_BYTES: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Put = 1,
    Delete = 2,
    Touch = 3,
    Flush = 4,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Put,
            2 => Kind::Delete,
            3 => Kind::Touch,
            4 => Kind::Flush,
            _ => return None,
        })
    }
}

/// The fixed fields of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub seq: u64,
    pub cas: u64,
    pub value_len: u32,
    pub flags: u32,
    pub exptime: u32,
    pub time: u32,
    pub key_len: u16,
    pub kind: Kind,
    pub bits: u8,
}

/// Bytes a record with this key and value occupies in the log, padding included.
pub const fn record_bytes(key_len: usize, value_len: usize) -> usize {
    (HEADER_BYTES + key_len + value_len).next_multiple_of(8)
}

/// Appends one framed record to `out`.
pub fn encode(out: &mut Vec<u8>, h: &Header, key: &[u8], value: &[u8]) {
    assert_eq!(h.key_len as usize, key.len());
    assert_eq!(h.value_len as usize, value.len());
    let start = out.len();
    out.extend_from_slice(&REC_MAGIC.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&h.seq.to_le_bytes());
    out.extend_from_slice(&h.cas.to_le_bytes());
    out.extend_from_slice(&h.value_len.to_le_bytes());
    out.extend_from_slice(&h.flags.to_le_bytes());
    out.extend_from_slice(&h.exptime.to_le_bytes());
    out.extend_from_slice(&h.time.to_le_bytes());
    out.extend_from_slice(&h.key_len.to_le_bytes());
    out.push(h.kind as u8);
    out.push(h.bits);
    out.extend_from_slice(&[0; 4]);
    debug_assert_eq!(out.len() - start, HEADER_BYTES);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.resize(start + record_bytes(key.len(), value.len()), 0);
}

/// Why bytes at a position are not a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Bad {
    /// All-zero header: never written (the end of a segment's data).
    Empty,
    /// No record magic: garbage, or the inside of an older record.
    NoMagic,
    /// A record header that fails its length or checksum check: damage or a torn write.
    Corrupt,
    /// The buffer ends before the record does.
    Short,
}

/// A record checked against its checksum.
#[derive(Debug)]
pub struct Record<'a> {
    pub header: Header,
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// Padded length: where the next record starts.
    pub len: usize,
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes the record at the start of `b`, verifying its checksum. `value_len_max` bounds the
/// length fields so a damaged header cannot make the scanner read gigabytes.
pub fn decode(b: &[u8], value_len_max: usize) -> Result<Record<'_>, Bad> {
    if b.len() < HEADER_BYTES {
        return Err(Bad::Short);
    }
    let magic = u32_at(b, 0);
    if magic != REC_MAGIC {
        return Err(if b[..HEADER_BYTES].iter().all(|&x| x == 0) {
            Bad::Empty
        } else {
            Bad::NoMagic
        });
    }
    let key_len = u16::from_le_bytes([b[40], b[41]]) as usize;
    let value_len = u32_at(b, 24) as usize;
    let kind = Kind::from_u8(b[42]).ok_or(Bad::Corrupt)?;
    if key_len > 250 || value_len > value_len_max || b[44..48].iter().any(|&x| x != 0) {
        return Err(Bad::Corrupt);
    }
    let end = HEADER_BYTES + key_len + value_len;
    if b.len() < end {
        return Err(Bad::Short);
    }
    if crc32c::crc32c(&b[8..end]) != u32_at(b, 4) {
        return Err(Bad::Corrupt);
    }
    let header = Header {
        seq: u64_at(b, 8),
        cas: u64_at(b, 16),
        value_len: value_len as u32,
        flags: u32_at(b, 28),
        exptime: u32_at(b, 32),
        time: u32_at(b, 36),
        key_len: key_len as u16,
        kind,
        bits: b[43],
    };
    Ok(Record {
        header,
        key: &b[HEADER_BYTES..HEADER_BYTES + key_len],
        value: &b[HEADER_BYTES + key_len..end],
        len: record_bytes(key_len, value_len),
    })
}

/// A segment's first block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegHeader {
    pub seg_no: u32,
    pub first_seq: u64,
}

pub fn encode_seg_header(out: &mut [u8], h: &SegHeader) {
    out[..SEG_HEADER_BYTES as usize].fill(0);
    out[0..8].copy_from_slice(&SEG_MAGIC.to_le_bytes());
    out[8..12].copy_from_slice(&h.seg_no.to_le_bytes());
    out[12..16].copy_from_slice(&VERSION.to_le_bytes());
    out[16..24].copy_from_slice(&h.first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&out[0..24]);
    out[24..28].copy_from_slice(&crc.to_le_bytes());
}

/// `None` for a free (zeroed) or damaged header; a damaged one is reported by the caller.
pub fn decode_seg_header(b: &[u8]) -> Option<SegHeader> {
    if b.len() < 28 || u64_at(b, 0) != SEG_MAGIC || u32_at(b, 12) != VERSION {
        return None;
    }
    if crc32c::crc32c(&b[0..24]) != u32_at(b, 24) {
        return None;
    }
    Some(SegHeader {
        seg_no: u32_at(b, 8),
        first_seq: u64_at(b, 16),
    })
}

/// The device superblock: the geometry the data was written with, so a changed profile cannot
/// silently reinterpret the device (nor a reordered `device.paths` hand a device's data to
/// shards that do not own its partitions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub shards: u32,
    pub segment_bytes: u64,
    pub device_bytes: u64,
    pub region_bytes: u64,
    pub raftlog_bytes: u64,
    pub node_id: u64,
    pub device_index: u32,
    pub device_count: u32,
    pub first_shard: u32,
    pub node_shards: u32,
}

const SUPERBLOCK_CRC_AT: usize = 72;

pub fn encode_superblock(out: &mut [u8], s: &Superblock) {
    assert!(s.device_index < s.device_count && s.first_shard + s.shards <= s.node_shards);
    out.fill(0);
    out[0..8].copy_from_slice(&DEV_MAGIC.to_le_bytes());
    out[8..12].copy_from_slice(&SUPERBLOCK_VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&s.shards.to_le_bytes());
    out[16..24].copy_from_slice(&s.segment_bytes.to_le_bytes());
    out[24..32].copy_from_slice(&s.device_bytes.to_le_bytes());
    out[32..40].copy_from_slice(&s.region_bytes.to_le_bytes());
    out[40..48].copy_from_slice(&s.raftlog_bytes.to_le_bytes());
    out[48..56].copy_from_slice(&s.node_id.to_le_bytes());
    out[56..60].copy_from_slice(&s.device_index.to_le_bytes());
    out[60..64].copy_from_slice(&s.device_count.to_le_bytes());
    out[64..68].copy_from_slice(&s.first_shard.to_le_bytes());
    out[68..72].copy_from_slice(&s.node_shards.to_le_bytes());
    let crc = crc32c::crc32c(&out[0..SUPERBLOCK_CRC_AT]);
    out[SUPERBLOCK_CRC_AT..SUPERBLOCK_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Ok(None): a blank device. Err: something that is not a Keel superblock, or a damaged one.
pub fn decode_superblock(b: &[u8]) -> Result<Option<Superblock>, String> {
    if b.len() < SUPERBLOCK_CRC_AT + 4 {
        return Err(format!(
            "block 0 is {} bytes, too short for a superblock",
            b.len()
        ));
    }
    if b[..SUPERBLOCK_CRC_AT + 4].iter().all(|&x| x == 0) {
        return Ok(None);
    }
    if u64_at(b, 0) != DEV_MAGIC {
        return Err("block 0 is not a Keel superblock (another program's data?)".into());
    }
    let version = u32_at(b, 8);
    let crc_at = match version {
        SUPERBLOCK_VERSION => SUPERBLOCK_CRC_AT,
        SUPERBLOCK_VERSION_ONE_DEVICE => 56,
        v => {
            return Err(format!(
                "superblock version {v} is not supported (want {SUPERBLOCK_VERSION} or \
                 {SUPERBLOCK_VERSION_ONE_DEVICE}; version 1 predates Raft: start from a new data file)"
            ))
        }
    };
    if crc32c::crc32c(&b[0..crc_at]) != u32_at(b, crc_at) {
        return Err("the superblock fails its checksum".into());
    }
    let shards = u32_at(b, 12);
    let (device_index, device_count, first_shard, node_shards) = if version == SUPERBLOCK_VERSION {
        (u32_at(b, 56), u32_at(b, 60), u32_at(b, 64), u32_at(b, 68))
    } else {
        (0, 1, 0, shards)
    };
    Ok(Some(Superblock {
        shards,
        segment_bytes: u64_at(b, 16),
        device_bytes: u64_at(b, 24),
        region_bytes: u64_at(b, 32),
        raftlog_bytes: u64_at(b, 40),
        node_id: u64_at(b, 48),
        device_index,
        device_count,
        first_shard,
        node_shards,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(key: &[u8], value: &[u8]) -> Header {
        Header {
            seq: 7,
            cas: 7,
            value_len: value.len() as u32,
            flags: 0xdead_beef,
            exptime: 0,
            time: 1_700_000_000,
            key_len: key.len() as u16,
            kind: Kind::Put,
            bits: 0,
        }
    }

    #[test]
    fn round_trip_and_padding() {
        for vlen in [0usize, 1, 7, 8, 100, 4096] {
            let value = vec![0xab; vlen];
            let mut out = Vec::new();
            encode(&mut out, &header(b"key", &value), b"key", &value);
            assert_eq!(out.len() % 8, 0);
            let r = decode(&out, 1 << 20).unwrap();
            assert_eq!(r.key, b"key");
            assert_eq!(r.value, &value[..]);
            assert_eq!(r.len, out.len());
            assert_eq!(r.header, header(b"key", &value));
        }
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let mut out = Vec::new();
        encode(
            &mut out,
            &header(b"k1", b"hello world"),
            b"k1",
            b"hello world",
        );
        let used = HEADER_BYTES + 2 + 11;
        for byte in 0..used {
            for bit in 0..8 {
                let mut b = out.clone();
                b[byte] ^= 1 << bit;
                assert!(
                    decode(&b, 1 << 20).is_err(),
                    "flip of byte {byte} bit {bit} accepted"
                );
            }
        }
    }

    #[test]
    fn truncated_record_is_short_and_zeroes_are_empty() {
        let mut out = Vec::new();
        encode(&mut out, &header(b"k", b"v"), b"k", b"v");
        for cut in 0..HEADER_BYTES + 2 {
            assert_eq!(decode(&out[..cut], 1 << 20).unwrap_err(), Bad::Short);
        }
        assert_eq!(decode(&[0u8; 64], 1 << 20).unwrap_err(), Bad::Empty);
    }

    #[test]
    fn oversized_length_fields_are_refused_before_reading() {
        let mut out = Vec::new();
        encode(&mut out, &header(b"k", b"v"), b"k", b"v");
        out[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&out, 1 << 20).unwrap_err(), Bad::Corrupt);
    }

    #[test]
    fn seg_header_and_superblock_round_trip() {
        let mut b = vec![0u8; 4096];
        let h = SegHeader {
            seg_no: 3,
            first_seq: 99,
        };
        encode_seg_header(&mut b, &h);
        assert_eq!(decode_seg_header(&b), Some(h));
        b[17] ^= 1;
        assert_eq!(decode_seg_header(&b), None);
        let s = Superblock {
            shards: 2,
            segment_bytes: 1 << 24,
            device_bytes: 1 << 30,
            region_bytes: 1 << 29,
            raftlog_bytes: 1 << 26,
            node_id: 3,
            device_index: 1,
            device_count: 2,
            first_shard: 2,
            node_shards: 4,
        };
        encode_superblock(&mut b, &s);
        assert_eq!(decode_superblock(&b), Ok(Some(s)));
        // The fields after byte 56 are covered by the checksum too.
        for at in [13, 57, 65] {
            let mut bad = b.clone();
            bad[at] ^= 1;
            assert!(decode_superblock(&bad).is_err(), "flip at {at}");
        }
        assert_eq!(decode_superblock(&[0u8; 4096]), Ok(None));
        // Found by the value_log fuzz target: short blocks are refused, not a panic.
        for n in [0, 8, 27, 75] {
            assert_eq!(decode_seg_header(&b[..n]), None);
            assert!(decode_superblock(&b[..n])
                .unwrap_err()
                .contains("too short"));
        }
    }

    /// Data files written before several devices (superblock version 2) keep opening: they read
    /// as device 0 of 1 with every shard, and equal what a one-device profile asks for.
    #[test]
    fn a_version_2_superblock_reads_as_the_only_device() {
        let mut b = vec![0u8; 4096];
        b[0..8].copy_from_slice(&DEV_MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        b[12..16].copy_from_slice(&2u32.to_le_bytes());
        b[16..24].copy_from_slice(&(16u64 << 20).to_le_bytes());
        b[24..32].copy_from_slice(&(2u64 << 30).to_le_bytes());
        b[32..40].copy_from_slice(&(1u64 << 30).to_le_bytes());
        b[40..48].copy_from_slice(&(128u64 << 20).to_le_bytes());
        b[48..56].copy_from_slice(&1u64.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..56]);
        b[56..60].copy_from_slice(&crc.to_le_bytes());
        let s = decode_superblock(&b).unwrap().unwrap();
        assert_eq!(
            (s.device_index, s.device_count, s.first_shard, s.node_shards),
            (0, 1, 0, 2)
        );
        assert_eq!((s.shards, s.node_id, s.raftlog_bytes), (2, 1, 128 << 20));
        b[8] = 4;
        assert!(decode_superblock(&b)
            .unwrap_err()
            .contains("version 4 is not supported"));
    }
}
