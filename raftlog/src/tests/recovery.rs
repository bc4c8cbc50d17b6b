//! Recovery: what survives a reopen, and where the log ends after a torn or damaged tail.

use std::rc::Rc;

use keel_nvme::testing::SimDevice;
use raft::eraftpb::{HardState, SnapshotMetadata};
use raft::{Error, StorageError};
use raft::{GetEntriesContext, Storage};

use super::*;

#[test]
fn entries_hard_state_and_conf_state_survive_reopen() {
    run(|| async {
        let dev = Rc::new(SimDevice::new(4 * SEG, 1));
        let log = open(&dev, cfg()).await.unwrap();
        let _f = flusher(&log);
        log.create_group(7, conf(&[1, 2, 3])).unwrap();
        log.create_group(9, conf(&[1])).unwrap();
        let ents: Vec<_> = (1..=20).map(|i| entry(i, 1, &data(7, i, 1, 100))).collect();
        log.append(7, &ents).unwrap();
        let hs = HardState {
            term: 3,
            vote: 2,
            commit: 15,
            ..Default::default()
        };
        log.set_hard_state(7, &hs, Flush::Now).unwrap();
        log.set_conf_state(7, &conf(&[1, 2, 3, 4])).unwrap();
        let mut meta = SnapshotMetadata {
            index: 40,
            term: 5,
            ..Default::default()
        };
        meta.set_conf_state(conf(&[1, 5]));
        let lsn = log.apply_snapshot(9, &meta).unwrap();
        log.durable(lsn).await.unwrap();

        let dev2 = Rc::new(SimDevice::from_image(dev.durable_image(), 2));
        let back = open(&dev2, cfg()).await.unwrap();
        assert_eq!(back.groups(), vec![7, 9]);
        assert_eq!(back.last_lsn(), lsn);
        assert_eq!(all_entries(&back, 7), ents);
        let s7 = back.storage(7).unwrap();
        let st = s7.initial_state().unwrap();
        assert_eq!(st.hard_state, hs);
        assert_eq!(st.conf_state, conf(&[1, 2, 3, 4]));
        let s9 = back.storage(9).unwrap();
        assert_eq!(s9.first_index().unwrap(), 41);
        assert_eq!(s9.last_index().unwrap(), 40);
        assert_eq!(s9.term(40).unwrap(), 5);
        assert_eq!(s9.term(39), Err(Error::Store(StorageError::Compacted)));
        let st9 = s9.initial_state().unwrap();
        assert_eq!(st9.conf_state, conf(&[1, 5]));
        assert_eq!(
            st9.hard_state.commit, 40,
            "commit raised to the snapshot, as MemStorage"
        );
    });
}

#[test]
fn conflicting_suffix_truncation_survives_reopen() {
    // Raft §5.3: a follower's entries that conflict with the leader's are replaced by them.
    run(|| async {
        let dev = Rc::new(SimDevice::new(4 * SEG, 3));
        let log = open(&dev, cfg()).await.unwrap();
        let _f = flusher(&log);
        log.create_group(1, conf(&[1])).unwrap();
        let old: Vec<_> = (1..=10).map(|i| entry(i, 1, &data(1, i, 1, 50))).collect();
        log.append(1, &old).unwrap();
        let new: Vec<_> = (6..=8).map(|i| entry(i, 2, &data(1, i, 2, 70))).collect();
        let lsn = log.append(1, &new).unwrap();
        let want: Vec<_> = old[..5].iter().chain(new.iter()).cloned().collect();
        assert_eq!(
            all_entries(&log, 1),
            want,
            "memory sees the truncation at once"
        );
        log.durable(lsn).await.unwrap();
        let dev2 = Rc::new(SimDevice::from_image(dev.durable_image(), 4));
        let back = open(&dev2, cfg()).await.unwrap();
        assert_eq!(all_entries(&back, 1), want);
        assert_eq!(
            back.storage(1).unwrap().term(9),
            Err(Error::Store(StorageError::Unavailable))
        );
    });
}

#[test]
fn storage_answers_like_mem_storage() {
    run(|| async {
        let dev = Rc::new(SimDevice::new(4 * SEG, 5));
        let log = open(&dev, cfg()).await.unwrap();
        log.create_group(1, conf(&[1])).unwrap();
        let ents: Vec<_> = (1..=6).map(|i| entry(i, i, &[i as u8; 100])).collect();
        log.append(1, &ents).unwrap();
        log.compact(1, 2).unwrap();
        let s = log.storage(1).unwrap();
        let ctx = || GetEntriesContext::empty(false);
        assert_eq!(s.first_index().unwrap(), 3);
        assert_eq!(s.last_index().unwrap(), 6);
        assert_eq!(s.term(2).unwrap(), 2, "the compacted point keeps its term");
        assert_eq!(s.term(1), Err(Error::Store(StorageError::Compacted)));
        assert_eq!(s.term(7), Err(Error::Store(StorageError::Unavailable)));
        assert_eq!(
            s.entries(2, 4, None, ctx()),
            Err(Error::Store(StorageError::Compacted))
        );
        assert_eq!(s.entries(3, 7, None, ctx()).unwrap(), ents[2..6].to_vec());
        assert_eq!(
            s.entries(3, 8, None, ctx()),
            Err(Error::Store(StorageError::Unavailable))
        );
        // max_size as raft-rs's limit_size: always at least one entry.
        let one = protobuf::Message::compute_size(&ents[2]) as u64;
        assert_eq!(s.entries(3, 7, Some(0), ctx()).unwrap().len(), 1);
        assert_eq!(s.entries(3, 7, Some(one * 2), ctx()).unwrap().len(), 2);
        assert_eq!(s.entries(3, 7, Some(one * 2 - 1), ctx()).unwrap().len(), 1);
        assert_eq!(
            s.snapshot(0, 2),
            Err(Error::Store(StorageError::SnapshotTemporarilyUnavailable))
        );
        log.set_snapshot_provider(Rc::new(|g, idx, _to| {
            let mut snap = raft::eraftpb::Snapshot::default();
            snap.mut_metadata().index = g * 100 + idx;
            Ok(snap)
        }));
        assert_eq!(s.snapshot(4, 2).unwrap().get_metadata().index, 104);
        assert!(matches!(
            log.storage(99),
            Err(RaftLogError::UnknownGroup(99))
        ));
        assert!(matches!(
            log.append(1, &[entry(9, 1, b"x")]),
            Err(RaftLogError::NotContiguous {
                expected: 7,
                got: 9,
                ..
            })
        ));
        assert!(matches!(
            log.append(1, &[entry(2, 1, b"x")]),
            Err(RaftLogError::Compacted { index: 2, .. })
        ));
        assert!(matches!(
            log.compact(1, 7),
            Err(RaftLogError::CompactBeyondLast {
                index: 7,
                last: 6,
                ..
            })
        ));
    });
}

/// Builds a log whose tail is a series of separately flushed batches, then reopens it cut at
/// every byte offset of that tail, as a crash in the middle of the last writes would leave it.
#[test]
fn recovery_after_truncation_at_every_byte_of_the_tail() {
    run(|| async {
        let dev = Rc::new(SimDevice::new(4 * SEG, 6));
        let log = open(&dev, cfg()).await.unwrap();
        let f = flusher(&log);
        log.create_group(1, conf(&[1])).unwrap();
        let base: Vec<_> = (1..=5).map(|i| entry(i, 1, &data(1, i, 1, 300))).collect();
        log.durable(log.append(1, &base).unwrap()).await.unwrap();
        let before = dev.durable_image();
        // (end of the bytes written so far, entries durable by then)
        let mut batches = Vec::new();
        let mut all = base.clone();
        for (k, len) in [100usize, 900, 5000, 40, 2500].into_iter().enumerate() {
            let i = 6 + k as u64;
            let e = entry(i, 1, &data(1, i, 1, len));
            all.push(e.clone());
            log.durable(log.append(1, &[e]).unwrap()).await.unwrap();
            let img = dev.durable_image();
            let end = img.iter().zip(&before).rposition(|(a, b)| a != b).unwrap() + 1;
            batches.push((end, all.len()));
        }
        drop(f);
        let full = dev.durable_image();
        let lo = full.iter().zip(&before).position(|(a, b)| a != b).unwrap();
        let hi = batches.last().unwrap().0;
        let quick = Config {
            batch_bytes_max: 1,
            ..cfg()
        };
        for cut in lo..=hi {
            let mut img = full.clone();
            img[cut..hi].copy_from_slice(&before[cut..hi]);
            let d = Rc::new(SimDevice::from_image(img, cut as u64));
            let back = open(&d, quick.clone())
                .await
                .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            let got = all_entries(&back, 1);
            let durable = batches.iter().filter(|b| b.0 <= cut).map(|b| b.1).max();
            assert!(
                got.len() >= durable.unwrap_or(base.len()),
                "cut at {cut}: lost entries"
            );
            assert_eq!(
                got[..],
                all[..got.len()],
                "cut at {cut}: entries invented or changed"
            );
            // The log takes appends after the torn tail, and they survive another reopen.
            let next = entry(got.len() as u64 + 1, 2, b"after the crash");
            let task = flusher(&back);
            back.durable(back.append(1, std::slice::from_ref(&next)).unwrap())
                .await
                .unwrap();
            drop(task);
            let d2 = Rc::new(SimDevice::from_image(d.durable_image(), 0));
            let again = open(&d2, quick.clone()).await.unwrap();
            let mut want = got.clone();
            want.push(next);
            assert_eq!(
                all_entries(&again, 1),
                want,
                "cut at {cut}: append after recovery"
            );
        }
    });
}

/// Entries of 3000 bytes: about 20 per 64 KiB segment.
async fn three_segments(
    dev: &Rc<SimDevice>,
) -> (Rc<RaftLog<SimDevice>>, Vec<raft::eraftpb::Entry>) {
    let log = open(dev, cfg()).await.unwrap();
    let _f = flusher(&log);
    log.create_group(1, conf(&[1])).unwrap();
    let ents: Vec<_> = (1..=50)
        .map(|i| entry(i, 1, &data(1, i, 1, 3000)))
        .collect();
    for e in &ents {
        log.append(1, std::slice::from_ref(e)).unwrap();
    }
    log.durable(log.last_lsn()).await.unwrap();
    assert!(
        log.chain().len() >= 2,
        "the test needs an older, full segment"
    );
    (log, ents)
}

#[test]
fn crc_failure_in_the_tail_ends_the_log_there() {
    run(|| async {
        let dev = Rc::new(SimDevice::new(4 * SEG, 7));
        let (log, ents) = three_segments(&dev).await;
        let newest = *log.chain().last().unwrap() as u64;
        let img = dev.durable_image();
        let seg = &img[(newest * SEG) as usize..((newest + 1) * SEG) as usize];
        let last_byte = seg.iter().rposition(|b| *b != 0).unwrap() as u64;
        // A bit inside the last entry's data.
        dev.flip_bit(newest * SEG + last_byte - 10, 3);
        let d = Rc::new(SimDevice::from_image(dev.durable_image(), 8));
        let back = open(&d, cfg()).await.unwrap();
        assert_eq!(all_entries(&back, 1), ents[..49].to_vec());
        assert_eq!(back.last_lsn(), log.last_lsn() - 1);
    });
}

#[test]
fn crc_failure_in_an_older_segment_is_refused() {
    run(|| async {
        let dev = Rc::new(SimDevice::new(4 * SEG, 9));
        let (log, _) = three_segments(&dev).await;
        let oldest = log.chain()[0];
        // The first record of the oldest segment starts right after its header block.
        dev.flip_bit(oldest as u64 * SEG + 4096 + 20, 0);
        let d = Rc::new(SimDevice::from_image(dev.durable_image(), 10));
        match open(&d, cfg()).await {
            Err(RaftLogError::Corrupt {
                segment, offset, ..
            }) => assert_eq!((segment, offset), (oldest, 4096)),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("opened a log with a corrupt older segment"),
        }
    });
}

#[test]
fn padding_shorter_than_a_record_magic_is_skipped() {
    // Regression: a batch whose last record ended 2 bytes before a block boundary left too little
    // padding for a 4-byte zero magic, and recovery read the next batch's first bytes as a bad
    // magic, ending the log early (or refusing an older segment as corrupt).
    run(|| async {
        let dev = Rc::new(SimDevice::new(4 * SEG, 31));
        let log = open(&dev, cfg()).await.unwrap();
        let _f = flusher(&log);
        // The segment's first batch: header block, Create (76 bytes), then this entry of
        // 60 + 3958 bytes ends at 8190.
        log.create_group(1, conf(&[1])).unwrap();
        let first = entry(1, 1, &data(1, 1, 1, 3958));
        log.durable(log.append(1, std::slice::from_ref(&first)).unwrap())
            .await
            .unwrap();
        let second = entry(2, 1, b"starts the next block");
        log.durable(log.append(1, std::slice::from_ref(&second)).unwrap())
            .await
            .unwrap();
        let img = dev.durable_image();
        let seg0 = *log.chain().first().unwrap() as usize * SEG as usize;
        assert_eq!(
            &img[seg0 + 8190..seg0 + 8192],
            &[0, 0],
            "the layout this test relies on"
        );
        assert_eq!(&img[seg0 + 8192..seg0 + 8196], b"KRL1");
        let back = open(&Rc::new(SimDevice::from_image(img, 32)), cfg())
            .await
            .unwrap();
        assert_eq!(all_entries(&back, 1), vec![first, second]);
    });
}

#[test]
fn roll_after_full_compaction_leaves_one_segment_and_ignores_old_damage() {
    // A clean shutdown compacts every group to its checkpoint and rolls: recovery then reads
    // only the new segment, so damage to entries the checkpoint already covers cannot stop it.
    run(|| async {
        let dev = Rc::new(SimDevice::new(4 * SEG, 11));
        let (log, _) = three_segments(&dev).await;
        let _f = flusher(&log);
        let old = log.chain();
        log.set_hard_state(
            1,
            &raft::eraftpb::HardState {
                term: 1,
                vote: 1,
                commit: 50,
                ..Default::default()
            },
            Flush::Now,
        )
        .unwrap();
        log.compact(1, 50).unwrap();
        let lsn = log.roll().unwrap();
        log.durable(lsn).await.unwrap();
        assert_eq!(log.chain().len(), 1, "only the new segment is live");
        for seg in old {
            dev.flip_bit(seg as u64 * SEG + 4096 + 20, 0);
        }
        let d = Rc::new(SimDevice::from_image(dev.durable_image(), 12));
        let back = open(&d, cfg()).await.unwrap();
        let s = back.storage(1).unwrap();
        assert_eq!(s.first_index().unwrap(), 51);
        assert_eq!(s.last_index().unwrap(), 50);
        assert_eq!(s.term(50).unwrap(), 1);
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 50);
    });
}

#[test]
fn a_checkpoint_is_aligned_with_the_log_it_was_taken_from() {
    run(|| async {
        let dev = Rc::new(SimDevice::new(4 * SEG, 3));
        let log = open(&dev, cfg()).await.unwrap();
        let _f = flusher(&log);
        log.create_group(1, conf(&[1])).unwrap();
        let ents: Vec<_> = (1..=10).map(|i| entry(i, 2, &data(1, i, 2, 10))).collect();
        log.append(1, &ents).unwrap();
        let hs = HardState {
            term: 2,
            vote: 1,
            commit: 4,
            ..Default::default()
        };
        log.set_hard_state(1, &hs, Flush::Now).unwrap();
        // Applied beyond the recorded commit: the commit is raised to it.
        log.align_to_checkpoint(1, 7, 2).unwrap();
        assert_eq!(log.hard_state(1).unwrap().commit, 7);
        log.align_to_checkpoint(1, 3, 2).unwrap();
        assert_eq!(log.hard_state(1).unwrap().commit, 7, "never lowered");
        // A snapshot installed and checkpointed that the raftlog never recorded.
        log.align_to_checkpoint(1, 30, 3).unwrap();
        let s = log.storage(1).unwrap();
        assert_eq!((s.first_index().unwrap(), s.term(30).unwrap()), (31, 3));
        assert_eq!(s.initial_state().unwrap().conf_state, conf(&[1]));
        // A checkpoint older than what the log still holds: entries it needs are gone.
        log.append(1, &[entry(31, 3, b"x"), entry(32, 3, b"y")])
            .unwrap();
        log.compact(1, 32).unwrap();
        let e = log.align_to_checkpoint(1, 20, 3).unwrap_err();
        assert!(
            matches!(
                e,
                RaftLogError::CheckpointMismatch {
                    applied: 20,
                    first: 33,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().contains("does not match the checkpoint"),
            "{e}"
        );
        assert!(matches!(
            log.align_to_checkpoint(5, 1, 1),
            Err(RaftLogError::UnknownGroup(5))
        ));
    });
}

#[test]
fn a_dropped_group_stays_gone_after_reopen_and_its_segments_are_reused() {
    // A replica moved to another node: its group is forgotten, entries and all, and the same id
    // can be created again later (the partition moves back) starting afresh.
    run(|| async {
        let dev = Rc::new(SimDevice::new(4 * SEG, 4));
        let log = open(&dev, cfg()).await.unwrap();
        let _f = flusher(&log);
        log.create_group(3, conf(&[1, 2, 3])).unwrap();
        log.create_group(4, conf(&[1])).unwrap();
        let ents: Vec<_> = (1..=30).map(|i| entry(i, 1, &data(3, i, 1, 100))).collect();
        log.append(3, &ents).unwrap();
        log.append(4, &[entry(1, 1, &data(4, 1, 1, 10))]).unwrap();
        let lsn = log.drop_group(3).unwrap();
        assert_eq!(log.groups(), vec![4]);
        assert!(log.storage(3).is_err(), "a dropped group has no storage");
        assert_eq!(
            log.drop_group(3).unwrap(),
            lsn,
            "dropping it again changes nothing"
        );
        log.durable(lsn).await.unwrap();

        let dev2 = Rc::new(SimDevice::from_image(dev.durable_image(), 5));
        let back = open(&dev2, cfg()).await.unwrap();
        let _f2 = flusher(&back);
        assert_eq!(back.groups(), vec![4]);
        assert_eq!(all_entries(&back, 4).len(), 1);
        back.create_group(3, conf(&[]))
            .expect("the id can be created again");
        let s3 = back.storage(3).unwrap();
        assert_eq!(s3.last_index().unwrap(), 0, "it starts empty");
        assert_eq!(s3.initial_state().unwrap().conf_state, conf(&[]));
        // Rolling past the drop: the new segment's state set names only the live groups, and
        // the dropped group's old entries no longer hold their segment.
        let lsn = back.roll().unwrap();
        back.durable(lsn).await.unwrap();
        let dev3 = Rc::new(SimDevice::from_image(dev2.durable_image(), 6));
        let again = open(&dev3, cfg()).await.unwrap();
        assert_eq!(again.groups(), vec![3, 4]);
        assert_eq!(again.storage(3).unwrap().last_index().unwrap(), 0);
    });
}
