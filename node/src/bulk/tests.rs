use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, BinaryArray, RecordBatch, StringArray};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

use super::input::{escape, parse_tsv_line, unescape};
use super::*;
use crate::engine::index_checkpoint::decode_part_header;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("keel-bulk-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn opts(table: &str, inputs: Vec<PathBuf>, format: Format, out: &Path) -> BuildOptions {
    BuildOptions {
        table: table.into(),
        inputs,
        format,
        out: out.to_path_buf(),
        partitions: 4,
        segment_bytes: 1 << 20,
        value_len_max: 64 << 10,
        threads: 2,
        key_column: "key".into(),
        value_column: "value".into(),
    }
}

/// Every key of a built directory and its value (`None`: a deletion), read from the files the
/// way a node reads them: the index parts, then each entry's record.
fn read_built(dir: &Path) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
    let m = read_manifest(dir).unwrap();
    let mut out = BTreeMap::new();
    for f in &m.files {
        let seg = fs::read(dir.join(&f.seg)).unwrap();
        let idx = fs::read(dir.join(&f.idx)).unwrap();
        let mut at = 0;
        loop {
            let h = decode_part_header(&idx[at..]).unwrap();
            let start = at + 4096;
            let data = &idx[start..start + h.data_bytes as usize];
            let mut e_at = 0;
            for n in 0..h.entries as u64 {
                let (key, e, next) = decode_entry(data, e_at, n, seg.len() as u64).unwrap();
                e_at = next;
                let r = format::decode(&seg[e.offset as usize..], 1 << 20).unwrap();
                assert_eq!(r.key, key);
                assert_eq!(
                    shard::partition_of(key, m.partitions as u64 - 1),
                    f.partition as u64
                );
                let v = (e.bits & TOMBSTONE == 0).then(|| r.value.to_vec());
                assert!(out.insert(key.to_vec(), v).is_none());
            }
            at = start + (h.data_bytes as usize).next_multiple_of(4096);
            if h.parts > 0 {
                break;
            }
        }
    }
    out
}

fn write_tsv(path: &Path, rows: &[(Vec<u8>, Option<Vec<u8>>)]) {
    let mut text = Vec::new();
    for (k, v) in rows {
        escape(k, &mut text);
        text.push(b'\t');
        match v {
            Some(v) => escape(v, &mut text),
            None => text.extend_from_slice(b"\\N"),
        }
        text.push(b'\n');
    }
    fs::write(path, text).unwrap();
}

fn rows(n: usize, value_len: usize) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    (0..n)
        .map(|i| {
            let k = format!("user{i:07}").into_bytes();
            let mut v = format!("v{i}\t\n\\\r").into_bytes();
            v.resize(value_len.max(v.len()), b'a' + (i % 26) as u8);
            (k, if i % 97 == 5 { None } else { Some(v) })
        })
        .collect()
}

#[test]
fn escapes_round_trip_and_bad_escapes_are_named() {
    let all: Vec<u8> = (0..=255).collect();
    let mut esc = Vec::new();
    escape(&all, &mut esc);
    assert!(!esc.contains(&b'\t') && !esc.contains(&b'\n') && !esc.contains(&b'\r'));
    let mut back = Vec::new();
    unescape(&esc, &mut back).unwrap();
    assert_eq!(back, all);
    unescape(b"a\\x41\\x0a", &mut back).unwrap();
    assert_eq!(back, b"aA\n");
    for (bad, why) in [
        (&b"a\\q"[..], "unknown escape \\q"),
        (b"a\\", "lone backslash"),
        (b"\\x4", "two hex digits"),
        (b"\\xzz", "two hex digits"),
        (b"ab\\Ncd", "\\N stands alone"),
    ] {
        let e = unescape(bad, &mut back).unwrap_err();
        assert!(e.contains(why), "{e}");
    }
}

#[test]
fn tsv_lines_parse_and_malformed_ones_say_why() {
    let (mut k, mut v) = (Vec::new(), Vec::new());
    assert!(!parse_tsv_line(b"k1\thello\\tworld", &mut k, &mut v).unwrap());
    assert_eq!((&k[..], &v[..]), (&b"k1"[..], &b"hello\tworld"[..]));
    assert!(!parse_tsv_line(b"k2\t", &mut k, &mut v).unwrap());
    assert!(v.is_empty());
    assert!(parse_tsv_line(b"k3\t\\N", &mut k, &mut v).unwrap());
    for (bad, why) in [
        (&b""[..], "empty line"),
        (b"novalue", "no TAB"),
        (b"a\tb\tc", "a second TAB"),
        (b"a\tb\r", "raw CR"),
        (b"a\tb\\z", "the value: byte 1: unknown escape"),
    ] {
        let e = parse_tsv_line(bad, &mut k, &mut v).unwrap_err();
        assert!(e.contains(why), "{e}");
    }
}

#[test]
fn keys_and_table_names_follow_memcached_rules() {
    assert!(check_table_name("features_v1-a.b").is_ok());
    for bad in ["", "a:b", "a b", &"x".repeat(65)] {
        assert!(check_table_name(bad).is_err(), "{bad}");
    }
    let max = key_len_max("t");
    assert_eq!(max, 248);
    assert!(check_key(&vec![b'k'; max], max).is_ok());
    assert!(check_key(&vec![b'k'; max + 1], max)
        .unwrap_err()
        .contains("249 bytes"));
    assert!(check_key(b"a b", max).unwrap_err().contains("0x20"));
    assert!(check_key(b"a\x7f", max).unwrap_err().contains("0x7f"));
    assert!(check_key(b"", max).is_err());
}

#[test]
fn a_tsv_build_holds_every_key_in_the_engine_formats_across_segments() {
    let t = TempDir::new("tsv");
    let want = rows(6000, 700);
    // Two inputs, one given through its directory (with a file the build must skip).
    fs::create_dir(t.0.join("in")).unwrap();
    write_tsv(&t.0.join("in/part-0.tsv"), &want[..2500]);
    fs::write(t.0.join("in/_SUCCESS"), b"").unwrap();
    write_tsv(&t.0.join("b.tsv"), &want[2500..]);
    let out = t.0.join("v1");
    let o = opts(
        "feat",
        vec![t.0.join("in"), t.0.join("b.tsv")],
        Format::Tsv,
        &out,
    );
    let r = build(&o).unwrap();
    let m = &r.manifest;
    assert_eq!(m.records, 6000);
    assert_eq!(
        m.tombstones,
        want.iter().filter(|r| r.1.is_none()).count() as u64
    );
    assert_eq!(m.inputs.len(), 2);
    assert_eq!(m.inputs[0].records + m.inputs[1].records, 6000);
    assert_eq!(m.files.len(), 4);
    // 6000 records of ~760 bytes over 4 partitions of 1 MiB segments: more than one segment
    // each.
    assert!(m.files.iter().all(|f| f.seg_bytes > 1 << 20), "{m:?}");
    assert!(!t.0.join("v1.partial").exists());
    assert!(fs::read_dir(&out).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".spill")));
    let v = verify(&out).unwrap();
    assert_eq!(v.records, 6000);
    let got = read_built(&out);
    let want: BTreeMap<_, _> = want.into_iter().collect();
    assert_eq!(got, want);
    // The manifest reads back as written.
    assert_eq!(&read_manifest(&out).unwrap(), m);
}

#[test]
fn a_bad_line_stops_the_build_naming_file_and_line_and_leaves_nothing() {
    let t = TempDir::new("badline");
    let mut text = Vec::new();
    for i in 0..3000 {
        text.extend_from_slice(format!("k{i}\tv{i}\n").as_bytes());
    }
    text.extend_from_slice(b"broken line without a tab\n");
    text.extend_from_slice(b"k-after\tv\n");
    let input = t.0.join("in.tsv");
    fs::write(&input, &text).unwrap();
    let out = t.0.join("v1");
    let e = build(&opts("feat", vec![input.clone()], Format::Tsv, &out)).unwrap_err();
    assert_eq!(
        e,
        format!(
            "{}:3001: no TAB between the key and the value",
            input.display()
        )
    );
    assert!(!out.exists());
    assert!(!t.0.join("v1.partial").exists());
    // Keys that break memcached's rules are named with their line too.
    fs::write(&input, b"ok\t1\nbad key\t2\n").unwrap();
    let e = build(&opts("feat", vec![input.clone()], Format::Tsv, &out)).unwrap_err();
    assert!(
        e.starts_with(&format!("{}:2: key \"bad key\"", input.display())),
        "{e}"
    );
    let mut o = opts("feat", vec![input.clone()], Format::Tsv, &out);
    o.value_len_max = 3;
    fs::write(&input, b"ok\t123\nbig\t1234\n").unwrap();
    let e = build(&o).unwrap_err();
    assert!(e.contains(":2: value of 4 bytes (--value-max is 3)"), "{e}");
}

#[test]
fn a_key_given_twice_is_refused_naming_both_places() {
    let t = TempDir::new("dup");
    let a = t.0.join("a.tsv");
    let b = t.0.join("b.tsv");
    fs::write(&a, b"x\t1\ny\t2\nz\t3\n").unwrap();
    fs::write(&b, b"w\t1\ny\t9\n").unwrap();
    let out = t.0.join("v1");
    let e = build(&opts("feat", vec![a.clone(), b.clone()], Format::Tsv, &out)).unwrap_err();
    assert_eq!(
        e,
        format!(
            "key \"y\" is in the input twice: {}:2 and {}:2 (a version holds one value per key)",
            a.display(),
            b.display()
        )
    );
    assert!(!out.exists() && !t.0.join("v1.partial").exists());
}

#[test]
fn an_existing_directory_is_never_overwritten_and_options_are_checked() {
    let t = TempDir::new("exists");
    let input = t.0.join("in.tsv");
    fs::write(&input, b"a\t1\n").unwrap();
    let out = t.0.join("v1");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("keep"), b"mine").unwrap();
    let e = build(&opts("feat", vec![input.clone()], Format::Tsv, &out)).unwrap_err();
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(fs::read(out.join("keep")).unwrap(), b"mine");
    let out2 = t.0.join("v2");
    let mut o = opts("feat", vec![input.clone()], Format::Tsv, &out2);
    o.partitions = 3;
    assert!(build(&o).unwrap_err().contains("--partitions 3"));
    let mut o = opts("feat", vec![input.clone()], Format::Tsv, &out2);
    o.value_len_max = 1 << 20;
    assert!(build(&o).unwrap_err().contains("does not fit a segment"));
    let o = opts("bad:name", vec![input], Format::Tsv, &out2);
    assert!(build(&o).unwrap_err().contains("table name"));
    let o = opts("feat", vec![t.0.join("missing.tsv")], Format::Tsv, &out2);
    assert!(build(&o).unwrap_err().contains("missing.tsv"));
}

#[test]
fn verify_refuses_any_damage_naming_the_file() {
    let t = TempDir::new("damage");
    let input = t.0.join("in.tsv");
    write_tsv(&input, &rows(500, 50));
    let out = t.0.join("v1");
    let m = build(&opts("feat", vec![input], Format::Tsv, &out))
        .unwrap()
        .manifest;
    let seg = out.join(&m.files[1].seg);
    let good = fs::read(&seg).unwrap();
    let mut bad = good.clone();
    bad[5000] ^= 0x10;
    fs::write(&seg, &bad).unwrap();
    let e = verify(&out).unwrap_err();
    assert!(e.contains("part-00001.seg: checksum mismatch"), "{e}");
    fs::write(&seg, &good[..good.len() - 4096]).unwrap();
    assert!(verify(&out)
        .unwrap_err()
        .contains("bytes, the manifest says"));
    fs::write(&seg, &good).unwrap();
    verify(&out).unwrap();
    fs::write(out.join(MANIFEST_NAME), b"{\"format\": 1").unwrap();
    assert!(verify(&out)
        .unwrap_err()
        .contains("not a keel-bulk manifest"));
}

fn write_parquet(
    path: &Path,
    keys: Vec<Option<&str>>,
    values: Vec<Option<&[u8]>>,
    rows_per_group: usize,
) {
    let batch = RecordBatch::try_from_iter([
        (
            "id",
            Arc::new(StringArray::from(vec!["x"; keys.len()])) as ArrayRef,
        ),
        ("key", Arc::new(StringArray::from(keys)) as ArrayRef),
        ("value", Arc::new(BinaryArray::from(values)) as ArrayRef),
    ])
    .unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows_per_group))
        .build();
    let mut w =
        ArrowWriter::try_new(fs::File::create(path).unwrap(), batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn a_parquet_build_reads_every_row_group_and_null_values_are_deletions() {
    let t = TempDir::new("parquet");
    let keys: Vec<String> = (0..5000).map(|i| format!("item{i}")).collect();
    let values: Vec<Vec<u8>> = (0..5000)
        .map(|i| format!("bytes\0\n{i}").into_bytes())
        .collect();
    let input = t.0.join("in.parquet");
    write_parquet(
        &input,
        keys.iter().map(|k| Some(k.as_str())).collect(),
        values
            .iter()
            .enumerate()
            .map(|(i, v)| (i % 10 != 3).then_some(&v[..]))
            .collect(),
        700,
    );
    let out = t.0.join("v1");
    let m = build(&opts("feat", vec![input], Format::Parquet, &out))
        .unwrap()
        .manifest;
    assert_eq!((m.records, m.tombstones), (5000, 500));
    verify(&out).unwrap();
    let got = read_built(&out);
    for (i, k) in keys.iter().enumerate() {
        let want = (i % 10 != 3).then(|| values[i].clone());
        assert_eq!(got[k.as_bytes()], want, "{k}");
    }
}

#[test]
fn bad_parquet_inputs_are_refused_with_the_reason() {
    let t = TempDir::new("badparquet");
    let input = t.0.join("in.parquet");
    write_parquet(
        &input,
        vec![Some("a"), None],
        vec![Some(b"1"), Some(b"2")],
        10,
    );
    let out = t.0.join("v1");
    let e = build(&opts("feat", vec![input.clone()], Format::Parquet, &out)).unwrap_err();
    assert_eq!(e, format!("{}: row 1: the key is null", input.display()));
    // Truncated: the footer is gone.
    let whole = fs::read(&input).unwrap();
    fs::write(&input, &whole[..whole.len() / 2]).unwrap();
    let e = build(&opts("feat", vec![input.clone()], Format::Parquet, &out)).unwrap_err();
    assert!(e.contains("not a readable Parquet file"), "{e}");
    write_parquet(&input, vec![Some("a")], vec![Some(b"1")], 10);
    let mut o = opts("feat", vec![input.clone()], Format::Parquet, &out);
    o.value_column = "val".into();
    let e = build(&o).unwrap_err();
    assert!(
        e.contains("no column \"val\" (its columns: id, key, value)"),
        "{e}"
    );
    // A TSV file given as Parquet.
    let tsv = t.0.join("in.tsv");
    fs::File::create(&tsv)
        .unwrap()
        .write_all(b"a\t1\n")
        .unwrap();
    let e = build(&opts("feat", vec![tsv], Format::Parquet, &out)).unwrap_err();
    assert!(e.contains("not a readable Parquet file"), "{e}");
    assert!(!out.exists() && !t.0.join("v1.partial").exists());
}

#[test]
fn a_tsv_file_cut_into_several_units_loses_and_repeats_no_line() {
    // 40 MiB: three 16 MiB units, lines crossing both cuts.
    let t = TempDir::new("units");
    let want = rows(41_000, 1000);
    let input = t.0.join("big.tsv");
    write_tsv(&input, &want);
    assert!(fs::metadata(&input).unwrap().len() > 32 << 20);
    let out = t.0.join("v1");
    let m = build(&opts("feat", vec![input.clone()], Format::Tsv, &out))
        .unwrap()
        .manifest;
    assert_eq!(m.records, 41_000);
    let want_map: BTreeMap<_, _> = want.iter().cloned().collect();
    assert_eq!(read_built(&out), want_map);
    // A bad line in the last unit is named by its line in the whole file.
    let mut text = fs::read(&input).unwrap();
    let at = text.len() - 10;
    let line_start = text[..at].iter().rposition(|&b| b == b'\n').unwrap() + 1;
    let line = text[..line_start].iter().filter(|&&b| b == b'\n').count() + 1;
    text[line_start..at].fill(b'x');
    fs::write(&input, &text).unwrap();
    let out2 = t.0.join("v2");
    let e = build(&opts("feat", vec![input.clone()], Format::Tsv, &out2)).unwrap_err();
    assert!(
        e.starts_with(&format!("{}:{line}: ", input.display())),
        "{e} (line {line})"
    );
}
