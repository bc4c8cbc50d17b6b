//! What the meta leader decides, as pure functions over the replicated [`MetaState`] and what
//! the nodes report: which commands a heartbeat's facts call for (a move done, a new leader, a
//! node back), what each node must do next, which moves to hand out, which nodes are silent
//! too long. No clock is read here: callers pass the time in. The service proposes the
//! commands these return and answers the nodes with the rest.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::machine::{partition_mismatch, Command, MetaState, Refusal, Registration};
use crate::placement::{self, plan, Limits, Move, NodeId, PartitionId};
use crate::proto::{NodeCommand, NodeReport, PartitionFact, Role, SliceHeld};

/// What the leader keeps in memory about the nodes (lost at a leader change; rebuilt from the
/// next heartbeats, every node counting as heard at the moment the leader took over).
#[derive(Debug, Default)]
pub struct Soft {
    /// When each node was last heard (heartbeat or registration).
    pub last_seen: BTreeMap<NodeId, Instant>,
    /// Each node's last reported partitions.
    pub facts: BTreeMap<NodeId, Vec<PartitionFact>>,
    /// Highest Raft term a leader of each partition reported, so a stale report from a deposed
    /// leader does not move the leader back.
    pub leader_term: BTreeMap<PartitionId, u64>,
    /// When each move in flight was first seen by this leader.
    pub move_seen: BTreeMap<PartitionId, Instant>,
    /// The latest time a node this leader hears said it heard from each node (its Raft
    /// traffic): a node heard by its peers is not marked Down for missing heartbeats.
    pub vouched: BTreeMap<NodeId, Instant>,
    /// The device failure each node reported in its latest heartbeat, if any.
    pub failures: BTreeMap<NodeId, String>,
    /// The table slices each node reported holding in its latest heartbeat.
    pub slices: BTreeMap<NodeId, std::collections::BTreeSet<SliceHeld>>,
}

impl Soft {
    /// A new leader's view: every known node counts as heard now (it gets a failure timeout's
    /// grace before being marked Down).
    pub fn taking_over(state: &MetaState, now: Instant) -> Soft {
        Soft {
            last_seen: state.nodes().keys().map(|&n| (n, now)).collect(),
            move_seen: state.in_flight().keys().map(|&p| (p, now)).collect(),
            ..Soft::default()
        }
    }
}

/// Refuses a registration the state or the live nodes rule out: a partition count that differs
/// from the keyspace, or an id a live node (heard within `failure_timeout`, not Down) holds
/// with other addresses. The same node registering again (same addresses) is accepted.
pub fn check_registration(
    state: &MetaState,
    soft: &Soft,
    r: &Registration,
    now: Instant,
    failure_timeout: Duration,
) -> Result<(), Refusal> {
    let (partitions, _) = state
        .keyspace()
        .ok_or_else(|| "the meta service is not bootstrapped yet; retry".to_string())?;
    if r.partitions != partitions {
        return Err(partition_mismatch(r.node, r.partitions, partitions));
    }
    if let Some(n) = state.node(r.node) {
        let live = !n.down
            && soft
                .last_seen
                .get(&r.node)
                .is_some_and(|&t| now.saturating_duration_since(t) < failure_timeout);
        if live && (n.client_addr != r.client_addr || n.peer_addr != r.peer_addr) {
            return Err(format!(
                "node id {} is taken by a live node (client {}, peer {}, last heard {} ms ago); \
                 pick another --node-id, or wait until that node is marked down",
                r.node,
                n.client_addr,
                n.peer_addr,
                now.saturating_duration_since(soft.last_seen[&r.node])
                    .as_millis()
            ));
        }
    }
    Ok(())
}

/// Records a heartbeat's report in `soft` and returns the commands it calls for: the node Down
/// for a device failure or back Up, leaders reported by a newer term, moves the reported
/// configurations show done.
pub fn on_heartbeat(
    state: &MetaState,
    soft: &mut Soft,
    node: NodeId,
    report: NodeReport,
    now: Instant,
) -> Vec<Command> {
    let mut out = Vec::new();
    soft.last_seen.insert(node, now);
    for h in &report.peers_heard {
        let at = now
            .checked_sub(Duration::from_millis(h.ms_ago))
            .unwrap_or(now);
        let v = soft.vouched.entry(h.node).or_insert(at);
        *v = (*v).max(at);
    }
    let Some(info) = state.node(node) else {
        return out;
    };
    match &report.failure {
        Some(why) => {
            soft.failures.insert(node, why.clone());
            if !info.down {
                out.push(Command::SetDown { node, down: true });
            }
        }
        None => {
            soft.failures.remove(&node);
            if info.down {
                out.push(Command::SetDown { node, down: false });
            }
        }
    }
    soft.slices
        .insert(node, report.slices.iter().copied().collect());
    let facts = report.partitions;
    let Some(cl) = state.cluster() else {
        return out;
    };
    for f in &facts {
        let Some(pl) = cl.placement(f.partition) else {
            continue;
        };
        if f.role != Role::Leader {
            continue;
        }
        let known = soft.leader_term.get(&f.partition).copied().unwrap_or(0);
        if f.term < known {
            continue; // a deposed leader that has not heard yet
        }
        soft.leader_term.insert(f.partition, f.term);
        let in_flight = state.in_flight().get(&f.partition);
        // Whether voter `v` last reported hosting the partition (this heartbeat for the leader).
        let hosts = |v: NodeId| {
            let reported = match v == node {
                true => Some(&facts),
                false => soft.facts.get(&v),
            };
            reported.is_some_and(|fs| fs.iter().any(|x| x.partition == f.partition))
        };
        if let Some(m) = in_flight.filter(|m| move_done(m, node, f, &hosts)) {
            out.push(Command::CompleteMove { m: m.clone() });
            continue;
        }
        if pl.voters.is_empty() && adoptable(state, in_flight, f) {
            out.push(Command::Adopt {
                partition: f.partition,
                voters: f.voters.clone(),
                leader: node,
            });
            continue;
        }
        if pl.leader != Some(node) && pl.voters.contains(&node) {
            out.push(Command::SetLeader {
                partition: f.partition,
                leader: node,
            });
        }
    }
    soft.facts.insert(node, facts);
    out
}

/// Whether a leader's report `f` of a partition the placement has no replicas of shows a group
/// to take as it is: its voters all known nodes, and no Create in flight for those same voters
/// (that one completes once each of them reports hosting it).
fn adoptable(state: &MetaState, in_flight: Option<&Move>, f: &PartitionFact) -> bool {
    let known = !f.voters.is_empty() && f.voters.iter().all(|&v| state.node(v).is_some());
    let mut reported = f.voters.clone();
    reported.sort_unstable();
    known
        && match in_flight {
            None => true,
            Some(Move::Create { voters, .. }) => {
                let mut planned = voters.clone();
                planned.sort_unstable();
                planned != reported
            }
            Some(_) => false,
        }
}

/// Whether the leader `leader`'s report `f` shows move `m` done. A new partition's group is
/// done once every voter has reported hosting it as well (`hosts`): a leader and one more voter
/// are a quorum without the third, which must still be told to create its replica. Likewise an
/// added learner must have reported its replica.
fn move_done(m: &Move, leader: NodeId, f: &PartitionFact, hosts: &dyn Fn(NodeId) -> bool) -> bool {
    let same = |a: &[NodeId], b: &[NodeId]| {
        let (mut a, mut b) = (a.to_vec(), b.to_vec());
        a.sort_unstable();
        b.sort_unstable();
        a == b
    };
    match m {
        Move::Create { voters, .. } => same(voters, &f.voters) && voters.iter().all(|&v| hosts(v)),
        // The learner's own report too: the leader adds it at once, before the learner may
        // have heard its Create (it would then never catch up, nor be told again).
        &Move::AddLearner { node, .. } => f.learners.contains(&node) && hosts(node),
        &Move::Promote { node, .. } => f.voters.contains(&node) && !f.learners.contains(&node),
        &Move::RemoveReplica { node, .. } => {
            !f.voters.contains(&node) && !f.learners.contains(&node)
        }
        &Move::TransferLeader { to, .. } => leader == to,
    }
}

/// What `node` must do for the moves in flight, and which replicas it reported that it no
/// longer hosts (removed by a completed move: it drops them). Sent with every heartbeat reply
/// until the move is done: a node carries each out idempotently.
pub fn node_commands(
    state: &MetaState,
    node: NodeId,
    reported: &[PartitionId],
) -> Vec<NodeCommand> {
    let mut out = Vec::new();
    let Some(cl) = state.cluster() else {
        return out;
    };
    for (&p, m) in state.in_flight() {
        let leader = cl.placement(p).and_then(|pl| pl.leader);
        match m {
            Move::Create { voters, .. } if voters.contains(&node) => {
                out.push(NodeCommand::Create {
                    partition: p,
                    voters: voters.clone(),
                    campaign: voters[0] == node,
                })
            }
            &Move::AddLearner { node: n, .. } if n == node => out.push(NodeCommand::Create {
                partition: p,
                voters: Vec::new(),
                campaign: false,
            }),
            &Move::AddLearner { node: n, .. } if leader == Some(node) => {
                out.push(NodeCommand::AddLearner {
                    partition: p,
                    node: n,
                })
            }
            &Move::Promote { node: n, .. } if leader == Some(node) => {
                out.push(NodeCommand::Promote {
                    partition: p,
                    node: n,
                })
            }
            &Move::RemoveReplica { node: n, .. } if leader == Some(node) => {
                out.push(NodeCommand::RemoveReplica {
                    partition: p,
                    node: n,
                })
            }
            &Move::TransferLeader { from, to, .. } if from == node => {
                out.push(NodeCommand::TransferLeader { partition: p, to })
            }
            _ => {}
        }
    }
    for &p in reported {
        // A partition placed nowhere is not dropped: the replica reported may be the only copy
        // (a meta service that lost its state); its leader's report has it adopted.
        let hosted = cl
            .placement(p)
            .is_some_and(|pl| pl.hosts(node) || pl.voters.is_empty());
        let coming = state
            .in_flight()
            .get(&p)
            .is_some_and(|m| crate::machine::move_targets(m).contains(&node));
        if !hosted && !coming && (p as usize) < cl.placements().len() {
            out.push(NodeCommand::DropReplica { partition: p });
        }
    }
    out
}

/// What one planning round hands out and gives up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// New moves, for partitions without one in flight.
    pub start: Vec<Move>,
    /// Partitions whose move in flight no longer applies to the state (it could never
    /// complete): given up, so the planner chooses again.
    pub stale: Vec<PartitionId>,
}

/// Replicas a partition's Raft group has that its placement does not, as its leader `node`
/// reports them, with no move in flight for the partition: a learner added for a move that was
/// given up, a voter promoted for one. The leader is told to remove them (not recorded as moves:
/// repeated with each heartbeat until the group agrees with the placement). The leader itself is
/// never among them.
pub fn drift_commands(
    state: &MetaState,
    node: NodeId,
    facts: &[PartitionFact],
) -> Vec<NodeCommand> {
    let mut out = Vec::new();
    let Some(cl) = state.cluster() else {
        return out;
    };
    for f in facts.iter().filter(|f| f.role == Role::Leader) {
        let Some(pl) = cl.placement(f.partition) else {
            continue;
        };
        if pl.voters.is_empty() || state.in_flight().contains_key(&f.partition) {
            continue;
        }
        for &n in f.voters.iter().chain(&f.learners) {
            if n != node && !pl.hosts(n) {
                out.push(NodeCommand::RemoveReplica {
                    partition: f.partition,
                    node: n,
                });
            }
        }
    }
    out
}

/// The moves to hand out now: the planner runs over the state as it will be once the moves in
/// flight are done (so it counts them against `moves_in_flight_max` and plans around them), and
/// partitions that already have a move in flight get no second one.
pub fn moves_to_start(state: &MetaState, limits: &Limits) -> Round {
    let Some(cl) = state.cluster() else {
        return Round::default();
    };
    let mut projected = cl.clone();
    let mut stale = Vec::new();
    for m in state.in_flight().values() {
        if placement::apply(&mut projected, m).is_err() {
            stale.push(m.partition());
        }
    }
    let limits = Limits {
        balance: limits.balance && state.balance(),
        ..limits.clone()
    };
    let start = plan(&projected, &limits)
        .into_iter()
        .filter(|m| !state.in_flight().contains_key(&m.partition()))
        .collect();
    Round { start, stale }
}

/// Nodes not marked Down yet that this leader last heard more than `failure_timeout` before
/// `now`, and that no node it hears heard from within that time either. A node cut off from
/// the meta service alone (its peers still get its Raft traffic) stays Up: its groups go on,
/// and a repair would only copy what is not lost.
pub fn silent_nodes(
    state: &MetaState,
    soft: &Soft,
    now: Instant,
    failure_timeout: Duration,
) -> Vec<Command> {
    let silent = |t: Option<&Instant>| {
        t.is_none_or(|&t| now.saturating_duration_since(t) >= failure_timeout)
    };
    state
        .nodes()
        .values()
        .filter(|n| !n.down)
        .filter(|n| silent(soft.last_seen.get(&n.id)) && silent(soft.vouched.get(&n.id)))
        .map(|n| Command::SetDown {
            node: n.id,
            down: true,
        })
        .collect()
}

/// Moves in flight longer than `move_timeout` (a node that never carried it out): given up, so
/// the planner can choose again.
pub fn stuck_moves(
    state: &MetaState,
    soft: &mut Soft,
    now: Instant,
    move_timeout: Duration,
) -> Vec<Command> {
    soft.move_seen
        .retain(|p, _| state.in_flight().contains_key(p));
    let mut out = Vec::new();
    for &p in state.in_flight().keys() {
        let seen = *soft.move_seen.entry(p).or_insert(now);
        if now.saturating_duration_since(seen) >= move_timeout {
            out.push(Command::AbortMove { partition: p });
        }
    }
    out
}

/// The loads every replica of every partition now holds: each gets a `FinishLoad` (the version
/// becomes current). A table partition p needs a slice on every voter and learner of the
/// keyspace partition `p & (partitions - 1)` it rides.
pub fn loads_done(state: &MetaState, soft: &Soft) -> Vec<Command> {
    let Some(cl) = state.cluster() else {
        return Vec::new();
    };
    let mask = cl.partition_count() - 1;
    let mut out = Vec::new();
    for t in state.tables().values() {
        let Some(v) = t.loading() else { continue };
        let held = (0..t.def.partitions).all(|p| {
            let Some(pl) = cl.placement(p & mask) else {
                return false;
            };
            let replicas: Vec<NodeId> = pl.voters.iter().copied().chain(pl.learner).collect();
            !replicas.is_empty()
                && replicas.iter().all(|n| {
                    soft.slices.get(n).is_some_and(|s| {
                        s.contains(&SliceHeld {
                            build_id: v.build_id,
                            partition: p,
                        })
                    })
                })
        });
        if held {
            out.push(Command::FinishLoad {
                table: t.def.name.clone(),
                version: v.version,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
