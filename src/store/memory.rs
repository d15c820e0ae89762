//! An in-memory [`Store`] with the same semantics as the sled one: for tests of the
//! layers above, and the model the shared conformance suite holds both to.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{
    Applied, BoxFuture, ChangeStream, Changes, Condition, Engine, EngineMetric, Entries, Entry, Members, MetricKind,
    Op, Outcome, Snapshot, Store, StoreError, StoreResult, Txn, TxnLimits,
};

/// The keys and set members at one revision. A snapshot shares it; the
/// next write copies it first if one does.
#[derive(Clone, Default)]
struct Data {
    keys: BTreeMap<Vec<u8>, Entry>,
    /// Set members by set name followed by member: the length of the set's
    /// name and the revision that added the member.
    members: BTreeMap<Vec<u8>, (usize, u64)>,
}

#[derive(Default)]
struct State {
    data: Arc<Data>,
    changes: BTreeMap<u64, Vec<u8>>,
    revision: u64,
    first_change: u64,
    closed: bool,
}

pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    limits: TxnLimits,
    /// The latest revision, for watches: memory is durable once applied.
    announced: tokio::sync::watch::Sender<u64>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            state: Arc::default(),
            limits: TxnLimits::UNBOUNDED,
            announced: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// A store that takes transactions only up to `limits`, as a networked
    /// engine does: for tests of the callers that split their work.
    pub fn with_limits(limits: TxnLimits) -> MemoryStore {
        MemoryStore { limits, ..MemoryStore::default() }
    }
}

/// The entries of `map` under `prefix`, from `start` (itself under
/// `prefix`, or empty for the first), in order: what `scan`, `members` and
/// the conditions read.
fn under<'a, V>(
    map: &'a BTreeMap<Vec<u8>, V>,
    prefix: &'a [u8],
    start: &[u8],
) -> impl Iterator<Item = (&'a Vec<u8>, &'a V)> {
    let from = if start.is_empty() { prefix } else { start };
    map.range(from.to_vec()..).take_while(move |(k, _)| k.starts_with(prefix))
}

impl Data {
    fn holds(&self, condition: &Condition) -> bool {
        match condition {
            Condition::ModRevision { key, equals } => {
                self.keys.get(key).map(|e| e.mod_revision).unwrap_or(0) == *equals
            }
            Condition::NoneWrittenAfter { prefix, revision } => {
                under(&self.keys, prefix, b"").all(|(_, e)| e.mod_revision <= *revision)
                    && under(&self.members, prefix, b"")
                        .all(|(_, (set_len, added))| *set_len < prefix.len() || added <= revision)
            }
        }
    }
}

/// A view of the memory store: the data of its revision, shared.
struct MemorySnapshot {
    data: Arc<Data>,
    revision: u64,
}

impl Snapshot for MemorySnapshot {
    fn revision(&self) -> u64 {
        self.revision
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a [u8]]) -> BoxFuture<'a, StoreResult<Vec<Option<Entry>>>> {
        let found = keys.iter().map(|key| self.data.keys.get(*key).cloned()).collect();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn scan<'a>(&'a self, prefix: &'a [u8], start: &'a [u8], limit: usize) -> BoxFuture<'a, StoreResult<Entries>> {
        let found = under(&self.data.keys, prefix, start).take(limit).map(|(k, e)| (k.clone(), e.clone())).collect();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn members<'a>(&'a self, prefix: &'a [u8], start: &'a [u8], limit: usize) -> BoxFuture<'a, StoreResult<Members>> {
        let mut members = Members::default();
        for (member, _) in under(&self.data.members, prefix, start).take(limit) {
            members.push(member);
        }
        Box::pin(std::future::ready(Ok(members)))
    }

    fn members_before<'a>(
        &'a self,
        prefix: &'a [u8],
        before: &'a [u8],
        limit: usize,
    ) -> BoxFuture<'a, StoreResult<Members>> {
        let mut members = Members::default();
        let end = match before {
            [] => crate::store::prefix_end(prefix),
            before => before.to_vec(),
        };
        let end = match end.is_empty() {
            true => std::ops::Bound::Unbounded,
            false => std::ops::Bound::Excluded(end),
        };
        let range = self.data.members.range((std::ops::Bound::Included(prefix.to_vec()), end));
        for (member, _) in range.rev().take_while(|(m, _)| m.starts_with(prefix)).take(limit) {
            members.push(member);
        }
        Box::pin(std::future::ready(Ok(members)))
    }
}

impl MemoryStore {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("state lock")
    }
}

impl Store for MemoryStore {
    fn snapshot(&self) -> BoxFuture<'_, StoreResult<Box<dyn Snapshot>>> {
        let state = self.state();
        let snapshot: Box<dyn Snapshot> =
            Box::new(MemorySnapshot { data: state.data.clone(), revision: state.revision });
        Box::pin(std::future::ready(Ok(snapshot)))
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a [u8]]) -> BoxFuture<'a, StoreResult<Vec<Option<Entry>>>> {
        let state = self.state();
        let found = keys.iter().map(|key| state.data.keys.get(*key).cloned()).collect();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn current_revision(&self) -> BoxFuture<'_, StoreResult<u64>> {
        let revision = self.state().revision;
        Box::pin(std::future::ready(Ok(revision)))
    }

    fn limits(&self) -> TxnLimits {
        self.limits
    }

    fn wait_durable(&self, _revision: u64) -> BoxFuture<'static, StoreResult<()>> {
        Box::pin(async { Ok(()) })
    }

    fn apply(&self, txn: Txn) -> BoxFuture<'static, StoreResult<Applied>> {
        let mut state = self.state.lock().expect("state lock");
        let outcome = if state.closed {
            Err(StoreError::Closed)
        } else if let Err(too_large) = self.limits.check(&txn) {
            Err(too_large)
        } else if !txn.conditions.iter().all(|c| state.data.holds(c)) {
            Ok(Outcome::ConditionFailed)
        } else {
            state.revision += 1;
            let revision = state.revision;
            let data = Arc::make_mut(&mut state.data);
            for op in txn.ops {
                match op {
                    Op::Put { key, value } => {
                        data.keys.insert(key, Entry { mod_revision: revision, value: value.into() });
                    }
                    Op::Delete { key } => {
                        data.keys.remove(&key);
                    }
                    Op::Add { set, member } => {
                        let set_len = set.len();
                        data.members.entry([set, member].concat()).or_insert((set_len, revision));
                    }
                    Op::Remove { set, member } => {
                        data.members.remove(&[set, member].concat());
                    }
                }
            }
            state.changes.insert(revision, txn.change);
            self.announced.send_replace(revision);
            Ok(Outcome::Committed { revision })
        };
        Box::pin(async move { outcome.map(Applied::at_once) })
    }

    fn watch(&self, from_revision: u64) -> ChangeStream {
        let state = self.state.clone();
        crate::store::watch_log(
            from_revision,
            self.announced.subscribe(),
            || StoreError::Closed,
            move |from, limit| {
                let state = state.lock().expect("state lock");
                let entries = state.changes.range(from..).take(limit).map(|(r, c)| (*r, c.clone())).collect();
                Ok((state.first_change.max(1), entries))
            },
        )
    }

    fn changes(&self, from_revision: u64, limit: usize) -> BoxFuture<'_, StoreResult<Changes>> {
        let state = self.state();
        let found = state.changes.range(from_revision..).take(limit).map(|(r, c)| (*r, c.clone())).collect();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn first_change(&self) -> BoxFuture<'_, StoreResult<u64>> {
        let first = self.state().first_change.max(1);
        Box::pin(std::future::ready(Ok(first)))
    }

    fn compact(&self, revision: u64) -> BoxFuture<'_, StoreResult<u64>> {
        let mut state = self.state();
        let revision = revision.min(state.revision + 1);
        let mut removed = 0;
        if revision > state.first_change.max(1) {
            state.first_change = revision;
            let kept = state.changes.split_off(&revision);
            removed = state.changes.len() as u64;
            state.changes = kept;
        }
        Box::pin(std::future::ready(Ok(removed)))
    }

    fn engine(&self) -> &dyn Engine {
        self
    }
}

impl Engine for MemoryStore {
    fn metrics(&self) -> Vec<EngineMetric> {
        let state = self.state();
        let keys: usize = state.data.keys.iter().map(|(k, e)| k.len() + e.value.len() + 16).sum();
        let changes: usize = state.changes.values().map(|c| c.len() + 8).sum();
        let members: usize = state.data.members.keys().map(|k| k.len() + 16).sum();
        vec![EngineMetric {
            name: "store_bytes",
            help: "Memory the store's keys, members and changes take, in bytes.",
            kind: MetricKind::Gauge,
            value: (keys + changes + members) as f64,
        }]
    }

    fn backup(&self, out: std::sync::mpsc::SyncSender<Vec<u8>>) -> StoreResult<u64> {
        let state = self.state.lock().expect("state lock");
        let mut writer = super::backup::BackupWriter::new(out, state.revision, state.first_change.max(1));
        for (key, entry) in &state.data.keys {
            writer.key(key, entry.mod_revision, &entry.value)?;
        }
        for (key, (set_len, revision)) in &state.data.members {
            let (set, member) = key.split_at(*set_len);
            writer.member(set, member, *revision)?;
        }
        for (revision, bytes) in &state.changes {
            writer.change(*revision, bytes)?;
        }
        writer.finish()?;
        Ok(state.revision)
    }

    fn close(&self) -> StoreResult<()> {
        self.state.lock().expect("state lock").closed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::MemoryStore;
    use crate::store::Store;

    async fn open() -> (Arc<dyn Store>, ()) {
        (Arc::new(MemoryStore::new()), ())
    }

    crate::store_conformance_tests!(open);
}
