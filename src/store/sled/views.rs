//! Snapshots of a sled tree, which has none of its own.
//!
//! While a view is open, the writer keeps the value each key of the tree had
//! before a group of transactions overwrote it, with the group's revision
//! (`Views::record`, before it applies the group). A read through a view at
//! revision R takes the tree as it is and, for each key overwritten after R,
//! the value it had before the first such write. Readers hold the read side
//! of one lock for each read and the writer its write side from recording a
//! group until the group is applied and its revision published, so a read
//! never sees half of a group, and a view opens at a revision whose groups
//! after it are all recorded. Once no view needs a group's values (every
//! open one is at or after its revision), they are dropped; with no view
//! open, the writer records nothing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use sled::IVec;

use super::storage;
use crate::store::StoreResult;

/// Each overwritten key's earlier values: the revision of the group that
/// overwrote it and the value before (`None` where it was absent), oldest first.
type Before = BTreeMap<Vec<u8>, Vec<(u64, Option<IVec>)>>;

#[derive(Default)]
pub(super) struct Views(RwLock<State>);

#[derive(Default)]
pub(super) struct State {
    /// The revisions of the open views, with how many are open at each.
    open: BTreeMap<u64, usize>,
    before: Before,
    /// The keys each recorded group overwrote, oldest group first.
    groups: VecDeque<(u64, Vec<Vec<u8>>)>,
}

impl Views {
    /// Opens a view at the revision `latest` gives (read while the writer
    /// cannot publish another): the caller closes it with [`Views::close`].
    pub(super) fn open(&self, latest: impl FnOnce() -> u64) -> u64 {
        let mut state = self.write();
        let revision = latest();
        *state.open.entry(revision).or_default() += 1;
        revision
    }

    pub(super) fn close(&self, revision: u64) {
        let mut state = self.write();
        if let Some(count) = state.open.get_mut(&revision) {
            *count -= 1;
            if *count == 0 {
                state.open.remove(&revision);
            }
        }
        // A group's values serve only views older than it.
        let oldest = state.open.keys().next().copied().unwrap_or(u64::MAX);
        while state.groups.front().is_some_and(|(group, _)| *group <= oldest) {
            let (_, keys) = state.groups.pop_front().expect("a group");
            for key in keys {
                if let Some(values) = state.before.get_mut(&key) {
                    values.remove(0);
                    if values.is_empty() {
                        state.before.remove(&key);
                    }
                }
            }
        }
    }

    /// For the writer, before it applies a group at `revision` that writes
    /// `keys` (raw keys of the tree, made only if a view is open): keeps
    /// their values if one is.
    /// Holds off readers until the returned guard is dropped, which the
    /// writer does once the group is applied and its revision published.
    pub(super) fn record(
        &self,
        tree: &sled::Tree,
        revision: u64,
        keys: impl Iterator<Item = Vec<u8>>,
    ) -> StoreResult<RwLockWriteGuard<'_, State>> {
        let mut state = self.write();
        if state.open.is_empty() {
            return Ok(state);
        }
        let mut recorded = Vec::new();
        for key in keys {
            let value = tree.get(&key).map_err(storage)?;
            state.before.entry(key.clone()).or_default().push((revision, value));
            recorded.push(key);
        }
        state.groups.push_back((revision, recorded));
        Ok(state)
    }

    /// Holds off the writer for one read.
    pub(super) fn read(&self) -> RwLockReadGuard<'_, State> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Values the writer keeps for open views, for a test.
    #[cfg(test)]
    pub(super) fn kept(&self) -> usize {
        self.read().before.values().map(Vec::len).sum()
    }
}

/// The tree as one read sees it: as it is, or as it was at a view's revision.
pub(super) struct TreeAt<'a> {
    pub tree: &'a sled::Tree,
    /// The values kept for views and the view's revision.
    pub at: Option<(&'a State, u64)>,
}

impl<'a> TreeAt<'a> {
    /// What the view shows for `key` when a write after its revision changed
    /// it: `Some` of the value before (itself `None` if the key was absent).
    pub(super) fn before(&self, key: &[u8]) -> Option<Option<IVec>> {
        let (state, revision) = self.at?;
        Self::value_at(state.before.get(key)?, revision)
    }

    fn value_at(values: &[(u64, Option<IVec>)], revision: u64) -> Option<Option<IVec>> {
        values.iter().find(|(overwritten, _)| *overwritten > revision).map(|(_, value)| value.clone())
    }

    /// The entries from `from` on, in key order.
    pub(super) fn range_from(&self, from: &[u8]) -> Box<dyn Iterator<Item = StoreResult<(IVec, IVec)>> + 'a> {
        let tree = self.tree.range(from..);
        match self.at {
            None => Box::new(tree.map(|item| item.map_err(storage))),
            Some((state, revision)) => {
                let kept = state.before.range(from.to_vec()..);
                Box::new(Merged::new(tree, kept, revision, false))
            }
        }
    }

    /// The entries before `before` (exclusive; the whole tree if `None`),
    /// in descending key order.
    pub(super) fn range_before(
        &self,
        before: Option<&[u8]>,
    ) -> Box<dyn Iterator<Item = StoreResult<(IVec, IVec)>> + 'a> {
        let bound = match before {
            Some(key) => std::ops::Bound::Excluded(key.to_vec()),
            None => std::ops::Bound::Unbounded,
        };
        let tree = self.tree.range::<Vec<u8>, _>((std::ops::Bound::Unbounded, bound.clone())).rev();
        match self.at {
            None => Box::new(tree.map(|item| item.map_err(storage))),
            Some((state, revision)) => {
                let kept = state.before.range::<Vec<u8>, _>((std::ops::Bound::Unbounded, bound)).rev();
                Box::new(Merged::new(tree, kept, revision, true))
            }
        }
    }

    /// The last key at or before `key`.
    pub(super) fn last_key_at_or_before(&self, key: &[u8]) -> StoreResult<Option<IVec>> {
        let tree = self.tree.range(..=key).rev();
        let found = match self.at {
            None => tree.map(|item| item.map_err(storage)).next(),
            Some((state, revision)) => {
                let kept = state.before.range(..=key.to_vec()).rev();
                Merged::new(tree, kept, revision, true).next()
            }
        };
        Ok(found.transpose()?.map(|(key, _)| key))
    }
}

/// The tree's entries with the values kept for a view in their place: two
/// runs in the same key order (descending if `reverse`) merged.
struct Merged<'a, T: Iterator, K: Iterator> {
    tree: std::iter::Peekable<T>,
    kept: std::iter::Peekable<K>,
    revision: u64,
    reverse: bool,
    _state: std::marker::PhantomData<&'a ()>,
}

impl<'a, T, K> Merged<'a, T, K>
where
    T: Iterator<Item = sled::Result<(IVec, IVec)>>,
    K: Iterator<Item = (&'a Vec<u8>, &'a Vec<(u64, Option<IVec>)>)>,
{
    fn new(tree: T, kept: K, revision: u64, reverse: bool) -> Self {
        Merged { tree: tree.peekable(), kept: kept.peekable(), revision, reverse, _state: std::marker::PhantomData }
    }
}

impl<'a, T, K> Iterator for Merged<'a, T, K>
where
    T: Iterator<Item = sled::Result<(IVec, IVec)>>,
    K: Iterator<Item = (&'a Vec<u8>, &'a Vec<(u64, Option<IVec>)>)>,
{
    type Item = StoreResult<(IVec, IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            // Kept values that no longer concern the view are not there.
            while let Some((_, values)) = self.kept.peek() {
                match TreeAt::value_at(values, self.revision) {
                    Some(_) => break,
                    None => _ = self.kept.next(),
                }
            }
            let order = match (self.tree.peek(), self.kept.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) => return self.tree.next().map(|item| item.map_err(storage)),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(Ok((tree_key, _))), Some((kept_key, _))) => {
                    let order = tree_key.as_ref().cmp(kept_key.as_slice());
                    if self.reverse { order.reverse() } else { order }
                }
            };
            if order.is_lt() {
                return self.tree.next().map(|item| item.map_err(storage));
            }
            if order.is_eq() {
                self.tree.next();
            }
            let (key, values) = self.kept.next().expect("a kept key");
            if let Some(Some(value)) = TreeAt::value_at(values, self.revision) {
                return Some(Ok((IVec::from(key.as_slice()), value)));
            }
            // Absent at the view's revision: written after it.
        }
    }
}
