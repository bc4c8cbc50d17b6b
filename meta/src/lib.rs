//! keel-meta: the meta service of a Keel cluster. It will know the nodes, the partitions and
//! their placement, place replicas across zones, balance leaders and rebuild the replicas of lost
//! nodes; see ../shared/DESIGN.md ("Meta service") and issue 8.
//!
//! What exists (stage 1): the placement planner as a library.
//! - [`placement`]: the cluster state model and the pure planner, [`placement::plan`] (state in,
//!   moves out; no clock, no I/O, no memory between calls), with [`placement::apply`] to record a
//!   move's completion and [`placement::measure`] to judge the result.
//! - [`sim`]: a seeded simulation that drives the planner through placing, adding, draining and
//!   losing nodes (its tests, and `cargo run --release -p keel-meta --example simulate`).
//!
//! What does not exist yet: the `keel-meta` binary, its own Raft group on keel-raftlog, node
//! registration and heartbeats, the routing table the nodes cache, the operator CLI
//! (`keel-meta ctl`), and keel-node carrying out the moves. Those are later stages of issue 8.
//!
//! Its one public seam: [`placement::plan`] over [`placement::ClusterState`].

pub mod placement;
pub mod sim;
