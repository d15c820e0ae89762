//! The registry served in this process on a free loopback port over a
//! temporary data dir, with generated clients for it.

use std::net::SocketAddr;
use std::sync::Arc;

use cooperation_registry::pb::cooperation::v1::agreement_service_client::AgreementServiceClient;
use cooperation_registry::pb::cooperation::v1::engagement_service_client::EngagementServiceClient;
use cooperation_registry::pb::cooperation::v1::partnership_domain_service_client::PartnershipDomainServiceClient;
use cooperation_registry::pb::cooperation::v1::party_service_client::PartyServiceClient;
use cooperation_registry::pb::cooperation::v1::{self as v1};
use cooperation_registry::registry::Registry;
use cooperation_registry::server::{self, ServerOptions};
use cooperation_registry::store::sled::Durability;
use cooperation_registry::store::sled::{SledOptions, SledStore};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tonic::transport::Channel;

use super::client::connect;

/// The store of a test that does not test durability: nothing waits for the
/// disk. A graceful stop still flushes everything (the store's close), so a
/// restart after `TestServer::stop` finds every write.
pub fn fast_store() -> SledOptions {
    SledOptions { durability: Durability::None, ..SledOptions::default() }
}

/// The switch that runs the tests of servers started with
/// `TestServer::start` or `start_in` on another engine:
/// `COOPERATION_REGISTRY_TEST_STORE=etcd` (`sled`, the default, otherwise).
pub const STORE_SWITCH: &str = "COOPERATION_REGISTRY_TEST_STORE";

/// The store of a test server over `dir`: a `fast_store` in it, or, with
/// the switch at `etcd`, an etcd member kept for `dir` while it exists, so
/// a server started again over the same dir finds its data.
pub async fn test_store(dir: &std::path::Path) -> Arc<dyn cooperation_registry::store::Store> {
    match std::env::var(STORE_SWITCH).as_deref() {
        Ok("etcd") => {
            use cooperation_registry::store::etcd::testing;
            Arc::new(testing::open_urls(vec![testing::member_for(dir).await], b"registry/"))
        }
        Ok("sled") | Err(_) => {
            // A store this process closed a moment ago: sled's background
            // threads may hold the directory's lock a little longer.
            let mut attempts = 0;
            loop {
                match SledStore::open(dir, fast_store()) {
                    Err(cooperation_registry::store::StoreError::Locked(_)) if attempts < 200 => {
                        attempts += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                    opened => break Arc::new(opened.expect("store opens")),
                }
            }
        }
        Ok(other) => panic!("{STORE_SWITCH}={other}: use sled or etcd"),
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    /// The registry behind the server, for operations without an RPC (compaction).
    pub registry: Arc<Registry>,
    pub channel: Channel,
    pub dir: TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl TestServer {
    /// A server with the default options over a fresh data dir and a `fast_store`.
    pub async fn start() -> TestServer {
        TestServer::start_in(tempfile::tempdir().unwrap(), ServerOptions::default()).await
    }

    /// A server with `options` over `dir` on the engine of [`test_store`].
    pub async fn start_in(dir: TempDir, options: ServerOptions) -> TestServer {
        let store = test_store(dir.path()).await;
        TestServer::start_on(store, dir, options).await
    }

    /// A server with `options` over `dir` and a store opened with `store`
    /// (e.g. `SledOptions::default()` for durable writes).
    pub async fn start_with(dir: TempDir, options: ServerOptions, store: SledOptions) -> TestServer {
        let store = SledStore::open(dir.path(), store).expect("store opens");
        TestServer::start_on(Arc::new(store), dir, options).await
    }

    /// A server with `options` on `store` (`dir` is kept with it).
    pub async fn start_on(
        store: Arc<dyn cooperation_registry::store::Store>,
        dir: TempDir,
        options: ServerOptions,
    ) -> TestServer {
        let registry = Arc::new(Registry::open(store).await.expect("registry opens"));
        let served = registry.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server::serve(served, listener, options, async move {
                let _ = stopped.await;
            })
            .await
            .map_err(|e| e.to_string())
        });
        let channel = connect(addr).await;
        TestServer { addr, registry, channel, dir, stop: Some(stop), task }
    }

    /// Shuts the server down gracefully and returns its data dir.
    pub async fn stop(mut self) -> TempDir {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().expect("server stops cleanly");
        self.dir
    }

    pub fn agreements(&self) -> AgreementServiceClient<Channel> {
        AgreementServiceClient::new(self.channel.clone())
    }
    pub fn parties(&self) -> PartyServiceClient<Channel> {
        PartyServiceClient::new(self.channel.clone())
    }
    pub fn domains(&self) -> PartnershipDomainServiceClient<Channel> {
        PartnershipDomainServiceClient::new(self.channel.clone())
    }
    pub fn engagements(&self) -> EngagementServiceClient<Channel> {
        EngagementServiceClient::new(self.channel.clone())
    }
}

/// The names of the agreements a filter finds as of `as_of` (one page of up
/// to 1000).
pub async fn agreements_found(
    server: &TestServer,
    filter: &str,
    as_of: Option<cooperation_registry::pb::google::r#type::Date>,
) -> Vec<String> {
    let request = v1::ListAgreementsRequest { filter: filter.into(), as_of, page_size: 1000, ..Default::default() };
    let page = server.agreements().list_agreements(request).await.unwrap().into_inner();
    page.agreements.into_iter().map(|a| a.name).collect()
}

/// Every agreement `server` holds, counted page by page.
pub async fn count_agreements(server: &TestServer, show_deleted: bool) -> usize {
    let mut client = server.agreements();
    let mut token = String::new();
    let mut count = 0;
    loop {
        let page = client
            .list_agreements(v1::ListAgreementsRequest {
                page_size: 1000,
                page_token: token,
                show_deleted,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        count += page.agreements.len();
        if page.next_page_token.is_empty() {
            return count;
        }
        token = page.next_page_token;
    }
}
