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
    let options = super::EtcdOptions::new(vec![member.url.clone()], b"registry/");
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
    commit(store, txn(vec![remove("i/x\u{0}1\u{0}", "m01"), put("r/05", "later")], vec![])).await;
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
    let options = |prefix: &[u8]| super::EtcdOptions::new(vec![member.url.clone()], prefix);
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
        limits: TxnLimits { max_ops, ..super::DEFAULT_LIMITS },
        ..super::EtcdOptions::new(vec![member.url.clone()], prefix)
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

/// PEM files for a member's TLS: a CA, the member's certificate for
/// 127.0.0.1 and a client's, all in `dir`.
fn tls_files(dir: &std::path::Path) -> (super::EtcdTls, Vec<String>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, "etcd test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let signed = |name: &str, sans: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        (params.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
    };
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).unwrap();
        dir.join(name).display().to_string()
    };
    let (member_cert, member_key) = signed("member", vec!["127.0.0.1".into()]);
    let flags = vec![
        "--cert-file".into(),
        write("member.pem", &member_cert),
        "--key-file".into(),
        write("member-key.pem", &member_key),
        "--trusted-ca-file".into(),
        write("ca.pem", &ca_pem),
        "--client-cert-auth".into(),
    ];
    let (client_cert, client_key) = signed("registry", vec![]);
    let tls =
        super::EtcdTls { ca_pem: ca_pem.into_bytes(), identity_pem: Some((client_cert.into(), client_key.into())) };
    (tls, flags)
}

/// Over TLS to a member that asks for client certificates: the store works
/// with the CA and a client certificate, and fails without the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_reaches_a_member_over_tls_with_a_client_certificate() {
    use crate::store::testkit::{commit, get, put, txn};
    let dir = tempfile::tempdir().unwrap();
    let (tls, flags) = tls_files(dir.path());
    let with_tls = |tls: Option<super::EtcdTls>| {
        move |urls: Vec<String>| super::EtcdOptions { tls: tls.clone(), ..super::EtcdOptions::new(urls, b"tls/") }
    };
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let member = super::testing::start_member_with("https", &flags, with_tls(Some(tls.clone()))).await;
    assert!(member.url.starts_with("https://"));

    let store = super::EtcdStore::connect(with_tls(Some(tls.clone()))(vec![member.url.clone()])).unwrap();
    commit(&store, txn(vec![put("k", "over tls")], vec![])).await;
    assert_eq!(get(&store, "k").await.unwrap().1, b"over tls");

    let without_certificate = super::EtcdTls { identity_pem: None, ..tls };
    let store = super::EtcdStore::connect(with_tls(Some(without_certificate))(vec![member.url.clone()])).unwrap();
    assert!(store.current_revision().await.is_err(), "a member with --client-cert-auth refuses it");
    let refused = super::EtcdStore::connect(with_tls(None)(vec![member.url.clone()]));
    assert!(refused.is_err_and(|e| e.to_string().contains("--etcd-ca-cert")));
}

/// With etcd's authentication on: the store works as a user, renews its
/// token when etcd has forgotten it (a TTL of one second), and a wrong
/// password fails, naming the authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_authenticates_and_renews_its_token() {
    use crate::pb::etcd::etcdserverpb::{
        AuthEnableRequest, AuthRoleAddRequest, AuthUserAddRequest, AuthUserGrantRoleRequest, auth_client::AuthClient,
    };
    use crate::store::testkit::{commit, get, put, txn};
    let plain = |urls: Vec<String>| super::EtcdOptions::new(urls, b"ready/");
    let member = super::testing::start_member_with("http", &["--auth-token-ttl", "1"], plain).await;
    let channel = tonic::transport::Channel::from_shared(member.url.clone()).unwrap().connect().await.unwrap();
    let mut admin = AuthClient::new(channel);
    admin.role_add(AuthRoleAddRequest { name: "root".into() }).await.unwrap();
    let root = AuthUserAddRequest { name: "root".into(), password: "s3cret".into(), ..Default::default() };
    admin.user_add(root).await.unwrap();
    admin.user_grant_role(AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() }).await.unwrap();
    admin.auth_enable(AuthEnableRequest {}).await.unwrap();

    let as_user = |password: &str| {
        let credentials = super::EtcdCredentials { user: "root".into(), password: password.into() };
        let options = super::EtcdOptions::new(vec![member.url.clone()], b"auth/");
        super::EtcdStore::connect(super::EtcdOptions { credentials: Some(credentials), ..options }).unwrap()
    };
    let store = as_user("s3cret");
    commit(&store, txn(vec![put("k", "1")], vec![])).await;
    // Idle past the token's TTL: etcd forgets it, and the store authenticates again.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    commit(&store, txn(vec![put("k", "2")], vec![])).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(get(&store, "k").await.unwrap().1, b"2");

    let refused = as_user("wrong").current_revision().await.unwrap_err().to_string();
    assert!(refused.contains("authentication as \"root\""), "{refused}");
    let anonymous = open(&member, b"auth/").current_revision().await.unwrap_err().to_string();
    assert!(anonymous.contains("user name is empty") || anonymous.contains("permission"), "{anonymous}");
}

/// Another store's compaction of the cluster's history takes nothing from a
/// store whose log began after it: its change log reads and watches from 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_prefix_compacting_the_cluster_leaves_a_later_log_whole() {
    use crate::store::testkit::{commit, next, put, revision_of, txn};
    let member = start_member().await;
    let one = open(&member, b"one/");
    commit(&one, txn(vec![put("k", "1")], vec![])).await;
    let last = revision_of(commit(&one, txn(vec![put("k", "2")], vec![])).await);
    one.compact(last).await.unwrap();

    let two = open(&member, b"two/");
    let written = revision_of(commit(&two, txn(vec![put("k", "1")], vec![])).await);
    assert_eq!(two.first_change().await.unwrap(), 1);
    assert_eq!(two.changes(1, 10).await.unwrap(), vec![(written, b"change".to_vec())]);
    let mut watch = two.watch(1);
    assert_eq!(next(&mut watch).await.unwrap().unwrap(), (written, b"change".to_vec()));
}

/// A watch whose member goes away and comes back goes on where it was: no
/// error, no entry lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_outlives_its_member_going_away() {
    use crate::store::testkit::{commit, next, put, revision_of, txn};
    let mut member = start_member().await;
    let store = open(&member, b"watched/");
    let before = revision_of(commit(&store, txn(vec![put("k", "1")], vec![])).await);
    let mut watch = store.watch(before);
    assert_eq!(next(&mut watch).await.unwrap().unwrap().0, before);
    member.kill();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    member.restart();
    let after = loop {
        match store.commit(txn(vec![put("k", "2")], vec![])).await {
            Ok(outcome) => break revision_of(outcome),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    };
    assert_eq!(next(&mut watch).await.unwrap().unwrap(), (after, b"change".to_vec()));
}
