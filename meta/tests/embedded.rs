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
            let meta = embedded::run_embedded(cfg).expect("starts");
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
    let twice = embedded::run_embedded(embedded::config(addr(), dir.path("meta.data"), 16, 1));
    assert!(twice.err().unwrap().contains("in use"));

    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let reg = registration(1, "local", &peer.local_addr().unwrap().to_string(), 16);
    let mut session = NodeSession::new(client(&addrs), reg);
    session.register().unwrap();
    let mut created = Vec::new();
    for _ in 0..200 {
        let beat = session.heartbeat(Vec::new()).unwrap();
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
    // The host's own task kept running all along.
    std::thread::sleep(Duration::from_millis(50));
    let last = rx.try_iter().last().expect("ticks");
    assert!(last > 1, "{last}");
    drop(rx);
    let _ = ex; // the executor thread ends with the test process
}
