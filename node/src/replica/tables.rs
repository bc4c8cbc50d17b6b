//! A shard's side of feature-table loads (issue 11): the slices the routing table wants here
//! are adopted, the others dropped.
//!
//! The meta service's routing table lists every bulk table's versions kept and loading, each a
//! build at a source directory every node reads. A shard wants the slice of every such build's
//! table partition p whose keyspace partition `p & (keyspace partitions - 1)` it hosts; it
//! adopts what it lacks (engine/tables.rs: the files are checked against the build's manifest
//! while copied) and drops what no version wants any more. The node's heartbeats list the
//! slices held; the meta leader makes a version current once every replica holds its slices.

use std::collections::BTreeSet;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use keel_meta::tables::TableMode;

use super::Replicas;
use crate::bulk;

/// A slice whose adoption failed is tried again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// One slice the routing table wants on this shard.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Wanted {
    pub build_id: u64,
    pub partition: u32,
    pub table: String,
    pub source: String,
}

impl Replicas {
    /// The slices the routing table wants on this shard.
    pub fn wanted_slices(&self) -> Vec<Wanted> {
        let routes = self.routes.borrow();
        let Some(t) = routes.as_ref() else {
            return Vec::new();
        };
        let shards = self.settings.shards as u64;
        let groups = self.groups.borrow();
        let mut out = Vec::new();
        for table in t.tables.iter().filter(|x| x.def.mode == TableMode::Bulk) {
            for p in 0..table.def.partitions {
                let g = (p & (t.partitions - 1)) as u64;
                if g % shards != self.shard as u64 || !groups.contains_key(&g) {
                    continue;
                }
                for v in &table.versions {
                    out.push(Wanted {
                        build_id: v.build_id,
                        partition: p,
                        table: table.def.name.clone(),
                        source: v.source.clone(),
                    });
                }
            }
        }
        out
    }
}

/// Brings the shard's slices in line with the routing table: adopts the wanted slices it lacks
/// (one at a time; a failure is logged and tried again after [`RETRY_AFTER`]) and drops the
/// ones no version wants.
pub async fn sync_slices(r: &Rc<Replicas>) {
    let want = r.wanted_slices();
    let held: BTreeSet<(u64, u32)> = r
        .engine
        .slices()
        .into_iter()
        .map(|(b, p, _, _)| (b, p))
        .collect();
    for w in &want {
        if held.contains(&(w.build_id, w.partition)) {
            continue;
        }
        let key = (w.build_id, w.partition);
        if r.slice_failures
            .borrow()
            .get(&key)
            .is_some_and(|t| t.elapsed() < RETRY_AFTER)
        {
            continue;
        }
        if let Err(why) = adopt(r, w).await {
            eprintln!(
                "keel-node: shard {}: table {} partition {} (build {:016x} from {}): {why}; \
                 tried again in {} s",
                r.shard,
                w.table,
                w.partition,
                w.build_id,
                w.source,
                RETRY_AFTER.as_secs()
            );
            r.slice_failures.borrow_mut().insert(key, Instant::now());
        } else {
            r.slice_failures.borrow_mut().remove(&key);
        }
    }
    let wanted: BTreeSet<(u64, u32)> = want.iter().map(|w| (w.build_id, w.partition)).collect();
    for (b, p) in held.difference(&wanted) {
        if let Err(e) = r.engine.drop_slice(*b, *p).await {
            eprintln!(
                "keel-node: shard {}: dropping table slice {b:016x}/{p}: {e}",
                r.shard
            );
        }
    }
}

async fn adopt(r: &Rc<Replicas>, w: &Wanted) -> Result<(), String> {
    let dir = Path::new(&w.source);
    let m = bulk::read_manifest(dir)?;
    if m.build_id != w.build_id || m.table != w.table {
        return Err(format!(
            "{} holds build {:016x} of table {}, not this one",
            dir.display(),
            m.build_id,
            m.table
        ));
    }
    r.engine.adopt_slice(dir, &m, w.partition).await
}
