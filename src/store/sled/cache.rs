//! Recently read values, kept beside sled so that reading a hot record costs
//! a hash lookup instead of a walk down sled's tree, which grows with the
//! store (and a List page reads 50 records).
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
//!
//! Runs of set members (the candidates of a List page found through an
//! index, a large share of a List page's work in sled's iterators) are kept
//! here too, by where they were read from. Which runs a
//! written member would change is not cheap to tell, so the writer forgets
//! them all after any group that changed a set, and a reader keeps a run only
//! if no such group was applied since its miss, as for values.

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::ReadCacheStats;
use crate::store::generations::Generations;
use crate::store::{Entry, Members};

/// Shards, each with its own lock: readers on different keys rarely wait.
const SHARDS: usize = 16;

/// The share of the capacity that runs of members may take (the rest is
/// for values).
const RUNS_SHARE: u64 = 8;

pub(super) struct ReadCache {
    shards: Box<[Mutex<Shard>]>,
    /// Picks a key's shard.
    shard_of: foldhash::fast::RandomState,
    /// `None` when the cache keeps nothing.
    runs: Option<Mutex<Runs>>,
}

struct Runs {
    kept: Generations<Arc<Members>>,
    /// Groups that changed a set, applied by the writer.
    changes: u64,
    hits: u64,
    misses: u64,
}

struct Shard {
    /// Entries, their values shared with those that read them.
    values: Generations<Entry>,
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

/// What a reader that missed a run of members must hand back to
/// [`ReadCache::keep_members`].
#[derive(Debug)]
pub(super) struct RunMiss {
    changes: u64,
}

impl ReadCache {
    /// A cache of at most about `capacity` bytes; 0 keeps nothing.
    pub fn new(capacity: u64) -> ReadCache {
        let shards = if capacity == 0 { 0 } else { SHARDS };
        let runs_capacity = capacity / RUNS_SHARE;
        let per_shard = (capacity - runs_capacity) as usize / SHARDS;
        ReadCache {
            shards: (0..shards)
                .map(|_| Mutex::new(Shard { values: Generations::new(per_shard), writes: 0, hits: 0, misses: 0 }))
                .collect(),
            shard_of: foldhash::fast::RandomState::default(),
            runs: (capacity > 0).then(|| {
                Mutex::new(Runs { kept: Generations::new(runs_capacity as usize), changes: 0, hits: 0, misses: 0 })
            }),
        }
    }

    fn runs(&self) -> Option<MutexGuard<'_, Runs>> {
        Some(self.runs.as_ref()?.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The members read from `prefix` at `start` up to `limit`, if kept, or
    /// what to pass to [`ReadCache::keep_members`] after reading them.
    pub fn members(&self, prefix: &[u8], start: &[u8], limit: usize) -> Result<Members, RunMiss> {
        let Some(mut runs) = self.runs() else { return Err(RunMiss { changes: 0 }) };
        match runs.kept.get(&run_key(prefix, start, limit)) {
            Some(run) => {
                runs.hits += 1;
                drop(runs);
                Ok(Members::clone(&run))
            }
            None => {
                runs.misses += 1;
                Err(RunMiss { changes: runs.changes })
            }
        }
    }

    /// Keeps `members`, read after `miss`, unless a group that changed a set
    /// was applied since.
    pub fn keep_members(&self, prefix: &[u8], start: &[u8], limit: usize, miss: RunMiss, members: &Members) {
        let Some(mut runs) = self.runs() else { return };
        if runs.changes == miss.changes {
            runs.kept.insert(run_key(prefix, start, limit).into(), Arc::new(members.clone()), members.heap_bytes());
        }
    }

    /// Forgets every run of members: the writer calls this after applying a
    /// group that added or removed any (whether or not sled applied all of it).
    pub fn forget_members(&self) {
        let Some(mut runs) = self.runs() else { return };
        runs.changes += 1;
        runs.kept.clear();
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
    pub fn get(&self, key: &[u8]) -> Result<Entry, Miss> {
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
        if let Some(runs) = self.runs() {
            stats.hits += runs.hits;
            stats.misses += runs.misses;
            stats.bytes += runs.kept.bytes() as u64;
        }
        stats
    }

    /// Keeps `value`, read from sled after `miss`, unless a write to its shard
    /// was applied since.
    pub fn keep(&self, key: &[u8], miss: Miss, entry: &Entry) {
        let Some(shard) = self.shards.get(miss.shard) else { return };
        let mut guard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.writes == miss.writes {
            guard.values.insert(key.into(), entry.clone(), entry.value.len() + 8);
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

/// Where a run of members was read from, as one key.
fn run_key(prefix: &[u8], start: &[u8], limit: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(12 + prefix.len() + start.len());
    key.extend_from_slice(&(limit as u64).to_be_bytes());
    key.extend_from_slice(&(prefix.len() as u32).to_be_bytes());
    key.extend_from_slice(prefix);
    key.extend_from_slice(start);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> Entry {
        Entry { mod_revision: 1, value: bytes::Bytes::copy_from_slice(text.as_bytes()) }
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

    fn run(members: &[&str]) -> Members {
        let mut run = Members::default();
        members.iter().for_each(|m| run.push(m.as_bytes()));
        run
    }

    #[test]
    fn a_run_of_members_is_kept_by_where_it_was_read_until_a_set_changes() {
        let cache = ReadCache::new(1 << 20);
        let miss = cache.members(b"s/a", b"", 64).unwrap_err();
        cache.keep_members(b"s/a", b"", 64, miss, &run(&["s/a1", "s/a2"]));
        assert_eq!(cache.members(b"s/a", b"", 64).unwrap(), run(&["s/a1", "s/a2"]));
        // Read from elsewhere, or fewer: not the same run.
        assert!(cache.members(b"s/a", b"s/a2", 64).is_err());
        assert!(cache.members(b"s/a", b"", 1).is_err());
        assert!(cache.members(b"s/", b"", 64).is_err());
        // A value written does not touch runs; a changed set forgets them all.
        cache.forget([&b"s/a"[..]]);
        assert!(cache.members(b"s/a", b"", 64).is_ok());
        let bytes = cache.stats().bytes;
        assert!(bytes > 0);
        cache.forget_members();
        assert!(cache.members(b"s/a", b"", 64).is_err());
        assert!(cache.stats().bytes < bytes, "a forgotten run's memory is not counted");
    }

    #[test]
    fn a_run_read_before_a_set_changed_is_not_kept_after_it() {
        let cache = ReadCache::new(1 << 20);
        let miss = cache.members(b"s/a", b"", 64).unwrap_err();
        cache.forget_members();
        cache.keep_members(b"s/a", b"", 64, miss, &run(&["s/a1"]));
        assert!(cache.members(b"s/a", b"", 64).is_err(), "the run read before the change was kept");
    }

    #[test]
    fn nothing_is_kept_without_capacity() {
        let cache = ReadCache::new(0);
        let miss = cache.get(b"k").unwrap_err();
        cache.keep(b"k", miss, &value("one"));
        assert!(cache.get(b"k").is_err());
        cache.forget([&b"k"[..]]);
        let miss = cache.members(b"s/a", b"", 64).unwrap_err();
        cache.keep_members(b"s/a", b"", 64, miss, &run(&["s/a1"]));
        assert!(cache.members(b"s/a", b"", 64).is_err());
        cache.forget_members();
    }
}
