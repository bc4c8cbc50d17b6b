//! The in-memory state of every group on the shard, and the one function that changes it
//! ([`Groups::apply`]). Live mutations and recovery both go through `apply`, so what recovery
//! rebuilds is what memory held, by construction. No I/O here.

use std::collections::{BTreeMap, VecDeque};

use raft::eraftpb::{ConfState, Entry, HardState};

use crate::format::{Rec, Record};

/// Memory charged per entry beyond its data and context (the `Entry` struct and our bookkeeping).
const ENTRY_OVERHEAD_BYTES: u64 = std::mem::size_of::<Entry>() as u64 + 4;

#[derive(Clone, Debug, Default)]
pub struct Group {
    /// Entries after `compacted_index`, contiguous by index.
    pub entries: VecDeque<Entry>,
    /// The segment each entry's record was written to, parallel to `entries`: a segment is
    /// reusable once no group still holds an entry written there.
    pub entry_segs: VecDeque<u32>,
    pub hs: HardState,
    pub conf: ConfState,
    /// Entries up to here are gone (compacted or covered by a snapshot); its term stays known.
    pub compacted_index: u64,
    pub compacted_term: u64,
}

impl Group {
    pub fn first_index(&self) -> u64 {
        self.compacted_index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.entries
            .back()
            .map_or(self.compacted_index, |e| e.index)
    }

    /// Term of `index` if it is the compacted point or a held entry.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.compacted_index {
            return Some(self.compacted_term);
        }
        if index < self.first_index() || index > self.last_index() {
            return None;
        }
        Some(self.entries[(index - self.first_index()) as usize].term)
    }
}

fn entry_bytes(e: &Entry) -> u64 {
    (e.data.len() + e.context.len()) as u64 + ENTRY_OVERHEAD_BYTES
}

#[derive(Default)]
pub struct Groups {
    pub map: BTreeMap<u64, Group>,
    /// Per segment: entries held in memory whose record lives in that segment.
    pub seg_live: Vec<u64>,
    pub entries_bytes: u64,
}

impl Groups {
    pub fn new(segments: usize) -> Self {
        Groups {
            map: BTreeMap::new(),
            seg_live: vec![0; segments],
            entries_bytes: 0,
        }
    }

    /// Applies one record written to segment `seg`. Errors name what makes the record
    /// inapplicable; live callers validate first, so for them an error is a bug.
    ///
    /// `recovering`: replay starts at the oldest live segment, whose state set may predate
    /// compactions that freed the segments before it. Until the replay reaches those compaction
    /// records, a group's first replayed entries may continue entries that lived in freed
    /// segments, so an entry or compaction past the end starts the group's entries afresh.
    /// Whatever such a gap leaves behind is caught by [`Groups::check_contiguous`] at the end.
    pub fn apply(&mut self, r: &Record, seg: u32, recovering: bool) -> Result<(), &'static str> {
        if let Rec::Create(conf) = &r.rec {
            if self.map.contains_key(&r.group) {
                return Err("create of a group that exists");
            }
            let g = Group {
                conf: conf.clone(),
                ..Group::default()
            };
            self.map.insert(r.group, g);
            return Ok(());
        }
        if let Rec::State { .. } = &r.rec {
            self.map.entry(r.group).or_default();
        }
        if let Rec::Drop = &r.rec {
            let Some(mut g) = self.map.remove(&r.group) else {
                // Recovery may start at a segment whose state set no longer names the group.
                return match recovering {
                    true => Ok(()),
                    false => Err("drop of a group that does not exist"),
                };
            };
            drop_back(&mut g, 0, &mut self.seg_live, &mut self.entries_bytes);
            return Ok(());
        }
        let Some(g) = self.map.get_mut(&r.group) else {
            return Err("record for a group that does not exist");
        };
        let live = &mut self.seg_live;
        let bytes = &mut self.entries_bytes;
        match &r.rec {
            Rec::Create(_) | Rec::Drop => unreachable!("handled above"),
            Rec::Entry(e) => {
                if e.index < g.first_index() {
                    return Err("entry at or below the compacted index");
                }
                let held_from = g.entries.front().map_or(g.first_index(), |f| f.index);
                if recovering && (e.index > g.last_index() + 1 || e.index < held_from) {
                    drop_back(g, 0, live, bytes);
                } else if e.index > g.last_index() + 1 {
                    return Err("entry leaves a gap after the last index");
                } else {
                    // Raft §5.3: an entry at an index we hold replaces it and all after it.
                    let keep = (e.index - held_from) as usize;
                    drop_back(g, keep, live, bytes);
                }
                g.entries.push_back(e.clone());
                g.entry_segs.push_back(seg);
                live[seg as usize] += 1;
                *bytes += entry_bytes(e);
            }
            Rec::HardState(hs) => g.hs = hs.clone(),
            Rec::ConfState(c) => g.conf = c.clone(),
            Rec::Snapshot { index, term, conf } => {
                drop_back(g, 0, live, bytes);
                g.compacted_index = *index;
                g.compacted_term = *term;
                g.conf = conf.clone();
                // As raft-rs's MemStorage does: a restart must find commit >= the snapshot, or
                // raft-rs refuses the hard state as out of range.
                g.hs.term = g.hs.term.max(*term);
                g.hs.commit = g.hs.commit.max(*index);
            }
            Rec::Compact { index, term } => {
                if *index > g.last_index() && !recovering {
                    return Err("compact beyond the last index");
                }
                if *index < g.compacted_index {
                    return Err("compact below the compacted index");
                }
                compact_to(g, *index, *term, live, bytes);
            }
            Rec::State {
                hs,
                conf,
                compacted_index,
                compacted_term,
            } => {
                g.hs = hs.clone();
                g.conf = conf.clone();
                if *compacted_index >= g.compacted_index {
                    compact_to(g, *compacted_index, *compacted_term, live, bytes);
                }
            }
        }
        let g = &self.map[&r.group];
        debug_assert!(recovering || g.entries.front().is_none_or(|e| e.index == g.first_index()));
        Ok(())
    }

    /// After recovery: every group's entries start right after its compacted index. Returns the
    /// first group that has a hole.
    pub fn check_contiguous(&self) -> Result<(), u64> {
        for (&id, g) in &self.map {
            if g.entries
                .front()
                .is_some_and(|e| e.index != g.first_index())
            {
                return Err(id);
            }
        }
        Ok(())
    }
}

/// Keeps the first `keep` entries of `g`.
fn drop_back(g: &mut Group, keep: usize, live: &mut [u64], bytes: &mut u64) {
    while g.entries.len() > keep {
        let e = g.entries.pop_back().expect("len > keep");
        let s = g.entry_segs.pop_back().expect("parallel to entries");
        live[s as usize] -= 1;
        *bytes -= entry_bytes(&e);
    }
}

/// Drops entries <= `index` and remembers (index, term) as the compacted point.
fn compact_to(g: &mut Group, index: u64, term: u64, live: &mut [u64], bytes: &mut u64) {
    while g.entries.front().is_some_and(|e| e.index <= index) {
        let e = g.entries.pop_front().expect("checked");
        let s = g.entry_segs.pop_front().expect("parallel to entries");
        live[s as usize] -= 1;
        *bytes -= entry_bytes(&e);
    }
    g.compacted_index = index;
    g.compacted_term = term;
}
