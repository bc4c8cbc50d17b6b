//! Embedded mode: a one-replica meta service inside another process, on that process's
//! glommio executor. keel-node runs it when started without `--meta` and `--peers`, so one
//! `keel-node` alone is a complete system: the node then talks to its own meta service through
//! the same client library, at `listen`, like any other, and other nodes may join it there.

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

/// An embedded meta service ready to run: its configuration checked and its data file locked
/// (until the replica's future ends). It may be made on one thread and run on another.
pub struct Embedded {
    cfg: ServiceConfig,
    lock: keel_nvme::DeviceLock,
}

/// Checks `cfg` and takes the lock of its data file, so that a bad configuration or a data
/// file in use is refused before anything else starts.
pub fn prepare(cfg: ServiceConfig) -> Result<Embedded, String> {
    if !cfg.peers.is_empty() || cfg.id != 1 {
        return Err("an embedded meta service is replica 1 of a group of one".into());
    }
    cfg.validate()?;
    if let Some(dir) = cfg.data.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let lock = keel_nvme::lock_device(&cfg.data)?;
    Ok(Embedded { cfg, lock })
}

impl Embedded {
    /// The replica's future, to be spawned on the caller's glommio executor
    /// (`glommio::spawn_local(f).detach()`). It ends only if the replica fails, with the reason.
    pub async fn run(self) -> String {
        let _lock = self.lock;
        service::run(self.cfg).await
    }
}
