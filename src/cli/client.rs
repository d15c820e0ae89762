//! How the client commands (`import`, `export`, `backup`) reach a running server: its
//! address, TLS, and the bearer token sent with every call.

use std::path::PathBuf;

use clap::Args;
use tower::BoxError;

/// How a command reaches a running server.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Address of the running server.
    #[arg(long, env = "COOPERATION_REGISTRY_SERVER", default_value = "127.0.0.1:50051")]
    pub server: String,
    /// Connect with TLS, trusting this PEM CA.
    #[arg(long, env = "COOPERATION_REGISTRY_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Present this PEM client certificate (mutual TLS; with --client-key).
    #[arg(long, env = "COOPERATION_REGISTRY_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of --client-cert.
    #[arg(long, env = "COOPERATION_REGISTRY_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// A file holding the bearer token to send (the token itself can also come
    /// from the COOPERATION_REGISTRY_TOKEN environment variable; never a flag).
    #[arg(long, env = "COOPERATION_REGISTRY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// Sends a bearer token, when there is one, with every call of a client.
#[derive(Clone)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl BearerToken {
    pub fn new(token: Option<String>) -> Result<BearerToken, String> {
        match token {
            Some(token) => format!("Bearer {token}")
                .parse()
                .map(|value| BearerToken(Some(value)))
                .map_err(|_| "the token holds characters a header cannot carry".to_string()),
            None => Ok(BearerToken(None)),
        }
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl ClientArgs {
    /// A channel to the server, and the bearer token to send, if any.
    pub async fn connect(&self) -> Result<(tonic::transport::Channel, Option<String>), BoxError> {
        let read = |path: &PathBuf| super::read_file(path);
        let scheme = if self.ca_cert.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://{}", self.server);
        let mut builder = tonic::transport::Channel::from_shared(endpoint.clone())?;
        if let Some(ca) = &self.ca_cert {
            let mut tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
            if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
                tls = tls.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
            }
            builder = builder.tls_config(tls)?;
        }
        let channel = builder.connect().await.map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
        let token = match (&self.token_file, std::env::var("COOPERATION_REGISTRY_TOKEN")) {
            (Some(path), _) => {
                Some(String::from_utf8(read(path)?).map_err(|_| "the token file is not UTF-8")?.trim().to_string())
            }
            (None, Ok(token)) => Some(token.trim().to_string()),
            (None, Err(_)) => None,
        };
        Ok((channel, token))
    }
}
