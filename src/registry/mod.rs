//! Resource rules over the store: one generic engine for Get, List, Create,
//! Update, Delete and Undelete of every record kind, with names, validation,
//! references between records, etags, request ids, soft delete and paging.
//!
//! [`Registry`] is defined here; its work is split by what it does:
//! - `keys`: where each thing is kept in the store;
//! - `reads`: Get, and reading stored records without decoding them;
//! - `lists`: List and the scans behind it;
//! - `writes`: Create, Update, Delete, Undelete (plans, conditions, retries,
//!   record turns);
//! - `idempotency`: request ids and their kept answers;
//! - `schema`: the first start's states and upgrades of an older layout;
//! - `changes`: the change feed and history; `relationship`: GetRelationship;
//!   `export`: every live record at one revision, in chunks;
//! - `hierarchy`: references from a kind to itself stay acyclic.
//!
//! The rules of each record kind are in `resource` and the files named after
//! the kinds; filters, indexes and ordering in `filter`, `index`, `order`.

pub mod agreement;
mod batches;
pub mod changes;
pub mod dates;
pub mod engagement;
pub mod export;
pub mod filter;
mod hierarchy;
mod idempotency;
pub mod index;
mod jobs;
mod keys;
mod lists;
pub mod mask;
pub mod order;
mod ordered;
pub mod paging;
pub mod partnership_domain;
pub mod party;
mod presented;
mod reads;
pub mod records;
pub mod relationship;
pub mod resource;
mod schema;
pub mod validate;
mod wire;
pub mod words;
mod writes;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use prost_types::Timestamp;

use crate::error::{Error, Result, Violations};
use crate::pb::google::r#type::Date;
use crate::store::Store;
pub use batches::MAX_BATCH;
pub use export::{Export, ExportQuery};
pub use idempotency::{DEFAULT_REQUEST_RETENTION, EXPIRY_ACTOR};
pub use jobs::JOBS_ACTOR;
pub use resource::{Kind, Resource};
pub use schema::{MIGRATION_ACTOR, SEED_ACTOR};
use validate::Reference;

/// The actor recorded for changes by a caller with no identity: access
/// control is off and no client certificate was shown.
pub const ANONYMOUS: &str = "anonymous";
pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 1000;
/// Who asks for a change, and how to recognise a retry of the same request.
#[derive(Clone, Debug)]
pub struct Mutation {
    pub actor: String,
    /// Empty, or a UUID the caller chose for this request (AIP-155).
    pub request_id: String,
    /// The gRPC method, with `fingerprint` to refuse a request_id reused for
    /// something else (0 without a request_id: nothing compares it then).
    pub method: &'static str,
    pub fingerprint: u64,
    /// When the caller stops waiting: a write not yet submitted then is not made.
    pub deadline: Option<Instant>,
}

#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub page_size: i32,
    pub page_token: String,
    pub show_deleted: bool,
    /// AIP-160 filter; empty matches everything.
    pub filter: String,
    /// AIP-132 order; empty is by name.
    pub order_by: String,
    /// The day derived fields are computed for; `None` is today.
    pub as_of: Option<Date>,
    /// When the caller stops waiting: a scan still running then stops.
    pub deadline: Option<Instant>,
}

#[derive(Clone, Debug)]
pub struct Page<R> {
    pub items: Vec<R>,
    pub next_page_token: String,
    /// The revision read at: every change up to it shows in the page.
    pub revision: u64,
}

/// A record as a response shows it, still encoded: its stored bytes, then
/// what is appended to them (the fields derived on read and the etag; a
/// later occurrence of a field wins). Together they are the record's message;
/// the API layer writes them into its response without decoding them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodedRecord {
    pub stored: bytes::Bytes,
    pub appended: Arc<[u8]>,
}

impl EncodedRecord {
    /// The bytes of the record's message.
    pub fn len(&self) -> usize {
        self.stored.len() + self.appended.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A page of records still encoded.
pub type EncodedPage = Page<EncodedRecord>;

pub struct Registry {
    store: Arc<dyn Store>,
    /// This registry among those that share its store: who holds a job's
    /// lease (see `jobs`).
    instance: String,
    /// How long the answer to a request with a request_id is kept.
    request_retention: std::time::Duration,
    /// Turns true when the server begins to shut down: watchers end then.
    shutdown: tokio::sync::watch::Sender<bool>,
    /// WatchChanges streams open now (for the metrics).
    watchers: std::sync::atomic::AtomicUsize,
    /// Writes to one record take turns (see `record_lock`).
    record_locks: Box<[tokio::sync::Mutex<()>]>,
    /// What List pages appended to the records they read lately.
    presented: presented::PresentedMemo,
    /// Records that writes referred to lately, live, at their revision then
    /// (see `check_targets`).
    targets: writes::KnownTargets,
}

/// DEADLINE_EXCEEDED, with `message`, once `deadline` has passed.
fn check_deadline(deadline: Option<Instant>, message: impl FnOnce() -> String) -> Result<()> {
    match deadline {
        Some(deadline) if Instant::now() >= deadline => Err(Error::DeadlineExceeded { message: message() }),
        _ => Ok(()),
    }
}

fn now() -> Timestamp {
    Timestamp::from(std::time::SystemTime::now())
}

fn etag_of(revision: u64) -> String {
    revision.to_string()
}

/// How a registry treats what it stores, beside the store's own options.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// How long the answer to a request with a request_id is kept for its
    /// retries; after that a retry is a new request.
    pub request_retention: std::time::Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions { request_retention: DEFAULT_REQUEST_RETENTION }
    }
}

/// A stored record that does not parse: the store is damaged, not the request.
fn undecodable(kind: &Kind, e: &dyn std::fmt::Display) -> Error {
    Error::internal(format!("stored {} does not decode: {e}", kind.singular))
}

fn decode<R: Resource>(bytes: &[u8]) -> Result<R> {
    R::decode(bytes).map_err(|e| undecodable(R::KIND, &e))
}

/// The distinct resource names a record refers to.
fn targets(references: &[Reference]) -> BTreeSet<String> {
    references.iter().map(|r| r.name.clone()).collect()
}

impl Registry {
    /// Opens the registry on a store with the default options, writing the
    /// ISO 3166-1 states into an empty one.
    pub async fn open(store: Arc<dyn Store>) -> Result<Registry> {
        Registry::open_with(store, RegistryOptions::default()).await
    }

    /// Opens the registry on a store, writing the ISO 3166-1 states into an
    /// empty one and upgrading an older layout.
    pub async fn open_with(store: Arc<dyn Store>, options: RegistryOptions) -> Result<Registry> {
        let registry = Registry {
            store,
            instance: uuid::Uuid::now_v7().to_string(),
            request_retention: options.request_retention,
            shutdown: tokio::sync::watch::Sender::new(false),
            watchers: Default::default(),
            record_locks: (0..writes::RECORD_LOCKS).map(|_| tokio::sync::Mutex::new(())).collect(),
            presented: presented::PresentedMemo::new(),
            targets: writes::KnownTargets::default(),
        };
        registry.prepare_layout().await?;
        Ok(registry)
    }

    /// The revision of the last committed write, whoever committed it.
    pub async fn revision(&self) -> Result<u64> {
        Ok(self.store.current_revision().await?)
    }

    /// Resolves, with the cause, if the store fails to write (see
    /// `Store::failed`).
    pub fn failed(&self) -> impl std::future::Future<Output = crate::store::StoreError> + Send + 'static {
        self.store.engine().failed()
    }

    /// WatchChanges streams open now.
    pub fn watchers(&self) -> usize {
        self.watchers.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The figures the store's engine keeps about itself.
    pub fn engine_metrics(&self) -> Vec<crate::store::EngineMetric> {
        self.store.engine().metrics()
    }

    /// Ends every watcher (with UNAVAILABLE and the revision to resume from),
    /// so a graceful shutdown need not wait for open streams.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Writes a consistent backup of everything to `out` (see
    /// `store::backup`); returns the revision it reflects.
    pub fn backup(&self, out: std::sync::mpsc::SyncSender<Vec<u8>>) -> Result<u64> {
        self.store.engine().backup(out).map_err(Error::from)
    }

    /// Flushes and closes the store; later writes fail with UNAVAILABLE.
    pub fn close(&self) -> Result<()> {
        self.store.engine().close().map_err(Error::from)
    }

    /// Sets what is derived on read: the etag from the revision that wrote the
    /// record, and output-only fields as of today.
    fn present<R: Resource>(&self, record: &mut R, revision: u64, as_of: &Date) {
        record.set_etag(etag_of(revision));
        record.derive(as_of);
    }
}

/// The day of an `as_of` field (a full date), or today when unset.
fn as_of_day(as_of: Option<&Date>, violations: &mut Violations) -> Date {
    match as_of {
        None => dates::today(),
        Some(date) => {
            let mut own = Violations::new();
            dates::check(date, "as_of", &mut own);
            if own.is_empty() && (date.month == 0 || date.day == 0) {
                own.add("as_of", format!("must be a full date (got {})", dates::display(date)));
            }
            let failed = !own.is_empty();
            violations.extend(own);
            if failed { dates::today() } else { *date }
        }
    }
}

/// What the registry's unit tests share.
#[cfg(test)]
mod testing {
    use super::{ANONYMOUS, Mutation};
    use crate::pb::cooperation::v1::Agreement;

    /// A write by the anonymous caller, without a request id or deadline.
    pub fn anonymous(method: &'static str) -> Mutation {
        Mutation { actor: ANONYMOUS.into(), request_id: String::new(), method, fingerprint: 0, deadline: None }
    }

    /// A bilateral agreement between India and Japan, as a client sends it.
    pub fn india_japan() -> Agreement {
        Agreement {
            title: "Reciprocal provision of supplies and services".into(),
            parties: vec!["parties/ind".into(), "parties/jpn".into()],
            instrument_type: 1,
            ..Default::default()
        }
    }
}
