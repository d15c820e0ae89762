//! Property test of the storage contract: random sequences of transactions
//! (several submitted at once, so they share a write group), compactions and
//! reopenings run against the sled store, the memory store and a plain model
//! of the contract written here; after every step all three must agree on
//! every key, set member, scans, the revision and the change log, and a view
//! of each store opened before the step must still show the state before it.
//!
//! `PROPTEST_CASES=2000 cargo test --release --test store_model` runs longer.

use std::collections::BTreeMap;
use std::sync::Arc;

use cooperation_registry::store::memory::MemoryStore;
use cooperation_registry::store::sled::Durability;
use cooperation_registry::store::sled::{SledOptions, SledStore};
use cooperation_registry::store::{Condition, Entry, Op, Outcome, Snapshot, Store, Txn};
use proptest::prelude::*;

const KEYS: [&str; 7] = ["a", "ab", "b", "c/1", "c/2", "c/3", "c/33"];
const PREFIXES: [&str; 7] = ["", "a", "c/", "c/3", "x/", "x/a\0", "y"];
/// Prefix-free set names, and members enough to fill more than one chunk.
const SETS: [&str; 3] = ["x/a\0", "x/b\0", "y\0"];
const MEMBERS: usize = 48;

/// A condition, made concrete against the model when it runs, so that both
/// holding and failing conditions occur.
#[derive(Clone, Debug)]
enum ConditionSpec {
    /// The key's current revision (holds), or that plus `off` (fails unless 0).
    KeyAt { key: usize, off: u64 },
    /// The key is absent.
    Absent { key: usize },
    /// Nothing under the prefix written after the current revision minus `back`.
    NoneWrittenAfter { prefix: usize, back: u64 },
}

#[derive(Clone, Debug)]
enum OpSpec {
    Put { key: usize, value: u8 },
    Delete { key: usize },
    Add { set: usize, member: usize },
    Remove { set: usize, member: usize },
}

#[derive(Clone, Debug)]
struct TxnSpec {
    conditions: Vec<ConditionSpec>,
    ops: Vec<OpSpec>,
}

#[derive(Clone, Debug)]
enum Step {
    /// Transactions submitted together, applied in submission order.
    Group(Vec<TxnSpec>),
    /// Compact the change log to the current revision minus `back`.
    Compact { back: u64 },
    /// Close the stores and open them again (the memory store is kept).
    Reopen,
}

fn condition() -> impl Strategy<Value = ConditionSpec> {
    prop_oneof![
        (0..KEYS.len(), prop_oneof![3 => Just(0u64), 1 => 1..3u64])
            .prop_map(|(key, off)| ConditionSpec::KeyAt { key, off }),
        (0..KEYS.len()).prop_map(|key| ConditionSpec::Absent { key }),
        (0..PREFIXES.len(), 0..3u64).prop_map(|(prefix, back)| ConditionSpec::NoneWrittenAfter { prefix, back }),
    ]
}

fn op() -> impl Strategy<Value = OpSpec> {
    prop_oneof![
        3 => (0..KEYS.len(), any::<u8>()).prop_map(|(key, value)| OpSpec::Put { key, value }),
        1 => (0..KEYS.len()).prop_map(|key| OpSpec::Delete { key }),
        4 => (0..SETS.len(), 0..MEMBERS).prop_map(|(set, member)| OpSpec::Add { set, member }),
        1 => (0..SETS.len(), 0..MEMBERS).prop_map(|(set, member)| OpSpec::Remove { set, member }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let txn = (prop::collection::vec(condition(), 0..3), prop::collection::vec(op(), 0..6))
        .prop_map(|(conditions, ops)| TxnSpec { conditions, ops });
    prop_oneof![
        8 => prop::collection::vec(txn, 1..5).prop_map(Step::Group),
        1 => (0..4u64).prop_map(|back| Step::Compact { back }),
        1 => Just(Step::Reopen),
    ]
}

/// The contract, as plainly as it can be written.
#[derive(Clone, Default)]
struct Model {
    keys: BTreeMap<Vec<u8>, Entry>,
    /// Set members (set name and member together) and the revision that added each.
    members: BTreeMap<Vec<u8>, u64>,
    /// Each removal of a member: its set, and the revision.
    removals: Vec<(&'static str, u64)>,
    changes: BTreeMap<u64, Vec<u8>>,
    revision: u64,
    first_change: u64,
}

fn member_of(set: usize, member: usize) -> (Vec<u8>, Vec<u8>) {
    (SETS[set].as_bytes().to_vec(), format!("m{member:02}").into_bytes())
}

impl Model {
    fn concrete(&self, spec: &TxnSpec, serial: usize) -> Txn {
        let conditions = spec
            .conditions
            .iter()
            .filter_map(|c| match c {
                ConditionSpec::KeyAt { key, off } => {
                    let key = KEYS[*key].as_bytes().to_vec();
                    let current = self.keys.get(&key).map_or(0, |e| e.mod_revision);
                    Some(Condition::ModRevision { key, equals: current + off })
                }
                ConditionSpec::Absent { key } => Some(Condition::ModRevision { key: KEYS[*key].into(), equals: 0 }),
                ConditionSpec::NoneWrittenAfter { prefix, back } => {
                    let (prefix, revision) = (PREFIXES[*prefix], self.revision.saturating_sub(*back));
                    // Whether a removal counts as a write is the engine's
                    // choice: a condition it would decide is left out.
                    let removed = self.removals.iter().any(|(set, r)| set.starts_with(prefix) && *r > revision);
                    (!removed).then(|| Condition::NoneWrittenAfter { prefix: prefix.into(), revision })
                }
            })
            .collect();
        let ops = spec
            .ops
            .iter()
            .map(|o| match o {
                OpSpec::Put { key, value } => {
                    Op::Put { key: KEYS[*key].into(), value: vec![*value; 1 + *value as usize % 5] }
                }
                OpSpec::Delete { key } => Op::Delete { key: KEYS[*key].into() },
                OpSpec::Add { set, member } => {
                    let (set, member) = member_of(*set, *member);
                    Op::Add { set, member }
                }
                OpSpec::Remove { set, member } => {
                    let (set, member) = member_of(*set, *member);
                    Op::Remove { set, member }
                }
            })
            .collect();
        Txn { conditions, ops, change: format!("change {serial}").into_bytes() }
    }

    fn holds(&self, condition: &Condition) -> bool {
        match condition {
            Condition::ModRevision { key, equals } => self.keys.get(key).map_or(0, |e| e.mod_revision) == *equals,
            Condition::NoneWrittenAfter { prefix, revision } => {
                let set_of = |key: &[u8]| SETS.iter().find(|s| key.starts_with(s.as_bytes())).copied().unwrap();
                self.keys.iter().filter(|(k, _)| k.starts_with(prefix)).all(|(_, e)| e.mod_revision <= *revision)
                    && self
                        .members
                        .iter()
                        .filter(|(k, _)| set_of(k).as_bytes().starts_with(prefix))
                        .all(|(_, added)| added <= revision)
            }
        }
    }

    fn commit(&mut self, txn: &Txn) -> Outcome {
        if !txn.conditions.iter().all(|c| self.holds(c)) {
            return Outcome::ConditionFailed;
        }
        self.revision += 1;
        for op in &txn.ops {
            match op {
                Op::Put { key, value } => {
                    self.keys.insert(key.clone(), Entry { mod_revision: self.revision, value: value.clone().into() });
                }
                Op::Delete { key } => {
                    self.keys.remove(key);
                }
                Op::Add { set, member } => {
                    self.members.entry([set.as_slice(), member].concat()).or_insert(self.revision);
                }
                Op::Remove { set, member } => {
                    if self.members.remove(&[set.as_slice(), member].concat()).is_some() {
                        let set = SETS.iter().find(|s| s.as_bytes() == set.as_slice()).unwrap();
                        self.removals.push((set, self.revision));
                    }
                }
            }
        }
        self.changes.insert(self.revision, txn.change.clone());
        Outcome::Committed { revision: self.revision }
    }

    fn compact(&mut self, to: u64) {
        let to = to.min(self.revision + 1);
        if to > self.first_change.max(1) {
            self.first_change = to;
            self.changes = self.changes.split_off(&to);
        }
    }
}

/// The store agrees with the model: its revision, its keys, what a view
/// at its latest revision shows, and its change log.
async fn assert_agrees(model: &Model, store: &dyn Store, which: &str) {
    assert_eq!(store.current_revision().await.unwrap(), model.revision, "{which}: revision");
    for key in KEYS {
        let found = store.get(key.as_bytes()).await.unwrap();
        assert_eq!(found.as_ref(), model.keys.get(key.as_bytes()), "{which}: key {key}");
    }
    assert_view_agrees(model, &*store.snapshot().await.unwrap(), which).await;
    let first = model.first_change.max(1);
    assert_eq!(store.first_change().await.unwrap(), first, "{which}: first change");
    let expected: Vec<(u64, Vec<u8>)> = model.changes.iter().map(|(r, c)| (*r, c.clone())).collect();
    assert_eq!(store.changes(first, 10_000).await.unwrap(), expected, "{which}: change log");
}

/// A view shows the model's keys and members at the model's revision: read
/// one at a time, many at once, by scan and by members.
async fn assert_view_agrees(model: &Model, view: &dyn Snapshot, which: &str) {
    assert_eq!(view.revision(), model.revision, "{which}: view revision");
    let keys: Vec<&[u8]> = KEYS.iter().map(|key| key.as_bytes()).collect();
    let expected: Vec<Option<Entry>> = keys.iter().map(|key| model.keys.get(*key).cloned()).collect();
    assert_eq!(view.get_many(&keys).await.unwrap(), expected, "{which}: keys");
    for prefix in PREFIXES {
        let expected: Vec<(Vec<u8>, Entry)> = model
            .keys
            .iter()
            .filter(|(k, _)| k.starts_with(prefix.as_bytes()))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        assert_eq!(view.scan(prefix.as_bytes(), b"", 100).await.unwrap(), expected, "{which}: scan {prefix:?}");
        // Paged by two from each key on.
        if let Some((second, _)) = expected.get(1) {
            assert_eq!(
                view.scan(prefix.as_bytes(), second, 2).await.unwrap(),
                expected[1..].iter().take(2).cloned().collect::<Vec<_>>()
            );
        }
    }
    for prefix in PREFIXES {
        let expected: Vec<Vec<u8>> =
            model.members.keys().filter(|k| k.starts_with(prefix.as_bytes())).cloned().collect();
        assert_eq!(
            view.members(prefix.as_bytes(), b"", 1000).await.unwrap().to_vec(),
            expected,
            "{which}: members {prefix:?}"
        );
        if let Some(third) = expected.get(2) {
            assert_eq!(
                view.members(prefix.as_bytes(), third, 3).await.unwrap().to_vec(),
                expected[2..].iter().take(3).cloned().collect::<Vec<_>>()
            );
        }
    }
}

fn open_sled(dir: &std::path::Path) -> Arc<SledStore> {
    // A checkpoint every few groups, so the model also checks that closing and
    // reopening the database under the writer loses and changes nothing; a
    // read cache of a few entries, so that reads also come from it, and it
    // drops and refills them as the writes go.
    let options = SledOptions {
        durability: Durability::None,
        cache_capacity: 8 * 1024 * 1024,
        checkpoint_bytes: 200,
        read_cache_bytes: 16 * 1024,
        ..SledOptions::default()
    };
    Arc::new(SledStore::open(dir, options).expect("sled store opens"))
}

fn run(steps: Vec<Step>) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sled = open_sled(dir.path());
    let memory = MemoryStore::new();
    let mut model = Model::default();
    let mut serial = 0;
    for step in steps {
        // Views opened before the step, to be read after it (a reopening
        // ends the sled store's).
        let before = match step {
            Step::Reopen => None,
            _ => runtime.block_on(async {
                Some((model.clone(), sled.snapshot().await.unwrap(), memory.snapshot().await.unwrap()))
            }),
        };
        match step {
            Step::Group(specs) => {
                // Submitted one after another without waiting, so the writer
                // takes them as one group, in this order.
                let mut expected = Vec::new();
                let mut pending = Vec::new();
                for spec in &specs {
                    serial += 1;
                    let txn = model.concrete(spec, serial);
                    expected.push(model.commit(&txn));
                    pending.push((sled.commit(txn.clone()), memory.commit(txn)));
                }
                for ((on_sled, in_memory), expected) in pending.into_iter().zip(expected) {
                    assert_eq!(runtime.block_on(on_sled).unwrap(), expected, "sled outcome");
                    assert_eq!(runtime.block_on(in_memory).unwrap(), expected, "memory outcome");
                }
            }
            Step::Compact { back } => {
                let to = model.revision.saturating_sub(back);
                model.compact(to);
                runtime.block_on(sled.compact(to)).unwrap();
                runtime.block_on(memory.compact(to)).unwrap();
            }
            Step::Reopen => {
                sled.engine().close().unwrap();
                drop(sled);
                sled = open_sled(dir.path());
            }
        }
        runtime.block_on(async {
            assert_agrees(&model, &*sled, "sled").await;
            assert_agrees(&model, &memory, "memory").await;
            if let Some((earlier, on_sled, in_memory)) = before {
                assert_view_agrees(&earlier, &*on_sled, "sled view").await;
                assert_view_agrees(&earlier, &*in_memory, "memory view").await;
            }
        });
    }
    sled.engine().close().unwrap();
}

proptest! {
    // 64 cases unless PROPTEST_CASES asks for more (a case count set here
    // would override the variable).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn sled_and_memory_stores_agree_with_the_model(steps in prop::collection::vec(step(), 1..40)) {
        run(steps);
    }
}
