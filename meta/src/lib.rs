//! keel-meta: the meta service of a Keel cluster. It knows the nodes, the keyspace's partitions
//! and their placement, places replicas across zones, balances leaders, marks silent nodes Down
//! and hands the planner's moves to the nodes; see ../shared/DESIGN.md ("Meta service"), issue 8
//! and meta/README.md.
//!
//! - [`placement`]: the cluster model and the pure planner, [`placement::plan`] (state in, moves
//!   out; no clock, no I/O, no memory between calls), with [`placement::apply`] and
//!   [`placement::measure`].
//! - [`machine`]: the replicated state machine (nodes, keyspace, placement under an epoch, moves
//!   in flight, balance switch): [`machine::Command`]s applied deterministically in log order.
//! - [`schedule`]: what the meta leader decides, as pure functions (moves done, leaders,
//!   per-node commands, silent nodes, moves to hand out).
//! - [`proto`]: the wire protocol (versioned frames; requests and responses).
//! - [`service`]: one meta replica: a raft-rs group over keel-raftlog on a keel-nvme data file,
//!   TCP for nodes, ctl and peers; [`embedded`] runs a one-replica service inside another
//!   process (keel-node without `--meta`).
//! - [`client`]: what keel-node and `keel-meta ctl` call: leader discovery with bounded
//!   retries, register, heartbeat, routing table cache.
//! - [`sim`]: a seeded simulation of the planner (tests and the `simulate` example).
//! - [`tables`]: feature-table definitions (issue 11), declared with `ctl create-table`.
//!
//! Its public seams: [`placement::plan`] for placement, [`client::MetaClient`] /
//! [`client::NodeSession`] for nodes, [`service::run`] for running a replica.

pub mod client;
pub mod ctl;
pub mod embedded;
pub mod machine;
pub mod placement;
pub mod proto;
pub mod schedule;
pub mod service;
pub mod sim;
pub mod tables;
