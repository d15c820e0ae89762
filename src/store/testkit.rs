//! The behaviour every [`Store`] engine must show, as public test code: an
//! engine runs all of it with [`store_conformance_tests!`](crate::store_conformance_tests),
//! given a function that opens a new, empty store of that engine. The
//! helpers (`put`, `txn`, `commit`, `members`...) are for an engine's own
//! tests too.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{Applied, ChangeStream, Condition, Op, Outcome, Store, StoreError, StoreResult, Txn};

/// Runs the conformance suite against an engine: `$open` is an async
/// function (or closure) that returns a new, empty `Arc<dyn Store>` of it
/// and what must live as long as the store (its directory, say), and each
/// test of the suite becomes a `#[tokio::test]` of the module the macro is
/// called in.
#[macro_export]
macro_rules! store_conformance_tests {
    ($open:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conforms() {
            let open = $open;
            let (store, _kept) = open().await;
            $crate::store::testkit::conformance(store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn watches() {
            let open = $open;
            let (store, _kept) = open().await;
            $crate::store::testkit::watch(store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_read_never_returns_a_value_older_than_an_acknowledged_write() {
            let open = $open;
            let (store, _kept) = open().await;
            $crate::store::testkit::reads_never_go_back(store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_run_of_members_never_lacks_an_acknowledged_member() {
            let open = $open;
            let (store, _kept) = open().await;
            $crate::store::testkit::member_runs_never_lack(store).await;
        }
    };
}

pub fn put(key: &str, value: &str) -> Op {
    Op::Put { key: key.as_bytes().to_vec(), value: value.as_bytes().to_vec() }
}

pub fn txn(ops: Vec<Op>, conditions: Vec<Condition>) -> Txn {
    Txn { conditions, ops, change: b"change".to_vec() }
}

pub async fn commit(store: &dyn Store, t: Txn) -> Outcome {
    store.commit(t).await.expect("commit")
}

/// Keys, conditions, the change log, compaction, sets, apply before
/// durable, and close.
pub async fn conformance(store: Arc<dyn Store>) {
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

pub fn add(set: &str, member: &str) -> Op {
    Op::Add { set: set.as_bytes().to_vec(), member: member.as_bytes().to_vec() }
}

pub fn remove(set: &str, member: &str) -> Op {
    Op::Remove { set: set.as_bytes().to_vec(), member: member.as_bytes().to_vec() }
}

pub fn members(store: &dyn Store, prefix: &str, start: &str, limit: usize) -> Vec<String> {
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
pub async fn next(watch: &mut ChangeStream) -> Option<StoreResult<(u64, Vec<u8>)>> {
    use tokio_stream::StreamExt;
    tokio::time::timeout(std::time::Duration::from_secs(5), watch.next()).await.expect("an entry in time")
}

/// A watch delivers what the log holds, then each change as another task
/// commits it, in revision order and once each; from a compacted revision
/// it ends with `Compacted`, naming where the log starts.
pub async fn watch(store: Arc<dyn Store>) {
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

/// Readers in threads of their own, as the API's are, each calling its check
/// with the count the writer last acknowledged, for as long as writes go on.
pub struct RacingReaders {
    acknowledged: Arc<AtomicU64>,
    writing: Arc<AtomicBool>,
    /// Reads each reader has done.
    reads: Vec<Arc<AtomicU64>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl RacingReaders {
    pub fn start(
        store: &Arc<dyn Store>,
        check: impl Fn(&dyn Store, u64) + Send + Sync + Clone + 'static,
    ) -> RacingReaders {
        let acknowledged = Arc::new(AtomicU64::new(0));
        let writing = Arc::new(AtomicBool::new(true));
        let reads: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::default()).collect();
        let threads = reads
            .iter()
            .map(|done| {
                let (store, acknowledged, writing, check, done) =
                    (store.clone(), acknowledged.clone(), writing.clone(), check.clone(), done.clone());
                std::thread::spawn(move || {
                    while writing.load(Ordering::Acquire) {
                        check(&*store, acknowledged.load(Ordering::Acquire));
                        done.fetch_add(1, Ordering::Release);
                    }
                })
            })
            .collect();
        RacingReaders { acknowledged, writing, reads, threads }
    }

    pub fn acknowledge(&self, count: u64) {
        self.acknowledged.store(count, Ordering::Release);
    }

    /// Stops the readers once each has read at least once (after the last
    /// write, if the writes were quicker than their start); none failed.
    pub fn finish(self, failed: &str) {
        let started = std::time::Instant::now();
        while self.reads.iter().any(|done| done.load(Ordering::Acquire) == 0) {
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "a reader never read");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.writing.store(false, Ordering::Release);
        for reader in self.threads {
            reader.join().expect(failed);
        }
    }
}

/// Readers racing the writer never get a value older than one already
/// acknowledged (an engine's read cache must forget what each write changes).
pub async fn reads_never_go_back(store: Arc<dyn Store>) {
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
}

/// Readers racing the writer never miss a member already acknowledged,
/// though each added member changes the run they read (and an engine may
/// keep runs of members until the next write that changes a set).
pub async fn member_runs_never_lack(store: Arc<dyn Store>) {
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
}
