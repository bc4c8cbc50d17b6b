//! Segment garbage collection: moves the live records out of the emptiest sealed segment and
//! frees it. Runs in the shard's low-priority task queue and sleeps between segments in
//! proportion to the bytes it read, so it stays under `gc.bytes_per_sec_max`.
//!
//! Safety rules: a record is moved only if the index still points at it (a put) or recovery
//! could still need it (a tombstone, touch or flush while an older segment exists); index
//! entries are switched to the moved copies, and the segment freed, only after a checkpoint
//! covers the copies and every record that superseded a dropped one (recovery ignores records
//! after the last checkpoint); the old segment's header is zeroed and synced before it is reused.

use std::rc::Rc;
use std::time::Duration;

use keel_nvme::{Device, IoError};

use super::format::{self, Kind, SEG_HEADER_BYTES};
use super::log::{NewRecord, SegState};
use super::Engine;

pub struct GcConfig {
    /// Segments whose live bytes are below this fraction of the segment are collected.
    pub live_ratio_min: f64,
    /// Below this many free segments, any sealed segment that is not full of live data is.
    pub free_segments_min: usize,
    pub bytes_per_sec_max: u64,
    pub interval: Duration,
}

/// Picks the sealed segment to collect: the one with the fewest live bytes, if it qualifies.
/// Pure: unit tests drive it directly.
pub fn pick(
    segs: &[(SegState, u64)],
    seg_bytes: u64,
    free: usize,
    cfg: &GcConfig,
) -> Option<usize> {
    let usable = (seg_bytes - SEG_HEADER_BYTES) as f64;
    let (i, live) = segs
        .iter()
        .enumerate()
        .filter(|(_, (st, _))| *st == SegState::Sealed)
        .map(|(i, (_, live))| (i, *live))
        .min_by_key(|&(_, live)| live)?;
    let ratio = live as f64 / usable;
    let pressed = free < cfg.free_segments_min && ratio < 0.95;
    (ratio < cfg.live_ratio_min || pressed).then_some(i)
}

pub async fn run_gc<D: Device + 'static>(engine: Rc<Engine<D>>, cfg: GcConfig) -> IoError {
    loop {
        glommio::timer::sleep(cfg.interval).await;
        if engine.log.poisoned().is_some() {
            // The flush task reports the failure; nothing may be moved any more.
            continue;
        }
        let candidate = {
            let segs: Vec<_> = engine
                .log
                .segs
                .borrow()
                .iter()
                .map(|s| (s.state, s.live))
                .collect();
            pick(
                &segs,
                engine.log.seg_bytes,
                engine.log.free_segments(),
                &cfg,
            )
        };
        let Some(seg) = candidate else { continue };
        if let Err(e) = collect(&engine, seg).await {
            return e;
        }
        let pause = engine.log.seg_bytes as f64 / cfg.bytes_per_sec_max.max(1) as f64;
        glommio::timer::sleep(Duration::from_secs_f64(pause)).await;
    }
}

/// Moves what is still needed out of `seg` and frees it.
pub async fn collect<D: Device + 'static>(
    engine: &Rc<Engine<D>>,
    seg: usize,
) -> Result<(), IoError> {
    let log = &engine.log;
    let base = seg as u64 * log.seg_bytes;
    let (first_seq, older_exists) = {
        let segs = log.segs.borrow();
        let first = segs[seg].first_seq;
        (
            first,
            segs.iter().any(|s| {
                matches!(s.state, SegState::Sealed | SegState::Active) && s.first_seq < first
            }),
        )
    };
    // Side records an index checkpoint on the device replays must stay too.
    let replayed_after = engine.side_records_needed_after();
    // A segment sealed a moment ago may still have its tail in the append buffer: read it only
    // once every record appended so far is on the device (a record missed here would be lost
    // with the segment, its index entry left pointing at a freed one).
    log.flush_signal.notify();
    if log.written(log.last_seq()).await.is_err() {
        return Ok(()); // poisoned: run_gc stops moving anything
    }
    let buf = log.dev.read_at(base, log.seg_bytes as usize).await?;
    let now = Engine::<D>::now();
    let mut moved = Vec::new();
    let mut pos = SEG_HEADER_BYTES as usize;
    let mut seen = first_seq.saturating_sub(1);
    while pos + format::HEADER_BYTES <= buf.len() {
        let rec = match format::decode(&buf[pos..], log.value_len_max) {
            Ok(r) if r.header.seq > seen => r,
            _ => {
                pos += 8;
                continue;
            }
        };
        seen = rec.header.seq;
        let offset = base + pos as u64;
        pos += rec.len;
        let h = rec.header;
        let entry = engine.index.borrow().get(rec.key).copied();
        let keep = match h.kind {
            Kind::Put => entry.filter(|e| e.offset == offset && e.cas == h.cas && !e.expired(now)),
            Kind::Delete => None,
            Kind::Touch | Kind::Flush => None,
        };
        let needed = older_exists || h.seq > replayed_after;
        let rewrite = match h.kind {
            Kind::Put => keep.is_some(),
            Kind::Delete => needed && entry.is_none(),
            Kind::Touch => {
                needed && entry.is_some_and(|e| e.cas == h.cas && log.seg_of(e.offset) != seg)
            }
            Kind::Flush => needed,
        };
        if !rewrite {
            continue;
        }
        let (flags, exptime, bits) = match keep {
            Some(e) => (e.flags, e.exptime, e.bits & super::index::STALE),
            None => (h.flags, h.exptime, h.bits),
        };
        let r = NewRecord {
            kind: h.kind,
            key: rec.key,
            value: rec.value,
            flags,
            exptime,
            time: h.time,
            cas: Some(h.cas),
            bits,
        };
        if engine.gc_copies_from.get().is_none() {
            engine.gc_copies_from.set(Some(log.last_seq() + 1));
        }
        let Ok(a) = log.append(&r, true) else {
            // No room even in the reserve, or poisoned: leave the segment as it is. (The
            // copies made stay unswitched and harmless; the next collection starts afresh.)
            engine.gc_copies_from.set(None);
            return Ok(());
        };
        engine
            .stats
            .gc_moved_bytes
            .set(engine.stats.gc_moved_bytes.get() + a.len as u64);
        if h.kind == Kind::Put {
            moved.push((rec.key.to_vec(), offset, h.cas, a));
        }
        glommio::yield_if_needed().await;
    }
    // Recovery ignores records after the last checkpoint, so the moved copies count only
    // once a checkpoint covers them; until then the old segment must stay.
    // The same holds for the records that made the dropped ones dead: all were appended before
    // now, so a checkpoint through the log's current last seq covers them.
    let need = log.last_seq();
    while engine.checkpoint_seq.get() < need {
        if log.poisoned().is_some() {
            engine.gc_copies_from.set(None);
            return Ok(());
        }
        engine.checkpoint_signal.wait().await;
    }
    // An index checkpoint that walks the index from now on sees the copies' places; one that
    // began before saw the old places, but began below the copies, so a restart replays them.
    engine.gc_copies_from.set(None);
    {
        let mut index = engine.index.borrow_mut();
        for (key, old_offset, cas, a) in moved {
            match index.get_mut(&key[..]) {
                Some(e) if e.offset == old_offset && e.cas == cas => e.offset = a.offset,
                _ => log.release(a.offset, a.len),
            }
        }
    }
    log.free_segment(seg).await?;
    engine
        .stats
        .gc_segments
        .set(engine.stats.gc_segments.get() + 1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GcConfig {
        GcConfig {
            live_ratio_min: 0.5,
            free_segments_min: 2,
            bytes_per_sec_max: 1 << 30,
            interval: Duration::from_millis(1),
        }
    }

    #[test]
    fn picks_emptiest_sealed_below_threshold() {
        let seg = 1 << 20;
        let u = seg - SEG_HEADER_BYTES;
        let segs = [
            (SegState::Sealed, u / 2 + 1),
            (SegState::Sealed, u / 4),
            (SegState::Active, 0),
            (SegState::Free, 0),
        ];
        assert_eq!(pick(&segs, seg, 10, &cfg()), Some(1));
        let full = [(SegState::Sealed, u), (SegState::Active, 0)];
        assert_eq!(pick(&full, seg, 10, &cfg()), None);
    }

    #[test]
    fn space_pressure_collects_fuller_segments_but_not_full_ones() {
        let seg = 1 << 20;
        let u = seg - SEG_HEADER_BYTES;
        let segs = [(SegState::Sealed, u * 9 / 10), (SegState::Sealed, u)];
        assert_eq!(pick(&segs, seg, 10, &cfg()), None);
        assert_eq!(pick(&segs, seg, 1, &cfg()), Some(0));
        assert_eq!(pick(&[(SegState::Sealed, u)], seg, 0, &cfg()), None);
    }
}
