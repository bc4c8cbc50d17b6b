//! [`RaftLog`]: placement of records in segments, the flush task, recovery.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use keel_nvme::{align_up, Device, Region, BLOCK_BYTES};
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};

use crate::batcher::{Batcher, Chunk};
use crate::format::{self, Rec, Record, SegHeader, SEG_HEADER_BYTES};
use crate::state::Groups;
use crate::storage::GroupStorage;
use crate::{Config, Flush, Lsn, RaftLogError, Stats, SEGMENTS_MIN, SEGMENT_BYTES_MIN};

/// Builds a snapshot of `group` for raft-rs: (group, request_index, to).
pub type SnapshotProvider = Rc<dyn Fn(u64, u64, u64) -> raft::Result<Snapshot>>;
/// Told how long each batch's write + fdatasync took (for latency metrics; this crate keeps no
/// histograms of its own).
pub type FlushObserver = Rc<dyn Fn(Duration)>;

struct Inner {
    groups: Groups,
    batcher: Batcher,
    /// Sequence number of each segment's current use; meaningful for segments in `chain`.
    seg_seq: Vec<u64>,
    /// Live segments, oldest first; the back one is the active one.
    chain: VecDeque<u32>,
    free: VecDeque<u32>,
    /// After recovery the first record opens a fresh segment: never append after a torn tail.
    switch_needed: bool,
    next_lsn: Lsn,
    next_seq: u64,
    /// Batches handed to the device, in LSN order: (end_lsn, completed).
    in_flight: VecDeque<(Lsn, bool)>,
}

/// The Raft log of one shard. See the crate doc.
pub struct RaftLog<D: Device> {
    me: Weak<RaftLog<D>>,
    region: Region<D>,
    cfg: Config,
    segments: usize,
    inner: RefCell<Inner>,
    durable_lsn: Cell<Lsn>,
    poisoned: RefCell<Option<Rc<str>>>,
    waiters: RefCell<Vec<Waker>>,
    flush_signal: Signal,
    snapshot_provider: RefCell<Option<SnapshotProvider>>,
    flush_observer: RefCell<Option<FlushObserver>>,
    flushes: Cell<u64>,
    bytes_written: Cell<u64>,
    records: Cell<u64>,
    in_flight_max_seen: Cell<usize>,
}

fn validate(cfg: &Config, region_bytes: u64) -> Result<usize, RaftLogError> {
    let bad = |key, value: String, rule| Err(RaftLogError::Config { key, value, rule });
    if cfg.segment_bytes % BLOCK_BYTES != 0 || cfg.segment_bytes < SEGMENT_BYTES_MIN {
        return bad(
            "raftlog.segment_bytes",
            cfg.segment_bytes.to_string(),
            "must be a multiple of 4096 and >= 65536",
        );
    }
    if region_bytes / cfg.segment_bytes < SEGMENTS_MIN {
        return bad(
            "raftlog.segment_bytes",
            cfg.segment_bytes.to_string(),
            "the shard's raftlog region must hold at least 3 segments",
        );
    }
    if cfg.batch_bytes_max == 0 {
        return bad("raftlog.batch_bytes_max", "0".into(), "must be >= 1");
    }
    if cfg.flush_delay.is_zero() {
        return bad("raftlog.flush_delay_ms", "0".into(), "must be >= 1");
    }
    if cfg.flushes_in_flight_max == 0 {
        return bad("raftlog.flushes_in_flight_max", "0".into(), "must be >= 1");
    }
    Ok((region_bytes / cfg.segment_bytes) as usize)
}

fn corrupt(segment: u32, offset: u64, why: impl Into<String>) -> RaftLogError {
    RaftLogError::Corrupt {
        segment,
        offset,
        why: why.into(),
    }
}

/// What recovery found.
struct Recovered {
    groups: Groups,
    seg_seq: Vec<u64>,
    chain: VecDeque<u32>,
    last_lsn: Lsn,
    last_seq: u64,
}

impl<D: Device + 'static> RaftLog<D> {
    /// Opens the log on `region`: a region without any valid segment header is blank and starts
    /// empty; otherwise every group is recovered (rules in docs/design.md).
    pub async fn open(region: Region<D>, cfg: Config) -> Result<Rc<Self>, RaftLogError> {
        let segments = validate(&cfg, region.size_bytes())?;
        let rec = recover(&region, &cfg, segments).await?;
        let in_chain: Vec<bool> = (0..segments as u32)
            .map(|s| rec.chain.contains(&s))
            .collect();
        let free = (0..segments as u32)
            .filter(|s| !in_chain[*s as usize])
            .collect();
        let inner = Inner {
            groups: rec.groups,
            batcher: Batcher::new(cfg.batch_bytes_max, cfg.flush_delay, cfg.segment_bytes),
            seg_seq: rec.seg_seq,
            chain: rec.chain,
            free,
            switch_needed: true,
            next_lsn: rec.last_lsn + 1,
            next_seq: rec.last_seq + 1,
            in_flight: VecDeque::new(),
        };
        let log = Rc::new_cyclic(|me| RaftLog {
            me: me.clone(),
            region,
            cfg,
            segments,
            inner: RefCell::new(inner),
            durable_lsn: Cell::new(rec.last_lsn),
            poisoned: RefCell::new(None),
            waiters: RefCell::new(Vec::new()),
            flush_signal: Signal::default(),
            snapshot_provider: RefCell::new(None),
            flush_observer: RefCell::new(None),
            flushes: Cell::new(0),
            bytes_written: Cell::new(0),
            records: Cell::new(0),
            in_flight_max_seen: Cell::new(0),
        });
        free_dead_prefix(&mut log.inner.borrow_mut());
        Ok(log)
    }

    /// Groups that exist (recovered or created), ascending.
    pub fn groups(&self) -> Vec<u64> {
        self.inner.borrow().groups.map.keys().copied().collect()
    }

    /// Whether `group` exists.
    pub fn has_group(&self, group: u64) -> bool {
        self.inner.borrow().groups.map.contains_key(&group)
    }

    /// Creates `group` if absent, with `conf` as its conf state, an empty hard state and first
    /// index 1. An existing group is left as it is.
    pub fn create_group(&self, group: u64, conf: ConfState) -> Result<Lsn, RaftLogError> {
        self.check_poisoned()?;
        let mut inner = self.inner.borrow_mut();
        if inner.groups.map.contains_key(&group) {
            return Ok(inner.next_lsn - 1);
        }
        let state_bytes = state_set_bytes(&inner.groups)
            + format::record_bytes(&Rec::State {
                hs: HardState::default(),
                conf: conf.clone(),
                compacted_index: 0,
                compacted_term: 0,
            }) as u64;
        if SEG_HEADER_BYTES + state_bytes > self.cfg.segment_bytes / 2 {
            return Err(RaftLogError::TooManyGroups {
                groups: inner.groups.map.len() + 1,
            });
        }
        let rec = Rec::Create(conf);
        self.plan(&inner, [format::record_bytes(&rec)], false)?;
        Ok(self.place(&mut inner, group, rec, Flush::Now))
    }

    /// Forgets `group` (its replica moved to another node): its entries, hard state and
    /// configuration; the segments it alone kept become reusable. A later `create_group` of the
    /// same id starts it afresh. Durable once the returned LSN is; an absent group is a no-op.
    pub fn drop_group(&self, group: u64) -> Result<Lsn, RaftLogError> {
        if !self.has_group(group) {
            self.check_poisoned()?;
            return Ok(self.inner.borrow().next_lsn - 1);
        }
        self.simple(group, Rec::Drop, Flush::Now)
    }

    /// This group's view for raft-rs.
    pub fn storage(&self, group: u64) -> Result<GroupStorage<D>, RaftLogError> {
        if !self.inner.borrow().groups.map.contains_key(&group) {
            return Err(RaftLogError::UnknownGroup(group));
        }
        let log = self
            .me
            .upgrade()
            .expect("a RaftLog lives in the Rc made by open");
        Ok(GroupStorage::new(log, group))
    }

    /// Appends entries; an entry at an index the group holds replaces it and everything after it
    /// (Raft §5.3). Entries must be contiguous, start above the compacted index and at most one
    /// past the last index.
    pub fn append(&self, group: u64, entries: &[Entry]) -> Result<Lsn, RaftLogError> {
        self.check_poisoned()?;
        let mut inner = self.inner.borrow_mut();
        let g = inner
            .groups
            .map
            .get(&group)
            .ok_or(RaftLogError::UnknownGroup(group))?;
        let Some(first) = entries.first() else {
            return Ok(inner.next_lsn - 1);
        };
        if first.index < g.first_index() {
            return Err(RaftLogError::Compacted {
                group,
                index: first.index,
                compacted: g.compacted_index,
            });
        }
        if first.index > g.last_index() + 1 {
            return Err(RaftLogError::NotContiguous {
                group,
                expected: g.last_index() + 1,
                got: first.index,
            });
        }
        for w in entries.windows(2) {
            if w[1].index != w[0].index + 1 {
                return Err(RaftLogError::NotContiguous {
                    group,
                    expected: w[0].index + 1,
                    got: w[1].index,
                });
            }
        }
        let sizes = entries.iter().map(format::entry_record_bytes);
        self.plan(&inner, sizes, true)?;
        let mut lsn = 0;
        for e in entries {
            lsn = self.place(&mut inner, group, Rec::Entry(e.clone()), Flush::Now);
        }
        // A replaced suffix may have been the last thing holding an old segment.
        free_dead_prefix(&mut inner);
        Ok(lsn)
    }

    /// Records a hard state. `Flush::Now` makes it due like any record (a vote or a term must
    /// be durable before the messages that depend on it go out). `Flush::WithNext` writes it
    /// with the next batch something else starts, or when someone waits for its LSN: for a
    /// change of the commit index alone, which Raft may lose in a crash (a restarted node learns
    /// the commit again; the node raises it to the checkpoint's applied index on start), so a
    /// lone write costs one flush, not two.
    pub fn set_hard_state(
        &self,
        group: u64,
        hs: &HardState,
        flush: Flush,
    ) -> Result<Lsn, RaftLogError> {
        self.simple(group, Rec::HardState(hs.clone()), flush)
    }

    pub fn set_conf_state(&self, group: u64, cs: &ConfState) -> Result<Lsn, RaftLogError> {
        self.simple(group, Rec::ConfState(cs.clone()), Flush::Now)
    }

    /// Installs a snapshot's metadata: drops all entries; first index becomes `meta.index + 1`,
    /// `term(meta.index)` answers `meta.term`, the conf state becomes `meta.conf_state`, and (as
    /// in raft-rs's MemStorage) the hard state's commit and term are raised to the snapshot's.
    pub fn apply_snapshot(&self, group: u64, meta: &SnapshotMetadata) -> Result<Lsn, RaftLogError> {
        {
            let inner = self.inner.borrow();
            let g = inner
                .groups
                .map
                .get(&group)
                .ok_or(RaftLogError::UnknownGroup(group))?;
            if meta.index <= g.compacted_index {
                return Err(RaftLogError::SnapshotOutOfDate {
                    group,
                    index: meta.index,
                    compacted: g.compacted_index,
                });
            }
        }
        self.simple(
            group,
            Rec::Snapshot {
                index: meta.index,
                term: meta.term,
                conf: meta.get_conf_state().clone(),
            },
            Flush::Now,
        )
    }

    /// The state machine has durably checkpointed everything up to `index`: entries <= `index`
    /// go, first index becomes `index + 1`, `term(index)` stays answerable. A segment is reused
    /// once no group holds an entry in it (and it is older than every segment still needed).
    pub fn compact(&self, group: u64, index: u64) -> Result<Lsn, RaftLogError> {
        let term = {
            let inner = self.inner.borrow();
            let g = inner
                .groups
                .map
                .get(&group)
                .ok_or(RaftLogError::UnknownGroup(group))?;
            if index <= g.compacted_index {
                return Ok(inner.next_lsn - 1);
            }
            if index > g.last_index() {
                return Err(RaftLogError::CompactBeyondLast {
                    group,
                    index,
                    last: g.last_index(),
                });
            }
            g.term(index).expect("compacted < index <= last")
        };
        self.simple(group, Rec::Compact { index, term }, Flush::Now)
    }

    /// Seals the active segment and starts a new one whose state set records every group as
    /// it is now. After a clean shutdown's last compaction this leaves recovery a single short
    /// segment to read: entries a checkpoint already covers are neither replayed nor able to
    /// stop a restart if their bytes are damaged meanwhile. Durable once the returned LSN is.
    pub fn roll(&self) -> Result<Lsn, RaftLogError> {
        self.check_poisoned()?;
        let mut inner = self.inner.borrow_mut();
        if inner.free.is_empty() {
            return Err(RaftLogError::Full {
                segments: inner.seg_seq.len(),
            });
        }
        self.open_segment(&mut inner);
        Ok(inner.next_lsn - 1)
    }

    /// Makes `group`'s log agree with a checkpoint of its state machine, which has applied every
    /// entry through `applied` (of term `applied_term`), before a `RawNode` starts from it:
    ///
    /// - `applied` beyond the last entry, with a term: a snapshot was installed and checkpointed
    ///   and the crash came before the raftlog recorded it; its point is recorded now, from the
    ///   checkpoint (with the group's conf state).
    /// - entries after `applied` compacted (`applied + 1 < first index`), or `applied` beyond
    ///   the last entry without a term: [`RaftLogError::CheckpointMismatch`] (the log and the
    ///   checkpoint are not of one history).
    /// - `applied` above the commit index: the commit is raised (only committed entries are
    ///   applied; a hard state carrying the commit may not have been flushed, and raft-rs
    ///   refuses an applied index above the commit).
    pub fn align_to_checkpoint(
        &self,
        group: u64,
        applied: u64,
        applied_term: u64,
    ) -> Result<(), RaftLogError> {
        let (first, last, conf, mut hs) = {
            let inner = self.inner.borrow();
            let g = inner
                .groups
                .map
                .get(&group)
                .ok_or(RaftLogError::UnknownGroup(group))?;
            (
                g.first_index(),
                g.last_index(),
                g.conf.clone(),
                g.hs.clone(),
            )
        };
        if applied > last && applied_term > 0 {
            let mut meta = SnapshotMetadata {
                index: applied,
                term: applied_term,
                ..Default::default()
            };
            meta.set_conf_state(conf);
            self.apply_snapshot(group, &meta)?;
            return Ok(());
        }
        if applied + 1 < first || applied > last {
            return Err(RaftLogError::CheckpointMismatch {
                group,
                applied,
                first,
                last,
            });
        }
        if applied > hs.commit {
            hs.commit = applied;
            self.set_hard_state(group, &hs, Flush::Now)?;
        }
        Ok(())
    }

    /// The group's hard state as last recorded (in memory; durable once its LSN is).
    pub fn hard_state(&self, group: u64) -> Option<HardState> {
        self.inner
            .borrow()
            .groups
            .map
            .get(&group)
            .map(|g| g.hs.clone())
    }

    pub fn durable_lsn(&self) -> Lsn {
        self.durable_lsn.get()
    }

    pub fn last_lsn(&self) -> Lsn {
        self.inner.borrow().next_lsn - 1
    }

    /// Resolves once `lsn` is durable; Err once the log is poisoned and `lsn` is not durable.
    /// Records written `Flush::WithNext` that it waits for are made due now.
    pub fn durable(&self, lsn: Lsn) -> DurableWait<'_, D> {
        if lsn > self.durable_lsn.get() && self.inner.borrow_mut().batcher.hurry(Instant::now()) {
            self.flush_signal.notify();
        }
        DurableWait { log: self, lsn }
    }

    /// The cause, once a write or sync has failed.
    pub fn poisoned(&self) -> Option<Rc<str>> {
        self.poisoned.borrow().clone()
    }

    pub fn set_snapshot_provider(&self, f: SnapshotProvider) {
        *self.snapshot_provider.borrow_mut() = Some(f);
    }

    pub fn set_flush_observer(&self, f: FlushObserver) {
        *self.flush_observer.borrow_mut() = Some(f);
    }

    pub fn stats(&self) -> Stats {
        let inner = self.inner.borrow();
        Stats {
            flushes: self.flushes.get(),
            bytes_written: self.bytes_written.get(),
            records: self.records.get(),
            entries_in_memory_bytes: inner.groups.entries_bytes,
            segments_in_use: inner.chain.len(),
            segments_free: inner.free.len(),
            flushes_in_flight_max_seen: self.in_flight_max_seen.get(),
        }
    }

    /// The group-commit loop; spawn it in its own glommio task queue. Each batch is written and
    /// fdatasynced by a task of its own, up to `flushes_in_flight_max` at once, while the next
    /// batch fills. Returns only when the log is poisoned.
    pub async fn run_flush(self: Rc<Self>) -> RaftLogError {
        loop {
            if let Some(p) = self.poisoned() {
                return RaftLogError::Poisoned(p);
            }
            let due = {
                let inner = self.inner.borrow();
                inner
                    .batcher
                    .flush_due(Instant::now(), inner.in_flight.len())
            };
            match due {
                None => self.flush_signal.wait().await,
                Some(d) if d > Duration::ZERO => {
                    futures_lite::future::or(self.flush_signal.wait(), glommio::timer::sleep(d))
                        .await;
                }
                Some(_) => {
                    let chunk = {
                        let mut inner = self.inner.borrow_mut();
                        let busy = inner.in_flight.len();
                        // A chunk that opens a segment may overwrite a reused segment's header,
                        // and recovery reads a newer segment's header as "the older one is
                        // complete": so it goes out only once every earlier batch is durable.
                        if busy >= self.cfg.flushes_in_flight_max
                            || (busy > 0 && inner.batcher.next_opens_segment())
                        {
                            None
                        } else {
                            let c = inner.batcher.take_batch().expect("flush_due said pending");
                            inner.in_flight.push_back((c.end_lsn, false));
                            let n = inner.in_flight.len();
                            self.in_flight_max_seen
                                .set(self.in_flight_max_seen.get().max(n));
                            Some(c)
                        }
                    };
                    match chunk {
                        // Woken when a batch completes.
                        None => self.flush_signal.wait().await,
                        Some(c) => {
                            let log = self.clone();
                            glommio::spawn_local(async move { log.write_chunk(c).await }).detach();
                        }
                    }
                }
            }
        }
    }

    /// One batch: write, then fdatasync. After the sync returns Ok every record in the chunk
    /// survives power loss; it is reported durable once all earlier batches are too.
    async fn write_chunk(self: Rc<Self>, c: Chunk) {
        assert_eq!(c.offset % BLOCK_BYTES, 0);
        assert_eq!(c.bytes.len() as u64 % BLOCK_BYTES, 0);
        assert_eq!(
            c.offset / self.cfg.segment_bytes,
            (c.offset + c.bytes.len() as u64 - 1) / self.cfg.segment_bytes,
            "a batch never crosses a segment boundary"
        );
        // A segment's header goes out (and is synced) before its body: a reused segment must
        // never show its old header over new records, even if the device reorders the blocks of
        // one write, or recovery would read it as a damaged older segment.
        let split = if c.opens_segment {
            SEG_HEADER_BYTES as usize
        } else {
            0
        };
        let t0 = Instant::now();
        let mut res = Ok(());
        for (at, part) in [(0, &c.bytes[..split]), (split, &c.bytes[split..])] {
            if part.is_empty() || res.is_err() {
                continue;
            }
            let mut buf = self.region.alloc(part.len());
            buf.copy_from_slice(part);
            res = self.region.write_at(buf, c.offset + at as u64).await;
            if res.is_ok() {
                res = self.region.sync().await;
            }
        }
        if res.is_ok() {
            if let Some(f) = self.flush_observer.borrow().as_ref() {
                f(t0.elapsed());
            }
        }
        let mut inner = self.inner.borrow_mut();
        match res {
            Ok(()) => {
                self.flushes.set(self.flushes.get() + 1);
                self.bytes_written
                    .set(self.bytes_written.get() + c.bytes.len() as u64);
                let slot = inner
                    .in_flight
                    .iter_mut()
                    .find(|(end, _)| *end == c.end_lsn)
                    .expect("a batch in flight is tracked");
                slot.1 = true;
                let mut durable = self.durable_lsn.get();
                while let Some(&(end, true)) = inner.in_flight.front() {
                    inner.in_flight.pop_front();
                    assert!(end > durable, "durable LSN only moves forward");
                    durable = end;
                }
                // Once poisoned nothing more is reported durable, even a batch that did sync.
                if self.poisoned.borrow().is_none() {
                    self.durable_lsn.set(durable);
                }
            }
            Err(e) => {
                let msg: Rc<str> = e.to_string().into();
                self.poisoned.borrow_mut().get_or_insert(msg);
                inner.in_flight.retain(|(end, _)| *end != c.end_lsn);
            }
        }
        drop(inner);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
        self.flush_signal.notify();
    }

    fn check_poisoned(&self) -> Result<(), RaftLogError> {
        match self.poisoned() {
            Some(p) => Err(RaftLogError::Poisoned(p)),
            None => Ok(()),
        }
    }

    /// A one-record mutation of an existing group.
    fn simple(&self, group: u64, rec: Rec, flush: Flush) -> Result<Lsn, RaftLogError> {
        self.check_poisoned()?;
        let mut inner = self.inner.borrow_mut();
        if !inner.groups.map.contains_key(&group) {
            return Err(RaftLogError::UnknownGroup(group));
        }
        self.plan(&inner, [format::record_bytes(&rec)], false)?;
        let lsn = self.place(&mut inner, group, rec, flush);
        free_dead_prefix(&mut inner);
        Ok(lsn)
    }

    /// Checks, before anything changes, that records of `sizes` fit: each in a segment, and all
    /// of them in the free segments left. Entry appends may not take the last free segment,
    /// which is kept so a compaction can always be written.
    fn plan(
        &self,
        inner: &Inner,
        sizes: impl IntoIterator<Item = usize>,
        entries: bool,
    ) -> Result<(), RaftLogError> {
        let seg = self.cfg.segment_bytes;
        let fresh = SEG_HEADER_BYTES + state_set_bytes(&inner.groups);
        let mut room = if inner.switch_needed || inner.chain.is_empty() {
            0
        } else {
            inner.batcher.room()
        };
        let mut new_segments = 0;
        for s in sizes {
            let s = s as u64;
            if fresh + s > seg {
                return Err(RaftLogError::RecordTooLarge {
                    bytes: s,
                    max_bytes: seg - fresh,
                });
            }
            if s > room {
                new_segments += 1;
                room = seg - fresh;
            }
            room -= s;
        }
        let usable = inner.free.len().saturating_sub(entries as usize);
        if new_segments > usable {
            return Err(RaftLogError::Full {
                segments: self.segments,
            });
        }
        Ok(())
    }

    /// Puts a record in the current batch and applies it to memory. `plan` said it fits.
    fn place(&self, inner: &mut Inner, group: u64, rec: Rec, flush: Flush) -> Lsn {
        let len = format::record_bytes(&rec) as u64;
        if inner.switch_needed || inner.chain.is_empty() || inner.batcher.room() < len {
            self.open_segment(inner);
        }
        let seg = *inner.chain.back().expect("a segment is active");
        let lsn = inner.next_lsn;
        inner.next_lsn += 1;
        let r = Record { lsn, group, rec };
        let wake = inner.batcher.push(&r, Instant::now(), flush == Flush::Now);
        inner
            .groups
            .apply(&r, seg, false)
            .expect("mutations are validated before they are placed");
        self.records.set(self.records.get() + 1);
        if wake {
            self.flush_signal.notify();
        }
        lsn
    }

    /// Seals the active segment and starts the oldest free one: header block, then the state of
    /// every group, so recovery can start here once older segments are reused.
    fn open_segment(&self, inner: &mut Inner) {
        let seg = inner.free.pop_front().expect("plan checked a free segment");
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.seg_seq[seg as usize] = seq;
        inner.chain.push_back(seg);
        inner.switch_needed = false;
        // The new segment's state set makes dead segments before it unnecessary: drop them
        // from the chain before naming the oldest, so recovery does not read them again.
        free_dead_prefix(inner);
        let oldest = *inner.chain.front().expect("just pushed");
        let h = SegHeader {
            seq,
            first_lsn: inner.next_lsn,
            segment_bytes: self.cfg.segment_bytes,
            oldest_seq: inner.seg_seq[oldest as usize],
        };
        inner
            .batcher
            .start_segment(seg as u64 * self.cfg.segment_bytes, &h);
        let now = Instant::now();
        let states: Vec<Record> = inner
            .groups
            .map
            .iter()
            .enumerate()
            .map(|(i, (&group, g))| Record {
                lsn: inner.next_lsn + i as u64,
                group,
                rec: Rec::State {
                    hs: g.hs.clone(),
                    conf: g.conf.clone(),
                    compacted_index: g.compacted_index,
                    compacted_term: g.compacted_term,
                },
            })
            .collect();
        inner.next_lsn += states.len() as u64;
        for r in &states {
            inner.batcher.push(r, now, true);
        }
        self.records.set(self.records.get() + states.len() as u64);
        self.flush_signal.notify();
    }

    pub(crate) fn with_group<T>(
        &self,
        group: u64,
        f: impl FnOnce(&crate::state::Group) -> T,
    ) -> Option<T> {
        self.inner.borrow().groups.map.get(&group).map(f)
    }

    /// Live segments, oldest first (the last is the active one).
    #[cfg(test)]
    pub(crate) fn chain(&self) -> Vec<u32> {
        self.inner.borrow().chain.iter().copied().collect()
    }

    pub(crate) fn snapshot_provider(&self) -> Option<SnapshotProvider> {
        self.snapshot_provider.borrow().clone()
    }
}

fn state_set_bytes(groups: &Groups) -> u64 {
    groups
        .map
        .values()
        .map(|g| format::state_record_bytes(&g.conf) as u64)
        .sum()
}

/// Frees the oldest segments while no group holds an entry in them. Only a prefix is freed, and
/// never the active segment: every segment still in the chain starts with a state set that
/// covers all records before it, so recovery can start at the oldest one left.
fn free_dead_prefix(inner: &mut Inner) {
    while inner.chain.len() > 1 {
        let oldest = *inner.chain.front().expect("len > 1");
        if inner.groups.seg_live[oldest as usize] > 0 {
            break;
        }
        inner.chain.pop_front();
        inner.free.push_back(oldest);
    }
}

/// Reads every segment header, orders the chain, replays it.
async fn recover<D: Device>(
    region: &Region<D>,
    cfg: &Config,
    segments: usize,
) -> Result<Recovered, RaftLogError> {
    let sb = cfg.segment_bytes;
    let mut found: Vec<(u64, u32, SegHeader)> = Vec::new();
    for s in 0..segments as u32 {
        let b = region
            .read_at(s as u64 * sb, SEG_HEADER_BYTES as usize)
            .await?;
        if let Some(h) = format::decode_seg_header(&b) {
            if h.segment_bytes != sb {
                return Err(corrupt(
                    s,
                    0,
                    format!(
                        "segment written with segment_bytes {}, the profile says {sb}",
                        h.segment_bytes
                    ),
                ));
            }
            found.push((h.seq, s, h));
        }
    }
    let mut groups = Groups::new(segments);
    let mut seg_seq = vec![0; segments];
    found.sort_by_key(|f| f.0);
    if let Some(w) = found.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(corrupt(
            w[1].1,
            0,
            format!("two segments with sequence {}", w[0].0),
        ));
    }
    // The chain is the run of consecutive sequence numbers ending at the newest segment, and
    // no older than the oldest segment the newest one says was still needed when it was opened.
    // Older segments were freed: their state is covered by the chain's first state set, and
    // entries they held before an earlier reuse are gone, so replaying them would be wrong.
    let oldest_seq = found.last().map_or(0, |f| f.2.oldest_seq);
    let mut chain_at = found.len();
    while chain_at > 0
        && found[chain_at - 1].0 >= oldest_seq
        && (chain_at == found.len() || found[chain_at - 1].0 + 1 == found[chain_at].0)
    {
        chain_at -= 1;
    }
    let chain_found = &found[chain_at..];
    let mut last_lsn: Lsn = 0;
    let mut prev_end: Option<Lsn> = None;
    for (k, &(seq, s, h)) in chain_found.iter().enumerate() {
        seg_seq[s as usize] = seq;
        if let Some(pe) = prev_end {
            if h.first_lsn != pe + 1 {
                return Err(corrupt(
                    s,
                    0,
                    format!("first LSN {} does not follow {pe}", h.first_lsn),
                ));
            }
        }
        let newest = k + 1 == chain_found.len();
        // An older segment must hold every LSN up to where the next one starts: those records
        // were durable before the next segment's header was written.
        let end = if newest {
            Lsn::MAX
        } else {
            chain_found[k + 1].2.first_lsn - 1
        };
        let data = region.read_at(s as u64 * sb, sb as usize).await?;
        let mut off = SEG_HEADER_BYTES as usize;
        let mut next = h.first_lsn;
        while next <= end {
            // Padding after a batch: the next batch starts on the next block. A record's first
            // byte (its magic) is never zero, so a zero byte where a record could start is
            // padding, even when fewer than 4 bytes are left in the block.
            if off as u64 % BLOCK_BYTES != 0 && data[off] == 0 {
                off = align_up(off as u64) as usize;
                continue;
            }
            let bad = match format::decode(&data[off..]) {
                Err(b) => b.to_string(),
                Ok((r, _)) if r.lsn != next => format!("LSN {} where {next} belongs", r.lsn),
                Ok((r, len)) => {
                    groups
                        .apply(&r, s, true)
                        .map_err(|why| corrupt(s, off as u64, why))?;
                    off += len;
                    next += 1;
                    continue;
                }
            };
            if newest {
                // The torn tail of a crash: the log ends before this record.
                break;
            }
            return Err(corrupt(s, off as u64, bad));
        }
        last_lsn = next - 1;
        prev_end = Some(last_lsn);
    }
    if let Err(g) = groups.check_contiguous() {
        let front = chain_found.first().map_or(0, |f| f.1);
        return Err(corrupt(
            front,
            0,
            format!("group {g}: entries do not follow its compacted index"),
        ));
    }
    let chain = chain_found.iter().map(|f| f.1).collect();
    Ok(Recovered {
        groups,
        seg_seq,
        chain,
        last_lsn,
        last_seq: found.last().map_or(0, |f| f.0),
    })
}

/// See [`RaftLog::durable`].
pub struct DurableWait<'a, D: Device> {
    log: &'a RaftLog<D>,
    lsn: Lsn,
}

impl<D: Device> Future for DurableWait<'_, D> {
    type Output = Result<(), RaftLogError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.log.durable_lsn.get() >= self.lsn {
            return Poll::Ready(Ok(()));
        }
        if let Some(p) = self.log.poisoned.borrow().clone() {
            return Poll::Ready(Err(RaftLogError::Poisoned(p)));
        }
        self.log.waiters.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

/// A wake-up flag for one waiting task (the flush task here; the node's Raft driver, value-log
/// flush, GC and peer writers too): a `notify` before or during `wait` is never lost.
#[derive(Default)]
pub struct Signal {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub fn wait(&self) -> SignalWait<'_> {
        SignalWait(self)
    }
}

pub struct SignalWait<'a>(&'a Signal);

impl Future for SignalWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.set.replace(false) {
            return Poll::Ready(());
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}
