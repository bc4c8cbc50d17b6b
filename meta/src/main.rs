//! `keel-meta`: run one replica of the meta service, or `keel-meta ctl` to operate one.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use keel_meta::ctl::{self, CtlCommand};
use keel_meta::service::{self, ServiceConfig};
use keel_meta::tables::{TableDef, TableMode};

#[derive(Parser, Debug)]
#[command(
    name = "keel-meta",
    about = "Keel's meta service: node registry, placement, leader balancing (a Raft group of 1 or 3)",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Where this replica accepts nodes, ctl and its peers (IP:PORT).
    #[arg(long, required = true)]
    listen: Option<String>,
    /// This replica's data file (created at first start, 48 MiB).
    #[arg(long, required = true)]
    data: Option<std::path::PathBuf>,
    /// This replica's id in the meta group.
    #[arg(long, default_value_t = 1)]
    id: u64,
    /// Every replica of the meta group: 1=ADDR,2=ADDR,3=ADDR (each its --listen). Without it the
    /// group is this one replica.
    #[arg(long)]
    peers: Option<String>,
    /// Replication factor of the keyspace's partitions (replicas of each partition), fixed when
    /// the service first starts. The meta group's own size is the number of --peers.
    #[arg(long, visible_alias = "replication-factor", default_value_t = 3)]
    replicas: u32,
    /// Partitions of the keyspace (a power of two), fixed when the service first starts; every
    /// node must run the same count (node.partitions).
    #[arg(long, default_value_t = 64)]
    partitions: u32,
    /// How often nodes heartbeat.
    #[arg(long, default_value_t = 1000)]
    heartbeat_interval_ms: u64,
    /// A node silent this long is marked down and its replicas are rebuilt elsewhere: a
    /// duration such as 30s, 3s or 500ms.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    failure_timeout: Duration,
    /// A move not done after this long is given up and planned again.
    #[arg(long, default_value_t = 120_000)]
    move_timeout_ms: u64,
    /// Partitions mid-move at once at most (each move copies a snapshot).
    #[arg(long, default_value_t = 32)]
    moves_in_flight_max: usize,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Operate a running meta service.
    Ctl {
        /// The meta group: ADDR[,ADDR...] (any replica; the leader is found).
        #[arg(long)]
        meta: String,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        what: CtlCmd,
    },
}

#[derive(Subcommand, Debug)]
enum CtlCmd {
    /// Nodes, zones, health, replicas and leaders per node, moves in flight.
    Status,
    /// Empty a node: its replicas and leaders move to others.
    Drain { id: u64 },
    /// End a drain: the node takes replicas again.
    Undrain { id: u64 },
    /// Forget a node (refused while it hosts a replica: drain it first).
    Remove { id: u64 },
    /// Turn replica and leader balancing on or off.
    Balance {
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Declare a feature table, read by clients as `<table>:<key>`.
    CreateTable {
        name: String,
        /// Its partitions (a power of two); `keel-bulk build --partitions` must match.
        #[arg(long)]
        partitions: u32,
        /// bulk (written only by `keel-bulk load`; client writes are refused) or online.
        #[arg(long)]
        mode: TableMode,
        /// Versions kept on the nodes: the current one and those a rollback returns to.
        #[arg(long, default_value_t = 2)]
        versions_kept: u32,
        /// Replicas of each partition: the keyspace's (its partitions ride the keyspace's Raft
        /// groups); by default the keyspace's.
        #[arg(long)]
        replicas: Option<u32>,
    },
    /// Forget a table.
    DropTable { name: String },
    /// The declared tables.
    Tables,
}

fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("--peers {s}: {part} is not ID=ADDR"))?;
        let id: u64 = id
            .parse()
            .map_err(|_| format!("--peers {s}: {id} is not a replica id"))?;
        addr.parse::<std::net::SocketAddr>()
            .map_err(|e| format!("--peers {s}: {addr}: {e} (IP:PORT)"))?;
        if out.insert(id, addr.to_string()).is_some() {
            return Err(format!("--peers {s}: replica {id} is listed twice"));
        }
    }
    Ok(out)
}

fn serve(cli: Cli) -> Result<(), String> {
    let listen = cli.listen.expect("required by clap");
    listen
        .parse::<std::net::SocketAddr>()
        .map_err(|e| format!("--listen {listen}: {e} (IP:PORT)"))?;
    let mut cfg = ServiceConfig::new(cli.id, listen, cli.data.expect("required by clap"));
    if let Some(p) = &cli.peers {
        cfg.peers = parse_peers(p)?;
    }
    cfg.partitions = cli.partitions;
    cfg.replication_factor = cli.replicas;
    cfg.heartbeat_interval = Duration::from_millis(cli.heartbeat_interval_ms.max(1));
    cfg.failure_timeout = cli.failure_timeout;
    cfg.move_timeout = Duration::from_millis(cli.move_timeout_ms.max(1));
    cfg.limits.moves_in_flight_max = cli.moves_in_flight_max.max(1);
    let h = service::start_thread(cfg)?;
    Err(h
        .join()
        .unwrap_or_else(|_| "the meta thread panicked".into()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Some(Cmd::Ctl { meta, json, what }) => {
            let cmd = match what {
                CtlCmd::Status => CtlCommand::Status,
                CtlCmd::Drain { id } => CtlCommand::Drain(id),
                CtlCmd::Undrain { id } => CtlCommand::Undrain(id),
                CtlCmd::Remove { id } => CtlCommand::Remove(id),
                CtlCmd::Balance { state } => CtlCommand::Balance(state == "on"),
                CtlCmd::CreateTable {
                    name,
                    partitions,
                    mode,
                    versions_kept,
                    replicas,
                } => match replicas.map_or_else(|| ctl::keyspace_rf(&meta), Ok) {
                    Ok(replication_factor) => CtlCommand::CreateTable(TableDef {
                        name,
                        partitions,
                        replication_factor,
                        versions_kept,
                        mode,
                    }),
                    Err(e) => {
                        eprintln!("keel-meta: {e}");
                        return ExitCode::FAILURE;
                    }
                },
                CtlCmd::DropTable { name } => CtlCommand::DropTable(name),
                CtlCmd::Tables => CtlCommand::Tables,
            };
            ctl::run(&meta, &cmd, json)
                .map(|out| print!("{out}"))
                .map_err(|e| e.to_string())
        }
        None => serve(cli),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-meta: {e}");
            ExitCode::FAILURE
        }
    }
}

/// "30s", "3s", "500ms", "2m": a positive whole number and a unit.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: a duration is a whole number and a unit (ms, s, m)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("{s:?}: the unit must be ms, s or m")),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_take_a_unit() {
        use std::time::Duration;
        assert_eq!(super::parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(
            super::parse_duration("500ms"),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(super::parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["30", "s", "0s", "-1s", "3h", "1.5s"] {
            assert!(super::parse_duration(bad).is_err(), "{bad}");
        }
    }
}
