//! A shard: one pinned glommio executor owning a slice of the partitions (each a Raft group,
//! [`Replicas`]), its engine on its region of the device, and its end of the shard mesh. Nothing in a shard is touched by another
//! thread; shards talk only through the mesh's message queues.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use futures::channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use keel_nvme::AnyDevice;

use crate::conn::ConnInfo;
use crate::engine::tables::SliceRead;
use crate::engine::{self, ConnRow, Engine, Item, Op, OpResult, Pending, StatsGroup};
use crate::latency::Latency;
use crate::protocol::Limits;
use crate::replica::Replicas;

/// What travels over the shard mesh. Owned values only: the receiver is another thread.
pub enum Msg {
    /// Start `ops` in order on the receiving shard and answer with their results.
    Req {
        from: usize,
        id: u64,
        ops: Vec<Op>,
        now: u32,
    },
    Resp {
        id: u64,
        results: Vec<OpResult>,
    },
}

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Per-shard command counters, summed over shards by `stats`.
        #[derive(Default)]
        pub struct Counters { $(pub $name: Cell<u64>,)* }
        impl Counters {
            pub fn values(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.get()),)*]
            }
        }
    };
}

counters!(
    curr_connections,
    total_connections,
    rejected_connections,
    cmd_get,
    cmd_set,
    cmd_flush,
    cmd_touch,
    cmd_meta,
    get_hits,
    get_misses,
    delete_misses,
    delete_hits,
    incr_misses,
    incr_hits,
    decr_misses,
    decr_hits,
    cas_misses,
    cas_hits,
    cas_badval,
    touch_hits,
    touch_misses,
    bytes_read,
    bytes_written,
    keel_write_stall_closes,
    keel_admin_refused,
    keel_admin_auth_failures,
    ssl_handshake_errors,
);

impl Counters {
    pub fn add(c: &Cell<u64>, n: u64) {
        c.set(c.get().wrapping_add(n));
    }
}

pub struct Shard {
    pub id: usize,
    pub nshards: usize,
    partitions_mask: u64,
    pub engine: Rc<Engine<AnyDevice>>,
    pub replicas: Rc<Replicas>,
    mesh: Senders<Msg>,
    waiting: RefCell<HashMap<u64, oneshot::Sender<Vec<OpResult>>>>,
    next_id: Cell<u64>,
    pub counters: Counters,
    pub limits: Limits,
    pub started: Instant,
    /// `net.connections_max`, for the whole node: `conns_open` counts every shard's.
    pub conns_max: usize,
    pub conns_open: Arc<AtomicUsize>,
    pub read_buffer_bytes: usize,
    pub pipeline_depth_max: usize,
    /// `stats settings`: (name, value) from the profile, in memcached's order.
    pub settings: Vec<(&'static str, String)>,
    /// This shard's open client connections by descriptor, for `stats conns`.
    pub conns: RefCell<BTreeMap<i32, Rc<ConnInfo>>>,
    /// `net.admin_token` (empty: admin commands only from loopback clients).
    pub admin_token: Box<[u8]>,
    /// Set when the client port speaks only TLS.
    pub tls: Option<futures_rustls::TlsAcceptor>,
}

pub struct ShardConfig {
    pub partitions: u32,
    pub limits: Limits,
    pub conns_max: usize,
    pub conns_open: Arc<AtomicUsize>,
    pub read_buffer_bytes: usize,
    pub pipeline_depth_max: usize,
    pub settings: Vec<(&'static str, String)>,
    pub admin_token: Box<[u8]>,
    pub tls: Option<futures_rustls::TlsAcceptor>,
}

/// The partition of a key: a stable hash, so data stays where it was written across restarts.
pub fn partition_of(key: &[u8], partitions_mask: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key) & partitions_mask
}

impl Shard {
    pub fn new(
        id: usize,
        nshards: usize,
        engine: Rc<Engine<AnyDevice>>,
        replicas: Rc<Replicas>,
        mesh: Senders<Msg>,
        cfg: ShardConfig,
    ) -> Shard {
        assert!(cfg.partitions.is_power_of_two());
        Shard {
            id,
            nshards,
            partitions_mask: cfg.partitions as u64 - 1,
            engine,
            replicas,
            mesh,
            waiting: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            counters: Counters::default(),
            limits: cfg.limits,
            started: Instant::now(),
            conns_max: cfg.conns_max,
            conns_open: cfg.conns_open,
            read_buffer_bytes: cfg.read_buffer_bytes,
            pipeline_depth_max: cfg.pipeline_depth_max,
            admin_token: cfg.admin_token,
            tls: cfg.tls,
            settings: cfg.settings,
            conns: RefCell::new(BTreeMap::new()),
        }
    }

    /// The shard's latency histograms (the engine's, shared with the replicas).
    pub fn latency(&self) -> &Latency {
        &self.engine.latency
    }

    /// The shard that owns `key`: its partition, placed round-robin over the shards.
    pub fn shard_of(&self, key: &[u8]) -> usize {
        (partition_of(key, self.partitions_mask) % self.nshards as u64) as usize
    }

    /// Starts an op that belongs to this shard: through its partition's Raft group.
    pub fn start_local(&self, op: Op, now: u32) -> Pending {
        match op {
            Op::Stats(StatsGroup::Latency) => {
                Pending::Ready(OpResult::Latency(Box::new(self.latency().report())))
            }
            Op::Stats(StatsGroup::Conns) => {
                let rows = self
                    .conns
                    .borrow()
                    .iter()
                    .map(|(&fd, c)| ConnRow {
                        fd,
                        addr: c.addr,
                        listen_addr: c.listen_addr,
                        state: c.state.get(),
                        secs_since_last_cmd: c.last_cmd.get().elapsed().as_secs() as u32,
                    })
                    .collect();
                Pending::Ready(OpResult::Conns(rows))
            }
            Op::Stats(StatsGroup::Partitions) => {
                Pending::Ready(OpResult::Partitions(self.replicas.partition_rows()))
            }
            Op::Stats(StatsGroup::General) => {
                let mut v = self.engine.stat_values();
                v.extend(self.replicas.stat_values());
                // Summed over shards (wrapping) by `stats`: equal on two nodes iff every
                // shard's items are equal (replicas compare this after a test).
                v.push(("keel_digest", self.replicas.digest()));
                v.extend(self.counters.values());
                Pending::Ready(OpResult::Stats(v))
            }
            Op::SliceGet {
                build_id,
                partition,
                group,
                key,
            } => self.slice_get(build_id, partition, group, key),
            op => self.replicas.submit(op, now),
        }
    }

    /// A bulk table's read on this shard (engine/tables.rs): a miss for a key the version
    /// lacks or deletes.
    fn slice_get(&self, build_id: u64, partition: u32, group: u64, key: Vec<u8>) -> Pending {
        if !self.replicas.groups.borrow().contains_key(&group) {
            return Pending::Ready(OpResult::ServerError(format!(
                "table partition {partition} is not on this node (its keyspace partition \
                 {group} is hosted elsewhere)"
            )));
        }
        let engine = self.engine.clone();
        Pending::Later(Box::pin(async move {
            match engine.slice_get(build_id, partition, &key).await {
                Ok(SliceRead::Value { flags, cas, value }) => OpResult::Hit(Item {
                    flags,
                    exptime: 0,
                    cas,
                    value_len: value.len() as u32,
                    value: value.into(),
                    stale: false,
                    win: false,
                    already_won: false,
                    fetched: false,
                    idle_s: 0,
                }),
                Ok(SliceRead::Absent | SliceRead::Deleted) => OpResult::Miss,
                Ok(SliceRead::NoSlice) => OpResult::ServerError(format!(
                    "table partition {partition} of the current version is not loaded on this \
                     node yet"
                )),
                Ok(SliceRead::Damaged) => {
                    OpResult::ServerError("a table record is damaged on this node".into())
                }
                Err(e) => OpResult::ServerError(e.to_string()),
            }
        }))
    }

    pub async fn resolve(&self, p: Pending) -> OpResult {
        engine::resolve(p).await
    }

    /// Sends `ops` to shard `dest` and waits for their results, in order.
    pub async fn call(&self, dest: usize, ops: Vec<Op>, now: u32) -> Vec<OpResult> {
        assert_ne!(dest, self.id);
        let n = ops.len();
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        self.waiting.borrow_mut().insert(id, tx);
        if self
            .mesh
            .send_to(
                dest,
                Msg::Req {
                    from: self.id,
                    id,
                    ops,
                    now,
                },
            )
            .await
            .is_err()
        {
            self.waiting.borrow_mut().remove(&id);
            return (0..n)
                .map(|_| OpResult::ServerError("shard unavailable".into()))
                .collect();
        }
        rx.await.unwrap_or_else(|_| {
            (0..n)
                .map(|_| OpResult::ServerError("shard unavailable".into()))
                .collect()
        })
    }

    /// Serves the mesh: requests from other shards, and the replies to ours.
    pub fn spawn_mesh_tasks(self: &Rc<Self>, mut receivers: Receivers<Msg>) {
        for (_peer, rx) in receivers.streams() {
            let shard = self.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = rx.recv().await {
                    shard.on_msg(msg);
                }
            })
            .detach();
        }
    }

    fn on_msg(self: &Rc<Self>, msg: Msg) {
        match msg {
            Msg::Req { from, id, ops, now } => {
                // Start every op now, in arrival order; only the waiting happens in the task.
                let pending: Vec<Pending> = ops
                    .into_iter()
                    .map(|op| self.start_local(op, now))
                    .collect();
                let shard = self.clone();
                glommio::spawn_local(async move {
                    // Waited for together: their device reads are in flight at once.
                    let results =
                        futures::future::join_all(pending.into_iter().map(engine::resolve)).await;
                    // The requester may have gone (connection closed): nothing to do then.
                    let _ = shard.mesh.send_to(from, Msg::Resp { id, results }).await;
                })
                .detach();
            }
            Msg::Resp { id, results } => {
                if let Some(tx) = self.waiting.borrow_mut().remove(&id) {
                    let _ = tx.send(results);
                }
            }
        }
    }
}
