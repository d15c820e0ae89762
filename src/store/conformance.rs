//! One suite of behaviour that every [`Store`] implementation must show.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::memory::MemoryStore;
use super::sled::{SledOptions, SledStore};
use super::{Applied, Condition, Durability, Engine, Op, Outcome, Store, StoreError, Txn};

fn put(key: &str, value: &str) -> Op {
    Op::Put { key: key.as_bytes().to_vec(), value: value.as_bytes().to_vec() }
}

fn txn(ops: Vec<Op>, conditions: Vec<Condition>) -> Txn {
    Txn { conditions, ops, change: b"change".to_vec() }
}

async fn commit(store: &dyn Store, t: Txn) -> Outcome {
    store.commit(t).await.expect("commit")
}

async fn suite(store: Arc<dyn Store>) {
    assert_eq!(store.revision(), 0);
    assert_eq!(store.get(b"a/1").unwrap(), None);

    // Several writes in one transaction share its revision and its change entry.
    let out = commit(&*store, txn(vec![put("a/1", "one"), put("a/2", "two"), put("b/1", "other")], vec![])).await;
    assert_eq!(out, Outcome::Committed { revision: 1 });
    let a1 = store.get(b"a/1").unwrap().unwrap();
    assert_eq!((a1.mod_revision, a1.value.as_slice()), (1, &b"one"[..]));
    assert_eq!(store.changes(1, 10).unwrap(), vec![(1, b"change".to_vec())]);
    // A read lends the value and its revision, and tells an absent key.
    let mut lent = Vec::new();
    assert!(store.read(b"a/2", &mut |value, revision| lent.push((value.to_vec(), revision))).unwrap());
    assert!(!store.read(b"a/9", &mut |value, revision| lent.push((value.to_vec(), revision))).unwrap());
    assert_eq!(lent, [(b"two".to_vec(), 1)], "one visit, for the present key only");

    // A failed condition writes nothing: no key, no revision, no change entry.
    let stale = Condition::ModRevision { key: b"a/1".to_vec(), equals: 7 };
    assert_eq!(
        commit(&*store, txn(vec![put("a/1", "lost"), put("a/3", "lost")], vec![stale])).await,
        Outcome::ConditionFailed
    );
    assert_eq!(store.get(b"a/1").unwrap().unwrap().value, b"one");
    assert_eq!(store.get(b"a/3").unwrap(), None);
    assert_eq!(store.revision(), 1);
    assert_eq!(store.changes(0, 10).unwrap().len(), 1);

    // Absent keys have revision 0: create-if-absent.
    let absent = Condition::ModRevision { key: b"a/3".to_vec(), equals: 0 };
    assert_eq!(
        commit(&*store, txn(vec![put("a/3", "three")], vec![absent.clone()])).await,
        Outcome::Committed { revision: 2 }
    );
    assert_eq!(commit(&*store, txn(vec![put("a/3", "again")], vec![absent])).await, Outcome::ConditionFailed);

    // NoneWrittenAfter sees additions under the prefix.
    let quiet = Condition::NoneWrittenAfter { prefix: b"a/".to_vec(), revision: 1 };
    assert_eq!(commit(&*store, txn(vec![put("c/1", "x")], vec![quiet])).await, Outcome::ConditionFailed);
    let quiet = Condition::NoneWrittenAfter { prefix: b"b/".to_vec(), revision: 1 };
    assert_eq!(commit(&*store, txn(vec![put("c/1", "x")], vec![quiet])).await, Outcome::Committed { revision: 3 });

    // Scans stay in their prefix, start where asked, stop at the limit.
    let keys =
        |v: Vec<(Vec<u8>, super::Entry)>| v.into_iter().map(|(k, _)| String::from_utf8(k).unwrap()).collect::<Vec<_>>();
    assert_eq!(keys(store.scan(b"a/", b"", 10).unwrap()), ["a/1", "a/2", "a/3"]);
    assert_eq!(keys(store.scan(b"a/", &super::key_after(b"a/1"), 1).unwrap()), ["a/2"]);
    assert_eq!(keys(store.scan(b"b/", b"", 10).unwrap()), ["b/1"]);

    // Deletes.
    assert_eq!(
        commit(&*store, txn(vec![Op::Delete { key: b"a/2".to_vec() }], vec![])).await,
        Outcome::Committed { revision: 4 }
    );
    assert_eq!(store.get(b"a/2").unwrap(), None);
    assert_eq!(store.changes(3, 10).unwrap().iter().map(|c| c.0).collect::<Vec<_>>(), [3, 4]);

    // Concurrent writers each get a distinct revision, with no gap.
    let mut tasks = Vec::new();
    for w in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..25 {
                match store.commit(txn(vec![put(&format!("w/{w}/{i}"), "v")], vec![])).await.unwrap() {
                    Outcome::Committed { revision } => revs.push(revision),
                    other => panic!("unexpected {other:?}"),
                }
            }
            revs
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all, (5..=404).collect());
    assert_eq!(store.revision(), 404);
    store.wait_durable(404).await.unwrap();

    // Racing create-if-absent on one key: exactly one wins, also when the
    // racers are committed in one group.
    let mut racers = Vec::new();
    for r in 0..16 {
        let store = store.clone();
        racers.push(tokio::spawn(async move {
            let absent = Condition::ModRevision { key: b"race".to_vec(), equals: 0 };
            store.commit(txn(vec![put("race", &format!("{r}"))], vec![absent])).await.unwrap()
        }));
    }
    let mut winners = 0;
    for r in racers {
        if matches!(r.await.unwrap(), Outcome::Committed { .. }) {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(store.revision(), 405);

    // Compaction removes entries before a revision, never past the end, and
    // records where the log now starts.
    assert_eq!(store.first_change().unwrap(), 1);
    assert_eq!(store.compact(5).unwrap(), 4);
    assert_eq!(store.first_change().unwrap(), 5);
    assert_eq!(store.changes(0, 2).unwrap().iter().map(|c| c.0).collect::<Vec<_>>(), [5, 6]);
    assert_eq!(store.compact(3).unwrap(), 0, "compaction never goes back");
    assert_eq!(store.compact(10_000).unwrap(), 401);
    assert_eq!(store.first_change().unwrap(), 406);
    assert!(store.changes(0, 10).unwrap().is_empty());
    assert_eq!(store.get(b"a/1").unwrap().unwrap().value, b"one", "records stay");

    sets(&*store).await;
    applied_before_durable(&*store).await;

    store.engine().close().unwrap();
    assert_eq!(store.commit(txn(vec![put("z", "z")], vec![])).await, Err(StoreError::Closed));
}

/// Applied, a write is seen by reads at once, and its wait for durability
/// ends as `wait_durable`'s does; a failed condition has nothing to wait for.
async fn applied_before_durable(store: &dyn Store) {
    let Applied { outcome, durable } = store.apply(txn(vec![put("d/1", "applied")], vec![])).await.unwrap();
    let Outcome::Committed { revision } = outcome else { panic!("{outcome:?}") };
    assert_eq!(revision, store.revision());
    assert_eq!(store.get(b"d/1").unwrap().map(|e| (e.mod_revision, e.value)), Some((revision, b"applied".to_vec())));
    durable.await.expect("durable");
    store.wait_durable(revision).await.expect("durable");
    let stale = Condition::ModRevision { key: b"d/1".to_vec(), equals: revision - 1 };
    let Applied { outcome, durable } = store.apply(txn(vec![put("d/1", "refused")], vec![stale])).await.unwrap();
    assert_eq!(outcome, Outcome::ConditionFailed);
    durable.await.expect("nothing to wait for");
    assert_eq!(store.get(b"d/1").unwrap().unwrap().value, b"applied");
    assert_eq!(store.revision(), revision);
}

fn add(set: &str, member: &str) -> Op {
    Op::Add { set: set.as_bytes().to_vec(), member: member.as_bytes().to_vec() }
}

fn remove(set: &str, member: &str) -> Op {
    Op::Remove { set: set.as_bytes().to_vec(), member: member.as_bytes().to_vec() }
}

fn members(store: &dyn Store, prefix: &str, start: &str, limit: usize) -> Vec<String> {
    let found = store.members(prefix.as_bytes(), start.as_bytes(), limit).unwrap();
    found.iter().map(|m| String::from_utf8(m.to_vec()).unwrap()).collect()
}

/// Sets: members read back in order from any start, whatever order and
/// grouping they came in; adding twice or removing an absent member changes
/// nothing; a failed condition adds nothing; `NoneWrittenAfter` sees added
/// members of the sets under its prefix and not of others.
async fn sets(store: &dyn Store) {
    let start = store.revision();
    assert!(members(store, "x/", "", 10).is_empty());
    // 300 members of three sets, in an order that is neither ascending nor
    // descending, some committed together.
    let ids: Vec<usize> = (0..300).map(|i| (i * 7919) % 300).collect();
    for group in ids.chunks(7) {
        let ops = group.iter().map(|i| add(&format!("x/{}\0", i % 3), &format!("m{i:03}"))).collect();
        commit(store, txn(ops, vec![])).await;
    }
    let expected =
        |set: usize| (0..300).filter(|i| i % 3 == set).map(|i| format!("x/{set}\0m{i:03}")).collect::<Vec<_>>();
    assert_eq!(members(store, "x/1\0", "", 1000), expected(1));
    assert_eq!(members(store, "x/", "", 1000), [expected(0), expected(1), expected(2)].concat());
    assert_eq!(members(store, "x/1\0", "x/1\0m151", 3), ["x/1\0m151", "x/1\0m154", "x/1\0m157"]);
    assert_eq!(members(store, "x/1\0", "x/1\0m152", 1), ["x/1\0m154"]);
    assert!(members(store, "x/3\0", "", 10).is_empty());
    assert!(store.scan(b"x/", b"", 10).unwrap().is_empty(), "members are not keys");

    // Adding a member again and removing an absent one change no member.
    commit(store, txn(vec![add("x/1\0", "m001"), remove("x/1\0", "m002"), remove("x/9\0", "m")], vec![])).await;
    assert_eq!(members(store, "x/1\0", "", 1000), expected(1));

    // Removal, and a removal undone by a failed condition.
    commit(store, txn(vec![remove("x/1\0", "m001"), remove("x/1\0", "m298")], vec![])).await;
    let stale = Condition::ModRevision { key: b"a/1".to_vec(), equals: 999 };
    assert_eq!(
        commit(store, txn(vec![remove("x/1\0", "m004"), add("x/1\0", "m999")], vec![stale])).await,
        Outcome::ConditionFailed
    );
    let mut left = expected(1);
    left.retain(|m| !m.ends_with("m001") && !m.ends_with("m298"));
    assert_eq!(members(store, "x/1\0", "", 1000), left);

    // NoneWrittenAfter: an added member of a set under the prefix fails it;
    // members of other sets do not.
    let seen = store.revision();
    commit(store, txn(vec![add("x/2\0", "m500")], vec![])).await;
    let quiet = |prefix: &str, revision| Condition::NoneWrittenAfter { prefix: prefix.as_bytes().to_vec(), revision };
    assert_eq!(commit(store, txn(vec![put("z/1", "z")], vec![quiet("x/2\0", seen)])).await, Outcome::ConditionFailed);
    assert!(matches!(
        commit(store, txn(vec![put("z/1", "z")], vec![quiet("x/1\0", seen)])).await,
        Outcome::Committed { .. }
    ));
    assert!(store.revision() > start);
}

/// The next entry of a watch, within a few seconds.
async fn next(watch: &mut super::ChangeStream) -> Option<super::StoreResult<(u64, Vec<u8>)>> {
    use tokio_stream::StreamExt;
    tokio::time::timeout(std::time::Duration::from_secs(5), watch.next()).await.expect("an entry in time")
}

/// A watch delivers what the log holds, then each change as another task
/// commits it, in revision order and once each; from a compacted revision
/// it ends with `Compacted`, naming where the log starts.
async fn watch_suite(store: Arc<dyn Store>) {
    let base = store.revision();
    for i in 0..3 {
        commit(&*store, txn(vec![put(&format!("w/{i}"), "v")], vec![])).await;
    }
    let mut watch = store.watch(base + 1);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 3..10 {
                let change = Txn {
                    change: format!("change {i}").into_bytes(),
                    ..txn(vec![put(&format!("w/{i}"), "v")], vec![])
                };
                commit(&*store, change).await;
            }
        })
    };
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let (revision, entry) = next(&mut watch).await.unwrap().unwrap();
        if revision > base + 3 {
            assert_eq!(entry, format!("change {}", revision - base - 1).into_bytes());
        }
        seen.push(revision);
    }
    assert_eq!(seen, (base + 1..=base + 10).collect::<Vec<_>>());
    writer.await.unwrap();

    store.compact(base + 5).unwrap();
    let mut late = store.watch(base + 1);
    match next(&mut late).await {
        Some(Err(StoreError::Compacted { first })) => assert_eq!(first, base + 5),
        other => panic!("{other:?}"),
    }
    let mut kept = store.watch(base + 5);
    assert_eq!(next(&mut kept).await.unwrap().unwrap().0, base + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_watches() {
    watch_suite(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_store_watches() {
    let dir = tempfile::tempdir().unwrap();
    let options = SledOptions { durability: Durability::None, ..SledOptions::default() };
    watch_suite(Arc::new(SledStore::open(dir.path(), options).unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms() {
    suite(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    suite(Arc::new(SledStore::open(dir.path(), SledOptions::default()).unwrap())).await;
}

/// The same, every read from sled itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_store_conforms_without_a_read_cache() {
    let dir = tempfile::tempdir().unwrap();
    let options = SledOptions { read_cache_bytes: 0, ..SledOptions::default() };
    suite(Arc::new(SledStore::open(dir.path(), options).unwrap())).await;
}

/// Readers in threads of their own, as the API's are, each calling its check
/// with the count the writer last acknowledged, for as long as writes go on.
struct RacingReaders {
    acknowledged: Arc<AtomicU64>,
    writing: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl RacingReaders {
    fn start(store: &Arc<SledStore>, check: impl Fn(&SledStore, u64) + Send + Sync + Clone + 'static) -> RacingReaders {
        let acknowledged = Arc::new(AtomicU64::new(0));
        let writing = Arc::new(AtomicBool::new(true));
        let threads = (0..2)
            .map(|_| {
                let (store, acknowledged, writing, check) =
                    (store.clone(), acknowledged.clone(), writing.clone(), check.clone());
                std::thread::spawn(move || {
                    let mut reads = 0u64;
                    while writing.load(Ordering::Acquire) {
                        check(&store, acknowledged.load(Ordering::Acquire));
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        RacingReaders { acknowledged, writing, threads }
    }

    fn acknowledge(&self, count: u64) {
        self.acknowledged.store(count, Ordering::Release);
    }

    /// Stops the readers; each must have read at least once, and none failed.
    fn finish(self, failed: &str) {
        self.writing.store(false, Ordering::Release);
        for reader in self.threads {
            assert!(reader.join().expect(failed) > 0);
        }
    }
}

/// Readers racing the writer never get a value older than one already
/// acknowledged, though each write makes them refill the read cache (and a
/// small cache keeps dropping what they read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_never_returns_a_value_older_than_an_acknowledged_write() {
    for read_cache_bytes in [SledOptions::default().read_cache_bytes, 2048] {
        let dir = tempfile::tempdir().unwrap();
        let options = SledOptions { durability: Durability::None, read_cache_bytes, ..SledOptions::default() };
        let store = Arc::new(SledStore::open(dir.path(), options).unwrap());
        let readers = RacingReaders::start(&store, |store, floor| {
            for key in ["counter", "other"] {
                let read = store.get(key.as_bytes()).unwrap().map(|e| e.value);
                let value: u64 = read.map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap());
                assert!(value >= floor, "{key} read {value} after {floor} was acknowledged");
            }
        });
        for i in 1..=1500u64 {
            let value = i.to_string();
            commit(&*store, txn(vec![put("counter", &value), put("other", &value)], vec![])).await;
            readers.acknowledge(i);
        }
        readers.finish("no reader saw an old value");
        store.close().unwrap();
    }
}

/// Readers racing the writer never miss a member already acknowledged,
/// though each added member makes them read the run again (the read cache
/// keeps runs of members until the next group that changes a set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_members_never_lacks_an_acknowledged_member() {
    let dir = tempfile::tempdir().unwrap();
    let options = SledOptions { durability: Durability::None, ..SledOptions::default() };
    let store = Arc::new(SledStore::open(dir.path(), options).unwrap());
    let readers = RacingReaders::start(&store, |store, floor| {
        let found = members(store, "s/a\0", "", 64);
        assert!(found.len() as u64 >= floor, "{} members read after {floor} were acknowledged", found.len());
        // Members of another set come and go without changing this one's.
        assert!(found.iter().all(|m| m.starts_with("s/a\0")), "{found:?}");
    });
    for i in 1..=600u64 {
        let other =
            if i % 2 == 0 { add("s/b\0", &format!("{i:04}")) } else { remove("s/b\0", &format!("{:04}", i - 1)) };
        let ops = if i <= 64 { vec![add("s/a\0", &format!("{i:04}")), other] } else { vec![other] };
        commit(&*store, txn(ops, vec![])).await;
        readers.acknowledge(i.min(64));
    }
    readers.finish("no reader missed a member");
    assert_eq!(members(&*store, "s/a\0", "", 64).len(), 64);
    assert!(store.read_cache().hits > 0, "runs are kept: {:?}", store.read_cache());
    store.close().unwrap();
}

/// The same, with the database closed and reopened after every group of writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_store_conforms_with_a_checkpoint_after_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let options = SledOptions { checkpoint_bytes: 1, ..SledOptions::default() };
    let store = Arc::new(SledStore::open(dir.path(), options).unwrap());
    suite(store.clone()).await;
    assert!(store.checkpoints().count > 10, "{:?}", store.checkpoints());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_store_keeps_data_and_revision_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    for durability in [Durability::Fsync, Durability::Flush] {
        let options = SledOptions { durability, ..SledOptions::default() };
        let store = SledStore::open(dir.path(), options.clone()).unwrap();
        let before = store.revision();
        let out = store.commit(txn(vec![put("k", "v")], vec![])).await.unwrap();
        assert_eq!(out, Outcome::Committed { revision: before + 1 });
        store.close().unwrap();
        drop(store);
        let reopened = SledStore::open(dir.path(), options).unwrap();
        assert_eq!(reopened.revision(), before + 1);
        assert_eq!(reopened.get(b"k").unwrap().unwrap().mod_revision, before + 1);
        assert_eq!(reopened.changes(before + 1, 5).unwrap().len(), 1);
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
    let before = (store.flushes(), store.revision());
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
    assert_eq!(store.revision() - before.1, 64);
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
    let err = SledStore::open(damaged.path(), SledOptions::default()).err().expect("a damaged store is refused");
    assert!(err.to_string().contains("damaged") || err.to_string().contains("readable"), "{err}");
    std::fs::remove_file(damaged.path().join("db")).unwrap();
    let err = SledStore::open(damaged.path(), SledOptions::default()).err().expect("a removed database is refused");
    assert!(err.to_string().contains("restore"), "{err}");

    // A store of a newer schema.
    let newer = tempfile::tempdir().unwrap();
    SledStore::open(newer.path(), SledOptions::default()).unwrap().close().unwrap();
    {
        let db = sled::open(newer.path()).unwrap();
        db.insert(b"mschema", &(super::sled::SCHEMA_VERSION + 1).to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let err = SledStore::open(newer.path(), SledOptions::default()).err().unwrap();
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
        source.compact(10).unwrap();
        let (sender, receiver) = std::sync::mpsc::sync_channel(4);
        let copy = std::thread::spawn(move || receiver.into_iter().flatten().collect::<Vec<u8>>());
        let revision = source.engine().backup(sender).unwrap();
        let bytes = copy.join().unwrap();
        assert_eq!(revision, 52);

        let target = tempfile::tempdir().unwrap();
        assert_eq!(SledStore::restore(target.path(), &mut bytes.as_slice()).unwrap(), 52);
        let restored = SledStore::open(target.path(), SledOptions::default()).unwrap();
        assert_eq!(restored.revision(), 52);
        assert_eq!(restored.scan(b"r/", b"", 100).unwrap(), source.scan(b"r/", b"", 100).unwrap());
        assert_eq!(
            restored.members(b"x/", b"", 100).unwrap().to_vec(),
            source.members(b"x/", b"", 100).unwrap().to_vec()
        );
        assert_eq!(restored.members(b"x/", b"", 100).unwrap().len(), 40);
        assert_eq!(restored.first_change().unwrap(), 10);
        assert_eq!(restored.changes(0, 100).unwrap(), source.changes(0, 100).unwrap());
        let next = restored.commit(txn(vec![put("r/new", "after")], vec![])).await.unwrap();
        assert_eq!(next, Outcome::Committed { revision: 53 }, "the revision continues");
        restored.close().unwrap();

        let truncated = &bytes[..bytes.len() - 5];
        let err = SledStore::restore(tempfile::tempdir().unwrap().path(), &mut &truncated[..]).unwrap_err();
        assert!(matches!(err, StoreError::Incompatible(_)), "{err}");
        let mut damaged = bytes.clone();
        damaged[100] ^= 1;
        assert!(SledStore::restore(tempfile::tempdir().unwrap().path(), &mut damaged.as_slice()).is_err());
        assert!(SledStore::restore(target.path(), &mut bytes.as_slice()).is_err(), "restore refuses a used dir");
        source.engine().close().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn for_each_entry_visits_every_key_across_growing_chunks_and_stops_when_asked() {
    let store = MemoryStore::new();
    // 1,500 keys: chunks of 64, 128, … 1024 and a short last one; a neighbour
    // prefix that must not be visited.
    let keys: Vec<String> = (0..1500).map(|i| format!("k/{i:05}")).collect();
    let mut ops: Vec<Op> = keys.iter().map(|k| put(k, "v")).collect();
    ops.push(put("l/00000", "other prefix"));
    commit(&store, txn(ops, vec![])).await;

    let mut seen = Vec::new();
    let complete = super::for_each_entry(&store, b"k/", b"", |key, entry| {
        assert_eq!(entry.value, b"v");
        seen.push(String::from_utf8(key.to_vec()).unwrap());
        Ok::<_, StoreError>(true)
    })
    .unwrap();
    assert!(complete);
    assert_eq!(seen, keys);

    // From a start key, stopping after 100: the visit stops there.
    let mut count = 0;
    let complete = super::for_each_entry(&store, b"k/", b"k/00100", |key, _| {
        count += 1;
        assert!(key >= &b"k/00100"[..]);
        Ok::<_, StoreError>(count < 100)
    })
    .unwrap();
    assert!(!complete);
    assert_eq!(count, 100);

    // An error from the visit ends the walk with it.
    let failed = super::for_each_entry(&store, b"k/", b"", |_, _| Err::<bool, _>(StoreError::Closed));
    assert_eq!(failed, Err(StoreError::Closed));
}

/// A set member longer than sled's chunks hold fails its own transaction,
/// writes none of it, and does not stop the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_store_refuses_an_oversized_member_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
    let oversized = Op::Add { set: b"x/\0".to_vec(), member: vec![b'm'; 70_000] };
    let refused = store.commit(txn(vec![put("a", "1"), oversized], vec![])).await;
    assert!(matches!(refused, Err(StoreError::Storage(ref m)) if m.contains("65535")), "{refused:?}");
    assert_eq!(store.get(b"a").unwrap(), None);
    assert_eq!(store.revision(), 0);
    assert_eq!(
        commit(&store, txn(vec![put("a", "2"), add("x/\0", "m")], vec![])).await,
        Outcome::Committed { revision: 1 }
    );
    store.close().unwrap();
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

    let readers = RacingReaders::start(&store, |store, _| {
        let seen = store.revision();
        assert_eq!(store.get(b"fixed").unwrap().unwrap().value, b"v");
        let members = store.members(b"s/\0", b"", 10_000).unwrap();
        assert!(members.len() as u64 + 1 >= seen, "{} members at revision {seen}", members.len());
    });
    let mut revision = 1;
    for i in 0..300 {
        let key = format!("k/{i:04}");
        let value = "x".repeat(100);
        let out = commit(&*store, txn(vec![put(&key, &value), add("s/\0", &key)], vec![])).await;
        revision += 1;
        assert_eq!(out, Outcome::Committed { revision });
        assert_eq!(store.get(key.as_bytes()).unwrap().unwrap().mod_revision, revision, "read after write");
    }
    readers.finish("no reader failed");
    assert_ne!(sled_snapshots(dir.path()), snapshots_at_open, "sled wrote a snapshot while the store was open");
    let checkpoints = store.checkpoints();
    assert!(checkpoints.count > 0 && checkpoints.last_seconds > 0.0, "{checkpoints:?}");

    store.close().unwrap();
    drop(store);
    let reopened = SledStore::open(dir.path(), options).unwrap();
    assert_eq!(reopened.revision(), 301);
    assert_eq!(reopened.members(b"s/\0", b"", 10_000).unwrap().len(), 300);
    assert_eq!(reopened.scan(b"k/", b"", 1000).unwrap().len(), 300);
    assert_eq!(reopened.changes(1, 1000).unwrap().len(), 301);
    reopened.close().unwrap();
}
