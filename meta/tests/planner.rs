//! Targeted cases of the placement planner: the numbers issue 8's end-to-end test expects, drain,
//! a lost node, the moves-in-flight limit, capacity weights, partitions without a majority, and
//! determinism.

use keel_meta::placement::{
    apply, measure, plan, ClusterState, Health, Limits, Move, Node, NodeId, Placement,
};
use keel_meta::sim::{converge, elect};

fn node(id: NodeId, zone: &str) -> Node {
    Node {
        id,
        zone: zone.into(),
        weight: 1,
        health: Health::Up,
    }
}

fn cluster(partitions: u32, rf: usize, nodes: &[(NodeId, &str)]) -> ClusterState {
    let mut s = ClusterState::new(partitions, rf).unwrap();
    for &(id, zone) in nodes {
        s.add_node(node(id, zone)).unwrap();
    }
    s
}

/// Converges, checking after every move that no partition lost a serving voter below its
/// replication factor.
fn settle(s: &mut ClusterState, limits: &Limits) -> u64 {
    let rf = s.replication_factor();
    let mut serving: Vec<usize> = (0..s.partition_count())
        .map(|p| measure::serving_voters(s, p))
        .collect();
    let r = converge(s, limits, 10_000, "test", &mut |s, m| {
        let p = m.partition();
        let now = measure::serving_voters(s, p);
        assert!(
            now >= serving[p as usize].min(rf),
            "{m:?} took partition {p} below rf"
        );
        serving[p as usize] = now;
    })
    .unwrap();
    assert!(plan(s, limits).is_empty());
    r.steps
}

fn hosted(s: &ClusterState, id: NodeId) -> u32 {
    measure::node_loads(s)
        .iter()
        .find(|n| n.id == id)
        .unwrap()
        .replicas
}

fn led(s: &ClusterState, id: NodeId) -> u32 {
    measure::node_loads(s)
        .iter()
        .find(|n| n.id == id)
        .unwrap()
        .leaders
}

fn zones_of(s: &ClusterState, p: &Placement) -> Vec<String> {
    let mut z: Vec<String> = p
        .voters
        .iter()
        .map(|&v| s.node(v).unwrap().zone.clone())
        .collect();
    z.sort();
    z.dedup();
    z
}

const FOUR_IN_TWO_ZONES: [(NodeId, &str); 4] = [(1, "a"), (2, "a"), (3, "b"), (4, "b")];

#[test]
fn four_nodes_in_two_zones_host_48_and_lead_16() {
    // Issue 8's e2e cluster: one meta, 4 nodes in 2 zones, RF 3, 64 partitions.
    let mut s = cluster(64, 3, &FOUR_IN_TWO_ZONES);
    settle(&mut s, &Limits::default());
    for p in s.placements() {
        assert_eq!(p.voters.len(), 3);
        assert_eq!(zones_of(&s, p), ["a", "b"], "{p:?} spans both zones");
    }
    for id in 1..=4 {
        assert!(
            (47..=49).contains(&hosted(&s, id)),
            "node {id} hosts {}",
            hosted(&s, id)
        );
        assert!(
            (15..=17).contains(&led(&s, id)),
            "node {id} leads {}",
            led(&s, id)
        );
    }
}

#[test]
fn a_fifth_node_takes_replicas_until_each_hosts_38_or_39() {
    for zone in ["a", "b"] {
        let mut s = cluster(64, 3, &FOUR_IN_TWO_ZONES);
        settle(&mut s, &Limits::default());
        s.add_node(node(5, zone)).unwrap();
        settle(
            &mut s,
            &Limits {
                moves_in_flight_max: 4,
                ..Limits::default()
            },
        );
        for id in 1..=5 {
            let h = hosted(&s, id);
            assert!(
                h == 38 || h == 39,
                "node {id} (5th in zone {zone}) hosts {h}"
            );
        }
        for p in s.placements() {
            assert_eq!(zones_of(&s, p), ["a", "b"]);
        }
        assert!(
            measure::leader_skew(&s) <= 1.0,
            "leader skew {}",
            measure::leader_skew(&s)
        );
    }
}

#[test]
fn drain_moves_every_replica_and_leader_off_the_node() {
    let mut s = cluster(64, 3, &[(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "a")]);
    settle(&mut s, &Limits::default());
    assert!(led(&s, 2) > 0);
    s.set_health(2, Health::Draining).unwrap();
    settle(
        &mut s,
        &Limits {
            moves_in_flight_max: 3,
            ..Limits::default()
        },
    );
    assert_eq!(hosted(&s, 2), 0);
    assert_eq!(led(&s, 2), 0);
    for id in [1, 3, 4, 5] {
        assert_eq!(hosted(&s, id), 48, "node {id}");
    }
    s.remove_node(2).unwrap();
}

#[test]
fn a_down_node_has_its_replicas_rebuilt_in_its_zone() {
    let nodes: Vec<(NodeId, &str)> = (1..=6)
        .map(|i| (i, ["a", "b", "c"][i as usize % 3]))
        .collect();
    let mut s = cluster(96, 3, &nodes);
    settle(&mut s, &Limits::default());
    let lost = hosted(&s, 3);
    s.set_health(3, Health::Down).unwrap();
    elect(&mut s);
    let steps = settle(
        &mut s,
        &Limits {
            moves_in_flight_max: 8,
            ..Limits::default()
        },
    );
    assert_eq!(hosted(&s, 3), 0);
    // Zone a had two nodes: node 6 now holds one replica of every partition.
    assert_eq!(hosted(&s, 6), 96);
    assert_eq!(lost, 48);
    for p in s.placements() {
        assert_eq!(zones_of(&s, p), ["a", "b", "c"]);
    }
    assert!(
        steps >= 3 * 48 / 8,
        "at most 8 moves at once: {steps} steps"
    );
    s.remove_node(3).unwrap();
}

#[test]
fn moves_in_flight_stay_within_the_limit() {
    let mut s = cluster(64, 3, &FOUR_IN_TWO_ZONES);
    settle(&mut s, &Limits::default());
    s.add_node(node(5, "b")).unwrap();
    let limits = Limits {
        moves_in_flight_max: 3,
        ..Limits::default()
    };
    let first = plan(&s, &limits);
    let learners = first
        .iter()
        .filter(|m| matches!(m, Move::AddLearner { .. }))
        .count();
    assert_eq!(learners, 3);
    for _ in 0..1000 {
        let moves = plan(&s, &limits);
        if moves.is_empty() {
            break;
        }
        for m in &moves {
            apply(&mut s, m).unwrap();
        }
        elect(&mut s);
        assert!(measure::moves_in_flight(&s) <= 3);
    }
    assert!(plan(&s, &limits).is_empty());
    assert_eq!(measure::replica_skew(&s), 1.0);
}

#[test]
fn a_node_of_double_capacity_holds_double_the_replicas() {
    let mut s = ClusterState::new(140, 3).unwrap();
    for id in 1..=6 {
        let weight = if id == 1 { 2 } else { 1 };
        s.add_node(Node {
            id,
            zone: "a".into(),
            weight,
            health: Health::Up,
        })
        .unwrap();
    }
    settle(&mut s, &Limits::default());
    // 420 replicas over 7 weight units: 120 for node 1, 60 for each of the others.
    assert!((119..=121).contains(&hosted(&s, 1)), "{}", hosted(&s, 1));
    for id in 2..=6 {
        assert!(
            (59..=61).contains(&hosted(&s, id)),
            "node {id}: {}",
            hosted(&s, id)
        );
    }
    assert!(measure::replica_skew(&s) <= 1.0);
    assert!(measure::leader_skew(&s) <= 1.0);
}

#[test]
fn a_partition_without_a_serving_majority_is_left_alone() {
    let mut s = cluster(2, 3, &[(1, "a"), (2, "b"), (3, "c"), (4, "a")]);
    let p = Placement {
        voters: vec![1, 2, 3],
        learner: None,
        replaces: None,
        leader: Some(1),
    };
    s.set_placement(0, p.clone()).unwrap();
    s.set_placement(1, p).unwrap();
    s.set_health(2, Health::Down).unwrap();
    s.set_health(3, Health::Down).unwrap();
    assert_eq!(measure::without_majority(&s), vec![0, 1]);
    assert!(plan(&s, &Limits::default()).is_empty());
}

#[test]
fn fewer_up_nodes_than_the_replication_factor_place_what_they_can() {
    let mut s = cluster(16, 3, &[(1, "a"), (2, "b")]);
    settle(&mut s, &Limits::default());
    assert!(s.placements().iter().all(|p| p.voters.len() == 2));
    s.add_node(node(3, "c")).unwrap();
    settle(&mut s, &Limits::default());
    assert!(s.placements().iter().all(|p| p.voters.len() == 3));
}

#[test]
fn replicas_in_one_zone_spread_to_the_others() {
    let mut s = cluster(8, 3, &[(1, "a"), (2, "a"), (3, "a"), (4, "b"), (5, "c")]);
    for p in 0..8 {
        let pl = Placement {
            voters: vec![1, 2, 3],
            learner: None,
            replaces: None,
            leader: Some(1),
        };
        s.set_placement(p, pl).unwrap();
    }
    settle(&mut s, &Limits::default());
    for p in s.placements() {
        assert_eq!(zones_of(&s, p), ["a", "b", "c"]);
    }
}

#[test]
fn a_leader_to_be_removed_hands_leadership_over_first() {
    let mut s = cluster(1, 3, &[(1, "a"), (2, "b"), (3, "c"), (4, "a")]);
    let pl = Placement {
        voters: vec![1, 2, 3],
        learner: None,
        replaces: None,
        leader: Some(1),
    };
    s.set_placement(0, pl).unwrap();
    s.set_health(1, Health::Draining).unwrap();
    let limits = Limits::default();
    let mut seen = Vec::new();
    loop {
        let moves = plan(&s, &limits);
        if moves.is_empty() {
            break;
        }
        for m in &moves {
            apply(&mut s, m).unwrap();
        }
        seen.extend(moves);
    }
    let removal = seen.iter().position(|m| {
        *m == Move::RemoveReplica {
            partition: 0,
            node: 1,
        }
    });
    let handover = seen
        .iter()
        .position(|m| matches!(m, Move::TransferLeader { from: 1, .. }));
    assert!(handover.unwrap() < removal.unwrap(), "{seen:?}");
    assert_eq!(s.placement(0).unwrap().voters, vec![2, 3, 4]);
}

#[test]
fn the_same_state_gives_the_same_plan() {
    let build = |order: &[NodeId]| {
        let mut s = ClusterState::new(128, 3).unwrap();
        for &id in order {
            s.add_node(node(id, ["x", "y", "z"][id as usize % 3]))
                .unwrap();
        }
        s
    };
    let a = build(&[1, 2, 3, 4, 5, 6, 7]);
    let b = build(&[7, 3, 5, 1, 6, 2, 4]);
    let limits = Limits::default();
    assert_eq!(plan(&a, &limits), plan(&b, &limits));
    let mut a2 = a.clone();
    settle(&mut a2, &limits);
    let mut b2 = b.clone();
    settle(&mut b2, &limits);
    assert_eq!(a2, b2);
}

#[test]
fn apply_refuses_moves_that_do_not_fit() {
    let mut s = cluster(1, 3, &[(1, "a"), (2, "b"), (3, "c"), (4, "a")]);
    let pl = Placement {
        voters: vec![1, 2, 3],
        leader: Some(1),
        ..Placement::default()
    };
    s.set_placement(0, pl).unwrap();
    let before = s.clone();
    let learner = |node, replaces| Move::AddLearner {
        partition: 0,
        node,
        replaces,
    };
    let refused = [
        Move::RemoveReplica {
            partition: 0,
            node: 1,
        }, // the leader
        Move::Promote {
            partition: 0,
            node: 4,
        }, // not a learner
        Move::TransferLeader {
            partition: 0,
            from: 2,
            to: 3,
        }, // 2 does not lead
        learner(2, None),    // already a voter
        learner(4, Some(4)), // replaces a non-voter
        Move::Create {
            partition: 0,
            voters: vec![4],
        }, // already placed
    ];
    for m in &refused {
        assert!(apply(&mut s, m).is_err(), "{m:?}");
    }
    assert_eq!(s, before);
    apply(&mut s, &learner(4, Some(1))).unwrap();
    assert!(
        apply(&mut s, &learner(4, None)).is_err(),
        "one learner at a time"
    );
    assert_eq!(s.epoch(), before.epoch() + 1);
    assert!(s.remove_node(4).is_err(), "node 4 hosts the learner");
    apply(
        &mut s,
        &Move::RemoveReplica {
            partition: 0,
            node: 4,
        },
    )
    .unwrap();
    assert_eq!(s.placement(0).unwrap().replaces, None, "the move is over");
    s.remove_node(4).unwrap();
}

#[test]
fn repairs_go_first_to_the_partitions_one_failure_from_losing_their_majority() {
    // Replication factor 5 on 8 nodes: partition 1 lost two voters (three serve: one more
    // failure and it takes no write), partition 0 lost one, partition 2 none. With room for one
    // move at a time, the first learner is partition 1's, though 0 comes first in id order; in
    // the end both have five voters on Up nodes.
    let nodes: Vec<(NodeId, &str)> = (1..=8).map(|i| (i, "z")).collect();
    let mut s = cluster(3, 5, &nodes);
    let placed = |voters: Vec<NodeId>| Placement {
        leader: Some(voters[0]),
        voters,
        learner: None,
        replaces: None,
    };
    s.set_placement(0, placed(vec![1, 2, 3, 4, 6])).unwrap();
    s.set_placement(1, placed(vec![1, 2, 3, 4, 5])).unwrap();
    s.set_placement(2, placed(vec![1, 2, 3, 7, 8])).unwrap();
    s.set_health(5, Health::Down).unwrap();
    s.set_health(4, Health::Down).unwrap();
    let limits = Limits {
        moves_in_flight_max: 1,
        balance: false,
        ..Limits::default()
    };
    let first = plan(&s, &limits);
    assert!(
        matches!(first[..], [Move::AddLearner { partition: 1, .. }]),
        "{first:?}"
    );
    settle(&mut s, &limits);
    for p in s.placements() {
        assert!(p.voters.iter().all(|&v| v != 4 && v != 5), "{p:?}");
        assert_eq!(p.voters.len(), 5);
    }
}
