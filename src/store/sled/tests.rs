//! The sled engine's own tests, beside the conformance suite every engine
//! runs (see `testkit`).

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{Durability, SledOptions, SledStore};
use crate::store::memory::MemoryStore;
use crate::store::testkit::{RacingReaders, add, commit, conformance, members, members_before, put, txn};
use crate::store::{Engine, Op, Outcome, Store, StoreError};

/// Opens a data dir this process has just closed: sled's background threads
/// may hold its lock a moment longer (the engine's own reopen waits the same way).
fn open_after_close(dir: &std::path::Path) -> Result<SledStore, StoreError> {
    for _ in 0..100 {
        match SledStore::open(dir, SledOptions::default()) {
            Err(StoreError::Locked(_)) => std::thread::sleep(std::time::Duration::from_millis(10)),
            other => return other,
        }
    }
    SledStore::open(dir, SledOptions::default())
}

/// sled's own handle on a data dir this process has just closed (see
/// `open_after_close`).
fn raw_after_close(dir: &std::path::Path) -> sled::Db {
    for _ in 0..100 {
        match sled::open(dir) {
            Ok(db) => return db,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    sled::open(dir).unwrap()
}

/// A new sled store in a directory of its own, and the directory.
async fn open(options: SledOptions) -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), options).unwrap();
    (Arc::new(store), dir)
}

/// Writes acknowledged without waiting for the disk: the suite is about what
/// reads and writes see (`conforms_with_fsync` runs its core as served).
mod conforms {
    crate::store_conformance_tests!(|| super::open(super::SledOptions {
        durability: super::Durability::None,
        ..super::SledOptions::default()
    }));
}

/// The core of the suite with the options the server uses: each write made
/// durable with an fsync before it is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforms_with_fsync() {
    let (store, _dir) = open(SledOptions::default()).await;
    conformance(store).await;
}

/// The same, every read from sled itself.
mod conforms_without_a_read_cache {
    crate::store_conformance_tests!(|| super::open(super::SledOptions {
        durability: super::Durability::None,
        read_cache_bytes: 0,
        ..super::SledOptions::default()
    }));
}

/// The same, with a read cache so small that it keeps dropping what it holds.
mod conforms_with_a_small_read_cache {
    crate::store_conformance_tests!(|| super::open(super::SledOptions {
        durability: super::Durability::None,
        read_cache_bytes: 2048,
        ..super::SledOptions::default()
    }));
}

/// The writer answers a write once it is staged, before its group is
/// applied: reads of the latest state see it at once (so the next write to a
/// record is planned while the one before is still being applied, and joins
/// its batch), a view only once it is applied, and it is durable only after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_answered_and_read_before_its_group_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
    commit(&store, txn(vec![put("k", "zero"), put("gone", "soon")], vec![])).await;
    let before = store.current_revision().await.unwrap();
    store.hold_applies(true);
    let written = txn(vec![put("k", "one"), Op::Delete { key: b"gone".to_vec() }], vec![]);
    let applied = tokio::time::timeout(std::time::Duration::from_secs(10), store.apply(written))
        .await
        .expect("answered while its group waits to be applied")
        .unwrap();
    let Outcome::Committed { revision } = applied.outcome else { panic!("{:?}", applied.outcome) };
    let read = store.get_many(&[b"k", b"gone"]).await.unwrap();
    let k = read[0].as_ref().expect("the staged put is read");
    assert_eq!((k.mod_revision, &k.value[..]), (revision, &b"one"[..]));
    assert_eq!(read[1], None, "the staged delete is read");
    let view = store.snapshot().await.unwrap();
    assert_eq!(view.revision(), before, "a view shows the applied revision");
    let seen = view.get_many(&[b"k", b"gone"]).await.unwrap();
    assert_eq!(seen[0].as_ref().map(|e| &e.value[..]), Some(&b"zero"[..]));
    assert!(seen[1].is_some());
    let mut durable = applied.durable;
    let early = tokio::time::timeout(std::time::Duration::from_millis(100), &mut durable).await;
    assert!(early.is_err(), "durable before its group was applied");
    store.hold_applies(false);
    durable.await.unwrap();
    assert_eq!(store.current_revision().await.unwrap(), revision);
    let view = store.snapshot().await.unwrap();
    assert_eq!(view.get_many(&[b"k"]).await.unwrap()[0].as_ref().map(|e| &e.value[..]), Some(&b"one"[..]));
    assert_eq!(view.get_many(&[b"gone"]).await.unwrap()[0], None);
}

/// Runs of members are kept by the read cache, and readers racing the writer
/// still never miss an acknowledged member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_members_are_kept_in_the_read_cache() {
    let dir = tempfile::tempdir().unwrap();
    let options = SledOptions { durability: Durability::None, ..SledOptions::default() };
    let store = Arc::new(SledStore::open(dir.path(), options).unwrap());
    crate::store::testkit::member_runs_never_lack(store.clone()).await;
    assert!(store.read_cache().hits > 0, "runs are kept: {:?}", store.read_cache());
    store.close().unwrap();
}

/// The same, with the database closed and reopened after every group of writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_store_conforms_with_a_checkpoint_after_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let options = SledOptions { checkpoint_bytes: 1, ..SledOptions::default() };
    let store = Arc::new(SledStore::open(dir.path(), options).unwrap());
    conformance(store.clone()).await;
    assert!(store.checkpoints().count > 10, "{:?}", store.checkpoints());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_store_keeps_data_and_revision_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    for durability in [Durability::Fsync, Durability::Flush] {
        let options = SledOptions { durability, ..SledOptions::default() };
        let store = SledStore::open(dir.path(), options.clone()).unwrap();
        let before = store.current_revision().await.unwrap();
        let out = store.commit(txn(vec![put("k", "v")], vec![])).await.unwrap();
        assert_eq!(out, Outcome::Committed { revision: before + 1 });
        store.close().unwrap();
        drop(store);
        let reopened = SledStore::open(dir.path(), options).unwrap();
        assert_eq!(reopened.current_revision().await.unwrap(), before + 1);
        assert_eq!(reopened.get(b"k").await.unwrap().unwrap().mod_revision, before + 1);
        assert_eq!(reopened.changes(before + 1, 5).await.unwrap().len(), 1);
        reopened.close().unwrap();
    }
}

/// A write waited for answers after its own flush; writes that wait
/// together share one; a store that does not wait does not flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_store_counts_the_flushes_writes_wait_for() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path(), SledOptions::default()).unwrap());
    let opened = store.flushes();
    for i in 0..10 {
        commit(&*store, txn(vec![put(&format!("one/{i}"), "v")], vec![])).await;
    }
    assert_eq!(store.flushes() - opened, 10, "one flush for each write waited for in turn");
    let before = (store.flushes(), store.current_revision().await.unwrap());
    let writers: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.commit(txn(vec![put(&format!("many/{i}"), "v")], vec![])).await })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap().unwrap();
    }
    let flushed = store.flushes() - before.0;
    assert_eq!(store.current_revision().await.unwrap() - before.1, 64);
    assert!((1..=64).contains(&flushed), "{flushed} flushes for 64 writes");
    store.close().unwrap();
    drop(store);

    let dir = tempfile::tempdir().unwrap();
    let options = SledOptions { durability: Durability::None, ..SledOptions::default() };
    let store = SledStore::open(dir.path(), options).unwrap();
    commit(&store, txn(vec![put("k", "v")], vec![])).await;
    assert_eq!(store.flushes(), 0);
    store.close().unwrap();
}

#[test]
fn sled_store_refuses_foreign_newer_and_locked_dirs() {
    // A sled database written by another program.
    let foreign = tempfile::tempdir().unwrap();
    {
        let db = sled::open(foreign.path()).unwrap();
        db.insert(b"somebody", b"else").unwrap();
        db.flush().unwrap();
    }
    // sled's threads may hold the dropped database's lock a moment longer.
    let mut opened = SledStore::open(foreign.path(), SledOptions::default());
    for _ in 0..100 {
        match opened {
            Err(StoreError::Locked(_)) => std::thread::sleep(std::time::Duration::from_millis(10)),
            _ => break,
        }
        opened = SledStore::open(foreign.path(), SledOptions::default());
    }
    let err = opened.err().unwrap();
    assert!(matches!(err, StoreError::Incompatible(ref m) if m.contains("format marker")), "{err}");

    // A directory of other files.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("notes.txt"), "mine").unwrap();
    let err = SledStore::open(other.path(), SledOptions::default()).err().unwrap();
    assert!(matches!(err, StoreError::Incompatible(ref m) if m.contains("notes.txt")), "{err}");
    assert_eq!(std::fs::read_dir(other.path()).unwrap().count(), 1, "nothing written beside it");

    // A database damaged or removed after it was initialised is not started afresh.
    let damaged = tempfile::tempdir().unwrap();
    let store = SledStore::open(damaged.path(), SledOptions::default()).unwrap();
    store.close().unwrap();
    drop(store);
    let size = std::fs::metadata(damaged.path().join("db")).unwrap().len() as usize;
    std::fs::write(damaged.path().join("db"), vec![0x5au8; size.max(4096)]).unwrap();
    let err = open_after_close(damaged.path()).err().expect("a damaged store is refused");
    assert!(err.to_string().contains("damaged") || err.to_string().contains("readable"), "{err}");
    std::fs::remove_file(damaged.path().join("db")).unwrap();
    let err = open_after_close(damaged.path()).err().expect("a removed database is refused");
    assert!(err.to_string().contains("restore"), "{err}");

    // A store of a newer schema.
    let newer = tempfile::tempdir().unwrap();
    SledStore::open(newer.path(), SledOptions::default()).unwrap().close().unwrap();
    {
        let db = raw_after_close(newer.path());
        db.insert(b"mschema", &(super::SCHEMA_VERSION + 1).to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let err = open_after_close(newer.path()).err().unwrap();
    assert!(matches!(err, StoreError::Incompatible(ref m) if m.contains("newer")), "{err}");

    // A store already open in this process (sled locks the directory).
    let locked = tempfile::tempdir().unwrap();
    let first = SledStore::open(locked.path(), SledOptions::default()).unwrap();
    let err = SledStore::open(locked.path(), SledOptions::default()).err().unwrap();
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
    first.close().unwrap();
}

/// A backup of either engine restores into a sled store with every key,
/// revision and change-log entry; a damaged backup is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_restore_everything() {
    let sled_dir = tempfile::tempdir().unwrap();
    let sources: Vec<Arc<dyn Store>> =
        vec![Arc::new(MemoryStore::new()), Arc::new(SledStore::open(sled_dir.path(), SledOptions::default()).unwrap())];
    for source in sources {
        for i in 0..50 {
            source.commit(txn(vec![put(&format!("r/{i:02}"), &format!("value {i}"))], vec![])).await.unwrap();
        }
        source.commit(txn(vec![Op::Delete { key: b"r/07".to_vec() }], vec![])).await.unwrap();
        let ops = (0..40).map(|i| add(&format!("x/{}\0", i % 2), &format!("m{i:02}"))).collect();
        source.commit(txn(ops, vec![])).await.unwrap();
        source.compact(10).await.unwrap();
        let (sender, receiver) = std::sync::mpsc::sync_channel(4);
        let copy = std::thread::spawn(move || receiver.into_iter().flatten().collect::<Vec<u8>>());
        let revision = source.engine().backup(sender).unwrap();
        let bytes = copy.join().unwrap();
        assert_eq!(revision, 52);

        let target = tempfile::tempdir().unwrap();
        assert_eq!(SledStore::restore(target.path(), &mut bytes.as_slice()).unwrap(), 52);
        let restored = open_after_close(target.path()).unwrap();
        assert_eq!(restored.current_revision().await.unwrap(), 52);
        assert_eq!(
            restored.snapshot().await.unwrap().scan(b"r/", b"", 100).await.unwrap(),
            source.snapshot().await.unwrap().scan(b"r/", b"", 100).await.unwrap()
        );
        assert_eq!(
            restored.snapshot().await.unwrap().members(b"x/", b"", 100).await.unwrap().to_vec(),
            source.snapshot().await.unwrap().members(b"x/", b"", 100).await.unwrap().to_vec()
        );
        assert_eq!(restored.snapshot().await.unwrap().members(b"x/", b"", 100).await.unwrap().len(), 40);
        assert_eq!(restored.first_change().await.unwrap(), 10);
        assert_eq!(restored.changes(0, 100).await.unwrap(), source.changes(0, 100).await.unwrap());
        let next = restored.commit(txn(vec![put("r/new", "after")], vec![])).await.unwrap();
        assert_eq!(next, Outcome::Committed { revision: 53 }, "the revision continues");
        restored.close().unwrap();

        // A backup found damaged only at its end leaves nothing behind.
        let truncated = &bytes[..bytes.len() - 5];
        let emptied = tempfile::tempdir().unwrap();
        let err = SledStore::restore(emptied.path(), &mut &truncated[..]).unwrap_err();
        assert!(matches!(err, StoreError::Incompatible(_)), "{err}");
        assert_eq!(std::fs::read_dir(emptied.path()).unwrap().count(), 0, "what the restore wrote is removed");
        let mut damaged = bytes.clone();
        damaged[100] ^= 1;
        assert!(SledStore::restore(tempfile::tempdir().unwrap().path(), &mut damaged.as_slice()).is_err());
        assert!(SledStore::restore(target.path(), &mut bytes.as_slice()).is_err(), "restore refuses a used dir");
        source.engine().close().unwrap();
    }
}

/// The names of the page-table snapshots sled has written in `dir`.
fn sled_snapshots(dir: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("snap."))
        .collect()
}

/// A restore leaves sled's snapshot at the end of the restored data, so the
/// server's first start does not replay it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_leaves_nothing_for_the_first_start_to_replay() {
    let source = MemoryStore::new();
    let value = "v".repeat(4096);
    for i in 0..300 {
        source.commit(txn(vec![put(&format!("r/{i:03}"), &value)], vec![])).await.unwrap();
    }
    let (sender, receiver) = std::sync::mpsc::sync_channel(4);
    let copy = std::thread::spawn(move || receiver.into_iter().flatten().collect::<Vec<u8>>());
    source.backup(sender).unwrap();
    let bytes = copy.join().unwrap();
    let target = tempfile::tempdir().unwrap();
    SledStore::restore(target.path(), &mut bytes.as_slice()).unwrap();
    // A snapshot's name is the log position it covers up to, in hex.
    let newest = sled_snapshots(target.path())
        .iter()
        .filter_map(|name| u64::from_str_radix(name.trim_start_matches("snap."), 16).ok())
        .max()
        .expect("sled wrote a snapshot");
    assert!(newest > 300 * 4096, "the newest snapshot covers only {newest} bytes of the log");
}

/// A checkpoint closes and reopens sled's database under the writer: sled
/// writes a new snapshot (so a later start replays only what follows it),
/// readers in other threads see every committed write throughout, and nothing
/// is lost across it or a later reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_store_checkpoints_without_losing_or_hiding_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let options = SledOptions { durability: Durability::Flush, checkpoint_bytes: 2048, ..SledOptions::default() };
    let store = Arc::new(SledStore::open(dir.path(), options.clone()).unwrap());
    commit(&*store, txn(vec![put("fixed", "v")], vec![])).await;
    let snapshots_at_open = sled_snapshots(dir.path());

    let shared: Arc<dyn Store> = store.clone();
    let readers = RacingReaders::start(&shared, async |store, _| {
        assert_eq!(store.get(b"fixed").await.unwrap().unwrap().value, &b"v"[..]);
        // A view's members are exactly those of its revision, across checkpoints.
        let view = store.snapshot().await.unwrap();
        let members = view.members(b"s/\0", b"", 10_000).await.unwrap();
        assert_eq!(members.len() as u64 + 1, view.revision(), "members at revision {}", view.revision());
    });
    let mut revision = 1;
    for i in 0..300 {
        let key = format!("k/{i:04}");
        let value = "x".repeat(100);
        let out = commit(&*store, txn(vec![put(&key, &value), add("s/\0", &key)], vec![])).await;
        revision += 1;
        assert_eq!(out, Outcome::Committed { revision });
        assert_eq!(store.get(key.as_bytes()).await.unwrap().unwrap().mod_revision, revision, "read after write");
    }
    readers.finish("no reader failed");
    assert_ne!(sled_snapshots(dir.path()), snapshots_at_open, "sled wrote a snapshot while the store was open");
    let checkpoints = store.checkpoints();
    assert!(checkpoints.count > 0 && checkpoints.last_seconds > 0.0, "{checkpoints:?}");

    store.close().unwrap();
    drop((store, shared));
    let reopened = SledStore::open(dir.path(), options).unwrap();
    assert_eq!(reopened.current_revision().await.unwrap(), 301);
    assert_eq!(reopened.snapshot().await.unwrap().members(b"s/\0", b"", 10_000).await.unwrap().len(), 300);
    assert_eq!(reopened.snapshot().await.unwrap().scan(b"k/", b"", 1000).await.unwrap().len(), 300);
    assert_eq!(reopened.changes(1, 1000).await.unwrap().len(), 301);
    reopened.close().unwrap();
}

/// The writer keeps what it overwrites only while a view needs it: nothing
/// with no view open, the values of each write after the oldest open view,
/// and nothing again once the views close, whatever order they close in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwritten_values_are_kept_only_while_a_view_needs_them() {
    let dir = tempfile::tempdir().unwrap();
    let options = SledOptions { durability: Durability::None, ..SledOptions::default() };
    let store = SledStore::open(dir.path(), options).unwrap();
    let kept = || store.reads.views.kept();
    commit(&store, txn(vec![put("a", "1"), add("s\0", "m1")], vec![])).await;
    commit(&store, txn(vec![put("a", "2")], vec![])).await;
    assert_eq!(kept(), 0, "no view, nothing kept");

    let older = store.snapshot().await.unwrap();
    commit(&store, txn(vec![put("a", "3"), add("s\0", "m2")], vec![])).await;
    assert_eq!(kept(), 2, "the key and the set's chunk");
    let newer = store.snapshot().await.unwrap();
    commit(&store, txn(vec![put("a", "4")], vec![])).await;
    assert_eq!(kept(), 3);
    assert_eq!(&older.get(b"a").await.unwrap().unwrap().value[..], b"2");
    assert_eq!(&newer.get(b"a").await.unwrap().unwrap().value[..], b"3");

    // The older closes first: what only it needed goes.
    drop(older);
    assert_eq!(kept(), 1, "the last write, for the newer view");
    assert_eq!(&newer.get(b"a").await.unwrap().unwrap().value[..], b"3");
    assert_eq!(newer.members(b"s\0", b"", 10).await.unwrap().len(), 2);
    drop(newer);
    assert_eq!(kept(), 0);
    store.close().unwrap();
}

/// A write or read waiting for its revision to be durable is woken once,
/// when it is; those still waiting when the store ends get its error.
#[tokio::test]
async fn durable_waits_wake_each_at_its_revision_and_end_the_rest() {
    use super::{DurableWaits, Failure, wait_for_durable};
    let waits = Arc::new(DurableWaits::new(5));
    let failure = Failure::default();
    wait_for_durable(waits.clone(), failure.clone(), 5).await.unwrap();
    let seventh = tokio::spawn(wait_for_durable(waits.clone(), failure.clone(), 7));
    let ninth = tokio::spawn(wait_for_durable(waits.clone(), failure.clone(), 9));
    while waits.lock().waiting.len() < 2 {
        tokio::task::yield_now().await;
    }
    waits.publish(8);
    seventh.await.unwrap().unwrap();
    assert_eq!(waits.lock().waiting.keys().copied().collect::<Vec<_>>(), [9]);
    failure.report(&StoreError::Full("no space".into()));
    waits.end();
    assert!(matches!(ninth.await.unwrap(), Err(StoreError::Full(_))));
    assert!(matches!(wait_for_durable(waits, failure, 10).await, Err(StoreError::Full(_))));
}

/// A data dir of schema 2 (each set's members in chunks of their own) opens
/// upgraded: every member reads back, in order, at its set; the old chunks
/// are gone; and old chunks left by an upgrade cut short after its mark are
/// removed at the next open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_schema_2_is_upgraded_when_opened() {
    use super::chunks;
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
    for group in (0..300).collect::<Vec<_>>().chunks(7) {
        let ops = group.iter().map(|i| add(&format!("x/{}\0", i % 3), &format!("m{:03}", (i * 7919) % 300))).collect();
        commit(&store, txn(ops, vec![])).await;
    }
    commit(&store, txn(vec![put("a", "1"), add("y/\0", "only")], vec![])).await;
    let expected = members(&store, "", "", 1000).await;
    assert_eq!(expected.len(), 301);
    store.close().unwrap();
    drop(store);

    // The same members as schema 2 kept them.
    {
        let db = raw_after_close(dir.path());
        let mut by_set: std::collections::BTreeMap<Vec<u8>, Vec<Vec<u8>>> = Default::default();
        for stored in db.scan_prefix([chunks::CHUNK]) {
            let (key, raw) = stored.unwrap();
            for item in chunks::Chunk::decode(&key, &raw).unwrap().items {
                by_set
                    .entry(item.entry[..item.set_len].to_vec())
                    .or_default()
                    .push(item.entry[item.set_len..].to_vec());
            }
            db.remove(key).unwrap();
        }
        for (set, members) in &by_set {
            for run in members.chunks(32) {
                let run: Vec<&[u8]> = run.iter().map(Vec::as_slice).collect();
                let (key, value) = chunks::per_set_chunk(set, &run, 9);
                db.insert(key, value).unwrap();
            }
        }
        db.insert(b"mschema", &2u64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }

    let store = open_after_close(dir.path()).unwrap();
    assert_eq!(members(&store, "", "", 1000).await, expected);
    let in_x1: Vec<String> = expected.iter().filter(|m| m.starts_with("x/1\0")).cloned().collect();
    assert_eq!(members(&store, "x/1\0", &in_x1[10], 3).await, in_x1[10..13]);
    let in_x2: Vec<String> = expected.iter().filter(|m| m.starts_with("x/2\0")).rev().cloned().collect();
    assert_eq!(members_before(&store, "x/2\0", "", 2).await, in_x2[..2]);
    // Writes go on from where they were.
    commit(&store, txn(vec![add("x/0\0", "m999")], vec![])).await;
    assert_eq!(members(&store, "x/0\0", "x/0\0m990", 10).await, ["x/0\0m999"]);
    store.close().unwrap();
    drop(store);
    {
        let db = raw_after_close(dir.path());
        assert_eq!(db.scan_prefix([chunks::PER_SET_CHUNK]).count(), 0, "the old chunks are gone");
        assert_eq!(db.get(b"mschema").unwrap().unwrap().as_ref(), &super::SCHEMA_VERSION.to_be_bytes());
        let (key, value) = chunks::per_set_chunk(b"x/0\0", &[b"m000"], 9);
        db.insert(key, value).unwrap();
        db.flush().unwrap();
    }
    let store = open_after_close(dir.path()).unwrap();
    assert_eq!(members(&store, "", "", 1000).await.len(), 302);
    store.close().unwrap();
    drop(store);
    let db = raw_after_close(dir.path());
    assert_eq!(db.scan_prefix([chunks::PER_SET_CHUNK]).count(), 0, "what an upgrade left is removed");
}

/// A restore reads its backup as a stream and packs members as they come;
/// members out of order (a backup no engine writes) are placed all the same;
/// and a data dir whose restore did not finish is refused, not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_places_members_in_any_order_and_an_unfinished_one_is_refused() {
    let (sender, receiver) = std::sync::mpsc::sync_channel(1024);
    let mut writer = crate::store::backup::BackupWriter::new(sender, 3, 1);
    writer.key(b"r/a", 1, b"one").unwrap();
    let mut expected = Vec::new();
    for i in (0..300).map(|i| (i * 7919) % 300) {
        let set = format!("x/{}\0", i % 3);
        let member = format!("m{i:03}");
        writer.member(set.as_bytes(), member.as_bytes(), 2).unwrap();
        expected.push(format!("{set}{member}"));
    }
    writer.change(3, b"change").unwrap();
    writer.finish().unwrap();
    let bytes: Vec<u8> = receiver.into_iter().flatten().collect();
    expected.sort();

    let dir = tempfile::tempdir().unwrap();
    assert_eq!(SledStore::restore(dir.path(), &mut bytes.as_slice()).unwrap(), 3);
    let restored = open_after_close(dir.path()).unwrap();
    assert_eq!(members(&restored, "x/", "", 1000).await, expected);
    assert_eq!(&restored.get(b"r/a").await.unwrap().unwrap().value[..], b"one");
    restored.close().unwrap();
    drop(restored);

    {
        let db = raw_after_close(dir.path());
        db.insert(b"mrestoring", &[]).unwrap();
        db.flush().unwrap();
    }
    let err = open_after_close(dir.path()).err().expect("an unfinished restore is refused");
    assert!(matches!(err, StoreError::Incompatible(ref m) if m.contains("restore")), "{err}");
}
