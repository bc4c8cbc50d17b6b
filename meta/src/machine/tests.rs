use super::*;

fn reg(node: NodeId, zone: &str) -> Registration {
    Registration {
        node,
        client_addr: format!("10.0.0.{node}:11211"),
        peer_addr: format!("10.0.0.{node}:7100"),
        zone: zone.into(),
        cores: 4,
        device_bytes: 128 << 30,
        memory_bytes: 16 << 30,
        partitions: 8,
    }
}

fn booted() -> MetaState {
    let mut s = MetaState::default();
    s.apply(&Command::Bootstrap {
        partitions: 8,
        replication_factor: 2,
    })
    .unwrap();
    for (n, z) in [(1, "a"), (2, "b"), (3, "c")] {
        s.apply(&Command::Register(reg(n, z))).unwrap();
    }
    s
}

fn create(s: &mut MetaState, p: PartitionId, voters: Vec<NodeId>) {
    let m = Move::Create {
        partition: p,
        voters,
    };
    s.apply(&Command::StartMoves {
        moves: vec![m.clone()],
    })
    .unwrap();
    s.apply(&Command::CompleteMove { m }).unwrap();
}

#[test]
fn nothing_but_bootstrap_is_taken_before_bootstrap() {
    let mut s = MetaState::default();
    let e = s.apply(&Command::Register(reg(1, "a"))).unwrap_err();
    assert!(e.contains("not bootstrapped"), "{e}");
    assert!(s
        .apply(&Command::SetDown {
            node: 1,
            down: true
        })
        .is_err());
    assert_eq!(s.epoch(), 0);
}

#[test]
fn the_first_bootstrap_fixes_the_keyspace() {
    let mut s = booted();
    let again = Command::Bootstrap {
        partitions: 8,
        replication_factor: 2,
    };
    s.apply(&again).unwrap();
    let e = s
        .apply(&Command::Bootstrap {
            partitions: 16,
            replication_factor: 2,
        })
        .unwrap_err();
    assert!(e.contains("already 8 partitions"), "{e}");
    assert_eq!(s.keyspace(), Some((8, 2)));
    let mut fresh = MetaState::default();
    for bad in [
        (0, 3),
        (3, 3),
        (META_PARTITIONS_MAX * 2, 3),
        (8, 0),
        (8, 99),
    ] {
        let c = Command::Bootstrap {
            partitions: bad.0,
            replication_factor: bad.1,
        };
        assert!(fresh.apply(&c).is_err(), "{bad:?}");
    }
}

#[test]
fn registration_checks_the_partition_count_and_is_idempotent() {
    let mut s = booted();
    let e0 = s.epoch();
    s.apply(&Command::Register(reg(1, "a"))).unwrap();
    assert_eq!(s.epoch(), e0, "the same registration again changes nothing");
    let mut r = reg(4, "a");
    r.partitions = 16;
    let e = s.apply(&Command::Register(r)).unwrap_err();
    assert!(
        e.contains("partition count mismatch") && e.contains("16"),
        "{e}"
    );
    // A node that moved zone and grew keeps its id and replicas.
    create(&mut s, 0, vec![1, 2]);
    let mut r = reg(1, "z");
    r.device_bytes = 1 << 40;
    s.apply(&Command::Register(r)).unwrap();
    let n = s.node(1).unwrap();
    assert_eq!((n.zone.as_str(), n.weight), ("z", 16));
    assert!(s.cluster().unwrap().placement(0).unwrap().hosts(1));
}

#[test]
fn a_node_comes_back_up_when_it_registers_again() {
    let mut s = booted();
    s.apply(&Command::SetDown {
        node: 3,
        down: true,
    })
    .unwrap();
    assert_eq!(s.node(3).unwrap().health(), Health::Down);
    assert_eq!(s.cluster().unwrap().node(3).unwrap().health, Health::Down);
    s.apply(&Command::Register(reg(3, "c"))).unwrap();
    assert_eq!(s.cluster().unwrap().node(3).unwrap().health, Health::Up);
}

#[test]
fn moves_complete_only_when_in_flight_and_bump_the_epoch() {
    let mut s = booted();
    create(&mut s, 1, vec![1, 2]);
    let add = Move::AddLearner {
        partition: 1,
        node: 3,
        replaces: Some(1),
    };
    let e = s
        .apply(&Command::CompleteMove { m: add.clone() })
        .unwrap_err();
    assert!(e.contains("not in flight"), "{e}");
    s.apply(&Command::StartMoves {
        moves: vec![add.clone()],
    })
    .unwrap();
    // A second move for a partition with one in flight is not taken.
    let other = Move::TransferLeader {
        partition: 1,
        from: 1,
        to: 2,
    };
    s.apply(&Command::StartMoves { moves: vec![other] })
        .unwrap();
    assert_eq!(s.in_flight().get(&1), Some(&add));
    let e0 = s.epoch();
    s.apply(&Command::CompleteMove { m: add }).unwrap();
    assert_eq!(s.epoch(), e0 + 1);
    assert!(s.in_flight().is_empty());
    assert_eq!(s.cluster().unwrap().placement(1).unwrap().learner, Some(3));
}

#[test]
fn a_node_going_down_or_draining_aborts_the_moves_that_need_it() {
    let mut s = booted();
    create(&mut s, 0, vec![1, 2]);
    create(&mut s, 1, vec![1, 2]);
    s.apply(&Command::StartMoves {
        moves: vec![
            Move::AddLearner {
                partition: 0,
                node: 3,
                replaces: Some(1),
            },
            Move::TransferLeader {
                partition: 1,
                from: 1,
                to: 2,
            },
        ],
    })
    .unwrap();
    s.apply(&Command::SetDown {
        node: 3,
        down: true,
    })
    .unwrap();
    assert_eq!(s.in_flight().keys().copied().collect::<Vec<_>>(), vec![1]);
    s.apply(&Command::SetDraining {
        node: 2,
        draining: true,
    })
    .unwrap();
    assert!(s.in_flight().is_empty());
    assert_eq!(s.node(2).unwrap().health(), Health::Draining);
}

#[test]
fn remove_is_refused_while_the_node_hosts_a_replica_and_names_unknown_ids() {
    let mut s = booted();
    create(&mut s, 0, vec![1, 2]);
    let e = s.apply(&Command::Remove { node: 1 }).unwrap_err();
    assert!(e.contains("node 1 still hosts 1 replicas"), "{e}");
    s.apply(&Command::Remove { node: 3 }).unwrap();
    assert!(s.node(3).is_none() && s.cluster().unwrap().node(3).is_none());
    let e = s.apply(&Command::Remove { node: 9 }).unwrap_err();
    assert_eq!(e, "unknown node id 9 (registered: 1, 2)");
    let e = s
        .apply(&Command::SetDraining {
            node: 9,
            draining: true,
        })
        .unwrap_err();
    assert!(e.contains("unknown node id 9"), "{e}");
}

#[test]
fn set_leader_takes_only_voters() {
    let mut s = booted();
    create(&mut s, 2, vec![1, 2]);
    s.apply(&Command::SetLeader {
        partition: 2,
        leader: 2,
    })
    .unwrap();
    assert_eq!(s.cluster().unwrap().placement(2).unwrap().leader, Some(2));
    assert!(s
        .apply(&Command::SetLeader {
            partition: 2,
            leader: 3
        })
        .is_err());
}

#[test]
fn the_image_round_trips_and_replay_is_deterministic() {
    let cmds = {
        let mut c = vec![Command::Bootstrap {
            partitions: 8,
            replication_factor: 2,
        }];
        c.extend([(1, "a"), (2, "b"), (3, "c")].map(|(n, z)| Command::Register(reg(n, z))));
        let m = Move::Create {
            partition: 4,
            voters: vec![2, 3],
        };
        c.push(Command::StartMoves {
            moves: vec![m.clone()],
        });
        c.push(Command::CompleteMove { m });
        c.push(Command::StartMoves {
            moves: vec![Move::TransferLeader {
                partition: 4,
                from: 2,
                to: 3,
            }],
        });
        c.push(Command::SetDraining {
            node: 1,
            draining: true,
        });
        c.push(Command::SetBalance { on: false });
        c
    };
    let run = || {
        let mut s = MetaState::default();
        for c in &cmds {
            let entry = Entry {
                version: FORMAT_VERSION,
                proposer: 1,
                seq: 1,
                commands: vec![c.clone()],
            };
            let back = decode_entry(&encode_entry(&entry)).unwrap();
            s.apply(&back.commands[0]).unwrap();
        }
        s
    };
    let (a, b) = (run(), run());
    assert_eq!(a.image(), b.image());
    let restored = decode_image(&encode_image(&a)).unwrap();
    assert_eq!(restored.image(), a.image());
    assert_eq!(restored.cluster(), a.cluster());
    assert!(!restored.balance());
    assert_eq!(restored.in_flight().len(), 1);
}

#[test]
fn damaged_or_newer_encodings_are_refused() {
    let e = Entry {
        version: FORMAT_VERSION + 1,
        proposer: 1,
        seq: 1,
        commands: vec![],
    };
    let err = decode_entry(&encode_entry(&e)).unwrap_err();
    assert!(err.contains("version 3"), "{err}");
    let mut b = encode_image(&booted());
    b.truncate(b.len() - 3);
    assert!(decode_image(&b).is_err());
    // A length prefix claiming more than the limit fails without allocating it.
    let mut huge = encode_entry(&Entry {
        version: FORMAT_VERSION,
        proposer: 1,
        seq: 1,
        commands: vec![],
    });
    let n = huge.len();
    huge[n - 8..].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(decode_entry(&huge).is_err());
}

#[test]
fn a_leader_change_gives_up_the_moves_the_new_leader_cannot_carry_out() {
    let mut s = booted();
    create(&mut s, 0, vec![1, 2]);
    create(&mut s, 1, vec![1, 2]);
    s.apply(&Command::StartMoves {
        moves: vec![
            Move::TransferLeader {
                partition: 0,
                from: 1,
                to: 2,
            },
            Move::RemoveReplica {
                partition: 1,
                node: 2,
            },
        ],
    })
    .unwrap();
    // Elections moved both leaders to node 2: no transfer from node 1 is possible any more,
    // and node 2 cannot remove itself. Both are given up, to be planned again.
    for p in [0, 1] {
        s.apply(&Command::SetLeader {
            partition: p,
            leader: 2,
        })
        .unwrap();
        assert_eq!(s.cluster().unwrap().placement(p).unwrap().leader, Some(2));
    }
    assert!(s.in_flight().is_empty(), "{:?}", s.in_flight());
}

fn table(name: &str) -> TableDef {
    TableDef {
        name: name.into(),
        partitions: 16,
        replication_factor: 2,
        versions_kept: 2,
        mode: crate::tables::TableMode::Bulk,
    }
}

#[test]
fn tables_are_declared_once_checked_and_dropped() {
    let mut s = booted();
    let e0 = s.epoch();
    s.apply(&Command::CreateTable(table("feat"))).unwrap();
    assert_eq!(s.epoch(), e0 + 1, "the routing table shows tables");
    // A retried create is a no-op; another definition under the same name is refused.
    s.apply(&Command::CreateTable(table("feat"))).unwrap();
    assert_eq!(s.epoch(), e0 + 1);
    let other = TableDef {
        partitions: 32,
        ..table("feat")
    };
    let e = s.apply(&Command::CreateTable(other)).unwrap_err();
    assert!(e.contains("table feat already exists"), "{e}");
    let wrong_rf = TableDef {
        replication_factor: 3,
        ..table("other")
    };
    let e = s.apply(&Command::CreateTable(wrong_rf)).unwrap_err();
    assert!(e.contains("the keyspace's replication factor, 2"), "{e}");
    assert_eq!(s.tables().len(), 1);
    let e = s
        .apply(&Command::DropTable {
            name: "nope".into(),
        })
        .unwrap_err();
    assert!(e.contains("no table \"nope\""), "{e}");
    s.apply(&Command::DropTable {
        name: "feat".into(),
    })
    .unwrap();
    assert!(s.tables().is_empty());
    assert_eq!(s.epoch(), e0 + 2);
    let mut fresh = MetaState::default();
    let e = fresh.apply(&Command::CreateTable(table("t"))).unwrap_err();
    assert!(e.contains("not bootstrapped"), "{e}");
}

#[test]
fn tables_survive_the_image_and_a_version_1_image_still_reads() {
    let mut s = booted();
    create(&mut s, 0, vec![1, 2]);
    s.apply(&Command::CreateTable(table("b"))).unwrap();
    s.apply(&Command::CreateTable(table("a"))).unwrap();
    let back = decode_image(&encode_image(&s)).unwrap();
    assert_eq!(back.image(), s.image());
    assert_eq!(
        back.tables().keys().collect::<Vec<_>>(),
        [&"a".to_string(), &"b".to_string()]
    );
    // Version 1 (before tables): the same encoding without the tables field.
    let mut img = s.image();
    img.tables.clear();
    let v2 = {
        use bincode::Options;
        codec(u64::MAX).serialize(&img).unwrap()
    };
    let mut v1 = v2[..v2.len() - 8].to_vec(); // an empty Vec encodes as its u64 length
    v1[0] = 1;
    let old = decode_image(&v1).unwrap();
    assert!(old.tables().is_empty());
    assert_eq!(old.image().placements, s.image().placements);
    assert_eq!(old.epoch(), s.epoch());
    // A version 1 entry (no table commands in it) still applies.
    let e = Entry {
        version: 1,
        proposer: 1,
        seq: 9,
        commands: vec![Command::SetBalance { on: false }],
    };
    assert_eq!(decode_entry(&encode_entry(&e)).unwrap(), e);
}

#[test]
fn loads_switch_versions_keep_the_window_and_rollback_refuses_loads() {
    let mut s = booted();
    s.apply(&Command::CreateTable(table("feat"))).unwrap();
    let start = |s: &mut MetaState, build_id: u64| {
        s.apply(&Command::StartLoad {
            table: "feat".into(),
            build_id,
            source: format!("/builds/{build_id}"),
            records: 10,
        })
    };
    start(&mut s, 11).unwrap();
    // A retried start is a no-op; another load while one is in flight is refused.
    start(&mut s, 11).unwrap();
    let e = start(&mut s, 12).unwrap_err();
    assert!(e.contains("version 1 is still loading"), "{e}");
    assert_eq!(s.tables()["feat"].current, None);
    s.apply(&Command::FinishLoad {
        table: "feat".into(),
        version: 1,
    })
    .unwrap();
    assert_eq!(s.tables()["feat"].current_build(), Some(11));
    for (v, b) in [(2, 12), (3, 13)] {
        start(&mut s, b).unwrap();
        s.apply(&Command::FinishLoad {
            table: "feat".into(),
            version: v,
        })
        .unwrap();
    }
    // Two kept: versions 2 and 3.
    let t = &s.tables()["feat"];
    assert_eq!(t.current, Some(3));
    assert_eq!(
        t.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [2, 3]
    );
    let e = start(&mut s, 13).unwrap_err();
    assert!(e.contains("already version 3"), "{e}");
    let rb = |to| Command::Rollback {
        table: "feat".into(),
        to,
    };
    let e = s.apply(&rb(Some(1))).unwrap_err();
    assert!(
        e.contains("version 1 is not on the nodes (kept: 2, 3)"),
        "{e}"
    );
    s.apply(&rb(None)).unwrap();
    assert_eq!(s.tables()["feat"].current, Some(2));
    let e = start(&mut s, 14).unwrap_err();
    assert!(e.contains("rolled back"), "{e}");
    s.apply(&Command::Unrollback {
        table: "feat".into(),
    })
    .unwrap();
    start(&mut s, 14).unwrap();
    s.apply(&Command::AbortLoad {
        table: "feat".into(),
        version: 4,
    })
    .unwrap();
    assert_eq!(s.tables()["feat"].versions.len(), 2);
    assert_eq!(s.tables()["feat"].current, Some(2));
    // The state image keeps all of it.
    let back = decode_image(&encode_image(&s)).unwrap();
    assert_eq!(back.image(), s.image());
}
