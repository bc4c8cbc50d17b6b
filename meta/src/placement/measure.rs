//! What a placement looks like, measured: per-node counts, replica and leader skew, the zone
//! rule, partitions mid-move or without a serving majority. For tests, the simulation and (later)
//! `keel-meta ctl status`.

use super::state::{ClusterState, Health, NodeId, PartitionId};
use super::topology::Topology;

/// One node's share of the placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLoad {
    pub id: NodeId,
    pub health: Health,
    pub weight: u32,
    /// Voters and learners on the node.
    pub replicas: u32,
    pub voters: u32,
    pub leaders: u32,
}

/// Every node's counts, in id order.
pub fn node_loads(state: &ClusterState) -> Vec<NodeLoad> {
    let t = Topology::new(state);
    let mut loads: Vec<NodeLoad> = state
        .nodes()
        .map(|n| NodeLoad {
            id: n.id,
            health: n.health,
            weight: n.weight,
            replicas: 0,
            voters: 0,
            leaders: 0,
        })
        .collect();
    for p in state.placements() {
        for &v in &p.voters {
            loads[t.idx(v)].voters += 1;
            loads[t.idx(v)].replicas += 1;
        }
        if let Some(l) = p.learner {
            loads[t.idx(l)].replicas += 1;
        }
        if let Some(l) = p.leader {
            loads[t.idx(l)].leaders += 1;
        }
    }
    loads
}

/// The largest replica imbalance between two Up nodes, capacity-weighted: the largest
/// `2 (c_i w_j - c_j w_i) / (w_i + w_j)` over pairs, which for equal weights is `c_i - c_j`.
/// The planner stops balancing once this is at most 1 (or once the zone rule forbids every move
/// that would lower it).
pub fn replica_skew(state: &ClusterState) -> f64 {
    skew(node_loads(state).iter().filter(|n| n.health == Health::Up))
}

/// The largest [`replica_skew`] among the Up nodes of one zone. Where zones differ in size this is
/// the planner's part of the skew: with as many replicas as zones, each zone holds one replica of
/// every partition however many nodes it has.
pub fn replica_skew_in_zone(state: &ClusterState) -> f64 {
    let loads = node_loads(state);
    let zones: std::collections::BTreeSet<&str> = state.nodes().map(|n| n.zone.as_str()).collect();
    zones
        .into_iter()
        .map(|z| {
            skew(
                state
                    .nodes()
                    .zip(&loads)
                    .filter(|(n, l)| n.zone == z && l.health == Health::Up)
                    .map(|(_, l)| l),
            )
        })
        .fold(0.0, f64::max)
}

fn skew<'a>(nodes: impl Iterator<Item = &'a NodeLoad>) -> f64 {
    let up: Vec<(f64, f64)> = nodes
        .map(|n| (n.replicas as f64, n.weight as f64))
        .collect();
    if up.windows(2).all(|w| w[0].1 == w[1].1) {
        let max = up.iter().map(|n| n.0).fold(f64::MIN, f64::max);
        let min = up.iter().map(|n| n.0).fold(f64::MAX, f64::min);
        return if up.is_empty() { 0.0 } else { max - min };
    }
    let mut skew = 0f64;
    for &(ci, wi) in &up {
        for &(cj, wj) in &up {
            skew = skew.max(2.0 * (ci * wj - cj * wi) / (wi + wj));
        }
    }
    skew
}

/// How far the Up node furthest from its expected share of leaders is from it, in leaders.
/// Expected: `voters_i * L / V`, over the partitions with a serving leader and an Up voter (`L`
/// of them, `V` Up voters in all); with every partition fully replicated this is Bilibili's
/// `voters_i / replication_factor`.
pub fn leader_skew(state: &ClusterState) -> f64 {
    let t = Topology::new(state);
    let n = t.ids.len();
    let (mut lead, mut votes) = (vec![0u64; n], vec![0u64; n]);
    let mut led_total = 0u64;
    for p in state.placements() {
        let Some(l) = p.leader.map(|l| t.idx(l)).filter(|&l| t.health[l].serves()) else {
            continue;
        };
        let up: Vec<usize> = p
            .voters
            .iter()
            .map(|&v| t.idx(v))
            .filter(|&v| t.is_up(v))
            .collect();
        if up.is_empty() {
            continue;
        }
        led_total += 1;
        for v in up {
            votes[v] += 1;
        }
        if t.is_up(l) {
            lead[l] += 1;
        }
    }
    let votes_total: u64 = votes.iter().sum();
    if votes_total == 0 {
        return 0.0;
    }
    (0..n)
        .filter(|&i| t.is_up(i))
        .map(|i| {
            let expected = votes[i] as f64 * led_total as f64 / votes_total as f64;
            (lead[i] as f64 - expected).abs()
        })
        .fold(0.0, f64::max)
}

/// Whether `nodes` (all Up) keep the zone rule: no zone holds two of them more than another zone
/// that still has an Up node outside them.
pub fn zone_rule_holds(state: &ClusterState, nodes: &[NodeId]) -> bool {
    let t = Topology::new(state);
    let idx: Vec<usize> = nodes.iter().map(|&n| t.idx(n)).collect();
    assert!(
        idx.iter().all(|&i| t.is_up(i)),
        "the zone rule is about Up nodes"
    );
    t.zone_ok(idx.iter().map(|&i| t.zone[i]))
}

/// Voters of `partition` on nodes that serve (Up or Draining).
pub fn serving_voters(state: &ClusterState, partition: PartitionId) -> usize {
    let p = &state.placements()[partition as usize];
    p.voters
        .iter()
        .filter(|&&v| state.node(v).is_some_and(|n| n.health.serves()))
        .count()
}

/// Partitions mid-move: with a learner, or with more voters than the replication factor.
pub fn moves_in_flight(state: &ClusterState) -> usize {
    let rf = state.replication_factor();
    state
        .placements()
        .iter()
        .filter(|p| p.learner.is_some() || p.voters.len() > rf)
        .count()
}

/// Placed partitions whose serving voters are no majority: they cannot commit a membership change,
/// so the planner leaves them alone (bringing them back is the operator's, or a later issue's).
pub fn without_majority(state: &ClusterState) -> Vec<PartitionId> {
    (0..state.partition_count())
        .filter(|&p| {
            let voters = state.placements()[p as usize].voters.len();
            voters > 0 && serving_voters(state, p) * 2 <= voters
        })
        .collect()
}
