//! The Raft groups of one shard: a raft-rs `RawNode` per partition the shard owns, all sharing
//! the shard's [`RaftLog`], one tick, one driver task and the shard's peer connections.
//!
//! Write path: a write for a partition this node leads is proposed (the entry holds the op and
//! the leader's clock), appended to the raftlog by the driver (group commit, flushed
//! asynchronously), sent to the followers, and once committed applied to the engine with a
//! [`Stamp`] every replica computes the same way (CAS from the entry's index); its reply goes
//! out after the apply. A node that does not lead the partition forwards the request to the
//! leader and relays the reply.
//!
//! Read path: the leader answers a read at once when its lease holds (raft-rs's LeaseBased
//! read-only option with check_quorum: it has committed an entry of its term) and everything it
//! had proposed before the read has been applied; otherwise the read waits in the group until
//! that index is applied. Followers forward reads, or answer them locally when the profile
//! allows stale reads.
//!
//! Recovery: the engine comes back as of the last [checkpoint] and each group's `RawNode`
//! restarts with the checkpoint's applied index, so raft-rs hands back the committed entries
//! after it for re-application.
//!
//! A replica that falls behind the leader's compacted log catches up from a [snapshot] of the
//! partition.
//!
//! A clean shutdown first hands the groups this node leads to other nodes
//! ([`Replicas::transfer_leaderships`]).
//!
//! Replicas are added and removed one at a time, learner first ([membership]). Placement is
//! static (every member replicates every partition, `node.peers`) or the meta service's
//! ([placed], `node.meta`: a node hosts the partitions placed on it).

pub mod checkpoint;
pub mod command;
pub mod driver;
pub mod membership;
pub mod placed;
pub mod snapshot;
pub mod tables;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use keel_meta::proto::Role;
use keel_nvme::AnyDevice;
use keel_raftlog::{GroupStorage, RaftLog};
use raft::eraftpb::{ConfState, Message, MessageType, Snapshot, SnapshotMetadata};
use raft::{RawNode, StateRole};

use crate::engine::log::Signal;
use crate::engine::{Engine, LocalFuture, Op, OpResult, Pending, Stamp, StoreMode};
use crate::shard::partition_of;
use crate::transport::{Inbound, Transport};

/// Payload kinds on the node-to-node transport.
const KIND_RAFT: u8 = 1;
const KIND_FORWARD: u8 = 2;
const KIND_REPLY: u8 = 3;
const KIND_SNAP_CHUNK: u8 = 4;

/// A leader refuses new writes while fewer raftlog segments than this are free: what is already
/// proposed, and its followers' copies, still fit.
const RAFTLOG_FREE_SEGMENTS_MIN: usize = 2;

/// How often a paused snapshot stream looks at its peer's queue again.
const SNAPSHOT_PACE: Duration = Duration::from_millis(2);

/// A forwarded request may be forwarded once more (the leader moved meanwhile), not more.
const FORWARD_HOPS_MAX: u8 = 2;

/// Forwards remembered (by origin node and id) to refuse a second copy of one: TCP never
/// duplicates, but a proxy or a replayed connection could, and an incr must not run twice.
/// Copies come within moments of each other; this many ids cover far more than that.
const FORWARDS_SEEN_MAX: usize = 65_536;

/// The CAS unique of the item the `op`-th op of an entry writes: the entry's index, then the op's
/// place in the entry (8 bits), then the partition (16 bits), so CAS values never repeat across
/// partitions or within an entry, and grow with the index. Every replica computes the same one.
/// (Entries written before batching had `index << 16 | partition`: always lower than this for
/// the same index, so CAS values still only grow.)
pub fn cas_of(partition: u64, index: u64, op: usize) -> u64 {
    const _: () = assert!(command::ENTRY_OPS_MAX <= 1 << 8);
    debug_assert!(partition < 1 << 16);
    debug_assert!(op < command::ENTRY_OPS_MAX);
    (index << 24) | ((op as u64) << 16) | partition
}

/// Writes of one partition that arrive together (one client read, or several connections in one
/// executor turn) share one Raft entry, up to these bounds: one proposal, one log record, one
/// apply pass for the lot.
const BATCH_BYTES_MAX: usize = 64 * 1024;

/// Ops that may share an entry: writes that never read the item's old value, so they always
/// apply at once (no disk read can leave an entry half applied while a checkpoint is taken)
/// and applying one twice leaves the same state (replay after a crash is safe).
fn batchable(op: &Op) -> bool {
    match op {
        Op::Store { mode, .. } => !matches!(mode, StoreMode::Append | StoreMode::Prepend),
        Op::Delete { invalidate, .. } => invalidate.is_none(),
        _ => false,
    }
}

/// The bytes an op adds to an entry, near enough for `BATCH_BYTES_MAX`.
fn op_bytes(op: &Op) -> usize {
    let key = op.key().map_or(0, |k| k.len());
    match op {
        Op::Store { data, .. } => 32 + key + data.len(),
        _ => 32 + key,
    }
}

pub struct RaftSettings {
    pub node_id: u64,
    /// Partitions are placed by the meta service ([placed]): groups come and go by its
    /// commands, and a request for a partition not hosted here follows the routing table.
    pub placed: bool,
    /// Voters of every group this node creates at start (static placement: all nodes); empty
    /// for a node that joins a running cluster, and when placed (the meta service's `Create`
    /// names each group's voters).
    pub voters: Vec<u64>,
    /// Where this node's shard 0 accepts peers (None: a single node without peers).
    pub peer_addr: Option<std::net::SocketAddr>,
    /// Shards per node (shard s of every node listens on peer port + s).
    pub shards: u32,
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub checkpoint_interval: Duration,
    pub stale_reads: bool,
    /// How long a request waits for a leader to be elected or a forwarded reply.
    pub request_timeout: Duration,
    pub entries_per_ready_bytes_max: u64,
    /// Entries kept behind the applied index for peers that lag; further behind: a snapshot.
    pub compact_lag_entries: u64,
    /// A snapshot stream sends its next chunk only while fewer bytes wait for the peer.
    pub snapshot_inflight_bytes: usize,
}

/// A proposed entry: one reply per op, in the entry's order.
struct Proposal {
    index: u64,
    term: u64,
    /// For the Raft commit latency (proposal to applied).
    proposed: Instant,
    replies: Vec<oneshot::Sender<OpResult>>,
}

impl Proposal {
    /// Answers every op of the entry with `SERVER_ERROR <why>`.
    fn fail(self, why: &str) {
        for reply in self.replies {
            let _ = reply.send(err(why));
        }
    }
}

/// (origin node, forward id) of the forwards taken lately, the last `FORWARDS_SEEN_MAX`.
#[derive(Default)]
struct SeenForwards {
    set: HashSet<(u64, u64)>,
    order: VecDeque<(u64, u64)>,
}

impl SeenForwards {
    /// False if `key` is remembered already.
    fn insert(&mut self, key: (u64, u64)) -> bool {
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > FORWARDS_SEEN_MAX {
            let old = self.order.pop_front().expect("non-empty");
            self.set.remove(&old);
        }
        true
    }
}

/// Writes waiting to be proposed as one entry (see `BATCH_BYTES_MAX`).
#[derive(Default)]
struct Batch {
    ops: Vec<Op>,
    replies: Vec<oneshot::Sender<OpResult>>,
    bytes: usize,
    /// The latest proposer time among the ops (the entry carries one).
    now: u32,
}

impl Batch {
    /// The batched writes as requests to submit again (see [`Replicas::resubmit`]).
    fn into_requests(self) -> Vec<(Op, u32, oneshot::Sender<OpResult>)> {
        let now = self.now;
        (self.ops.into_iter().zip(self.replies))
            .map(|(op, reply)| (op, now, reply))
            .collect()
    }
}

struct Read {
    /// Serve once the group has applied this index.
    index: u64,
    op: Op,
    now: u32,
    reply: oneshot::Sender<OpResult>,
}

/// A Ready whose entries and hard state are in the raftlog but maybe not yet durable.
struct Unpersisted {
    lsn: u64,
    number: u64,
    /// Messages raft-rs may only send once the Ready is persisted (votes, append acks).
    messages: Vec<Message>,
}

impl Group {
    /// What this replica is in its group, as node `me`.
    pub fn role(&self, me: u64) -> Role {
        match self.raw.raft.state {
            StateRole::Leader => Role::Leader,
            _ if self.raw.raft.prs().conf().learners().contains(&me) => Role::Learner,
            _ => Role::Follower,
        }
    }
}

pub struct Group {
    pub partition: u64,
    pub raw: RawNode<GroupStorage<AnyDevice>>,
    proposals: VecDeque<Proposal>,
    /// Writes for the next entry, proposed when the driver runs (or sooner: see `flush_batch`).
    batch: Batch,
    reads: VecDeque<Read>,
    unpersisted: VecDeque<Unpersisted>,
    /// Committed entries not yet applied (behind one whose apply waits for a disk read).
    to_apply: VecDeque<raft::eraftpb::Entry>,
    /// An entry's apply is waiting for a disk read; later entries wait for it (per-group apply
    /// order is what makes a checkpoint's applied index exact).
    applying: bool,
    pub applied: u64,
    /// Term of the entry at `applied` (kept in checkpoints, for a raftlog reset after a crash
    /// during a snapshot install).
    pub applied_term: u64,
    /// A snapshot is being installed: the engine has it, the checkpoint is being written.
    installing: bool,
}

#[derive(Default)]
pub struct RaftStats {
    /// Entries proposed (a batch of writes is one).
    pub proposals: Cell<u64>,
    /// Ops in the entries proposed.
    pub proposed_ops: Cell<u64>,
    pub applied_entries: Cell<u64>,
    pub forwarded: Cell<u64>,
    pub lease_reads: Cell<u64>,
    pub waited_reads: Cell<u64>,
    pub checkpoints: Cell<u64>,
    pub leader_changes_failed: Cell<u64>,
    pub bad_payloads: Cell<u64>,
    pub snapshots_built: Cell<u64>,
    pub snapshots_sent: Cell<u64>,
    pub snapshots_installed: Cell<u64>,
    /// 2 ms waits of snapshot streams for their peer's queue to drain.
    pub snapshot_pauses: Cell<u64>,
    /// Messages of a partition this shard does not own (nodes with different core counts).
    pub misrouted: Cell<u64>,
    /// Second copies of a forwarded request, refused.
    pub duplicate_forwards: Cell<u64>,
    /// Forwards answered `MOVED` (the routing table was stale) and sent again.
    pub moved: Cell<u64>,
    /// Forwarded reads sent again to a new leader before the one asked answered (it died or
    /// stepped down).
    pub reads_reforwarded: Cell<u64>,
    /// Heartbeats committing beyond this replica's log (see `sane_heartbeat`).
    pub stale_heartbeats: Cell<u64>,
    /// Writes refused because the raftlog had too few free segments.
    pub log_full: Cell<u64>,
    /// Driver passes that left readies waiting because the raftlog had no free segment.
    pub log_full_stalls: Cell<u64>,
}

pub struct Replicas {
    pub settings: RaftSettings,
    pub shard: u32,
    pub partitions_mask: u64,
    pub engine: Rc<Engine<AnyDevice>>,
    pub log: Rc<RaftLog<AnyDevice>>,
    pub groups: RefCell<BTreeMap<u64, Group>>,
    pub transport: RefCell<Option<Rc<Transport>>>,
    /// Wakes the driver: a proposal, a message from a peer, the raftlog got more durable.
    pub wake: Signal,
    /// The LSN a spawned waiter is waiting to become durable (0: none), so there is one at a
    /// time and the driver hears about every durability step.
    pub durable_wait: Cell<u64>,
    forwards: RefCell<HashMap<u64, oneshot::Sender<OpResult>>>,
    next_forward: Cell<u64>,
    forwards_seen: RefCell<SeenForwards>,
    pub stats: RaftStats,
    /// Snapshots built for followers, per group, until sent.
    built: RefCell<HashMap<u64, Snapshot>>,
    building: RefCell<HashSet<u64>>,
    /// Snapshot chunks arriving from a leader, per group.
    incoming: RefCell<HashMap<u64, snapshot::Incoming>>,
    /// Asks the checkpoint task for a checkpoint now (a snapshot was installed).
    pub checkpoint_now: Cell<bool>,
    /// Partitions whose group holds a batch not yet proposed.
    batched: RefCell<Vec<u64>>,
    /// The meta service's routing table, when placed by it.
    /// Table slices whose adoption failed, and when (replica/tables.rs tries again later).
    pub(crate) slice_failures: RefCell<HashMap<(u64, u32), std::time::Instant>>,
    pub(crate) routes: RefCell<Option<std::sync::Arc<keel_meta::proto::RoutingTable>>>,
    /// Replicas dropped so far (a checkpoint taken across a drop is not stored).
    pub drops: Cell<u64>,
}

fn err(msg: &str) -> OpResult {
    OpResult::ServerError(msg.into())
}

/// A read that writes nothing (plain get, gets, mg without T/N): served without a Raft entry.
fn is_read(op: &Op) -> bool {
    matches!(
        op,
        Op::Get {
            touch: None,
            vivify: None,
            ..
        }
    )
}

impl Replicas {
    /// Builds a `RawNode` for every partition of this shard, creating groups that do not exist
    /// yet (first start) with every node as a voter. `applied` is the checkpoint's.
    pub fn new(
        settings: RaftSettings,
        shard: u32,
        partitions: Vec<u64>,
        partitions_mask: u64,
        engine: Rc<Engine<AnyDevice>>,
        log: Rc<RaftLog<AnyDevice>>,
        applied: &BTreeMap<u64, (u64, u64)>,
    ) -> Result<Rc<Replicas>, String> {
        let mut groups = BTreeMap::new();
        for p in partitions {
            let applied = applied.get(&p).copied().unwrap_or((0, 0));
            let voters = settings.voters.clone();
            groups.insert(p, open_group(&settings, &log, p, &voters, applied)?);
        }
        let r = Rc::new(Replicas {
            settings,
            shard,
            partitions_mask,
            engine,
            log,
            groups: RefCell::new(groups),
            transport: RefCell::new(None),
            wake: Signal::default(),
            durable_wait: Cell::new(0),
            forwards: RefCell::new(HashMap::new()),
            next_forward: Cell::new(forward_ids_start()),
            forwards_seen: RefCell::new(SeenForwards::default()),
            stats: RaftStats::default(),
            built: RefCell::new(HashMap::new()),
            building: RefCell::new(HashSet::new()),
            incoming: RefCell::new(HashMap::new()),
            checkpoint_now: Cell::new(false),
            batched: RefCell::new(Vec::new()),
            slice_failures: RefCell::new(HashMap::new()),
            routes: RefCell::new(None),
            drops: Cell::new(0),
        });
        let latency = r.engine.latency.clone();
        r.log.set_flush_observer(Rc::new(move |d| {
            latency.record(crate::latency::Timer::RaftlogFlush, d)
        }));
        // Weak: the raftlog (held by the replicas) must not keep the replicas alive.
        let weak = Rc::downgrade(&r);
        r.log
            .set_snapshot_provider(Rc::new(move |group, request_index, _to| {
                match weak.upgrade() {
                    Some(r) => r.provide_snapshot(group, request_index),
                    None => Err(raft::Error::Store(
                        raft::StorageError::SnapshotTemporarilyUnavailable,
                    )),
                }
            }));
        Ok(r)
    }

    /// raft-rs needs a snapshot of `group` at `request_index` or later for a follower. Called
    /// inside raft-rs (the groups are borrowed): hand out a built one, or start building.
    fn provide_snapshot(self: &Rc<Self>, group: u64, request_index: u64) -> raft::Result<Snapshot> {
        if let Some(s) = self.built.borrow().get(&group) {
            if s.get_metadata().index >= request_index {
                return Ok(s.clone());
            }
        }
        if self.building.borrow_mut().insert(group) {
            let this = self.clone();
            glommio::spawn_local(async move {
                // Called inside raft-rs with the groups borrowed: start once that is over.
                futures_lite::future::yield_now().await;
                if let Some(snap) = this.build_snapshot(group).await {
                    this.stats
                        .snapshots_built
                        .set(this.stats.snapshots_built.get() + 1);
                    this.built.borrow_mut().insert(group, snap);
                }
                this.building.borrow_mut().remove(&group);
                this.wake.notify();
            })
            .detach();
        }
        Err(raft::Error::Store(
            raft::StorageError::SnapshotTemporarilyUnavailable,
        ))
    }

    /// The partition's state at the group's applied index: the index entries are captured with
    /// no await in between, then the values are read. `None` if a value can no longer be read
    /// as captured (overwritten and collected meanwhile): raft-rs asks again later.
    async fn build_snapshot(&self, group: u64) -> Option<Snapshot> {
        let now = crate::engine::Engine::<AnyDevice>::now();
        let (index, term, conf, captured) = {
            let groups = self.groups.try_borrow().ok()?;
            let g = groups.get(&group)?;
            let conf = raft::Storage::initial_state(g.raw.store()).ok()?.conf_state;
            let captured = self.engine.partition_items(group, now);
            (g.applied, g.applied_term, conf, captured)
        };
        let mut items = Vec::with_capacity(captured.len());
        for (key, e) in captured {
            let value = self.engine.value_for_snapshot(&key, &e).await?;
            items.push(crate::engine::SnapshotItem {
                key: key.into(),
                flags: e.flags,
                exptime: e.exptime,
                cas: e.cas,
                bits: e.bits & crate::engine::index::STALE,
                value: value.to_vec(),
            });
        }
        let mut snap = Snapshot::default();
        snap.set_data(snapshot::encode(&self.peer_book(), &items).into());
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(conf);
        snap.set_metadata(meta);
        Some(snap)
    }

    /// Hands every group this node leads to its most up-to-date follower (raft-rs leader
    /// transfer, Raft thesis 3.10) and waits, at most `timeout`, until it leads none: before a
    /// clean shutdown, so clients do not wait out an election timeout. Returns how many groups
    /// it still leads that have another voter.
    pub async fn transfer_leaderships(&self, timeout: Duration) -> usize {
        let me = self.settings.node_id;
        let deadline = Instant::now() + timeout;
        for g in self.groups.borrow_mut().values_mut() {
            if g.raw.raft.state != StateRole::Leader {
                continue;
            }
            if let Some(to) = membership::best_voter(g, me) {
                g.raw.transfer_leader(to);
            }
        }
        self.wake.notify();
        loop {
            let leading = self
                .groups
                .borrow()
                .values()
                .filter(|g| {
                    g.raw.raft.state == StateRole::Leader && membership::best_voter(g, me).is_some()
                })
                .count();
            if leading == 0 || Instant::now() >= deadline {
                return leading;
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A whole snapshot from the leader: install it in the engine and checkpoint, then step it
    /// into raft-rs (which then persists its metadata in the raftlog).
    fn install_snapshot(self: &Rc<Self>, p: u64, msg: Message) {
        let meta = msg.get_snapshot().get_metadata().clone();
        let mut groups = self.groups.borrow_mut();
        let Some(g) = groups.get_mut(&p) else { return };
        if meta.index <= g.raw.raft.raft_log.committed || meta.index <= g.applied || g.installing {
            // Nothing new for the engine (or one install at a time): raft-rs answers it.
            if !g.installing {
                let _ = g.raw.step(msg);
            }
            drop(groups);
            self.wake.notify();
            return;
        }
        let (peers, items) = match snapshot::decode(msg.get_snapshot().get_data()) {
            Ok(d) => d,
            Err(_) => return self.bad_payload(),
        };
        let known = self.peer_book();
        for (node, addr) in peers {
            if !known.contains_key(&node) {
                self.learn_peer(node, addr);
            }
        }
        let now = crate::engine::Engine::<AnyDevice>::now();
        if self.engine.install_partition(p, &items, now).is_err() {
            // Out of space or poisoned: leave the group as it is; the leader retries.
            return;
        }
        g.applied = meta.index;
        g.applied_term = meta.term;
        g.to_apply.clear();
        g.installing = true;
        drop(groups);
        self.stats
            .snapshots_installed
            .set(self.stats.snapshots_installed.get() + 1);
        let before = self.stats.checkpoints.get();
        self.checkpoint_now.set(true);
        let this = self.clone();
        glommio::spawn_local(async move {
            // The checkpoint task runs it within a few ms; bounded in case it cannot.
            for _ in 0..2000 {
                if this.stats.checkpoints.get() > before {
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            if let Some(g) = this.groups.borrow_mut().get_mut(&p) {
                g.installing = false;
                let _ = g.raw.step(msg);
            }
            this.wake.notify();
        })
        .detach();
    }

    pub fn partition_of(&self, op: &Op) -> Option<u64> {
        op.key().map(|k| partition_of(k, self.partitions_mask))
    }

    /// Starts a client op of this shard. flush_all goes to every group of the shard.
    pub fn submit(self: &Rc<Self>, op: Op, now: u32) -> Pending {
        let Some(p) = self.partition_of(&op) else {
            return match op {
                Op::FlushAll { delay } => self.flush_all(delay, now),
                Op::Member(c) => self.member_change(c, now),
                Op::Members => Pending::Ready(OpResult::Members(self.members())),
                _ => Pending::Ready(err("op without a key reached Raft")),
            };
        };
        self.submit_to(p, op, now, 0)
    }

    fn flush_all(self: &Rc<Self>, delay: i64, now: u32) -> Pending {
        let parts: Vec<u64> = self.groups.borrow().keys().copied().collect();
        let pending: Vec<Pending> = parts
            .into_iter()
            .map(|p| self.submit_to(p, Op::FlushAll { delay }, now, 0))
            .collect();
        Pending::Later(Box::pin(async move {
            let mut out = OpResult::Ok;
            for p in pending {
                if let r @ OpResult::ServerError(_) = crate::engine::resolve(p).await {
                    out = r;
                }
            }
            out
        }))
    }

    fn submit_to(self: &Rc<Self>, p: u64, op: Op, now: u32, hops: u8) -> Pending {
        let mut groups = self.groups.borrow_mut();
        let Some(g) = groups.get_mut(&p) else {
            drop(groups);
            return self.route(p, op, now, hops);
        };
        let leader = g.raw.raft.leader_id;
        let me = self.settings.node_id;
        if g.raw.raft.state != StateRole::Leader {
            if is_read(&op) && self.settings.stale_reads {
                drop(groups);
                return self.engine.start(op, Stamp::read(now));
            }
            drop(groups);
            if leader != 0 && leader != me {
                if hops < FORWARD_HOPS_MAX {
                    return self.forward(leader, p, op, now, hops);
                }
                return Pending::Ready(err(
                    "the leader moved while the request was forwarded; retry",
                ));
            }
            return self.wait_for_leader(p, op, now, hops);
        }
        if g.raw.raft.lead_transferee.is_some() {
            // Handing leadership over (raft-rs drops proposals meanwhile): this waits for the
            // new leader, or for the transfer to be given up.
            drop(groups);
            return self.wait_for_leader(p, op, now, hops);
        }
        if !batchable(&op) {
            // It must follow the writes that came before it: a read sees them, a
            // read-modify-write applies after them.
            self.flush_batch(g);
        }
        if let Op::Member(c) = &op {
            return self.propose_member(g, c);
        }
        if is_read(&op) {
            let index = g.raw.raft.raft_log.last_index();
            if g.raw.raft.commit_to_current_term() && g.applied >= index {
                self.stats.lease_reads.set(self.stats.lease_reads.get() + 1);
                drop(groups);
                return self.engine.start(op, Stamp::read(now));
            }
            self.stats
                .waited_reads
                .set(self.stats.waited_reads.get() + 1);
            let (tx, rx) = oneshot::channel();
            g.reads.push_back(Read {
                index,
                op,
                now,
                reply: tx,
            });
            self.wake.notify();
            return later(rx);
        }
        if self.log.stats().segments_free < RAFTLOG_FREE_SEGMENTS_MIN {
            // Checkpoints compact it within ~100 ms; until then new writes wait outside.
            self.stats.log_full.set(self.stats.log_full.get() + 1);
            return Pending::Ready(err("the Raft log is full until the next checkpoint; retry"));
        }
        if !batchable(&op) {
            // Alone in its entry, after the batch proposed above.
            let (tx, rx) = oneshot::channel();
            self.propose_entry(g, now, std::slice::from_ref(&op), op_bytes(&op), vec![tx]);
            return later(rx);
        }
        let bytes = op_bytes(&op);
        if !g.batch.ops.is_empty()
            && (g.batch.bytes + bytes > BATCH_BYTES_MAX
                || g.batch.ops.len() == command::ENTRY_OPS_MAX)
        {
            self.flush_batch(g);
        }
        if g.batch.ops.is_empty() {
            self.batched.borrow_mut().push(p);
        }
        let (tx, rx) = oneshot::channel();
        g.batch.ops.push(op);
        g.batch.replies.push(tx);
        g.batch.bytes += bytes;
        g.batch.now = g.batch.now.max(now);
        self.wake.notify();
        later(rx)
    }

    /// Proposes the group's batched writes as one entry (the driver does so for every batched
    /// group before it takes readies; a read or a non-batchable write does so first).
    fn flush_batch(&self, g: &mut Group) {
        if g.batch.ops.is_empty() {
            return;
        }
        let b = std::mem::take(&mut g.batch);
        self.propose_entry(g, b.now, &b.ops, b.bytes, b.replies);
    }

    /// Proposes `ops` as one entry, answered through `replies` (one per op) once applied, or at
    /// once with the error raft-rs refused it with.
    fn propose_entry(
        &self,
        g: &mut Group,
        now: u32,
        ops: &[Op],
        bytes: usize,
        replies: Vec<oneshot::Sender<OpResult>>,
    ) {
        let data = command::encode_entry(now, ops.iter(), bytes);
        if let Err(e) = g.raw.propose(vec![], data) {
            let why = format!("proposal refused: {e}");
            for reply in replies {
                let _ = reply.send(err(&why));
            }
            return;
        }
        self.track_proposal(g, replies);
    }

    /// Proposes every batch waiting (called by the driver before it takes readies). A batch
    /// waits while its group hands leadership over, and goes to the new leader once this node
    /// no longer leads.
    pub(super) fn flush_batches(self: &Rc<Self>) {
        let parts = std::mem::take(&mut *self.batched.borrow_mut());
        let mut groups = self.groups.borrow_mut();
        for p in parts {
            let Some(g) = groups.get_mut(&p) else {
                continue;
            };
            if g.batch.ops.is_empty() {
                continue;
            }
            if g.raw.raft.state != StateRole::Leader {
                self.resubmit(p, std::mem::take(&mut g.batch).into_requests());
            } else if g.raw.raft.lead_transferee.is_some() {
                self.batched.borrow_mut().push(p); // the driver's next tick looks again
            } else {
                self.flush_batch(g);
            }
        }
    }

    /// Submits `ops` of partition `p` again, each answered through its reply (called with the
    /// groups borrowed: the submissions run once that is over).
    pub(super) fn resubmit(
        self: &Rc<Self>,
        p: u64,
        ops: Vec<(Op, u32, oneshot::Sender<OpResult>)>,
    ) {
        let this = self.clone();
        glommio::spawn_local(async move {
            futures_lite::future::yield_now().await;
            let pending: Vec<_> = (ops.into_iter())
                .map(|(op, now, reply)| (this.submit_to(p, op, now, 0), reply))
                .collect();
            for (pending, reply) in pending {
                let _ = reply.send(crate::engine::resolve(pending).await);
            }
        })
        .detach();
    }

    /// The entry just proposed in `g` (its last): its ops are answered when it is applied at
    /// this index and term, or failed if another leader's entry takes its place.
    fn track_proposal(&self, g: &mut Group, replies: Vec<oneshot::Sender<OpResult>>) {
        self.stats.proposals.set(self.stats.proposals.get() + 1);
        self.stats
            .proposed_ops
            .set(self.stats.proposed_ops.get() + replies.len() as u64);
        g.proposals.push_back(Proposal {
            index: g.raw.raft.raft_log.last_index(),
            term: g.raw.raft.term,
            proposed: Instant::now(),
            replies,
        });
        self.wake.notify();
    }

    /// No leader known (an election is running): retry each tick until one is, up to the
    /// request timeout.
    fn wait_for_leader(self: &Rc<Self>, p: u64, op: Op, now: u32, hops: u8) -> Pending {
        let this = self.clone();
        let deadline = Instant::now() + self.settings.request_timeout;
        Pending::Later(Box::pin(async move {
            // Looks first, then each tick: the requests of a pipeline are polled one after
            // another, and those behind the first must not each sleep a tick more.
            while Instant::now() < deadline {
                let me = this.settings.node_id;
                let known = match this.groups.borrow().get(&p) {
                    Some(g) => {
                        let l = g.raw.raft.leader_id;
                        let leading = g.raw.raft.state == StateRole::Leader
                            && g.raw.raft.lead_transferee.is_none();
                        l != 0 && (l != me || leading)
                    }
                    // Not hosted here: the routing table must name another node as leader.
                    None => this.routed_leader(p).is_some_and(|l| l != me),
                };
                if known {
                    return crate::engine::resolve(this.submit_to(p, op, now, hops)).await;
                }
                glommio::timer::sleep(this.settings.tick).await;
            }
            err("no leader for this key's partition (is a majority of nodes up?)")
        }))
    }

    fn forward(self: &Rc<Self>, leader: u64, p: u64, op: Op, now: u32, hops: u8) -> Pending {
        let Some(t) = self.transport.borrow().clone() else {
            return Pending::Ready(err("no transport to reach the leader"));
        };
        let mut to = leader;
        let (mut id, mut rx) = self.send_forward(&t, to, p, &op, now, hops);
        // Kept for a retry: after a `MOVED` answer (only placement by the meta service moves
        // partitions away), and for a read, once another leader is known before the answer
        // came (the one asked died or stepped down): a read changes nothing, so asking the
        // new leader instead costs nothing, where waiting would end in a timeout. A write is
        // never sent twice: the first leader may have proposed it already.
        let read = is_read(&op);
        let mut retry = (self.settings.placed || read).then_some(op);
        let this = self.clone();
        // The deadline starts now, not when the connection first polls this future: a pipeline
        // awaits its replies in order, and must not add up its forwards' timeouts.
        let deadline = Instant::now() + self.settings.request_timeout;
        Pending::Later(Box::pin(async move {
            loop {
                // The answer, the deadline, or (a read) each tick a look for a new leader.
                let r = loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let step = if read {
                        left.min(this.settings.tick)
                    } else {
                        left
                    };
                    let got =
                        futures_lite::future::or(async { Some((&mut rx).await.ok()) }, async {
                            glommio::timer::sleep(step).await;
                            None
                        })
                        .await;
                    match got {
                        Some(r) => break r,
                        None if Instant::now() >= deadline => break None,
                        None => {}
                    }
                    let Some(l) = this.leader_now(p).filter(|&l| l != to) else {
                        continue;
                    };
                    let op = retry.take().expect("a read is kept for a retry");
                    this.forwards.borrow_mut().remove(&id);
                    this.stats
                        .reads_reforwarded
                        .set(this.stats.reads_reforwarded.get() + 1);
                    if l == this.settings.node_id {
                        return crate::engine::resolve(this.submit_to(p, op, now, hops)).await;
                    }
                    to = l;
                    (id, rx) = this.send_forward(&t, to, p, &op, now, hops);
                    retry = Some(op);
                };
                this.forwards.borrow_mut().remove(&id);
                let moved =
                    matches!(&r, Some(OpResult::ServerError(m)) if m.starts_with(placed::MOVED));
                let op = match retry.take() {
                    Some(op) if moved && this.settings.placed && Instant::now() < deadline => op,
                    _ => return r.unwrap_or_else(|| err("the leader did not answer in time")),
                };
                this.stats.moved.set(this.stats.moved.get() + 1);
                // The table may be renewed meanwhile (the next heartbeat brings it).
                glommio::timer::sleep(this.settings.tick).await;
                let me = this.settings.node_id;
                let next = match this.groups.borrow().contains_key(&p) {
                    true => None,
                    false => this.routed_leader(p).filter(|&l| l != me),
                };
                let Some(next) = next else {
                    // Hosted here now, or no leader known: the usual path (which waits).
                    return crate::engine::resolve(this.submit_to(p, op, now, hops)).await;
                };
                to = next;
                (id, rx) = this.send_forward(&t, to, p, &op, now, hops);
                retry = Some(op);
            }
        }))
    }

    /// The leader of partition `p` as this shard knows it now: its group's, where it hosts one
    /// (None while an election runs), else the routing table's.
    fn leader_now(&self, p: u64) -> Option<u64> {
        match self.groups.borrow().get(&p) {
            Some(g) => Some(g.raw.raft.leader_id).filter(|&l| l != 0),
            None => self.routed_leader(p),
        }
    }

    /// Sends `op` to `leader` as a forwarded request; its reply comes through the receiver.
    fn send_forward(
        &self,
        t: &Transport,
        leader: u64,
        p: u64,
        op: &Op,
        now: u32,
        hops: u8,
    ) -> (u64, oneshot::Receiver<OpResult>) {
        let id = self.next_forward.get();
        self.next_forward.set(id.wrapping_add(1));
        let (tx, rx) = oneshot::channel();
        self.forwards.borrow_mut().insert(id, tx);
        let mut payload = vec![KIND_FORWARD];
        payload.extend(command::encode_forward(id, hops + 1, now, p, op));
        t.send(leader, self.shard, payload);
        self.stats.forwarded.set(self.stats.forwarded.get() + 1);
        (id, rx)
    }

    /// A payload from a peer node (called by the transport on this shard's thread).
    pub fn on_inbound(self: &Rc<Self>, m: Inbound) {
        let Some((&kind, body)) = m.payload.split_first() else {
            return self.bad_payload();
        };
        match kind {
            KIND_RAFT if body.len() >= 8 => {
                let p = u64::from_le_bytes(body[..8].try_into().unwrap());
                let Ok(mut msg) = <Message as protobuf::Message>::parse_from_bytes(&body[8..])
                else {
                    return self.bad_payload();
                };
                if msg.get_msg_type() == MessageType::MsgSnapshot {
                    let index = msg.get_snapshot().get_metadata().index;
                    let data = self
                        .incoming
                        .borrow_mut()
                        .get_mut(&p)
                        .and_then(|inc| inc.take(index));
                    // Without all its chunks the snapshot is dropped; the leader sends it again.
                    let Some(data) = data else { return };
                    msg.mut_snapshot().set_data(data.into());
                    return self.install_snapshot(p, msg);
                }
                match self.groups.borrow_mut().get_mut(&p) {
                    // Stale or misdirected messages are refused by raft-rs itself.
                    Some(g) => {
                        if !self.sane_heartbeat(g, &mut msg) {
                            return;
                        }
                        let _ = g.raw.step(msg);
                    }
                    None => return self.misrouted(m.from_node, p),
                }
                self.wake.notify();
            }
            KIND_FORWARD => {
                let Ok((id, hops, now, p, op)) = command::decode_forward(body) else {
                    return self.bad_payload();
                };
                let from = m.from_node;
                if !self.first_copy_of_forward(from, id) {
                    self.stats
                        .duplicate_forwards
                        .set(self.stats.duplicate_forwards.get() + 1);
                    return;
                }
                let this = self.clone();
                let pending = self.submit_to(p, op, now, hops);
                glommio::spawn_local(async move {
                    let r = crate::engine::resolve(pending).await;
                    let mut payload = vec![KIND_REPLY];
                    payload.extend(command::encode_reply(id, &r));
                    if let Some(t) = this.transport.borrow().as_ref() {
                        t.send(from, this.shard, payload);
                    }
                })
                .detach();
            }
            KIND_SNAP_CHUNK => {
                let Some((p, index, no, count, bytes)) = snapshot::decode_chunk(body) else {
                    return self.bad_payload();
                };
                if self.groups.borrow().contains_key(&p) {
                    self.incoming
                        .borrow_mut()
                        .entry(p)
                        .or_default()
                        .add(index, no, count, bytes);
                }
            }
            KIND_REPLY => {
                let Ok((id, r)) = command::decode_reply(body) else {
                    return self.bad_payload();
                };
                if let Some(tx) = self.forwards.borrow_mut().remove(&id) {
                    let _ = tx.send(r);
                }
            }
            _ => self.bad_payload(),
        }
    }

    /// A heartbeat whose commit index is beyond this replica's log (raft-rs panics on one): its
    /// leader remembers entries this replica no longer has, because its data was lost or it was
    /// dropped and created again. A replica holding nothing beyond its bootstrap takes the
    /// commit as its own last index (the bootstrap is the same everywhere) and the leader, seeing
    /// it behind, sends a snapshot; any other such heartbeat is refused. Said once; counted.
    fn sane_heartbeat(&self, g: &Group, msg: &mut Message) -> bool {
        let last = g.raw.raft.raft_log.last_index();
        if msg.get_msg_type() != MessageType::MsgHeartbeat || msg.commit <= last {
            return true;
        }
        let n = self.stats.stale_heartbeats.get();
        self.stats.stale_heartbeats.set(n + 1);
        if n == 0 {
            eprintln!(
                "keel-node: shard {}: partition {}: node {} sent a heartbeat committing index {} \
                 but this replica's log ends at {last} (its data was lost or it was recreated); \
                 it catches up from a snapshot",
                self.shard, g.partition, msg.from, msg.commit
            );
        }
        if last > membership::BOOTSTRAP_INDEX {
            return false;
        }
        msg.commit = last;
        true
    }

    /// Remembers forward `id` of node `from`; false if it was seen already (a duplicate, which
    /// must not run again: its first copy's reply answers the client).
    fn first_copy_of_forward(&self, from: u64, id: u64) -> bool {
        self.forwards_seen.borrow_mut().insert((from, id))
    }

    /// A peer sent a message of partition `p`, which this shard does not own: the nodes map
    /// partitions to shards differently, which happens when they run different numbers of
    /// cores. Said once per shard; counted always.
    fn misrouted(&self, from: u64, p: u64) {
        if self.settings.placed && p % self.settings.shards as u64 == self.shard as u64 {
            // A partition this node no longer hosts (or not yet): its former peers learn so.
            return;
        }
        let n = self.stats.misrouted.get();
        self.stats.misrouted.set(n + 1);
        if n == 0 {
            eprintln!(
                "keel-node: shard {}: node {from} sent a message of partition {p}, which this \
                 shard does not own: every node must run the same number of cores (node.cores)",
                self.shard
            );
        }
    }

    fn bad_payload(&self) {
        self.stats
            .bad_payloads
            .set(self.stats.bad_payloads.get() + 1);
    }

    /// Sends raft-rs messages of group `p`. A snapshot is streamed by a task of its own.
    pub fn send_raft(self: &Rc<Self>, p: u64, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let Some(t) = self.transport.borrow().clone() else {
            // A single node: raft-rs has no one to send to.
            return;
        };
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.built.borrow_mut().remove(&p);
                let (this, t) = (self.clone(), t.clone());
                glommio::spawn_local(async move { this.stream_snapshot(&t, p, m).await }).detach();
                continue;
            }
            t.send(m.to, self.shard, raft_payload(p, &m));
        }
    }

    /// Sends a snapshot's data as chunk frames ahead of the MsgSnapshot (which then carries only
    /// the metadata) on the same connection, each chunk once the queue to that peer is below
    /// `raft.snapshot_inflight_bytes`, so a partition of any size fits through the bounded queue;
    /// then tells raft-rs it went out (until then raft-rs sends that peer nothing else).
    async fn stream_snapshot(self: Rc<Self>, t: &Transport, p: u64, mut m: Message) {
        // Spawned from inside the driver, which holds the groups: let it finish first.
        futures_lite::future::yield_now().await;
        let data = m.mut_snapshot().take_data();
        let index = m.get_snapshot().get_metadata().index;
        let chunks: Vec<&[u8]> = if data.is_empty() {
            vec![&[][..]]
        } else {
            data.chunks(snapshot::CHUNK_BYTES).collect()
        };
        let mut status = raft::SnapshotStatus::Finish;
        'chunks: for (no, c) in chunks.iter().enumerate() {
            let mut stalled = Duration::ZERO;
            while t.queued_bytes(m.to, self.shard) >= self.settings.snapshot_inflight_bytes {
                self.stats
                    .snapshot_pauses
                    .set(self.stats.snapshot_pauses.get() + 1);
                if stalled >= self.settings.request_timeout {
                    // The peer takes nothing (down or cut off): raft-rs retries later.
                    status = raft::SnapshotStatus::Failure;
                    break 'chunks;
                }
                glommio::timer::sleep(SNAPSHOT_PACE).await;
                stalled += SNAPSHOT_PACE;
            }
            let mut payload = vec![KIND_SNAP_CHUNK];
            payload.extend(snapshot::encode_chunk(
                p,
                index,
                no as u32,
                chunks.len() as u32,
                c,
            ));
            t.send(m.to, self.shard, payload);
        }
        if status == raft::SnapshotStatus::Finish {
            t.send(m.to, self.shard, raft_payload(p, &m));
            self.stats
                .snapshots_sent
                .set(self.stats.snapshots_sent.get() + 1);
        }
        if let Some(g) = self.groups.borrow_mut().get_mut(&p) {
            g.raw.report_snapshot(m.to, status);
        }
        self.wake.notify();
    }

    pub fn stat_values(&self) -> Vec<(&'static str, u64)> {
        let groups = self.groups.borrow();
        let leading = groups
            .values()
            .filter(|g| g.raw.raft.state == StateRole::Leader)
            .count() as u64;
        let s = &self.stats;
        let l = self.log.stats();
        let sum = |f: &dyn Fn(&Group) -> usize| groups.values().map(f).sum::<usize>() as u64;
        let peer = (self.transport.borrow().as_ref()).map_or_else(Default::default, |t| t.stats());
        vec![
            ("keel_raft_pending_proposals", sum(&|g| g.proposals.len())),
            ("keel_raft_pending_reads", sum(&|g| g.reads.len())),
            (
                "keel_raft_unpersisted_readies",
                sum(&|g| g.unpersisted.len()),
            ),
            ("keel_raft_unapplied_entries", sum(&|g| g.to_apply.len())),
            (
                "keel_raft_pending_forwards",
                self.forwards.borrow().len() as u64,
            ),
            ("keel_raft_groups", groups.len() as u64),
            ("keel_peer_bad_auth", peer.bad_auth),
            ("keel_peer_bad_frames", peer.bad_frames),
            ("keel_peer_dropped_queue_full", peer.dropped_queue_full),
            ("keel_peer_dropped_disconnected", peer.dropped_disconnected),
            ("keel_peer_dropped_unroutable", peer.dropped_unroutable),
            ("keel_peer_connects", peer.connects),
            ("keel_peer_connect_failures", peer.connect_failures),
            ("keel_peer_closed_idle", peer.closed_idle),
            ("keel_raft_leading", leading),
            ("keel_raft_proposals", s.proposals.get()),
            ("keel_raft_proposed_ops", s.proposed_ops.get()),
            ("keel_raft_duplicate_forwards", s.duplicate_forwards.get()),
            ("keel_raft_moved", s.moved.get()),
            ("keel_raft_reads_reforwarded", s.reads_reforwarded.get()),
            ("keel_raft_stale_heartbeats", s.stale_heartbeats.get()),
            ("keel_placement_epoch", self.routes_epoch()),
            ("keel_raft_applied_entries", s.applied_entries.get()),
            ("keel_raft_forwarded", s.forwarded.get()),
            ("keel_raft_lease_reads", s.lease_reads.get()),
            ("keel_raft_waited_reads", s.waited_reads.get()),
            ("keel_raft_checkpoints", s.checkpoints.get()),
            ("keel_raft_bad_payloads", s.bad_payloads.get()),
            (
                "keel_raft_failed_by_leader_change",
                s.leader_changes_failed.get(),
            ),
            ("keel_raft_snapshots_built", s.snapshots_built.get()),
            ("keel_raft_snapshots_sent", s.snapshots_sent.get()),
            ("keel_raft_snapshots_installed", s.snapshots_installed.get()),
            ("keel_raft_snapshot_pauses", s.snapshot_pauses.get()),
            ("keel_raft_misrouted", s.misrouted.get()),
            ("keel_raft_log_full_refusals", s.log_full.get()),
            ("keel_raft_log_full_stalls", s.log_full_stalls.get()),
            ("keel_raftlog_flushes", l.flushes),
            ("keel_raftlog_bytes_written", l.bytes_written),
            ("keel_raftlog_durable_lsn", self.log.durable_lsn()),
        ]
    }

    /// A digest of this shard's engine, to compare replicas: every live item's key, CAS,
    /// flags, expiry and value length (the CAS comes from the Raft index that wrote the value,
    /// so equal CAS means equal value).
    pub fn digest(&self) -> u64 {
        let index = self.engine.index.borrow();
        digest_of(index.iter().collect())
    }

    /// Every partition this shard hosts: its role, term, applied index, keys and digest (as
    /// [`Self::digest`], of the partition's items alone).
    pub fn partition_rows(&self) -> Vec<crate::engine::PartitionRow> {
        let index = self.engine.index.borrow();
        let mut per: BTreeMap<u64, Vec<(&[u8], &crate::engine::index::IndexEntry)>> =
            BTreeMap::new();
        for (k, e) in index.iter() {
            per.entry(partition_of(k, self.partitions_mask))
                .or_default()
                .push((k, e));
        }
        let me = self.settings.node_id;
        let groups = self.groups.borrow();
        groups
            .values()
            .map(|g| {
                let items = per.remove(&g.partition).unwrap_or_default();
                crate::engine::PartitionRow {
                    partition: g.partition,
                    role: match g.role(me) {
                        Role::Leader => "leader",
                        Role::Learner => "learner",
                        Role::Follower => "follower",
                    },
                    term: g.raw.raft.term,
                    applied: g.applied,
                    keys: items.len() as u64,
                    digest: digest_of(items),
                }
            })
            .collect()
    }
}

/// The digest of [`Replicas::digest`] over `items`.
fn digest_of(mut items: Vec<(&[u8], &crate::engine::index::IndexEntry)>) -> u64 {
    items.sort_unstable_by_key(|(k, _)| *k);
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (k, e) in items {
        h.update(&(k.len() as u32).to_le_bytes());
        h.update(k);
        h.update(&e.cas.to_le_bytes());
        h.update(&e.flags.to_le_bytes());
        h.update(&e.exptime.to_le_bytes());
        h.update(&e.value_len.to_le_bytes());
    }
    h.digest()
}

/// Opens partition `p`'s group on this shard: created first if the raftlog lacks it (with
/// `voters`, bootstrapped at [`membership::BOOTSTRAP_INDEX`]; with none, an empty replica that
/// waits for a leader's snapshot), its `RawNode` restarted at `applied` (the checkpoint's
/// (index, term)). The only voter campaigns at once.
fn open_group(
    settings: &RaftSettings,
    log: &RaftLog<AnyDevice>,
    p: u64,
    voters: &[u64],
    applied: (u64, u64),
) -> Result<Group, String> {
    if !log.has_group(p) {
        let cs = ConfState {
            voters: voters.to_vec(),
            ..Default::default()
        };
        let create = |e| format!("raftlog: cannot create group {p}: {e}");
        log.create_group(p, cs.clone()).map_err(create)?;
        if !cs.voters.is_empty() {
            let mut meta = SnapshotMetadata {
                index: membership::BOOTSTRAP_INDEX,
                term: membership::BOOTSTRAP_TERM,
                ..Default::default()
            };
            meta.set_conf_state(cs);
            log.apply_snapshot(p, &meta).map_err(create)?;
        }
    }
    let storage = log
        .storage(p)
        .map_err(|e| format!("raftlog: group {p}: {e}"))?;
    let (mut applied, mut applied_term) = applied;
    if applied < membership::BOOTSTRAP_INDEX
        && raft::Storage::first_index(&storage) == Ok(membership::BOOTSTRAP_INDEX + 1)
        && raft::Storage::term(&storage, membership::BOOTSTRAP_INDEX)
            == Ok(membership::BOOTSTRAP_TERM)
    {
        // Created, not checkpointed yet: the bootstrap configuration is all there is.
        (applied, applied_term) = (membership::BOOTSTRAP_INDEX, membership::BOOTSTRAP_TERM);
    }
    check_applied(log, p, applied, applied_term)?;
    let cfg = raft::Config {
        id: settings.node_id,
        election_tick: settings.election_ticks,
        heartbeat_tick: settings.heartbeat_ticks,
        applied,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        read_only_option: raft::ReadOnlyOption::LeaseBased,
        max_committed_size_per_ready: settings.entries_per_ready_bytes_max,
        ..Default::default()
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let mut raw = RawNode::new(&cfg, storage, &logger)
        .map_err(|e| format!("group {p}: cannot start Raft (applied {applied}): {e}"))?;
    let conf = raw.raft.prs().conf();
    let only_voter = conf.voters().ids().len() == 1 && conf.voters().contains(settings.node_id);
    if only_voter && raw.raft.state != StateRole::Leader {
        // The only voter: no need to wait an election timeout to lead.
        let _ = raw.campaign();
    }
    Ok(Group {
        partition: p,
        raw,
        proposals: VecDeque::new(),
        batch: Batch::default(),
        reads: VecDeque::new(),
        unpersisted: VecDeque::new(),
        to_apply: VecDeque::new(),
        applying: false,
        applied,
        applied_term,
        installing: false,
    })
}

/// The checkpoint's applied index must fall inside what the raftlog holds (entries after it are
/// replayed); the rules are `RaftLog::align_to_checkpoint`'s.
fn check_applied(
    log: &RaftLog<AnyDevice>,
    p: u64,
    applied: u64,
    applied_term: u64,
) -> Result<(), String> {
    log.align_to_checkpoint(p, applied, applied_term)
        .map_err(|e| match e {
            keel_raftlog::RaftLogError::CheckpointMismatch { .. } => format!(
                "{e}; start this node from a new data file and let it catch up from its peers"
            ),
            e => format!("group {p}: raftlog: {e}"),
        })
}

/// Where this process starts numbering its forwarded requests: random, so a reply the leader
/// sends for a request of this node's previous run (a forward in flight at a crash) cannot be
/// taken for a new request that happens to reuse its number.
fn forward_ids_start() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// A raft-rs message as a transport payload: kind, group, protobuf.
fn raft_payload(p: u64, m: &Message) -> Vec<u8> {
    let mut payload = Vec::with_capacity(9 + protobuf::Message::compute_size(m) as usize);
    payload.push(KIND_RAFT);
    payload.extend_from_slice(&p.to_le_bytes());
    protobuf::Message::write_to_vec(m, &mut payload).expect("a raft-rs message encodes");
    payload
}

fn later(rx: oneshot::Receiver<OpResult>) -> Pending {
    let f: LocalFuture<OpResult> = Box::pin(async move {
        rx.await
            .unwrap_or_else(|_| err("the request was dropped (leader changed?); retry"))
    });
    Pending::Later(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(mode: StoreMode) -> Op {
        Op::Store {
            mode,
            key: b"k".to_vec(),
            flags: 0,
            exptime: 0,
            cas: None,
            data: b"v".to_vec(),
            invalidate: false,
        }
    }

    #[test]
    fn only_writes_that_never_read_the_old_value_share_an_entry() {
        // A shared entry must apply at once and be safe to apply twice (see `batchable`).
        for mode in [StoreMode::Set, StoreMode::Add, StoreMode::Replace] {
            assert!(batchable(&store(mode)), "{mode:?}");
        }
        let delete = |invalidate| Op::Delete {
            key: b"k".to_vec(),
            cas: None,
            invalidate,
        };
        assert!(batchable(&delete(None)));
        for op in [
            store(StoreMode::Append),
            store(StoreMode::Prepend),
            delete(Some(None)),
            Op::Arith {
                key: b"n".to_vec(),
                incr: true,
                delta: 1,
                cas: 0,
                vivify: None,
                touch: None,
            },
            Op::Touch {
                key: b"k".to_vec(),
                exptime: 1,
            },
            Op::FlushAll { delay: 0 },
            Op::Members,
        ] {
            assert!(!batchable(&op), "{op:?}");
        }
    }

    #[test]
    fn a_forward_id_is_taken_once_and_forgotten_after_the_limit() {
        let mut s = SeenForwards::default();
        assert!(s.insert((2, 7)));
        assert!(!s.insert((2, 7)), "the second copy is refused");
        assert!(s.insert((3, 7)), "another origin's id is another forward");
        for id in 0..FORWARDS_SEEN_MAX as u64 {
            s.insert((9, 1_000_000 + id));
        }
        assert_eq!(s.set.len(), FORWARDS_SEEN_MAX);
        assert!(
            s.insert((2, 7)),
            "the oldest were forgotten (bounded memory)"
        );
    }

    #[test]
    fn cas_uniques_differ_per_op_and_grow_with_the_index() {
        let mut seen = HashSet::new();
        for index in [1u64, 2, 1 << 30] {
            for op in [0, 1, command::ENTRY_OPS_MAX - 1] {
                for p in [0u64, 63, (1 << 16) - 1] {
                    assert!(seen.insert(cas_of(p, index, op)));
                }
            }
        }
        assert!(cas_of(0, 2, 0) > cas_of(65535, 1, command::ENTRY_OPS_MAX - 1));
        // Above what entries written before batching got for the same index.
        assert!(cas_of(0, 5, 0) > (5 << 16) | 65535);
    }
}
