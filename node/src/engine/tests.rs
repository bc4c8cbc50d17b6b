//! Engine tests on the real io_uring backend over a temporary file: apply, checkpoint, recover
//! as of a checkpoint, collect.

use std::rc::Rc;
use std::time::Duration;

use keel_nvme::{Region, UringDevice};

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
        now: Engine::<UringDevice>::now(),
        cas,
        partition: 0,
    }
}

/// What the checkpoint task does: sync the value log and publish the seq it covers.
async fn checkpoint(e: &Rc<Engine<UringDevice>>) -> u64 {
    let seq = e.log.sync().await.unwrap();
    e.checkpoint_seq.set(seq);
    e.checkpoint_signal.notify();
    seq
}

const SEG: u64 = 2 << 20;

fn run<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

async fn open(path: &std::path::Path, checkpoint_seq: u64) -> Rc<Engine<UringDevice>> {
    let dev = Rc::new(UringDevice::open(path, 8 * SEG).await.unwrap());
    let region = Region::new(dev, 0, 8 * SEG).unwrap();
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

async fn set(e: &Rc<Engine<UringDevice>>, key: &str, value: &[u8]) -> OpResult {
    let op = Op::Store {
        mode: StoreMode::Set,
        key: key.into(),
        flags: 7,
        exptime: 0,
        cas: 0,
        data: value.to_vec(),
        invalidate: false,
    };
    resolve(e.start(op, stamp())).await
}

async fn get(e: &Rc<Engine<UringDevice>>, key: &str) -> Option<Vec<u8>> {
    let op = Op::Get {
        key: key.into(),
        touch: None,
        vivify: None,
        want_value: true,
    };
    match resolve(e.start(op, Stamp::read(Engine::<UringDevice>::now()))).await {
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
                cas: 0,
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

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "keel-engine-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
