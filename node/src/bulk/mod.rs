//! keel-bulk's build: a feature table's version made offline, without any node, as one pair of
//! files per partition in the engine's own formats (docs/design.md, "Bulk-built tables").
//!
//! `<out>/part-NNNNN.seg` is the partition's value log: `segment_bytes` segments, each opening
//! with a [`TableSegHeader`] block, then the engine's records ([`format::encode`]), one per key;
//! a deletion (an incremental version's tombstone) is a `Delete` record. The last segment ends
//! at the block after its last record. `<out>/part-NNNNN.idx` is the partition's index in the
//! index-checkpoint part format ([`index_checkpoint`]): parts of at most `segment_bytes`, each a
//! header block and entries, packed one after another, the entries sorted by (xxh3 of the key,
//! key) and their offsets into the `.seg` file. A tombstone's entry carries [`TOMBSTONE`].
//! `<out>/manifest.json` ([`Manifest`]) names the table, the geometry, every file with its size
//! and crc32c, and the counts.
//!
//! Keys are the table's own (a client reads `<table>:<key>`); a key's partition is
//! [`shard::partition_of`] of that key. The build streams: each input is cut into work units
//! (16 MiB slices of a TSV file at line starts, a Parquet file's row groups) that `threads`
//! workers parse, appending each record to its partition's `.seg` as it comes and its entry to
//! a spill file; then each partition's entries alone are sorted into its `.idx`. Memory is one
//! partition's entries per worker, not the input.
//!
//! A build writes into `<out>.partial`, which is never valid (no manifest by the final name), and
//! renames it to `<out>` only once every file and the manifest are on disk (fsynced): a failed or
//! killed build leaves no directory that reads as a table version. [`verify`] checks a built
//! directory the way a node checks one before it adopts it.

mod input;
pub mod load;
mod writer;

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::engine::format::{self, u32_at, u64_at, Kind, SEG_HEADER_BYTES};
use crate::engine::index_checkpoint::{decode_entry, decode_part_header};
use crate::shard;

pub use input::{Format, Loc};
pub use keel_meta::tables::check_table_name;

/// `TBL_MAGIC` opens every segment of a built table's value log.
pub const TBL_MAGIC: u64 = u64::from_le_bytes(*b"KEELTBL1");
pub const TBL_VERSION: u32 = 1;
/// The manifest's own format version.
pub const MANIFEST_FORMAT: u32 = 1;
pub const MANIFEST_NAME: &str = "manifest.json";
/// The bit of a table entry that marks a deletion (an incremental version's tombstone).
pub const TOMBSTONE: u8 = 8;
/// A table's keys share memcached's 250 bytes with `<table>:`.
const KEY_LEN_MAX: usize = 250;

/// Block 0 of each segment of a built table's value log (little-endian; the rest of the block
/// is zero):
/// ```text
///  0  u64 magic       TBL_MAGIC
///  8  u32 seg_no      the segment's place in its partition's file
/// 12  u32 version     1
/// 16  u32 partition
/// 20  u32 partitions
/// 24  u64 build_id    the build's id (the manifest's), shared by all its files
/// 32  u32 crc32c      over bytes [0, 32)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSegHeader {
    pub seg_no: u32,
    pub partition: u32,
    pub partitions: u32,
    pub build_id: u64,
}

impl TableSegHeader {
    pub const BYTES: usize = 36;

    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut b = [0u8; Self::BYTES];
        b[0..8].copy_from_slice(&TBL_MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&self.seg_no.to_le_bytes());
        b[12..16].copy_from_slice(&TBL_VERSION.to_le_bytes());
        b[16..20].copy_from_slice(&self.partition.to_le_bytes());
        b[20..24].copy_from_slice(&self.partitions.to_le_bytes());
        b[24..32].copy_from_slice(&self.build_id.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..32]);
        b[32..36].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// `None` for anything but an undamaged header.
    pub fn decode(b: &[u8]) -> Option<TableSegHeader> {
        if b.len() < Self::BYTES || u64_at(b, 0) != TBL_MAGIC || u32_at(b, 12) != TBL_VERSION {
            return None;
        }
        if crc32c::crc32c(&b[0..32]) != u32_at(b, 32) {
            return None;
        }
        Some(TableSegHeader {
            seg_no: u32_at(b, 8),
            partition: u32_at(b, 16),
            partitions: u32_at(b, 20),
            build_id: u64_at(b, 24),
        })
    }
}

/// `<out>/manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub table: String,
    /// Random, shared by every file of the build (their segment and part headers carry it).
    pub build_id: u64,
    pub partitions: u32,
    pub segment_bytes: u64,
    pub value_len_max: u64,
    pub created_unix: u64,
    pub inputs: Vec<InputSummary>,
    /// Keys written (puts + tombstones).
    pub records: u64,
    pub tombstones: u64,
    pub value_bytes: u64,
    /// One per partition, in partition order.
    pub files: Vec<PartitionFiles>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSummary {
    pub path: String,
    pub format: Format,
    pub records: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionFiles {
    pub partition: u32,
    pub records: u64,
    pub seg: String,
    pub seg_bytes: u64,
    pub seg_crc32c: u32,
    pub idx: String,
    pub idx_bytes: u64,
    pub idx_crc32c: u32,
}

pub fn seg_name(partition: u32) -> String {
    format!("part-{partition:05}.seg")
}

pub fn idx_name(partition: u32) -> String {
    format!("part-{partition:05}.idx")
}

/// What `keel-bulk build` was asked for.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub table: String,
    pub inputs: Vec<PathBuf>,
    pub format: Format,
    pub out: PathBuf,
    pub partitions: u32,
    pub segment_bytes: u64,
    pub value_len_max: u64,
    pub threads: usize,
    /// Parquet: the columns holding keys and values.
    pub key_column: String,
    pub value_column: String,
}

/// The longest key a table named `table` can hold: `<table>:<key>` is a memcached key.
pub fn key_len_max(table: &str) -> usize {
    KEY_LEN_MAX - table.len() - 1
}

/// Whether `key` can be a table's key: a memcached key's bytes (no space or control byte), at
/// most `len_max` of them. `Err` says why not.
pub fn check_key(key: &[u8], len_max: usize) -> Result<(), String> {
    if key.is_empty() {
        return Err("empty key".into());
    }
    if key.len() > len_max {
        return Err(format!(
            "key of {} bytes (this table's keys take at most {len_max})",
            key.len()
        ));
    }
    if let Some(b) = key.iter().find(|&&b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "key {:?} holds byte 0x{b:02x} (no space or control byte may be in a key)",
            String::from_utf8_lossy(key)
        ));
    }
    Ok(())
}

impl BuildOptions {
    fn check(&self) -> Result<(), String> {
        check_table_name(&self.table)?;
        if !self.partitions.is_power_of_two() || self.partitions > 65536 {
            return Err(format!(
                "--partitions {}: must be a power of two from 1 to 65536",
                self.partitions
            ));
        }
        let seg_min = 1 << 20;
        if self.segment_bytes < seg_min || self.segment_bytes % keel_nvme::BLOCK_BYTES != 0 {
            return Err(format!(
                "--segment-bytes {}: must be a multiple of 4096 and at least 1 MiB",
                self.segment_bytes
            ));
        }
        let record_max = format::record_bytes(KEY_LEN_MAX, self.value_len_max as usize) as u64;
        if record_max > self.segment_bytes - SEG_HEADER_BYTES {
            return Err(format!(
                "--value-max {}: a record that large does not fit a segment of {} bytes",
                self.value_len_max, self.segment_bytes
            ));
        }
        if self.threads == 0 {
            return Err("--threads 0: must be at least 1".into());
        }
        if self.inputs.is_empty() {
            return Err("no --input given".into());
        }
        Ok(())
    }
}

/// What a finished build reports.
#[derive(Debug)]
pub struct BuildReport {
    pub manifest: Manifest,
    pub secs: f64,
    pub input_bytes: u64,
}

/// Runs a build. `Err` says what stopped it (for bad input: the file, the line or row, and the
/// reason); `<out>` is then untouched and `<out>.partial` removed.
pub fn build(opts: &BuildOptions) -> Result<BuildReport, String> {
    let started = Instant::now();
    opts.check()?;
    let inputs = input::expand(&opts.inputs)?;
    if opts.out.exists() {
        return Err(format!(
            "{}: already exists (a build never overwrites: remove it or name a new directory)",
            opts.out.display()
        ));
    }
    let staging = partial_path(&opts.out);
    if staging.exists() {
        // A build killed earlier left it; it never reads as a version.
        fs::remove_dir_all(&staging)
            .map_err(|e| format!("{}: cannot remove: {e}", staging.display()))?;
    }
    fs::create_dir_all(&staging)
        .map_err(|e| format!("{}: cannot create: {e}", staging.display()))?;
    let result = build_into(opts, &inputs, &staging);
    match result {
        Ok((manifest, input_bytes)) => {
            fs::rename(&staging, &opts.out).map_err(|e| {
                format!(
                    "cannot rename {} to {}: {e}",
                    staging.display(),
                    opts.out.display()
                )
            })?;
            sync_parent(&opts.out)?;
            Ok(BuildReport {
                manifest,
                secs: started.elapsed().as_secs_f64(),
                input_bytes,
            })
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

fn partial_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

fn sync_parent(p: &Path) -> Result<(), String> {
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    File::open(&parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("{}: fsync: {e}", parent.display()))
}

fn build_into(
    opts: &BuildOptions,
    inputs: &[PathBuf],
    staging: &Path,
) -> Result<(Manifest, u64), String> {
    let build_id = random_u64();
    let now = unix_now();
    let units = input::plan(inputs, opts.format, &opts.key_column, &opts.value_column)?;
    let input_bytes = inputs
        .iter()
        .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let writers = writer::Partitions::create(staging, opts, build_id, now as u32)?;
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let next_unit = AtomicUsize::new(0);
    let per_input: Vec<AtomicUsize> = inputs.iter().map(|_| AtomicUsize::new(0)).collect();
    let key_max = key_len_max(&opts.table);
    std::thread::scope(|s| {
        for _ in 0..opts.threads.min(units.len().max(1)) {
            s.spawn(|| {
                let mut staged = writer::Staged::new(opts.partitions);
                while !failed.load(Ordering::Relaxed) {
                    let i = next_unit.fetch_add(1, Ordering::Relaxed);
                    let Some(unit) = units.get(i) else { break };
                    let mut n = 0usize;
                    let r = input::read_unit(unit, &failed, &mut |key, value, loc| {
                        check_key(key, key_max).map_err(|e| loc.error(inputs, &e))?;
                        if let Some(v) = value {
                            if v.len() as u64 > opts.value_len_max {
                                return Err(loc.error(
                                    inputs,
                                    &format!(
                                        "value of {} bytes (--value-max is {})",
                                        v.len(),
                                        opts.value_len_max
                                    ),
                                ));
                            }
                        }
                        n += 1;
                        let p = shard::partition_of(key, opts.partitions as u64 - 1) as usize;
                        if staged.push(p, key, value, loc) {
                            writers.flush(p, &mut staged)?;
                        }
                        Ok(())
                    })
                    .and_then(|()| writers.flush_all(&mut staged));
                    per_input[unit.input].fetch_add(n, Ordering::Relaxed);
                    if let Err(e) = r {
                        if !failed.swap(true, Ordering::Relaxed) {
                            *first_error.lock().expect("error lock") = Some(e);
                        }
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("error lock") {
        return Err(e);
    }
    let files = writers.finish(opts.threads, inputs)?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        table: opts.table.clone(),
        build_id,
        partitions: opts.partitions,
        segment_bytes: opts.segment_bytes,
        value_len_max: opts.value_len_max,
        created_unix: now,
        inputs: inputs
            .iter()
            .zip(&per_input)
            .map(|(p, n)| InputSummary {
                path: p.display().to_string(),
                format: opts.format,
                records: n.load(Ordering::Relaxed) as u64,
            })
            .collect(),
        records: files.iter().map(|f| f.0.records).sum(),
        tombstones: files.iter().map(|f| f.1).sum(),
        value_bytes: files.iter().map(|f| f.2).sum(),
        files: files.into_iter().map(|f| f.0).collect(),
    };
    let path = staging.join(MANIFEST_NAME);
    let text = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    fs::write(&path, text)
        .and_then(|()| File::open(&path)?.sync_all())
        .and_then(|()| File::open(staging)?.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((manifest, input_bytes))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("the system's random source");
    u64::from_le_bytes(b) | 1
}

/// Reads `<dir>/manifest.json`. `Err` for a missing, unreadable or malformed one.
pub fn read_manifest(dir: &Path) -> Result<Manifest, String> {
    let path = dir.join(MANIFEST_NAME);
    let text = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let m: Manifest = serde_json::from_slice(&text)
        .map_err(|e| format!("{}: not a keel-bulk manifest: {e}", path.display()))?;
    if m.format != MANIFEST_FORMAT {
        return Err(format!(
            "{}: manifest format {} (this keel-bulk reads {MANIFEST_FORMAT})",
            path.display(),
            m.format
        ));
    }
    check_table_name(&m.table).map_err(|e| format!("{}: {e}", path.display()))?;
    if m.files.len() != m.partitions as usize
        || m.files
            .iter()
            .enumerate()
            .any(|(i, f)| f.partition as usize != i)
    {
        return Err(format!(
            "{}: the files do not list partitions 0..{} in order",
            path.display(),
            m.partitions
        ));
    }
    Ok(m)
}

/// What [`verify`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    pub tombstones: u64,
    pub value_bytes: u64,
}

/// Checks a built directory the way a node does before adopting it: every file's size and
/// crc32c against the manifest, every segment header, every index part, and every entry
/// against the record it points at (key, kind, length). `Err` names the file and the damage.
pub fn verify(dir: &Path) -> Result<Verified, String> {
    let m = read_manifest(dir)?;
    let mut total = Verified {
        records: 0,
        tombstones: 0,
        value_bytes: 0,
    };
    for f in &m.files {
        let v = verify_partition(dir, &m, f)?;
        total.records += v.records;
        total.tombstones += v.tombstones;
        total.value_bytes += v.value_bytes;
    }
    if total.records != m.records || total.tombstones != m.tombstones {
        return Err(format!(
            "{}: counts {} records, {} tombstones; the manifest says {} and {}",
            dir.display(),
            total.records,
            total.tombstones,
            m.records,
            m.tombstones
        ));
    }
    Ok(total)
}

/// The crc32c and length of a whole file.
pub fn file_crc(path: &Path) -> Result<(u64, u32), String> {
    let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut buf = vec![0u8; 1 << 20];
    let (mut len, mut crc) = (0u64, 0u32);
    loop {
        let n = r
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            return Ok((len, crc));
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        len += n as u64;
    }
}

fn verify_partition(dir: &Path, m: &Manifest, f: &PartitionFiles) -> Result<Verified, String> {
    let seg_path = dir.join(&f.seg);
    let idx_path = dir.join(&f.idx);
    for (path, bytes, crc) in [
        (&seg_path, f.seg_bytes, f.seg_crc32c),
        (&idx_path, f.idx_bytes, f.idx_crc32c),
    ] {
        let (len, got) = file_crc(path)?;
        if len != bytes {
            return Err(format!(
                "{}: {len} bytes, the manifest says {bytes}",
                path.display()
            ));
        }
        if got != crc {
            return Err(format!(
                "{}: checksum mismatch (crc32c {got:08x}, the manifest says {crc:08x})",
                path.display()
            ));
        }
    }
    let seg = File::open(&seg_path).map_err(|e| format!("{}: {e}", seg_path.display()))?;
    let segs = f.seg_bytes.div_ceil(m.segment_bytes);
    for s in 0..segs {
        let mut head = [0u8; TableSegHeader::BYTES];
        seg.read_exact_at(&mut head, s * m.segment_bytes)
            .map_err(|e| format!("{}: segment {s}: {e}", seg_path.display()))?;
        let want = TableSegHeader {
            seg_no: s as u32,
            partition: f.partition,
            partitions: m.partitions,
            build_id: m.build_id,
        };
        if TableSegHeader::decode(&head) != Some(want) {
            return Err(format!(
                "{}: segment {s}: not this build's segment header",
                seg_path.display()
            ));
        }
    }
    let idx = fs::read(&idx_path).map_err(|e| format!("{}: {e}", idx_path.display()))?;
    let mut v = Verified {
        records: 0,
        tombstones: 0,
        value_bytes: 0,
    };
    let mut at = 0usize;
    let mut part = 0u32;
    let mut prev: Option<(u64, Vec<u8>)> = None;
    let mut rec = Vec::new();
    loop {
        let bad = |what: String| format!("{}: part {part}: {what}", idx_path.display());
        let h = idx
            .get(at..)
            .and_then(decode_part_header)
            .ok_or_else(|| bad("no valid part header".into()))?;
        if h.generation != m.build_id || h.part != part || h.seg_no != part {
            return Err(bad("not this build's part".into()));
        }
        let start = at + SEG_HEADER_BYTES as usize;
        let data = idx
            .get(start..start + h.data_bytes as usize)
            .ok_or_else(|| bad("its data runs past the file".into()))?;
        if crc32c::crc32c(data) != h.data_crc {
            return Err(bad("checksum mismatch".into()));
        }
        let mut e_at = 0usize;
        for n in 0..h.entries as u64 {
            let (key, e, next) = decode_entry(data, e_at, n, f.seg_bytes).map_err(&bad)?;
            e_at = next;
            let hk = (crate::engine::index::hash(key), key.to_vec());
            if prev.as_ref().is_some_and(|p| *p >= hk) {
                return Err(bad(format!("entry {n} is out of order or repeats a key")));
            }
            let len = format::record_bytes(key.len(), e.value_len as usize);
            rec.resize(len, 0);
            seg.read_exact_at(&mut rec, e.offset)
                .map_err(|err| format!("{}: {err}", seg_path.display()))?;
            let r = format::decode(&rec, m.value_len_max as usize).map_err(|err| {
                format!(
                    "{}: the record of key {:?} at {}: {err:?}",
                    seg_path.display(),
                    String::from_utf8_lossy(key),
                    e.offset
                )
            })?;
            let tomb = e.bits & TOMBSTONE != 0;
            let kind = if tomb { Kind::Delete } else { Kind::Put };
            if r.key != key || r.header.kind != kind || r.header.value_len != e.value_len {
                return Err(format!(
                    "{}: the record at {} is not the index's entry for {:?}",
                    seg_path.display(),
                    e.offset,
                    String::from_utf8_lossy(key)
                ));
            }
            v.records += 1;
            v.tombstones += tomb as u64;
            v.value_bytes += e.value_len as u64;
            prev = Some(hk);
        }
        if e_at != data.len() {
            return Err(bad("bytes after the last entry".into()));
        }
        at = start + (h.data_bytes as u64).next_multiple_of(keel_nvme::BLOCK_BYTES) as usize;
        if h.parts > 0 {
            if h.parts != part + 1 || at != idx.len() {
                return Err(bad("the last part is not the file's end".into()));
            }
            break;
        }
        part += 1;
    }
    if v.records != f.records {
        return Err(format!(
            "{}: {} entries, the manifest says {}",
            idx_path.display(),
            v.records,
            f.records
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests;
