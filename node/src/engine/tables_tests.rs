//! Feature-table slices on the real io_uring backend: adopt a `keel-bulk build`'s partitions,
//! read every key, survive a reopen, drop, and refuse bad files; an adoption cut short is freed.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use keel_nvme::testing::open_test_device;
use keel_nvme::{AnyDevice, Device, Region};

use super::tables::SliceRead;
use super::tests::{checkpoint, get, open_region, run, set, tempfile_dir, SEG};
use super::Engine;
use crate::bulk::{self, BuildOptions, Format, Manifest};

/// 48 segments of 2 MiB: room for two slices of a few segments beside the log.
const SEGS: u64 = 48;

async fn open(path: &Path, checkpoint_seq: u64) -> Rc<Engine<AnyDevice>> {
    let dev = Rc::new(open_test_device(path, SEGS * SEG).await);
    open_region(Region::new(dev, 0, SEGS * SEG).unwrap(), checkpoint_seq).await
}

/// 6,000 keys of about 1 KiB (every 40th a deletion) built into two partitions: about 3 MiB,
/// two data segments, each.
fn build(dir: &Path) -> (Manifest, BTreeMap<Vec<u8>, Option<Vec<u8>>>) {
    let mut text = Vec::new();
    let mut want = BTreeMap::new();
    for i in 0..6000u32 {
        let key = format!("k{i:05}").into_bytes();
        let value = (i % 40 != 9).then(|| format!("{i}-").repeat(1000 / 6).into_bytes());
        text.extend_from_slice(&key);
        text.push(b'\t');
        text.extend_from_slice(value.as_deref().unwrap_or(b"\\N"));
        text.push(b'\n');
        want.insert(key, value);
    }
    std::fs::write(dir.join("in.tsv"), text).unwrap();
    let opts = BuildOptions {
        table: "feat".into(),
        inputs: vec![dir.join("in.tsv")],
        format: Format::Tsv,
        out: dir.join("v1"),
        partitions: 2,
        segment_bytes: SEG,
        value_len_max: 64 << 10,
        threads: 2,
        key_column: "key".into(),
        value_column: "value".into(),
    };
    (bulk::build(&opts).unwrap().manifest, want)
}

/// Every key of the partitions `parts` reads back from its slice as built (a deletion as
/// `Deleted`), and a slice of another partition does not hold it.
async fn check_all(
    e: &Engine<AnyDevice>,
    m: &Manifest,
    want: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    parts: &[u32],
) {
    let mut n = 0;
    for (k, v) in want {
        let p = crate::shard::partition_of(k, 1) as u32;
        if !parts.contains(&p) {
            continue;
        }
        n += 1;
        let got = e.slice_get(m.build_id, p, k).await.unwrap();
        match v {
            Some(v) => assert!(
                matches!(&got, SliceRead::Value { flags: 0, value, .. } if value == v),
                "{k:?}"
            ),
            None => assert_eq!(got, SliceRead::Deleted, "{k:?}"),
        }
        if parts.contains(&(1 - p)) {
            assert_eq!(
                e.slice_get(m.build_id, 1 - p, k).await.unwrap(),
                SliceRead::Absent
            );
        }
    }
    assert!(n > 2000 * parts.len(), "{n}");
}

#[test]
fn slices_are_adopted_read_reopened_and_dropped() {
    let dir = tempfile_dir();
    let (m, want) = build(&dir);
    let (path, built) = (dir.join("engine.data"), dir.join("v1"));
    run(move || async move {
        let (ckpt, free_before);
        {
            let e = open(&path, 0).await;
            free_before = e.log.free_segments();
            set(&e, "online", b"kept").await;
            e.adopt_slice(&built, &m, 0).await.unwrap();
            e.adopt_slice(&built, &m, 1).await.unwrap();
            // Adopting again is a no-op.
            e.adopt_slice(&built, &m, 1).await.unwrap();
            let used: usize = m
                .files
                .iter()
                .map(|f| f.seg_bytes.div_ceil(SEG) as usize + 1)
                .sum();
            assert!(used >= 6, "{used}");
            assert_eq!(e.log.free_segments(), free_before - used);
            check_all(&e, &m, &want, &[0, 1]).await;
            assert_eq!(
                e.slice_get(m.build_id, 0, b"nope").await.unwrap(),
                SliceRead::Absent
            );
            assert_eq!(
                e.slice_get(m.build_id ^ 2, 0, b"k00001").await.unwrap(),
                SliceRead::NoSlice
            );
            let held = e.slices();
            assert_eq!(held.iter().map(|s| s.2).sum::<u64>(), 6000);
            assert_eq!(held.iter().map(|s| s.3).sum::<u64>(), 150);
            ckpt = checkpoint(&e).await;
        }
        {
            // Reopened: the slices come back from their index segments, the log as before.
            let e = open(&path, ckpt).await;
            check_all(&e, &m, &want, &[0, 1]).await;
            assert_eq!(get(&e, "online").await.as_deref(), Some(&b"kept"[..]));
            assert!(e.drop_slice(m.build_id, 0).await.unwrap());
            assert!(!e.drop_slice(m.build_id, 0).await.unwrap());
        }
        let e = open(&path, ckpt).await;
        assert_eq!(e.slices().len(), 1);
        assert_eq!(
            e.slice_get(m.build_id, 0, b"k00001").await.unwrap(),
            SliceRead::NoSlice
        );
        // Dropping gives every segment of the slice back (each open also takes one for the
        // log's appends, so counts compare within one open).
        let (free, one) = (
            e.log.free_segments(),
            m.files[1].seg_bytes.div_ceil(SEG) as usize + 1,
        );
        e.drop_slice(m.build_id, 1).await.unwrap();
        assert_eq!(e.log.free_segments(), free + one);
        assert!(free + one >= free_before - 2);
        let stats = e.stat_values();
        let damaged = stats
            .iter()
            .find(|(k, _)| *k == "keel_damaged_segment_headers")
            .map(|s| s.1);
        assert_eq!(damaged, Some(0));
    });
}

#[test]
fn an_adoption_cut_short_is_freed_and_bad_files_are_refused() {
    let dir = tempfile_dir();
    let (m, want) = build(&dir);
    let (path, built) = (dir.join("engine.data"), dir.join("v1"));
    run(move || async move {
        let (ckpt, free_before);
        {
            let e = open(&path, 0).await;
            free_before = e.log.free_segments();
            e.adopt_slice(&built, &m, 0).await.unwrap();
            // A crash in the middle of an adoption leaves some of its segments without their
            // header: here one data segment's header is zeroed behind the engine's back.
            let seg = e.slices.borrow()[&(m.build_id, 0)].data_segs[1];
            let buf = e.log.dev.alloc(4096);
            e.log.dev.write_at(buf, seg as u64 * SEG).await.unwrap();
            e.log.dev.sync().await.unwrap();
            ckpt = checkpoint(&e).await;
        }
        {
            let e = open(&path, ckpt).await;
            assert!(e.slices().is_empty(), "an incomplete slice is never served");
            // Its segments are free again (this open took one more for the log's appends).
            assert!(e.log.free_segments() + 2 >= free_before);
            let free_before = e.log.free_segments();

            // A damaged .seg file: refused, nothing taken.
            let seg_path = built.join(&m.files[1].seg);
            let good = std::fs::read(&seg_path).unwrap();
            let mut bad = good.clone();
            bad[100_000] ^= 1;
            std::fs::write(&seg_path, &bad).unwrap();
            let err = e.adopt_slice(&built, &m, 1).await.unwrap_err();
            assert!(err.contains("part-00001.seg: checksum mismatch"), "{err}");
            assert!(e.slices().is_empty());
            assert_eq!(e.log.free_segments(), free_before);
            std::fs::write(&seg_path, &good).unwrap();

            // A build for another segment size: refused by name.
            let mut other = m.clone();
            other.segment_bytes = 4 << 20;
            let err = e.adopt_slice(&built, &other, 1).await.unwrap_err();
            assert!(err.contains("--segment-bytes 4194304"), "{err}");

            // The good file is adopted.
            e.adopt_slice(&built, &m, 1).await.unwrap();
            check_all(&e, &m, &want, &[1]).await;
        }
    });
}
