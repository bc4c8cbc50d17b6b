//! Feature tables (issue 11): named keyspaces that clients read as `<table>:<key>`, declared in
//! the meta service and shown to every node in the routing table.
//!
//! A table's partition `p` (of its own key, `xxh3_64(key) & (partitions - 1)`) rides the
//! keyspace's Raft group `p & (keyspace partitions - 1)`: its replicas are that group's, so a
//! table's replication factor is the keyspace's. A `bulk` table is written only by
//! `keel-bulk load`; a client's write to one is refused naming the table. An `online` table's
//! keys are written and read like any other key.

use serde::{Deserialize, Serialize};

/// Longest table name.
pub const TABLE_NAME_MAX: usize = 64;
/// Tables the meta service holds at most.
pub const TABLES_MAX: usize = 1024;
/// Versions a table may keep on its nodes at most.
pub const VERSIONS_KEPT_MAX: u32 = 16;
/// Partitions a table may have at most.
pub const TABLE_PARTITIONS_MAX: u32 = 1 << 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableMode {
    /// Read-only between loads: versions come from `keel-bulk load`.
    Bulk,
    /// Written by clients, key by key.
    Online,
}

impl TableMode {
    pub fn name(self) -> &'static str {
        match self {
            TableMode::Bulk => "bulk",
            TableMode::Online => "online",
        }
    }
}

impl std::str::FromStr for TableMode {
    type Err = String;
    fn from_str(s: &str) -> Result<TableMode, String> {
        match s {
            "bulk" => Ok(TableMode::Bulk),
            "online" => Ok(TableMode::Online),
            _ => Err(format!("mode {s:?}: must be bulk or online")),
        }
    }
}

/// One declared table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDef {
    pub name: String,
    pub partitions: u32,
    pub replication_factor: u32,
    /// Versions kept on the nodes (the current one and those a rollback can return to).
    pub versions_kept: u32,
    pub mode: TableMode,
}

/// A table name: 1 to [`TABLE_NAME_MAX`] bytes of letters, digits, `_`, `-` and `.` (never the
/// `:` that ends it in a key).
pub fn check_table_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= TABLE_NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "table name {name:?}: must be 1 to {TABLE_NAME_MAX} letters, digits, '_', '-' or '.'"
        ))
    }
}

impl TableDef {
    /// Whether the table can be declared in a keyspace of `keyspace_rf` replicas. `Err` names
    /// the field and the rule.
    pub fn check(&self, keyspace_rf: u32) -> Result<(), String> {
        check_table_name(&self.name)?;
        let t = &self.name;
        if !self.partitions.is_power_of_two() || self.partitions > TABLE_PARTITIONS_MAX {
            return Err(format!(
                "table {t}: partitions {}: must be a power of two from 1 to \
                 {TABLE_PARTITIONS_MAX}",
                self.partitions
            ));
        }
        if self.replication_factor != keyspace_rf {
            return Err(format!(
                "table {t}: replication factor {}: a table's partitions ride the keyspace's Raft \
                 groups, so it has the keyspace's replication factor, {keyspace_rf}",
                self.replication_factor
            ));
        }
        if self.versions_kept == 0 || self.versions_kept > VERSIONS_KEPT_MAX {
            return Err(format!(
                "table {t}: versions kept {}: must be 1 to {VERSIONS_KEPT_MAX}",
                self.versions_kept
            ));
        }
        Ok(())
    }
}

/// A version of a bulk table: a build (`build_id`, at `source`, a directory every node reads)
/// being loaded, or loaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: u32,
    pub build_id: u64,
    pub source: String,
    pub records: u64,
    /// Every replica of every partition holds it (it can be current).
    pub ready: bool,
}

/// A declared table and its versions, as the state and every routing table hold it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    pub def: TableDef,
    /// The version reads see (`None` before the first load completes).
    pub current: Option<u32>,
    /// The versions the nodes keep, oldest first: the ready ones within `versions_kept` and
    /// the one loading, if any.
    pub versions: Vec<VersionInfo>,
    /// Set by a rollback: loads are refused until an unrollback.
    pub rolled_back: bool,
}

impl TableInfo {
    pub fn new(def: TableDef) -> TableInfo {
        TableInfo {
            def,
            current: None,
            versions: Vec::new(),
            rolled_back: false,
        }
    }

    pub fn version(&self, v: u32) -> Option<&VersionInfo> {
        self.versions.iter().find(|x| x.version == v)
    }

    /// The build reads of this table see, if any.
    pub fn current_build(&self) -> Option<u64> {
        self.current
            .and_then(|v| self.version(v))
            .map(|x| x.build_id)
    }

    pub fn loading(&self) -> Option<&VersionInfo> {
        self.versions.iter().find(|x| !x.ready)
    }

    /// The table partition of a table key, and the keyspace partition (Raft group) it rides.
    pub fn partition_of(&self, key: &[u8], keyspace_partitions: u32) -> (u32, u32) {
        let p = (xxhash_rust::xxh3::xxh3_64(key) & (self.def.partitions as u64 - 1)) as u32;
        (p, p & (keyspace_partitions - 1))
    }
}

/// The table part of a client key: `Some((table, key))` for `<table>:<key>` with a non-empty
/// key, else `None` (whether `table` is declared is the caller's question).
pub fn split_key(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = key.iter().position(|&b| b == b':')?;
    let (t, rest) = (&key[..colon], &key[colon + 1..]);
    (!t.is_empty() && !rest.is_empty()).then_some((t, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str) -> TableDef {
        TableDef {
            name: name.into(),
            partitions: 16,
            replication_factor: 3,
            versions_kept: 2,
            mode: TableMode::Bulk,
        }
    }

    #[test]
    fn a_table_is_checked_field_by_field() {
        assert_eq!(def("feat_v1-a.b").check(3), Ok(()));
        for (bad, why) in [
            (
                TableDef {
                    partitions: 12,
                    ..def("t")
                },
                "partitions 12",
            ),
            (
                TableDef {
                    partitions: 0,
                    ..def("t")
                },
                "partitions 0",
            ),
            (
                TableDef {
                    replication_factor: 1,
                    ..def("t")
                },
                "keyspace's replication factor, 3",
            ),
            (
                TableDef {
                    versions_kept: 0,
                    ..def("t")
                },
                "versions kept 0",
            ),
            (
                TableDef {
                    versions_kept: 17,
                    ..def("t")
                },
                "versions kept 17",
            ),
            (def("a:b"), "table name"),
            (def(""), "table name"),
            (def(&"x".repeat(65)), "table name"),
        ] {
            let e = bad.check(3).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn keys_split_at_the_first_colon() {
        assert_eq!(split_key(b"feat:u1"), Some((&b"feat"[..], &b"u1"[..])));
        assert_eq!(split_key(b"feat:u:1"), Some((&b"feat"[..], &b"u:1"[..])));
        assert_eq!(split_key(b"plain"), None);
        assert_eq!(split_key(b":x"), None);
        assert_eq!(split_key(b"feat:"), None);
        assert_eq!("bulk".parse::<TableMode>(), Ok(TableMode::Bulk));
        assert!("csv"
            .parse::<TableMode>()
            .unwrap_err()
            .contains("bulk or online"));
    }
}
