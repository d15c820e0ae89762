//! The registry's layout in a store: the ISO 3166-1 states written into an
//! empty store, and the upgrades of an older layout.

use std::collections::BTreeSet;
use std::time::Instant;

use prost::Message;

use super::jobs::Lease;
use super::keys::{collection_key, record_key};
use super::party;
use super::reads::has_field;
use super::records::{ChangeKind, StoredChange, StoredEvent};
use super::relationship::outline_memberships;
use super::resource;
use super::validate;
use super::writes::reference_ops;
use super::{Registry, index, now, targets};
use crate::error::{Error, Result, Violations};
use crate::store::{Batches, Condition, Op, Outcome, Txn, key_after, move_member, move_memberships};

/// The actor recorded for the states written at the first start.
pub const SEED_ACTOR: &str = "system:seed";

/// The actor recorded for changes that upgrade a data dir.
pub const MIGRATION_ACTOR: &str = "system:migration";

/// Version of the registry's key layout above the store: 2 added the
/// secondary indexes, 3 made index and reference entries set members instead
/// of keys, 4 keeps each request's answer with it, 5 added the ordered and
/// word indexes (and changed how index values are encoded), 6 keeps a
/// replaced version of a record under its version key rather than a copy of
/// each in the change log (older entries keep their copies and are read as
/// they are) and added the outline sets of GetRelationship. An older data
/// dir is upgraded on open.
pub(super) const REGISTRY_SCHEMA: u32 = 6;

pub(super) const SCHEMA_KEY: &[u8] = b"meta/registry-schema";

/// How often an upgrade of the data dir logs its progress.
pub(super) const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// The job that prepares the layout: one server does it, the others wait.
const LAYOUT_JOB: &str = "layout";

/// How often a server waiting for another to prepare the layout looks again.
const LAYOUT_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// The schema key's value while the first start's states are written: a
/// server that takes the job over goes on with them.
const SEEDING: u32 = 0;

impl Registry {
    /// Brings the store to this build's layout: the ISO 3166-1 states into
    /// an empty store, the upgrades an older layout needs, then the schema
    /// version. One server among those that open the store at once does it
    /// (under the layout job's lease); the others wait for it, and take it
    /// over if it stops half way. A store of a newer layout is refused.
    pub(super) async fn prepare_layout(&self) -> Result<()> {
        let mut waiting = false;
        loop {
            let schema = self.schema().await?;
            if schema == Some(REGISTRY_SCHEMA) {
                return Ok(());
            }
            if let Some(newer) = schema.filter(|s| *s > REGISTRY_SCHEMA) {
                return Err(Error::Unavailable {
                    message: format!(
                        "the data dir holds registry schema {newer}, newer than the {REGISTRY_SCHEMA} this build knows; run a newer cooperation-registry"
                    ),
                });
            }
            if schema.is_none() && self.seed_at_once().await? {
                return Ok(());
            }
            if schema.is_none() && self.schema().await?.is_some() {
                continue; // Another server wrote the states meanwhile.
            }
            match self.take_lease(LAYOUT_JOB).await? {
                Some(lease) => return self.prepare_layout_leased(lease).await,
                None => {
                    if !waiting {
                        tracing::info!("another server is preparing the store's layout; waiting for it");
                        waiting = true;
                    }
                    tokio::time::sleep(LAYOUT_POLL).await;
                }
            }
        }
    }

    /// The layout job, under its lease.
    async fn prepare_layout_leased(&self, mut lease: Lease) -> Result<()> {
        // Read again: another server may have finished before the lease was taken.
        let schema = self.schema().await?;
        let fresh = schema.is_none() && self.store.snapshot().await?.scan(b"r/", b"", 1).await?.is_empty();
        match schema {
            Some(REGISTRY_SCHEMA) => {}
            _ if fresh || schema == Some(SEEDING) => self.seed(&mut lease).await?,
            _ => {
                let from = schema.unwrap_or(1);
                if from < 5 {
                    if from >= 3 {
                        self.remove_index_sets(&mut lease).await?;
                    }
                    self.rebuild_indexes(&mut lease, false).await?;
                } else if from < 6 {
                    self.rebuild_indexes(&mut lease, true).await?;
                }
                if from < 4 {
                    self.keep_request_answers(&mut lease).await?;
                }
                tracing::info!(from, to = REGISTRY_SCHEMA, "upgraded the data dir's layout");
            }
        }
        let txn = Txn {
            ops: vec![Op::Put { key: SCHEMA_KEY.to_vec(), value: REGISTRY_SCHEMA.to_be_bytes().to_vec() }],
            change: migration_change(),
            ..Default::default()
        };
        match self.finish_leased(lease, txn).await? {
            Outcome::Committed { .. } => Ok(()),
            Outcome::ConditionFailed => {
                Err(Error::Unavailable { message: "another server took over preparing the store's layout".into() })
            }
        }
    }

    /// Writes the states and the schema version into a new store in one
    /// transaction, when the store's limits allow one that large, so that a
    /// new store holds its states at revision 1 and no job lease is needed.
    /// False when the store is not new (or another server got there first),
    /// or when it takes the states only in several transactions.
    async fn seed_at_once(&self) -> Result<bool> {
        let holds_records = !self.store.snapshot().await?.scan(b"r/", b"", 1).await?.is_empty();
        if holds_records || self.store.get(&super::jobs::lease_key(LAYOUT_JOB)).await?.is_some() {
            return Ok(false);
        }
        let time = now();
        let states = self.seed_items(time).await?;
        let mut txn = seed_txn(&states, time);
        txn.conditions.push(Condition::ModRevision { key: SCHEMA_KEY.to_vec(), equals: 0 });
        txn.conditions.push(Condition::ModRevision { key: super::jobs::lease_key(LAYOUT_JOB), equals: 0 });
        txn.ops.push(Op::Put { key: SCHEMA_KEY.to_vec(), value: REGISTRY_SCHEMA.to_be_bytes().to_vec() });
        if !self.store.limits().admits(txn.size()) {
            return Ok(false);
        }
        Ok(match self.store.commit(txn).await? {
            Outcome::Committed { revision } => {
                tracing::info!(revision, "wrote the ISO 3166-1 states into the new data dir");
                true
            }
            Outcome::ConditionFailed => false,
        })
    }

    /// The states not yet in the store, each as its writes and the event of
    /// its creation at `time`.
    async fn seed_items(&self, time: prost_types::Timestamp) -> Result<Vec<(Txn, StoredEvent)>> {
        let mut items = Vec::new();
        let states = party::iso_states();
        let keys: Vec<Vec<u8>> = states.iter().map(|(id, _)| record_key(&resource::PARTY.name_of(id))).collect();
        let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let stored = self.store.get_many(&keys).await?;
        for ((id, mut party), stored) in states.into_iter().zip(stored) {
            party.name = resource::PARTY.name_of(&id);
            if stored.is_some() {
                continue;
            }
            party.create_time = Some(time);
            party.update_time = Some(time);
            let bytes = party.encode_to_vec();
            let entries = index::entries(&resource::PARTY, &bytes).map_err(Error::internal)?;
            let mut item = Txn { ops: move_member(id.as_bytes(), &BTreeSet::new(), &entries), ..Default::default() };
            item.conditions.push(Condition::ModRevision { key: record_key(&party.name), equals: 0 });
            item.ops.push(Op::Put { key: record_key(&party.name), value: bytes });
            let event = StoredEvent::new(ChangeKind::Created, party.name, 0);
            items.push((item, event));
        }
        Ok(items)
    }

    /// The schema version the store holds; `None` for a store without one
    /// (empty, or of schema 1).
    async fn schema(&self) -> Result<Option<u32>> {
        self.store
            .get(SCHEMA_KEY)
            .await?
            .map(|entry| {
                entry.value[..]
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_err(|_| Error::internal("corrupt registry schema"))
            })
            .transpose()
    }

    /// Writes `item` for the job of `lease` as part of `batches`, committing
    /// what is gathered when it is full.
    pub(super) async fn write_batched(&self, lease: &mut Lease, batches: &mut Batches, item: Txn) -> Result<()> {
        let full = batches.push(item).map_err(Error::internal)?;
        self.commit_batch(lease, full).await
    }

    /// Commits the batch `txn`, if any, for the job of `lease`.
    pub(super) async fn commit_batch(&self, lease: &mut Lease, txn: Option<Txn>) -> Result<()> {
        let Some(txn) = txn else { return Ok(()) };
        match self.commit_leased(lease, txn).await? {
            Outcome::Committed { .. } => Ok(()),
            Outcome::ConditionFailed => Err(Error::internal("what a job read changed before it wrote")),
        }
    }

    /// Schema 5: removes every index entry (set member), for
    /// `rebuild_indexes` to write them as this build encodes them.
    async fn remove_index_sets(&self, lease: &mut Lease) -> Result<()> {
        let mut batches = Batches::new(self.store.limits(), migration_change(), Lease::SIZE);
        let mut removed = 0;
        let mut reported = Instant::now();
        let mut start = Vec::new();
        loop {
            let read = self.store.snapshot().await?.members(b"i/", &start, 10_000).await?;
            let Some(last) = read.last() else { break };
            start = key_after(last);
            for entry in read.iter() {
                // A set's name ends in its last 0 byte: ids hold none.
                let Some(at) = entry.iter().rposition(|b| *b == 0) else { continue };
                let (set, member) = (entry[..=at].to_vec(), entry[at + 1..].to_vec());
                self.write_batched(
                    lease,
                    &mut batches,
                    Txn { ops: vec![Op::Remove { set, member }], ..Default::default() },
                )
                .await?;
            }
            removed += read.len();
            if reported.elapsed() >= PROGRESS_INTERVAL {
                tracing::info!(removed, "upgrading the data dir: removing the old index entries");
                reported = Instant::now();
            }
        }
        self.commit_batch(lease, batches.take()).await?;
        tracing::info!(removed, "removed the old index entries");
        Ok(())
    }

    /// Schema 3: writes the index, outline and reference sets of every record
    /// (for data dirs from before the indexes, or from when their entries
    /// were keys: those are removed first). Schema 6: with `only_outlines`,
    /// the outline sets alone, which schema 5 lacked.
    pub(super) async fn rebuild_indexes(&self, lease: &mut Lease, only_outlines: bool) -> Result<()> {
        let mut batches = Batches::new(self.store.limits(), migration_change(), Lease::SIZE);
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
            // Each read starts after the last key read, not at the prefix: an
            // engine may keep emptied ranges for a while (sled keeps emptied
            // leaves), and walking them again each time makes the upgrade
            // quadratic.
            let mut start = Vec::new();
            loop {
                let read = self.store.snapshot().await?.scan(old, &start, 10_000).await?;
                let Some((last, _)) = read.last() else { break };
                start = key_after(last);
                removed += read.len();
                report("old entries removed", removed);
                for (key, _) in read {
                    self.write_batched(
                        lease,
                        &mut batches,
                        Txn { ops: vec![Op::Delete { key }], ..Default::default() },
                    )
                    .await?;
                }
            }
        }
        let mut written = 0;
        for kind in resource::KINDS {
            let prefix = collection_key(kind);
            let descriptor = kind.descriptor();
            let mut start = Vec::new();
            loop {
                let read = self.store.snapshot().await?.scan(&prefix, &start, 500).await?;
                for (key, entry) in &read {
                    let record = &entry.value[..];
                    let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                    let outlines = outline_memberships(kind, record)?;
                    let mut item = Txn { ops: move_memberships(&BTreeSet::new(), &outlines), ..Default::default() };
                    if only_outlines {
                        if !item.ops.is_empty() {
                            self.write_batched(lease, &mut batches, item).await?;
                        }
                        continue;
                    }
                    let entries = index::entries(kind, record).map_err(Error::internal)?;
                    item.ops.extend(move_member(id.as_bytes(), &BTreeSet::new(), &entries));
                    if !has_field(record, kind.delete_time_field()).map_err(Error::internal)? {
                        let references =
                            validate::check_encoded(record, &descriptor, kind.singular, &mut Violations::new())
                                .map_err(Error::internal)?;
                        item.ops.extend(reference_ops(&kind.name_of(&id), &BTreeSet::new(), &targets(&references)));
                    }
                    if !item.ops.is_empty() {
                        self.write_batched(lease, &mut batches, item).await?;
                    }
                }
                written += read.len();
                report("records indexed", written);
                match read.last() {
                    Some((key, _)) if read.len() == 500 => start = key_after(key),
                    _ => break,
                }
            }
        }
        self.commit_batch(lease, batches.take()).await?;
        tracing::info!(records = written, old_entries_removed = removed, "rebuilt the index and reference sets");
        Ok(())
    }

    /// Writes the ISO 3166-1 states into a new store whose limits take them
    /// only in several transactions, in as many as they need, each with the change-log
    /// entry of the states it creates. Marks the store as being seeded
    /// first, so that a server taking the job over writes the states not
    /// yet written.
    async fn seed(&self, lease: &mut Lease) -> Result<()> {
        let marker = Txn {
            ops: vec![Op::Put { key: SCHEMA_KEY.to_vec(), value: SEEDING.to_be_bytes().to_vec() }],
            change: migration_change(),
            ..Default::default()
        };
        self.commit_batch(lease, Some(marker)).await?;
        let time = now();
        let limits = self.store.limits();
        let mut batch: Vec<(Txn, StoredEvent)> = Vec::new();
        let mut created = 0;
        for state in self.seed_items(time).await? {
            batch.push(state);
            // The change-log entry grows with each state, so a batch is
            // measured whole: without the last state when that one is too many.
            if !limits.admits(seed_txn(&batch, time).size() + Lease::SIZE) {
                let last = batch.pop().expect("a state was just added");
                if batch.is_empty() {
                    return Err(Error::internal("one state alone is beyond the store's transaction limits"));
                }
                created += batch.len();
                self.commit_batch(lease, Some(seed_txn(&batch, time))).await?;
                batch = vec![last];
            }
        }
        if !batch.is_empty() {
            created += batch.len();
            self.commit_batch(lease, Some(seed_txn(&batch, time))).await?;
        }
        tracing::info!(states = created, "wrote the ISO 3166-1 states into the new data dir");
        Ok(())
    }
}

/// One transaction of the first start: the states of `batch`, and the
/// change-log entry of their creation.
fn seed_txn(batch: &[(Txn, StoredEvent)], time: prost_types::Timestamp) -> Txn {
    let mut txn = Txn::default();
    let mut change = StoredChange { actor: SEED_ACTOR.into(), commit_time: Some(time), events: Vec::new() };
    for (item, event) in batch {
        txn.conditions.extend(item.conditions.iter().cloned());
        txn.ops.extend(item.ops.iter().cloned());
        change.events.push(event.clone());
    }
    txn.change = change.encode_to_vec();
    txn
}

/// The change-log entry of an upgrade's writes.
fn migration_change() -> Vec<u8> {
    StoredChange::bookkeeping(MIGRATION_ACTOR)
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
    use crate::store::TxnLimits;
    use crate::store::memory::MemoryStore;

    /// A data dir of schema 5 lacks the outline sets: opening it writes them
    /// for every agreement and engagement, and nothing else.
    #[tokio::test]
    async fn a_schema_5_data_dir_gains_its_outline_sets() {
        let store = Arc::new(MemoryStore::new());
        let registry = Registry::open(store.clone()).await.unwrap();
        let agreement = super::super::testing::india_japan();
        registry.create("a1", agreement, &anonymous("CreateAgreement")).await.unwrap();
        let outlined = |party: &str| format!("i/agreements/parties#outline\0{party}\0").into_bytes();
        let members = |set: Vec<u8>| {
            let store = store.clone();
            async move { store.snapshot().await.unwrap().members(&set, b"", 10_000).await.unwrap().len() }
        };
        assert_eq!(members(outlined("parties/ind")).await, 1);
        // As schema 5 left it: no outline sets.
        let outlines =
            outline_memberships(&resource::AGREEMENT, &store.get(b"r/agreements/a1").await.unwrap().unwrap().value)
                .unwrap();
        let mut ops = move_memberships(&outlines, &BTreeSet::new());
        ops.push(Op::Put { key: SCHEMA_KEY.to_vec(), value: 5u32.to_be_bytes().to_vec() });
        store.commit(Txn { ops, ..Default::default() }).await.unwrap();
        assert_eq!(members(outlined("parties/ind")).await, 0);
        let entries_before = members(b"i/agreements/".to_vec()).await;

        Registry::open(store.clone()).await.unwrap();
        assert_eq!(store.get(SCHEMA_KEY).await.unwrap().unwrap().value, &REGISTRY_SCHEMA.to_be_bytes()[..]);
        assert_eq!(members(outlined("parties/ind")).await, 1);
        assert_eq!(members(outlined("parties/jpn")).await, 1);
        assert_eq!(members(b"i/agreements/".to_vec()).await, entries_before + 2, "the two outlines, and nothing else");
    }

    /// A data dir of schema 2, whose index and reference entries were keys,
    /// is upgraded when opened: the old keys go, and the sets answer Lists
    /// and keep a referenced party from being deleted.
    #[tokio::test]
    async fn a_schema_2_data_dir_is_upgraded_to_sets() {
        let store = Arc::new(MemoryStore::with_limits(ETCD_DEFAULT_LIMITS));
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
        assert!(!store.snapshot().await.unwrap().scan(b"i/", b"", 10).await.unwrap().is_empty());

        let registry = Registry::open(store.clone()).await.unwrap();
        assert!(
            store.snapshot().await.unwrap().scan(b"i/", b"", 10).await.unwrap().is_empty(),
            "old index keys removed"
        );
        assert!(
            store.snapshot().await.unwrap().scan(b"x/", b"", 10).await.unwrap().is_empty(),
            "old reference keys removed"
        );
        assert_eq!(store.get(SCHEMA_KEY).await.unwrap().unwrap().value, &REGISTRY_SCHEMA.to_be_bytes()[..]);
        assert_eq!(
            store.snapshot().await.unwrap().members(b"x/parties/jpn\0", b"", 10).await.unwrap().to_vec(),
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

    /// etcd's limits when the operator sets none: 128 operations, 1.5 MiB.
    const ETCD_DEFAULT_LIMITS: TxnLimits = TxnLimits { max_ops: 128, max_bytes: 1536 * 1024 };

    /// The states the change log says were created at the first start.
    async fn seeded(store: &MemoryStore) -> Vec<String> {
        let mut names = Vec::new();
        for (_, bytes) in store.changes(1, 10_000).await.unwrap() {
            let change = StoredChange::decode(bytes.as_slice()).unwrap();
            if change.actor == SEED_ACTOR {
                names.extend(change.events.into_iter().map(|e| e.name));
            }
        }
        names
    }

    async fn parties(registry: &Registry) -> usize {
        let query = ListQuery { page_size: 1000, ..Default::default() };
        registry.list::<Party>(&query).await.unwrap().items.len()
    }

    /// A store that takes transactions of at most 128 operations gets the
    /// 249 states in several, each with the change-log entry of its own.
    #[tokio::test]
    async fn the_first_start_fits_its_states_into_the_store_s_limits() {
        let store = Arc::new(MemoryStore::with_limits(ETCD_DEFAULT_LIMITS));
        let registry = Registry::open(store.clone()).await.unwrap();
        assert_eq!(parties(&registry).await, 249);
        let seeded = seeded(&store).await;
        assert_eq!(seeded.len(), 249);
        let transactions = store.changes(1, 10_000).await.unwrap().len();
        assert!(transactions > 10, "{transactions} transactions");
        assert_eq!(registry.schema().await.unwrap(), Some(REGISTRY_SCHEMA));
    }

    /// Servers that open one new store at once: one writes the states, the
    /// others wait for it, and every one of them opens.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn servers_opening_one_new_store_at_once_seed_it_once() {
        for limits in [TxnLimits::UNBOUNDED, ETCD_DEFAULT_LIMITS] {
            let store = Arc::new(MemoryStore::with_limits(limits));
            let opening = (0..3).map(|_| tokio::spawn(Registry::open(store.clone() as Arc<dyn crate::store::Store>)));
            let registries: Vec<Registry> = futures_join(opening).await;
            let seeded = seeded(&store).await;
            assert_eq!(seeded.len(), 249, "each state created once ({limits:?})");
            assert_eq!(seeded.iter().collect::<BTreeSet<_>>().len(), 249);
            for registry in &registries {
                assert_eq!(parties(registry).await, 249);
            }
            if limits == TxnLimits::UNBOUNDED {
                assert_eq!(
                    store.current_revision().await.unwrap(),
                    1,
                    "a store that takes them at once has them at revision 1"
                );
            }
        }
    }

    async fn futures_join(handles: impl Iterator<Item = tokio::task::JoinHandle<Result<Registry>>>) -> Vec<Registry> {
        let mut opened = Vec::new();
        for handle in handles {
            opened.push(handle.await.unwrap().unwrap());
        }
        opened
    }

    /// A server that stopped half way through the first start (its lease
    /// expired) is taken over: the next one writes the states not yet
    /// written, each once.
    #[tokio::test]
    async fn a_first_start_cut_short_is_finished_by_the_next_server() {
        let store = Arc::new(MemoryStore::with_limits(ETCD_DEFAULT_LIMITS));
        let first = Registry {
            store: store.clone(),
            instance: "stopped".into(),
            request_retention: crate::registry::DEFAULT_REQUEST_RETENTION,
            shutdown: tokio::sync::watch::Sender::new(false),
            watchers: Default::default(),
            record_locks: Box::new([]),
            presented: super::super::presented::PresentedMemo::new(),
            targets: Default::default(),
        };
        let mut lease = first.take_lease(LAYOUT_JOB).await.unwrap().unwrap();
        let marker = Txn {
            ops: vec![Op::Put { key: SCHEMA_KEY.to_vec(), value: SEEDING.to_be_bytes().to_vec() }],
            change: migration_change(),
            ..Default::default()
        };
        first.commit_batch(&mut lease, Some(marker)).await.unwrap();
        // Ten states written, then the server stops; its lease runs out.
        let time = now();
        let mut batch = Vec::new();
        for (id, mut party) in party::iso_states().into_iter().take(10) {
            party.name = resource::PARTY.name_of(&id);
            let item = Txn {
                ops: vec![Op::Put { key: record_key(&party.name), value: party.encode_to_vec() }],
                ..Default::default()
            };
            let event = StoredEvent::new(ChangeKind::Created, party.name, 0);
            batch.push((item, event));
        }
        first.commit_batch(&mut lease, Some(seed_txn(&batch, time))).await.unwrap();
        let expired = [0u8; 8].iter().copied().chain(*b"stopped").collect::<Vec<u8>>();
        store
            .commit(Txn {
                ops: vec![Op::Put { key: b"meta/jobs/layout".to_vec(), value: expired }],
                ..Default::default()
            })
            .await
            .unwrap();

        let registry = Registry::open(store.clone()).await.unwrap();
        assert_eq!(parties(&registry).await, 249);
        let seeded = seeded(&store).await;
        assert_eq!(seeded.len(), 249, "the ten written before are not written again");
        assert!(store.get(b"meta/jobs/layout").await.unwrap().is_none(), "the job's lease ends with it");
    }
}
