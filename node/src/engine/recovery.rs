//! Rebuilding a shard's index at start-up by scanning its segments in seq order.
//!
//! Rules (docs/design.md, "Recovery"):
//! - A segment is in use iff its first block is a valid segment header naming its own number.
//! - Within a segment records are accepted while their seq strictly increases from first_seq.
//!   A zeroed header is where the data ends; bytes after it are scanned only for later records
//!   (a torn or damaged record in the middle does not hide the ones behind it).
//! - A record whose magic is right but whose lengths or checksum are wrong is counted corrupt
//!   and skipped; it is never served. Records from an older use of a reused segment have a seq
//!   below the segment's first_seq and are skipped silently.

use keel_nvme::{Device, IoError, Region};

use super::format::{self, Bad, Kind, SEG_HEADER_BYTES};
use super::index::{new_index, Index, IndexEntry, STALE};
use super::log::{Seg, SegState};

pub struct Recovered {
    pub index: Index,
    pub segs: Vec<Seg>,
    pub next_seq: u64,
    pub records: u64,
    pub corrupt_records: u64,
    pub damaged_segment_headers: u64,
    /// A `flush_all <delay>` whose deadline had not passed when the log ended.
    pub pending_flush: Option<u32>,
}

pub async fn recover<D: Device>(
    dev: &Region<D>,
    seg_bytes: u64,
    value_len_max: usize,
    now: u32,
) -> Result<Recovered, IoError> {
    let nsegs = (dev.size_bytes() / seg_bytes) as usize;
    let mut segs = vec![
        Seg {
            state: SegState::Free,
            first_seq: 0,
            live: 0
        };
        nsegs
    ];
    let mut r = Recovered {
        index: new_index(),
        segs: Vec::new(),
        next_seq: 1,
        records: 0,
        corrupt_records: 0,
        damaged_segment_headers: 0,
        pending_flush: None,
    };
    let mut order = Vec::new();
    for (i, seg) in segs.iter_mut().enumerate() {
        let block = dev
            .read_at(i as u64 * seg_bytes, SEG_HEADER_BYTES as usize)
            .await?;
        match format::decode_seg_header(&block) {
            Some(h) if h.seg_no as usize == i => {
                *seg = Seg {
                    state: SegState::Sealed,
                    first_seq: h.first_seq,
                    live: 0,
                };
                order.push((h.first_seq, i));
            }
            _ if block.iter().all(|&b| b == 0) => {}
            _ => r.damaged_segment_headers += 1,
        }
    }
    order.sort_unstable();
    let mut side_live = vec![0u64; nsegs]; // tombstones, touches and flushes still in the log
    let mut last_seq = 0u64;
    for &(first_seq, seg) in &order {
        let base = seg as u64 * seg_bytes;
        let buf = dev.read_at(base, seg_bytes as usize).await?;
        let mut pos = SEG_HEADER_BYTES as usize;
        let mut seg_last = first_seq.saturating_sub(1).max(last_seq);
        while pos + format::HEADER_BYTES <= buf.len() {
            let rec = match format::decode(&buf[pos..], value_len_max) {
                Ok(rec) if rec.header.seq > seg_last => rec,
                Ok(_) | Err(Bad::Empty) | Err(Bad::NoMagic) => {
                    pos += 8;
                    continue;
                }
                // Short: a header whose lengths run past the segment's end, which only damage
                // produces (records never span segments).
                Err(Bad::Corrupt) | Err(Bad::Short) => {
                    r.corrupt_records += 1;
                    pos += 8;
                    continue;
                }
            };
            let h = rec.header;
            seg_last = h.seq;
            r.records += 1;
            let offset = base + pos as u64;
            if let Some(deadline) = r.pending_flush {
                if h.time >= deadline {
                    r.index.clear();
                    r.pending_flush = None;
                }
            }
            match h.kind {
                Kind::Put => {
                    if h.exptime != 0 && h.exptime <= now {
                        r.index.remove(rec.key);
                    } else {
                        let e = IndexEntry {
                            offset,
                            cas: h.cas,
                            value_len: h.value_len,
                            flags: h.flags,
                            exptime: h.exptime,
                            bits: h.bits & STALE,
                        };
                        r.index.insert(rec.key.into(), e);
                    }
                }
                Kind::Delete => {
                    r.index.remove(rec.key);
                    side_live[seg] += rec.len as u64;
                }
                Kind::Touch => {
                    side_live[seg] += rec.len as u64;
                    if let Some(e) = r.index.get_mut(rec.key) {
                        if e.cas == h.cas {
                            e.exptime = h.exptime;
                            e.bits = h.bits & STALE;
                            if e.expired(now) {
                                r.index.remove(rec.key);
                            }
                        }
                    }
                }
                Kind::Flush => {
                    side_live[seg] += rec.len as u64;
                    if h.exptime == 0 || h.exptime <= h.time {
                        r.index.clear();
                        r.pending_flush = None;
                    } else {
                        r.pending_flush = Some(h.exptime);
                    }
                }
            }
            pos += rec.len;
        }
        last_seq = last_seq.max(seg_last);
    }
    if let Some(deadline) = r.pending_flush {
        if deadline <= now {
            r.index.clear();
            r.pending_flush = None;
        }
    }
    for (i, s) in segs.iter_mut().enumerate() {
        s.live = side_live[i];
    }
    for (key, e) in r.index.iter() {
        segs[(e.offset / seg_bytes) as usize].live +=
            format::record_bytes(key.len(), e.value_len as usize) as u64;
    }
    r.segs = segs;
    r.next_seq = last_seq + 1;
    Ok(r)
}
