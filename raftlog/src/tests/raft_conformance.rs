//! raft-rs drives GroupStorage as it would in the node: campaign, propose, persist each Ready
//! through the log with advance_append_async + on_persist_ready, restart from what was durable.

use std::rc::Rc;

use keel_nvme::testing::SimDevice;
use raft::eraftpb::Entry;
use raft::RawNode;

use super::*;

type Node = RawNode<crate::GroupStorage<SimDevice>>;

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn raft_config() -> raft::Config {
    raft::Config {
        id: 1,
        election_tick: 10,
        heartbeat_tick: 3,
        ..Default::default()
    }
}

/// Handles one Ready the way the node does; returns the entries it committed.
async fn handle_ready(node: &mut Node, log: &RaftLog<SimDevice>) -> Vec<Entry> {
    let mut committed = Vec::new();
    if !node.has_ready() {
        return committed;
    }
    let mut ready = node.ready();
    assert!(
        ready.snapshot().is_empty(),
        "a single voter never gets a snapshot"
    );
    committed.extend(ready.take_committed_entries());
    log.append(1, ready.entries()).unwrap();
    if let Some(hs) = ready.hs() {
        log.set_hard_state(1, hs, Flush::Now).unwrap();
    }
    let number = ready.number();
    node.advance_append_async(ready);
    // raft-rs may count these entries toward the quorum only once they are durable.
    log.durable(log.last_lsn()).await.unwrap();
    node.on_persist_ready(number);
    // The commit index this persist allows shows up (with its hard state) in the next Ready.
    node.advance_apply();
    committed
}

#[test]
fn raw_node_commits_through_the_log_and_restarts_from_it() {
    run(|| async {
        let dev = Rc::new(SimDevice::new(4 * SEG, 21));
        let log = open(&dev, cfg()).await.unwrap();
        let _f = flusher(&log);
        log.create_group(1, conf(&[1])).unwrap();
        let mut node = RawNode::new(&raft_config(), log.storage(1).unwrap(), &logger()).unwrap();
        node.campaign().unwrap();
        let mut committed = Vec::new();
        for _ in 0..10 {
            committed.extend(handle_ready(&mut node, &log).await);
        }
        assert_eq!(
            node.raft.state,
            raft::StateRole::Leader,
            "a single voter elects itself"
        );
        node.propose(vec![], b"set k v".to_vec()).unwrap();
        for _ in 0..10 {
            committed.extend(handle_ready(&mut node, &log).await);
        }
        let mine = committed
            .iter()
            .find(|e| &e.data[..] == b"set k v")
            .expect("the proposal is committed");
        let index = mine.index;
        let hs = node.raft.hard_state();
        assert!(hs.commit >= index);
        let last = node.raft.raft_log.last_index();
        log.durable(log.last_lsn()).await.unwrap();

        // Restart from what was durable: same hard state, same entries.
        let d = Rc::new(SimDevice::from_image(dev.durable_image(), 22));
        let back = open(&d, cfg()).await.unwrap();
        let node2 = RawNode::new(&raft_config(), back.storage(1).unwrap(), &logger()).unwrap();
        assert_eq!(node2.raft.hard_state(), hs);
        assert_eq!(node2.raft.raft_log.last_index(), last);
        assert_eq!(all_entries(&back, 1), all_entries(&log, 1));
        assert_eq!(node2.raft.raft_log.committed, hs.commit);
    });
}
