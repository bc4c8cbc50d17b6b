//! A node placed by the meta service (`node.meta`, `--meta`, or without it and `node.peers` the
//! one the node runs inside itself at `node.meta_listen`): it registers, heartbeats with the
//! facts of every partition it hosts, and carries out the commands and routing tables the
//! heartbeat replies bring (the shards' side is `replica::placed`).
//!
//! The meta client is blocking, so registration and heartbeats run on a thread of their own
//! (`keel_meta::client::spawn_heartbeats`). Each shard has a [`ShardLink`] to that thread: a
//! shard task publishes the shard's facts there and takes the latest commands and table from it
//! every [`SHARD_POLL`]. A heartbeat's commands replace the ones before them (the meta service
//! repeats every command until it sees it done), so a shard runs each heartbeat's commands
//! once.
//!
//! Each heartbeat also names the peers whose Raft traffic the shards received and how long
//! ago (so the meta service does not declare this node dead while its peers hear it), and a
//! shard's device failure: a placed node whose Raft log or value log is poisoned reports it and
//! then exits ([`Cluster::fail`]).
//!
//! Registration starts once every shard accepts peers (the meta service checks that the peer
//! address answers). A refusal (an id held by another live node, another partition count, an
//! unreachable peer address) stops the node with the meta service's message; an unreachable
//! meta service is waited for, and the node serves what it hosts meanwhile.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_meta::client::{
    spawn_heartbeats, ClientConfig, ClientError, Heartbeats, MetaClient, NodeSession,
};
use keel_meta::machine::Registration;
use keel_meta::placement::NodeId;
use keel_meta::proto::{
    NodeCommand, NodeReport, PartitionFact, PeerHeard, RoutingTable, SliceHeld,
};

use crate::config::Profile;
use crate::engine::Engine;
use crate::replica::Replicas;

/// How often a shard publishes its facts and takes what the heartbeats brought.
pub const SHARD_POLL: Duration = Duration::from_millis(50);

/// Between a shard and the heartbeat thread.
#[derive(Default)]
pub struct ShardLink {
    facts: Mutex<Vec<PartitionFact>>,
    /// When the shard's transport last got a frame from each peer node.
    heard: Mutex<Vec<(NodeId, Instant)>>,
    /// The shard's device failure (its value log or Raft log poisoned).
    failure: Mutex<Option<String>>,
    /// The table slices the shard holds.
    slices: Mutex<Vec<SliceHeld>>,
    inbox: Mutex<Inbox>,
}

#[derive(Default)]
struct Inbox {
    commands: Vec<NodeCommand>,
    table: Option<Arc<RoutingTable>>,
}

/// This node's side of the meta service: one per process, shared by the shards.
pub struct Cluster {
    links: Vec<ShardLink>,
    ready: AtomicUsize,
    meta: Vec<String>,
    registration: Registration,
    heartbeats: Mutex<Option<Heartbeats>>,
    /// The heartbeat interval the meta service asked for (0 until registered).
    heartbeat_interval_ms: AtomicU64,
    /// A heartbeat on its way carries a device failure; and one that did was answered.
    failure_sent: AtomicBool,
    failure_delivered: AtomicBool,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cluster {
    pub fn new(p: &Profile) -> Arc<Cluster> {
        let shards = p.node.cores.len();
        Arc::new(Cluster {
            links: (0..shards).map(|_| ShardLink::default()).collect(),
            ready: AtomicUsize::new(0),
            meta: p.meta_addrs(),
            registration: Registration {
                node: p.node.id,
                client_addr: p.node.listen.clone(),
                peer_addr: p.node.peer_listen.clone(),
                zone: p.node.zone.clone(),
                cores: shards as u32,
                device_bytes: p.device.size_bytes * p.device.paths.len() as u64,
                memory_bytes: crate::tune::mem_total_bytes().unwrap_or(0),
                partitions: p.node.partitions,
            },
            heartbeats: Mutex::new(None),
            heartbeat_interval_ms: AtomicU64::new(0),
            failure_sent: AtomicBool::new(false),
            failure_delivered: AtomicBool::new(false),
        })
    }

    /// What the next heartbeat says: every shard's partitions, the peers the shards heard
    /// (each at the latest time any shard did) and the first shard's device failure.
    fn report(&self) -> NodeReport {
        let now = Instant::now();
        let mut heard: BTreeMap<NodeId, Instant> = BTreeMap::new();
        let mut failure = None;
        let mut partitions = Vec::new();
        let mut slices = Vec::new();
        for (i, l) in self.links.iter().enumerate() {
            partitions.extend(locked(&l.facts).iter().cloned());
            slices.extend(locked(&l.slices).iter().copied());
            for &(n, t) in locked(&l.heard).iter() {
                let e = heard.entry(n).or_insert(t);
                *e = (*e).max(t);
            }
            if let Some(f) = locked(&l.failure).as_ref().filter(|_| failure.is_none()) {
                failure = Some(format!("shard {i}: {f}"));
            }
        }
        self.failure_sent.store(failure.is_some(), Ordering::SeqCst);
        NodeReport {
            partitions,
            peers_heard: (heard.into_iter())
                .map(|(node, t)| PeerHeard {
                    node,
                    ms_ago: now.saturating_duration_since(t).as_millis() as u64,
                })
                .collect(),
            failure,
            slices,
        }
    }

    /// A device of shard `shard` failed: the next heartbeats say so, and once one that did
    /// was answered (or after two heartbeat intervals and a second, at most 10 s; at once
    /// before registration) the node stops (exit 1). The meta service marks it Down at once
    /// rather than after its failure timeout; its groups elect leaders among the other
    /// replicas, and its replicas are rebuilt elsewhere (they could take no write and apply no
    /// entry here). Restarted on a working device, the node rejoins.
    pub async fn fail(&self, shard: usize, why: &str) -> ! {
        eprintln!(
            "keel-node: shard {shard}: FATAL: device failure: {why}; telling the meta service"
        );
        *locked(&self.links[shard].failure) = Some(why.to_string());
        let interval = self.heartbeat_interval_ms.load(Ordering::SeqCst);
        let wait = match interval {
            0 => Duration::ZERO,
            ms => Duration::from_millis((2 * ms + 1000).min(10_000)),
        };
        let deadline = Instant::now() + wait;
        while !self.failure_delivered.load(Ordering::SeqCst) && Instant::now() < deadline {
            glommio::timer::sleep(SHARD_POLL).await;
        }
        let said = match self.failure_delivered.load(Ordering::SeqCst) {
            true => "the meta service knows",
            false => "the meta service did not answer",
        };
        eprintln!("keel-node: stopping for the device failure ({said})");
        std::process::exit(1);
    }

    /// A shard accepts peers now; the last one to say so starts the heartbeat thread.
    pub fn shard_ready(self: &Arc<Self>) -> Result<(), String> {
        if self.ready.fetch_add(1, Ordering::SeqCst) + 1 < self.links.len() {
            return Ok(());
        }
        let this = self.clone();
        std::thread::Builder::new()
            .name("keel-meta-register".into())
            .spawn(move || this.register_and_beat())
            .map(|_| ())
            .map_err(|e| format!("cannot start the meta thread: {e}"))
    }

    /// Registers (waiting for the meta service as long as it takes), then heartbeats on a
    /// thread of their own. Exits the process on a refusal.
    fn register_and_beat(self: Arc<Self>) {
        let refused = |m: &str| -> ! {
            eprintln!("keel-node: the meta service refused this node: {m}");
            std::process::exit(1);
        };
        let client = match MetaClient::new(&self.meta, ClientConfig::default()) {
            Ok(c) => c,
            Err(e) => refused(&e.to_string()),
        };
        let mut session = NodeSession::new(client, self.registration.clone());
        let mut said = false;
        loop {
            match session.register() {
                Ok(()) => break,
                Err(ClientError::Refused(m)) => refused(&m),
                Err(e) => {
                    if !said {
                        eprintln!("keel-node: waiting for the meta service: {e}");
                        said = true;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        eprintln!(
            "keel-node: registered with the meta service ({}) as node {} in zone {}",
            session.client.leader().unwrap_or("?"),
            self.registration.node,
            self.registration.zone
        );
        if let Some(t) = session.cache.table() {
            self.deliver_table(t);
        }
        self.heartbeat_interval_ms.store(
            session.heartbeat_interval.as_millis().max(1) as u64,
            Ordering::SeqCst,
        );
        let (facts, beat) = (self.clone(), self.clone());
        let failing = Arc::new(AtomicBool::new(false));
        let (ok_flag, err_flag) = (failing.clone(), failing);
        let started = spawn_heartbeats(
            session,
            move || facts.report(),
            move |b, cache| {
                if beat.failure_sent.load(Ordering::SeqCst) {
                    beat.failure_delivered.store(true, Ordering::SeqCst);
                }
                if ok_flag.swap(false, Ordering::SeqCst) {
                    eprintln!("keel-node: the meta service answers heartbeats again");
                }
                if b.table_changed {
                    if let Some(t) = cache.table() {
                        beat.deliver_table(t);
                    }
                }
                beat.deliver_commands(&b.commands);
            },
            move |e| {
                if let ClientError::Refused(m) = e {
                    refused(m);
                }
                if !err_flag.swap(true, Ordering::SeqCst) {
                    eprintln!(
                        "keel-node: heartbeat failed (serving with the routing table held): {e}"
                    );
                }
            },
        );
        match started {
            Ok(h) => *locked(&self.heartbeats) = Some(h),
            Err(e) => refused(&format!("cannot start the heartbeat thread: {e}")),
        }
    }

    fn deliver_table(&self, t: Arc<RoutingTable>) {
        for l in &self.links {
            locked(&l.inbox).table = Some(t.clone());
        }
    }

    /// Hands each shard its commands of this heartbeat (by partition), replacing the last ones.
    fn deliver_commands(&self, commands: &[NodeCommand]) {
        let n = self.links.len() as u64;
        let mut per: Vec<Vec<NodeCommand>> = vec![Vec::new(); self.links.len()];
        for c in commands {
            per[(partition_of(c) as u64 % n) as usize].push(c.clone());
        }
        for (l, cs) in self.links.iter().zip(per) {
            locked(&l.inbox).commands = cs;
        }
    }

    /// Shard `id`'s task: publishes its facts and carries out what the heartbeats brought,
    /// every [`SHARD_POLL`], for as long as the shard runs.
    pub fn spawn_shard_task(
        self: &Arc<Self>,
        id: usize,
        replicas: Rc<Replicas>,
        tq: glommio::TaskQueueHandle,
    ) -> Result<(), String> {
        let this = self.clone();
        let slice_replicas = replicas.clone();
        glommio::spawn_local_into(
            async move {
                let link = &this.links[id];
                loop {
                    let (table, commands) = {
                        let mut inbox = locked(&link.inbox);
                        (inbox.table.take(), std::mem::take(&mut inbox.commands))
                    };
                    if let Some(t) = table {
                        replicas.set_routes(t);
                    }
                    let now = Engine::<keel_nvme::AnyDevice>::now();
                    for c in &commands {
                        replicas.run_command(c, now);
                    }
                    *locked(&link.facts) = replicas.facts();
                    if let Some(t) = replicas.transport.borrow().as_ref() {
                        *locked(&link.heard) = t.heard();
                    }
                    if let Some(why) = replicas.device_failure() {
                        this.fail(id, &why).await;
                    }
                    glommio::timer::sleep(SHARD_POLL).await;
                }
            },
            tq,
        )
        .map_err(|e| e.to_string())?
        .detach();
        let this = self.clone();
        glommio::spawn_local_into(
            async move {
                let link = &this.links[id];
                loop {
                    crate::replica::tables::sync_slices(&slice_replicas).await;
                    *locked(&link.slices) = slice_replicas
                        .engine
                        .slices()
                        .into_iter()
                        .map(|(build_id, partition, _, _)| SliceHeld {
                            build_id,
                            partition,
                        })
                        .collect();
                    glommio::timer::sleep(SLICE_POLL).await;
                }
            },
            tq,
        )
        .map_err(|e| e.to_string())?
        .detach();
        Ok(())
    }
}

/// How often a shard compares the table slices it holds with those the routing table wants.
pub const SLICE_POLL: Duration = Duration::from_millis(200);

fn partition_of(c: &NodeCommand) -> u32 {
    match *c {
        NodeCommand::Create { partition, .. }
        | NodeCommand::AddLearner { partition, .. }
        | NodeCommand::Promote { partition, .. }
        | NodeCommand::RemoveReplica { partition, .. }
        | NodeCommand::TransferLeader { partition, .. }
        | NodeCommand::DropReplica { partition } => partition,
    }
}
