//! The DRAM value cache of a shard: recently written and read values, bounded in bytes, evicted
//! in CLOCK order (a FIFO that gives referenced entries a second pass).
//!
//! Values are found by their item's CAS unique, which names one version of one item in the
//! shard (the Raft entry index, the op's place in the entry and the partition, see
//! `replica::command::cas_of`): a lookup compares one integer, never a key held elsewhere in
//! memory, and an old version can never be served for a new one.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

struct Slot {
    value: Arc<[u8]>,
    referenced: bool,
}

/// What an entry costs beyond its value bytes: the map's slot, its clock entry and the value's
/// reference counts.
const ENTRY_OVERHEAD: usize = 48;

pub struct Cache {
    map: HashMap<u64, Slot, BuildHasherDefault<CasHasher>>,
    clock: VecDeque<u64>,
    bytes: usize,
    bytes_max: usize,
    pub hits: u64,
    pub misses: u64,
}

impl Cache {
    pub fn new(bytes_max: usize) -> Cache {
        Cache {
            map: HashMap::default(),
            clock: VecDeque::new(),
            bytes: 0,
            bytes_max,
            hits: 0,
            misses: 0,
        }
    }

    /// The cached value of the item version `cas`.
    pub fn get(&mut self, cas: u64) -> Option<Arc<[u8]>> {
        match self.map.get_mut(&cas) {
            Some(s) => {
                s.referenced = true;
                self.hits += 1;
                Some(s.value.clone())
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    pub fn insert(&mut self, cas: u64, value: Arc<[u8]>) {
        // One value may use at most an eighth of the cache, so a stream of large values cannot
        // flush every hot small one.
        if value.len() > self.bytes_max / 8 {
            return;
        }
        let cost = value.len() + ENTRY_OVERHEAD;
        let old = self.map.insert(
            cas,
            Slot {
                value,
                referenced: false,
            },
        );
        match old {
            // The same version again (two reads of it finished): its clock entry stands. A
            // second one would never be stale, so the clock could only grow.
            Some(old) => self.bytes -= old.value.len() + ENTRY_OVERHEAD,
            None => self.clock.push_back(cas),
        }
        self.bytes += cost;
        self.evict();
    }

    /// Drops the version `cas` (overwritten, deleted or expired), freeing its bytes now.
    pub fn remove(&mut self, cas: u64) {
        if let Some(old) = self.map.remove(&cas) {
            self.bytes -= old.value.len() + ENTRY_OVERHEAD;
        }
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.clock.clear();
        self.bytes = 0;
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn evict(&mut self) {
        while self.bytes > self.bytes_max {
            let Some(cas) = self.clock.pop_front() else {
                break;
            };
            let Some(slot) = self.map.get_mut(&cas) else {
                continue; // removed since
            };
            if slot.referenced {
                slot.referenced = false;
                self.clock.push_back(cas);
                continue;
            }
            self.bytes -= slot.value.len() + ENTRY_OVERHEAD;
            self.map.remove(&cas);
        }
        // Removed versions leave their clock entries behind; keep the queue proportional to
        // the map.
        if self.clock.len() > 2 * self.map.len() + 1024 {
            let map = &self.map;
            self.clock.retain(|c| map.contains_key(c));
        }
    }
}

/// A CAS unique's hash: its low bits are the partition and its high bits the Raft index, so
/// they are mixed (murmur3's finalizer) before the table uses them.
#[derive(Default)]
pub struct CasHasher(u64);

impl Hasher for CasHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = x;
    }

    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: usize = ENTRY_OVERHEAD;

    #[test]
    fn bounded_and_version_checked() {
        let mut c = Cache::new(8 * (50 + E));
        for i in 0..100u64 {
            c.insert(i, vec![0u8; 50].into());
            assert!(c.bytes() <= 8 * (50 + E));
        }
        assert!(c.get(99).is_some());
        assert!(c.get(98 << 24).is_none(), "another version is not served");
        assert!(c.get(0).is_none(), "oldest evicted");
    }

    #[test]
    fn the_same_version_again_keeps_one_clock_entry() {
        let mut c = Cache::new(1 << 20);
        for _ in 0..10_000 {
            c.insert(7, vec![0u8; 10].into());
        }
        assert_eq!(
            c.clock.len(),
            1,
            "re-inserting one version must not grow the clock"
        );
        assert_eq!(c.bytes(), 10 + E);
        c.insert(8, vec![0u8; 20].into());
        c.remove(7);
        assert_eq!(c.bytes(), 20 + E);
        assert!(c.get(8).is_some());
        assert!(c.get(7).is_none());
    }

    #[test]
    fn referenced_entries_survive_one_pass() {
        let mut c = Cache::new(8 * (30 + E));
        c.insert(1, vec![0u8; 30].into());
        for i in 0..20u64 {
            assert!(c.get(1).is_some(), "hot entry evicted at {i}");
            c.insert(10 + i, vec![0u8; 30].into());
        }
    }

    #[test]
    fn cas_hashes_spread_over_the_table() {
        // CAS uniques of one partition differ only in their high bits; the table must still
        // see distinct low bits (it indexes by them).
        let low: std::collections::HashSet<u64> = (0..1024u64)
            .map(|i| {
                let mut h = CasHasher::default();
                h.write_u64(i << 24 | 5);
                h.finish() & 1023
            })
            .collect();
        assert!(low.len() > 600, "only {} of 1024 buckets used", low.len());
    }
}
