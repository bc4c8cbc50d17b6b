//! The keel-meta binary end to end: real processes, real TCP on loopback, pretend nodes
//! speaking the node protocol through the client library (tests/common).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use keel_meta::client::ClientError;
use keel_meta::placement::Health;
use keel_meta::proto::Status;

fn counts(s: &Status) -> BTreeMap<u64, (u32, u32)> {
    s.nodes
        .iter()
        .map(|n| (n.id, (n.replicas, n.leaders)))
        .collect()
}

fn assert_within(s: &Status, ids: &[u64], replicas: (u32, u32), leaders: (u32, u32)) {
    for n in s.nodes.iter().filter(|n| ids.contains(&n.id)) {
        assert!(
            (replicas.0..=replicas.1).contains(&n.replicas),
            "node {} holds {} replicas, want {}..={}: {:?}",
            n.id,
            n.replicas,
            replicas.0,
            replicas.1,
            counts(s)
        );
        assert!(
            (leaders.0..=leaders.1).contains(&n.leaders),
            "node {} leads {}, want {}..={}: {:?}",
            n.id,
            n.leaders,
            leaders.0,
            leaders.1,
            counts(s)
        );
    }
}

/// The pretend Raft groups hold exactly the replicas and leaders the meta service placed.
fn assert_groups_match(c: &FakeCluster, routing: &keel_meta::proto::RoutingTable) {
    for (p, pl) in routing.placements.iter().enumerate() {
        let g = &c.groups[&(p as u32)];
        let mut a = g.voters.clone();
        let mut b = pl.voters.clone();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "partition {p}");
        assert_eq!(
            g.learners,
            pl.learner.into_iter().collect::<Vec<_>>(),
            "partition {p}"
        );
        assert_eq!(g.leader, pl.leader, "partition {p}");
    }
}

fn one_replica(dir: &TempDir) -> Meta {
    let a = addr();
    Meta::start(
        &a,
        &dir.path("meta.data"),
        &[
            "--partitions",
            "64",
            "--replicas",
            "3",
            "--moves-in-flight-max",
            "8",
        ],
    )
}

#[test]
fn four_nodes_in_two_zones_then_a_fifth_then_drain_and_remove() {
    let dir = TempDir::new("place");
    let meta = one_replica(&dir);
    let addrs = vec![meta.addr.clone()];
    wait_ready(&addrs);
    let mut c = FakeCluster::new(&addrs, 64);
    c.moves_max = Some(8);
    for (id, zone) in [(1, "a"), (2, "a"), (3, "b"), (4, "b")] {
        c.add(id, zone).unwrap();
    }
    let s = c.settle();
    let routing = client(&addrs).routing(0).unwrap().expect("a table");
    assert_eq!(routing.placements.len(), 64);
    for (p, pl) in routing.placements.iter().enumerate() {
        assert_eq!(pl.voters.len(), 3, "partition {p}: {pl:?}");
        assert!(pl.leader.is_some(), "partition {p} has a leader");
    }
    for (p, z) in zones_of(&s, &routing.placements).iter().enumerate() {
        assert_eq!(z.len(), 2, "partition {p} spans both zones");
    }
    // 192 replicas on 4 nodes: 48 each; 64 leaders: 16 each.
    assert_within(&s, &[1, 2, 3, 4], (47, 49), (15, 17));
    assert_eq!(s.under_replicated, 0);
    assert_eq!(s.leaderless, 0);

    // A fifth node: moves are handed out through heartbeats until 192 / 5 = 38.4 each.
    c.add(5, "a").unwrap();
    let s = c.settle();
    assert_within(&s, &[1, 2, 3, 4, 5], (38, 39), (12, 13));
    let routing = client(&addrs).routing(0).unwrap().unwrap();
    for (p, z) in zones_of(&s, &routing.placements).iter().enumerate() {
        assert_eq!(z.len(), 2, "partition {p} still spans both zones");
    }
    assert_groups_match(&c, &routing);

    // Remove is refused while the node hosts replicas; an unknown id is named.
    let (ok, _, err) = ctl(&addrs, &["remove", "5"]);
    assert!(!ok && err.contains("node 5 still hosts"), "{err}");
    let (ok, _, err) = ctl(&addrs, &["drain", "99"]);
    assert!(!ok && err.contains("unknown node id 99"), "{err}");

    // Drain node 5: everything it held moves off it.
    let (ok, out, err) = ctl(&addrs, &["drain", "5"]);
    assert!(ok, "{out}{err}");
    let s = c.settle();
    let n5 = s.nodes.iter().find(|n| n.id == 5).unwrap();
    assert_eq!(n5.health, Health::Draining);
    assert_eq!((n5.replicas, n5.leaders), (0, 0), "{:?}", counts(&s));
    assert_within(&s, &[1, 2, 3, 4], (47, 49), (15, 17));
    // Undrain and drain again: it is Up (and empty) in between.
    let (ok, out, err) = ctl(&addrs, &["undrain", "5"]);
    assert!(ok && out.contains("no longer draining"), "{out}{err}");
    let s = client(&addrs).status().unwrap();
    assert_eq!(
        s.nodes.iter().find(|n| n.id == 5).unwrap().health,
        Health::Up
    );
    let (ok, out, err) = ctl(&addrs, &["drain", "5"]);
    assert!(ok, "{out}{err}");
    c.settle();
    assert_groups_match(&c, &client(&addrs).routing(0).unwrap().unwrap());
    let (ok, out, err) = ctl(&addrs, &["remove", "5"]);
    assert!(ok, "{out}{err}");
    let s = client(&addrs).status().unwrap();
    assert!(s.nodes.iter().all(|n| n.id != 5));
    // The removed node's heartbeat is answered "not registered".
    let hb = keel_meta::proto::Heartbeat {
        node: 5,
        epoch: 0,
        report: Default::default(),
    };
    let e = client(&addrs).heartbeat(&hb).unwrap_err();
    assert!(matches!(e, ClientError::NotRegistered), "{e}");
    c.nodes.remove(&5);
}

#[test]
fn ctl_status_table_and_json() {
    let dir = TempDir::new("ctl");
    let meta = one_replica(&dir);
    let addrs = vec![meta.addr.clone()];
    wait_ready(&addrs);
    let mut c = FakeCluster::new(&addrs, 64);
    for (id, zone) in [(1, "east"), (2, "west"), (3, "west")] {
        c.add(id, zone).unwrap();
    }
    c.settle();
    let (ok, out, err) = ctl(&addrs, &["status"]);
    assert!(ok, "{err}");
    for want in [
        "meta: 1=",
        "(leader)",
        "64 partitions, replication factor 3",
        "NODE  ZONE",
        "HEALTH",
        "REPLICAS",
        "LEADERS",
        "zones: east: 1 nodes (1 up), west: 2 nodes (2 up)",
        "0 moves in flight",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
    let line2 = out
        .lines()
        .find(|l| l.starts_with("2 "))
        .expect("a row for node 2");
    assert!(line2.contains("west") && line2.contains("up"), "{line2}");
    assert!(
        line2.contains("64"),
        "node 2 holds all 64 partitions: {line2}"
    );

    let (ok, out, err) = ctl(&addrs, &["status", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["partitions"], 64);
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(v["nodes"][0]["replicas"], 64);
    assert_eq!(v["moves_in_flight"].as_array().unwrap().len(), 0);

    let (ok, out, _) = ctl(&addrs, &["--json", "balance", "off"]);
    assert!(ok && out.contains("\"ok\":true"), "{out}");
    let s = client(&addrs).status().unwrap();
    assert!(!s.balance);
    let (ok, out, _) = ctl(&addrs, &["balance", "on"]);
    assert!(ok && out.contains("balance on"), "{out}");

    // A meta service nobody listens at: a clean error, not a hang.
    let (ok, _, err) = ctl(&[addr()], &["status"]);
    assert!(!ok && err.contains("no meta leader reachable"), "{err}");
    let (ok, _, err) = ctl(&["nonsense".to_string()], &["status"]);
    assert!(!ok && err.contains("bad --meta address nonsense"), "{err}");
}

#[test]
fn registrations_refused_with_the_reason() {
    let dir = TempDir::new("refuse");
    let meta = one_replica(&dir);
    let addrs = vec![meta.addr.clone()];
    wait_ready(&addrs);
    let mut c = FakeCluster::new(&addrs, 64);
    c.add(1, "a").unwrap();
    c.round();

    // Another process claims live node 1's id.
    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let paddr = peer.local_addr().unwrap().to_string();
    let mut r = registration(1, "a", &paddr, 64);
    let e = client(&addrs).register(&r).unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(m) if m.contains("node id 1 is taken by a live node")),
        "{e}"
    );
    // The same node registering again (a restart) is accepted.
    let same = c.nodes[&1].session.registration.clone();
    client(&addrs).register(&same).unwrap();

    r.node = 2;
    r.partitions = 32;
    let e = client(&addrs).register(&r).unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(m) if m.contains("partition count mismatch")
            && m.contains("32") && m.contains("64")),
        "{e}"
    );

    r.partitions = 64;
    r.peer_addr = addr(); // nothing listens there
    let e = client(&addrs).register(&r).unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(m) if m.contains("unreachable") && m.contains(&r.peer_addr)),
        "{e}"
    );
    r.peer_addr = paddr.clone();
    r.zone = "z".repeat(300);
    let e = client(&addrs).register(&r).unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(m) if m.contains("the zone is 300 bytes")),
        "{e}"
    );
    let s = client(&addrs).status().unwrap();
    assert_eq!(s.nodes.len(), 1, "nothing refused was registered");
}

#[test]
fn a_silent_node_is_marked_down_and_back_up_when_it_heartbeats() {
    let dir = TempDir::new("down");
    let a = addr();
    let meta = Meta::start(
        &a,
        &dir.path("meta.data"),
        &[
            "--partitions",
            "8",
            "--replicas",
            "2",
            "--failure-timeout",
            "600ms",
        ],
    );
    let addrs = vec![meta.addr.clone()];
    wait_ready(&addrs);
    let mut c = FakeCluster::new(&addrs, 8);
    for (id, zone) in [(1, "a"), (2, "b"), (3, "c")] {
        c.add(id, zone).unwrap();
    }
    c.settle();
    c.nodes.get_mut(&3).unwrap().alive = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        c.round();
        let s = client(&addrs).status().unwrap();
        let n3 = s.nodes.iter().find(|n| n.id == 3).unwrap();
        if n3.health == Health::Down {
            break;
        }
        assert!(Instant::now() < deadline, "node 3 never marked down");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.nodes.get_mut(&3).unwrap().alive = true;
    c.round();
    let s = client(&addrs).status().unwrap();
    assert_eq!(
        s.nodes.iter().find(|n| n.id == 3).unwrap().health,
        Health::Up
    );
}

#[test]
fn a_node_cut_off_from_the_meta_service_only_stays_up_and_a_failed_device_is_down_at_once() {
    // Node 3's heartbeats stop reaching the meta service, but its peers report hearing it: it
    // stays Up past several failure timeouts, and nothing is rebuilt. Node 4 reports a device
    // failure: it is Down with the next heartbeat (far sooner than the failure timeout) and its
    // replicas are rebuilt on the others.
    let dir = TempDir::new("cutoff");
    let a = addr();
    let meta = Meta::start(
        &a,
        &dir.path("meta.data"),
        &[
            "--partitions",
            "16",
            "--replicas",
            "3",
            "--failure-timeout",
            "600ms",
        ],
    );
    let addrs = vec![meta.addr.clone()];
    wait_ready(&addrs);
    let mut c = FakeCluster::new(&addrs, 16);
    for (id, zone) in [(1, "a"), (2, "b"), (3, "c"), (4, "c")] {
        c.add(id, zone).unwrap();
    }
    c.settle();
    c.nodes.get_mut(&3).unwrap().cut_off = true;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        c.round();
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = client(&addrs).status().unwrap();
    let n3 = s.nodes.iter().find(|n| n.id == 3).unwrap();
    assert_eq!(n3.health, Health::Up, "{n3:?}");
    assert!(n3.last_heartbeat_ms.unwrap() >= 2500, "{n3:?}");
    assert!(n3.peers_heard_ms.unwrap() < 600, "{n3:?}");
    assert_eq!((s.under_replicated, s.repairs_in_flight), (0, 0), "{s:?}");
    assert!(s.moves_in_flight.is_empty(), "{:?}", s.moves_in_flight);
    let (ok, out, _) = ctl(&addrs, &["status"]);
    assert!(ok && out.contains("ms ago; peers "), "{out}");
    c.nodes.get_mut(&3).unwrap().cut_off = false;
    c.round();

    let failed_at = Instant::now();
    c.nodes.get_mut(&4).unwrap().failure =
        Some("raftlog: write at 8192: Input/output error".into());
    c.round();
    let s = client(&addrs).status().unwrap();
    let n4 = s.nodes.iter().find(|n| n.id == 4).unwrap();
    assert_eq!(n4.health, Health::Down, "{n4:?}");
    assert!(failed_at.elapsed() < Duration::from_millis(600));
    assert!(n4
        .failure
        .as_deref()
        .unwrap()
        .contains("Input/output error"));
    let (ok, out, _) = ctl(&addrs, &["status"]);
    assert!(
        ok && out.contains("device failures:\n  node 4: raftlog: write at 8192"),
        "{out}"
    );
    // keel-node exits once it has said so; its replicas are rebuilt on the others.
    c.kill(4);
    let s = c.settle();
    let n4 = s.nodes.iter().find(|n| n.id == 4).unwrap();
    assert_eq!((n4.health, n4.replicas), (Health::Down, 0), "{n4:?}");
    assert_eq!((s.under_replicated, s.without_majority), (0, 0), "{s:?}");
    assert_eq!(s.nodes_up, 3);
}

#[test]
fn sigkill_of_a_single_replica_keeps_all_state() {
    let dir = TempDir::new("kill1");
    let mut meta = one_replica(&dir);
    let addrs = vec![meta.addr.clone()];
    wait_ready(&addrs);
    let mut c = FakeCluster::new(&addrs, 64);
    for (id, zone) in [(1, "a"), (2, "a"), (3, "b"), (4, "b")] {
        c.add(id, zone).unwrap();
    }
    c.settle();
    let (ok, _, err) = ctl(&addrs, &["balance", "off"]);
    assert!(ok, "{err}");
    let before = client(&addrs).routing(0).unwrap().unwrap();
    let s_before = client(&addrs).status().unwrap();
    meta.kill();
    meta.restart();
    wait_ready(&addrs);
    let after = client(&addrs).routing(0).unwrap().unwrap();
    assert_eq!(
        before, after,
        "nodes, placement, leaders and epoch survive SIGKILL"
    );
    let s_after = client(&addrs).status().unwrap();
    assert!(!s_after.balance, "the balance switch survives");
    assert_eq!(counts(&s_before), counts(&s_after));
    // It goes on serving: heartbeats are answered, nothing moves.
    assert_eq!(c.round(), 0);
    // And again, right after a write (a drain acknowledged just before the kill survives).
    let (ok, _, err) = ctl(&addrs, &["drain", "4"]);
    assert!(ok, "{err}");
    meta.kill();
    meta.restart();
    wait_ready(&addrs);
    let s = client(&addrs).status().unwrap();
    assert_eq!(
        s.nodes.iter().find(|n| n.id == 4).unwrap().health,
        Health::Draining
    );
}

#[test]
fn three_replicas_lose_their_leader_and_keep_placing() {
    let dir = TempDir::new("three");
    let addrs: Vec<String> = (0..3).map(|_| addr()).collect();
    let peers = format!("1={},2={},3={}", addrs[0], addrs[1], addrs[2]);
    let mut metas: Vec<Meta> = (0..3)
        .map(|i| {
            let id = (i + 1).to_string();
            Meta::start(
                &addrs[i],
                &dir.path(&format!("meta{}.data", i + 1)),
                &[
                    "--id",
                    &id,
                    "--peers",
                    &peers,
                    "--partitions",
                    "64",
                    "--replicas",
                    "3",
                ],
            )
        })
        .collect();
    let s = wait_ready(&addrs);
    assert_eq!(s.meta_replicas.len(), 3);
    let mut c = FakeCluster::new(&addrs, 64);
    for (id, zone) in [(1, "a"), (2, "a"), (3, "b"), (4, "b")] {
        c.add(id, zone).unwrap();
    }
    let s = c.settle();
    assert_within(&s, &[1, 2, 3, 4], (47, 49), (15, 17));
    let leader = s.meta_replicas.iter().find(|r| r.leader).expect("a leader");
    let li = addrs.iter().position(|a| *a == leader.addr).unwrap();
    metas[li].kill();

    // The survivors elect a leader and go on: a registration, heartbeats, moves.
    c.add(5, "a").unwrap();
    let s = c.settle();
    assert_within(&s, &[1, 2, 3, 4, 5], (38, 39), (12, 13));
    let new_leader = s.meta_replicas.iter().find(|r| r.leader).expect("a leader");
    assert_ne!(new_leader.addr, addrs[li]);
    // A client that knows only a follower is redirected to the leader.
    let follower = (0..3)
        .find(|&i| i != li && addrs[i] != new_leader.addr)
        .unwrap();
    let mut only = client(std::slice::from_ref(&addrs[follower]));
    assert_eq!(only.status().unwrap().epoch, s.epoch);
    assert_eq!(only.leader(), Some(new_leader.addr.as_str()));

    // The killed replica comes back; then the new leader is killed too: the two left (one of
    // them the restarted one, which must have caught up to vote and commit) keep the state.
    metas[li].restart();
    let want = client(&addrs).routing(0).unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !metas[li].log().contains("accepting on") {
        assert!(
            Instant::now() < deadline,
            "the restarted replica never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    let ni = addrs.iter().position(|a| *a == new_leader.addr).unwrap();
    metas[ni].kill();
    let s = wait_ready(&addrs);
    assert!(s.epoch >= want.epoch, "{} < {}", s.epoch, want.epoch);
    assert_eq!(s.nodes.len(), 5);
    let after = client(&addrs).routing(0).unwrap().unwrap();
    assert_eq!(after.placements, want.placements);
    c.round();
}

/// Replica x misses 2,600 entries (the others compact past all it has), then comes back.
/// (With its data file, as Raft requires: a replica that lost its file would come back having
/// forgotten its votes and what it acknowledged, which raft-rs refuses with a panic.)
#[test]
fn a_replica_behind_the_compacted_log_catches_up_from_a_snapshot() {
    let dir = TempDir::new("snap");
    let addrs: Vec<String> = (0..3).map(|_| addr()).collect();
    let peers = format!("1={},2={},3={}", addrs[0], addrs[1], addrs[2]);
    let mut metas: Vec<Meta> = (0..3)
        .map(|i| {
            let id = (i + 1).to_string();
            Meta::start(
                &addrs[i],
                &dir.path(&format!("meta{}.data", i + 1)),
                &[
                    "--id",
                    &id,
                    "--peers",
                    &peers,
                    "--partitions",
                    "8",
                    "--replicas",
                    "2",
                ],
            )
        })
        .collect();
    let s = wait_ready(&addrs);
    let leader = |s: &Status| {
        let a = &s.meta_replicas.iter().find(|r| r.leader).unwrap().addr;
        addrs.iter().position(|x| x == a).unwrap()
    };
    let l = leader(&s);
    let x = (l + 1) % 3; // the one that falls behind
    let y = (l + 2) % 3;
    let mut c = FakeCluster::new(&addrs, 8);
    c.add(1, "a").unwrap();
    metas[x].kill();
    // Enough entries that the others checkpoint and compact past everything x has.
    let mut cl = client(&addrs);
    for i in 0..2600 {
        cl.set_balance(i % 2 == 0).unwrap();
    }
    cl.set_balance(true).unwrap();
    c.add(2, "b").unwrap();
    // The leader checkpoints within 2 s and compacts to 1024 entries behind it.
    std::thread::sleep(Duration::from_millis(2500));
    cl.set_balance(true).unwrap();
    metas[x].restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !metas[x].log().contains("installed a snapshot") {
        assert!(
            Instant::now() < deadline,
            "replica {} never got a snapshot:\n{}",
            x + 1,
            metas[x].log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Without y, every commit needs x: a drain commits; then l goes too, and x with the
    // restarted y (which missed the drain) must serve everything.
    metas[y].kill();
    let (ok, _, err) = ctl(&addrs, &["drain", "2"]);
    assert!(ok, "{err}");
    metas[l].kill();
    metas[y].restart();
    let s = wait_ready(&addrs);
    let n2 = s.nodes.iter().find(|n| n.id == 2).expect("node 2 known");
    assert_eq!(n2.health, Health::Draining, "{s:?}");
    assert_eq!(s.nodes.len(), 2);
}

/// Runs `keel-meta args...` to its exit (bounded): (exit ok, stderr).
fn run_bin(args: &[&str]) -> (bool, String) {
    let mut child = std::process::Command::new(BIN)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status.success(), err);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("keel-meta {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_flags_are_refused_with_a_message_naming_them() {
    let dir = TempDir::new("flags");
    let data = dir.path("m.data").display().to_string();
    let a = addr();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--data", &data], "--listen"),
        (
            vec!["--listen", "nowhere", "--data", &data],
            "--listen nowhere",
        ),
        (
            vec!["--listen", &a, "--data", &data, "--peers", "1=x"],
            "1=x",
        ),
        (
            vec!["--listen", &a, "--data", &data, "--peers", "1=127.0.0.1:1"],
            "they must be the same",
        ),
        (
            vec![
                "--listen",
                &a,
                "--data",
                &data,
                "--id",
                "3",
                "--peers",
                "1=127.0.0.1:1",
            ],
            "does not name this replica's --id 3",
        ),
        (
            vec!["--listen", &a, "--data", &data, "--id", "2"],
            "without --peers",
        ),
        (
            vec!["--listen", &a, "--data", &data, "--partitions", "48"],
            "--partitions 48: must be a power of two",
        ),
        (
            vec!["--listen", &a, "--data", &data, "--replicas", "0"],
            "--replicas 0",
        ),
        (vec!["ctl", "--meta", &a, "drain", "abc"], "abc"),
        (vec!["ctl", "--meta", &a, "balance", "maybe"], "maybe"),
    ];
    for (args, want) in cases {
        let (ok, err) = run_bin(&args);
        assert!(!ok, "{args:?} was accepted");
        assert!(err.contains(want), "{args:?}: {want:?} not in: {err}");
    }

    // A data file belongs to one process, and to one replica id.
    let mut m = Meta::start(&a, &dir.path("m.data"), &[]);
    wait_ready(std::slice::from_ref(&a));
    let (ok, err) = run_bin(&["--listen", &addr(), "--data", &data]);
    assert!(!ok && err.contains("in use"), "{err}");
    m.kill();
    let peers = format!("1={},2={},3={}", addr(), a, addr());
    let (ok, err) = run_bin(&[
        "--listen", &a, "--data", &data, "--id", "2", "--peers", &peers,
    ]);
    assert!(
        !ok && err.contains("belongs to meta replica 1, not --id 2"),
        "{err}"
    );
}

#[test]
fn sigkill_of_all_three_replicas_keeps_all_state() {
    let dir = TempDir::new("kill3");
    let addrs: Vec<String> = (0..3).map(|_| addr()).collect();
    let peers = format!("1={},2={},3={}", addrs[0], addrs[1], addrs[2]);
    let mut metas: Vec<Meta> = (0..3)
        .map(|i| {
            let id = (i + 1).to_string();
            Meta::start(
                &addrs[i],
                &dir.path(&format!("meta{}.data", i + 1)),
                &[
                    "--id",
                    &id,
                    "--peers",
                    &peers,
                    "--partitions",
                    "16",
                    "--replicas",
                    "2",
                ],
            )
        })
        .collect();
    wait_ready(&addrs);
    let mut c = FakeCluster::new(&addrs, 16);
    for (id, zone) in [(1, "a"), (2, "b"), (3, "c")] {
        c.add(id, zone).unwrap();
    }
    c.settle();
    let (ok, _, err) = ctl(&addrs, &["drain", "3"]);
    assert!(ok, "{err}");
    let before = client(&addrs).routing(0).unwrap().unwrap();
    for m in &mut metas {
        m.kill();
    }
    for m in &mut metas {
        m.restart();
    }
    wait_ready(&addrs);
    let after = client(&addrs).routing(0).unwrap().unwrap();
    assert_eq!(before, after, "every acknowledged change survives");
    // The drain goes on under the new leader.
    let s = c.settle();
    let n3 = s.nodes.iter().find(|n| n.id == 3).unwrap();
    assert_eq!((n3.health, n3.replicas), (Health::Draining, 0));
}

#[test]
fn a_replica_that_lost_its_data_file_stops_and_says_so() {
    let dir = TempDir::new("lost");
    let addrs: Vec<String> = (0..3).map(|_| addr()).collect();
    let peers = format!("1={},2={},3={}", addrs[0], addrs[1], addrs[2]);
    let mut metas: Vec<Meta> = (0..3)
        .map(|i| {
            let id = (i + 1).to_string();
            Meta::start(
                &addrs[i],
                &dir.path(&format!("meta{}.data", i + 1)),
                &[
                    "--id",
                    &id,
                    "--peers",
                    &peers,
                    "--partitions",
                    "8",
                    "--replicas",
                    "1",
                ],
            )
        })
        .collect();
    let s = wait_ready(&addrs);
    let l = s.meta_replicas.iter().position(|r| r.leader).unwrap();
    let x = (l + 1) % 3;
    let mut c = FakeCluster::new(&addrs, 8);
    c.add(1, "a").unwrap();
    c.settle();
    metas[x].kill();
    std::fs::remove_file(&metas[x].data).unwrap();
    metas[x].restart();
    let st = metas[x].wait_exit(Duration::from_secs(30));
    assert!(st.is_some_and(|s| !s.success()), "it stopped: {st:?}");
    let log = metas[x].log();
    assert!(log.contains("its data file was lost or replaced"), "{log}");
    // The other two go on.
    c.add(2, "b").unwrap();
    assert_eq!(client(&addrs).status().unwrap().nodes.len(), 2);
}
