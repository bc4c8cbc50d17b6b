//! `keel-node --profile hw-configs/dev.toml [--listen ADDR:PORT] [--data PATH[,PATH...]]
//! [--cores LIST] [--node-id N --peers 1=IP:PORT,2=IP:PORT,... [--join]]
//! [--node-id N --meta ADDR[,ADDR...] --peer-listen IP:PORT --zone NAME]
//! [--meta-listen IP:PORT --peer-listen IP:PORT]
//! [--metrics-listen IP:PORT]` runs a node; `keel-node --check-profile PATH` checks a profile
//! and exits; `keel-node tune --device PATH --out PROFILE` probes a device and writes a
//! profile for it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keel_node::config::{parse_cores, parse_peers, Profile};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keel storage node: memcached text protocol over an io_uring value log, one shard per core.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The hardware profile (TOML); every tunable lives there.
    #[arg(long, default_value = "hw-configs/dev.toml")]
    profile: PathBuf,
    /// Checks the profile at PATH (after the overrides given here) and exits: 0 and
    /// "profile PATH: ok" when it is valid, 2 and the key, value and rule when not. Opens no
    /// device and binds no port.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["profile", "print_profile"])]
    check_profile: Option<PathBuf>,
    /// Overrides node.listen (IP:PORT).
    #[arg(long)]
    listen: Option<String>,
    /// Overrides device.paths: one file (created if missing) or block device, or several,
    /// comma separated.
    #[arg(long, value_name = "PATH[,PATH...]")]
    data: Option<String>,
    /// Overrides node.cores: CPU ids like 0,1 or 0-3.
    #[arg(long)]
    cores: Option<String>,
    /// Overrides node.id: this node's Raft id.
    #[arg(long)]
    node_id: Option<u64>,
    /// Overrides node.peers: every node of the cluster as ID=IP:PORT (its peer port), comma
    /// separated, this one included.
    #[arg(long)]
    peers: Option<String>,
    /// Overrides node.join: a new data file starts with no members, waiting to be added to a
    /// running cluster (`member_add` on any member).
    #[arg(long)]
    join: bool,
    /// Overrides node.meta: the meta service's replicas, IP:PORT, comma separated. The node
    /// registers there and hosts the partitions placed on it.
    #[arg(long, value_name = "ADDR[,ADDR...]")]
    meta: Option<String>,
    /// Overrides node.peer_listen: where shard 0 accepts peers (shard s on PORT + s).
    #[arg(long, value_name = "IP:PORT")]
    peer_listen: Option<String>,
    /// Overrides node.zone: this node's failure domain.
    #[arg(long)]
    zone: Option<String>,
    /// Overrides node.meta_listen: without --meta and --peers, the node runs its own meta
    /// service here (other nodes join with --meta at this address).
    #[arg(long, value_name = "IP:PORT")]
    meta_listen: Option<String>,
    /// Overrides node.metrics_listen: serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Prints the effective profile (after overrides) and exits.
    #[arg(long)]
    print_profile: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Probes a device (random 4 KiB read IOPS at queue depths 1-128, sequential write
    /// bandwidth, 4 KiB write + fdatasync latency), the CPUs and RLIMIT_MEMLOCK, and writes a
    /// profile whose values follow from them, the figures in its comments. It writes over the
    /// device's first --size-bytes (zeroing them again after), so it refuses a device whose
    /// block 0 holds anything.
    Tune {
        /// The device: a block device, or a file (created with --size-bytes, default 2 GiB,
        /// if missing).
        #[arg(long)]
        device: PathBuf,
        /// Where to write the profile.
        #[arg(long)]
        out: PathBuf,
        /// Bytes of the device to probe and to put in the profile (default: the device's
        /// size; 2 GiB for a new file).
        #[arg(long)]
        size_bytes: Option<u64>,
        /// How long each of the 7 probes runs.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
}

/// Descriptors a node needs beside its client connections.
const OWN_FDS_MARGIN: u64 = 1024;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Tune {
        device,
        out,
        size_bytes,
        seconds,
    }) = args.command
    {
        let o = keel_node::tune::TuneOptions {
            device,
            out,
            size_bytes,
            seconds,
        };
        return match keel_node::tune::run(o) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("keel-node tune: {e}");
                ExitCode::from(2)
            }
        };
    }
    let path = args.check_profile.clone().unwrap_or(args.profile.clone());
    let p = match effective_profile(&path, &args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("keel-node: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_profile.is_some() {
        println!("profile {}: ok", path.display());
        print!("{}", summary(&p));
        if let Err(e) = p.fits_host() {
            println!("  not for this host (it would not start here): {e}");
        }
        return ExitCode::SUCCESS;
    }
    if args.print_profile {
        print!(
            "{}",
            toml::to_string(&p.redacted()).expect("a profile serializes")
        );
        return ExitCode::SUCCESS;
    }
    if let Err(e) = p.fits_host() {
        eprintln!("keel-node: profile {}: {e}", path.display());
        return ExitCode::from(2);
    }
    // One executor per shard plus the short-lived one that checks the superblocks.
    match keel_nvme::preflight(p.node.cores.len() + 1, p.io.io_memory_bytes) {
        Ok(None) => {}
        Ok(Some(warning)) => eprintln!("keel-node: warning: {warning}"),
        Err(e) => {
            eprintln!("keel-node: cannot start: {e}");
            return ExitCode::from(1);
        }
    }
    // Every client connection is a descriptor; the node's own (devices, rings, listeners, peer
    // connections) fit in the margin.
    let fds = p.net.connections_max as u64 + OWN_FDS_MARGIN;
    if let Err(have) = keel_nvme::raise_open_files(fds) {
        eprintln!(
            "keel-node: warning: RLIMIT_NOFILE is {have}, below the {fds} that net.connections_max = \
             {} needs: connections past it fail to be accepted; raise it (ulimit -n {fds}) or lower \
             net.connections_max",
            p.net.connections_max
        );
    }
    match keel_node::server::run(p) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-node: {e}");
            ExitCode::from(1)
        }
    }
}

/// The profile at `path` with the command line's overrides, validated.
fn effective_profile(path: &std::path::Path, args: &Args) -> Result<Profile, String> {
    let mut p = Profile::load(path)?;
    if let Some(l) = &args.listen {
        p.node.listen = l.clone();
    }
    if let Some(d) = &args.data {
        p.device.paths = d.split(',').map(PathBuf::from).collect();
    }
    if let Some(id) = args.node_id {
        p.node.id = id;
    }
    if let Some(m) = &args.metrics_listen {
        p.node.metrics_listen = m.clone();
    }
    if args.join {
        p.node.join = true;
    }
    if let Some(peers) = &args.peers {
        p.node.peers = parse_peers(peers);
    }
    if let Some(c) = &args.cores {
        p.node.cores = parse_cores(c)?;
    }
    if let Some(m) = &args.meta {
        p.node.meta = m.split(',').map(|a| a.trim().to_string()).collect();
    }
    if let Some(a) = &args.peer_listen {
        p.node.peer_listen = a.clone();
    }
    if let Some(z) = &args.zone {
        p.node.zone = z.clone();
    }
    if let Some(m) = &args.meta_listen {
        p.node.meta_listen = m.clone();
    }
    p.validate()
        .map_err(|e| format!("profile {}: {e}", path.display()))?;
    Ok(p)
}

/// What a valid profile will do, for `--check-profile`.
fn summary(p: &Profile) -> String {
    let mut s = format!(
        "  {} shards on CPUs {:?}, {} partitions, clients on {}\n",
        p.node.cores.len(),
        p.node.cores,
        p.node.partitions,
        p.node.listen
    );
    for (d, path) in p.device.paths.iter().enumerate() {
        let shards = p.shards_of_device(d);
        s += &format!(
            "  device {}: {} bytes, shards {}..{}\n",
            path.display(),
            p.device.size_bytes,
            shards.start,
            shards.end - 1
        );
    }
    s += &format!(
        "  io_uring ring depth {}, {} bytes of DMA buffers per shard; raftlog batches of {} bytes \
         or {} ms\n",
        p.io.ring_depth, p.io.io_memory_bytes, p.raftlog.batch_bytes_max, p.raftlog.flush_delay_ms
    );
    s
}
