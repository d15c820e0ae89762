//! Set members packed many to a sled key.
//!
//! A chunk holds some members of one set, sorted, under the key
//! `s{set}{lowest member it may hold}`; its value is the 8-byte revision that
//! last wrote it, the set name's length (u32) and each member as a u16 length
//! and its bytes. The chunks of a set cover disjoint, ascending ranges of
//! members, so the greatest chunk key at or before `s{set}{member}` is the
//! chunk where that member is or belongs, and reading chunks in key order
//! gives the members in order. Members that arrive in ascending order (ids
//! are time-ordered) fill a chunk and start the next one; others split a full
//! chunk in two.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound::{self, Excluded, Included, Unbounded};

use super::storage;
use crate::store::{Members, StoreError, StoreResult};

/// First byte of every chunk key.
pub(super) const SET: u8 = b's';
/// Most members in a chunk: each added member rewrites its chunk, so a
/// chunk stays a few hundred bytes; 32 entries to a key instead of one.
const MAX_MEMBERS: usize = 32;

/// The members of one set that one chunk holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Chunk {
    pub revision: u64,
    pub set_len: usize,
    pub members: Vec<Vec<u8>>,
}

/// The chunk writes of a group not yet in the tree, by chunk key; a chunk
/// without members is one the group removed (its revision says when).
pub(super) type Pending = BTreeMap<Vec<u8>, Chunk>;

pub(super) fn chunk_key(set: &[u8], member: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + set.len() + member.len());
    key.push(SET);
    key.extend_from_slice(set);
    key.extend_from_slice(member);
    key
}

impl Chunk {
    pub fn encode(&self) -> Vec<u8> {
        let size = 12 + self.members.iter().map(|m| 2 + m.len()).sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&self.revision.to_be_bytes());
        out.extend_from_slice(&(self.set_len as u32).to_be_bytes());
        for member in &self.members {
            out.extend_from_slice(&(member.len() as u16).to_be_bytes());
            out.extend_from_slice(member);
        }
        out
    }

    pub fn decode(raw: &[u8]) -> StoreResult<Chunk> {
        let view = ChunkView::parse(raw)?;
        let members = view.members().map(|m| m.map(<[u8]>::to_vec)).collect::<StoreResult<_>>()?;
        Ok(Chunk { revision: view.revision, set_len: view.set_len, members })
    }
}

/// A stored chunk read in place, its members borrowed from the stored bytes:
/// a scan reads many chunks and keeps few of their members.
pub(super) struct ChunkView<'a> {
    pub revision: u64,
    pub set_len: usize,
    encoded_members: &'a [u8],
}

fn corrupt() -> StoreError {
    StoreError::Storage("a stored set chunk is corrupt".into())
}

impl<'a> ChunkView<'a> {
    pub fn parse(raw: &'a [u8]) -> StoreResult<ChunkView<'a>> {
        let revision = u64::from_be_bytes(raw.get(..8).ok_or_else(corrupt)?.try_into().expect("8 bytes"));
        let set_len = u32::from_be_bytes(raw.get(8..12).ok_or_else(corrupt)?.try_into().expect("4 bytes")) as usize;
        Ok(ChunkView { revision, set_len, encoded_members: &raw[12..] })
    }

    /// The name of its set, which its key starts with (after `SET`).
    pub fn set_in<'k>(&self, key: &'k [u8]) -> StoreResult<&'k [u8]> {
        key.get(1..1 + self.set_len).ok_or_else(|| StoreError::Storage("a set chunk key is short".into()))
    }

    /// The members in order; an error where the bytes stop making sense.
    pub fn members(&self) -> impl Iterator<Item = StoreResult<&'a [u8]>> + use<'a> {
        let mut rest = self.encoded_members;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let member = rest
                .get(..2)
                .map(|len| 2 + usize::from(u16::from_be_bytes([len[0], len[1]])))
                .and_then(|end| Some((rest.get(2..end)?, &rest[end..])));
            Some(match member {
                Some((member, after)) => {
                    rest = after;
                    Ok(member)
                }
                None => {
                    rest = &[];
                    Err(corrupt())
                }
            })
        })
    }
}

/// Refuses a set member too long for a chunk's u16 length, before any of
/// its transaction is staged.
pub(super) fn check_op(op: &crate::store::Op) -> StoreResult<()> {
    match op {
        crate::store::Op::Add { member, .. } | crate::store::Op::Remove { member, .. }
            if member.len() > usize::from(u16::MAX) =>
        {
            Err(StoreError::Storage(format!("a set member of {} bytes is longer than 65535", member.len())))
        }
        _ => Ok(()),
    }
}

/// The key of the last chunk of each set, as far as the writer knows: it is
/// the only one writing chunks while the store is open and keeps this true
/// as it stages, so adding to the end of a set (ids are time-ordered) costs
/// a point read rather than a search of the tree. Sets it does not know are
/// looked up; it forgets everything when it knows too many.
#[derive(Default)]
pub(super) struct Tails(HashMap<Vec<u8>, Option<Vec<u8>>>);

/// Most sets whose last chunk [`Tails`] remembers (a few MB).
const MAX_TAILS: usize = 65_536;

impl Tails {
    /// The key of the last chunk of `set`, `None` when it has none.
    fn last(&mut self, tree: &sled::Tree, pending: &Pending, set: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        if let Some(known) = self.0.get(set) {
            return Ok(known.clone());
        }
        let last = live_key_in(tree, pending, (Included(chunk_key(set, b"")), set_end(set)), End::Last)?;
        self.remember(set, last.clone());
        Ok(last)
    }

    fn remember(&mut self, set: &[u8], last: Option<Vec<u8>>) {
        if self.0.len() >= MAX_TAILS && !self.0.contains_key(set) {
            self.0.clear();
        }
        self.0.insert(set.to_vec(), last);
    }
}

/// The bound past every chunk key of `set`: the least key greater than every
/// key that starts with its chunk prefix, if there is one.
fn set_end(set: &[u8]) -> Bound<Vec<u8>> {
    let mut end = chunk_key(set, b"");
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Excluded(end);
        }
    }
    Unbounded
}

fn is_live(chunk: &Chunk) -> bool {
    !chunk.members.is_empty()
}

#[derive(Clone, Copy, PartialEq)]
enum End {
    First,
    Last,
}

/// The least or greatest key of a live chunk in `range`, as the tree and the
/// group's pending writes together hold them.
fn live_key_in(
    tree: &sled::Tree,
    pending: &Pending,
    range: (Bound<Vec<u8>>, Bound<Vec<u8>>),
    end: End,
) -> StoreResult<Option<Vec<u8>>> {
    let mut in_pending = pending.range(range.clone()).filter(|(_, chunk)| is_live(chunk)).map(|(key, _)| key);
    let in_pending = if end == End::Last { in_pending.next_back() } else { in_pending.next() }.cloned();
    // The tree's chunks that the group rewrote or removed are judged above.
    let mut in_tree =
        tree.range(range).filter(|item| item.as_ref().map_or(true, |(key, _)| !pending.contains_key(key.as_ref())));
    let in_tree = if end == End::Last { in_tree.next_back() } else { in_tree.next() };
    let in_tree = in_tree.transpose().map_err(storage)?.map(|(key, _)| key.to_vec());
    Ok(match (in_pending, in_tree) {
        (Some(p), Some(t)) => Some(if end == End::Last { p.max(t) } else { p.min(t) }),
        (p, t) => p.or(t),
    })
}

/// Where a member of a set is or belongs.
struct Place {
    /// The live chunk with the greatest key at or before the member's.
    chunk: Option<Vec<u8>>,
    /// The set's last chunk.
    tail: Option<Vec<u8>>,
}

/// A chunk taken out to change, and where from (an unchanged one goes back
/// there; the tree keeps its own).
struct Taken {
    chunk: Chunk,
    from: Source,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Source {
    Pending,
    Recent,
    Tree,
}

/// The live chunks the writer's last group wrote, as it staged them: the next
/// group most often adds to the same tails, and takes them from here rather
/// than read and decode them again. Only the writer writes chunks, and it
/// replaces these only after the group is in the tree, so each is what the
/// tree holds under its key.
#[derive(Default)]
pub(super) struct Recent(Pending);

/// Most chunks [`Recent`] keeps (about 1.5 MB of full chunks): a larger
/// group's are let go.
const MAX_RECENT: usize = 1024;

impl Recent {
    /// Keeps the live chunks of the group just applied, in place of the last
    /// group's.
    pub fn replace(&mut self, mut applied: Pending) {
        applied.retain(|_, chunk| is_live(chunk));
        if applied.len() > MAX_RECENT {
            applied.clear();
        }
        self.0 = applied;
    }
}

/// What staging a set write works on: the tree, the group's pending chunk
/// writes, the chunks the last group wrote and the writer's memory of each
/// set's last chunk.
pub(super) struct Staging<'a> {
    pub tree: &'a sled::Tree,
    pub pending: &'a mut Pending,
    pub recent: &'a mut Recent,
    pub tails: &'a mut Tails,
}

impl Staging<'_> {
    /// Where `at` (a chunk key of `set`) is or belongs.
    fn chunk_for(&mut self, set: &[u8], at: &[u8]) -> StoreResult<Place> {
        let tail = self.tails.last(self.tree, self.pending, set)?;
        let chunk = match &tail {
            Some(last) if at >= last.as_slice() => Some(last.clone()),
            Some(_) => {
                let range = (Included(chunk_key(set, b"")), Included(at.to_vec()));
                live_key_in(self.tree, self.pending, range, End::Last)?
            }
            None => None,
        };
        Ok(Place { chunk, tail })
    }

    /// Takes the live chunk under `key` out of the pending writes or the last
    /// group's, or reads it from the tree.
    fn take(&mut self, key: &[u8]) -> StoreResult<Taken> {
        if let Some(chunk) = self.pending.remove(key) {
            return Ok(Taken { chunk, from: Source::Pending });
        }
        if let Some(chunk) = self.recent.0.remove(key) {
            return Ok(Taken { chunk, from: Source::Recent });
        }
        let raw = self
            .tree
            .get(key)
            .map_err(storage)?
            .ok_or_else(|| StoreError::Storage("a set chunk went missing".into()))?;
        Ok(Taken { chunk: Chunk::decode(&raw)?, from: Source::Tree })
    }

    /// Puts back a chunk taken and left as it was.
    fn untouched(&mut self, key: Vec<u8>, taken: Taken) {
        match taken.from {
            Source::Pending => self.pending.insert(key, taken.chunk),
            Source::Recent => self.recent.0.insert(key, taken.chunk),
            Source::Tree => None,
        };
    }

    /// Adds `member` to `set`.
    pub fn add(&mut self, set: &[u8], member: &[u8], revision: u64) -> StoreResult<()> {
        let at = chunk_key(set, member);
        let Place { chunk: found, tail } = self.chunk_for(set, &at)?;
        let Some(key) = found else {
            // Below every chunk of the set: the first chunk takes it if it has
            // room (under a lower key), else it starts a chunk of its own.
            let mut members = vec![member.to_vec()];
            let after = (Excluded(at.clone()), set_end(set));
            if let Some(next) = live_key_in(self.tree, self.pending, after, End::First)? {
                let taken = self.take(&next)?;
                if taken.chunk.members.len() < MAX_MEMBERS {
                    members.extend(taken.chunk.members);
                    self.pending.insert(next.clone(), Chunk { revision, set_len: set.len(), members: Vec::new() });
                    if tail.as_ref() == Some(&next) {
                        self.tails.remember(set, Some(at.clone()));
                    }
                } else {
                    self.untouched(next, taken);
                }
            }
            if tail.is_none() {
                self.tails.remember(set, Some(at.clone()));
            }
            self.pending.insert(at, Chunk { revision, set_len: set.len(), members });
            return Ok(());
        };
        let taken = self.take(&key)?;
        let place = match taken.chunk.members.binary_search_by(|m| m.as_slice().cmp(member)) {
            Err(place) => place,
            Ok(_) => {
                self.untouched(key, taken);
                return Ok(());
            }
        };
        let mut chunk = taken.chunk;
        chunk.members.insert(place, member.to_vec());
        chunk.revision = revision;
        if chunk.members.len() > MAX_MEMBERS {
            // Ascending arrivals start a new chunk and leave this one full;
            // others split it in half.
            let split = if place == chunk.members.len() - 1 { place } else { chunk.members.len() / 2 };
            let upper = chunk.members.split_off(split);
            let upper_key = chunk_key(set, &upper[0]);
            if tail.as_ref() == Some(&key) {
                self.tails.remember(set, Some(upper_key.clone()));
            }
            self.pending.insert(upper_key, Chunk { revision, set_len: set.len(), members: upper });
        }
        self.pending.insert(key, chunk);
        Ok(())
    }

    /// Takes `member` out of `set`.
    pub fn remove(&mut self, set: &[u8], member: &[u8], revision: u64) -> StoreResult<()> {
        let at = chunk_key(set, member);
        let Place { chunk: Some(key), tail } = self.chunk_for(set, &at)? else { return Ok(()) };
        let taken = self.take(&key)?;
        let Ok(place) = taken.chunk.members.binary_search_by(|m| m.as_slice().cmp(member)) else {
            self.untouched(key, taken);
            return Ok(());
        };
        let mut chunk = taken.chunk;
        chunk.members.remove(place);
        chunk.revision = revision;
        if chunk.members.is_empty() && tail.as_ref() == Some(&key) {
            // The set's last chunk goes: the one before it is looked up when needed.
            self.tails.0.remove(set);
        }
        self.pending.insert(key, chunk);
        Ok(())
    }
}

/// Up to `limit` members under `prefix` from `start` (set name and member
/// together), in order, read from the tree.
pub(super) fn scan(tree: &super::views::TreeAt<'_>, prefix: &[u8], start: &[u8], limit: usize) -> StoreResult<Members> {
    let from = if start.is_empty() { prefix } else { start };
    let from_key = chunk_key(from, b"");
    // The chunk at or before `from` may hold members at or after it.
    let begin = match tree.last_key_at_or_before(&from_key)? {
        Some(key) if key.first() == Some(&SET) => key.to_vec(),
        _ => from_key,
    };
    let mut out = Members::with_capacity(limit.min(crate::store::MAX_CHUNK));
    // Set name and member, put together here to be compared.
    let mut full = Vec::new();
    for item in tree.range_from(&begin) {
        let (key, raw) = item?;
        if key.first() != Some(&SET) {
            break;
        }
        let chunk = ChunkView::parse(&raw)?;
        let set = chunk.set_in(&key)?;
        for member in chunk.members() {
            full.clear();
            full.extend_from_slice(set);
            full.extend_from_slice(member?);
            if full.as_slice() < from {
                continue;
            }
            if !full.starts_with(prefix) || out.len() >= limit {
                return Ok(out);
            }
            out.push(&full);
        }
    }
    Ok(out)
}

/// Up to `limit` members under `prefix` before `before` (exclusive; empty for
/// the last under `prefix`), set name and member together, in descending
/// order: chunks read from the last that may hold one, each one's members
/// backwards.
pub(super) fn scan_before(
    tree: &super::views::TreeAt<'_>,
    prefix: &[u8],
    before: &[u8],
    limit: usize,
) -> StoreResult<Members> {
    let end = match before {
        [] => crate::store::prefix_end(prefix),
        before => before.to_vec(),
    };
    // A chunk's key is its lowest member, so no chunk from `end`'s on holds
    // one before it; without an end (a prefix of 0xff bytes), all of them.
    let bound = (!end.is_empty()).then(|| chunk_key(&end, b""));
    let mut out = Members::with_capacity(limit.min(crate::store::MAX_CHUNK));
    let mut full = Vec::new();
    for item in tree.range_before(bound.as_deref()) {
        if out.len() >= limit {
            break;
        }
        let (key, raw) = item?;
        if key.first() != Some(&SET) {
            break;
        }
        let chunk = ChunkView::parse(&raw)?;
        let set = chunk.set_in(&key)?;
        let held = chunk.members().collect::<StoreResult<Vec<&[u8]>>>()?;
        for member in held.iter().rev() {
            full.clear();
            full.extend_from_slice(set);
            full.extend_from_slice(member);
            if !end.is_empty() && full.as_slice() >= end.as_slice() {
                continue;
            }
            if full.as_slice() < prefix || out.len() >= limit {
                return Ok(out);
            }
            out.push(&full);
        }
    }
    Ok(out)
}

/// The chunks that hold `members` (set, member, revision), given in order,
/// as full as chunks get: for a restore.
pub(super) fn pack(members: impl IntoIterator<Item = (Vec<u8>, Vec<u8>, u64)>) -> Vec<(Vec<u8>, Chunk)> {
    let mut chunks: Vec<(Vec<u8>, Vec<u8>, Chunk)> = Vec::new();
    for (set, member, revision) in members {
        match chunks.last_mut() {
            Some((last_set, _, chunk)) if *last_set == set && chunk.members.len() < MAX_MEMBERS => {
                chunk.members.push(member);
                chunk.revision = chunk.revision.max(revision);
            }
            _ => {
                let key = chunk_key(&set, &member);
                let set_len = set.len();
                chunks.push((set, key, Chunk { revision, set_len, members: vec![member] }));
            }
        }
    }
    chunks.into_iter().map(|(_, key, chunk)| (key, chunk)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporary_tree() -> (tempfile::TempDir, sled::Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        (dir, db)
    }

    /// Writes a group's chunks to the tree and keeps them as the writer does.
    fn apply(tree: &sled::Tree, pending: Pending, recent: &mut Recent) {
        for (key, chunk) in &pending {
            match chunk.members.is_empty() {
                false => tree.insert(key.as_slice(), chunk.encode()).unwrap(),
                true => tree.remove(key).unwrap(),
            };
        }
        recent.replace(pending);
    }

    #[test]
    fn a_chunk_decodes_to_what_was_encoded_and_garbage_is_refused() {
        let chunk = Chunk { revision: 7, set_len: 3, members: vec![b"a1".to_vec(), Vec::new(), vec![0; 300]] };
        assert_eq!(Chunk::decode(&chunk.encode()).unwrap(), chunk);
        assert!(Chunk::decode(&[0; 5]).is_err());
        let mut cut = chunk.encode();
        cut.pop();
        assert!(Chunk::decode(&cut).is_err());
        let long = crate::store::Op::Add { set: b"s\0".to_vec(), member: vec![1; 70_000] };
        assert!(check_op(&long).is_err());
    }

    /// Adds and removes in several orders and groups agree with a plain
    /// ordered set, chunks never exceed their size, and members read back in
    /// order from any start.
    #[test]
    fn members_read_back_in_order_whatever_order_they_came_in() {
        let (_dir, tree) = temporary_tree();
        let mut model = std::collections::BTreeSet::new();
        let sets: [&[u8]; 3] = [b"i/a\0x\0", b"i/a\0y\0", b"i/b\0\0\0\0\0"];
        let mut revision = 0;
        let mut tails = Tails::default();
        let mut recent = Recent::default();
        // Ascending, descending and scattered ids, applied in groups of 10.
        let ids: Vec<u32> = (0..200).chain((300..400).rev()).chain((0..200).map(|i| (i * 7919) % 500)).collect();
        for group in ids.chunks(10) {
            let mut pending = Pending::new();
            let mut staging = Staging { tree: &tree, pending: &mut pending, recent: &mut recent, tails: &mut tails };
            for id in group {
                revision += 1;
                let set = sets[*id as usize % 3];
                let member = format!("{id:05}").into_bytes();
                if id % 11 == 0 && model.contains(&[set, &member].concat()) {
                    staging.remove(set, &member, revision).unwrap();
                    model.remove(&[set, &member].concat());
                } else {
                    staging.add(set, &member, revision).unwrap();
                    model.insert([set, &member].concat());
                }
            }
            apply(&tree, pending, &mut recent);
            for (key, chunk) in &recent.0 {
                assert_eq!(Chunk::decode(&tree.get(key).unwrap().unwrap()).unwrap(), *chunk, "as the tree has it");
            }
        }
        let all: Vec<Vec<u8>> = model.iter().cloned().collect();
        fn latest(tree: &sled::Tree) -> super::super::views::TreeAt<'_> {
            super::super::views::TreeAt { tree, at: None }
        }
        assert_eq!(scan(&latest(&tree), b"i/", b"", usize::MAX).unwrap().to_vec(), all);
        for chunk in tree.scan_prefix([SET]) {
            let chunk = Chunk::decode(&chunk.unwrap().1).unwrap();
            assert!((1..=MAX_MEMBERS).contains(&chunk.members.len()));
        }
        // From any start, within any prefix, up to a limit.
        for (at, start) in all.iter().enumerate().step_by(17) {
            assert_eq!(scan(&latest(&tree), b"i/", start, 5).unwrap().to_vec(), all[at..(at + 5).min(all.len())]);
        }
        let only_y: Vec<Vec<u8>> = all.iter().filter(|m| m.starts_with(sets[1])).cloned().collect();
        assert_eq!(scan(&latest(&tree), sets[1], b"", usize::MAX).unwrap().to_vec(), only_y);
        assert_eq!(scan(&latest(&tree), b"i/c", b"", 10).unwrap().to_vec(), Vec::<Vec<u8>>::new());
        // A restore packs the same members into full chunks.
        let sets_of = |m: &Vec<u8>| *sets.iter().find(|s| m.starts_with(s)).unwrap();
        let packed = pack(all.iter().map(|m| (sets_of(m).to_vec(), m[sets_of(m).len()..].to_vec(), 1)));
        let (_dir2, restored) = temporary_tree();
        for (key, chunk) in packed {
            restored.insert(key, chunk.encode()).unwrap();
        }
        assert_eq!(scan(&latest(&restored), b"i/", b"", usize::MAX).unwrap().to_vec(), all);
        assert!(restored.len() <= all.len() / MAX_MEMBERS + 3);
    }

    /// The next group takes the tail the last one wrote from memory, not the
    /// tree; a chunk the group removed, or a group too large, is not kept.
    #[test]
    fn the_last_groups_chunks_are_taken_from_memory() {
        let (_dir, tree) = temporary_tree();
        let (mut tails, mut recent) = (Tails::default(), Recent::default());
        let set: &[u8] = b"i/a\0x\0";
        let mut pending = Pending::new();
        let mut staging = Staging { tree: &tree, pending: &mut pending, recent: &mut recent, tails: &mut tails };
        staging.add(set, b"a1", 1).unwrap();
        staging.add(set, b"a2", 2).unwrap();
        apply(&tree, pending, &mut recent);
        let key = chunk_key(set, b"a1");
        let mut pending = Pending::new();
        let mut staging = Staging { tree: &tree, pending: &mut pending, recent: &mut recent, tails: &mut tails };
        let taken = staging.take(&key).unwrap();
        assert_eq!((taken.from, taken.chunk.members.len()), (Source::Recent, 2));
        staging.untouched(key.clone(), taken);
        assert_eq!(staging.take(&key).unwrap().from, Source::Recent, "an untouched chunk goes back");
        let mut fresh = Recent::default();
        let mut staging = Staging { tree: &tree, pending: &mut pending, recent: &mut fresh, tails: &mut tails };
        assert_eq!(staging.take(&key).unwrap().from, Source::Tree);

        let mut removed = Pending::new();
        removed.insert(key.clone(), Chunk { revision: 3, set_len: set.len(), members: Vec::new() });
        recent.replace(removed);
        assert!(recent.0.is_empty(), "a removed chunk is not kept");
        let many = (0..=MAX_RECENT).map(|i| {
            (
                chunk_key(set, format!("{i:05}").as_bytes()),
                Chunk { revision: 4, set_len: set.len(), members: vec![vec![1]] },
            )
        });
        recent.replace(many.collect());
        assert!(recent.0.is_empty(), "a group of more than MAX_RECENT chunks is let go");
    }
}
