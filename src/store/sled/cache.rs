//! Recently read values, kept beside sled so that reading a hot record costs
//! a hash lookup instead of a walk down sled's tree (about 4,400 instructions
//! at 1,000,000 agreements, and a List page reads 50 records).
//!
//! Only the writer changes stored values. After it applies a group it forgets
//! every key the group wrote, counting a write in the key's shard. A reader
//! that missed notes that count before it reads sled, and keeps what it read
//! only if the count has not moved since. So a value read before a write
//! and kept after it cannot happen: either the writer forgets it afterwards,
//! or the reader sees the count moved and does not keep it.
//!
//! Each shard holds two generations. Reads look in both and move a value they
//! find in the older one into the newer one. When the newer one fills half the
//! shard's share of memory, the older one is dropped and the newer one takes
//! its place. Values read again and again stay; the rest go within two turns.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// Shards, each with its own lock: readers on different keys rarely wait.
const SHARDS: usize = 16;
/// Bytes counted for each entry beyond its key and value (the maps' slots,
/// the key's allocation, the value's header).
const ENTRY_OVERHEAD: usize = 96;

pub(super) struct ReadCache {
    shards: Box<[Mutex<Shard>]>,
    /// Most bytes of a shard's newer generation.
    generation_bytes: usize,
}

#[derive(Default)]
struct Shard {
    newer: HashMap<Box<[u8]>, sled::IVec>,
    older: HashMap<Box<[u8]>, sled::IVec>,
    newer_bytes: usize,
    /// Writes the writer has applied to keys of this shard.
    writes: u64,
}

/// What a reader that missed must hand back to [`ReadCache::keep`].
#[derive(Debug)]
pub(super) struct Miss {
    shard: usize,
    writes: u64,
}

impl ReadCache {
    /// A cache of at most about `capacity` bytes; 0 keeps nothing.
    pub fn new(capacity: u64) -> ReadCache {
        let shards = if capacity == 0 { 0 } else { SHARDS };
        ReadCache {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            generation_bytes: (capacity as usize / SHARDS / 2).max(1),
        }
    }

    fn shard(&self, key: &[u8]) -> Option<(usize, std::sync::MutexGuard<'_, Shard>)> {
        if self.shards.is_empty() {
            return None;
        }
        // FNV-1a: ids end in random digits, so any byte-mixing hash spreads them.
        let hash = key.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
        let index = (hash % self.shards.len() as u64) as usize;
        Some((index, self.shards[index].lock().unwrap_or_else(PoisonError::into_inner)))
    }

    /// The stored value of `key` if it is kept here, or what to pass to
    /// [`ReadCache::keep`] after reading it from sled.
    pub fn get(&self, key: &[u8]) -> Result<sled::IVec, Miss> {
        let Some((shard, mut guard)) = self.shard(key) else {
            return Err(Miss { shard: usize::MAX, writes: 0 });
        };
        if let Some(value) = guard.newer.get(key) {
            return Ok(value.clone());
        }
        let writes = guard.writes;
        match guard.older.remove_entry(key) {
            Some((key, value)) => {
                guard.insert(key, value.clone(), self.generation_bytes);
                Ok(value)
            }
            None => Err(Miss { shard, writes }),
        }
    }

    /// Keeps `value`, read from sled after `miss`, unless a write to its shard
    /// was applied since.
    pub fn keep(&self, key: &[u8], miss: Miss, value: &sled::IVec) {
        let Some(shard) = self.shards.get(miss.shard) else { return };
        let mut guard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.writes == miss.writes {
            guard.insert(key.into(), value.clone(), self.generation_bytes);
        }
    }

    /// Forgets the values of `keys`: the writer calls this after applying
    /// writes to them (whether or not sled applied all of them).
    pub fn forget<'a>(&self, keys: impl IntoIterator<Item = &'a [u8]>) {
        for key in keys {
            let Some((_, mut guard)) = self.shard(key) else { return };
            guard.writes += 1;
            if let Some(value) = guard.newer.remove(key) {
                guard.newer_bytes -= entry_bytes(key, &value);
            }
            guard.older.remove(key);
        }
    }
}

fn entry_bytes(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

impl Shard {
    fn insert(&mut self, key: Box<[u8]>, value: sled::IVec, generation_bytes: usize) {
        let bytes = entry_bytes(&key, &value);
        if self.newer_bytes + bytes > generation_bytes {
            self.older = std::mem::take(&mut self.newer);
            self.newer_bytes = 0;
        }
        self.older.remove(&key);
        let key_len = key.len();
        if let Some(old) = self.newer.insert(key, value) {
            self.newer_bytes -= key_len + old.len() + ENTRY_OVERHEAD;
        }
        self.newer_bytes += bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> sled::IVec {
        sled::IVec::from(text.as_bytes())
    }

    #[test]
    fn a_kept_value_is_found_until_a_write_forgets_it() {
        let cache = ReadCache::new(1 << 20);
        let miss = cache.get(b"k").unwrap_err();
        cache.keep(b"k", miss, &value("one"));
        assert_eq!(cache.get(b"k").unwrap(), value("one"));
        cache.forget([&b"k"[..]]);
        assert!(cache.get(b"k").is_err());
    }

    #[test]
    fn a_value_read_before_a_write_is_not_kept_after_it() {
        let cache = ReadCache::new(1 << 20);
        let miss = cache.get(b"k").unwrap_err();
        // The writer applies a write to "k" between the reader's miss and its keep.
        cache.forget([&b"k"[..]]);
        cache.keep(b"k", miss, &value("stale"));
        assert!(cache.get(b"k").is_err(), "the value read before the write was kept");
    }

    #[test]
    fn nothing_is_kept_without_capacity() {
        let cache = ReadCache::new(0);
        let miss = cache.get(b"k").unwrap_err();
        cache.keep(b"k", miss, &value("one"));
        assert!(cache.get(b"k").is_err());
        cache.forget([&b"k"[..]]);
    }

    #[test]
    fn memory_stays_bounded_and_values_read_again_stay() {
        let capacity = 64 * 1024;
        let cache = ReadCache::new(capacity);
        let big = value(&"x".repeat(500));
        let keep = |key: &[u8]| {
            if let Err(miss) = cache.get(key) {
                cache.keep(key, miss, &big);
            }
        };
        for i in 0..10_000 {
            keep(b"hot");
            keep(format!("cold {i}").as_bytes());
        }
        assert!(cache.get(b"hot").is_ok(), "a value read at every turn was dropped");
        let held: usize = cache
            .shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap();
                s.newer.iter().chain(s.older.iter()).map(|(k, v)| entry_bytes(k, v)).sum::<usize>()
            })
            .sum();
        assert!(held as u64 <= capacity, "{held} bytes held, more than {capacity}");
        assert!(held as u64 > capacity / 4, "only {held} bytes held of {capacity}");
    }
}
