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

/// A backup of the etcd engine restores into a sled data dir with the same
/// keys, members, change log and revision: the format is the engines'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_etcd_restores_into_sled() {
    use crate::store::sled::{SledOptions, SledStore};
    use crate::store::testkit::{add, commit, put, txn};
    let member = start_member().await;
    let source = open(&member, b"backup/");
    for i in 0..20 {
        commit(&source, txn(vec![put(&format!("r/{i:02}"), &format!("value {i}"))], vec![])).await;
    }
    // Members of a set whose name holds a 0 byte before its end, as index sets do.
    let ops = (0..30).map(|i| add(&format!("i/x\0{}\0", i % 3), &format!("m{i:02}"))).collect();
    commit(&source, txn(ops, vec![])).await;
    let source = Arc::new(source);
    let (sender, receiver) = std::sync::mpsc::sync_channel(4);
    let copy = std::thread::spawn(move || receiver.into_iter().flatten().collect::<Vec<u8>>());
    let backing_up = source.clone();
    let runtime = tokio::runtime::Handle::current();
    let revision = std::thread::spawn(move || {
        let _in_runtime = runtime.enter();
        backing_up.engine().backup(sender)
    });
    let revision = revision.join().unwrap().unwrap();
    let bytes = copy.join().unwrap();
    assert_eq!(revision, source.current_revision().await.unwrap());

    let target = tempfile::tempdir().unwrap();
    assert_eq!(SledStore::restore(target.path(), &mut bytes.as_slice()).unwrap(), revision);
    let restored = SledStore::open(target.path(), SledOptions::default()).unwrap();
    let (from, to) = (source.snapshot().await.unwrap(), restored.snapshot().await.unwrap());
    assert_eq!(to.revision(), revision);
    assert_eq!(to.scan(b"r/", b"", 100).await.unwrap(), from.scan(b"r/", b"", 100).await.unwrap());
    let members = to.members(b"i/", b"", 100).await.unwrap();
    assert_eq!(members.len(), 30);
    assert_eq!(members, from.members(b"i/", b"", 100).await.unwrap());
    assert_eq!(restored.changes(0, 100).await.unwrap(), source.changes(0, 100).await.unwrap());
    restored.engine().close().unwrap();
}
