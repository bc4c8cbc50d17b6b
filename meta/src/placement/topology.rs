//! Nodes as dense indexes, their zones, and the zone rule: what the planner and the measures share.

use std::collections::BTreeMap;

use super::state::{ClusterState, Health, NodeId, REPLICAS_MAX};

/// The nodes of one state, indexed `0..n` in id order, with their zones indexed in name order (so
/// every index, and every tie broken by one, is the same for the same state).
pub(crate) struct Topology {
    pub ids: Vec<NodeId>,
    pub zone: Vec<usize>,
    pub weight: Vec<u32>,
    pub health: Vec<Health>,
    pub zone_count: usize,
    /// Up nodes per zone.
    pub up_in_zone: Vec<u32>,
    /// Zones with at least one Up node.
    pub zones_with_up: usize,
    pub up_nodes: usize,
}

impl Topology {
    pub fn new(state: &ClusterState) -> Topology {
        let mut zones: BTreeMap<&str, usize> = BTreeMap::new();
        for n in state.nodes() {
            zones.insert(&n.zone, 0);
        }
        for (i, z) in zones.values_mut().enumerate() {
            *z = i;
        }
        let n = state.nodes().len();
        let mut t = Topology {
            ids: Vec::with_capacity(n),
            zone: Vec::with_capacity(n),
            weight: Vec::with_capacity(n),
            health: Vec::with_capacity(n),
            zone_count: zones.len(),
            up_in_zone: vec![0; zones.len()],
            zones_with_up: 0,
            up_nodes: 0,
        };
        for node in state.nodes() {
            let z = zones[node.zone.as_str()];
            assert!(node.weight >= 1, "node {}: weight 0", node.id);
            t.ids.push(node.id);
            t.zone.push(z);
            t.weight.push(node.weight);
            t.health.push(node.health);
            if node.health == Health::Up {
                t.up_in_zone[z] += 1;
                t.up_nodes += 1;
            }
        }
        t.zones_with_up = t.up_in_zone.iter().filter(|&&c| c > 0).count();
        t
    }

    /// The index of a node of the state this topology was built from.
    pub fn idx(&self, id: NodeId) -> usize {
        self.ids
            .binary_search(&id)
            .unwrap_or_else(|_| panic!("node {id} is not in the state"))
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.health[i] == Health::Up
    }

    /// The zone rule for a partition's replica set, given as the zones of its members (all on Up
    /// nodes): no zone holds two replicas more than another zone that still has room (an Up node
    /// outside the set). With at most as many replicas as zones this says "distinct zones"; with
    /// more, "as even as the zones allow".
    pub fn zone_ok(&self, zones: impl Iterator<Item = usize>) -> bool {
        let mut counts = [(usize::MAX, 0u32); REPLICAS_MAX + 1];
        let mut distinct = 0;
        for z in zones {
            match counts[..distinct].iter_mut().find(|(zz, _)| *zz == z) {
                Some(c) => c.1 += 1,
                None => {
                    counts[distinct] = (z, 1);
                    distinct += 1;
                }
            }
        }
        let max = counts[..distinct].iter().map(|c| c.1).max().unwrap_or(0);
        if max <= 1 {
            return true;
        }
        // A zone with Up nodes and none of the set has room and holds 0 <= max - 2.
        if self.zones_with_up > distinct {
            return false;
        }
        counts[..distinct]
            .iter()
            .all(|&(z, c)| c + 2 > max || c >= self.up_in_zone[z])
    }
}
