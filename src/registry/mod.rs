//! Resource rules over the store: one generic engine for Get, List, Create,
//! Update, Delete and Undelete of every record kind, with names, validation,
//! references between records, etags, request ids, soft delete and paging.
//!
//! Keys in the store:
//! - `r/{name}`: the record (protobuf, without etag and derived fields);
//! - `q/{request_id}`: a request that succeeded, and its answer, for retries
//!   (see `idempotency`);
//! - `meta/registry-schema`: the version of this layout.
//!
//! and sets (store members, packed by the engine):
//! - `e/requests\0` holds the kept answers in the order they expire;
//! - `x/{target}\0` holds `source` while `source` (live) refers to `target`;
//! - `i/{collection}/{path}\0{value}\0` holds the ids of the records with that
//!   value: secondary indexes (see `index`).
//!
//! Every write is a store transaction conditioned on the revisions of what it
//! read (the record, the records it refers to, the referrers of what it
//! deletes), retried from a fresh read when a concurrent write got there first.

pub mod agreement;
pub mod changes;
pub mod dates;
pub mod engagement;
pub mod filter;
mod idempotency;
pub mod index;
pub mod mask;
pub mod order;
pub mod paging;
pub mod partnership_domain;
pub mod party;
mod presented;
pub mod records;
pub mod relationship;
pub mod resource;
pub mod validate;
mod wire;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use prost_types::Timestamp;

use crate::error::{Error, PreconditionViolation, Result, Violations};
use crate::pb::DESCRIPTOR_POOL;
use crate::pb::google::r#type::Date;
use crate::store::{Applied, Condition, Op, Outcome, Store, Txn, key_after, move_member};
use filter::Filter;
pub use idempotency::{DEFAULT_REQUEST_RETENTION, EXPIRY_ACTOR};
use order::OrderBy;
use records::{ChangeKind, StoredChange, StoredEvent};
pub use resource::{Kind, Resource};
use validate::Reference;

/// The actor recorded for changes by a caller with no identity: access
/// control is off and no client certificate was shown.
pub const ANONYMOUS: &str = "anonymous";
/// The actor recorded for the states written at the first start.
pub const SEED_ACTOR: &str = "system:seed";
pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 1000;
/// The actor recorded for changes that upgrade a data dir.
pub const MIGRATION_ACTOR: &str = "system:migration";
/// Version of the registry's key layout above the store: 2 added the
/// secondary indexes, 3 made index and reference entries set members instead
/// of keys. An older data dir is upgraded on open.
const REGISTRY_SCHEMA: u32 = 4;
const SCHEMA_KEY: &[u8] = b"meta/registry-schema";
/// How often an upgrade of the data dir logs its progress.
const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// Fresh reads and retries of one write before giving up with ABORTED.
const MAX_ATTEMPTS: usize = 16;

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

/// A page whose `items` are the bytes of the response's repeated field.
pub type EncodedPage = Page<u8>;

/// The field number of the records in every `List…Response`.
const ITEMS_FIELD: u32 = 1;

/// A page's records as a List found them.
enum Rows<R> {
    /// Decoded, each with its sort key.
    Records(Vec<(Vec<order::SortValue>, R)>),
    /// Already encoded as the response's repeated field (see `list_encoded`).
    Encoded(Vec<u8>),
}

/// A page as a List found it, before it is answered.
struct Found<R> {
    rows: Rows<R>,
    next_page_token: String,
    revision: u64,
}

/// Calls `visit` with each top-level field of the encoded message `bytes`:
/// its number and its bytes on the wire (key included), in order, without
/// decoding the message; stops early when `visit` says false.
fn for_each_top_level_field(
    bytes: &[u8],
    mut visit: impl FnMut(u32, &[u8]) -> bool,
) -> std::result::Result<(), wire::Malformed> {
    for field in wire::fields(bytes) {
        let field = field?;
        if !visit(field.number, field.raw) {
            break;
        }
    }
    Ok(())
}

/// One pass over a stored record's top level: whether it holds `delete_time`
/// (its field number), with the fields its derived ones are read from
/// (`Rules::DERIVED_FROM_FIELDS`) copied into `inputs`.
fn read_top_level<R: Resource>(stored: &[u8], delete_time: u32, inputs: &mut Vec<u8>) -> Result<bool> {
    let mut deleted = false;
    inputs.clear();
    for_each_top_level_field(stored, |number, field| {
        deleted |= number == delete_time;
        if R::DERIVED_FROM_FIELDS.contains(&number) {
            inputs.extend_from_slice(field);
        }
        true
    })
    .map_err(|e| undecodable(R::KIND, &e))?;
    Ok(deleted)
}

/// Appends a record to a `List…Response`'s repeated field: its stored bytes,
/// then `derived` (see [`Registry::encode_derived`]).
fn append_item(items: &mut Vec<u8>, stored: &[u8], derived: &[u8]) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    encode_key(ITEMS_FIELD, WireType::LengthDelimited, items);
    encode_varint((stored.len() + derived.len()) as u64, items);
    items.extend_from_slice(stored);
    items.extend_from_slice(derived);
}

/// Whether the encoded message `bytes` holds a field numbered `tag` at its top
/// level, read on the wire without decoding the message.
fn has_field(bytes: &[u8], tag: u32) -> std::result::Result<bool, wire::Malformed> {
    let mut found = false;
    for_each_top_level_field(bytes, |number, _| {
        found = number == tag;
        !found
    })?;
    Ok(found)
}

pub struct Registry {
    store: Arc<dyn Store>,
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
}

/// Locks writes to records are spread over (a name always maps to the same one).
const RECORD_LOCKS: usize = 1024;

/// Whether a write waits for its turn at the record (see `record_lock`).
/// Turns keep writes to one record from planning against the same read and
/// failing each other's conditions; a record's conditions are what keep it
/// right either way.
enum Turn {
    Take,
    /// The record's name was generated for this write: no other can be
    /// waiting for it. Waiting anyway was costly: turns are shared by hash,
    /// so a create could wait behind an unrelated one and reach the store
    /// after creates with later ids, and an id out of order costs the store
    /// a search and a split in every index set it joins.
    Unneeded,
}

/// A change planned from one read of the store.
struct Planned<R> {
    record: R,
    /// The revision of the record as stored before (0 for a creation).
    previous_revision: u64,
    kind: ChangeKind,
    ops: Vec<Op>,
    conditions: Vec<Condition>,
}

/// What [`Registry::validate`] finds in a record besides its violations.
struct Checked {
    references: Vec<Reference>,
    /// The record as validation read it: writes that move it between index
    /// sets read them from here rather than encode it again.
    encoded: Vec<u8>,
}

impl Checked {
    /// The index sets the record belongs in (see `index::entries`).
    fn index(&self, kind: &Kind) -> Result<BTreeSet<Vec<u8>>> {
        index::entries(kind, &self.encoded).map_err(Error::internal)
    }
}

/// How many records a scan visits between looks at the caller's deadline.
const DEADLINE_CHECK_INTERVAL: u64 = 64;

/// DEADLINE_EXCEEDED, with `message`, once `deadline` has passed.
fn check_deadline(deadline: Option<Instant>, message: impl FnOnce() -> String) -> Result<()> {
    match deadline {
        Some(deadline) if Instant::now() >= deadline => Err(Error::DeadlineExceeded { message: message() }),
        _ => Ok(()),
    }
}

/// What every record's key starts with, before its name.
const RECORD_PREFIX: &[u8] = b"r/";

fn record_key(name: &str) -> Vec<u8> {
    [RECORD_PREFIX, name.as_bytes()].concat()
}

/// What the keys of all the records of `kind` start with: a record's key is
/// this followed by its id.
fn collection_key(kind: &Kind) -> Vec<u8> {
    record_key(&kind.name_of(""))
}

/// The set of the records that refer to `target`.
fn referrers_set(target: &str) -> Vec<u8> {
    format!("x/{target}\0").into_bytes()
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

/// Records a quick List page (`Registry::list_encoded_quick`) may read for
/// each one it holds (and one more, to know whether another page follows).
const QUICK_PAGE_READS: usize = 2;

/// The largest quick page: a fraction of a millisecond of work on an async worker. A larger
/// one (up to MAX_PAGE_SIZE) would hold the worker, and every call waiting on
/// it, for milliseconds.
const QUICK_PAGE_MAX: usize = 100;

/// A List without a limit on its reads that gave up anyway.
fn gave_up() -> Error {
    Error::internal("a List that may read all it needs stopped short")
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
            request_retention: options.request_retention,
            shutdown: tokio::sync::watch::Sender::new(false),
            watchers: Default::default(),
            record_locks: (0..RECORD_LOCKS).map(|_| tokio::sync::Mutex::new(())).collect(),
            presented: presented::PresentedMemo::new(),
        };
        if registry.store.revision() == 0 {
            registry.seed().await?;
        }
        let schema = match registry.store.get(SCHEMA_KEY)? {
            Some(entry) => entry
                .value
                .try_into()
                .map(u32::from_be_bytes)
                .map_err(|_| Error::internal("corrupt registry schema"))?,
            None => 1,
        };
        if schema > REGISTRY_SCHEMA {
            return Err(Error::Unavailable {
                message: format!(
                    "the data dir holds registry schema {schema}, newer than the {REGISTRY_SCHEMA} this build knows; run a newer cooperation-registry"
                ),
            });
        }
        if schema < 3 {
            registry.rebuild_indexes().await?;
        }
        if schema < 4 {
            registry.keep_request_answers().await?;
        }
        if schema < REGISTRY_SCHEMA {
            let change = StoredChange { actor: MIGRATION_ACTOR.into(), commit_time: Some(now()), events: Vec::new() };
            let txn = Txn {
                ops: vec![Op::Put { key: SCHEMA_KEY.to_vec(), value: REGISTRY_SCHEMA.to_be_bytes().to_vec() }],
                change: change.encode_to_vec(),
                ..Default::default()
            };
            registry.store.commit(txn).await?;
            tracing::info!(from = schema, to = REGISTRY_SCHEMA, "upgraded the data dir's layout");
        }
        Ok(registry)
    }

    /// Schema 3: writes the index and reference sets of every record (for
    /// data dirs from before the indexes, or from when their entries were
    /// keys: those are removed first).
    async fn rebuild_indexes(&self) -> Result<()> {
        let migration = || {
            let change = StoredChange { actor: MIGRATION_ACTOR.into(), commit_time: Some(now()), events: Vec::new() };
            Txn { change: change.encode_to_vec(), ..Default::default() }
        };
        let mut removed = 0;
        // An upgrade of a large data dir takes minutes: say how far it is.
        let mut reported = Instant::now();
        let mut report = |stage: &str, done: usize| {
            if reported.elapsed() >= PROGRESS_INTERVAL {
                tracing::info!(stage, done, "upgrading the data dir to the set layout");
                reported = Instant::now();
            }
        };
        tracing::info!("upgrading the data dir: rebuilding the index and reference sets");
        for old in [&b"i/"[..], b"x/"] {
            // Each batch starts after the last key removed: sled keeps emptied
            // leaves for a while, and walking them again from the prefix each
            // time made the upgrade quadratic.
            let mut start = Vec::new();
            loop {
                let batch = self.store.scan(old, &start, 10_000)?;
                let Some((last, _)) = batch.last() else { break };
                start = key_after(last);
                removed += batch.len();
                report("old entries removed", removed);
                let mut txn = migration();
                txn.ops = batch.into_iter().map(|(key, _)| Op::Delete { key }).collect();
                self.store.commit(txn).await?;
            }
        }
        let mut written = 0;
        for kind in resource::KINDS {
            let prefix = collection_key(kind);
            let descriptor =
                DESCRIPTOR_POOL.get_message_by_name(kind.message).ok_or_else(|| Error::internal("descriptor"))?;
            let mut start = Vec::new();
            loop {
                let batch = self.store.scan(&prefix, &start, 500)?;
                let mut txn = migration();
                for (key, entry) in &batch {
                    let record = entry.value.as_slice();
                    let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                    let entries = index::entries(kind, record).map_err(Error::internal)?;
                    txn.ops.extend(move_member(id.as_bytes(), &BTreeSet::new(), &entries));
                    if !has_field(record, kind.delete_time_field()).map_err(Error::internal)? {
                        let references =
                            validate::check_encoded(record, &descriptor, kind.singular, &mut Violations::new())
                                .map_err(Error::internal)?;
                        txn.ops.extend(reference_ops(&kind.name_of(&id), &BTreeSet::new(), &targets(&references)));
                    }
                }
                written += batch.len();
                report("records indexed", written);
                if !txn.ops.is_empty() {
                    self.store.commit(txn).await?;
                }
                match batch.last() {
                    Some((key, _)) if batch.len() == 500 => start = key_after(key),
                    _ => break,
                }
            }
        }
        tracing::info!(records = written, old_entries_removed = removed, "rebuilt the index and reference sets");
        Ok(())
    }

    /// The revision of the last applied write.
    pub fn revision(&self) -> u64 {
        self.store.revision()
    }

    /// Resolves, with the cause, if the store fails to write (see
    /// `Store::failed`).
    pub fn failed(&self) -> impl std::future::Future<Output = crate::store::StoreError> + Send + 'static {
        self.store.failed()
    }

    /// WatchChanges streams open now.
    pub fn watchers(&self) -> usize {
        self.watchers.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes the store occupies.
    pub fn store_bytes(&self) -> Result<u64> {
        self.store.size_on_disk().map_err(Error::from)
    }

    /// The pauses the store took to bound its start time.
    pub fn checkpoints(&self) -> crate::store::Checkpoints {
        self.store.checkpoints()
    }

    pub fn read_cache(&self) -> crate::store::ReadCacheStats {
        self.store.read_cache()
    }

    /// The flushes the store's writes waited for.
    pub fn store_flushes(&self) -> u64 {
        self.store.flushes()
    }

    /// Ends every watcher (with UNAVAILABLE and the revision to resume from),
    /// so a graceful shutdown need not wait for open streams.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Writes a consistent backup of everything to `out` (see
    /// `store::backup`); returns the revision it reflects.
    pub fn backup(&self, out: std::sync::mpsc::SyncSender<Vec<u8>>) -> Result<u64> {
        self.store.backup(out).map_err(Error::from)
    }

    /// Flushes and closes the store; later writes fail with UNAVAILABLE.
    pub fn close(&self) -> Result<()> {
        self.store.close().map_err(Error::from)
    }

    async fn seed(&self) -> Result<()> {
        let time = now();
        let mut txn = Txn::default();
        let mut change = StoredChange { actor: SEED_ACTOR.into(), commit_time: Some(time), events: Vec::new() };
        for (id, mut party) in party::iso_states() {
            party.name = resource::PARTY.name_of(&id);
            party.create_time = Some(time);
            party.update_time = Some(time);
            let bytes = party.encode_to_vec();
            let entries = index::entries(&resource::PARTY, &bytes).map_err(Error::internal)?;
            txn.ops.extend(move_member(id.as_bytes(), &BTreeSet::new(), &entries));
            txn.conditions.push(Condition::ModRevision { key: record_key(&party.name), equals: 0 });
            txn.ops.push(Op::Put { key: record_key(&party.name), value: bytes.clone() });
            change.events.push(StoredEvent {
                kind: ChangeKind::Created as i32,
                name: party.name,
                record: bytes,
                previous_revision: 0,
            });
        }
        txn.ops.push(Op::Put { key: SCHEMA_KEY.to_vec(), value: REGISTRY_SCHEMA.to_be_bytes().to_vec() });
        txn.change = change.encode_to_vec();
        match self.store.commit(txn).await? {
            Outcome::Committed { revision } => {
                tracing::info!(revision, "wrote the ISO 3166-1 states into the new data dir");
                Ok(())
            }
            Outcome::ConditionFailed => Err(Error::internal("the new data dir already holds parties")),
        }
    }

    /// Sets what is derived on read: the etag from the revision that wrote the
    /// record, and output-only fields as of today.
    fn present<R: Resource>(&self, record: &mut R, revision: u64, as_of: &Date) {
        record.set_etag(etag_of(revision));
        record.derive(as_of);
    }

    /// The stored record and its revision.
    fn read<R: Resource>(&self, name: &str) -> Result<(R, u64)> {
        let entry = self.read_entry::<R>(name)?;
        Ok((decode(&entry.value)?, entry.mod_revision))
    }

    /// The stored entry of `name`, its record still encoded.
    fn read_entry<R: Resource>(&self, name: &str) -> Result<crate::store::Entry> {
        self.store
            .get(&record_key(name))?
            .ok_or_else(|| Error::NotFound { resource_type: R::KIND.resource_type.into(), name: name.into() })
    }

    /// Checks `name` as a name of `R`, reporting it as `field`.
    fn check_name<R: Resource>(name: &str, field: &str) -> Result<()> {
        R::KIND.parse_name(name).map(|_| ()).map_err(|e| Error::invalid(field, e))
    }

    pub async fn get<R: Resource>(&self, name: &str, as_of: Option<&Date>) -> Result<R> {
        let (entry, as_of) = self.read_for_get::<R>(name, as_of).await?;
        let mut record: R = decode(&entry.value)?;
        self.present(&mut record, entry.mod_revision, &as_of);
        Ok(record)
    }

    /// What [`Registry::get`] answers, as the encoded message: the stored
    /// bytes with the etag and the derived fields appended, so that serving a
    /// record does not decode and re-encode it.
    pub async fn get_encoded<R: Resource>(&self, name: &str, as_of: Option<&Date>) -> Result<Vec<u8>> {
        let as_of = Self::check_get::<R>(name, as_of)?;
        // Written straight from the stored value, with what is appended to it
        // kept as a List page keeps it: no copy of the entry, no derivation
        // for a record read again at the same revision and day.
        let mut answer = Ok(Vec::new());
        let mut revision = 0;
        let found = self.store.read(&record_key(name), &mut |stored, stored_revision| {
            revision = stored_revision;
            answer = self.shown::<R>(name.as_bytes(), stored, stored_revision, &as_of).map(|shown| {
                let mut bytes = Vec::with_capacity(stored.len() + shown.appended.len());
                bytes.extend_from_slice(stored);
                bytes.extend_from_slice(&shown.appended);
                bytes
            });
        })?;
        if !found {
            return Err(Error::NotFound { resource_type: R::KIND.resource_type.into(), name: name.into() });
        }
        self.store.wait_durable(revision).await?;
        answer
    }

    /// A Get's checks: the name, and the day to derive fields for.
    fn check_get<R: Resource>(name: &str, as_of: Option<&Date>) -> Result<Date> {
        let mut violations = Violations::new();
        if let Err(e) = R::KIND.parse_name(name) {
            violations.add("name", e);
        }
        let as_of = as_of_day(as_of, &mut violations);
        violations.into_result()?;
        Ok(as_of)
    }

    /// A Get's checks and read: the stored entry once durable, and the day
    /// to derive fields for.
    async fn read_for_get<R: Resource>(&self, name: &str, as_of: Option<&Date>) -> Result<(crate::store::Entry, Date)> {
        let as_of = Self::check_get::<R>(name, as_of)?;
        let Some(entry) = self.store.get(&record_key(name))? else {
            return Err(Error::NotFound { resource_type: R::KIND.resource_type.into(), name: name.into() });
        };
        self.store.wait_durable(entry.mod_revision).await?;
        Ok((entry, as_of))
    }

    /// What is shown of the record `name` beyond its stored bytes at
    /// `revision` as of `as_of` (its deletion, its derived fields and etag
    /// encoded), kept for the records read again and again.
    fn shown<R: Resource>(&self, name: &[u8], stored: &[u8], revision: u64, as_of: &Date) -> Result<presented::Shown> {
        if let Some(shown) = self.presented.get(name, revision, as_of) {
            return Ok(shown);
        }
        let mut inputs = Vec::new();
        let deleted = read_top_level::<R>(stored, R::KIND.delete_time_field(), &mut inputs)?;
        let mut derived = Vec::new();
        Self::encode_derived::<R>(&inputs, revision, as_of, &mut derived)?;
        let shown = presented::Shown { deleted, appended: derived.into() };
        self.presented.keep(name, revision, as_of, shown.clone());
        Ok(shown)
    }

    /// Appends to `out` what [`Registry::present`] sets, encoded: the fields
    /// derived as of `as_of`, then the etag. Appended to the stored bytes, it
    /// gives the record as presented (a later occurrence of a field wins),
    /// without building a record (a List page does this for each of its).
    fn encode_derived<R: Resource>(stored: &[u8], revision: u64, as_of: &Date, out: &mut Vec<u8>) -> Result<()> {
        R::encode_derived(stored, as_of, out).map_err(|e| undecodable(R::KIND, &e))?;
        prost::encoding::string::encode(R::etag_field(), &etag_of(revision), out);
        Ok(())
    }

    pub async fn list<R: Resource>(&self, query: &ListQuery) -> Result<Page<R>> {
        let found = self.list_items::<R>(query, false, None).await?.ok_or_else(gave_up)?;
        let items = match found.rows {
            Rows::Records(rows) => rows.into_iter().map(|(_, record)| record).collect(),
            // (Only a List asked for encoded records is answered that way.)
            Rows::Encoded(_) => return Err(Error::internal("a List of decoded records was answered encoded")),
        };
        Ok(Page { items, next_page_token: found.next_page_token, revision: found.revision })
    }

    /// What [`Registry::list`] answers, its records already encoded as the
    /// response's repeated field. A page in name order that the indexes
    /// answer exactly (or with no filter) is made of the stored bytes with
    /// the etag and derived fields appended, without decoding a record.
    pub async fn list_encoded<R: Resource>(&self, query: &ListQuery) -> Result<EncodedPage> {
        let found = self.list_items::<R>(query, true, None).await?.ok_or_else(gave_up)?;
        Ok(Self::encoded_page(found))
    }

    /// [`Registry::list_encoded`] when the page takes little work: a filter
    /// the indexes answer exactly (or none), in name order, a page of at most
    /// QUICK_PAGE_MAX records, found among at most twice as many records as
    /// it holds (more are read only where many are soft-deleted). `None`
    /// otherwise, having read at most that many: such a page is for the
    /// caller to run where long work is admitted.
    pub async fn list_encoded_quick<R: Resource>(&self, query: &ListQuery) -> Result<Option<EncodedPage>> {
        Ok(self.list_items::<R>(query, true, Some(QUICK_PAGE_READS)).await?.map(Self::encoded_page))
    }

    fn encoded_page<R: Resource>(found: Found<R>) -> EncodedPage {
        let items = match found.rows {
            Rows::Encoded(bytes) => bytes,
            Rows::Records(rows) => {
                let mut bytes = Vec::new();
                for (_, record) in &rows {
                    prost::encoding::message::encode(ITEMS_FIELD, record, &mut bytes);
                }
                bytes
            }
        };
        Page { items, next_page_token: found.next_page_token, revision: found.revision }
    }

    /// The page a List asks for, encoded if `encoded` and the page allows.
    /// With `quick_reads` (records it may read for each one the page holds),
    /// `None` when the page needs more work than a quick page (see
    /// [`Registry::list_encoded_quick`]).
    async fn list_items<R: Resource>(
        &self,
        query: &ListQuery,
        encoded: bool,
        quick_reads: Option<usize>,
    ) -> Result<Option<Found<R>>> {
        let mut violations = Violations::new();
        if query.page_size < 0 {
            violations.add("page_size", format!("must not be negative (got {})", query.page_size));
        }
        let descriptor = R::default().descriptor();
        let filter = Filter::compile(&query.filter, &descriptor).unwrap_or_else(|e| {
            violations.add("filter", e.to_string());
            Filter::everything()
        });
        let order = OrderBy::parse(&query.order_by, &descriptor).unwrap_or_else(|e| {
            violations.add("order_by", e);
            OrderBy::default()
        });
        let as_of = as_of_day(query.as_of.as_ref(), &mut violations);
        violations.into_result()?;
        let size = match query.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let show_deleted: &[u8] = if query.show_deleted { b"deleted" } else { b"live" };
        let as_of_text = dates::display(&as_of);
        let fingerprint = paging::fingerprint(&[
            R::KIND.collection.as_bytes(),
            show_deleted,
            query.filter.as_bytes(),
            query.order_by.as_bytes(),
            as_of_text.as_bytes(),
        ]);
        let bad_token = || Error::invalid("page_token", "is not a page token this server issued");
        let cursor =
            match paging::decode(&query.page_token, fingerprint).map_err(|e| Error::invalid("page_token", e))? {
                Some(bytes) => Some(order::decode_cursor(&bytes, order.key_count()).ok_or_else(bad_token)?),
                None => None,
            };

        // Stored bytes as they are, in name order, and nothing to test but
        // deletion: the one kind of page whose work the page size bounds.
        let answers_exactly = index::answers_exactly(R::KIND, &filter);
        let as_stored = encoded && order.is_by_name() && (filter.matches_everything() || answers_exactly);
        if quick_reads.is_some() && (!as_stored || size > QUICK_PAGE_MAX) {
            return Ok(None);
        }
        // Read before the scan: every change up to it is visible to the scan.
        let read_at = self.store.revision();
        let candidates = index::candidates(&*self.store, R::KIND, &filter)?;
        // Each candidate: derive as of the day, then the deleted check, then the
        // filter (skipped, with its transcoding, when it matches everything).
        let visible = |record: &mut R, revision: u64| {
            self.present(record, revision, &as_of);
            query.show_deleted || record.delete_time().is_none()
        };
        let mut more = false;
        // A filter the index answers exactly needs no test (nor its transcoding).
        let test_filter = !(filter.matches_everything() || (candidates.is_some() && answers_exactly));
        let after = cursor.as_ref().map(|(_, name)| name.as_str());
        let most_reads = quick_reads.map(|per_record| per_record * (size + 1));
        let mut gave_up = false;
        let (rows, newest, last) = if as_stored && !test_filter {
            // Nothing to test but deletion: the stored bytes as they are,
            // each appended to the response with its derived fields.
            let mut items = Vec::new();
            let mut count = 0;
            let mut last = Vec::new();
            let mut reads = 0;
            let newest =
                self.scan_stored::<R>(candidates.as_ref(), after, query.deadline, |name, stored, revision| {
                    reads += 1;
                    if most_reads.is_some_and(|most| reads > most) {
                        gave_up = true;
                        return Ok(false);
                    }
                    let shown = self.shown::<R>(name, stored, revision, &as_of)?;
                    if query.show_deleted || !shown.deleted {
                        if count == size {
                            more = true;
                            return Ok(false);
                        }
                        if count == 0 {
                            // Records of a kind are alike in size: room for the
                            // page at once, each a quarter larger than the first
                            // (growing the buffer copies all of it).
                            items.reserve((stored.len() + stored.len() / 4 + 32) * size);
                        }
                        append_item(&mut items, stored, &shown.appended);
                        count += 1;
                        last.clear();
                        last.extend_from_slice(name);
                    }
                    Ok(true)
                })?;
            let last = match count {
                0 => None,
                _ => Some((Vec::new(), String::from_utf8(last).map_err(Error::internal)?)),
            };
            (Rows::Encoded(items), newest, last)
        } else {
            let mut rows: Vec<(Vec<order::SortValue>, R)> = Vec::new();
            let newest = if order.is_by_name() {
                self.scan::<R>(candidates.as_ref(), after, query.deadline, |mut record, revision| {
                    if visible(&mut record, revision)
                        && (!test_filter || filter.matches(&record.transcode_to_dynamic()))
                    {
                        if rows.len() == size {
                            more = true;
                            return false;
                        }
                        rows.push((Vec::new(), record));
                    }
                    true
                })?
            } else {
                // Every candidate is read; a page's worth (and one to tell
                // whether there are more) after the cursor is kept.
                let mut best = order::Best::new(size + 1, |a: &(Vec<order::SortValue>, R), b: &(_, R)| {
                    order.compare((&a.0, a.1.name()), (&b.0, b.1.name()))
                });
                let newest = self.scan::<R>(candidates.as_ref(), None, query.deadline, |mut record, revision| {
                    if visible(&mut record, revision) {
                        let dynamic = record.transcode_to_dynamic();
                        if filter.matches(&dynamic) {
                            let values = order.sort_key(&dynamic);
                            let after_cursor = cursor.as_ref().is_none_or(|(at_values, at_name)| {
                                order.compare((&values, record.name()), (at_values, at_name)).is_gt()
                            });
                            if after_cursor {
                                best.offer((values, record));
                            }
                        }
                    }
                    true
                })?;
                rows = best.into_sorted();
                more = rows.len() > size;
                rows.truncate(size);
                newest
            };
            let last = rows.last().map(|(values, record)| (values.clone(), record.name().to_string()));
            (Rows::Records(rows), newest, last)
        };
        if gave_up {
            return Ok(None);
        }
        self.store.wait_durable(newest.max(read_at)).await?;
        let next_page_token = match (more, last) {
            (true, Some((values, name))) => paging::encode(fingerprint, &order::encode_cursor(&values, &name)),
            _ => String::new(),
        };
        Ok(Some(Found { rows, next_page_token, revision: read_at }))
    }

    /// Every record of `R` that `filter` matches as of `as_of`, live ones only,
    /// in name order, answered from an index when the filter allows; stops
    /// with DEADLINE_EXCEEDED once `deadline` has passed.
    pub fn query<R: Resource>(&self, filter: &Filter, as_of: &Date, deadline: Option<Instant>) -> Result<Vec<R>> {
        let candidates = index::candidates(&*self.store, R::KIND, filter)?;
        let mut found = Vec::new();
        self.scan::<R>(candidates.as_ref(), None, deadline, |mut record, revision| {
            self.present(&mut record, revision, as_of);
            if record.delete_time().is_none() && filter.matches(&record.transcode_to_dynamic()) {
                found.push(record);
            }
            true
        })?;
        Ok(found)
    }

    /// Visits records of `R` in name order after `after` (a name): those with
    /// the ids in `candidates`, or all of them. Stops when `visit` says false,
    /// and with DEADLINE_EXCEEDED once `deadline` has passed (the caller has
    /// stopped waiting: the rest of the scan would be wasted).
    /// Returns the highest revision visited.
    fn scan<R: Resource>(
        &self,
        candidates: Option<&index::Candidates>,
        after: Option<&str>,
        deadline: Option<Instant>,
        mut visit: impl FnMut(R, u64) -> bool,
    ) -> Result<u64> {
        self.scan_stored::<R>(candidates, after, deadline, |_, bytes, revision| Ok(visit(decode(bytes)?, revision)))
    }

    /// [`Registry::scan`] with each record's name (its bytes, as the keys hold
    /// them: checking the UTF-8 of each cost a page about as much as reading
    /// its records from the read cache) and stored bytes, undecoded and lent.
    fn scan_stored<R: Resource>(
        &self,
        candidates: Option<&index::Candidates>,
        after: Option<&str>,
        deadline: Option<Instant>,
        mut visit: impl FnMut(&[u8], &[u8], u64) -> Result<bool>,
    ) -> Result<u64> {
        let mut newest = 0;
        let mut visited = 0u64;
        let mut visit = |name: &[u8], bytes: &[u8], revision: u64| -> Result<bool> {
            visited += 1;
            if visited % DEADLINE_CHECK_INTERVAL == 0 {
                check_deadline(deadline, || {
                    format!(
                        "the call's deadline passed after {visited} records were examined; narrow the filter or allow more time"
                    )
                })?;
            }
            newest = newest.max(revision);
            visit(name, bytes, revision)
        };
        let after_id = match after {
            Some(name) => Some(
                R::KIND
                    .parse_name(name)
                    .map_err(|_| Error::invalid("page_token", "is not a page token this server issued"))?,
            ),
            None => None,
        };
        let prefix = collection_key(R::KIND);
        if let Some(candidates) = candidates {
            let mut failure = None;
            // Each candidate's key, put together in one buffer rather than
            // formatted anew for each record of a page.
            let mut key = prefix;
            let id_at = key.len();
            candidates.for_each(&*self.store, after_id, &mut |id| {
                key.truncate(id_at);
                key.extend_from_slice(id);
                let mut visited = Ok(true);
                let read = self.store.read(&key, &mut |bytes, revision| {
                    visited = visit(&key[RECORD_PREFIX.len()..], bytes, revision);
                });
                read.map_err(Error::from).and(visited).unwrap_or_else(|e| {
                    failure = Some(e);
                    false
                })
            })?;
            return failure.map_or(Ok(newest), Err);
        }
        let start = match after_id {
            Some(id) => key_after(&[prefix.as_slice(), id.as_bytes()].concat()),
            None => Vec::new(),
        };
        crate::store::for_each_entry(&*self.store, &prefix, &start, |key, entry| {
            visit(&key[RECORD_PREFIX.len()..], &entry.value, entry.mod_revision)
        })?;
        Ok(newest)
    }

    pub async fn create<R: Resource>(&self, id: &str, resource: R, mutation: &Mutation) -> Result<R> {
        let kind = R::KIND;
        let mut violations = Violations::new();
        // A name generated here needs no turn (see `Turn::Unneeded`).
        let (id, turn) = if id.is_empty() {
            (kind.generate_id(), Turn::Unneeded)
        } else {
            if let Err(e) = resource::check_id(id) {
                violations.add(format!("{}_id", kind.singular), e);
            }
            (id.to_string(), Turn::Take)
        };
        let name = kind.name_of(&id);
        let mut record = without_output_only(resource)?;
        record.set_name(name.clone());
        record.normalize();
        let checked = self.validate(&record, &mut violations)?;
        let index = checked.index(kind)?;
        // The first attempt takes the record; another (after a conflict) reads
        // it back from its validated encoding.
        let mut first = Some(record);

        self.mutate(&name, turn, mutation, || {
            let mut violations = violations.clone();
            let mut conditions = vec![Condition::ModRevision { key: record_key(&name), equals: 0 }];
            self.check_targets(&checked.references, &mut violations, &mut conditions)?;
            violations.clone().into_result()?;
            if self.store.get(&record_key(&name))?.is_some() {
                return Err(Error::AlreadyExists { resource_type: kind.resource_type.into(), name: name.clone() });
            }
            let mut record = match first.take() {
                Some(record) => record,
                None => decode(&checked.encoded)?,
            };
            let time = now();
            record.set_create_time(Some(time));
            record.set_update_time(Some(time));
            let mut ops = reference_ops(&name, &BTreeSet::new(), &targets(&checked.references));
            ops.extend(move_member(id.as_bytes(), &BTreeSet::new(), &index));
            Ok(Planned { record, previous_revision: 0, kind: ChangeKind::Created, ops, conditions })
        })
        .await
    }

    pub async fn update<R: Resource>(
        &self,
        resource: R,
        mask_paths: &[String],
        etag: &str,
        mutation: &Mutation,
    ) -> Result<R> {
        let kind = R::KIND;
        let name = resource.name().to_string();
        Self::check_name::<R>(&name, &format!("{}.name", kind.singular))?;
        let patch = without_output_only(resource)?;

        self.mutate(&name, Turn::Take, mutation, || {
            let entry = self.read_entry::<R>(&name)?;
            let (stored, revision): (R, u64) = (decode(&entry.value)?, entry.mod_revision);
            if stored.delete_time().is_some() {
                return Err(deleted_error(&name, "update"));
            }
            if !etag.is_empty() && etag != etag_of(revision) {
                return Err(Error::EtagMismatch { name: name.clone() });
            }
            let mut record = mask::apply(&entry.value, &patch, mask_paths, "update_mask").map_err(into_invalid)?;
            record.set_name(name.clone());
            record.normalize();
            let mut violations = Violations::new();
            let checked = self.validate(&record, &mut violations)?;
            let mut conditions = vec![Condition::ModRevision { key: record_key(&name), equals: revision }];
            self.check_targets(&checked.references, &mut violations, &mut conditions)?;
            violations.into_result()?;
            record.set_create_time(stored.create_time().cloned());
            record.set_update_time(Some(now()));
            let before = self.validate_encoded(&stored, entry.value, &mut Violations::new())?;
            let mut ops = reference_ops(&name, &targets(&before.references), &targets(&checked.references));
            let id = kind.parse_name(&name).map_err(Error::internal)?;
            ops.extend(move_member(id.as_bytes(), &before.index(kind)?, &checked.index(kind)?));
            Ok(Planned { record, previous_revision: revision, kind: ChangeKind::Updated, ops, conditions })
        })
        .await
    }

    pub async fn delete<R: Resource>(&self, name: &str, etag: &str, mutation: &Mutation) -> Result<R> {
        Self::check_name::<R>(name, "name")?;
        self.mutate(name, Turn::Take, mutation, || {
            let (mut record, revision) = self.read::<R>(name)?;
            if record.delete_time().is_some() {
                return Err(deleted_error(name, "delete"));
            }
            if !etag.is_empty() && etag != etag_of(revision) {
                return Err(Error::EtagMismatch { name: name.into() });
            }
            // Read the revision before the referrers: any referrer added after it
            // fails the condition below.
            let seen = self.store.revision();
            let prefix = referrers_set(name);
            let referrers = self.store.members(&prefix, &[], 11)?;
            if !referrers.is_empty() {
                let names: Vec<String> =
                    referrers.iter().map(|k| String::from_utf8_lossy(&k[prefix.len()..]).into_owned()).collect();
                let shown = names.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
                let more = if names.len() > 10 { " and more" } else { "" };
                return Err(Error::FailedPrecondition {
                    reason: "RESOURCE_REFERENCED".into(),
                    message: format!("{name} cannot be deleted while live records refer to it: {shown}{more}"),
                    violations: names
                        .into_iter()
                        .take(10)
                        .map(|n| PreconditionViolation {
                            kind: "REFERENCED_BY".into(),
                            subject: n.clone(),
                            description: format!("{n} refers to {name}; change or delete it first"),
                        })
                        .collect(),
                });
            }
            let conditions = vec![
                Condition::ModRevision { key: record_key(name), equals: revision },
                Condition::NoneWrittenAfter { prefix, revision: seen },
            ];
            let outgoing = targets(&self.validate(&record, &mut Violations::new())?.references);
            let ops = reference_ops(name, &outgoing, &BTreeSet::new());
            let time = now();
            record.set_delete_time(Some(time));
            record.set_update_time(Some(time));
            Ok(Planned { record, previous_revision: revision, kind: ChangeKind::Deleted, ops, conditions })
        })
        .await
    }

    pub async fn undelete<R: Resource>(&self, name: &str, etag: &str, mutation: &Mutation) -> Result<R> {
        Self::check_name::<R>(name, "name")?;
        self.mutate(name, Turn::Take, mutation, || {
            let (mut record, revision) = self.read::<R>(name)?;
            if record.delete_time().is_none() {
                return Err(Error::FailedPrecondition {
                    reason: "RESOURCE_NOT_DELETED".into(),
                    message: format!("{name} is not deleted"),
                    violations: Vec::new(),
                });
            }
            if !etag.is_empty() && etag != etag_of(revision) {
                return Err(Error::EtagMismatch { name: name.into() });
            }
            let references = self.validate(&record, &mut Violations::new())?.references;
            let mut conditions = vec![Condition::ModRevision { key: record_key(name), equals: revision }];
            let mut missing = Violations::new();
            self.check_targets(&references, &mut missing, &mut conditions)?;
            if let Err(Error::InvalidArgument { violations }) = missing.into_result() {
                let listed = violations.iter().map(|v| v.description.clone()).collect::<Vec<_>>().join("; ");
                return Err(Error::FailedPrecondition {
                    reason: "REFERENCE_MISSING".into(),
                    message: format!("{name} cannot be restored while records it refers to are missing: {listed}"),
                    violations: violations
                        .into_iter()
                        .map(|v| PreconditionViolation {
                            kind: "REFERENCE_MISSING".into(),
                            subject: v.field,
                            description: v.description,
                        })
                        .collect(),
                });
            }
            let ops = reference_ops(name, &BTreeSet::new(), &targets(&references));
            record.set_delete_time(None);
            record.set_update_time(Some(now()));
            Ok(Planned { record, previous_revision: revision, kind: ChangeKind::Undeleted, ops, conditions })
        })
        .await
    }

    /// The lock that writes to the record `name` hold from their read to their
    /// commit. Without it, concurrent writes to one record all read the same
    /// revision and all but one fail their condition and start again, so under
    /// enough of them (the service benchmark updates one agreement from every
    /// connection) some would run out of attempts with ABORTED; in turn, each
    /// commits at its first attempt. A turn ends once the write is applied, not
    /// once it is durable: the next write to the record is planned while this
    /// one is flushed, or sooner, and shares its flush when it reaches the
    /// store's writer in time (a turn that lasted until durable would give each
    /// write to a record a flush of its own).
    fn record_lock(&self, name: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(name);
        &self.record_locks[(hash % RECORD_LOCKS as u64) as usize]
    }

    /// Runs `plan` against a fresh read and commits its writes, the record, the
    /// change-log entry and the request entry as one transaction, until it
    /// commits or `plan` fails. Writes to `name` take turns unless `turn` says none is needed.
    async fn mutate<R: Resource>(
        &self,
        name: &str,
        turn: Turn,
        mutation: &Mutation,
        mut plan: impl FnMut() -> Result<Planned<R>>,
    ) -> Result<R> {
        if !mutation.request_id.is_empty() && uuid::Uuid::try_parse(&mutation.request_id).is_err() {
            return Err(Error::invalid(
                "request_id",
                format!("must be a UUID such as 123e4567-e89b-12d3-a456-426614174000 (got {:?})", mutation.request_id),
            ));
        }
        let turn = match turn {
            Turn::Take => Some(self.record_lock(name).lock().await),
            Turn::Unneeded => None,
        };
        for _ in 0..MAX_ATTEMPTS {
            let slot = match self.earlier_request::<R>(mutation).await? {
                idempotency::Earlier::Answered(answer) => return Ok(answer),
                idempotency::Earlier::New(slot) => slot,
            };
            let Planned { mut record, previous_revision, kind, mut ops, mut conditions } = plan()?;
            let name = record.name().to_string();
            let bytes = record.encode_to_vec();
            let commit_time = now();
            if let Some(slot) = slot {
                slot.keep(mutation, &name, &bytes, commit_time, &mut conditions, &mut ops);
            }
            ops.push(Op::Put { key: record_key(&name), value: bytes.clone() });
            let change = StoredChange {
                actor: mutation.actor.clone(),
                commit_time: Some(commit_time),
                events: vec![StoredEvent { kind: kind as i32, name, record: bytes, previous_revision }],
            };
            let txn = Txn { conditions, ops, change: change.encode_to_vec() };
            check_deadline(mutation.deadline, || {
                "the call's deadline passed before the change was written; nothing was changed".into()
            })?;
            let Applied { outcome, durable } = self.store.apply(txn).await?;
            match outcome {
                Outcome::Committed { revision } => {
                    drop(turn);
                    durable.await?;
                    self.present(&mut record, revision, &dates::today());
                    return Ok(record);
                }
                Outcome::ConditionFailed => continue,
            }
        }
        Err(Error::Conflict { name: format!("the {} in this request", R::KIND.singular) })
    }

    /// Checks a record against its annotations and its kind's rules, adding
    /// violations with paths from the request (`agreement.title`), and returns
    /// the names it refers to and its encoding (for its index sets).
    fn validate<R: Resource>(&self, record: &R, violations: &mut Violations) -> Result<Checked> {
        self.validate_encoded(record, record.encode_to_vec(), violations)
    }

    /// [`Self::validate`] with the record's encoding at hand (a stored one).
    fn validate_encoded<R: Resource>(
        &self,
        record: &R,
        encoded: Vec<u8>,
        violations: &mut Violations,
    ) -> Result<Checked> {
        let prefix = R::KIND.singular;
        let references =
            validate::check_encoded(&encoded, &record.descriptor(), prefix, violations).map_err(Error::internal)?;
        let mut own = Violations::new();
        record.check(&mut own);
        violations.extend(own.prefixed(prefix));
        Ok(Checked { references, encoded })
    }

    /// Adds a violation for every reference to a missing or deleted record, and
    /// a condition that each live one is unchanged at commit.
    fn check_targets(
        &self,
        references: &[Reference],
        violations: &mut Violations,
        conditions: &mut Vec<Condition>,
    ) -> Result<()> {
        // Each distinct target is read once (an agreement names its parties
        // again as its signatories' parties).
        let mut problems: std::collections::BTreeMap<&str, Option<&'static str>> = Default::default();
        for reference in references {
            let problem = match problems.get(reference.name.as_str()) {
                Some(problem) => *problem,
                None => {
                    let problem = self.target_problem(&reference.name, conditions)?;
                    problems.insert(&reference.name, problem);
                    problem
                }
            };
            if let Some(problem) = problem {
                violations.add(&reference.field, format!("{} {problem}", reference.name));
            }
        }
        Ok(())
    }

    /// What is wrong with `name` as the target of a reference (None when it is
    /// live, and then a condition that it is unchanged at commit is added).
    fn target_problem(&self, name: &str, conditions: &mut Vec<Condition>) -> Result<Option<&'static str>> {
        let key = record_key(name);
        Ok(match self.store.get(&key)? {
            None => Some("does not exist"),
            Some(entry) if is_deleted(name, &entry.value)? => Some("is deleted"),
            Some(entry) => {
                conditions.push(Condition::ModRevision { key, equals: entry.mod_revision });
                None
            }
        })
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

/// Whether the stored record under `name` is soft-deleted, whatever its kind.
fn is_deleted(name: &str, bytes: &[u8]) -> Result<bool> {
    let kind = resource::kind_of_name(name).ok_or_else(|| Error::internal(format!("no kind for {name}")))?;
    has_field(bytes, kind.delete_time_field()).map_err(|e| undecodable(kind, &e))
}

/// The request's resource without the fields the server sets (OUTPUT_ONLY);
/// as it came when it had none, as clients' resources usually do (stripping
/// only removes bytes).
fn without_output_only<R: Resource>(resource: R) -> Result<R> {
    let encoded = resource.encode_to_vec();
    let stripped = validate::strip_output_only(&encoded, &resource.descriptor())
        .map_err(|e| Error::internal(format!("an encoded request does not parse: {e}")))?;
    match stripped.len() == encoded.len() {
        true => Ok(resource),
        false => decode(&stripped),
    }
}

fn into_invalid(violations: Violations) -> Error {
    violations.into_result().err().unwrap_or_else(|| Error::internal("empty violations"))
}

fn deleted_error(name: &str, action: &str) -> Error {
    Error::FailedPrecondition {
        reason: "RESOURCE_DELETED".into(),
        message: format!("{name} is deleted; undelete it before you {action} it"),
        violations: Vec::new(),
    }
}

/// Store writes that move `source`'s references from the targets `before` to `after`.
fn reference_ops(source: &str, before: &BTreeSet<String>, after: &BTreeSet<String>) -> Vec<Op> {
    let sets = |targets: &BTreeSet<String>| targets.iter().map(|t| referrers_set(t)).collect();
    move_member(source.as_bytes(), &sets(before), &sets(after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::cooperation::v1::{Agreement, Party};
    use crate::store::memory::MemoryStore;
    use prost_reflect::ReflectMessage;

    /// A write by the anonymous caller, without a request id or deadline.
    fn anonymous(method: &'static str) -> Mutation {
        Mutation { actor: ANONYMOUS.into(), request_id: String::new(), method, fingerprint: 0, deadline: None }
    }

    /// A bilateral agreement between India and Japan, as a client sends it.
    fn india_japan() -> Agreement {
        Agreement {
            title: "Reciprocal provision of supplies and services".into(),
            parties: vec!["parties/ind".into(), "parties/jpn".into()],
            instrument_type: 1,
            ..Default::default()
        }
    }

    /// A data dir of schema 2, whose index and reference entries were keys,
    /// is upgraded when opened: the old keys go, and the sets answer Lists
    /// and keep a referenced party from being deleted.
    #[tokio::test]
    async fn a_schema_2_data_dir_is_upgraded_to_sets() {
        let store = Arc::new(MemoryStore::new());
        Registry::open(store.clone()).await.unwrap();
        let agreement = Agreement {
            name: "agreements/a1".into(),
            title: "Reciprocal provision of supplies and services".into(),
            parties: vec!["parties/ind".into(), "parties/jpn".into()],
            instrument_type: 1,
            create_time: Some(now()),
            update_time: Some(now()),
            ..Default::default()
        };
        let key_of = |set: &[u8], member: &str| Op::Put { key: [set, member.as_bytes()].concat(), value: Vec::new() };
        let mut ops = vec![Op::Put { key: record_key(&agreement.name), value: agreement.encode_to_vec() }];
        ops.extend(
            index::entries(&resource::AGREEMENT, &agreement.encode_to_vec())
                .unwrap()
                .iter()
                .map(|set| key_of(set, "a1")),
        );
        ops.push(key_of(&referrers_set("parties/ind"), "agreements/a1"));
        ops.push(key_of(&referrers_set("parties/jpn"), "agreements/a1"));
        ops.push(Op::Put { key: SCHEMA_KEY.to_vec(), value: 2u32.to_be_bytes().to_vec() });
        store.commit(Txn { ops, ..Default::default() }).await.unwrap();
        assert!(!store.scan(b"i/", b"", 10).unwrap().is_empty());

        let registry = Registry::open(store.clone()).await.unwrap();
        assert!(store.scan(b"i/", b"", 10).unwrap().is_empty(), "old index keys removed");
        assert!(store.scan(b"x/", b"", 10).unwrap().is_empty(), "old reference keys removed");
        assert_eq!(store.get(SCHEMA_KEY).unwrap().unwrap().value, REGISTRY_SCHEMA.to_be_bytes());
        assert_eq!(
            store.members(b"x/parties/jpn\0", b"", 10).unwrap().to_vec(),
            [b"x/parties/jpn\0agreements/a1".to_vec()]
        );
        let query = ListQuery { filter: "parties:\"parties/ind\"".into(), ..Default::default() };
        let page = registry.list::<Agreement>(&query).await.unwrap();
        assert_eq!(page.items.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["agreements/a1"]);
        let query = ListQuery { filter: "kind = STATE".into(), page_size: 1000, ..Default::default() };
        assert!(registry.list::<Party>(&query).await.unwrap().items.len() > 200, "the seeded parties' sets too");
        let mutation = anonymous("DeleteParty");
        let refused = registry.delete::<Party>("parties/ind", "", &mutation).await.unwrap_err();
        assert!(
            matches!(refused, Error::FailedPrecondition { ref reason, .. } if reason == "RESOURCE_REFERENCED"),
            "{refused:?}"
        );
    }

    /// Several indexed conditions find only what every one of them finds:
    /// India and Japan are the agreements both parties' sets hold, not all
    /// of India's; two bounds on one date are one range, not everything after
    /// the one and everything before the other.
    #[tokio::test]
    async fn indexed_conditions_together_find_only_the_ids_each_finds() {
        let store = Arc::new(MemoryStore::new());
        let registry = Registry::open(store.clone()).await.unwrap();
        let mut ids = Vec::new();
        for (parties, year) in [("aus", 2019), ("aus", 2020), ("aus", 2021), ("jpn", 2020), ("jpn", 2022)] {
            let agreement = Agreement {
                parties: vec!["parties/ind".into(), format!("parties/{parties}")],
                signature_date: Some(dates::date(year, 6, 1)),
                ..india_japan()
            };
            let created = registry.create("", agreement, &anonymous("CreateAgreement")).await.unwrap();
            ids.push(created.name.trim_start_matches("agreements/").to_string());
        }
        let descriptor = Agreement::default().descriptor();
        for (filter, expected) in [
            (r#"parties:"parties/ind" AND parties:"parties/jpn""#, [3, 4].as_slice()),
            ("signature_date >= 2020-01-01 AND signature_date < 2021-01-01", &[1, 3]),
            (r#"parties:"parties/jpn" AND signature_date > 2020 AND parties:"parties/ind""#, &[4]),
            (r#"parties:"parties/jpn" AND signature_date <= 2019"#, &[]),
        ] {
            let expected: BTreeSet<String> = expected.iter().map(|&i| ids[i].clone()).collect();
            let compiled = Filter::compile(filter, &descriptor).unwrap();
            match index::candidates(&*store, &resource::AGREEMENT, &compiled).unwrap() {
                Some(index::Candidates::Ids(found)) => assert_eq!(found, expected, "{filter}"),
                other => panic!("{filter}: {other:?}"),
            }
            let query = ListQuery { filter: filter.into(), ..Default::default() };
            let listed = registry.list::<Agreement>(&query).await.unwrap().items;
            let listed: BTreeSet<String> =
                listed.iter().map(|a| a.name.trim_start_matches("agreements/").to_string()).collect();
            assert_eq!(listed, expected, "{filter}: the page");
        }
    }

    #[test]
    fn has_field_finds_a_top_level_field_and_refuses_garbage() {
        use crate::pb::cooperation::v1::Agreement;
        let deleted = Agreement {
            title: "t".into(),
            delete_time: Some(Timestamp { seconds: 1, nanos: 0 }),
            ..Default::default()
        };
        let tag = deleted.descriptor().get_field_by_name("delete_time").unwrap().number();
        assert!(has_field(&deleted.encode_to_vec(), tag).unwrap());
        let live = Agreement { title: "t".into(), ..Default::default() };
        assert!(!has_field(&live.encode_to_vec(), tag).unwrap());
        assert!(has_field(&[0xff, 0xff, 0xff], tag).is_err(), "a damaged record is an error, not a live record");
    }

    /// Every wire type a record holds is walked field by field, the fields
    /// put back together are the record, and a record cut anywhere inside a
    /// field is refused, as prost refuses it.
    #[test]
    fn the_top_level_walk_splits_a_record_into_its_fields_and_refuses_a_cut_one() {
        use crate::pb::cooperation::v1::{Agreement, agreement};
        let record = Agreement {
            title: "Walked".into(),
            parties: vec!["parties/ind".into(), "parties/jpn".into()],
            status: agreement::Status::InForce as i32,
            signature_date: Some(Date { year: 2020, month: 9, day: 9 }),
            term: Some(agreement::Term { years: 10, ..Default::default() }),
            create_time: Some(Timestamp { seconds: 1_600_000_000, nanos: 5 }),
            ..Default::default()
        };
        let bytes = record.encode_to_vec();
        // Fixed-width fields too, which no record kind has yet.
        let mut with_fixed = bytes.clone();
        prost::encoding::double::encode(900, &1.5, &mut with_fixed);
        prost::encoding::fixed32::encode(901, &7, &mut with_fixed);
        let mut fields = Vec::new();
        let mut joined = Vec::new();
        for_each_top_level_field(&with_fixed, |number, field| {
            fields.push(number);
            joined.extend_from_slice(field);
            true
        })
        .unwrap();
        assert_eq!(joined, with_fixed);
        assert_eq!(fields.len(), 9, "{fields:?}");
        assert_eq!(&fields[7..], [900, 901]);
        for cut in 1..bytes.len() {
            let whole_fields = Agreement::decode(&bytes[..cut]).is_ok();
            let walked = for_each_top_level_field(&bytes[..cut], |_, _| true).is_ok();
            assert_eq!(walked, whole_fields, "cut at {cut}");
        }
    }

    /// A store whose first `refusals` commits fail their conditions, as when
    /// another write got in between a plan and its commit, and whose writes
    /// become durable only while `durable_gate` holds true, as when a flush
    /// takes its time.
    struct Contended {
        inner: MemoryStore,
        refusals: std::sync::atomic::AtomicUsize,
        durable_gate: tokio::sync::watch::Sender<bool>,
    }

    impl Contended {
        fn new() -> Contended {
            Contended {
                inner: MemoryStore::new(),
                refusals: 0.into(),
                durable_gate: tokio::sync::watch::Sender::new(true),
            }
        }
    }

    impl Store for Contended {
        fn read(&self, key: &[u8], visit: &mut dyn FnMut(&[u8], u64)) -> crate::store::StoreResult<bool> {
            self.inner.read(key, visit)
        }
        fn scan(
            &self,
            prefix: &[u8],
            start: &[u8],
            limit: usize,
        ) -> crate::store::StoreResult<Vec<(Vec<u8>, crate::store::Entry)>> {
            self.inner.scan(prefix, start, limit)
        }
        fn members(
            &self,
            prefix: &[u8],
            start: &[u8],
            limit: usize,
        ) -> crate::store::StoreResult<crate::store::Members> {
            self.inner.members(prefix, start, limit)
        }
        fn revision(&self) -> u64 {
            self.inner.revision()
        }
        fn wait_durable(&self, revision: u64) -> crate::store::BoxFuture<'static, crate::store::StoreResult<()>> {
            self.inner.wait_durable(revision)
        }
        fn apply(&self, txn: Txn) -> crate::store::BoxFuture<'static, crate::store::StoreResult<Applied>> {
            use std::sync::atomic::Ordering;
            let refuse = self.refusals.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
            if refuse {
                return Box::pin(async { Ok(Applied::at_once(Outcome::ConditionFailed)) });
            }
            let applied = self.inner.apply(txn);
            let mut gate = self.durable_gate.subscribe();
            Box::pin(async move {
                let Applied { outcome, durable } = applied.await?;
                let durable = async move {
                    durable.await?;
                    gate.wait_for(|open| *open).await.map_err(|_| crate::store::StoreError::Closed)?;
                    Ok(())
                };
                Ok(Applied { outcome, durable: Box::pin(durable) })
            })
        }
        fn changes(&self, from_revision: u64, limit: usize) -> crate::store::StoreResult<Vec<(u64, Vec<u8>)>> {
            self.inner.changes(from_revision, limit)
        }
        fn first_change(&self) -> crate::store::StoreResult<u64> {
            self.inner.first_change()
        }
        fn compact(&self, revision: u64) -> crate::store::StoreResult<u64> {
            self.inner.compact(revision)
        }
        fn backup(&self, out: std::sync::mpsc::SyncSender<Vec<u8>>) -> crate::store::StoreResult<u64> {
            self.inner.backup(out)
        }
        fn close(&self) -> crate::store::StoreResult<()> {
            self.inner.close()
        }
        fn size_on_disk(&self) -> crate::store::StoreResult<u64> {
            self.inner.size_on_disk()
        }
        fn failed(&self) -> crate::store::BoxFuture<'static, crate::store::StoreError> {
            self.inner.failed()
        }
    }

    /// A create whose commit loses a race plans again from the record it
    /// validated, and what it stores is the record that was sent.
    #[tokio::test]
    async fn a_create_that_loses_a_race_commits_the_same_record_on_its_next_attempt() {
        let store = Arc::new(Contended::new());
        let registry = Registry::open(store.clone()).await.unwrap();
        let sent = Agreement {
            title: "Reciprocal provision of supplies and services".into(),
            parties: vec!["parties/ind".into(), "parties/jpn".into()],
            instrument_type: 1,
            signatories: vec![crate::pb::cooperation::v1::agreement::Signatory {
                person: "Sanjay Verma".into(),
                party: "parties/ind".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mutation = anonymous("CreateAgreement");
        store.refusals.store(2, std::sync::atomic::Ordering::SeqCst);
        let created = registry.create("a1", sent.clone(), &mutation).await.unwrap();
        assert_eq!(store.refusals.load(std::sync::atomic::Ordering::SeqCst), 0, "two attempts lost");
        let stored: Agreement = registry.get("agreements/a1", None).await.unwrap();
        for got in [&created, &stored] {
            assert_eq!(got.title, sent.title);
            assert_eq!(got.parties, sent.parties);
            assert_eq!(got.signatories, sent.signatories);
            assert!(got.create_time.is_some());
        }
        store.refusals.store(MAX_ATTEMPTS, std::sync::atomic::Ordering::SeqCst);
        let refused = registry.create("a2", sent, &mutation).await.unwrap_err();
        assert!(matches!(refused, Error::Conflict { .. }), "{refused:?}");
    }

    /// Writes to one record take turns, and a turn passes once the write is
    /// applied: the next write to the record is applied while the one before
    /// it waits to be durable, and neither answers before it is durable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_next_write_to_a_record_is_applied_while_the_one_before_is_made_durable() {
        let store = Arc::new(Contended::new());
        let registry = Arc::new(Registry::open(store.clone()).await.unwrap());
        let mutation = anonymous("UpdateAgreement");
        let sent = india_japan();
        let created = registry.create("a1", sent, &mutation).await.unwrap();
        let before = store.revision();
        store.durable_gate.send_replace(false);
        let update = |title: &str| {
            let registry = registry.clone();
            let mutation = mutation.clone();
            let changed = Agreement { title: title.into(), ..created.clone() };
            tokio::spawn(async move { registry.update(changed, &["title".to_string()], "", &mutation).await })
        };
        let first = update("First title");
        let second = update("Second title");
        let both_applied = async {
            while store.revision() < before + 2 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), both_applied)
            .await
            .expect("the second update was applied while the first waited to be durable");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!first.is_finished() && !second.is_finished(), "neither answered before it was durable");
        store.durable_gate.send_replace(true);
        let titles = [first.await.unwrap().unwrap().title, second.await.unwrap().unwrap().title];
        assert_eq!(titles.iter().filter(|t| *t == "First title").count(), 1, "{titles:?}");
        assert_eq!(titles.iter().filter(|t| *t == "Second title").count(), 1, "{titles:?}");
        let stored: Agreement = registry.get("agreements/a1", None).await.unwrap();
        assert_eq!(store.revision(), before + 2);
        assert!(["First title", "Second title"].contains(&stored.title.as_str()), "{}", stored.title);
    }

    /// A create whose id the server generates waits for no turn (no other
    /// write can know its name), so creates reach the store in the order of
    /// their ids; one that names its id waits for the turn its name maps to.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_create_with_a_generated_id_waits_for_no_turn() {
        let registry = Arc::new(Registry::open(Arc::new(MemoryStore::new())).await.unwrap());
        let mutation = anonymous("CreateAgreement");
        let sent = india_japan();
        // Every turn is taken, as by writes to other records in flight.
        let mut turns = Vec::new();
        for lock in registry.record_locks.iter() {
            turns.push(lock.lock().await);
        }
        let within = std::time::Duration::from_secs(10);
        let generated = tokio::time::timeout(within, registry.create("", sent.clone(), &mutation))
            .await
            .expect("a create with a generated id waited for a turn")
            .unwrap();
        assert!(generated.name.starts_with("agreements/a"), "{}", generated.name);
        let named = {
            let registry = registry.clone();
            let mutation = mutation.clone();
            tokio::spawn(async move { registry.create("a1", sent, &mutation).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!named.is_finished(), "a create that names its id waits for its turn");
        drop(turns);
        assert_eq!(named.await.unwrap().unwrap().name, "agreements/a1");
    }
}
