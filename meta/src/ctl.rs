//! `keel-meta ctl`: the operator's commands, and how their answers are printed (a table by
//! default, JSON with `--json`).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::client::{ClientConfig, ClientError, MetaClient};
use crate::placement::{Health, Move, NodeId};
use crate::proto::{NodeStatus, Status};
use crate::tables::{TableDef, TableInfo};

/// One ctl command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CtlCommand {
    Status,
    Drain(NodeId),
    Undrain(NodeId),
    Remove(NodeId),
    Balance(bool),
    CreateTable(TableDef),
    DropTable(String),
    Tables,
}

/// Runs `cmd` against the meta group at `meta` ("ADDR[,ADDR...]") and returns what to print.
pub fn run(meta: &str, cmd: &CtlCommand, json: bool) -> Result<String, ClientError> {
    let mut c = client(meta)?;
    match cmd {
        CtlCommand::Status => {
            let s = c.status()?;
            Ok(if json {
                serde_json::to_string_pretty(&s).expect("a status encodes") + "\n"
            } else {
                status_table(&s)
            })
        }
        CtlCommand::Drain(n) => {
            c.drain(*n)?;
            Ok(done(json, &format!("node {n} is draining")))
        }
        CtlCommand::Undrain(n) => {
            c.undrain(*n)?;
            Ok(done(json, &format!("node {n} is no longer draining")))
        }
        CtlCommand::Remove(n) => {
            c.remove(*n)?;
            Ok(done(json, &format!("node {n} removed")))
        }
        CtlCommand::Balance(on) => {
            c.set_balance(*on)?;
            let what = if *on { "on" } else { "off" };
            Ok(done(json, &format!("balance {what}")))
        }
        CtlCommand::CreateTable(t) => {
            c.create_table(t.clone())?;
            Ok(done(
                json,
                &format!(
                    "table {} created: {} partitions, {} mode, {} versions kept",
                    t.name,
                    t.partitions,
                    t.mode.name(),
                    t.versions_kept
                ),
            ))
        }
        CtlCommand::DropTable(name) => {
            c.drop_table(name)?;
            Ok(done(json, &format!("table {name} dropped")))
        }
        CtlCommand::Tables => {
            let ts = c.tables()?;
            Ok(if json {
                serde_json::to_string_pretty(&ts).expect("tables encode") + "\n"
            } else {
                tables_table(&ts)
            })
        }
    }
}

/// The readable form of `ctl tables` and `keel-bulk status`: one row per table, then one line
/// per version kept.
pub fn tables_table(ts: &[TableInfo]) -> String {
    let mut rows = vec![[
        "TABLE",
        "MODE",
        "PARTITIONS",
        "REPLICAS",
        "VERSIONS KEPT",
        "CURRENT",
    ]
    .map(String::from)];
    for t in ts {
        let d = &t.def;
        let mut current = t.current.map_or("-".into(), |v| v.to_string());
        if t.rolled_back {
            current += " (rolled back)";
        }
        rows.push([
            d.name.clone(),
            d.mode.name().to_string(),
            d.partitions.to_string(),
            d.replication_factor.to_string(),
            d.versions_kept.to_string(),
            current,
        ]);
    }
    let mut o = aligned(&rows);
    for t in ts {
        for v in &t.versions {
            let state = match (v.ready, Some(v.version) == t.current) {
                (false, _) => "loading",
                (true, true) => "current",
                (true, false) => "kept",
            };
            let _ = writeln!(
                o,
                "  {} version {}: {state}, {} keys, build {:016x} from {}",
                t.def.name, v.version, v.records, v.build_id, v.source
            );
        }
    }
    o
}

/// Rows as left-aligned columns two spaces apart.
fn aligned<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut o = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(o, "{}", line.join("  ").trim_end());
    }
    o
}

/// A client of the meta group at `meta` ("ADDR[,ADDR...]") as operators' commands use it: 5 s of
/// retries to find a leader.
pub fn client(meta: &str) -> Result<MetaClient, ClientError> {
    let cfg = ClientConfig {
        retry_for: std::time::Duration::from_secs(5),
        ..ClientConfig::default()
    };
    MetaClient::from_list(meta, cfg)
}

/// The keyspace's replication factor (a table's default).
pub fn keyspace_rf(meta: &str) -> Result<u32, String> {
    let s = client(meta)
        .and_then(|mut c| c.status())
        .map_err(|e| e.to_string())?;
    Ok(s.replication_factor)
}

fn done(json: bool, msg: &str) -> String {
    if json {
        serde_json::json!({ "ok": true, "message": msg }).to_string() + "\n"
    } else {
        format!("{msg}\n")
    }
}

fn health(h: Health) -> &'static str {
    match h {
        Health::Up => "up",
        Health::Draining => "draining",
        Health::Down => "down",
    }
}

/// The HEARTBEAT cell: how long ago the leader heard the node, and how long ago its peers did
/// where that is a second or more later (cut off from the meta service only).
fn heard(n: &NodeStatus) -> String {
    match (n.last_heartbeat_ms, n.peers_heard_ms) {
        (None, None) => "-".into(),
        (None, Some(p)) => format!("-; peers {p} ms ago"),
        (Some(h), Some(p)) if p + 1000 <= h => format!("{h} ms ago; peers {p} ms ago"),
        (Some(h), _) => format!("{h} ms ago"),
    }
}

/// A move in words.
pub fn describe_move(m: &Move) -> String {
    match m {
        Move::Create { partition, voters } => {
            format!("partition {partition}: create on {voters:?}")
        }
        Move::AddLearner {
            partition,
            node,
            replaces,
        } => match replaces {
            Some(r) => format!("partition {partition}: add learner {node} (replaces {r})"),
            None => format!("partition {partition}: add learner {node}"),
        },
        Move::Promote { partition, node } => format!("partition {partition}: promote {node}"),
        Move::RemoveReplica { partition, node } => {
            format!("partition {partition}: remove replica {node}")
        }
        Move::TransferLeader {
            partition,
            from,
            to,
        } => format!("partition {partition}: transfer leader {from} -> {to}"),
    }
}

/// The readable form of `ctl status`.
pub fn status_table(s: &Status) -> String {
    let mut o = String::new();
    let replicas: Vec<String> = s
        .meta_replicas
        .iter()
        .map(|r| {
            let l = if r.leader { " (leader)" } else { "" };
            format!("{}={}{l}", r.id, r.addr)
        })
        .collect();
    let _ = writeln!(
        o,
        "meta: {}; term {}, applied index {}",
        replicas.join(", "),
        s.term,
        s.applied_index
    );
    let _ = writeln!(
        o,
        "keyspace: {} partitions, replication factor {}; placement epoch {}; balance {}",
        s.partitions,
        s.replication_factor,
        s.epoch,
        if s.balance { "on" } else { "off" }
    );
    let _ = writeln!(
        o,
        "partitions: {} under-replicated ({} without a majority), {} without a leader; {} moves \
         in flight ({} repairs)",
        s.under_replicated,
        s.without_majority,
        s.leaderless,
        s.moves_in_flight.len(),
        s.repairs_in_flight
    );
    if s.nodes_up < s.replication_factor {
        let _ = writeln!(
            o,
            "only {} nodes up for replication factor {}: partitions keep the replicas they can \
             and get the rest back as nodes return",
            s.nodes_up, s.replication_factor
        );
    }
    let mut rows = vec![[
        "NODE",
        "ZONE",
        "HEALTH",
        "CLIENT",
        "PEER",
        "REPLICAS",
        "LEADERS",
        "LEARNERS",
        "KEYS",
        "BYTES",
        "HEARTBEAT",
    ]
    .map(String::from)];
    for n in &s.nodes {
        rows.push([
            n.id.to_string(),
            n.zone.clone(),
            health(n.health).to_string(),
            n.client_addr.clone(),
            n.peer_addr.clone(),
            n.replicas.to_string(),
            n.leaders.to_string(),
            n.learners.to_string(),
            n.keys.to_string(),
            n.bytes.to_string(),
            heard(n),
        ]);
    }
    let _ = writeln!(o);
    o.push_str(&aligned(&rows));
    let mut zones: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for n in &s.nodes {
        let z = zones.entry(&n.zone).or_default();
        z.0 += 1;
        z.1 += (n.health == Health::Up) as u32;
    }
    let zs: Vec<String> = zones
        .iter()
        .map(|(z, (n, up))| format!("{z}: {n} nodes ({up} up)"))
        .collect();
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "zones: {}",
        if zs.is_empty() {
            "none".into()
        } else {
            zs.join(", ")
        }
    );
    let failed: Vec<&NodeStatus> = s.nodes.iter().filter(|n| n.failure.is_some()).collect();
    if !failed.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "device failures:");
        for n in failed {
            let _ = writeln!(o, "  node {}: {}", n.id, n.failure.as_deref().unwrap_or(""));
        }
    }
    if !s.moves_in_flight.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "moves in flight:");
        for m in &s.moves_in_flight {
            let _ = writeln!(o, "  {}", describe_move(m));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::MetaReplica;

    #[test]
    fn the_status_table_shows_nodes_zones_and_moves() {
        let node = |id, zone: &str, health, replicas, leaders| NodeStatus {
            id,
            client_addr: format!("10.0.0.{id}:11211"),
            peer_addr: format!("10.0.0.{id}:7100"),
            zone: zone.into(),
            health,
            weight: 1,
            cores: 4,
            device_bytes: 1 << 30,
            memory_bytes: 1 << 30,
            last_heartbeat_ms: (id != 3).then_some(250),
            peers_heard_ms: None,
            failure: None,
            replicas,
            leaders,
            learners: 0,
            keys: 10,
            bytes: 1000,
        };
        let s = Status {
            meta_replicas: vec![
                MetaReplica {
                    id: 1,
                    addr: "10.0.1.1:7000".into(),
                    leader: false,
                },
                MetaReplica {
                    id: 2,
                    addr: "10.0.1.2:7000".into(),
                    leader: true,
                },
            ],
            term: 7,
            applied_index: 99,
            epoch: 12,
            partitions: 8,
            replication_factor: 2,
            balance: false,
            nodes: vec![
                node(1, "a", Health::Up, 6, 4),
                NodeStatus {
                    last_heartbeat_ms: Some(9000),
                    peers_heard_ms: Some(80),
                    ..node(2, "b", Health::Draining, 6, 4)
                },
                NodeStatus {
                    failure: Some("raftlog: write at 4096: EIO".into()),
                    ..node(3, "b", Health::Down, 4, 0)
                },
            ],
            nodes_up: 1,
            under_replicated: 4,
            without_majority: 0,
            leaderless: 0,
            repairs_in_flight: 1,
            moves_in_flight: vec![Move::AddLearner {
                partition: 5,
                node: 1,
                replaces: Some(3),
            }],
        };
        let t = status_table(&s);
        assert!(
            t.starts_with("meta: 1=10.0.1.1:7000, 2=10.0.1.2:7000 (leader); term 7"),
            "{t}"
        );
        assert!(t.contains("8 partitions, replication factor 2; placement epoch 12; balance off"));
        assert!(
            t.contains(
                "partitions: 4 under-replicated (0 without a majority), 0 without a leader; 1 \
                 moves in flight (1 repairs)"
            ),
            "{t}"
        );
        assert!(
            t.contains("only 1 nodes up for replication factor 2: partitions keep"),
            "{t}"
        );
        assert!(
            t.contains("device failures:\n  node 3: raftlog: write at 4096: EIO"),
            "{t}"
        );
        assert!(
            t.contains("zones: a: 1 nodes (1 up), b: 2 nodes (0 up)"),
            "{t}"
        );
        assert!(
            t.contains("  partition 5: add learner 1 (replaces 3)"),
            "{t}"
        );
        let row = |id: &str| t.lines().find(|l| l.starts_with(id)).unwrap().to_string();
        assert!(row("2 ").contains("draining"));
        assert!(row("2 ").ends_with("9000 ms ago; peers 80 ms ago"), "{t}");
        assert!(row("3 ").contains("down") && row("3 ").trim_end().ends_with('-'));
        assert!(row("1 ").contains("250 ms ago"));
        // Columns line up: every row's REPLICAS column starts where its header does.
        let header = row("NODE");
        let at = header.find("REPLICAS").unwrap();
        assert_eq!(&row("1 ")[at..at + 1], "6");
    }
}
