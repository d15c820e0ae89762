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
    crate::store_conformance_tests!(super::open_store, #[ignore = "needs etcd (Debian's etcd-server): .ci/run installs it"]);
}

/// A transaction whose answer is lost is resolved from the change log: one
/// that committed is reported committed, at its revision, and one whose
/// condition failed is reported unavailable (retry), never committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian's etcd-server): .ci/run installs it"]
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
