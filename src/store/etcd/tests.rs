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
