//! keel-node: the Keel storage node.
//!
//! One glommio executor per configured core ([`shard::Shard`]), each owning a set of partitions,
//! an [`engine::Engine`] over its region of the device (through keel-nvme's io_uring backend),
//! and its end of the shard mesh. Clients speak the memcached text protocol ([`protocol`], the
//! one place requests are parsed); [`exec`] gives the commands their meaning on top of the
//! engines, [`conn`] runs connections, [`server`] starts it all from a [`config::Profile`].
//!
//! Not here yet: Raft replication (the engine's write interface, apply-then-reply-when-durable,
//! is the seam it will use), the meta service, checkpoints of the index.

pub mod config;
pub mod conn;
pub mod engine;
pub mod exec;
pub mod meta;
pub mod protocol;
pub mod server;
pub mod shard;
pub mod transport;
