//! From measured figures to a profile: pure functions (no I/O, no clock), so each rule is
//! unit-tested with figures chosen by hand, and the profile text they produce is checked to
//! load and validate like any shipped one.

use std::path::PathBuf;

use serde::Serialize;

use super::probe::{DeviceFigures, ReadPoint, PROBE_START_BYTES};
use crate::config::{device_bytes_min, Profile};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// The development profile: the starting point, and the value of every key no probe informs.
pub const DEV_PROFILE: &str = include_str!("../../../hw-configs/dev.toml");

pub fn dev_profile() -> Profile {
    toml::from_str(DEV_PROFILE).expect("hw-configs/dev.toml is a valid profile")
}

/// What tune found out about the host (not the device).
#[derive(Debug, Clone, PartialEq)]
pub struct HostFigures {
    /// CPUs online (`/sys/devices/system/cpu/online`).
    pub cpus_online: Vec<usize>,
    /// RLIMIT_MEMLOCK (soft, hard); `None` is unlimited.
    pub memlock: (Option<u64>, Option<u64>),
    /// MemTotal from /proc/meminfo, if it could be read.
    pub mem_total_bytes: Option<u64>,
}

/// How tune was run, for the profile's header.
#[derive(Debug, Clone)]
pub struct TuneRun {
    pub device: PathBuf,
    pub size_bytes: u64,
    pub seconds: f64,
}

/// The smallest probed queue depth whose IOPS reach 90% of the best one: past it, deeper
/// queues buy latency, not throughput.
pub fn saturation_queue_depth(reads: &[ReadPoint]) -> usize {
    let best = reads.iter().map(|r| r.iops).fold(0.0, f64::max);
    reads
        .iter()
        .find(|r| r.iops >= 0.9 * best)
        .map_or(1, |r| r.queue_depth)
}

/// Twice the saturating depth, as a power of two from 64 to 4096: one shard alone can then
/// keep the device busy with reads while its log writes and syncs still find ring slots.
pub fn ring_depth(saturation_qd: usize) -> usize {
    (2 * saturation_qd).next_power_of_two().clamp(64, 4096)
}

/// The bytes the device writes in the time of one median fdatasync, in whole 4 KiB blocks,
/// from 4 KiB to 1 MiB: a raftlog batch that size costs about as much to write as to sync,
/// so a larger one saves few syncs and only makes its entries wait.
pub fn batch_bytes_max(write_bytes_per_sec: f64, sync_p50_us: u64) -> usize {
    let bytes = (write_bytes_per_sec * sync_p50_us as f64 / 1e6) as u64;
    (bytes / (4 * KIB) * (4 * KIB)).clamp(4 * KIB, MIB) as usize
}

/// The p99 fdatasync, rounded up to whole milliseconds, 1 to 1000: an entry that arrives while
/// a batch is on the device then waits about one slow flush at most before its own goes.
pub fn flush_delay_ms(sync_p99_us: u64) -> u64 {
    sync_p99_us.div_ceil(1000).clamp(1, 1000)
}

/// DMA buffer memory per shard: a full ring of 16 KiB reads, 2 MiB to 64 MiB, but no more than
/// RLIMIT_MEMLOCK (its hard limit, which a node raises its soft one to) leaves each of the
/// `executors` after glommio's own 512 KiB; at least 1 MiB (below that the node runs with
/// unregistered buffers and says so). Whole MiB.
pub fn io_memory_bytes(ring_depth: usize, executors: u64, memlock_hard: Option<u64>) -> u64 {
    let want = (ring_depth as u64 * 16 * KIB).clamp(2 * MIB, 64 * MIB);
    let allowed = match memlock_hard {
        None => want,
        Some(limit) => {
            (limit / executors).saturating_sub(keel_nvme::MEMLOCK_PER_EXECUTOR_BYTES) / MIB * MIB
        }
    };
    want.min(allowed).max(MIB)
}

/// GC's read budget per shard: a quarter of the device's sequential write bandwidth (GC reads
/// what it rewrites, so it takes about twice this of the device), split between the shards
/// that share the device; at least 1 MiB/s.
pub fn gc_bytes_per_sec_max(write_bytes_per_sec: f64, shards: usize) -> u64 {
    ((write_bytes_per_sec / 4.0 / shards as f64) as u64 / MIB * MIB).max(MIB)
}

/// A quarter of the host's memory for the value cache, whole MiB, at least 64 MiB: the index
/// (about 150 bytes a key today), connection buffers and the OS need the rest.
pub fn cache_bytes(mem_total_bytes: u64) -> u64 {
    (mem_total_bytes / 4 / MIB * MIB).max(64 * MIB)
}

/// 32 partitions per shard, a power of two, at least 64: enough that keys spread evenly over
/// the shards and a later placement can move some, few enough that Raft ticks stay cheap.
pub fn partitions(shards: usize) -> u32 {
    (shards as u32 * 32).next_power_of_two().clamp(64, 65536)
}

/// The smallest device tune accepts for `shards` shards with dev.toml's log and segment sizes.
pub fn size_bytes_min(shards: usize) -> u64 {
    let dev = dev_profile();
    let min = device_bytes_min(
        shards as u64,
        dev.raftlog.region_bytes,
        dev.engine.segment_bytes,
    );
    // The probes need their own first MiB and one to write into.
    min.max(PROBE_START_BYTES + MIB)
}

/// `[0, 1, 2, 5]` as "0-2,5", the kernel's own way of writing CPU lists.
pub fn cpu_ranges(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

fn mib(v: f64) -> String {
    format!("{:.1} MiB", v / MIB as f64)
}

fn limit(v: Option<u64>) -> String {
    v.map_or("unlimited".into(), |b| format!("{b} bytes"))
}

/// The profile text: dev.toml's keys, every one with a comment saying where its value came
/// from, the measured figures at the top.
pub fn profile_text(run: &TuneRun, dev: &DeviceFigures, host: &HostFigures) -> String {
    let base = dev_profile();
    let shards = host.cpus_online.len();
    let sat = saturation_queue_depth(&dev.reads);
    let ring = ring_depth(sat);
    let executors = shards as u64 + 1;
    let io_mem = io_memory_bytes(ring, executors, host.memlock.1);
    let batch = batch_bytes_max(dev.write_bytes_per_sec, dev.sync_p50_us);
    let delay = flush_delay_ms(dev.sync_p99_us);
    let gc = gc_bytes_per_sec_max(dev.write_bytes_per_sec, shards);
    let best = dev.reads.iter().map(|r| r.iops).fold(0.0, f64::max);

    let mut d = Doc::default();
    d.comment(&format!(
        "Keel profile written by `keel-node tune --device {} --seconds {}` for this host and \
         device. Every key of hw-configs/dev.toml is here; each comment says whether a figure \
         below decided it or it is dev.toml's value.",
        run.device.display(),
        run.seconds
    ));
    d.comment("");
    d.comment(&format!(
        "Measured through keel-nvme's io_uring backend (O_DIRECT), {} s per probe, on the first \
         {} of the device after its first MiB (written, then zeroed again):",
        run.seconds,
        mib(dev.written_bytes as f64)
    ));
    d.line(&format!(
        "#   sequential 1 MiB writes, 4 in flight, then fdatasync: {}/s",
        mib(dev.write_bytes_per_sec)
    ));
    for r in &dev.reads {
        d.line(&format!(
            "#   random 4 KiB reads, QD {}: {:.0} IOPS (p50 {} us, p99 {} us)",
            r.queue_depth, r.iops, r.p50_us, r.p99_us
        ));
    }
    d.line(&format!(
        "#   4 KiB write + fdatasync: p50 {} us, p99 {} us ({} samples)",
        dev.sync_p50_us, dev.sync_p99_us, dev.sync_samples
    ));
    d.line(&format!(
        "#   CPUs online: {} ({})",
        cpu_ranges(&host.cpus_online),
        host.cpus_online.len()
    ));
    d.line(&format!(
        "#   RLIMIT_MEMLOCK: soft {}, hard {}",
        limit(host.memlock.0),
        limit(host.memlock.1)
    ));
    d.line(&format!(
        "#   memory: {}",
        host.mem_total_bytes
            .map_or("unknown (no /proc/meminfo)".into(), |b| mib(b as f64))
    ));

    let n = &base.node;
    d.section("node");
    d.key(
        "listen",
        &n.listen,
        "dev.toml's: set the address clients reach.",
    );
    d.key(
        "cores",
        &host.cpus_online,
        "Every online CPU, one shard each: a shard owns its core, nothing else should run there.",
    );
    d.key(
        "partitions",
        partitions(shards),
        &format!("32 per shard ({shards} shards), a power of two, at least 64."),
    );
    d.key("id", n.id, "dev.toml's: a single node.");
    d.key(
        "peers",
        &n.peers,
        "dev.toml's: no static placement (a meta service places the partitions).",
    );
    d.key("join", n.join, "dev.toml's.");
    d.key("metrics_listen", &n.metrics_listen, "dev.toml's: off.");
    d.key(
        "cluster_secret",
        "",
        "Empty: any Keel node may connect to the peer ports; set the same 16+ character \
         secret on every node to make peers prove it.",
    );
    d.key(
        "meta",
        &n.meta,
        "dev.toml's: the node runs its own meta service at meta_listen; set --meta, \
         --peer-listen and --zone to join another.",
    );
    d.key("peer_listen", &n.peer_listen, "dev.toml's.");
    d.key("zone", &n.zone, "dev.toml's.");
    d.key("meta_listen", &n.meta_listen, "dev.toml's.");
    // A file device can hold the embedded meta service's data file beside it; a block device
    // is Keel's whole, so the meta data goes to the root disk.
    let (meta_data, why) = match run.device.starts_with("/dev/") {
        true => (
            PathBuf::from("/var/lib/keel/meta.data"),
            "On the root disk: the device is Keel's whole.",
        ),
        false => (n.meta_data.clone(), "dev.toml's: beside the device file."),
    };
    d.key("meta_data", meta_data.display().to_string(), why);
    d.key("replication_factor", n.replication_factor, "dev.toml's.");

    d.section("device");
    d.key(
        "paths",
        [&run.device],
        "The probed device, by its absolute path; all shards share it.",
    );
    d.key(
        "size_bytes",
        run.size_bytes,
        "The size tune probed (the device's, or --size-bytes).",
    );

    let io = &base.io;
    d.section("io");
    d.key(
        "backend",
        &io.backend,
        "io_uring; \"spdk\" needs a keel-node built with --features spdk (nvme/spdk/README.md).",
    );
    d.key(
        "ring_depth",
        ring,
        &format!(
            "Random reads first reached 90% of the best IOPS ({best:.0}) at QD {sat} ({:.0} \
             IOPS): twice that as a power of two (64 to 4096), so one shard alone can saturate \
             the device with reads while its log writes and syncs still find slots.",
            dev.reads
                .iter()
                .find(|r| r.queue_depth == sat)
                .map_or(0.0, |r| r.iops)
        ),
    );
    d.key(
        "io_memory_bytes",
        io_mem,
        &format!(
            "A full ring of 16 KiB reads ({ring} x 16 KiB, 2 to 64 MiB), within RLIMIT_MEMLOCK's \
             hard limit ({}) shared by {executors} executors after glommio's 512 KiB each; at \
             least 1 MiB.",
            limit(host.memlock.1)
        ),
    );

    let e = &base.engine;
    d.section("engine");
    d.key("segment_bytes", e.segment_bytes, "dev.toml's.");
    d.key(
        "value_len_max",
        e.value_len_max,
        "dev.toml's (memcached's -I 1m).",
    );
    d.key(
        "cache_bytes",
        host.mem_total_bytes.map_or(e.cache_bytes, cache_bytes),
        &match host.mem_total_bytes {
            Some(m) => format!(
                "A quarter of the host's {} (at least 64 MiB); the index and the OS need the rest.",
                mib(m as f64)
            ),
            None => "dev.toml's (the host's memory could not be read).".into(),
        },
    );
    d.key(
        "index_checkpoint_records_min",
        e.index_checkpoint_records_min,
        "dev.toml's.",
    );
    d.key(
        "index_checkpoint_interval_ms",
        e.index_checkpoint_interval_ms,
        "dev.toml's.",
    );

    let l = &base.raftlog;
    d.section("raftlog");
    d.key("region_bytes", l.region_bytes, "dev.toml's.");
    d.key("segment_bytes", l.segment_bytes, "dev.toml's.");
    d.key(
        "batch_bytes_max",
        batch,
        &format!(
            "What the device writes during one median fdatasync ({}/s x {} us), whole 4 KiB \
             blocks, 4 KiB to 1 MiB: a larger batch saves few syncs and only makes its entries \
             wait.",
            mib(dev.write_bytes_per_sec),
            dev.sync_p50_us
        ),
    );
    d.key(
        "flush_delay_ms",
        delay,
        &format!(
            "The p99 write + fdatasync ({} us) rounded up to whole ms (1 to 1000): an entry \
             waits about one slow flush at most behind the batch on the device.",
            dev.sync_p99_us
        ),
    );
    d.key(
        "flushes_in_flight_max",
        l.flushes_in_flight_max,
        "dev.toml's.",
    );

    let r = &base.raft;
    d.section("raft");
    d.key("tick_ms", r.tick_ms, "dev.toml's.");
    d.key("election_ticks", r.election_ticks, "dev.toml's.");
    d.key("heartbeat_ticks", r.heartbeat_ticks, "dev.toml's.");
    d.key(
        "checkpoint_interval_ms",
        r.checkpoint_interval_ms,
        "dev.toml's.",
    );
    d.key(
        "stale_reads",
        r.stale_reads,
        "dev.toml's: linearizable reads.",
    );
    d.key("request_timeout_ms", r.request_timeout_ms, "dev.toml's.");
    d.key("compact_lag_entries", r.compact_lag_entries, "dev.toml's.");
    d.key(
        "snapshot_inflight_bytes",
        r.snapshot_inflight_bytes,
        "dev.toml's.",
    );

    let g = &base.gc;
    d.section("gc");
    d.key("live_ratio_min", g.live_ratio_min, "dev.toml's.");
    d.key("free_segments_min", g.free_segments_min, "dev.toml's.");
    d.key(
        "bytes_per_sec_max",
        gc,
        &format!(
            "Per shard: a quarter of the sequential write bandwidth ({}/s) split between the \
             {shards} shards on the device, at least 1 MiB/s (GC rewrites what it reads, so it \
             takes about twice this).",
            mib(dev.write_bytes_per_sec)
        ),
    );
    d.key("interval_ms", g.interval_ms, "dev.toml's.");

    let t = &base.net;
    d.section("net");
    d.key("connections_max", t.connections_max, "dev.toml's.");
    d.key("read_buffer_bytes", t.read_buffer_bytes, "dev.toml's.");
    d.key("pipeline_depth_max", t.pipeline_depth_max, "dev.toml's.");
    d.key(
        "admin_token",
        "",
        "Admin commands only from loopback clients; with a token (16+ characters), only \
         after `admin_auth <token>`, from anywhere.",
    );
    d.key(
        "tls_cert",
        "",
        "TLS for clients: set tls_cert and tls_key to PEM files to serve only TLS.",
    );
    d.key("tls_key", "", "The PEM private key of tls_cert.");
    d.0
}

/// A TOML document written key by key, each after its comment.
#[derive(Default)]
struct Doc(String);

impl Doc {
    fn line(&mut self, l: &str) {
        self.0.push_str(l);
        self.0.push('\n');
    }

    /// `text` as `# ` lines of at most 100 columns.
    fn comment(&mut self, text: &str) {
        let mut line = String::from("#");
        for word in text.split_whitespace() {
            if line.len() + 1 + word.len() > 100 && line.len() > 1 {
                self.line(&line);
                line = String::from("#");
            }
            line.push(' ');
            line.push_str(word);
        }
        self.line(&line);
    }

    fn section(&mut self, name: &str) {
        self.line("");
        self.line(&format!("[{name}]"));
    }

    fn key(&mut self, key: &str, value: impl Serialize, why: &str) {
        let v = toml::Value::try_from(value).expect("a profile value is TOML");
        self.comment(why);
        self.line(&format!("{key} = {v}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(queue_depth: usize, iops: f64) -> ReadPoint {
        ReadPoint {
            queue_depth,
            iops,
            p50_us: 80,
            p99_us: 200,
        }
    }

    fn nvme_like() -> DeviceFigures {
        DeviceFigures {
            written_bytes: 4 << 30,
            write_bytes_per_sec: 2000.0 * MIB as f64,
            reads: vec![
                point(1, 12_000.0),
                point(4, 45_000.0),
                point(16, 160_000.0),
                point(64, 480_000.0),
                point(128, 500_000.0),
            ],
            sync_p50_us: 30,
            sync_p99_us: 2500,
            sync_samples: 60_000,
        }
    }

    fn host() -> HostFigures {
        HostFigures {
            cpus_online: vec![0],
            memlock: (Some(8 << 20), Some(8 << 20)),
            mem_total_bytes: Some(16 << 30),
        }
    }

    #[test]
    fn the_ring_follows_the_depth_where_reads_saturate() {
        let r = nvme_like().reads;
        // 480k is 96% of 500k: QD 64 saturates.
        assert_eq!(saturation_queue_depth(&r), 64);
        assert_eq!(ring_depth(64), 128);
        // A device that is flat from QD 1 (a VM's virtual disk) still gets 64 slots.
        let flat: Vec<_> = [1, 4, 16].iter().map(|&q| point(q, 9000.0)).collect();
        assert_eq!(saturation_queue_depth(&flat), 1);
        assert_eq!(ring_depth(1), 64);
        assert_eq!(ring_depth(128), 256);
        assert_eq!(ring_depth(100_000), 4096);
    }

    #[test]
    fn batches_and_the_flush_delay_follow_fdatasync() {
        // 2000 MiB/s x 30 us = 62,914 bytes -> 15 blocks.
        assert_eq!(batch_bytes_max(2000.0 * MIB as f64, 30), 15 * 4096);
        assert_eq!(batch_bytes_max(100.0 * MIB as f64, 1), 4096);
        assert_eq!(batch_bytes_max(3000.0 * MIB as f64, 50_000), 1 << 20);
        assert_eq!(flush_delay_ms(2500), 3);
        assert_eq!(flush_delay_ms(40), 1);
        assert_eq!(flush_delay_ms(5_000_000), 1000);
    }

    #[test]
    fn io_memory_stays_within_memlock() {
        // 8 MiB shared by 3 executors: 2.67 MiB each, less 512 KiB, is 2 whole MiB.
        assert_eq!(io_memory_bytes(256, 3, Some(8 << 20)), 2 << 20);
        assert_eq!(io_memory_bytes(256, 3, None), 4 << 20);
        assert_eq!(io_memory_bytes(8192, 3, None), 64 << 20);
        // Too little to register anything: the 1 MiB floor, and the node warns at start.
        assert_eq!(io_memory_bytes(256, 17, Some(8 << 20)), 1 << 20);
    }

    #[test]
    fn cpu_lists_are_written_as_ranges() {
        assert_eq!(cpu_ranges(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(cpu_ranges(&[3]), "3");
        let all: Vec<usize> = (0..256).collect();
        assert_eq!(cpu_ranges(&all), "0-255");
    }

    #[test]
    fn gc_cache_and_partitions() {
        assert_eq!(gc_bytes_per_sec_max(2000.0 * MIB as f64, 2), 250 << 20);
        assert_eq!(gc_bytes_per_sec_max(1.0 * MIB as f64, 16), 1 << 20);
        assert_eq!(cache_bytes(16 << 30), 4 << 30);
        assert_eq!(cache_bytes(100 << 20), 64 << 20);
        assert_eq!(partitions(2), 64);
        assert_eq!(partitions(16), 512);
        assert_eq!(partitions(3000), 65536);
    }

    /// The written profile loads with every key dev.toml has (no more, no fewer), validates,
    /// carries the derived values and names the figures they came from.
    #[test]
    fn the_profile_text_is_a_complete_valid_profile_with_its_figures() {
        let run = TuneRun {
            device: "/var/lib/keel/probe.data".into(),
            size_bytes: 2 << 30,
            seconds: 2.0,
        };
        let text = profile_text(&run, &nvme_like(), &host());
        let p: Profile = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        p.validate().unwrap();
        let keys = |t: &str| -> Vec<String> {
            let v: toml::Table = toml::from_str(t).unwrap();
            v.iter()
                .flat_map(|(s, t)| {
                    t.as_table()
                        .unwrap()
                        .keys()
                        .map(move |k| format!("{s}.{k}"))
                })
                .collect()
        };
        assert_eq!(keys(&text), keys(DEV_PROFILE));
        assert_eq!(p.io.ring_depth, 128);
        assert_eq!(p.raftlog.batch_bytes_max, 15 * 4096);
        assert_eq!(p.raftlog.flush_delay_ms, 3);
        assert_eq!(p.io.io_memory_bytes, 2 << 20);
        assert_eq!(
            p.device.paths,
            vec![PathBuf::from("/var/lib/keel/probe.data")]
        );
        assert_eq!(p.node.cores, vec![0]);
        assert_eq!(p.engine.cache_bytes, 4 << 30);
        for figure in [
            "random 4 KiB reads, QD 64: 480000 IOPS (p50 80 us, p99 200 us)",
            "sequential 1 MiB writes, 4 in flight, then fdatasync: 2000.0 MiB/s",
            "4 KiB write + fdatasync: p50 30 us, p99 2500 us (60000 samples)",
            "RLIMIT_MEMLOCK: soft 8388608 bytes, hard 8388608 bytes",
        ] {
            assert!(text.contains(figure), "{figure:?} missing from\n{text}");
        }
        assert!(text.lines().all(|l| l.len() <= 100), "{text}");
    }

    #[test]
    fn a_path_with_quotes_is_written_as_valid_toml() {
        let run = TuneRun {
            device: "/tmp/a \"b\"\\c".into(),
            size_bytes: 2 << 30,
            seconds: 0.5,
        };
        let p: Profile = toml::from_str(&profile_text(&run, &nvme_like(), &host())).unwrap();
        assert_eq!(p.device.paths, vec![PathBuf::from("/tmp/a \"b\"\\c")]);
    }
}
