//! Engine tests on the real io_uring backend over a temporary file: apply, recover, collect.

use std::rc::Rc;
use std::time::Duration;

use keel_nvme::{Region, UringDevice};

use super::gc;
use super::log::{run_flush, LogConfig};
use super::{resolve, Engine, EngineConfig, Op, OpResult, StoreMode};

const SEG: u64 = 2 << 20;

fn run<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

async fn open(path: &std::path::Path) -> Rc<Engine<UringDevice>> {
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
    };
    let e = Engine::open(region, cfg).await.unwrap();
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
    resolve(&e.log, e.start(op, Engine::<UringDevice>::now())).await
}

async fn get(e: &Rc<Engine<UringDevice>>, key: &str) -> Option<Vec<u8>> {
    let op = Op::Get {
        key: key.into(),
        touch: None,
        vivify: None,
        want_value: true,
    };
    match resolve(&e.log, e.start(op, Engine::<UringDevice>::now())).await {
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
fn acknowledged_writes_survive_reopen() {
    let dir = tempfile_dir();
    let path = dir.join("engine.data");
    run(move || async move {
        {
            let e = open(&path).await;
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
                resolve(&e.log, e.start(del, Engine::<UringDevice>::now())).await,
                OpResult::Deleted
            ));
        }
        let e = open(&path).await;
        for i in 0..500 {
            let got = get(&e, &format!("k{i}")).await;
            if i == 7 {
                assert_eq!(
                    got, None,
                    "a delete acknowledged before the restart must stay"
                );
            } else {
                assert_eq!(got.as_deref(), Some(&value(i, 0)[..]), "key k{i}");
            }
        }
    });
}

#[test]
fn gc_frees_overwritten_segments_and_keeps_live_values() {
    let dir = tempfile_dir();
    let path = dir.join("engine.data");
    run(move || async move {
        {
            let e = open(&path).await;
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
            for seg in sealed {
                gc::collect(&e, seg).await.unwrap();
            }
            assert!(e.log.free_segments() > free_before);
            for i in 0..100 {
                assert_eq!(
                    get(&e, &format!("k{i}")).await.as_deref(),
                    Some(&value(i, 59)[..])
                );
            }
        }
        let e = open(&path).await;
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
