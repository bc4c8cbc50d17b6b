//! The value log of one shard: segments on the shard's device region, an append buffer, and
//! batched writes (one write per batch, issued by the flush task).
//!
//! Durability contract: the Raft log, not this log, is what makes a write durable. `append` only
//! places a record in memory and returns its seq; the flush task writes batches (4 KiB or 5 ms,
//! like the Raft log) without a sync, and advances `written_seq()`. [`ValueLog::sync`] is the
//! checkpoint's barrier: after it, every record written before survives power loss. A failed
//! write or sync poisons the log: nothing appended afterwards is reported written, and every
//! waiter gets the error.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use keel_nvme::{align_up, Device, IoError, Region, BLOCK_BYTES};
pub use keel_raftlog::Signal;

use super::format::{self, Header, Kind, SegHeader, SEG_HEADER_BYTES};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegState {
    Free,
    /// Being appended to.
    Active,
    /// Full (or closed at start-up); a GC candidate.
    Sealed,
    /// Holds a part of an index checkpoint (engine/index_checkpoint.rs); never collected.
    Index,
    /// Holds a feature-table slice (engine/tables.rs); never collected.
    Table,
}

#[derive(Clone, Copy, Debug)]
pub struct Seg {
    pub state: SegState,
    pub first_seq: u64,
    /// Bytes of records in this segment that recovery would still need.
    pub live: u64,
}

/// A record to append.
pub struct NewRecord<'a> {
    pub kind: Kind,
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub flags: u32,
    pub exptime: u32,
    pub time: u32,
    /// Keep this CAS (GC moves); `None` assigns the record's own seq as its CAS.
    pub cas: Option<u64>,
    pub bits: u8,
}

#[derive(Clone, Copy, Debug)]
pub struct Appended {
    pub seq: u64,
    pub cas: u64,
    /// Region offset of the record.
    pub offset: u64,
    pub len: u32,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    #[error("out of space: no free segment (all {0} segments hold live data)")]
    Full(usize),
    #[error("storage failed, the shard is read-only until restart: {0}")]
    Poisoned(Rc<str>),
}

struct WriteState {
    active: u32,
    /// Region offset of `buf[0]`; block aligned.
    buf_start: u64,
    /// Records not yet handed to a flush, plus the already-flushed head of the partial block
    /// they start in (rewritten with identical bytes, so a torn rewrite cannot damage it).
    buf: Vec<u8>,
    /// Buffers of segments sealed since the last flush.
    sealed: Vec<(u64, Vec<u8>)>,
    /// (offset, len) of the chunks of the batch on its way to the device.
    in_flight: Vec<(u64, u64)>,
    next_seq: u64,
    pending_bytes: usize,
    oldest_pending: Option<Instant>,
}

/// A write batch taken by the flush task.
pub struct Batch {
    chunks: Vec<(u64, Vec<u8>)>,
    end_seq: u64,
}

pub struct ValueLog<D: Device> {
    pub dev: Region<D>,
    pub seg_bytes: u64,
    pub value_len_max: usize,
    batch_bytes_max: usize,
    flush_delay: Duration,
    /// Free segments user writes must leave for GC, which needs room to move live data into.
    gc_reserve: usize,
    pub segs: RefCell<Vec<Seg>>,
    free: RefCell<VecDeque<u32>>,
    w: RefCell<WriteState>,
    written_seq: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
    poisoned: RefCell<Option<Rc<str>>>,
    pub flush_signal: Signal,
    pub stats: LogStats,
}

#[derive(Default)]
pub struct LogStats {
    pub flushes: Cell<u64>,
    pub bytes_written: Cell<u64>,
    pub records_appended: Cell<u64>,
}

pub struct LogConfig {
    pub seg_bytes: u64,
    pub value_len_max: usize,
    pub batch_bytes_max: usize,
    pub flush_delay: Duration,
}

impl<D: Device> ValueLog<D> {
    /// A log over `dev` whose segments were found by recovery (`segs`); appends continue in a
    /// fresh segment after `next_seq - 1`.
    pub fn new(
        dev: Region<D>,
        cfg: &LogConfig,
        mut segs: Vec<Seg>,
        next_seq: u64,
    ) -> Result<Self, LogError> {
        assert_eq!(dev.size_bytes() % cfg.seg_bytes, 0);
        assert_eq!(segs.len() as u64, dev.size_bytes() / cfg.seg_bytes);
        for s in segs.iter_mut() {
            if s.state == SegState::Active {
                s.state = SegState::Sealed;
            }
        }
        let free: VecDeque<u32> = segs
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state == SegState::Free)
            .map(|(i, _)| i as u32)
            .collect();
        let nsegs = segs.len();
        let log = ValueLog {
            dev,
            seg_bytes: cfg.seg_bytes,
            value_len_max: cfg.value_len_max,
            batch_bytes_max: cfg.batch_bytes_max,
            flush_delay: cfg.flush_delay,
            gc_reserve: 1,
            segs: RefCell::new(segs),
            free: RefCell::new(free),
            w: RefCell::new(WriteState {
                active: u32::MAX,
                buf_start: 0,
                buf: Vec::new(),
                sealed: Vec::new(),
                in_flight: Vec::new(),
                next_seq,
                pending_bytes: 0,
                oldest_pending: None,
            }),
            written_seq: Cell::new(next_seq - 1),
            waiters: RefCell::new(Vec::new()),
            poisoned: RefCell::new(None),
            flush_signal: Signal::default(),
            stats: LogStats::default(),
        };
        if !log.open_segment(true) {
            return Err(LogError::Full(nsegs));
        }
        Ok(log)
    }

    /// Takes a free segment for an index checkpoint's part, leaving at least `margin` free
    /// ones (and GC's reserve) to writes. Given back with [`ValueLog::free_segment`].
    pub fn take_segment_for_index(&self, margin: usize) -> Option<usize> {
        let mut free = self.free.borrow_mut();
        if free.len() <= margin + self.gc_reserve {
            return None;
        }
        let seg = free.pop_front()? as usize;
        self.segs.borrow_mut()[seg] = Seg {
            state: SegState::Index,
            first_seq: 0,
            live: 0,
        };
        Some(seg)
    }

    /// Takes `n` free segments for a table slice, leaving at least a sixteenth of the device
    /// (and GC's reserve) to writes. Given back one by one with [`ValueLog::free_segment`].
    pub fn take_segments_for_table(&self, n: usize) -> Option<Vec<usize>> {
        let mut free = self.free.borrow_mut();
        let margin = 4 + self.segs.borrow().len() / 16;
        if free.len() < n + margin + self.gc_reserve {
            return None;
        }
        let taken: Vec<usize> = free.drain(..n).map(|s| s as usize).collect();
        let mut segs = self.segs.borrow_mut();
        for &s in &taken {
            segs[s] = Seg {
                state: SegState::Table,
                first_seq: 0,
                live: 0,
            };
        }
        Some(taken)
    }

    pub fn seg_of(&self, offset: u64) -> usize {
        (offset / self.seg_bytes) as usize
    }

    pub fn free_segments(&self) -> usize {
        self.free.borrow().len()
    }

    /// Every record up to this seq has been written to the device (not necessarily synced).
    pub fn written_seq(&self) -> u64 {
        self.written_seq.get()
    }

    /// Whether the record at `offset` is still only in memory (buffered or being written), so a
    /// read of the device would not find it.
    pub fn is_unwritten(&self, offset: u64) -> bool {
        let w = self.w.borrow();
        let inside = |&(at, len): &(u64, u64)| offset >= at && offset < at + len;
        (w.active != u32::MAX && self.seg_of(offset) == w.active as usize && offset >= w.buf_start)
            || w.sealed
                .iter()
                .map(|(at, b)| (*at, b.len() as u64))
                .any(|c| inside(&c))
            || w.in_flight.iter().any(inside)
    }

    pub fn last_seq(&self) -> u64 {
        self.w.borrow().next_seq - 1
    }

    pub fn poisoned(&self) -> Option<Rc<str>> {
        self.poisoned.borrow().clone()
    }

    pub fn active_segment(&self) -> usize {
        self.w.borrow().active as usize
    }

    /// Takes a free segment and starts appending there. `for_gc` may use the reserve.
    fn open_segment(&self, for_gc: bool) -> bool {
        let reserve = if for_gc { 0 } else { self.gc_reserve };
        if self.free.borrow().len() <= reserve {
            return false;
        }
        let seg_no = self
            .free
            .borrow_mut()
            .pop_front()
            .expect("checked non-empty");
        let mut w = self.w.borrow_mut();
        let mut segs = self.segs.borrow_mut();
        if w.active != u32::MAX {
            segs[w.active as usize].state = SegState::Sealed;
            let old = std::mem::take(&mut w.buf);
            if !old.is_empty() {
                let at = w.buf_start;
                w.sealed.push((at, old));
            }
        }
        let first_seq = w.next_seq;
        segs[seg_no as usize] = Seg {
            state: SegState::Active,
            first_seq,
            live: 0,
        };
        w.active = seg_no;
        w.buf_start = seg_no as u64 * self.seg_bytes;
        w.buf = vec![0; SEG_HEADER_BYTES as usize];
        format::encode_seg_header(&mut w.buf, &SegHeader { seg_no, first_seq });
        true
    }

    /// Places a record in the append buffer. On the device once `written_seq() >= seq`.
    pub fn append(&self, r: &NewRecord<'_>, for_gc: bool) -> Result<Appended, LogError> {
        if let Some(p) = self.poisoned() {
            return Err(LogError::Poisoned(p));
        }
        let len = format::record_bytes(r.key.len(), r.value.len());
        assert!(
            len as u64 + SEG_HEADER_BYTES <= self.seg_bytes,
            "record larger than a segment"
        );
        let fits = {
            let w = self.w.borrow();
            let pos = w.buf_start + w.buf.len() as u64;
            let seg_end = (w.active as u64 + 1) * self.seg_bytes;
            pos + len as u64 <= seg_end
        };
        if !fits && !self.open_segment(for_gc) {
            return Err(LogError::Full(self.segs.borrow().len()));
        }
        let mut w = self.w.borrow_mut();
        let seq = w.next_seq;
        w.next_seq += 1;
        let cas = r.cas.unwrap_or(seq);
        let offset = w.buf_start + w.buf.len() as u64;
        let h = Header {
            seq,
            cas,
            value_len: r.value.len() as u32,
            flags: r.flags,
            exptime: r.exptime,
            time: r.time,
            key_len: r.key.len() as u16,
            kind: r.kind,
            bits: r.bits,
        };
        format::encode(&mut w.buf, &h, r.key, r.value);
        w.pending_bytes += len;
        let first = w.oldest_pending.is_none();
        if first {
            w.oldest_pending = Some(Instant::now());
        }
        let full = w.pending_bytes >= self.batch_bytes_max;
        drop(w);
        self.segs.borrow_mut()[self.seg_of(offset)].live += len as u64;
        self.stats
            .records_appended
            .set(self.stats.records_appended.get() + 1);
        if first || full {
            self.flush_signal.notify();
        }
        Ok(Appended {
            seq,
            cas,
            offset,
            len: len as u32,
        })
    }

    /// Marks `len` bytes at `offset` as no longer needed (overwritten, deleted, expired).
    pub fn release(&self, offset: u64, len: u32) {
        let seg = self.seg_of(offset);
        let mut segs = self.segs.borrow_mut();
        debug_assert!(segs[seg].live >= len as u64);
        segs[seg].live = segs[seg].live.saturating_sub(len as u64);
    }

    /// When the flush task should write: `Some(Duration::ZERO)` now, `Some(d)` after `d`,
    /// `None` when nothing is pending. Pure decision: no clock read inside beyond `now`.
    pub fn flush_due(&self, now: Instant) -> Option<Duration> {
        let w = self.w.borrow();
        let oldest = w.oldest_pending?;
        if w.pending_bytes >= self.batch_bytes_max {
            return Some(Duration::ZERO);
        }
        Some((oldest + self.flush_delay).saturating_duration_since(now))
    }

    /// Takes everything pending as one batch, keeping the partial last block's bytes so the
    /// next batch rewrites that block whole.
    pub fn take_batch(&self) -> Option<Batch> {
        let mut w = self.w.borrow_mut();
        w.oldest_pending?;
        let mut chunks = std::mem::take(&mut w.sealed);
        let full = w.buf.len() / BLOCK_BYTES as usize * BLOCK_BYTES as usize;
        // The next buffer starts as large as this one grew: a steady load appends into it
        // without growing it again (a realloc copied the whole batch each time it doubled).
        let mut tail = Vec::with_capacity(w.buf.capacity());
        tail.extend_from_slice(&w.buf[full..]);
        let buf = std::mem::replace(&mut w.buf, tail);
        chunks.push((w.buf_start, buf));
        w.in_flight = chunks.iter().map(|(at, b)| (*at, b.len() as u64)).collect();
        w.buf_start += full as u64;
        w.pending_bytes = 0;
        w.oldest_pending = None;
        Some(Batch {
            chunks,
            end_seq: w.next_seq - 1,
        })
    }

    /// Writes a batch (no sync: the Raft log already holds these ops durably), then reports it
    /// written. On failure the log is poisoned.
    pub async fn write_batch(&self, batch: Batch) -> Result<(), LogError> {
        let mut result: Result<(), IoError> = Ok(());
        let mut bytes = 0u64;
        for (offset, data) in &batch.chunks {
            let mut dma = self.dev.alloc(align_up(data.len() as u64) as usize);
            dma[..data.len()].copy_from_slice(data);
            bytes += dma.len() as u64;
            if let Err(e) = self.dev.write_at(dma, *offset).await {
                result = Err(e);
                break;
            }
        }
        self.w.borrow_mut().in_flight.clear();
        match result {
            Ok(()) => {
                self.stats.flushes.set(self.stats.flushes.get() + 1);
                self.stats
                    .bytes_written
                    .set(self.stats.bytes_written.get() + bytes);
                assert!(batch.end_seq >= self.written_seq.get());
                self.written_seq.set(batch.end_seq);
                self.wake_waiters();
                Ok(())
            }
            Err(e) => Err(self.poison(e)),
        }
    }

    /// Poisons the log for a failure found outside it (an index checkpoint's write).
    pub fn fail(&self, e: IoError) -> LogError {
        self.poison(e)
    }

    fn poison(&self, e: IoError) -> LogError {
        let msg: Rc<str> = e.to_string().into();
        *self.poisoned.borrow_mut() = Some(msg.clone());
        self.wake_waiters();
        LogError::Poisoned(msg)
    }

    /// The checkpoint barrier: waits until every record appended so far is written, then
    /// fdatasyncs the device. Returns the seq through which the log is now durable.
    pub async fn sync(&self) -> Result<u64, LogError> {
        let seq = self.last_seq();
        self.flush_signal.notify();
        self.written(seq).await?;
        // fdatasync: every record up to `seq` now survives power loss.
        self.dev.sync().await.map_err(|e| self.poison(e))?;
        Ok(seq)
    }

    fn wake_waiters(&self) {
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves once `seq` is written (or the log is poisoned).
    pub fn written(&self, seq: u64) -> WrittenWait<'_, D> {
        WrittenWait { log: self, seq }
    }

    /// Reads the record of `key` at `offset` and checks it is the version the index expects
    /// (`cas`). `None` when the bytes there are not that record any more (moved by GC) or are
    /// damaged; the caller re-reads the index.
    pub async fn read_value(
        &self,
        offset: u64,
        key: &[u8],
        value_len: u32,
        cas: u64,
    ) -> Result<Option<Vec<u8>>, IoError> {
        let len = format::HEADER_BYTES + key.len() + value_len as usize;
        let buf = self.dev.read_at(offset, len).await?;
        Ok(match format::decode(&buf, self.value_len_max) {
            Ok(r) if r.key == key && r.header.cas == cas && r.header.kind == Kind::Put => {
                Some(r.value.to_vec())
            }
            _ => None,
        })
    }

    /// Zeroes a segment's header block and syncs, then makes it free: after a crash, recovery
    /// will not replay its stale records.
    pub async fn free_segment(&self, seg: usize) -> Result<(), IoError> {
        let buf = self.dev.alloc(SEG_HEADER_BYTES as usize);
        self.dev.write_at(buf, seg as u64 * self.seg_bytes).await?;
        self.dev.sync().await?;
        self.segs.borrow_mut()[seg] = Seg {
            state: SegState::Free,
            first_seq: 0,
            live: 0,
        };
        self.free.borrow_mut().push_back(seg as u32);
        Ok(())
    }
}

pub struct WrittenWait<'a, D: Device> {
    log: &'a ValueLog<D>,
    seq: u64,
}

impl<D: Device> Future for WrittenWait<'_, D> {
    type Output = Result<(), LogError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.log.written_seq.get() >= self.seq {
            return Poll::Ready(Ok(()));
        }
        if let Some(p) = self.log.poisoned() {
            return Poll::Ready(Err(LogError::Poisoned(p)));
        }
        self.log.waiters.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

/// The write-batching loop: waits for the first pending record, then until 4 KiB
/// (batch_bytes_max) are pending or the oldest is flush_delay old, and writes the batch. The next
/// batch fills while this one is on the device. Returns only when the log is poisoned.
pub async fn run_flush<D: Device>(log: Rc<ValueLog<D>>) -> LogError {
    loop {
        match log.flush_due(Instant::now()) {
            None => log.flush_signal.wait().await,
            Some(d) if d > Duration::ZERO => {
                futures_lite::future::or(log.flush_signal.wait(), glommio::timer::sleep(d)).await;
            }
            Some(_) => {
                let batch = log
                    .take_batch()
                    .expect("flush_due said something is pending");
                if let Err(e) = log.write_batch(batch).await {
                    return e;
                }
            }
        }
    }
}
