//! The change feed and record history: resume at every seam (before, at and
//! after compaction), a mirror that follows List + Watch while 16 writers
//! write, a consumer that stalls, progress, filters, shutdown, and history.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{client::*, records::*, server::*};
use cooperation_registry::pb::cooperation::v1::change_service_client::ChangeServiceClient;
use cooperation_registry::pb::cooperation::v1::{self as v1, change};
use cooperation_registry::server::ServerOptions;
use prost_types::FieldMask;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::codec::Streaming;
use tonic_types::StatusExt;

fn watch_from(start_revision: i64) -> v1::WatchChangesRequest {
    v1::WatchChangesRequest { start_revision, ..Default::default() }
}

/// The next response with changes, skipping progress.
async fn next_changes(stream: &mut Streaming<v1::WatchChangesResponse>) -> v1::WatchChangesResponse {
    loop {
        let response = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a change within 10 s")
            .expect("the stream is open")
            .expect("no error");
        if !response.changes.is_empty() {
            return response;
        }
    }
}

async fn revisions_of(stream: &mut Streaming<v1::WatchChangesResponse>, count: usize) -> Vec<(i64, String)> {
    let mut seen = Vec::new();
    while seen.len() < count {
        for c in next_changes(stream).await.changes {
            seen.push((c.revision, c.name));
        }
    }
    seen
}

async fn create(server: &TestServer, id: &str) -> v1::Agreement {
    server.agreements().create_agreement(create_agreement(id, agreement(id))).await.unwrap().into_inner()
}

/// Creates agreement `id` and answers the revision it was created at (its
/// etag): the tests compare the revisions the server gives, never computed
/// ones, since revisions are not dense (on etcd the cluster numbers them).
async fn create_at(server: &TestServer, id: &str) -> i64 {
    create(server, id).await.etag.parse().unwrap()
}

#[tokio::test]
async fn watch_resumes_at_every_seam_and_compaction_is_never_silent() {
    let server = TestServer::start().await;
    let mut changes = ChangeServiceClient::new(server.channel.clone());
    // First the ISO states (in one revision on sled, in as many as the
    // cluster's transaction limits need on etcd); then an agreement a revision.
    let seeded = server.registry.revision().await.unwrap() as i64;
    let mut created = Vec::new();
    for i in 0..10 {
        created.push(create_at(&server, &format!("r{i}")).await);
    }
    let live = changes.watch_changes(watch_from(0)).await.unwrap().into_inner();

    // From the log: the seed's revisions carry the 249 states, a response a revision.
    let mut from_start = changes.watch_changes(watch_from(1)).await.unwrap().into_inner();
    let (mut seed_revisions, mut states) = (Vec::new(), 0);
    while states < 249 {
        let response = next_changes(&mut from_start).await;
        assert!(response.revision <= seeded && response.changes.iter().all(|c| c.revision == response.revision));
        assert!(response.changes.iter().all(|c| c.actor == "system:seed" && c.r#type() == change::Type::Created));
        seed_revisions.push(response.revision);
        states += response.changes.len();
    }
    assert_eq!(states, 249);
    let rest = revisions_of(&mut from_start, 10).await;
    assert_eq!(rest.iter().map(|r| r.0).collect::<Vec<_>>(), created);

    // From the middle of the log, across the seam to live changes.
    let mut middle = changes.watch_changes(watch_from(created[5])).await.unwrap().into_inner();
    let live_created = [create_at(&server, "live-1").await, create_at(&server, "live-2").await];
    let seen = revisions_of(&mut middle, 7).await;
    let expected: Vec<i64> = created[5..].iter().chain(&live_created).copied().collect();
    assert_eq!(seen.iter().map(|r| r.0).collect::<Vec<_>>(), expected, "no gap, no duplicate");
    assert_eq!(seen[5].1, "agreements/live-1");
    // A watch from 0 starts after the revision current when it began.
    let mut live = live;
    assert_eq!(revisions_of(&mut live, 2).await, seen[5..]);

    // Compaction keeping 4 revisions: before the new start is OUT_OF_RANGE
    // with the oldest revision in the details.
    let logged: Vec<i64> = seed_revisions.iter().chain(&created).chain(&live_created).copied().collect();
    let oldest = live_created[1] - 3;
    let kept: Vec<i64> = logged.iter().copied().filter(|r| *r >= oldest).collect();
    let removed = server.registry.compact(Some(4), None).await.unwrap();
    // At least the entries before `oldest` go (a seed split over several
    // transactions also logs some that carry no change).
    assert!(removed as usize >= logged.len() - kept.len(), "the entries before {oldest} go ({removed} removed)");
    let err = changes.watch_changes(watch_from(oldest - 1)).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    let info = err.get_error_details().error_info().cloned().unwrap();
    assert_eq!(
        (info.reason.as_str(), info.metadata.get("oldest_revision").cloned()),
        ("REVISION_COMPACTED", Some(oldest.to_string()))
    );
    let mut at = changes.watch_changes(watch_from(oldest)).await.unwrap().into_inner();
    assert_eq!(revisions_of(&mut at, kept.len()).await.iter().map(|r| r.0).collect::<Vec<_>>(), kept);
    let mut after = changes.watch_changes(watch_from(kept[2])).await.unwrap().into_inner();
    assert_eq!(revisions_of(&mut after, 2).await.iter().map(|r| r.0).collect::<Vec<_>>(), kept[2..]);
    // A watcher overtaken by compaction while it lags is told, not skipped ahead:
    // it holds 16 responses and one batch of 64 log entries, so 150 changes
    // put it well behind.
    let start_revision = server.registry.revision().await.unwrap() as i64 + 1;
    let query = cooperation_registry::registry::changes::WatchQuery { start_revision, ..Default::default() };
    let mut lagging = server.registry.watch(query).await.unwrap();
    let mut more = Vec::new();
    for i in 0..150 {
        more.push(create_at(&server, &format!("more-{i}")).await);
    }
    server.registry.compact(Some(1), None).await.unwrap();
    // It ends with OUT_OF_RANGE after what it had, or, where the changes
    // were already on their way to it (an etcd watch streams ahead), it
    // delivers them all: never a gap.
    let mut delivered = Vec::new();
    while delivered.len() < more.len() {
        match tokio::time::timeout(Duration::from_secs(10), lagging.recv()).await.expect("the watcher answers") {
            Some(Ok(response)) => delivered.extend(response.changes.into_iter().map(|c| c.revision)),
            Some(Err(error)) => {
                let status = tonic::Status::from(error);
                assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
                assert!(!delivered.is_empty());
                break;
            }
            None => panic!("the watcher ended without saying why"),
        }
    }
    assert_eq!(delivered, more[..delivered.len()], "what came before the error had no gap");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_following_list_then_watch_ends_equal_to_the_server() {
    let server = TestServer::start().await;
    for i in 0..20 {
        create(&server, &format!("seed-{i:02}")).await;
    }
    // 16 writers create, update and delete while the mirror lists and watches.
    let mut writers = Vec::new();
    for w in 0..16 {
        let mut client = server.agreements();
        writers.push(tokio::spawn(async move {
            for i in 0..15 {
                let id = format!("w{w:02}-{i:02}");
                let created =
                    client.create_agreement(create_agreement(&id, agreement(&id))).await.unwrap().into_inner();
                if i % 3 == 1 {
                    let patch = v1::Agreement {
                        name: created.name.clone(),
                        title: format!("{id} updated"),
                        ..Default::default()
                    };
                    client
                        .update_agreement(update_request(patch, Some(FieldMask { paths: vec!["title".into()] })))
                        .await
                        .unwrap();
                }
                if i % 5 == 2 {
                    client
                        .delete_agreement(v1::DeleteAgreementRequest { name: created.name, ..Default::default() })
                        .await
                        .unwrap();
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    // List (with deleted records, pages of 7), then watch from its revision + 1.
    let mut mirror: BTreeMap<String, v1::Agreement> = BTreeMap::new();
    let mut client = server.agreements();
    let first = client
        .list_agreements(v1::ListAgreementsRequest { page_size: 7, show_deleted: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let listed_at = first.revision;
    assert!(listed_at > 0);
    let mut page = first;
    loop {
        for a in page.agreements {
            mirror.insert(a.name.clone(), a);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        // Later pages are read later; the mirror keeps the first page's revision.
        page = client
            .list_agreements(v1::ListAgreementsRequest {
                page_size: 7,
                show_deleted: true,
                page_token: page.next_page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    }
    let request = v1::WatchChangesRequest {
        start_revision: listed_at + 1,
        resource_types: vec!["agreements".into()],
        ..Default::default()
    };
    let mut stream =
        ChangeServiceClient::new(server.channel.clone()).watch_changes(request).await.unwrap().into_inner();
    for w in writers {
        w.await.unwrap();
    }
    let end = server.registry.revision().await.unwrap() as i64;
    let mut reached = listed_at;
    let mut last = 0;
    while reached < end {
        let response = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap();
        for c in &response.changes {
            assert!(c.revision > last, "events in revision order");
            last = c.revision;
            let Some(change::Record::Agreement(a)) = c.record.clone() else { panic!("only agreements were asked for") };
            mirror.insert(c.name.clone(), a);
        }
        reached = response.revision;
    }

    let server_state: BTreeMap<String, v1::Agreement> = client
        .list_agreements(v1::ListAgreementsRequest { page_size: 1000, show_deleted: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .agreements
        .into_iter()
        .map(|a| (a.name.clone(), a))
        .collect();
    assert_eq!(server_state.len(), 20 + 16 * 15);
    assert_eq!(mirror, server_state);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_recovers_without_losing_anything() {
    let server = TestServer::start().await;
    // The consumer has a connection of its own, as a separate client would.
    let mut changes = ChangeServiceClient::new(connect(server.addr).await);
    let mut stream = changes.watch_changes(watch_from(0)).await.unwrap().into_inner();
    // Far more changes than the server buffers for one watcher, while it does not read.
    let mut created = Vec::new();
    for i in 0..300 {
        created.push(create_at(&server, &format!("s{i:03}")).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = revisions_of(&mut stream, 300).await;
    let revisions: Vec<i64> = seen.iter().map(|r| r.0).collect();
    assert_eq!(revisions, created);
    server.stop().await;
}

#[tokio::test]
async fn progress_filters_and_shutdown() {
    let server = TestServer::start_in(
        tempfile::tempdir().unwrap(),
        ServerOptions { shutdown_timeout: Duration::from_secs(5), ..Default::default() },
    )
    .await;
    let mut changes = ChangeServiceClient::new(server.channel.clone());
    let one = create_at(&server, "one").await;
    let request = v1::WatchChangesRequest {
        start_revision: 0,
        names: vec!["agreements/two".into()],
        progress_interval: Some(prost_types::Duration { seconds: 0, nanos: 200_000_000 }),
        ..Default::default()
    };
    let mut stream = changes.watch_changes(request).await.unwrap().into_inner();
    // Nothing matching: progress with the current revision.
    let progress = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
    assert!(progress.changes.is_empty());
    assert_eq!(progress.revision, one);
    create(&server, "three").await; // filtered out by name
    let two = create_at(&server, "two").await;
    let response = next_changes(&mut stream).await;
    assert_eq!((response.revision, response.changes[0].name.as_str()), (two, "agreements/two"));

    // Only parties.
    let by_type = v1::WatchChangesRequest {
        start_revision: 1,
        resource_types: vec!["cooperationregistry.io/Party".into()],
        ..Default::default()
    };
    let mut parties = changes.watch_changes(by_type).await.unwrap().into_inner();
    let seeded = next_changes(&mut parties).await;
    assert!(seeded.changes.iter().all(|c| matches!(c.record, Some(change::Record::Party(_)))));

    // Bad requests.
    let bad = v1::WatchChangesRequest {
        start_revision: -1,
        resource_types: vec!["treaties".into()],
        names: vec!["nope".into()],
        progress_interval: Some(prost_types::Duration { seconds: 0, nanos: 1_000 }),
    };
    let err = changes.watch_changes(bad).await.unwrap_err();
    assert_eq!(violated_fields(&err), ["start_revision", "resource_types[0]", "names[0]", "progress_interval"]);

    // A shutdown ends open watches at once, saying where to resume.
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(server.stop());
    let mut ended = None;
    while let Some(item) = stream.next().await {
        if let Err(status) = item {
            ended = Some(status);
            break;
        }
    }
    let status = ended.expect("the watch ends with a status");
    assert_eq!(status.code(), Code::Unavailable);
    let resume = format!("resume from revision {}", two + 1);
    assert!(status.message().contains(&resume), "{}", status.message());
    stopping.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(4), "shutdown did not wait for the drain timeout");
}

#[tokio::test]
async fn history_lists_every_revision_of_a_record_with_its_actor() {
    let server = TestServer::start().await;
    let mut client = server.agreements();
    let created = create(&server, "h").await;
    create(&server, "other").await;
    let patch = v1::Agreement { name: "agreements/h".into(), title: "second".into(), ..Default::default() };
    let updated = client
        .update_agreement(update_request(patch, Some(FieldMask { paths: vec!["title".into()] })))
        .await
        .unwrap()
        .into_inner();
    let deleted = client
        .delete_agreement(v1::DeleteAgreementRequest { name: "agreements/h".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let restored = client
        .undelete_agreement(v1::UndeleteAgreementRequest { name: "agreements/h".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();

    let mut changes = ChangeServiceClient::new(server.channel.clone());
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = changes
            .list_revisions(v1::ListRevisionsRequest { name: "agreements/h".into(), page_size: 3, page_token: token })
            .await
            .unwrap()
            .into_inner();
        assert!(!page.history_truncated);
        listed.extend(page.revisions);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let types: Vec<_> = listed.iter().map(|c| c.r#type()).collect();
    assert_eq!(types, [change::Type::Undeleted, change::Type::Deleted, change::Type::Updated, change::Type::Created]);
    let etags: Vec<String> = listed
        .iter()
        .map(|c| match &c.record {
            Some(change::Record::Agreement(a)) => a.etag.clone(),
            _ => panic!(),
        })
        .collect();
    assert_eq!(etags, [restored.etag, deleted.etag, updated.etag.clone(), created.etag.clone()]);
    assert!(listed.iter().all(|c| c.actor == "anonymous" && c.commit_time.is_some()));

    // Read the record as it was.
    let then = changes
        .get_revision(v1::GetRevisionRequest { name: "agreements/h".into(), revision: created.etag.parse().unwrap() })
        .await
        .unwrap()
        .into_inner();
    let Some(change::Record::Agreement(original)) = then.record else { panic!() };
    assert_eq!(original.title, "h");
    let err = changes
        .get_revision(v1::GetRevisionRequest {
            name: "agreements/h".into(),
            revision: created.etag.parse::<i64>().unwrap() + 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "revision of another record");
    let err = changes
        .list_revisions(v1::ListRevisionsRequest { name: "agreements/none".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // After compaction the history says it was cut short.
    server.registry.compact(Some(2), None).await.unwrap();
    let page = changes
        .list_revisions(v1::ListRevisionsRequest { name: "agreements/h".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.revisions.len(), 2);
    assert!(page.history_truncated);
    let err = changes
        .get_revision(v1::GetRevisionRequest { name: "agreements/h".into(), revision: updated.etag.parse().unwrap() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    server.stop().await;
}
