//! What idle watchers cost: the server's resident memory before and after
//! opening WATCHERS (default 500) idle WatchChanges streams over loopback, and
//! how long one write takes to reach all of them. Server and clients share this
//! process, so the figure includes both ends of each stream (an upper bound).
//!
//! Run: `cargo bench --bench watchers`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cooperation_registry::pb::cooperation::v1::agreement_service_client::AgreementServiceClient;
use cooperation_registry::pb::cooperation::v1::change_service_client::ChangeServiceClient;
use cooperation_registry::pb::cooperation::v1::{Agreement, CreateAgreementRequest, WatchChangesRequest};
use cooperation_registry::registry::Registry;
use cooperation_registry::server::{ServerOptions, serve};
use cooperation_registry::store::sled::{SledOptions, SledStore};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let watchers: usize = std::env::var("WATCHERS").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path(), SledOptions::default()).unwrap());
    let registry = Arc::new(Registry::open(store).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(registry, listener, ServerOptions::default(), std::future::pending()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let connect = || async move { Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap() };
    let mut writer = AgreementServiceClient::new(connect().await);
    // Warm up: one watcher and one write, so lazily built state is counted before.
    let mut warm = ChangeServiceClient::new(connect().await)
        .watch_changes(WatchChangesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let agreement = |title: &str| Agreement {
        title: title.into(),
        parties: vec!["parties/ind".into(), "parties/jpn".into()],
        ..Default::default()
    };
    writer
        .create_agreement(CreateAgreementRequest { agreement: Some(agreement("warm")), ..Default::default() })
        .await
        .unwrap();
    warm.next().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let before = resident_kib();
    let mut streams = Vec::with_capacity(watchers);
    let mut channels = Vec::new();
    for i in 0..watchers {
        if i % 100 == 0 {
            channels.push(connect().await);
        }
        let mut client = ChangeServiceClient::new(channels.last().unwrap().clone());
        streams.push(client.watch_changes(WatchChangesRequest::default()).await.unwrap().into_inner());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = resident_kib();
    println!(
        "{watchers} idle watchers: resident memory {before} KiB -> {after} KiB, {:.1} KiB per watcher (server and client ends)",
        (after.saturating_sub(before)) as f64 / watchers as f64
    );

    let started = Instant::now();
    writer
        .create_agreement(CreateAgreementRequest { agreement: Some(agreement("fan-out")), ..Default::default() })
        .await
        .unwrap();
    for stream in streams.iter_mut() {
        loop {
            let response = stream.next().await.unwrap().unwrap();
            if !response.changes.is_empty() {
                break;
            }
        }
    }
    println!("one durable write reached all {watchers} watchers in {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
}
