//! The profile: every tunable of a node, read from one TOML file (hw-configs/*.toml), with
//! `--listen`, `--data` and `--cores` overriding it. Unknown keys are refused by serde; values
//! are checked by `validate`, whose messages name the key, the value and the rule.

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
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSection {
    pub path: PathBuf,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IoSection {
    pub backend: String,
    pub ring_depth: usize,
    pub io_memory_bytes: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    pub segment_bytes: u64,
    pub value_len_max: usize,
    pub cache_bytes: u64,
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
}

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
        if n.cores.is_empty() || n.cores.len() > 256 {
            return Err(rule(
                "node.cores",
                format!("{:?}", n.cores),
                "must list 1 to 256 CPU ids",
            ));
        }
        let online = std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(1);
        let cpus = core_count();
        for &c in &n.cores {
            if c >= cpus {
                return Err(rule(
                    "node.cores",
                    format!("{:?}", n.cores),
                    &format!(
                        "CPU {c} does not exist (this host has CPUs 0..{})",
                        cpus - 1
                    ),
                ));
            }
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
        let _ = online;
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
        let d = &self.device;
        if d.path.as_os_str().is_empty() {
            return Err(rule(
                "device.path",
                "\"\"",
                "must name a file or block device",
            ));
        }
        if self.io.backend != "io_uring" {
            return Err(rule(
                "io.backend",
                format!("{:?}", self.io.backend),
                "must be \"io_uring\" (the SPDK backend is not built in this binary)",
            ));
        }
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
        let shards = n.cores.len() as u64;
        let segs_per_shard = (d.size_bytes.saturating_sub(MIB) / shards)
            .saturating_sub(self.raftlog.region_bytes + MIB)
            / e.segment_bytes;
        if segs_per_shard < 4 {
            return Err(rule(
                "device.size_bytes",
                d.size_bytes,
                &format!(
                    "too small: each of the {shards} shards needs 1 MiB of checkpoints, raftlog.region_bytes ({}) \
                     and at least 4 segments of {} bytes, plus 1 MiB for the superblock",
                    self.raftlog.region_bytes, e.segment_bytes
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
        Ok(())
    }
}

impl Profile {
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
        p.io.backend = "spdk".into();
        assert!(p
            .validate()
            .unwrap_err()
            .contains("SPDK backend is not built"));
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

    #[test]
    fn cores_lists_and_ranges() {
        assert_eq!(parse_cores("0,1").unwrap(), vec![0, 1]);
        assert_eq!(parse_cores("2-4,7").unwrap(), vec![2, 3, 4, 7]);
        assert!(parse_cores("x").is_err());
        assert!(parse_cores("3-1").is_err());
    }
}
