//! Two registry servers on one etcd cluster are one registry: what one
//! writes the other reads at once, conflicting writes through both give one
//! success, writes without an etag through both land once each, a request id
//! retried on the other answers with the first answer, and a watch on one
//! delivers the other's writes in revision order and resumes on either; and a
//! cluster that loses members. The etcd they run is found or fetched by
//! `cooperation_registry::store::etcd::testing`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::records::{agreement, create_agreement, update_request};
use common::server::TestServer;
use cooperation_registry::pb::cooperation::v1::{self, change_service_client::ChangeServiceClient};
use cooperation_registry::server::ServerOptions;
use cooperation_registry::store::etcd::testing::{open, open_cluster, start_cluster, start_member};
use tokio_stream::StreamExt;

async fn two_servers(member: &cooperation_registry::store::etcd::testing::Member) -> (TestServer, TestServer) {
    let on = || Arc::new(open(member, b"registry/"));
    let a = TestServer::start_on(on(), tempfile::tempdir().unwrap(), ServerOptions::default()).await;
    let b = TestServer::start_on(on(), tempfile::tempdir().unwrap(), ServerOptions::default()).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_cluster_are_one_registry() {
    let member = start_member().await;
    let (a, b) = two_servers(&member).await;

    // Seeded once: the states, whichever server started first.
    let all = v1::ListPartiesRequest { page_size: 1000, ..Default::default() };
    let parties = b.parties().list_parties(all).await.unwrap().into_inner().parties;
    assert_eq!(parties.len(), 249);

    // A write on A is read on B at once.
    let created = a.agreements().create_agreement(create_agreement("rpss", agreement("RPSS"))).await.unwrap();
    let created = created.into_inner();
    let name = created.name.clone();
    let get = v1::GetAgreementRequest { name: name.clone(), ..Default::default() };
    let read = b.agreements().get_agreement(get).await.unwrap().into_inner();
    assert_eq!(read.etag, created.etag);

    // A watch on A from the next revision sees B's writes in order.
    let start = created.etag.parse::<i64>().unwrap() + 1;
    let watch = v1::WatchChangesRequest { start_revision: start, ..Default::default() };
    let mut changes = ChangeServiceClient::new(a.channel.clone()).watch_changes(watch).await.unwrap().into_inner();

    // The same etag through both: one success, one ABORTED.
    let titled = |title: &str| v1::Agreement { title: title.into(), ..created.clone() };
    let mask = Some(prost_types::FieldMask { paths: vec!["title".into()] });
    let (on_a, on_b) = tokio::join!(
        async { a.agreements().update_agreement(update_request(titled("by A"), mask.clone())).await },
        async { b.agreements().update_agreement(update_request(titled("by B"), mask.clone())).await },
    );
    let outcomes = [on_a.map(|r| r.into_inner().title), on_b.map(|r| r.into_inner().title)];
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1, "{outcomes:?}");
    let refused = outcomes.iter().find_map(|o| o.as_ref().err()).unwrap();
    assert_eq!(refused.code(), tonic::Code::Aborted, "{refused:?}");

    // A request id retried on B answers with A's first answer.
    let request_id = "5d1f2a3b-1c2d-4e5f-8a9b-0c1d2e3f4a5b".to_string();
    let with_id =
        v1::CreateAgreementRequest { request_id: request_id.clone(), ..create_agreement("once", agreement("Once")) };
    let first = a.agreements().create_agreement(with_id.clone()).await.unwrap().into_inner();
    let retried = b.agreements().create_agreement(with_id).await.unwrap().into_inner();
    assert_eq!((retried.name, retried.etag), (first.name.clone(), first.etag.clone()));

    // B's writes, once each and in order, on A's watch.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let next = tokio::time::timeout(Duration::from_secs(10), changes.next()).await.unwrap().unwrap().unwrap();
        seen.extend(next.changes.into_iter().map(|c| (c.revision, c.name)));
    }
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
    assert_eq!(seen.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>(), [name.as_str(), first.name.as_str()]);

    // Updates without an etag through both at once: each lands, once.
    let mut updates = tokio::task::JoinSet::new();
    for i in 0..10 {
        let mut client = if i % 2 == 0 { a.agreements() } else { b.agreements() };
        let patch = v1::Agreement { name: name.clone(), title: format!("update {i}"), ..Default::default() };
        let request = update_request(patch, mask.clone());
        updates.spawn(async move { client.update_agreement(request).await.map(|r| r.into_inner().etag) });
    }
    let mut etags: Vec<i64> = updates.join_all().await.into_iter().map(|etag| etag.unwrap().parse().unwrap()).collect();
    etags.sort();
    etags.dedup();
    assert_eq!(etags.len(), 10, "ten revisions");
    let history = v1::ListRevisionsRequest { name: name.clone(), page_size: 100, ..Default::default() };
    let history = ChangeServiceClient::new(b.channel.clone()).list_revisions(history).await.unwrap().into_inner();
    let mut titles: Vec<String> = history
        .revisions
        .iter()
        .filter_map(|c| match &c.record {
            Some(v1::change::Record::Agreement(a)) if a.title.starts_with("update") => Some(a.title.clone()),
            _ => None,
        })
        .collect();
    titles.sort();
    assert_eq!(titles, (0..10).map(|i| format!("update {i}")).collect::<Vec<_>>());

    // A's watch goes on with them, and a watch from the same start on B
    // delivers the same changes in the same order.
    while seen.len() < 12 {
        let next = tokio::time::timeout(Duration::from_secs(10), changes.next()).await.unwrap().unwrap().unwrap();
        seen.extend(next.changes.into_iter().map(|c| (c.revision, c.name)));
    }
    assert_eq!(seen.iter().skip(2).map(|(revision, _)| *revision).collect::<Vec<_>>(), etags);
    let watch = v1::WatchChangesRequest { start_revision: start, ..Default::default() };
    let mut on_b = ChangeServiceClient::new(b.channel.clone()).watch_changes(watch).await.unwrap().into_inner();
    let mut resumed = Vec::new();
    while resumed.len() < seen.len() {
        let next = tokio::time::timeout(Duration::from_secs(10), on_b.next()).await.unwrap().unwrap().unwrap();
        resumed.extend(next.changes.into_iter().map(|c| (c.revision, c.name)));
    }
    assert_eq!(resumed, seen);

    // A backup through B, of everything at one revision.
    let mut admin = v1::admin_service_client::AdminServiceClient::new(b.channel.clone());
    let mut chunks = admin.backup(v1::BackupRequest {}).await.unwrap().into_inner();
    let (mut bytes, mut revision) = (0, 0);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.unwrap();
        bytes += chunk.data.len();
        revision = chunk.revision;
    }
    assert!(bytes > 0 && revision >= seen.last().unwrap().0, "{bytes} bytes at revision {revision}");
    a.stop().await;
    b.stop().await;
}

/// Creates through `server`, each with a request id of its own, retried with
/// that id while the answer is UNAVAILABLE (or the call times out): the
/// names it acknowledged.
async fn write_through(server: &TestServer, writer: usize, count: usize) -> Vec<String> {
    let mut acknowledged = Vec::new();
    for i in 0..count {
        let request = v1::CreateAgreementRequest {
            request_id: uuid::Uuid::now_v7().to_string(),
            ..create_agreement(&format!("w{writer}-{i:03}"), agreement(&format!("writer {writer}, {i}")))
        };
        if let Some(created) = create_retrying(server, request).await {
            acknowledged.push(created.name);
        }
    }
    acknowledged
}

/// `request` sent through `server` until it is answered, for up to 100
/// tries while the answer is UNAVAILABLE or the call times out.
async fn create_retrying(server: &TestServer, request: v1::CreateAgreementRequest) -> Option<v1::Agreement> {
    let mut client = server.agreements();
    for _attempt in 0..100 {
        let call = tokio::time::timeout(Duration::from_secs(5), client.create_agreement(request.clone()));
        match call.await {
            Ok(Ok(created)) => return Some(created.into_inner()),
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {}
            Ok(Err(status)) => panic!("{}: {status:?}", request.agreement_id),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// With one of three members killed under writes (the leader), the
/// registry goes on after a short pause, and every acknowledged write is
/// readable afterwards from both servers, once in the change log, and was
/// delivered once to a watcher whose stream never broke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_lost_under_writes_loses_no_acknowledged_write() {
    let mut members = start_cluster(3).await;
    let on = || Arc::new(open_cluster(&members, b"registry/"));
    let a = Arc::new(TestServer::start_on(on(), tempfile::tempdir().unwrap(), ServerOptions::default()).await);
    let b = Arc::new(TestServer::start_on(on(), tempfile::tempdir().unwrap(), ServerOptions::default()).await);
    // A watcher of every agreement through A, from before the writes.
    let agreements_only = v1::WatchChangesRequest {
        resource_types: vec!["cooperationregistry.io/Agreement".into()],
        ..Default::default()
    };
    let mut watch =
        ChangeServiceClient::new(a.channel.clone()).watch_changes(agreements_only).await.unwrap().into_inner();
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let server = if writer % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { write_through(&server, writer, 40).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut leader = None;
    for (i, member) in members.iter().enumerate() {
        if member.leads().await {
            leader = Some(i);
        }
    }
    let leader = leader.expect("a member leads");
    members[leader].kill();
    let mut acknowledged = Vec::new();
    for writer in writers {
        let written = tokio::time::timeout(Duration::from_secs(120), writer).await.expect("writers finish").unwrap();
        acknowledged.extend(written);
    }
    assert_eq!(acknowledged.len(), 160, "every write acknowledged in the end");

    // Every acknowledged write on both servers, and once in the change log.
    for server in [&a, &b] {
        let listed = count(server).await;
        assert_eq!(listed, 160, "agreements listed");
    }
    let mut history = ChangeServiceClient::new(b.channel.clone());
    for name in &acknowledged {
        let revisions = v1::ListRevisionsRequest { name: name.clone(), page_size: 10, ..Default::default() };
        let changes = history.list_revisions(revisions).await.unwrap().into_inner().revisions;
        assert_eq!(changes.len(), 1, "{name}: {changes:?}");
    }
    // The watcher saw each once, in revision order, its stream unbroken.
    let mut watched = Vec::new();
    while watched.len() < acknowledged.len() {
        let next = tokio::time::timeout(Duration::from_secs(30), watch.next()).await.expect("a change within 30 s");
        let response = next.expect("the watch is open").expect("the watch goes on");
        watched.extend(response.changes.into_iter().map(|c| (c.revision, c.name)));
    }
    assert!(watched.windows(2).all(|w| w[0].0 < w[1].0), "in revision order");
    let mut names: Vec<String> = watched.into_iter().map(|(_, name)| name).collect();
    names.sort();
    let mut expected = acknowledged.clone();
    expected.sort();
    assert_eq!(names, expected);
    members[leader].restart();
}

/// The agreements `server` lists.
async fn count(server: &TestServer) -> usize {
    let all = v1::ListAgreementsRequest { page_size: 1000, ..Default::default() };
    server.agreements().list_agreements(all).await.unwrap().into_inner().agreements.len()
}

/// With two of three members gone the cluster has no quorum: calls fail with
/// UNAVAILABLE (not INTERNAL), the server keeps running, and it serves again
/// once the members are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_calls_are_unavailable_and_the_server_recovers() {
    let mut members = start_cluster(3).await;
    let store = Arc::new(open_cluster(&members, b"registry/"));
    let server = TestServer::start_on(store, tempfile::tempdir().unwrap(), ServerOptions::default()).await;
    let created = server.agreements().create_agreement(create_agreement("before", agreement("Before"))).await;
    let name = created.unwrap().into_inner().name;
    members[0].kill();
    members[1].kill();
    let get = v1::GetAgreementRequest { name: name.clone(), ..Default::default() };
    let refused = server.agreements().get_agreement(get.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let all = v1::ListAgreementsRequest { page_size: 10, ..Default::default() };
    let refused = server.agreements().list_agreements(all.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let request_id = "0e3c5b1a-6f7d-4c2b-9a8e-1d2c3b4a5f6e".to_string();
    let during = v1::CreateAgreementRequest { request_id, ..create_agreement("during", agreement("During")) };
    let started = std::time::Instant::now();
    let refused = server.agreements().create_agreement(during.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    eprintln!("a write without a quorum: {refused:?} after {:?}", started.elapsed());

    members[0].restart();
    members[1].restart();
    let mut served = None;
    for _ in 0..100 {
        if let Ok(found) = server.agreements().get_agreement(get.clone()).await {
            served = Some(found.into_inner());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(served.expect("served again once the members are back").name, name);
    // A write may still find the cluster settling: retried with its request id, it lands once.
    let after = write_through(&server, 9, 1).await;
    assert_eq!(after, ["agreements/w9-000"]);
    // The write refused without a quorum, retried with its request id, lands
    // once (whether or not etcd committed it once the members were back).
    let retried = create_retrying(&server, during).await.expect("the retry is answered");
    assert_eq!(retried.name, "agreements/during");
    assert_eq!(server.agreements().list_agreements(all).await.unwrap().into_inner().agreements.len(), 3);
    server.stop().await;
}

/// A record whose write cannot fit one of the cluster's transactions (an
/// agreement of 200 parties: an index entry and a reference each) is refused
/// with INVALID_ARGUMENT naming the sizes, and nothing is written; a smaller
/// one is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_for_a_transaction_is_refused_whole() {
    let member = start_member().await;
    let server =
        TestServer::start_on(Arc::new(open(&member, b"registry/")), tempfile::tempdir().unwrap(), Default::default())
            .await;
    let all = v1::ListPartiesRequest { page_size: 1000, ..Default::default() };
    let parties: Vec<String> =
        server.parties().list_parties(all).await.unwrap().into_inner().parties.into_iter().map(|p| p.name).collect();
    let revision = server.registry.revision().await.unwrap();
    let many = v1::Agreement { parties: parties[..200].to_vec(), ..agreement("Many parties") };
    let refused = server.agreements().create_agreement(create_agreement("many", many)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert_eq!(common::client::violated_fields(&refused), ["agreement"]);
    assert!(refused.message().contains("too large for one write to this store"), "{}", refused.message());
    assert_eq!(server.registry.revision().await.unwrap(), revision, "nothing written");
    let get = v1::GetAgreementRequest { name: "agreements/many".into(), ..Default::default() };
    assert_eq!(server.agreements().get_agreement(get).await.unwrap_err().code(), tonic::Code::NotFound);

    let fewer = v1::Agreement { parties: parties[..20].to_vec(), ..agreement("Fewer parties") };
    server.agreements().create_agreement(create_agreement("fewer", fewer)).await.unwrap();
    server.stop().await;
}

/// A write states the revisions of the records it refers to as found by an
/// earlier write on its server, without reading them: when another server
/// has changed one since, the write still lands (planned again from a fresh
/// read), and when another server has deleted one, it is refused as if it
/// had read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_refer_to_records_as_they_are_whoever_changed_them() {
    use cooperation_registry::pb::cooperation::v1::party;
    let member = start_member().await;
    let (a, b) = two_servers(&member).await;
    let group = |id: &str| v1::CreatePartyRequest {
        party_id: id.into(),
        party: Some(v1::Party {
            display_name: format!("Group {id}"),
            kind: party::Kind::RegionalGrouping as i32,
            ..Default::default()
        }),
        request_id: String::new(),
    };
    let naming = |id: &str, party: &str| {
        let parties = vec!["parties/ind".into(), format!("parties/{party}")];
        create_agreement(id, v1::Agreement { parties, ..agreement(id) })
    };
    b.parties().create_party(group("g1")).await.unwrap();
    a.agreements().create_agreement(naming("first", "g1")).await.unwrap();

    // Changed on B: A's next write naming it still lands.
    let relabelled =
        v1::Party { name: "parties/g1".into(), labels: [("k".into(), "v".into())].into(), ..Default::default() };
    let mask = prost_types::FieldMask { paths: vec!["labels".into()] };
    let update = v1::UpdatePartyRequest { party: Some(relabelled), update_mask: Some(mask), ..Default::default() };
    b.parties().update_party(update).await.unwrap();
    a.agreements().create_agreement(naming("second", "g1")).await.unwrap();

    // Deleted on B (nothing refers to it any more): A refuses to name it.
    b.parties().create_party(group("g2")).await.unwrap();
    a.agreements().create_agreement(naming("third", "g2")).await.unwrap();
    let delete = v1::DeleteAgreementRequest { name: "agreements/third".into(), ..Default::default() };
    a.agreements().delete_agreement(delete).await.unwrap();
    let delete = v1::DeletePartyRequest { name: "parties/g2".into(), ..Default::default() };
    b.parties().delete_party(delete).await.unwrap();
    let refused = a.agreements().create_agreement(naming("fourth", "g2")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("parties/g2 is deleted"), "{}", refused.message());
    let get = v1::GetAgreementRequest { name: "agreements/fourth".into(), ..Default::default() };
    assert_eq!(b.agreements().get_agreement(get).await.unwrap_err().code(), tonic::Code::NotFound);

    // Created twice: ALREADY_EXISTS, once its condition has failed.
    let again = a.agreements().create_agreement(naming("first", "g1")).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again:?}");
    a.stop().await;
    b.stop().await;
}

/// A batch larger than etcd takes in one transaction (its default
/// `--max-txn-ops` is 128) is refused as such, whole; the import splits its
/// batches until one fits and sends that many from then on, and every record
/// arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_splits_its_batches_to_what_etcd_takes() {
    use cooperation_registry::cli::import::{ImportReport, import};
    let member = start_member().await;
    let store = Arc::new(open(&member, b"registry/"));
    let server = TestServer::start_on(store, tempfile::tempdir().unwrap(), ServerOptions::default()).await;
    let named =
        |i: usize| v1::Agreement { name: format!("agreements/a{i:03}"), ..agreement(&format!("Agreement {i}")) };
    let err = server
        .agreements()
        .batch_create_agreements(v1::BatchCreateAgreementsRequest {
            requests: (0..40).map(|i| create_agreement(&format!("a{i:03}"), agreement("A"))).collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("send fewer requests"), "{}", err.message());

    let dataset = v1::Dataset { agreements: (0..40).map(named).collect(), ..Default::default() };
    let report = import(server.channel.clone(), dataset, false).await.unwrap();
    assert_eq!(report, ImportReport { created: 40, unchanged: 0, skipped: 0, linked: 0 });
    assert_eq!(count(&server).await, 40);
    server.stop().await;
}
