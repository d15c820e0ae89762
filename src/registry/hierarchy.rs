//! Hierarchies stay acyclic. A hierarchy is a field through which a record
//! refers to records of its own kind (an engagement's `parent_engagement`, a
//! party's `parent` and its `members.party`, an agreement's
//! `relations.agreement`), found in the contract: every
//! `google.api.resource_reference` to the kind the field is in. Following
//! one never leads from a record back to itself; a write that would close
//! such a cycle is refused with FAILED_PRECONDITION naming the chain, and
//! changes nothing.
//!
//! A write checks only the links it adds (a record's links after the write
//! less those it had): a cycle through a link that was already stored would
//! already be stored. From the records it adds links to, it follows the
//! hierarchy breadth first, reading each level of records in one call and
//! stating each record read as a condition of the write, so a concurrent
//! change to any record of the chain makes the write plan again and see it.
//! The walk is bounded: at most [`MAX_DEPTH`] links from the written record
//! and [`MAX_RECORDS`] records; a hierarchy beyond either is refused with
//! its own reason.
//!
//! Where the walk goes depends on the write ([`Through`]). Only an Update
//! walks through stored records: a new record has no referrers (a record may
//! refer only to records that exist, and names are never freed), and a
//! deleted one has no live referrers (a live record may refer only to live
//! ones, and a record cannot be deleted while live ones refer to it), so a
//! chain that leaves the records being created or undeleted never comes back
//! to them. Create and BatchCreate walk only through the records they write
//! (a batch's records may refer to each other); Undelete adds no link a
//! chain could come back along, and walks nowhere.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::LazyLock;

use prost_reflect::{FieldDescriptor, Kind as FieldKind, MessageDescriptor};

use super::keys::record_key;
use super::resource::{self, Kind};
use super::{Registry, index, undecodable, validate, wire};
use crate::error::{Error, PreconditionViolation, Result};
use crate::store::Condition;

/// Most links a write follows from the record it writes to check a hierarchy.
pub const MAX_DEPTH: usize = 64;

/// Most records a write reaches in a hierarchy to check it.
pub const MAX_RECORDS: usize = 4096;

/// A field through which records of one kind refer to records of the same kind.
pub struct Hierarchy {
    pub kind: &'static Kind,
    /// The field's path from the record, without indexes: `members.party`.
    pub path: String,
    steps: Vec<wire::Shape>,
}

/// Every hierarchy of every kind, found in the descriptors.
static HIERARCHIES: LazyLock<Vec<Hierarchy>> = LazyLock::new(|| {
    let mut found = Vec::new();
    for kind in resource::KINDS {
        find(kind, &kind.descriptor(), &mut Vec::new(), &mut found);
    }
    found
});

/// Adds to `found` the references to `kind` in `message`, at any depth;
/// `path` holds the fields from the record down to `message`.
fn find(kind: &'static Kind, message: &MessageDescriptor, path: &mut Vec<FieldDescriptor>, found: &mut Vec<Hierarchy>) {
    for plan in validate::plans(message) {
        let field = &plan.field;
        let reached = |path: &Vec<FieldDescriptor>| path.iter().chain([field]).cloned().collect::<Vec<_>>();
        match field.kind() {
            FieldKind::String if plan.reference == Some(kind) => {
                let fields = reached(path);
                found.push(Hierarchy {
                    kind,
                    path: fields.iter().map(|f| f.name()).collect::<Vec<_>>().join("."),
                    steps: fields.iter().map(wire::Shape::of).collect(),
                });
            }
            // (A message type that holds itself would otherwise be walked forever.)
            FieldKind::Message(inner)
                if !field.is_map() && inner != *message && !path.iter().any(|f| f.parent_message() == &inner) =>
            {
                path.push(field.clone());
                find(kind, &inner, path, found);
                path.pop();
            }
            _ => {}
        }
    }
}

/// The hierarchies of `kind`.
pub fn of(kind: &Kind) -> impl Iterator<Item = &'static Hierarchy> + '_ {
    HIERARCHIES.iter().filter(move |h| h.kind == kind)
}

impl Hierarchy {
    /// The names a record links to through this field, read from its encoding.
    pub fn links(&self, record: &[u8]) -> Result<BTreeSet<String>, wire::Malformed> {
        let mut links = BTreeSet::new();
        for field in wire::fields(record) {
            let field = field?;
            if field.number == self.steps[0].number {
                index::for_each_value_in(&self.steps, field.value, &mut |_, value| {
                    let name = value.text()?;
                    if !name.is_empty() {
                        links.insert(name.to_string());
                    }
                    Ok(())
                })?;
            }
        }
        Ok(links)
    }
}

/// Why a walk refuses a write.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The chain from the written record back to it, both ends included.
    Cycle(Vec<String>),
    /// A chain from the written record longer than [`MAX_DEPTH`] links.
    TooDeep(Vec<String>),
    /// More than [`MAX_RECORDS`] records reached.
    TooLarge,
}

/// A breadth-first walk of one hierarchy from the records a write links
/// `origin` to, looking for `origin`. The caller reads: [`Walk::next`] says
/// whose links it needs, [`Walk::advance`] takes them.
pub struct Walk {
    origin: String,
    /// Each record reached, with the one it was reached from.
    from: HashMap<String, String>,
    /// The records reached last, whose links are needed next.
    frontier: Vec<String>,
    /// Links from `origin` to the records of `frontier`.
    depth: usize,
}

impl Walk {
    /// A walk from the records `origin` now links to.
    pub fn new(origin: &str, targets: impl IntoIterator<Item = String>) -> Result<Walk, Refusal> {
        let mut walk = Walk { origin: origin.to_string(), from: HashMap::new(), frontier: Vec::new(), depth: 0 };
        let origin = walk.origin.clone();
        walk.reach(vec![(origin, targets.into_iter().collect())])?;
        Ok(walk)
    }

    /// The records whose links the walk needs next, in the order
    /// [`Walk::advance`] takes them; empty once it is done.
    pub fn next(&self) -> &[String] {
        &self.frontier
    }

    /// Takes the links of each record of [`Walk::next`], in its order (none
    /// for a record that is not there), and goes one link further.
    pub fn advance(&mut self, links: Vec<BTreeSet<String>>) -> Result<(), Refusal> {
        let frontier = std::mem::take(&mut self.frontier);
        self.reach(frontier.into_iter().zip(links).collect())
    }

    fn reach(&mut self, links: Vec<(String, BTreeSet<String>)>) -> Result<(), Refusal> {
        self.depth += 1;
        let mut next = Vec::new();
        for (source, targets) in links {
            for target in targets {
                if target == self.origin {
                    let mut chain = self.chain(&source);
                    chain.push(target);
                    return Err(Refusal::Cycle(chain));
                }
                if self.from.contains_key(&target) {
                    continue;
                }
                if self.from.len() == MAX_RECORDS {
                    return Err(Refusal::TooLarge);
                }
                self.from.insert(target.clone(), source.clone());
                next.push(target);
            }
        }
        if self.depth > MAX_DEPTH && !next.is_empty() {
            return Err(Refusal::TooDeep(self.chain(&next[0])));
        }
        self.frontier = next;
        Ok(())
    }

    /// The chain from the origin to `record`, both included.
    fn chain(&self, record: &str) -> Vec<String> {
        let mut chain = vec![record.to_string()];
        while let Some(source) = self.from.get(chain.last().expect("never empty")) {
            chain.push(source.clone());
        }
        if chain.last() != Some(&self.origin) {
            chain.push(self.origin.clone());
        }
        chain.reverse();
        chain
    }
}

/// A record a write stores: its name, its encoding, and its encoding before
/// the write (empty for a new record).
pub(super) struct Written<'a> {
    pub name: &'a str,
    pub record: &'a [u8],
    pub before: &'a [u8],
}

/// Which records' links a write's walks follow (see the module's comment).
pub(super) enum Through {
    /// The records the write stores: a chain that leaves them cannot come back.
    Written,
    /// Stored records too, each stated as a condition of the write.
    Store,
}

impl Registry {
    /// Refuses with FAILED_PRECONDITION a write whose records would link to
    /// a chain of their kind that leads back to them, or to a chain too long
    /// to check; adds a condition for each stored record its walks read.
    pub(super) async fn check_hierarchies(
        &self,
        kind: &'static Kind,
        written: &[Written<'_>],
        through: Through,
        conditions: &mut Vec<Condition>,
    ) -> Result<()> {
        let malformed = |e: wire::Malformed| undecodable(kind, &e);
        // (The same record read twice need not be stated twice.)
        let mut stated: HashSet<(Vec<u8>, u64)> = HashSet::new();
        for hierarchy in of(kind) {
            let mut links = HashMap::with_capacity(written.len());
            for record in written {
                links.insert(record.name, hierarchy.links(record.record).map_err(malformed)?);
            }
            for record in written {
                let before = hierarchy.links(record.before).map_err(malformed)?;
                let added: Vec<String> = links[record.name].difference(&before).cloned().collect();
                if added.is_empty() {
                    continue;
                }
                let refused = |refusal| refusal_error(hierarchy, record.name, refusal);
                let mut walk = Walk::new(record.name, added).map_err(refused)?;
                while !walk.next().is_empty() {
                    let mut found: Vec<BTreeSet<String>> =
                        walk.next().iter().map(|name| links.get(name.as_str()).cloned().unwrap_or_default()).collect();
                    let stored: Vec<usize> = match through {
                        Through::Written => Vec::new(),
                        Through::Store => {
                            (0..found.len()).filter(|&i| !links.contains_key(walk.next()[i].as_str())).collect()
                        }
                    };
                    if !stored.is_empty() {
                        let keys: Vec<Vec<u8>> = stored.iter().map(|&i| record_key(&walk.next()[i])).collect();
                        let entries = self.store.get_many(&keys.iter().map(Vec::as_slice).collect::<Vec<_>>()).await?;
                        for ((i, key), entry) in stored.into_iter().zip(keys).zip(entries) {
                            // (A record that is not there links nowhere: none
                            // refers to a name that does not exist.)
                            let Some(entry) = entry else { continue };
                            found[i] = hierarchy.links(&entry.value).map_err(malformed)?;
                            if stated.insert((key.clone(), entry.mod_revision)) {
                                conditions.push(Condition::ModRevision { key, equals: entry.mod_revision });
                            }
                        }
                    }
                    walk.advance(found).map_err(refused)?;
                }
            }
        }
        Ok(())
    }
}

/// A chain as a message shows it: `a -> b -> c`, its middle left out when
/// it is long.
fn render(chain: &[String]) -> String {
    const SHOWN: usize = 8;
    if chain.len() <= SHOWN {
        return chain.join(" -> ");
    }
    let (head, tail) = (&chain[..SHOWN / 2], &chain[chain.len() - SHOWN / 2..]);
    format!("{} -> ... -> {}", head.join(" -> "), tail.join(" -> "))
}

fn refusal_error(hierarchy: &Hierarchy, name: &str, refusal: Refusal) -> Error {
    let path = &hierarchy.path;
    let (reason, message, description) = match refusal {
        Refusal::Cycle(chain) => {
            let shown = render(&chain);
            (
                "HIERARCHY_CYCLE",
                format!("{path} would lead from {name} back to itself: {shown}; a hierarchy must not close a cycle"),
                shown,
            )
        }
        Refusal::TooDeep(chain) => {
            let shown = render(&chain);
            (
                "HIERARCHY_TOO_DEEP",
                format!(
                    "{path} from {name} goes more than {MAX_DEPTH} links deep ({shown}); a write follows at most \
                     {MAX_DEPTH} links of a hierarchy to check that it does not close a cycle"
                ),
                shown,
            )
        }
        Refusal::TooLarge => {
            let description =
                format!("{path} from {name} reaches more than {MAX_RECORDS} {}", hierarchy.kind.collection);
            (
                "HIERARCHY_TOO_LARGE",
                format!(
                    "{description}; a write reads at most {MAX_RECORDS} records of a hierarchy to check that it does \
                     not close a cycle"
                ),
                description,
            )
        }
    };
    Error::FailedPrecondition {
        reason: reason.into(),
        message,
        violations: vec![PreconditionViolation { kind: reason.into(), subject: name.into(), description }],
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prost::Message;

    use super::super::testing::anonymous;
    use super::*;
    use crate::pb::cooperation::v1::{Agreement, Engagement, Party, agreement, engagement, party};
    use crate::store::memory::MemoryStore;
    use crate::store::{Applied, BoxFuture, Store, StoreResult, Txn};

    /// Walks `graph` (each record's links) as a write of `origin` linking to
    /// `targets` would; `None` when it finds no reason to refuse, with the
    /// records whose links it asked for.
    fn walk(graph: &[(&str, &[&str])], origin: &str, targets: &[&str]) -> (Result<(), Refusal>, Vec<String>) {
        let links = |name: &str| -> BTreeSet<String> {
            graph
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, l)| l.iter().map(|s| s.to_string()).collect())
                .unwrap_or_default()
        };
        let mut asked = Vec::new();
        let mut walk = match Walk::new(origin, targets.iter().map(|s| s.to_string())) {
            Ok(walk) => walk,
            Err(refusal) => return (Err(refusal), asked),
        };
        while !walk.next().is_empty() {
            asked.extend(walk.next().iter().cloned());
            let found = walk.next().iter().map(|n| links(n)).collect();
            if let Err(refusal) = walk.advance(found) {
                return (Err(refusal), asked);
            }
        }
        (Ok(()), asked)
    }

    fn chain(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_contract_s_self_references_are_the_hierarchies() {
        let found: Vec<(&str, &str)> = HIERARCHIES.iter().map(|h| (h.kind.collection, h.path.as_str())).collect();
        assert_eq!(
            found,
            [
                ("parties", "members.party"),
                ("parties", "parent"),
                ("agreements", "relations.agreement"),
                ("engagements", "parent_engagement"),
            ]
        );
        assert_eq!(of(&resource::PARTNERSHIP_DOMAIN).count(), 0);
    }

    #[test]
    fn links_are_read_from_the_encoding() {
        let grouping = Party {
            parent: "parties/x".into(),
            members: ["parties/ind", "parties/jpn", ""]
                .iter()
                .map(|p| party::Membership { party: p.to_string(), ..Default::default() })
                .collect(),
            ..Default::default()
        };
        let bytes = grouping.encode_to_vec();
        let [members, parent] = [0, 1].map(|i| of(&resource::PARTY).nth(i).unwrap().links(&bytes).unwrap());
        assert_eq!(members.into_iter().collect::<Vec<_>>(), ["parties/ind", "parties/jpn"]);
        assert_eq!(parent.into_iter().collect::<Vec<_>>(), ["parties/x"]);
        let amending = Agreement {
            relations: vec![
                agreement::Relation { r#type: 1, agreement: "agreements/b".into() },
                agreement::Relation { r#type: 2, agreement: "agreements/c".into() },
            ],
            ..Default::default()
        };
        let relations = of(&resource::AGREEMENT).next().unwrap();
        assert_eq!(relations.links(&amending.encode_to_vec()).unwrap().len(), 2);
        assert!(relations.links(&[]).unwrap().is_empty());
    }

    #[test]
    fn a_link_back_to_the_origin_is_a_cycle_named_from_the_origin() {
        assert_eq!(walk(&[], "a", &["a"]).0, Err(Refusal::Cycle(chain(&["a", "a"]))));
        assert_eq!(walk(&[("b", &["a"])], "a", &["b"]).0, Err(Refusal::Cycle(chain(&["a", "b", "a"]))));
        let three: &[(&str, &[&str])] = &[("b", &["c"]), ("c", &["a"])];
        assert_eq!(walk(three, "a", &["b"]).0, Err(Refusal::Cycle(chain(&["a", "b", "c", "a"]))));
        // Of two ways back, the shorter is named.
        let two_ways: &[(&str, &[&str])] = &[("b", &["c", "d"]), ("c", &["e"]), ("d", &["a"]), ("e", &["a"])];
        assert_eq!(walk(two_ways, "a", &["b"]).0, Err(Refusal::Cycle(chain(&["a", "b", "d", "a"]))));
    }

    #[test]
    fn trees_diamonds_and_cycles_elsewhere_are_accepted_and_each_record_is_read_once() {
        let tree: &[(&str, &[&str])] = &[("b", &["d"]), ("c", &["d"]), ("d", &[])];
        assert_eq!(walk(tree, "a", &["b", "c"]), (Ok(()), chain(&["b", "c", "d"])));
        // A diamond: b and c both lead to d, read once.
        let diamond: &[(&str, &[&str])] = &[("b", &["d"]), ("c", &["d"]), ("d", &["e"])];
        assert_eq!(walk(diamond, "a", &["b", "c"]), (Ok(()), chain(&["b", "c", "d", "e"])));
        // A cycle stored before the rule, not through the origin, ends the walk.
        let elsewhere: &[(&str, &[&str])] = &[("b", &["c"]), ("c", &["b"])];
        assert_eq!(walk(elsewhere, "a", &["b"]), (Ok(()), chain(&["b", "c"])));
    }

    #[test]
    fn a_walk_follows_at_most_max_depth_links() {
        let names: Vec<String> = (0..=MAX_DEPTH + 1).map(|i| format!("r{i}")).collect();
        let links: Vec<[&str; 1]> = names.iter().skip(1).map(|n| [n.as_str()]).collect();
        // r0 -> r1 -> ... -> r(MAX_DEPTH + 1): a write linking `origin` to r0.
        let graph: Vec<(&str, &[&str])> = names.iter().zip(&links).map(|(n, l)| (n.as_str(), &l[..])).collect();
        let (deepest, _) = walk(&graph[..MAX_DEPTH - 1], "origin", &["r0"]);
        assert_eq!(deepest, Ok(()), "{MAX_DEPTH} links: r0 is one, r{} the last", MAX_DEPTH - 1);
        let (refused, asked) = walk(&graph[..MAX_DEPTH], "origin", &["r0"]);
        let Err(Refusal::TooDeep(chain)) = refused else { panic!("{refused:?}") };
        assert_eq!(chain.len(), MAX_DEPTH + 2, "the origin and the records of {} links", MAX_DEPTH + 1);
        assert_eq!((chain[0].as_str(), chain.last().unwrap().as_str()), ("origin", names[MAX_DEPTH].as_str()));
        assert_eq!(asked.len(), MAX_DEPTH, "no record beyond the limit is asked for");
        assert!(render(&chain).contains(" -> ... -> "), "{}", render(&chain));
    }

    #[test]
    fn a_walk_reaches_at_most_max_records() {
        let wide: Vec<String> = (0..MAX_RECORDS).map(|i| format!("m{i}")).collect();
        let wide: Vec<&str> = wide.iter().map(String::as_str).collect();
        let graph: &[(&str, &[&str])] = &[("g", &wide)];
        assert_eq!(walk(graph, "origin", &["g"]).0, Err(Refusal::TooLarge), "g and its members");
        assert_eq!(walk(graph, "origin", &wide).0, Ok(()), "exactly the limit");
    }

    /// A store whose next commit, once armed, waits until the test lets it
    /// go: the write has planned (read and stated its conditions) but not
    /// committed, as when another write gets in between.
    struct Gated {
        inner: Arc<MemoryStore>,
        gate: std::sync::Mutex<Option<(tokio::sync::oneshot::Sender<()>, tokio::sync::oneshot::Receiver<()>)>>,
    }

    impl Store for Gated {
        fn snapshot(&self) -> BoxFuture<'_, StoreResult<Box<dyn crate::store::Snapshot>>> {
            self.inner.snapshot()
        }
        fn get_many<'a>(
            &'a self,
            keys: &'a [&'a [u8]],
        ) -> BoxFuture<'a, StoreResult<Vec<Option<crate::store::Entry>>>> {
            self.inner.get_many(keys)
        }
        fn current_revision(&self) -> BoxFuture<'_, StoreResult<u64>> {
            self.inner.current_revision()
        }
        fn wait_durable(&self, revision: u64) -> BoxFuture<'static, StoreResult<()>> {
            self.inner.wait_durable(revision)
        }
        fn apply(&self, txn: Txn) -> BoxFuture<'static, StoreResult<Applied>> {
            let gate = self.gate.lock().unwrap().take();
            let inner = self.inner.clone();
            Box::pin(async move {
                if let Some((planned, go)) = gate {
                    let _ = planned.send(());
                    let _ = go.await;
                }
                inner.apply(txn).await
            })
        }
        fn changes(&self, from_revision: u64, limit: usize) -> BoxFuture<'_, StoreResult<crate::store::Changes>> {
            self.inner.changes(from_revision, limit)
        }
        fn first_change(&self) -> BoxFuture<'_, StoreResult<u64>> {
            self.inner.first_change()
        }
        fn compact(&self, revision: u64) -> BoxFuture<'_, StoreResult<u64>> {
            self.inner.compact(revision)
        }
        fn engine(&self) -> &dyn crate::store::Engine {
            self.inner.engine()
        }
        fn watch(&self, from_revision: u64) -> crate::store::ChangeStream {
            self.inner.watch(from_revision)
        }
    }

    fn meeting(parent: &str) -> Engagement {
        Engagement {
            title: "India–Japan 2+2".into(),
            kind: engagement::Kind::MinisterialDialogue as i32,
            participants: ["parties/ind", "parties/jpn"]
                .iter()
                .map(|p| engagement::Participant { party: p.to_string(), ..Default::default() })
                .collect(),
            parent_engagement: parent.into(),
            ..Default::default()
        }
    }

    async fn set_parent(registry: &Registry, name: &str, parent: &str) -> Result<Engagement> {
        let changed = Engagement { name: name.into(), ..meeting(parent) };
        registry.update(changed, &["parent_engagement".to_string()], "", &anonymous("UpdateEngagement")).await
    }

    async fn parent_of(registry: &Registry, name: &str) -> String {
        registry.get::<Engagement>(name, None).await.unwrap().parent_engagement
    }

    /// Two updates that each close half of a cycle do not both succeed: with
    /// b -> c stored, `a -> b` (which reads b and c) plans, `c -> a` commits,
    /// and then `a -> b` fails its condition on c, plans again and finds the
    /// cycle. c is no record `a -> b` refers to: only the walk's condition
    /// on it catches the change.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_updates_that_each_close_half_of_a_cycle_do_not_both_succeed() {
        let store = Arc::new(Gated { inner: Arc::new(MemoryStore::new()), gate: Default::default() });
        let registry = Arc::new(Registry::open(store.clone()).await.unwrap());
        let create = anonymous("CreateEngagement");
        for (id, parent) in [("a", ""), ("c", ""), ("b", "engagements/c")] {
            registry.create(id, meeting(parent), &create).await.unwrap();
        }
        // (Writes to one record take turns; these two must not share one.)
        assert!(!std::ptr::eq(registry.record_lock("engagements/a"), registry.record_lock("engagements/c")));
        let (planned, planned_rx) = tokio::sync::oneshot::channel();
        let (go, go_rx) = tokio::sync::oneshot::channel();
        *store.gate.lock().unwrap() = Some((planned, go_rx));
        let first = {
            let registry = registry.clone();
            tokio::spawn(async move { set_parent(&registry, "engagements/a", "engagements/b").await })
        };
        planned_rx.await.unwrap();
        set_parent(&registry, "engagements/c", "engagements/a").await.unwrap();
        go.send(()).unwrap();
        let refused = first.await.unwrap().unwrap_err();
        let Error::FailedPrecondition { reason, message, .. } = &refused else { panic!("{refused:?}") };
        assert_eq!(reason, "HIERARCHY_CYCLE");
        assert!(message.contains("engagements/a -> engagements/b -> engagements/c -> engagements/a"), "{message}");
        assert_eq!(parent_of(&registry, "engagements/a").await, "", "nothing was stored");
        assert_eq!(parent_of(&registry, "engagements/c").await, "engagements/a");
    }

    /// An update that adds no link walks nowhere, whatever the hierarchy
    /// around the record (creates may build chains deeper than a walk
    /// goes); one that adds a link walks from it alone.
    #[tokio::test]
    async fn only_the_links_a_write_adds_are_walked() {
        let registry = Registry::open(Arc::new(MemoryStore::new())).await.unwrap();
        let create = anonymous("CreateEngagement");
        let mut parent = String::new();
        for i in 0..=MAX_DEPTH + 1 {
            let created = registry.create(&format!("e{i}"), meeting(&parent), &create).await.unwrap();
            parent = created.name;
        }
        let deepest = parent;
        let retitled = Engagement { name: deepest.clone(), title: "Renamed".into(), ..meeting("") };
        let update = anonymous("UpdateEngagement");
        registry.update(retitled, &["title".to_string()], "", &update).await.unwrap();
        // A link to the chain's top walks one record; to its bottom, the whole chain.
        registry.create("top", meeting(""), &create).await.unwrap();
        registry.create("loose", meeting(""), &create).await.unwrap();
        set_parent(&registry, "engagements/loose", "engagements/e0").await.unwrap();
        let refused = set_parent(&registry, "engagements/top", &deepest).await.unwrap_err();
        let Error::FailedPrecondition { reason, message, .. } = &refused else { panic!("{refused:?}") };
        assert_eq!(reason, "HIERARCHY_TOO_DEEP", "{message}");
        assert!(message.contains(&format!("engagements/top -> {deepest} -> ")), "{message}");
        assert_eq!(parent_of(&registry, "engagements/top").await, "", "nothing was stored");
    }

    /// A field-mask update, a whole-record update and a batch are checked
    /// alike; a batch's own cycle needs no stored record to be found.
    #[tokio::test]
    async fn every_write_that_adds_a_link_is_checked() {
        let registry = Registry::open(Arc::new(MemoryStore::new())).await.unwrap();
        let create = anonymous("CreateEngagement");
        registry.create("a", meeting(""), &create).await.unwrap();
        registry.create("b", meeting("engagements/a"), &create).await.unwrap();
        let masked = set_parent(&registry, "engagements/a", "engagements/b").await.unwrap_err();
        let whole = Engagement { name: "engagements/a".into(), ..meeting("engagements/b") };
        let whole = registry.update(whole, &[], "", &anonymous("UpdateEngagement")).await.unwrap_err();
        for refused in [masked, whole] {
            let Error::FailedPrecondition { reason, .. } = &refused else { panic!("{refused:?}") };
            assert_eq!(reason, "HIERARCHY_CYCLE");
        }
        let batch = vec![
            ("x".to_string(), meeting("engagements/y")),
            ("y".to_string(), meeting("engagements/z")),
            ("z".to_string(), meeting("engagements/x")),
        ];
        let refused = registry.create_many(batch, &anonymous("BatchCreateEngagements")).await.unwrap_err();
        let Error::FailedPrecondition { reason, message, .. } = &refused else { panic!("{refused:?}") };
        assert_eq!(reason, "HIERARCHY_CYCLE");
        assert!(message.contains("engagements/x -> engagements/y -> engagements/z -> engagements/x"), "{message}");
        assert!(registry.get::<Engagement>("engagements/x", None).await.is_err(), "nothing was stored");
        let chain = vec![("x".to_string(), meeting("engagements/y")), ("y".to_string(), meeting("engagements/b"))];
        registry.create_many(chain, &anonymous("BatchCreateEngagements")).await.unwrap();
    }

    /// Undelete adds no link a chain could come back along: while a record
    /// is deleted no live record can come to refer to it.
    #[tokio::test]
    async fn a_deleted_record_cannot_be_linked_to_so_undeleting_it_closes_no_cycle() {
        let registry = Registry::open(Arc::new(MemoryStore::new())).await.unwrap();
        let create = anonymous("CreateEngagement");
        registry.create("b", meeting(""), &create).await.unwrap();
        registry.create("a", meeting("engagements/b"), &create).await.unwrap();
        registry.delete::<Engagement>("engagements/a", "", &anonymous("DeleteEngagement")).await.unwrap();
        let refused = set_parent(&registry, "engagements/b", "engagements/a").await.unwrap_err();
        let Error::InvalidArgument { violations } = &refused else { panic!("{refused:?}") };
        assert!(violations[0].description.contains("engagements/a is deleted"), "{violations:?}");
        registry.undelete::<Engagement>("engagements/a", "", &anonymous("UndeleteEngagement")).await.unwrap();
        let refused = set_parent(&registry, "engagements/b", "engagements/a").await.unwrap_err();
        assert!(matches!(&refused, Error::FailedPrecondition { reason, .. } if reason == "HIERARCHY_CYCLE"));
    }
}
