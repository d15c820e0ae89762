//! Create, Update, Delete and Undelete: each planned from a read, validated,
//! and committed as one store transaction conditioned on the revisions of
//! what it read (the record, the records it refers to, the referrers of what
//! it deletes), planned again when a concurrent write got there first.
//! Writes to one record take turns.

use std::collections::BTreeSet;

use prost::Message;

use super::hierarchy::{Through, Written};
use super::keys::{record_key, referrers_set, version_key};
use super::reads::has_field;
use super::records::{ChangeKind, StoredChange, StoredEvent};
use super::relationship::outline_memberships;
use super::resource::{self, Kind, Resource};
use super::validate::{self, Reference};
use super::{Mutation, Registry, check_deadline, dates, decode, etag_of, index, now, targets, undecodable};
use super::{idempotency, mask};
use crate::error::{Error, PreconditionViolation, Result, Violations};
use crate::store::generations::Generations;
use crate::store::{Applied, BoxFuture, Condition, Membership, Op, Outcome, Txn, move_member, move_memberships};

/// Fresh reads and retries of one write before giving up with ABORTED.
pub(super) const MAX_ATTEMPTS: usize = 16;

/// Locks writes to records are spread over (a name always maps to the same one).
pub(super) const RECORD_LOCKS: usize = 1024;

/// Whether a write waits for its turn at the record (see `record_lock`).
/// Turns keep writes to one record from planning against the same read and
/// failing each other's conditions; a record's conditions are what keep it
/// right either way.
pub(super) enum Turn {
    Take,
    /// The record's name was generated for this write: no other can be
    /// waiting for it. Waiting anyway was costly: turns are shared by hash,
    /// so a create could wait behind an unrelated one and reach the store
    /// after creates with later ids, and an id out of order costs the store
    /// a search and a split in every index set it joins.
    Unneeded,
}

/// A change planned from one read of the store.
pub(super) struct Planned<R> {
    record: R,
    /// The revision of the record as stored before (0 for a creation).
    previous_revision: u64,
    /// The record as stored before (empty for a creation): kept under its
    /// version key, since the change log does not copy it.
    replaced: Vec<u8>,
    kind: ChangeKind,
    ops: Vec<Op>,
    conditions: Vec<Condition>,
}

/// What [`Registry::validate`] finds in a record besides its violations.
pub(super) struct Checked {
    pub(super) references: Vec<Reference>,
    /// The record as validation read it: writes that move it between index
    /// sets read them from here rather than encode it again.
    pub(super) encoded: Vec<u8>,
}

impl Checked {
    /// The index sets the record belongs in (see `index::entries`).
    pub(super) fn index(&self, kind: &Kind) -> Result<BTreeSet<Vec<u8>>> {
        index::entries(kind, &self.encoded).map_err(Error::internal)
    }

    /// The outline sets the record belongs in (see `relationship`).
    pub(super) fn outlines(&self, kind: &Kind) -> Result<BTreeSet<Membership>> {
        outline_memberships(kind, &self.encoded)
    }
}

impl Registry {
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
        let outlines = checked.outlines(kind)?;
        // The first attempt takes the record; another (after a conflict) reads
        // it back from its validated encoding.
        let mut first = Some(record);

        let (name, id, violations, checked, index, outlines) = (&name, &id, &violations, &checked, &index, &outlines);
        self.mutate(name, turn, mutation, || {
            let first = first.take();
            Box::pin(async move {
                // The first attempt reads nothing it can state as a condition
                // instead: the record's absence, and targets known live. Its
                // conditions failing, the next attempt reads them to say why.
                let again = first.is_none();
                let mut violations = violations.clone();
                let mut conditions = vec![Condition::ModRevision { key: record_key(name), equals: 0 }];
                self.check_targets(&checked.references, &mut violations, &mut conditions, again).await?;
                violations.clone().into_result()?;
                // (No stored record refers to a new one: only its own links
                // can close a cycle.)
                let written = [Written { name, record: &checked.encoded, before: &[] }];
                self.check_hierarchies(kind, &written, Through::Written, &mut conditions).await?;
                if again && self.store.get(&record_key(name)).await?.is_some() {
                    return Err(Error::AlreadyExists { resource_type: kind.resource_type.into(), name: name.clone() });
                }
                let mut record = match first {
                    Some(record) => record,
                    None => decode(&checked.encoded)?,
                };
                let time = now();
                record.set_create_time(Some(time));
                record.set_update_time(Some(time));
                let mut ops = reference_ops(name, &BTreeSet::new(), &targets(&checked.references));
                ops.extend(move_member(id.as_bytes(), &BTreeSet::new(), index));
                ops.extend(move_memberships(&BTreeSet::new(), outlines));
                Ok(Planned {
                    record,
                    previous_revision: 0,
                    replaced: Vec::new(),
                    kind: ChangeKind::Created,
                    ops,
                    conditions,
                })
            })
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

        let (name, patch) = (&name, &patch);
        let mut attempts = 0;
        self.mutate(name, Turn::Take, mutation, || {
            attempts += 1;
            let again = attempts > 1;
            Box::pin(async move {
                let entry = self.read_entry::<R>(name).await?;
                let (stored, revision): (R, u64) = (decode(&entry.value)?, entry.mod_revision);
                if stored.delete_time().is_some() {
                    return Err(deleted_error(name, "update"));
                }
                if !etag.is_empty() && etag != etag_of(revision) {
                    return Err(Error::EtagMismatch { name: name.clone() });
                }
                let mut record = mask::apply(&entry.value, patch, mask_paths, "update_mask").map_err(into_invalid)?;
                record.set_name(name.clone());
                record.normalize();
                let mut violations = Violations::new();
                let checked = self.validate(&record, &mut violations)?;
                let mut conditions = vec![Condition::ModRevision { key: record_key(name), equals: revision }];
                self.check_targets(&checked.references, &mut violations, &mut conditions, again).await?;
                violations.into_result()?;
                let written = [Written { name, record: &checked.encoded, before: &entry.value }];
                self.check_hierarchies(kind, &written, Through::Store, &mut conditions).await?;
                record.set_create_time(stored.create_time().cloned());
                record.set_update_time(Some(now()));
                let before = self.validate_encoded(&stored, entry.value.to_vec(), &mut Violations::new())?;
                let mut ops = reference_ops(name, &targets(&before.references), &targets(&checked.references));
                let id = kind.parse_name(name).map_err(Error::internal)?;
                ops.extend(move_member(id.as_bytes(), &before.index(kind)?, &checked.index(kind)?));
                ops.extend(move_memberships(&before.outlines(kind)?, &checked.outlines(kind)?));
                let replaced = before.encoded;
                Ok(Planned {
                    record,
                    previous_revision: revision,
                    replaced,
                    kind: ChangeKind::Updated,
                    ops,
                    conditions,
                })
            })
        })
        .await
    }

    pub async fn delete<R: Resource>(&self, name: &str, etag: &str, mutation: &Mutation) -> Result<R> {
        Self::check_name::<R>(name, "name")?;
        self.mutate(name, Turn::Take, mutation, || {
            Box::pin(async move {
                let entry = self.read_entry::<R>(name).await?;
                let (mut record, revision): (R, u64) = (decode(&entry.value)?, entry.mod_revision);
                if record.delete_time().is_some() {
                    return Err(deleted_error(name, "delete"));
                }
                if !etag.is_empty() && etag != etag_of(revision) {
                    return Err(Error::EtagMismatch { name: name.into() });
                }
                // The referrers as of one revision: any referrer added after it
                // fails the condition below.
                let snapshot = self.store.snapshot().await?;
                let seen = snapshot.revision();
                let prefix = referrers_set(name);
                let referrers = snapshot.members(&prefix, &[], 11).await?;
                drop(snapshot);
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
                let mut ops = reference_ops(name, &outgoing, &BTreeSet::new());
                let time = now();
                record.set_delete_time(Some(time));
                record.set_update_time(Some(time));
                ops.extend(outline_moves(&entry.value, &record)?);
                let replaced = entry.value.to_vec();
                Ok(Planned {
                    record,
                    previous_revision: revision,
                    replaced,
                    kind: ChangeKind::Deleted,
                    ops,
                    conditions,
                })
            })
        })
        .await
    }

    pub async fn undelete<R: Resource>(&self, name: &str, etag: &str, mutation: &Mutation) -> Result<R> {
        Self::check_name::<R>(name, "name")?;
        self.mutate(name, Turn::Take, mutation, || {
            Box::pin(async move {
                let entry = self.read_entry::<R>(name).await?;
                let (mut record, revision): (R, u64) = (decode(&entry.value)?, entry.mod_revision);
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
                // (No hierarchy to check: while it was deleted no live record
                // could come to refer to it, so no chain leads back to it.)
                let references = self.validate(&record, &mut Violations::new())?.references;
                let mut conditions = vec![Condition::ModRevision { key: record_key(name), equals: revision }];
                let mut missing = Violations::new();
                self.check_targets(&references, &mut missing, &mut conditions, true).await?;
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
                let mut ops = reference_ops(name, &BTreeSet::new(), &targets(&references));
                record.set_delete_time(None);
                record.set_update_time(Some(now()));
                ops.extend(outline_moves(&entry.value, &record)?);
                let replaced = entry.value.to_vec();
                Ok(Planned {
                    record,
                    previous_revision: revision,
                    replaced,
                    kind: ChangeKind::Undeleted,
                    ops,
                    conditions,
                })
            })
        })
        .await
    }

    /// The lock that writes to the record `name` hold from their read to their
    /// commit. Without it, concurrent writes to one record all read the same
    /// revision and all but one fail their condition and start again, so under
    /// enough of them (the service benchmark updates one agreement from every
    /// connection) some would run out of attempts with ABORTED; in turn, each
    /// commits at its first attempt. A turn ends once the store has answered
    /// the write (`Store::apply`: reads of the record see it), not once it is
    /// durable: the next write to the record is planned while this one is
    /// applied and flushed, and shares its batch and flush when it reaches the
    /// store's writer in time (a turn that lasted until durable would give each
    /// write to a record a flush of its own).
    pub(super) fn record_lock(&self, name: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(name);
        &self.record_locks[(hash % RECORD_LOCKS as u64) as usize]
    }

    /// Runs `plan` against a fresh read and commits its writes, the record, the
    /// change-log entry and the request entry as one transaction, until it
    /// commits or `plan` fails. Writes to `name` take turns unless `turn` says none is needed.
    pub(super) async fn mutate<'p, R: Resource>(
        &self,
        name: &str,
        turn: Turn,
        mutation: &Mutation,
        mut plan: impl FnMut() -> BoxFuture<'p, Result<Planned<R>>>,
    ) -> Result<R> {
        if !mutation.request_id.is_empty() && !idempotency::is_request_id(&mutation.request_id) {
            return Err(Error::invalid(
                "request_id",
                format!(
                    "must be a UUID (RFC 4122) in its 36-character form, such as \
                     6f1c1f0e-3b7a-4d2e-9a51-0c8f4f2b7d10, got {:?}",
                    mutation.request_id
                ),
            ));
        }
        let turn = match turn {
            Turn::Take => Some(self.record_lock(name).lock().await),
            Turn::Unneeded => None,
        };
        for attempt in 0..MAX_ATTEMPTS {
            // The first attempt takes a request as new without reading its
            // entry (see `earlier_request`); a retry of one that succeeded
            // fails its condition, or its plan (the etag it names is gone,
            // say), and then gets its first answer.
            let read = attempt > 0;
            let slot = match self.earlier_request::<R>(mutation, read).await? {
                idempotency::Earlier::Answered(answer) => return Ok(answer),
                idempotency::Earlier::New(slot) => slot,
            };
            let planned = match plan().await {
                Ok(planned) => planned,
                Err(refused) if !read && slot.is_some() => match self.earlier_request::<R>(mutation, true).await? {
                    idempotency::Earlier::Answered(answer) => return Ok(answer),
                    idempotency::Earlier::New(_) => return Err(refused),
                },
                Err(refused) => return Err(refused),
            };
            let Planned { mut record, previous_revision, replaced, kind, mut ops, mut conditions } = planned;
            let name = record.name().to_string();
            let bytes = record.encode_to_vec();
            let commit_time = now();
            if let Some(slot) = slot {
                slot.keep(mutation, &name, &bytes, commit_time, &mut conditions, &mut ops);
            }
            if previous_revision > 0 {
                ops.push(Op::Put { key: version_key(&name, previous_revision), value: replaced });
            }
            ops.push(Op::Put { key: record_key(&name), value: bytes });
            let change = StoredChange {
                actor: mutation.actor.clone(),
                commit_time: Some(commit_time),
                events: vec![StoredEvent::new(kind, name, previous_revision)],
            };
            let txn = Txn { conditions, ops, change: change.encode_to_vec() };
            let limits = self.store.limits();
            let size = txn.size();
            if !limits.admits(size) {
                return Err(Error::invalid(
                    R::KIND.singular,
                    format!(
                        "is too large for one write to this store: with its index entries, references and \
                         change-log entry it takes {}; store fewer values in its repeated fields",
                        beyond_limits(size, limits)
                    ),
                ));
            }
            check_deadline(mutation.deadline, || {
                "the call's deadline passed before the change was written; nothing was changed".into()
            })?;
            let Applied { outcome, durable } = self.store.apply(txn).await?;
            match outcome {
                Outcome::Committed { revision } => {
                    self.targets.forget(&record_key(record.name()));
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
    pub(super) fn validate<R: Resource>(&self, record: &R, violations: &mut Violations) -> Result<Checked> {
        self.validate_encoded(record, record.encode_to_vec(), violations)
    }

    /// [`Self::validate`] with the record's encoding at hand (a stored one).
    pub(super) fn validate_encoded<R: Resource>(
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
    /// a condition that each live one is unchanged at commit. The targets are
    /// read in one call, each once (an agreement names its parties again as
    /// its signatories' parties). With `read` false, targets known live (from
    /// an earlier write's check, in `KnownTargets`) are not read again: if one
    /// has changed since, the write's condition fails and its next attempt
    /// reads them all.
    pub(super) async fn check_targets(
        &self,
        references: &[Reference],
        violations: &mut Violations,
        conditions: &mut Vec<Condition>,
        read: bool,
    ) -> Result<()> {
        let names: BTreeSet<&str> = references.iter().map(|reference| reference.name.as_str()).collect();
        let keys: Vec<Vec<u8>> = names.iter().map(|name| record_key(name)).collect();
        if !read && let Some(known) = self.targets.revisions(&keys) {
            conditions.extend(keys.into_iter().zip(known).map(|(key, equals)| Condition::ModRevision { key, equals }));
            return Ok(());
        }
        let entries = self.store.get_many(&keys.iter().map(Vec::as_slice).collect::<Vec<_>>()).await?;
        let mut problems = std::collections::BTreeMap::new();
        for ((name, key), entry) in names.into_iter().zip(keys).zip(entries) {
            let problem = match entry {
                None => Some("does not exist"),
                Some(entry) if is_deleted(name, &entry.value)? => Some("is deleted"),
                Some(entry) => {
                    self.targets.found_live(&key, entry.mod_revision);
                    conditions.push(Condition::ModRevision { key: key.clone(), equals: entry.mod_revision });
                    None
                }
            };
            if problem.is_some() {
                self.targets.forget(&key);
            }
            problems.insert(name, problem);
        }
        for reference in references {
            if let Some(Some(problem)) = problems.get(reference.name.as_str()) {
                violations.add(&reference.field, format!("{} {problem}", reference.name));
            }
        }
        Ok(())
    }
}

/// A transaction's size against the store's limits, for the message that
/// refuses it: "N operations and B bytes, and the store takes at most …".
pub(super) fn beyond_limits(size: crate::store::TxnSize, limits: crate::store::TxnLimits) -> String {
    format!(
        "{} operations and {} bytes, and the store takes at most {} and {}",
        size.ops, size.bytes, limits.max_ops, limits.max_bytes
    )
}

/// The revisions at which records that writes refer to were last found
/// live, by record key: a write that refers to them states them as its
/// conditions without reading them again (a read is a round trip to etcd).
/// Bounded; an entry goes when this registry writes its record.
pub(super) struct KnownTargets(std::sync::Mutex<Generations<u64>>);

/// Memory for `KnownTargets`: some ten thousand records.
const KNOWN_TARGETS_BYTES: usize = 1 << 20;

impl Default for KnownTargets {
    fn default() -> KnownTargets {
        KnownTargets(std::sync::Mutex::new(Generations::new(KNOWN_TARGETS_BYTES)))
    }
}

impl KnownTargets {
    /// The revision of each of `keys`, if every one is known.
    fn revisions(&self, keys: &[Vec<u8>]) -> Option<Vec<u64>> {
        let mut known = self.0.lock().expect("known targets lock");
        keys.iter().map(|key| known.get(key)).collect()
    }

    fn found_live(&self, key: &[u8], revision: u64) {
        self.0.lock().expect("known targets lock").insert(key.into(), revision, 8);
    }

    pub(super) fn forget(&self, key: &[u8]) {
        self.0.lock().expect("known targets lock").remove(key);
    }
}

/// Whether the stored record under `name` is soft-deleted, whatever its kind.
pub(super) fn is_deleted(name: &str, bytes: &[u8]) -> Result<bool> {
    let kind = resource::kind_of_name(name).ok_or_else(|| Error::internal(format!("no kind for {name}")))?;
    has_field(bytes, kind.delete_time_field()).map_err(|e| undecodable(kind, &e))
}

/// The request's resource without the fields the server sets (OUTPUT_ONLY);
/// as it came when it had none, as clients' resources usually do (stripping
/// only removes bytes).
pub(super) fn without_output_only<R: Resource>(resource: R) -> Result<R> {
    let encoded = resource.encode_to_vec();
    let stripped = validate::strip_output_only(&encoded, &resource.descriptor())
        .map_err(|e| Error::internal(format!("an encoded request does not parse: {e}")))?;
    match stripped.len() == encoded.len() {
        true => Ok(resource),
        false => decode(&stripped),
    }
}

/// The writes that move a record's outline members from its stored
/// encoding `before` to `after`: a deletion marks them, an undeletion clears
/// the mark.
fn outline_moves<R: Resource>(before: &[u8], after: &R) -> Result<Vec<Op>> {
    let after = outline_memberships(R::KIND, &after.encode_to_vec())?;
    Ok(move_memberships(&outline_memberships(R::KIND, before)?, &after))
}

pub(super) fn into_invalid(violations: Violations) -> Error {
    violations.into_result().err().unwrap_or_else(|| Error::internal("empty violations"))
}

pub(super) fn deleted_error(name: &str, action: &str) -> Error {
    Error::FailedPrecondition {
        reason: "RESOURCE_DELETED".into(),
        message: format!("{name} is deleted; undelete it before you {action} it"),
        violations: Vec::new(),
    }
}

/// Store writes that move `source`'s references from the targets `before` to `after`.
pub(super) fn reference_ops(source: &str, before: &BTreeSet<String>, after: &BTreeSet<String>) -> Vec<Op> {
    let sets = |targets: &BTreeSet<String>| targets.iter().map(|t| referrers_set(t)).collect();
    move_member(source.as_bytes(), &sets(before), &sets(after))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::testing::{anonymous, india_japan};
    use super::*;
    use crate::pb::cooperation::v1::Agreement;
    use crate::store::Store;
    use crate::store::memory::MemoryStore;

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
        fn snapshot(&self) -> BoxFuture<'_, crate::store::StoreResult<Box<dyn crate::store::Snapshot>>> {
            self.inner.snapshot()
        }
        fn get_many<'a>(
            &'a self,
            keys: &'a [&'a [u8]],
        ) -> BoxFuture<'a, crate::store::StoreResult<Vec<Option<crate::store::Entry>>>> {
            self.inner.get_many(keys)
        }
        fn current_revision(&self) -> BoxFuture<'_, crate::store::StoreResult<u64>> {
            self.inner.current_revision()
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
        fn changes(
            &self,
            from_revision: u64,
            limit: usize,
        ) -> BoxFuture<'_, crate::store::StoreResult<crate::store::Changes>> {
            self.inner.changes(from_revision, limit)
        }
        fn first_change(&self) -> BoxFuture<'_, crate::store::StoreResult<u64>> {
            self.inner.first_change()
        }
        fn compact(&self, revision: u64) -> BoxFuture<'_, crate::store::StoreResult<u64>> {
            self.inner.compact(revision)
        }
        fn engine(&self) -> &dyn crate::store::Engine {
            self.inner.engine()
        }
        fn watch(&self, from_revision: u64) -> crate::store::ChangeStream {
            self.inner.watch(from_revision)
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
        let before = store.current_revision().await.unwrap();
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
            while store.current_revision().await.unwrap() < before + 2 {
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
        assert_eq!(store.current_revision().await.unwrap(), before + 2);
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

    /// A record whose write is beyond the store's limits is refused whole,
    /// naming the record and both sizes; nothing is written.
    #[tokio::test]
    async fn a_record_beyond_the_store_s_limits_is_refused_and_nothing_is_written() {
        let limits = crate::store::TxnLimits { max_ops: 128, max_bytes: 24 * 1024 };
        let store = Arc::new(MemoryStore::with_limits(limits));
        let registry = Registry::open(store.clone()).await.unwrap();
        let revision = store.current_revision().await.unwrap();
        let agreement = Agreement { title: "t".repeat(15_000), ..india_japan() };
        let refused = registry.create("large", agreement, &anonymous("CreateAgreement")).await.unwrap_err();
        let Error::InvalidArgument { violations } = &refused else { panic!("{refused:?}") };
        assert_eq!(violations[0].field, "agreement");
        assert!(violations[0].description.contains("24576"), "{}", violations[0].description);
        assert_eq!(store.current_revision().await.unwrap(), revision, "nothing was written");
        registry.create("small", india_japan(), &anonymous("CreateAgreement")).await.unwrap();
    }
}
