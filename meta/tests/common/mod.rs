//! The harness of the service tests: real `keel-meta` processes on loopback ports no other test
//! takes, stopped by PID; pretend nodes that speak the node protocol through the client library
//! and carry out the commands they are handed on a simulated set of Raft groups (what keel-node
//! will do for real), so the meta service sees the facts a cluster would report.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use keel_meta::client::{ClientConfig, ClientError, MetaClient, NodeSession};
use keel_meta::machine::Registration;
use keel_meta::proto::{NodeCommand, NodeReport, PartitionFact, PeerHeard, Role, Status};

pub const BIN: &str = env!("CARGO_BIN_EXE_keel-meta");

/// A loopback port no other test in this run gets: each test process draws from its own band
/// (by PID) of 150 ports between 20,000 and 32,000, below the kernel's ephemeral range (where
/// outgoing connections and port-0 listeners take theirs), and the port is checked free by
/// binding it.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let band = 20_000 + (std::process::id() % 80) * 150;
    for _ in 0..150 {
        let p = band + NEXT.fetch_add(1, Ordering::SeqCst) % 150;
        if TcpListener::bind(("127.0.0.1", p as u16)).is_ok() {
            return p as u16;
        }
    }
    // Fall back to one the kernel picks.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().unwrap().port()
}

pub fn addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "keel-meta-test-{name}-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
    pub fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One keel-meta process.
pub struct Meta {
    pub addr: String,
    pub data: PathBuf,
    pub args: Vec<String>,
    child: Option<Child>,
}

impl Meta {
    /// Starts `keel-meta --listen addr --data data extra...` (not waiting for it).
    pub fn start(addr: &str, data: &Path, extra: &[&str]) -> Meta {
        let mut args = vec![
            "--listen".to_string(),
            addr.to_string(),
            "--data".to_string(),
            data.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut m = Meta {
            addr: addr.to_string(),
            data: data.to_path_buf(),
            args,
            child: None,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.data.with_extension("log")).unwrap();
        let child = Command::new(BIN)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("keel-meta starts");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, by its PID, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits (bounded) for the process to exit by itself; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.child.as_mut()?.try_wait().unwrap() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Starts it again with the same flags and data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for Meta {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn client(addrs: &[String]) -> MetaClient {
    MetaClient::new(
        addrs,
        ClientConfig {
            retry_for: Duration::from_secs(20),
            retry_delay: Duration::from_millis(50),
            ..ClientConfig::default()
        },
    )
    .unwrap()
}

/// Waits (bounded) until the meta group answers `status` with a leader.
pub fn wait_ready(addrs: &[String]) -> Status {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client(addrs).status() {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("meta at {addrs:?} not ready: {e}"),
        }
    }
}

/// Runs `keel-meta ctl --meta addrs args...`: (exit ok, stdout, stderr).
pub fn ctl(addrs: &[String], args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("ctl")
        .arg("--meta")
        .arg(addrs.join(","))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One partition's Raft group as the pretend nodes carry it.
#[derive(Clone, Debug, Default)]
pub struct Group {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub leader: Option<u64>,
    pub term: u64,
}

/// A pretend node: registered through the client library, with a peer port it listens on.
pub struct FakeNode {
    pub id: u64,
    pub zone: String,
    pub session: NodeSession,
    /// Heartbeats, carries out commands, and its peers hear it.
    pub alive: bool,
    /// Alive, but its heartbeats do not reach the meta service (its peers still hear it).
    pub cut_off: bool,
    /// The device failure it reports with its heartbeats.
    pub failure: Option<String>,
    _peer: TcpListener,
}

pub fn registration(id: u64, zone: &str, peer: &str, partitions: u32) -> Registration {
    Registration {
        node: id,
        client_addr: format!("127.0.0.1:{}", 30_000 + id),
        peer_addr: peer.to_string(),
        zone: zone.to_string(),
        cores: 2,
        device_bytes: 2 << 30,
        memory_bytes: 8 << 30,
        partitions,
    }
}

/// Pretend nodes and the Raft groups they carry between them.
pub struct FakeCluster {
    pub meta: Vec<String>,
    pub nodes: BTreeMap<u64, FakeNode>,
    pub groups: BTreeMap<u32, Group>,
    pub partitions: u32,
    /// When set, `settle` checks that no more partitions than this are mid-move at once (the
    /// meta service's --moves-in-flight-max).
    pub moves_max: Option<usize>,
}

impl FakeCluster {
    pub fn new(meta: &[String], partitions: u32) -> FakeCluster {
        FakeCluster {
            meta: meta.to_vec(),
            nodes: BTreeMap::new(),
            groups: BTreeMap::new(),
            partitions,
            moves_max: None,
        }
    }

    /// Registers node `id` in `zone` (its peer port bound and held).
    pub fn add(&mut self, id: u64, zone: &str) -> Result<(), ClientError> {
        let peer = TcpListener::bind("127.0.0.1:0").unwrap();
        let paddr = peer.local_addr().unwrap().to_string();
        let reg = registration(id, zone, &paddr, self.partitions);
        let mut session = NodeSession::new(client(&self.meta), reg);
        session.register()?;
        self.nodes.insert(
            id,
            FakeNode {
                id,
                zone: zone.to_string(),
                session,
                alive: true,
                cut_off: false,
                failure: None,
                _peer: peer,
            },
        );
        Ok(())
    }

    /// What node `id` reports: every group it is in.
    pub fn facts(&self, id: u64) -> Vec<PartitionFact> {
        self.groups
            .iter()
            .filter(|(_, g)| g.voters.contains(&id) || g.learners.contains(&id))
            .map(|(&p, g)| PartitionFact {
                partition: p,
                role: if g.leader == Some(id) {
                    Role::Leader
                } else if g.learners.contains(&id) {
                    Role::Learner
                } else {
                    Role::Follower
                },
                term: g.term,
                applied_index: 10,
                keys: 5,
                bytes: 500,
                voters: g.voters.clone(),
                learners: g.learners.clone(),
            })
            .collect()
    }

    /// Node `id`'s heartbeat report: its groups, the live nodes it shares a group with (as
    /// heard just now) and its device failure.
    pub fn report(&self, id: u64) -> NodeReport {
        let mut peers = BTreeSet::new();
        for g in self.groups.values() {
            let members: Vec<u64> = g.voters.iter().chain(&g.learners).copied().collect();
            if members.contains(&id) {
                peers.extend(members.into_iter().filter(|&n| n != id));
            }
        }
        NodeReport {
            partitions: self.facts(id),
            peers_heard: (peers.into_iter())
                .filter(|n| self.nodes.get(n).is_some_and(|x| x.alive))
                .map(|node| PeerHeard { node, ms_ago: 50 })
                .collect(),
            failure: self.nodes[&id].failure.clone(),
            slices: Vec::new(),
        }
    }

    /// Node `id` stops (as keel-node exits): it heartbeats no more, and each group it led
    /// elects another live voter in a new term.
    pub fn kill(&mut self, id: u64) {
        self.nodes.get_mut(&id).expect("known node").alive = false;
        let nodes = &self.nodes;
        for g in self.groups.values_mut().filter(|g| g.leader == Some(id)) {
            g.leader = (g.voters.iter().copied()).find(|v| nodes.get(v).is_some_and(|n| n.alive));
            g.term += 1;
        }
    }

    /// Carries out one command as node `id` would (idempotently).
    pub fn carry_out(&mut self, id: u64, c: &NodeCommand) {
        match c {
            NodeCommand::Create {
                partition,
                voters,
                campaign,
            } => {
                if voters.is_empty() {
                    return; // an empty learner replica: it joins when the leader adds it
                }
                let g = self.groups.entry(*partition).or_insert_with(|| Group {
                    voters: voters.clone(),
                    ..Group::default()
                });
                if *campaign && g.leader.is_none() {
                    g.leader = Some(id);
                    g.term += 1;
                }
            }
            NodeCommand::AddLearner { partition, node } => {
                let g = self.groups.get_mut(partition).expect("group exists");
                assert_eq!(g.leader, Some(id), "AddLearner went to the leader");
                if !g.learners.contains(node) && !g.voters.contains(node) {
                    g.learners.push(*node);
                }
            }
            NodeCommand::Promote { partition, node } => {
                let g = self.groups.get_mut(partition).expect("group exists");
                assert_eq!(g.leader, Some(id), "Promote went to the leader");
                if let Some(i) = g.learners.iter().position(|n| n == node) {
                    g.learners.remove(i);
                    g.voters.push(*node);
                }
            }
            NodeCommand::RemoveReplica { partition, node } => {
                let g = self.groups.get_mut(partition).expect("group exists");
                assert_eq!(g.leader, Some(id), "RemoveReplica went to the leader");
                assert_ne!(Some(*node), g.leader, "the leader is never removed");
                g.voters.retain(|n| n != node);
                g.learners.retain(|n| n != node);
            }
            NodeCommand::TransferLeader { partition, to } => {
                let g = self.groups.get_mut(partition).expect("group exists");
                if g.leader == Some(id) && g.voters.contains(to) {
                    g.leader = Some(*to);
                    g.term += 1;
                }
            }
            NodeCommand::DropReplica { .. } => {}
        }
    }

    /// One round: every live node heartbeats and carries out what it is told. Returns the
    /// commands handed out.
    pub fn round(&mut self) -> usize {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let mut handed = 0;
        for id in ids {
            if !self.nodes[&id].alive || self.nodes[&id].cut_off {
                continue;
            }
            let report = self.report(id);
            let beat = self
                .nodes
                .get_mut(&id)
                .unwrap()
                .session
                .heartbeat(report)
                .unwrap_or_else(|e| panic!("node {id}: heartbeat: {e}"));
            handed += beat.commands.len();
            for c in &beat.commands {
                self.carry_out(id, c);
            }
        }
        handed
    }

    /// Rounds until the meta service has no move in flight and hands nothing out for a few
    /// rounds in a row (bounded).
    pub fn settle(&mut self) -> Status {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut quiet = 0;
        loop {
            assert!(
                Instant::now() < deadline,
                "placement did not settle in 120 s"
            );
            let handed = self.round();
            let s = client(&self.meta).status().unwrap();
            if let Some(max) = self.moves_max {
                let mid_move = self
                    .groups
                    .values()
                    .filter(|g| !g.learners.is_empty() || g.voters.len() > 3)
                    .count();
                assert!(
                    mid_move <= max,
                    "{mid_move} partitions mid-move, limit {max}"
                );
            }
            if handed == 0 && s.moves_in_flight.is_empty() {
                quiet += 1;
                // The planner runs at least every second; two quiet seconds mean it has nothing.
                if quiet >= 12 {
                    return s;
                }
                std::thread::sleep(Duration::from_millis(200));
            } else {
                quiet = 0;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Zones of each partition's voters must be more than one (with two zones and rf 3).
pub fn zones_of(
    s: &Status,
    placements: &[keel_meta::placement::Placement],
) -> Vec<BTreeSet<String>> {
    let zone: BTreeMap<u64, &str> = s.nodes.iter().map(|n| (n.id, n.zone.as_str())).collect();
    placements
        .iter()
        .map(|p| p.voters.iter().map(|v| zone[v].to_string()).collect())
        .collect()
}
