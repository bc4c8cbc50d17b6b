//! Embedded mode: a one-replica meta service running inside another program's glommio
//! executor (as keel-node runs it when started without --meta), beside that program's own
//! tasks, reached through the client library.

mod common;

use std::time::Duration;

use common::*;
use keel_meta::client::{NodeSession, RoutingCache};
use keel_meta::embedded;
use keel_meta::proto::NodeCommand;

#[test]
fn an_embedded_meta_service_serves_a_single_node() {
    let dir = TempDir::new("embedded");
    let listen = addr();
    let cfg = embedded::config(listen.clone(), dir.path("meta.data"), 16, 1);
    let (tx, rx) = std::sync::mpsc::channel();
    // The host program: an executor with a task of its own, and the meta service spawned on it.
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let meta = embedded::prepare(cfg).expect("starts").run();
            glommio::spawn_local(async move {
                let e = meta.await;
                panic!("the embedded meta service stopped: {e}");
            })
            .detach();
            let mut ticks = 0u64;
            loop {
                glommio::timer::sleep(Duration::from_millis(10)).await;
                ticks += 1;
                if tx.send(ticks).is_err() {
                    return;
                }
            }
        })
        .unwrap();
    let addrs = vec![listen.clone()];
    wait_ready(&addrs);
    // A second one on the same data file is refused: the lock is held.
    let twice = embedded::prepare(embedded::config(addr(), dir.path("meta.data"), 16, 1));
    assert!(twice.err().unwrap().contains("in use"));

    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let reg = registration(1, "local", &peer.local_addr().unwrap().to_string(), 16);
    let mut session = NodeSession::new(client(&addrs), reg);
    session.register().unwrap();
    let mut created = Vec::new();
    for _ in 0..200 {
        let beat = session.heartbeat(Default::default()).unwrap();
        for c in beat.commands {
            if let NodeCommand::Create {
                partition,
                voters,
                campaign,
            } = c
            {
                assert_eq!(voters, vec![1]);
                assert!(campaign);
                created.push(partition);
            }
        }
        if !created.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    created.sort_unstable();
    created.dedup();
    assert_eq!(
        created,
        (0..16).collect::<Vec<_>>(),
        "every partition on the one node"
    );
    let mut cache = RoutingCache::default();
    assert!(cache.update(client(&addrs).routing(0).unwrap().unwrap()));
    assert_eq!(cache.table().unwrap().partitions, 16);
    assert_eq!(cache.table().unwrap().replication_factor, 1);
    // The heartbeat thread of the library: the node reports the partitions it now leads, and
    // the table the thread keeps shows them led by it.
    let facts = move || keel_meta::proto::NodeReport {
        partitions: (0..16)
            .map(|p| keel_meta::proto::PartitionFact {
                partition: p,
                role: keel_meta::proto::Role::Leader,
                term: 2,
                applied_index: 1,
                keys: 0,
                bytes: 0,
                voters: vec![1],
                learners: vec![],
            })
            .collect(),
        ..Default::default()
    };
    let (btx, brx) = std::sync::mpsc::channel();
    let hb = keel_meta::client::spawn_heartbeats(
        session,
        facts,
        move |beat, cache| {
            let _ = btx.send((beat.commands.len(), cache.epoch()));
        },
        |e| panic!("heartbeat failed: {e}"),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, epoch) = brx.recv_timeout(Duration::from_secs(5)).unwrap();
        let t = hb.cache.lock().unwrap().table();
        if t.is_some_and(|t| t.epoch == epoch && (0..16).all(|p| t.leader_of(p).is_some())) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the table never showed the leaders"
        );
    }
    hb.stop();

    // The host's own task kept running all along.
    std::thread::sleep(Duration::from_millis(50));
    let last = rx.try_iter().last().expect("ticks");
    assert!(last > 1, "{last}");
    drop(rx);
    let _ = ex; // the executor thread ends with the test process
}
