//! Set members packed many to a sled key.
//!
//! Every member with its set's name before it (an entry) takes its place in
//! one ordered space of entries, the order `Snapshot::members` reads them in.
//! A chunk holds a run of up to `MAX_ENTRIES` consecutive entries, of one set
//! or of several, under the key `e{lowest entry it may hold}`: a set of one
//! member (the value of an ordered index that only one record has, such as a
//! title) shares a key with its neighbours rather than taking one of its own.
//! The chunks cover disjoint, ascending ranges of entries, so the greatest
//! chunk key at or before `e{entry}` is the chunk where that entry is or
//! belongs, and reading chunks in key order gives the entries in order.
//!
//! A chunk's value: the 8-byte big-endian revision that last wrote it, then
//! each entry as varints and bytes: how many bytes it shares with the entry
//! before it (the first: with the chunk's key), the length of the rest, the
//! rest, the length of its set's name, and how many revisions before the
//! chunk's it was added. Neighbouring entries share their set's name and most
//! of a time-ordered id, so an entry takes a few bytes more than what sets it
//! apart; each keeps its own revision, so a condition on one set is not
//! failed by a write to its neighbour.
//!
//! Ids added to the end of a set (they are time-ordered) fill a chunk and
//! start the next one, and a full chunk that holds other sets' entries after
//! the set's hands those on to a chunk of their own; other additions split a
//! full chunk in two (see `split_point`).

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound::{self, Excluded, Included};

use super::storage;
use crate::store::{Members, StoreError, StoreResult};

/// First byte of every chunk key.
pub(super) const CHUNK: u8 = b'e';
/// First byte of the chunks of schema 2, one set each: only an upgrade reads them.
pub(super) const PER_SET_CHUNK: u8 = b's';
/// Bytes of keys and values a restore or an upgrade writes to sled in one batch.
pub(super) const LOAD_BATCH_BYTES: usize = 32 << 20;
/// Most entries in a chunk: each added member rewrites its chunk, so a chunk
/// stays about a kilobyte; 32 entries to a key instead of one.
const MAX_ENTRIES: usize = 32;

/// One member of a set, with its set's name before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Item {
    /// The set's name, then the member.
    pub entry: Vec<u8>,
    /// Bytes of `entry` that are the set's name.
    pub set_len: usize,
    /// The revision that added it.
    pub revision: u64,
}

impl Item {
    fn is_in_set(&self, set: &[u8]) -> bool {
        self.set_len == set.len() && self.entry.starts_with(set)
    }
}

/// The entries one chunk holds, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Chunk {
    /// The revision that last wrote it: at least every item's.
    pub revision: u64,
    pub items: Vec<Item>,
}

/// The chunk writes of a group not yet in the tree, by chunk key; a chunk
/// without items is one the group removed (its revision says when).
pub(super) type Pending = BTreeMap<Vec<u8>, Chunk>;

/// The key of the chunk that starts at `entry`.
pub(super) fn chunk_key(entry: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + entry.len());
    key.push(CHUNK);
    key.extend_from_slice(entry);
    key
}

/// The bound past every chunk key.
fn chunks_end() -> Bound<Vec<u8>> {
    Excluded(vec![CHUNK + 1])
}

fn corrupt() -> StoreError {
    StoreError::Storage("a stored set chunk is corrupt".into())
}

/// How many bytes `a` and `b` start with in common, compared eight at a time.
fn shared_prefix(a: &[u8], b: &[u8]) -> usize {
    let words = a.chunks_exact(8).zip(b.chunks_exact(8)).take_while(|(x, y)| x == y).count();
    let at = words * 8;
    at + a[at..].iter().zip(&b[at..]).take_while(|(x, y)| x == y).count()
}

impl Chunk {
    /// Its value under `key` (whose entry the first item is coded against).
    pub fn encode(&self, key: &[u8]) -> Vec<u8> {
        let size = 8 + self.items.iter().map(|item| 8 + item.entry.len() / 2).sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&self.revision.to_be_bytes());
        let mut before = key.get(1..).unwrap_or_default();
        for item in &self.items {
            let shared = shared_prefix(before, &item.entry);
            let rest = &item.entry[shared..];
            prost::encoding::encode_varint(shared as u64, &mut out);
            prost::encoding::encode_varint(rest.len() as u64, &mut out);
            out.extend_from_slice(rest);
            prost::encoding::encode_varint(item.set_len as u64, &mut out);
            prost::encoding::encode_varint(self.revision - item.revision, &mut out);
            before = &item.entry;
        }
        out
    }

    /// The chunk stored under `key` as `raw`.
    pub fn decode(key: &[u8], raw: &[u8]) -> StoreResult<Chunk> {
        let mut reader = Reader::new(key, raw)?;
        let mut items = Vec::new();
        while let Some(read) = reader.next_item()? {
            items.push(Item { entry: read.entry.to_vec(), set_len: read.set_len, revision: read.revision });
        }
        Ok(Chunk { revision: reader.revision, items })
    }
}

/// A stored chunk read entry by entry, each rebuilt in one buffer: a scan
/// reads many chunks and keeps few of their entries.
pub(super) struct Reader<'a> {
    pub revision: u64,
    rest: &'a [u8],
    entry: Vec<u8>,
}

/// One entry as a [`Reader`] gives it.
pub(super) struct Read<'r> {
    pub entry: &'r [u8],
    pub set_len: usize,
    pub revision: u64,
}

impl Read<'_> {
    pub fn set(&self) -> &[u8] {
        &self.entry[..self.set_len]
    }

    pub fn member(&self) -> &[u8] {
        &self.entry[self.set_len..]
    }
}

fn varint(rest: &mut &[u8]) -> StoreResult<u64> {
    prost::encoding::decode_varint(rest).map_err(|_| corrupt())
}

impl<'a> Reader<'a> {
    pub fn new(key: &[u8], raw: &'a [u8]) -> StoreResult<Reader<'a>> {
        let revision = u64::from_be_bytes(raw.get(..8).ok_or_else(corrupt)?.try_into().expect("8 bytes"));
        Ok(Reader { revision, rest: &raw[8..], entry: key.get(1..).unwrap_or_default().to_vec() })
    }

    /// The next entry; `None` after the last, an error where the bytes stop
    /// making sense.
    pub fn next_item(&mut self) -> StoreResult<Option<Read<'_>>> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let shared = varint(&mut self.rest)? as usize;
        let len = varint(&mut self.rest)? as usize;
        if shared > self.entry.len() || len > self.rest.len() {
            return Err(corrupt());
        }
        self.entry.truncate(shared);
        self.entry.extend_from_slice(&self.rest[..len]);
        self.rest = &self.rest[len..];
        let set_len = varint(&mut self.rest)? as usize;
        let age = varint(&mut self.rest)?;
        if set_len > self.entry.len() || age > self.revision {
            return Err(corrupt());
        }
        Ok(Some(Read { entry: &self.entry, set_len, revision: self.revision - age }))
    }
}

/// The ranges of entries the writer last found chunks to take, so that
/// placing an entry costs a lookup in memory rather than a search of the
/// tree: each span is a live chunk's key and the next live chunk's key, and
/// the chunk a set's last entry went to is looked at first (the next id of a
/// set most often goes to the same chunk). The writer is the only one
/// writing chunks while the store is open: it splits a span where it splits
/// its chunk, and forgets it when it moves or removes the chunk. It forgets
/// every span when it holds too many.
#[derive(Default)]
pub(super) struct Places {
    /// The next live chunk's key after each chunk's (`None`: the last).
    spans: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The chunk each set's last entry went to; its span may have gone.
    by_set: HashMap<Vec<u8>, Vec<u8>, foldhash::fast::RandomState>,
}

/// Most spans (and sets) [`Places`] holds: at most some 60 MB with keys of
/// about 80 bytes; about the chunks that the titles, title words and
/// identifiers of a million agreements fill.
const MAX_PLACES: usize = 131_072;

fn holds(start: &[u8], next: &Option<Vec<u8>>, at: &[u8]) -> bool {
    start <= at && next.as_deref().is_none_or(|next| at < next)
}

impl Places {
    /// The chunk whose span holds `at`, if one is known.
    fn find(&self, set: &[u8], at: &[u8]) -> Option<Vec<u8>> {
        if let Some(chunk) = self.by_set.get(set)
            && let Some(next) = self.spans.get(chunk)
            && holds(chunk, next, at)
        {
            return Some(chunk.clone());
        }
        let (chunk, next) = self.spans.range::<[u8], _>((Bound::Unbounded, Included(at))).next_back()?;
        holds(chunk, next, at).then(|| chunk.clone())
    }

    fn remember(&mut self, chunk: &[u8], next: Option<Vec<u8>>) {
        if self.spans.len() >= MAX_PLACES {
            self.spans.clear();
        }
        self.spans.insert(chunk.to_vec(), next);
    }

    fn went_to(&mut self, set: &[u8], chunk: &[u8]) {
        if self.by_set.len() >= MAX_PLACES {
            self.by_set.clear();
        }
        match self.by_set.get_mut(set) {
            Some(known) if known.as_slice() == chunk => {}
            Some(known) => *known = chunk.to_vec(),
            None => {
                self.by_set.insert(set.to_vec(), chunk.to_vec());
            }
        }
    }

    /// Splits the span of `chunk` at `upper`, the key of the chunk that
    /// took its upper part, if the span is known.
    fn split(&mut self, chunk: &[u8], upper: &[u8]) {
        if let Some(next) = self.spans.get_mut(chunk) {
            let next = next.replace(upper.to_vec());
            self.remember(upper, next);
        }
    }

    /// Forgets the span of `chunk`: it moved or went.
    fn forget_chunk(&mut self, chunk: &[u8]) {
        self.spans.remove(chunk);
    }
}

fn is_live(chunk: &Chunk) -> bool {
    !chunk.items.is_empty()
}

#[derive(Clone, Copy, PartialEq)]
enum End {
    First,
    Last,
}

/// A live chunk's key, and its stored value where the tree holds the chunk
/// as it is (not rewritten by the group).
type Found = (Vec<u8>, Option<sled::IVec>);

/// The least or greatest key of a live chunk in `range`, as the tree and the
/// group's pending writes together hold them.
fn live_key_in(
    tree: &sled::Tree,
    pending: &Pending,
    range: (Bound<Vec<u8>>, Bound<Vec<u8>>),
    end: End,
) -> StoreResult<Option<Found>> {
    let mut in_pending = pending.range(range.clone()).filter(|(_, chunk)| is_live(chunk)).map(|(key, _)| key);
    let in_pending = if end == End::Last { in_pending.next_back() } else { in_pending.next() }.cloned();
    // The tree's chunks that the group rewrote or removed are judged above.
    let mut in_tree =
        tree.range(range).filter(|item| item.as_ref().map_or(true, |(key, _)| !pending.contains_key(key.as_ref())));
    let in_tree = if end == End::Last { in_tree.next_back() } else { in_tree.next() };
    let in_tree = in_tree.transpose().map_err(storage)?.map(|(key, raw)| (key.to_vec(), Some(raw)));
    Ok(match (in_pending, in_tree) {
        (Some(p), Some(t)) if (end == End::Last) == (p > t.0) => Some((p, None)),
        (Some(_), Some(t)) => Some(t),
        (p, t) => p.map(|p| (p, None)).or(t),
    })
}

/// Whether an entry under `prefix` was added after `revision`, as the tree
/// and the group's pending writes together hold them (a removed one does not
/// count).
pub(super) fn added_after(tree: &sled::Tree, pending: &Pending, prefix: &[u8], revision: u64) -> StoreResult<bool> {
    let from = chunk_key(prefix);
    // The chunk at or before the prefix may hold entries under it.
    let first = live_key_in(tree, pending, (Included(vec![CHUNK]), Included(from.clone())), End::Last)?;
    let range = (Included(first.map_or_else(|| from.clone(), |(key, _)| key)), chunks_end());
    let beyond = |key: &[u8]| key > from.as_slice() && !key.starts_with(&from);
    let added = |key: &[u8], raw: &[u8]| -> StoreResult<bool> {
        let mut reader = Reader::new(key, raw)?;
        if reader.revision <= revision {
            return Ok(false);
        }
        while let Some(read) = reader.next_item()? {
            if read.entry.starts_with(prefix) && read.revision > revision {
                return Ok(true);
            }
        }
        Ok(false)
    };
    for (key, chunk) in pending.range(range.clone()) {
        if beyond(key) {
            break;
        }
        if chunk.revision > revision
            && chunk.items.iter().any(|item| item.entry.starts_with(prefix) && item.revision > revision)
        {
            return Ok(true);
        }
    }
    for item in tree.range(range) {
        let (key, raw) = item.map_err(storage)?;
        if beyond(&key) {
            break;
        }
        // Chunks the group rewrote or removed were judged above.
        if !pending.contains_key(key.as_ref()) && added(&key, &raw)? {
            return Ok(true);
        }
    }
    Ok(false)
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
/// group most often adds to the same chunks, and takes them from here rather
/// than read and decode them again. Only the writer writes chunks, and it
/// replaces these only after the group is in the tree, so each is what the
/// tree holds under its key.
#[derive(Default)]
pub(super) struct Recent(Pending);

/// Most chunks [`Recent`] keeps (a few MB of full chunks): a larger group's
/// are let go.
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
/// writes, the chunks the last group wrote and where the writer last found
/// each set's members.
pub(super) struct Staging<'a> {
    pub tree: &'a sled::Tree,
    pub pending: &'a mut Pending,
    pub recent: &'a mut Recent,
    pub places: &'a mut Places,
}

impl Staging<'_> {
    /// The live chunk where `at` (the chunk key of an entry of `set`) is or
    /// belongs; `None` below every chunk.
    fn chunk_for(&mut self, set: &[u8], at: &[u8]) -> StoreResult<Option<Found>> {
        if let Some(chunk) = self.places.find(set, at) {
            return Ok(Some((chunk, None)));
        }
        let below = (Included(vec![CHUNK]), Included(at.to_vec()));
        let Some(found) = live_key_in(self.tree, self.pending, below, End::Last)? else { return Ok(None) };
        let next = live_key_in(self.tree, self.pending, (Excluded(at.to_vec()), chunks_end()), End::First)?;
        self.places.remember(&found.0, next.map(|(key, _)| key));
        Ok(Some(found))
    }

    /// Takes the live chunk under `key` out of the pending writes or the last
    /// group's, or reads it from the tree (unless its value was read already).
    fn take(&mut self, key: &[u8], stored: Option<sled::IVec>) -> StoreResult<Taken> {
        if let Some(chunk) = self.pending.remove(key) {
            return Ok(Taken { chunk, from: Source::Pending });
        }
        load(self.tree, self.recent, key, stored)
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
        let item = Item { entry: [set, member].concat(), set_len: set.len(), revision };
        let at = chunk_key(&item.entry);
        let Some((key, stored)) = self.chunk_for(set, &at)? else {
            // Below every chunk: the first chunk takes it if it has room
            // (under this lower key), else it starts a chunk of its own.
            let mut items = vec![item];
            let after = (Excluded(at.clone()), chunks_end());
            if let Some((next, stored)) = live_key_in(self.tree, self.pending, after, End::First)? {
                let taken = self.take(&next, stored)?;
                if taken.chunk.items.len() < MAX_ENTRIES {
                    items.extend(taken.chunk.items);
                    self.pending.insert(next.clone(), Chunk { revision, items: Vec::new() });
                    self.places.forget_chunk(&next);
                } else {
                    self.untouched(next, taken);
                }
            }
            self.pending.insert(at, Chunk { revision, items });
            return Ok(());
        };
        self.places.went_to(set, &key);
        let (chunk, from) = self.staged(&key, stored)?;
        let place = match chunk.items.binary_search_by(|held| held.entry.cmp(&item.entry)) {
            Err(place) => place,
            Ok(_) => {
                self.unchanged(key, from);
                return Ok(());
            }
        };
        chunk.items.insert(place, item);
        chunk.revision = revision;
        if chunk.items.len() > MAX_ENTRIES {
            let split = split_point(&chunk.items, place, set);
            let upper = chunk.items.split_off(split);
            let upper_key = chunk_key(&upper[0].entry);
            self.places.split(&key, &upper_key);
            if place >= split {
                self.places.went_to(set, &upper_key);
            }
            self.pending.insert(upper_key, Chunk { revision, items: upper });
        }
        Ok(())
    }

    /// Takes `member` out of `set`.
    pub fn remove(&mut self, set: &[u8], member: &[u8], revision: u64) -> StoreResult<()> {
        let entry = [set, member].concat();
        let Some((key, stored)) = self.chunk_for(set, &chunk_key(&entry))? else { return Ok(()) };
        let (chunk, from) = self.staged(&key, stored)?;
        let Ok(place) = chunk.items.binary_search_by(|held| held.entry.as_slice().cmp(&entry)) else {
            self.unchanged(key, from);
            return Ok(());
        };
        chunk.items.remove(place);
        chunk.revision = revision;
        if chunk.items.is_empty() {
            self.places.forget_chunk(&key);
        }
        Ok(())
    }

    /// The live chunk under `key` among the group's pending writes, to
    /// change in place: put there from the last group's or the tree (unless
    /// its value was read already) if it is not there yet.
    fn staged(&mut self, key: &[u8], stored: Option<sled::IVec>) -> StoreResult<(&mut Chunk, Source)> {
        match self.pending.entry(key.to_vec()) {
            std::collections::btree_map::Entry::Occupied(held) => Ok((held.into_mut(), Source::Pending)),
            std::collections::btree_map::Entry::Vacant(place) => {
                let Taken { chunk, from } = load(self.tree, self.recent, key, stored)?;
                Ok((place.insert(chunk), from))
            }
        }
    }

    /// Takes a chunk that [`Staging::staged`] put among the pending writes
    /// and that stayed as it was back to where it came from.
    fn unchanged(&mut self, key: Vec<u8>, from: Source) {
        if from != Source::Pending
            && let Some(chunk) = self.pending.remove(&key)
        {
            self.untouched(key, Taken { chunk, from });
        }
    }
}

/// The live chunk under `key` that the group has not staged: from the last
/// group's, or from the tree (unless its value was read already).
fn load(tree: &sled::Tree, recent: &mut Recent, key: &[u8], stored: Option<sled::IVec>) -> StoreResult<Taken> {
    if let Some(chunk) = recent.0.remove(key) {
        return Ok(Taken { chunk, from: Source::Recent });
    }
    let raw = match stored {
        Some(raw) => raw,
        None => {
            let found = tree.get(key).map_err(storage)?;
            found.ok_or_else(|| StoreError::Storage("a set chunk went missing".into()))?
        }
    };
    Ok(Taken { chunk: Chunk::decode(key, &raw)?, from: Source::Tree })
}

/// Where a chunk that `set`'s new item at `place` overfilled splits: an item
/// that ends the chunk (ascending ids) starts the next and leaves this one
/// full; one that ends its set's run within the chunk keeps that run below
/// and moves the other sets' entries up, so the set's next ids fill the
/// chunk; anything else splits it in half.
fn split_point(items: &[Item], place: usize, set: &[u8]) -> usize {
    if place == items.len() - 1 {
        return place;
    }
    let after_its_set = place > 0 && items[place - 1].is_in_set(set) && !items[place + 1].is_in_set(set);
    if after_its_set { place + 1 } else { items.len() / 2 }
}

/// Up to `limit` members under `prefix` from `start` (set name and member
/// together), in order, read from the tree.
pub(super) fn scan(tree: &super::views::TreeAt<'_>, prefix: &[u8], start: &[u8], limit: usize) -> StoreResult<Members> {
    let from = if start.is_empty() { prefix } else { start };
    let from_key = chunk_key(from);
    // The chunk at or before `from` may hold entries at or after it.
    let begin = match tree.last_key_at_or_before(&from_key)? {
        Some(key) if key.first() == Some(&CHUNK) => key.to_vec(),
        _ => from_key,
    };
    let mut out = Members::with_capacity(limit.min(crate::store::MAX_CHUNK));
    for item in tree.range_from(&begin) {
        let (key, raw) = item?;
        if key.first() != Some(&CHUNK) {
            break;
        }
        let mut reader = Reader::new(&key, &raw)?;
        while let Some(read) = reader.next_item()? {
            if read.entry < from {
                continue;
            }
            if !read.entry.starts_with(prefix) || out.len() >= limit {
                return Ok(out);
            }
            out.push(read.entry);
        }
    }
    Ok(out)
}

/// Up to `limit` members under `prefix` before `before` (exclusive; empty for
/// the last under `prefix`), set name and member together, in descending
/// order: chunks read from the last that may hold one, each one's entries
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
    // A chunk's key is at or below its entries, so no chunk from `end`'s on
    // holds one before it; without an end (a prefix of 0xff bytes), all of them.
    let bound = if end.is_empty() { vec![CHUNK + 1] } else { chunk_key(&end) };
    let mut out = Members::with_capacity(limit.min(crate::store::MAX_CHUNK));
    for item in tree.range_before(Some(&bound)) {
        if out.len() >= limit {
            break;
        }
        let (key, raw) = item?;
        if key.first() != Some(&CHUNK) {
            break;
        }
        let held = Chunk::decode(&key, &raw)?.items;
        for item in held.iter().rev() {
            if !end.is_empty() && item.entry >= end {
                continue;
            }
            if item.entry.as_slice() < prefix || out.len() >= limit {
                return Ok(out);
            }
            out.push(&item.entry);
        }
    }
    Ok(out)
}

/// Packs items that come in ascending order into full chunks, one at a
/// time: for a restore and an upgrade.
#[derive(Default)]
pub(super) struct Packer {
    filling: Option<(Vec<u8>, Chunk)>,
}

impl Packer {
    /// Takes `item` into the chunk being filled, and answers that chunk when
    /// the item starts the next; gives the item back if it is not above the
    /// last one taken.
    pub fn push(&mut self, item: Item) -> Result<Option<(Vec<u8>, Chunk)>, Item> {
        match &mut self.filling {
            Some((_, chunk)) if chunk.items.last().is_some_and(|last| last.entry >= item.entry) => Err(item),
            Some((_, chunk)) if chunk.items.len() < MAX_ENTRIES => {
                chunk.revision = chunk.revision.max(item.revision);
                chunk.items.push(item);
                Ok(None)
            }
            _ => {
                let key = chunk_key(&item.entry);
                let next = (key, Chunk { revision: item.revision, items: vec![item] });
                Ok(self.filling.replace(next))
            }
        }
    }

    /// The last chunk, if any.
    pub fn finish(&mut self) -> Option<(Vec<u8>, Chunk)> {
        self.filling.take()
    }
}

/// Members written in bulk, for a restore or an upgrade: those that come in
/// order fill chunks that go into the caller's batch; any out of order are
/// kept and placed once the rest is in the tree.
#[derive(Default)]
pub(super) struct Loader {
    packer: Packer,
    unordered: Vec<Item>,
}

impl Loader {
    /// Takes `item`; answers the bytes it put into `batch`.
    pub fn push(&mut self, item: Item, batch: &mut sled::Batch) -> usize {
        match self.packer.push(item) {
            Ok(Some((key, chunk))) => put_chunk(batch, key, &chunk),
            Ok(None) => 0,
            Err(item) => {
                self.unordered.push(item);
                0
            }
        }
    }

    /// Puts the last chunk into `batch`, applies it, then places the items
    /// that came out of order.
    pub fn finish(mut self, tree: &sled::Tree, mut batch: sled::Batch) -> StoreResult<()> {
        if let Some((key, chunk)) = self.packer.finish() {
            put_chunk(&mut batch, key, &chunk);
        }
        tree.apply_batch(batch).map_err(storage)?;
        add_all(tree, self.unordered)
    }
}

/// Puts a group's pending chunk writes into `batch`: each chunk encoded, or
/// removed if the group emptied it. Answers the bytes of keys and values.
pub(super) fn write_pending(pending: &Pending, batch: &mut sled::Batch) -> u64 {
    let mut bytes = 0;
    for (key, chunk) in pending {
        bytes += match is_live(chunk) {
            true => put_chunk(batch, key.clone(), chunk),
            false => {
                batch.remove(key.as_slice());
                key.len()
            }
        } as u64;
    }
    bytes
}

/// Puts `chunk` under `key` into `batch`; answers the bytes.
fn put_chunk(batch: &mut sled::Batch, key: Vec<u8>, chunk: &Chunk) -> usize {
    let encoded = chunk.encode(&key);
    let bytes = key.len() + encoded.len();
    batch.insert(key, encoded);
    bytes
}

/// Adds `items` (in any order) to the chunks in the tree, a group of them to
/// a batch.
fn add_all(tree: &sled::Tree, items: Vec<Item>) -> StoreResult<()> {
    let (mut places, mut recent) = (Places::default(), Recent::default());
    for group in items.chunks(10_000) {
        let mut pending = Pending::new();
        let mut staging = Staging { tree, pending: &mut pending, recent: &mut recent, places: &mut places };
        for item in group {
            let (set, member) = item.entry.split_at(item.set_len);
            staging.add(set, member, item.revision)?;
        }
        let mut batch = sled::Batch::default();
        write_pending(&pending, &mut batch);
        tree.apply_batch(batch).map_err(storage)?;
        recent.replace(pending);
    }
    Ok(())
}

/// Rewrites the chunks of schema 2 (`s{set}{lowest member}`, one set each:
/// the revision, the set name's length as a u32, each member with a u16
/// length) as chunks of the shared space, and removes them. Chunks of the
/// shared space already there are what an upgrade stopped half way left:
/// they are written again. Returns the members moved.
pub(super) fn upgrade_per_set_chunks(tree: &sled::Db) -> StoreResult<u64> {
    remove_prefix(tree, CHUNK)?;
    let (mut moved, mut bytes) = (0u64, 0);
    let (mut loader, mut batch) = (Loader::default(), sled::Batch::default());
    for stored in tree.scan_prefix([PER_SET_CHUNK]) {
        let (key, raw) = stored.map_err(storage)?;
        for item in per_set_items(&key, &raw)? {
            moved += 1;
            bytes += loader.push(item, &mut batch);
        }
        if bytes >= LOAD_BATCH_BYTES {
            tree.apply_batch(std::mem::take(&mut batch)).map_err(storage)?;
            bytes = 0;
        }
    }
    loader.finish(tree, batch)?;
    Ok(moved)
}

/// Removes every key that starts with `first`, a batch at a time.
pub(super) fn remove_prefix(tree: &sled::Db, first: u8) -> StoreResult<()> {
    loop {
        let mut batch = sled::Batch::default();
        let mut count = 0;
        for item in tree.scan_prefix([first]).keys().take(4096) {
            batch.remove(item.map_err(storage)?);
            count += 1;
        }
        if count == 0 {
            return Ok(());
        }
        tree.apply_batch(batch).map_err(storage)?;
    }
}

/// A chunk of schema 2, as that layout stored it: for tests of the upgrade.
#[cfg(test)]
pub(super) fn per_set_chunk(set: &[u8], members: &[&[u8]], revision: u64) -> (Vec<u8>, Vec<u8>) {
    let key = [&[PER_SET_CHUNK][..], set, members[0]].concat();
    let mut value = revision.to_be_bytes().to_vec();
    value.extend_from_slice(&(set.len() as u32).to_be_bytes());
    for member in members {
        value.extend_from_slice(&(member.len() as u16).to_be_bytes());
        value.extend_from_slice(member);
    }
    (key, value)
}

/// The items of a chunk of schema 2.
fn per_set_items(key: &[u8], raw: &[u8]) -> StoreResult<Vec<Item>> {
    let revision = u64::from_be_bytes(raw.get(..8).ok_or_else(corrupt)?.try_into().expect("8 bytes"));
    let set_len = u32::from_be_bytes(raw.get(8..12).ok_or_else(corrupt)?.try_into().expect("4 bytes")) as usize;
    let set = key.get(1..1 + set_len).ok_or_else(corrupt)?;
    let mut rest = &raw[12..];
    let mut items = Vec::new();
    while !rest.is_empty() {
        let len = usize::from(u16::from_be_bytes(rest.get(..2).ok_or_else(corrupt)?.try_into().expect("2 bytes")));
        let member = rest.get(2..2 + len).ok_or_else(corrupt)?;
        items.push(Item { entry: [set, member].concat(), set_len, revision });
        rest = &rest[2 + len..];
    }
    Ok(items)
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
        let mut batch = sled::Batch::default();
        write_pending(&pending, &mut batch);
        tree.apply_batch(batch).unwrap();
        recent.replace(pending);
    }

    fn latest(tree: &sled::Tree) -> super::super::views::TreeAt<'_> {
        super::super::views::TreeAt { tree, at: None }
    }

    /// Every chunk in the tree holds 1 to `MAX_ENTRIES` entries, in order,
    /// at or above its key.
    fn assert_chunks_are_well_formed(tree: &sled::Tree) {
        for stored in tree.scan_prefix([CHUNK]) {
            let (key, raw) = stored.unwrap();
            let chunk = Chunk::decode(&key, &raw).unwrap();
            assert!((1..=MAX_ENTRIES).contains(&chunk.items.len()));
            assert!(key[1..] <= chunk.items[0].entry[..], "a chunk's key is at or below its entries");
            assert!(chunk.items.windows(2).all(|pair| pair[0].entry < pair[1].entry));
        }
    }

    fn item(set: &[u8], member: &[u8], revision: u64) -> Item {
        Item { entry: [set, member].concat(), set_len: set.len(), revision }
    }

    #[test]
    fn a_chunk_decodes_to_what_was_encoded_and_garbage_is_refused() {
        let items = vec![item(b"i/a\0", b"a1", 3), item(b"i/a\0", b"a2", 7), item(b"i/b\0", &[0; 300], 5)];
        let chunk = Chunk { revision: 7, items };
        let key = chunk_key(b"i/a\0a0");
        let encoded = chunk.encode(&key);
        assert_eq!(Chunk::decode(&key, &encoded).unwrap(), chunk);
        assert!(encoded.len() < 8 + 300 + 40, "neighbours share their bytes: {}", encoded.len());
        assert!(Chunk::decode(&key, &[0; 5]).is_err());
        let mut cut = encoded.clone();
        cut.truncate(cut.len() - 2);
        assert!(Chunk::decode(&key, &cut).is_err());
        // An item said to be older than revision 0.
        let mut aged = chunk.encode(&key);
        aged[..8].copy_from_slice(&1u64.to_be_bytes());
        assert!(Chunk::decode(&key, &aged).is_err());
    }

    #[test]
    fn shared_prefixes_are_counted_to_the_byte() {
        let long = b"i/agreements/title\0economic partnership 0001\0a019";
        for cut in 0..long.len() {
            let mut other = long.to_vec();
            other[cut] ^= 1;
            assert_eq!(shared_prefix(long, &other), cut);
            assert_eq!(shared_prefix(&long[..cut], long), cut, "one ends first");
        }
        assert_eq!(shared_prefix(long, long), long.len());
    }

    /// Adds and removes in several orders and groups agree with a plain
    /// ordered set, chunks never exceed their size, and members read back in
    /// order from any start, forwards and backwards.
    #[test]
    fn members_read_back_in_order_whatever_order_they_came_in() {
        let (_dir, tree) = temporary_tree();
        let mut model = std::collections::BTreeSet::new();
        let sets: [&[u8]; 3] = [b"i/a\0x\0", b"i/a\0y\0", b"i/b\0\0\0\0\0"];
        let mut revision = 0;
        let (mut places, mut recent) = (Places::default(), Recent::default());
        // Ascending, descending and scattered ids, applied in groups of 10.
        let ids: Vec<u32> = (0..200).chain((300..400).rev()).chain((0..200).map(|i| (i * 7919) % 500)).collect();
        for group in ids.chunks(10) {
            let mut pending = Pending::new();
            let mut staging = Staging { tree: &tree, pending: &mut pending, recent: &mut recent, places: &mut places };
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
                let stored = tree.get(key).unwrap().unwrap();
                assert_eq!(Chunk::decode(key, &stored).unwrap(), *chunk, "as the tree has it");
            }
        }
        let all: Vec<Vec<u8>> = model.iter().cloned().collect();
        assert_eq!(scan(&latest(&tree), b"i/", b"", usize::MAX).unwrap().to_vec(), all);
        assert_chunks_are_well_formed(&tree);
        // From any start, within any prefix, up to a limit; and backwards.
        for (at, start) in all.iter().enumerate().step_by(17) {
            assert_eq!(scan(&latest(&tree), b"i/", start, 5).unwrap().to_vec(), all[at..(at + 5).min(all.len())]);
            let before: Vec<Vec<u8>> = all[at.saturating_sub(5)..at].iter().rev().cloned().collect();
            assert_eq!(scan_before(&latest(&tree), b"i/", start, 5).unwrap().to_vec(), before);
        }
        for set in sets {
            let only: Vec<Vec<u8>> = all.iter().filter(|m| m.starts_with(set)).cloned().collect();
            assert_eq!(scan(&latest(&tree), set, b"", usize::MAX).unwrap().to_vec(), only);
            let backwards: Vec<Vec<u8>> = only.iter().rev().cloned().collect();
            assert_eq!(scan_before(&latest(&tree), set, b"", usize::MAX).unwrap().to_vec(), backwards);
        }
        assert_eq!(scan(&latest(&tree), b"i/c", b"", 10).unwrap().to_vec(), Vec::<Vec<u8>>::new());
        // A restore packs the same members into full chunks.
        let sets_of = |m: &Vec<u8>| *sets.iter().find(|s| m.starts_with(s)).unwrap();
        let (_dir2, restored) = temporary_tree();
        let mut packer = Packer::default();
        for m in &all {
            if let Some((key, chunk)) = packer.push(item(sets_of(m), &m[sets_of(m).len()..], 1)).unwrap() {
                restored.insert(&key, chunk.encode(&key)).unwrap();
            }
        }
        let (key, chunk) = packer.finish().unwrap();
        restored.insert(&key, chunk.encode(&key)).unwrap();
        assert!(packer.finish().is_none());
        let again = item(sets_of(&all[0]), &all[0][sets_of(&all[0]).len()..], 1);
        assert_eq!(packer.push(again.clone()).unwrap(), None);
        assert_eq!(packer.push(again.clone()), Err(again), "an item not above the last is given back");
        assert_eq!(scan(&latest(&restored), b"i/", b"", usize::MAX).unwrap().to_vec(), all);
        assert!(restored.len() <= all.len() / MAX_ENTRIES + 1);
    }

    /// Random additions and removals over many small and a few large sets,
    /// in groups of random size, agree with a plain ordered set after every
    /// group: through splits, emptied chunks, entries below every chunk and
    /// the writer's remembered spans.
    #[test]
    fn random_writes_agree_with_a_plain_ordered_set() {
        let (_dir, tree) = temporary_tree();
        let (mut places, mut recent) = (Places::default(), Recent::default());
        let mut model = std::collections::BTreeSet::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % below
        };
        let mut revision = 0;
        for _ in 0..60 {
            let mut pending = Pending::new();
            let mut staging = Staging { tree: &tree, pending: &mut pending, recent: &mut recent, places: &mut places };
            for _ in 0..next(120) {
                revision += 1;
                let set = match next(4) {
                    0 => format!("i/big\0{}\0", next(3)),
                    _ => format!("i/t\0title {:04}\0", next(400)),
                };
                let member = format!("a{:04}", next(300));
                let entry = [set.as_bytes(), member.as_bytes()].concat();
                if next(3) == 0 {
                    staging.remove(set.as_bytes(), member.as_bytes(), revision).unwrap();
                    model.remove(&entry);
                } else {
                    staging.add(set.as_bytes(), member.as_bytes(), revision).unwrap();
                    model.insert(entry);
                }
            }
            apply(&tree, pending, &mut recent);
            let all: Vec<Vec<u8>> = model.iter().cloned().collect();
            assert_eq!(scan(&latest(&tree), b"i/", b"", usize::MAX).unwrap().to_vec(), all);
        }
        assert_chunks_are_well_formed(&tree);
    }

    /// Sets of one member each (unique values of an ordered index) share
    /// chunks; a set that grows at its end among them fills chunks of its
    /// own rather than splitting them in halves.
    #[test]
    fn small_sets_share_chunks_and_a_growing_set_fills_its_own() {
        let (_dir, tree) = temporary_tree();
        let (mut places, mut recent) = (Places::default(), Recent::default());
        let mut revision = 0;
        for group in 0..20u32 {
            let mut pending = Pending::new();
            let mut staging = Staging { tree: &tree, pending: &mut pending, recent: &mut recent, places: &mut places };
            for i in 0..50u32 {
                revision += 1;
                let n = group * 50 + i;
                // A title of its own, in scattered order; and the next id of one growing set.
                let title = format!("i/t\0title {:05}\0", (n * 7919) % 1000);
                staging.add(title.as_bytes(), format!("a{n:05}").as_bytes(), revision).unwrap();
                staging.add(b"i/p\0japan\0", format!("a{n:05}").as_bytes(), revision).unwrap();
            }
            apply(&tree, pending, &mut recent);
        }
        let chunks = tree.scan_prefix([CHUNK]).count();
        assert!(chunks <= 2000 / 16, "2,000 members in {chunks} chunks");
        let grown = scan(&latest(&tree), b"i/p\0", b"", usize::MAX).unwrap();
        assert_eq!(grown.len(), 1000);
        let full = tree
            .scan_prefix(chunk_key(b"i/p\0"))
            .filter(|stored| {
                let (key, raw) = stored.as_ref().unwrap();
                Chunk::decode(key, raw).unwrap().items.len() == MAX_ENTRIES
            })
            .count();
        assert!(full >= 1000 / MAX_ENTRIES - 1, "the growing set's chunks are full: {full}");
    }

    /// An added member is seen under its own set's prefix only, although
    /// its neighbours share its chunk; a removed one is not an addition.
    #[test]
    fn an_addition_is_seen_under_its_own_set_only() {
        let (_dir, tree) = temporary_tree();
        let (mut places, mut recent) = (Places::default(), Recent::default());
        let mut pending = Pending::new();
        let mut staging = Staging { tree: &tree, pending: &mut pending, recent: &mut recent, places: &mut places };
        for (revision, set) in [b"x/1\0", b"x/2\0", b"x/3\0"].iter().enumerate() {
            staging.add(*set, b"m", revision as u64 + 1).unwrap();
        }
        apply(&tree, pending, &mut recent);
        assert_eq!(tree.scan_prefix([CHUNK]).count(), 1, "one chunk");
        let mut pending = Pending::new();
        let mut staging = Staging { tree: &tree, pending: &mut pending, recent: &mut recent, places: &mut places };
        staging.add(b"x/2\0", b"n", 4).unwrap();
        staging.remove(b"x/3\0", b"m", 5).unwrap();
        for (prefix, added) in [(&b"x/1\0"[..], false), (b"x/2\0", true), (b"x/3\0", false), (b"x/", true)] {
            assert_eq!(added_after(&tree, &pending, prefix, 3).unwrap(), added, "pending, {prefix:?}");
        }
        apply(&tree, pending, &mut recent);
        let empty = Pending::new();
        for (prefix, added) in [(&b"x/1\0"[..], false), (b"x/2\0", true), (b"x/3\0", false), (b"x/0", false)] {
            assert_eq!(added_after(&tree, &empty, prefix, 3).unwrap(), added, "applied, {prefix:?}");
        }
        assert!(!added_after(&tree, &empty, b"x/2\0", 4).unwrap());
    }

    /// The next group takes the chunk the last one wrote from memory, not the
    /// tree; a chunk the group removed, or a group too large, is not kept.
    #[test]
    fn the_last_groups_chunks_are_taken_from_memory() {
        let (_dir, tree) = temporary_tree();
        let (mut places, mut recent) = (Places::default(), Recent::default());
        let set: &[u8] = b"i/a\0x\0";
        let mut pending = Pending::new();
        let mut staging = Staging { tree: &tree, pending: &mut pending, recent: &mut recent, places: &mut places };
        staging.add(set, b"a1", 1).unwrap();
        staging.add(set, b"a2", 2).unwrap();
        apply(&tree, pending, &mut recent);
        let key = chunk_key(&[set, b"a1"].concat());
        let mut pending = Pending::new();
        let mut staging = Staging { tree: &tree, pending: &mut pending, recent: &mut recent, places: &mut places };
        let taken = staging.take(&key, None).unwrap();
        assert_eq!((taken.from, taken.chunk.items.len()), (Source::Recent, 2));
        staging.untouched(key.clone(), taken);
        assert_eq!(staging.take(&key, None).unwrap().from, Source::Recent, "an untouched chunk goes back");
        let mut fresh = Recent::default();
        let mut staging = Staging { tree: &tree, pending: &mut pending, recent: &mut fresh, places: &mut places };
        assert_eq!(staging.take(&key, None).unwrap().from, Source::Tree);

        let mut removed = Pending::new();
        removed.insert(key.clone(), Chunk { revision: 3, items: Vec::new() });
        recent.replace(removed);
        assert!(recent.0.is_empty(), "a removed chunk is not kept");
        let many = (0..=MAX_RECENT).map(|i| {
            let entry = [set, format!("{i:05}").as_bytes()].concat();
            (chunk_key(&entry), Chunk { revision: 4, items: vec![item(set, format!("{i:05}").as_bytes(), 4)] })
        });
        recent.replace(many.collect());
        assert!(recent.0.is_empty(), "a group of more than MAX_RECENT chunks is let go");
    }

    /// An upgrade moves every member of the chunks of schema 2 into the
    /// shared space with its revision, and an upgrade cut short (chunks of
    /// both kinds) is done again from the start.
    #[test]
    fn an_upgrade_moves_the_per_set_chunks_into_the_shared_space() {
        let (_dir, tree) = temporary_tree();
        for (set, members, revision) in
            [(&b"i/a\0"[..], &[&b"a1"[..], b"a2"][..], 4), (b"i/a\0", &[b"a3"], 6), (b"i/b\0", &[b"a1"], 5)]
        {
            let (key, value) = per_set_chunk(set, members, revision);
            tree.insert(key, value).unwrap();
        }
        tree.insert(
            chunk_key(b"i/a\0a0"),
            Chunk { revision: 1, items: vec![item(b"i/a\0", b"a0", 1)] }.encode(&chunk_key(b"i/a\0a0")),
        )
        .unwrap();
        assert_eq!(upgrade_per_set_chunks(&tree).unwrap(), 4);
        let expected: Vec<Vec<u8>> = [&b"i/a\0a1"[..], b"i/a\0a2", b"i/a\0a3", b"i/b\0a1"].map(<[u8]>::to_vec).to_vec();
        assert_eq!(scan(&latest(&tree), b"i/", b"", 10).unwrap().to_vec(), expected, "the leftover a0 is gone");
        let (key, raw) = tree.scan_prefix([CHUNK]).next().unwrap().unwrap();
        let revisions: Vec<u64> = Chunk::decode(&key, &raw).unwrap().items.iter().map(|i| i.revision).collect();
        assert_eq!(revisions, [4, 4, 6, 5]);
        remove_prefix(&tree, PER_SET_CHUNK).unwrap();
        assert_eq!(tree.len(), 1);
        let (key, value) = per_set_chunk(b"i/c\0", &[b"a1"], 2);
        tree.insert(key, &value[..value.len() - 1]).unwrap();
        assert!(upgrade_per_set_chunks(&tree).is_err(), "a damaged chunk stops the upgrade");
    }
}
