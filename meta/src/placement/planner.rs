//! The planner: a pure function from a [`ClusterState`] to the moves that should be under way
//! next. It reads no clock, does no I/O and keeps nothing between calls: the caller carries the
//! moves out, records each completion with [`super::apply`], and asks again.
//!
//! One call, in this order (each partition gets at most one move per call):
//!
//! 1. Partitions in the middle of a move take its next step: a learner on a node that is no
//!    longer Up is removed, any other learner is promoted; a partition with more voters than its
//!    replication factor loses its worst voter (Down first, then Draining, then the one the move
//!    replaces, then the one in the most crowded zone on the most loaded node, never the
//!    newest), after handing leadership away if that voter leads. These steps need no budget: they finish moves already counted.
//! 2. Unplaced partitions are created on `min(rf, Up nodes)` nodes (at most
//!    `creates_per_plan_max`).
//! 3. New learners, while fewer than `moves_in_flight_max` partitions are mid-move: first for
//!    partitions with fewer serving voters than their replication factor (a Down node; fewest
//!    serving voters first), then for partitions with a voter on a Draining node, then for those
//!    that break the zone rule, and last to balance load (from the most loaded node to the least
//!    loaded one that keeps the zone rule).
//! 4. Leaders: off Draining nodes first, then from the node furthest above its expected share
//!    to a voter of the same partition furthest below; where no single transfer helps, a short
//!    chain of them (i to k, k to m: one leader moves from i to m). At most
//!    `leader_transfers_per_plan_max` transfers in all, step 1's included.
//!
//! A partition without a serving majority of voters (it cannot commit a membership change) or
//! without a known serving leader (one must propose the change) gets no move until that changes.
//!
//! Load is a node's replica count (voters and learner) over its weight. A replica moves from `i`
//! to `j` only if `(2c_i - 1) / w_i > (2c_j + 1) / w_j`: that lowers `sum(c^2 / w)`, so balancing
//! stops, and where it stops no two nodes differ by more than one replica, capacity-weighted
//! (with equal weights: `c_i - c_j <= 1`). Leaders are balanced the same way against
//! `expected_i = voters_i * L / V` (Bilibili's `replicas / replication factor`), moving while
//! `dev_i - dev_j > 1`, or along a chain of transfers where no single one helps.

use std::collections::BTreeSet;
use std::iter::once;

use super::state::{ClusterState, Health, Move, PartitionId, Placement, REPLICAS_MAX};
use super::topology::Topology;

/// Searches for a chain of leader transfers one plan makes at most (each a breadth-first search
/// from one node over the partitions the nodes lead), partitions one search looks at at most,
/// and hops in one chain at most. They keep a plan's time bounded on a large cluster; a chain
/// not found in one plan is looked for again in the next.
const LEADER_CHAIN_SEARCHES_PER_PLAN_MAX: usize = 16;
const LEADER_CHAIN_VISITS_MAX: usize = 4096;
const LEADER_CHAIN_HOPS_MAX: usize = 4;

/// How much one plan may start. Each is a bound on work the cluster does at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Partitions mid-move (a learner, or a voter more than the replication factor) at most; no
    /// new learner is added while this many are. A move copies a snapshot, so this bounds the
    /// copying the cluster does at once.
    pub moves_in_flight_max: usize,
    /// Leader transfers one plan asks for at most.
    pub leader_transfers_per_plan_max: usize,
    /// Partitions one plan creates at most (a new table's partitions are created over several
    /// plans, which keeps each plan's time short).
    pub creates_per_plan_max: usize,
    /// Balancing on: replicas move to even out load and leaders move toward each node's share.
    /// Off (`keel-meta ctl balance off`): only what keeps data safe and drains finish still
    /// happens (creates, repairs, drains, the zone rule, moves under way, leaders off Draining
    /// nodes).
    pub balance: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            moves_in_flight_max: 32,
            leader_transfers_per_plan_max: 1024,
            creates_per_plan_max: 16384,
            balance: true,
        }
    }
}

/// The next moves for `state`, within `limits`. The same state gives the same moves, in the same
/// order: every tie is broken by node index (id order), zone index (name order) or partition id.
///
/// Panics if the state fails [`ClusterState::validate`] (it cannot, built through its methods).
pub fn plan(state: &ClusterState, limits: &Limits) -> Vec<Move> {
    Planner::new(state, limits).run()
}

/// A load per unit of weight as an exact fraction (`den > 0`), so that ties are ties.
#[derive(Clone, Copy, Debug)]
struct Ratio {
    num: i64,
    den: i64,
}

impl Ord for Ratio {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.num as i128 * o.den as i128).cmp(&(o.num as i128 * self.den as i128))
    }
}
impl PartialOrd for Ratio {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl PartialEq for Ratio {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}
impl Eq for Ratio {}

/// How loaded a node looks as the source of a move: `(2c - 1) / w`.
fn heavy_key(count: i64, weight: u32) -> Ratio {
    Ratio {
        num: 2 * count - 1,
        den: weight as i64,
    }
}

/// How loaded a node looks as the target of a move: `(2c + 1) / w`.
fn light_key(count: i64, weight: u32) -> Ratio {
    Ratio {
        num: 2 * count + 1,
        den: weight as i64,
    }
}

/// Replica counts of every node as they will be once the moves under way (and those planned so
/// far in this call) complete, and the Up nodes sorted by them.
struct Loads {
    count: Vec<i64>,
    heavy: BTreeSet<(Ratio, usize)>,
    light: BTreeSet<(Ratio, usize)>,
    light_in_zone: Vec<BTreeSet<(Ratio, usize)>>,
}

impl Loads {
    fn new(t: &Topology, count: Vec<i64>) -> Loads {
        let mut l = Loads {
            count,
            heavy: BTreeSet::new(),
            light: BTreeSet::new(),
            light_in_zone: vec![BTreeSet::new(); t.zone_count],
        };
        for i in 0..t.ids.len() {
            if t.is_up(i) {
                l.insert(t, i);
            }
        }
        l
    }

    fn insert(&mut self, t: &Topology, i: usize) {
        let (c, w) = (self.count[i], t.weight[i]);
        self.heavy.insert((heavy_key(c, w), i));
        self.light.insert((light_key(c, w), i));
        self.light_in_zone[t.zone[i]].insert((light_key(c, w), i));
    }

    fn remove(&mut self, t: &Topology, i: usize) {
        let (c, w) = (self.count[i], t.weight[i]);
        assert!(self.heavy.remove(&(heavy_key(c, w), i)));
        assert!(self.light.remove(&(light_key(c, w), i)));
        assert!(self.light_in_zone[t.zone[i]].remove(&(light_key(c, w), i)));
    }

    fn bump(&mut self, t: &Topology, i: usize, delta: i64) {
        if t.is_up(i) {
            self.remove(t, i);
            self.count[i] += delta;
            self.insert(t, i);
        } else {
            self.count[i] += delta;
        }
    }

    /// The least loaded Up node of zone `z` that is not in `hosts`.
    fn lightest_in_zone(&self, z: usize, hosts: &[usize]) -> Option<(Ratio, usize)> {
        self.light_in_zone[z]
            .iter()
            .find(|(_, j)| !hosts.contains(j))
            .copied()
    }
}

/// One partition's replicas as node indexes.
#[derive(Clone, Copy)]
struct View {
    voters: [usize; REPLICAS_MAX],
    voters_len: usize,
    learner: Option<usize>,
    replaces: Option<usize>,
    leader: Option<usize>,
}

impl View {
    fn new(t: &Topology, p: &Placement) -> View {
        let mut v = View {
            voters: [0; REPLICAS_MAX],
            voters_len: 0,
            learner: None,
            replaces: None,
            leader: None,
        };
        for &id in &p.voters {
            v.voters[v.voters_len] = t.idx(id);
            v.voters_len += 1;
        }
        v.learner = p.learner.map(|id| t.idx(id));
        v.replaces = p.replaces.map(|id| t.idx(id));
        v.leader = p.leader.map(|id| t.idx(id));
        v
    }

    fn voters(&self) -> &[usize] {
        &self.voters[..self.voters_len]
    }

    /// Voters and learner.
    fn hosts(&self) -> ([usize; REPLICAS_MAX], usize) {
        let mut h = self.voters;
        let mut n = self.voters_len;
        if let Some(l) = self.learner {
            h[n] = l;
            n += 1;
        }
        (h, n)
    }
}

/// The voter to remove from a partition with one voter too many (counting `learner` as a voter):
/// Down first, then Draining, then the one the move replaces (`replaces`), then, on Up nodes, the
/// one in the zone with most replicas, on the most loaded node, preferring one that does not
/// lead. The newest Up voter (the learner, or the last voter) is never chosen: it is the replica
/// the move was for.
fn victim(
    t: &Topology,
    count: &[i64],
    v: &View,
    learner: Option<usize>,
    replaces: Option<usize>,
) -> usize {
    let newest = learner.or(v.voters().last().copied());
    let zone_replicas = |x: usize| {
        v.voters()
            .iter()
            .chain(learner.iter())
            .filter(|&&o| t.is_up(o) && t.zone[o] == t.zone[x])
            .count()
    };
    v.voters()
        .iter()
        .copied()
        .filter(|&x| !(Some(x) == newest && t.is_up(x)))
        .max_by_key(|&x| {
            let class = match t.health[x] {
                Health::Down => 2,
                Health::Draining => 1,
                Health::Up => 0,
            };
            let (zone, load) = if t.is_up(x) {
                (zone_replicas(x), heavy_key(count[x], t.weight[x]))
            } else {
                (0, Ratio { num: 0, den: 1 })
            };
            (
                class,
                replaces == Some(x),
                zone,
                load,
                v.leader != Some(x),
                x,
            )
        })
        .expect("a partition with a voter too many has a voter besides the newest")
}

/// Why a partition wants a new learner; the order is the order they get the budget.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    /// Fewer serving voters than the replication factor (the count is the key within).
    Repair(usize),
    /// A voter on a Draining node.
    Drain,
    /// All voters Up but two in a zone while another zone has room.
    Zone,
}

struct Planner<'a> {
    state: &'a ClusterState,
    limits: &'a Limits,
    t: Topology,
    rf: usize,
    loads: Loads,
    /// Replica counts as the state has them: what `victim` weighs, so that the voter a move will
    /// remove is the same in every call from the learner's addition to the removal.
    raw: Vec<i64>,
    touched: Vec<bool>,
    out: Vec<Move>,
    transfers_left: usize,
    /// Leader deviation of each node, scaled by `votes_total`: `lead * V - votes * L`.
    dev: Vec<i128>,
    votes_total: i128,
    lead: Vec<i64>,
    votes: Vec<i64>,
}

impl<'a> Planner<'a> {
    fn new(state: &'a ClusterState, limits: &'a Limits) -> Planner<'a> {
        let t = Topology::new(state);
        let n = t.ids.len();
        let rf = state.replication_factor();
        let mut count = vec![0i64; n];
        let mut lead = vec![0i64; n];
        let mut votes = vec![0i64; n];
        let mut led_total = 0i128;
        for p in state.placements() {
            let v = View::new(&t, p);
            let (h, hn) = v.hosts();
            for &i in &h[..hn] {
                count[i] += 1;
            }
            if let Some(l) = v.leader.filter(|&l| t.health[l].serves()) {
                let up_voters = v.voters().iter().filter(|&&x| t.is_up(x)).count();
                if up_voters > 0 {
                    led_total += 1;
                    for &x in v.voters().iter().filter(|&&x| t.is_up(x)) {
                        votes[x] += 1;
                    }
                    if t.is_up(l) {
                        lead[l] += 1;
                    }
                }
            }
        }
        // Count each replica a move under way will remove as gone already, so that a node losing
        // a replica does not look loaded enough to lose another.
        let raw = count.clone();
        for p in state.placements() {
            let v = View::new(&t, p);
            match v.learner {
                Some(l) if !t.is_up(l) => count[l] -= 1,
                Some(l) if v.voters_len + 1 > rf => {
                    count[victim(&t, &raw, &v, Some(l), v.replaces)] -= 1
                }
                None if v.voters_len > rf => count[victim(&t, &raw, &v, None, v.replaces)] -= 1,
                _ => {}
            }
        }
        let votes_total: i128 = votes.iter().map(|&x| x as i128).sum();
        let dev = (0..n)
            .map(|i| lead[i] as i128 * votes_total - votes[i] as i128 * led_total)
            .collect();
        let loads = Loads::new(&t, count);
        Planner {
            state,
            limits,
            rf,
            loads,
            raw,
            touched: vec![false; state.placements().len()],
            out: Vec::new(),
            transfers_left: limits.leader_transfers_per_plan_max,
            dev,
            votes_total,
            lead,
            votes,
            t,
        }
    }

    fn view(&self, p: PartitionId) -> View {
        View::new(&self.t, &self.state.placements()[p as usize])
    }

    fn run(mut self) -> Vec<Move> {
        let n = self.t.ids.len();
        let mut creates = Vec::new();
        let mut needs: Vec<(Need, PartitionId)> = Vec::new();
        let mut in_flight = 0usize;
        // Partitions this call may move for balance, by Up voter; and by Up leader.
        let mut voter_of: Vec<Vec<PartitionId>> = vec![Vec::new(); n];
        let mut led: Vec<Vec<PartitionId>> = vec![Vec::new(); n];
        let mut draining_led = Vec::new();

        for (pi, pl) in self.state.placements().iter().enumerate() {
            let p = pi as PartitionId;
            if pl.voters.is_empty() {
                creates.push(p);
                continue;
            }
            let v = View::new(&self.t, pl);
            let t = &self.t;
            let mid_move = v.learner.is_some() || v.voters_len > self.rf;
            in_flight += mid_move as usize;
            let serving = v.voters().iter().filter(|&&x| t.health[x].serves()).count();
            if serving * 2 <= v.voters_len {
                continue; // no majority to commit a membership change
            }
            let Some(leader) = v.leader.filter(|&l| t.health[l].serves()) else {
                continue; // waits for Raft to elect a leader
            };
            if mid_move {
                self.touched[pi] = true;
                self.next_step(p, &v, leader);
                continue;
            }
            let up_voters = v.voters().iter().filter(|&&x| t.is_up(x)).count();
            if t.is_up(leader) {
                led[leader].push(p);
            } else {
                draining_led.push(p);
            }
            if up_voters < self.rf {
                if up_voters < t.up_nodes {
                    let need = if serving < self.rf {
                        Need::Repair(serving)
                    } else {
                        Need::Drain
                    };
                    needs.push((need, p));
                }
                continue;
            }
            if !t.zone_ok(v.voters().iter().map(|&x| t.zone[x])) {
                needs.push((Need::Zone, p));
                continue;
            }
            for &x in v.voters() {
                voter_of[x].push(p);
            }
        }

        self.create(&creates);
        let mut budget = self.limits.moves_in_flight_max.saturating_sub(in_flight);
        needs.sort();
        for &(_, p) in &needs {
            if budget == 0 {
                break;
            }
            let v = self.view(p);
            let (h, hn) = v.hosts();
            let staying: Vec<usize> = v
                .voters()
                .iter()
                .copied()
                .filter(|&x| self.t.is_up(x))
                .collect();
            if let Some(j) = self.pick_target(&h[..hn], &staying) {
                self.add_learner(p, &v, j, None);
                budget -= 1;
            }
        }
        if self.limits.balance {
            self.rebalance(&voter_of, budget);
        }
        let settled = in_flight == 0 && self.out.is_empty();
        self.balance_leaders(&led, &draining_led, settled);
        debug_assert!({
            let mut ps: Vec<_> = self.out.iter().map(|m| m.partition()).collect();
            ps.sort_unstable();
            ps.windows(2).all(|w| w[0] != w[1])
        });
        self.out
    }

    /// Step 1 for a partition mid-move whose leader is `leader`.
    fn next_step(&mut self, p: PartitionId, v: &View, leader: usize) {
        let t = &self.t;
        if let Some(l) = v.learner {
            let node = t.ids[l];
            self.out.push(if t.is_up(l) {
                Move::Promote { partition: p, node }
            } else {
                Move::RemoveReplica { partition: p, node }
            });
            return;
        }
        let x = victim(t, &self.raw, v, None, v.replaces);
        if x == leader {
            if let Some(to) = self.transfer_target(v, x) {
                self.transfer(p, x, to);
            }
        } else {
            // A serving voter goes only when the rest still reach the replication factor.
            let serving_after = v
                .voters()
                .iter()
                .filter(|&&o| o != x && t.health[o].serves())
                .count();
            assert!(!t.health[x].serves() || serving_after >= self.rf);
            self.out.push(Move::RemoveReplica {
                partition: p,
                node: t.ids[x],
            });
        }
    }

    /// The voter of `v` other than `from` to lead: Up before Draining, then the furthest below
    /// its expected share of leaders.
    fn transfer_target(&self, v: &View, from: usize) -> Option<usize> {
        let t = &self.t;
        v.voters()
            .iter()
            .copied()
            .filter(|&o| o != from && t.health[o].serves())
            .min_by_key(|&o| (!t.is_up(o), self.dev[o], o))
    }

    fn transfer(&mut self, p: PartitionId, from: usize, to: usize) {
        if self.transfers_left == 0 {
            return;
        }
        self.transfers_left -= 1;
        self.dev[from] -= self.votes_total;
        self.dev[to] += self.votes_total;
        self.touched[p as usize] = true;
        let (from, to) = (self.t.ids[from], self.t.ids[to]);
        self.out.push(Move::TransferLeader {
            partition: p,
            from,
            to,
        });
    }

    /// A learner on `j`; it replaces `replaces`, or else, if the partition will have a voter too
    /// many, the voter `victim` picks (the Down or Draining one, for a repair or a drain).
    fn add_learner(&mut self, p: PartitionId, v: &View, j: usize, replaces: Option<usize>) {
        self.touched[p as usize] = true;
        self.loads.bump(&self.t, j, 1);
        let replaces = replaces.or_else(|| {
            (v.voters_len + 1 > self.rf).then(|| victim(&self.t, &self.raw, v, Some(j), None))
        });
        if let Some(x) = replaces {
            self.loads.bump(&self.t, x, -1);
        }
        self.out.push(Move::AddLearner {
            partition: p,
            node: self.t.ids[j],
            replaces: replaces.map(|x| self.t.ids[x]),
        });
    }

    /// Where a new replica of a partition goes: an Up node outside `hosts`, in the zone with the
    /// fewest of `staying` (the replicas that stay), the least loaded there.
    fn pick_target(&self, hosts: &[usize], staying: &[usize]) -> Option<usize> {
        let t = &self.t;
        let mut best: Option<(usize, Ratio, usize)> = None;
        for z in 0..t.zone_count {
            if t.up_in_zone[z] == 0 {
                continue;
            }
            let c = staying.iter().filter(|&&s| t.zone[s] == z).count();
            if best.is_some_and(|b| c > b.0) {
                continue;
            }
            if let Some((key, j)) = self.loads.lightest_in_zone(z, hosts) {
                if best.is_none_or(|b| (c, key, j) < b) {
                    best = Some((c, key, j));
                }
            }
        }
        best.map(|b| b.2)
    }

    /// Step 2: each unplaced partition on `min(rf, Up nodes)` nodes, zones spread, least loaded
    /// first; the first voter (the one meant to lead) is the one with fewest leaders per voter.
    fn create(&mut self, creates: &[PartitionId]) {
        let d = self.rf.min(self.t.up_nodes);
        if d == 0 {
            return;
        }
        let mut lead = self.lead.clone();
        let mut votes = self.votes.clone();
        for &p in creates.iter().take(self.limits.creates_per_plan_max) {
            let mut chosen = Vec::with_capacity(d);
            while chosen.len() < d {
                let j = self.pick_target(&chosen, &chosen).expect("d <= Up nodes");
                chosen.push(j);
                self.loads.bump(&self.t, j, 1);
                votes[j] += 1;
            }
            // Fewest leaders per vote: lead_a / votes_a < lead_b / votes_b, votes >= 1 here.
            let first = (0..d)
                .min_by_key(|&k| {
                    let j = chosen[k];
                    (
                        Ratio {
                            num: lead[j],
                            den: votes[j],
                        },
                        j,
                    )
                })
                .expect("d >= 1");
            chosen.swap(0, first);
            lead[chosen[0]] += 1;
            self.touched[p as usize] = true;
            let voters = chosen.iter().map(|&j| self.t.ids[j]).collect();
            self.out.push(Move::Create {
                partition: p,
                voters,
            });
        }
    }

    /// Step 3's last part: moves from the most loaded node to the least loaded one that may take
    /// the replica, while any pair differs by more than one replica (capacity-weighted).
    fn rebalance(&mut self, voter_of: &[Vec<PartitionId>], mut budget: usize) {
        let mut exhausted = vec![false; self.t.ids.len()];
        while budget > 0 {
            let Some(&(lightest, _)) = self.loads.light.first() else {
                return;
            };
            let mut found = None;
            for &(key, i) in self.loads.heavy.iter().rev() {
                if key <= lightest {
                    break; // no pair is out of balance by more than one replica
                }
                if exhausted[i] {
                    continue;
                }
                match self.move_from(i, &voter_of[i]) {
                    Some(m) => {
                        found = Some(m);
                        break;
                    }
                    None => exhausted[i] = true,
                }
            }
            let Some((p, i, j)) = found else { return };
            let v = self.view(p);
            self.add_learner(p, &v, j, Some(i));
            budget -= 1;
        }
    }

    /// A partition of `i` to move to a node it improves the balance for: `(partition, i, j)`.
    /// Prefers a partition `i` does not lead (no leader transfer needed before the removal).
    fn move_from(
        &self,
        i: usize,
        partitions: &[PartitionId],
    ) -> Option<(PartitionId, usize, usize)> {
        let t = &self.t;
        let key_i = heavy_key(self.loads.count[i], t.weight[i]);
        let mut led_fallback = None;
        for &p in partitions {
            if self.touched[p as usize] {
                continue;
            }
            let v = self.view(p);
            let mut best: Option<(Ratio, usize)> = None;
            for z in 0..t.zone_count {
                if t.up_in_zone[z] == 0 {
                    continue;
                }
                let others = v.voters().iter().filter(|&&x| x != i).map(|&x| t.zone[x]);
                if z != t.zone[i] && !t.zone_ok(others.chain(once(z))) {
                    continue;
                }
                if let Some(c) = self.loads.lightest_in_zone(z, v.voters()) {
                    if best.is_none_or(|b| c < b) {
                        best = Some(c);
                    }
                }
            }
            if let Some((key_j, j)) = best {
                if key_i > key_j {
                    if v.leader != Some(i) {
                        return Some((p, i, j));
                    }
                    led_fallback.get_or_insert((p, i, j));
                }
            }
        }
        led_fallback
    }

    /// Step 4: leaders off Draining nodes, then toward every node's expected share.
    /// `settled`: no replica moves under way or planned, so leader counts are worth the chain
    /// searches (while replicas still move, expected shares move with them).
    fn balance_leaders(
        &mut self,
        led: &[Vec<PartitionId>],
        draining_led: &[PartitionId],
        settled: bool,
    ) {
        for &p in draining_led {
            if self.touched[p as usize] {
                continue;
            }
            let v = self.view(p);
            let from = v.leader.expect("listed with a leader");
            if let Some(to) = self
                .transfer_target(&v, from)
                .filter(|&to| self.t.is_up(to))
            {
                self.transfer(p, from, to);
            }
        }
        if !self.limits.balance {
            return;
        }
        let vt = self.votes_total;
        let mut by_dev: BTreeSet<(i128, usize)> = (0..self.t.ids.len())
            .filter(|&i| self.t.is_up(i))
            .map(|i| (self.dev[i], i))
            .collect();
        let mut exhausted = vec![false; self.t.ids.len()];
        let mut chain_exhausted = vec![false; self.t.ids.len()];
        let mut searches_left = LEADER_CHAIN_SEARCHES_PER_PLAN_MAX;
        while self.transfers_left > 0 {
            let Some(&(low, _)) = by_dev.first() else {
                return;
            };
            let mut found = None;
            for &(d, i) in by_dev.iter().rev() {
                if d - low <= vt {
                    break; // every node within one leader of the others' deviation
                }
                if exhausted[i] {
                    continue;
                }
                match self.transfer_from(i, &led[i]) {
                    Some(m) => {
                        found = Some(vec![m]);
                        break;
                    }
                    None => exhausted[i] = true,
                }
            }
            if found.is_none() && settled {
                // No single transfer helps: look for a chain (i hands a leadership to k, k one of
                // its own to m, ...), which moves one leader from i to the chain's end.
                for &(d, i) in by_dev.iter().rev() {
                    if d - low <= vt || searches_left == 0 {
                        break;
                    }
                    if chain_exhausted[i] {
                        continue;
                    }
                    searches_left -= 1;
                    match self.chain_from(i, led) {
                        Some(path) => {
                            found = Some(path);
                            break;
                        }
                        None => chain_exhausted[i] = true,
                    }
                }
            }
            let Some(path) = found else { return };
            if path.len() > self.transfers_left {
                return;
            }
            for &(p, i, j) in &path {
                by_dev.remove(&(self.dev[i], i));
                by_dev.remove(&(self.dev[j], j));
                self.transfer(p, i, j);
                by_dev.insert((self.dev[i], i));
                by_dev.insert((self.dev[j], j));
            }
        }
    }

    /// The shortest chain of leader transfers (at most `LEADER_CHAIN_HOPS_MAX`) from `i` to a node
    /// more than one leader below it, each hop a partition its giver leads and its taker votes in.
    fn chain_from(
        &self,
        i: usize,
        led: &[Vec<PartitionId>],
    ) -> Option<Vec<(PartitionId, usize, usize)>> {
        let n = self.t.ids.len();
        let target = self.dev[i] - self.votes_total;
        let mut prev: Vec<Option<(usize, PartitionId)>> = vec![None; n];
        let mut depth = vec![usize::MAX; n];
        depth[i] = 0;
        let mut queue = std::collections::VecDeque::from([i]);
        let mut visits = 0;
        while let Some(k) = queue.pop_front() {
            if depth[k] == LEADER_CHAIN_HOPS_MAX {
                continue;
            }
            for &p in &led[k] {
                if self.touched[p as usize] {
                    continue;
                }
                visits += 1;
                if visits > LEADER_CHAIN_VISITS_MAX {
                    return None;
                }
                let v = self.view(p);
                for &o in v.voters() {
                    if depth[o] != usize::MAX || !self.t.is_up(o) {
                        continue;
                    }
                    depth[o] = depth[k] + 1;
                    prev[o] = Some((k, p));
                    if self.dev[o] < target {
                        let mut path = Vec::with_capacity(depth[o]);
                        let mut at = o;
                        while let Some((from, p)) = prev[at] {
                            path.push((p, from, at));
                            at = from;
                        }
                        path.reverse();
                        return Some(path);
                    }
                    queue.push_back(o);
                }
            }
        }
        None
    }

    /// A partition `i` leads whose leadership improves the balance on another Up voter.
    fn transfer_from(&self, i: usize, led: &[PartitionId]) -> Option<(PartitionId, usize, usize)> {
        for &p in led {
            if self.touched[p as usize] {
                continue;
            }
            let v = self.view(p);
            let best = v
                .voters()
                .iter()
                .copied()
                .filter(|&o| o != i && self.t.is_up(o))
                .min_by_key(|&o| (self.dev[o], o));
            if let Some(j) = best {
                if self.dev[i] - self.dev[j] > self.votes_total {
                    return Some((p, i, j));
                }
            }
        }
        None
    }
}
