//! Adding and removing a replica, one at a time, in every partition (Raft thesis 4.1: one
//! server per change, so no joint consensus). A new node joins as a learner (it receives the
//! log, or a snapshot, but does not vote), is promoted to voter once it has caught up, and a
//! node is removed after leadership has moved off it.
//!
//! An admin command (`member_add`, `member_promote`, `member_remove`) reaches every shard; each
//! shard runs it for each of its partitions at once, through the partition's leader (forwarded
//! like a write). The leader checks that the change makes sense now, proposes a raft-rs
//! `ConfChange`, and answers once it is applied. A partition that is not ready (another change
//! still pending, a leader election, leadership being moved off a node to be removed, a
//! learner still catching up) is retried each tick until `raft.request_timeout_ms`.
//!
//! Every replica applies a committed `ConfChange` in log order: raft-rs updates its progress
//! tracker and the raftlog records the new conf state. An added learner's peer address travels
//! in the entry's context, so every member's transport learns where to reach it.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use futures::channel::oneshot;
use raft::eraftpb::{ConfChange, ConfChangeType, Entry};

use super::{err, later, Group, Replicas};
use crate::engine::{Member, MemberChange, Op, OpResult, Pending};

/// The first entry index of a group created with members: its initial configuration is a
/// snapshot at index 1, so a node that joins later (with an empty log) always starts from a
/// snapshot, which carries the configuration, instead of replaying a log that lacks it.
pub const BOOTSTRAP_INDEX: u64 = 1;
pub const BOOTSTRAP_TERM: u64 = 1;

/// A learner may be promoted once it is at most this many entries behind the leader's commit
/// index (a learner further behind would make the new quorum wait for it).
const PROMOTE_LAG_MAX: u64 = 100;

/// A refusal that retrying cannot fix starts with this (the others are retried).
const REFUSED: &str = "refused: ";

impl Replicas {
    /// Runs `c` in every partition of this shard (each through its leader) and answers OK once
    /// all have applied it, or the first refusal or timeout.
    pub(super) fn member_change(self: &Rc<Self>, c: MemberChange, now: u32) -> Pending {
        if self.settings.placed {
            return Pending::Ready(err(
                "the meta service places this node's replicas: use keel-meta ctl (drain, remove)",
            ));
        }
        let parts: Vec<u64> = self.groups.borrow().keys().copied().collect();
        let deadline = Instant::now() + self.settings.request_timeout;
        let runs = parts.into_iter().map(|p| {
            let (this, c) = (self.clone(), c.clone());
            async move {
                loop {
                    let r = this.submit_to(p, Op::Member(c.clone()), now, 0);
                    match crate::engine::resolve(r).await {
                        OpResult::Ok => return OpResult::Ok,
                        OpResult::ServerError(m) if m.starts_with(REFUSED) => {
                            return OpResult::ServerError(m)
                        }
                        OpResult::ServerError(m) if Instant::now() >= deadline => {
                            return err(&format!("partition {p}: {m}"));
                        }
                        _ => glommio::timer::sleep(this.settings.tick).await,
                    }
                }
            }
        });
        let all = futures::future::join_all(runs);
        Pending::Later(Box::pin(async move {
            all.await
                .into_iter()
                .find(|r| !matches!(r, OpResult::Ok))
                .unwrap_or(OpResult::Ok)
        }))
    }

    /// The leader of `g` starts `c`: OK at once when it is already in effect, a proposal
    /// answered when applied, or an error (retried by [`Self::member_change`] unless refused).
    pub(super) fn propose_member(&self, g: &mut Group, c: &MemberChange) -> Pending {
        let conf = g.raw.raft.prs().conf();
        let is_voter = |n: u64| conf.voters().contains(n);
        let is_learner = |n: u64| conf.learners().contains(&n);
        let me = self.settings.node_id;
        let mut cc = ConfChange::default();
        let mut context = Vec::new();
        match *c {
            MemberChange::AddLearner { node, addr } => {
                if is_learner(node) {
                    return Pending::Ready(OpResult::Ok);
                }
                if is_voter(node) {
                    return Pending::Ready(err(&format!(
                        "{REFUSED}node {node} is already a voter"
                    )));
                }
                cc.set_change_type(ConfChangeType::AddLearnerNode);
                cc.node_id = node;
                context = addr.to_string().into_bytes();
            }
            MemberChange::Promote { node } => {
                if is_voter(node) {
                    return Pending::Ready(OpResult::Ok);
                }
                if !is_learner(node) {
                    return Pending::Ready(err(&format!(
                        "{REFUSED}node {node} is not a learner (member_add it first)"
                    )));
                }
                let matched = g.raw.raft.prs().get(node).map_or(0, |pr| pr.matched);
                let committed = g.raw.raft.raft_log.committed;
                // Nothing matched: the learner has not answered at all yet (it may not even
                // host the partition), however short the log.
                if matched == 0 || matched + PROMOTE_LAG_MAX < committed {
                    return Pending::Ready(err(&format!(
                        "learner {node} has not caught up ({matched} of {committed} entries)"
                    )));
                }
                cc.set_change_type(ConfChangeType::AddNode);
                cc.node_id = node;
            }
            MemberChange::Remove { node } => {
                if !is_voter(node) && !is_learner(node) {
                    return Pending::Ready(OpResult::Ok);
                }
                if is_voter(node) && conf.voters().ids().len() == 1 {
                    return Pending::Ready(err(&format!("{REFUSED}node {node} is the last voter")));
                }
                if node == me {
                    // A leader does not remove itself: it hands leadership to the most
                    // up-to-date other voter, and the new leader makes the change.
                    if let Some(to) = best_voter(g, me) {
                        g.raw.transfer_leader(to);
                        self.wake.notify();
                    }
                    return Pending::Ready(err("moving leadership off the node to remove"));
                }
                cc.set_change_type(ConfChangeType::RemoveNode);
                cc.node_id = node;
            }
        }
        if g.raw.raft.has_pending_conf() {
            return Pending::Ready(err("another membership change is still being applied"));
        }
        if let Err(e) = g.raw.propose_conf_change(context, cc) {
            return Pending::Ready(err(&format!("membership change refused: {e}")));
        }
        let (tx, rx) = oneshot::channel();
        self.track_proposal(g, vec![tx]);
        later(rx)
    }

    /// Every node in a configuration of this shard's partitions, with how many it votes or
    /// learns in.
    pub(super) fn members(&self) -> Vec<Member> {
        let peers = self
            .transport
            .borrow()
            .as_ref()
            .map(|t| t.peers())
            .unwrap_or_default();
        let mut out: Vec<Member> = Vec::new();
        for g in self.groups.borrow().values() {
            let conf = g.raw.raft.prs().conf();
            let ids = conf.voters().ids();
            let voters = ids.iter().map(|n| (n, true));
            let learners = conf.learners().iter().map(|&n| (n, false));
            for (node, voter) in voters.chain(learners) {
                let i = match out.iter().position(|m| m.node == node) {
                    Some(i) => i,
                    None => {
                        let addr = match node == self.settings.node_id {
                            true => self.settings.peer_addr,
                            false => peers.get(&node).and_then(|a| a.first().copied()),
                        };
                        out.push(Member {
                            node,
                            addr,
                            voter_in: 0,
                            learner_in: 0,
                        });
                        out.len() - 1
                    }
                };
                match voter {
                    true => out[i].voter_in += 1,
                    false => out[i].learner_in += 1,
                }
            }
        }
        out
    }

    /// Every node's shard-0 peer address (this one's included), for the checkpoint.
    pub fn peer_book(&self) -> std::collections::BTreeMap<u64, SocketAddr> {
        let mut book: std::collections::BTreeMap<u64, SocketAddr> = match &*self.transport.borrow()
        {
            Some(t) => t
                .peers()
                .into_iter()
                .filter_map(|(n, a)| Some((n, *a.first()?)))
                .collect(),
            None => Default::default(),
        };
        if let Some(a) = self.settings.peer_addr {
            book.insert(self.settings.node_id, a);
        }
        book
    }

    /// The peer addresses of a node's shards, from the address of its shard 0.
    pub(super) fn learn_peer(&self, node: u64, addr: SocketAddr) {
        if node == self.settings.node_id {
            return;
        }
        if let Some(t) = self.transport.borrow().as_ref() {
            t.set_peer(
                node,
                crate::transport::shard_addrs(addr, self.settings.shards),
            );
        }
    }
}

/// Applies a committed `ConfChange` entry of group `g` (every replica does, in log order).
/// Returns the proposer's answer.
pub(super) fn apply_conf_change(r: &Replicas, g: &mut Group, e: &Entry) -> OpResult {
    let cc: ConfChange = match protobuf::Message::parse_from_bytes(&e.data) {
        Ok(cc) => cc,
        Err(_) => return err(&format!("entry {}: malformed membership change", e.index)),
    };
    let cs = match g.raw.apply_conf_change(&cc) {
        Ok(cs) => cs,
        // raft-rs refuses the same change the same way on every replica.
        Err(why) => return err(&format!("{REFUSED}{why}")),
    };
    if let Err(why) = r.log.set_conf_state(g.partition, &cs) {
        // The raftlog is poisoned: the driver stops the node on its next pass.
        return err(&format!("raftlog: {why}"));
    }
    if cc.get_change_type() == ConfChangeType::AddLearnerNode {
        let addr = std::str::from_utf8(&e.context)
            .ok()
            .and_then(|a| a.parse().ok());
        if let Some(addr) = addr {
            r.learn_peer(cc.node_id, addr);
        }
    }
    OpResult::Ok
}

/// The voter other than `except` with the longest matched log (leader only).
pub(super) fn best_voter(g: &Group, except: u64) -> Option<u64> {
    let prs = g.raw.raft.prs();
    prs.iter()
        .filter(|(&id, _)| id != except && prs.conf().voters().contains(id))
        .max_by_key(|(_, pr)| pr.matched)
        .map(|(&id, _)| id)
}
