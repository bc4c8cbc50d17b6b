//! The DRAM value cache of a shard: recently written and read values, bounded in bytes, evicted
//! in CLOCK order (a FIFO that gives referenced entries a second pass).

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use xxhash_rust::xxh3::Xxh3Builder;

struct Slot {
    cas: u64,
    value: Arc<[u8]>,
    referenced: bool,
}

pub struct Cache {
    /// The map and the clock share each key's one allocation.
    map: HashMap<Rc<[u8]>, Slot, Xxh3Builder>,
    clock: VecDeque<(Rc<[u8]>, u64)>,
    bytes: usize,
    bytes_max: usize,
    pub hits: u64,
    pub misses: u64,
}

impl Cache {
    pub fn new(bytes_max: usize) -> Cache {
        Cache {
            map: HashMap::with_hasher(Xxh3Builder::new()),
            clock: VecDeque::new(),
            bytes: 0,
            bytes_max,
            hits: 0,
            misses: 0,
        }
    }

    /// The cached value of `key` if it is the version `cas`.
    pub fn get(&mut self, key: &[u8], cas: u64) -> Option<Arc<[u8]>> {
        match self.map.get_mut(key) {
            Some(s) if s.cas == cas => {
                s.referenced = true;
                self.hits += 1;
                Some(s.value.clone())
            }
            _ => {
                self.misses += 1;
                None
            }
        }
    }

    pub fn insert(&mut self, key: &[u8], cas: u64, value: Arc<[u8]>) {
        // One value may use at most an eighth of the cache, so a stream of large values cannot
        // flush every hot small one.
        if value.len() > self.bytes_max / 8 {
            self.remove(key);
            return;
        }
        let cost = value.len() + key.len();
        if let Some(s) = self.map.get_mut(key) {
            if s.cas == cas {
                // The same version again (two reads of it finished): its clock entry stands. A
                // second one would never be stale, so the clock could only grow.
                self.bytes = self.bytes - s.value.len() + value.len();
                s.value = value;
                self.evict();
                return;
            }
        }
        // An overwrite (the common case under a write load) reuses the key already held.
        let key: Rc<[u8]> = match self.map.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => key.into(),
        };
        if let Some(old) = self.map.insert(
            key.clone(),
            Slot {
                cas,
                value,
                referenced: false,
            },
        ) {
            self.bytes -= old.value.len() + key.len();
        }
        self.bytes += cost;
        self.clock.push_back((key, cas));
        self.evict();
    }

    pub fn remove(&mut self, key: &[u8]) {
        if let Some(old) = self.map.remove(key) {
            self.bytes -= old.value.len() + key.len();
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
            let Some((key, cas)) = self.clock.pop_front() else {
                break;
            };
            let Some(slot) = self.map.get_mut(&*key) else {
                continue;
            };
            if slot.cas != cas {
                continue; // a newer version has its own clock entry
            }
            if slot.referenced {
                slot.referenced = false;
                self.clock.push_back((key, cas));
                continue;
            }
            self.bytes -= slot.value.len() + key.len();
            self.map.remove(&*key);
        }
        // Overwrites leave stale clock entries behind; keep the queue proportional to the map.
        if self.clock.len() > 2 * self.map.len() + 1024 {
            let map = &self.map;
            self.clock
                .retain(|(k, c)| map.get(&**k).is_some_and(|s| s.cas == *c));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_version_checked() {
        let mut c = Cache::new(8 * 100);
        for i in 0..100u32 {
            c.insert(&i.to_le_bytes(), i as u64, vec![0u8; 50].into());
            assert!(c.bytes() <= 800);
        }
        assert!(c.get(&99u32.to_le_bytes(), 99).is_some());
        assert!(
            c.get(&99u32.to_le_bytes(), 98).is_none(),
            "old version must not be served"
        );
        assert!(c.get(&0u32.to_le_bytes(), 0).is_none(), "oldest evicted");
    }

    #[test]
    fn the_same_version_again_keeps_one_clock_entry() {
        let mut c = Cache::new(1 << 20);
        for _ in 0..10_000 {
            c.insert(b"k", 7, vec![0u8; 10].into());
        }
        assert_eq!(c.clock.len(), 1, "re-inserting one version must not grow the clock");
        assert_eq!(c.bytes(), 11);
        c.insert(b"k", 8, vec![0u8; 20].into());
        assert_eq!(c.bytes(), 21);
        assert!(c.get(b"k", 8).is_some());
    }

    #[test]
    fn referenced_entries_survive_one_pass() {
        let mut c = Cache::new(8 * 30);
        c.insert(b"hot", 1, vec![0u8; 27].into());
        for i in 0..20u32 {
            assert!(c.get(b"hot", 1).is_some(), "hot key evicted at {i}");
            c.insert(&i.to_le_bytes(), 10 + i as u64, vec![0u8; 26].into());
        }
    }
}
