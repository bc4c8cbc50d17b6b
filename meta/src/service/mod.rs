//! The meta service: one replica of the meta Raft group (raft-rs `RawNode` over keel-raftlog on
//! a keel-nvme io_uring data file), serving the node protocol and `ctl` on one TCP address,
//! which is also where its peers send it Raft messages.
//!
//! A replica runs on one glommio executor: [`run`] is its future (the `keel-meta` binary and
//! keel-node's embedded mode both run it), [`start_thread`] runs it on an executor of its own.
//! Tasks: the Raft driver (`raft.rs`), the accept loop and one task per connection (`net.rs`),
//! one writer per peer, and the leader's scheduler (`handle.rs`).

mod handle;
mod net;
mod raft;
pub mod store;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ::raft::eraftpb::{ConfState, Message};
use futures::channel::oneshot;
use keel_nvme::{Region, UringDevice};
use keel_raftlog::{RaftLog, Signal};

use crate::machine::{Command, MetaState, Refusal};
use crate::placement::Limits;
use crate::schedule::Soft;

/// The meta group's id in its raftlog.
const GROUP: u64 = 1;

/// How one meta replica runs.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// This replica's id in the meta group (1 for a single replica).
    pub id: u64,
    /// Where it accepts nodes, ctl and its peers ("IP:PORT").
    pub listen: String,
    /// Its data file (created at first start, [`store::DEVICE_BYTES`]).
    pub data: PathBuf,
    /// Every replica's address, this one's included; empty for a group of one.
    pub peers: BTreeMap<u64, String>,
    /// The keyspace the first leader bootstraps: partition count and replication factor.
    pub partitions: u32,
    pub replication_factor: u32,
    /// What nodes are told: heartbeat this often.
    pub heartbeat_interval: Duration,
    /// A node silent this long is marked Down.
    pub failure_timeout: Duration,
    /// A move not done after this long is given up (the planner chooses again).
    pub move_timeout: Duration,
    pub limits: Limits,
    /// Raft tick; an election takes 10 to 20 ticks.
    pub tick: Duration,
}

impl ServiceConfig {
    /// A replica with the defaults: one group of one unless `peers` is set, 64 partitions at
    /// replication factor 3, heartbeats every second, Down after 30 s.
    pub fn new(id: u64, listen: impl Into<String>, data: impl Into<PathBuf>) -> Self {
        ServiceConfig {
            id,
            listen: listen.into(),
            data: data.into(),
            peers: BTreeMap::new(),
            partitions: 64,
            replication_factor: 3,
            heartbeat_interval: Duration::from_secs(1),
            failure_timeout: Duration::from_secs(30),
            move_timeout: Duration::from_secs(120),
            limits: Limits {
                // One plan's Raft entry stays well inside a raftlog segment.
                creates_per_plan_max: 4096,
                ..Limits::default()
            },
            tick: Duration::from_millis(100),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("--id 0: meta replica ids start at 1".into());
        }
        if !self.peers.is_empty() {
            match self.peers.get(&self.id) {
                None => {
                    return Err(format!(
                        "--peers does not name this replica's --id {}",
                        self.id
                    ))
                }
                Some(a) if !same_address(a, &self.listen) => {
                    return Err(format!(
                        "--peers gives replica {} the address {a}, but --listen is {}: they must \
                         be the same, or --listen 0.0.0.0 on that port (peers and clients share \
                         one address)",
                        self.id, self.listen
                    ))
                }
                _ => {}
            }
            if self.peers.len() != 1 && self.peers.len() != 3 {
                return Err(format!(
                    "--peers lists {} replicas: a meta group has 1 or 3",
                    self.peers.len()
                ));
            }
        } else if self.id != 1 {
            return Err(format!(
                "--id {} without --peers: a single meta replica is replica 1",
                self.id
            ));
        }
        if !self.partitions.is_power_of_two()
            || self.partitions > crate::machine::META_PARTITIONS_MAX
        {
            return Err(format!(
                "--partitions {}: must be a power of two, at most {}",
                self.partitions,
                crate::machine::META_PARTITIONS_MAX
            ));
        }
        if !(1..=crate::placement::REPLICATION_FACTOR_MAX as u32).contains(&self.replication_factor)
        {
            return Err(format!(
                "--replicas {}: must be 1..={}",
                self.replication_factor,
                crate::placement::REPLICATION_FACTOR_MAX
            ));
        }
        Ok(())
    }
}

/// Whether `peer` (how the others reach this replica) names `listen` (where it listens): the
/// same address, or the same port when it listens on every address (0.0.0.0, ::).
fn same_address(peer: &str, listen: &str) -> bool {
    if peer == listen {
        return true;
    }
    match (
        peer.parse::<std::net::SocketAddr>(),
        listen.parse::<std::net::SocketAddr>(),
    ) {
        (Ok(p), Ok(l)) => p == l || (l.ip().is_unspecified() && l.port() == p.port()),
        _ => false,
    }
}

/// The driver's view of raft-rs, for the other tasks (which never touch the `RawNode`).
#[derive(Clone, Copy, Debug, Default)]
struct Role {
    leader: bool,
    /// The leader has committed an entry of its term: its applied state is current.
    ready: bool,
    leader_id: u64,
    term: u64,
}

/// Results of a proposal: one per command, or why the whole entry failed.
type ProposalResult = Result<Vec<Result<(), Refusal>>, String>;

struct Service {
    cfg: ServiceConfig,
    log: Rc<RaftLog<UringDevice>>,
    slots: Region<UringDevice>,
    conf: ConfState,
    state: RefCell<MetaState>,
    /// (index, term) of the last applied entry.
    applied: Cell<(u64, u64)>,
    role: Cell<Role>,
    soft: RefCell<Soft>,
    /// Proposals waiting for the driver, and those proposed waiting for their apply.
    to_propose: RefCell<Vec<(u64, Vec<Command>)>>,
    pending: RefCell<HashMap<u64, oneshot::Sender<ProposalResult>>>,
    next_seq: Cell<u64>,
    inbox: RefCell<VecDeque<Message>>,
    /// Wakes the driver (a message, a proposal).
    wake: Signal,
    /// Wakes the scheduler (the state changed, leadership changed).
    changed: Signal,
    peers: BTreeMap<u64, Rc<net::PeerOut>>,
    checkpoint_generation: Cell<u64>,
    checkpointed: Cell<u64>,
    last_checkpoint: Cell<Instant>,
    raw: RefCell<MetaRaw>,
}

type MetaRaw = ::raft::RawNode<keel_raftlog::GroupStorage<UringDevice>>;

/// How long a request waits for its commands to commit and apply.
const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(5);

impl Service {
    fn role(&self) -> Role {
        self.role.get()
    }

    /// Where the leader accepts clients, if known.
    fn leader_addr(&self) -> Option<String> {
        let r = self.role();
        if r.leader_id == self.cfg.id {
            return Some(self.cfg.listen.clone());
        }
        self.cfg.peers.get(&r.leader_id).cloned()
    }

    /// Proposes `commands` as one entry and waits until it is applied here (committed on a
    /// majority, durable there). Err: it may or may not have been applied (leader change,
    /// timeout); the caller retries.
    async fn propose(&self, commands: Vec<Command>) -> Result<Vec<Result<(), Refusal>>, String> {
        if !self.role().leader {
            return Err("this meta replica stopped leading; retry".into());
        }
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(seq, tx);
        self.to_propose.borrow_mut().push((seq, commands));
        self.wake.notify();
        let timeout = async {
            glommio::timer::sleep(PROPOSAL_TIMEOUT).await;
            Err("timed out waiting for the meta group to commit; retry".to_string())
        };
        let res = futures_lite::future::or(
            async {
                rx.await
                    .unwrap_or_else(|_| Err("the proposal was dropped; retry".to_string()))
            },
            timeout,
        )
        .await;
        self.pending.borrow_mut().remove(&seq);
        res
    }
}

/// Runs one meta replica on the current glommio executor until it fails (a failed raftlog, a
/// listener that cannot bind). Returns the failure. The data file must not be used by another
/// process: the caller takes its lock ([`keel_nvme::lock_device`]); [`start_thread`] does.
///
/// Its tasks run in a task queue of their own with 100 shares (what a node gives its
/// checkpoints): embedded in keel-node, the meta service takes what requests leave.
pub async fn run(cfg: ServiceConfig) -> String {
    let tq = glommio::executor().create_task_queue(
        glommio::Shares::Static(100),
        glommio::Latency::Matters(Duration::from_millis(20)),
        "keel-meta",
    );
    let replica = async move {
        match raft::start(cfg).await {
            // Tasks spawned from here on go into this queue too.
            Ok(svc) => raft::serve(svc).await,
            Err(e) => e,
        }
    };
    match glommio::spawn_local_into(replica, tq) {
        Ok(t) => t.await,
        Err(e) => format!("cannot start the meta task queue: {e}"),
    }
}

/// Locks the data file and runs [`run`] on a new glommio executor thread. The handle yields
/// the failure the replica stopped on.
pub fn start_thread(cfg: ServiceConfig) -> Result<std::thread::JoinHandle<String>, String> {
    cfg.validate()?;
    if let Some(dir) = cfg.data.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let lock = keel_nvme::lock_device(&cfg.data)?;
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("keel-meta")
        .spawn(move || async move {
            let _lock = lock;
            run(cfg).await
        })
        .map_err(|e| format!("cannot start an io_uring executor: {e}"))?;
    Ok(std::thread::spawn(move || {
        ex.join()
            .unwrap_or_else(|e| format!("the meta executor failed: {e}"))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_is_named_in_peers_at_its_listen_address() {
        let mut c = ServiceConfig::new(2, "10.0.0.2:7000", "/tmp/x");
        c.peers = [
            (1, "10.0.0.1:7000"),
            (2, "10.0.0.2:7000"),
            (3, "10.0.0.3:7000"),
        ]
        .map(|(i, a)| (i, a.to_string()))
        .into();
        c.validate().unwrap();
        c.listen = "0.0.0.0:7000".into();
        c.validate().unwrap();
        c.listen = "0.0.0.0:7001".into();
        assert!(c.validate().unwrap_err().contains("must be the same"));
        c.listen = "10.0.0.2:7000".into();
        c.peers.remove(&3);
        assert!(c.validate().unwrap_err().contains("1 or 3"));
        c.peers.remove(&2);
        assert!(c.validate().unwrap_err().contains("does not name"));
    }
}
