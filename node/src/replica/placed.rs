//! Placement by the meta service (`node.meta`): a shard hosts the partitions the meta service
//! placed on this node, no others. It opens a partition's group when told to (`Create`), runs
//! the membership steps of a move through the partition's leader (`AddLearner`, `Promote`,
//! `RemoveReplica`), hands leadership over (`TransferLeader`), and deletes a replica the
//! placement no longer has (`DropReplica`: its raftlog group, then its items). Each command
//! comes again with every heartbeat until the meta service sees it done, so each is idempotent
//! and fire-and-forget here.
//!
//! A request for a partition this node does not host goes to the partition's leader as the
//! routing table says. A node that receives a forwarded request for a partition it does not
//! host (the table was stale) answers [`MOVED`]; the forwarder waits a tick (its table may be
//! renewed meanwhile) and sends it again, until `raft.request_timeout_ms`.
//!
//! The raftlog's groups are the truth of what a shard hosts: at start a shard reopens the groups
//! its raftlog holds, and drops the items of any partition it holds no group for (a replica
//! dropped just before a crash, whose items the last checkpoint still had).

use std::rc::Rc;
use std::sync::Arc;

use keel_meta::proto::{NodeCommand, PartitionFact, RoutingTable};
use raft::StateRole;

use super::{err, open_group, Replicas};
use crate::engine::{MemberChange, Op, OpResult, Pending};
use keel_meta::tables::TableMode;

/// Where [`Replicas::table_route`] sends a table op.
pub enum TableRoute {
    /// Answered at once (a refused write, a read of a table with no version yet).
    Answer(OpResult),
    /// To this shard of the node.
    Read { shard: usize, op: Op },
}

/// A forwarded request reached a node that does not host its partition: the forwarder's routing
/// table is stale. Retried by the forwarder; a client never sees it.
pub const MOVED: &str = "moved: ";

impl Replicas {
    /// A newer routing table: kept for routing, and every node in it becomes a reachable peer.
    /// A partition of this shard that the table places here, led by another node, but that has
    /// no group here (this node lost its data, or missed the command that created it) gets an
    /// empty replica, which catches up from its leader's snapshot.
    pub fn set_routes(&self, t: Arc<RoutingTable>) {
        for n in &t.nodes {
            if let Ok(addr) = n.peer_addr.parse() {
                self.learn_peer(n.id, addr);
            }
        }
        let me = self.settings.node_id;
        let (shards, shard) = (self.settings.shards as u64, self.shard as u64);
        // Placed here with a leader known, but no group here: this node lost its data file.
        // (A new partition, no leader yet, is made by the Create commands, which give its first
        // voters their configuration.)
        let missing: Vec<(u64, bool)> = (0..t.placements.len() as u64)
            .filter(|&p| p % shards == shard)
            .filter(|p| !self.groups.borrow().contains_key(p))
            .filter_map(|p| {
                let pl = &t.placements[p as usize];
                let only = pl.voters == [me] && pl.learner.is_none();
                (pl.hosts(me) && pl.leader.is_some()).then_some((p, only))
            })
            .collect();
        *self.routes.borrow_mut() = Some(t);
        for (p, only) in missing {
            match only {
                // Replicated elsewhere: an empty replica catches up from the leader.
                false => self.create(p, &[], false),
                // Its only replica was here, and went with the data file: it starts again
                // empty, as a lone node on a new file does.
                true => {
                    eprintln!(
                        "keel-node: shard {}: partition {p}: its only replica was on this node \
                         and is not in the data file; it starts again empty",
                        self.shard
                    );
                    self.create(p, &[me], true)
                }
            }
        }
    }

    /// Where a client's `op` on a key of a declared bulk table (`<table>:<key>`) goes: a read
    /// of the current version goes to the slice of the key's table partition
    /// ([`TableRoute::Read`], on the shard of the keyspace partition it rides); a read before
    /// any version misses; anything that would change the item is refused naming the table.
    /// `None` for every other op, which goes on as usual. One call per key of a request, all
    /// within one dispatch: every key of a multi-get sees the same routing table, so the same
    /// version.
    pub fn table_route(&self, op: &Op) -> Option<TableRoute> {
        let routes = self.routes.borrow();
        let t = routes.as_ref().filter(|t| !t.tables.is_empty())?;
        let (name, key) = keel_meta::tables::split_key(op.key()?)?;
        let table = t.table(name)?;
        if table.def.mode != TableMode::Bulk {
            return None;
        }
        let read = matches!(
            op,
            Op::Get {
                touch: None,
                vivify: None,
                ..
            }
        );
        if !read {
            return Some(TableRoute::Answer(OpResult::ClientError(format!(
                "table {} is bulk-loaded: its keys are written only by keel-bulk load",
                table.def.name
            ))));
        }
        let Some(build_id) = table.current_build() else {
            return Some(TableRoute::Answer(OpResult::Miss));
        };
        let (partition, group) = table.partition_of(key, t.partitions);
        Some(TableRoute::Read {
            shard: (group as u64 % self.settings.shards as u64) as usize,
            op: Op::SliceGet {
                build_id,
                partition,
                group: group as u64,
                key: key.to_vec(),
            },
        })
    }

    /// Whether a routing table has arrived from the meta service.
    pub fn has_routes(&self) -> bool {
        self.routes.borrow().is_some()
    }

    /// The epoch of the routing table held (0: none yet).
    pub fn routes_epoch(&self) -> u64 {
        self.routes.borrow().as_ref().map_or(0, |t| t.epoch)
    }

    /// The leader of `p` as the routing table says, if it names one.
    pub(super) fn routed_leader(&self, p: u64) -> Option<u64> {
        let routes = self.routes.borrow();
        routes.as_ref()?.placements.get(p as usize)?.leader
    }

    /// The shard's device failure, if its Raft log or value log is poisoned (a write or sync
    /// returned an error: nothing after it can be made durable).
    pub fn device_failure(&self) -> Option<String> {
        if let Some(p) = self.log.poisoned() {
            return Some(format!("raftlog: {p}"));
        }
        self.engine
            .log
            .poisoned()
            .map(|p| format!("value log: {p}"))
    }

    /// What the next heartbeat reports about each partition this shard hosts. Keys and bytes
    /// are the shard's totals split evenly over the partitions it hosts: keys hash uniformly
    /// to partitions, so a node's sum (what `keel-meta ctl status` shows) is exact and each
    /// share close, at no cost. An exact count per partition is a pass over the index
    /// (`stats partitions`), which at millions of keys would stall the shard on every round.
    pub fn facts(&self) -> Vec<PartitionFact> {
        let me = self.settings.node_id;
        let (keys, bytes) = self.engine.items_and_bytes();
        let groups = self.groups.borrow();
        let n = groups.len().max(1) as u64;
        let share = |total: u64, i: u64| total / n + u64::from(i < total % n);
        groups
            .values()
            .zip(0u64..)
            .map(|(g, i)| {
                let conf = g.raw.raft.prs().conf();
                let mut voters: Vec<u64> = conf.voters().ids().iter().collect();
                voters.sort_unstable();
                let mut learners: Vec<u64> = conf.learners().iter().copied().collect();
                learners.sort_unstable();
                PartitionFact {
                    partition: g.partition as u32,
                    role: g.role(me),
                    term: g.raw.raft.term,
                    applied_index: g.applied,
                    keys: share(keys, i),
                    bytes: share(bytes, i),
                    voters,
                    learners,
                }
            })
            .collect()
    }

    /// Carries out one command of the meta service (see the module doc).
    pub fn run_command(self: &Rc<Self>, c: &NodeCommand, now: u32) {
        match c {
            NodeCommand::Create {
                partition,
                voters,
                campaign,
            } => self.create(*partition as u64, voters, *campaign),
            &NodeCommand::AddLearner { partition, node } => {
                let addr = self.routes.borrow().as_ref().and_then(|t| {
                    let n = t.node(node)?;
                    n.peer_addr.parse().ok()
                });
                let Some(addr) = addr else {
                    return; // not in the table held yet: the next heartbeat repeats it
                };
                self.member_step(partition, MemberChange::AddLearner { node, addr }, now);
            }
            &NodeCommand::Promote { partition, node } => {
                self.member_step(partition, MemberChange::Promote { node }, now)
            }
            &NodeCommand::RemoveReplica { partition, node } => {
                self.member_step(partition, MemberChange::Remove { node }, now)
            }
            &NodeCommand::TransferLeader { partition, to } => {
                let mut groups = self.groups.borrow_mut();
                if let Some(g) = groups.get_mut(&(partition as u64)) {
                    if g.raw.raft.state == StateRole::Leader && to != self.settings.node_id {
                        g.raw.transfer_leader(to);
                        self.wake.notify();
                    }
                }
            }
            &NodeCommand::DropReplica { partition } => self.drop_replica(partition as u64, now),
        }
    }

    fn create(&self, p: u64, voters: &[u64], campaign: bool) {
        if self.groups.borrow().contains_key(&p) {
            return;
        }
        if p & self.partitions_mask != p || p % self.settings.shards as u64 != self.shard as u64 {
            return self.misrouted(0, p);
        }
        match open_group(&self.settings, &self.log, p, voters, (0, 0)) {
            Ok(mut g) => {
                if campaign && g.raw.raft.state != StateRole::Leader {
                    let _ = g.raw.campaign();
                }
                self.groups.borrow_mut().insert(p, g);
                self.wake.notify();
                eprintln!(
                    "keel-node: shard {}: partition {p}: replica created ({})",
                    self.shard,
                    match voters.is_empty() {
                        true => "empty, to catch up from the leader".to_string(),
                        false => format!("voters {voters:?}"),
                    }
                );
            }
            Err(e) => eprintln!("keel-node: shard {}: partition {p}: {e}", self.shard),
        }
    }

    /// A membership step of a move, through the partition's leader (forwarded like a write if
    /// that is another node). A refusal or "not yet" is left to the next heartbeat's repeat.
    fn member_step(self: &Rc<Self>, partition: u32, c: MemberChange, now: u32) {
        let pending = self.submit_to(partition as u64, Op::Member(c), now, 0);
        glommio::spawn_local(async move {
            let _ = crate::engine::resolve(pending).await;
        })
        .detach();
    }

    /// Deletes this node's replica of `p`: requests waiting in the group fail (retried by
    /// their forwarder), the raftlog forgets the group, the engine drops its items, and a
    /// checkpoint follows.
    fn drop_replica(&self, p: u64, now: u32) {
        let Some(mut g) = self.groups.borrow_mut().remove(&p) else {
            return;
        };
        let why = format!("{MOVED}partition {p} left this node");
        for prop in g.proposals.drain(..) {
            prop.fail(&why);
        }
        for reply in std::mem::take(&mut g.batch.replies) {
            let _ = reply.send(err(&why));
        }
        for read in g.reads.drain(..) {
            let _ = read.reply.send(err(&why));
        }
        self.built.borrow_mut().remove(&p);
        self.incoming.borrow_mut().remove(&p);
        if let Err(e) = self.log.drop_group(p) {
            // Poisoned: the driver stops the node on its next pass.
            eprintln!(
                "keel-node: shard {}: partition {p}: raftlog: {e}",
                self.shard
            );
            return;
        }
        self.drop_items(p, now);
        self.drops.set(self.drops.get() + 1);
        eprintln!(
            "keel-node: shard {}: partition {p}: replica dropped",
            self.shard
        );
        self.checkpoint_now.set(true);
    }

    /// Clears the engine's items of `p`, which this shard no longer hosts.
    pub fn drop_items(&self, p: u64, now: u32) {
        if let Err(e) = self.engine.install_partition(p, &[], now) {
            eprintln!(
                "keel-node: shard {}: partition {p}: cannot drop its items: {e:?}",
                self.shard
            );
        }
    }

    /// At start (placement by the meta service): items of partitions this shard holds no
    /// group for are dropped (see the module doc).
    pub fn drop_orphaned_items(&self, now: u32) {
        let held = self.engine.partition_tally();
        let hosted = self.groups.borrow();
        for &p in held.keys().filter(|p| !hosted.contains_key(p)) {
            eprintln!(
                "keel-node: shard {}: partition {p} is not hosted here any more: dropping its items",
                self.shard
            );
            self.drop_items(p, now);
        }
    }

    /// A request for a partition this shard does not host: to its leader, as the routing table
    /// says; `MOVED` to a forwarder whose table sent it here; or wait for a table that names a
    /// leader.
    pub(super) fn route(self: &Rc<Self>, p: u64, op: Op, now: u32, hops: u8) -> Pending {
        if !self.settings.placed {
            return Pending::Ready(err("partition not on this shard"));
        }
        if hops > 0 {
            return Pending::Ready(err(&format!(
                "{MOVED}node {} does not host partition {p}",
                self.settings.node_id
            )));
        }
        match self.routed_leader(p) {
            Some(l) if l != self.settings.node_id => self.forward(l, p, op, now, hops),
            _ => self.wait_for_leader(p, op, now, hops),
        }
    }
}
