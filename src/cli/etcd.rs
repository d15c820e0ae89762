//! The flags of a command that reaches an etcd cluster (`serve --store etcd`,
//! `restore --store etcd`). A secret never goes in a flag's value: the
//! password comes from the environment or a file.

use std::path::PathBuf;

use clap::Args;
use tower::BoxError;

use crate::store::TxnLimits;
use crate::store::etcd::{DEFAULT_LIMITS, EtcdCredentials, EtcdOptions, EtcdTls};

/// Where the password of --etcd-user is read from when no
/// --etcd-password-file is given.
pub const PASSWORD_ENV: &str = "COOPERATION_REGISTRY_ETCD_PASSWORD";

#[derive(Args, Debug, Clone)]
pub struct EtcdArgs {
    /// With --store etcd: the client URLs of the cluster's members, comma
    /// separated (`http://10.0.0.1:2379,http://10.0.0.2:2379`; a bare
    /// host:port is taken as http; https needs --etcd-ca-cert).
    #[arg(long, env = "COOPERATION_REGISTRY_ETCD_ENDPOINTS", value_delimiter = ',', required_if_eq("store", "etcd"))]
    pub etcd_endpoints: Vec<String>,
    /// With --store etcd: the part of the cluster's keyspace the registry
    /// keeps its data under (servers of one registry share it).
    #[arg(long, env = "COOPERATION_REGISTRY_ETCD_PREFIX", default_value = "cooperation-registry/")]
    pub etcd_prefix: String,
    /// With --store etcd: the cluster's --max-txn-ops (etcd's default 128);
    /// a write is split or refused to fit.
    #[arg(long, env = "COOPERATION_REGISTRY_ETCD_MAX_TXN_OPS", default_value_t = DEFAULT_LIMITS.max_ops)]
    pub etcd_max_txn_ops: usize,
    /// With --store etcd: the cluster's --max-request-bytes (etcd's default
    /// 1.5 MiB).
    #[arg(long, env = "COOPERATION_REGISTRY_ETCD_MAX_REQUEST_BYTES", default_value_t = DEFAULT_LIMITS.max_bytes)]
    pub etcd_max_request_bytes: usize,
    /// With https endpoints: the PEM CA that signed the members' certificates.
    #[arg(long, env = "COOPERATION_REGISTRY_ETCD_CA_CERT")]
    pub etcd_ca_cert: Option<PathBuf>,
    /// A PEM client certificate for members started with --client-cert-auth
    /// (with --etcd-key).
    #[arg(long, env = "COOPERATION_REGISTRY_ETCD_CERT", requires_all = ["etcd_key", "etcd_ca_cert"])]
    pub etcd_cert: Option<PathBuf>,
    /// The PEM private key of --etcd-cert.
    #[arg(long, env = "COOPERATION_REGISTRY_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// A user of etcd's authentication (for a cluster with `auth enable`);
    /// its password is read from --etcd-password-file or, without it, from
    /// the environment variable COOPERATION_REGISTRY_ETCD_PASSWORD.
    #[arg(long, env = "COOPERATION_REGISTRY_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// A file holding the password of --etcd-user (a trailing newline is
    /// not part of it).
    #[arg(long, env = "COOPERATION_REGISTRY_ETCD_PASSWORD_FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
}

impl EtcdArgs {
    /// The engine's options, with the files and the password read.
    pub fn options(&self) -> Result<EtcdOptions, BoxError> {
        let read = |path: &PathBuf| super::read_file(path);
        let endpoints =
            self.etcd_endpoints.iter().map(|e| if e.contains("://") { e.clone() } else { format!("http://{e}") });
        let mut options = EtcdOptions::new(endpoints.collect(), self.etcd_prefix.as_bytes());
        options.limits = TxnLimits { max_ops: self.etcd_max_txn_ops, max_bytes: self.etcd_max_request_bytes };
        if let Some(ca) = &self.etcd_ca_cert {
            let identity_pem = match (&self.etcd_cert, &self.etcd_key) {
                (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                _ => None,
            };
            options.tls = Some(EtcdTls { ca_pem: read(ca)?, identity_pem });
        }
        if let Some(user) = &self.etcd_user {
            let password = match &self.etcd_password_file {
                Some(file) => String::from_utf8(read(file)?)
                    .map_err(|_| format!("{} does not hold UTF-8 text", file.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
                None => std::env::var(PASSWORD_ENV).map_err(|_| {
                    format!("--etcd-user {user} needs a password: set {PASSWORD_ENV} or give --etcd-password-file")
                })?,
            };
            options.credentials = Some(EtcdCredentials { user: user.clone(), password });
        }
        Ok(options)
    }

    /// What the log says of the cluster (no secret).
    pub fn describe(&self) -> String {
        let user = self.etcd_user.as_deref().map(|u| format!(" as {u}")).unwrap_or_default();
        format!("etcd at {} under {:?}{user}", self.etcd_endpoints.join(","), self.etcd_prefix)
    }
}
