//! The storage contract: ordered keys, one global revision, atomic conditional
//! transactions and a change log, the model etcd also has, so another engine can
//! sit behind it without touching the layers above. Nothing above this module
//! knows which engine is in use.
//!
//! Beside the keys, a store holds sets: named collections of members, read in
//! the order of `set name || member` as if each member were a key of its own.
//! They serve entries that carry no value (index and reference entries), which
//! an engine may pack many to a stored key: in sled, one key per member cost a
//! page of the tree for every ~8 entries, and the page table is what the
//! process's memory and start time grow with. Set names must be prefix-free
//! (none is a prefix of another; ending each in a byte it cannot otherwise
//! hold does it), so each set's members stay together in that order.

pub mod backup;
pub mod etcd;
pub mod generations;
pub mod memory;
pub mod sled;

pub mod testkit;

use std::future::Future;
use std::pin::Pin;

/// A boxed future, so `Store` stays usable as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Committed change-log entries, oldest first, each with its revision (see
/// [`Store::watch`]).
pub type ChangeStream = Pin<Box<dyn tokio_stream::Stream<Item = StoreResult<(u64, Vec<u8>)>> + Send>>;

/// Change-log entries, each with its revision, oldest first.
pub type Changes = Vec<(u64, Vec<u8>)>;

/// Keys and their entries, in key order.
pub type Entries = Vec<(Vec<u8>, Entry)>;

/// A stored value and the revision of the transaction that last wrote it.
/// The value is shared, not copied, where the engine holds it in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub mod_revision: u64,
    pub value: bytes::Bytes,
}

/// Set members read in one call (each its set's name followed by the member),
/// in order, stored end to end: a List page reads some fifty, and one
/// allocation each would cost a tenth of the page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Members {
    /// Room for `members` of about the size of an index entry (a set name
    /// and an id: some 48 bytes).
    pub fn with_capacity(members: usize) -> Members {
        Members { bytes: Vec::with_capacity(members * 48), ends: Vec::with_capacity(members) }
    }

    pub fn push(&mut self, member: &[u8]) {
        self.bytes.extend_from_slice(member);
        self.ends.push(self.bytes.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// The memory it holds beyond itself.
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.ends.capacity() * size_of::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).map(|i| self.member(i))
    }

    /// Each member in a `Vec` of its own.
    pub fn to_vec(&self) -> Vec<Vec<u8>> {
        self.iter().map(<[u8]>::to_vec).collect()
    }

    pub fn last(&self) -> Option<&[u8]> {
        self.len().checked_sub(1).map(|i| self.member(i))
    }

    fn member(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }
}

/// A precondition checked, with the writes, as one atomic step.
#[derive(Clone, Debug)]
pub enum Condition {
    /// The key was last written at exactly this revision; 0 means it must be absent.
    ModRevision { key: Vec<u8>, equals: u64 },
    /// No key under the prefix, and no member of a set whose name starts with
    /// it, was written after this revision. Written keys and members include
    /// new ones, so this guards "nothing was added here since I looked". An
    /// engine may count a removed member as a write too.
    NoneWrittenAfter { prefix: Vec<u8>, revision: u64 },
}

/// One write of a transaction.
#[derive(Clone, Debug)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Adds `member` to the set `set` (nothing changes if it is in it).
    Add {
        set: Vec<u8>,
        member: Vec<u8>,
    },
    /// Takes `member` out of the set `set` (nothing changes if it is not in it).
    Remove {
        set: Vec<u8>,
        member: Vec<u8>,
    },
}

/// Conditions, writes and the change-log entry of one revision.
#[derive(Clone, Debug, Default)]
pub struct Txn {
    pub conditions: Vec<Condition>,
    pub ops: Vec<Op>,
    /// Stored in the change log under the revision this transaction gets.
    pub change: Vec<u8>,
}

impl Txn {
    /// What it takes of a transaction's limits: its conditions and writes,
    /// and the bytes of its keys, values, members and change-log entry.
    pub fn size(&self) -> TxnSize {
        let condition_bytes: usize = self
            .conditions
            .iter()
            .map(|c| match c {
                Condition::ModRevision { key, .. } => key.len() + 8,
                Condition::NoneWrittenAfter { prefix, .. } => prefix.len() + 8,
            })
            .sum();
        let op_bytes: usize = self
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => key.len() + value.len(),
                Op::Delete { key } => key.len(),
                Op::Add { set, member } | Op::Remove { set, member } => set.len() + member.len(),
            })
            .sum();
        TxnSize { ops: self.conditions.len() + self.ops.len(), bytes: condition_bytes + op_bytes + self.change.len() }
    }
}

/// How much of a transaction's limits one takes (see [`Txn::size`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxnSize {
    /// Conditions and writes, each counting one.
    pub ops: usize,
    pub bytes: usize,
}

impl std::ops::Add for TxnSize {
    type Output = TxnSize;

    fn add(self, other: TxnSize) -> TxnSize {
        TxnSize { ops: self.ops + other.ops, bytes: self.bytes + other.bytes }
    }
}

/// The largest transaction an engine takes, as it declares it: etcd, for
/// one, refuses a request beyond `--max-txn-ops` or `--max-request-bytes`.
/// A caller that writes much splits its work to fit ([`Batches`]); one
/// transaction beyond it is refused with [`StoreError::TooLarge`], whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnLimits {
    /// Most conditions and writes, together.
    pub max_ops: usize,
    /// Most bytes, counted as [`Txn::size`] counts them.
    pub max_bytes: usize,
}

impl TxnLimits {
    /// No limit but memory.
    pub const UNBOUNDED: TxnLimits = TxnLimits { max_ops: usize::MAX, max_bytes: usize::MAX };

    pub fn admits(&self, size: TxnSize) -> bool {
        size.ops <= self.max_ops && size.bytes <= self.max_bytes
    }

    /// [`StoreError::TooLarge`] for a transaction beyond the limits.
    pub fn check(&self, txn: &Txn) -> StoreResult<()> {
        let size = txn.size();
        match self.admits(size) {
            true => Ok(()),
            false => Err(StoreError::TooLarge { size, limits: *self }),
        }
    }
}

/// Most writes, and bytes, in one transaction of a long job (see [`Batches`]).
pub const JOB_MAX_OPS: usize = 10_000;
pub const JOB_MAX_BYTES: usize = 64 << 20;

/// Transactions made of whole items (an item's conditions and writes stay
/// in one transaction), each as large as the engine's limits allow: how the
/// registry's long jobs (seeding, upgrades, expiry) write. Every
/// transaction gets the same change-log entry, and room for `reserved`
/// (the writes a job adds to each of its transactions).
pub struct Batches {
    limits: TxnLimits,
    change: Vec<u8>,
    reserved: TxnSize,
    current: Txn,
    /// `current.size()`, kept as items come: measuring the transaction
    /// again for each item made a job of n writes take n² steps.
    current_size: TxnSize,
    items: usize,
}

impl Batches {
    pub fn new(limits: TxnLimits, change: Vec<u8>, reserved: TxnSize) -> Batches {
        let current = Txn { change: change.clone(), ..Default::default() };
        let current_size = current.size();
        // A job's transaction stays of a size an engine without limits
        // writes in a moment, not the whole of a large job.
        let limits =
            TxnLimits { max_ops: limits.max_ops.min(JOB_MAX_OPS), max_bytes: limits.max_bytes.min(JOB_MAX_BYTES) };
        Batches { limits, change, reserved, current, current_size, items: 0 }
    }

    /// Adds an item; returns the transaction to commit first when the item
    /// does not fit beside what is gathered, or TooLarge when it does not
    /// fit alone.
    pub fn push(&mut self, item: Txn) -> StoreResult<Option<Txn>> {
        let size = item.size();
        let alone = size + TxnSize { ops: 0, bytes: self.change.len() } + self.reserved;
        if !self.limits.admits(alone) {
            return Err(StoreError::TooLarge { size: alone, limits: self.limits });
        }
        let together = self.current_size + size + self.reserved;
        let full = match self.items > 0 && !self.limits.admits(together) {
            true => self.take(),
            false => None,
        };
        self.current.conditions.extend(item.conditions);
        self.current.ops.extend(item.ops);
        self.current_size = self.current_size + size;
        self.items += 1;
        Ok(full)
    }

    /// The items gathered since the last transaction returned, as one.
    pub fn take(&mut self) -> Option<Txn> {
        if self.items == 0 {
            return None;
        }
        self.items = 0;
        let next = Txn { change: self.change.clone(), ..Default::default() };
        self.current_size = next.size();
        Some(std::mem::replace(&mut self.current, next))
    }
}

/// What became of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied at this revision (and durable, once [`Store::commit`] answers).
    Committed { revision: u64 },
    /// A condition did not hold; nothing was written.
    ConditionFailed,
}

/// A transaction's outcome once reads see it, and the wait for it to be
/// durable (at once for one whose conditions failed: it wrote nothing).
pub struct Applied {
    pub outcome: Outcome,
    pub durable: BoxFuture<'static, StoreResult<()>>,
}

impl Applied {
    /// An outcome that needs no wait: a failed condition, or a store whose
    /// writes are durable once applied.
    pub fn at_once(outcome: Outcome) -> Applied {
        Applied { outcome, durable: Box::pin(std::future::ready(Ok(()))) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The engine failed to read or write.
    Storage(String),
    /// The data on disk is not ours, or of a schema this build cannot read.
    Incompatible(String),
    /// Another process holds the data dir.
    Locked(String),
    /// Change-log entries asked for are no longer held: the log starts at `first`.
    Compacted { first: u64 },
    /// A transaction beyond the engine's limits; nothing was written.
    TooLarge { size: TxnSize, limits: TxnLimits },
    /// The disk holding the data dir is full.
    Full(String),
    /// The store was shut down, or stopped after a failed write.
    Closed,
    /// The engine cannot serve for now (a networked engine that lost its
    /// cluster, say); the same call may succeed if retried.
    Unavailable(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Storage(m) => write!(f, "storage error: {m}"),
            StoreError::Incompatible(m) => write!(f, "{m}"),
            StoreError::Locked(m) => write!(f, "data dir is in use by another process: {m}"),
            StoreError::Full(m) => write!(f, "the data dir's disk is full: {m}"),
            StoreError::Closed => write!(f, "the store is closed"),
            StoreError::Unavailable(m) => write!(f, "the store is unavailable: {m}"),
            StoreError::Compacted { first } => write!(f, "the change log was compacted: it starts at revision {first}"),
            StoreError::TooLarge { size, limits } => write!(
                f,
                "a transaction of {} operations and {} bytes, beyond the store's limits of {} and {}",
                size.ops, size.bytes, limits.max_ops, limits.max_bytes
            ),
        }
    }
}

impl std::error::Error for StoreError {}

pub type StoreResult<T> = Result<T, StoreError>;

/// An ordered key-value store with one global revision, read through
/// [`Snapshot`]s.
///
/// Revisions are assigned by the engine, in commit order, and are not dense:
/// an engine may skip numbers (etcd's revision counts every write to the
/// cluster, other clients' included). Callers take the revision a commit
/// answers with and the next change as it comes, and never compute one
/// revision from another.
///
/// Reads may observe a transaction shortly before it is durable; callers that
/// must not show such data wait with [`Store::wait_durable`] for the highest
/// `mod_revision` they read.
pub trait Store: Send + Sync + 'static {
    /// A consistent view of the store at its latest revision, whoever wrote
    /// it; it keeps showing that revision, however the store changes, until
    /// it is dropped. A view is meant to be held for one request: an engine
    /// keeps what it needs for a view alive for as long as the view is.
    fn snapshot(&self) -> BoxFuture<'_, StoreResult<Box<dyn Snapshot>>>;

    /// The entries under `keys` at the latest revision, in their order, each
    /// `None` where absent: each read consistent on its own (not with the
    /// others), without the cost of a view. For reads each checked again at
    /// commit (a write's conditions), one round trip for all.
    fn get_many<'a>(&'a self, keys: &'a [&'a [u8]]) -> BoxFuture<'a, StoreResult<Vec<Option<Entry>>>> {
        Box::pin(async move { self.snapshot().await?.get_many(keys).await })
    }

    /// The entry under `key` at the latest revision (see [`Store::get_many`]).
    fn get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, StoreResult<Option<Entry>>> {
        Box::pin(async move { Ok(self.get_many(&[key]).await?.pop().flatten()) })
    }

    /// The revision of the last committed transaction, whoever committed it
    /// (0 for an empty store): what a snapshot taken now shows. A write that
    /// [`Store::apply`] answered may be later until it is durable.
    fn current_revision(&self) -> BoxFuture<'_, StoreResult<u64>>;

    /// The largest transaction it takes.
    fn limits(&self) -> TxnLimits {
        TxnLimits::UNBOUNDED
    }

    /// Resolves once every transaction up to `revision` is durable.
    fn wait_durable(&self, revision: u64) -> BoxFuture<'static, StoreResult<()>>;

    /// Checks the conditions and applies the writes and the change-log entry as
    /// one atomic step at the next revision; resolves once
    /// [`Store::get_many`] sees it (a [`Store::snapshot`] may show it only
    /// later), which may be before it is durable (the returned future, like
    /// [`Store::wait_durable`], tells). A caller that holds other writes back
    /// until its own is in can let them go here, so the next one can be
    /// applied while this one is still being made durable. A transaction
    /// beyond [`Store::limits`] is refused with [`StoreError::TooLarge`].
    fn apply(&self, txn: Txn) -> BoxFuture<'static, StoreResult<Applied>>;

    /// [`Store::apply`], resolved once the transaction is durable.
    fn commit(&self, txn: Txn) -> BoxFuture<'static, StoreResult<Outcome>> {
        let applied = self.apply(txn);
        Box::pin(async move {
            let Applied { outcome, durable } = applied.await?;
            durable.await?;
            Ok(outcome)
        })
    }

    /// The change-log entries from `from_revision` on, oldest first: those
    /// the log holds, then each as it commits, whoever wrote it (another
    /// server on a shared engine included), each once it is durable.
    /// Revisions may skip numbers: callers take the next entry as it comes.
    /// Ends with [`StoreError::Compacted`] when the entries from where it is
    /// are no longer held (at the start, or when compaction overtook a slow
    /// reader), and with the store's error once it is closed.
    fn watch(&self, from_revision: u64) -> ChangeStream;

    /// Up to `limit` change-log entries from `from_revision` (inclusive), oldest first.
    fn changes(&self, from_revision: u64, limit: usize) -> BoxFuture<'_, StoreResult<Changes>>;

    /// The oldest revision whose change-log entry may still be read: 1 until
    /// the log is compacted, then the revision it was compacted to.
    fn first_change(&self) -> BoxFuture<'_, StoreResult<u64>>;

    /// Removes the change-log entries before `revision` (at most up to the
    /// current revision + 1), recording the new first revision first so no
    /// reader mistakes a removed entry for a gap. Returns how many were removed.
    fn compact(&self, revision: u64) -> BoxFuture<'_, StoreResult<u64>>;

    /// What is particular to this engine: its figures and its lifecycle.
    fn engine(&self) -> &dyn Engine;
}

/// The store as it was at one revision (see [`Store::snapshot`]): every read
/// through it shows that revision and nothing later.
pub trait Snapshot: Send + Sync {
    /// The revision it shows.
    fn revision(&self) -> u64;

    /// The entries under `keys`, in their order, each `None` where absent: a
    /// List page reads its records in one call (over a network, one round
    /// trip rather than one for each).
    fn get_many<'a>(&'a self, keys: &'a [&'a [u8]]) -> BoxFuture<'a, StoreResult<Vec<Option<Entry>>>>;

    /// The entry under `key`.
    fn get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, StoreResult<Option<Entry>>> {
        Box::pin(async move { Ok(self.get_many(&[key]).await?.pop().flatten()) })
    }

    /// Up to `limit` entries with keys under `prefix`, from `start`
    /// (inclusive, and itself under `prefix` or empty for the first) in
    /// ascending key order.
    fn scan<'a>(&'a self, prefix: &'a [u8], start: &'a [u8], limit: usize) -> BoxFuture<'a, StoreResult<Entries>>;

    /// Up to `limit` set members under `prefix`, each as its set's name
    /// followed by the member, from `start` (inclusive, and itself under
    /// `prefix` or empty for the first) in ascending order of those bytes.
    fn members<'a>(&'a self, prefix: &'a [u8], start: &'a [u8], limit: usize) -> BoxFuture<'a, StoreResult<Members>>;

    /// Up to `limit` set members under `prefix` (as [`Snapshot::members`]
    /// gives them) before `before` (exclusive; empty for the last under
    /// `prefix`), in descending order: an index walked from its end.
    fn members_before<'a>(
        &'a self,
        prefix: &'a [u8],
        before: &'a [u8],
        limit: usize,
    ) -> BoxFuture<'a, StoreResult<Members>>;
}

/// What an engine has beyond the core of [`Store`], for the operator: the
/// figures it keeps, a backup, its failure and its close. An engine
/// implements what it has; the defaults say it has nothing of the kind.
pub trait Engine: Send + Sync {
    /// Its figures, exported on the metrics endpoint as
    /// `cooperation_registry_{name}`.
    fn metrics(&self) -> Vec<EngineMetric> {
        Vec::new()
    }

    /// Writes a consistent copy of the whole store (keys with their
    /// revisions, the change log, the revision counter) in the backup format
    /// (`backup`) to `out`; returns the revision it reflects.
    fn backup(&self, out: std::sync::mpsc::SyncSender<Vec<u8>>) -> StoreResult<u64>;

    /// Resolves, with the cause, if the engine can no longer write and the
    /// state of the writes that failed is unknown: the process should stop
    /// (what was acknowledged is kept). Never, for an engine that cannot fail so.
    fn failed(&self) -> BoxFuture<'static, StoreError> {
        Box::pin(std::future::pending())
    }

    /// Waits for pending writes, makes everything durable and refuses later
    /// writes.
    fn close(&self) -> StoreResult<()>;
}

/// One figure an engine reports about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineMetric {
    /// Its name after `cooperation_registry_`, Prometheus style
    /// (`store_bytes`, `checkpoints_total`).
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricKind,
    pub value: f64,
}

/// How a figure moves: a counter only grows; a gauge goes up and down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

/// Entries a watch reads from the log at once.
const WATCH_BATCH: usize = 64;

/// Entries a watch holds for its reader before it stops reading.
const WATCH_BUFFER: usize = 64;

/// [`Store::watch`] for an engine that announces the latest durable revision
/// on `durable` (the sender gone once the store is closed) and whose log
/// `read(from, limit)` gives as where it starts and up to `limit` entries
/// from `from`. A task follows the log and hands entries over a channel,
/// so the stream lives apart from the store.
pub(crate) fn watch_log(
    from_revision: u64,
    mut durable: tokio::sync::watch::Receiver<u64>,
    closed: impl Fn() -> StoreError + Send + 'static,
    read: impl Fn(u64, usize) -> StoreResult<(u64, Vec<(u64, Vec<u8>)>)> + Send + 'static,
) -> ChangeStream {
    let (sender, receiver) = tokio::sync::mpsc::channel(WATCH_BUFFER);
    tokio::spawn(async move {
        let mut next = from_revision.max(1);
        let failed = loop {
            if durable.wait_for(|latest| *latest >= next).await.is_err() {
                break closed();
            }
            let latest = *durable.borrow();
            let (first, entries) = match read(next, WATCH_BATCH) {
                Ok(read) => read,
                Err(e) => break e,
            };
            if next < first {
                break StoreError::Compacted { first };
            }
            let mut sent = 0;
            for (revision, entry) in entries.into_iter().filter(|(revision, _)| *revision <= latest) {
                if sender.send(Ok((revision, entry))).await.is_err() {
                    return;
                }
                next = revision + 1;
                sent += 1;
            }
            if sent == 0 {
                // Durable revisions without an entry: nothing to send for them.
                next = latest + 1;
            }
        };
        let _ = sender.send(Err(failed)).await;
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}

/// The writes that move `member` from the sets `before` to the sets `after`.
pub fn move_member(
    member: &[u8],
    before: &std::collections::BTreeSet<Vec<u8>>,
    after: &std::collections::BTreeSet<Vec<u8>>,
) -> Vec<Op> {
    let removed = before.difference(after).map(|set| Op::Remove { set: set.clone(), member: member.to_vec() });
    let added = after.difference(before).map(|set| Op::Add { set: set.clone(), member: member.to_vec() });
    removed.chain(added).collect()
}

/// A set and one of its members.
pub type Membership = (Vec<u8>, Vec<u8>);

/// The writes that take the memberships `before` that `after` lacks and add
/// those of `after` that `before` lacks.
pub fn move_memberships(
    before: &std::collections::BTreeSet<Membership>,
    after: &std::collections::BTreeSet<Membership>,
) -> Vec<Op> {
    let removed = before.difference(after).map(|(set, member)| Op::Remove { set: set.clone(), member: member.clone() });
    let added = after.difference(before).map(|(set, member)| Op::Add { set: set.clone(), member: member.clone() });
    removed.chain(added).collect()
}

/// The smallest key greater than every key that starts with `prefix` (empty
/// when there is none: every byte of `prefix` is 0xff).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    end
}

/// The smallest key greater than every key that starts with `key` followed by
/// anything: used to resume a scan after `key`.
pub fn key_after(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// Entries read by the first chunk of [`for_each_entry`]: a page of a List
/// is often all that is wanted, so the first read is about that size.
pub const FIRST_CHUNK: usize = 64;
/// The most entries [`for_each_entry`] reads at once (and the most a scan
/// allocates room for in advance).
pub const MAX_CHUNK: usize = 1024;

/// Calls `visit` with every entry under `prefix` from `start` (as in
/// [`Snapshot::scan`]) in key order until it returns false, reading in chunks
/// that start small and double, so a caller that stops early reads little and
/// a long walk makes few calls. Returns whether every entry was visited.
pub async fn for_each_entry<E: From<StoreError>>(
    snapshot: &dyn Snapshot,
    prefix: &[u8],
    start: &[u8],
    mut visit: impl FnMut(&[u8], Entry) -> Result<bool, E>,
) -> Result<bool, E> {
    let mut start = start.to_vec();
    let mut chunk = FIRST_CHUNK;
    loop {
        let batch = snapshot.scan(prefix, &start, chunk).await?;
        let (len, resume) = (batch.len(), batch.last().map(|(key, _)| key_after(key)));
        for (key, entry) in batch {
            if !visit(&key, entry)? {
                return Ok(false);
            }
        }
        match resume {
            Some(key) if len == chunk => start = key,
            _ => return Ok(true),
        }
        chunk = (chunk * 2).min(MAX_CHUNK);
    }
}

/// Calls `visit` with every set member under `prefix` from `start` (as in
/// [`Snapshot::members`], set name and member together) in order until it
/// returns false, reading as [`for_each_entry`] does. Returns whether every
/// member was visited.
pub async fn for_each_member<E: From<StoreError>>(
    snapshot: &dyn Snapshot,
    prefix: &[u8],
    start: &[u8],
    mut visit: impl FnMut(&[u8]) -> Result<bool, E>,
) -> Result<bool, E> {
    let mut start = start.to_vec();
    let mut chunk = FIRST_CHUNK;
    loop {
        let batch = snapshot.members(prefix, &start, chunk).await?;
        for member in batch.iter() {
            if !visit(member)? {
                return Ok(false);
            }
        }
        match batch.last() {
            Some(last) if batch.len() == chunk => start = key_after(last),
            _ => return Ok(true),
        }
        chunk = (chunk * 2).min(MAX_CHUNK);
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::{commit, put, txn};
    use super::{Batches, Op, Store, StoreError, Txn, TxnLimits, TxnSize};

    fn one_put(key: &str) -> Txn {
        Txn { ops: vec![Op::Put { key: key.into(), value: vec![0; 10] }], ..Default::default() }
    }

    /// Items are gathered whole into transactions within the limits, room
    /// is left for what the caller adds, and an item too large alone is
    /// refused.
    #[test]
    fn batches_keep_items_whole_within_the_limits() {
        let limits = TxnLimits { max_ops: 4, max_bytes: 1000 };
        let mut batches = Batches::new(limits, b"change".to_vec(), TxnSize { ops: 1, bytes: 0 });
        let mut committed = Vec::new();
        for key in ["a", "b", "c", "d", "e", "f", "g"] {
            committed.extend(batches.push(one_put(key)).unwrap());
        }
        committed.extend(batches.take());
        let sizes: Vec<usize> = committed.iter().map(|txn| txn.ops.len()).collect();
        assert_eq!(sizes, [3, 3, 1], "three puts and the one reserved fit in four");
        assert!(committed.iter().all(|txn| txn.change == b"change" && limits.admits(txn.size())));
        assert!(batches.take().is_none());

        let four = Txn {
            ops: ["w", "x", "y", "z"].into_iter().flat_map(|key| one_put(key).ops).collect(),
            ..Default::default()
        };
        assert!(matches!(batches.push(four), Err(StoreError::TooLarge { .. })));
    }

    /// A job on an engine without limits is still cut into transactions of
    /// at most JOB_MAX_OPS writes, each as large as that allows.
    #[test]
    fn a_job_without_engine_limits_is_cut_into_transactions_of_bounded_size() {
        let mut batches = Batches::new(TxnLimits::UNBOUNDED, Vec::new(), TxnSize::default());
        let mut committed = Vec::new();
        for i in 0..(2 * super::JOB_MAX_OPS + 5) {
            committed.extend(batches.push(one_put(&format!("k{i}"))).unwrap());
        }
        committed.extend(batches.take());
        let sizes: Vec<usize> = committed.iter().map(|txn| txn.ops.len()).collect();
        assert_eq!(sizes, [super::JOB_MAX_OPS, super::JOB_MAX_OPS, 5]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn for_each_entry_visits_every_key_across_growing_chunks_and_stops_when_asked() {
        let store = super::memory::MemoryStore::new();
        // 1,500 keys: chunks of 64, 128, … 1024 and a short last one; a neighbour
        // prefix that must not be visited.
        let keys: Vec<String> = (0..1500).map(|i| format!("k/{i:05}")).collect();
        let mut ops: Vec<Op> = keys.iter().map(|k| put(k, "v")).collect();
        ops.push(put("l/00000", "other prefix"));
        commit(&store, txn(ops, vec![])).await;

        let mut seen = Vec::new();
        let snapshot = store.snapshot().await.unwrap();
        let complete = super::for_each_entry(&*snapshot, b"k/", b"", |key, entry| {
            assert_eq!(entry.value, &b"v"[..]);
            seen.push(String::from_utf8(key.to_vec()).unwrap());
            Ok::<_, StoreError>(true)
        })
        .await
        .unwrap();
        assert!(complete);
        assert_eq!(seen, keys);

        // From a start key, stopping after 100: the visit stops there.
        let mut count = 0;
        let complete = super::for_each_entry(&*snapshot, b"k/", b"k/00100", |key, _| {
            count += 1;
            assert!(key >= &b"k/00100"[..]);
            Ok::<_, StoreError>(count < 100)
        })
        .await
        .unwrap();
        assert!(!complete);
        assert_eq!(count, 100);

        // An error from the visit ends the walk with it.
        let failed = super::for_each_entry(&*snapshot, b"k/", b"", |_, _| Err::<bool, _>(StoreError::Closed)).await;
        assert_eq!(failed, Err(StoreError::Closed));
    }
}
