//! What a shard's engine can be asked to do, as owned values: these cross the shard mesh, so
//! they hold their bytes rather than borrow the connection's buffer.

use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreMode {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
}

#[derive(Debug)]
pub enum Op {
    /// A read of a bulk table's key (`<table>:<key>` without `<table>:`) in the slice of
    /// `build_id`'s table partition `partition`, on the shard of keyspace partition `group`
    /// (engine/tables.rs). Never proposed to Raft: table versions are immutable, so any
    /// replica answers.
    SliceGet {
        build_id: u64,
        partition: u32,
        group: u64,
        key: Vec<u8>,
    },
    /// get/gets/gat/gats/mg/me. `touch` updates the TTL (gat, mg T); `vivify` creates an empty
    /// item on a miss and hands this client the win token (mg N); `recache` hands it the win
    /// token if the item expires within that TTL (mg R); `bump` marks the item fetched and
    /// accessed now (all but mg u and me).
    Get {
        key: Vec<u8>,
        touch: Option<i64>,
        vivify: Option<i64>,
        recache: Option<i64>,
        want_value: bool,
        bump: bool,
    },
    /// set/add/replace/append/prepend/cas/ms. `cas`: compare with the item's CAS unique (`cas`,
    /// ms C). In Set and Replace mode a compare needs the item and never matches 0 (memcached's
    /// NREAD_CAS); in Append and Prepend mode 0 means no compare; Add ignores it.
    /// `invalidate`: in Set and Replace mode, a CAS older than the item's stores the value
    /// marked stale, keeping the item's TTL, instead of failing (ms I).
    Store {
        mode: StoreMode,
        key: Vec<u8>,
        flags: u32,
        exptime: i64,
        cas: Option<u64>,
        data: Vec<u8>,
        invalidate: bool,
    },
    /// delete/md. `cas`: the item's CAS unique must equal it (md C; 0 never matches).
    /// `invalidate`: mark stale (with optional new TTL) instead of removing (md I).
    Delete {
        key: Vec<u8>,
        cas: Option<u64>,
        invalidate: Option<Option<i64>>,
    },
    /// incr/decr/ma. `cas` 0 = no compare (memcached's ma C0 answers HD). `vivify`: (initial
    /// value, exptime) to create a missing counter with (ma N).
    Arith {
        key: Vec<u8>,
        incr: bool,
        delta: u64,
        cas: u64,
        vivify: Option<(u64, i64)>,
        touch: Option<i64>,
    },
    Touch {
        key: Vec<u8>,
        exptime: i64,
    },
    FlushAll {
        delay: i64,
    },
    /// A shard's figures for `stats` (never an engine op, never in a Raft entry).
    Stats(StatsGroup),
    /// A membership change of every partition: an admin command for Raft, never an engine op.
    Member(MemberChange),
    /// This node's view of every partition's members (an admin command, never an engine op).
    Members,
}

/// Which of a shard's figures a `stats` request collects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsGroup {
    /// The counters of plain `stats` (and of `/metrics`).
    General,
    /// The latency histograms (`stats latency`).
    Latency,
    /// The open client connections (`stats conns`).
    Conns,
    /// The partitions this node hosts (`stats partitions`).
    Partitions,
}

/// One open client connection, for `stats conns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnRow {
    pub fd: i32,
    pub addr: std::net::SocketAddr,
    pub listen_addr: std::net::SocketAddr,
    /// memcached's state names: `conn_waiting`, `conn_parse_cmd`, `conn_mwrite`.
    pub state: &'static str,
    pub secs_since_last_cmd: u32,
}

/// One partition this node hosts, for `stats partitions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRow {
    pub partition: u64,
    /// `leader`, `follower` or `learner`.
    pub role: &'static str,
    pub term: u64,
    pub applied: u64,
    pub keys: u64,
    /// Of the partition's items as [`crate::replica::Replicas::digest`] hashes a shard's:
    /// equal on two replicas iff they hold the same items.
    pub digest: u64,
}

/// A replica added or removed, one at a time, in every partition (learner first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// The node joins as a learner: it gets the log (or a snapshot) but does not vote.
    /// `addr` is its peer address (shard 0's peer port).
    AddLearner {
        node: u64,
        addr: std::net::SocketAddr,
    },
    /// A learner that has caught up becomes a voter.
    Promote { node: u64 },
    /// The node leaves every partition (leadership moves off it first).
    Remove { node: u64 },
}

/// One node in `members`: in how many of the answering node's partitions it votes or learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node: u64,
    pub addr: Option<std::net::SocketAddr>,
    pub voter_in: u32,
    pub learner_in: u32,
}

impl Op {
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Op::Get { key, .. }
            | Op::Store { key, .. }
            | Op::Delete { key, .. }
            | Op::Arith { key, .. }
            | Op::Touch { key, .. } => Some(key),
            Op::FlushAll { .. }
            | Op::Stats(_)
            | Op::Member(_)
            | Op::Members
            | Op::SliceGet { .. } => None,
        }
    }
}

/// An item as a read returns it.
#[derive(Clone, Debug)]
pub struct Item {
    pub flags: u32,
    /// Absolute unix seconds; 0 = never.
    pub exptime: u32,
    pub cas: u64,
    /// Empty when the op did not ask for the value (`value_len` is always right).
    pub value: Arc<[u8]>,
    pub value_len: u32,
    pub stale: bool,
    /// This client got the win token (W).
    pub win: bool,
    /// Another client already holds the win token (Z).
    pub already_won: bool,
    /// Read before this op (mg `h`, me `fetch`).
    pub fetched: bool,
    /// Seconds since it was written or last read, before this op (mg `l`, me `la`).
    pub idle_s: u32,
}

#[derive(Debug)]
pub enum OpResult {
    Hit(Item),
    Miss,
    Stored {
        cas: u64,
    },
    NotStored,
    Exists,
    NotFound,
    Deleted,
    Touched,
    Number {
        value: u64,
        item: Item,
    },
    NonNumeric,
    /// A delta on a value that would not fit in 64 bits (ma J/D parsing is the parser's).
    Ok,
    Stats(Vec<(&'static str, u64)>),
    Latency(Box<crate::latency::Report>),
    Conns(Vec<ConnRow>),
    Members(Vec<Member>),
    Partitions(Vec<PartitionRow>),
    TooLarge,
    /// Out of space or a poisoned log: the text follows "SERVER_ERROR ".
    ServerError(String),
    /// A request this node refuses as the client's mistake (a write to a bulk-loaded table):
    /// the text follows "CLIENT_ERROR ".
    ClientError(String),
}
