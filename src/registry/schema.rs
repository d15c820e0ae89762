//! The registry's layout in a store: the ISO 3166-1 states written into an
//! empty store, and the upgrades of an older layout.

use std::collections::BTreeSet;
use std::time::Instant;

use prost::Message;

use super::keys::{collection_key, record_key};
use super::party;
use super::reads::has_field;
use super::records::{ChangeKind, StoredChange, StoredEvent};
use super::resource;
use super::validate;
use super::writes::reference_ops;
use super::{Registry, index, now, targets};
use crate::error::{Error, Result, Violations};
use crate::pb::DESCRIPTOR_POOL;
use crate::store::{Condition, Op, Outcome, Txn, key_after, move_member};

/// The actor recorded for the states written at the first start.
pub const SEED_ACTOR: &str = "system:seed";

/// The actor recorded for changes that upgrade a data dir.
pub const MIGRATION_ACTOR: &str = "system:migration";

/// Version of the registry's key layout above the store: 2 added the
/// secondary indexes, 3 made index and reference entries set members instead
/// of keys, 4 keeps each request's answer with it. An older data dir is
/// upgraded on open.
pub(super) const REGISTRY_SCHEMA: u32 = 4;

pub(super) const SCHEMA_KEY: &[u8] = b"meta/registry-schema";

/// How often an upgrade of the data dir logs its progress.
pub(super) const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl Registry {
    /// Brings the store to this build's layout: the ISO 3166-1 states into
    /// an empty store, the upgrades an older layout needs, then the schema
    /// version. A store of a newer layout is refused.
    pub(super) async fn prepare_layout(&self) -> Result<()> {
        if self.store.revision() == 0 {
            self.seed().await?;
        }
        let schema = match self.store.get(SCHEMA_KEY)? {
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
            self.rebuild_indexes().await?;
        }
        if schema < 4 {
            self.keep_request_answers().await?;
        }
        if schema < REGISTRY_SCHEMA {
            let change = StoredChange { actor: MIGRATION_ACTOR.into(), commit_time: Some(now()), events: Vec::new() };
            let txn = Txn {
                ops: vec![Op::Put { key: SCHEMA_KEY.to_vec(), value: REGISTRY_SCHEMA.to_be_bytes().to_vec() }],
                change: change.encode_to_vec(),
                ..Default::default()
            };
            self.store.commit(txn).await?;
            tracing::info!(from = schema, to = REGISTRY_SCHEMA, "upgraded the data dir's layout");
        }
        Ok(())
    }

    /// Schema 3: writes the index and reference sets of every record (for
    /// data dirs from before the indexes, or from when their entries were
    /// keys: those are removed first).
    pub(super) async fn rebuild_indexes(&self) -> Result<()> {
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

    pub(super) async fn seed(&self) -> Result<()> {
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
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::ListQuery;
    use super::super::keys::referrers_set;
    use super::super::testing::anonymous;
    use super::*;
    use crate::pb::cooperation::v1::{Agreement, Party};
    use crate::store::Store;
    use crate::store::memory::MemoryStore;

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
}
