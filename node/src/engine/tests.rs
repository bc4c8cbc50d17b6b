//! Engine tests on the real io_uring backend over a temporary file: apply, checkpoint, recover
//! as of a checkpoint, collect.

use std::rc::Rc;
use std::time::Duration;

use keel_nvme::testing::open_test_device;
use keel_nvme::{AnyDevice, Region};

use super::gc;
use super::log::{run_flush, LogConfig};
use super::{resolve, Engine, EngineConfig, Op, OpResult, Stamp, StoreMode};

thread_local! {
    static NEXT_CAS: std::cell::Cell<u64> = const { std::cell::Cell::new(1) };
}

/// What the Raft layer would give an op: the time and a fresh CAS.
fn stamp() -> Stamp {
    let cas = NEXT_CAS.with(|c| c.replace(c.get() + 1));
    Stamp {
        now: Engine::<AnyDevice>::now(),
        cas,
        partition: 0,
    }
}

/// What the checkpoint task does: sync the value log and publish the seq it covers.
pub(super) async fn checkpoint<D: keel_nvme::Device + 'static>(e: &Rc<Engine<D>>) -> u64 {
    let seq = e.log.sync().await.unwrap();
    e.checkpoint_seq.set(seq);
    e.checkpoint_signal.notify();
    seq
}

pub(super) const SEG: u64 = 2 << 20;

pub(super) fn run<F: std::future::Future<Output = ()> + 'static>(
    f: impl FnOnce() -> F + Send + 'static,
) {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

async fn open(path: &std::path::Path, checkpoint_seq: u64) -> Rc<Engine<AnyDevice>> {
    let dev = Rc::new(open_test_device(path, 8 * SEG).await);
    open_region(Region::new(dev, 0, 8 * SEG).unwrap(), checkpoint_seq).await
}

/// The engine of these tests (2 MiB segments, one partition) on `region`, its flush task running.
pub(super) async fn open_region<D: keel_nvme::Device + 'static>(
    region: Region<D>,
    checkpoint_seq: u64,
) -> Rc<Engine<D>> {
    let cfg = EngineConfig {
        log: LogConfig {
            seg_bytes: SEG,
            value_len_max: 256 << 10,
            batch_bytes_max: 4096,
            flush_delay: Duration::from_millis(1),
        },
        cache_bytes: 1 << 20,
        partitions_mask: 0,
    };
    let e = Engine::open(region, cfg, checkpoint_seq).await.unwrap();
    let log = e.log.clone();
    glommio::spawn_local(async move {
        run_flush(log).await;
    })
    .detach();
    e
}

pub(super) async fn set(e: &Rc<Engine<AnyDevice>>, key: &str, value: &[u8]) -> OpResult {
    let op = Op::Store {
        mode: StoreMode::Set,
        key: key.into(),
        flags: 7,
        exptime: 0,
        cas: None,
        data: value.to_vec(),
        invalidate: false,
    };
    resolve(e.start(op, stamp())).await
}

pub(super) async fn get(e: &Rc<Engine<AnyDevice>>, key: &str) -> Option<Vec<u8>> {
    read(e, key, true).await
}

/// The value of `key`, read as a client's get does; `bump` says whether it counts as an access.
pub(super) async fn read<D: keel_nvme::Device + 'static>(
    e: &Rc<Engine<D>>,
    key: &str,
    bump: bool,
) -> Option<Vec<u8>> {
    let op = Op::Get {
        key: key.into(),
        touch: None,
        vivify: None,
        recache: None,
        want_value: true,
        bump,
    };
    match resolve(e.start(op, Stamp::read(Engine::<D>::now()))).await {
        OpResult::Hit(i) => Some(i.value.to_vec()),
        OpResult::Miss => None,
        other => panic!("get {key}: {other:?}"),
    }
}

fn value(i: u32, round: u32) -> Vec<u8> {
    format!("value-{i}-{round}-")
        .repeat(((i % 50) as usize + 1) * 4)
        .into_bytes()
}

#[test]
fn reopen_rebuilds_the_checkpoint_state_exactly() {
    let dir = tempfile_dir();
    let path = dir.join("engine.data");
    run(move || async move {
        let ckpt;
        {
            let e = open(&path, 0).await;
            for i in 0..500 {
                assert!(matches!(
                    set(&e, &format!("k{i}"), &value(i, 0)).await,
                    OpResult::Stored { .. }
                ));
            }
            let del = Op::Delete {
                key: b"k7".to_vec(),
                cas: None,
                invalidate: None,
            };
            assert!(matches!(
                resolve(e.start(del, stamp())).await,
                OpResult::Deleted
            ));
            ckpt = checkpoint(&e).await;
            // After the checkpoint: written to the device but not part of it. Recovery must
            // leave these out, because the Raft log replays the ops that made them (an append
            // replayed onto its own result would double).
            set(&e, "k0", b"after the checkpoint").await;
            set(&e, "k7", b"recreated after the checkpoint").await;
            e.log.sync().await.unwrap();
        }
        let e = open(&path, ckpt).await;
        for i in 0..500 {
            let got = get(&e, &format!("k{i}")).await;
            if i == 7 {
                assert_eq!(got, None, "the checkpoint had k7 deleted");
            } else {
                assert_eq!(got.as_deref(), Some(&value(i, 0)[..]), "key k{i}");
            }
        }
        let stats = e.stat_values();
        let ignored = stats
            .iter()
            .find(|(k, _)| *k == "keel_ignored_records")
            .unwrap()
            .1;
        assert_eq!(ignored, 2, "the two records after the checkpoint");
    });
}

#[test]
fn gc_frees_overwritten_segments_and_keeps_live_values() {
    let dir = tempfile_dir();
    let path = dir.join("engine.data");
    run(move || async move {
        let ckpt;
        {
            let e = open(&path, 0).await;
            // ~5 segments of overwrites of 100 keys: most of the log is dead.
            for round in 0..60 {
                for i in 0..100 {
                    assert!(
                        matches!(
                            set(&e, &format!("k{i}"), &value(i, round)).await,
                            OpResult::Stored { .. }
                        ),
                        "round {round}"
                    );
                }
            }
            let sealed: Vec<usize> = e
                .log
                .segs
                .borrow()
                .iter()
                .enumerate()
                .filter(|(_, s)| s.state == super::log::SegState::Sealed)
                .map(|(i, _)| i)
                .collect();
            assert!(sealed.len() >= 2, "test must fill segments, got {sealed:?}");
            let free_before = e.log.free_segments();
            // GC frees a segment only once a checkpoint covers what it moved: checkpoint
            // alongside, as the node's checkpoint task does.
            let done = Rc::new(std::cell::Cell::new(false));
            let (ee, d) = (e.clone(), done.clone());
            let ckpts = glommio::spawn_local(async move {
                while !d.get() {
                    checkpoint(&ee).await;
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
            });
            for seg in sealed {
                gc::collect(&e, seg).await.unwrap();
            }
            done.set(true);
            ckpts.await;
            ckpt = checkpoint(&e).await;
            assert!(e.log.free_segments() > free_before);
            for i in 0..100 {
                assert_eq!(
                    get(&e, &format!("k{i}")).await.as_deref(),
                    Some(&value(i, 59)[..])
                );
            }
        }
        let e = open(&path, ckpt).await;
        for i in 0..100 {
            assert_eq!(
                get(&e, &format!("k{i}")).await.as_deref(),
                Some(&value(i, 59)[..]),
                "after reopen"
            );
        }
    });
}

/// A directory of the test's own, removed when the guard is dropped (at the test's end).
pub(super) struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn tempfile_dir() -> TempDir {
    let d = std::env::temp_dir().join(format!(
        "keel-engine-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// mg's `h`, `l` and the recache tokens, with the clock driven by hand through the stamps: a
/// new user found `h` and `l` always 0 and the W/Z/X tokens off memcached's.
#[test]
fn access_history_and_win_tokens_follow_memcached() {
    let dir = tempfile_dir();
    let path = dir.join("engine.data");
    run(move || async move {
        let e = open(&path, 0).await;
        let t0 = 1_800_000_000;
        let write = |op: Op, now: u32| {
            let s = stamp();
            e.start(op, Stamp { now, ..s })
        };
        let mg = |key: &str, recache: Option<i64>, bump: bool, now: u32| {
            let op = Op::Get {
                key: key.into(),
                touch: None,
                vivify: None,
                recache,
                want_value: false,
                bump,
            };
            match e.start(op, Stamp::read(now)) {
                super::Pending::Ready(OpResult::Hit(i)) => i,
                _ => panic!("mg {key} missed"),
            }
        };
        let store = |key: &str, exptime: i64, cas: Option<u64>, invalidate: bool| Op::Store {
            mode: StoreMode::Set,
            key: key.into(),
            flags: 0,
            exptime,
            cas,
            data: b"v".to_vec(),
            invalidate,
        };
        assert!(matches!(
            resolve(write(store("k", 0, None, false), t0)).await,
            OpResult::Stored { .. }
        ));
        // Written at t0, never read: h0, l = seconds since the write. `u` reads without a bump.
        let i = mg("k", None, false, t0 + 5);
        assert_eq!((i.fetched, i.idle_s, i.value_len), (false, 5, 1));
        let i = mg("k", None, true, t0 + 7);
        assert_eq!(
            (i.fetched, i.idle_s),
            (false, 7),
            "the flags show the state before the read"
        );
        let i = mg("k", None, true, t0 + 10);
        assert_eq!((i.fetched, i.idle_s), (true, 3));
        // A rewrite starts the history afresh.
        let cas = match resolve(write(store("k", 100, None, false), t0 + 10)).await {
            OpResult::Stored { cas } => cas,
            other => panic!("{other:?}"),
        };
        let i = mg("k", None, false, t0 + 11);
        assert_eq!((i.fetched, i.idle_s), (false, 1));
        // R: the first reader of an item expiring within the TTL wins; later ones see Z.
        assert!(
            !mg("k", Some(30), true, t0 + 11).win,
            "100 s left is not within R30"
        );
        assert!(mg("k", Some(200), true, t0 + 11).win);
        let i = mg("k", Some(200), true, t0 + 11);
        assert!(i.already_won && !i.win);
        // A stale store (ms I with an older CAS) keeps the TTL and the token already sent.
        assert!(matches!(
            resolve(write(store("k", 5, Some(cas - 1), true), t0 + 12)).await,
            OpResult::Stored { .. }
        ));
        let i = mg("k", None, true, t0 + 12);
        assert_eq!(i.exptime, t0 + 110);
        assert!(i.stale && i.already_won && !i.win);
        // md I takes the token back: the next reader wins again.
        let md = Op::Delete {
            key: b"k".to_vec(),
            cas: None,
            invalidate: Some(None),
        };
        assert!(matches!(
            resolve(write(md, t0 + 13)).await,
            OpResult::Deleted
        ));
        let i = mg("k", None, true, t0 + 13);
        assert!(i.stale && i.win && !i.already_won);
        // ... and gives the item a new CAS, so a recache with the CAS read before is older.
        assert!(i.cas > cas);
        // cas with unique 0 never matches (memcached: EXISTS).
        assert!(matches!(
            resolve(write(store("k", 0, Some(0), false), t0 + 14)).await,
            OpResult::Exists
        ));
    });
}

#[test]
fn concurrent_misses_on_one_value_share_one_device_read() {
    let dir = tempfile_dir();
    let path = dir.join("engine.data");
    run(move || async move {
        let e = open(&path, 0).await;
        // Larger than an eighth of the 1 MiB cache: never cached, every read goes to the device.
        let big = vec![b'v'; 200 << 10];
        assert!(matches!(
            set(&e, "big", &big).await,
            OpResult::Stored { .. }
        ));
        checkpoint(&e).await;
        let before = e.stats.disk_reads.get();
        let reads = (0..8).map(|_| get(&e, "big"));
        let values = futures::future::join_all(reads).await;
        assert!(values.iter().all(|v| v.as_deref() == Some(&big[..])));
        assert_eq!(
            e.stats.disk_reads.get() - before,
            1,
            "eight misses, one read"
        );
        assert!(
            e.reads.borrow().is_empty(),
            "a finished read leaves no entry"
        );
        // Once that read is done, the next miss reads again.
        assert_eq!(get(&e, "big").await.as_deref(), Some(&big[..]));
        assert_eq!(e.stats.disk_reads.get() - before, 2);
        // A read whose every waiter went away (a closed connection) leaves no entry either.
        let op = Op::Get {
            key: b"big".to_vec(),
            touch: None,
            vivify: None,
            recache: None,
            want_value: true,
            bump: true,
        };
        let waiter = e.start(op, Stamp::read(Engine::<AnyDevice>::now()));
        assert!(matches!(waiter, super::Pending::Later(_)));
        assert_eq!(e.reads.borrow().len(), 1);
        drop(waiter);
        assert!(
            e.reads.borrow().is_empty(),
            "a dropped read leaves no entry"
        );
        assert_eq!(get(&e, "big").await.as_deref(), Some(&big[..]));
    });
}
