//! Property: after random appends (with truncations), hard states and compactions across several
//! groups, and a crash at a random point with batches in flight, the recovered state is the
//! model's state at some LSN at or after the last one reported durable.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use keel_nvme::testing::SimDevice;
use proptest::prelude::*;
use raft::eraftpb::{Entry, HardState};
use raft::Storage;

use super::*;

#[derive(Clone, Debug)]
enum Op {
    /// Append `count` entries to group `g`, starting `back` entries before the end (0 = plain
    /// append; more = replace a suffix, Raft §5.3).
    Append {
        g: u64,
        back: u8,
        count: u8,
        len: u16,
    },
    /// A hard state; `lazy` writes it `Flush::WithNext` (it rides with a later batch).
    HardState { g: u64, commit: u8, lazy: bool },
    /// Compact group `g` to a fraction of the way from its compacted index to its last index.
    Compact { g: u64, frac: u8 },
    /// Let the flusher and the device make progress.
    Pause { micros: u16 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..3u64, 0..4u8, 1..5u8, 1..3000u16)
            .prop_map(|(g, back, count, len)| Op::Append { g, back, count, len }),
        1 => (0..3u64, any::<u8>(), any::<bool>())
            .prop_map(|(g, commit, lazy)| Op::HardState { g, commit, lazy }),
        2 => (0..3u64, any::<u8>()).prop_map(|(g, frac)| Op::Compact { g, frac }),
        2 => (0..800u16).prop_map(|micros| Op::Pause { micros }),
    ]
}

#[derive(Clone, Debug, Default, PartialEq)]
struct ModelGroup {
    entries: Vec<Entry>,
    hs: HardState,
    compacted: u64,
    compacted_term: u64,
}

impl ModelGroup {
    fn last(&self) -> u64 {
        self.entries.last().map_or(self.compacted, |e| e.index)
    }
}

type Model = BTreeMap<u64, ModelGroup>;

fn observed(log: &RaftLog<SimDevice>) -> Model {
    log.groups()
        .into_iter()
        .map(|g| {
            let s = log.storage(g).unwrap();
            let first = s.first_index().unwrap();
            let mg = ModelGroup {
                entries: all_entries(log, g),
                hs: s.initial_state().unwrap().hard_state,
                compacted: first - 1,
                compacted_term: s.term(first - 1).unwrap(),
            };
            (g, mg)
        })
        .collect()
}

async fn play(ops: Vec<Op>, seed: u64) {
    // Four small segments: long runs fill the log, so compaction, segment reuse and Full all
    // happen.
    let dev = Rc::new(SimDevice::new(4 * SEG, seed));
    dev.set_latency(Duration::from_micros(150), Duration::from_micros(300));
    let log = open(&dev, cfg()).await.unwrap();
    let _f = flusher(&log);
    let mut model = Model::new();
    // (lsn after the step, model after the step)
    let mut history: Vec<(u64, Model)> = vec![(0, model.clone())];
    let mut term = 1;
    for g in 0..3 {
        log.create_group(g, conf(&[1])).unwrap();
        model.insert(g, ModelGroup::default());
        history.push((log.last_lsn(), model.clone()));
    }
    for op in ops {
        match op {
            Op::Append {
                g,
                back,
                count,
                len,
            } => {
                let m = &model[&g];
                let start = (m.last() + 1)
                    .saturating_sub(back as u64)
                    .max(m.compacted + 1);
                term += (back > 0) as u64;
                let ents: Vec<_> = (start..start + count as u64)
                    .map(|i| entry(i, term, &data(g, i, term, len as usize)))
                    .collect();
                // One entry per call so every record's LSN is known exactly; the first call
                // replaces the suffix.
                for e in ents {
                    match log.append(g, std::slice::from_ref(&e)) {
                        Ok(lsn) => {
                            let m = model.get_mut(&g).unwrap();
                            m.entries.retain(|x| x.index < e.index);
                            m.entries.push(e);
                            history.push((lsn, model.clone()));
                        }
                        Err(RaftLogError::Full { .. }) => break,
                        Err(e) => panic!("append: {e}"),
                    }
                }
                assert_eq!(
                    observed(&log),
                    model,
                    "memory follows every mutation at once"
                );
                continue;
            }
            Op::HardState { g, commit, lazy } => {
                let hs = HardState {
                    term,
                    commit: commit as u64,
                    ..Default::default()
                };
                let flush = if lazy { Flush::WithNext } else { Flush::Now };
                match log.set_hard_state(g, &hs, flush) {
                    Ok(_) => {}
                    Err(RaftLogError::Full { .. }) => continue,
                    Err(e) => panic!("hard state: {e}"),
                }
                model.get_mut(&g).unwrap().hs = hs;
            }
            Op::Compact { g, frac } => {
                let m = model.get_mut(&g).unwrap();
                let span = m.last() - m.compacted;
                let to = m.compacted + span * frac as u64 / 255;
                if to <= m.compacted {
                    continue;
                }
                match log.compact(g, to) {
                    Ok(_) => {}
                    Err(RaftLogError::Full { .. }) => continue,
                    Err(e) => panic!("compact: {e}"),
                }
                let m = model.get_mut(&g).unwrap();
                m.compacted_term = m.entries.iter().find(|e| e.index == to).unwrap().term;
                m.entries.retain(|e| e.index > to);
                m.compacted = to;
            }
            Op::Pause { micros } => {
                glommio::timer::sleep(Duration::from_micros(micros as u64)).await;
                continue;
            }
        }
        assert_eq!(
            observed(&log),
            model,
            "memory follows every mutation at once"
        );
        // Segment switches add state records; the step's own record is the last LSN.
        history.push((log.last_lsn(), model.clone()));
    }
    let durable = log.durable_lsn();
    let img = dev.crash_image();
    let d = Rc::new(SimDevice::from_image(img, seed ^ 1));
    let back = open(&d, cfg()).await.unwrap();
    let recovered = back.last_lsn();
    assert!(
        recovered >= durable,
        "durable {durable}, recovered only {recovered}"
    );
    let want = &history
        .iter()
        .rev()
        .find(|(lsn, _)| *lsn <= recovered)
        .expect("history starts at 0")
        .1;
    assert_eq!(
        &observed(&back),
        want,
        "recovered LSN {recovered}, durable {durable}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn recovered_state_is_the_model_at_a_durable_or_later_lsn(
        ops in proptest::collection::vec(op(), 1..200),
        seed in any::<u64>(),
    ) {
        run(move || play(ops, seed));
    }
}
