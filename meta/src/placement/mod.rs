//! Placement: which nodes hold each partition's replicas and which of them leads.
//!
//! [`ClusterState`] is the model (nodes with zone, weight and health; each partition's voters,
//! learner and leader; a placement epoch). [`plan`] is the planner, a pure function from a state
//! to the next [`Move`]s; [`apply`] records a move's completion. [`measure`] says how balanced a
//! state is. The rules are in `planner.rs` and in docs/design.md ("Placement planner").

pub mod measure;
mod planner;
mod state;
mod topology;

pub use planner::{plan, Limits};
pub use state::{
    apply, ClusterState, Health, Move, Node, NodeId, PartitionId, Placement, StateError,
    PARTITIONS_MAX, REPLICAS_MAX, REPLICATION_FACTOR_MAX,
};
