//! keel-bulk's inputs: TSV and Parquet files, cut into work units that workers read in parallel.
//!
//! TSV: one record per line, `key<TAB>value<LF>`. In keys and values `\\` is a backslash, `\t`
//! a TAB, `\n` a LF, `\r` a CR and `\xHH` any byte; no other backslash sequence is read. A value
//! that is exactly `\N` (Hive's NULL) is a deletion. A raw CR, a second TAB or an empty line is
//! an error (nothing is guessed); the last line may lack its LF.
//!
//! Parquet: the key and value columns (by name; `key` and `value` unless told) of string or
//! binary type (plain, large or view). A null value is a deletion; a null key is an error.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use arrow_array::cast::AsArray;
use arrow_array::Array;
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use serde::{Deserialize, Serialize};

/// TSV work units: slices of about this many bytes, cut at line starts.
const TSV_UNIT_BYTES: u64 = 16 << 20;
/// Rows per Arrow batch read from a row group.
const PARQUET_BATCH_ROWS: usize = 8192;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Tsv,
    Parquet,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "tsv" => Ok(Format::Tsv),
            "parquet" => Ok(Format::Parquet),
            _ => Err(format!("--format {s:?}: must be tsv or parquet")),
        }
    }
}

/// Where a record came from: input `input`, at byte `at` of a TSV file (its line's start) or
/// row `at` of a Parquet file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub input: u32,
    pub at: u64,
    pub format: Format,
}

impl Loc {
    /// `path:LINE` (TSV) or `path: row N` (Parquet).
    pub fn describe(&self, inputs: &[PathBuf]) -> String {
        self.describe_in(&inputs[self.input as usize])
    }

    /// [`Loc::describe`] with the input's path at hand.
    pub fn describe_in(&self, path: &Path) -> String {
        match self.format {
            Format::Tsv => match line_number(path, self.at) {
                Ok(line) => format!("{}:{line}", path.display()),
                Err(_) => format!("{} (byte {})", path.display(), self.at),
            },
            Format::Parquet => format!("{}: row {}", path.display(), self.at),
        }
    }

    pub fn error(&self, inputs: &[PathBuf], what: &str) -> String {
        format!("{}: {what}", self.describe(inputs))
    }
}

/// The 1-based line that starts at byte `at` (counted only for an error's message).
fn line_number(path: &Path, at: u64) -> std::io::Result<u64> {
    let mut r = BufReader::new(File::open(path)?).take(at);
    let mut buf = vec![0u8; 1 << 20];
    let mut lines = 1u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(lines);
        }
        lines += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
    }
}

/// The input files: each path as given, or for a directory the files in it (sorted) other than
/// those whose names start with `.` or `_` (a pipeline's `_SUCCESS` and `.crc` files).
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        let meta = fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if !meta.is_dir() {
            out.push(p.clone());
            continue;
        }
        let mut files = Vec::new();
        for entry in fs::read_dir(p).map_err(|e| format!("{}: {e}", p.display()))? {
            let entry = entry.map_err(|e| format!("{}: {e}", p.display()))?;
            let name = entry.file_name();
            let hidden = name.to_string_lossy().starts_with(['.', '_']);
            if !hidden && entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                files.push(entry.path());
            }
        }
        if files.is_empty() {
            return Err(format!("{}: a directory with no input files", p.display()));
        }
        files.sort();
        out.extend(files);
    }
    if out.len() > u32::MAX as usize {
        return Err("too many input files".into());
    }
    Ok(out)
}

/// One piece of one input, read by one worker.
#[derive(Clone, Debug)]
pub struct Unit {
    pub input: usize,
    path: PathBuf,
    kind: UnitKind,
}

#[derive(Clone, Debug)]
enum UnitKind {
    /// The lines that start in [start, end).
    Tsv { start: u64, end: u64 },
    Parquet {
        row_group: usize,
        first_row: u64,
        key: usize,
        value: usize,
    },
}

/// Cuts the inputs into units. Parquet files are opened here, so a file that is not Parquet
/// (a truncated one) or lacks the columns fails the build before anything is written.
pub fn plan(
    inputs: &[PathBuf],
    format: Format,
    key_column: &str,
    value_column: &str,
) -> Result<Vec<Unit>, String> {
    let mut units = Vec::new();
    for (input, path) in inputs.iter().enumerate() {
        match format {
            Format::Tsv => {
                let len = fs::metadata(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?
                    .len();
                let mut start = 0;
                while start < len {
                    let end = (start + TSV_UNIT_BYTES).min(len);
                    units.push(Unit {
                        input,
                        path: path.clone(),
                        kind: UnitKind::Tsv { start, end },
                    });
                    start = end;
                }
            }
            Format::Parquet => {
                let (key, value, groups) = parquet_layout(path, key_column, value_column)?;
                let mut first_row = 0u64;
                for (row_group, rows) in groups.into_iter().enumerate() {
                    units.push(Unit {
                        input,
                        path: path.clone(),
                        kind: UnitKind::Parquet {
                            row_group,
                            first_row,
                            key,
                            value,
                        },
                    });
                    first_row += rows;
                }
            }
        }
    }
    Ok(units)
}

/// The root indices of the key and value columns, and each row group's row count.
fn parquet_layout(
    path: &Path,
    key_column: &str,
    value_column: &str,
) -> Result<(usize, usize, Vec<u64>), String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let b = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| format!("{}: not a readable Parquet file: {e}", path.display()))?;
    let schema = b.schema().clone();
    let find = |name: &str| -> Result<usize, String> {
        let i = schema.index_of(name).map_err(|_| {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            format!(
                "{}: no column {name:?} (its columns: {})",
                path.display(),
                names.join(", ")
            )
        })?;
        let t = schema.field(i).data_type();
        if !matches!(
            t,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
        ) {
            return Err(format!(
                "{}: column {name:?} is {t}; keys and values are string or binary columns",
                path.display()
            ));
        }
        Ok(i)
    };
    let key = find(key_column)?;
    let value = find(value_column)?;
    if key == value {
        return Err(format!(
            "{}: the key and value columns are the same column",
            path.display()
        ));
    }
    let groups = b
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows() as u64)
        .collect();
    Ok((key, value, groups))
}

/// What a worker does with each record: `(key, value or None for a deletion, where from)`.
pub type OnRecord<'a> = dyn FnMut(&[u8], Option<&[u8]>, Loc) -> Result<(), String> + 'a;

/// Calls `f(key, value, loc)` for every record of `unit`, `None` as the value of a deletion.
/// Stops at the first error (`f`'s or the input's) or when `stop` is set by another worker.
pub fn read_unit(unit: &Unit, stop: &AtomicBool, f: &mut OnRecord<'_>) -> Result<(), String> {
    let io = |e: std::io::Error| format!("{}: {e}", unit.path.display());
    match unit.kind {
        UnitKind::Tsv { start, end } => {
            let file = File::open(&unit.path).map_err(io)?;
            let mut r = BufReader::with_capacity(1 << 20, file);
            let mut pos = start;
            let mut line = Vec::new();
            if start > 0 {
                // The unit's first line is the first that starts at or after `start`.
                r.seek(SeekFrom::Start(start - 1)).map_err(io)?;
                pos = start - 1;
                pos += r.read_until(b'\n', &mut line).map_err(io)? as u64;
            }
            let (mut key, mut value) = (Vec::new(), Vec::new());
            let mut n = 0u64;
            while pos < end {
                line.clear();
                let got = r.read_until(b'\n', &mut line).map_err(io)?;
                if got == 0 {
                    break;
                }
                let loc = Loc {
                    input: unit.input as u32,
                    at: pos,
                    format: Format::Tsv,
                };
                pos += got as u64;
                let text = line.strip_suffix(b"\n").unwrap_or(&line);
                let deleted = parse_tsv_line(text, &mut key, &mut value)
                    .map_err(|e| format!("{}: {e}", loc.describe_in(&unit.path)))?;
                f(&key, (!deleted).then_some(&value[..]), loc)?;
                n += 1;
                if n % 4096 == 0 && stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
            }
            Ok(())
        }
        UnitKind::Parquet {
            row_group,
            first_row,
            key,
            value,
        } => {
            let file = File::open(&unit.path).map_err(io)?;
            let bad = |e: parquet::errors::ParquetError| {
                format!("{}: row group {row_group}: {e}", unit.path.display())
            };
            let b = ParquetRecordBatchReaderBuilder::try_new(file).map_err(bad)?;
            let mask = ProjectionMask::roots(b.parquet_schema(), [key, value]);
            let reader = b
                .with_row_groups(vec![row_group])
                .with_projection(mask)
                .with_batch_size(PARQUET_BATCH_ROWS)
                .build()
                .map_err(bad)?;
            // The projection keeps the file's column order.
            let (ki, vi) = if key < value { (0, 1) } else { (1, 0) };
            let mut row = first_row;
            for batch in reader {
                let batch = batch
                    .map_err(|e| format!("{}: row group {row_group}: {e}", unit.path.display()))?;
                let keys = batch.column(ki);
                let values = batch.column(vi);
                for i in 0..batch.num_rows() {
                    let loc = Loc {
                        input: unit.input as u32,
                        at: row,
                        format: Format::Parquet,
                    };
                    row += 1;
                    let Some(k) = bytes_at(keys.as_ref(), i) else {
                        return Err(format!(
                            "{}: row {}: the key is null",
                            unit.path.display(),
                            loc.at
                        ));
                    };
                    f(k, bytes_at(values.as_ref(), i), loc)?;
                }
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
            }
            Ok(())
        }
    }
}

/// Row `i` of a string or binary column; `None` when null.
fn bytes_at(a: &dyn Array, i: usize) -> Option<&[u8]> {
    if a.is_null(i) {
        return None;
    }
    Some(match a.data_type() {
        DataType::Utf8 => a.as_string::<i32>().value(i).as_bytes(),
        DataType::LargeUtf8 => a.as_string::<i64>().value(i).as_bytes(),
        DataType::Utf8View => a.as_string_view().value(i).as_bytes(),
        DataType::Binary => a.as_binary::<i32>().value(i),
        DataType::LargeBinary => a.as_binary::<i64>().value(i),
        DataType::BinaryView => a.as_binary_view().value(i),
        t => unreachable!("plan admitted only string and binary columns, not {t}"),
    })
}

/// Parses one TSV line (without its LF) into `key` and `value`; `Ok(true)` for a deletion.
pub fn parse_tsv_line(line: &[u8], key: &mut Vec<u8>, value: &mut Vec<u8>) -> Result<bool, String> {
    if line.is_empty() {
        return Err("empty line".into());
    }
    if line.contains(&b'\r') {
        return Err(
            "a raw CR (a CR in a key or value is written \\r; CRLF line ends are not read)".into(),
        );
    }
    let Some(tab) = memchr::memchr(b'\t', line) else {
        return Err("no TAB between the key and the value".into());
    };
    let (k, v) = (&line[..tab], &line[tab + 1..]);
    if memchr::memchr(b'\t', v).is_some() {
        return Err("a second TAB (a TAB in a key or value is written \\t)".into());
    }
    unescape(k, key).map_err(|e| format!("the key: {e}"))?;
    if v == b"\\N" {
        value.clear();
        return Ok(true);
    }
    unescape(v, value).map_err(|e| format!("the value: {e}"))?;
    Ok(false)
}

/// TSV's escapes, undone into `out`.
pub fn unescape(s: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    out.clear();
    let mut i = 0;
    while i < s.len() {
        let Some(off) = memchr::memchr(b'\\', &s[i..]) else {
            out.extend_from_slice(&s[i..]);
            break;
        };
        out.extend_from_slice(&s[i..i + off]);
        i += off;
        let c = s.get(i + 1).copied();
        let (byte, len) = match c {
            Some(b'\\') => (b'\\', 2),
            Some(b't') => (b'\t', 2),
            Some(b'n') => (b'\n', 2),
            Some(b'r') => (b'\r', 2),
            Some(b'x') => {
                let hex = s
                    .get(i + 2..i + 4)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => (b, 4),
                    None => return Err(format!("byte {i}: \\x takes two hex digits")),
                }
            }
            Some(b'N') => {
                return Err(format!(
                    "byte {i}: \\N stands alone as a value (a deletion), not inside one"
                ))
            }
            Some(other) => {
                return Err(format!(
                    "byte {i}: unknown escape \\{} (\\\\, \\t, \\n, \\r and \\xHH are read)",
                    other as char
                ))
            }
            None => return Err(format!("byte {i}: a lone backslash at the end")),
        };
        out.push(byte);
        i += len;
    }
    Ok(())
}

/// TSV's escapes, applied (the inverse of [`unescape`]; the tests write TSV with it).
#[cfg(test)]
pub fn escape(s: &[u8], out: &mut Vec<u8>) {
    for &b in s {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}
