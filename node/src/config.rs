//! The profile: every tunable of a node, read from one TOML file (hw-configs/*.toml), with
//! `--listen`, `--data` and `--cores` overriding it. Unknown keys are refused by serde; values
//! are checked by `validate`, whose messages name the key, the value and the rule. `validate`
//! judges the profile on its own (so a profile for a 32-core host checks on a laptop);
//! `fits_host` checks what only this host can say (do the listed CPUs exist).

use std::ops::Range;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub node: NodeSection,
    pub device: DeviceSection,
    pub io: IoSection,
    pub engine: EngineSection,
    pub raftlog: RaftLogSection,
    pub raft: RaftSection,
    pub gc: GcSection,
    pub net: NetSection,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub listen: String,
    pub cores: Vec<usize>,
    pub partitions: u32,
    /// This node's Raft id (1 and up).
    pub id: u64,
    /// Every node of the cluster, this one included, as "ID=IP:PORT": where shard 0 of that node
    /// accepts peer connections (shard s on PORT + s). Empty: a single node, no peer port.
    pub peers: Vec<String>,
    /// A new data file starts with no members: the node waits to be added to a running cluster.
    #[serde(default)]
    pub join: bool,
    /// Where to serve Prometheus metrics (HTTP GET /metrics), as IP:PORT; empty: not served.
    #[serde(default)]
    pub metrics_listen: String,
    /// Shared by every node of a cluster: a peer connection counts only once it proves it knows
    /// this (an HMAC challenge). Empty: peer ports accept any Keel node.
    #[serde(default)]
    pub cluster_secret: String,
    /// The meta service's replicas, "IP:PORT" each. Set: the node registers there, hosts only
    /// the partitions placed on it and learns its peers from the routing table (`node.peers`
    /// stays empty). Empty: static placement through `node.peers`.
    #[serde(default)]
    pub meta: Vec<String>,
    /// With `node.meta`: where shard 0 accepts peer connections (shard s on PORT + s), as the
    /// meta service tells the other nodes.
    #[serde(default)]
    pub peer_listen: String,
    /// With `node.meta`: the failure domain (rack, availability zone) this node is in; the
    /// meta service spreads each partition's replicas over zones.
    #[serde(default = "default_zone")]
    pub zone: String,
    /// With `node.meta` and `node.peers` empty: where the meta service this node runs inside
    /// itself listens (IP:PORT). Other nodes join with `--meta` at this address.
    #[serde(default)]
    pub meta_listen: String,
    /// The embedded meta service's data file; empty: beside the first device, as
    /// "<device.paths[0]>.meta" (which must then be a file, not a block device).
    #[serde(default)]
    pub meta_data: PathBuf,
    /// The replication factor the embedded meta service gives the keyspace when it creates it
    /// (one node holds one replica of each partition; more come as nodes join).
    #[serde(default = "default_replication_factor")]
    pub replication_factor: u32,
}

fn default_replication_factor() -> u32 {
    3
}

fn default_zone() -> String {
    "default".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSection {
    /// Files or block devices, one or more. The shards are cut into as many contiguous groups
    /// (shard s is on device `s * devices / shards`), and each device is split evenly between
    /// the shards of its group, after its own superblock.
    pub paths: Vec<PathBuf>,
    /// Bytes Keel uses on each device.
    pub size_bytes: u64,
}

/// The shards that live on device `d` of `devices` when a node has `shards` shards: contiguous
/// groups whose sizes differ by at most one. The inverse of [`device_of_shard`].
pub fn device_shards(shards: usize, devices: usize, d: usize) -> Range<usize> {
    assert!(devices >= 1 && devices <= shards && d < devices);
    (d * shards).div_ceil(devices)..((d + 1) * shards).div_ceil(devices)
}

/// The device shard `s` lives on (see [`device_shards`]).
pub fn device_of_shard(shards: usize, devices: usize, s: usize) -> usize {
    assert!(devices >= 1 && devices <= shards && s < shards);
    s * devices / shards
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IoSection {
    /// "io_uring", or "spdk" in a keel-node built with `--features spdk`.
    pub backend: String,
    pub ring_depth: usize,
    pub io_memory_bytes: u64,
    /// SPDK's JSON config (it creates the bdevs that `device.paths` name), for "spdk".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub spdk_config: String,
    /// Hugepage memory SPDK reserves at start in MiB, for "spdk" (0: grown on demand).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub spdk_mem_mb: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    pub segment_bytes: u64,
    pub value_len_max: usize,
    pub cache_bytes: u64,
    /// An index checkpoint is taken once this many records (and a quarter of the index's
    /// entries) were appended since the last one began.
    #[serde(default = "index_checkpoint_records_min_default")]
    pub index_checkpoint_records_min: u64,
    /// ... or once this long passed with anything appended.
    #[serde(default = "index_checkpoint_interval_ms_default")]
    pub index_checkpoint_interval_ms: u64,
}

fn index_checkpoint_records_min_default() -> u64 {
    1_000_000
}

fn index_checkpoint_interval_ms_default() -> u64 {
    300_000
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RaftLogSection {
    /// Per shard, carved from the device before the value log.
    pub region_bytes: u64,
    pub segment_bytes: u64,
    pub batch_bytes_max: usize,
    pub flush_delay_ms: u64,
    pub flushes_in_flight_max: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RaftSection {
    pub tick_ms: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub checkpoint_interval_ms: u64,
    pub stale_reads: bool,
    pub request_timeout_ms: u64,
    pub compact_lag_entries: u64,
    pub snapshot_inflight_bytes: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GcSection {
    pub live_ratio_min: f64,
    pub free_segments_min: usize,
    pub bytes_per_sec_max: u64,
    pub interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetSection {
    pub connections_max: usize,
    pub read_buffer_bytes: usize,
    pub pipeline_depth_max: usize,
    /// A shared secret: when set, a connection runs the admin commands only after
    /// `admin_auth <token>` (loopback clients too); empty: admin commands from loopback clients.
    #[serde(default)]
    pub admin_token: String,
    /// PEM certificate chain and private key: with both, the client port speaks only TLS.
    /// Empty: plain TCP.
    #[serde(default)]
    pub tls_cert: PathBuf,
    #[serde(default)]
    pub tls_key: PathBuf,
}

/// Shortest `net.admin_token` or `node.cluster_secret` accepted: a guessable one is no
/// protection.
pub const SECRET_LEN_MIN: usize = 16;

/// A secret is empty (`off` says what that means) or at least [`SECRET_LEN_MIN`] printable
/// ASCII characters. The message names the rule and the length, never the secret.
fn secret_rule(key: &str, secret: &str, off: &str) -> Result<(), String> {
    if secret.is_empty()
        || (secret.len() >= SECRET_LEN_MIN && secret.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Ok(());
    }
    Err(rule(
        key,
        format!("({} bytes)", secret.len()),
        &format!(
            "must be empty ({off}) or at least {SECRET_LEN_MIN} printable ASCII characters \
             without spaces"
        ),
    ))
}

/// What `--print-profile` shows instead of a set `net.admin_token` or `node.cluster_secret`.
pub const REDACTED: &str = "<redacted>";

const MIB: u64 = 1 << 20;

fn rule(key: &str, value: impl std::fmt::Display, why: &str) -> String {
    format!("{key} = {value}: {why}")
}

/// `lo <= value <= hi`, or the error naming the key, the value and the range.
fn between<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    lo: T,
    hi: T,
) -> Result<(), String> {
    if value < lo || value > hi {
        return Err(rule(key, &value, &format!("must be between {lo} and {hi}")));
    }
    Ok(())
}

impl Profile {
    pub fn load(path: &std::path::Path) -> Result<Profile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read profile {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("profile {}: {e}", path.display()))
    }

    /// Checks every value; the error names the key, the value and the rule.
    pub fn validate(&self) -> Result<(), String> {
        let n = &self.node;
        n.listen.parse::<std::net::SocketAddr>().map_err(|_| {
            rule(
                "node.listen",
                format!("{:?}", n.listen),
                "must be IP:PORT, e.g. 127.0.0.1:11211",
            )
        })?;
        if !n.metrics_listen.is_empty() {
            let m = n.metrics_listen.parse::<std::net::SocketAddr>();
            if m.is_err() || n.metrics_listen == n.listen {
                return Err(rule(
                    "node.metrics_listen",
                    format!("{:?}", n.metrics_listen),
                    "must be empty (off) or IP:PORT other than node.listen, e.g. 127.0.0.1:9211",
                ));
            }
        }
        self.validate_meta()?;
        if n.cores.is_empty() || n.cores.len() > 256 {
            return Err(rule(
                "node.cores",
                format!("{:?}", n.cores),
                "must list 1 to 256 CPU ids",
            ));
        }
        let mut sorted = n.cores.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != n.cores.len() {
            return Err(rule(
                "node.cores",
                format!("{:?}", n.cores),
                "lists a CPU twice",
            ));
        }
        if !n.partitions.is_power_of_two()
            || (n.partitions as usize) < n.cores.len()
            || n.partitions > 65536
        {
            return Err(rule(
                "node.partitions",
                n.partitions,
                "must be a power of two between the number of cores and 65536",
            ));
        }
        self.validate_device_paths()?;
        let d = &self.device;
        self.validate_backend()?;
        if !(8..=32768).contains(&self.io.ring_depth) || !self.io.ring_depth.is_power_of_two() {
            return Err(rule(
                "io.ring_depth",
                self.io.ring_depth,
                "must be a power of two from 8 to 32768",
            ));
        }
        if self.io.io_memory_bytes < MIB || self.io.io_memory_bytes > 1024 * MIB {
            return Err(rule(
                "io.io_memory_bytes",
                self.io.io_memory_bytes,
                "must be between 1 MiB and 1 GiB",
            ));
        }
        let e = &self.engine;
        if e.value_len_max == 0 || e.value_len_max as u64 > 64 * MIB {
            return Err(rule(
                "engine.value_len_max",
                e.value_len_max,
                "must be between 1 and 67108864 (64 MiB)",
            ));
        }
        if e.segment_bytes % MIB != 0 || e.segment_bytes < 2 * MIB || e.segment_bytes > 1024 * MIB {
            return Err(rule(
                "engine.segment_bytes",
                e.segment_bytes,
                "must be a multiple of 1 MiB from 2 MiB to 1 GiB",
            ));
        }
        if e.segment_bytes < 2 * (e.value_len_max as u64 + 4096) {
            return Err(rule(
                "engine.segment_bytes",
                e.segment_bytes,
                &format!("must hold at least two of the largest values (engine.value_len_max = {}) plus a header block", e.value_len_max),
            ));
        }
        // The device with the most shards is the tightest.
        let shards = n.cores.len().div_ceil(d.paths.len()) as u64;
        let segs_per_shard = (d.size_bytes.saturating_sub(MIB) / shards)
            .saturating_sub(self.raftlog.region_bytes + MIB)
            / e.segment_bytes;
        if segs_per_shard < 4 {
            return Err(rule(
                "device.size_bytes",
                d.size_bytes,
                &format!(
                    "too small: each of the {shards} shards on a device needs 1 MiB of checkpoints, \
                     raftlog.region_bytes ({}) and at least 4 segments of {} bytes, plus 1 MiB for \
                     the superblock (at least {} bytes)",
                    self.raftlog.region_bytes,
                    e.segment_bytes,
                    device_bytes_min(shards, self.raftlog.region_bytes, e.segment_bytes)
                ),
            ));
        }
        if d.size_bytes % 4096 != 0 {
            return Err(rule(
                "device.size_bytes",
                d.size_bytes,
                "must be a multiple of 4096",
            ));
        }
        let l = &self.raftlog;
        between(
            "raftlog.batch_bytes_max",
            l.batch_bytes_max,
            512,
            64 * MIB as usize,
        )?;
        between("raftlog.flush_delay_ms", l.flush_delay_ms, 1, 1000)?;
        if l.segment_bytes % MIB != 0
            || l.segment_bytes < 2 * (e.value_len_max as u64 + MIB)
            || l.segment_bytes > 1024 * MIB
        {
            return Err(rule(
                "raftlog.segment_bytes",
                l.segment_bytes,
                &format!(
                    "must be a multiple of 1 MiB, at most 1 GiB, holding two of the largest values \
                     plus 1 MiB each (engine.value_len_max = {})",
                    e.value_len_max
                ),
            ));
        }
        if l.region_bytes % l.segment_bytes != 0 || l.region_bytes < 4 * l.segment_bytes {
            return Err(rule(
                "raftlog.region_bytes",
                l.region_bytes,
                &format!(
                    "must be a multiple of raftlog.segment_bytes ({}) and hold at least 4 segments",
                    l.segment_bytes
                ),
            ));
        }
        between(
            "raftlog.flushes_in_flight_max",
            l.flushes_in_flight_max,
            1,
            64,
        )?;
        between(
            "engine.index_checkpoint_records_min",
            e.index_checkpoint_records_min,
            1,
            1 << 40,
        )?;
        between(
            "engine.index_checkpoint_interval_ms",
            e.index_checkpoint_interval_ms,
            1000,
            86_400_000,
        )?;
        let r = &self.raft;
        between("raft.tick_ms", r.tick_ms, 1, 10_000)?;
        if r.heartbeat_ticks == 0 || r.election_ticks <= r.heartbeat_ticks {
            return Err(rule(
                "raft.election_ticks",
                r.election_ticks,
                &format!(
                    "must be above raft.heartbeat_ticks ({}), which must be at least 1",
                    r.heartbeat_ticks
                ),
            ));
        }
        between(
            "raft.checkpoint_interval_ms",
            r.checkpoint_interval_ms,
            10,
            600_000,
        )?;
        if r.request_timeout_ms < r.tick_ms * r.election_ticks as u64 {
            return Err(rule(
                "raft.request_timeout_ms",
                r.request_timeout_ms,
                "must be at least one election timeout (raft.tick_ms x raft.election_ticks)",
            ));
        }
        between(
            "raft.snapshot_inflight_bytes",
            r.snapshot_inflight_bytes,
            1 << 20,
            48 << 20,
        )?;
        self.peer_map()?;
        let g = &self.gc;
        if !(0.0..=0.95).contains(&g.live_ratio_min) {
            return Err(rule(
                "gc.live_ratio_min",
                g.live_ratio_min,
                "must be between 0.0 and 0.95",
            ));
        }
        if g.free_segments_min < 2 {
            return Err(rule(
                "gc.free_segments_min",
                g.free_segments_min,
                "must be at least 2 (GC needs one to move live data into)",
            ));
        }
        if g.bytes_per_sec_max < MIB {
            return Err(rule(
                "gc.bytes_per_sec_max",
                g.bytes_per_sec_max,
                "must be at least 1048576",
            ));
        }
        between("gc.interval_ms", g.interval_ms, 1, 60_000)?;
        let t = &self.net;
        between("net.connections_max", t.connections_max, 1, 1_000_000)?;
        between(
            "net.read_buffer_bytes",
            t.read_buffer_bytes,
            4096,
            64 * MIB as usize,
        )?;
        between("net.pipeline_depth_max", t.pipeline_depth_max, 1, 65536)?;
        secret_rule(
            "net.admin_token",
            &t.admin_token,
            "admin commands only from loopback clients",
        )?;
        secret_rule(
            "node.cluster_secret",
            &n.cluster_secret,
            "peer ports accept any Keel node",
        )?;
        let (cert, key) = (t.tls_cert.as_os_str(), t.tls_key.as_os_str());
        if cert.is_empty() != key.is_empty() {
            return Err(rule(
                "net.tls_cert",
                format!("{:?} with net.tls_key = {:?}", t.tls_cert, t.tls_key),
                "set both (PEM files: the certificate chain and its private key) or neither",
            ));
        }
        Ok(())
    }

    /// The profile as `--print-profile` shows it: secrets replaced by [`REDACTED`].
    pub fn redacted(&self) -> Profile {
        let mut p = self.clone();
        for secret in [&mut p.net.admin_token, &mut p.node.cluster_secret] {
            if !secret.is_empty() {
                *secret = REDACTED.into();
            }
        }
        p
    }
}

/// The smallest `device.size_bytes` that holds `shards` shards with this raftlog region and
/// value-log segment size (the rule `validate` applies), rounded up to 1 MiB.
pub fn device_bytes_min(shards: u64, raftlog_region_bytes: u64, segment_bytes: u64) -> u64 {
    MIB + shards * (MIB + raftlog_region_bytes + 4 * segment_bytes)
}

impl Profile {
    /// `device.paths`: at least one, none empty, none twice, and no more devices than shards.
    fn validate_device_paths(&self) -> Result<(), String> {
        let paths = &self.device.paths;
        let shown = || format!("{paths:?}");
        if paths.is_empty() {
            return Err(rule(
                "device.paths",
                shown(),
                "must list at least one file or block device",
            ));
        }
        if paths.iter().any(|p| p.as_os_str().is_empty()) {
            return Err(rule(
                "device.paths",
                shown(),
                "lists an empty path: each entry must name a file or block device",
            ));
        }
        let mut sorted: Vec<_> = paths.iter().collect();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != paths.len() {
            return Err(rule("device.paths", shown(), "lists a device twice"));
        }
        if paths.len() > self.node.cores.len() {
            return Err(rule(
                "device.paths",
                shown(),
                &format!(
                    "lists {} devices but node.cores has only {} shards: each device needs at \
                     least one shard",
                    paths.len(),
                    self.node.cores.len()
                ),
            ));
        }
        Ok(())
    }

    /// What only this host can decide: every CPU in `node.cores` exists here.
    pub fn fits_host(&self) -> Result<(), String> {
        let cpus = core_count();
        for &c in &self.node.cores {
            if c >= cpus {
                return Err(rule(
                    "node.cores",
                    format!("{:?}", self.node.cores),
                    &format!(
                        "CPU {c} does not exist (this host has CPUs 0..{})",
                        cpus - 1
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Placed by a meta service: one named by `node.meta`, or the one this node runs inside
    /// itself (`embedded_meta`). Otherwise static placement through `node.peers`.
    pub fn placed(&self) -> bool {
        self.node.peers.is_empty() && !self.node.join
    }

    /// Neither `node.meta` nor `node.peers`: this node runs a one-replica meta service at
    /// `node.meta_listen` and registers with it.
    /// The device backend `io` names (validated).
    pub fn backend(&self) -> keel_nvme::Backend {
        match self.io.backend.as_str() {
            "spdk" => keel_nvme::Backend::Spdk(keel_nvme::SpdkConfig {
                json_config: self.io.spdk_config.clone(),
                mem_size_mb: self.io.spdk_mem_mb,
            }),
            _ => keel_nvme::Backend::IoUring,
        }
    }

    fn validate_backend(&self) -> Result<(), String> {
        let io = &self.io;
        match io.backend.as_str() {
            "io_uring" => Ok(()),
            "spdk" if !cfg!(feature = "spdk") => Err(rule(
                "io.backend",
                "\"spdk\"",
                "the SPDK backend is not built in this binary (build keel-node with --features \
                 spdk on a host with SPDK installed), use \"io_uring\"",
            )),
            "spdk" if io.spdk_config.is_empty() => Err(rule(
                "io.spdk_config",
                "\"\"",
                "must name SPDK's JSON config, which creates the bdevs device.paths names",
            )),
            "spdk" if self.embedded_meta() && self.node.meta_data.as_os_str().is_empty() => {
                Err(rule(
                    "node.meta_data",
                    "\"\"",
                    "must name a file for the embedded meta service when device.paths are SPDK \
                     bdevs",
                ))
            }
            "spdk" => Ok(()),
            other => Err(rule(
                "io.backend",
                format!("{other:?}"),
                "must be \"io_uring\" or \"spdk\"",
            )),
        }
    }

    pub fn embedded_meta(&self) -> bool {
        self.placed() && self.node.meta.is_empty()
    }

    /// The meta service's replicas this node registers with.
    pub fn meta_addrs(&self) -> Vec<String> {
        match self.embedded_meta() {
            true => vec![self.node.meta_listen.clone()],
            false => self.node.meta.clone(),
        }
    }

    /// The embedded meta service's data file (`node.meta_data`, or beside the first device).
    pub fn meta_data_path(&self) -> PathBuf {
        if !self.node.meta_data.as_os_str().is_empty() {
            return self.node.meta_data.clone();
        }
        let mut p = self.device.paths[0].clone().into_os_string();
        p.push(".meta");
        p.into()
    }

    /// `node.meta` (or, for the embedded meta service, `node.meta_listen`), `node.peer_listen`
    /// and `node.zone` go together, and not with `node.peers`.
    fn validate_meta(&self) -> Result<(), String> {
        let n = &self.node;
        if !self.placed() {
            if !n.meta.is_empty() {
                return Err(rule(
                    "node.peers",
                    format!("{:?}", n.peers),
                    "must be empty (and node.join false) with node.meta: the meta service \
                     places the partitions and names the peers",
                ));
            }
            return Ok(());
        }
        let listen: Option<std::net::SocketAddr> = n.listen.parse().ok();
        let peer: Option<std::net::SocketAddr> = n.peer_listen.parse().ok();
        // Shard s accepts peers on peer_listen's PORT + s.
        let shards = n.cores.len() as u32;
        let peer_port = |port: u16| {
            peer.is_some_and(|q| {
                (q.port() as u32..q.port() as u32 + shards).contains(&(port as u32))
            })
        };
        if self.embedded_meta() {
            let m: Option<std::net::SocketAddr> = n.meta_listen.parse().ok();
            let clashes = |a: std::net::SocketAddr| {
                listen.is_some_and(|l| l.port() == a.port()) || peer_port(a.port())
            };
            if m.is_none_or(|a| a.port() == 0 || clashes(a)) {
                return Err(rule(
                    "node.meta_listen",
                    format!("{:?}", n.meta_listen),
                    "must be IP:PORT on a port other than node.listen's and node.peer_listen's \
                     (one per shard) when node.meta and node.peers are empty: the node runs its \
                     own meta service there (--meta-listen), e.g. 127.0.0.1:11212",
                ));
            }
            let rf = n.replication_factor;
            if rf == 0 || rf as usize > keel_meta::placement::REPLICATION_FACTOR_MAX {
                return Err(rule(
                    "node.replication_factor",
                    rf,
                    &format!(
                        "must be 1 to {}",
                        keel_meta::placement::REPLICATION_FACTOR_MAX
                    ),
                ));
            }
        }
        for m in &n.meta {
            if m.parse::<std::net::SocketAddr>().is_err() {
                return Err(rule(
                    "node.meta",
                    format!("{:?}", n.meta),
                    &format!("{m:?} is not IP:PORT"),
                ));
            }
        }
        if peer.is_none_or(|a| a.port() == 0) || listen.is_some_and(|l| peer_port(l.port())) {
            return Err(rule(
                "node.peer_listen",
                format!("{:?}", n.peer_listen),
                "must be IP:PORT whose ports (one per shard, PORT + shard) miss node.listen's \
                 when the node is placed by a meta service (node.meta, or its own when \
                 node.peers is empty) (--peer-listen), e.g. 127.0.0.1:11213",
            ));
        }
        if n.zone.is_empty() || n.zone.len() > 64 || !n.zone.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(rule(
                "node.zone",
                format!("{:?}", n.zone),
                "must be 1 to 64 printable characters without spaces",
            ));
        }
        Ok(())
    }

    /// The shards on device `d` (index into `device.paths`).
    pub fn shards_of_device(&self, d: usize) -> Range<usize> {
        device_shards(self.node.cores.len(), self.device.paths.len(), d)
    }

    /// The device (index into `device.paths`) shard `s` lives on.
    pub fn device_of_shard(&self, s: usize) -> usize {
        device_of_shard(self.node.cores.len(), self.device.paths.len(), s)
    }

    /// `node.peers` as id -> address of shard 0's peer port; empty for a single node. Checks
    /// that this node is listed and ids are unique.
    pub fn peer_map(
        &self,
    ) -> Result<std::collections::BTreeMap<u64, std::net::SocketAddr>, String> {
        let n = &self.node;
        if n.id == 0 {
            return Err(rule("node.id", 0, "must be 1 or more (Raft reserves 0)"));
        }
        let mut out = std::collections::BTreeMap::new();
        for p in &n.peers {
            let bad = |why: &str| {
                rule(
                    "node.peers",
                    format!("{:?}", n.peers),
                    &format!("{p:?}: {why}"),
                )
            };
            let (id, addr) = p.split_once('=').ok_or_else(|| bad("must be ID=IP:PORT"))?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| bad("the id is not a number"))?;
            let addr: std::net::SocketAddr = addr
                .trim()
                .parse()
                .map_err(|_| bad("the address is not IP:PORT"))?;
            if id == 0 || out.insert(id, addr).is_some() {
                return Err(bad("ids must be unique and 1 or more"));
            }
        }
        if n.join && out.is_empty() {
            return Err(rule(
                "node.join",
                true,
                "a node joins a cluster through its peers: set node.peers (--peers) too",
            ));
        }
        if !out.is_empty() && !out.contains_key(&n.id) {
            return Err(rule(
                "node.peers",
                format!("{:?}", n.peers),
                &format!("must list this node (node.id = {})", n.id),
            ));
        }
        Ok(out)
    }
}

/// Parses `--peers 1=127.0.0.1:7001,2=127.0.0.1:7101`.
pub fn parse_peers(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

/// CPUs the kernel knows (online or not), for checking `node.cores`.
fn core_count() -> usize {
    core_affinity::get_core_ids()
        .map(|v| v.iter().map(|c| c.id + 1).max().unwrap_or(1))
        .unwrap_or(1)
}

/// Parses `--cores 0,1,4-7`.
pub fn parse_cores(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("--cores {s:?}: {part:?} is not a CPU id or range like 2-5");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    if out.is_empty() {
        return Err(format!("--cores {s:?}: lists no CPU"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> Profile {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../hw-configs/dev.toml");
        let mut p = Profile::load(std::path::Path::new(path)).expect("dev.toml parses");
        p.node.cores = vec![0];
        p
    }

    #[test]
    fn dev_profile_is_valid() {
        dev().validate().unwrap();
    }

    #[test]
    fn errors_name_key_value_and_rule() {
        let mut p = dev();
        p.raftlog.flush_delay_ms = 0;
        assert_eq!(
            p.validate().unwrap_err(),
            "raftlog.flush_delay_ms = 0: must be between 1 and 1000"
        );
        let mut p = dev();
        p.node.peers = vec!["1=127.0.0.1:7001".into(), "2=nowhere".into()];
        assert!(p
            .validate()
            .unwrap_err()
            .contains("\"2=nowhere\": the address is not IP:PORT"));
        let mut p = dev();
        p.node.peers = vec!["2=127.0.0.1:7001".into()];
        assert!(p
            .validate()
            .unwrap_err()
            .contains("must list this node (node.id = 1)"));
        let mut p = dev();
        p.engine.value_len_max = 65 << 20;
        assert!(p
            .validate()
            .unwrap_err()
            .starts_with("engine.value_len_max = 68157440: "));
        let mut p = dev();
        p.node.partitions = 3;
        assert!(p
            .validate()
            .unwrap_err()
            .starts_with("node.partitions = 3: must be a power of two"));
        let mut p = dev();
        p.raft.snapshot_inflight_bytes = 64 << 20;
        assert_eq!(
            p.validate().unwrap_err(),
            "raft.snapshot_inflight_bytes = 67108864: must be between 1048576 and 50331648"
        );
        let mut p = dev();
        p.node.join = true;
        assert!(p
            .validate()
            .unwrap_err()
            .starts_with("node.join = true: a node joins a cluster through its peers"));
        let mut p = dev();
        p.node.metrics_listen = "localhost".into();
        assert_eq!(
            p.validate().unwrap_err(),
            "node.metrics_listen = \"localhost\": must be empty (off) or IP:PORT other than \
             node.listen, e.g. 127.0.0.1:9211"
        );
        p.node.metrics_listen = p.node.listen.clone();
        assert!(p
            .validate()
            .unwrap_err()
            .starts_with("node.metrics_listen = "));
        let mut p = dev();
        p.io.backend = "nvme".into();
        assert_eq!(
            p.validate().unwrap_err(),
            "io.backend = \"nvme\": must be \"io_uring\" or \"spdk\""
        );
        p.io.backend = "spdk".into();
        let err = p.validate().unwrap_err();
        if cfg!(feature = "spdk") {
            assert!(err.starts_with("io.spdk_config = \"\": must name"), "{err}");
            p.io.spdk_config = "spdk.json".into();
            let err = p.validate().unwrap_err();
            assert!(
                err.starts_with("node.meta_data = \"\": must name a file"),
                "{err}"
            );
            p.node.meta_data = "meta.data".into();
            p.validate().unwrap();
        } else {
            assert!(
                err.contains("SPDK backend is not built in this binary"),
                "{err}"
            );
        }
    }

    /// Which meta service places a node, and the addresses each mode needs.
    #[test]
    fn a_node_without_meta_and_peers_runs_its_own_meta_service() {
        let p = dev();
        assert!(p.placed() && p.embedded_meta());
        assert_eq!(p.meta_addrs(), vec!["127.0.0.1:11212".to_string()]);
        assert_eq!(
            p.meta_data_path(),
            PathBuf::from(".keel-data/keel.data.meta")
        );
        let mut q = dev();
        q.node.meta = vec!["10.0.0.9:7000".into()];
        assert!(q.placed() && !q.embedded_meta());
        assert_eq!(q.meta_addrs(), q.node.meta);
        q.validate().unwrap();
        let mut q = dev();
        q.node.peers = vec!["1=127.0.0.1:7100".into()];
        assert!(!q.placed() && !q.embedded_meta());
        q.validate().unwrap();
        q.node.meta = vec!["10.0.0.9:7000".into()];
        assert!(q.validate().unwrap_err().starts_with("node.peers = "));

        let mut q = dev();
        q.node.meta_listen = q.node.listen.clone();
        assert!(q
            .validate()
            .unwrap_err()
            .starts_with("node.meta_listen = \"127.0.0.1:11211\": must be IP:PORT on a port"));
        // Shard 1 (of 2) accepts peers on peer_listen + 1.
        q.node.cores = vec![0, 1];
        q.node.meta_listen = "127.0.0.1:11214".into();
        assert!(q.validate().unwrap_err().starts_with("node.meta_listen = "));
        q.node.meta_listen = "127.0.0.1:11215".into();
        q.validate().unwrap();
        q.node.peer_listen = "127.0.0.1:11210".into();
        assert!(q.validate().unwrap_err().starts_with("node.peer_listen = "));
        let mut q = dev();
        q.node.replication_factor = 0;
        assert_eq!(
            q.validate().unwrap_err(),
            "node.replication_factor = 0: must be 1 to 7"
        );
        q.node.replication_factor = 7;
        q.validate().unwrap();
        q.node.meta_data = "/var/lib/keel/meta.data".into();
        assert_eq!(q.meta_data_path(), q.node.meta_data);
    }

    /// `node.metrics_listen` is off unless given; a profile without the key still loads.
    #[test]
    fn metrics_listen_is_off_by_default_and_takes_an_address() {
        assert_eq!(dev().node.metrics_listen, "");
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../hw-configs/dev.toml"
        ))
        .unwrap();
        let without: String = text
            .lines()
            .filter(|l| !l.starts_with("metrics_listen"))
            .map(|l| format!("{l}\n"))
            .collect();
        let p: Profile = toml::from_str(&without).unwrap();
        assert_eq!(p.node.metrics_listen, "");
        let with = text.replace("metrics_listen = \"\"", "metrics_listen = \"0.0.0.0:9211\"");
        let mut p: Profile = toml::from_str(&with).unwrap();
        p.node.cores = vec![0];
        assert_eq!(p.node.metrics_listen, "0.0.0.0:9211");
        p.validate().unwrap();
    }

    /// `net.admin_token` and the TLS files: off by default (old profiles without the keys still
    /// load), a weak token refused without being echoed, the token redacted when printed, and
    /// the TLS files only as a pair.
    #[test]
    fn admin_token_and_tls_keys_are_checked_and_the_token_never_shown() {
        let p = dev();
        assert_eq!(p.net.admin_token, "");
        assert!(p.net.tls_cert.as_os_str().is_empty() && p.net.tls_key.as_os_str().is_empty());
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../hw-configs/dev.toml"
        ))
        .unwrap();
        let without: String = (text.lines())
            .filter(|l| {
                !["admin_token", "tls_cert", "tls_key"]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let old: Profile = toml::from_str(&without).unwrap();
        assert_eq!(old.net.admin_token, "");
        let mut p = dev();
        p.node.cores = vec![0];
        for weak in ["short", "has a space inside it", "tab\tinside-this-token"] {
            p.net.admin_token = weak.into();
            let e = p.validate().unwrap_err();
            assert!(e.starts_with("net.admin_token = ("), "{e}");
            assert!(!e.contains(weak), "the token is echoed: {e}");
        }
        p.net.admin_token = "0123456789abcdef".into();
        p.node.cluster_secret = "cluster-secret-fedcba".into();
        p.validate().unwrap();
        let shown = toml::to_string(&p.redacted()).unwrap();
        assert!(shown.contains("admin_token = \"<redacted>\""), "{shown}");
        assert!(shown.contains("cluster_secret = \"<redacted>\""), "{shown}");
        assert!(!shown.contains("0123456789abcdef") && !shown.contains("fedcba"));
        p.node.cluster_secret = "too-short".into();
        let e = p.validate().unwrap_err();
        assert!(e.starts_with("node.cluster_secret = (9 bytes)"), "{e}");
        p.node.cluster_secret.clear();
        p.net.tls_cert = "/etc/keel/tls.crt".into();
        let e = p.validate().unwrap_err();
        assert!(
            e.starts_with("net.tls_cert = ") && e.contains("set both"),
            "{e}"
        );
        p.net.tls_key = "/etc/keel/tls.key".into();
        p.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../hw-configs/dev.toml"
        ))
        .unwrap();
        let bad = text.replace("[raftlog]", "[raftlog]\nflush_delay = 5");
        let err = toml::from_str::<Profile>(&bad).unwrap_err().to_string();
        assert!(err.contains("unknown field `flush_delay`"), "{err}");
    }

    /// Every shard is on exactly one device, the groups are contiguous and in order, and their
    /// sizes differ by at most one.
    #[test]
    fn shards_go_to_devices_in_contiguous_groups() {
        for shards in 1..=40 {
            for devices in 1..=shards {
                let mut next = 0;
                for d in 0..devices {
                    let r = device_shards(shards, devices, d);
                    assert_eq!(r.start, next, "{shards} shards, {devices} devices");
                    assert!(!r.is_empty());
                    assert!(r.len() == shards / devices || r.len() == shards.div_ceil(devices));
                    for s in r.clone() {
                        assert_eq!(device_of_shard(shards, devices, s), d);
                    }
                    next = r.end;
                }
                assert_eq!(next, shards);
            }
        }
        assert_eq!(device_shards(32, 4, 1), 8..16);
        assert_eq!(device_shards(3, 2, 0), 0..2);
    }

    #[test]
    fn device_paths_are_checked() {
        let mut p = dev();
        p.node.cores = vec![0, 1];
        p.device.paths = vec![];
        assert_eq!(
            p.validate().unwrap_err(),
            "device.paths = []: must list at least one file or block device"
        );
        p.device.paths = vec!["a".into(), "a".into()];
        assert_eq!(
            p.validate().unwrap_err(),
            "device.paths = [\"a\", \"a\"]: lists a device twice"
        );
        p.device.paths = vec!["a".into(), "".into()];
        assert!(p.validate().unwrap_err().contains("lists an empty path"));
        p.device.paths = vec!["a".into(), "b".into(), "c".into()];
        assert!(p
            .validate()
            .unwrap_err()
            .contains("lists 3 devices but node.cores has only 2 shards"));
        p.device.paths = vec!["a".into(), "b".into()];
        p.validate().unwrap();
        // Each device only needs room for its own shards: 2 GiB holds 8 shards' minimum
        // (193 MiB each) on each of 2 devices, but not 16 on one.
        p.node.cores = (0..16).collect();
        p.node.partitions = 64;
        p.validate().unwrap();
        p.device.paths = vec!["a".into()];
        let err = p.validate().unwrap_err();
        assert!(
            err.starts_with("device.size_bytes = 2147483648: too small: each of the 16 shards"),
            "{err}"
        );
        assert!(err.contains("(at least 3239051264 bytes)"), "{err}");
    }

    /// A profile for a bigger host validates here; only `fits_host` says it cannot start here.
    #[test]
    fn cpus_this_host_lacks_are_a_host_check_not_a_profile_error() {
        let mut p = dev();
        p.node.cores = vec![0, 4095];
        p.validate().unwrap();
        let err = p.fits_host().unwrap_err();
        assert!(
            err.starts_with("node.cores = [0, 4095]: CPU 4095 does not exist"),
            "{err}"
        );
        dev().fits_host().unwrap();
    }

    #[test]
    fn cores_lists_and_ranges() {
        assert_eq!(parse_cores("0,1").unwrap(), vec![0, 1]);
        assert_eq!(parse_cores("2-4,7").unwrap(), vec![2, 3, 4, 7]);
        assert!(parse_cores("x").is_err());
        assert!(parse_cores("3-1").is_err());
    }
}
