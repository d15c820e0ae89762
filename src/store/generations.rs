//! A map of bounded memory that keeps what is used again: the store's read
//! cache and the registry's derived fields are both kept in one.
//!
//! It holds two generations. A lookup looks in both and moves what it finds
//! in the older one into the newer one. When the newer one fills half the
//! memory, the older one is dropped and the newer one takes its place. What
//! is used again and again stays; the rest goes within two turns. No list of
//! entries in use order is kept, so a lookup costs one or two hash lookups.

use std::collections::HashMap;

/// Bytes counted for each entry beyond its key and what its owner says it
/// weighs (the maps' slots, the key's allocation).
const ENTRY_OVERHEAD: usize = 64;

/// Keys are record names, some chosen by clients: the hash is seeded, as
/// std's is, but much cheaper on keys of this size (see Cargo.toml).
type Map<V> = HashMap<Box<[u8]>, (V, usize), foldhash::fast::RandomState>;

pub struct Generations<V> {
    newer: Map<V>,
    older: Map<V>,
    newer_bytes: usize,
    older_bytes: usize,
    /// Most bytes of the newer generation: half of all.
    generation_bytes: usize,
}

impl<V> Generations<V> {
    /// A map of at most about `max_bytes`, counting each entry at its key,
    /// what `insert` is told it weighs and a fixed overhead.
    pub fn new(max_bytes: usize) -> Generations<V> {
        Generations {
            newer: Map::default(),
            older: Map::default(),
            newer_bytes: 0,
            older_bytes: 0,
            generation_bytes: (max_bytes / 2).max(1),
        }
    }

    /// Adds or replaces the value of `key`, which weighs `weight` bytes.
    pub fn insert(&mut self, key: Box<[u8]>, value: V, weight: usize) {
        let bytes = key.len() + weight + ENTRY_OVERHEAD;
        if self.newer_bytes + bytes > self.generation_bytes {
            self.older = std::mem::take(&mut self.newer);
            self.older_bytes = std::mem::take(&mut self.newer_bytes);
        }
        self.remove_older(&key);
        let key_len = key.len();
        if let Some((_, old)) = self.newer.insert(key, (value, weight)) {
            self.newer_bytes -= key_len + old + ENTRY_OVERHEAD;
        }
        self.newer_bytes += bytes;
    }

    pub fn remove(&mut self, key: &[u8]) {
        if let Some((_, weight)) = self.newer.remove(key) {
            self.newer_bytes -= key.len() + weight + ENTRY_OVERHEAD;
        }
        self.remove_older(key);
    }

    fn remove_older(&mut self, key: &[u8]) -> Option<(Box<[u8]>, V, usize)> {
        let (key, (value, weight)) = self.older.remove_entry(key)?;
        self.older_bytes -= key.len() + weight + ENTRY_OVERHEAD;
        Some((key, value, weight))
    }

    /// Bytes held, as counted (both generations).
    pub fn bytes(&self) -> usize {
        self.newer_bytes + self.older_bytes
    }

    /// Drops every entry.
    pub fn clear(&mut self) {
        self.newer.clear();
        self.older.clear();
        (self.newer_bytes, self.older_bytes) = (0, 0);
    }
}

impl<V: Clone> Generations<V> {
    /// The value of `key` (a clone: keep values cheap to clone).
    pub fn get(&mut self, key: &[u8]) -> Option<V> {
        if let Some((value, _)) = self.newer.get(key) {
            return Some(value.clone());
        }
        let (key, value, weight) = self.remove_older(key)?;
        self.insert(key, value.clone(), weight);
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recount<V>(map: &Generations<V>) -> usize {
        let generation =
            |m: &Map<V>| m.iter().map(|(key, (_, weight))| key.len() + weight + ENTRY_OVERHEAD).sum::<usize>();
        generation(&map.newer) + generation(&map.older)
    }

    #[test]
    fn memory_stays_bounded_and_what_is_used_again_stays() {
        let max = 64 * 1024;
        let mut map = Generations::new(max);
        for i in 0..10_000 {
            if map.get(b"hot").is_none() {
                map.insert(b"hot".as_slice().into(), i, 500);
            }
            map.insert(format!("cold {i}").into_bytes().into(), i, 500);
            if i % 7 == 0 {
                map.remove(format!("cold {}", i / 2).as_bytes());
            }
            assert!(map.bytes() <= max, "{} bytes held, more than {max}", map.bytes());
            assert_eq!(map.bytes(), recount(&map), "after {i}");
        }
        assert_eq!(map.get(b"hot"), Some(0), "a value used at every turn was dropped");
        assert!(map.bytes() > max / 4, "only {} bytes held of {max}", map.bytes());
        assert!(map.get(b"cold 0").is_none());
        assert_eq!(map.get(b"cold 9999"), Some(9999));
    }

    #[test]
    fn a_replaced_or_removed_entry_is_counted_out() {
        let mut map = Generations::new(1 << 20);
        map.insert(b"k".as_slice().into(), "one", 100);
        map.insert(b"k".as_slice().into(), "two", 10);
        assert_eq!(map.get(b"k"), Some("two"));
        assert_eq!(map.bytes(), 1 + 10 + ENTRY_OVERHEAD);
        map.remove(b"k");
        assert_eq!((map.get(b"k"), map.bytes()), (None, 0));
        map.insert(b"k".as_slice().into(), "three", 10);
        map.insert(b"l".as_slice().into(), "four", 10);
        map.clear();
        assert_eq!((map.get(b"k"), map.get(b"l"), map.bytes()), (None, None, 0));
    }
}
