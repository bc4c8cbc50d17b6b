//! Embedded mode: a one-replica meta service inside another process, on that process's
//! glommio executor. keel-node runs it when started without `--meta`, so one `keel-node`
//! alone is a complete system: the node then talks to its own meta service through the same
//! client library, at `listen`, like any other.

use std::future::Future;
use std::path::PathBuf;

use crate::service::{self, ServiceConfig};

/// The configuration of an embedded meta service: replica 1 of a group of one, listening on
/// `listen`, its data file at `data`, bootstrapping a keyspace of `partitions` partitions at
/// `replication_factor` (a single node: 1).
pub fn config(
    listen: impl Into<String>,
    data: impl Into<PathBuf>,
    partitions: u32,
    replication_factor: u32,
) -> ServiceConfig {
    ServiceConfig {
        partitions,
        replication_factor,
        ..ServiceConfig::new(1, listen, data)
    }
}

/// Checks `cfg`, takes the lock of its data file (held by the returned future) and returns the
/// replica's future, to be spawned on the caller's executor (`glommio::spawn_local(f).detach()`).
/// The future ends only if the replica fails, with the reason.
pub fn run_embedded(cfg: ServiceConfig) -> Result<impl Future<Output = String>, String> {
    if !cfg.peers.is_empty() || cfg.id != 1 {
        return Err("an embedded meta service is replica 1 of a group of one".into());
    }
    if let Some(dir) = cfg.data.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let lock = keel_nvme::lock_device(&cfg.data)?;
    Ok(async move {
        let _lock = lock;
        service::run(cfg).await
    })
}
