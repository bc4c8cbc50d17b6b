//! `keel-bulk load | rollback | unrollback | status`: a built version put in front of readers
//! through the meta service (issue 11).
//!
//! A load verifies the build as a node will, checks it against the table's declaration, and
//! asks the meta service to start it (`StartLoad`: the version, the build and its directory go
//! into the meta group's Raft log and every routing table). Every node adopts the slices of the
//! partitions it hosts from that directory (replica/tables.rs), not entry by entry through the
//! Raft log; once every replica of every partition reports holding them, the meta leader makes
//! the version current in one step (`FinishLoad`). Nodes read each table key from the version
//! current in the routing table they hold when a request starts.

use std::path::Path;
use std::time::{Duration, Instant};

use keel_meta::client::MetaClient;
use keel_meta::ctl::tables_table;
use keel_meta::machine::Command;
use keel_meta::tables::{TableInfo, TableMode};

use super::{read_manifest, verify};

/// How often a load looks at the meta service's view of it.
const POLL: Duration = Duration::from_millis(100);

fn client(meta: &str) -> Result<MetaClient, String> {
    keel_meta::ctl::client(meta).map_err(|e| e.to_string())
}

fn table(c: &mut MetaClient, name: &str) -> Result<TableInfo, String> {
    let ts = c.tables().map_err(|e| e.to_string())?;
    ts.into_iter()
        .find(|t| t.def.name == name)
        .ok_or_else(|| format!("no table {name:?} is declared (keel-meta ctl create-table)"))
}

/// What a finished load reports.
pub struct Loaded {
    pub version: u32,
    pub records: u64,
    pub bytes: u64,
    pub secs: f64,
}

/// Loads the build in `dir` as the next version of `table` and waits until it is current (at
/// most `timeout`; then the load is aborted). `source` is the directory as the nodes see it.
pub fn load(
    meta: &str,
    name: &str,
    dir: &Path,
    source: &str,
    timeout: Duration,
) -> Result<Loaded, String> {
    let started = Instant::now();
    let m = read_manifest(dir)?;
    if m.table != name {
        return Err(format!(
            "{}: a build of table {}, not {name}",
            dir.display(),
            m.table
        ));
    }
    verify(dir)?;
    let mut c = client(meta)?;
    let t = table(&mut c, name)?;
    if t.def.mode != TableMode::Bulk {
        return Err(format!(
            "table {name} is online: only bulk tables are loaded"
        ));
    }
    if t.def.partitions != m.partitions {
        return Err(format!(
            "table {name} has {} partitions; this build has {} (keel-bulk build --partitions {})",
            t.def.partitions, m.partitions, t.def.partitions
        ));
    }
    c.table_command(Command::StartLoad {
        table: name.into(),
        build_id: m.build_id,
        source: source.into(),
        records: m.records,
    })
    .map_err(|e| e.to_string())?;
    let bytes = m.files.iter().map(|f| f.seg_bytes + f.idx_bytes).sum();
    loop {
        let t = table(&mut c, name)?;
        let Some(v) = t.versions.iter().find(|v| v.build_id == m.build_id) else {
            return Err(format!(
                "table {name}: the load of build {:016x} was aborted",
                m.build_id
            ));
        };
        if v.ready && t.current == Some(v.version) {
            return Ok(Loaded {
                version: v.version,
                records: m.records,
                bytes,
                secs: started.elapsed().as_secs_f64(),
            });
        }
        if started.elapsed() >= timeout {
            let version = v.version;
            c.table_command(Command::AbortLoad {
                table: name.into(),
                version,
            })
            .map_err(|e| e.to_string())?;
            return Err(format!(
                "table {name}: version {version} was not on every replica after {} s; the load \
                 is aborted and version {} stays current (the nodes' logs say why)",
                timeout.as_secs(),
                t.current.map_or("none".into(), |v| v.to_string())
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// Rolls `table` back to version `to` (the one before the current by default): the version
/// reads now see.
pub fn rollback(meta: &str, name: &str, to: Option<u32>) -> Result<u32, String> {
    let mut c = client(meta)?;
    c.table_command(Command::Rollback {
        table: name.into(),
        to,
    })
    .map_err(|e| e.to_string())?;
    table(&mut c, name)?
        .current
        .ok_or_else(|| format!("table {name}: no current version after the rollback"))
}

pub fn unrollback(meta: &str, name: &str) -> Result<(), String> {
    client(meta)?
        .table_command(Command::Unrollback { table: name.into() })
        .map_err(|e| e.to_string())
}

/// The tables (or one), their versions, which is current, and the load in flight.
pub fn status(meta: &str, name: Option<&str>, json: bool) -> Result<String, String> {
    let mut c = client(meta)?;
    let mut ts = c.tables().map_err(|e| e.to_string())?;
    if let Some(n) = name {
        ts.retain(|t| t.def.name == n);
        if ts.is_empty() {
            return Err(format!("no table {n:?} is declared"));
        }
    }
    Ok(if json {
        serde_json::to_string_pretty(&ts).expect("tables encode") + "\n"
    } else {
        tables_table(&ts)
    })
}
