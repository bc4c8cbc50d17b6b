//! The in-memory index: key -> where the value lives and the item's metadata.

use hashbrown::HashTable;
use xxhash_rust::xxh3::xxh3_64;

/// One item. 32 bytes; the key is held by the map (a boxed slice: 16 bytes + the key bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Region offset of the item's record.
    pub offset: u64,
    /// The item's CAS unique; also the seq of the record that wrote it unless GC moved it.
    pub cas: u64,
    pub value_len: u32,
    pub flags: u32,
    /// Absolute unix seconds; 0 = never.
    pub exptime: u32,
    /// [`STALE`], [`WIN_SENT`] and [`FETCHED`].
    pub bits: u8,
    /// When the item was written or last read ([`Atime`]); with [`FETCHED`] this answers
    /// mg's `l` and `h`. Fits in the padding the fields above leave.
    pub atime: Atime,
}

const _: () = assert!(std::mem::size_of::<IndexEntry>() <= 32);

/// Invalidated by `md ... I` or `ms ... I`: served with the X flag until rewritten. The only
/// bit that is persisted (record header byte 43, snapshots).
pub const STALE: u8 = 1;
/// A client was handed the win token (W) for this item; others get Z. Not persisted.
pub const WIN_SENT: u8 = 2;
/// The item was read since it was written (memcached's ITEM_FETCHED, mg's `h`). Not persisted:
/// like memcached's LRU state it is the answering replica's own, and a restart forgets it.
pub const FETCHED: u8 = 4;

/// Unix seconds modulo 2^24, the three bytes an index entry has left: ages up to 2^23 s (97
/// days) read exactly, older ones modulo 2^24 s. Access times are per replica and in memory
/// only; recovery and snapshots start them at the record's write time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Atime([u8; 3]);

impl Atime {
    const MASK: u32 = (1 << 24) - 1;

    pub fn bytes(self) -> [u8; 3] {
        self.0
    }

    pub fn from_bytes(b: [u8; 3]) -> Atime {
        Atime(b)
    }

    pub fn at(unix_s: u32) -> Atime {
        let b = unix_s.to_le_bytes();
        Atime([b[0], b[1], b[2]])
    }

    /// Seconds from this time to `now` (0 if `now` is earlier: clocks of replicas differ).
    pub fn age_s(self, now: u32) -> u32 {
        let [a, b, c] = self.0;
        let then = u32::from_le_bytes([a, b, c, 0]);
        let age = now.wrapping_sub(then) & Self::MASK;
        // An age in the upper half is a time a little in the future (a leader's clock ahead of
        // this replica's), not one 100+ days ago.
        if age > Self::MASK / 2 {
            0
        } else {
            age
        }
    }
}

/// key -> entry: a hash table whose slots an index checkpoint can visit by position while the
/// shard keeps serving (see [`Index::bucket`] and [`Index::moves`]).
pub struct Index {
    table: HashTable<(Box<[u8]>, IndexEntry)>,
    moves: u64,
}

/// The hash the index files keys under (keel-bulk sorts a table's entries by it).
pub fn hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

impl Default for Index {
    fn default() -> Self {
        Index::with_capacity(0)
    }
}

impl Index {
    pub fn with_capacity(n: usize) -> Index {
        Index {
            table: HashTable::with_capacity(n),
            moves: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub fn get(&self, key: &[u8]) -> Option<&IndexEntry> {
        self.table
            .find(hash(key), |(k, _)| **k == *key)
            .map(|(_, e)| e)
    }

    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut IndexEntry> {
        self.table
            .find_mut(hash(key), |(k, _)| **k == *key)
            .map(|(_, e)| e)
    }

    /// Sets `key`'s entry; the one it replaces, if any.
    pub fn insert(&mut self, key: Box<[u8]>, e: IndexEntry) -> Option<IndexEntry> {
        let h = hash(&key);
        if let Some((_, slot)) = self.table.find_mut(h, |(k, _)| **k == *key) {
            return Some(std::mem::replace(slot, e));
        }
        // The table rehashes (grows, or reorganizes in place) only when an insert finds no
        // room left, and only then do entries change buckets: counted, for a checkpoint that
        // walks the buckets (it starts again). Counted whenever it may happen (an insert into
        // a tombstone needs no room, but is counted too).
        if self.table.len() == self.table.capacity() {
            self.moves += 1;
        }
        self.table.insert_unique(h, (key, e), |(k, _)| hash(k));
        None
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<IndexEntry> {
        match self.table.find_entry(hash(key), |(k, _)| **k == *key) {
            Ok(slot) => Some(slot.remove().0 .1),
            Err(_) => None,
        }
    }

    /// Keeps the entries `keep` says yes to (removal never moves another entry).
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8], &mut IndexEntry) -> bool) {
        self.table.retain(|(k, e)| keep(k, e));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &IndexEntry)> {
        self.table.iter().map(|(k, e)| (&k[..], e))
    }

    /// Positions [`Index::bucket`] takes: `0..buckets()`.
    pub fn buckets(&self) -> usize {
        self.table.num_buckets()
    }

    /// The entry in bucket `i`, if one is there.
    pub fn bucket(&self, i: usize) -> Option<(&[u8], &IndexEntry)> {
        self.table.get_bucket(i).map(|(k, e)| (&k[..], e))
    }

    /// How many times entries may have changed buckets so far. A walk of the buckets during
    /// which this did not change saw every entry that stayed in the table throughout.
    pub fn moves(&self) -> u64 {
        self.moves
    }
}

impl IndexEntry {
    pub fn expired(&self, now: u32) -> bool {
        self.exptime != 0 && self.exptime <= now
    }
}

/// memcached's exptime rule: 0 never expires, negative is already expired, up to 30 days is
/// relative to now, anything larger is an absolute unix time. `None` = already expired.
pub fn absolute_exptime(exptime: i64, now: u32) -> Option<u32> {
    const RELATIVE_MAX: i64 = 60 * 60 * 24 * 30;
    match exptime {
        0 => Some(0),
        e if e < 0 => None,
        e if e <= RELATIVE_MAX => Some((now as i64 + e).min(u32::MAX as i64) as u32),
        e if e <= now as i64 => None,
        e => Some(e.min(u32::MAX as i64) as u32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exptime_follows_memcached() {
        let now = 1_800_000_000;
        assert_eq!(absolute_exptime(0, now), Some(0));
        assert_eq!(absolute_exptime(-1, now), None);
        assert_eq!(absolute_exptime(10, now), Some(now + 10));
        assert_eq!(absolute_exptime(2_592_000, now), Some(now + 2_592_000));
        assert_eq!(
            absolute_exptime(2_592_001, now),
            None,
            "absolute time in 1970"
        );
        assert_eq!(absolute_exptime(now as i64 + 5, now), Some(now + 5));
        assert_eq!(absolute_exptime(i64::MAX, now), Some(u32::MAX));
    }

    #[test]
    fn atime_ages_across_the_wrap() {
        let now = 1_800_000_000;
        assert_eq!(Atime::at(now).age_s(now), 0);
        assert_eq!(Atime::at(now - 75).age_s(now), 75);
        // The 24-bit counter wraps between the two times.
        let wrap = (now | 0xff_ffff) + 1;
        assert_eq!(Atime::at(wrap - 10).age_s(wrap + 5), 15);
        // A time slightly ahead (another replica's clock) reads as 0.
        assert_eq!(Atime::at(now + 3).age_s(now), 0);
    }
}

/// Measures the index's memory per key (run: `cargo test --release -p keel-node
/// index_memory_per_key -- --ignored --nocapture`); a figure, not a pass/fail check.
#[cfg(test)]
#[test]
#[ignore]
fn index_memory_per_key() {
    fn rss_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        statm
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 4096
    }
    let n = 2_000_000u64;
    let before = rss_bytes();
    let mut index = Index::default();
    for i in 0..n {
        let key = format!("feature:{i:012}");
        let e = IndexEntry {
            offset: i * 64,
            cas: i,
            value_len: 100,
            flags: 0,
            exptime: 0,
            bits: 0,
            atime: Atime::at(0),
        };
        index.insert(key.into_bytes().into_boxed_slice(), e);
    }
    let per_key = (rss_bytes() - before) as f64 / n as f64;
    println!("{n} keys of 20 bytes: {per_key:.1} bytes per key (entry {} + key pointer 16 + key 20 + table overhead)", std::mem::size_of::<IndexEntry>());
    assert_eq!(index.len() as u64, n);
}
