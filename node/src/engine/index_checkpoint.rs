//! Index checkpoints: the shard's index written to value-log segments in the background, so a
//! restart loads it and replays only the records appended after it began, instead of scanning
//! every segment (docs/design.md, "Index checkpoints").
//!
//! A checkpoint is *fuzzy*: it walks the index's buckets in slices while the shard keeps serving,
//! from the moment the value log stood at `base_seq` until it stood at `end_seq`. Recovery loads
//! it and then replays, in seq order, every record with a seq in (`base_seq`, the engine
//! checkpoint's seq]. That is exact: a key no record of that range touches had the same entry
//! for the whole walk, so the walk saw it (entries change buckets only when the table rehashes;
//! [`Index::moves`] tells, and the walk starts again); a key a record of the range touches ends
//! as the last of those records left it, whatever the walk saw. Three rules keep it so:
//! - It is used only once an engine checkpoint covers `end_seq` (recovery ignores records after
//!   its engine checkpoint, and the walk may have seen their effects).
//! - GC keeps every tombstone, touch and flush record with a seq above the `base_seq` of any
//!   checkpoint still on the device ([`Engine::side_records_needed_after`]); a walk that starts
//!   while GC has copies waiting for their switch begins below the first copy, so the walk may
//!   see the old places (freed once switched): the replay moves them to the copies.
//! - No walk starts while a `flush_all <delay>` is pending (its timer clears a partition without a
//!   record).
//!
//! Two generations at most are on the device: the last complete one, and the one being written
//! (or written but not yet covered by an engine checkpoint). The older is freed once the newer
//! is usable. Recovery takes the newest complete, undamaged, covered generation and zeroes the
//! headers of every other, so a stale generation can never be taken later; with none it scans
//! every segment as before.
//!
//! Part header (block 0 of each segment holding a part; little-endian):
//! ```text
//!  0  u64 magic       IDX_MAGIC
//!  8  u32 seg_no      the segment's own number
//! 12  u32 version     1
//! 16  u64 generation  +1 per checkpoint of the shard
//! 24  u64 base_seq    replay records with a seq above this
//! 32  u64 end_seq     last part only: the value log's last seq when the walk ended; else 0
//! 40  u32 part        0, 1, ...
//! 44  u32 parts       last part only: how many parts; else 0
//! 48  u32 entries     in this part
//! 52  u32 data_bytes  entry bytes after the header block
//! 56  u32 data_crc    crc32c over the data bytes
//! 60  u32 crc32c      over bytes [0, 60)
//! ```
//! Entry (packed, 34 bytes then the key):
//! ```text
//!  0  u16 key_len
//!  2  u8  bits        STALE only
//!  3  u8[3] atime
//!  6  u64 offset      region offset of the item's record
//! 14  u64 cas
//! 22  u32 value_len
//! 26  u32 flags
//! 30  u32 exptime
//! 34  key
//! ```

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use keel_nvme::{align_up, Device, IoError, Region, BLOCK_BYTES};

use super::format::{self, u32_at, u64_at, SEG_HEADER_BYTES};
use super::index::{Atime, Index, IndexEntry, STALE};
use super::log::LogError;
use super::Engine;

pub const IDX_MAGIC: u64 = u64::from_le_bytes(*b"KEELIDX1");
pub const IDX_VERSION: u32 = 1;
pub const PART_HEADER_BYTES: usize = 64;
pub const ENTRY_BYTES: usize = 34;
/// Longest key an entry may hold (memcached's limit; longer is damage).
const KEY_LEN_MAX: usize = 250;
/// Entry bytes written to the device at a time.
const CHUNK_BYTES: usize = 1 << 20;
/// Buckets walked between two yields to the shard's other tasks.
const WALK_STEP_BUCKETS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartHeader {
    pub seg_no: u32,
    pub generation: u64,
    pub base_seq: u64,
    pub end_seq: u64,
    pub part: u32,
    pub parts: u32,
    pub entries: u32,
    pub data_bytes: u32,
    pub data_crc: u32,
}

pub fn encode_part_header(h: &PartHeader) -> [u8; PART_HEADER_BYTES] {
    let mut b = [0u8; PART_HEADER_BYTES];
    b[0..8].copy_from_slice(&IDX_MAGIC.to_le_bytes());
    b[8..12].copy_from_slice(&h.seg_no.to_le_bytes());
    b[12..16].copy_from_slice(&IDX_VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&h.generation.to_le_bytes());
    b[24..32].copy_from_slice(&h.base_seq.to_le_bytes());
    b[32..40].copy_from_slice(&h.end_seq.to_le_bytes());
    b[40..44].copy_from_slice(&h.part.to_le_bytes());
    b[44..48].copy_from_slice(&h.parts.to_le_bytes());
    b[48..52].copy_from_slice(&h.entries.to_le_bytes());
    b[52..56].copy_from_slice(&h.data_bytes.to_le_bytes());
    b[56..60].copy_from_slice(&h.data_crc.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    b
}

/// `None` for anything but an undamaged part header.
pub fn decode_part_header(b: &[u8]) -> Option<PartHeader> {
    if b.len() < PART_HEADER_BYTES || u64_at(b, 0) != IDX_MAGIC || u32_at(b, 12) != IDX_VERSION {
        return None;
    }
    if crc32c::crc32c(&b[0..60]) != u32_at(b, 60) {
        return None;
    }
    Some(PartHeader {
        seg_no: u32_at(b, 8),
        generation: u64_at(b, 16),
        base_seq: u64_at(b, 24),
        end_seq: u64_at(b, 32),
        part: u32_at(b, 40),
        parts: u32_at(b, 44),
        entries: u32_at(b, 48),
        data_bytes: u32_at(b, 52),
        data_crc: u32_at(b, 56),
    })
}

pub fn entry_bytes(key: &[u8]) -> usize {
    ENTRY_BYTES + key.len()
}

/// Appends `key`'s entry, with the one persisted bit ([`STALE`]) of its bits.
pub fn encode_entry(out: &mut Vec<u8>, key: &[u8], e: &IndexEntry) {
    encode_entry_bits(out, key, e, e.bits & STALE);
}

/// Appends `key`'s entry with `bits` as its stored bits (keel-bulk's tables store their own).
pub fn encode_entry_bits(out: &mut Vec<u8>, key: &[u8], e: &IndexEntry, bits: u8) {
    debug_assert!(key.len() <= KEY_LEN_MAX);
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.push(bits);
    out.extend_from_slice(&e.atime.bytes());
    out.extend_from_slice(&e.offset.to_le_bytes());
    out.extend_from_slice(&e.cas.to_le_bytes());
    out.extend_from_slice(&e.value_len.to_le_bytes());
    out.extend_from_slice(&e.flags.to_le_bytes());
    out.extend_from_slice(&e.exptime.to_le_bytes());
    out.extend_from_slice(key);
}

/// Decodes the entry at `at` of `data` (entry number `n`, for the error): its key, its entry
/// with the stored bits as they are, and where the next entry starts. `region_bytes` bounds the
/// record offsets.
pub fn decode_entry(
    data: &[u8],
    at: usize,
    n: u64,
    region_bytes: u64,
) -> Result<(&[u8], IndexEntry, usize), String> {
    let Some(head) = data.get(at..at + ENTRY_BYTES) else {
        return Err(format!("entry {n} runs past the part's data"));
    };
    let key_len = u16::from_le_bytes([head[0], head[1]]) as usize;
    let e = IndexEntry {
        bits: head[2],
        atime: Atime::from_bytes([head[3], head[4], head[5]]),
        offset: u64_at(head, 6),
        cas: u64_at(head, 14),
        value_len: u32_at(head, 22),
        flags: u32_at(head, 26),
        exptime: u32_at(head, 30),
    };
    let Some(key) = data.get(at + ENTRY_BYTES..at + ENTRY_BYTES + key_len) else {
        return Err(format!("entry {n}'s key runs past the part's data"));
    };
    if key_len == 0 || key_len > KEY_LEN_MAX {
        return Err(format!("entry {n} has a key of {key_len} bytes"));
    }
    let end = e.offset + format::record_bytes(key_len, e.value_len as usize) as u64;
    if e.offset % 8 != 0 || end > region_bytes {
        return Err(format!("entry {n} points outside the log ({})", e.offset));
    }
    Ok((key, e, at + ENTRY_BYTES + key_len))
}

/// Adds the `entries` entries of `data` to `index`, leaving out those expired at `now`. `Err`
/// names the damage (the CRC matched, so only a bug writes such a part: it is refused all the
/// same). `region_bytes` bounds the record offsets.
pub fn decode_entries(
    data: &[u8],
    entries: u32,
    now: u32,
    region_bytes: u64,
    index: &mut Index,
) -> Result<(), String> {
    let mut at = 0usize;
    for n in 0..entries {
        let (key, mut e, next) = decode_entry(data, at, n as u64, region_bytes)?;
        e.bits &= STALE;
        if !e.expired(now) && index.insert(key.into(), e).is_some() {
            return Err(format!("entry {n} repeats a key"));
        }
        at = next;
    }
    if at != data.len() {
        return Err(format!(
            "{} bytes after the last entry",
            data.len().saturating_sub(at)
        ));
    }
    Ok(())
}

/// A complete generation on the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    pub generation: u64,
    pub base_seq: u64,
    pub end_seq: u64,
    /// Its parts' segments, in part order.
    pub segs: Vec<usize>,
    pub entries: u64,
    pub bytes: u64,
}

/// The parts recovery found: which generation to load, in preference order. Pure: unit tests
/// drive it directly. A generation qualifies when its last part says how many there are, every
/// part is there once and agrees on `base_seq`, and an engine checkpoint covers its end.
pub fn candidates(parts: &[PartHeader], seq_max: u64) -> Vec<Generation> {
    let mut gens: Vec<u64> = parts.iter().map(|p| p.generation).collect();
    gens.sort_unstable_by(|a, b| b.cmp(a));
    gens.dedup();
    let mut out = Vec::new();
    for g in gens {
        let mine: Vec<&PartHeader> = parts.iter().filter(|p| p.generation == g).collect();
        let Some(last) = mine.iter().find(|p| p.parts > 0) else {
            continue;
        };
        let n = last.parts as usize;
        let mut segs = vec![usize::MAX; n];
        let mut ok = mine.len() == n && last.end_seq <= seq_max && last.end_seq >= last.base_seq;
        for p in &mine {
            let i = p.part as usize;
            if i >= n || segs[i] != usize::MAX || p.base_seq != last.base_seq {
                ok = false;
                break;
            }
            if i + 1 < n && p.parts != 0 {
                ok = false;
                break;
            }
            segs[i] = p.seg_no as usize;
        }
        if ok {
            out.push(Generation {
                generation: g,
                base_seq: last.base_seq,
                end_seq: last.end_seq,
                segs,
                entries: mine.iter().map(|p| p.entries as u64).sum(),
                bytes: mine.iter().map(|p| p.data_bytes as u64).sum(),
            });
        }
    }
    out
}

/// Reads and decodes `g` into a fresh index. `Err` says what was wrong with it.
pub async fn load<D: Device>(
    dev: &Region<D>,
    seg_bytes: u64,
    g: &Generation,
    now: u32,
) -> Result<Index, String> {
    let mut index = Index::with_capacity(g.entries as usize);
    for (part, &seg) in g.segs.iter().enumerate() {
        let base = seg as u64 * seg_bytes;
        let head = dev
            .read_at(base, SEG_HEADER_BYTES as usize)
            .await
            .map_err(|e| format!("part {part}: {e}"))?;
        let h = decode_part_header(&head)
            .ok_or_else(|| format!("part {part}: its header changed since the first read"))?;
        let data_bytes = h.data_bytes as u64;
        if SEG_HEADER_BYTES + data_bytes > seg_bytes {
            return Err(format!(
                "part {part}: {data_bytes} bytes do not fit its segment"
            ));
        }
        let buf = dev
            .read_at(base + SEG_HEADER_BYTES, align_up(data_bytes) as usize)
            .await
            .map_err(|e| format!("part {part}: {e}"))?;
        let data = &buf[..data_bytes as usize];
        if crc32c::crc32c(data) != h.data_crc {
            return Err(format!("part {part} (segment {seg}): checksum mismatch"));
        }
        decode_entries(data, h.entries, now, dev.size_bytes(), &mut index)
            .map_err(|e| format!("part {part} (segment {seg}): {e}"))?;
    }
    Ok(index)
}

/// When to take one: `records_min` records appended since the last one began and a quarter of
/// the index's size, or `interval` since the last one with anything appended at all.
pub struct IndexCheckpointConfig {
    pub records_min: u64,
    pub interval: Duration,
}

/// The shard's index-checkpoint state, kept by the engine (GC and recovery read it).
#[derive(Default)]
pub struct IndexCheckpoints {
    /// The newest complete generation on the device.
    pub current: RefCell<Option<Generation>>,
    /// An older generation still on the device (until the newer one is covered).
    pub previous: RefCell<Option<Generation>>,
    /// The next generation number to write.
    pub next_generation: Cell<u64>,
    pub written: Cell<u64>,
    pub abandoned: Cell<u64>,
    /// Whether recovery loaded one, and how many generations it refused.
    pub loaded: Cell<bool>,
    pub rejected: Cell<u64>,
    /// How long recovery took (load and scan), in milliseconds.
    pub recovery_ms: Cell<u64>,
}

/// Free segments a checkpoint leaves untouched for writes and GC.
fn free_margin(segments: usize) -> usize {
    4 + segments / 16
}

/// Takes index checkpoints when due, until the device fails (the log is poisoned; returned).
pub async fn run_index_checkpoints<D: Device + 'static>(
    engine: Rc<Engine<D>>,
    cfg: IndexCheckpointConfig,
) -> LogError {
    let mut last = Instant::now();
    loop {
        glommio::timer::sleep(Duration::from_millis(500)).await;
        if engine.log.poisoned().is_some() {
            // The flush task reports the failure; nothing more is written.
            continue;
        }
        let since = {
            let base = engine
                .ixckpt
                .current
                .borrow()
                .as_ref()
                .map_or(0, |g| g.base_seq);
            engine.log.last_seq().saturating_sub(base)
        };
        let len = engine.index.borrow().len() as u64;
        let due = since > 0
            && (since >= cfg.records_min.max(len / 4) || last.elapsed() >= cfg.interval)
            && engine.pending_flush.borrow().is_empty();
        if !due {
            continue;
        }
        match write_one(&engine).await {
            Ok(true) => last = Instant::now(),
            Ok(false) => {
                engine
                    .ixckpt
                    .abandoned
                    .set(engine.ixckpt.abandoned.get() + 1);
                // Try again after a while, not at once (the table grew, or space was short).
                glommio::timer::sleep(Duration::from_secs(5)).await;
            }
            // The device failed under it: the shard stops taking writes, as for any failed
            // write of its log.
            Err(e) => return engine.log.fail(e),
        }
    }
}

/// Writes one generation. `Ok(false)`: given up (the table rehashed, or free segments ran
/// short); what it wrote is freed.
pub async fn write_one<D: Device + 'static>(engine: &Rc<Engine<D>>) -> Result<bool, IoError> {
    let log = &engine.log;
    let nsegs = log.segs.borrow().len();
    let generation = engine.ixckpt.next_generation.get().max(1);
    engine.ixckpt.next_generation.set(generation + 1);
    let base_seq = match engine.gc_copies_from.get() {
        Some(first) => log.last_seq().min(first - 1),
        None => log.last_seq(),
    };
    let r = walk(engine, generation, base_seq, free_margin(nsegs)).await;
    let (written, g) = match r {
        Ok(Walked::Done(g)) => (g.segs.clone(), Some(g)),
        Ok(Walked::Abandoned(segs)) => (segs, None),
        Err(e) => return Err(e),
    };
    let Some(g) = g else {
        for seg in written {
            log.free_segment(seg).await?;
        }
        return Ok(false);
    };
    // Every part is written; fdatasync makes the generation survive power loss (its headers
    // were written after their data, and a reader checks every part's checksum).
    log.dev.sync().await?;
    let older = engine.ixckpt.current.replace(Some(g.clone()));
    if let Some(old) = older {
        *engine.ixckpt.previous.borrow_mut() = Some(old);
        // Recovery takes the new generation only once an engine checkpoint covers its end;
        // until then the old one is what a restart loads.
        while engine.checkpoint_seq.get() < g.end_seq {
            if log.poisoned().is_some() {
                return Ok(true);
            }
            engine.checkpoint_signal.wait().await;
        }
        let old = engine.ixckpt.previous.take().expect("set above");
        for seg in old.segs {
            log.free_segment(seg).await?;
        }
    }
    engine.ixckpt.written.set(engine.ixckpt.written.get() + 1);
    Ok(true)
}

enum Walked {
    Done(Generation),
    /// The segments written so far.
    Abandoned(Vec<usize>),
}

/// One part being filled: its segment, the bytes not yet written, where they go.
struct Part {
    seg: usize,
    pending: Vec<u8>,
    written: u64,
    entries: u32,
    crc: u32,
}

async fn walk<D: Device + 'static>(
    engine: &Rc<Engine<D>>,
    generation: u64,
    base_seq: u64,
    margin: usize,
) -> Result<Walked, IoError> {
    let log = &engine.log;
    let seg_bytes = log.seg_bytes;
    let room = (seg_bytes - SEG_HEADER_BYTES) as usize;
    let moves = engine.index.borrow().moves();
    let mut done: Vec<usize> = Vec::new();
    let mut entries = 0u64;
    let mut bytes = 0u64;
    let mut next_bucket = 0usize;
    let Some(seg) = log.take_segment_for_index(margin) else {
        return Ok(Walked::Abandoned(done));
    };
    let mut part = Part {
        seg,
        pending: Vec::with_capacity(CHUNK_BYTES + 4096),
        written: 0,
        entries: 0,
        crc: 0,
    };
    loop {
        // One slice of buckets, with no await inside: the index cannot change under it.
        let (finished, full) = {
            let index = engine.index.borrow();
            if index.moves() != moves {
                drop(index);
                done.push(part.seg);
                return Ok(Walked::Abandoned(done));
            }
            let now = Engine::<D>::now();
            let end = (next_bucket + WALK_STEP_BUCKETS).min(index.buckets());
            let mut full = false;
            while next_bucket < end {
                if let Some((key, e)) = index.bucket(next_bucket) {
                    if !e.expired(now) {
                        let n = entry_bytes(key);
                        if part.written as usize + part.pending.len() + n > room {
                            full = true;
                            break;
                        }
                        encode_entry(&mut part.pending, key, e);
                        part.entries += 1;
                    }
                }
                next_bucket += 1;
            }
            (next_bucket >= index.buckets(), full)
        };
        // Write whole chunks as they fill; the part's rest when it is full or the walk ends.
        while part.pending.len() >= CHUNK_BYTES || ((full || finished) && !part.pending.is_empty())
        {
            let n = part.pending.len().min(CHUNK_BYTES);
            write_data(engine, &mut part, n).await?;
        }
        if full || finished {
            let end_seq = if finished { log.last_seq() } else { 0 };
            let parts = if finished { done.len() as u32 + 1 } else { 0 };
            let h = PartHeader {
                seg_no: part.seg as u32,
                generation,
                base_seq,
                end_seq,
                part: done.len() as u32,
                parts,
                entries: part.entries,
                data_bytes: part.written as u32,
                data_crc: part.crc,
            };
            let mut buf = log.dev.alloc(SEG_HEADER_BYTES as usize);
            buf.fill(0);
            buf[..PART_HEADER_BYTES].copy_from_slice(&encode_part_header(&h));
            log.dev.write_at(buf, part.seg as u64 * seg_bytes).await?;
            entries += part.entries as u64;
            bytes += part.written;
            done.push(part.seg);
            if finished {
                return Ok(Walked::Done(Generation {
                    generation,
                    base_seq,
                    end_seq,
                    segs: done,
                    entries,
                    bytes,
                }));
            }
            let Some(seg) = log.take_segment_for_index(margin) else {
                return Ok(Walked::Abandoned(done));
            };
            part = Part {
                seg,
                pending: std::mem::take(&mut part.pending),
                written: 0,
                entries: 0,
                crc: 0,
            };
        }
        glommio::yield_if_needed().await;
    }
}

/// Writes the first `n` pending bytes of `part` after what it wrote so far.
async fn write_data<D: Device + 'static>(
    engine: &Rc<Engine<D>>,
    part: &mut Part,
    n: usize,
) -> Result<(), IoError> {
    debug_assert!(part.written % BLOCK_BYTES == 0 || n == 0);
    let log = &engine.log;
    let mut buf = log.dev.alloc(align_up(n as u64) as usize);
    buf.fill(0);
    buf[..n].copy_from_slice(&part.pending[..n]);
    part.crc = crc32c::crc32c_append(part.crc, &part.pending[..n]);
    let at = part.seg as u64 * log.seg_bytes + SEG_HEADER_BYTES + part.written;
    log.dev.write_at(buf, at).await?;
    part.pending.drain(..n);
    part.written += n as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(generation: u64, part: u32, parts: u32, seg_no: u32) -> PartHeader {
        PartHeader {
            seg_no,
            generation,
            base_seq: 100,
            end_seq: if parts > 0 { 150 } else { 0 },
            part,
            parts,
            entries: 10,
            data_bytes: 340,
            data_crc: 7,
        }
    }

    #[test]
    fn a_part_header_round_trips_and_any_flipped_bit_is_refused() {
        let h = header(3, 1, 2, 9);
        let b = encode_part_header(&h);
        assert_eq!(decode_part_header(&b), Some(h));
        for bit in 0..PART_HEADER_BYTES * 8 {
            let mut bad = b;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode_part_header(&bad), None, "bit {bit}");
        }
        assert_eq!(decode_part_header(&[0; 64]), None);
    }

    #[test]
    fn only_a_complete_covered_generation_is_a_candidate_newest_first() {
        let full2 = [header(2, 0, 0, 4), header(2, 1, 2, 5)];
        let full1 = [header(1, 0, 1, 3)];
        let all: Vec<PartHeader> = full2.iter().chain(&full1).copied().collect();
        let c = candidates(&all, 200);
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].generation, c[0].segs.clone()), (2, vec![4, 5]));
        assert_eq!((c[1].generation, c[1].segs.clone()), (1, vec![3]));
        // Not yet covered by an engine checkpoint: the older one only.
        assert_eq!(candidates(&all, 149).len(), 0);
        let mut later = all.clone();
        later[1].end_seq = 180;
        assert_eq!(candidates(&later, 170)[0].generation, 1);
        // A part missing, repeated, or from another base: refused.
        assert_eq!(candidates(&[header(2, 1, 2, 5)], 200), vec![]);
        let twice = [header(2, 1, 2, 5), header(2, 1, 2, 6)];
        assert_eq!(candidates(&twice, 200), vec![]);
        let mut other = full2;
        other[0].base_seq = 99;
        assert_eq!(candidates(&other, 200), vec![]);
        // No last part (the walk died before it): refused.
        assert_eq!(candidates(&[header(4, 0, 0, 1)], 200), vec![]);
    }

    #[test]
    fn entries_round_trip_and_damage_is_refused() {
        let e = IndexEntry {
            offset: 4096 + 8 * 3,
            cas: 77,
            value_len: 5,
            flags: 9,
            exptime: 0,
            bits: STALE,
            atime: Atime::at(1_800_000_123),
        };
        let mut data = Vec::new();
        encode_entry(&mut data, b"alpha", &e);
        encode_entry(&mut data, b"beta", &IndexEntry { cas: 78, ..e });
        let mut index = Index::default();
        decode_entries(&data, 2, 0, 1 << 20, &mut index).unwrap();
        assert_eq!(index.get(b"alpha"), Some(&e));
        assert_eq!(index.get(b"beta").map(|e| e.cas), Some(78));
        // Expired entries are left out.
        let mut old = Vec::new();
        encode_entry(&mut old, b"gone", &IndexEntry { exptime: 10, ..e });
        let mut index = Index::default();
        decode_entries(&old, 1, 20, 1 << 20, &mut index).unwrap();
        assert!(index.is_empty());
        // Too few bytes, too many, an offset outside the region, a repeated key.
        let mut index = Index::default();
        assert!(decode_entries(&data[..data.len() - 1], 2, 0, 1 << 20, &mut index).is_err());
        let mut index = Index::default();
        assert!(decode_entries(&data, 1, 0, 1 << 20, &mut index).is_err());
        let mut index = Index::default();
        assert!(decode_entries(&data, 2, 0, 4096, &mut index).is_err());
        let mut twice = Vec::new();
        encode_entry(&mut twice, b"alpha", &e);
        encode_entry(&mut twice, b"alpha", &e);
        let mut index = Index::default();
        assert!(decode_entries(&twice, 2, 0, 1 << 20, &mut index).is_err());
    }
}
