//! Index checkpoints on the seeded SimDevice: a restart loads one and replays only what came
//! after it; writes during the walk are kept; a crash at any write of one recovers exactly the
//! checkpointed state; a damaged one is refused; GC keeps what one needs.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use keel_nvme::testing::SimDevice;
use keel_nvme::Region;

use super::gc;
use super::index_checkpoint::write_one;
use super::tests::{checkpoint, open_region, read, run, SEG};
use super::{resolve, Engine, Op, OpResult, Stamp, StoreMode};

thread_local! {
    static NEXT_CAS: Cell<u64> = const { Cell::new(1 << 20) };
}

type E = Rc<Engine<SimDevice>>;
/// What the engine must hold: key -> value.
type Model = BTreeMap<String, Vec<u8>>;

fn stamp() -> Stamp {
    Stamp {
        now: Engine::<SimDevice>::now(),
        cas: NEXT_CAS.with(|c| c.replace(c.get() + 1)),
        partition: 0,
    }
}

async fn open(dev: Rc<SimDevice>, checkpoint_seq: u64) -> E {
    let size = keel_nvme::Device::size_bytes(&*dev);
    open_region(Region::new(dev, 0, size).unwrap(), checkpoint_seq).await
}

/// A restart from what a crash now would leave (seeded), as of engine checkpoint `seq`.
async fn reopen(dev: &SimDevice, seq: u64, seed: u64) -> E {
    open(Rc::new(SimDevice::from_image(dev.crash_image(), seed)), seq).await
}

async fn set(e: &E, m: &mut Model, key: &str, value: Vec<u8>) {
    let op = Op::Store {
        mode: StoreMode::Set,
        key: key.into(),
        flags: 0,
        exptime: 0,
        cas: None,
        data: value.clone(),
        invalidate: false,
    };
    let r = resolve(e.start(op, stamp())).await;
    assert!(matches!(r, OpResult::Stored { .. }), "set {key}: {r:?}");
    m.insert(key.into(), value);
}

async fn delete(e: &E, m: &mut Model, key: &str) {
    let op = Op::Delete {
        key: key.into(),
        cas: None,
        invalidate: None,
    };
    resolve(e.start(op, stamp())).await;
    m.remove(key);
}

async fn get(e: &E, key: &str) -> Option<Vec<u8>> {
    read(e, key, false).await
}

fn stat(e: &E, name: &str) -> u64 {
    e.stat_values()
        .into_iter()
        .find(|(k, _)| *k == name)
        .unwrap_or_else(|| panic!("no stat {name}"))
        .1
}

/// Every key of `m`, and every key of `universe` not in `m`, reads as `m` says.
async fn check(e: &E, m: &Model, universe: usize, what: &str) {
    assert_eq!(e.index.borrow().len(), m.len(), "{what}: item count");
    for i in 0..universe {
        let k = format!("k{i}");
        assert_eq!(
            get(e, &k).await.as_deref(),
            m.get(&k).map(|v| &v[..]),
            "{what}: {k}"
        );
    }
    assert_eq!(stat(e, "keel_corrupt_records"), 0, "{what}");
}

fn val(i: usize, round: u32) -> Vec<u8> {
    format!("v{i}.{round}.").repeat(1 + i % 3).into_bytes()
}

#[test]
fn a_restart_loads_the_checkpoint_and_replays_only_the_records_after_it() {
    run(|| async {
        let dev = Rc::new(SimDevice::new(12 * SEG, 1));
        let e = open(dev.clone(), 0).await;
        let mut m = Model::new();
        for i in 0..3000 {
            set(&e, &mut m, &format!("k{i}"), val(i, 0)).await;
        }
        for i in 0..100 {
            delete(&e, &mut m, &format!("k{}", i * 7)).await;
        }
        checkpoint(&e).await;
        assert!(write_one(&e).await.unwrap(), "nothing stands in its way");
        assert_eq!(stat(&e, "keel_index_checkpoint_entries"), 2900);
        // After it: overwrites, deletes, new keys.
        for i in 0..200 {
            set(&e, &mut m, &format!("k{}", i * 3), val(i, 1)).await;
        }
        for i in 0..50 {
            delete(&e, &mut m, &format!("k{}", i * 11 + 1)).await;
        }
        for i in 3000..3100 {
            set(&e, &mut m, &format!("k{i}"), val(i, 1)).await;
        }
        let seq = checkpoint(&e).await;
        let r = reopen(&dev, seq, 1).await;
        assert_eq!(stat(&r, "keel_index_checkpoint_loaded"), 1);
        let base = stat(&e, "keel_index_checkpoint_base_seq");
        assert!(base > 3000, "{base}");
        assert_eq!(
            stat(&r, "keel_recovered_records"),
            seq - base,
            "only the records after it"
        );
        check(&r, &m, 3100, "after the restart").await;
        // And it is still there for the next restart, which writes nothing in between.
        let r2 = reopen(&dev, seq, 2).await;
        assert_eq!(stat(&r2, "keel_index_checkpoint_loaded"), 1);
        check(&r2, &m, 3100, "after a second restart").await;
    });
}

#[test]
fn writes_during_the_walk_are_kept() {
    run(|| async {
        let dev = Rc::new(SimDevice::new(24 * SEG, 2));
        // Each device write waits, so the writer below runs while the walk is under way.
        dev.set_latency(Duration::from_micros(300), Duration::from_micros(300));
        let e = open(dev.clone(), 0).await;
        let mut prefill = Model::new();
        let n = 60_000;
        for i in 0..n {
            set(&e, &mut prefill, &format!("k{i}"), val(i, 0)).await;
        }
        let m = Rc::new(std::cell::RefCell::new(prefill));
        let walking = Rc::new(Cell::new(true));
        let during = Rc::new(Cell::new(0u32));
        let writer = {
            let (e, m, walking, during) = (e.clone(), m.clone(), walking.clone(), during.clone());
            glommio::spawn_local(async move {
                let mut round = 1;
                while walking.get() && round < 100_000 {
                    let i = (round as usize * 7919) % n;
                    let k = format!("k{i}");
                    let mut one = Model::new();
                    if round % 5 == 0 {
                        delete(&e, &mut one, &k).await;
                        m.borrow_mut().remove(&k);
                    } else {
                        set(&e, &mut one, &k, val(i, round)).await;
                        m.borrow_mut().extend(one);
                    }
                    during.set(during.get() + 1);
                    round += 1;
                }
            })
        };
        let mut taken = false;
        for _ in 0..20 {
            if write_one(&e).await.unwrap() {
                taken = true;
                break;
            }
        }
        walking.set(false);
        writer.await;
        assert!(taken, "a walk completed");
        assert!(
            during.get() > 10,
            "writes ran during the walk: {}",
            during.get()
        );
        let seq = checkpoint(&e).await;
        let r = reopen(&dev, seq, 3).await;
        assert_eq!(stat(&r, "keel_index_checkpoint_loaded"), 1);
        let m = m.borrow().clone();
        check(&r, &m, n, "after the restart").await;
    });
}

#[test]
fn a_crash_at_any_write_of_a_checkpoint_recovers_the_checkpointed_state() {
    run(|| async {
        let dev = Rc::new(SimDevice::new(12 * SEG, 3));
        dev.set_latency(Duration::from_micros(200), Duration::from_micros(200));
        let e = open(dev.clone(), 0).await;
        let mut m = Model::new();
        let n = 40_000;
        for i in 0..n {
            set(&e, &mut m, &format!("k{i}"), val(i, 0)).await;
        }
        let mut seq = checkpoint(&e).await;
        let mut seed = 10;
        for generation in 1..=2 {
            let done = Rc::new(Cell::new(false));
            let task = {
                let (e, done) = (e.clone(), done.clone());
                glommio::spawn_local(async move {
                    assert!(write_one(&e).await.unwrap());
                    done.set(true);
                })
            };
            let mut seen = dev.counts();
            let mut crashes = 0;
            while !done.get() {
                glommio::timer::sleep(Duration::from_micros(50)).await;
                if dev.counts() == seen {
                    continue;
                }
                seen = dev.counts();
                seed += 1;
                let r = reopen(&dev, seq, seed).await;
                check(
                    &r,
                    &m,
                    n,
                    &format!("generation {generation}, crash {crashes}"),
                )
                .await;
                if generation == 2 {
                    assert_eq!(
                        stat(&r, "keel_index_checkpoint_loaded"),
                        1,
                        "the first generation stays until the second is usable"
                    );
                }
                crashes += 1;
            }
            task.await;
            assert!(
                crashes >= 3,
                "generation {generation}: {crashes} crash points"
            );
            let r = reopen(&dev, seq, seed + 100).await;
            assert_eq!(stat(&r, "keel_index_checkpoint_loaded"), 1);
            assert_eq!(stat(&r, "keel_index_checkpoint_generation"), generation);
            check(&r, &m, n, "after the checkpoint").await;
            for i in 0..500 {
                set(
                    &e,
                    &mut m,
                    &format!("k{}", i * 13),
                    val(i, generation as u32),
                )
                .await;
            }
            seq = checkpoint(&e).await;
        }
    });
}

#[test]
fn a_damaged_or_torn_checkpoint_is_refused_and_the_scan_serves_exactly() {
    run(|| async {
        let dev = Rc::new(SimDevice::new(12 * SEG, 4));
        let e = open(dev.clone(), 0).await;
        let mut m = Model::new();
        for i in 0..2000 {
            set(&e, &mut m, &format!("k{i}"), val(i, 0)).await;
        }
        let seq = checkpoint(&e).await;
        assert!(write_one(&e).await.unwrap());
        let part = e.ixckpt.current.borrow().as_ref().unwrap().segs[0] as u64;
        // A flipped bit in the entries.
        let bad = Rc::new(SimDevice::from_image(dev.durable_image(), 5));
        bad.flip_bit(part * SEG + 4096 + 1000, 3);
        let r = open(bad, seq).await;
        assert_eq!(stat(&r, "keel_index_checkpoint_loaded"), 0);
        assert_eq!(stat(&r, "keel_index_checkpoints_refused"), 1);
        assert_eq!(stat(&r, "keel_recovered_records"), 2000, "a full scan");
        check(&r, &m, 2000, "after a bit flip").await;
        // Its header gone (a torn write): no checkpoint at all, a full scan.
        let mut img = dev.durable_image();
        img[(part * SEG) as usize..(part * SEG) as usize + 64].fill(0);
        let r = open(Rc::new(SimDevice::from_image(img, 6)), seq).await;
        assert_eq!(stat(&r, "keel_index_checkpoint_loaded"), 0);
        assert_eq!(stat(&r, "keel_index_checkpoints_refused"), 0);
        check(&r, &m, 2000, "after a torn header").await;
        // Not yet covered by an engine checkpoint (a crash before the next one): not used.
        let r = open(
            Rc::new(SimDevice::from_image(dev.durable_image(), 7)),
            seq - 1,
        )
        .await;
        assert_eq!(stat(&r, "keel_index_checkpoint_loaded"), 0);
    });
}

/// GC drops a tombstone when no older segment is left, because no put it hides can come back
/// from the log. An index checkpoint is older than the tombstone, though: dropped, the deleted
/// key would come back from the checkpoint.
#[test]
fn gc_keeps_a_tombstone_the_checkpoint_needs() {
    run(|| async {
        let dev = Rc::new(SimDevice::new(12 * SEG, 8));
        let e = open(dev.clone(), 0).await;
        let mut m = Model::new();
        let big = |i: usize| vec![b'a' + (i % 26) as u8; 16 << 10];
        set(&e, &mut m, "k999", b"the victim".to_vec()).await;
        for i in 0..60 {
            set(&e, &mut m, &format!("k{i}"), big(i)).await;
        }
        let first = e.log.active_segment();
        checkpoint(&e).await;
        assert!(write_one(&e).await.unwrap());
        delete(&e, &mut m, "k999").await;
        // Everything else in the first segment is overwritten into later ones.
        for round in 1..3 {
            for i in 0..60 {
                set(&e, &mut m, &format!("k{i}"), big(i + round)).await;
            }
        }
        assert_ne!(e.log.active_segment(), first);
        let stop = Rc::new(Cell::new(false));
        let ckpts = {
            let (e, stop) = (e.clone(), stop.clone());
            glommio::spawn_local(async move {
                while !stop.get() {
                    checkpoint(&e).await;
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
            })
        };
        gc::collect(&e, first).await.unwrap();
        stop.set(true);
        ckpts.await;
        let seq = checkpoint(&e).await;
        let r = reopen(&dev, seq, 9).await;
        assert_eq!(
            stat(&r, "keel_index_checkpoint_loaded"),
            1,
            "and not refused"
        );
        assert!(r.index.borrow().get(b"k999").is_none());
        check(&r, &m, 1000, "after GC and a restart").await;
    });
}
