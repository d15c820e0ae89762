//! BatchCreate (AIP-233): records of one kind created all or none, in one
//! transaction, each checked as its Create checks it. A record may name
//! another of the batch; one revision holds them all, and its change-log
//! entry has an event for each.

use std::collections::BTreeSet;

use prost::Message;

use super::hierarchy::{Through, Written};
use super::keys::record_key;
use super::records::{ChangeKind, StoredChange, StoredEvent};
use super::resource::{self, Resource};
use super::validate::Reference;
use super::writes::{MAX_ATTEMPTS, beyond_limits, reference_ops, without_output_only};
use super::{Mutation, Registry, check_deadline, dates, now, targets};
use crate::error::{Error, Result, Violations};
use crate::store::{Applied, Condition, Op, Outcome, Txn, move_member, move_memberships};

/// Most records one batch creates.
pub const MAX_BATCH: usize = 1000;

impl Registry {
    /// Creates each `(id, record)` of `items` (an empty id: one generated),
    /// all or none, at one revision. Violations name the request they are
    /// in (`requests[3].agreement.title`); a record that exists already is
    /// ALREADY_EXISTS, and nothing is written.
    pub async fn create_many<R: Resource>(&self, items: Vec<(String, R)>, mutation: &Mutation) -> Result<Vec<R>> {
        let kind = R::KIND;
        match items.len() {
            0 => return Err(Error::invalid("requests", format!("is required: 1 to {MAX_BATCH} requests"))),
            n if n > MAX_BATCH => {
                return Err(Error::invalid(
                    "requests",
                    format!("holds {n} requests; a batch takes at most {MAX_BATCH}"),
                ));
            }
            _ => {}
        }
        let mut violations = Violations::new();
        let mut names = BTreeSet::new();
        let mut batch = Vec::with_capacity(items.len());
        for (i, (id, record)) in items.into_iter().enumerate() {
            let id_field = format!("requests[{i}].{}_id", kind.singular);
            let id = match id.is_empty() {
                true => kind.generate_id(),
                false => {
                    if let Err(e) = resource::check_id(&id) {
                        violations.add(&id_field, e);
                    }
                    id
                }
            };
            let name = kind.name_of(&id);
            if !names.insert(name.clone()) {
                violations.add(&id_field, format!("{name} is created by an earlier request of this batch"));
            }
            let mut record = without_output_only(record)?;
            record.set_name(name.clone());
            record.normalize();
            let mut own = Violations::new();
            let checked = self.validate(&record, &mut own)?;
            violations.extend(own.prefixed(&format!("requests[{i}]")));
            let index = checked.index(kind)?;
            let outlines = checked.outlines(kind)?;
            batch.push((id, record, checked.references, index, outlines, checked.encoded));
        }
        // (Reported with the missing targets: every bad field at once.)
        let invalid = violations;

        for attempt in 0..MAX_ATTEMPTS {
            // As a single create: the first attempt takes the targets known
            // live without reading them; after a failed condition, all are read.
            let again = attempt > 0;
            let mut violations = invalid.clone();
            let mut conditions = Vec::new();
            let mut ops = Vec::new();
            let mut events = Vec::with_capacity(batch.len());
            let time = now();
            for (i, (id, record, references, index, outlines, _)) in batch.iter().enumerate() {
                let name = record.name();
                // Records of the batch need no check: they are written with it.
                let outside: Vec<Reference> = references.iter().filter(|r| !names.contains(&r.name)).cloned().collect();
                let mut missing = Violations::new();
                self.check_targets(&outside, &mut missing, &mut conditions, again).await?;
                violations.extend(missing.prefixed(&format!("requests[{i}]")));
                conditions.push(Condition::ModRevision { key: record_key(name), equals: 0 });
                ops.extend(reference_ops(name, &BTreeSet::new(), &targets(references)));
                ops.extend(move_member(id.as_bytes(), &BTreeSet::new(), index));
                ops.extend(move_memberships(&BTreeSet::new(), outlines));
                let mut record = record.clone();
                record.set_create_time(Some(time));
                record.set_update_time(Some(time));
                ops.push(Op::Put { key: record_key(name), value: record.encode_to_vec() });
                events.push(StoredEvent::new(ChangeKind::Created, name.to_string(), 0));
            }
            violations.into_result()?;
            if again {
                let keys: Vec<Vec<u8>> = batch.iter().map(|(_, record, ..)| record_key(record.name())).collect();
                let found = self.store.get_many(&keys.iter().map(Vec::as_slice).collect::<Vec<_>>()).await?;
                if let Some(((_, record, ..), _)) = batch.iter().zip(found).find(|(_, entry)| entry.is_some()) {
                    return Err(Error::AlreadyExists {
                        resource_type: kind.resource_type.into(),
                        name: record.name().to_string(),
                    });
                }
            } else {
                // A cycle with a record of the batch lies within the batch
                // (see `hierarchy`): found without reading, once.
                let written: Vec<Written> = batch
                    .iter()
                    .map(|(_, record, .., encoded)| Written { name: record.name(), record: encoded, before: &[] })
                    .collect();
                self.check_hierarchies(kind, &written, Through::Written, &mut conditions).await?;
            }
            let change = StoredChange { actor: mutation.actor.clone(), commit_time: Some(time), events };
            let txn = Txn { conditions, ops, change: change.encode_to_vec() };
            let limits = self.store.limits();
            let size = txn.size();
            if !limits.admits(size) {
                return Err(Error::invalid(
                    "requests",
                    format!(
                        "are too many for one write to this store: with their index entries, references and \
                         change-log entry they take {}; send fewer requests in a batch",
                        beyond_limits(size, limits)
                    ),
                ));
            }
            check_deadline(mutation.deadline, || {
                "the call's deadline passed before the batch was written; nothing was changed".into()
            })?;
            let Applied { outcome, durable } = self.store.apply(txn).await?;
            match outcome {
                Outcome::Committed { revision } => {
                    durable.await?;
                    let today = dates::today();
                    let mut created = Vec::with_capacity(batch.len());
                    for (_, mut record, ..) in batch {
                        self.targets.forget(&record_key(record.name()));
                        record.set_create_time(Some(time));
                        record.set_update_time(Some(time));
                        self.present(&mut record, revision, &today);
                        created.push(record);
                    }
                    return Ok(created);
                }
                Outcome::ConditionFailed => continue,
            }
        }
        Err(Error::Conflict { name: format!("the {} of this batch", kind.collection) })
    }
}
