//! [`GroupStorage`]: one group's view of the shard's [`RaftLog`] as raft-rs's `Storage`,
//! answered from memory with the error semantics of raft-rs's `MemStorage`.

use std::rc::Rc;

use keel_nvme::Device;
use raft::eraftpb::{Entry, Snapshot};
use raft::{Error, GetEntriesContext, RaftState, StorageError};

use crate::RaftLog;

/// Cheap to clone; every clone sees the same group.
pub struct GroupStorage<D: Device + 'static> {
    log: Rc<RaftLog<D>>,
    group: u64,
}

impl<D: Device + 'static> Clone for GroupStorage<D> {
    fn clone(&self) -> Self {
        GroupStorage {
            log: self.log.clone(),
            group: self.group,
        }
    }
}

impl<D: Device + 'static> GroupStorage<D> {
    pub(crate) fn new(log: Rc<RaftLog<D>>, group: u64) -> Self {
        GroupStorage { log, group }
    }

    pub fn group(&self) -> u64 {
        self.group
    }

    pub fn log(&self) -> &Rc<RaftLog<D>> {
        &self.log
    }

    fn with<T>(&self, f: impl FnOnce(&crate::state::Group) -> raft::Result<T>) -> raft::Result<T> {
        // Groups are never removed, and a GroupStorage exists only for a group that existed.
        self.log
            .with_group(self.group, f)
            .unwrap_or(Err(Error::Store(StorageError::Unavailable)))
    }
}

impl<D: Device + 'static> raft::Storage for GroupStorage<D> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.with(|g| Ok(RaftState::new(g.hs.clone(), g.conf.clone())))
    }

    /// Entries in [low, high), at least one and at most `max_size` bytes (as MemStorage). Below
    /// the first index: Compacted. Past the last index MemStorage panics; we answer Unavailable.
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        self.with(|g| {
            if low < g.first_index() {
                return Err(Error::Store(StorageError::Compacted));
            }
            if high > g.last_index() + 1 || low > high {
                return Err(Error::Store(StorageError::Unavailable));
            }
            let lo = (low - g.first_index()) as usize;
            let hi = (high - g.first_index()) as usize;
            let mut ents: Vec<Entry> = g.entries.range(lo..hi).cloned().collect();
            raft::util::limit_size(&mut ents, max_size);
            Ok(ents)
        })
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.with(|g| {
            if idx == g.compacted_index {
                return Ok(g.compacted_term);
            }
            if idx < g.first_index() {
                return Err(Error::Store(StorageError::Compacted));
            }
            g.term(idx).ok_or(Error::Store(StorageError::Unavailable))
        })
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.with(|g| Ok(g.first_index()))
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.with(|g| Ok(g.last_index()))
    }

    /// Built by the provider the node registered; without one, raft-rs is told to retry later.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        match self.log.snapshot_provider() {
            Some(f) => f(self.group, request_index, to),
            None => Err(Error::Store(StorageError::SnapshotTemporarilyUnavailable)),
        }
    }
}
