//! The sled engine (0.34.7) behind [`Store`].
//!
//! Layout: one sled tree, so that a transaction's writes, the revision counter and
//! the change-log entry go to disk in one atomic batch. Keys are prefixed:
//! `m` meta (format, schema, revision), `k` user keys, `c` change log by revision,
//! `e` set members, many to a key (see `chunks`).
//! A value is the 8-byte big-endian revision that wrote it, then the user bytes.
//!
//! Writes go through one writer thread that applies transactions in order and
//! group-commits: it takes every transaction waiting, checks each one's
//! conditions against the tree and the transactions before it in the group,
//! stages its writes and answers it with its outcome at once (what waits for
//! one write to a record can go on; point reads see staged writes, see
//! `staged`). It yields and stages what arrived meanwhile (the next write to a
//! record whose turn a write just passed on) into the same group, for up to
//! `MAX_FLUSH_WAIT`; then it applies the group as one sled batch (sled writes
//! its log to the disk at every batch) and flushes once for them all (sled's
//! `flush_async` deadlocks under concurrent awaiting writers, sled #1308) and
//! tells them that they are durable. A transaction whose conditions fail
//! writes nothing and does not disturb the rest of its group.

use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::{
    Applied, BoxFuture, ChangeStream, Changes, Condition, Engine, EngineMetric, Entries, Entry, Members, MetricKind,
    Op, Outcome, Snapshot, Store, StoreError, StoreResult, Txn,
};

mod cache;
mod chunks;
mod staged;
#[cfg(test)]
mod tests;
mod views;

/// Written in the meta keys; a data dir without them, or with other values, is refused.
const FORMAT: &[u8] = b"cooperation-registry/sled";
/// Bump when the on-disk layout changes incompatibly: 2 added set chunks,
/// which a build of version 1 would not see; 3 packs the members of all sets
/// into one space of chunks (see `chunks`). A data dir of an older version is
/// upgraded when opened.
pub const SCHEMA_VERSION: u64 = 3;

const META_FORMAT: &[u8] = b"mformat";
/// A file beside sled's own, written once the database is initialised: if it is
/// there and the database reads as empty, the database was lost or damaged, and
/// opening it must fail rather than start afresh.
const MARKER_FILE: &str = "cooperation-registry.format";
/// How often the marker file's durable revision is brought up to date.
const MARK_INTERVAL: Duration = Duration::from_secs(1);
const META_SCHEMA: &[u8] = b"mschema";
const META_REVISION: &[u8] = b"mrevision";
const META_FIRST_CHANGE: &[u8] = b"mfirstchange";
/// Present while a restore writes a data dir: a server refuses to open one.
const META_RESTORING: &[u8] = b"mrestoring";
const USER: u8 = b'k';
const CHANGE: u8 = b'c';

/// Most transactions applied as one group.
const MAX_GROUP: usize = 4096;
/// Longest the writer goes on staging transactions into a group, each round
/// sent while the one before was staged, before it applies and flushes them.
const MAX_FLUSH_WAIT: Duration = Duration::from_millis(2);

/// How much a write has survived when it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// The engine's log is flushed and the data file fsynced: survives a power loss.
    #[default]
    Fsync,
    /// The engine's log is flushed to the operating system: survives a crash of this
    /// process, not of the machine.
    Flush,
    /// Nothing waited for: sled writes in the background, every 500 ms.
    None,
}

/// The default for sled's page cache. sled holds more than it counts, so the
/// server's resident memory levels off above this once writes have filled
/// the cache (docs/performance.md gives the service benchmark's figures).
pub const DEFAULT_CACHE_MIB: u64 = 192;

/// The default for `SledOptions::checkpoint_bytes`, in MiB: none. A
/// checkpoint holds every call while sled reopens the data dir, longer than
/// sled's own open (0.14–0.16 s at 1,000,000 agreements); without them a start
/// after a crash replays sled's log, which its reuse of segments keeps within
/// the data dir's size (about 1 s at 1,000,000 agreements: `CHECKPOINT_MIB=0
/// cargo bench --bench import`, `benches/crash_start.sh`). A threshold bounds
/// the replay at the cost of those pauses (docs/operations.md, "Checkpoints").
pub const DEFAULT_CHECKPOINT_MIB: u64 = 0;

/// The default for `SledOptions::read_cache_bytes`, in MiB: some 40,000
/// agreements, the records a busy server reads again and again.
pub const DEFAULT_READ_CACHE_MIB: u64 = 32;

#[derive(Clone, Debug)]
pub struct SledOptions {
    pub durability: Durability,
    /// Bytes of page cache sled may keep.
    pub cache_capacity: u64,
    /// Keys and values written, in bytes, after which the writer reopens the
    /// database (a checkpoint: see `Writer::checkpoint`); 0 never does.
    pub checkpoint_bytes: u64,
    /// Bytes of recently read values kept in memory beside sled's cache, so a
    /// hot record is read without a walk of sled's tree (see `cache`); 0 keeps
    /// none.
    pub read_cache_bytes: u64,
    /// Hands the memory the process's allocator holds free back to the
    /// operating system. The writer calls it after each checkpoint and every
    /// `TRIM_BYTES` written: sled copies a node for each change to it, and an
    /// allocator keeps the freed copies. The server passes its allocator's
    /// (`server::allocator`); the default does nothing.
    pub release_free_memory: fn(),
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions {
            durability: Durability::Fsync,
            cache_capacity: DEFAULT_CACHE_MIB * 1024 * 1024,
            checkpoint_bytes: DEFAULT_CHECKPOINT_MIB * 1024 * 1024,
            read_cache_bytes: DEFAULT_READ_CACHE_MIB * 1024 * 1024,
            release_free_memory: || {},
        }
    }
}

/// The open database, shared by the readers and the writer. A reader holds
/// the read side for one read; the writer takes the write side to close and
/// reopen the database (a checkpoint). `None` only after a reopen failed.
#[derive(Clone)]
struct Shared(Arc<RwLock<Option<sled::Db>>>);

/// The open database, held for one read.
struct Open<'a>(RwLockReadGuard<'a, Option<sled::Db>>);

impl Deref for Open<'_> {
    type Target = sled::Db;

    fn deref(&self) -> &sled::Db {
        self.0.as_ref().expect("an Open is made only of an open database")
    }
}

impl Shared {
    fn new(tree: sled::Db) -> Shared {
        Shared(Arc::new(RwLock::new(Some(tree))))
    }

    /// The database, held open until the returned guard goes.
    fn tree(&self) -> StoreResult<Open<'_>> {
        let guard = self.0.read().unwrap_or_else(PoisonError::into_inner);
        match *guard {
            Some(_) => Ok(Open(guard)),
            None => Err(StoreError::Storage("the database could not be reopened after a checkpoint".into())),
        }
    }
}

/// Bytes written between two hand-backs of freed memory by the writer
/// (`SledOptions::release_free_memory`). sled copies a node for each change
/// to it and the allocator keeps the freed copies: without hand-backs a
/// server under sustained creates grows until its next checkpoint. A
/// hand-back costs the writer about a millisecond, so it runs about once a
/// second under the service benchmark's creates.
const TRIM_BYTES: u64 = 16 * 1024 * 1024;

/// Opens sled's database in `dir`: at the start, and again at each checkpoint.
/// sled replays here what was logged since it last opened the directory, then
/// writes a snapshot of its page table.
fn open_tree(dir: &Path, cache_capacity: u64) -> StoreResult<sled::Db> {
    sled::Config::new()
        .path(dir)
        .cache_capacity(cache_capacity)
        .mode(sled::Mode::HighThroughput)
        .open()
        .map_err(|e| open_error(dir, e))
}

struct Pending {
    txn: Txn,
    reply: oneshot::Sender<StoreResult<Outcome>>,
}

enum Message {
    Write(Pending),
    Close(mpsc::SyncSender<StoreResult<()>>),
    /// Copy everything to the channel, between two groups of writes.
    Backup(mpsc::SyncSender<Vec<u8>>, mpsc::SyncSender<StoreResult<u64>>),
}

/// The store's failure, once a write, a flush or a read finds the data dir
/// can no longer be written: shared by the store and its writer, watched by
/// the owner (`Store::failed`). The first cause stays.
#[derive(Clone, Default)]
struct Failure(Arc<watch::Sender<Option<StoreError>>>);

impl Failure {
    fn get(&self) -> Option<StoreError> {
        self.0.borrow().clone()
    }

    fn report(&self, e: &StoreError) {
        self.0.send_if_modified(|failure| {
            if failure.is_some() {
                return false;
            }
            tracing::error!(error = %e, "the data dir cannot be written; refusing every later write");
            *failure = Some(e.clone());
            true
        });
    }
}

pub struct SledStore {
    /// Shared with the store's views.
    reads: Arc<Reads>,
    /// Written by the writer at each checkpoint.
    checkpoints: Arc<Mutex<Checkpoints>>,
    /// Counted by the writer.
    flushes: Arc<AtomicU64>,
    /// How far writes are durable, for the change feed.
    durable: watch::Receiver<u64>,
    /// The writes and reads waiting for theirs to be.
    waits: Arc<DurableWaits>,
    sender: Mutex<Option<mpsc::Sender<Message>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    #[cfg(test)]
    apply_hold: Arc<ApplyHold>,
}

/// Whether the writer holds its groups back before applying them (tests
/// look at what is answered and read meanwhile).
#[cfg(test)]
#[derive(Default)]
struct ApplyHold {
    held: Mutex<bool>,
    released: std::sync::Condvar,
}

#[cfg(test)]
impl SledStore {
    /// Holds the writer's next groups before they are applied, or lets them go.
    fn hold_applies(&self, held: bool) {
        *self.apply_hold.held.lock().unwrap() = held;
        self.apply_hold.released.notify_all();
    }
}

/// What reads need, shared by the store, its views and (in part) the writer.
struct Reads {
    db: Shared,
    /// Shared with the writer, which forgets what it writes.
    cache: Arc<cache::ReadCache>,
    /// The revision of the last group the writer applied.
    applied: Arc<AtomicU64>,
    /// Shared with the writer: a read that finds the disk full reports it too.
    failure: Failure,
    /// Shared with the writer, which keeps what it overwrites for them.
    views: Arc<views::Views>,
    /// Shared with the writer: what it answered and has not yet applied.
    staged: Arc<staged::Staged>,
}

impl SledStore {
    /// Opens (creating if needed) the store in `dir`. Refuses a directory that holds
    /// something else, or a store of a newer schema.
    pub fn open(dir: &Path, options: SledOptions) -> StoreResult<SledStore> {
        refuse_foreign_dir(dir)?;
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Storage(format!("cannot create {}: {e}", dir.display())))?;
        let opening = Instant::now();
        let tree = open_tree(dir, options.cache_capacity)?;
        tracing::info!(seconds = opening.elapsed().as_secs_f64(), "sled opened the data dir");
        check_or_init_format(&tree, dir)?;
        let revision = match tree.get(META_REVISION).map_err(storage)? {
            Some(bytes) => {
                decode_u64(&bytes).ok_or_else(|| StoreError::Incompatible("the revision counter is corrupt".into()))?
            }
            None => 0,
        };
        let recorded = read_marker_revision(dir);
        if revision < recorded {
            return Err(StoreError::Incompatible(format!(
                "{} is damaged: its database reads at revision {revision}, but revision {recorded} was durable \
                 before (recorded in {MARKER_FILE}); writes were lost. Restore it from a backup \
                 (cooperation-registry restore) rather than serve it",
                dir.display()
            )));
        }
        let data_file = dir.join("db");
        let sync_file = match options.durability {
            Durability::Fsync => Some(
                File::open(&data_file)
                    .map_err(|e| StoreError::Storage(format!("cannot open {} for fsync: {e}", data_file.display())))?,
            ),
            _ => None,
        };
        let applied = Arc::new(AtomicU64::new(revision));
        let (durable_tx, durable) = watch::channel(revision);
        let waits = Arc::new(DurableWaits::new(revision));
        let failure = Failure::default();
        let (sender, receiver) = mpsc::channel();
        let db = Shared::new(tree);
        let checkpoints = Arc::new(Mutex::new(Checkpoints::default()));
        let flushes = Arc::new(AtomicU64::new(0));
        let cache = Arc::new(cache::ReadCache::new(options.read_cache_bytes));
        let views = Arc::new(views::Views::default());
        let staged = Arc::new(staged::Staged::default());
        #[cfg(test)]
        let apply_hold = Arc::new(ApplyHold::default());
        let writer = Writer {
            db: db.clone(),
            cache: cache.clone(),
            views: views.clone(),
            staged: staged.clone(),
            #[cfg(test)]
            apply_hold: apply_hold.clone(),
            checkpoints: checkpoints.clone(),
            flushes: flushes.clone(),
            cache_capacity: options.cache_capacity,
            checkpoint_bytes: options.checkpoint_bytes,
            release_free_memory: options.release_free_memory,
            written_since_open: 0,
            trimmed_at: 0,
            revision,
            applied: applied.clone(),
            durable: Some(durable_tx),
            waits: waits.clone(),
            durability: options.durability,
            sync_file,
            data_file,
            dir: dir.to_path_buf(),
            marked: (recorded, Instant::now()),
            failure: failure.clone(),
            places: chunks::Places::default(),
            recent: chunks::Recent::default(),
        };
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| StoreError::Storage(format!("cannot start the writer thread: {e}")))?;
        Ok(SledStore {
            reads: Arc::new(Reads { db, cache, applied, failure, views, staged }),
            #[cfg(test)]
            apply_hold,
            checkpoints,
            flushes,
            durable,
            waits,
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(handle)),
        })
    }

    fn send(&self, message: Message) -> Result<(), StoreError> {
        let guard = self.sender.lock().expect("sender lock");
        match guard.as_ref() {
            Some(sender) => sender.send(message).map_err(|_| StoreError::Closed),
            None => Err(StoreError::Closed),
        }
    }
}

/// [`open_tree`] on a directory this process has just closed: sled's
/// background threads may hold its lock a moment longer.
fn reopen_tree(dir: &Path, cache_capacity: u64) -> StoreResult<sled::Db> {
    let mut attempts = 0;
    loop {
        match open_tree(dir, cache_capacity) {
            Err(StoreError::Locked(_)) if attempts < 100 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn open_error(dir: &Path, e: sled::Error) -> StoreError {
    let text = e.to_string();
    if text.contains("lock") {
        StoreError::Locked(format!("{}: {text}", dir.display()))
    } else if matches!(e, sled::Error::Corruption { .. } | sled::Error::Unsupported(_)) {
        StoreError::Incompatible(format!("{} is not a readable sled database: {text}", dir.display()))
    } else {
        StoreError::Storage(format!("cannot open {}: {text}", dir.display()))
    }
}

impl SledStore {
    /// Builds a new data dir in `dir` (which must not hold anything) from a
    /// backup; returns the revision it reflects. The backup is read and
    /// written a batch at a time, in bounded memory; until it has all been
    /// read and its checksum matched, the data dir is marked as a restore
    /// under way, which a server refuses to open, and a restore that fails
    /// removes what it wrote.
    pub fn restore(dir: &Path, input: &mut dyn std::io::Read) -> StoreResult<u64> {
        let mut backup = super::backup::BackupReader::new(input)?;
        if std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false) {
            return Err(StoreError::Incompatible(format!(
                "{} is not empty; restore into a new data dir",
                dir.display()
            )));
        }
        let store = SledStore::open(dir, SledOptions { durability: Durability::Fsync, ..SledOptions::default() })?;
        let restored = store.reads.db.tree().and_then(|tree| restore_into(&tree, &mut backup));
        let closed = store.close();
        drop(store);
        if let Err(e) = restored.and(closed) {
            clear_dir(dir);
            return Err(e);
        }
        // Opened once more, so that sled replays the restored data and writes
        // its snapshot here rather than at the server's first start.
        reopen_tree(dir, SledOptions::default().cache_capacity)?.flush().map_err(storage)?;
        Ok(backup.revision)
    }
}

/// Writes a backup's entries into a new tree, marked as a restore under way
/// until the last is written.
fn restore_into(tree: &sled::Db, backup: &mut super::backup::BackupReader<'_>) -> StoreResult<()> {
    use super::backup::BackupEntry;
    tree.insert(META_RESTORING, &[]).map_err(storage)?;
    let (mut batch, mut bytes) = (sled::Batch::default(), 0);
    let mut members = chunks::Loader::default();
    while let Some(entry) = backup.next_entry()? {
        match entry {
            BackupEntry::Key { key, mod_revision, value } => {
                let mut stored = mod_revision.to_be_bytes().to_vec();
                stored.extend_from_slice(&value);
                bytes += key.len() + stored.len();
                batch.insert(user_key(&key), stored);
            }
            BackupEntry::Change { revision, bytes: change } => {
                bytes += change.len();
                batch.insert(&change_key(revision)[..], change)
            }
            BackupEntry::Member { set, member, revision } => {
                let item = chunks::Item { set_len: set.len(), entry: [set, member].concat(), revision };
                bytes += members.push(item, &mut batch);
            }
        }
        if bytes >= chunks::LOAD_BATCH_BYTES {
            tree.apply_batch(std::mem::take(&mut batch)).map_err(storage)?;
            bytes = 0;
        }
    }
    // Members out of order (no engine writes a backup so) are placed last.
    members.finish(tree, batch)?;
    let mut done = sled::Batch::default();
    done.insert(META_REVISION, &backup.revision.to_be_bytes()[..]);
    done.insert(META_FIRST_CHANGE, &backup.first_change.to_be_bytes()[..]);
    done.remove(META_RESTORING);
    tree.apply_batch(done).map_err(storage)?;
    tree.flush().map_err(storage)?;
    Ok(())
}

/// Removes everything in `dir` (a restore's own files, after it failed).
fn clear_dir(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    }
}

/// A directory that holds files but no sled database is someone else's: refuse
/// it rather than scatter database files among them.
fn refuse_foreign_dir(dir: &Path) -> StoreResult<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    let names: Vec<String> =
        entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    if !names.is_empty() && !names.iter().any(|n| n == "conf" || n == "db" || n == MARKER_FILE) {
        return Err(StoreError::Incompatible(format!(
            "{} holds other files ({}) and no registry database; not a cooperation-registry data dir",
            dir.display(),
            names.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(())
}

/// Brings a data dir of schema `from` to this build's: the set chunks of
/// schema 2 are rewritten as chunks of the shared space (schema 1 has none),
/// then the schema is marked and flushed, then the old chunks are removed.
/// Cut short before the mark, it starts again at the next open; after it,
/// the next open removes what is left of the old chunks.
fn upgrade(tree: &sled::Db, dir: &Path, from: u64) -> StoreResult<()> {
    let started = Instant::now();
    let moved = chunks::upgrade_per_set_chunks(tree)?;
    tree.flush().map_err(storage)?;
    tree.insert(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes()).map_err(storage)?;
    tree.flush().map_err(storage)?;
    chunks::remove_prefix(tree, chunks::PER_SET_CHUNK)?;
    tree.flush().map_err(storage)?;
    tracing::info!(
        dir = %dir.display(),
        from,
        to = SCHEMA_VERSION,
        set_members = moved,
        seconds = started.elapsed().as_secs_f64(),
        "upgraded the data dir's layout"
    );
    Ok(())
}

fn check_or_init_format(tree: &sled::Db, dir: &Path) -> StoreResult<()> {
    match tree.get(META_FORMAT).map_err(storage)? {
        Some(format) if format.as_ref() == FORMAT => {
            if !dir.join(MARKER_FILE).exists() {
                write_marker(dir, 0)?;
            }
            let schema = tree
                .get(META_SCHEMA)
                .map_err(storage)?
                .and_then(|b| decode_u64(&b))
                .ok_or_else(|| StoreError::Incompatible(format!("{}: schema version missing", dir.display())))?;
            if tree.contains_key(META_RESTORING).map_err(storage)? {
                return Err(StoreError::Incompatible(format!(
                    "{} holds a restore that did not finish; remove it and restore again",
                    dir.display()
                )));
            }
            if schema > SCHEMA_VERSION {
                return Err(StoreError::Incompatible(format!(
                    "{} holds schema version {schema}, newer than the {SCHEMA_VERSION} this build reads; \
                     run a newer cooperation-registry",
                    dir.display()
                )));
            }
            if schema < SCHEMA_VERSION {
                upgrade(tree, dir, schema)?;
            }
            // What an upgrade cut short after its mark left to remove.
            if tree.scan_prefix([chunks::PER_SET_CHUNK]).next().is_some() {
                chunks::remove_prefix(tree, chunks::PER_SET_CHUNK)?;
                tree.flush().map_err(storage)?;
            }
            Ok(())
        }
        Some(_) => Err(StoreError::Incompatible(format!(
            "{} is a sled database of another program, not a cooperation-registry data dir",
            dir.display()
        ))),
        None if tree.is_empty() && dir.join(MARKER_FILE).exists() => Err(StoreError::Incompatible(format!(
            "{} was initialised before, but its database now reads as empty: it was damaged or removed. \
             Restore it from a backup (cooperation-registry restore) rather than start an empty registry",
            dir.display()
        ))),
        None if tree.is_empty() => {
            let mut batch = sled::Batch::default();
            batch.insert(META_FORMAT, FORMAT);
            batch.insert(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes());
            tree.apply_batch(batch).map_err(storage)?;
            tree.flush().map_err(storage)?;
            write_marker(dir, 0)
        }
        None => Err(StoreError::Incompatible(format!(
            "{} holds data without the cooperation-registry format marker",
            dir.display()
        ))),
    }
}

/// Writes the marker file: the format, and a revision known to be durable in
/// the database. A database that later reads at a lower revision has lost
/// acknowledged writes (sled recovers only the part of its log before a
/// damaged spot), and is refused. Replaced atomically: a crash leaves the old
/// marker or the new one.
fn write_marker(dir: &Path, durable_revision: u64) -> StoreResult<()> {
    let path = dir.join(MARKER_FILE);
    let temporary = dir.join(format!("{MARKER_FILE}.new"));
    let text = format!("{} schema {SCHEMA_VERSION}\nrevision {durable_revision}\n", String::from_utf8_lossy(FORMAT));
    let write = || -> std::io::Result<()> {
        let file = File::create(&temporary)?;
        std::io::Write::write_all(&mut &file, text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| io_error(&format!("cannot write {}", path.display()), &e))
}

/// The durable revision the marker file records (0 when it records none).
fn read_marker_revision(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(MARKER_FILE))
        .ok()
        .and_then(|text| text.lines().find_map(|l| l.strip_prefix("revision ").and_then(|n| n.trim().parse().ok())))
        .unwrap_or(0)
}

fn storage(e: sled::Error) -> StoreError {
    match &e {
        sled::Error::Io(io) => io_error("", io),
        _ => StoreError::Storage(e.to_string()),
    }
}

/// An I/O error, a full disk told apart from the rest.
fn io_error(context: &str, e: &std::io::Error) -> StoreError {
    let full = e.kind() == std::io::ErrorKind::StorageFull
        || e.raw_os_error() == Some(28)
        || e.get_ref().is_some_and(|inner| inner.to_string().contains("No space left on device"));
    let message = if context.is_empty() { format!("IO error: {e}") } else { format!("{context}: {e}") };
    if full { StoreError::Full(message) } else { StoreError::Storage(message) }
}

/// The oldest revision the change log still holds (1 when nothing was compacted).
/// Up to `limit` change-log entries of `tree` from `from_revision` on.
fn changes_in(tree: &sled::Db, from_revision: u64, limit: usize) -> StoreResult<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    for item in tree.range(change_key(from_revision)..) {
        if out.len() >= limit {
            break;
        }
        let (k, v) = item.map_err(storage)?;
        if k.first() != Some(&CHANGE) {
            break;
        }
        let revision = decode_u64(&k[1..]).unwrap_or_default();
        out.push((revision, v.to_vec()));
    }
    Ok(out)
}

fn first_change_in(tree: &sled::Db) -> StoreResult<u64> {
    Ok(tree.get(META_FIRST_CHANGE).map_err(storage)?.and_then(|b| decode_u64(&b)).unwrap_or(1).max(1))
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn user_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(USER);
    k.extend_from_slice(key);
    k
}

fn change_key(revision: u64) -> [u8; 9] {
    let mut k = [CHANGE; 9];
    k[1..].copy_from_slice(&revision.to_be_bytes());
    k
}

/// The entry a stored value holds, sharing its bytes.
fn entry_of(raw: sled::IVec) -> StoreResult<Entry> {
    let (mod_revision, _) = split_entry(&raw)?;
    Ok(Entry { mod_revision, value: bytes::Bytes::from_owner(raw).slice(8..) })
}

/// A stored value's revision header and the value after it.
fn split_entry(raw: &[u8]) -> StoreResult<(u64, &[u8])> {
    if raw.len() < 8 {
        return Err(StoreError::Storage("stored value shorter than its revision header".into()));
    }
    let (rev, value) = raw.split_at(8);
    Ok((decode_u64(rev).unwrap_or_default(), value))
}

/// How far writes are durable, and the calls waiting until a revision is:
/// each is woken once, when its revision is durable (a watch channel would
/// wake every waiter at every flush: with hundreds of writes in flight and a
/// few sharing each flush, hundreds of wakeups a write).
struct DurableWaits(Mutex<Waits>);

struct Waits {
    durable: u64,
    /// Set once nothing more will be durable: the store failed or closed.
    ended: bool,
    waiting: std::collections::BTreeMap<u64, Vec<oneshot::Sender<()>>>,
}

impl DurableWaits {
    fn new(durable: u64) -> DurableWaits {
        DurableWaits(Mutex::new(Waits { durable, ended: false, waiting: Default::default() }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waits> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the waits for `revision` and those before it.
    fn publish(&self, revision: u64) {
        let ready = {
            let mut waits = self.lock();
            waits.durable = waits.durable.max(revision);
            let later = waits.waiting.split_off(&(revision + 1));
            std::mem::replace(&mut waits.waiting, later)
        };
        for reply in ready.into_values().flatten() {
            let _ = reply.send(());
        }
    }

    /// Ends every wait, and those to come, unanswered.
    fn end(&self) {
        let waiting = {
            let mut waits = self.lock();
            waits.ended = true;
            std::mem::take(&mut waits.waiting)
        };
        drop(waiting);
    }
}

/// Resolves once `revision` is durable; with the store's failure if it
/// failed first (what was applied but not flushed may be lost).
async fn wait_for_durable(waits: Arc<DurableWaits>, failure: Failure, revision: u64) -> StoreResult<()> {
    let answer = {
        let mut state = waits.lock();
        if state.durable >= revision {
            return Ok(());
        }
        if state.ended {
            return Err(failure.get().unwrap_or(StoreError::Closed));
        }
        let (reply, answer) = oneshot::channel();
        state.waiting.entry(revision).or_default().push(reply);
        answer
    };
    answer.await.map_err(|_| failure.get().unwrap_or(StoreError::Closed))
}

impl Reads {
    /// A read error, reported as the store's failure when it says the disk is
    /// full: sled's reads fail once its log could not be written.
    fn failed(&self, e: StoreError) -> StoreError {
        if matches!(e, StoreError::Full(_)) {
            self.failure.report(&e);
        }
        e
    }

    /// Runs `read` on the tree as it is (`at` None) or as it was at a view's
    /// revision. The bool tells `read` the tree is as it is, so that caches of
    /// the latest values serve.
    fn on_tree<T>(
        &self,
        at: Option<u64>,
        read: impl FnOnce(&views::TreeAt<'_>, bool) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let tree = self.db.tree()?;
        let result = match at {
            None => read(&views::TreeAt { tree: &tree, at: None }, true),
            Some(revision) => {
                let state = self.views.read();
                match self.applied.load(Ordering::Acquire) == revision {
                    // Nothing written since the view opened, nor while the lock is held.
                    true => read(&views::TreeAt { tree: &tree, at: None }, true),
                    false => read(&views::TreeAt { tree: &tree, at: Some((&state, revision)) }, false),
                }
            }
        };
        result.map_err(|e| self.failed(e))
    }

    fn get_many(&self, keys: &[&[u8]], at: Option<u64>) -> StoreResult<Vec<Option<Entry>>> {
        self.on_tree(at, |tree, _| {
            let mut found = Vec::with_capacity(keys.len());
            let mut raw_key = Vec::new();
            for key in keys {
                // The latest state includes what the writer answered and has
                // not applied yet; a view's does not.
                if at.is_none()
                    && let Some(staged) = self.staged.get(key)
                {
                    found.push(staged);
                    continue;
                }
                raw_key.clear();
                raw_key.push(USER);
                raw_key.extend_from_slice(key);
                let entry = match tree.before(&raw_key) {
                    Some(before) => before.map(entry_of).transpose()?,
                    None => match self.cache.get(key) {
                        Ok(entry) => Some(entry),
                        Err(miss) => {
                            let entry = tree.tree.get(&raw_key).map_err(storage)?.map(entry_of).transpose()?;
                            if let Some(entry) = &entry {
                                self.cache.keep(key, miss, entry);
                            }
                            entry
                        }
                    },
                };
                found.push(entry);
            }
            Ok(found)
        })
    }

    fn scan(&self, prefix: &[u8], start: &[u8], limit: usize, at: Option<u64>) -> StoreResult<Vec<(Vec<u8>, Entry)>> {
        self.on_tree(at, |tree, _| {
            let full_prefix = user_key(prefix);
            let from = if start.is_empty() { full_prefix.clone() } else { user_key(start) };
            let mut out = Vec::with_capacity(limit.min(super::MAX_CHUNK));
            for item in tree.range_from(&from) {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = item?;
                if !k.starts_with(&full_prefix) {
                    break;
                }
                out.push((k[1..].to_vec(), entry_of(v)?));
            }
            Ok(out)
        })
    }

    fn members(&self, prefix: &[u8], start: &[u8], limit: usize, at: Option<u64>) -> StoreResult<Members> {
        self.on_tree(at, |tree, latest| {
            // Only the first read of a walk at the latest revision is kept:
            // it is all a List page needs, and the longer reads that follow
            // would push the pages' out.
            if !latest || limit > super::FIRST_CHUNK {
                return chunks::scan(tree, prefix, start, limit);
            }
            let miss = match self.cache.members(prefix, start, limit) {
                Ok(members) => return Ok(members),
                Err(miss) => miss,
            };
            let members = chunks::scan(tree, prefix, start, limit)?;
            self.cache.keep_members(prefix, start, limit, miss, &members);
            Ok(members)
        })
    }

    /// Members in descending order (see `Snapshot::members_before`); not
    /// cached: only an index walked backwards reads them.
    fn members_before(&self, prefix: &[u8], before: &[u8], limit: usize, at: Option<u64>) -> StoreResult<Members> {
        self.on_tree(at, |tree, _| chunks::scan_before(tree, prefix, before, limit))
    }
}

/// A view of the sled store at one revision (see `views`).
struct SledSnapshot {
    reads: Arc<Reads>,
    revision: u64,
}

impl Drop for SledSnapshot {
    fn drop(&mut self) {
        self.reads.views.close(self.revision);
    }
}

impl Snapshot for SledSnapshot {
    fn revision(&self) -> u64 {
        self.revision
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a [u8]]) -> BoxFuture<'a, StoreResult<Vec<Option<Entry>>>> {
        Box::pin(std::future::ready(self.reads.get_many(keys, Some(self.revision))))
    }

    fn scan<'a>(&'a self, prefix: &'a [u8], start: &'a [u8], limit: usize) -> BoxFuture<'a, StoreResult<Entries>> {
        Box::pin(std::future::ready(self.reads.scan(prefix, start, limit, Some(self.revision))))
    }

    fn members<'a>(&'a self, prefix: &'a [u8], start: &'a [u8], limit: usize) -> BoxFuture<'a, StoreResult<Members>> {
        Box::pin(std::future::ready(self.reads.members(prefix, start, limit, Some(self.revision))))
    }

    fn members_before<'a>(
        &'a self,
        prefix: &'a [u8],
        before: &'a [u8],
        limit: usize,
    ) -> BoxFuture<'a, StoreResult<Members>> {
        Box::pin(std::future::ready(self.reads.members_before(prefix, before, limit, Some(self.revision))))
    }
}

/// The pauses the store took to bound its start time: closing and reopening
/// its database (see `SledOptions::checkpoint_bytes`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Checkpoints {
    /// How many since the store was opened.
    pub count: u64,
    /// How long the last one held reads and writes, in seconds.
    pub last_seconds: f64,
}

/// How the read cache does (see `SledOptions::read_cache_bytes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadCacheStats {
    /// Point reads answered from the cache since the store was opened.
    pub hits: u64,
    /// Point reads that went to sled itself.
    pub misses: u64,
    /// Bytes it holds, as it counts them.
    pub bytes: u64,
}

/// Figures of this engine, beside those every engine reports.
impl SledStore {
    /// The checkpoints taken since the store was opened.
    pub fn checkpoints(&self) -> Checkpoints {
        *self.checkpoints.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The flushes writes waited for to be durable since the store was
    /// opened: each covers every write applied before it, so committed
    /// writes over flushes tells how well writes share them.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// How the read cache does.
    pub fn read_cache(&self) -> ReadCacheStats {
        self.reads.cache.stats()
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> StoreResult<u64> {
        self.reads.db.tree()?.size_on_disk().map_err(storage)
    }
}

impl Store for SledStore {
    fn snapshot(&self) -> BoxFuture<'_, StoreResult<Box<dyn Snapshot>>> {
        let revision = self.reads.views.open(|| self.reads.applied.load(Ordering::Acquire));
        let snapshot: Box<dyn Snapshot> = Box::new(SledSnapshot { reads: self.reads.clone(), revision });
        Box::pin(std::future::ready(Ok(snapshot)))
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a [u8]]) -> BoxFuture<'a, StoreResult<Vec<Option<Entry>>>> {
        Box::pin(std::future::ready(self.reads.get_many(keys, None)))
    }

    fn current_revision(&self) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(std::future::ready(Ok(self.reads.applied.load(Ordering::Acquire))))
    }

    fn wait_durable(&self, revision: u64) -> BoxFuture<'static, StoreResult<()>> {
        Box::pin(wait_for_durable(self.waits.clone(), self.reads.failure.clone(), revision))
    }

    fn apply(&self, txn: Txn) -> BoxFuture<'static, StoreResult<Applied>> {
        let (reply, answer) = oneshot::channel();
        let sent = self.send(Message::Write(Pending { txn, reply }));
        let waits = self.waits.clone();
        let failure = self.reads.failure.clone();
        Box::pin(async move {
            sent?;
            let outcome = answer.await.map_err(|_| StoreError::Closed)??;
            Ok(match outcome {
                Outcome::Committed { revision } => {
                    Applied { outcome, durable: Box::pin(wait_for_durable(waits, failure, revision)) }
                }
                Outcome::ConditionFailed => Applied::at_once(outcome),
            })
        })
    }

    fn watch(&self, from_revision: u64) -> ChangeStream {
        let db = self.reads.db.clone();
        let failure = self.reads.failure.clone();
        crate::store::watch_log(
            from_revision,
            self.durable.clone(),
            move || failure.get().unwrap_or(StoreError::Closed),
            move |from, limit| {
                let tree = db.tree()?;
                Ok((first_change_in(&tree)?, changes_in(&tree, from, limit)?))
            },
        )
    }

    fn changes(&self, from_revision: u64, limit: usize) -> BoxFuture<'_, StoreResult<Changes>> {
        Box::pin(async move { changes_in(&*self.reads.db.tree()?, from_revision, limit) })
    }

    fn first_change(&self) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(async move { first_change_in(&*self.reads.db.tree()?) })
    }

    fn compact(&self, revision: u64) -> BoxFuture<'_, StoreResult<u64>> {
        let db = self.reads.db.clone();
        let revision = revision.min(self.reads.applied.load(Ordering::Acquire) + 1);
        // It flushes, twice: off the async workers.
        Box::pin(async move {
            tokio::task::spawn_blocking(move || compact_log(&db, revision))
                .await
                .map_err(|e| StoreError::Storage(format!("the compaction task failed: {e}")))?
        })
    }

    fn engine(&self) -> &dyn Engine {
        self
    }
}

impl Engine for SledStore {
    fn metrics(&self) -> Vec<EngineMetric> {
        let checkpoints = self.checkpoints();
        let cache = self.read_cache();
        let mut metrics = vec![
            EngineMetric {
                name: "checkpoints_total",
                help: "Checkpoints since the server started: the store closed and reopened its database \
                       (--checkpoint-mib), holding calls meanwhile.",
                kind: MetricKind::Counter,
                value: checkpoints.count as f64,
            },
            EngineMetric {
                name: "last_checkpoint_seconds",
                help: "How long the last checkpoint held calls, in seconds (0 before the first).",
                kind: MetricKind::Gauge,
                value: checkpoints.last_seconds,
            },
            EngineMetric {
                name: "store_flushes_total",
                help: "Flushes of the store that writes waited for to be durable (with --durability fsync, \
                       each with an fdatasync) since the server started; the revision's rise over this is \
                       the writes that shared each.",
                kind: MetricKind::Counter,
                value: self.flushes() as f64,
            },
            EngineMetric {
                name: "read_cache_hits_total",
                help: "Record reads answered from the read cache (--read-cache-mib) since the server started.",
                kind: MetricKind::Counter,
                value: cache.hits as f64,
            },
            EngineMetric {
                name: "read_cache_misses_total",
                help: "Record reads the read cache did not hold.",
                kind: MetricKind::Counter,
                value: cache.misses as f64,
            },
            EngineMetric {
                name: "read_cache_bytes",
                help: "Memory the read cache holds, in bytes.",
                kind: MetricKind::Gauge,
                value: cache.bytes as f64,
            },
        ];
        match self.size_on_disk() {
            Ok(bytes) => metrics.push(EngineMetric {
                name: "store_bytes",
                help: "Size of the data dir's database, in bytes.",
                kind: MetricKind::Gauge,
                value: bytes as f64,
            }),
            Err(e) => tracing::warn!(error = %e, "cannot read the store's size"),
        }
        metrics
    }

    fn backup(&self, out: mpsc::SyncSender<Vec<u8>>) -> StoreResult<u64> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Message::Backup(out, reply))?;
        answer.recv().map_err(|_| StoreError::Closed)?
    }

    fn failed(&self) -> BoxFuture<'static, StoreError> {
        let mut failure = self.reads.failure.0.subscribe();
        Box::pin(async move {
            let failed = failure.wait_for(Option::is_some).await.map(|failed| failed.clone());
            // (The store holds the sender: Err cannot happen while it lives.)
            failed.ok().flatten().unwrap_or(StoreError::Closed)
        })
    }

    fn close(&self) -> StoreResult<()> {
        let (reply, answer) = mpsc::sync_channel(1);
        let sent = self.send(Message::Close(reply));
        self.sender.lock().expect("sender lock").take();
        let result = match sent {
            Ok(()) => answer.recv().unwrap_or(Err(StoreError::Closed)),
            Err(_) => Ok(()),
        };
        if let Some(handle) = self.writer.lock().expect("writer lock").take() {
            let _ = handle.join();
        }
        result
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        if self.writer.lock().map(|w| w.is_some()).unwrap_or(false) {
            let _ = self.close();
        }
        if self.reads.failure.get().is_some() {
            // sled flushes when its last handle goes, and on a failed log that
            // flush can wait forever: keep one handle alive instead (the
            // process is stopping; nothing more can be made durable).
            if let Ok(tree) = self.reads.db.tree() {
                std::mem::forget(tree.clone());
            }
        }
    }
}

/// Removes the change-log entries before `revision` (see [`Store::compact`]).
fn compact_log(db: &Shared, revision: u64) -> StoreResult<u64> {
    let first = first_change_in(&*db.tree()?)?;
    if revision <= first {
        return Ok(0);
    }
    // The floor goes to disk before any entry is removed. (Each step holds
    // the database for itself, so a checkpoint can come between them.)
    {
        let tree = db.tree()?;
        tree.insert(META_FIRST_CHANGE, &revision.to_be_bytes()).map_err(storage)?;
        tree.flush().map_err(storage)?;
    }
    let mut removed = 0;
    loop {
        let tree = db.tree()?;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        for item in tree.range(change_key(first)..change_key(revision)).take(4096) {
            let (key, _) = item.map_err(storage)?;
            batch.remove(key);
            in_batch += 1;
        }
        if in_batch == 0 {
            break;
        }
        tree.apply_batch(batch).map_err(storage)?;
        removed += in_batch;
    }
    db.tree()?.flush().map_err(storage)?;
    Ok(removed)
}

/// The writes of one group, not yet in the tree.
#[derive(Default)]
struct Group {
    batch: sled::Batch,
    /// Revision of each key the group wrote; `None` for a key it removed.
    written: std::collections::BTreeMap<Vec<u8>, Option<u64>>,
    /// The set chunks the group wrote, put in the batch when it is applied.
    chunks: chunks::Pending,
    /// The revision of the group's last transaction (0 before the first).
    revision: u64,
    /// Bytes of keys and values the group writes.
    bytes: u64,
    /// Transactions staged, committed or not.
    staged: usize,
}

/// The single writer: applies transactions in arrival order, a group at a
/// time, and tells them they are durable after one flush for the groups it
/// applied in a row.
struct Writer {
    db: Shared,
    cache: Arc<cache::ReadCache>,
    /// Open views, for which it keeps what it overwrites.
    views: Arc<views::Views>,
    /// What it answered and has not yet applied, for point reads.
    staged: Arc<staged::Staged>,
    /// Holds groups back before they are applied, for tests.
    #[cfg(test)]
    apply_hold: Arc<ApplyHold>,
    checkpoints: Arc<Mutex<Checkpoints>>,
    flushes: Arc<AtomicU64>,
    cache_capacity: u64,
    checkpoint_bytes: u64,
    release_free_memory: fn(),
    /// Bytes of keys and values written since the database was last opened.
    written_since_open: u64,
    /// `written_since_open` when freed memory was last handed back.
    trimmed_at: u64,
    revision: u64,
    applied: Arc<AtomicU64>,
    /// Tells readers how far writes are durable; dropped after a failure, so a
    /// reader waiting for a write that may be lost gets an error, not a hang.
    durable: Option<watch::Sender<u64>>,
    /// Woken as `durable` moves; ended with it.
    waits: Arc<DurableWaits>,
    durability: Durability,
    sync_file: Option<File>,
    data_file: PathBuf,
    dir: PathBuf,
    /// The revision last recorded in the marker file as durable, and when.
    marked: (u64, Instant),
    /// Set after a failed write or flush: the state on disk is unknown, so every
    /// later write is refused rather than risk acknowledging on top of it.
    failure: Failure,
    /// Where the writer last found each set's members.
    places: chunks::Places,
    /// The chunks the last group wrote.
    recent: chunks::Recent,
}

impl Drop for Writer {
    /// Whatever ends the writer, nothing more will be durable.
    fn drop(&mut self) {
        self.waits.end();
    }
}

impl Writer {
    fn run(mut self, receiver: mpsc::Receiver<Message>) {
        while let Ok(first) = receiver.recv() {
            let mut next = Some(first);
            let mut close = None;
            let mut backup = None;
            let durable_before = self.revision;
            let started = Instant::now();
            // Rounds staged into one group before one sled batch and one
            // flush: after each, the writes it answered get a moment to send
            // what they let go (the next write to a record they wrote), which
            // then joins the group.
            let mut group = Group::default();
            while let Some(first) = next.take() {
                let mut round = Vec::new();
                let mut message = Some(first);
                while let Some(taken) = message.take() {
                    match taken {
                        Message::Write(p) => round.push(p),
                        Message::Close(reply) => close = Some(reply),
                        Message::Backup(out, reply) => backup = Some((out, reply)),
                    }
                    if close.is_none() && backup.is_none() && round.len() < MAX_GROUP {
                        message = receiver.try_recv().ok();
                    }
                }
                self.stage_round(&mut group, round);
                if close.is_some()
                    || backup.is_some()
                    || started.elapsed() >= MAX_FLUSH_WAIT
                    || group.staged >= MAX_GROUP
                {
                    break;
                }
                std::thread::yield_now();
                next = receiver.try_recv().ok();
            }
            #[cfg(test)]
            {
                let held = self.apply_hold.held.lock().unwrap();
                drop(self.apply_hold.released.wait_while(held, |held| *held).unwrap());
            }
            self.apply_group(group);
            self.make_durable(durable_before);
            if let Some((out, reply)) = backup {
                let _ = reply.send(self.backup(out));
            }
            if let Some(reply) = close {
                let _ = reply.send(self.final_flush());
                return;
            }
            if self.checkpoint_bytes > 0 && self.written_since_open >= self.checkpoint_bytes {
                self.checkpoint();
            } else if self.written_since_open >= self.trimmed_at + TRIM_BYTES {
                (self.release_free_memory)();
                self.trimmed_at = self.written_since_open;
            }
        }
        let _ = self.final_flush();
    }

    /// The flush at close. After a failed write there is nothing more to make
    /// durable, and sled may wait forever on its failed log: report the
    /// failure instead.
    fn final_flush(&mut self) -> StoreResult<()> {
        if let Some(failure) = self.failure.get() {
            return Err(failure);
        }
        let db = self.db.clone();
        self.flush(&*db.tree()?, Durability::Fsync)?;
        self.mark_durable(true);
        Ok(())
    }

    /// Closes and reopens the database between two groups. sled writes a
    /// snapshot of its page table only when it opens a directory, and a start
    /// replays all it logged after that snapshot: without this, the first start
    /// after a long run replays everything the run wrote, seconds for a large
    /// store. Reads and writes wait while it runs; its time
    /// grows with what was written since the last one (`checkpoint_bytes`).
    fn checkpoint(&mut self) {
        let started = Instant::now();
        let written = self.written_since_open;
        let mut shared = self.db.0.write().unwrap_or_else(PoisonError::into_inner);
        // The old handle must be gone before the directory is opened again:
        // sled locks it while open. One whose flush failed is kept, not
        // dropped: sled's drop flushes again, and on a failed log that can
        // wait forever (see `Drop for SledStore`).
        let flushed = match shared.take() {
            Some(old) => old.flush().map(drop).map_err(|e| {
                std::mem::forget(old);
                storage(e)
            }),
            None => Ok(()),
        };
        // What the old database freed goes back before the new one allocates,
        // and again after the reopen: an allocator keeps freed memory for
        // reuse, and the new database does not reuse what the old one freed,
        // so without this each checkpoint raises the server's peak memory.
        (self.release_free_memory)();
        let reopened = flushed.and_then(|()| reopen_tree(&self.dir, self.cache_capacity));
        match reopened {
            Ok(tree) => {
                *shared = Some(tree);
                drop(shared);
                self.written_since_open = 0;
                self.trimmed_at = 0;
                let seconds = started.elapsed().as_secs_f64();
                let mut checkpoints = self.checkpoints.lock().unwrap_or_else(PoisonError::into_inner);
                *checkpoints = Checkpoints { count: checkpoints.count + 1, last_seconds: seconds };
                (self.release_free_memory)();
                tracing::info!(
                    written_mib = written / (1024 * 1024),
                    seconds,
                    "checkpoint: reopened the database, so a restart replays only what is written from now on"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "checkpoint: cannot reopen the database");
                self.failure.report(&e);
                self.durable = None;
                self.waits.end();
            }
        }
    }

    /// Records the durable revision in the marker file: at the first durable
    /// write, then at most once a second while writing (only where writes are
    /// flushed before they are acknowledged), and always after the final flush.
    fn mark_durable(&mut self, flushed_now: bool) {
        let (marked, at) = self.marked;
        let due =
            flushed_now || (self.durability != Durability::None && (marked == 0 || at.elapsed() >= MARK_INTERVAL));
        if self.failure.get().is_some() || self.revision <= marked || !due {
            return;
        }
        match write_marker(&self.dir, self.revision) {
            Ok(()) => self.marked = (self.revision, Instant::now()),
            Err(e) => tracing::warn!(error = %e, "cannot record the durable revision in the marker file"),
        }
    }

    /// Stages a round of transactions into `group` (each transaction's
    /// conditions see the ones before it through `group`), shows their writes
    /// to point reads (`Staged`) and answers each with its outcome: the next
    /// write to a record they wrote can be planned, and join the group,
    /// before the group is applied. `apply_group` then applies the group as
    /// one sled batch, and `make_durable` tells them when they are durable.
    fn stage_round(&mut self, group: &mut Group, pending: Vec<Pending>) {
        if pending.is_empty() {
            return;
        }
        let db = self.db.clone();
        let tree = db.tree();
        let mut answers = Vec::with_capacity(pending.len());
        for p in pending {
            // (A read may have found the failure first.)
            let result = match (self.failure.get(), &tree) {
                (Some(StoreError::Full(reason)), _) => Err(StoreError::Full(reason)),
                (Some(reason), _) => {
                    Err(StoreError::Storage(format!("writes are stopped after an earlier failure: {reason}")))
                }
                (None, Err(e)) => Err(e.clone()),
                (None, Ok(tree)) => {
                    // sled's reads fail too once its log could not be written
                    // (its own background flush may be the first to find out).
                    let staged = self.stage(tree, &p.txn, group);
                    match &staged {
                        Ok(Outcome::Committed { revision }) => self.staged.show(&p.txn.ops, *revision),
                        Ok(Outcome::ConditionFailed) => {}
                        Err(e) => self.failure.report(e),
                    }
                    staged
                }
            };
            answers.push((p.reply, result));
        }
        group.staged += answers.len();
        self.answer(answers);
    }

    /// Applies the transactions `stage_round` staged into `group` as one sled
    /// batch. What it applies is durable after `make_durable`'s flush.
    fn apply_group(&mut self, group: Group) {
        let db = self.db.clone();
        let tree = db.tree();
        if let (None, Ok(tree)) = (self.failure.get(), &tree)
            && group.revision > self.revision
        {
            self.write_group(tree, group);
        }
        // After the read cache forgot the group's keys: its writes are now
        // read from the tree, or were never applied (the store has failed).
        self.staged.clear();
    }

    /// `apply_group`'s batch: the group's writes, chunks and revision.
    fn write_group(&mut self, tree: &sled::Db, mut group: Group) {
        group.batch.insert(META_REVISION, &group.revision.to_be_bytes()[..]);
        group.bytes += chunks::write_pending(&group.chunks, &mut group.batch);
        self.written_since_open += group.bytes;
        // Readers wait from here until the group's revision is published.
        let raw_keys = group.written.keys().map(|key| user_key(key)).chain(group.chunks.keys().cloned());
        let recorded = self.views.record(tree, group.revision, raw_keys);
        let views = match recorded {
            Ok(views) => views,
            Err(e) => return self.failure.report(&e),
        };
        let applied = tree.apply_batch(std::mem::take(&mut group.batch)).map_err(storage);
        // Before anything is durable, and even after a failure (sled
        // may have applied part of the batch).
        self.cache.forget(group.written.keys().map(Vec::as_slice));
        if !group.chunks.is_empty() {
            self.cache.forget_members();
        }
        match applied {
            Ok(()) => {
                self.recent.replace(std::mem::take(&mut group.chunks));
                self.revision = group.revision;
                self.applied.store(group.revision, Ordering::Release);
            }
            Err(e) => self.failure.report(&e),
        }
        drop(views);
    }

    /// Answers a round's transactions. Nothing is staged once the store has
    /// failed; what was staged waits for `apply_group` and `make_durable`'s
    /// flush to be durable.
    fn answer(&self, mut answers: Vec<(oneshot::Sender<StoreResult<Outcome>>, StoreResult<Outcome>)>) {
        if let Some(e) = self.failure.get() {
            for (_, result) in answers.iter_mut() {
                if matches!(result, Ok(Outcome::Committed { .. })) {
                    *result = Err(e.clone());
                }
            }
        }
        for (reply, result) in answers {
            let _ = reply.send(result);
        }
    }

    /// Flushes what was applied since `durable_before`, once, and tells the
    /// writes waiting for it.
    fn make_durable(&mut self, durable_before: u64) {
        if self.revision == durable_before && self.failure.get().is_none() {
            return;
        }
        if self.failure.get().is_none()
            && let Err(e) = self.db.clone().tree().and_then(|tree| self.flush(&tree, self.durability))
        {
            self.failure.report(&e);
        }
        match (&self.failure.get(), &self.durable) {
            (None, Some(durable)) => {
                durable.send_replace(self.revision);
                self.waits.publish(self.revision);
                self.mark_durable(false);
            }
            _ => {
                self.durable = None;
                self.waits.end();
            }
        }
    }

    /// Checks a transaction's conditions against the tree and the group so far,
    /// and adds its writes and change-log entry to the group's batch.
    fn stage(&mut self, tree: &sled::Db, txn: &Txn, group: &mut Group) -> StoreResult<Outcome> {
        for condition in &txn.conditions {
            if !Self::holds(tree, condition, group)? {
                return Ok(Outcome::ConditionFailed);
            }
        }
        let revision = group.revision.max(self.revision) + 1;
        let header = revision.to_be_bytes();
        let mut sets =
            chunks::Staging { tree, pending: &mut group.chunks, recent: &mut self.recent, places: &mut self.places };
        for op in &txn.ops {
            match op {
                Op::Put { key, value } => {
                    let mut stored = Vec::with_capacity(8 + value.len());
                    stored.extend_from_slice(&header);
                    stored.extend_from_slice(value);
                    let stored_key = user_key(key);
                    group.bytes += (stored_key.len() + stored.len()) as u64;
                    group.batch.insert(stored_key, stored);
                    group.written.insert(key.clone(), Some(revision));
                }
                Op::Delete { key } => {
                    let stored_key = user_key(key);
                    group.bytes += stored_key.len() as u64;
                    group.batch.remove(stored_key);
                    group.written.insert(key.clone(), None);
                }
                Op::Add { set, member } => sets.add(set, member, revision)?,
                Op::Remove { set, member } => sets.remove(set, member, revision)?,
            }
        }
        group.bytes += (9 + txn.change.len()) as u64;
        group.batch.insert(&change_key(revision)[..], txn.change.as_slice());
        group.revision = revision;
        Ok(Outcome::Committed { revision })
    }

    fn holds(tree: &sled::Db, condition: &Condition, group: &Group) -> StoreResult<bool> {
        match condition {
            Condition::ModRevision { key, equals } => {
                let current = match group.written.get(key) {
                    Some(written) => written.unwrap_or(0),
                    None => match tree.get(user_key(key)).map_err(storage)? {
                        Some(raw) => split_entry(&raw)?.0,
                        None => 0,
                    },
                };
                Ok(current == *equals)
            }
            Condition::NoneWrittenAfter { prefix, revision } => {
                let in_group = group
                    .written
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .any(|(_, w)| w.is_some_and(|r| r > *revision));
                if in_group {
                    return Ok(false);
                }
                for item in tree.scan_prefix(user_key(prefix)) {
                    let (key, raw) = item.map_err(storage)?;
                    // Keys the group rewrote or removed were judged above.
                    if group.written.contains_key(&key[1..]) {
                        continue;
                    }
                    if split_entry(&raw)?.0 > *revision {
                        return Ok(false);
                    }
                }
                Ok(!chunks::added_after(tree, &group.chunks, prefix, *revision)?)
            }
        }
    }

    /// Copies the tree as it is between two groups, so the copy is consistent
    /// at `self.revision`; writes wait until it is done.
    fn backup(&mut self, out: mpsc::SyncSender<Vec<u8>>) -> StoreResult<u64> {
        let tree = self.db.tree()?;
        let mut writer = super::backup::BackupWriter::new(out, self.revision, first_change_in(&tree)?);
        for item in tree.iter() {
            let (key, value) = item.map_err(storage)?;
            match key.first() {
                Some(&USER) => {
                    let (mod_revision, value) = split_entry(&value)?;
                    writer.key(&key[1..], mod_revision, value)?;
                }
                Some(&CHANGE) => writer.change(decode_u64(&key[1..]).unwrap_or_default(), &value)?,
                Some(&chunks::CHUNK) => {
                    let mut reader = chunks::Reader::new(&key, &value)?;
                    while let Some(read) = reader.next_item()? {
                        writer.member(read.set(), read.member(), read.revision)?;
                    }
                }
                _ => {}
            }
        }
        writer.finish()?;
        Ok(self.revision)
    }

    fn flush(&mut self, tree: &sled::Db, durability: Durability) -> StoreResult<()> {
        if durability == Durability::None {
            return Ok(());
        }
        tree.flush().map_err(storage)?;
        if durability == Durability::Fsync {
            if self.sync_file.is_none() {
                self.sync_file = File::open(&self.data_file).ok();
            }
            if let Some(file) = &self.sync_file {
                file.sync_data().map_err(|e| io_error("fsync failed", &e))?;
            }
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
