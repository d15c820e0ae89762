//! Starts the real server on a free loopback port over a temporary data dir, and
//! gives generated clients for it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cooperation_registry::pb::cooperation::v1::agreement_service_client::AgreementServiceClient;
use cooperation_registry::pb::cooperation::v1::engagement_service_client::EngagementServiceClient;
use cooperation_registry::pb::cooperation::v1::partnership_domain_service_client::PartnershipDomainServiceClient;
use cooperation_registry::pb::cooperation::v1::party_service_client::PartyServiceClient;
use cooperation_registry::pb::cooperation::v1::{self as v1};
use cooperation_registry::registry::Registry;
use cooperation_registry::server::{self, ServerOptions};
use cooperation_registry::store::sled::{SledOptions, SledStore};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_types::StatusExt;

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
    pub async fn start() -> TestServer {
        TestServer::start_in(tempfile::tempdir().unwrap(), ServerOptions::default()).await
    }

    pub async fn start_in(dir: TempDir, options: ServerOptions) -> TestServer {
        let store = SledStore::open(dir.path(), SledOptions::default()).expect("store opens");
        let registry = Arc::new(Registry::open(Arc::new(store)).await.expect("registry opens"));
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

pub async fn connect(addr: SocketAddr) -> Channel {
    for _ in 0..100 {
        if let Ok(channel) = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server at {addr} did not accept connections");
}

pub fn date(year: i32, month: i32, day: i32) -> Option<cooperation_registry::pb::google::r#type::Date> {
    Some(cooperation_registry::pb::google::r#type::Date { year, month, day })
}

/// A valid bilateral agreement between India and Japan.
pub fn agreement(title: &str) -> v1::Agreement {
    v1::Agreement {
        title: title.into(),
        parties: vec!["parties/ind".into(), "parties/jpn".into()],
        signature_date: date(2020, 9, 10),
        ..Default::default()
    }
}

pub fn create_agreement(id: &str, agreement: v1::Agreement) -> v1::CreateAgreementRequest {
    v1::CreateAgreementRequest { agreement_id: id.into(), agreement: Some(agreement), request_id: String::new() }
}

/// The fields of a status's BadRequest violations, in order.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// The ErrorInfo reason of a status.
pub fn reason(status: &tonic::Status) -> String {
    status.get_error_details().error_info().map(|i| i.reason.clone()).unwrap_or_default()
}

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

/// An UpdateAgreement request for `agreement` with `update_mask`.
pub fn update_request(
    agreement: v1::Agreement,
    update_mask: Option<prost_types::FieldMask>,
) -> v1::UpdateAgreementRequest {
    v1::UpdateAgreementRequest { agreement: Some(agreement), update_mask, request_id: String::new() }
}
