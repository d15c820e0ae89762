//! Resource rules over the store: one generic engine for Get, List, Create,
//! Update, Delete and Undelete of every record kind, with names, validation,
//! references between records, etags, request ids, soft delete and paging.
//!
//! Keys in the store:
//! - `r/{name}`: the record (protobuf, without etag and derived fields);
//! - `x/{target}\0{source}`: `source` (live) refers to `target`;
//! - `q/{request_id}`: a request that succeeded, for retries.
//!
//! Every write is a store transaction conditioned on the revisions of what it
//! read (the record, the records it refers to, the referrers of what it
//! deletes), retried from a fresh read when a concurrent write got there first.

pub mod agreement;
pub mod dates;
pub mod engagement;
pub mod filter;
pub mod mask;
pub mod paging;
pub mod partnership_domain;
pub mod party;
pub mod records;
pub mod resource;
pub mod validate;

use std::collections::BTreeSet;
use std::sync::Arc;

use prost::Message;
use prost_reflect::DynamicMessage;
use prost_types::Timestamp;

use crate::error::{Error, PreconditionViolation, Result, Violations};
use crate::pb::DESCRIPTOR_POOL;
use crate::store::{Condition, Op, Outcome, Store, Txn, key_after};
use records::{ChangeKind, StoredChange, StoredEvent, StoredRequest};
pub use resource::{Kind, Resource};
use validate::Reference;

/// The actor recorded for changes until authentication exists.
pub const ANONYMOUS: &str = "anonymous";
/// The actor recorded for the states written at the first start.
pub const SEED_ACTOR: &str = "system:seed";
pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 1000;
/// Fresh reads and retries of one write before giving up with ABORTED.
const MAX_ATTEMPTS: usize = 16;

/// Who asks for a change, and how to recognise a retry of the same request.
#[derive(Clone, Debug)]
pub struct Mutation {
    pub actor: String,
    /// Empty, or a UUID the caller chose for this request (AIP-155).
    pub request_id: String,
    /// The gRPC method, with `fingerprint` to refuse a request_id reused for
    /// something else.
    pub method: &'static str,
    pub fingerprint: u64,
}

#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub page_size: i32,
    pub page_token: String,
    pub show_deleted: bool,
}

#[derive(Clone, Debug)]
pub struct Page<R> {
    pub items: Vec<R>,
    pub next_page_token: String,
}

pub struct Registry {
    store: Arc<dyn Store>,
}

/// A change planned from one read of the store.
struct Planned<R> {
    record: R,
    kind: ChangeKind,
    ops: Vec<Op>,
    conditions: Vec<Condition>,
}

fn record_key(name: &str) -> Vec<u8> {
    format!("r/{name}").into_bytes()
}

fn referrers_prefix(target: &str) -> Vec<u8> {
    format!("x/{target}\0").into_bytes()
}

fn reference_key(target: &str, source: &str) -> Vec<u8> {
    format!("x/{target}\0{source}").into_bytes()
}

fn request_key(request_id: &str) -> Vec<u8> {
    format!("q/{request_id}").into_bytes()
}

fn now() -> Timestamp {
    Timestamp::from(std::time::SystemTime::now())
}

fn etag_of(revision: u64) -> String {
    revision.to_string()
}

fn decode<R: Resource>(bytes: &[u8]) -> Result<R> {
    R::decode(bytes).map_err(|e| Error::internal(format!("stored {} does not decode: {e}", R::KIND.singular)))
}

/// The distinct resource names a record refers to.
fn targets(references: &[Reference]) -> BTreeSet<String> {
    references.iter().map(|r| r.name.clone()).collect()
}

impl Registry {
    /// Opens the registry on a store, writing the ISO 3166-1 states into an empty one.
    pub async fn open(store: Arc<dyn Store>) -> Result<Registry> {
        let registry = Registry { store };
        if registry.store.revision() == 0 {
            registry.seed().await?;
        }
        Ok(registry)
    }

    /// The revision of the last applied write.
    pub fn revision(&self) -> u64 {
        self.store.revision()
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
            txn.conditions.push(Condition::ModRevision { key: record_key(&party.name), equals: 0 });
            txn.ops.push(Op::Put { key: record_key(&party.name), value: bytes.clone() });
            change.events.push(StoredEvent { kind: ChangeKind::Created as i32, name: party.name, record: bytes });
        }
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
    fn present<R: Resource>(&self, record: &mut R, revision: u64) {
        record.set_etag(etag_of(revision));
        record.derive(&dates::today());
    }

    /// The stored record and its revision.
    fn read<R: Resource>(&self, name: &str) -> Result<(R, u64)> {
        match self.store.get(&record_key(name))? {
            Some(entry) => Ok((decode(&entry.value)?, entry.mod_revision)),
            None => Err(Error::NotFound { resource_type: R::KIND.resource_type.into(), name: name.into() }),
        }
    }

    /// Checks `name` as a name of `R`, reporting it as `field`.
    fn check_name<R: Resource>(name: &str, field: &str) -> Result<()> {
        R::KIND.parse_name(name).map(|_| ()).map_err(|e| Error::invalid(field, e))
    }

    pub async fn get<R: Resource>(&self, name: &str) -> Result<R> {
        Self::check_name::<R>(name, "name")?;
        let (mut record, revision) = self.read::<R>(name)?;
        self.store.wait_durable(revision).await?;
        self.present(&mut record, revision);
        Ok(record)
    }

    pub async fn list<R: Resource>(&self, query: &ListQuery) -> Result<Page<R>> {
        if query.page_size < 0 {
            return Err(Error::invalid("page_size", format!("must not be negative (got {})", query.page_size)));
        }
        let size = match query.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let show_deleted = if query.show_deleted { &b"deleted"[..] } else { &b"live"[..] };
        let fingerprint = paging::fingerprint(&[R::KIND.collection.as_bytes(), show_deleted]);
        let resume = paging::decode(&query.page_token, fingerprint).map_err(|e| Error::invalid("page_token", e))?;

        let prefix = record_key(&format!("{}/", R::KIND.collection));
        let mut start = match &resume {
            Some(id) => key_after(&record_key(&R::KIND.name_of(id))),
            None => Vec::new(),
        };
        let mut items = Vec::with_capacity(size);
        let mut newest = 0;
        let mut more = false;
        'scan: loop {
            let chunk = size + 1;
            let batch = self.store.scan(&prefix, &start, chunk)?;
            let exhausted = batch.len() < chunk;
            for (_, entry) in &batch {
                let record: R = decode(&entry.value)?;
                if record.delete_time().is_some() && !query.show_deleted {
                    continue;
                }
                if items.len() == size {
                    more = true;
                    break 'scan;
                }
                newest = newest.max(entry.mod_revision);
                items.push((record, entry.mod_revision));
            }
            match batch.last() {
                Some((key, _)) if !exhausted => start = key_after(key),
                _ => break,
            }
        }
        self.store.wait_durable(newest).await?;
        let next_page_token = match (more, items.last()) {
            (true, Some((last, _))) => {
                let id = R::KIND.parse_name(last.name()).map_err(Error::internal)?;
                paging::encode(fingerprint, id)
            }
            _ => String::new(),
        };
        let items = items
            .into_iter()
            .map(|(mut record, revision)| {
                self.present(&mut record, revision);
                record
            })
            .collect();
        Ok(Page { items, next_page_token })
    }

    pub async fn create<R: Resource>(&self, id: &str, resource: R, mutation: &Mutation) -> Result<R> {
        let kind = R::KIND;
        let mut violations = Violations::new();
        let id = if id.is_empty() {
            kind.generate_id()
        } else {
            if let Err(e) = resource::check_id(id) {
                violations.add(format!("{}_id", kind.singular), e);
            }
            id.to_string()
        };
        let name = kind.name_of(&id);
        let mut record = without_output_only(&resource)?;
        record.set_name(name.clone());
        record.normalize();
        let references = self.validate(&record, &mut violations);

        self.mutate(mutation, || {
            let mut violations = violations.clone();
            let mut conditions = vec![Condition::ModRevision { key: record_key(&name), equals: 0 }];
            self.check_targets(&references, &mut violations, &mut conditions)?;
            violations.clone().into_result()?;
            if self.store.get(&record_key(&name))?.is_some() {
                return Err(Error::AlreadyExists { resource_type: kind.resource_type.into(), name: name.clone() });
            }
            let mut record = record.clone();
            let time = now();
            record.set_create_time(Some(time));
            record.set_update_time(Some(time));
            let ops = reference_ops(&name, &BTreeSet::new(), &targets(&references));
            Ok(Planned { record, kind: ChangeKind::Created, ops, conditions })
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
        let patch = without_output_only(&resource)?;

        self.mutate(mutation, || {
            let (stored, revision) = self.read::<R>(&name)?;
            if stored.delete_time().is_some() {
                return Err(deleted_error(&name, "update"));
            }
            if !etag.is_empty() && etag != etag_of(revision) {
                return Err(Error::EtagMismatch { name: name.clone() });
            }
            let mut record = mask::apply(&stored, &patch, mask_paths, "update_mask").map_err(into_invalid)?;
            record.set_name(name.clone());
            record.normalize();
            let mut violations = Violations::new();
            let references = self.validate(&record, &mut violations);
            let mut conditions = vec![Condition::ModRevision { key: record_key(&name), equals: revision }];
            self.check_targets(&references, &mut violations, &mut conditions)?;
            violations.into_result()?;
            record.set_create_time(stored.create_time().cloned());
            record.set_update_time(Some(now()));
            let before = targets(&self.validate(&stored, &mut Violations::new()));
            let ops = reference_ops(&name, &before, &targets(&references));
            Ok(Planned { record, kind: ChangeKind::Updated, ops, conditions })
        })
        .await
    }

    pub async fn delete<R: Resource>(&self, name: &str, etag: &str, mutation: &Mutation) -> Result<R> {
        Self::check_name::<R>(name, "name")?;
        self.mutate(mutation, || {
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
            let prefix = referrers_prefix(name);
            let referrers = self.store.scan(&prefix, &[], 11)?;
            if !referrers.is_empty() {
                let names: Vec<String> =
                    referrers.iter().map(|(k, _)| String::from_utf8_lossy(&k[prefix.len()..]).into_owned()).collect();
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
            let outgoing = targets(&self.validate(&record, &mut Violations::new()));
            let ops = reference_ops(name, &outgoing, &BTreeSet::new());
            let time = now();
            record.set_delete_time(Some(time));
            record.set_update_time(Some(time));
            Ok(Planned { record, kind: ChangeKind::Deleted, ops, conditions })
        })
        .await
    }

    pub async fn undelete<R: Resource>(&self, name: &str, etag: &str, mutation: &Mutation) -> Result<R> {
        Self::check_name::<R>(name, "name")?;
        self.mutate(mutation, || {
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
            let references = self.validate(&record, &mut Violations::new());
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
            Ok(Planned { record, kind: ChangeKind::Undeleted, ops, conditions })
        })
        .await
    }

    /// Runs `plan` against a fresh read and commits its writes, the record, the
    /// change-log entry and the request entry as one transaction, until it
    /// commits or `plan` fails.
    async fn mutate<R: Resource>(&self, mutation: &Mutation, plan: impl Fn() -> Result<Planned<R>>) -> Result<R> {
        if !mutation.request_id.is_empty() && uuid::Uuid::try_parse(&mutation.request_id).is_err() {
            return Err(Error::invalid(
                "request_id",
                format!("must be a UUID such as 123e4567-e89b-12d3-a456-426614174000 (got {:?})", mutation.request_id),
            ));
        }
        for _ in 0..MAX_ATTEMPTS {
            if let Some(answer) = self.previous_answer::<R>(mutation).await? {
                return Ok(answer);
            }
            let Planned { mut record, kind, mut ops, mut conditions } = plan()?;
            let name = record.name().to_string();
            let bytes = record.encode_to_vec();
            ops.push(Op::Put { key: record_key(&name), value: bytes.clone() });
            if !mutation.request_id.is_empty() {
                let key = request_key(&mutation.request_id);
                let entry = StoredRequest {
                    method: mutation.method.into(),
                    fingerprint: mutation.fingerprint,
                    name: name.clone(),
                };
                conditions.push(Condition::ModRevision { key: key.clone(), equals: 0 });
                ops.push(Op::Put { key, value: entry.encode_to_vec() });
            }
            let change = StoredChange {
                actor: mutation.actor.clone(),
                commit_time: Some(now()),
                events: vec![StoredEvent { kind: kind as i32, name, record: bytes }],
            };
            let txn = Txn { conditions, ops, change: change.encode_to_vec() };
            match self.store.commit(txn).await? {
                Outcome::Committed { revision } => {
                    self.present(&mut record, revision);
                    return Ok(record);
                }
                Outcome::ConditionFailed => continue,
            }
        }
        Err(Error::Conflict { name: format!("the {} in this request", R::KIND.singular) })
    }

    /// The answer to an earlier success of the same request, if there was one.
    async fn previous_answer<R: Resource>(&self, mutation: &Mutation) -> Result<Option<R>> {
        if mutation.request_id.is_empty() {
            return Ok(None);
        }
        let Some(entry) = self.store.get(&request_key(&mutation.request_id))? else {
            return Ok(None);
        };
        let first = StoredRequest::decode(entry.value.as_slice()).map_err(Error::internal)?;
        if first.method != mutation.method || first.fingerprint != mutation.fingerprint {
            return Err(Error::invalid(
                "request_id",
                format!(
                    "was already used for a different request ({} on {}); use a new UUID for a new request",
                    first.method, first.name
                ),
            ));
        }
        self.store.wait_durable(entry.mod_revision).await?;
        let changes = self.store.changes(entry.mod_revision, 1)?;
        let event = changes
            .first()
            .filter(|(revision, _)| *revision == entry.mod_revision)
            .and_then(|(_, bytes)| StoredChange::decode(bytes.as_slice()).ok())
            .and_then(|change| change.events.into_iter().find(|e| e.name == first.name));
        match event {
            Some(event) => {
                let mut record: R = decode(&event.record)?;
                self.present(&mut record, entry.mod_revision);
                Ok(Some(record))
            }
            None => Err(Error::internal(format!(
                "the change log lost revision {} of request {}",
                entry.mod_revision, mutation.request_id
            ))),
        }
    }

    /// Checks a record against its annotations and its kind's rules, adding
    /// violations with paths from the request (`agreement.title`), and returns
    /// the names it refers to.
    fn validate<R: Resource>(&self, record: &R, violations: &mut Violations) -> Vec<Reference> {
        let prefix = R::KIND.singular;
        let references = validate::check_message(&record.transcode_to_dynamic(), prefix, violations);
        let mut own = Violations::new();
        record.check(&mut own);
        violations.extend(own.prefixed(prefix));
        references
    }

    /// Adds a violation for every reference to a missing or deleted record, and
    /// a condition that each live one is unchanged at commit.
    fn check_targets(
        &self,
        references: &[Reference],
        violations: &mut Violations,
        conditions: &mut Vec<Condition>,
    ) -> Result<()> {
        let mut checked = BTreeSet::new();
        for reference in references {
            let key = record_key(&reference.name);
            match self.store.get(&key)? {
                None => violations.add(&reference.field, format!("{} does not exist", reference.name)),
                Some(entry) if is_deleted(&reference.name, &entry.value)? => {
                    violations.add(&reference.field, format!("{} is deleted", reference.name))
                }
                Some(entry) => {
                    if checked.insert(reference.name.clone()) {
                        conditions.push(Condition::ModRevision { key, equals: entry.mod_revision });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether the stored record under `name` is soft-deleted, whatever its kind.
fn is_deleted(name: &str, bytes: &[u8]) -> Result<bool> {
    let kind = resource::kind_of_name(name).ok_or_else(|| Error::internal(format!("no kind for {name}")))?;
    let descriptor = DESCRIPTOR_POOL
        .get_message_by_name(kind.message)
        .ok_or_else(|| Error::internal(format!("no descriptor for {}", kind.message)))?;
    let record = DynamicMessage::decode(descriptor, bytes).map_err(Error::internal)?;
    Ok(record.has_field_by_name("delete_time"))
}

/// The request's resource without the fields the server sets.
fn without_output_only<R: Resource>(resource: &R) -> Result<R> {
    let mut dynamic = resource.transcode_to_dynamic();
    validate::clear_output_only(&mut dynamic);
    dynamic.transcode_to::<R>().map_err(Error::internal)
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

/// Index writes that move `source`'s references from `before` to `after`.
fn reference_ops(source: &str, before: &BTreeSet<String>, after: &BTreeSet<String>) -> Vec<Op> {
    let removed = before.difference(after).map(|t| Op::Delete { key: reference_key(t, source) });
    let added = after.difference(before).map(|t| Op::Put { key: reference_key(t, source), value: Vec::new() });
    removed.chain(added).collect()
}
