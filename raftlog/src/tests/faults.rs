//! Group commit under a slow or failing device, segment reuse, and limits.

use std::rc::Rc;
use std::time::Duration;

use keel_nvme::testing::SimDevice;
use raft::{Error, Storage, StorageError};

use super::*;

#[test]
fn several_flushes_in_flight_and_durable_lsn_is_a_contiguous_prefix() {
    run(|| async {
        let dev = Rc::new(SimDevice::new(8 * SEG, 11));
        dev.set_latency(Duration::from_millis(2), Duration::from_millis(3));
        let log = open(&dev, cfg()).await.unwrap();
        let _f = flusher(&log);
        log.create_group(1, conf(&[1])).unwrap();
        let mut checked = 0;
        for i in 1..=120u64 {
            log.append(1, &[entry(i, 1, &data(1, i, 1, 1500))]).unwrap();
            if i % 3 == 0 {
                // Let the flusher hand out batches while more records arrive.
                glommio::timer::sleep(Duration::from_micros(700)).await;
            }
            if i % 20 == 0 {
                // Whatever durable_lsn claims must be recoverable from what was synced.
                let claimed = log.durable_lsn();
                let d = Rc::new(SimDevice::from_image(dev.durable_image(), i));
                let back = open(&d, cfg()).await.unwrap();
                assert!(
                    back.last_lsn() >= claimed,
                    "durable {claimed} but recovered less"
                );
                checked += 1;
            }
        }
        log.durable(log.last_lsn()).await.unwrap();
        assert_eq!(checked, 6);
        let st = log.stats();
        assert!(
            st.flushes_in_flight_max_seen > 1,
            "a slow device should have several batches in flight: {st:?}"
        );
        assert!(st.flushes_in_flight_max_seen <= 4);
        let d = Rc::new(SimDevice::from_image(dev.durable_image(), 12));
        let back = open(&d, cfg()).await.unwrap();
        assert_eq!(all_entries(&back, 1).len(), 120);
    });
}

#[test]
fn a_failed_sync_poisons_the_log() {
    run(|| async {
        let dev = Rc::new(SimDevice::new(4 * SEG, 13));
        let log = open(&dev, cfg()).await.unwrap();
        let flush = flusher(&log);
        log.create_group(1, conf(&[1])).unwrap();
        let ok = log.append(1, &[entry(1, 1, b"one")]).unwrap();
        log.durable(ok).await.unwrap();
        dev.fail_syncs(true);
        let lost = log.append(1, &[entry(2, 1, b"two")]).unwrap();
        assert!(matches!(
            log.durable(lost).await,
            Err(RaftLogError::Poisoned(_))
        ));
        assert_eq!(
            log.durable_lsn(),
            ok,
            "nothing after the failure is reported durable"
        );
        assert!(matches!(flush.await, RaftLogError::Poisoned(_)));
        assert!(matches!(
            log.append(1, &[entry(3, 1, b"three")]),
            Err(RaftLogError::Poisoned(_))
        ));
        // Even a later successful sync reports nothing more.
        dev.fail_syncs(false);
        assert!(matches!(
            log.durable(lost).await,
            Err(RaftLogError::Poisoned(_))
        ));
        assert!(log.durable(ok).await.is_ok());
    });
}

#[test]
fn a_failed_write_poisons_the_log() {
    run(|| async {
        let dev = Rc::new(SimDevice::new(4 * SEG, 14));
        let log = open(&dev, cfg()).await.unwrap();
        let _f = flusher(&log);
        dev.fail_writes(true);
        let lsn = log.create_group(1, conf(&[1])).unwrap();
        assert!(matches!(
            log.durable(lsn).await,
            Err(RaftLogError::Poisoned(_))
        ));
        assert_eq!(log.durable_lsn(), 0);
    });
}

#[test]
fn compaction_frees_segments_and_survives_reopen() {
    run(|| async {
        let dev = Rc::new(SimDevice::new(6 * SEG, 15));
        let log = open(&dev, cfg()).await.unwrap();
        let _f = flusher(&log);
        log.create_group(1, conf(&[1])).unwrap();
        log.create_group(2, conf(&[1])).unwrap();
        // Fill until the log is full: a defined error, not a panic or a hang.
        let mut next = [1u64, 1];
        let full = loop {
            let g = (next[0] + next[1]) % 2;
            let i = next[g as usize];
            match log.append(g + 1, &[entry(i, 1, &data(g + 1, i, 1, 2000))]) {
                Ok(_) => next[g as usize] += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(full, RaftLogError::Full { segments: 6 }), "{full}");
        assert_eq!(
            log.stats().segments_free,
            1,
            "one segment is kept for compactions"
        );
        log.durable(log.last_lsn()).await.unwrap();
        // Group 2 alone cannot free anything: group 1 still holds entries everywhere. (Its
        // compact record may take the free segment kept for exactly this.)
        log.compact(2, next[1] - 2).unwrap();
        assert!(log.stats().segments_free <= 1);
        let c1 = next[0] - 2;
        let lsn = log.compact(1, c1).unwrap();
        let st = log.stats();
        assert!(st.segments_free > 1, "compaction freed segments: {st:?}");
        log.durable(lsn).await.unwrap();
        // Appends work again and reuse the freed segments.
        for k in 0..40 {
            let i = next[0] + k;
            log.append(1, &[entry(i, 2, &data(1, i, 2, 2000))]).unwrap();
        }
        let last1 = next[0] + 39;
        log.durable(log.last_lsn()).await.unwrap();

        let d = Rc::new(SimDevice::from_image(dev.durable_image(), 16));
        let back = open(&d, cfg()).await.unwrap();
        let s1 = back.storage(1).unwrap();
        assert_eq!(s1.first_index().unwrap(), c1 + 1);
        assert_eq!(s1.last_index().unwrap(), last1);
        assert_eq!(
            s1.term(c1).unwrap(),
            1,
            "term of the compacted index stays answerable"
        );
        assert_eq!(s1.term(c1 - 1), Err(Error::Store(StorageError::Compacted)));
        assert_eq!(
            s1.entries(c1, c1 + 2, None, raft::GetEntriesContext::empty(false)),
            Err(Error::Store(StorageError::Compacted))
        );
        let got = all_entries(&back, 1);
        assert_eq!(
            got.first().unwrap(),
            &entry(c1 + 1, 1, &data(1, c1 + 1, 1, 2000))
        );
        assert_eq!(
            got.last().unwrap(),
            &entry(last1, 2, &data(1, last1, 2, 2000))
        );
        let s2 = back.storage(2).unwrap();
        assert_eq!(s2.first_index().unwrap(), next[1] - 1);
        assert_eq!(s2.last_index().unwrap(), next[1] - 1);
    });
}

#[test]
fn limits_give_defined_errors() {
    run(|| async {
        let dev = Rc::new(SimDevice::new(4 * SEG, 17));
        let log = open(&dev, cfg()).await.unwrap();
        log.create_group(1, conf(&[1])).unwrap();
        let huge = entry(1, 1, &vec![1u8; SEG as usize]);
        assert!(matches!(
            log.append(1, &[huge]),
            Err(RaftLogError::RecordTooLarge { .. })
        ));
        assert_eq!(
            log.storage(1).unwrap().last_index().unwrap(),
            0,
            "nothing half-applied"
        );
        let bad = Config {
            segment_bytes: 1000,
            ..cfg()
        };
        assert!(matches!(
            open(&dev, bad).await,
            Err(RaftLogError::Config {
                key: "raftlog.segment_bytes",
                ..
            })
        ));
        let small = Rc::new(SimDevice::new(2 * SEG, 18));
        assert!(
            open(&small, cfg()).await.is_err(),
            "two segments are too few"
        );
    });
}
