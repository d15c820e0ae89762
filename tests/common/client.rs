//! Clients of a running server, and what its answers say.

use std::net::SocketAddr;
use std::time::Duration;

use cooperation_registry::pb::cooperation::v1::agreement_service_client::AgreementServiceClient;
use cooperation_registry::pb::cooperation::v1::{self as v1};
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// A channel to the server at `addr`, retried for up to five seconds while it
/// starts.
pub async fn connect(addr: SocketAddr) -> Channel {
    for _ in 0..100 {
        if let Ok(channel) = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server at {addr} did not accept connections");
}

/// The registry's current revision, as a List answers it.
pub async fn revision(addr: SocketAddr) -> i64 {
    AgreementServiceClient::new(connect(addr).await)
        .list_agreements(v1::ListAgreementsRequest { page_size: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .revision
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
