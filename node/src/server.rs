//! Starting a node: check the device's superblock, start one pinned executor per core, join
//! the shard mesh, and in each shard: load the last checkpoint, recover the engine as of it,
//! open the raftlog, start the Raft groups (which replay what the checkpoint lacks), connect
//! to the peers, start the background tasks, accept clients.
//!
//! A shard's region of its device: checkpoint slots (1 MiB reserved), the raftlog
//! (`raftlog.region_bytes`), then the value log's segments. With several devices
//! (`device.paths`) the shards go to them in contiguous groups and each device is split between
//! its group, after its own superblock.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement, Shares};
use keel_nvme::{AnyDevice, Backend, Device, Region, BLOCK_BYTES};

use crate::config::Profile;
use crate::engine::format::{self, Superblock, DATA_START_BYTES};
use crate::engine::gc::{self, GcConfig};
use crate::engine::index_checkpoint::{self, IndexCheckpointConfig};
use crate::engine::log::{self as vlog, LogConfig};
use crate::engine::{Engine, EngineConfig};
use crate::protocol::Limits;
use crate::replica::{checkpoint, driver, RaftSettings, Replicas};
use crate::shard::{Msg, Shard, ShardConfig};
use crate::transport::{Transport, TransportConfig};

/// Bytes before the raftlog in each shard's region (the checkpoint slots, rounded up).
const CHECKPOINT_RESERVED_BYTES: u64 = 1 << 20;
const _: () = assert!(checkpoint::AREA_BYTES <= CHECKPOINT_RESERVED_BYTES);

/// How device `d` is cut up: recorded in its superblock at first start, checked at every start.
fn geometry(p: &Profile, d: usize) -> Superblock {
    let shards = p.shards_of_device(d);
    let count = shards.len() as u64;
    let seg = p.engine.segment_bytes;
    let fixed = CHECKPOINT_RESERVED_BYTES + p.raftlog.region_bytes;
    let values = ((p.device.size_bytes - DATA_START_BYTES) / count - fixed) / seg * seg;
    Superblock {
        shards: count as u32,
        segment_bytes: seg,
        device_bytes: p.device.size_bytes,
        region_bytes: fixed + values,
        raftlog_bytes: p.raftlog.region_bytes,
        node_id: p.node.id,
        device_index: d as u32,
        device_count: p.device.paths.len() as u32,
        first_shard: shards.start as u32,
        node_shards: p.node.cores.len() as u32,
    }
}

fn describe(g: &Superblock) -> String {
    format!(
        "node {}, device {} of {} holding shards {}..{} of {}, {}-byte segments, a {}-byte raftlog \
         and {} bytes",
        g.node_id,
        g.device_index,
        g.device_count,
        g.first_shard,
        g.first_shard + g.shards - 1,
        g.node_shards,
        g.segment_bytes,
        g.raftlog_bytes,
        g.device_bytes
    )
}

/// Opens (creating if needed) every device on a short-lived executor and checks or writes its
/// superblock, so that a profile that no longer matches the data is refused before any shard
/// reads it. Returns each device's geometry, in `device.paths` order.
fn prepare_devices(p: &Profile) -> Result<Vec<Superblock>, String> {
    let wants: Vec<(std::path::PathBuf, Superblock)> = (p.device.paths.iter().enumerate())
        .map(|(d, path)| (path.clone(), geometry(p, d)))
        .collect();
    let size = p.device.size_bytes;
    let backend = p.backend();
    LocalExecutorBuilder::new(Placement::Unbound)
        .name("keel-format")
        .spawn(move || async move {
            let mut out = Vec::new();
            for (path, want) in wants {
                out.push(prepare_device(&backend, &path, size, want).await?);
            }
            Ok(out)
        })
        .map_err(|e| format!("cannot start an io_uring executor: {e}"))?
        .join()
        .map_err(|e| format!("format executor failed: {e}"))?
}

async fn prepare_device(
    backend: &Backend,
    path: &std::path::Path,
    size: u64,
    want: Superblock,
) -> Result<Superblock, String> {
    let dev = AnyDevice::open(backend, path, size)
        .await
        .map_err(|e| e.to_string())?;
    let block = dev
        .read_at(0, BLOCK_BYTES as usize)
        .await
        .map_err(|e| e.to_string())?;
    match format::decode_superblock(&block) {
        Ok(Some(have)) if have == want => Ok(have),
        Ok(Some(have)) => Err(format!(
            "device {}: it was formatted for {}, but the profile asks for {} (node.id, device.paths \
             order and count, node.cores, engine.segment_bytes, raftlog.region_bytes, \
             device.size_bytes): start with the profile it was created with, or point --data at \
             new files",
            path.display(),
            describe(&have),
            describe(&want)
        )),
        Err(why) => Err(format!(
            "device {}: refusing to use it: {why}",
            path.display()
        )),
        Ok(None) => {
            let mut buf = dev.alloc(BLOCK_BYTES as usize);
            format::encode_superblock(&mut buf, &want);
            dev.write_at(buf, 0).await.map_err(|e| e.to_string())?;
            // The superblock must be durable before any shard writes data it describes.
            dev.sync().await.map_err(|e| e.to_string())?;
            Ok(want)
        }
    }
}

/// `stats settings`: the profile values a memcached user looks for, under memcached 1.6.18's
/// names and in its order, then Keel's own (`keel_` prefix). memcached settings that have no
/// meaning here (slab sizing, LRU tuning, UDP, SASL, TLS, extstore) are left out.
fn memcached_settings(p: &Profile) -> Vec<(&'static str, String)> {
    let listen: Option<std::net::SocketAddr> = p.node.listen.parse().ok();
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    vec![
        (
            "maxbytes",
            (p.device.size_bytes * p.device.paths.len() as u64).to_string(),
        ),
        ("maxconns", p.net.connections_max.to_string()),
        ("tcpport", listen.map_or(0, |a| a.port()).to_string()),
        ("udpport", "0".into()),
        (
            "inter",
            listen.map_or("NULL".into(), |a| a.ip().to_string()),
        ),
        ("verbosity", "0".into()),
        ("oldest", "0".into()),
        // Nothing is evicted: values live on the device until deleted or expired.
        ("evictions", "off".into()),
        ("num_threads", p.node.cores.len().to_string()),
        ("cas_enabled", "yes".into()),
        ("binding_protocol", "ascii".into()),
        ("auth_enabled_sasl", "no".into()),
        ("auth_enabled_ascii", "no".into()),
        ("item_size_max", p.engine.value_len_max.to_string()),
        ("flush_enabled", "yes".into()),
        ("idle_timeout", "0".into()),
        ("read_buf_mem_limit", "0".into()),
        (
            "ssl_enabled",
            yes_no(!p.net.tls_cert.as_os_str().is_empty()),
        ),
        ("keel_node_id", p.node.id.to_string()),
        ("keel_partitions", p.node.partitions.to_string()),
        ("keel_cache_bytes", p.engine.cache_bytes.to_string()),
        (
            "keel_read_buffer_bytes",
            p.net.read_buffer_bytes.to_string(),
        ),
        (
            "keel_pipeline_depth_max",
            p.net.pipeline_depth_max.to_string(),
        ),
        ("keel_stale_reads", yes_no(p.raft.stale_reads)),
        ("keel_flush_delay_ms", p.raftlog.flush_delay_ms.to_string()),
        (
            "keel_batch_bytes_max",
            p.raftlog.batch_bytes_max.to_string(),
        ),
        ("keel_admin_token", yes_no(!p.net.admin_token.is_empty())),
        (
            "keel_metrics_listen",
            match p.node.metrics_listen.as_str() {
                "" => "NULL".into(),
                m => m.to_string(),
            },
        ),
    ]
}

/// A clean shutdown in progress: set by SIGTERM/SIGINT; each shard's checkpoint task takes a
/// last checkpoint and reports done; the last one ends the process.
#[derive(Clone)]
struct Stop {
    flag: Arc<AtomicBool>,
    shards_left: Arc<AtomicUsize>,
}

impl Stop {
    fn shard_done(&self, id: usize) {
        eprintln!("keel-node: shard {id}: checkpointed for shutdown");
        if self.shards_left.fetch_sub(1, Ordering::SeqCst) == 1 {
            eprintln!("keel-node: stopped cleanly");
            std::process::exit(0);
        }
    }
}

/// How long a node placed by the meta service waits for its first routing table before it
/// serves clients anyway.
const ROUTES_WAIT: Duration = Duration::from_secs(5);

/// Peer connections a shard accepts per other shard, as if the cluster had at least this many
/// nodes (placed by the meta service, a node learns its peers as they come).
const PLACED_PEERS_MAX: usize = 256;

/// How long a shutdown may take before the process exits anyway (what was not checkpointed is
/// replayed from the Raft log at the next start, as after a crash).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

fn shutdown_on_signal(shards: usize) -> Result<Stop, String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Stop {
        flag: Arc::new(AtomicBool::new(false)),
        shards_left: Arc::new(AtomicUsize::new(shards)),
    };
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot install the SIGTERM handler: {e}"))?;
    let flag = stop.flag.clone();
    std::thread::Builder::new()
        .name("keel-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                eprintln!("keel-node: signal {sig}: checkpointing and stopping");
                flag.store(true, Ordering::SeqCst);
                std::thread::sleep(SHUTDOWN_TIMEOUT);
                eprintln!(
                    "keel-node: shutdown took over {SHUTDOWN_TIMEOUT:?}; exiting (the next start replays the Raft log)"
                );
                std::process::exit(1);
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(stop)
}

/// The shards listen with SO_REUSEPORT (the kernel spreads connections over them), which would
/// just as quietly let this node share a port with another process already serving on it, each
/// getting some of the clients. So a node first tries to connect to its own address: if someone
/// keeps answering, it refuses to start. (A plain bind cannot tell: the connections a SIGKILLed
/// node left behind hold the port too, and must not stop its restart.)
fn refuse_taken_port(addr: &str, key: &str) -> Result<(), String> {
    let Ok(sa) = addr.parse::<std::net::SocketAddr>() else {
        return Ok(()); // not IP:PORT: the bind itself reports it
    };
    let target = match sa.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, sa.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, sa.port()))
        }
        _ => sa,
    };
    // A SIGKILLed node's listening socket outlives it briefly (its io_uring is torn down after
    // the process is gone, and holds the socket until then): only a listener that stays up
    // for two seconds is another process.
    for _ in 0..20 {
        if std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1)).is_err() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "cannot listen on {addr} (node.{key}): another process is listening there"
    ))
}

/// How often nodes heartbeat to an embedded meta service: on loopback, and often enough that
/// a new node hosts its partitions a fraction of a second after it starts.
const EMBEDDED_META_HEARTBEAT: Duration = Duration::from_millis(200);

/// The meta service a node without `node.meta` and `node.peers` runs inside itself: one replica
/// at `node.meta_listen`, its data file beside the first device (or `node.meta_data`), a
/// keyspace of `node.partitions` at `node.replication_factor`. Its data file is locked here.
fn embedded_meta(p: &Profile) -> Result<keel_meta::embedded::Embedded, String> {
    refuse_taken_port(&p.node.meta_listen, "meta_listen")?;
    let data = p.meta_data_path();
    if p.node.meta_data.as_os_str().is_empty() {
        use std::os::unix::fs::FileTypeExt;
        let dev = &p.device.paths[0];
        if std::fs::metadata(dev).is_ok_and(|m| m.file_type().is_block_device()) {
            return Err(format!(
                "node.meta_data is empty and device.paths[0] {} is a block device: the embedded \
                 meta service needs a file of its own; set node.meta_data",
                dev.display()
            ));
        }
    }
    let mut cfg = keel_meta::embedded::config(
        p.node.meta_listen.clone(),
        data,
        p.node.partitions,
        p.node.replication_factor,
    );
    cfg.heartbeat_interval = EMBEDDED_META_HEARTBEAT;
    keel_meta::embedded::prepare(cfg)
}

/// Runs the node until it is killed or stopped by SIGTERM. Returns only on a start-up error.
pub fn run(p: Profile) -> Result<(), String> {
    // Before anything is bound or created: a bad certificate must leave no trace.
    let tls = match p.net.tls_cert.as_os_str().is_empty() {
        true => None,
        false => Some(crate::tls::acceptor(&p.net.tls_cert, &p.net.tls_key)?),
    };
    refuse_taken_port(&p.node.listen, "listen")?;
    if !p.node.metrics_listen.is_empty() {
        refuse_taken_port(&p.node.metrics_listen, "metrics_listen")?;
    }
    let mut _locks = Vec::new();
    // SPDK bdevs are names, not paths: SPDK's JSON config says where their data is, so that is
    // what is locked (SPDK itself locks none of an aio bdev's file, but an NVMe controller is
    // one process's alone).
    let files = p.backend() == Backend::IoUring;
    if !files {
        _locks.push(keel_nvme::lock_device(p.io.spdk_config.as_ref())?);
    }
    for path in p.device.paths.iter().filter(|_| files) {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        // Held until the process ends: no second node may open this device meanwhile (nor
        // this one twice under two names: the second lock is refused).
        _locks.push(keel_nvme::lock_device(path)?);
    }
    let geo = prepare_devices(&p)?;
    let mut meta = match p.embedded_meta() {
        true => Some(embedded_meta(&p)?),
        false => None,
    };
    let n = p.node.cores.len();
    let stop = shutdown_on_signal(n)?;
    let mesh: MeshBuilder<Msg, _> = MeshBuilder::full(n, 4096);
    // Client connections open on all shards together (net.connections_max is per node).
    let conns_open = Arc::new(AtomicUsize::new(0));
    let cluster = p.placed().then(|| crate::cluster::Cluster::new(&p));
    let mut handles = Vec::new();
    for (i, &cpu) in p.node.cores.iter().enumerate() {
        let p = p.clone();
        let geo = geo.clone();
        let mesh = mesh.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        let conns_open = conns_open.clone();
        let cluster = cluster.clone();
        // Shard 0's executor also runs the embedded meta service, in a task queue of its own.
        let meta = meta.take();
        let h = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("keel-shard-{i}"))
            .io_memory(p.io.io_memory_bytes as usize)
            .ring_depth(p.io.ring_depth)
            .spawn(move || async move {
                if let Some(m) = meta {
                    glommio::spawn_local(async move {
                        let e = m.run().await;
                        eprintln!("keel-node: the embedded meta service failed: {e}");
                        std::process::exit(1);
                    })
                    .detach();
                }
                if let Err(e) = run_shard(p, geo, mesh, stop, tls, conns_open, cluster).await {
                    eprintln!("keel-node: {e}");
                    std::process::exit(1);
                }
            })
            .map_err(|e| format!("cannot start the executor for CPU {cpu}: {e}"))?;
        handles.push(h);
    }
    for h in handles {
        h.join()
            .map_err(|e| format!("shard executor failed: {e}"))?;
    }
    Ok(())
}

/// A shard cannot go on (its Raft log failed, or a checkpoint could not be written): a node
/// placed by a meta service tells it first ([`crate::cluster::Cluster::fail`]); either way
/// the process stops.
async fn fatal(cluster: Option<&crate::cluster::Cluster>, shard: usize, why: &str) -> ! {
    match cluster {
        Some(c) => c.fail(shard, why).await,
        None => {
            eprintln!("keel-node: shard {shard}: FATAL: {why}");
            std::process::exit(1);
        }
    }
}

async fn run_shard(
    p: Profile,
    geo: Vec<Superblock>,
    mesh: MeshBuilder<Msg, glommio::channels::channel_mesh::Full>,
    stop: Stop,
    tls: Option<futures_rustls::TlsAcceptor>,
    conns_open: Arc<AtomicUsize>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
) -> Result<(), String> {
    let (senders, receivers) = mesh
        .join()
        .await
        .map_err(|_| "cannot join the shard mesh".to_string())?;
    // The mesh numbers the shards; shard `id` always owns region `id` and the partitions that
    // map to `id`, whichever CPU runs it.
    let id = senders.peer_id();
    let n = p.node.cores.len();
    let t0 = Instant::now();
    let d = p.device_of_shard(id);
    let geo = geo[d];
    let dev = AnyDevice::open(&p.backend(), &p.device.paths[d], p.device.size_bytes)
        .await
        .map_err(|e| e.to_string())?;
    let dev = Rc::new(dev);
    // Shard `id` owns the (id - first_shard)th region of its device.
    assert!(geo.first_shard as usize <= id && id < (geo.first_shard + geo.shards) as usize);
    let base = DATA_START_BYTES + (id - geo.first_shard as usize) as u64 * geo.region_bytes;
    let region =
        |off: u64, len: u64| Region::new(dev.clone(), base + off, len).map_err(|e| e.to_string());
    let ckpt_area = region(0, checkpoint::AREA_BYTES)?;
    let raftlog_region = region(CHECKPOINT_RESERVED_BYTES, geo.raftlog_bytes)?;
    let fixed = CHECKPOINT_RESERVED_BYTES + geo.raftlog_bytes;
    let value_region = region(fixed, geo.region_bytes - fixed)?;

    let ckpt = checkpoint::load(&ckpt_area)
        .await
        .map_err(|e| format!("shard {id}: cannot read the checkpoint: {e}"))?;
    let partitions_mask = p.node.partitions as u64 - 1;
    let cfg = EngineConfig {
        log: LogConfig {
            seg_bytes: geo.segment_bytes,
            value_len_max: p.engine.value_len_max,
            batch_bytes_max: p.raftlog.batch_bytes_max,
            flush_delay: Duration::from_millis(p.raftlog.flush_delay_ms),
        },
        cache_bytes: (p.engine.cache_bytes / n as u64) as usize,
        partitions_mask,
    };
    let engine = Engine::open(value_region, cfg, ckpt.value_seq)
        .await
        .map_err(|e| format!("shard {id}: {e}"))?;
    let raftlog = keel_raftlog::RaftLog::open(
        raftlog_region,
        keel_raftlog::Config {
            segment_bytes: p.raftlog.segment_bytes,
            batch_bytes_max: p.raftlog.batch_bytes_max,
            flush_delay: Duration::from_millis(p.raftlog.flush_delay_ms),
            flushes_in_flight_max: p.raftlog.flushes_in_flight_max,
        },
    )
    .await
    .map_err(|e| format!("shard {id}: raftlog: {e}"))?;
    let s = engine.stat_values();
    let stat = |k: &str| s.iter().find(|(n, _)| *n == k).map_or(0, |(_, v)| *v);
    eprintln!(
        "keel-node: shard {id} on CPU {}, device {}: recovered {} items from {} records as of checkpoint {} in {} ms \
         ({} corrupt records skipped, {} later records left to the Raft log)",
        p.node.cores[id],
        p.device.paths[d].display(),
        stat("curr_items"),
        stat("keel_recovered_records"),
        ckpt.generation,
        t0.elapsed().as_millis(),
        stat("keel_corrupt_records"),
        stat("keel_ignored_records"),
    );
    engine.resume_pending_flush();

    let placed = cluster.is_some();
    let mut peers = p.peer_map()?;
    if !peers.is_empty() {
        // Members added at run time, remembered by the checkpoint; `--peers` wins for the
        // nodes it names (an operator may have moved one).
        for (node, addr) in &ckpt.peers {
            peers.entry(*node).or_insert(*addr);
        }
    }
    let voters: Vec<u64> = match p.node.join || placed {
        true => Vec::new(),
        false => peers.keys().copied().collect(),
    };
    let peer_addr = match placed {
        true => p.node.peer_listen.parse().ok(),
        false => peers.get(&p.node.id).copied(),
    };
    let settings = RaftSettings {
        node_id: p.node.id,
        placed,
        voters,
        tick: Duration::from_millis(p.raft.tick_ms),
        election_ticks: p.raft.election_ticks,
        heartbeat_ticks: p.raft.heartbeat_ticks,
        checkpoint_interval: Duration::from_millis(p.raft.checkpoint_interval_ms),
        stale_reads: p.raft.stale_reads,
        request_timeout: Duration::from_millis(p.raft.request_timeout_ms),
        entries_per_ready_bytes_max: 4 << 20,
        compact_lag_entries: p.raft.compact_lag_entries,
        snapshot_inflight_bytes: p.raft.snapshot_inflight_bytes,
        shards: n as u32,
        peer_addr,
    };
    // Placed by the meta service: the groups the raftlog holds (what was placed here before),
    // more as the meta service places them. Static: every partition of this shard.
    let partitions: Vec<u64> = match placed {
        true => raftlog.groups(),
        false => (0..p.node.partitions as u64)
            .filter(|q| q % n as u64 == id as u64)
            .collect(),
    };
    let replicas = Replicas::new(
        settings,
        id as u32,
        partitions,
        partitions_mask,
        engine.clone(),
        raftlog.clone(),
        &ckpt.applied,
    )
    .map_err(|e| format!("shard {id}: {e}"))?;
    if placed {
        replicas.drop_orphaned_items(Engine::<AnyDevice>::now());
    }
    if let Some(peer_addr) = peer_addr {
        let at = |a: std::net::SocketAddr| std::net::SocketAddr::new(a.ip(), a.port() + id as u16);
        let cfg = TransportConfig {
            node_id: p.node.id,
            shard: id as u32,
            listen: at(peer_addr),
            peers: peers
                .iter()
                .filter(|(&k, _)| k != p.node.id)
                .map(|(&k, &a)| (k, crate::transport::shard_addrs(a, n as u32)))
                .collect(),
            frame_bytes_max: 2 * p.engine.value_len_max + (1 << 20),
            queue_bytes_max: 64 << 20,
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(1000),
            io_timeout: Duration::from_millis(p.raft.request_timeout_ms),
            inbound_conns_max: 4 * peers.len().max(PLACED_PEERS_MAX) * n,
            secret: (!p.node.cluster_secret.is_empty())
                .then(|| crate::transport::PeerSecret::new(p.node.cluster_secret.as_bytes())),
        };
        let listen = cfg.listen;
        // Weak: the transport must not keep the replicas (which hold it) alive.
        let r = Rc::downgrade(&replicas);
        let t = Transport::start(
            cfg,
            Rc::new(move |m| {
                if let Some(r) = r.upgrade() {
                    r.on_inbound(m)
                }
            }),
        )
        .map_err(|e| format!("shard {id}: peer transport on {listen}: {e}"))?;
        *replicas.transport.borrow_mut() = Some(t);
        eprintln!("keel-node: shard {id} accepting peers on {listen}");
    }

    let ex = glommio::executor();
    // Durability is on the request path (every write waits for its raftlog flush and for
    // Raft): the flush and Raft tasks get the same share as requests. GC and checkpoints only
    // use what requests leave.
    let flush_tq = ex.create_task_queue(
        Shares::Static(1000),
        glommio::Latency::Matters(Duration::from_millis(1)),
        "flush",
    );
    let raft_tq = ex.create_task_queue(
        Shares::Static(1000),
        glommio::Latency::Matters(Duration::from_millis(1)),
        "raft",
    );
    let ckpt_tq = ex.create_task_queue(
        Shares::Static(100),
        glommio::Latency::NotImportant,
        "checkpoint",
    );
    let rl = raftlog.clone();
    glommio::spawn_local_into(
        async move {
            let e = rl.run_flush().await;
            eprintln!("keel-node: shard {id}: FATAL: raftlog: {e}; no write will be acknowledged until restart");
        },
        flush_tq,
    )
    .map_err(|e| e.to_string())?
    .detach();
    let (r, c) = (replicas.clone(), cluster.clone());
    glommio::spawn_local_into(
        async move {
            let e = driver::run_raft(r).await;
            fatal(c.as_deref(), id, &e).await
        },
        raft_tq,
    )
    .map_err(|e| e.to_string())?
    .detach();
    let (r, c) = (replicas.clone(), cluster.clone());
    glommio::spawn_local_into(
        async move {
            match driver::run_checkpoints(r, ckpt_area, ckpt, stop.flag.clone()).await {
                Ok(()) => stop.shard_done(id),
                Err(e) => fatal(c.as_deref(), id, &e).await,
            }
        },
        ckpt_tq,
    )
    .map_err(|e| e.to_string())?
    .detach();
    if let Some(c) = &cluster {
        // Control work: what requests leave, like checkpoints.
        c.spawn_shard_task(id, replicas.clone(), ckpt_tq)?;
        c.shard_ready()?;
    }
    let gc_tq = ex.create_task_queue(Shares::Static(50), glommio::Latency::NotImportant, "gc");
    let log = engine.log.clone();
    glommio::spawn_local_into(
        async move {
            let e = vlog::run_flush(log).await;
            eprintln!(
                "keel-node: shard {id}: FATAL: {e}; no write will be acknowledged until restart"
            );
        },
        flush_tq,
    )
    .map_err(|e| e.to_string())?
    .detach();
    let gc_engine = engine.clone();
    let gc_cfg = GcConfig {
        live_ratio_min: p.gc.live_ratio_min,
        free_segments_min: p.gc.free_segments_min,
        bytes_per_sec_max: p.gc.bytes_per_sec_max,
        interval: Duration::from_millis(p.gc.interval_ms),
    };
    glommio::spawn_local_into(
        async move {
            let e = gc::run_gc(gc_engine, gc_cfg).await;
            eprintln!("keel-node: shard {id}: FATAL: garbage collection failed: {e}");
        },
        gc_tq,
    )
    .map_err(|e| e.to_string())?
    .detach();
    // Index checkpoints: bulk sequential writes that only bound restart time, like GC.
    let ixckpt_tq = ex.create_task_queue(
        Shares::Static(50),
        glommio::Latency::NotImportant,
        "index-checkpoint",
    );
    let ixckpt_engine = engine.clone();
    let ixckpt_cfg = IndexCheckpointConfig {
        records_min: p.engine.index_checkpoint_records_min,
        interval: Duration::from_millis(p.engine.index_checkpoint_interval_ms),
    };
    glommio::spawn_local_into(
        async move {
            let e = index_checkpoint::run_index_checkpoints(ixckpt_engine, ixckpt_cfg).await;
            eprintln!("keel-node: shard {id}: FATAL: index checkpoint failed: {e}");
        },
        ixckpt_tq,
    )
    .map_err(|e| e.to_string())?
    .detach();

    let limits = Limits {
        value_len_max: p.engine.value_len_max,
        ..Limits::default()
    };
    let shard = Rc::new(Shard::new(
        id,
        n,
        engine,
        replicas,
        senders,
        ShardConfig {
            partitions: p.node.partitions,
            limits,
            conns_max: p.net.connections_max,
            conns_open,
            read_buffer_bytes: p.net.read_buffer_bytes,
            pipeline_depth_max: p.net.pipeline_depth_max,
            settings: memcached_settings(&p),
            admin_token: p.net.admin_token.as_bytes().into(),
            tls,
        },
    ));
    shard.spawn_mesh_tasks(receivers);
    if id == 0 && !p.node.metrics_listen.is_empty() {
        // Scrapes take what requests leave, like checkpoints.
        let metrics_tq = ex.create_task_queue(
            Shares::Static(100),
            glommio::Latency::NotImportant,
            "metrics",
        );
        crate::metrics::spawn_metrics_task(shard.clone(), &p.node.metrics_listen, metrics_tq)?;
    }
    if placed {
        // Clients come once the first routing table is here (registration takes well under a
        // second), so a key of a declared table is never read from the keyspace instead; a
        // meta service that does not answer within ROUTES_WAIT does not keep clients out.
        let started = std::time::Instant::now();
        while !shard.replicas.has_routes() && started.elapsed() < ROUTES_WAIT {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        if !shard.replicas.has_routes() {
            eprintln!(
                "keel-node: shard {id}: no routing table from the meta service after {} s; \
                 serving clients without it (table keys read from the keyspace until it comes)",
                ROUTES_WAIT.as_secs()
            );
        }
    }
    let listener = glommio::net::TcpListener::bind(&p.node.listen)
        .map_err(|e| format!("shard {id}: cannot listen on {}: {e}", p.node.listen))?;
    eprintln!("keel-node: shard {id} accepting on {}", p.node.listen);
    crate::conn::accept_loop(shard, listener).await;
    Ok(())
}
