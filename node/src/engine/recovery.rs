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
//! - Records with a seq above the last checkpoint's (`Scan::seq_max`) are ignored: the Raft log
//!   replays the ops that wrote them, from the checkpoint's applied index on, so the state built
//!   here must be exactly the checkpoint's (a replayed append or incr must not find its own
//!   effect already there).
//! - A flush record clears the items of its partition (its key) written before it.
//! - Segments of feature-table slices (engine/tables.rs) are set aside for the engine to load.
//! - With an index checkpoint (engine/index_checkpoint.rs) the newest usable one is loaded and
//!   only records above its `base_seq` are replayed, by the rules above; segments holding
//!   nothing above it are not read. Every other checkpoint's headers are zeroed. A checkpoint
//!   that fails to load, or whose result points anywhere but a log segment, is set aside and
//!   the next (in the end: every segment) is used.

use std::collections::HashMap;

use keel_nvme::{Device, IoError, Region};

use crate::shard::partition_of;

use super::format::{self, Bad, Kind, SEG_HEADER_BYTES};
use super::index::{Atime, Index, IndexEntry, STALE};
use super::index_checkpoint::{self as ixckpt, Generation};
use super::log::{Seg, SegState};
use super::tables::{FoundSlices, SliceSegHeader};

pub struct Recovered {
    pub index: Index,
    pub segs: Vec<Seg>,
    pub next_seq: u64,
    pub records: u64,
    pub corrupt_records: u64,
    pub damaged_segment_headers: u64,
    /// `flush_all <delay>`s whose deadline had not passed when the log ended, per partition.
    pub pending_flush: HashMap<u64, u32>,
    /// Records after the checkpoint, ignored.
    pub ignored_records: u64,
    /// The index checkpoint the index was loaded from.
    pub index_checkpoint: Option<Generation>,
    /// Index checkpoints set aside, and why.
    pub refused: Vec<String>,
    /// The highest index-checkpoint generation seen, usable or not.
    pub generation_max: u64,
    /// Segments of feature-table slices (engine/tables.rs), in state Table.
    pub slices: FoundSlices,
}

pub struct Scan {
    pub seg_bytes: u64,
    pub value_len_max: usize,
    pub now: u32,
    /// The last checkpoint's seq: records above it are ignored.
    pub seq_max: u64,
    pub partitions_mask: u64,
}

fn clear_partition(index: &mut Index, partition: u64, mask: u64) {
    index.retain(|k, _| partition_of(k, mask) != partition);
}

pub async fn recover<D: Device>(dev: &Region<D>, scan: &Scan) -> Result<Recovered, IoError> {
    let seg_bytes = scan.seg_bytes;
    let nsegs = (dev.size_bytes() / seg_bytes) as usize;
    let mut segs = vec![
        Seg {
            state: SegState::Free,
            first_seq: 0,
            live: 0
        };
        nsegs
    ];
    let mut damaged_segment_headers = 0;
    let mut order = Vec::new();
    let mut parts = Vec::new();
    let mut slices = FoundSlices::default();
    for (i, seg) in segs.iter_mut().enumerate() {
        let block = dev
            .read_at(i as u64 * seg_bytes, SEG_HEADER_BYTES as usize)
            .await?;
        if let Some(p) = ixckpt::decode_part_header(&block).filter(|p| p.seg_no as usize == i) {
            parts.push(p);
            continue;
        }
        if let Some(h) = SliceSegHeader::decode(&block).filter(|h| h.seg_no as usize == i) {
            seg.state = SegState::Table;
            slices.add(h);
            continue;
        }
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
            _ => damaged_segment_headers += 1,
        }
    }
    order.sort_unstable();
    let mut refused = Vec::new();
    let mut chosen = None;
    for g in ixckpt::candidates(&parts, scan.seq_max) {
        let index = match ixckpt::load(dev, seg_bytes, &g, scan.now).await {
            Ok(index) => index,
            Err(why) => {
                refused.push(format!("index checkpoint {}: {why}", g.generation));
                continue;
            }
        };
        let mut with = segs.clone();
        for &s in &g.segs {
            with[s].state = SegState::Index;
        }
        match replay(dev, scan, &order, with, index, g.base_seq).await? {
            Ok(mut r) => {
                r.index_checkpoint = Some(g);
                chosen = Some(r);
                break;
            }
            Err(why) => refused.push(format!("index checkpoint {}: {why}", g.generation)),
        }
    }
    let mut r = match chosen {
        Some(r) => r,
        None => replay(dev, scan, &order, segs, Index::default(), 0)
            .await?
            .expect("a full scan points only into the segments it read"),
    };
    // Every other generation goes: a restart must never take a stale one (GC keeps the
    // records it needs only for the generations it knows of).
    let keep: Vec<usize> = r
        .index_checkpoint
        .iter()
        .flat_map(|g| g.segs.clone())
        .collect();
    let mut zeroed = false;
    for p in &parts {
        if !keep.contains(&(p.seg_no as usize)) {
            let buf = dev.alloc(SEG_HEADER_BYTES as usize);
            dev.write_at(buf, p.seg_no as u64 * seg_bytes).await?;
            zeroed = true;
        }
    }
    if zeroed {
        // fdatasync: the zeroed headers hold before any of these segments is used again.
        dev.sync().await?;
    }
    r.damaged_segment_headers = damaged_segment_headers;
    r.refused = refused;
    r.generation_max = parts.iter().map(|p| p.generation).max().unwrap_or(0);
    r.slices = slices;
    Ok(r)
}

/// Applies the records with a seq in (`base_seq`, `scan.seq_max`] to `index`, reading only the
/// segments that may hold one. `Ok(Err)`: the result points into a segment that is not a log
/// segment (a checkpoint that does not match the log).
async fn replay<D: Device>(
    dev: &Region<D>,
    scan: &Scan,
    order: &[(u64, usize)],
    mut segs: Vec<Seg>,
    index: Index,
    base_seq: u64,
) -> Result<Result<Recovered, String>, IoError> {
    let (seg_bytes, value_len_max, now) = (scan.seg_bytes, scan.value_len_max, scan.now);
    let nsegs = segs.len();
    let mut r = Recovered {
        index,
        segs: Vec::new(),
        next_seq: 1,
        records: 0,
        corrupt_records: 0,
        damaged_segment_headers: 0,
        pending_flush: HashMap::new(),
        ignored_records: 0,
        index_checkpoint: None,
        refused: Vec::new(),
        generation_max: 0,
        slices: FoundSlices::default(),
    };
    let mut side_live = vec![0u64; nsegs]; // tombstones, touches and flushes still in the log
    let mut last_seq = 0u64;
    for (k, &(first_seq, seg)) in order.iter().enumerate() {
        // Seqs grow from segment to segment: one whose successor starts at or below
        // base_seq + 1 holds nothing to replay.
        if order
            .get(k + 1)
            .is_some_and(|&(next, _)| next <= base_seq + 1)
        {
            last_seq = last_seq.max(first_seq.saturating_sub(1));
            continue;
        }
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
            let offset = base + pos as u64;
            if h.seq <= base_seq {
                // The index checkpoint holds its effect.
                pos += rec.len;
                continue;
            }
            if h.seq > scan.seq_max {
                r.ignored_records += 1;
                pos += rec.len;
                continue;
            }
            r.records += 1;
            if !r.pending_flush.is_empty() && h.kind != Kind::Flush {
                let p = partition_of(rec.key, scan.partitions_mask);
                if r.pending_flush.get(&p).is_some_and(|&d| h.time >= d) {
                    clear_partition(&mut r.index, p, scan.partitions_mask);
                    r.pending_flush.remove(&p);
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
                            atime: Atime::at(h.time),
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
                    let Ok(p) = <[u8; 8]>::try_from(rec.key).map(u64::from_le_bytes) else {
                        r.corrupt_records += 1;
                        pos += rec.len;
                        continue;
                    };
                    if h.exptime == 0 || h.exptime <= h.time {
                        clear_partition(&mut r.index, p, scan.partitions_mask);
                        r.pending_flush.remove(&p);
                    } else {
                        r.pending_flush.insert(p, h.exptime);
                    }
                }
            }
            pos += rec.len;
        }
        last_seq = last_seq.max(seg_last);
    }
    let due: Vec<u64> = r
        .pending_flush
        .iter()
        .filter(|(_, &d)| d <= now)
        .map(|(&p, _)| p)
        .collect();
    for p in due {
        clear_partition(&mut r.index, p, scan.partitions_mask);
        r.pending_flush.remove(&p);
    }
    for (i, s) in segs.iter_mut().enumerate() {
        s.live = side_live[i];
    }
    for (key, e) in r.index.iter() {
        let seg = &mut segs[(e.offset / seg_bytes) as usize];
        if seg.state != SegState::Sealed {
            return Ok(Err(format!(
                "the item at offset {} is in a segment that holds no log",
                e.offset
            )));
        }
        seg.live += format::record_bytes(key.len(), e.value_len as usize) as u64;
    }
    r.segs = segs;
    r.next_seq = last_seq + 1;
    Ok(Ok(r))
}
