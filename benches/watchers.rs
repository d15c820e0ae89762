//! What idle watchers cost: the server's resident memory before and after
//! opening WATCHERS (default 500) idle WatchChanges streams over loopback, and
//! how long one write takes to reach all of them. Server and clients share this
//! process, so the figure includes both ends of each stream (an upper bound).
//!
//! Run: `cargo bench --bench watchers`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::client::connect;
use common::env_or;
use common::records::agreement;
use common::server::TestServer;
use common::stats::memory_kib;
use cooperation_registry::pb::cooperation::v1::change_service_client::ChangeServiceClient;
use cooperation_registry::pb::cooperation::v1::{CreateAgreementRequest, WatchChangesRequest};
use cooperation_registry::server::ServerOptions;
use cooperation_registry::store::sled::SledOptions;
use tokio_stream::StreamExt;

/// This process's resident memory, in KiB.
fn resident_kib() -> u64 {
    memory_kib(std::process::id()).0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let watchers: usize = env_or("WATCHERS", 500);
    // Durable writes (the default store), as a user's server makes them.
    let server =
        TestServer::start_with(tempfile::tempdir().unwrap(), ServerOptions::default(), SledOptions::default()).await;
    let addr = server.addr;
    let mut writer = server.agreements();
    // Warm up: one watcher and one write, so lazily built state is counted before.
    let mut warm = ChangeServiceClient::new(connect(addr).await)
        .watch_changes(WatchChangesRequest::default())
        .await
        .unwrap()
        .into_inner();
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
            channels.push(connect(addr).await);
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
