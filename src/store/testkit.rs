//! The behaviour every [`Store`] engine must show, as public test code: an
//! engine runs all of it with [`store_conformance_tests!`](crate::store_conformance_tests),
//! given a function that opens a new, empty store of that engine. The
//! helpers (`put`, `txn`, `commit`, `members`...) are for an engine's own
//! tests too.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{Applied, ChangeStream, Condition, Op, Outcome, Snapshot, Store, StoreError, StoreResult, Txn};

/// Runs the conformance suite against an engine: `$open` is an async
/// function (or closure) that returns a new, empty `Arc<dyn Store>` of it
/// and what must live as long as the store (its directory, say), and each
/// test of the suite becomes a `#[tokio::test]` of the module the macro is
/// called in.
#[macro_export]
macro_rules! store_conformance_tests {
    ($open:expr) => {
        $crate::store_conformance_tests!($open, #[cfg(all())]);
    };
    // Each test with `$attribute` too, say `#[ignore = "needs etcd"]` for an
    // engine whose server a machine may lack.
    ($open:expr, #[$attribute:meta]) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[$attribute]
        async fn conforms() {
            let open = $open;
            let (store, _kept) = open().await;
            $crate::store::testkit::conformance(store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[$attribute]
        async fn watches() {
            let open = $open;
            let (store, _kept) = open().await;
            $crate::store::testkit::watch(store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[$attribute]
        async fn a_read_never_returns_a_value_older_than_an_acknowledged_write() {
            let open = $open;
            let (store, _kept) = open().await;
            $crate::store::testkit::reads_never_go_back(store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[$attribute]
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

/// The revision a commit got.
pub fn revision_of(outcome: Outcome) -> u64 {
    match outcome {
        Outcome::Committed { revision } => revision,
        Outcome::ConditionFailed => panic!("a condition failed"),
    }
}

/// The latest revision.
pub async fn current(store: &dyn Store) -> u64 {
    store.current_revision().await.expect("current revision")
}

/// The entry under `key` at the latest revision, as (revision, value).
pub async fn get(store: &dyn Store, key: &str) -> Option<(u64, Vec<u8>)> {
    store.get(key.as_bytes()).await.expect("get").map(|e| (e.mod_revision, e.value.to_vec()))
}

/// The keys a snapshot's scan finds.
pub async fn scan(snapshot: &dyn Snapshot, prefix: &str, start: &[u8], limit: usize) -> Vec<String> {
    let found = snapshot.scan(prefix.as_bytes(), start, limit).await.expect("scan");
    found.into_iter().map(|(k, _)| String::from_utf8(k).unwrap()).collect()
}

/// Keys, conditions, the change log, compaction, sets, views, apply before
/// durable, and close. Revisions are compared, never computed: an engine
/// may skip numbers.
pub async fn conformance(store: Arc<dyn Store>) {
    let empty = current(&*store).await;
    assert_eq!(get(&*store, "a/1").await, None);

    // Several writes in one transaction share its revision and its change entry.
    let out = commit(&*store, txn(vec![put("a/1", "one"), put("a/2", "two"), put("b/1", "other")], vec![])).await;
    let first = revision_of(out);
    assert!(first > empty);
    assert_eq!(current(&*store).await, first);
    assert_eq!(get(&*store, "a/1").await, Some((first, b"one".to_vec())));
    assert_eq!(store.changes(first, 10).await.unwrap(), vec![(first, b"change".to_vec())]);
    // Many keys in one call, in the order asked, absent ones as None.
    let keys: Vec<Vec<u8>> = ["a/2", "a/9", "a/1"].iter().map(|k| k.as_bytes().to_vec()).collect();
    let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let many = store.get_many(&keys).await.unwrap();
    let values: Vec<Option<&[u8]>> = many.iter().map(|e| e.as_ref().map(|e| &e.value[..])).collect();
    assert_eq!(values, [Some(&b"two"[..]), None, Some(&b"one"[..])]);

    // A failed condition writes nothing: no key, no revision, no change entry.
    let stale = Condition::ModRevision { key: b"a/1".to_vec(), equals: first + 7 };
    assert_eq!(
        commit(&*store, txn(vec![put("a/1", "lost"), put("a/3", "lost")], vec![stale])).await,
        Outcome::ConditionFailed
    );
    assert_eq!(get(&*store, "a/1").await.unwrap().1, b"one");
    assert_eq!(get(&*store, "a/3").await, None);
    assert_eq!(current(&*store).await, first);
    assert_eq!(store.changes(0, 10).await.unwrap().len(), 1);

    // Absent keys have revision 0: create-if-absent.
    let absent = Condition::ModRevision { key: b"a/3".to_vec(), equals: 0 };
    let second = revision_of(commit(&*store, txn(vec![put("a/3", "three")], vec![absent.clone()])).await);
    assert!(second > first);
    assert_eq!(commit(&*store, txn(vec![put("a/3", "again")], vec![absent])).await, Outcome::ConditionFailed);

    // NoneWrittenAfter sees additions under the prefix.
    let quiet = Condition::NoneWrittenAfter { prefix: b"a/".to_vec(), revision: first };
    assert_eq!(commit(&*store, txn(vec![put("c/1", "x")], vec![quiet])).await, Outcome::ConditionFailed);
    let quiet = Condition::NoneWrittenAfter { prefix: b"b/".to_vec(), revision: first };
    let third = revision_of(commit(&*store, txn(vec![put("c/1", "x")], vec![quiet])).await);

    // Scans stay in their prefix, start where asked, stop at the limit.
    let snapshot = store.snapshot().await.unwrap();
    assert_eq!(snapshot.revision(), third);
    assert_eq!(scan(&*snapshot, "a/", b"", 10).await, ["a/1", "a/2", "a/3"]);
    assert_eq!(scan(&*snapshot, "a/", &super::key_after(b"a/1"), 1).await, ["a/2"]);
    assert_eq!(scan(&*snapshot, "b/", b"", 10).await, ["b/1"]);
    drop(snapshot);

    // Deletes.
    let fourth = revision_of(commit(&*store, txn(vec![Op::Delete { key: b"a/2".to_vec() }], vec![])).await);
    assert_eq!(get(&*store, "a/2").await, None);
    let logged: Vec<u64> = store.changes(third, 10).await.unwrap().iter().map(|c| c.0).collect();
    assert_eq!(logged, [third, fourth]);

    // Concurrent writers each get a distinct revision, after the last.
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
            assert!(revs.windows(2).all(|w| w[0] < w[1]), "one writer's revisions rise");
            revs
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), 400);
    assert!(*all.first().unwrap() > fourth);
    let last = *all.last().unwrap();
    assert_eq!(current(&*store).await, last);
    store.wait_durable(last).await.unwrap();
    let logged = store.changes(fourth + 1, 1000).await.unwrap();
    assert_eq!(logged.iter().map(|c| c.0).collect::<BTreeSet<_>>(), all, "one change-log entry each");

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
    let mut winners = Vec::new();
    for r in racers {
        if let Outcome::Committed { revision } = r.await.unwrap() {
            winners.push(revision);
        }
    }
    assert_eq!(winners.len(), 1);
    assert_eq!(current(&*store).await, winners[0]);

    // Compaction removes entries before a revision, never past the end, and
    // records where the log now starts.
    assert!(store.first_change().await.unwrap() <= first);
    let removed = store.compact(third).await.unwrap();
    assert_eq!(removed, 2, "the entries of the first two commits");
    assert_eq!(store.first_change().await.unwrap(), third);
    let kept: Vec<u64> = store.changes(0, 2).await.unwrap().iter().map(|c| c.0).collect();
    assert_eq!(kept, [third, fourth]);
    assert_eq!(store.compact(second).await.unwrap(), 0, "compaction never goes back");
    assert_eq!(store.compact(u64::MAX - 1).await.unwrap(), 2 + 400 + 1);
    // (After the last commit: an engine's own writes, such as where its log
    // starts, may take revisions too.)
    assert!(store.first_change().await.unwrap() > winners[0]);
    assert!(store.changes(0, 10).await.unwrap().is_empty());
    assert_eq!(get(&*store, "a/1").await.unwrap().1, b"one", "records stay");

    sets(&*store).await;
    views(&*store).await;
    applied_before_durable(&*store).await;

    store.engine().close().unwrap();
    assert_eq!(store.commit(txn(vec![put("z", "z")], vec![])).await, Err(StoreError::Closed));
}

/// Answered by `apply`, a write is seen by point reads at once (a snapshot
/// and the current revision may show it later, and do once it is durable),
/// and its wait for durability ends as `wait_durable`'s does; a failed
/// condition has nothing to wait for.
async fn applied_before_durable(store: &dyn Store) {
    let before = current(store).await;
    let Applied { outcome, durable } = store.apply(txn(vec![put("d/1", "applied")], vec![])).await.unwrap();
    let revision = revision_of(outcome);
    assert!(revision > before);
    assert!(current(store).await <= revision);
    assert_eq!(get(store, "d/1").await, Some((revision, b"applied".to_vec())));
    durable.await.expect("durable");
    store.wait_durable(revision).await.expect("durable");
    assert_eq!(revision, current(store).await);
    let stale = Condition::ModRevision { key: b"d/1".to_vec(), equals: revision - 1 };
    let Applied { outcome, durable } = store.apply(txn(vec![put("d/1", "refused")], vec![stale])).await.unwrap();
    assert_eq!(outcome, Outcome::ConditionFailed);
    durable.await.expect("nothing to wait for");
    assert_eq!(get(store, "d/1").await.unwrap().1, b"applied");
    assert_eq!(current(store).await, revision);
}

pub fn add(set: &str, member: &str) -> Op {
    Op::Add { set: set.as_bytes().to_vec(), member: member.as_bytes().to_vec() }
}

pub fn remove(set: &str, member: &str) -> Op {
    Op::Remove { set: set.as_bytes().to_vec(), member: member.as_bytes().to_vec() }
}

/// The members a snapshot's read finds, as strings.
pub async fn members_in(snapshot: &dyn Snapshot, prefix: &str, start: &str, limit: usize) -> Vec<String> {
    let found = snapshot.members(prefix.as_bytes(), start.as_bytes(), limit).await.expect("members");
    found.iter().map(|m| String::from_utf8(m.to_vec()).unwrap()).collect()
}

/// The members at the latest revision, as strings.
pub async fn members(store: &dyn Store, prefix: &str, start: &str, limit: usize) -> Vec<String> {
    members_in(&*store.snapshot().await.expect("snapshot"), prefix, start, limit).await
}

/// The members at the latest revision before `before`, descending, as strings.
pub async fn members_before(store: &dyn Store, prefix: &str, before: &str, limit: usize) -> Vec<String> {
    let snapshot = store.snapshot().await.expect("snapshot");
    let found = snapshot.members_before(prefix.as_bytes(), before.as_bytes(), limit).await.expect("members_before");
    found.iter().map(|m| String::from_utf8(m.to_vec()).unwrap()).collect()
}

/// Sets: members read back in order from any start, whatever order and
/// grouping they came in; adding twice or removing an absent member changes
/// nothing; a failed condition adds nothing; `NoneWrittenAfter` sees added
/// members of the sets under its prefix and not of others.
async fn sets(store: &dyn Store) {
    let start = current(store).await;
    assert!(members(store, "x/", "", 10).await.is_empty());
    // 300 members of three sets, in an order that is neither ascending nor
    // descending, some committed together.
    let ids: Vec<usize> = (0..300).map(|i| (i * 7919) % 300).collect();
    for group in ids.chunks(7) {
        let ops = group.iter().map(|i| add(&format!("x/{}\0", i % 3), &format!("m{i:03}"))).collect();
        commit(store, txn(ops, vec![])).await;
    }
    let expected =
        |set: usize| (0..300).filter(|i| i % 3 == set).map(|i| format!("x/{set}\0m{i:03}")).collect::<Vec<_>>();
    assert_eq!(members(store, "x/1\0", "", 1000).await, expected(1));
    assert_eq!(members(store, "x/", "", 1000).await, [expected(0), expected(1), expected(2)].concat());
    assert_eq!(members(store, "x/1\0", "x/1\0m151", 3).await, ["x/1\0m151", "x/1\0m154", "x/1\0m157"]);
    assert_eq!(members(store, "x/1\0", "x/1\0m152", 1).await, ["x/1\0m154"]);
    assert!(members(store, "x/3\0", "", 10).await.is_empty());
    // Backwards: from the end of a prefix, or before a member, across sets.
    let backwards = |set: usize| expected(set).into_iter().rev().collect::<Vec<_>>();
    assert_eq!(members_before(store, "x/1\0", "", 1000).await, backwards(1));
    assert_eq!(members_before(store, "x/", "", 1000).await, [backwards(2), backwards(1), backwards(0)].concat());
    assert_eq!(members_before(store, "x/1\0", "x/1\0m157", 3).await, ["x/1\0m154", "x/1\0m151", "x/1\0m148"]);
    assert_eq!(members_before(store, "x/1\0", "x/1\0m156", 1).await, ["x/1\0m154"]);
    assert_eq!(members_before(store, "x/", "x/1\0", 2).await, ["x/0\0m297", "x/0\0m294"]);
    assert!(members_before(store, "x/1\0", "x/1\0m001", 10).await.is_empty());
    assert!(members_before(store, "x/3\0", "", 10).await.is_empty());
    assert!(members_before(store, "w/", "", 10).await.is_empty(), "nothing under a prefix before the sets'");
    let snapshot = store.snapshot().await.unwrap();
    assert!(scan(&*snapshot, "x/", b"", 10).await.is_empty(), "members are not keys");
    drop(snapshot);

    // Adding a member again and removing an absent one change no member.
    commit(store, txn(vec![add("x/1\0", "m001"), remove("x/1\0", "m002"), remove("x/9\0", "m")], vec![])).await;
    assert_eq!(members(store, "x/1\0", "", 1000).await, expected(1));

    // Removal, and a removal undone by a failed condition.
    commit(store, txn(vec![remove("x/1\0", "m001"), remove("x/1\0", "m298")], vec![])).await;
    let stale = Condition::ModRevision { key: b"a/1".to_vec(), equals: 999_999 };
    assert_eq!(
        commit(store, txn(vec![remove("x/1\0", "m004"), add("x/1\0", "m999")], vec![stale])).await,
        Outcome::ConditionFailed
    );
    let mut left = expected(1);
    left.retain(|m| !m.ends_with("m001") && !m.ends_with("m298"));
    assert_eq!(members(store, "x/1\0", "", 1000).await, left);

    // NoneWrittenAfter: an added member of a set under the prefix fails it;
    // members of other sets do not.
    let seen = current(store).await;
    commit(store, txn(vec![add("x/2\0", "m500")], vec![])).await;
    let quiet = |prefix: &str, revision| Condition::NoneWrittenAfter { prefix: prefix.as_bytes().to_vec(), revision };
    assert_eq!(commit(store, txn(vec![put("z/1", "z")], vec![quiet("x/2\0", seen)])).await, Outcome::ConditionFailed);
    assert!(matches!(
        commit(store, txn(vec![put("z/1", "z")], vec![quiet("x/1\0", seen)])).await,
        Outcome::Committed { .. }
    ));
    // Adding a member that is there, or removing one that is not, changes
    // nothing: it is no write under the prefix.
    let seen = current(store).await;
    commit(store, txn(vec![add("x/2\0", "m500"), remove("x/2\0", "m999"), put("z/2", "z")], vec![])).await;
    assert!(matches!(
        commit(store, txn(vec![put("z/3", "z")], vec![quiet("x/2\0", seen)])).await,
        Outcome::Committed { .. }
    ));
    assert!(current(store).await > start);
}

/// A view shows its revision however the store changes after it: keys
/// rewritten, removed and added, members added and removed, read one at a
/// time, many at once, by scan and by members, across many writes and while
/// other views open and close; a view opened later shows the later state.
async fn views(store: &dyn Store) {
    let set = |i: usize| format!("v/s{}\0", i % 2);
    // In transactions within the engine's limits (etcd's default is 128 ops).
    let per_txn = (store.limits().max_ops / 2).clamp(1, 200);
    for chunk in (0..200).collect::<Vec<_>>().chunks(per_txn) {
        let ops = chunk
            .iter()
            .flat_map(|i| [put(&format!("v/k{i:03}"), &format!("{i}")), add(&set(*i), &format!("m{i:03}"))])
            .collect();
        commit(store, txn(ops, vec![])).await;
    }
    let before = store.snapshot().await.unwrap();
    let at = before.revision();
    let keys_before = scan(&*before, "v/", b"", 1000).await;
    let members_before = members_in(&*before, "v/", "", 1000).await;
    assert_eq!((keys_before.len(), members_before.len()), (200, 200));

    // Writes after it, in many transactions: every third key rewritten,
    // every fifth removed, new keys between the old, members added and
    // removed; another view opens and closes in the middle.
    let mut later = None;
    for i in 0..200 {
        let mut ops = Vec::new();
        match i % 15 {
            0 | 5 | 10 => ops.push(Op::Delete { key: format!("v/k{i:03}").into_bytes() }),
            3 | 6 | 9 | 12 => ops.push(put(&format!("v/k{i:03}"), "rewritten")),
            _ => {}
        }
        ops.push(put(&format!("v/k{i:03}a"), "new"));
        ops.push(remove(&set(i), &format!("m{i:03}")));
        ops.push(add(&set(i), &format!("m{i:03}a")));
        commit(store, txn(ops, vec![])).await;
        if i == 100 {
            later = Some(store.snapshot().await.unwrap());
        }
        if i == 150 {
            later = None;
        }
    }
    assert!(later.is_none());
    assert_eq!(before.revision(), at);
    assert_eq!(scan(&*before, "v/", b"", 1000).await, keys_before, "its keys");
    assert_eq!(members_in(&*before, "v/", "", 1000).await, members_before, "its members");
    let backwards = before.members_before(b"v/", b"", 1000).await.unwrap();
    let mut backwards: Vec<String> = backwards.iter().map(|m| String::from_utf8(m.to_vec()).unwrap()).collect();
    backwards.reverse();
    assert_eq!(backwards, members_before, "its members, backwards");
    let backwards = before.members_before(b"v/s1\0", b"v/s1\0m100", 3).await.unwrap().to_vec();
    assert_eq!(backwards, [b"v/s1\0m099".to_vec(), b"v/s1\0m097".to_vec(), b"v/s1\0m095".to_vec()]);
    // In pieces, from starts between keys, as a List pages through them.
    let mut pieced = Vec::new();
    let mut start = Vec::new();
    loop {
        let piece = before.scan(b"v/", &start, 7).await.unwrap();
        let Some((last, _)) = piece.last() else { break };
        start = super::key_after(last);
        pieced.extend(piece.into_iter().map(|(k, _)| String::from_utf8(k).unwrap()));
    }
    assert_eq!(pieced, keys_before);
    assert_eq!(members_in(&*before, "v/s1\0", "v/s1\0m100", 3).await, ["v/s1\0m101", "v/s1\0m103", "v/s1\0m105"]);
    let keys: Vec<Vec<u8>> = ["v/k000", "v/k003", "v/k004", "v/k004a"].iter().map(|k| k.as_bytes().to_vec()).collect();
    let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let read = before.get_many(&keys).await.unwrap();
    let values: Vec<Option<&[u8]>> = read.iter().map(|e| e.as_ref().map(|e| &e.value[..])).collect();
    assert_eq!(values, [Some(&b"0"[..]), Some(&b"3"[..]), Some(&b"4"[..]), None]);
    assert!(read.iter().flatten().all(|e| e.mod_revision <= at), "entries as of the view");
    assert_eq!(before.get(b"v/k001").await.unwrap().map(|e| e.value.to_vec()), Some(b"1".to_vec()));

    // A view opened now shows the writes.
    let now = store.snapshot().await.unwrap();
    assert!(now.revision() > at);
    assert_eq!(now.get(b"v/k000").await.unwrap(), None);
    assert_eq!(now.get(b"v/k003").await.unwrap().map(|e| e.value.to_vec()), Some(b"rewritten".to_vec()));
    assert_eq!(scan(&*now, "v/", b"", 1000).await.len(), 200 - 40 + 200);
    assert_eq!(members_in(&*now, "v/s0\0", "", 3).await, ["v/s0\0m000a", "v/s0\0m002a", "v/s0\0m004a"]);
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
    let base = current(&*store).await;
    let mut committed = Vec::new();
    for i in 0..3 {
        committed.push(revision_of(commit(&*store, txn(vec![put(&format!("w/{i}"), "v")], vec![])).await));
    }
    let mut watch = store.watch(base + 1);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut committed = Vec::new();
            for i in 3..10 {
                let change = Txn {
                    change: format!("change {i}").into_bytes(),
                    ..txn(vec![put(&format!("w/{i}"), "v")], vec![])
                };
                committed.push((revision_of(commit(&*store, change).await), i));
            }
            committed
        })
    };
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let (revision, entry) = next(&mut watch).await.unwrap().unwrap();
        seen.push((revision, entry));
    }
    let later = writer.await.unwrap();
    committed.extend(later.iter().map(|(revision, _)| *revision));
    assert_eq!(seen.iter().map(|(revision, _)| *revision).collect::<Vec<_>>(), committed, "in order, once each");
    for (revision, i) in later {
        let entry = &seen.iter().find(|(seen, _)| *seen == revision).unwrap().1;
        assert_eq!(*entry, format!("change {i}").into_bytes());
    }

    store.compact(committed[4]).await.unwrap();
    let mut late = store.watch(base + 1);
    match next(&mut late).await {
        Some(Err(StoreError::Compacted { first })) => assert_eq!(first, committed[4]),
        other => panic!("{other:?}"),
    }
    let mut kept = store.watch(committed[4]);
    assert_eq!(next(&mut kept).await.unwrap().unwrap().0, committed[4]);
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
    pub fn start<F>(
        store: &Arc<dyn Store>,
        check: impl Fn(Arc<dyn Store>, u64) -> F + Send + Sync + Clone + 'static,
    ) -> RacingReaders
    where
        F: std::future::Future<Output = ()>,
    {
        let acknowledged = Arc::new(AtomicU64::new(0));
        let writing = Arc::new(AtomicBool::new(true));
        let reads: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::default()).collect();
        let threads = reads
            .iter()
            .map(|done| {
                let (store, acknowledged, writing, check, done) =
                    (store.clone(), acknowledged.clone(), writing.clone(), check.clone(), done.clone());
                std::thread::spawn(move || {
                    let runtime =
                        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
                    while writing.load(Ordering::Acquire) {
                        runtime.block_on(check(store.clone(), acknowledged.load(Ordering::Acquire)));
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
    let readers = RacingReaders::start(&store, async |store, floor| {
        for key in ["counter", "other"] {
            let read = get(&*store, key).await.map(|(_, value)| value);
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
    let readers = RacingReaders::start(&store, async |store, floor| {
        let found = members(&*store, "s/a\0", "", 64).await;
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
    assert_eq!(members(&*store, "s/a\0", "", 64).await.len(), 64);
}
