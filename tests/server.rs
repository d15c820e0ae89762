//! Server plumbing: reflection v1 and v1alpha, health and its NOT_SERVING on
//! shutdown, compression, message size limits, shedding of calls and scans
//! beyond the limits, and Prometheus metrics.

mod common;

use std::time::Duration;

use common::{client::*, records::*, server::*};
use cooperation_registry::api::{Api, ScanLimits};
use cooperation_registry::pb::cooperation::v1::agreement_service_client::AgreementServiceClient;
use cooperation_registry::pb::cooperation::v1::{self as v1};
use cooperation_registry::server::ServerOptions;
use cooperation_registry::store::sled::SledOptions;
use prost::Message;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::{v1 as reflection_v1, v1alpha as reflection_v1alpha};

#[tokio::test]
async fn reflection_v1alpha_and_v1_describe_our_services_with_comments() {
    let server = TestServer::start().await;
    use reflection_v1alpha::server_reflection_client::ServerReflectionClient;
    use reflection_v1alpha::server_reflection_request::MessageRequest;
    use reflection_v1alpha::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(server.channel.clone());
    let ask = |message: MessageRequest| reflection_v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    };
    let requests = tokio_stream::iter(vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol("cooperation.v1.Agreement".into())),
        ask(MessageRequest::FileContainingSymbol("google.rpc.BadRequest".into())),
        ask(MessageRequest::FileContainingSymbol("grpc.health.v1.Health".into())),
    ]);
    let mut responses = client.server_reflection_info(requests).await.unwrap().into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) = responses.next().await.unwrap().unwrap().message_response
    else {
        panic!()
    };
    let services: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "cooperation.v1.AgreementService",
        "cooperation.v1.PartyService",
        "cooperation.v1.PartnershipDomainService",
        "cooperation.v1.EngagementService",
        "cooperation.v1.RelationshipService",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(&expected.to_string()), "{expected} not in {services:?}");
    }
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!()
    };
    let agreement_file = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
        .find(|f| f.name() == "cooperation/v1/agreement.proto")
        .expect("agreement.proto served");
    let comments = agreement_file.source_code_info.expect("comments are kept");
    assert!(comments.location.iter().any(|l| l.leading_comments().contains("derived on every read")));
    for _ in 0..2 {
        let answer = responses.next().await.unwrap().unwrap().message_response;
        assert!(matches!(answer, Some(MessageResponse::FileDescriptorResponse(_))), "{answer:?}");
    }

    // The v1 service answers too.
    use reflection_v1::server_reflection_client::ServerReflectionClient as V1Client;
    let mut v1_client = V1Client::new(server.channel.clone());
    let request = reflection_v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(reflection_v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut responses = v1_client.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
    assert!(responses.next().await.unwrap().is_ok());
    server.stop().await;
}

#[tokio::test]
async fn health_serves_and_turns_not_serving_on_shutdown() {
    let server = TestServer::start_in(
        tempfile::tempdir().unwrap(),
        ServerOptions { shutdown_timeout: Duration::from_millis(500), ..Default::default() },
    )
    .await;
    let mut health = HealthClient::new(server.channel.clone());
    for service in ["", "cooperation.v1.AgreementService", "cooperation.v1.PartyService"] {
        let status = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    let mut watch = health
        .watch(HealthCheckRequest { service: "cooperation.v1.AgreementService".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status(), ServingStatus::Serving);
    // The watch stream is a call in flight: shutdown waits for it until the timeout.
    let stopping = tokio::spawn(server.stop());
    let next =
        tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("an update before the drain ends");
    assert_eq!(next.unwrap().unwrap().status(), ServingStatus::NotServing);
    stopping.await.unwrap();
}

#[tokio::test]
async fn gzip_and_zstd_are_accepted_and_offered() {
    let server = TestServer::start().await;
    for encoding in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
        let mut client =
            AgreementServiceClient::new(server.channel.clone()).send_compressed(encoding).accept_compressed(encoding);
        let id = format!("compressed-{}", if encoding == CompressionEncoding::Gzip { "gzip" } else { "zstd" });
        let created =
            client.create_agreement(create_agreement(&id, agreement(&"long title ".repeat(200)))).await.unwrap();
        assert_eq!(created.into_inner().name, format!("agreements/{id}"));
        let list = client.list_agreements(v1::ListAgreementsRequest::default()).await.unwrap();
        assert!(!list.into_inner().agreements.is_empty());
    }
    server.stop().await;
}

#[tokio::test]
async fn oversized_requests_are_refused_and_change_nothing() {
    let server = TestServer::start_in(
        tempfile::tempdir().unwrap(),
        ServerOptions { max_request_bytes: 4096, ..Default::default() },
    )
    .await;
    let mut client = server.agreements();
    let mut big = agreement("big");
    big.description = "x".repeat(8000);
    let err = client.create_agreement(create_agreement("big", big)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("the limit is 4096 bytes (--max-request-bytes)") && err.message().contains("is 80"),
        "{}",
        err.message()
    );
    assert_eq!(count_agreements(&server, true).await, 0);
    client.create_agreement(create_agreement("small", agreement("small"))).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_concurrency_limit_are_shed_with_resource_exhausted() {
    let server = TestServer::start_in(
        tempfile::tempdir().unwrap(),
        ServerOptions { max_concurrent_calls: 1, ..Default::default() },
    )
    .await;
    let mut calls = Vec::new();
    for _ in 0..64 {
        let mut client = server.parties();
        calls.push(tokio::spawn(async move {
            client.list_parties(v1::ListPartiesRequest { page_size: 1000, ..Default::default() }).await.map(|_| ())
        }));
    }
    let (mut served, mut shed) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(()) => served += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    status.message().contains("limit of 1 concurrent calls (--max-concurrent-calls)"),
                    "{status:?}"
                );
                shed += 1;
            }
        }
    }
    assert!(served >= 1 && shed >= 1, "served {served}, shed {shed}");
    // Once the burst is over, calls are served again.
    server.parties().list_parties(v1::ListPartiesRequest::default()).await.unwrap();
    server.stop().await;
}

/// The body of an HTTP/1.1 GET on loopback.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The value of the metric line that starts with `series` (name and labels).
fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

/// With durable writes (the default store): the flush counter is checked.
#[tokio::test]
async fn prometheus_metrics_count_calls_by_method_and_code_and_show_the_store() {
    let server =
        TestServer::start_with(tempfile::tempdir().unwrap(), ServerOptions::default(), SledOptions::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    let endpoint = cooperation_registry::server::observe::serve_metrics(listener, server.registry.clone()).unwrap();

    let mut client = server.agreements();
    client.create_agreement(create_agreement("metered", agreement("Metered"))).await.unwrap();
    for _ in 0..3 {
        client
            .get_agreement(v1::GetAgreementRequest { name: "agreements/metered".into(), ..Default::default() })
            .await
            .unwrap();
    }
    let missing = v1::GetAgreementRequest { name: "agreements/missing-one".into(), ..Default::default() };
    assert_eq!(client.get_agreement(missing).await.unwrap_err().code(), Code::NotFound);
    let mut changes = cooperation_registry::pb::cooperation::v1::change_service_client::ChangeServiceClient::new(
        connect(server.addr).await,
    );
    let watch = changes.watch_changes(v1::WatchChangesRequest::default()).await.unwrap();

    let (status, body) = http_get(metrics_addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let labels = |method: &str, code: &str| {
        format!(
            "grpc_server_handled_total{{grpc_service=\"cooperation.v1.AgreementService\",grpc_method=\"{method}\",grpc_code=\"{code}\"}}"
        )
    };
    assert!(metric(&body, &labels("GetAgreement", "Ok")).unwrap() >= 3.0, "{body}");
    assert!(metric(&body, &labels("GetAgreement", "NotFound")).unwrap() >= 1.0, "{body}");
    assert!(metric(&body, &labels("CreateAgreement", "Ok")).unwrap() >= 1.0, "{body}");
    let bucket = "grpc_server_handling_seconds_bucket{grpc_service=\"cooperation.v1.AgreementService\",grpc_method=\"GetAgreement\",le=\"+Inf\"}";
    assert!(metric(&body, bucket).unwrap() >= 4.0, "{body}");
    assert_eq!(
        metric(&body, "cooperation_registry_revision ").unwrap(),
        server.registry.revision().await.unwrap() as f64
    );
    assert_eq!(metric(&body, "cooperation_registry_watchers ").unwrap(), 1.0, "{body}");
    assert!(metric(&body, "cooperation_registry_store_bytes ").unwrap() > 0.0, "{body}");
    // No checkpoint yet: the first comes after the default --checkpoint-mib written.
    assert_eq!(metric(&body, "cooperation_registry_checkpoints_total ").unwrap(), 0.0, "{body}");
    assert_eq!(metric(&body, "cooperation_registry_last_checkpoint_seconds ").unwrap(), 0.0, "{body}");
    // The Gets above read the same record again: from the read cache.
    assert!(metric(&body, "cooperation_registry_read_cache_hits_total ").unwrap() >= 2.0, "{body}");
    assert!(metric(&body, "cooperation_registry_read_cache_misses_total ").unwrap() >= 1.0, "{body}");
    assert!(metric(&body, "cooperation_registry_read_cache_bytes ").unwrap() > 0.0, "{body}");
    // Each write waited for a flush, and no flush was made for nothing.
    let flushes = metric(&body, "cooperation_registry_store_flushes_total ").unwrap();
    assert!(flushes >= 1.0 && flushes <= server.registry.revision().await.unwrap() as f64, "{body}");
    // The open watch is a call in flight.
    assert!(metric(&body, "grpc_server_calls_in_flight ").unwrap() >= 1.0, "{body}");
    assert!(body.contains("# HELP grpc_server_handled_total"), "{body}");

    drop(watch);
    assert_eq!(http_get(metrics_addr, "/other").await.0, 404);
    endpoint.abort();
    server.stop().await;
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

/// `count` scans that hold their slot (or their place in the queue) until
/// `release` sends true.
fn hold_scans(
    api: &Api,
    count: usize,
) -> (tokio::sync::watch::Sender<bool>, Vec<tokio::task::JoinHandle<Result<(), tonic::Status>>>) {
    let (release, released) = tokio::sync::watch::channel(false);
    let held = (0..count)
        .map(|_| {
            let api = api.clone();
            let mut released = released.clone();
            tokio::spawn(async move {
                api.scan(None, async move {
                    let _ = released.wait_for(|r| *r).await;
                    Ok(())
                })
                .await
            })
        })
        .collect();
    (release, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_beyond_the_waiting_room_are_shed_at_once() {
    let server = TestServer::start().await;
    let limits = ScanLimits { max_queued: 5, max_wait: Duration::from_secs(60) };
    let api = Api::new(server.registry.clone(), limits);
    let (release, held) = hold_scans(&api, cores() + 5);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = api.scan(None, async { Ok(()) }).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("(5 waiting, --max-queued-scans)"), "{refused:?}");
    release.send(true).unwrap();
    for scan in held {
        scan.await.unwrap().unwrap();
    }
    // With the queue drained, scans are admitted again.
    api.scan(None, async { Ok(()) }).await.unwrap();
    server.stop().await;
}

/// A scan that waits --max-scan-wait-ms for a turn is refused then. (Refusing
/// at once on the expected wait is unit-tested in api/mod.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_that_wait_too_long_are_shed() {
    let server = TestServer::start().await;
    let max_wait = Duration::from_millis(300);
    let api = Api::new(server.registry.clone(), ScanLimits { max_queued: 1000, max_wait });

    // No history yet: the estimate is zero, so the wait itself is bounded.
    let (release, held) = hold_scans(&api, cores());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let refused = api.scan(None, async { Ok(()) }).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("waited 300 ms for a turn, --max-scan-wait-ms"), "{refused:?}");
    assert!(started.elapsed() >= max_wait, "refused after {:?}", started.elapsed());
    release.send(true).unwrap();
    for scan in held {
        scan.await.unwrap().unwrap();
    }
    server.stop().await;
}

/// A client that resets its stream before it has sent the whole request is
/// counted CANCELLED: tonic answers such a call INTERNAL (or UNKNOWN when the
/// connection closes), which would read as a server fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_client_abandons_counts_as_cancelled() {
    let server = TestServer::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    let endpoint = cooperation_registry::server::observe::serve_metrics(listener, server.registry.clone()).unwrap();
    let series = |code: &str| {
        format!(
            "grpc_server_handled_total{{grpc_service=\"cooperation.v1.EngagementService\",grpc_method=\"GetEngagement\",grpc_code=\"{code}\"}}"
        )
    };
    let count = |body: &str, code: &str| metric(body, &series(code)).unwrap_or(0.0);
    let before = http_get(metrics_addr, "/metrics").await.1;

    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = tonic::codegen::http::Request::post(format!(
        "http://{}/cooperation.v1.EngagementService/GetEngagement",
        server.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (_response, mut stream) = client.send_request(request, false).unwrap();
    // Three bytes of the five-byte message header, then the reset.
    stream.send_data(bytes::Bytes::from_static(&[0, 0, 0]), false).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.send_reset(h2::Reason::INTERNAL_ERROR);

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let body = http_get(metrics_addr, "/metrics").await.1;
        if count(&body, "Cancelled") > count(&before, "Cancelled") {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "never counted as cancelled: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for code in ["Internal", "Unknown"] {
        assert_eq!(count(&after, code), count(&before, code), "counted {code}: {after}");
    }
    connection.abort();
    endpoint.abort();
    server.stop().await;
}
