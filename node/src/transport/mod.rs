//! Node-to-node transport: framed, CRC-checked byte payloads over TCP between shards of
//! different nodes. Payloads are opaque here (the caller puts Raft messages and forwarded client
//! requests in them).
//!
//! One [`Transport`] per shard, on that shard's thread. Shard s of node A sends to shard t of node
//! B on A.s's own outbound connection to B.t; B.t answers on its own connection to A.s. So every
//! connection carries frames one way only, and frames on it arrive in the order they were sent.
//!
//! Delivery is best effort, as Raft expects of its network: a payload may be dropped (queue full,
//! connection lost mid-write, peer down) but is never corrupted, duplicated or reordered by the
//! transport itself. Drops are counted in [`TransportStats`].
//!
//! Authentication: with a cluster secret an inbound connection counts only after it answers a
//! challenge with an HMAC of the secret (see `wire`); without one the hello only guards against
//! a misdirected or foreign connection. Not here: knowing which node is up, retransmission
//! (Raft does it), encryption (frames after the handshake travel in the clear).

mod backoff;
mod faults;
mod inbound;
mod outbound;
#[cfg(test)]
mod tests;
pub mod wire;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::{AbortHandle, Abortable};
use glommio::net::TcpListener;
use keel_raftlog::Signal;
use thiserror::Error;

pub use backoff::{backoff_delay, SplitMix64};
use faults::Faults;
pub use faults::{FaultPlan, Verdict};
pub use wire::{PeerSecret, FRAME_HEADER_BYTES, HELLO_BYTES};

/// The peer addresses of a node's `shards` shards: shard s listens on the port of shard 0 + s.
pub fn shard_addrs(shard0: SocketAddr, shards: u32) -> Vec<SocketAddr> {
    (0..shards as u16)
        .map(|s| SocketAddr::new(shard0.ip(), shard0.port() + s))
        .collect()
}

#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub node_id: u64,
    pub shard: u32,
    /// Where this shard accepts peer connections.
    pub listen: SocketAddr,
    /// For each peer node id, the address of each of its shards (index = shard number).
    pub peers: HashMap<u64, Vec<SocketAddr>>,
    /// A frame with a longer payload is refused: not sent, and on receive it closes the
    /// connection. At most `u32::MAX` (the wire's length field).
    pub frame_bytes_max: usize,
    /// Per destination, payload plus frame header bytes waiting to be written; past it new
    /// payloads are dropped and counted (Raft retransmits).
    pub queue_bytes_max: usize,
    /// Reconnect back-off, doubling with jitter from this...
    pub backoff_min: Duration,
    /// ...up to this.
    pub backoff_max: Duration,
    /// Bounds a connect, the acceptor's wait for the hello, and one write; past it the
    /// connection is dropped (and re-established while frames are queued).
    pub io_timeout: Duration,
    /// Inbound connections served at once; one more is closed on accept and counted. Normal use
    /// needs one per peer shard that talks to this shard (plus a few while peers reconnect).
    pub inbound_conns_max: usize,
    /// The cluster secret: peers must prove they know it (`node.cluster_secret`); `None`: open.
    pub secret: Option<PeerSecret>,
}

impl TransportConfig {
    pub fn validate(&self) -> Result<(), TransportError> {
        let bad = |key: &'static str, value: String, rule: &'static str| {
            Err(TransportError::Config { key, value, rule })
        };
        if self.frame_bytes_max == 0 || self.frame_bytes_max > u32::MAX as usize {
            return bad(
                "frame_bytes_max",
                self.frame_bytes_max.to_string(),
                "must be in 1..=4294967295 (the wire's u32 length)",
            );
        }
        if self.queue_bytes_max < self.frame_bytes_max + FRAME_HEADER_BYTES {
            return bad(
                "queue_bytes_max",
                self.queue_bytes_max.to_string(),
                "must hold at least one frame of frame_bytes_max plus its 8-byte header",
            );
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            return bad(
                "backoff_min",
                format!("{:?}", self.backoff_min),
                "must be > 0 and <= backoff_max",
            );
        }
        if self.inbound_conns_max == 0 {
            return bad("inbound_conns_max", "0".into(), "must be >= 1");
        }
        if self.io_timeout.is_zero() {
            return bad(
                "io_timeout",
                format!("{:?}", self.io_timeout),
                "must be > 0",
            );
        }
        Ok(())
    }
}

/// A verified frame from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub from_node: u64,
    pub from_shard: u32,
    pub payload: Vec<u8>,
}

#[derive(Debug, Error)]
pub enum TransportError {
    #[error("transport: cannot listen on {addr}: {source} (is the address this host's, and the port free?)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("transport.{key} = {value}: {rule}")]
    Config {
        key: &'static str,
        value: String,
        rule: &'static str,
    },
}

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Counters since start. Frames and bytes count what crossed the socket (bytes include
        /// frame headers and the hello).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct TransportStats { $($(#[$doc])* pub $name: u64,)* }

        #[derive(Default)]
        struct StatCells { $($name: Cell<u64>,)* }

        impl StatCells {
            fn snapshot(&self) -> TransportStats {
                TransportStats { $($name: self.$name.get(),)* }
            }
        }
    };
}

stats!(
    frames_sent,
    frames_received,
    bytes_sent,
    bytes_received,
    /// Write calls on sockets (each one system call's worth of io_uring send).
    writes,
    /// Sends refused because the destination's queue was at queue_bytes_max.
    dropped_queue_full,
    /// Frames lost in a write that failed (the connection is then re-established).
    dropped_disconnected,
    /// Sends of a payload over frame_bytes_max (the peer would refuse it).
    dropped_oversize,
    /// Sends to a node or shard not in `peers`.
    dropped_unroutable,
    /// Sends dropped, and frames received and dropped, by the fault plan.
    dropped_faults,
    /// Connections closed for a bad hello, an over-long frame or a bad CRC.
    bad_frames,
    /// Inbound connections closed because they did not prove the cluster secret (a wrong or
    /// missing answer to the challenge, or a hello whose flag does not match this node's mode).
    bad_auth,
    /// Inbound connections closed on accept because inbound_conns_max were open.
    rejected_connections,
    connects,
    connect_failures,
    /// Idle connections found closed by their peer before a write (a peer that died or
    /// restarted meanwhile), and connected again.
    closed_idle,
);

impl StatCells {
    fn add(c: &Cell<u64>, n: u64) {
        c.set(c.get().wrapping_add(n));
    }
}

/// One outbound destination: a peer node's shard, its queue, and its writer task's wake-up.
struct Dest {
    node: u64,
    shard: u32,
    addr: SocketAddr,
    queue: RefCell<VecDeque<Vec<u8>>>,
    /// Payload plus header bytes in `queue`; at most queue_bytes_max.
    queued_bytes: Cell<usize>,
    wake: Signal,
}

struct Inner {
    cfg: TransportConfig,
    /// `cfg.peers`, plus nodes learned later (a replica added by a membership change).
    peers: RefCell<HashMap<u64, Vec<SocketAddr>>>,
    local_addr: SocketAddr,
    on_frame: Rc<dyn Fn(Inbound)>,
    stats: StatCells,
    dests: RefCell<HashMap<(u64, u32), Rc<Dest>>>,
    /// Inbound connections being served; at most inbound_conns_max.
    inbound_conns: Cell<usize>,
    faults: RefCell<Option<Faults>>,
    /// Every task this transport spawned, by id, so dropping the transport stops them all
    /// (closing the listener and every connection). A task removes itself when it ends.
    tasks: RefCell<HashMap<u64, AbortHandle>>,
    next_task: Cell<u64>,
    /// Set when the transport is dropped: nothing new is spawned after it.
    closed: Cell<bool>,
    /// Seeds each writer's back-off jitter; differs per process so peers do not retry in step.
    jitter_seed: Cell<u64>,
    /// When a frame last arrived from each peer node (and was handed on).
    heard: RefCell<HashMap<u64, Instant>>,
}

/// The transport of one shard. Dropping it stops its tasks: the listener and every connection
/// close once the executor next runs them.
///
/// `on_frame` must not hold a strong `Rc<Transport>` (to reply, capture a `Weak`), or the
/// transport keeps itself alive.
pub struct Transport {
    inner: Rc<Inner>,
}

impl Transport {
    /// Binds `listen` and spawns the accept task; every verified frame from any peer is handed
    /// to `on_frame` on this shard's thread, in the order it arrived on its connection.
    /// Must be called inside a glommio executor.
    pub fn start(
        cfg: TransportConfig,
        on_frame: Rc<dyn Fn(Inbound)>,
    ) -> Result<Rc<Transport>, TransportError> {
        cfg.validate()?;
        let bind_err = |e: glommio::GlommioError<()>| TransportError::Bind {
            addr: cfg.listen,
            source: e.into(),
        };
        let listener = TcpListener::bind(cfg.listen).map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(cfg.node_id);
            h.write_u32(cfg.shard);
            h.finish()
        };
        let inner = Rc::new(Inner {
            peers: RefCell::new(cfg.peers.clone()),
            cfg,
            local_addr,
            on_frame,
            stats: StatCells::default(),
            dests: RefCell::new(HashMap::new()),
            inbound_conns: Cell::new(0),
            faults: RefCell::new(None),
            tasks: RefCell::new(HashMap::new()),
            next_task: Cell::new(0),
            closed: Cell::new(false),
            jitter_seed: Cell::new(seed),
            heard: RefCell::new(HashMap::new()),
        });
        inner.spawn_owned(inbound::accept_loop(inner.clone(), listener));
        Ok(Rc::new(Transport { inner }))
    }

    /// The address the listener is bound to (the actual port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Queues `payload` for shard `to_shard` of node `to_node`. Never blocks. Everything queued
    /// during one executor loop iteration to one destination goes out in one write.
    pub fn send(&self, to_node: u64, to_shard: u32, payload: Vec<u8>) {
        let inner = &self.inner;
        let Some(dest) = inner.dest(to_node, to_shard) else {
            StatCells::add(&inner.stats.dropped_unroutable, 1);
            return;
        };
        if payload.len() > inner.cfg.frame_bytes_max {
            // The peer would refuse it and close the connection, losing the frames around it.
            StatCells::add(&inner.stats.dropped_oversize, 1);
            return;
        }
        let verdict = inner
            .faults
            .borrow_mut()
            .as_mut()
            .map(|f| f.decide(to_node));
        match verdict {
            None => inner.enqueue(&dest, payload),
            Some(Verdict::Drop) => StatCells::add(&inner.stats.dropped_faults, 1),
            Some(Verdict::Deliver(delays)) => {
                for delay in delays {
                    if delay.is_zero() {
                        inner.enqueue(&dest, payload.clone());
                    } else {
                        let (inner2, dest, payload) =
                            (inner.clone(), dest.clone(), payload.clone());
                        inner.spawn_owned(async move {
                            glommio::timer::sleep(delay).await;
                            inner2.enqueue(&dest, payload);
                        });
                    }
                }
            }
        }
    }

    pub fn stats(&self) -> TransportStats {
        self.inner.stats.snapshot()
    }

    /// Adds a peer node (its shards' addresses), or readdresses one not yet sent to. A node
    /// already sent to keeps its connection's address until this transport restarts.
    pub fn set_peer(&self, node: u64, addrs: Vec<SocketAddr>) {
        self.inner.peers.borrow_mut().insert(node, addrs);
    }

    /// Payload plus header bytes waiting to be written to shard `to_shard` of `to_node` (a
    /// sender of bulk data paces itself on this rather than overflowing the queue).
    pub fn queued_bytes(&self, to_node: u64, to_shard: u32) -> usize {
        self.inner
            .dests
            .borrow()
            .get(&(to_node, to_shard))
            .map_or(0, |d| d.queued_bytes.get())
    }

    /// Each peer node this shard has received a frame from, and when the latest arrived (the
    /// meta service's evidence that a node it no longer hears is alive).
    pub fn heard(&self) -> Vec<(u64, Instant)> {
        self.inner
            .heard
            .borrow()
            .iter()
            .map(|(&n, &t)| (n, t))
            .collect()
    }

    /// Every peer node and its shards' addresses.
    pub fn peers(&self) -> HashMap<u64, Vec<SocketAddr>> {
        self.inner.peers.borrow().clone()
    }

    /// Test instrument only: a seeded fault plan applied in `send` (and to frames received from
    /// partitioned nodes). `None` = no faults, the default; the shipped binary never sets one.
    pub fn set_faults(&self, plan: Option<FaultPlan>) {
        *self.inner.faults.borrow_mut() = plan.map(Faults::new);
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.inner.closed.set(true);
        for (_, h) in self.inner.tasks.borrow_mut().drain() {
            h.abort();
        }
    }
}

impl Inner {
    /// The destination's state, created (with its writer task) on first use; None when the
    /// peer or shard is not configured.
    fn dest(self: &Rc<Self>, node: u64, shard: u32) -> Option<Rc<Dest>> {
        if let Some(d) = self.dests.borrow().get(&(node, shard)) {
            return Some(d.clone());
        }
        let addr = *self.peers.borrow().get(&node)?.get(shard as usize)?;
        let dest = Rc::new(Dest {
            node,
            shard,
            addr,
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            wake: Signal::default(),
        });
        self.dests.borrow_mut().insert((node, shard), dest.clone());
        let seed = self.jitter_seed.get();
        self.jitter_seed.set(seed.wrapping_add(1));
        self.spawn_owned(outbound::writer(self.clone(), dest.clone(), seed));
        Some(dest)
    }

    /// Queues a payload, or drops it when the queue is full. Dropping the newest (not the oldest)
    /// keeps the queue a gap-free run of what was sent: the peer sees one gap at the end, which
    /// Raft repairs by resending from its next index, rather than holes between kept frames.
    fn enqueue(&self, dest: &Dest, payload: Vec<u8>) {
        let bytes = payload.len() + FRAME_HEADER_BYTES;
        let queued = dest.queued_bytes.get();
        if queued + bytes > self.cfg.queue_bytes_max {
            StatCells::add(&self.stats.dropped_queue_full, 1);
            return;
        }
        dest.queued_bytes.set(queued + bytes);
        dest.queue.borrow_mut().push_back(payload);
        dest.wake.notify();
    }

    /// Spawns a task that dropping the transport stops.
    fn spawn_owned(self: &Rc<Self>, fut: impl Future<Output = ()> + 'static) {
        if self.closed.get() {
            return;
        }
        let id = self.next_task.get();
        self.next_task.set(id + 1);
        let (handle, registration) = AbortHandle::new_pair();
        self.tasks.borrow_mut().insert(id, handle);
        let inner = Rc::downgrade(self);
        glommio::spawn_local(async move {
            if Abortable::new(fut, registration).await.is_ok() {
                if let Some(inner) = inner.upgrade() {
                    inner.tasks.borrow_mut().remove(&id);
                }
            }
        })
        .detach();
    }

    fn is_partitioned(&self, node: u64) -> bool {
        self.faults
            .borrow()
            .as_ref()
            .is_some_and(|f| f.is_partitioned(node))
    }
}
