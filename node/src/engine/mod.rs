//! The storage engine of one shard: the value log on the shard's device region, the in-memory
//! index, the DRAM value cache, TTL, garbage collection and recovery.
//!
//! Write interface (the Raft layer's state machine): [`Engine::start`] applies an [`Op`] with a
//! [`Stamp`] (the time and CAS the leader fixed when it proposed the op, so every replica computes
//! the same item) to the in-memory state at once, in call order. The op is already durable in the
//! Raft log when it is applied, so the value log is written without a sync per batch; a checkpoint
//! ([`ValueLog::sync`] plus the applied index, kept by the caller) bounds what recovery must replay,
//! and [`Engine::open`] ignores every record written after the checkpoint it is given.

pub mod cache;
pub mod format;
pub mod gc;
pub mod index;
pub mod index_checkpoint;
pub mod log;
pub mod ops;
pub mod recovery;
pub mod tables;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use futures::channel::oneshot;
use futures::future::{FutureExt, WeakShared};
use keel_nvme::{Device, IoError, Region};

use cache::Cache;
use format::Kind;
use index::{absolute_exptime, Atime, Index, IndexEntry, FETCHED, STALE, WIN_SENT};
use log::{LogConfig, LogError, NewRecord, ValueLog};

use crate::latency::{Latency, Timer};
pub use ops::{
    ConnRow, Item, Member, MemberChange, Op, OpResult, PartitionRow, StatsGroup, StoreMode,
};

pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// A value being read from disk for a read-modify-write: `None` when it is damaged.
type ValueRead = LocalFuture<Option<Arc<[u8]>>>;

/// (key, cas, value) just read by a gated read-modify-write.
type RmwValue = (Vec<u8>, u64, Arc<[u8]>);

/// The outcome of starting an op.
pub enum Pending {
    Ready(OpResult),
    /// The op waits for a disk read (a read-modify-write of an uncached value) or, above the
    /// engine, for its Raft entry to commit.
    Later(LocalFuture<OpResult>),
}

/// One item of a Raft snapshot of a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotItem {
    pub key: Vec<u8>,
    pub flags: u32,
    pub exptime: u32,
    pub cas: u64,
    /// Persisted item bits ([`index::STALE`]).
    pub bits: u8,
    pub value: Vec<u8>,
}

/// What the proposer fixed for an op, so that applying it is deterministic on every replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Unix seconds at the leader when it proposed the op (relative TTLs, flush deadlines).
    pub now: u32,
    /// The CAS unique a write gives its item: derived from the Raft entry's index.
    pub cas: u64,
    /// The partition (Raft group) the op belongs to; flush_all clears only this partition.
    pub partition: u64,
}

impl Stamp {
    /// A stamp for a read, which writes nothing.
    pub fn read(now: u32) -> Stamp {
        Stamp {
            now,
            cas: 0,
            partition: 0,
        }
    }
}

pub struct EngineConfig {
    pub log: LogConfig,
    pub cache_bytes: usize,
    /// Partitions - 1 (a power of two minus one): which keys a per-partition flush clears.
    pub partitions_mask: u64,
}

#[derive(Default)]
pub struct EngineStats {
    pub corrupt_records: Cell<u64>,
    pub recovered_records: Cell<u64>,
    /// Records after the checkpoint recovery started from (their ops are replayed from Raft).
    pub ignored_records: Cell<u64>,
    pub damaged_segment_headers: Cell<u64>,
    pub disk_reads: Cell<u64>,
    pub gc_segments: Cell<u64>,
    pub gc_moved_bytes: Cell<u64>,
    pub expired_unfetched: Cell<u64>,
    /// Items stored by clients since start (memcached's total_items).
    pub total_items: Cell<u64>,
    pub evictions: Cell<u64>,
}

/// An op waiting behind a read-modify-write of the same key (see [`Engine::start`]).
struct Deferred {
    op: Op,
    stamp: Stamp,
    reply: oneshot::Sender<Pending>,
}

pub struct Engine<D: Device> {
    pub log: Rc<ValueLog<D>>,
    pub index: RefCell<Index>,
    pub cache: RefCell<Cache>,
    pub stats: EngineStats,
    /// Keys with a read-modify-write waiting on a disk read; later ops on them queue here in
    /// arrival order so a pipelined `append k; get k` sees the append.
    gates: RefCell<HashMap<Box<[u8]>, VecDeque<Deferred>>>,
    /// Deadlines of pending `flush_all <delay>`s, per partition.
    pub pending_flush: RefCell<HashMap<u64, u32>>,
    pub partitions_mask: u64,
    /// Highest value-log seq covered by a completed checkpoint: GC frees a segment only once
    /// the copies it moved out are below this (recovery ignores records above it).
    pub checkpoint_seq: Cell<u64>,
    pub checkpoint_signal: log::Signal,
    /// Index checkpoints on the device and the one being written.
    pub ixckpt: index_checkpoint::IndexCheckpoints,
    /// While GC has moved copies waiting for their switch: the seq of the first. An index
    /// checkpoint that starts then begins below it (recovery must replay the copies).
    pub gc_copies_from: Cell<Option<u64>>,
    /// Device reads of values in flight, by record offset and CAS (the version: a freed
    /// offset may hold another item's record by the time a later miss looks), see
    /// [`Engine::value_of`]. Weak: the waiters keep a read alive, not this map.
    reads: RefCell<HashMap<(u64, u64), WeakShared<ValueRead>>>,
    /// The value a gated read-modify-write just read, for its re-run.
    rmw_value: RefCell<Option<RmwValue>>,
    /// The stamp of the op being started (set by `start`, read by the writes it makes).
    cur: Cell<Stamp>,
    /// The shard's latency histograms (the engine times device reads; the replicas and the
    /// connections share them).
    pub latency: Rc<Latency>,
    /// Feature-table slices adopted into this shard's device (engine/tables.rs).
    pub slices: RefCell<tables::Slices>,
}

fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

impl<D: Device + 'static> Engine<D> {
    /// Recovers the shard's state from `dev` as of the checkpoint that covered value-log seqs up
    /// to `checkpoint_seq` (records after it are ignored: the Raft log replays their ops), and
    /// opens a fresh segment for appends.
    pub async fn open(
        dev: Region<D>,
        cfg: EngineConfig,
        checkpoint_seq: u64,
    ) -> Result<Rc<Self>, String> {
        let now = unix_now();
        let scan = recovery::Scan {
            seg_bytes: cfg.log.seg_bytes,
            value_len_max: cfg.log.value_len_max,
            now,
            seq_max: checkpoint_seq,
            partitions_mask: cfg.partitions_mask,
        };
        let started = std::time::Instant::now();
        let rec = recovery::recover(&dev, &scan)
            .await
            .map_err(|e: IoError| format!("recovery failed: {e}"))?;
        for why in &rec.refused {
            eprintln!("keel-node: {why}; not used");
        }
        let ixckpt = index_checkpoint::IndexCheckpoints::default();
        ixckpt.loaded.set(rec.index_checkpoint.is_some());
        ixckpt.rejected.set(rec.refused.len() as u64);
        ixckpt.next_generation.set(rec.generation_max + 1);
        *ixckpt.current.borrow_mut() = rec.index_checkpoint.clone();
        ixckpt.recovery_ms.set(started.elapsed().as_millis() as u64);
        let stats = EngineStats::default();
        stats.corrupt_records.set(rec.corrupt_records);
        stats.recovered_records.set(rec.records);
        stats.ignored_records.set(rec.ignored_records);
        stats
            .damaged_segment_headers
            .set(rec.damaged_segment_headers);
        let (complete, stray) = rec.slices.sort();
        let mut slices = tables::Slices::new();
        let mut segs = rec.segs;
        let mut free_again = stray;
        for (id, data, index) in complete {
            match tables::load_slice(&dev, cfg.log.seg_bytes, &data, &index).await {
                Ok((index_map, tombstones)) => {
                    slices.insert(
                        id,
                        tables::Slice {
                            data_segs: data,
                            index_segs: index,
                            index: index_map,
                            tombstones,
                        },
                    );
                }
                Err(why) => {
                    eprintln!("keel-node: table slice {:x}/{}: {why}; dropped", id.0, id.1);
                    free_again.extend(data.into_iter().chain(index));
                }
            }
        }
        if !free_again.is_empty() {
            // An adoption a crash cut short, or a damaged slice: its headers go, so it can
            // never be taken later, and its segments are free.
            for &s in &free_again {
                let buf = dev.alloc(format::SEG_HEADER_BYTES as usize);
                dev.write_at(buf, s as u64 * cfg.log.seg_bytes)
                    .await
                    .map_err(|e| format!("recovery failed: {e}"))?;
                segs[s].state = log::SegState::Free;
            }
            dev.sync()
                .await
                .map_err(|e| format!("recovery failed: {e}"))?;
        }
        let log = ValueLog::new(dev, &cfg.log, segs, rec.next_seq).map_err(|e| e.to_string())?;
        Ok(Rc::new(Engine {
            log: Rc::new(log),
            index: RefCell::new(rec.index),
            cache: RefCell::new(Cache::new(cfg.cache_bytes)),
            stats,
            gates: RefCell::new(HashMap::new()),
            pending_flush: RefCell::new(rec.pending_flush),
            partitions_mask: cfg.partitions_mask,
            checkpoint_seq: Cell::new(checkpoint_seq),
            checkpoint_signal: log::Signal::default(),
            ixckpt,
            gc_copies_from: Cell::new(None),
            reads: RefCell::new(HashMap::new()),
            rmw_value: RefCell::new(None),
            cur: Cell::new(Stamp::read(now)),
            latency: Rc::new(Latency::default()),
            slices: RefCell::new(slices),
        }))
    }

    pub fn now() -> u32 {
        unix_now()
    }

    /// Starts `op`: its effect on the in-memory state happens now, in call order (an op behind a
    /// read-modify-write of the same key that waits for a disk read runs right after it).
    pub fn start(self: &Rc<Self>, op: Op, stamp: Stamp) -> Pending {
        let now = stamp.now;
        self.cur.set(stamp);
        if let Some(key) = op.key() {
            if let Some(queue) = self.gates.borrow_mut().get_mut(key) {
                let (tx, rx) = oneshot::channel();
                queue.push_back(Deferred {
                    op,
                    stamp,
                    reply: tx,
                });
                return Pending::Later(Box::pin(async move {
                    match rx.await {
                        Ok(p) => resolve(p).await,
                        Err(_) => OpResult::ServerError("operation dropped".into()),
                    }
                }));
            }
        }
        match op {
            Op::Get {
                key,
                touch,
                vivify,
                recache,
                want_value,
                bump,
            } => self.get(key, touch, vivify, recache, want_value, bump, now),
            Op::Store {
                mode,
                key,
                flags,
                exptime,
                cas,
                data,
                invalidate,
            } => self.store(mode, key, flags, exptime, cas, data, invalidate, now),
            Op::Delete {
                key,
                cas,
                invalidate,
            } => self.delete(key, cas, invalidate, now),
            Op::Arith {
                key,
                incr,
                delta,
                cas,
                vivify,
                touch,
            } => self.arith(key, incr, delta, cas, vivify, touch, now),
            Op::Touch { key, exptime } => self.touch(&key, exptime, now),
            Op::FlushAll { delay } => self.flush_all(delay, stamp),
            Op::Stats(_) => Pending::Ready(OpResult::Stats(self.stat_values())),
            Op::Member(_) | Op::Members | Op::SliceGet { .. } => {
                Pending::Ready(OpResult::ServerError("not an engine op".into()))
            }
        }
    }

    /// The live entry of `key`, dropping it if it has expired. With `bump` the read is also
    /// memcached's item bump ([`Engine::bump`]) in the same lookup; the entry returned is the
    /// one before it.
    fn live(&self, key: &[u8], now: u32, bump: bool) -> Option<IndexEntry> {
        let mut index = self.index.borrow_mut();
        let slot = index.get_mut(key)?;
        let e = *slot;
        if !e.expired(now) && bump {
            slot.bits |= FETCHED;
            slot.atime = Atime::at(now);
        }
        if e.expired(now) {
            index.remove(key);
            drop(index);
            self.log.release(
                e.offset,
                format::record_bytes(key.len(), e.value_len as usize) as u32,
            );
            self.cache.borrow_mut().remove(e.cas);
            self.stats
                .expired_unfetched
                .set(self.stats.expired_unfetched.get() + 1);
            return None;
        }
        Some(e)
    }

    fn item(e: &IndexEntry, value: Arc<[u8]>, now: u32) -> Item {
        Item {
            flags: e.flags,
            exptime: e.exptime,
            cas: e.cas,
            value,
            value_len: e.value_len,
            stale: e.bits & STALE != 0,
            win: false,
            already_won: false,
            fetched: e.bits & FETCHED != 0,
            idle_s: e.atime.age_s(now),
        }
    }

    /// A read of `key` (memcached's item bump): the item counts as fetched and accessed now.
    fn bump(&self, key: &[u8], now: u32) {
        if let Some(slot) = self.index.borrow_mut().get_mut(key) {
            slot.bits |= FETCHED;
            slot.atime = Atime::at(now);
        }
    }

    fn append(&self, r: &NewRecord<'_>) -> Result<log::Appended, OpResult> {
        self.log.append(r, false).map_err(|e| match e {
            LogError::Full(_) => OpResult::ServerError("out of memory storing object".into()),
            LogError::Poisoned(m) => OpResult::ServerError(format!("storage failure: {m}")),
        })
    }

    /// Puts a new version of `key` in the log, the index and the cache. `bits` are the new
    /// entry's; only [`STALE`] reaches the record.
    fn put(
        &self,
        key: &[u8],
        value: Arc<[u8]>,
        flags: u32,
        exptime: u32,
        bits: u8,
        now: u32,
    ) -> Result<(u64, IndexEntry), OpResult> {
        let cas = self.cur.get().cas;
        debug_assert_ne!(cas, 0, "a write needs a stamp with a CAS");
        let a = self.append(&NewRecord {
            kind: Kind::Put,
            key,
            value: &value,
            flags,
            exptime,
            time: now,
            cas: Some(cas),
            bits: bits & STALE,
        })?;
        let e = IndexEntry {
            offset: a.offset,
            cas: a.cas,
            value_len: value.len() as u32,
            flags,
            exptime,
            bits,
            atime: Atime::at(now),
        };
        let mut cache = self.cache.borrow_mut();
        if let Some(old) = self.index.borrow_mut().insert(key.into(), e) {
            self.log.release(
                old.offset,
                format::record_bytes(key.len(), old.value_len as usize) as u32,
            );
            cache.remove(old.cas);
        }
        cache.insert(a.cas, value);
        self.stats.total_items.set(self.stats.total_items.get() + 1);
        Ok((a.seq, e))
    }

    /// Removes `key` with a tombstone.
    fn remove(&self, key: &[u8], now: u32) -> Result<u64, OpResult> {
        let a = self.append(&NewRecord {
            kind: Kind::Delete,
            key,
            value: &[],
            flags: 0,
            exptime: 0,
            time: now,
            cas: Some(self.cur.get().cas),
            bits: 0,
        })?;
        if let Some(old) = self.index.borrow_mut().remove(key) {
            self.log.release(
                old.offset,
                format::record_bytes(key.len(), old.value_len as usize) as u32,
            );
            self.cache.borrow_mut().remove(old.cas);
        }
        Ok(a.seq)
    }

    /// Rewrites the TTL of an existing item without moving its value; its bits are kept.
    fn retouch(
        &self,
        key: &[u8],
        e: &mut IndexEntry,
        exptime: u32,
        now: u32,
    ) -> Result<u64, OpResult> {
        let bits = e.bits;
        let a = self.append(&NewRecord {
            kind: Kind::Touch,
            key,
            value: &[],
            flags: 0,
            exptime,
            time: now,
            cas: Some(e.cas),
            bits: bits & STALE,
        })?;
        e.exptime = exptime;
        e.bits = bits;
        if let Some(slot) = self.index.borrow_mut().get_mut(key) {
            *slot = *e;
        }
        Ok(a.seq)
    }

    /// The value of a live entry: from the cache, or a read of the log.
    fn value_of(self: &Rc<Self>, key: &[u8], e: &IndexEntry) -> Result<Arc<[u8]>, ValueRead> {
        if let Some((k, cas, v)) = &*self.rmw_value.borrow() {
            if k == key && *cas == e.cas {
                return Ok(v.clone());
            }
        }
        if let Some(v) = self.cache.borrow_mut().get(e.cas) {
            return Ok(v);
        }
        // Concurrent misses on one value (a hot key read cold, the clients of a fan-out) share
        // one device read.
        let version = (e.offset, e.cas);
        if let Some(read) = self
            .reads
            .borrow()
            .get(&version)
            .and_then(WeakShared::upgrade)
        {
            return Err(Box::pin(read));
        }
        // The entry goes when the read is done, or dropped unfinished (every waiter gone: a
        // closed connection), never left behind.
        let entry = ReadEntry {
            engine: self.clone(),
            version,
        };
        let key = key.to_vec();
        let e = *e;
        let read = async move { entry.engine.clone().read_value(&key, e).await }
            .boxed_local()
            .shared();
        let weak = read.downgrade().expect("a new read is not finished");
        self.reads.borrow_mut().insert(version, weak);
        Err(Box::pin(read))
    }

    /// Reads a value from the log once its record has reached the device. `None` if the record
    /// is damaged (counted) or the item changed meanwhile.
    async fn read_value(self: Rc<Self>, key: &[u8], e: IndexEntry) -> Option<Arc<[u8]>> {
        if self.log.is_unwritten(e.offset) {
            // Evicted from the cache before its batch was written: wait for that write.
            self.log.flush_signal.notify();
            if self.log.written(self.log.last_seq()).await.is_err() {
                return None;
            }
        }
        let mut e = e;
        for _ in 0..3 {
            self.stats.disk_reads.set(self.stats.disk_reads.get() + 1);
            let t0 = Instant::now();
            let read = self.log.read_value(e.offset, key, e.value_len, e.cas).await;
            self.latency.record(Timer::DeviceRead, t0.elapsed());
            match read {
                Ok(Some(v)) => {
                    let v: Arc<[u8]> = v.into();
                    self.cache.borrow_mut().insert(e.cas, v.clone());
                    return Some(v);
                }
                Ok(None) => {}
                Err(_) => return None,
            }
            // GC may have moved the record (same cas, new offset) between lookup and read.
            match self.index.borrow().get(key) {
                Some(now) if now.cas == e.cas && now.offset != e.offset => e = *now,
                _ => break,
            }
        }
        if self
            .index
            .borrow()
            .get(key)
            .is_some_and(|now| now.cas == e.cas && now.offset == e.offset)
        {
            self.stats
                .corrupt_records
                .set(self.stats.corrupt_records.get() + 1);
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn get(
        self: &Rc<Self>,
        key: Vec<u8>,
        touch: Option<i64>,
        vivify: Option<i64>,
        recache: Option<i64>,
        want_value: bool,
        bump: bool,
        now: u32,
    ) -> Pending {
        // The bump rides on the lookup unless a touch rewrites the entry first.
        let bumped = bump && touch.is_none();
        let Some(mut e) = self.live(&key, now, bumped) else {
            let Some(ttl) = vivify else {
                return Pending::Ready(OpResult::Miss);
            };
            let exptime = absolute_exptime(ttl, now).unwrap_or(now);
            return match self.put(&key, Arc::from(&[][..]), 0, exptime, WIN_SENT, now) {
                Ok((_, e)) => {
                    let mut item = Self::item(&e, Arc::from(&[][..]), now);
                    item.win = true;
                    if bump {
                        self.bump(&key, now);
                    }
                    Pending::Ready(OpResult::Hit(item))
                }
                Err(r) => Pending::Ready(r),
            };
        };
        if let Some(t) = touch {
            match absolute_exptime(t, now) {
                Some(exp) => {
                    if let Err(r) = self.retouch(&key, &mut e, exp, now) {
                        return Pending::Ready(r);
                    }
                }
                None => {
                    // A negative TTL expires the item now; this read still returns it, as memcached does.
                    if let Err(r) = self.remove(&key, now) {
                        return Pending::Ready(r);
                    }
                }
            }
        }
        let mut item = Self::item(&e, Arc::from(&[][..]), now);
        // memcached's recache protocol: while a win token is out (sent for a stale item, for
        // one vivified by mg N, or for one close to expiry under mg R) every reader sees Z;
        // otherwise the first reader of a stale item, or of one that expires within R's TTL,
        // wins the token (W).
        if e.bits & WIN_SENT != 0 {
            item.already_won = true;
        } else {
            let recache_due = recache.is_some_and(|r| {
                e.exptime != 0 && absolute_exptime(r, now).is_some_and(|r| e.exptime < r)
            });
            item.win = item.stale || recache_due;
        }
        if item.win {
            if let Some(slot) = self.index.borrow_mut().get_mut(&key[..]) {
                slot.bits |= WIN_SENT;
            }
        }
        if bump && !bumped {
            self.bump(&key, now);
        }
        if !want_value {
            return Pending::Ready(OpResult::Hit(item));
        }
        match self.value_of(&key, &e) {
            Ok(v) => {
                item.value = v;
                Pending::Ready(OpResult::Hit(item))
            }
            Err(read) => Pending::Later(Box::pin(async move {
                match read.await {
                    Some(v) => {
                        item.value = v;
                        OpResult::Hit(item)
                    }
                    None => OpResult::Miss,
                }
            })),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn store(
        self: &Rc<Self>,
        mode: StoreMode,
        key: Vec<u8>,
        flags: u32,
        exptime: i64,
        cas: Option<u64>,
        data: Vec<u8>,
        invalidate: bool,
        now: u32,
    ) -> Pending {
        let cur = self.live(&key, now, false);
        // The item a stale value replaces (ms I with an older CAS): it keeps that item's TTL
        // and win token, as memcached's CAS_STALE store does.
        let mut stale_of = None;
        match (mode, cas, &cur) {
            // memcached's NREAD_CAS: needs the item; 0 matches no CAS unique.
            (StoreMode::Set | StoreMode::Replace, Some(_), None) => {
                return Pending::Ready(OpResult::NotFound)
            }
            (StoreMode::Set | StoreMode::Replace, Some(c), Some(e)) if c == 0 || c != e.cas => {
                if invalidate && c != 0 && c < e.cas {
                    stale_of = Some(*e);
                } else {
                    return Pending::Ready(OpResult::Exists);
                }
            }
            (StoreMode::Add, _, Some(_)) => return Pending::Ready(OpResult::NotStored),
            (StoreMode::Replace | StoreMode::Append | StoreMode::Prepend, _, None) => {
                return Pending::Ready(OpResult::NotStored)
            }
            (StoreMode::Append | StoreMode::Prepend, Some(c), Some(e)) if c != 0 && c != e.cas => {
                return Pending::Ready(OpResult::Exists)
            }
            _ => {}
        }
        let (value, flags, exptime): (Arc<[u8]>, u32, Option<u32>) = match (mode, cur) {
            (StoreMode::Append | StoreMode::Prepend, Some(e)) => {
                let old = match self.value_of(&key, &e) {
                    Ok(v) => v,
                    Err(read) => {
                        return self.gate(
                            key.clone(),
                            Op::Store {
                                mode,
                                key,
                                flags,
                                exptime,
                                cas,
                                data,
                                invalidate,
                            },
                            read,
                        )
                    }
                };
                if old.len() + data.len() > self.log.value_len_max {
                    return Pending::Ready(OpResult::ServerError(
                        "out of memory storing object".into(),
                    ));
                }
                let mut v = Vec::with_capacity(old.len() + data.len());
                if mode == StoreMode::Append {
                    v.extend_from_slice(&old);
                    v.extend_from_slice(&data);
                } else {
                    v.extend_from_slice(&data);
                    v.extend_from_slice(&old);
                }
                (v.into(), e.flags, Some(e.exptime))
            }
            _ => {
                if data.len() > self.log.value_len_max {
                    return Pending::Ready(OpResult::TooLarge);
                }
                let exptime = match &stale_of {
                    Some(e) => Some(e.exptime),
                    None => absolute_exptime(exptime, now),
                };
                (data.into(), flags, exptime)
            }
        };
        let bits = stale_of.map_or(0, |e| STALE | (e.bits & WIN_SENT));
        let Some(exptime) = exptime else {
            // Already expired on arrival: memcached answers STORED and the item is gone.
            return match self.remove(&key, now) {
                Ok(_) => Pending::Ready(OpResult::Stored {
                    cas: self.cur.get().cas,
                }),
                Err(r) => Pending::Ready(r),
            };
        };
        match self.put(&key, value, flags, exptime, bits, now) {
            Ok((_, e)) => Pending::Ready(OpResult::Stored { cas: e.cas }),
            Err(r) => Pending::Ready(r),
        }
    }

    /// Holds `key` while its current value is read from disk, then re-runs `op` (which will
    /// find the value cached) and every op that queued behind it, in order.
    fn gate(self: &Rc<Self>, key: Vec<u8>, op: Op, read: ValueRead) -> Pending {
        let stamp = self.cur.get();
        self.gates
            .borrow_mut()
            .insert(key.clone().into(), VecDeque::new());
        let this = self.clone();
        Pending::Later(Box::pin(async move {
            let value = read.await;
            let queued = this.gates.borrow_mut().remove(&key[..]).unwrap_or_default();
            let first = match value {
                Some(v) => {
                    // Hand the value to the re-run directly: it may be too large to cache.
                    let cas = this.index.borrow().get(&key[..]).map_or(0, |e| e.cas);
                    *this.rmw_value.borrow_mut() = Some((key.clone(), cas, v));
                    let p = this.start(op, stamp);
                    *this.rmw_value.borrow_mut() = None;
                    p
                }
                None => {
                    // The value could not be read (damaged): the item is treated as missing.
                    if let Some(old) = this.index.borrow_mut().remove(&key[..]) {
                        this.log.release(
                            old.offset,
                            format::record_bytes(key.len(), old.value_len as usize) as u32,
                        );
                    }
                    this.start(op, stamp)
                }
            };
            for d in queued {
                let p = this.start(d.op, d.stamp);
                let _ = d.reply.send(p);
            }
            resolve(first).await
        }))
    }

    fn delete(
        self: &Rc<Self>,
        key: Vec<u8>,
        cas: Option<u64>,
        invalidate: Option<Option<i64>>,
        now: u32,
    ) -> Pending {
        let Some(e) = self.live(&key, now, false) else {
            return Pending::Ready(OpResult::NotFound);
        };
        if cas.is_some_and(|c| c != e.cas) {
            return Pending::Ready(OpResult::Exists);
        }
        let r = match invalidate {
            Some(ttl) => {
                // memcached's md I marks the item stale, takes back the win token (the next
                // reader wins) and gives the item a new CAS, so a recache carrying the CAS read
                // before the invalidation is older and stored stale (ms I). A new CAS is a new
                // version of the item: the value is written again under it.
                let value = match self.value_of(&key, &e) {
                    Ok(v) => v,
                    Err(read) => {
                        let op = Op::Delete {
                            key: key.clone(),
                            cas,
                            invalidate,
                        };
                        return self.gate(key, op, read);
                    }
                };
                let exp = match ttl {
                    Some(t) => absolute_exptime(t, now).unwrap_or(now),
                    None => e.exptime,
                };
                let bits = (e.bits | STALE) & !WIN_SENT;
                self.put(&key, value, e.flags, exp, bits, now)
                    .map(|(seq, _)| {
                        // Not an access: the item keeps its last-access time.
                        if let Some(slot) = self.index.borrow_mut().get_mut(&key[..]) {
                            slot.atime = e.atime;
                        }
                        seq
                    })
            }
            None => self.remove(&key, now),
        };
        match r {
            Ok(_) => Pending::Ready(OpResult::Deleted),
            Err(r) => Pending::Ready(r),
        }
    }

    fn touch(self: &Rc<Self>, key: &[u8], exptime: i64, now: u32) -> Pending {
        let Some(mut e) = self.live(key, now, false) else {
            return Pending::Ready(OpResult::NotFound);
        };
        let r = match absolute_exptime(exptime, now) {
            Some(exp) => self.retouch(key, &mut e, exp, now).inspect(|_| {
                // memcached's touch fetches the item.
                self.bump(key, now);
            }),
            None => self.remove(key, now),
        };
        match r {
            Ok(_) => Pending::Ready(OpResult::Touched),
            Err(r) => Pending::Ready(r),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn arith(
        self: &Rc<Self>,
        key: Vec<u8>,
        incr: bool,
        delta: u64,
        cas: u64,
        vivify: Option<(u64, i64)>,
        touch: Option<i64>,
        now: u32,
    ) -> Pending {
        let Some(e) = self.live(&key, now, false) else {
            let Some((initial, ttl)) = vivify else {
                return Pending::Ready(OpResult::NotFound);
            };
            let exptime = absolute_exptime(ttl, now).unwrap_or(now);
            let value: Arc<[u8]> = initial.to_string().into_bytes().into();
            return match self.put(&key, value.clone(), 0, exptime, 0, now) {
                Ok((_, e)) => Pending::Ready(OpResult::Number {
                    value: initial,
                    item: Self::item(&e, value, now),
                }),
                Err(r) => Pending::Ready(r),
            };
        };
        if cas != 0 && cas != e.cas {
            return Pending::Ready(OpResult::Exists);
        }
        let old = match self.value_of(&key, &e) {
            Ok(v) => v,
            Err(read) => {
                return self.gate(
                    key.clone(),
                    Op::Arith {
                        key,
                        incr,
                        delta,
                        cas,
                        vivify,
                        touch,
                    },
                    read,
                )
            }
        };
        let Some(n) = parse_counter(&old) else {
            return Pending::Ready(OpResult::NonNumeric);
        };
        let n = if incr {
            n.wrapping_add(delta)
        } else {
            n.saturating_sub(delta)
        };
        let mut text = n.to_string().into_bytes();
        if !incr && text.len() < old.len() {
            // memcached decrements in place and pads the shorter number with spaces.
            text.resize(old.len(), b' ');
        }
        let exptime = match touch {
            Some(t) => absolute_exptime(t, now).unwrap_or(now),
            None => e.exptime,
        };
        let value: Arc<[u8]> = text.into();
        match self.put(&key, value.clone(), e.flags, exptime, e.bits & STALE, now) {
            Ok((_, e)) => Pending::Ready(OpResult::Number {
                value: n,
                item: Self::item(&e, value, now),
            }),
            Err(r) => Pending::Ready(r),
        }
    }

    /// flush_all for one partition: every item of the partition goes, now or at the deadline.
    /// (The Raft layer proposes one flush to each partition, ordered with its writes.)
    fn flush_all(self: &Rc<Self>, delay: i64, stamp: Stamp) -> Pending {
        let deadline = if delay <= 0 {
            0
        } else {
            absolute_exptime(delay, stamp.now).unwrap_or(0)
        };
        let part = stamp.partition.to_le_bytes();
        let a = match self.append(&NewRecord {
            kind: Kind::Flush,
            key: &part,
            value: &[],
            flags: 0,
            exptime: deadline,
            time: stamp.now,
            cas: Some(stamp.cas),
            bits: 0,
        }) {
            Ok(a) => a,
            Err(r) => return Pending::Ready(r),
        };
        // The flush record stays live while older records of the partition may exist.
        self.log.segs.borrow_mut()[self.log.seg_of(a.offset)].live += a.len as u64;
        if deadline == 0 {
            self.clear_partition(stamp.partition);
            self.pending_flush.borrow_mut().remove(&stamp.partition);
        } else {
            self.pending_flush
                .borrow_mut()
                .insert(stamp.partition, deadline);
            self.arm_flush(stamp.partition, deadline);
        }
        Pending::Ready(OpResult::Ok)
    }

    /// Drops every item of `partition`.
    fn clear_partition(&self, partition: u64) {
        let mask = self.partitions_mask;
        let mut gone = Vec::new();
        self.index.borrow_mut().retain(|k, e| {
            let keep = crate::shard::partition_of(k, mask) != partition;
            if !keep {
                gone.push((
                    e.offset,
                    format::record_bytes(k.len(), e.value_len as usize),
                    e.cas,
                ));
            }
            keep
        });
        let mut cache = self.cache.borrow_mut();
        for (offset, len, cas) in gone {
            self.log.release(offset, len as u32);
            cache.remove(cas);
        }
    }

    /// Items (live or expired) and bytes (key + value) per partition that has any, counted
    /// now: one pass over the index.
    pub fn partition_tally(&self) -> std::collections::BTreeMap<u64, (u64, u64)> {
        let mask = self.partitions_mask;
        let mut out = std::collections::BTreeMap::new();
        for (k, e) in self.index.borrow().iter() {
            let t: &mut (u64, u64) = out.entry(crate::shard::partition_of(k, mask)).or_default();
            t.0 += 1;
            t.1 += (k.len() + e.value_len as usize) as u64;
        }
        out
    }

    /// Every live item of `partition` with its index entry, captured now (a snapshot's cut).
    pub fn partition_items(&self, partition: u64, now: u32) -> Vec<(Box<[u8]>, IndexEntry)> {
        let mask = self.partitions_mask;
        self.index
            .borrow()
            .iter()
            .filter(|(k, e)| crate::shard::partition_of(k, mask) == partition && !e.expired(now))
            .map(|(k, e)| (k.into(), *e))
            .collect()
    }

    /// The value of an item captured by [`Engine::partition_items`]: `None` if it can no longer
    /// be read as that version (overwritten and collected since, or damaged).
    pub async fn value_for_snapshot(
        self: &Rc<Self>,
        key: &[u8],
        e: &IndexEntry,
    ) -> Option<Arc<[u8]>> {
        match self.value_of(key, e) {
            Ok(v) => Some(v),
            Err(read) => read.await,
        }
    }

    /// Replaces everything of `partition` with `items` (a Raft snapshot being installed): a
    /// flush record for the partition, then a put per item keeping its CAS, so recovery from a
    /// checkpoint taken after this rebuilds the same state.
    pub fn install_partition(
        &self,
        partition: u64,
        items: &[SnapshotItem],
        now: u32,
    ) -> Result<(), OpResult> {
        let part = partition.to_le_bytes();
        let a = self.append(&NewRecord {
            kind: Kind::Flush,
            key: &part,
            value: &[],
            flags: 0,
            exptime: 0,
            time: now,
            cas: Some(0),
            bits: 0,
        })?;
        self.log.segs.borrow_mut()[self.log.seg_of(a.offset)].live += a.len as u64;
        self.clear_partition(partition);
        self.pending_flush.borrow_mut().remove(&partition);
        for it in items {
            let a = self.append(&NewRecord {
                kind: Kind::Put,
                key: &it.key,
                value: &it.value,
                flags: it.flags,
                exptime: it.exptime,
                time: now,
                cas: Some(it.cas),
                bits: it.bits & STALE,
            })?;
            let e = IndexEntry {
                offset: a.offset,
                cas: it.cas,
                value_len: it.value.len() as u32,
                flags: it.flags,
                exptime: it.exptime,
                bits: it.bits & STALE,
                atime: Atime::at(now),
            };
            let mut cache = self.cache.borrow_mut();
            if let Some(old) = self.index.borrow_mut().insert(it.key.clone().into(), e) {
                self.log.release(
                    old.offset,
                    format::record_bytes(it.key.len(), old.value_len as usize) as u32,
                );
                cache.remove(old.cas);
            }
            cache.insert(it.cas, it.value.clone().into());
        }
        Ok(())
    }

    /// Arms the timers of the pending `flush_all <delay>`s recovery found.
    pub fn resume_pending_flush(self: &Rc<Self>) {
        let pending: Vec<(u64, u32)> = self
            .pending_flush
            .borrow()
            .iter()
            .map(|(&p, &d)| (p, d))
            .collect();
        for (partition, deadline) in pending {
            self.arm_flush(partition, deadline);
        }
    }

    fn arm_flush(self: &Rc<Self>, partition: u64, deadline: u32) {
        let this = self.clone();
        glommio::spawn_local(async move {
            let wait = deadline.saturating_sub(Self::now()) as u64;
            glommio::timer::sleep(std::time::Duration::from_secs(wait)).await;
            // Re-check: a later flush_all replaces this one, as in memcached.
            let mut pending = this.pending_flush.borrow_mut();
            if pending.get(&partition) == Some(&deadline) {
                pending.remove(&partition);
                drop(pending);
                this.clear_partition(partition);
            }
        })
        .detach();
    }

    /// Items in the index and live bytes in the value log (`curr_items`, `bytes`).
    pub fn items_and_bytes(&self) -> (u64, u64) {
        let live = self.log.segs.borrow().iter().map(|s| s.live).sum();
        (self.index.borrow().len() as u64, live)
    }

    /// GC keeps every tombstone, touch and flush record with a seq above this: an index
    /// checkpoint on the device replays them (u64::MAX: none is there).
    pub fn side_records_needed_after(&self) -> u64 {
        let ix = &self.ixckpt;
        [ix.current.borrow(), ix.previous.borrow()]
            .iter()
            .filter_map(|g| g.as_ref().map(|g| g.base_seq))
            .min()
            .unwrap_or(u64::MAX)
    }

    pub fn stat_values(&self) -> Vec<(&'static str, u64)> {
        let cache = self.cache.borrow();
        let segs = self.log.segs.borrow();
        let (items, live) = self.items_and_bytes();
        let current = self.ixckpt.current.borrow();
        let current = current.as_ref();
        vec![
            ("curr_items", items),
            ("total_items", self.stats.total_items.get()),
            ("bytes", live),
            ("limit_maxbytes", self.log.dev.size_bytes()),
            ("keel_cache_bytes", cache.bytes() as u64),
            ("keel_cache_hits", cache.hits),
            ("keel_cache_misses", cache.misses),
            ("keel_disk_reads", self.stats.disk_reads.get()),
            ("keel_corrupt_records", self.stats.corrupt_records.get()),
            (
                "keel_damaged_segment_headers",
                self.stats.damaged_segment_headers.get(),
            ),
            ("keel_recovered_records", self.stats.recovered_records.get()),
            ("keel_ignored_records", self.stats.ignored_records.get()),
            ("keel_log_flushes", self.log.stats.flushes.get()),
            ("keel_log_bytes_written", self.log.stats.bytes_written.get()),
            ("keel_log_records", self.log.stats.records_appended.get()),
            ("keel_written_seq", self.log.written_seq()),
            ("keel_checkpoint_seq", self.checkpoint_seq.get()),
            ("keel_segments", segs.len() as u64),
            ("keel_segments_free", self.log.free_segments() as u64),
            ("keel_gc_segments", self.stats.gc_segments.get()),
            ("keel_gc_moved_bytes", self.stats.gc_moved_bytes.get()),
            ("expired_unfetched", self.stats.expired_unfetched.get()),
            ("keel_poisoned", self.log.poisoned().is_some() as u64),
            ("keel_index_checkpoints", self.ixckpt.written.get()),
            (
                "keel_index_checkpoints_abandoned",
                self.ixckpt.abandoned.get(),
            ),
            (
                "keel_index_checkpoint_generation",
                current.map_or(0, |g| g.generation),
            ),
            (
                "keel_index_checkpoint_base_seq",
                current.map_or(0, |g| g.base_seq),
            ),
            (
                "keel_index_checkpoint_entries",
                current.map_or(0, |g| g.entries),
            ),
            (
                "keel_index_checkpoint_bytes",
                current.map_or(0, |g| g.bytes),
            ),
            (
                "keel_index_checkpoint_loaded",
                self.ixckpt.loaded.get() as u64,
            ),
            ("keel_index_checkpoints_refused", self.ixckpt.rejected.get()),
            ("keel_recovery_ms", self.ixckpt.recovery_ms.get()),
        ]
    }
}

/// memcached accepts a counter only if the whole value is decimal digits (trailing spaces from
/// an earlier in-place decr are allowed) that fit in 64 bits.
fn parse_counter(v: &[u8]) -> Option<u64> {
    let digits = v
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(&v[..0], |i| &v[..=i]);
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A device read's place in [`Engine::reads`], removed when the read finishes or is dropped.
struct ReadEntry<D: Device> {
    engine: Rc<Engine<D>>,
    version: (u64, u64),
}

impl<D: Device> Drop for ReadEntry<D> {
    fn drop(&mut self) {
        self.engine.reads.borrow_mut().remove(&self.version);
    }
}

/// Waits out a [`Pending`].
pub async fn resolve(p: Pending) -> OpResult {
    match p {
        Pending::Ready(r) => r,
        Pending::Later(f) => f.await,
    }
}

#[cfg(test)]
mod index_checkpoint_tests;
#[cfg(test)]
mod tables_tests;
#[cfg(test)]
mod tests;
