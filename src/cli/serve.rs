//! `serve`: opens the data dir and serves cooperation.v1 until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tower::BoxError;

use crate::registry::{Registry, RegistryOptions};
use crate::server::{self, ServerOptions};
use crate::store::Store;
use crate::store::etcd::EtcdStore;
use crate::store::sled::Durability;
use crate::store::sled::{SledOptions, SledStore};

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "COOPERATION_REGISTRY_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Where the registry keeps its data: `sled`, an embedded database in
    /// --data-dir (one server), or `etcd`, a cluster at --etcd-endpoints that
    /// several servers share.
    #[arg(long, env = "COOPERATION_REGISTRY_STORE", value_enum, default_value = "sled")]
    pub store: StoreArg,
    /// Directory of the embedded sled database; created on first start.
    #[arg(long, env = "COOPERATION_REGISTRY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub etcd: crate::cli::etcd::EtcdArgs,
    /// What a write has survived when it is acknowledged: `fsync` (a power loss),
    /// `flush` (a crash of this process, not of the machine), or `none` (nothing:
    /// writes reach disk within about 500 ms).
    #[arg(long, env = "COOPERATION_REGISTRY_DURABILITY", value_enum, default_value = "fsync")]
    pub durability: DurabilityArg,
    /// Memory for sled's page cache, in MiB (the server's resident memory
    /// levels off somewhat above it: docs/performance.md).
    #[arg(long, env = "COOPERATION_REGISTRY_CACHE_MIB", default_value_t = crate::store::sled::DEFAULT_CACHE_MIB)]
    pub cache_mib: u64,
    /// Memory for the records read most recently, in MiB, beside sled's page
    /// cache: reading one of them skips sled's tree (a tenth of the work). An
    /// eighth of it keeps the index members List pages read (until the next
    /// write that changes an index). 0 keeps none.
    #[arg(long, env = "COOPERATION_REGISTRY_READ_CACHE_MIB", default_value_t = crate::store::sled::DEFAULT_READ_CACHE_MIB)]
    pub read_cache_mib: u64,
    /// After this many MiB of records, index entries and changes written, the
    /// store closes and reopens its database (calls pause while it does, under
    /// a second for a large store) so that a start after a crash replays at most that
    /// much of sled's log; 0 (the default) never does, and a start replays the
    /// log written since the previous one, at most about the data dir's size.
    #[arg(long, env = "COOPERATION_REGISTRY_CHECKPOINT_MIB", default_value_t = crate::store::sled::DEFAULT_CHECKPOINT_MIB)]
    pub checkpoint_mib: u64,
    /// Seconds a shutdown (SIGINT, SIGTERM) waits for calls in flight.
    #[arg(long, env = "COOPERATION_REGISTRY_SHUTDOWN_TIMEOUT_SECS", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,
    /// Largest request message accepted, in bytes.
    #[arg(long, env = "COOPERATION_REGISTRY_MAX_REQUEST_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_request_bytes: usize,
    /// Largest response message sent, in bytes.
    #[arg(long, env = "COOPERATION_REGISTRY_MAX_RESPONSE_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_response_bytes: usize,
    /// Change-log retention: keep at least this many of the latest revisions.
    /// Unset (and no --change-retention-hours): keep every change.
    #[arg(long, env = "COOPERATION_REGISTRY_CHANGE_RETENTION_REVISIONS", value_parser = clap::value_parser!(u64).range(1..))]
    pub change_retention_revisions: Option<u64>,
    /// Change-log retention: keep the changes of at least this many hours.
    /// With both retention flags, a change is compacted only when both allow.
    #[arg(long, env = "COOPERATION_REGISTRY_CHANGE_RETENTION_HOURS", value_parser = clap::value_parser!(u64).range(1..))]
    pub change_retention_hours: Option<u64>,
    /// How long the answer to a write sent with a request_id is kept, in
    /// hours: a retry within it gets the first answer, a retry after it is a
    /// new request. Expired answers are removed every few minutes.
    #[arg(long, env = "COOPERATION_REGISTRY_REQUEST_ID_RETENTION_HOURS", default_value_t = crate::registry::DEFAULT_REQUEST_RETENTION.as_secs() / 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_id_retention_hours: u64,
    /// Serve TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, env = "COOPERATION_REGISTRY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "COOPERATION_REGISTRY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this PEM CA (mutual TLS); a client
    /// certificate's subject becomes the caller's identity.
    #[arg(long, env = "COOPERATION_REGISTRY_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Turn on access control with this access file (tokens and certificate
    /// subjects with roles; reloaded when it changes). Without it every caller
    /// may do everything.
    #[arg(long, env = "COOPERATION_REGISTRY_ACCESS_FILE")]
    pub access_file: Option<PathBuf>,
    /// With access control, make server reflection need the reader role too
    /// (by default reflection, like health, is open).
    #[arg(long, env = "COOPERATION_REGISTRY_REFLECTION_REQUIRES_ROLE")]
    pub reflection_requires_role: bool,
    /// Most calls served at once; calls beyond it fail at once with
    /// RESOURCE_EXHAUSTED instead of queueing. (A stream counts only while its
    /// call starts.)
    #[arg(long, env = "COOPERATION_REGISTRY_MAX_CONCURRENT_CALLS", default_value_t = crate::server::DEFAULT_MAX_CONCURRENT_CALLS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_concurrent_calls: u64,
    /// Lists that scan records (all but a short page an index answers) and
    /// relationship queries run one per core; at most this many wait for a
    /// turn, and more fail at once with RESOURCE_EXHAUSTED. Default:
    /// --max-concurrent-calls.
    #[arg(long, env = "COOPERATION_REGISTRY_MAX_QUEUED_SCANS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queued_scans: Option<u64>,
    /// A list that scans, or a relationship query, that would wait longer
    /// than this for its turn (judged by how long recent ones ran), or past
    /// its deadline, fails at once with RESOURCE_EXHAUSTED: this bounds an
    /// admitted one's wait.
    #[arg(long, env = "COOPERATION_REGISTRY_MAX_SCAN_WAIT_MS", default_value_t = crate::api::DEFAULT_MAX_SCAN_WAIT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_scan_wait_ms: u64,
    /// Serve Prometheus metrics at http://ADDRESS/metrics (calls by method and
    /// code, latency histograms, calls in flight, store size, revision,
    /// watchers). Off unless set; keep it on a private address.
    #[arg(long, env = "COOPERATION_REGISTRY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log format on standard error: `text`, or `json` (one object a line, with
    /// the call's span fields).
    #[arg(long, env = "COOPERATION_REGISTRY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreArg {
    Sled,
    Etcd,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum DurabilityArg {
    Fsync,
    Flush,
    None,
}

impl From<DurabilityArg> for Durability {
    fn from(value: DurabilityArg) -> Durability {
        match value {
            DurabilityArg::Fsync => Durability::Fsync,
            DurabilityArg::Flush => Durability::Flush,
            DurabilityArg::None => Durability::None,
        }
    }
}

pub async fn serve(args: ServeArgs) -> Result<(), BoxError> {
    let durability = Durability::from(args.durability);
    let options = SledOptions {
        durability,
        cache_capacity: args.cache_mib * 1024 * 1024,
        checkpoint_bytes: args.checkpoint_mib * 1024 * 1024,
        read_cache_bytes: args.read_cache_mib * 1024 * 1024,
        release_free_memory: server::allocator::release_free_memory,
    };
    let store: Arc<dyn Store> = match args.store {
        StoreArg::Sled => {
            let store = SledStore::open(&args.data_dir, options)
                .map_err(|e| format!("cannot open the data dir {}: {e}", args.data_dir.display()))?;
            tracing::info!(data_dir = %args.data_dir.display(), durability = ?args.durability, "store open");
            Arc::new(store)
        }
        StoreArg::Etcd => {
            let store = EtcdStore::connect(args.etcd.options()?)
                .map_err(|e| format!("cannot use {}: {e}", args.etcd.describe()))?;
            tracing::info!(store = %args.etcd.describe(), "store: etcd");
            Arc::new(store)
        }
    };
    let registry_options =
        RegistryOptions { request_retention: Duration::from_secs(args.request_id_retention_hours * 3600) };
    let registry = Arc::new(Registry::open_with(store, registry_options).await?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let read = |path: &PathBuf| super::read_file(path);
            let mut tls = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
            if let Some(ca) = &args.tls_client_ca {
                tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
            }
            Some(tls)
        }
        _ => None,
    };
    let access = match &args.access_file {
        Some(path) => crate::server::auth::Access::from_file(path, args.reflection_requires_role)?,
        None => crate::server::auth::Access::open(),
    };
    let options = ServerOptions {
        tls,
        access,
        max_concurrent_calls: args.max_concurrent_calls as usize,
        scan_limits: crate::api::ScanLimits {
            max_queued: args.max_queued_scans.unwrap_or(args.max_concurrent_calls) as usize,
            max_wait: Duration::from_millis(args.max_scan_wait_ms),
        },
        max_request_bytes: args.max_request_bytes,
        max_response_bytes: args.max_response_bytes,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout_secs),
    };
    if let Some(address) = args.metrics_listen {
        let metrics = crate::server::observe::bind(address).await?;
        crate::server::observe::serve_metrics(metrics, registry.clone())?;
    }
    spawn_request_expiry(registry.clone());
    if args.change_retention_revisions.is_some() || args.change_retention_hours.is_some() {
        spawn_compactor(registry.clone(), args.change_retention_revisions, args.change_retention_hours);
    }
    // A failed write stops the server (the store refuses every later one):
    // drain, close, and exit non-zero with the cause.
    let failure = Arc::new(std::sync::Mutex::new(None));
    let failed = failure.clone();
    let store_failure = registry.failed();
    let stop = async move {
        tokio::select! {
            _ = shutdown_signal() => {}
            cause = store_failure => {
                tracing::error!(error = %cause, "stopping: the store cannot write");
                *failed.lock().expect("failure lock") = Some(cause);
            }
        }
    };
    let served = server::serve(registry, listener, options, stop).await;
    if let Some(cause) = failure.lock().expect("failure lock").take() {
        // Exit here: dropping the failed database would make sled flush its
        // failed log again, which can wait forever.
        let kept = match durability {
            Durability::Fsync | Durability::Flush => "every acknowledged write is on disk",
            Durability::None => "writes acknowledged in the last half second may be lost (--durability none)",
        };
        eprintln!(
            "cooperation-registry: stopped because the store cannot write: {cause}; {kept}: fix the cause \
             (free space, make the data dir writable) and start again"
        );
        std::process::exit(1);
    }
    served
}

/// How often expired request answers are removed.
const REQUEST_EXPIRY_INTERVAL: Duration = Duration::from_secs(600);

/// Removes the request answers past their retention every few minutes.
fn spawn_request_expiry(registry: Arc<Registry>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REQUEST_EXPIRY_INTERVAL);
        loop {
            tick.tick().await;
            match registry.expire_requests().await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "removed expired request answers"),
                Err(e) => tracing::warn!(error = %e, "removing expired request answers failed"),
            }
        }
    });
}

/// Applies the change-log retention policy once a minute.
fn spawn_compactor(registry: Arc<Registry>, keep_revisions: Option<u64>, keep_hours: Option<u64>) {
    let keep_for = keep_hours.map(|h| Duration::from_secs(h * 3600));
    tracing::info!(?keep_revisions, ?keep_hours, "change-log retention policy");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            if let Err(e) = registry.compact_once(keep_revisions, keep_for).await {
                tracing::warn!(error = %e, "change-log compaction failed");
            }
        }
    });
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler can be installed");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
