use super::*;
use crate::machine::Registration;
use crate::placement::Health;
use crate::proto::PeerHeard;

fn reg(node: NodeId, zone: &str) -> Registration {
    Registration {
        node,
        client_addr: format!("10.0.0.{node}:11211"),
        peer_addr: format!("10.0.0.{node}:7100"),
        zone: zone.into(),
        cores: 4,
        device_bytes: 1 << 30,
        memory_bytes: 1 << 30,
        partitions: 4,
    }
}

fn state(nodes: &[(NodeId, &str)]) -> MetaState {
    let mut s = MetaState::default();
    s.apply(&Command::Bootstrap {
        partitions: 4,
        replication_factor: 2,
    })
    .unwrap();
    for &(n, z) in nodes {
        s.apply(&Command::Register(reg(n, z))).unwrap();
    }
    s
}

fn rep(partitions: Vec<PartitionFact>) -> NodeReport {
    NodeReport {
        partitions,
        ..NodeReport::default()
    }
}

fn fact(
    p: PartitionId,
    role: Role,
    term: u64,
    voters: &[NodeId],
    learners: &[NodeId],
) -> PartitionFact {
    PartitionFact {
        partition: p,
        role,
        term,
        applied_index: 1,
        keys: 0,
        bytes: 0,
        voters: voters.to_vec(),
        learners: learners.to_vec(),
    }
}

/// Hands out and completes every planned move until the planner has nothing left.
fn settle(s: &mut MetaState) {
    for _ in 0..100 {
        let moves = moves_to_start(s, &Limits::default()).start;
        if moves.is_empty() && s.in_flight().is_empty() {
            return;
        }
        s.apply(&Command::StartMoves { moves }).unwrap();
        let all: Vec<Move> = s.in_flight().values().cloned().collect();
        for m in all {
            s.apply(&Command::CompleteMove { m }).unwrap();
        }
    }
    panic!("no convergence");
}

#[test]
fn a_registration_is_refused_when_a_live_node_holds_the_id() {
    let s = state(&[(1, "a")]);
    let t0 = Instant::now();
    let soft = Soft::taking_over(&s, t0);
    let timeout = Duration::from_secs(10);
    let mut other = reg(1, "a");
    other.peer_addr = "10.9.9.9:7100".into();
    let e = check_registration(&s, &soft, &other, t0, timeout).unwrap_err();
    assert!(e.contains("taken by a live node"), "{e}");
    // The same node (same addresses) registering again: its restart.
    check_registration(&s, &soft, &reg(1, "a"), t0, timeout).unwrap();
    // Once silent past the timeout the id is free again.
    check_registration(&s, &soft, &other, t0 + timeout, timeout).unwrap();
    let mut wrong = reg(2, "a");
    wrong.partitions = 8;
    let e = check_registration(&s, &soft, &wrong, t0, timeout).unwrap_err();
    assert!(e.contains("partition count mismatch"), "{e}");
}

#[test]
fn a_leaders_report_completes_the_move_it_shows_done() {
    let mut s = state(&[(1, "a"), (2, "b"), (3, "c")]);
    settle(&mut s);
    let pl = s.cluster().unwrap().placement(0).unwrap().clone();
    let leader = pl.leader.unwrap();
    let spare = (1..=3).find(|n| !pl.hosts(*n)).unwrap();
    let add = Move::AddLearner {
        partition: 0,
        node: spare,
        replaces: None,
    };
    s.apply(&Command::StartMoves {
        moves: vec![add.clone()],
    })
    .unwrap();
    let mut soft = Soft::taking_over(&s, Instant::now());
    // A follower's report proves nothing; the leader's without the learner neither.
    let follower = pl.voters.iter().copied().find(|&v| v != leader).unwrap();
    let f = fact(0, Role::Follower, 3, &pl.voters, &[spare]);
    assert!(on_heartbeat(&s, &mut soft, follower, rep(vec![f]), Instant::now()).is_empty());
    let f = fact(0, Role::Leader, 3, &pl.voters, &[]);
    assert!(on_heartbeat(&s, &mut soft, leader, rep(vec![f]), Instant::now()).is_empty());
    let f = fact(0, Role::Leader, 3, &pl.voters, &[spare]);
    let out = on_heartbeat(&s, &mut soft, leader, rep(vec![f.clone()]), Instant::now());
    assert!(
        out.is_empty(),
        "the learner has not reported its replica yet: {out:?}"
    );
    let mine = fact(0, Role::Learner, 3, &pl.voters, &[spare]);
    assert!(on_heartbeat(&s, &mut soft, spare, rep(vec![mine]), Instant::now()).is_empty());
    let out = on_heartbeat(&s, &mut soft, leader, rep(vec![f]), Instant::now());
    assert_eq!(out, vec![Command::CompleteMove { m: add }]);
}

#[test]
fn a_new_leader_is_recorded_and_a_stale_one_is_not() {
    let mut s = state(&[(1, "a"), (2, "b")]);
    settle(&mut s);
    let pl = s.cluster().unwrap().placement(1).unwrap().clone();
    let old = pl.leader.unwrap();
    let new = pl.voters.iter().copied().find(|&v| v != old).unwrap();
    let mut soft = Soft::default();
    let now = Instant::now();
    let out = on_heartbeat(
        &s,
        &mut soft,
        new,
        rep(vec![fact(1, Role::Leader, 5, &pl.voters, &[])]),
        now,
    );
    assert_eq!(
        out,
        vec![Command::SetLeader {
            partition: 1,
            leader: new
        }]
    );
    for c in &out {
        s.apply(c).unwrap();
    }
    // The deposed leader still thinks it leads, in an older term: ignored.
    let out = on_heartbeat(
        &s,
        &mut soft,
        old,
        rep(vec![fact(1, Role::Leader, 4, &pl.voters, &[])]),
        now,
    );
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn each_node_is_told_its_part_of_the_moves() {
    let mut s = state(&[(1, "a"), (2, "b"), (3, "c")]);
    let create = Move::Create {
        partition: 0,
        voters: vec![2, 1],
    };
    s.apply(&Command::StartMoves {
        moves: vec![create],
    })
    .unwrap();
    assert_eq!(
        node_commands(&s, 2, &[]),
        vec![NodeCommand::Create {
            partition: 0,
            voters: vec![2, 1],
            campaign: true
        }]
    );
    assert_eq!(
        node_commands(&s, 1, &[]),
        vec![NodeCommand::Create {
            partition: 0,
            voters: vec![2, 1],
            campaign: false
        }]
    );
    assert!(node_commands(&s, 3, &[]).is_empty());
    let m = s.in_flight()[&0].clone();
    s.apply(&Command::CompleteMove { m }).unwrap();
    let elsewhere = Move::Create {
        partition: 1,
        voters: vec![2, 3],
    };
    s.apply(&Command::StartMoves {
        moves: vec![elsewhere.clone()],
    })
    .unwrap();
    s.apply(&Command::CompleteMove { m: elsewhere }).unwrap();
    s.apply(&Command::StartMoves {
        moves: vec![Move::AddLearner {
            partition: 0,
            node: 3,
            replaces: Some(1),
        }],
    })
    .unwrap();
    // The leader proposes; the new node makes an empty replica to be caught up.
    assert_eq!(
        node_commands(&s, 2, &[0]),
        vec![NodeCommand::AddLearner {
            partition: 0,
            node: 3
        }]
    );
    assert_eq!(
        node_commands(&s, 3, &[]),
        vec![NodeCommand::Create {
            partition: 0,
            voters: vec![],
            campaign: false
        }]
    );
    // A replica the placement has elsewhere is dropped; one on its way is not, nor one of a
    // partition placed nowhere (3: it may be the only copy, and is adopted).
    assert_eq!(
        node_commands(&s, 1, &[0, 1, 3]),
        vec![NodeCommand::DropReplica { partition: 1 }]
    );
    assert_eq!(
        node_commands(&s, 3, &[0]).len(),
        1,
        "no drop of the coming learner"
    );
}

#[test]
fn moves_in_flight_count_against_the_limit_and_get_no_second_move() {
    let mut s = MetaState::default();
    s.apply(&Command::Bootstrap {
        partitions: 64,
        replication_factor: 2,
    })
    .unwrap();
    for (n, z) in [(1, "a"), (2, "b")] {
        let mut r = reg(n, z);
        r.partitions = 64;
        s.apply(&Command::Register(r)).unwrap();
    }
    settle(&mut s);
    let mut r = reg(3, "c");
    r.partitions = 64;
    s.apply(&Command::Register(r)).unwrap();
    let limits = Limits {
        moves_in_flight_max: 4,
        ..Limits::default()
    };
    let first = moves_to_start(&s, &limits).start;
    let learners = first
        .iter()
        .filter(|m| matches!(m, Move::AddLearner { .. }))
        .count();
    assert_eq!(learners, 4, "{first:?}");
    s.apply(&Command::StartMoves {
        moves: first.clone(),
    })
    .unwrap();
    // Nothing done yet: no more learners, and nothing for the partitions already moving.
    let again = moves_to_start(&s, &limits).start;
    assert!(
        again.iter().all(|m| !matches!(m, Move::AddLearner { .. })),
        "{again:?}"
    );
    assert!(again
        .iter()
        .all(|m| !s.in_flight().contains_key(&m.partition())));
    // Balance off: no balancing moves at all.
    s.apply(&Command::SetBalance { on: false }).unwrap();
    let all: Vec<Move> = s.in_flight().values().cloned().collect();
    for p in all.iter().map(|m| m.partition()) {
        s.apply(&Command::AbortMove { partition: p }).unwrap();
    }
    assert_eq!(moves_to_start(&s, &limits), Round::default());
}

#[test]
fn silent_nodes_are_marked_down_after_the_timeout_and_stuck_moves_given_up() {
    let mut s = state(&[(1, "a"), (2, "b")]);
    let t0 = Instant::now();
    let mut soft = Soft::taking_over(&s, t0);
    let timeout = Duration::from_secs(5);
    assert!(silent_nodes(&s, &soft, t0 + Duration::from_secs(4), timeout).is_empty());
    soft.last_seen.insert(2, t0 + Duration::from_secs(4));
    assert_eq!(
        silent_nodes(&s, &soft, t0 + timeout, timeout),
        vec![Command::SetDown {
            node: 1,
            down: true
        }]
    );
    s.apply(&Command::StartMoves {
        moves: vec![Move::Create {
            partition: 2,
            voters: vec![1, 2],
        }],
    })
    .unwrap();
    let mt = Duration::from_secs(60);
    assert!(stuck_moves(&s, &mut soft, t0, mt).is_empty());
    assert_eq!(
        stuck_moves(&s, &mut soft, t0 + mt, mt),
        vec![Command::AbortMove { partition: 2 }]
    );
}

#[test]
fn a_move_in_flight_that_no_longer_applies_is_given_up() {
    let mut s = state(&[(1, "a"), (2, "b")]);
    settle(&mut s);
    // A promote of a node that is no learner: it can never complete.
    let m = Move::Promote {
        partition: 3,
        node: 2,
    };
    s.apply(&Command::StartMoves {
        moves: vec![m.clone()],
    })
    .unwrap();
    let before = s.image();
    assert!(s.apply(&Command::CompleteMove { m }).is_err());
    assert_eq!(s.image(), before, "refused: nothing changed");
    let round = moves_to_start(&s, &Limits::default());
    assert_eq!(round.stale, vec![3]);
}

#[test]
fn replicas_a_group_has_beyond_its_placement_are_removed_by_its_leader() {
    let mut s = state(&[(1, "a"), (2, "b"), (3, "c")]);
    settle(&mut s);
    let pl = s.cluster().unwrap().placement(2).unwrap().clone();
    let leader = pl.leader.unwrap();
    let spare = (1..=3).find(|n| !pl.hosts(*n)).unwrap();
    // A learner left from a move given up.
    let f = fact(2, Role::Leader, 2, &pl.voters, &[spare]);
    assert_eq!(
        drift_commands(&s, leader, std::slice::from_ref(&f)),
        vec![NodeCommand::RemoveReplica {
            partition: 2,
            node: spare
        }]
    );
    // Not while a move is in flight for the partition (that learner may be the move's), nor
    // from a follower's report.
    s.apply(&Command::StartMoves {
        moves: vec![Move::AddLearner {
            partition: 2,
            node: spare,
            replaces: None,
        }],
    })
    .unwrap();
    assert!(drift_commands(&s, leader, std::slice::from_ref(&f)).is_empty());
    let follower = pl.voters.iter().copied().find(|&v| v != leader).unwrap();
    let f = fact(2, Role::Follower, 2, &pl.voters, &[spare]);
    assert!(drift_commands(&s, follower, &[f]).is_empty());
}

#[test]
fn a_new_partition_is_created_only_once_every_voter_reports_hosting_it() {
    // With replication factor 3 the leader and one more voter are a quorum: the group elects
    // and the leader reports the full configuration while the third voter has not created its
    // replica yet. The move must stay in flight (its Create repeated) until that voter says it
    // hosts the partition.
    let mut s = MetaState::default();
    s.apply(&Command::Bootstrap {
        partitions: 4,
        replication_factor: 3,
    })
    .unwrap();
    for (n, z) in [(1, "a"), (2, "b"), (3, "c")] {
        s.apply(&Command::Register(reg(n, z))).unwrap();
    }
    let create = Move::Create {
        partition: 0,
        voters: vec![1, 2, 3],
    };
    s.apply(&Command::StartMoves {
        moves: vec![create.clone()],
    })
    .unwrap();
    let mut soft = Soft::taking_over(&s, Instant::now());
    let now = Instant::now();
    let f = fact(0, Role::Follower, 2, &[1, 2, 3], &[]);
    assert!(on_heartbeat(&s, &mut soft, 2, rep(vec![f]), now).is_empty());
    let lead = fact(0, Role::Leader, 2, &[1, 2, 3], &[]);
    let out = on_heartbeat(&s, &mut soft, 1, rep(vec![lead.clone()]), now);
    assert!(
        !out.contains(&Command::CompleteMove { m: create.clone() }),
        "node 3 has not reported the partition: {out:?}"
    );
    assert!(node_commands(&s, 3, &[])
        .iter()
        .any(|c| matches!(c, NodeCommand::Create { partition: 0, .. })));
    let f = fact(0, Role::Follower, 2, &[1, 2, 3], &[]);
    assert!(on_heartbeat(&s, &mut soft, 3, rep(vec![f]), now).is_empty());
    let out = on_heartbeat(&s, &mut soft, 1, rep(vec![lead]), now);
    assert!(
        out.contains(&Command::CompleteMove { m: create }),
        "{out:?}"
    );
}

#[test]
fn a_group_placed_nowhere_is_adopted_as_it_is_never_dropped() {
    // A node reports groups the placement lacks (its meta service started again without its
    // state): they may be the only copies. It is told to drop none, and each leader's report
    // has its group adopted, in place of a Create in flight that would make another.
    let mut s = state(&[(1, "a"), (2, "b")]);
    let now = Instant::now();
    let mut soft = Soft::taking_over(&s, now);
    assert!(node_commands(&s, 1, &[0, 1, 2]).is_empty());
    let planned = Move::Create {
        partition: 1,
        voters: vec![2, 1],
    };
    s.apply(&Command::StartMoves {
        moves: vec![planned],
    })
    .unwrap();
    let facts = vec![
        fact(0, Role::Leader, 3, &[1], &[]),
        fact(1, Role::Leader, 3, &[1], &[]),
        // A voter the meta service does not know yet: adopted once it registers.
        fact(2, Role::Leader, 3, &[1, 9], &[]),
    ];
    let out = on_heartbeat(&s, &mut soft, 1, rep(facts), now);
    let adopt = |p| Command::Adopt {
        partition: p,
        voters: vec![1],
        leader: 1,
    };
    assert_eq!(out, vec![adopt(0), adopt(1)]);
    for c in &out {
        s.apply(c).unwrap();
    }
    let cl = s.cluster().unwrap();
    for p in [0, 1] {
        let pl = cl.placement(p).unwrap();
        assert_eq!((pl.voters.clone(), pl.leader), (vec![1], Some(1)));
    }
    assert!(s.in_flight().is_empty(), "the planned Create is replaced");
    // Refused, changing nothing: a partition placed already, an unknown voter.
    let before = s.image();
    assert!(s.apply(&adopt(0)).is_err());
    let unknown = Command::Adopt {
        partition: 2,
        voters: vec![1, 9],
        leader: 1,
    };
    assert!(s.apply(&unknown).unwrap_err().contains('9'));
    assert_eq!(s.image(), before);
}

#[test]
fn a_node_its_peers_hear_is_not_marked_down_and_one_nobody_hears_is() {
    // Node 1 is cut off from the meta service but node 2 hears its Raft traffic; node 3 is
    // heard by nobody. Past the failure timeout only node 3 is marked Down; once node 2 stops
    // hearing node 1 too, node 1 follows a timeout after the last time it was heard.
    let s = state(&[(1, "a"), (2, "b"), (3, "c")]);
    let t0 = Instant::now();
    let timeout = Duration::from_secs(5);
    let mut soft = Soft::taking_over(&s, t0);
    let at = |ms| t0 + Duration::from_millis(ms);
    for ms in (1000..=9000).step_by(1000) {
        let report = NodeReport {
            peers_heard: vec![PeerHeard {
                node: 1,
                ms_ago: 100,
            }],
            ..NodeReport::default()
        };
        assert!(on_heartbeat(&s, &mut soft, 2, report, at(ms)).is_empty());
    }
    let down = |n| Command::SetDown {
        node: n,
        down: true,
    };
    assert_eq!(silent_nodes(&s, &soft, at(9000), timeout), vec![down(3)]);
    // Node 2 goes on heartbeating, having last heard node 1 at 8900 ms.
    for ms in [10_000, 12_000, 14_000] {
        let report = NodeReport {
            peers_heard: vec![PeerHeard {
                node: 1,
                ms_ago: ms - 8900,
            }],
            ..NodeReport::default()
        };
        on_heartbeat(&s, &mut soft, 2, report, at(ms));
    }
    assert_eq!(silent_nodes(&s, &soft, at(13_800), timeout), vec![down(3)]);
    assert_eq!(
        silent_nodes(&s, &soft, at(13_900), timeout),
        vec![down(1), down(3)]
    );
}

#[test]
fn a_device_failure_report_marks_the_node_down_at_once_and_keeps_it_down() {
    let mut s = state(&[(1, "a"), (2, "b")]);
    let now = Instant::now();
    let mut soft = Soft::taking_over(&s, now);
    let failed = || NodeReport {
        failure: Some("raftlog: write failed: No space left on device".into()),
        ..NodeReport::default()
    };
    let out = on_heartbeat(&s, &mut soft, 1, failed(), now);
    assert_eq!(
        out,
        vec![Command::SetDown {
            node: 1,
            down: true
        }]
    );
    for c in &out {
        s.apply(c).unwrap();
    }
    assert!(soft.failures[&1].contains("No space"));
    // Heard, but failed: it stays Down.
    assert!(on_heartbeat(&s, &mut soft, 1, failed(), now).is_empty());
    assert_eq!(s.node(1).unwrap().health(), Health::Down);
    // Restarted on a working device: its next heartbeat brings it back.
    let out = on_heartbeat(&s, &mut soft, 1, NodeReport::default(), now);
    assert_eq!(
        out,
        vec![Command::SetDown {
            node: 1,
            down: false
        }]
    );
    assert!(!soft.failures.contains_key(&1));
}
