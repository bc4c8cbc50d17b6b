//! keel-node: the Keel storage node.
//!
//! One glommio executor per configured core ([`shard::Shard`]), each owning a set of partitions,
//! an [`engine::Engine`] over its region of the device (through keel-nvme's io_uring backend),
//! and its end of the shard mesh. Clients speak the memcached text protocol ([`protocol`], the
//! one place requests are parsed); [`exec`] gives the commands their meaning on top of the
//! engines, [`conn`] runs connections, [`server`] starts it all from a [`config::Profile`].
//! [`latency`] keeps each shard's HDR histograms (`stats latency`); [`metrics`] serves them and
//! the `stats` counters to Prometheus. [`tune`] is `keel-node tune`: it probes a device and
//! writes a profile from the figures.
//!
//! Every write goes through Raft ([`replica`]: a raft-rs group per partition, the shard's
//! keel-raftlog as its log, [`transport`] to the peers); the engine is the state machine.
//! [`cluster`] is the node's side of keel-meta (registration, heartbeats, placement commands).
//! [`bulk`] is `keel-bulk build`: feature-table versions built offline in the engine's formats.

pub mod bulk;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod engine;
pub mod exec;
pub mod latency;
pub mod meta;
pub mod metrics;
pub mod protocol;
pub mod replica;
pub mod server;
pub mod shard;
pub mod tls;
pub mod transport;
pub mod tune;
