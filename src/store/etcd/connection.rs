//! How the engine reaches the cluster: over TLS to `https` endpoints, and as
//! a user of etcd's authentication, whose token goes with every call and is
//! renewed when etcd no longer knows it (it expires, or the member that
//! issued it restarted).

use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::EtcdOptions;
use crate::pb::etcd::etcdserverpb::{AuthenticateRequest, auth_client::AuthClient};
use crate::store::{StoreError, StoreResult};

/// TLS to the cluster's members.
#[derive(Clone, Debug, Default)]
pub struct EtcdTls {
    /// The PEM CA that signed the members' certificates.
    pub ca_pem: Vec<u8>,
    /// This client's PEM certificate and key, for members started with
    /// `--client-cert-auth`.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

/// A user of etcd's authentication.
#[derive(Clone)]
pub struct EtcdCredentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for EtcdCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCredentials").field("user", &self.user).field("password", &"…").finish()
    }
}

/// A channel to the cluster that puts the user's token on every call.
#[derive(Clone)]
pub(super) struct Connection {
    channel: Channel,
    auth: Option<Arc<Auth>>,
}

struct Auth {
    credentials: EtcdCredentials,
    client: AuthClient<Channel>,
    token: RwLock<Option<http::HeaderValue>>,
    /// One authentication at a time: calls that find no token wait for it.
    renewing: tokio::sync::Mutex<()>,
}

impl Connection {
    /// A channel balanced over `options.endpoints` (lazily connected).
    pub(super) fn open(options: &EtcdOptions) -> StoreResult<Connection> {
        if options.endpoints.is_empty() {
            return Err(StoreError::Storage("no etcd endpoint given".into()));
        }
        let tls = options.tls.as_ref().map(|tls| {
            let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            match &tls.identity_pem {
                Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
                None => config,
            }
        });
        let mut endpoints = Vec::with_capacity(options.endpoints.len());
        for url in &options.endpoints {
            let endpoint = Channel::from_shared(url.clone()).map_err(|e| StoreError::Storage(format!("{url}: {e}")))?;
            let endpoint = match (url.starts_with("https://"), &tls) {
                (true, Some(tls)) => {
                    endpoint.tls_config(tls.clone()).map_err(|e| StoreError::Storage(format!("{url}: {e}")))?
                }
                (true, None) => {
                    return Err(StoreError::Storage(format!(
                        "{url} is https: give the CA that signed the members' certificates (--etcd-ca-cert)"
                    )));
                }
                (false, _) => endpoint,
            };
            endpoints.push(endpoint);
        }
        let channel = Channel::balance_list(endpoints.into_iter());
        let auth = options.credentials.clone().map(|credentials| {
            Arc::new(Auth {
                credentials,
                client: AuthClient::new(channel.clone()),
                token: RwLock::new(None),
                renewing: tokio::sync::Mutex::new(()),
            })
        });
        Ok(Connection { channel, auth })
    }
}

/// Whether etcd refused a call because it does not know its token.
pub(super) fn token_unknown(code: tonic::Code, message: &str) -> bool {
    code == tonic::Code::Unauthenticated && message.contains("invalid auth token")
}

impl Auth {
    /// The token to send: the one held, or a new one.
    async fn token(&self) -> Result<http::HeaderValue, tonic::Status> {
        if let Some(token) = self.token.read().expect("token lock").clone() {
            return Ok(token);
        }
        let _one_at_a_time = self.renewing.lock().await;
        if let Some(token) = self.token.read().expect("token lock").clone() {
            return Ok(token);
        }
        let request =
            AuthenticateRequest { name: self.credentials.user.clone(), password: self.credentials.password.clone() };
        let answer = self.client.clone().authenticate(request).await.map_err(|status| {
            let message = format!("etcd authentication as {:?}: {}", self.credentials.user, status.message());
            tonic::Status::new(status.code(), message)
        })?;
        let token = http::HeaderValue::try_from(answer.into_inner().token)
            .map_err(|_| tonic::Status::internal("etcd answered a token that is not a header value"))?;
        *self.token.write().expect("token lock") = Some(token.clone());
        Ok(token)
    }

    /// Forgets `sent` if it is still the token held: the next call
    /// authenticates again.
    fn forget(&self, sent: &http::HeaderValue) {
        let mut token = self.token.write().expect("token lock");
        if token.as_ref() == Some(sent) {
            *token = None;
        }
    }
}

impl tower::Service<http::Request<Body>> for Connection {
    type Response = http::Response<Body>;
    type Error = tower::BoxError;
    type Future = super::BoxFuture<'static, Result<http::Response<Body>, tower::BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The channel made ready is the one that sends; a clone stays.
        let ready = self.channel.clone();
        let mut channel = std::mem::replace(&mut self.channel, ready);
        let auth = self.auth.clone();
        Box::pin(async move {
            let Some(auth) = auth else { return Ok(channel.call(request).await?) };
            let token = match auth.token().await {
                Ok(token) => token,
                Err(status) => return Ok(status.into_http()),
            };
            request.headers_mut().insert("token", token.clone());
            let response = channel.call(request).await?;
            // A unary call's refusal comes in its headers (trailers only).
            let refused = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()) == Some("16")
                && response.headers().get("grpc-message").and_then(|v| v.to_str().ok()).is_some_and(|message| {
                    message.contains("invalid%20auth%20token") || message.contains("invalid auth token")
                });
            if refused {
                auth.forget(&token);
            }
            Ok(response)
        })
    }
}
