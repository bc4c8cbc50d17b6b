//! `keel-node --profile hw-configs/dev.toml [--listen ADDR:PORT] [--data PATH] [--cores LIST]
//! [--node-id N --peers 1=IP:PORT,2=IP:PORT,... [--join]] [--metrics-listen IP:PORT]`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use keel_node::config::{parse_cores, parse_peers, Profile};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keel storage node: memcached text protocol over an io_uring value log, one shard per core.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The hardware profile (TOML); every tunable lives there.
    #[arg(long, default_value = "hw-configs/dev.toml")]
    profile: PathBuf,
    /// Overrides node.listen (IP:PORT).
    #[arg(long)]
    listen: Option<String>,
    /// Overrides device.path (a file, created if missing, or a block device).
    #[arg(long)]
    data: Option<PathBuf>,
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
    /// Overrides node.metrics_listen: serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Prints the effective profile (after overrides) and exits.
    #[arg(long)]
    print_profile: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut p = match Profile::load(&args.profile) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("keel-node: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(l) = args.listen {
        p.node.listen = l;
    }
    if let Some(d) = args.data {
        p.device.path = d;
    }
    if let Some(id) = args.node_id {
        p.node.id = id;
    }
    if let Some(m) = args.metrics_listen {
        p.node.metrics_listen = m;
    }
    if args.join {
        p.node.join = true;
    }
    if let Some(peers) = args.peers {
        p.node.peers = parse_peers(&peers);
    }
    if let Some(c) = args.cores {
        match parse_cores(&c) {
            Ok(c) => p.node.cores = c,
            Err(e) => {
                eprintln!("keel-node: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if let Err(e) = p.validate() {
        eprintln!("keel-node: profile {}: {e}", args.profile.display());
        return ExitCode::from(2);
    }
    if args.print_profile {
        print!("{}", toml::to_string(&p).expect("a profile serializes"));
        return ExitCode::SUCCESS;
    }
    // One executor per shard plus the short-lived one that checks the superblock.
    match keel_nvme::preflight(p.node.cores.len() + 1, p.io.io_memory_bytes) {
        Ok(None) => {}
        Ok(Some(warning)) => eprintln!("keel-node: warning: {warning}"),
        Err(e) => {
            eprintln!("keel-node: cannot start: {e}");
            return ExitCode::from(1);
        }
    }
    match keel_node::server::run(p) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-node: {e}");
            ExitCode::from(1)
        }
    }
}
