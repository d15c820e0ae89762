//! The tonic server: the services, health, reflection (v1 and v1alpha),
//! compression, message size limits, a tracing span per call, and a graceful
//! shutdown that drains calls within a time limit and then closes the store.

pub mod allocator;
pub mod auth;
pub mod coalesce;
pub mod logs;
pub mod observe;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::codec::CompressionEncoding;
use tonic::transport::Server;

use crate::api::Api;
use crate::api::encoded::{EncodedReads, Wire};
use crate::pb;
use crate::pb::cooperation::v1::admin_service_server::AdminServiceServer;
use crate::pb::cooperation::v1::agreement_service_server::AgreementServiceServer;
use crate::pb::cooperation::v1::change_service_server::ChangeServiceServer;
use crate::pb::cooperation::v1::dataset_service_server::DatasetServiceServer;
use crate::pb::cooperation::v1::engagement_service_server::EngagementServiceServer;
use crate::pb::cooperation::v1::partnership_domain_service_server::PartnershipDomainServiceServer;
use crate::pb::cooperation::v1::party_service_server::PartyServiceServer;
use crate::pb::cooperation::v1::relationship_service_server::RelationshipServiceServer;
use crate::registry::Registry;

/// Calls served at once by default: above the concurrency of a typical load
/// test (64 connections × 8 streams), so that callers who wait for their
/// answers are served rather than refused; scans are bounded by their own
/// waiting room ([`crate::api::ScanLimits`]).
pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 1024;

#[derive(Clone)]
pub struct ServerOptions {
    /// TLS (and, with a client CA, mutual TLS); `None` serves plaintext.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Who may call what.
    pub access: auth::Access,
    /// Calls served at once; more fail with RESOURCE_EXHAUSTED (load shedding).
    pub max_concurrent_calls: usize,
    /// Lists and relationship queries waiting for a core, and how long they
    /// may expect to wait; more fail with RESOURCE_EXHAUSTED.
    pub scan_limits: crate::api::ScanLimits,
    /// Largest request message accepted; larger ones fail with RESOURCE_EXHAUSTED.
    pub max_request_bytes: usize,
    /// Largest response message sent.
    pub max_response_bytes: usize,
    /// How long a shutdown waits for calls in flight before closing anyway.
    pub shutdown_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            tls: None,
            access: auth::Access::open(),
            max_concurrent_calls: DEFAULT_MAX_CONCURRENT_CALLS,
            scan_limits: crate::api::ScanLimits::for_calls(DEFAULT_MAX_CONCURRENT_CALLS),
            max_request_bytes: 4 * 1024 * 1024,
            max_response_bytes: 32 * 1024 * 1024,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// The compression every service accepts in requests and offers for responses.
const COMPRESSION: &[CompressionEncoding] = &[CompressionEncoding::Gzip, CompressionEncoding::Zstd];

/// Applies the limits and compression every service gets.
macro_rules! configured {
    ($server:ident, $api:expr, $options:expr) => {
        COMPRESSION.iter().fold(
            $server::new($api.clone())
                .max_decoding_message_size($options.max_request_bytes)
                .max_encoding_message_size($options.max_response_bytes),
            |server, &encoding| server.accept_compressed(encoding).send_compressed(encoding),
        )
    };
}

/// A record service with its Get and List answered from the stored bytes
/// (see api/encoded.rs), under the same limits and compression.
macro_rules! with_encoded_reads {
    ($server:ident, $api:expr, $options:expr) => {
        EncodedReads::new(
            configured!($server, $api, $options),
            $api.clone(),
            Wire {
                compression: COMPRESSION,
                max_request_bytes: $options.max_request_bytes,
                max_response_bytes: $options.max_response_bytes,
            },
        )
    };
}

/// Serves on `listener` until `shutdown` resolves, then drains and closes the
/// registry's store.
pub async fn serve(
    registry: Arc<Registry>,
    listener: TcpListener,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let api = Api::new(registry.clone(), options.scan_limits);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgreementServiceServer<Api>>().await;
    health.set_serving::<PartyServiceServer<Api>>().await;
    health.set_serving::<PartnershipDomainServiceServer<Api>>().await;
    health.set_serving::<EngagementServiceServer<Api>>().await;
    health.set_serving::<RelationshipServiceServer<Api>>().await;
    health.set_serving::<ChangeServiceServer<Api>>().await;
    health.set_serving::<DatasetServiceServer<Api>>().await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let reporter = health.clone();
    let stopping = registry.clone();
    let stop_accepting = async move {
        shutdown.await;
        stopping.begin_shutdown();
        tracing::info!("shutting down: health is NOT_SERVING, draining calls in flight");
        reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        reporter.set_not_serving::<AgreementServiceServer<Api>>().await;
        reporter.set_not_serving::<PartyServiceServer<Api>>().await;
        reporter.set_not_serving::<PartnershipDomainServiceServer<Api>>().await;
        reporter.set_not_serving::<EngagementServiceServer<Api>>().await;
        reporter.set_not_serving::<RelationshipServiceServer<Api>>().await;
        reporter.set_not_serving::<ChangeServiceServer<Api>>().await;
        reporter.set_not_serving::<DatasetServiceServer<Api>>().await;
        let _ = draining_tx.send(());
    };

    let local = listener.local_addr()?;
    let mut builder = Server::builder();
    if let Some(tls) = options.tls.clone() {
        builder = builder.tls_config(tls)?;
    }
    let server = builder
        // Spans, counts, times and logs every call, shed and refused ones included.
        .layer(observe::CallLayer::new(observe::CallLimits {
            max_concurrent_calls: options.max_concurrent_calls,
            max_request_bytes: options.max_request_bytes,
        }))
        // Beyond the limit, calls are refused at once with RESOURCE_EXHAUSTED
        // instead of queueing without bound.
        .layer(tower::ServiceBuilder::new().load_shed().concurrency_limit(options.max_concurrent_calls))
        .layer(auth::AccessLayer::new(options.access.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(with_encoded_reads!(AgreementServiceServer, api, options))
        .add_service(with_encoded_reads!(PartyServiceServer, api, options))
        .add_service(with_encoded_reads!(PartnershipDomainServiceServer, api, options))
        .add_service(with_encoded_reads!(EngagementServiceServer, api, options))
        .add_service(configured!(RelationshipServiceServer, api, options))
        .add_service(configured!(ChangeServiceServer, api, options))
        .add_service(configured!(DatasetServiceServer, api, options))
        .add_service(configured!(AdminServiceServer, api, options))
        // Without TCP_NODELAY a response written in two segments waits for the
        // client's delayed ACK (40 ms); `Coalesced` gathers the responses of
        // calls in flight on a connection into one write.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(Duration::from_secs(60)))
                .map(|accepted| accepted.map(coalesce::Coalesced::new)),
            stop_accepting,
        );
    let transport = if options.tls.is_some() { "tls" } else { "plaintext" };
    let revision = registry.revision().await?;
    tracing::info!(address = %local, transport, revision, "serving cooperation.v1");

    tokio::pin!(server);
    let drain_limit = async move {
        if draining_rx.await.is_ok() {
            tokio::time::sleep(options.shutdown_timeout).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let served = tokio::select! {
        result = &mut server => result,
        _ = drain_limit => {
            tracing::warn!(timeout = ?options.shutdown_timeout, "calls still in flight after the shutdown timeout; closing anyway");
            Ok(())
        }
    };
    let closed = tokio::task::spawn_blocking(move || registry.close()).await?;
    served?;
    closed?;
    tracing::info!("store flushed and closed");
    Ok(())
}
