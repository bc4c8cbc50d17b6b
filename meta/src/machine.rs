//! The meta service's replicated state machine: what every meta replica holds alike, changed
//! only by [`Command`]s applied in Raft log order.
//!
//! State: the keyspace (partition count and replication factor, fixed by the first
//! [`Command::Bootstrap`]), the nodes (addresses, zone, capacity, drain and down flags), the
//! placement of every partition (the planner's [`ClusterState`]), the moves handed out and not yet
//! completed (at most one per partition), the balance switch, the declared feature tables
//! ([`crate::tables`]) and the placement epoch, which goes up with every change a routing table
//! shows.
//!
//! Apply is deterministic: no clock, no I/O, no randomness; a command that does not fit the state
//! is refused with a message and changes nothing, on every replica alike. Decisions that need a
//! clock or the network (a node silent too long, a peer address unreachable) are taken by the
//! leader before it proposes (see `schedule.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::placement::{self, ClusterState, Health, Move, Node, NodeId, PartitionId, Placement};
use crate::tables::{TableDef, TableInfo, TableMode, VersionInfo, TABLES_MAX};

/// Partitions the meta service accepts at most: its state (and so a snapshot) stays within one
/// checkpoint slot (see `service/store.rs`).
pub const META_PARTITIONS_MAX: u32 = 1 << 16;

/// Bytes of device capacity one unit of placement weight stands for: a node with 4 TB holds about
/// 58 times the replicas of one with 64 GiB; every node weighs at least 1.
pub const WEIGHT_UNIT_BYTES: u64 = 64 << 30;

/// Version of the encoded [`Entry`] and [`Image`]; a replica refuses to apply a newer one.
/// Version 2 added the tables: its images end with them, and its entries may hold the table
/// commands. Version 1 entries and images are still read.
pub const FORMAT_VERSION: u8 = 2;

/// What a node tells about itself when it registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub node: NodeId,
    /// Where clients reach it (memcached protocol), "IP:PORT".
    pub client_addr: String,
    /// Where its peers reach it (Raft transport, shard 0), "IP:PORT".
    pub peer_addr: String,
    pub zone: String,
    pub cores: u32,
    pub device_bytes: u64,
    pub memory_bytes: u64,
    /// The node's own partition count (its profile's `node.partitions`): must match the keyspace.
    pub partitions: u32,
}

/// A registered node as the state holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub client_addr: String,
    pub peer_addr: String,
    pub zone: String,
    pub cores: u32,
    pub device_bytes: u64,
    pub memory_bytes: u64,
    /// The planner's capacity weight, from `device_bytes` ([`WEIGHT_UNIT_BYTES`]).
    pub weight: u32,
    /// Being emptied (`keel-meta ctl drain`): takes nothing new, its replicas move away.
    pub draining: bool,
    /// Silent past the failure timeout (marked by the leader); cleared when it heartbeats again.
    pub down: bool,
}

impl NodeInfo {
    /// The health the planner reads: Down wins over Draining.
    pub fn health(&self) -> Health {
        match (self.down, self.draining) {
            (true, _) => Health::Down,
            (false, true) => Health::Draining,
            (false, false) => Health::Up,
        }
    }
}

/// The weight of a node with `device_bytes` of device.
pub fn weight_of(device_bytes: u64) -> u32 {
    (device_bytes / WEIGHT_UNIT_BYTES).clamp(1, 1 << 16) as u32
}

/// One change of the state. Every variant is applied by [`MetaState::apply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Fixes the keyspace; only the first one counts (later ones that agree are no-ops).
    Bootstrap {
        partitions: u32,
        replication_factor: u32,
    },
    /// A node joins, or a known node comes back (its addresses, zone and capacity are updated
    /// and its down flag cleared). The leader has checked liveness and reachability.
    Register(Registration),
    /// The leader saw the node silent past the failure timeout (`down`), or heard it again.
    SetDown {
        node: NodeId,
        down: bool,
    },
    /// `ctl drain` (true), or an undrain (false).
    SetDraining {
        node: NodeId,
        draining: bool,
    },
    /// `ctl remove`: refused while the node hosts a replica.
    Remove {
        node: NodeId,
    },
    /// `ctl balance on|off`.
    SetBalance {
        on: bool,
    },
    /// The leader hands these moves out (one per partition; a partition with a move in flight
    /// is skipped).
    StartMoves {
        moves: Vec<Move>,
    },
    /// The nodes reported the move done: the placement takes it.
    CompleteMove {
        m: Move,
    },
    /// The move of this partition is given up (a node it needs went down, or it took too long).
    AbortMove {
        partition: PartitionId,
    },
    /// The replicas reported this leader (Raft elects; the meta service only hears of it).
    SetLeader {
        partition: PartitionId,
        leader: NodeId,
    },
    /// A leader reported a group of a partition the placement has no replicas of (a meta
    /// service that started again without its state, a lone node's data file reopened under a
    /// new one): the placement takes the group as it is, in place of any Create in flight that
    /// would make another. Refused for a partition already placed, or voters not all known.
    Adopt {
        partition: PartitionId,
        voters: Vec<NodeId>,
        leader: NodeId,
    },
    /// `ctl create-table`: refused for a name already declared or a definition that does not
    /// fit the keyspace.
    CreateTable(TableDef),
    /// `ctl drop-table`.
    DropTable {
        name: String,
    },
    /// `keel-bulk load`: a new version of a bulk table, to be adopted by every replica from
    /// `source`. Refused while another load of the table is in flight or it is rolled back.
    StartLoad {
        table: String,
        build_id: u64,
        source: String,
        records: u64,
    },
    /// Every replica of every partition holds the version (the leader saw it in their
    /// heartbeats): it becomes current, and versions past `versions_kept` go.
    FinishLoad {
        table: String,
        version: u32,
    },
    /// The load is given up (`keel-bulk load` cancelled, or its files refused).
    AbortLoad {
        table: String,
        version: u32,
    },
    /// Reads go back to version `to` (the one before the current when `None`); loads are
    /// refused until an Unrollback.
    Rollback {
        table: String,
        to: Option<u32>,
    },
    Unrollback {
        table: String,
    },
}

/// One Raft entry: who proposed it (to answer the proposer once applied) and its commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub version: u8,
    /// The meta replica that proposed it and its sequence number there.
    pub proposer: u64,
    pub seq: u64,
    pub commands: Vec<Command>,
}

/// Why a command was refused. The message names what was wrong.
pub type Refusal = String;

/// The whole state, as a snapshot or checkpoint carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub version: u8,
    pub keyspace: Option<(u32, u32)>,
    pub nodes: Vec<NodeInfo>,
    pub placements: Vec<Placement>,
    pub in_flight: Vec<Move>,
    pub balance: bool,
    pub epoch: u64,
    /// The planner state's own epoch (moves applied).
    pub moves_applied: u64,
    /// Sorted by name (version 2 on).
    pub tables: Vec<TableInfo>,
}

/// A version 1 image: [`Image`] before the tables.
#[derive(Deserialize)]
struct ImageV1 {
    #[allow(dead_code)] // read to reach the fields after it; 1 by the caller's check
    version: u8,
    keyspace: Option<(u32, u32)>,
    nodes: Vec<NodeInfo>,
    placements: Vec<Placement>,
    in_flight: Vec<Move>,
    balance: bool,
    epoch: u64,
    moves_applied: u64,
}

/// The replicated state. See the module doc.
#[derive(Clone, Debug)]
pub struct MetaState {
    cluster: Option<ClusterState>,
    nodes: BTreeMap<NodeId, NodeInfo>,
    in_flight: BTreeMap<PartitionId, Move>,
    balance: bool,
    epoch: u64,
    tables: BTreeMap<String, TableInfo>,
}

impl Default for MetaState {
    fn default() -> Self {
        MetaState {
            cluster: None,
            nodes: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            balance: true,
            epoch: 0,
            tables: BTreeMap::new(),
        }
    }
}

/// The nodes a move needs alive: the ones that must act or receive a replica.
pub fn move_targets(m: &Move) -> Vec<NodeId> {
    match m {
        Move::Create { voters, .. } => voters.clone(),
        &Move::AddLearner { node, .. } | &Move::Promote { node, .. } => vec![node],
        &Move::TransferLeader { to, .. } => vec![to],
        Move::RemoveReplica { .. } => Vec::new(),
    }
}

impl MetaState {
    /// The placement (None before bootstrap).
    pub fn cluster(&self) -> Option<&ClusterState> {
        self.cluster.as_ref()
    }

    pub fn bootstrapped(&self) -> bool {
        self.cluster.is_some()
    }

    /// (partition count, replication factor), once bootstrapped.
    pub fn keyspace(&self) -> Option<(u32, u32)> {
        self.cluster
            .as_ref()
            .map(|c| (c.partition_count(), c.replication_factor() as u32))
    }

    pub fn nodes(&self) -> &BTreeMap<NodeId, NodeInfo> {
        &self.nodes
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.get(&id)
    }

    /// Moves handed out and not completed, by partition.
    pub fn in_flight(&self) -> &BTreeMap<PartitionId, Move> {
        &self.in_flight
    }

    pub fn balance(&self) -> bool {
        self.balance
    }

    /// The declared tables, by name.
    pub fn tables(&self) -> &BTreeMap<String, TableInfo> {
        &self.tables
    }

    /// The placement epoch: +1 for every change a routing table shows (nodes, their health,
    /// replicas, leaders).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Applies one command; a refusal leaves the state as it was.
    pub fn apply(&mut self, c: &Command) -> Result<(), Refusal> {
        match c {
            &Command::Bootstrap {
                partitions,
                replication_factor,
            } => self.bootstrap(partitions, replication_factor),
            Command::Register(r) => self.register(r),
            &Command::SetDown { node, down } => self.set_flag(node, down, |n| &mut n.down),
            &Command::SetDraining { node, draining } => {
                self.set_flag(node, draining, |n| &mut n.draining)
            }
            &Command::Remove { node } => {
                self.known_mut(node)?;
                self.cluster_mut()?
                    .remove_node(node)
                    .map_err(|e| format!("{e}"))?;
                self.nodes.remove(&node);
                self.abort_moves_needing(node);
                self.in_flight.retain(|_, m| !move_nodes(m).contains(&node));
                self.epoch += 1;
                Ok(())
            }
            &Command::SetBalance { on } => {
                self.balance = on;
                Ok(())
            }
            Command::StartMoves { moves } => self.start_moves(moves),
            Command::CompleteMove { m } => self.complete(m),
            &Command::AbortMove { partition } => {
                self.in_flight.remove(&partition);
                Ok(())
            }
            Command::Adopt {
                partition,
                voters,
                leader,
            } => self.adopt(*partition, voters, *leader),
            Command::CreateTable(t) => self.create_table(t),
            Command::StartLoad {
                table,
                build_id,
                source,
                records,
            } => self.start_load(table, *build_id, source, *records),
            Command::FinishLoad { table, version } => self.finish_load(table, *version),
            Command::AbortLoad { table, version } => {
                let t = self.table_mut(table)?;
                let before = t.versions.len();
                t.versions.retain(|v| v.ready || v.version != *version);
                if t.versions.len() == before {
                    return Err(format!("table {table}: no load of version {version}"));
                }
                self.epoch += 1;
                Ok(())
            }
            Command::Rollback { table, to } => self.rollback(table, *to),
            Command::Unrollback { table } => {
                let t = self.table_mut(table)?;
                if !t.rolled_back {
                    return Err(format!("table {table} is not rolled back"));
                }
                t.rolled_back = false;
                self.epoch += 1;
                Ok(())
            }
            Command::DropTable { name } => {
                if self.tables.remove(name).is_none() {
                    return Err(format!("no table {name:?}"));
                }
                self.epoch += 1;
                Ok(())
            }
            &Command::SetLeader { partition, leader } => {
                let cl = self.cluster_mut()?;
                if cl
                    .placement(partition)
                    .is_some_and(|p| p.leader == Some(leader))
                {
                    return Ok(());
                }
                cl.set_leader(partition, Some(leader))
                    .map_err(|e| e.to_string())?;
                // A move the new leader cannot carry out is given up (the planner plans again):
                // a transfer from another node, or the removal of the new leader itself.
                let stale = match self.in_flight.get(&partition) {
                    Some(&Move::TransferLeader { from, .. }) => from != leader,
                    Some(&Move::RemoveReplica { node, .. }) => node == leader,
                    _ => false,
                };
                if stale {
                    self.in_flight.remove(&partition);
                }
                self.epoch += 1;
                Ok(())
            }
        }
    }

    fn create_table(&mut self, t: &TableDef) -> Result<(), Refusal> {
        let (_, rf) = self
            .keyspace()
            .ok_or_else(|| "the meta service is not bootstrapped yet; retry".to_string())?;
        t.check(rf)?;
        if let Some(have) = self.tables.get(&t.name) {
            if have.def == *t {
                return Ok(()); // a retried create
            }
            return Err(format!("table {} already exists (drop it first)", t.name));
        }
        if self.tables.len() >= TABLES_MAX {
            return Err(format!(
                "{TABLES_MAX} tables already: no more can be declared"
            ));
        }
        self.tables
            .insert(t.name.clone(), TableInfo::new(t.clone()));
        self.epoch += 1;
        Ok(())
    }

    fn table_mut(&mut self, name: &str) -> Result<&mut TableInfo, Refusal> {
        self.tables
            .get_mut(name)
            .ok_or_else(|| format!("no table {name:?}"))
    }

    fn start_load(
        &mut self,
        table: &str,
        build_id: u64,
        source: &str,
        records: u64,
    ) -> Result<(), Refusal> {
        let t = self.table_mut(table)?;
        if t.def.mode != TableMode::Bulk {
            return Err(format!(
                "table {table} is online: only bulk tables are loaded"
            ));
        }
        if t.rolled_back {
            return Err(format!(
                "table {table} is rolled back: loads are refused until keel-bulk unrollback"
            ));
        }
        if let Some(v) = t.versions.iter().find(|v| v.build_id == build_id) {
            // A retried load of the same build.
            return match v.ready {
                false => Ok(()),
                true => Err(format!(
                    "table {table}: this build is already version {}",
                    v.version
                )),
            };
        }
        if let Some(v) = t.loading() {
            return Err(format!(
                "table {table}: version {} is still loading (one load at a time)",
                v.version
            ));
        }
        let version = t.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
        t.versions.push(VersionInfo {
            version,
            build_id,
            source: source.to_string(),
            records,
            ready: false,
        });
        self.epoch += 1;
        Ok(())
    }

    fn finish_load(&mut self, table: &str, version: u32) -> Result<(), Refusal> {
        let t = self.table_mut(table)?;
        let v = t
            .versions
            .iter_mut()
            .find(|v| v.version == version && !v.ready)
            .ok_or_else(|| format!("table {table}: no load of version {version}"))?;
        v.ready = true;
        t.current = Some(version);
        // Keep the newest versions_kept ready versions (the current one among them).
        let kept = t.def.versions_kept as usize;
        let ready: Vec<u32> = t
            .versions
            .iter()
            .filter(|v| v.ready)
            .map(|v| v.version)
            .collect();
        let drop_below = ready.len().saturating_sub(kept);
        let gone: Vec<u32> = ready[..drop_below].to_vec();
        t.versions.retain(|v| !gone.contains(&v.version));
        self.epoch += 1;
        Ok(())
    }

    fn rollback(&mut self, table: &str, to: Option<u32>) -> Result<(), Refusal> {
        let t = self.table_mut(table)?;
        let current = t
            .current
            .ok_or_else(|| format!("table {table} has no version to roll back from"))?;
        let target = match to {
            Some(v) => v,
            None => t
                .versions
                .iter()
                .filter(|v| v.ready && v.version < current)
                .map(|v| v.version)
                .max()
                .ok_or_else(|| {
                    format!("table {table}: no version before {current} is kept on the nodes")
                })?,
        };
        if !t.versions.iter().any(|v| v.ready && v.version == target) {
            let kept: Vec<String> = t
                .versions
                .iter()
                .filter(|v| v.ready)
                .map(|v| v.version.to_string())
                .collect();
            return Err(format!(
                "table {table}: version {target} is not on the nodes (kept: {})",
                kept.join(", ")
            ));
        }
        t.current = Some(target);
        t.rolled_back = true;
        self.epoch += 1;
        Ok(())
    }

    fn bootstrap(&mut self, partitions: u32, rf: u32) -> Result<(), Refusal> {
        if let Some((p, r)) = self.keyspace() {
            if (p, r) == (partitions, rf) {
                return Ok(());
            }
            return Err(format!(
                "the keyspace is already {p} partitions with replication factor {r}; \
                 {partitions} partitions with replication factor {rf} refused"
            ));
        }
        if !partitions.is_power_of_two() || partitions > META_PARTITIONS_MAX {
            return Err(format!(
                "partitions {partitions}: must be a power of two, at most {META_PARTITIONS_MAX}"
            ));
        }
        let cl = ClusterState::new(partitions, rf as usize).map_err(|e| e.to_string())?;
        self.cluster = Some(cl);
        self.epoch += 1;
        Ok(())
    }

    fn register(&mut self, r: &Registration) -> Result<(), Refusal> {
        let (partitions, _) = self
            .keyspace()
            .ok_or_else(|| "the meta service is not bootstrapped yet; retry".to_string())?;
        if r.partitions != partitions {
            return Err(partition_mismatch(r.node, r.partitions, partitions));
        }
        if r.node == 0 {
            return Err("node id 0 is not allowed: ids start at 1".into());
        }
        if r.zone.is_empty() {
            return Err(format!("node {}: the zone name is empty", r.node));
        }
        let weight = weight_of(r.device_bytes);
        let (draining, was) = match self.nodes.get(&r.node) {
            Some(n) => (n.draining, Some(n.clone())),
            None => (false, None),
        };
        let info = NodeInfo {
            id: r.node,
            client_addr: r.client_addr.clone(),
            peer_addr: r.peer_addr.clone(),
            zone: r.zone.clone(),
            cores: r.cores,
            device_bytes: r.device_bytes,
            memory_bytes: r.memory_bytes,
            weight,
            draining,
            down: false,
        };
        if was.as_ref() == Some(&info) {
            return Ok(()); // a retried registration
        }
        let cl = self.cluster.as_mut().expect("bootstrapped: checked");
        if was.is_some() {
            // Zone or weight may have changed: rebuild the node in the planner's state in place
            // (its replicas stay; the planner fixes the zone rule if it now breaks).
            cl.replace_node(Node {
                id: r.node,
                zone: info.zone.clone(),
                weight,
                health: info.health(),
            })
            .map_err(|e| e.to_string())?;
        } else {
            cl.add_node(Node {
                id: r.node,
                zone: info.zone.clone(),
                weight,
                health: info.health(),
            })
            .map_err(|e| e.to_string())?;
        }
        self.nodes.insert(r.node, info);
        self.epoch += 1;
        Ok(())
    }

    fn start_moves(&mut self, moves: &[Move]) -> Result<(), Refusal> {
        let cl = self.cluster.as_ref().ok_or("not bootstrapped")?;
        for m in moves {
            if m.partition() >= cl.partition_count() || self.in_flight.contains_key(&m.partition())
            {
                continue;
            }
            let nodes = move_nodes(m);
            if nodes.is_empty() || nodes.iter().any(|n| !self.nodes.contains_key(n)) {
                continue; // names no node, or one that is gone: nothing to carry out
            }
            self.in_flight.insert(m.partition(), m.clone());
        }
        Ok(())
    }

    fn complete(&mut self, m: &Move) -> Result<(), Refusal> {
        if self.in_flight.get(&m.partition()) != Some(m) {
            return Err(format!("move {m:?} is not in flight"));
        }
        let cl = self.cluster_mut()?;
        // Refused, the move stays in flight; the leader gives up moves that no longer apply.
        placement::apply(cl, m).map_err(|e| format!("move {m:?}: {e}"))?;
        self.in_flight.remove(&m.partition());
        self.epoch += 1;
        Ok(())
    }

    fn adopt(
        &mut self,
        partition: PartitionId,
        voters: &[NodeId],
        leader: NodeId,
    ) -> Result<(), Refusal> {
        for &v in voters {
            self.known_mut(v)?;
        }
        if !voters.contains(&leader) {
            return Err(format!(
                "partition {partition}: leader {leader} is not one of the voters {voters:?}"
            ));
        }
        let replaced = match self.in_flight.get(&partition) {
            None | Some(Move::Create { .. }) => self.in_flight.remove(&partition),
            Some(m) => return Err(format!("partition {partition}: move {m:?} is in flight")),
        };
        let cl = self.cluster_mut()?;
        let create = Move::Create {
            partition,
            voters: voters.to_vec(),
        };
        let placed = placement::apply(cl, &create)
            .and_then(|()| cl.set_leader(partition, Some(leader)))
            .map_err(|e| format!("partition {partition}: cannot adopt {voters:?}: {e}"));
        if let Err(e) = placed {
            if let Some(m) = replaced {
                self.in_flight.insert(partition, m);
            }
            return Err(e);
        }
        self.epoch += 1;
        Ok(())
    }

    /// Gives up the moves in flight that need `node` to act or to receive a replica.
    fn abort_moves_needing(&mut self, node: NodeId) {
        self.in_flight
            .retain(|_, m| !move_targets(m).contains(&node));
    }

    /// Sets a node's Down or draining flag. A node that is either takes nothing new, so the
    /// moves that need it are aborted when the flag goes on.
    fn set_flag(
        &mut self,
        node: NodeId,
        on: bool,
        flag: impl Fn(&mut NodeInfo) -> &mut bool,
    ) -> Result<(), Refusal> {
        let n = self.known_mut(node)?;
        if *flag(n) == on {
            return Ok(());
        }
        *flag(n) = on;
        let health = n.health();
        self.cluster_mut()?
            .set_health(node, health)
            .map_err(|e| e.to_string())?;
        if on {
            self.abort_moves_needing(node);
        }
        self.epoch += 1;
        Ok(())
    }

    fn known_mut(&mut self, node: NodeId) -> Result<&mut NodeInfo, Refusal> {
        let known = self.known_ids();
        self.nodes
            .get_mut(&node)
            .ok_or_else(|| unknown_node(node, &known))
    }

    fn known_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    fn cluster_mut(&mut self) -> Result<&mut ClusterState, Refusal> {
        self.cluster
            .as_mut()
            .ok_or_else(|| "the meta service is not bootstrapped yet; retry".to_string())
    }

    /// The state as a snapshot carries it.
    pub fn image(&self) -> Image {
        Image {
            version: FORMAT_VERSION,
            keyspace: self.keyspace(),
            nodes: self.nodes.values().cloned().collect(),
            placements: self
                .cluster
                .as_ref()
                .map_or(Vec::new(), |c| c.placements().to_vec()),
            in_flight: self.in_flight.values().cloned().collect(),
            balance: self.balance,
            epoch: self.epoch,
            moves_applied: self.cluster.as_ref().map_or(0, |c| c.epoch()),
            tables: self.tables.values().cloned().collect(),
        }
    }

    /// Rebuilds a state from an image, checking its structure.
    pub fn from_image(img: Image) -> Result<MetaState, Refusal> {
        if img.version != FORMAT_VERSION {
            return Err(format!(
                "state image version {} (this build reads {FORMAT_VERSION})",
                img.version
            ));
        }
        let mut s = MetaState {
            balance: img.balance,
            epoch: img.epoch,
            ..MetaState::default()
        };
        if let Some((partitions, rf)) = img.keyspace {
            let mut cl = ClusterState::new(partitions, rf as usize).map_err(|e| e.to_string())?;
            for n in &img.nodes {
                cl.add_node(Node {
                    id: n.id,
                    zone: n.zone.clone(),
                    weight: n.weight,
                    health: n.health(),
                })
                .map_err(|e| e.to_string())?;
            }
            if img.placements.len() != partitions as usize {
                return Err(format!(
                    "state image: {} placements for {partitions} partitions",
                    img.placements.len()
                ));
            }
            for (i, p) in img.placements.into_iter().enumerate() {
                cl.set_placement(i as PartitionId, p)
                    .map_err(|e| e.to_string())?;
            }
            cl.set_epoch(img.moves_applied);
            s.cluster = Some(cl);
        } else if !img.nodes.is_empty() {
            return Err("state image: nodes without a keyspace".into());
        }
        for n in img.nodes {
            s.nodes.insert(n.id, n);
        }
        for m in img.in_flight {
            s.in_flight.insert(m.partition(), m);
        }
        for t in img.tables {
            if s.tables.insert(t.def.name.clone(), t).is_some() {
                return Err("state image: a table is listed twice".into());
            }
        }
        Ok(s)
    }
}

/// Every node a move names.
pub fn move_nodes(m: &Move) -> Vec<NodeId> {
    match m {
        Move::Create { voters, .. } => voters.clone(),
        &Move::AddLearner { node, replaces, .. } => once_and(node, replaces),
        &Move::Promote { node, .. } | &Move::RemoveReplica { node, .. } => vec![node],
        &Move::TransferLeader { from, to, .. } => vec![from, to],
    }
}

fn once_and(a: NodeId, b: Option<NodeId>) -> Vec<NodeId> {
    let mut v = vec![a];
    v.extend(b);
    v
}

/// The refusal of a node whose partition count differs from the keyspace's.
pub fn partition_mismatch(node: NodeId, have: u32, want: u32) -> Refusal {
    format!(
        "node {node}: partition count mismatch: the node has {have} partitions, the keyspace has \
         {want} (set node.partitions = {want} in its profile)"
    )
}

/// The refusal for an id no node has, naming the ones that exist.
pub fn unknown_node(node: NodeId, known: &[NodeId]) -> Refusal {
    let list: Vec<String> = known.iter().map(|n| n.to_string()).collect();
    format!(
        "unknown node id {node} (registered: {})",
        if list.is_empty() {
            "none".to_string()
        } else {
            list.join(", ")
        }
    )
}

/// bincode 1 with fixed-size little-endian integers, a bound on what one decode may allocate
/// and no trailing bytes: the one encoding of commands, images and RPC payloads.
pub(crate) fn codec(limit: u64) -> impl bincode::Options + Copy {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
        .with_limit(limit)
}

/// Bytes one decoded entry or image may take at most (a checkpoint slot's worth).
pub const DECODE_BYTES_MAX: u64 = 8 << 20;

pub fn encode_entry(e: &Entry) -> Vec<u8> {
    use bincode::Options;
    codec(DECODE_BYTES_MAX)
        .serialize(e)
        .expect("an entry encodes")
}

pub fn decode_entry(b: &[u8]) -> Result<Entry, String> {
    use bincode::Options;
    let e: Entry = codec(DECODE_BYTES_MAX)
        .deserialize(b)
        .map_err(|e| format!("undecodable meta entry: {e}"))?;
    if e.version == 0 || e.version > FORMAT_VERSION {
        return Err(format!(
            "meta entry version {} (this build reads 1 to {FORMAT_VERSION})",
            e.version
        ));
    }
    Ok(e)
}

pub fn encode_image(s: &MetaState) -> Vec<u8> {
    use bincode::Options;
    codec(u64::MAX)
        .serialize(&s.image())
        .expect("an image encodes")
}

pub fn decode_image(b: &[u8]) -> Result<MetaState, String> {
    use bincode::Options;
    let undecodable = |e: bincode::Error| format!("undecodable meta state image: {e}");
    let img: Image = if b.first() == Some(&1) {
        let v1: ImageV1 = codec(DECODE_BYTES_MAX)
            .deserialize(b)
            .map_err(undecodable)?;
        Image {
            version: FORMAT_VERSION,
            keyspace: v1.keyspace,
            nodes: v1.nodes,
            placements: v1.placements,
            in_flight: v1.in_flight,
            balance: v1.balance,
            epoch: v1.epoch,
            moves_applied: v1.moves_applied,
            tables: Vec::new(),
        }
    } else {
        codec(DECODE_BYTES_MAX)
            .deserialize(b)
            .map_err(undecodable)?
    };
    MetaState::from_image(img)
}

#[cfg(test)]
mod tests;
