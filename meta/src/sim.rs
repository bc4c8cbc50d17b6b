//! A seeded simulation of a cluster run by the planner: the nodes carry out every planned move at
//! once (each step: plan, apply every move, let Raft elect where a partition has no serving
//! leader), through the phases a cluster lives: place, add nodes, drain nodes, lose nodes. It
//! times each planning step. The planner's tests and the `simulate` example use it; it is a test
//! instrument, not part of the meta service.

use std::time::{Duration, Instant};

use crate::placement::{
    apply, measure, plan, ClusterState, Health, Limits, Move, Node, NodeId, StateError,
};

/// Gives each partition without a serving leader one, as Raft would once a majority can vote: its
/// first Up voter, or else its first Draining one. Returns how many partitions got a leader.
pub fn elect(state: &mut ClusterState) -> usize {
    let mut elected = 0;
    for p in 0..state.partition_count() {
        let pl = &state.placements()[p as usize];
        let health = |id: NodeId| state.node(id).expect("voters are nodes").health;
        if pl.leader.is_some_and(|l| health(l).serves()) || pl.voters.is_empty() {
            continue;
        }
        let serving = measure::serving_voters(state, p);
        if serving * 2 <= pl.voters.len() {
            continue;
        }
        let leader = pl
            .voters
            .iter()
            .copied()
            .find(|&v| health(v) == Health::Up)
            .or_else(|| pl.voters.iter().copied().find(|&v| health(v).serves()));
        state.set_leader(p, leader).expect("a voter");
        elected += 1;
    }
    elected
}

/// Counts of the moves of a phase, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MoveCounts {
    pub create: u64,
    pub add_learner: u64,
    pub promote: u64,
    pub remove_replica: u64,
    pub transfer_leader: u64,
}

impl MoveCounts {
    fn count(&mut self, m: &Move) {
        match m {
            Move::Create { .. } => self.create += 1,
            Move::AddLearner { .. } => self.add_learner += 1,
            Move::Promote { .. } => self.promote += 1,
            Move::RemoveReplica { .. } => self.remove_replica += 1,
            Move::TransferLeader { .. } => self.transfer_leader += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.create + self.add_learner + self.promote + self.remove_replica + self.transfer_leader
    }
}

/// What one phase took and where it ended.
#[derive(Clone, Debug)]
pub struct PhaseReport {
    pub name: &'static str,
    /// Planning steps that returned moves (the last, empty plan is not counted).
    pub steps: u64,
    pub moves: MoveCounts,
    /// [`measure::replica_skew`] at the end, and the largest of it within one zone.
    pub replica_skew: f64,
    pub replica_skew_in_zone: f64,
    pub leader_skew: f64,
    /// Time of the slowest planning step, and of all steps (the empty last one included).
    pub plan_max: Duration,
    pub plan_total: Duration,
    pub plans: u64,
}

/// A cluster and what happens to it. The first nodes are spread over the zones round-robin (node
/// `k`, ids from 1, in zone `k % zones`); every node has weight 1.
///
/// With as many replicas as zones, every zone holds exactly one replica of each partition, so
/// nodes of a smaller zone must hold more: skew across zones of unequal size is the zone rule's,
/// not the planner's. So nodes are added to the smallest zones and drained from the largest, and
/// nodes lost in one zone are replaced there (what an operator does with a failed machine).
#[derive(Clone, Debug)]
pub struct Scenario {
    pub nodes: u64,
    pub zones: u64,
    pub partitions: u32,
    pub replication_factor: usize,
    /// Nodes added after the first placement, each to the zone with fewest nodes.
    pub add: u64,
    /// Nodes drained (each from the zone with most nodes, at random within it), then removed.
    pub drain: u64,
    /// Nodes of one zone (chosen at random) lost at once; once their replicas are rebuilt they
    /// are removed and as many new nodes join that zone.
    pub lose: u64,
    pub limits: Limits,
    /// A phase that has not converged after this many steps fails the run.
    pub steps_max: u64,
    pub seed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("scenario: {0}")]
    Scenario(String),
    #[error("phase {phase}: still planning moves after {steps} steps")]
    NoConvergence { phase: &'static str, steps: u64 },
    #[error("phase {phase}: the planner asked for a move the state refuses: {m:?}: {err}")]
    BadMove {
        phase: &'static str,
        m: Move,
        err: StateError,
    },
    #[error("phase {phase}: {err}")]
    State {
        phase: &'static str,
        err: StateError,
    },
}

/// Runs `s`, calling `check(state, move)` after every applied move (the tests put their
/// invariants there). Returns one report per phase: place, add, drain, lose, replace.
pub fn run(
    s: &Scenario,
    mut check: impl FnMut(&ClusterState, &Move),
) -> Result<Vec<PhaseReport>, SimError> {
    if s.zones == 0 || s.nodes < s.zones {
        return Err(SimError::Scenario(format!(
            "{} nodes in {} zones: need at least one node per zone",
            s.nodes, s.zones
        )));
    }
    if s.drain >= s.nodes + s.add {
        return Err(SimError::Scenario("draining would leave no node".into()));
    }
    let state_err = |phase| move |err| SimError::State { phase, err };
    let mut state = ClusterState::new(s.partitions, s.replication_factor)
        .map_err(|e| SimError::Scenario(e.to_string()))?;
    let mut next_id = 1;
    let mut join = |state: &mut ClusterState, zone: u64| {
        let n = Node {
            id: next_id,
            zone: format!("z{zone}"),
            weight: 1,
            health: Health::Up,
        };
        next_id += 1;
        state.add_node(n)
    };
    for k in 1..=s.nodes {
        join(&mut state, k % s.zones).map_err(state_err("place"))?;
    }
    let rng = fastrand::Rng::with_seed(s.seed);
    let mut reports = vec![converge(
        &mut state,
        &s.limits,
        s.steps_max,
        "place",
        &mut check,
    )?];

    for _ in 0..s.add {
        let zone = zone_sizes(&state, s.zones)
            .iter()
            .enumerate()
            .min_by_key(|z| z.1)
            .unwrap()
            .0;
        join(&mut state, zone as u64).map_err(state_err("add"))?;
    }
    reports.push(converge(
        &mut state,
        &s.limits,
        s.steps_max,
        "add",
        &mut check,
    )?);

    let mut drained = Vec::new();
    for _ in 0..s.drain {
        let sizes = zone_sizes(&state, s.zones);
        let zone = sizes
            .iter()
            .enumerate()
            .max_by_key(|z| (z.1, usize::MAX - z.0))
            .unwrap()
            .0;
        let id = pick_up_node(&state, zone as u64, &rng);
        state
            .set_health(id, Health::Draining)
            .map_err(state_err("drain"))?;
        drained.push(id);
    }
    reports.push(converge(
        &mut state,
        &s.limits,
        s.steps_max,
        "drain",
        &mut check,
    )?);
    for &id in &drained {
        state.remove_node(id).map_err(state_err("drain"))?;
    }

    let zone = rng.u64(0..s.zones);
    let mut lost = Vec::new();
    for _ in 0..s.lose {
        if zone_sizes(&state, s.zones)[zone as usize] <= 1 {
            break; // the zone keeps one node
        }
        let id = pick_up_node(&state, zone, &rng);
        state
            .set_health(id, Health::Down)
            .map_err(state_err("lose"))?;
        lost.push(id);
    }
    elect(&mut state);
    reports.push(converge(
        &mut state,
        &s.limits,
        s.steps_max,
        "lose",
        &mut check,
    )?);
    for &id in &lost {
        state.remove_node(id).map_err(state_err("lose"))?;
    }
    for _ in 0..lost.len() {
        join(&mut state, zone).map_err(state_err("replace"))?;
    }
    reports.push(converge(
        &mut state,
        &s.limits,
        s.steps_max,
        "replace",
        &mut check,
    )?);
    Ok(reports)
}

/// Up nodes per zone `z0..z{zones-1}`.
fn zone_sizes(state: &ClusterState, zones: u64) -> Vec<usize> {
    (0..zones)
        .map(|z| {
            let name = format!("z{z}");
            state
                .nodes()
                .filter(|n| n.zone == name && n.health == Health::Up)
                .count()
        })
        .collect()
}

fn pick_up_node(state: &ClusterState, zone: u64, rng: &fastrand::Rng) -> NodeId {
    let name = format!("z{zone}");
    let ids: Vec<NodeId> = state
        .nodes()
        .filter(|n| n.zone == name && n.health == Health::Up)
        .map(|n| n.id)
        .collect();
    ids[rng.usize(0..ids.len())]
}

/// Plans and applies until the planner has nothing more to do (or fails after `steps_max` steps
/// that all planned moves), calling `check(state, move)` after every applied move.
pub fn converge(
    state: &mut ClusterState,
    limits: &Limits,
    steps_max: u64,
    phase: &'static str,
    check: &mut impl FnMut(&ClusterState, &Move),
) -> Result<PhaseReport, SimError> {
    let mut r = PhaseReport {
        name: phase,
        steps: 0,
        moves: MoveCounts::default(),
        replica_skew: 0.0,
        replica_skew_in_zone: 0.0,
        leader_skew: 0.0,
        plan_max: Duration::ZERO,
        plan_total: Duration::ZERO,
        plans: 0,
    };
    loop {
        let start = Instant::now();
        let moves = plan(state, limits);
        let took = start.elapsed();
        r.plan_max = r.plan_max.max(took);
        r.plan_total += took;
        r.plans += 1;
        if moves.is_empty() {
            break;
        }
        if r.steps == steps_max {
            return Err(SimError::NoConvergence {
                phase,
                steps: r.steps,
            });
        }
        r.steps += 1;
        for m in &moves {
            apply(state, m).map_err(|err| SimError::BadMove {
                phase,
                m: m.clone(),
                err,
            })?;
            r.moves.count(m);
            check(state, m);
        }
        elect(state);
    }
    r.replica_skew = measure::replica_skew(state);
    r.replica_skew_in_zone = measure::replica_skew_in_zone(state);
    r.leader_skew = measure::leader_skew(state);
    Ok(r)
}
