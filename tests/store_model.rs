//! Property test of the storage contract: random sequences of transactions
//! (several submitted at once, so they share a write group), compactions and
//! reopenings run against the stores and a plain model of the contract
//! written here: the sled and memory stores together, and the etcd store
//! (on a member of `store::etcd::testing`). After every step each store must agree
//! with the model on every key, set member, scans, the revision and the
//! change log, and a view of each store opened before the step must still
//! show the state before it.
//!
//! The model numbers its commits 1, 2, 3 …; a store's revisions need only
//! increase (etcd's count every write to the cluster), so the model names
//! its own and each store's are the ones its commits answered with (see
//! [`Revisions`]).
//!
//! `PROPTEST_CASES=2000 cargo test --release --test store_model` runs longer.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;

use cooperation_registry::store::etcd::testing::{open, start_member};
use cooperation_registry::store::memory::MemoryStore;
use cooperation_registry::store::sled::Durability;
use cooperation_registry::store::sled::{SledOptions, SledStore};
use cooperation_registry::store::{Condition, Entry, Op, Outcome, Snapshot, Store, Txn};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

const KEYS: [&str; 7] = ["a", "ab", "b", "c/1", "c/2", "c/3", "c/33"];
const PREFIXES: [&str; 7] = ["", "a", "c/", "c/3", "x/", "x/a\0", "y"];
/// Prefix-free set names, and members enough to fill more than one chunk.
const SETS: [&str; 3] = ["x/a\0", "x/b\0", "y\0"];
const MEMBERS: usize = 48;

/// A condition, made concrete against the model when it runs, so that both
/// holding and failing conditions occur.
#[derive(Clone, Debug)]
enum ConditionSpec {
    /// The key's current revision (holds), or that plus `off` (fails unless
    /// 0); a revision no answer has told yet is taken as it was before the
    /// group (fails: the group wrote the key since).
    KeyAt { key: usize, off: u64 },
    /// The key is absent.
    Absent { key: usize },
    /// Nothing under the prefix written after the current revision minus
    /// `back`, or after the latest one answered, whichever is older.
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

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(), 1..40)
}

/// A condition in the model's revisions, which each store gets in its own
/// (see [`Revisions::txn`]).
#[derive(Clone, Debug)]
enum ModelCondition {
    /// The key was last written by the model's commit `revision` (0: it is
    /// absent); with an `off`, at a revision `off` past that commit's, which
    /// names no write of the key.
    KeyAt { key: Vec<u8>, revision: u64, off: u64 },
    /// Nothing under the prefix was written after the model's commit `revision`.
    NoneWrittenAfter { prefix: Vec<u8>, revision: u64 },
}

/// A transaction in the model's revisions.
#[derive(Clone, Debug)]
struct ModelTxn {
    conditions: Vec<ModelCondition>,
    ops: Vec<Op>,
    change: Vec<u8>,
}

/// The contract, as plainly as it can be written, in revisions of its own:
/// its commits numbered 1, 2, 3 … (0 before the first).
#[derive(Clone, Default)]
struct Model {
    keys: BTreeMap<Vec<u8>, Entry>,
    /// Set members (set name and member together) and the revision that added each.
    members: BTreeMap<Vec<u8>, u64>,
    /// Each removal of a member: its set, and the revision.
    removals: Vec<(&'static str, u64)>,
    changes: BTreeMap<u64, Vec<u8>>,
    revision: u64,
}

fn member_of(set: usize, member: usize) -> (Vec<u8>, Vec<u8>) {
    (SETS[set].as_bytes().to_vec(), format!("m{member:02}").into_bytes())
}

impl Model {
    fn mod_revision(&self, key: &[u8]) -> u64 {
        self.keys.get(key).map_or(0, |e| e.mod_revision)
    }

    /// `spec` against the model, naming only revisions `answered` (the model
    /// before the group) knows: a caller cannot know a revision before its
    /// commit answers, so the group's own are not named.
    fn concrete(&self, spec: &TxnSpec, answered: &Model, serial: usize) -> ModelTxn {
        let conditions = spec
            .conditions
            .iter()
            .filter_map(|c| match c {
                ConditionSpec::KeyAt { key, off } => {
                    let key = KEYS[*key].as_bytes().to_vec();
                    let current = self.mod_revision(&key);
                    Some(match current <= answered.revision {
                        true => ModelCondition::KeyAt { key, revision: current, off: *off },
                        // Written earlier in the group: as read before it.
                        false => ModelCondition::KeyAt { revision: answered.mod_revision(&key), key, off: 0 },
                    })
                }
                ConditionSpec::Absent { key } => {
                    Some(ModelCondition::KeyAt { key: KEYS[*key].into(), revision: 0, off: 0 })
                }
                ConditionSpec::NoneWrittenAfter { prefix, back } => {
                    let prefix = PREFIXES[*prefix];
                    let revision = self.revision.saturating_sub(*back).min(answered.revision);
                    // Whether a removal counts as a write is the engine's
                    // choice: a condition it would decide is left out.
                    let removed = self.removals.iter().any(|(set, r)| set.starts_with(prefix) && *r > revision);
                    (!removed).then(|| ModelCondition::NoneWrittenAfter { prefix: prefix.into(), revision })
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
        ModelTxn { conditions, ops, change: format!("change {serial}").into_bytes() }
    }

    fn holds(&self, condition: &ModelCondition) -> bool {
        match condition {
            ModelCondition::KeyAt { key, revision, off } => *off == 0 && self.mod_revision(key) == *revision,
            ModelCondition::NoneWrittenAfter { prefix, revision } => {
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

    fn commit(&mut self, txn: &ModelTxn) -> Outcome {
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

    /// Drops the changes before the model's revision `to`.
    fn compact(&mut self, to: u64) {
        self.changes = self.changes.split_off(&to);
    }
}

/// One store's revisions against the model's: the revision each of the
/// model's commits answered with on the store. Each answer must be past
/// every revision the store named before, and is then the one its keys,
/// change-log entry and views must show: a wrong revision, a missing change
/// or one out of order fails as it did when the model assumed its own.
#[derive(Debug)]
struct Revisions {
    /// The store's revision at each of the model's: where it started, then
    /// each commit's answer.
    of_commit: Vec<u64>,
    /// The store's latest revision: its last commit's, or later where the
    /// engine wrote beside the commits (an etcd compaction puts its floor).
    latest: u64,
    /// Where the store's change log starts.
    first_change: u64,
}

impl Revisions {
    fn starting_at(revision: u64) -> Revisions {
        Revisions { of_commit: vec![revision], latest: revision, first_change: 1 }
    }

    /// The store's revision of the model's commit `revision` (0: before any).
    fn of(&self, revision: u64) -> u64 {
        self.of_commit[revision as usize]
    }

    /// A key's last write on the store: 0 (absent) stays 0.
    fn mod_revision(&self, revision: u64) -> u64 {
        if revision == 0 { 0 } else { self.of(revision) }
    }

    fn entry(&self, entry: &Entry) -> Entry {
        Entry { mod_revision: self.of(entry.mod_revision), value: entry.value.clone() }
    }

    fn txn(&self, txn: &ModelTxn) -> Txn {
        let conditions = txn
            .conditions
            .iter()
            .map(|c| match c {
                ModelCondition::KeyAt { key, revision, off } => {
                    Condition::ModRevision { key: key.clone(), equals: self.mod_revision(*revision) + off }
                }
                ModelCondition::NoneWrittenAfter { prefix, revision } => {
                    Condition::NoneWrittenAfter { prefix: prefix.clone(), revision: self.of(*revision) }
                }
            })
            .collect();
        Txn { conditions, ops: txn.ops.clone(), change: txn.change.clone() }
    }

    /// Checks the store's outcome against the model's, and keeps the
    /// revision a commit answered with.
    fn answered(&mut self, expected: Outcome, outcome: Outcome, which: &str) {
        match (expected, outcome) {
            (Outcome::Committed { revision }, Outcome::Committed { revision: on_store }) => {
                assert_eq!(revision as usize, self.of_commit.len(), "the model's commits are numbered in order");
                assert!(on_store > self.latest, "{which}: committed at {on_store}, not past {}", self.latest);
                self.of_commit.push(on_store);
                self.latest = on_store;
            }
            _ => assert_eq!(outcome, expected, "{which}: outcome"),
        }
    }

    /// Compacted to the store's revision `to`.
    fn compacted(&mut self, to: u64) {
        let to = to.min(self.latest + 1);
        self.first_change = self.first_change.max(to);
    }
}

/// The store agrees with the model: its revision, its keys, what a view
/// at its latest revision shows, and its change log.
async fn assert_agrees(model: &Model, revisions: &Revisions, store: &dyn Store, which: &str) {
    assert_eq!(store.current_revision().await.unwrap(), revisions.latest, "{which}: revision");
    for key in KEYS {
        let found = store.get(key.as_bytes()).await.unwrap();
        let expected = model.keys.get(key.as_bytes()).map(|e| revisions.entry(e));
        assert_eq!(found, expected, "{which}: key {key}");
    }
    assert_view_agrees(model, revisions, revisions.latest, &*store.snapshot().await.unwrap(), which).await;
    let first = revisions.first_change;
    assert_eq!(store.first_change().await.unwrap(), first, "{which}: first change");
    let expected: Vec<(u64, Vec<u8>)> = model.changes.iter().map(|(r, c)| (revisions.of(*r), c.clone())).collect();
    assert_eq!(store.changes(first, 10_000).await.unwrap(), expected, "{which}: change log");
}

/// A view shows the model's keys and members, and the store's revision
/// `revision` (the store's latest when it was opened): read one at a time,
/// many at once, by scan and by members.
async fn assert_view_agrees(model: &Model, revisions: &Revisions, revision: u64, view: &dyn Snapshot, which: &str) {
    assert_eq!(view.revision(), revision, "{which}: view revision");
    let keys: Vec<&[u8]> = KEYS.iter().map(|key| key.as_bytes()).collect();
    let expected: Vec<Option<Entry>> =
        keys.iter().map(|key| model.keys.get(*key).map(|e| revisions.entry(e))).collect();
    assert_eq!(view.get_many(&keys).await.unwrap(), expected, "{which}: keys");
    for prefix in PREFIXES {
        let expected: Vec<(Vec<u8>, Entry)> = model
            .keys
            .iter()
            .filter(|(k, _)| k.starts_with(prefix.as_bytes()))
            .map(|(k, e)| (k.clone(), revisions.entry(e)))
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

fn open_sled(dir: &std::path::Path) -> Arc<dyn Store> {
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

/// Opens a store again on the data of the one closed.
type Reopen<'a> = Box<dyn Fn() -> Arc<dyn Store> + 'a>;

/// A store under test.
struct Tested<'a> {
    which: &'static str,
    store: Arc<dyn Store>,
    /// `None` for the memory store, which a reopening keeps.
    reopen: Option<Reopen<'a>>,
    /// On a cluster others write to (etcd): its revisions start where the
    /// cluster's are, not at 0, and its compaction's own write takes one.
    shared: bool,
}

impl Tested<'_> {
    /// Closed and opened again (the memory store is kept).
    fn reopened(self) -> Self {
        let Tested { which, store, reopen, shared } = self;
        let store = match &reopen {
            Some(reopen) => {
                store.engine().close().unwrap();
                // The sled store lets its data dir go when dropped.
                drop(store);
                reopen()
            }
            None => store,
        };
        Tested { which, store, reopen, shared }
    }
}

/// Runs `steps` against the stores `open` gives (within the runtime, so a
/// networked engine can start its connections there).
fn run<'a>(steps: Vec<Step>, open: impl FnOnce() -> Vec<Tested<'a>>) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _in_runtime = runtime.enter();
    let mut stores = open();
    let mut revisions: Vec<Revisions> = stores
        .iter()
        .map(|tested| {
            let start = runtime.block_on(tested.store.current_revision()).unwrap();
            if !tested.shared {
                assert_eq!(start, 0, "{}: an empty store's revision", tested.which);
            }
            Revisions::starting_at(start)
        })
        .collect();
    let mut model = Model::default();
    let mut serial = 0;
    for step in steps {
        let answered = model.clone();
        // Views opened before the step, to be read after it, each with the
        // revision it must show (a reopening ends the sled store's).
        let views = match step {
            Step::Reopen => Vec::new(),
            _ => runtime.block_on(async {
                let mut views = Vec::new();
                for (tested, revisions) in stores.iter().zip(&revisions) {
                    views.push((tested.store.snapshot().await.unwrap(), revisions.latest));
                }
                views
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
                    let txn = model.concrete(spec, &answered, serial);
                    expected.push(model.commit(&txn));
                    let commits: Vec<_> =
                        stores.iter().zip(&revisions).map(|(tested, r)| tested.store.commit(r.txn(&txn))).collect();
                    pending.push(commits);
                }
                for (commits, expected) in pending.into_iter().zip(expected) {
                    for ((tested, revisions), commit) in stores.iter().zip(&mut revisions).zip(commits) {
                        revisions.answered(expected, runtime.block_on(commit).unwrap(), tested.which);
                    }
                }
            }
            Step::Compact { back } => {
                let to = model.revision.saturating_sub(back);
                model.compact(to);
                for (tested, revisions) in stores.iter().zip(&mut revisions) {
                    let to = revisions.of(to);
                    runtime.block_on(tested.store.compact(to)).unwrap();
                    revisions.compacted(to);
                    if tested.shared {
                        let now = runtime.block_on(tested.store.current_revision()).unwrap();
                        assert!(now >= revisions.latest, "{}: revision {now} after {}", tested.which, revisions.latest);
                        revisions.latest = now;
                    }
                }
            }
            Step::Reopen => stores = stores.into_iter().map(Tested::reopened).collect(),
        }
        runtime.block_on(async {
            for (tested, revisions) in stores.iter().zip(&revisions) {
                assert_agrees(&model, revisions, &*tested.store, tested.which).await;
            }
            for ((tested, revisions), (view, revision)) in stores.iter().zip(&revisions).zip(views) {
                let which = format!("{} view", tested.which);
                assert_view_agrees(&answered, revisions, revision, &*view, &which).await;
            }
        });
    }
    for tested in stores {
        tested.store.engine().close().unwrap();
    }
}

/// `default` cases unless PROPTEST_CASES asks for others (a case count set
/// here would override the variable).
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(default);
    ProptestConfig { cases, source_file: Some(file!()), ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn sled_and_memory_stores_agree_with_the_model(steps in steps()) {
        let dir = tempfile::tempdir().unwrap();
        run(steps, || {
            vec![
                Tested {
                    which: "sled",
                    store: open_sled(dir.path()),
                    reopen: Some(Box::new(|| open_sled(dir.path()))),
                    shared: false,
                },
                Tested { which: "memory", store: Arc::new(MemoryStore::new()), reopen: None, shared: false },
            ]
        });
    }
}

/// The same model against the etcd store: one member for every case, each
/// case under a prefix of its own, so each case's store shares the cluster
/// (its revisions and its compactions) with the cases before it, as stores
/// of several registries on one cluster would. 12 cases by default: reading
/// the change log takes etcd some 100 ms, once a step.
#[test]
fn the_etcd_store_agrees_with_the_model() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let member = runtime.block_on(start_member());
    let cases = Cell::new(0);
    let mut runner = TestRunner::new(config(12));
    let result = runner.run(&steps(), |steps| {
        cases.set(cases.get() + 1);
        let prefix = format!("model/{}/", cases.get()).into_bytes();
        run(steps, || {
            let store = || -> Arc<dyn Store> { Arc::new(open(&member, &prefix)) };
            vec![Tested { which: "etcd", store: store(), reopen: Some(Box::new(store)), shared: true }]
        });
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}\n{runner}");
    }
}
