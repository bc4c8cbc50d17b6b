//! The meta group's Raft driver: start-up (checkpoint, raftlog, `RawNode`), one tick, Ready
//! handling (the leader sends its appends first; entries and hard state go to the raftlog and
//! the messages that depend on them leave only once they are durable), apply in log order,
//! checkpoints with raftlog compaction, and snapshots for lagging replicas.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use keel_raftlog::{Flush, RaftLog, Signal};
use raft::eraftpb::{ConfState, EntryType, Snapshot, SnapshotMetadata};
use raft::{RawNode, StateRole, Storage};

use super::store::{self, Checkpoint};
use super::{net, MetaRaw, Role, Service, ServiceConfig, GROUP};
use crate::machine::{self, MetaState};
use crate::schedule::Soft;

/// A group created here starts from a configuration-only snapshot at this index and term, so a
/// replica that missed the start catches up from a snapshot carrying the configuration.
const BOOTSTRAP_INDEX: u64 = 1;
const BOOTSTRAP_TERM: u64 = 1;

/// A checkpoint is taken once this many entries were applied since the last one, or every
/// `CHECKPOINT_INTERVAL` when any were.
const CHECKPOINT_ENTRIES: u64 = 1024;
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);

/// Bytes one entry may take: well inside a raftlog segment (1 MiB), so an append never fails
/// for size (a plan's 4,096 creates take about 160 KiB).
const ENTRY_BYTES_MAX: usize = 512 << 10;

/// Entries kept behind the checkpoint for a replica that lags; one further behind gets a
/// snapshot.
const COMPACT_LAG_ENTRIES: u64 = 1024;

/// Opens the data file, loads the last checkpoint, opens the raftlog and builds the `RawNode`.
pub(super) async fn start(cfg: ServiceConfig) -> Result<Rc<Service>, String> {
    cfg.validate()?;
    let st = store::open(&cfg.data, cfg.id).await?;
    let ckpt = store::load(&st.slots).await?;
    let (state, applied, applied_term, generation) = match &ckpt {
        Some(c) => (
            machine::decode_image(&c.image)
                .map_err(|e| format!("{}: checkpoint: {e}", cfg.data.display()))?,
            c.applied,
            c.applied_term,
            c.generation,
        ),
        None => (MetaState::default(), 0, 0, 0),
    };
    let log = RaftLog::open(st.raftlog, store::raftlog_config())
        .await
        .map_err(|e| format!("{}: raftlog: {e}", cfg.data.display()))?;
    let voters: Vec<u64> = if cfg.peers.is_empty() {
        vec![cfg.id]
    } else {
        cfg.peers.keys().copied().collect()
    };
    if !log.groups().contains(&GROUP) {
        let cs = ConfState {
            voters: voters.clone(),
            ..Default::default()
        };
        let fail = |e| format!("raftlog: cannot create the meta group: {e}");
        log.create_group(GROUP, cs.clone()).map_err(fail)?;
        let mut meta = SnapshotMetadata {
            index: BOOTSTRAP_INDEX,
            term: BOOTSTRAP_TERM,
            ..Default::default()
        };
        meta.set_conf_state(cs);
        log.apply_snapshot(GROUP, &meta).map_err(fail)?;
    }
    let storage = log.storage(GROUP).map_err(|e| e.to_string())?;
    let conf = storage
        .initial_state()
        .map_err(|e| e.to_string())?
        .conf_state;
    if conf.voters != voters {
        return Err(format!(
            "{}: the meta group was created with replicas {:?}, but --peers names {:?}",
            cfg.data.display(),
            conf.voters,
            voters
        ));
    }
    let (applied, applied_term) = check_applied(&log, applied, applied_term)?;
    let rcfg = raft::Config {
        id: cfg.id,
        election_tick: 10,
        heartbeat_tick: 2,
        applied,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 64,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let mut raw = RawNode::new(&rcfg, storage, &logger)
        .map_err(|e| format!("cannot start Raft (applied {applied}): {e}"))?;
    if voters == [cfg.id] {
        // The only voter: no election timeout to wait for.
        let _ = raw.campaign();
    }
    let peers: BTreeMap<u64, Rc<net::PeerOut>> = cfg
        .peers
        .iter()
        .filter(|(&id, _)| id != cfg.id)
        .map(|(&id, a)| (id, net::PeerOut::new(a.clone())))
        .collect();
    let svc = Rc::new(Service {
        log: log.clone(),
        slots: st.slots,
        conf,
        state: RefCell::new(state),
        applied: Cell::new((applied, applied_term)),
        role: Cell::new(Role::default()),
        soft: RefCell::new(Soft::default()),
        to_propose: RefCell::new(Vec::new()),
        pending: RefCell::new(HashMap::new()),
        next_seq: Cell::new(1),
        inbox: RefCell::new(VecDeque::new()),
        wake: Signal::default(),
        changed: Signal::default(),
        peers,
        checkpoint_generation: Cell::new(generation),
        checkpointed: Cell::new(applied),
        last_checkpoint: Cell::new(Instant::now()),
        raw: RefCell::new(raw),
        cfg,
    });
    let weak = Rc::downgrade(&svc);
    log.set_snapshot_provider(Rc::new(move |_group, _request_index, _to| {
        match weak.upgrade() {
            Some(s) => Ok(s.snapshot()),
            None => Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            )),
        }
    }));
    Ok(svc)
}

/// The applied index to start from: the checkpoint's, once the raftlog agrees with it
/// (`align_to_checkpoint`); without a checkpoint, the bootstrap configuration (or whatever
/// snapshot point the raftlog starts at) is all that is applied.
fn check_applied(
    log: &RaftLog<keel_nvme::UringDevice>,
    applied: u64,
    applied_term: u64,
) -> Result<(u64, u64), String> {
    let storage = log.storage(GROUP).map_err(|e| e.to_string())?;
    let fail = |e: raft::Error| format!("meta raftlog: {e}");
    if applied < BOOTSTRAP_INDEX {
        let first = storage.first_index().map_err(fail)?;
        return Ok((first - 1, storage.term(first - 1).map_err(fail)?));
    }
    log.align_to_checkpoint(GROUP, applied, applied_term)
        .map_err(|e| match e {
            keel_raftlog::RaftLogError::CheckpointMismatch { .. } => format!(
                "{e}: start this replica from a new data file (it catches up from its peers)"
            ),
            e => format!("meta raftlog: {e}"),
        })?;
    Ok((applied, applied_term))
}

/// Starts the tasks and runs the driver; returns the failure it stopped on.
pub(super) async fn serve(svc: Rc<Service>) -> String {
    let listener = match glommio::net::TcpListener::bind(&svc.cfg.listen) {
        Ok(l) => l,
        Err(e) => return format!("cannot listen on {}: {e}", svc.cfg.listen),
    };
    let rl = svc.log.clone();
    glommio::spawn_local(async move {
        let e = rl.run_flush().await;
        eprintln!("keel-meta: FATAL: raftlog: {e}");
    })
    .detach();
    for p in svc.peers.values() {
        glommio::spawn_local(net::peer_writer(p.clone())).detach();
    }
    glommio::spawn_local(net::accept_loop(svc.clone(), listener)).detach();
    glommio::spawn_local(super::handle::scheduler(svc.clone())).detach();
    eprintln!(
        "keel-meta: replica {} accepting on {} (group of {})",
        svc.cfg.id,
        svc.cfg.listen,
        svc.conf.voters.len()
    );
    drive(&svc).await
}

async fn drive(svc: &Rc<Service>) -> String {
    let id = svc.cfg.id;
    let mut next_tick = Instant::now() + svc.cfg.tick;
    loop {
        let now = Instant::now();
        if now >= next_tick {
            with_raw(svc, |raw| raw.tick());
            next_tick = now + svc.cfg.tick;
        }
        let msgs: Vec<_> = svc.inbox.borrow_mut().drain(..).collect();
        let props: Vec<_> = std::mem::take(&mut *svc.to_propose.borrow_mut());
        let lost = with_raw(svc, |raw| {
            for m in msgs {
                let last = raw.raft.raft_log.last_index();
                if m.get_msg_type() == raft::eraftpb::MessageType::MsgHeartbeat && m.commit > last {
                    // A leader sends a follower at most what it acknowledged: this replica
                    // has lost entries it acknowledged (raft-rs would panic on it).
                    return Some(format!(
                        "replica {id}: the leader (replica {}) says this replica acknowledged \
                         entries up to {}, but its log ends at {last}: its data file was lost or \
                         replaced. A replica cannot rejoin under the same id without its data \
                         (Raft needs its votes and log): restore the file",
                        m.from, m.commit
                    ));
                }
                let _ = raw.step(m);
            }
            None
        });
        if let Some(e) = lost {
            return e;
        }
        with_raw(svc, |raw| {
            for (seq, commands) in props {
                let data = machine::encode_entry(&machine::Entry {
                    version: machine::FORMAT_VERSION,
                    proposer: id,
                    seq,
                    commands,
                });
                if data.len() > ENTRY_BYTES_MAX {
                    if let Some(tx) = svc.pending.borrow_mut().remove(&seq) {
                        let why = format!(
                            "a meta entry of {} bytes is over the {ENTRY_BYTES_MAX}-byte limit",
                            data.len()
                        );
                        let _ = tx.send(Err(why));
                    }
                    continue;
                }
                if let Err(e) = raw.propose(vec![], data) {
                    if let Some(tx) = svc.pending.borrow_mut().remove(&seq) {
                        let _ = tx.send(Err(format!("proposal refused ({e}); retry")));
                    }
                }
            }
        });
        while with_raw(svc, |raw| raw.has_ready()) {
            if let Err(e) = handle_ready(svc).await {
                return e;
            }
        }
        update_role(svc);
        if let Err(e) = maybe_checkpoint(svc).await {
            return e;
        }
        if let Some(p) = svc.log.poisoned() {
            return format!("raftlog failed: {p}");
        }
        let wait = next_tick.saturating_duration_since(Instant::now());
        if svc.inbox.borrow().is_empty() && svc.to_propose.borrow().is_empty() {
            futures_lite::future::or(svc.wake.wait(), glommio::timer::sleep(wait)).await;
        }
    }
}

/// Publishes the role for the other tasks; a leader that stepped down fails its proposals
/// (outcome unknown), a new leader starts its soft state over.
fn update_role(svc: &Service) {
    let r = with_raw(svc, |raw| Role {
        leader: raw.raft.state == StateRole::Leader,
        ready: raw.raft.state == StateRole::Leader && raw.raft.commit_to_current_term(),
        leader_id: raw.raft.leader_id,
        term: raw.raft.term,
    });
    let old = svc.role.replace(r);
    if old.leader && !r.leader {
        for (_, tx) in svc.pending.borrow_mut().drain() {
            let _ = tx.send(Err(
                "the meta leader changed before the commit; retry".into()
            ));
        }
        eprintln!(
            "keel-meta: replica {}: no longer leading (term {})",
            svc.cfg.id, r.term
        );
    }
    if r.ready && !old.ready {
        *svc.soft.borrow_mut() = Soft::taking_over(&svc.state.borrow(), Instant::now());
        eprintln!(
            "keel-meta: replica {}: leading (term {})",
            svc.cfg.id, r.term
        );
    }
    if r.leader_id != old.leader_id || r.ready != old.ready {
        svc.changed.notify();
    }
}

async fn handle_ready(svc: &Rc<Service>) -> Result<(), String> {
    let mut rd = with_raw(svc, |raw| raw.ready());
    // A leader sends its appends before persisting them (Raft thesis 10.2.1).
    send(svc, rd.take_messages());
    let mut lsn = None;
    if !rd.snapshot().is_empty() {
        install_snapshot(svc, rd.snapshot()).await?;
        lsn = Some(
            svc.log
                .apply_snapshot(GROUP, rd.snapshot().get_metadata())
                .map_err(|e| format!("raftlog snapshot: {e}"))?,
        );
    }
    apply(svc, rd.take_committed_entries());
    if !rd.entries().is_empty() {
        lsn = Some(
            svc.log
                .append(GROUP, rd.entries())
                .map_err(|e| format!("raftlog append: {e}"))?,
        );
    }
    if let Some(hs) = rd.hs() {
        // A term or vote must be durable before the messages that follow it (Raft §5.1).
        lsn = Some(
            svc.log
                .set_hard_state(GROUP, hs, Flush::Now)
                .map_err(|e| format!("raftlog hard state: {e}"))?,
        );
    }
    if let Some(lsn) = lsn {
        // Durable before the votes and acknowledgements that promise it go out.
        svc.log
            .durable(lsn)
            .await
            .map_err(|e| format!("raftlog: {e}"))?;
    }
    send(svc, rd.take_persisted_messages());
    let mut light = with_raw(svc, |raw| raw.advance(rd));
    if let Some(commit) = light.commit_index() {
        // A commit index alone may be lost in a crash (it is learned again): not waited for.
        let mut hs = svc.log.hard_state(GROUP).unwrap_or_default();
        hs.commit = commit;
        svc.log
            .set_hard_state(GROUP, &hs, Flush::WithNext)
            .map_err(|e| format!("raftlog hard state: {e}"))?;
    }
    send(svc, light.take_messages());
    apply(svc, light.take_committed_entries());
    with_raw(svc, |raw| raw.advance_apply());
    Ok(())
}

/// Only the driver borrows the `RawNode` (the other tasks read [`Role`]); raft-rs calling the
/// snapshot provider from inside reads the state, never the `RawNode`.
fn with_raw<T>(svc: &Service, f: impl FnOnce(&mut MetaRaw) -> T) -> T {
    f(&mut svc.raw.borrow_mut())
}

fn send(svc: &Service, msgs: Vec<raft::eraftpb::Message>) {
    for m in msgs {
        if let Some(p) = svc.peers.get(&m.to) {
            p.send_raft(&m);
            if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
                // Queued whole (the state is small): raft-rs may go on with that peer. If it
                // is lost, the peer's next reply asks for another.
                with_raw(svc, |raw| {
                    raw.report_snapshot(m.to, raft::SnapshotStatus::Finish)
                });
            }
        }
    }
}

/// Applies committed entries in order and answers the proposals made here.
fn apply(svc: &Service, entries: Vec<raft::eraftpb::Entry>) {
    for e in entries {
        if e.index <= svc.applied.get().0 {
            continue; // covered by the checkpoint or an installed snapshot
        }
        if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
            match machine::decode_entry(&e.data) {
                Ok(entry) => {
                    let results: Vec<_> = {
                        let mut st = svc.state.borrow_mut();
                        entry.commands.iter().map(|c| st.apply(c)).collect()
                    };
                    if entry.proposer == svc.cfg.id {
                        if let Some(tx) = svc.pending.borrow_mut().remove(&entry.seq) {
                            let _ = tx.send(Ok(results));
                        }
                    }
                }
                // Every replica refuses the same bytes alike: the state stays identical.
                Err(why) => eprintln!("keel-meta: entry {}: {why}; skipped", e.index),
            }
        }
        svc.applied.set((e.index, e.term));
        svc.changed.notify();
    }
}

/// A snapshot from the leader: the state becomes the snapshot's, checkpointed before raft-rs's
/// record of it goes to the raftlog (a crash between the two is repaired at start).
async fn install_snapshot(svc: &Service, snap: &Snapshot) -> Result<(), String> {
    let meta = snap.get_metadata();
    let state = match machine::decode_image(snap.get_data()) {
        Ok(s) => s,
        Err(e) => return Err(format!("snapshot from the leader at {}: {e}", meta.index)),
    };
    *svc.state.borrow_mut() = state;
    svc.applied.set((meta.index, meta.term));
    checkpoint(svc).await?;
    eprintln!(
        "keel-meta: replica {}: installed a snapshot of the state at index {} (term {})",
        svc.cfg.id, meta.index, meta.term
    );
    svc.changed.notify();
    Ok(())
}

/// The state as of the applied index, for a replica that lags behind the compacted log.
impl Service {
    pub(super) fn snapshot(&self) -> Snapshot {
        let (index, term) = self.applied.get();
        let mut snap = Snapshot::default();
        snap.set_data(machine::encode_image(&self.state.borrow()).into());
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(self.conf.clone());
        snap.set_metadata(meta);
        snap
    }
}

async fn maybe_checkpoint(svc: &Service) -> Result<(), String> {
    let applied = svc.applied.get().0;
    let since = applied.saturating_sub(svc.checkpointed.get());
    if since == 0 {
        return Ok(());
    }
    if since < CHECKPOINT_ENTRIES && svc.last_checkpoint.get().elapsed() < CHECKPOINT_INTERVAL {
        return Ok(());
    }
    checkpoint(svc).await?;
    // Compact below what the checkpoint covers, keeping a margin for a lagging replica.
    let upto = if svc.peers.is_empty() {
        applied
    } else {
        applied.saturating_sub(COMPACT_LAG_ENTRIES)
    };
    let storage = svc.log.storage(GROUP).map_err(|e| e.to_string())?;
    let first = storage.first_index().unwrap_or(1);
    let last_index = storage.last_index().unwrap_or(0);
    let upto = upto.min(last_index);
    if upto >= first {
        svc.log
            .compact(GROUP, upto)
            .map_err(|e| format!("raftlog compaction: {e}"))?;
    }
    Ok(())
}

/// Writes the state as of the applied index into the next checkpoint slot, once the hard
/// states that commit those entries are durable (so a restart's commit index is at least the
/// checkpoint's applied index).
async fn checkpoint(svc: &Service) -> Result<(), String> {
    let (applied, applied_term) = svc.applied.get();
    let image = machine::encode_image(&svc.state.borrow());
    svc.log
        .durable(svc.log.last_lsn())
        .await
        .map_err(|e| format!("checkpoint: raftlog: {e}"))?;
    let c = Checkpoint {
        generation: svc.checkpoint_generation.get() + 1,
        applied,
        applied_term,
        image,
    };
    store::store(&svc.slots, &c)
        .await
        .map_err(|e| format!("checkpoint: {e}"))?;
    svc.checkpoint_generation.set(c.generation);
    svc.checkpointed.set(applied);
    svc.last_checkpoint.set(Instant::now());
    Ok(())
}
