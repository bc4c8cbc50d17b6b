//! Group commit, the decision half: records accumulate in block-aligned chunks, and the batcher
//! says when to flush and what. Pure: it never reads a clock (callers pass `now`) and never
//! touches a device, so its tests drive time by hand.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use keel_nvme::{align_up, BLOCK_BYTES};

use crate::format::{self, Record, SegHeader, SEG_HEADER_BYTES};

/// One write: a contiguous, block-aligned byte range of one segment.
#[derive(Debug)]
pub struct Chunk {
    /// Region offset; block aligned.
    pub offset: u64,
    /// A whole number of blocks; zero padding after the last record.
    pub bytes: Vec<u8>,
    /// LSN of the last record in the chunk (every chunk holds at least one record).
    pub end_lsn: u64,
    /// The chunk starts with its segment's header block. It must not reach the device before
    /// every earlier chunk is durable: see `RaftLog::run_flush`.
    pub opens_segment: bool,
    record_bytes: usize,
}

struct Open {
    chunk: Chunk,
    /// Set when the chunk holds at least one record.
    has_record: bool,
}

pub struct Batcher {
    batch_bytes_max: usize,
    flush_delay: Duration,
    segment_bytes: u64,
    /// Chunks closed by a segment switch, oldest first.
    sealed: VecDeque<Chunk>,
    open: Option<Open>,
    /// Region offset where the next record goes.
    pos: u64,
    /// End of the active segment (region offset); 0 before the first segment.
    seg_end: u64,
    pending_bytes: usize,
    /// When the oldest record that must reach the device soon was pushed. Records pushed with
    /// `urgent = false` do not set it: they ride with the next batch.
    oldest_pending: Option<Instant>,
}

impl Batcher {
    pub fn new(batch_bytes_max: usize, flush_delay: Duration, segment_bytes: u64) -> Self {
        assert!(batch_bytes_max > 0);
        assert!(segment_bytes % BLOCK_BYTES == 0);
        Batcher {
            batch_bytes_max,
            flush_delay,
            segment_bytes,
            sealed: VecDeque::new(),
            open: None,
            pos: 0,
            seg_end: 0,
            pending_bytes: 0,
            oldest_pending: None,
        }
    }

    /// Bytes left for records in the active segment.
    pub fn room(&self) -> u64 {
        self.seg_end - self.pos
    }

    /// Starts a segment at region offset `base`: its header block goes out with the first chunk.
    pub fn start_segment(&mut self, base: u64, h: &SegHeader) {
        assert_eq!(base % self.segment_bytes, 0);
        assert_eq!(h.segment_bytes, self.segment_bytes);
        if let Some(open) = self.open.take() {
            if open.has_record {
                self.sealed.push_back(pad(open.chunk));
            }
        }
        let mut bytes = vec![0; SEG_HEADER_BYTES as usize];
        format::encode_seg_header(&mut bytes, h);
        self.open = Some(Open {
            chunk: Chunk {
                offset: base,
                bytes,
                end_lsn: 0,
                opens_segment: true,
                record_bytes: 0,
            },
            has_record: false,
        });
        self.pos = base + SEG_HEADER_BYTES;
        self.seg_end = base + self.segment_bytes;
    }

    /// Adds a record. Returns true when the flush task should look again (first pending record,
    /// the batch just filled, or a segment was sealed). A record that is not `urgent` starts no
    /// flush and no delay of its own: it goes out with the next batch that something urgent (or
    /// `hurry`) starts.
    pub fn push(&mut self, r: &Record, now: Instant, urgent: bool) -> bool {
        let len = format::record_bytes(&r.rec);
        assert!(len as u64 <= self.room(), "caller checks room() first");
        let pos = self.pos;
        let open = self.open.get_or_insert_with(|| Open {
            chunk: Chunk {
                offset: pos,
                bytes: Vec::with_capacity(BLOCK_BYTES as usize),
                end_lsn: 0,
                opens_segment: false,
                record_bytes: 0,
            },
            has_record: false,
        });
        debug_assert_eq!(open.chunk.offset + open.chunk.bytes.len() as u64, pos);
        debug_assert!(!open.has_record || open.chunk.end_lsn + 1 == r.lsn);
        format::encode(&mut open.chunk.bytes, r);
        open.chunk.end_lsn = r.lsn;
        open.chunk.record_bytes += len;
        open.has_record = true;
        self.pos += len as u64;
        let was_below = self.pending_bytes < self.batch_bytes_max;
        self.pending_bytes += len;
        if !urgent {
            return false;
        }
        let first = self.oldest_pending.is_none();
        if first {
            self.oldest_pending = Some(now);
        }
        first
            || !self.sealed.is_empty()
            || (was_below && self.pending_bytes >= self.batch_bytes_max)
    }

    /// Makes records pushed without `urgent` due as if they were (someone waits for them).
    /// Returns true when there was such a record to hurry.
    pub fn hurry(&mut self, now: Instant) -> bool {
        let lazy = !self.sealed.is_empty() || self.open.as_ref().is_some_and(|o| o.has_record);
        if lazy && self.oldest_pending.is_none() {
            self.oldest_pending = Some(now);
            return true;
        }
        false
    }

    /// When to flush: `None` when nothing is pending, `Some(ZERO)` now, `Some(d)` after `d`.
    ///
    /// `flushes_in_flight` is how many batches are on the device now. With none, whatever is
    /// pending goes at once: an idle device gains nothing from waiting, and a lone write would
    /// pay the whole delay for no batching. While batches are in flight the next one fills, and
    /// goes when `batch_bytes_max` bytes are pending (a further flush beside the others) or its
    /// oldest record is `flush_delay` old (the longest a record waits behind a slow device), or
    /// when the flushes in flight complete (the caller asks again then).
    pub fn flush_due(&self, now: Instant, flushes_in_flight: usize) -> Option<Duration> {
        let oldest = self.oldest_pending?;
        if flushes_in_flight == 0
            || !self.sealed.is_empty()
            || self.pending_bytes >= self.batch_bytes_max
        {
            return Some(Duration::ZERO);
        }
        Some((oldest + self.flush_delay).saturating_duration_since(now))
    }

    /// Whether the chunk `take_batch` would return next opens a segment.
    pub fn next_opens_segment(&self) -> bool {
        match self.sealed.front() {
            Some(c) => c.opens_segment,
            None => self.open.as_ref().is_some_and(|o| o.chunk.opens_segment),
        }
    }

    /// Takes the oldest pending chunk, padded to whole blocks. The next record starts at the next
    /// block, so a block once handed to the device is never written again and chunks in flight
    /// together never overlap.
    pub fn take_batch(&mut self) -> Option<Chunk> {
        self.oldest_pending?;
        let chunk = match self.sealed.pop_front() {
            Some(c) => c,
            None => {
                let open = self.open.take().expect("pending records are in a chunk");
                assert!(open.has_record);
                self.pos = align_up(self.pos).min(self.seg_end);
                pad(open.chunk)
            }
        };
        self.pending_bytes -= chunk.record_bytes;
        if self.sealed.is_empty() && self.open.as_ref().is_none_or(|o| !o.has_record) {
            assert_eq!(self.pending_bytes, 0);
            self.oldest_pending = None;
        }
        Some(chunk)
    }
}

fn pad(mut c: Chunk) -> Chunk {
    c.bytes.resize(align_up(c.bytes.len() as u64) as usize, 0);
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Rec;
    use raft::eraftpb::Entry;

    const SEG: u64 = 1 << 20;

    fn rec(lsn: u64, data_len: usize) -> Record {
        let e = Entry {
            index: lsn,
            term: 1,
            data: vec![7u8; data_len].into(),
            ..Default::default()
        };
        Record {
            lsn,
            group: 1,
            rec: Rec::Entry(e),
        }
    }

    fn batcher() -> Batcher {
        let mut b = Batcher::new(4096, Duration::from_millis(5), SEG);
        let h = SegHeader {
            seq: 1,
            first_lsn: 1,
            segment_bytes: SEG,
            oldest_seq: 1,
        };
        b.start_segment(0, &h);
        b
    }

    #[test]
    fn nothing_pending_means_no_flush() {
        let b = batcher();
        assert_eq!(b.flush_due(Instant::now(), 0), None);
        let mut b = b;
        assert!(b.take_batch().is_none());
    }

    #[test]
    fn an_idle_device_takes_a_lone_record_at_once() {
        let mut b = batcher();
        let t0 = Instant::now();
        assert!(
            b.push(&rec(1, 10), t0, true),
            "the first record wakes the flusher"
        );
        assert_eq!(
            b.flush_due(t0, 0),
            Some(Duration::ZERO),
            "nothing on the device: no reason to wait for more"
        );
        assert_eq!(
            b.flush_due(t0, 1),
            Some(Duration::from_millis(5)),
            "behind a flush in flight the record waits for company, 5 ms at most"
        );
        let c = b.take_batch().unwrap();
        assert_eq!(c.end_lsn, 1);
        // The next record arrives while that batch is on the device: it waits; once the device
        // is idle again (the flusher asks with 0 in flight) it goes.
        b.push(&rec(2, 10), t0 + Duration::from_millis(1), true);
        assert_eq!(
            b.flush_due(t0 + Duration::from_millis(2), 1),
            Some(Duration::from_millis(4))
        );
        assert_eq!(
            b.flush_due(t0 + Duration::from_millis(2), 0),
            Some(Duration::ZERO)
        );
        assert_eq!(b.take_batch().unwrap().end_lsn, 2);
        assert_eq!(
            b.flush_due(t0, 0),
            None,
            "nothing pending, nothing to flush"
        );
    }

    #[test]
    fn a_record_that_is_not_urgent_rides_with_the_next_batch() {
        let mut b = batcher();
        let t0 = Instant::now();
        assert!(!b.push(&rec(1, 10), t0, false), "no flush for it alone");
        assert_eq!(b.flush_due(t0, 0), None);
        assert!(b.take_batch().is_none());
        assert!(b.push(&rec(2, 10), t0, true));
        assert_eq!(b.flush_due(t0, 0), Some(Duration::ZERO));
        let c = b.take_batch().unwrap();
        assert_eq!(c.end_lsn, 2, "the lazy record went out with the urgent one");
        assert_eq!(b.flush_due(t0, 0), None);
        // Someone waiting for a lazy record hurries it.
        b.push(&rec(3, 10), t0, false);
        assert!(
            b.hurry(t0 + Duration::from_millis(1)),
            "a lazy record was pending"
        );
        assert_eq!(b.flush_due(t0, 0), Some(Duration::ZERO));
        assert_eq!(b.take_batch().unwrap().end_lsn, 3);
        assert!(!b.hurry(t0), "nothing left to hurry");
        assert_eq!(b.flush_due(t0, 0), None);
    }

    #[test]
    fn while_a_flush_is_in_flight_4_kib_start_another() {
        let mut b = batcher();
        let t0 = Instant::now();
        assert!(
            b.push(&rec(1, 1000), t0, true),
            "first record wakes the flusher"
        );
        assert_eq!(b.flush_due(t0, 1), Some(Duration::from_millis(5)));
        assert!(!b.push(&rec(2, 1000), t0, true));
        assert!(!b.push(&rec(3, 1000), t0, true));
        assert!(b.flush_due(t0, 1).unwrap() > Duration::ZERO);
        assert!(
            b.push(&rec(4, 1000), t0, true),
            "crossing 4 KiB wakes the flusher"
        );
        assert_eq!(b.flush_due(t0, 1), Some(Duration::ZERO));
        let c = b.take_batch().unwrap();
        assert!(c.opens_segment);
        assert_eq!(c.offset, 0);
        assert_eq!(c.end_lsn, 4);
        assert_eq!(c.bytes.len() as u64 % BLOCK_BYTES, 0);
        assert_eq!(b.flush_due(t0, 1), None);
        // The next record starts on a fresh block after the padded batch.
        b.push(&rec(5, 10), t0, true);
        let c2 = b.take_batch().unwrap();
        assert_eq!(c2.offset, c.offset + c.bytes.len() as u64);
        assert!(!c2.opens_segment);
    }

    #[test]
    fn while_a_flush_is_in_flight_the_oldest_waits_at_most_5_ms() {
        let mut b = batcher();
        let t0 = Instant::now();
        b.push(&rec(1, 10), t0, true);
        b.push(&rec(2, 10), t0 + Duration::from_millis(3), true);
        assert_eq!(
            b.flush_due(t0 + Duration::from_millis(4), 1),
            Some(Duration::from_millis(1)),
            "the delay counts from the oldest record, not the newest"
        );
        assert_eq!(
            b.flush_due(t0 + Duration::from_millis(5), 1),
            Some(Duration::ZERO)
        );
        assert_eq!(
            b.flush_due(t0 + Duration::from_millis(9), 1),
            Some(Duration::ZERO)
        );
        let c = b.take_batch().unwrap();
        assert_eq!(c.end_lsn, 2);
        assert_eq!(b.flush_due(t0 + Duration::from_millis(20), 1), None);
    }

    #[test]
    fn a_segment_switch_seals_the_chunk_and_flushes_now() {
        let mut b = batcher();
        let t0 = Instant::now();
        b.push(&rec(1, 10), t0, true);
        let h = SegHeader {
            seq: 2,
            first_lsn: 2,
            segment_bytes: SEG,
            oldest_seq: 1,
        };
        b.start_segment(SEG, &h);
        b.push(&rec(2, 10), t0, true);
        assert_eq!(b.flush_due(t0, 1), Some(Duration::ZERO));
        assert!(
            b.next_opens_segment(),
            "segment 1's first chunk carries its header"
        );
        let first = b.take_batch().unwrap();
        assert_eq!((first.offset, first.end_lsn), (0, 1));
        assert!(first.opens_segment);
        assert!(b.next_opens_segment());
        let second = b.take_batch().unwrap();
        assert_eq!((second.offset, second.end_lsn), (SEG, 2));
        assert!(second.opens_segment);
        assert_eq!(b.flush_due(t0, 1), None);
    }
}
