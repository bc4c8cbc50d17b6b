//! The cluster state the planner reads: nodes, partitions and where each partition's replicas are,
//! under a placement epoch. [`apply`] records the completion of a [`Move`].

use std::collections::BTreeMap;

/// A node's id, as the node registers with it.
pub type NodeId = u64;

/// A partition's index in `0..partition_count`.
pub type PartitionId = u32;

/// Replication factors the planner accepts. Three is what a feature store runs; the limit keeps
/// every per-partition set small enough to scan.
pub const REPLICATION_FACTOR_MAX: usize = 7;

/// Replicas (voters and learner) one partition may have: a replication factor's worth and one
/// more, the learner of a move or the replica it replaces.
pub const REPLICAS_MAX: usize = REPLICATION_FACTOR_MAX + 1;

/// Partition counts the planner accepts (a table has a power of two of them, at most this many).
pub const PARTITIONS_MAX: u32 = 1 << 20;

/// What the meta service knows of a node's availability.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Health {
    /// Heartbeating; takes new replicas and leaders.
    Up,
    /// Heartbeating and serving, but being emptied: it takes nothing new, its replicas and leaders
    /// move away as soon as each has a replacement.
    Draining,
    /// Silent past the failure timeout: its replicas count as lost and are rebuilt elsewhere.
    Down,
}

impl Health {
    /// Serves its replicas (their data counts toward a partition's replication factor).
    pub fn serves(self) -> bool {
        self != Health::Down
    }
}

/// One storage node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub id: NodeId,
    /// Failure domain: a partition's replicas go to distinct zones wherever zones allow.
    pub zone: String,
    /// Relative capacity (from device and memory size): a node of weight 2 is meant to hold twice
    /// the replicas of a node of weight 1. At least 1.
    pub weight: u32,
    pub health: Health,
}

/// Where one partition's replicas are.
///
/// `voters` is kept in the order the replicas joined (a promoted learner goes last), which the
/// planner uses: without a `replaces`, the newest voter is never the one removed to finish a move.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    /// The Raft voters; empty for a partition not placed yet.
    pub voters: Vec<NodeId>,
    /// The replica being added (catching up as a Raft learner), at most one per partition.
    pub learner: Option<NodeId>,
    /// The voter the move under way replaces: removed once the new replica votes. Set by
    /// [`Move::AddLearner`], cleared when the move ends (that voter removed, the learner
    /// removed, or the partition back to its replication factor). Always a voter when set.
    pub replaces: Option<NodeId>,
    /// The voter that leads, as the nodes last reported; `None` while no leader is known.
    pub leader: Option<NodeId>,
}

impl Placement {
    /// Whether `node` holds a replica (voter or learner) of the partition.
    pub fn hosts(&self, node: NodeId) -> bool {
        self.learner == Some(node) || self.voters.contains(&node)
    }
}

/// One step of moving replicas and leaders, as the planner asks for it and as
/// [`apply`] records its completion.
///
/// A replica moves from node A to node B in three moves, one at a time per partition:
/// `AddLearner{B, replaces: A}` (B catches up from a snapshot), `Promote{B}` (the partition now
/// has one voter more than its replication factor), `RemoveReplica{A}`; if A leads,
/// `TransferLeader{A, _}` comes before the removal. So a partition never has fewer serving voters
/// than before the move.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Move {
    /// Create the Raft group of a partition that has no replicas, with these voters; the first is
    /// asked to campaign, so it is meant to lead. Moves no data: the group starts empty.
    Create {
        partition: PartitionId,
        voters: Vec<NodeId>,
    },
    /// Add `node` to the partition as a learner; it catches up from a snapshot. `replaces` is the
    /// voter it is to replace (kept in [`Placement::replaces`], so that the removal that ends the
    /// move is the one planned now); `None` for a partition short of voters.
    AddLearner {
        partition: PartitionId,
        node: NodeId,
        replaces: Option<NodeId>,
    },
    /// Make the partition's learner `node` a voter (once it has caught up).
    Promote {
        partition: PartitionId,
        node: NodeId,
    },
    /// Remove `node`'s replica (a voter, or the learner) from the partition. Never the leader.
    RemoveReplica {
        partition: PartitionId,
        node: NodeId,
    },
    /// Hand the partition's leadership from `from` (its leader) to the voter `to`.
    TransferLeader {
        partition: PartitionId,
        from: NodeId,
        to: NodeId,
    },
}

impl Move {
    pub fn partition(&self) -> PartitionId {
        match *self {
            Move::Create { partition, .. }
            | Move::AddLearner { partition, .. }
            | Move::Promote { partition, .. }
            | Move::RemoveReplica { partition, .. }
            | Move::TransferLeader { partition, .. } => partition,
        }
    }
}

/// Why a state change or a move was refused. Each names what was wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("replication factor {0}: must be 1..={REPLICATION_FACTOR_MAX}")]
    ReplicationFactor(usize),
    #[error("partition count {0}: must be 1..={PARTITIONS_MAX}")]
    PartitionCount(u32),
    #[error("node {0} already exists")]
    NodeExists(NodeId),
    #[error("node {0} does not exist")]
    UnknownNode(NodeId),
    #[error("node {0}: weight 0, must be >= 1")]
    ZeroWeight(NodeId),
    #[error("node {node} still hosts {replicas} replicas: drain it or let them be rebuilt first")]
    NodeHostsReplicas { node: NodeId, replicas: usize },
    #[error("partition {0} does not exist")]
    UnknownPartition(PartitionId),
    #[error("partition {partition}: node {node} is listed twice")]
    DuplicateReplica {
        partition: PartitionId,
        node: NodeId,
    },
    #[error(
        "partition {partition}: {replicas} replicas, more than the {max} a partition may have"
    )]
    TooManyReplicas {
        partition: PartitionId,
        replicas: usize,
        max: usize,
    },
    #[error("partition {partition}: a learner needs at least one voter")]
    LearnerWithoutVoters { partition: PartitionId },
    #[error("partition {partition}: leader {node} is not a voter")]
    LeaderNotVoter {
        partition: PartitionId,
        node: NodeId,
    },
    #[error("partition {0} is already placed")]
    AlreadyPlaced(PartitionId),
    #[error(
        "partition {partition}: create with {voters} voters, must be 1..=replication factor {rf}"
    )]
    CreateVoters {
        partition: PartitionId,
        voters: usize,
        rf: usize,
    },
    #[error("partition {partition} already has learner {node}; one at a time")]
    LearnerPresent {
        partition: PartitionId,
        node: NodeId,
    },
    #[error("partition {partition} has no learner {node}")]
    NotLearner {
        partition: PartitionId,
        node: NodeId,
    },
    #[error("partition {partition} has no replica on node {node}")]
    NotReplica {
        partition: PartitionId,
        node: NodeId,
    },
    #[error("partition {partition}: node {node} leads it; transfer leadership before removing it")]
    RemovesLeader {
        partition: PartitionId,
        node: NodeId,
    },
    #[error("partition {partition}: removing node {node} leaves no voter")]
    RemovesLastVoter {
        partition: PartitionId,
        node: NodeId,
    },
    #[error("partition {partition}: node {node} is not its leader")]
    NotLeader {
        partition: PartitionId,
        node: NodeId,
    },
    #[error("partition {partition}: node {node} is not a voter")]
    NotVoter {
        partition: PartitionId,
        node: NodeId,
    },
    #[error("partition {partition}: node {node} is {health:?} and cannot take a replica")]
    NodeNotUp {
        partition: PartitionId,
        node: NodeId,
        health: Health,
    },
}

/// Nodes, partitions and placement, under a placement epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterState {
    replication_factor: usize,
    nodes: BTreeMap<NodeId, Node>,
    placements: Vec<Placement>,
    epoch: u64,
}

impl ClusterState {
    /// A cluster with no nodes and `partition_count` partitions, none placed.
    pub fn new(partition_count: u32, replication_factor: usize) -> Result<Self, StateError> {
        if !(1..=REPLICATION_FACTOR_MAX).contains(&replication_factor) {
            return Err(StateError::ReplicationFactor(replication_factor));
        }
        if !(1..=PARTITIONS_MAX).contains(&partition_count) {
            return Err(StateError::PartitionCount(partition_count));
        }
        Ok(ClusterState {
            replication_factor,
            nodes: BTreeMap::new(),
            placements: vec![Placement::default(); partition_count as usize],
            epoch: 0,
        })
    }

    pub fn replication_factor(&self) -> usize {
        self.replication_factor
    }

    pub fn partition_count(&self) -> u32 {
        self.placements.len() as u32
    }

    /// Bumped by every applied move, so a routing table can say which placement it shows.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Sets the epoch (loading saved state: a restored state then equals the one saved).
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    /// The nodes in id order.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = &Node> + '_ {
        self.nodes.values()
    }

    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(&id)
    }

    /// Every partition's placement, indexed by partition id.
    pub fn placements(&self) -> &[Placement] {
        &self.placements
    }

    pub fn placement(&self, partition: PartitionId) -> Option<&Placement> {
        self.placements.get(partition as usize)
    }

    pub fn add_node(&mut self, node: Node) -> Result<(), StateError> {
        if self.nodes.contains_key(&node.id) {
            return Err(StateError::NodeExists(node.id));
        }
        if node.weight == 0 {
            return Err(StateError::ZeroWeight(node.id));
        }
        self.nodes.insert(node.id, node);
        Ok(())
    }

    /// Changes a known node's zone, weight and health (a node that registers again, moved or
    /// resized); its replicas stay where they are.
    pub fn replace_node(&mut self, node: Node) -> Result<(), StateError> {
        if node.weight == 0 {
            return Err(StateError::ZeroWeight(node.id));
        }
        let slot = self
            .nodes
            .get_mut(&node.id)
            .ok_or(StateError::UnknownNode(node.id))?;
        *slot = node;
        Ok(())
    }

    pub fn set_health(&mut self, id: NodeId, health: Health) -> Result<(), StateError> {
        self.nodes
            .get_mut(&id)
            .ok_or(StateError::UnknownNode(id))?
            .health = health;
        Ok(())
    }

    /// Forgets a node. Refused while it still hosts a replica: a drained node, or a lost one
    /// whose replicas were rebuilt elsewhere, hosts none.
    pub fn remove_node(&mut self, id: NodeId) -> Result<Node, StateError> {
        if !self.nodes.contains_key(&id) {
            return Err(StateError::UnknownNode(id));
        }
        let replicas = self.placements.iter().filter(|p| p.hosts(id)).count();
        if replicas > 0 {
            return Err(StateError::NodeHostsReplicas { node: id, replicas });
        }
        Ok(self.nodes.remove(&id).expect("checked above"))
    }

    /// Replaces a partition's placement as a whole (loading saved state; tests build bad starts
    /// with it). Checked for structure only: known nodes, no node twice, a leader that votes.
    pub fn set_placement(
        &mut self,
        partition: PartitionId,
        p: Placement,
    ) -> Result<(), StateError> {
        self.check_placement(partition, &p)?;
        *self.slot(partition)? = p;
        Ok(())
    }

    /// Records the leader a partition's replicas reported (Raft elects leaders; the meta service
    /// only hears of them). `None` while no leader is known.
    pub fn set_leader(
        &mut self,
        partition: PartitionId,
        leader: Option<NodeId>,
    ) -> Result<(), StateError> {
        let p = self.slot(partition)?;
        if let Some(node) = leader {
            if !p.voters.contains(&node) {
                return Err(StateError::LeaderNotVoter { partition, node });
            }
        }
        p.leader = leader;
        Ok(())
    }
}

/// Records the completion of `m` in `state`: the state afterwards is what the planner's next call
/// reads (the simulation and the tests stand in for the nodes with it; the meta service applies a
/// move once the partition's replicas report it done). Refuses a move that does not fit the state,
/// leaving the state unchanged; the epoch goes up by one for each move applied.
pub fn apply(state: &mut ClusterState, m: &Move) -> Result<(), StateError> {
    state.apply_move(m)
}

impl ClusterState {
    fn apply_move(&mut self, m: &Move) -> Result<(), StateError> {
        let partition = m.partition();
        let rf = self.replication_factor;
        match m {
            Move::Create { voters, .. } => {
                if !self.slot(partition)?.voters.is_empty() {
                    return Err(StateError::AlreadyPlaced(partition));
                }
                if voters.is_empty() || voters.len() > rf {
                    return Err(StateError::CreateVoters {
                        partition,
                        voters: voters.len(),
                        rf,
                    });
                }
                for &v in voters {
                    self.check_takes_replica(partition, v)?;
                }
                let p = Placement {
                    voters: voters.clone(),
                    learner: None,
                    replaces: None,
                    leader: Some(voters[0]),
                };
                self.check_placement(partition, &p)?;
                *self.slot(partition)? = p;
            }
            &Move::AddLearner { node, replaces, .. } => {
                self.check_takes_replica(partition, node)?;
                let p = self.slot(partition)?;
                if p.voters.is_empty() {
                    return Err(StateError::LearnerWithoutVoters { partition });
                }
                if let Some(l) = p.learner {
                    return Err(StateError::LearnerPresent { partition, node: l });
                }
                if p.voters.contains(&node) {
                    return Err(StateError::DuplicateReplica { partition, node });
                }
                if p.voters.len() + 1 > REPLICAS_MAX {
                    let replicas = p.voters.len() + 1;
                    return Err(StateError::TooManyReplicas {
                        partition,
                        replicas,
                        max: REPLICAS_MAX,
                    });
                }
                if let Some(r) = replaces {
                    if !p.voters.contains(&r) {
                        return Err(StateError::NotVoter { partition, node: r });
                    }
                }
                p.learner = Some(node);
                p.replaces = replaces;
            }
            &Move::Promote { node, .. } => {
                let p = self.slot(partition)?;
                if p.learner != Some(node) {
                    return Err(StateError::NotLearner { partition, node });
                }
                p.learner = None;
                p.voters.push(node);
            }
            &Move::RemoveReplica { node, .. } => {
                let p = self.slot(partition)?;
                if p.learner == Some(node) {
                    p.learner = None;
                    p.replaces = None;
                } else {
                    let at = p
                        .voters
                        .iter()
                        .position(|&v| v == node)
                        .ok_or(StateError::NotReplica { partition, node })?;
                    if p.leader == Some(node) {
                        return Err(StateError::RemovesLeader { partition, node });
                    }
                    if p.voters.len() == 1 {
                        return Err(StateError::RemovesLastVoter { partition, node });
                    }
                    p.voters.remove(at);
                    if p.replaces == Some(node) || (p.voters.len() <= rf && p.learner.is_none()) {
                        p.replaces = None;
                    }
                }
            }
            &Move::TransferLeader { from, to, .. } => {
                let p = self.slot(partition)?;
                if p.leader != Some(from) {
                    return Err(StateError::NotLeader {
                        partition,
                        node: from,
                    });
                }
                if !p.voters.contains(&to) {
                    return Err(StateError::NotVoter {
                        partition,
                        node: to,
                    });
                }
                p.leader = Some(to);
            }
        }
        self.epoch += 1;
        Ok(())
    }
}

impl ClusterState {
    /// Checks every partition's structure (what [`ClusterState::set_placement`] checks).
    pub fn validate(&self) -> Result<(), StateError> {
        for (i, p) in self.placements.iter().enumerate() {
            self.check_placement(i as PartitionId, p)?;
        }
        Ok(())
    }

    fn slot(&mut self, partition: PartitionId) -> Result<&mut Placement, StateError> {
        self.placements
            .get_mut(partition as usize)
            .ok_or(StateError::UnknownPartition(partition))
    }

    fn check_takes_replica(&self, partition: PartitionId, node: NodeId) -> Result<(), StateError> {
        let n = self.nodes.get(&node).ok_or(StateError::UnknownNode(node))?;
        if n.health != Health::Up {
            return Err(StateError::NodeNotUp {
                partition,
                node,
                health: n.health,
            });
        }
        Ok(())
    }

    fn check_placement(&self, partition: PartitionId, p: &Placement) -> Result<(), StateError> {
        if partition as usize >= self.placements.len() {
            return Err(StateError::UnknownPartition(partition));
        }
        let all = p.voters.iter().chain(p.learner.iter());
        if all.clone().count() > REPLICAS_MAX {
            let replicas = all.count();
            return Err(StateError::TooManyReplicas {
                partition,
                replicas,
                max: REPLICAS_MAX,
            });
        }
        for (i, &node) in all.clone().enumerate() {
            if !self.nodes.contains_key(&node) {
                return Err(StateError::UnknownNode(node));
            }
            if all.clone().skip(i + 1).any(|&o| o == node) {
                return Err(StateError::DuplicateReplica { partition, node });
            }
        }
        if p.learner.is_some() && p.voters.is_empty() {
            return Err(StateError::LearnerWithoutVoters { partition });
        }
        if let Some(node) = p.leader {
            if !p.voters.contains(&node) {
                return Err(StateError::LeaderNotVoter { partition, node });
            }
        }
        if let Some(node) = p.replaces {
            if !p.voters.contains(&node) {
                return Err(StateError::NotVoter { partition, node });
            }
        }
        Ok(())
    }
}
