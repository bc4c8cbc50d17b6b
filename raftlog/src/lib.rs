//! keel-raftlog: the Raft log of one shard, shared by every Raft group (partition) on it.
//!
//! What it does: keeps each group's entries (since its compacted index), hard state, conf state
//! and snapshot point in memory, answers raft-rs's [`raft::Storage`] from there
//! ([`GroupStorage`]), and makes every change durable in one shared log on the shard's device
//! region: CRC32C-framed records with a shard-wide LSN, in fixed-size segments, written by group
//! commit (with no batch on the device, whatever is pending goes at once; while batches are in
//! flight the next one fills and goes when `batch_bytes_max` bytes are pending, when its oldest
//! record is `flush_delay` old, or when the device is idle again; several batches may be on the
//! device at once). On open it recovers every
//! group, cutting the log at the torn tail of a crash and refusing real corruption. Segments are
//! reused once every group has compacted past the entries they hold.
//!
//! What it does not do: decide anything about Raft (raft-rs does), store snapshot data (the
//! engine builds snapshots through [`RaftLog::set_snapshot_provider`]), or touch files itself:
//! all I/O goes through [`keel_nvme::Device`]. It is single-threaded by design (one per shard).
//!
//! Its one public seam: [`RaftLog`], with [`GroupStorage`] as each group's view of it.
//!
//! Durability contract: every mutation takes effect in memory at once and returns the LSN of its
//! last record; that change survives a crash once [`RaftLog::durable_lsn`] reaches the LSN.
//! `durable_lsn` only moves over a contiguous prefix of completed batches, and never again after a
//! failed write or sync (the log is then poisoned). The byte layout and recovery rules are in
//! docs/design.md.

mod batcher;
pub mod format;
mod log;
mod state;
mod storage;

#[cfg(test)]
mod tests;

use std::rc::Rc;
use std::time::Duration;

use keel_nvme::IoError;

pub use log::{DurableWait, FlushObserver, RaftLog, Signal, SignalWait, SnapshotProvider};
pub use storage::GroupStorage;

/// How soon a record must reach the device (see [`RaftLog::set_hard_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Due like every record: flushed at once on an idle device, within the batching bounds
    /// otherwise.
    Now,
    /// Written with the next batch something else starts, or when its LSN is waited for.
    WithNext,
}

/// Log sequence number of a record: +1 per record across the whole shard log, starting at 1.
pub type Lsn = u64;

/// The raftlog section of a profile.
#[derive(Clone, Debug)]
pub struct Config {
    /// Size of one segment; a multiple of 4096 and at least [`SEGMENT_BYTES_MIN`]. The region
    /// must hold at least [`SEGMENTS_MIN`] of them.
    pub segment_bytes: u64,
    /// Flush when this many record bytes are pending (profile default: 4096).
    pub batch_bytes_max: usize,
    /// ...or when the oldest pending record is this old (profile default: 5 ms).
    pub flush_delay: Duration,
    /// Batches on the device at once (each is write + fdatasync), at least 1.
    pub flushes_in_flight_max: usize,
}

pub const SEGMENT_BYTES_MIN: u64 = 64 << 10;
/// One active segment, one that may be sealed and waiting for compaction, and one kept free so
/// compaction records can always be written (entry appends may not take the last free segment).
pub const SEGMENTS_MIN: u64 = 3;

/// Counters for `stats` and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub flushes: u64,
    pub bytes_written: u64,
    pub records: u64,
    pub entries_in_memory_bytes: u64,
    pub segments_in_use: usize,
    pub segments_free: usize,
    pub flushes_in_flight_max_seen: usize,
}

/// Errors of the Raft log, one variant per thing a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum RaftLogError {
    #[error("raftlog I/O: {0}")]
    Io(#[from] IoError),
    #[error("raftlog config: {key} = {value}: {rule}")]
    Config {
        key: &'static str,
        value: String,
        rule: &'static str,
    },
    #[error(
        "raftlog corrupt in segment {segment} at byte {offset}: {why}; the log cannot be \
         recovered safely (restore this replica from its peers)"
    )]
    Corrupt {
        segment: u32,
        offset: u64,
        why: String,
    },
    #[error("raftlog full: no free segment among {segments}; compact groups to free segments")]
    Full { segments: usize },
    #[error("raftlog record of {bytes} bytes exceeds the {max_bytes} bytes a segment can take")]
    RecordTooLarge { bytes: u64, max_bytes: u64 },
    #[error("raftlog: {groups} groups need more than half a segment for their state records")]
    TooManyGroups { groups: usize },
    #[error("raftlog storage failed, nothing more is durable until restart: {0}")]
    Poisoned(Rc<str>),
    #[error(
        "group {group}: the checkpoint has applied index {applied}, but the raftlog holds \
         entries {first}..={last}: the raftlog does not match the checkpoint (damaged or \
         replaced)"
    )]
    CheckpointMismatch {
        group: u64,
        applied: u64,
        first: u64,
        last: u64,
    },
    #[error("raft group {0} does not exist on this shard")]
    UnknownGroup(u64),
    #[error("group {group}: entries must be contiguous: expected index {expected}, got {got}")]
    NotContiguous { group: u64, expected: u64, got: u64 },
    #[error("group {group}: entry index {index} is at or below the compacted index {compacted}")]
    Compacted {
        group: u64,
        index: u64,
        compacted: u64,
    },
    #[error("group {group}: compact to {index} beyond the last index {last}")]
    CompactBeyondLast { group: u64, index: u64, last: u64 },
    #[error("group {group}: snapshot at {index} is not after the compacted index {compacted}")]
    SnapshotOutOfDate {
        group: u64,
        index: u64,
        compacted: u64,
    },
}
