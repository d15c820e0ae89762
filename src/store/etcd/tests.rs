//! The etcd engine against a real etcd: the conformance suite, each test on
//! a member of its own (compaction is the cluster's, so tests that shared
//! one would compact each other's history).

use std::sync::Arc;

use super::testing::{Member, open, start_member};
use crate::store::Store;

async fn open_store() -> (Arc<dyn Store>, Member) {
    let member = start_member().await;
    (Arc::new(open(&member, b"registry/")), member)
}

/// A store restored from the backup of an empty one, on a cluster that
/// others wrote to before: its revisions are etcd's less a base.
async fn open_restored_store() -> (Arc<dyn Store>, Member) {
    use crate::store::testkit::{commit, put, txn};
    let member = start_member().await;
    commit(&open(&member, b"elsewhere/"), txn(vec![put("x", "1")], vec![])).await;
    let (_, bytes) = backup_of(Arc::new(crate::store::memory::MemoryStore::new())).await;
    let options = super::EtcdOptions {
        endpoints: vec![member.url.clone()],
        prefix: b"registry/".to_vec(),
        limits: super::DEFAULT_LIMITS,
    };
    super::EtcdStore::restore(options, &mut bytes.as_slice()).await.unwrap();
    (Arc::new(open(&member, b"registry/")), member)
}

mod conforms_restored {
    crate::store_conformance_tests!(super::open_restored_store);
}

mod conforms {
    crate::store_conformance_tests!(super::open_store);
}

/// A transaction whose answer is lost is resolved from the change log: one
/// that committed is reported committed, at its revision, and one whose
/// condition failed is reported unavailable (retry), never committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_is_lost_is_resolved_from_the_change_log() {
    use crate::store::testkit::{commit, put, txn};
    use crate::store::{Condition, Outcome, StoreError};
    let member = start_member().await;
    let store = open(&member, b"lost/");
    commit(&store, txn(vec![put("before", "1")], vec![])).await;

    store.0.lose_answers.store(1, std::sync::atomic::Ordering::SeqCst);
    let committed =
        store.commit(crate::store::Txn { change: b"the lost one".to_vec(), ..txn(vec![put("k", "v")], vec![]) });
    let Outcome::Committed { revision } = committed.await.expect("resolved") else { panic!("not committed") };
    let entry = store.get(b"k").await.unwrap().unwrap();
    assert_eq!((entry.mod_revision, &entry.value[..]), (revision, &b"v"[..]));
    assert_eq!(store.changes(revision, 1).await.unwrap(), [(revision, b"the lost one".to_vec())]);

    store.0.lose_answers.store(1, std::sync::atomic::Ordering::SeqCst);
    let stale = Condition::ModRevision { key: b"k".to_vec(), equals: revision + 100 };
    let refused = store.commit(txn(vec![put("k", "w")], vec![stale])).await;
    assert!(matches!(refused, Err(StoreError::Unavailable(_))), "{refused:?}");
    assert_eq!(&store.get(b"k").await.unwrap().unwrap().value[..], b"v", "nothing written");
}

/// A backup of `source`, taken as the server takes one (on a thread of its
/// own, within the runtime), and its revision.
async fn backup_of(source: Arc<dyn Store>) -> (u64, Vec<u8>) {
    let (sender, receiver) = std::sync::mpsc::sync_channel(4);
    let copy = std::thread::spawn(move || receiver.into_iter().flatten().collect::<Vec<u8>>());
    let runtime = tokio::runtime::Handle::current();
    let revision = std::thread::spawn(move || {
        let _in_runtime = runtime.enter();
        source.engine().backup(sender)
    });
    let revision = revision.join().unwrap().unwrap();
    (revision, copy.join().unwrap())
}

/// `to` holds what `from` holds: keys with their revisions, members, the
/// change log from where it starts, and the revision.
async fn assert_same(from: &dyn Store, to: &dyn Store) {
    let (a, b) = (from.snapshot().await.unwrap(), to.snapshot().await.unwrap());
    assert_eq!(b.revision(), a.revision());
    assert_eq!(b.scan(b"", b"", 10_000).await.unwrap(), a.scan(b"", b"", 10_000).await.unwrap());
    assert_eq!(b.members(b"", b"", 10_000).await.unwrap(), a.members(b"", b"", 10_000).await.unwrap());
    assert_eq!(to.first_change().await.unwrap(), from.first_change().await.unwrap());
    assert_eq!(to.changes(0, 10_000).await.unwrap(), from.changes(0, 10_000).await.unwrap());
}

/// Writes, overwrites, deletes, members (of sets whose names hold a 0 byte
/// before their end, as index sets do) and a compacted start of the log.
async fn fill_source(store: &dyn Store) {
    use crate::store::Op;
    use crate::store::testkit::{add, commit, put, remove, txn};
    for i in 0..20 {
        commit(store, txn(vec![put(&format!("r/{i:02}"), &format!("value {i}"))], vec![])).await;
    }
    let ops = (0..30).map(|i| add(&format!("i/x\0{}\0", i % 3), &format!("m{i:02}"))).collect();
    commit(store, txn(ops, vec![])).await;
    commit(store, txn(vec![put("r/03", "again"), Op::Delete { key: b"r/04".to_vec() }], vec![])).await;
    let compacted_to = store.current_revision().await.unwrap() - 5;
    store.compact(compacted_to).await.unwrap();
    commit(store, txn(vec![remove("i/x\01\0", "m01"), put("r/05", "later")], vec![])).await;
}

/// A backup of the etcd engine restores into a sled data dir with the same
/// keys, members, change log and revision: the format is the engines'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_etcd_restores_into_sled() {
    use crate::store::sled::{SledOptions, SledStore};
    let member = start_member().await;
    let source: Arc<dyn Store> = Arc::new(open(&member, b"backup/"));
    fill_source(source.as_ref()).await;
    let (revision, bytes) = backup_of(source.clone()).await;
    assert_eq!(revision, source.current_revision().await.unwrap());

    let target = tempfile::tempdir().unwrap();
    assert_eq!(SledStore::restore(target.path(), &mut bytes.as_slice()).unwrap(), revision);
    let restored = SledStore::open(target.path(), SledOptions::default()).unwrap();
    assert_same(source.as_ref(), &restored).await;
    let view = restored.snapshot().await.unwrap();
    assert_eq!(view.members(b"i/", b"", 100).await.unwrap().len(), 29);
    drop(view);
    restored.engine().close().unwrap();
}

/// A backup of sled restores onto etcd at the same revisions, on a cluster
/// whose own revision is already past the backup's first ones; the store
/// restored goes on from there: a write conditional on a restored key's
/// revision, a watch from a restored revision, a compaction. Then back to
/// sled, the same again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_sled_restores_onto_etcd_and_back() {
    use crate::store::sled::{SledOptions, SledStore};
    use crate::store::testkit::{commit, get, put, revision_of, txn};
    use crate::store::{Condition, Outcome};
    let dir = tempfile::tempdir().unwrap();
    let source: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), SledOptions::default()).unwrap());
    fill_source(source.as_ref()).await;
    let (revision, bytes) = backup_of(source.clone()).await;

    let member = start_member().await;
    let elsewhere = open(&member, b"elsewhere/");
    for i in 0..7 {
        commit(&elsewhere, txn(vec![put("x", &i.to_string())], vec![])).await;
    }
    let options = |prefix: &[u8]| super::EtcdOptions {
        endpoints: vec![member.url.clone()],
        prefix: prefix.to_vec(),
        limits: super::DEFAULT_LIMITS,
    };
    assert_eq!(super::EtcdStore::restore(options(b"restored/"), &mut bytes.as_slice()).await.unwrap(), revision);
    let restored: Arc<dyn Store> = Arc::new(open(&member, b"restored/"));
    assert_same(source.as_ref(), restored.as_ref()).await;

    // It goes on as the source would.
    let (at, _) = get(restored.as_ref(), "r/03").await.unwrap();
    let condition = Condition::ModRevision { key: b"r/03".to_vec(), equals: at };
    let next = revision_of(commit(restored.as_ref(), txn(vec![put("r/03", "third")], vec![condition.clone()])).await);
    assert!(next > revision);
    assert_eq!(
        commit(restored.as_ref(), txn(vec![put("r/03", "fourth")], vec![condition])).await,
        Outcome::ConditionFailed
    );
    let mut watch = restored.watch(revision);
    let (seen, _) = crate::store::testkit::next(&mut watch).await.unwrap().unwrap();
    assert_eq!(seen, revision, "the backup's last change, at its revision");
    assert_eq!(crate::store::testkit::next(&mut watch).await.unwrap().unwrap().0, next);
    restored.compact(next).await.unwrap();
    assert_eq!(restored.first_change().await.unwrap(), next);

    // And back to sled.
    let (again, bytes) = backup_of(restored.clone()).await;
    assert_eq!(again, restored.current_revision().await.unwrap());
    let target = tempfile::tempdir().unwrap();
    SledStore::restore(target.path(), &mut bytes.as_slice()).unwrap();
    let back = SledStore::open(target.path(), SledOptions::default()).unwrap();
    assert_same(restored.as_ref(), &back).await;
    back.engine().close().unwrap();
}

/// A restore writes nothing under a prefix that holds something, nor one a
/// revision of whose backup is larger than one of the cluster's
/// transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_cannot_be_whole_writes_nothing() {
    use crate::store::testkit::{add, commit, put, txn};
    use crate::store::{StoreError, TxnLimits};
    let member = start_member().await;
    let source: Arc<dyn Store> = Arc::new(open(&member, b"source/"));
    commit(source.as_ref(), txn((0..100).map(|i| add("set", &format!("m{i}"))).collect(), vec![])).await;
    let (_, bytes) = backup_of(source.clone()).await;

    let options = |prefix: &[u8], max_ops| super::EtcdOptions {
        endpoints: vec![member.url.clone()],
        prefix: prefix.to_vec(),
        limits: TxnLimits { max_ops, ..super::DEFAULT_LIMITS },
    };
    let refused = super::EtcdStore::restore(options(b"small/", 64), &mut bytes.as_slice()).await;
    let Err(StoreError::Incompatible(message)) = refused else { panic!("{refused:?}") };
    assert!(message.contains("at least --max-txn-ops 101 "), "{message}");
    assert_eq!(open(&member, b"small/").current_revision().await.unwrap(), source.current_revision().await.unwrap());
    assert!(open(&member, b"small/").snapshot().await.unwrap().scan(b"", b"", 1).await.unwrap().is_empty());

    commit(&open(&member, b"taken/"), txn(vec![put("k", "v")], vec![])).await;
    let refused = super::EtcdStore::restore(options(b"taken/", 128), &mut bytes.as_slice()).await;
    let Err(StoreError::Incompatible(message)) = refused else { panic!("{refused:?}") };
    assert!(message.contains("holds 2 keys"), "{message}");
}
