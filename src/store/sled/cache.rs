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
//! Each shard keeps its values in a [`Generations`]: what is read again and
//! again stays, the rest goes.

use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::generations::Generations;
use crate::store::ReadCacheStats;

/// Shards, each with its own lock: readers on different keys rarely wait.
const SHARDS: usize = 16;

pub(super) struct ReadCache {
    shards: Box<[Mutex<Shard>]>,
    /// Picks a key's shard.
    shard_of: foldhash::fast::RandomState,
}

struct Shard {
    values: Generations<sled::IVec>,
    /// Writes the writer has applied to keys of this shard.
    writes: u64,
    hits: u64,
    misses: u64,
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
        let per_shard = capacity as usize / SHARDS;
        ReadCache {
            shards: (0..shards)
                .map(|_| Mutex::new(Shard { values: Generations::new(per_shard), writes: 0, hits: 0, misses: 0 }))
                .collect(),
            shard_of: foldhash::fast::RandomState::default(),
        }
    }

    fn shard(&self, key: &[u8]) -> Option<(usize, MutexGuard<'_, Shard>)> {
        if self.shards.is_empty() {
            return None;
        }
        let index = (self.shard_of.hash_one(key) % self.shards.len() as u64) as usize;
        Some((index, self.shards[index].lock().unwrap_or_else(PoisonError::into_inner)))
    }

    /// The stored value of `key` if it is kept here, or what to pass to
    /// [`ReadCache::keep`] after reading it from sled.
    pub fn get(&self, key: &[u8]) -> Result<sled::IVec, Miss> {
        let Some((shard, mut guard)) = self.shard(key) else {
            return Err(Miss { shard: usize::MAX, writes: 0 });
        };
        match guard.values.get(key) {
            Some(value) => {
                guard.hits += 1;
                Ok(value)
            }
            None => {
                guard.misses += 1;
                Err(Miss { shard, writes: guard.writes })
            }
        }
    }

    /// Its hits, misses and bytes held so far (all zero when it keeps nothing).
    pub fn stats(&self) -> ReadCacheStats {
        let mut stats = ReadCacheStats::default();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            stats.hits += shard.hits;
            stats.misses += shard.misses;
            stats.bytes += shard.values.bytes() as u64;
        }
        stats
    }

    /// Keeps `value`, read from sled after `miss`, unless a write to its shard
    /// was applied since.
    pub fn keep(&self, key: &[u8], miss: Miss, value: &sled::IVec) {
        let Some(shard) = self.shards.get(miss.shard) else { return };
        let mut guard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.writes == miss.writes {
            guard.values.insert(key.into(), value.clone(), value.len());
        }
    }

    /// Forgets the values of `keys`: the writer calls this after applying
    /// writes to them (whether or not sled applied all of them).
    pub fn forget<'a>(&self, keys: impl IntoIterator<Item = &'a [u8]>) {
        for key in keys {
            let Some((_, mut guard)) = self.shard(key) else { return };
            guard.writes += 1;
            guard.values.remove(key);
        }
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
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (1, 1));
        assert!(stats.bytes > 4, "{stats:?}");
        cache.forget([&b"k"[..]]);
        assert!(cache.get(b"k").is_err());
        assert_eq!(cache.stats(), ReadCacheStats { hits: 1, misses: 2, bytes: 0 });
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
}
