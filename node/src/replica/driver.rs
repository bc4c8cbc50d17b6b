//! The shard's Raft driver task: one tick for every group, Ready handling with asynchronous
//! persistence (append to the raftlog, `advance_append_async`, and `on_persist_ready` once the
//! raftlog says the bytes are durable), apply of committed entries, and the reads waiting on
//! an applied index. Also the checkpoint task.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_nvme::AnyDevice;
use keel_nvme::Region;
use keel_raftlog::Flush;
use raft::eraftpb::{Entry, EntryType};
use raft::{StateRole, Storage};

use super::checkpoint::{self, Checkpoint};
use super::{cas_of, command, err, Group, Replicas, Unpersisted};
use crate::engine::{OpResult, Pending, Stamp};
use crate::latency::Timer;

/// Runs the driver until the raftlog fails. Returns the failure.
pub async fn run_raft(r: Rc<Replicas>) -> String {
    let mut next_tick = Instant::now() + r.settings.tick;
    loop {
        let now = Instant::now();
        if now >= next_tick {
            for g in r.groups.borrow_mut().values_mut() {
                g.raw.tick();
                fail_stale_proposals(&r, g, now);
            }
            next_tick = now + r.settings.tick;
        }
        if let Err(e) = process(&r) {
            return e;
        }
        // Readies whose bytes are not durable yet: wake up when the raftlog gets there.
        let need = r
            .groups
            .borrow()
            .values()
            .filter_map(|g| g.unpersisted.back().map(|u| u.lsn))
            .max();
        if let Some(lsn) = need {
            if r.durable_wait.get() == 0 && lsn > r.log.durable_lsn() {
                r.durable_wait.set(lsn);
                let rr = r.clone();
                glommio::spawn_local(async move {
                    let _ = rr.log.durable(lsn).await;
                    rr.durable_wait.set(0);
                    rr.wake.notify();
                })
                .detach();
            }
        }
        let wait = next_tick.saturating_duration_since(Instant::now());
        futures_lite::future::or(r.wake.wait(), glommio::timer::sleep(wait)).await;
        if let Some(p) = r.log.poisoned() {
            return format!("raftlog failed: {p}");
        }
    }
}

/// Readies taken from one group per pass, so one busy group cannot starve the others.
const READY_ROUNDS_MAX: usize = 4;

/// One pass over every group: persisted readies, new readies, applies, waiting reads.
fn process(r: &Rc<Replicas>) -> Result<(), String> {
    // Writes that arrived since the last pass become one entry per partition.
    r.flush_batches();
    let durable = r.log.durable_lsn();
    // A Ready taken must be persisted, and an append into a raftlog with no free segment left
    // may fail: with none free, readies wait (raft-rs keeps their entries in memory, and no
    // acknowledgement goes out for them) until a checkpoint compacts the log and wakes us.
    let room = r.log.stats().segments_free > 0;
    if !room {
        r.stats
            .log_full_stalls
            .set(r.stats.log_full_stalls.get() + 1);
        r.checkpoint_now.set(true);
    }
    let parts: Vec<u64> = r.groups.borrow().keys().copied().collect();
    for p in parts {
        let mut groups = r.groups.borrow_mut();
        let Some(g) = groups.get_mut(&p) else {
            continue; // dropped during this pass (placement moved it away)
        };
        while g.unpersisted.front().is_some_and(|u| u.lsn <= durable) {
            let u = g.unpersisted.pop_front().expect("checked");
            g.raw.on_persist_ready(u.number);
            r.send_raft(p, u.messages);
        }
        let mut rounds = 0;
        while room && g.raw.has_ready() && rounds < READY_ROUNDS_MAX {
            rounds += 1;
            handle_ready(r, g)?;
        }
        if room && g.raw.has_ready() {
            // More next pass, after the other groups had theirs.
            r.wake.notify();
        }
        drop(groups);
        drain_apply(r, p);
    }
    Ok(())
}

fn handle_ready(r: &Rc<Replicas>, g: &mut Group) -> Result<(), String> {
    let p = g.partition;
    let mut rd = g.raw.ready();
    // A leader sends its appends before persisting them (Raft thesis 10.2.1).
    r.send_raft(p, rd.take_messages());
    let mut lsn = None;
    if !rd.snapshot().is_empty() {
        // The engine installed it and checkpointed before raft-rs saw it (install_snapshot);
        // what is left is the raftlog's record of it.
        lsn = Some(
            r.log
                .apply_snapshot(p, rd.snapshot().get_metadata())
                .map_err(|e| format!("raftlog snapshot, group {p}: {e}"))?,
        );
    }
    if let Some(ss) = rd.ss() {
        if ss.raft_state != StateRole::Leader {
            stepped_down(r, g);
        }
    }
    let committed = rd.take_committed_entries();
    if !rd.entries().is_empty() {
        lsn = Some(
            r.log
                .append(p, rd.entries())
                .map_err(|e| format!("raftlog append, group {p}: {e}"))?,
        );
    }
    if let Some(hs) = rd.hs() {
        // A new term or vote must be durable before the messages that follow it (Raft §5.1,
        // §5.2: a node votes once per term). A new commit index alone need not be: after a
        // crash the node learns it again, and starts no lower than its checkpoint's applied
        // index (check_applied). So it rides with the next flush and the Ready does not wait
        // for it: a lone write costs one fdatasync, not two.
        let lazy = r
            .log
            .hard_state(p)
            .is_some_and(|old| old.term == hs.term && old.vote == hs.vote);
        let flush = if lazy { Flush::WithNext } else { Flush::Now };
        let hs_lsn = r
            .log
            .set_hard_state(p, hs, flush)
            .map_err(|e| format!("raftlog hard state, group {p}: {e}"))?;
        if !lazy {
            lsn = Some(hs_lsn);
        }
    }
    let messages = rd.take_persisted_messages();
    let number = rd.number();
    g.raw.advance_append_async(rd);
    match lsn {
        Some(lsn) => g.unpersisted.push_back(Unpersisted {
            lsn,
            number,
            messages,
        }),
        None if g.unpersisted.is_empty() => {
            g.raw.on_persist_ready(number);
            r.send_raft(p, messages);
        }
        // Readies are persisted in order: this one completes with the ones before it.
        None => g.unpersisted.push_back(Unpersisted {
            lsn: g.unpersisted.back().expect("non-empty").lsn,
            number,
            messages,
        }),
    }
    g.to_apply.extend(committed);
    Ok(())
}

/// A leader stepped down (a planned transfer, or it lost its quorum). Its proposals stay: each
/// is answered when its index is applied, with its result if the entry there is still its own
/// (the new leader had it: always so after a planned transfer, which waits for the transferee
/// to catch up) or an error if another leader's entry took the index. Reads and writes not
/// proposed yet go to the new leader, like any request this node does not lead.
fn stepped_down(r: &Rc<Replicas>, g: &mut Group) {
    let mut again: Vec<_> = g
        .reads
        .drain(..)
        .map(|rd| (rd.op, rd.now, rd.reply))
        .collect();
    again.extend(std::mem::take(&mut g.batch).into_requests());
    if !again.is_empty() {
        r.resubmit(g.partition, again);
    }
}

/// Proposals of a group this node no longer leads that no applied entry has answered within
/// the request timeout (the node is cut off, or the entries were never replicated): their
/// clients get an error (memcached's SERVER_ERROR means "outcome unknown").
fn fail_stale_proposals(r: &Replicas, g: &mut Group, now: Instant) {
    if g.raw.raft.state == StateRole::Leader {
        return;
    }
    while g
        .proposals
        .front()
        .is_some_and(|p| now.duration_since(p.proposed) >= r.settings.request_timeout)
    {
        let p = g.proposals.pop_front().expect("checked");
        r.stats
            .leader_changes_failed
            .set(r.stats.leader_changes_failed.get() + p.replies.len() as u64);
        p.fail("leadership changed before the write committed; retry");
    }
}

/// Applies committed entries of partition `p` in order until one waits for a disk read.
fn drain_apply(r: &Rc<Replicas>, p: u64) {
    loop {
        let mut groups = r.groups.borrow_mut();
        let Some(g) = groups.get_mut(&p) else {
            return; // dropped (placement moved it away)
        };
        if g.applying {
            return;
        }
        // A read waiting for index i is served before entry i + 1 is applied: it sees exactly
        // the writes that came before it (a pipeline's `get k` is not answered with the effect
        // of a `set k` sent after it).
        serve_reads(r, g);
        let Some(e) = g.to_apply.pop_front() else {
            // raft-rs accepts an applied index only up to what it has committed and persisted
            // (an installed snapshot is applied before raft-rs has persisted it).
            let log = &g.raw.raft.raft_log;
            let to = g.applied.min(log.committed).min(log.persisted);
            if to > log.applied {
                g.raw.advance_apply_to(to);
            }
            return;
        };
        if e.index <= g.applied {
            // Covered by an installed snapshot.
            continue;
        }
        if e.get_entry_type() == EntryType::EntryConfChange {
            let res = super::membership::apply_conf_change(r, g, &e);
            applied(r, g, &e, Ok(vec![res]));
            continue;
        }
        let t0 = Instant::now();
        match start_entry(r, p, &e) {
            Started::Done(outcome) => {
                r.engine.latency.record(Timer::RaftApply, t0.elapsed());
                applied(r, g, &e, outcome)
            }
            Started::Later(pending) => {
                g.applying = true;
                drop(groups);
                let rr = r.clone();
                glommio::spawn_local(async move {
                    // In entry order: an op that waits holds the ones after it.
                    let mut res = Vec::with_capacity(pending.len());
                    for p in pending {
                        res.push(crate::engine::resolve(p).await);
                    }
                    rr.engine.latency.record(Timer::RaftApply, t0.elapsed());
                    {
                        let mut groups = rr.groups.borrow_mut();
                        let Some(g) = groups.get_mut(&p) else {
                            // Dropped while the entry waited for its read: what the entry
                            // wrote after the drop cleared the partition goes too.
                            drop(groups);
                            rr.drop_items(p, crate::engine::Engine::<AnyDevice>::now());
                            return;
                        };
                        g.applying = false;
                        applied(&rr, g, &e, Ok(res));
                    }
                    drain_apply(&rr, p);
                    rr.wake.notify();
                })
                .detach();
                return;
            }
        }
    }
}

/// What applying an entry gave its proposer: a result per op (none for an entry without ops),
/// or one failure for them all.
type Outcome = Result<Vec<OpResult>, String>;

enum Started {
    Done(Outcome),
    /// Some op waits for a disk read: the results of every op, resolved in order.
    Later(Vec<Pending>),
}

/// Starts the ops of one committed entry on the engine, in order; the `i`-th op writes CAS
/// `cas_of(p, index, i)`. Entries without an op: the empty entry a new leader appends.
fn start_entry(r: &Replicas, p: u64, e: &Entry) -> Started {
    if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
        return Started::Done(Ok(Vec::new()));
    }
    let (now, ops) = match command::decode_entry(&e.data) {
        Ok(x) => x,
        // Every replica refuses the same bytes the same way, so state stays identical.
        Err(why) => return Started::Done(Err(format!("entry {}: {why}", e.index))),
    };
    let pending: Vec<Pending> = ops
        .into_iter()
        .enumerate()
        .map(|(i, op)| {
            let stamp = Stamp {
                now,
                cas: cas_of(p, e.index, i),
                partition: p,
            };
            r.engine.start(op, stamp)
        })
        .collect();
    if pending.iter().any(|p| matches!(p, Pending::Later(_))) {
        return Started::Later(pending);
    }
    let res = pending
        .into_iter()
        .map(|p| match p {
            Pending::Ready(r) => r,
            Pending::Later(_) => unreachable!("checked above"),
        })
        .collect();
    Started::Done(Ok(res))
}

/// The reply of a proposal whose index another leader's entry took.
const LOST: &str = "the write was lost to a leader change; retry";

fn applied(r: &Replicas, g: &mut Group, e: &Entry, outcome: Outcome) {
    debug_assert!(e.index > g.applied || e.index == 0);
    g.applied = e.index;
    g.applied_term = e.term;
    r.stats
        .applied_entries
        .set(r.stats.applied_entries.get() + 1);
    // Proposals older than this index were overwritten by another leader's entries.
    while g.proposals.front().is_some_and(|p| p.index < e.index) {
        let p = g.proposals.pop_front().expect("checked");
        p.fail(LOST);
    }
    if g.proposals.front().is_some_and(|p| p.index == e.index) {
        let p = g.proposals.pop_front().expect("checked");
        if p.term != e.term {
            return p.fail(LOST);
        }
        r.engine
            .latency
            .record(Timer::RaftCommit, p.proposed.elapsed());
        let (mut results, why) = match outcome {
            Ok(res) => (res.into_iter(), "entry without an op".to_string()),
            Err(why) => (Vec::new().into_iter(), why),
        };
        for reply in p.replies {
            let _ = reply.send(results.next().unwrap_or_else(|| err(&why)));
        }
    }
}

/// Reads that waited for the group to apply what the leader had when they arrived.
fn serve_reads(r: &Replicas, g: &mut Group) {
    while g.reads.front().is_some_and(|rd| rd.index <= g.applied) {
        let rd = g.reads.pop_front().expect("checked");
        let p = r.engine.start(rd.op, Stamp::read(rd.now));
        glommio::spawn_local(async move {
            let _ = rd.reply.send(crate::engine::resolve(p).await);
        })
        .detach();
    }
}

/// Every `checkpoint_interval`: sync the value log, record where it stands and what each group
/// has applied, then let the raftlog drop what that covers. When `stop` is set (SIGTERM), hands
/// the groups it leads to other nodes, takes a last checkpoint, rolls the raftlog to a fresh
/// segment and returns Ok: a restart then replays nothing. Returns Err only on failure.
pub async fn run_checkpoints(
    r: Rc<Replicas>,
    area: Region<AnyDevice>,
    mut last: Checkpoint,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let mut last_at = Instant::now();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let now = Instant::now();
        // A raftlog more than half full frees space sooner (each checkpoint compacts).
        let interval = match raftlog_tight(&r) {
            true => r
                .settings
                .checkpoint_interval
                .min(TIGHT_CHECKPOINT_INTERVAL),
            false => r.settings.checkpoint_interval,
        };
        let due = last_at + interval;
        if !stopping && now < due && !r.checkpoint_now.get() {
            // Short naps so a shutdown or a filling raftlog is noticed quickly.
            glommio::timer::sleep((due - now).min(STOP_POLL)).await;
            continue;
        }
        last_at = now;
        if stopping {
            let still = r.transfer_leaderships(LEADER_TRANSFER_TIMEOUT).await;
            if still > 0 {
                eprintln!(
                    "keel-node: shard {}: {still} groups kept their leader here at shutdown (their followers will elect one)",
                    r.shard
                );
            }
        }
        r.checkpoint_now.set(false);
        last = checkpoint_once(&r, &area, last).await?;
        if stopping {
            let lsn = r
                .log
                .roll()
                .map_err(|e| format!("shutdown: raftlog roll: {e}"))?;
            r.log
                .durable(lsn)
                .await
                .map_err(|e| format!("shutdown: raftlog: {e}"))?;
            return Ok(());
        }
    }
}

/// How long a clean shutdown waits for its groups' leadership to move to other nodes.
const LEADER_TRANSFER_TIMEOUT: Duration = Duration::from_secs(3);

/// How often the checkpoint task looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);

/// The checkpoint interval while the raftlog is more than half full.
const TIGHT_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// More than half the raftlog's segments are in use: checkpoints come more often and keep no
/// entries for lagging peers (they catch up from snapshots), so the log cannot fill up.
fn raftlog_tight(r: &Replicas) -> bool {
    let s = r.log.stats();
    s.segments_free * 2 < s.segments_in_use + s.segments_free
}

async fn checkpoint_once(
    r: &Rc<Replicas>,
    area: &Region<AnyDevice>,
    last: Checkpoint,
) -> Result<Checkpoint, String> {
    // Captured together, with no await between: the engine state through `value_seq` is
    // exactly the effect of the entries through each group's applied index (a group's
    // entries are applied in order, one at a time).
    let value_seq = r.engine.log.last_seq();
    let applied: BTreeMap<u64, (u64, u64)> = r
        .groups
        .borrow()
        .iter()
        .map(|(&p, g)| (p, (g.applied, g.applied_term)))
        .collect();
    let peers = r.peer_book();
    let drops = r.drops.get();
    if value_seq == last.value_seq && applied == last.applied && peers == last.peers {
        return Ok(last);
    }
    r.engine
        .log
        .sync()
        .await
        .map_err(|e| format!("checkpoint: value log sync failed: {e}"))?;
    // The hard states that commit these entries must be durable before a restart trusts the
    // applied indexes (raft-rs refuses an applied index above the commit index).
    r.log
        .durable(r.log.last_lsn())
        .await
        .map_err(|e| format!("checkpoint: raftlog failed: {e}"))?;
    if r.drops.get() != drops {
        // A replica was dropped meanwhile, and may already be created again afresh: this
        // checkpoint's applied index for it would not match the new group. The next one.
        return Ok(last);
    }
    let c = Checkpoint {
        generation: last.generation + 1,
        value_seq,
        applied,
        peers,
    };
    checkpoint::store(area, &c)
        .await
        .map_err(|e| format!("checkpoint: cannot write it: {e}"))?;
    r.engine.checkpoint_seq.set(value_seq);
    r.engine.checkpoint_signal.notify();
    r.stats.checkpoints.set(r.stats.checkpoints.get() + 1);
    // Compact each group's log below what the checkpoint covers. Entries a peer still needs
    // are kept up to a margin (`compact_lag_entries`): a leader keeps what every follower lacks
    // within that margin, a follower (which may lead later) keeps the margin. A peer further
    // behind catches up from a snapshot.
    let groups = r.groups.borrow();
    let tight = raftlog_tight(r);
    for (&p, g) in groups.iter() {
        let Some(&(applied, _)) = c.applied.get(&p) else {
            continue; // created during the checkpoint (placement): the next one covers it
        };
        let mut upto = applied;
        if g.raw.raft.prs().iter().count() > 1 && !tight {
            let margin = applied.saturating_sub(r.settings.compact_lag_entries);
            if g.raw.raft.state == StateRole::Leader {
                for (_, pr) in g.raw.raft.prs().iter() {
                    upto = upto.min(pr.matched);
                }
                upto = upto.max(margin);
            } else {
                upto = margin;
            }
        }
        // An installed snapshot is ahead of the raftlog until raft-rs has persisted it.
        let last = g.raw.store().last_index().unwrap_or(0);
        upto = upto.min(last);
        let first = g.raw.store().first_index().unwrap_or(1);
        if upto >= first {
            r.log
                .compact(p, upto)
                .map_err(|e| format!("checkpoint: raftlog compaction of group {p}: {e}"))?;
        }
    }
    // Readies may be waiting for the space this freed.
    r.wake.notify();
    Ok(c)
}
