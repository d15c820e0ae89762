//! The change feed and record history, read from the store's change log.
//!
//! A watcher is one task that reads the durable log from its own position and
//! hands one revision's matching changes at a time to a small bounded channel:
//! a slow consumer only slows its own reading (the server never buffers more
//! than the channel for it), and one overtaken by compaction is told where it
//! can resume.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use super::keys::{VERSION_PREFIX, record_key, version_key, versions_from};
use crate::error::{Error, Result, Violations};
use crate::pb::cooperation::v1::{self as v1, change};
use crate::pb::google::r#type::Date;
use crate::registry::records::{ChangeKind, StoredChange, StoredEvent};
use crate::registry::resource::{self, Kind, Resource};
use crate::registry::{Registry, dates, etag_of, paging};
use crate::store::{Batches, Op, StoreError, Txn, TxnSize, key_after};

pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
const MAX_PROGRESS_INTERVAL: Duration = Duration::from_secs(3600);
/// Responses a watcher may have waiting for its consumer.
const WATCH_BUFFER: usize = 16;

/// The job of compacting the change log (see `jobs`).
const COMPACTION_JOB: &str = "compaction";

/// The actor recorded for the removal of the versions compaction leaves unread.
pub const COMPACTION_ACTOR: &str = "system:compaction";

/// What a WatchChanges call asks for.
#[derive(Clone, Debug, Default)]
pub struct WatchQuery {
    pub start_revision: i64,
    pub resource_types: Vec<String>,
    pub names: Vec<String>,
    pub progress_interval: Option<Duration>,
}

/// Which events a watcher sends.
struct Selection {
    kinds: Vec<&'static Kind>,
    names: HashSet<String>,
}

impl Selection {
    fn admits(&self, name: &str) -> bool {
        let kind_ok = self.kinds.is_empty() || resource::kind_of_name(name).is_some_and(|k| self.kinds.contains(&k));
        kind_ok && (self.names.is_empty() || self.names.contains(name))
    }
}

fn out_of_range(revision: u64, first: u64) -> Error {
    Error::OutOfRange {
        message: format!(
            "revision {revision} is no longer in the change log, which now starts at revision {first}; \
             List again and watch from the List's revision + 1, or resume from {first}"
        ),
        oldest_revision: first,
    }
}

/// The day an agreement's status is derived for in a change: its commit day.
fn commit_day(change: &StoredChange) -> Date {
    let seconds = change.commit_time.as_ref().map(|t| t.seconds).unwrap_or_default();
    let (year, month, day) = dates::civil_from_days(seconds.div_euclid(86_400));
    Date { year, month: month as i32, day: day as i32 }
}

fn present<R: Resource>(bytes: &[u8], revision: u64, as_of: &Date) -> Result<R> {
    let mut record = R::decode(bytes).map_err(Error::internal)?;
    record.set_etag(etag_of(revision));
    record.derive(as_of);
    Ok(record)
}

/// The public form of one stored event, with the record it left.
fn to_change(revision: u64, change: &StoredChange, event: &StoredEvent, body: &[u8]) -> Result<v1::Change> {
    let as_of = commit_day(change);
    let kind =
        resource::kind_of_name(&event.name).ok_or_else(|| Error::internal(format!("no kind for {}", event.name)))?;
    let record = match kind.collection {
        "parties" => change::Record::Party(present(body, revision, &as_of)?),
        "agreements" => change::Record::Agreement(present(body, revision, &as_of)?),
        "partnershipDomains" => change::Record::PartnershipDomain(present(body, revision, &as_of)?),
        _ => change::Record::Engagement(present(body, revision, &as_of)?),
    };
    let change_type = match ChangeKind::try_from(event.kind).unwrap_or(ChangeKind::Unspecified) {
        ChangeKind::Created => change::Type::Created,
        ChangeKind::Updated => change::Type::Updated,
        ChangeKind::Deleted => change::Type::Deleted,
        ChangeKind::Undeleted => change::Type::Undeleted,
        ChangeKind::Unspecified => change::Type::Unspecified,
    };
    Ok(v1::Change {
        revision: revision as i64,
        r#type: change_type as i32,
        name: event.name.clone(),
        commit_time: change.commit_time,
        actor: change.actor.clone(),
        record: Some(record),
    })
}

/// Why `name` is not the name of a record of any kind, if it is not.
fn name_problem(name: &str) -> Option<String> {
    match resource::kind_of_name(name) {
        None => Some(format!("must be a resource name such as agreements/{{id}} or parties/{{id}} (got {name:?})")),
        Some(kind) => kind.parse_name(name).err(),
    }
}

impl Registry {
    /// Starts a watcher; its responses (or the error that ends it) arrive on
    /// the returned channel. The watcher stops when the receiver is dropped.
    pub async fn watch(
        self: &Arc<Self>,
        query: WatchQuery,
    ) -> Result<mpsc::Receiver<Result<v1::WatchChangesResponse>>> {
        let mut violations = Violations::new();
        if query.start_revision < 0 {
            violations.add("start_revision", format!("must not be negative (got {})", query.start_revision));
        }
        let mut kinds = Vec::new();
        for (i, wanted) in query.resource_types.iter().enumerate() {
            match resource::KINDS.into_iter().find(|k| k.resource_type == wanted || k.collection == wanted) {
                Some(kind) => kinds.push(kind),
                None => violations.add(
                    format!("resource_types[{i}]"),
                    format!(
                        "{wanted:?} is not a resource type; use one of {}",
                        resource::KINDS.iter().map(|k| k.resource_type).collect::<Vec<_>>().join(", ")
                    ),
                ),
            }
        }
        for (i, name) in query.names.iter().enumerate() {
            if let Some(problem) = name_problem(name) {
                violations.add(format!("names[{i}]"), problem);
            }
        }
        let interval = query.progress_interval.unwrap_or(DEFAULT_PROGRESS_INTERVAL);
        if !(MIN_PROGRESS_INTERVAL..=MAX_PROGRESS_INTERVAL).contains(&interval) {
            violations.add("progress_interval", format!("must be from 100ms to 1h (got {interval:?})"));
        }
        violations.into_result()?;

        let start = match query.start_revision as u64 {
            0 => self.store.current_revision().await? + 1,
            n => n,
        };
        let first = self.store.first_change().await?;
        if start < first {
            return Err(out_of_range(start, first));
        }
        let selection = Selection { kinds, names: query.names.into_iter().collect() };
        let (sender, receiver) = mpsc::channel(WATCH_BUFFER);
        let registry = self.clone();
        tokio::spawn(async move {
            registry.watchers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let followed = registry.follow(start, &selection, interval, &sender).await;
            registry.watchers.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            if let Err(error) = followed {
                let _ = sender.send(Err(error)).await;
            }
        });
        Ok(receiver)
    }

    /// A watcher's loop: sends every matching change from `next` on, as the
    /// store's watch delivers them (whoever wrote them), and progress while
    /// nothing matching comes. Returns Ok when the consumer left.
    async fn follow(
        &self,
        mut next: u64,
        selection: &Selection,
        interval: Duration,
        sender: &mpsc::Sender<Result<v1::WatchChangesResponse>>,
    ) -> Result<()> {
        let mut shutdown = self.shutdown.subscribe();
        let mut changes = self.store.watch(next);
        let mut reported = Instant::now();
        loop {
            let wait = interval.saturating_sub(reported.elapsed());
            tokio::select! {
                entry = changes.next() => {
                    let (revision, bytes) = match entry {
                        Some(Ok(entry)) => entry,
                        Some(Err(StoreError::Compacted { first })) => return Err(out_of_range(next, first)),
                        Some(Err(e)) => return Err(e.into()),
                        None => return Err(Error::internal("the store's watch ended without a cause")),
                    };
                    let change = StoredChange::decode(bytes.as_slice()).map_err(Error::internal)?;
                    let admitted: Vec<&StoredEvent> = change.events.iter().filter(|e| selection.admits(&e.name)).collect();
                    let bodies = self.bodies(revision, &admitted).await?;
                    let mut changes = Vec::with_capacity(admitted.len());
                    for (event, body) in admitted.into_iter().zip(bodies) {
                        let Some(body) = body else {
                            return Err(out_of_range(revision, self.store.first_change().await?));
                        };
                        changes.push(to_change(revision, &change, event, &body)?);
                    }
                    next = revision + 1;
                    if !changes.is_empty() {
                        let response = v1::WatchChangesResponse { changes, revision: revision as i64 };
                        if sender.send(Ok(response)).await.is_err() {
                            return Ok(());
                        }
                        reported = Instant::now();
                    }
                }
                _ = tokio::time::sleep(wait) => {
                    let progress = v1::WatchChangesResponse { changes: Vec::new(), revision: next as i64 - 1 };
                    if sender.send(Ok(progress)).await.is_err() {
                        return Ok(());
                    }
                    reported = Instant::now();
                }
                _ = async { shutdown.wait_for(|stopping| *stopping).await.map(|_| ()) } => {
                    return Err(Error::Unavailable {
                        message: format!("the server is shutting down; resume from revision {next}"),
                    });
                }
            }
        }
    }

    /// The changes of one record, newest first, from the revision in
    /// `page_token` (or its latest); and whether older ones were compacted.
    pub async fn list_revisions(
        &self,
        name: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<v1::Change>, String, bool)> {
        let mut violations = Violations::new();
        if let Some(problem) = name_problem(name) {
            violations.add("name", problem);
        }
        if page_size < 0 {
            violations.add("page_size", format!("must not be negative (got {page_size})"));
        }
        violations.into_result()?;
        let size = match page_size as usize {
            0 => super::DEFAULT_PAGE_SIZE,
            n => n.min(super::MAX_PAGE_SIZE),
        };
        let fingerprint = paging::fingerprint(&[b"revisions", name.as_bytes()]);
        let mut revision = match paging::decode(page_token, fingerprint).map_err(|e| Error::invalid("page_token", e))? {
            Some(bytes) => u64::from_be_bytes(
                bytes.try_into().map_err(|_| Error::invalid("page_token", "is not a page token this server issued"))?,
            ),
            None => match self.store.get(&super::keys::record_key(name)).await? {
                Some(entry) => entry.mod_revision,
                None => {
                    let kind = resource::kind_of_name(name).map(|k| k.resource_type).unwrap_or_default();
                    return Err(Error::NotFound { resource_type: kind.into(), name: name.into() });
                }
            },
        };
        let mut found = Vec::new();
        let mut truncated = false;
        while revision > 0 && found.len() < size {
            let Some((change, event, body)) = self.version_of(name, revision).await? else {
                truncated = revision < self.store.first_change().await?;
                revision = 0;
                break;
            };
            found.push(to_change(revision, &change, &event, &body)?);
            revision = event.previous_revision;
        }
        let token = if revision > 0 { paging::encode(fingerprint, &revision.to_be_bytes()) } else { String::new() };
        Ok((found, token, truncated))
    }

    /// The record `name` as the change at `revision` left it.
    pub async fn get_revision(&self, name: &str, revision: i64) -> Result<v1::Change> {
        if let Some(problem) = name_problem(name) {
            return Err(Error::invalid("name", problem));
        }
        if revision <= 0 {
            return Err(Error::invalid("revision", format!("must be a positive revision (got {revision})")));
        }
        let revision = revision as u64;
        match self.version_of(name, revision).await? {
            Some((change, event, body)) => to_change(revision, &change, &event, &body),
            None => {
                let first = self.store.first_change().await?;
                if revision < first {
                    Err(out_of_range(revision, first))
                } else {
                    Err(Error::NotFound {
                        resource_type: resource::kind_of_name(name).map(|k| k.resource_type).unwrap_or_default().into(),
                        name: format!("{name} at revision {revision}"),
                    })
                }
            }
        }
    }

    /// The change at `revision`, its event for `name` and the record it
    /// left, if all three are still kept.
    pub(super) async fn version_of(
        &self,
        name: &str,
        revision: u64,
    ) -> Result<Option<(StoredChange, StoredEvent, bytes::Bytes)>> {
        let Some((found, bytes)) = self.store.changes(revision, 1).await?.into_iter().next() else { return Ok(None) };
        if found != revision {
            return Ok(None);
        }
        let mut change = StoredChange::decode(bytes.as_slice()).map_err(Error::internal)?;
        let Some(at) = change.events.iter().position(|e| e.name == name) else { return Ok(None) };
        let event = change.events.swap_remove(at);
        let body = self.bodies(revision, &[&event]).await?.pop().flatten();
        Ok(body.map(|body| (change, event, body)))
    }

    /// The records that `events` of the change at `revision` left, in their
    /// order: an older entry's own copy; else the record's key while it is
    /// still that version, or its version key once a later change replaced it
    /// (both written by that change, so one snapshot has one or the other).
    /// `None` for a version compaction removed meanwhile.
    async fn bodies(&self, revision: u64, events: &[&StoredEvent]) -> Result<Vec<Option<bytes::Bytes>>> {
        let apart: Vec<&str> = events.iter().filter(|e| e.record.is_empty()).map(|e| e.name.as_str()).collect();
        let mut found = if apart.is_empty() {
            Vec::new().into_iter()
        } else {
            let keys: Vec<Vec<u8>> =
                apart.iter().flat_map(|name| [record_key(name), version_key(name, revision)]).collect();
            let snapshot = self.store.snapshot().await?;
            snapshot.get_many(&keys.iter().map(Vec::as_slice).collect::<Vec<_>>()).await?.into_iter()
        };
        Ok(events
            .iter()
            .map(|event| {
                if !event.record.is_empty() {
                    return Some(bytes::Bytes::copy_from_slice(&event.record));
                }
                let (current, replaced) = (found.next().flatten(), found.next().flatten());
                match current {
                    Some(entry) if entry.mod_revision == revision => Some(entry.value),
                    _ => replaced.map(|entry| entry.value),
                }
            })
            .collect())
    }

    /// Applies a retention policy to the change log: keeps at least the last
    /// `keep_revisions` revisions (when set) and the changes younger than
    /// `keep_for` (when set); compacts only what both allow. Returns the number
    /// of entries removed.
    pub async fn compact(&self, keep_revisions: Option<u64>, keep_for: Option<Duration>) -> Result<u64> {
        let Some(cutoff) = self.compaction_cutoff(keep_revisions, keep_for).await? else { return Ok(0) };
        self.compact_to(cutoff).await
    }

    /// [`Registry::compact`] by one of the servers that share the store:
    /// this one, if no other is compacting (under the compaction job's
    /// lease; see `jobs`). Compacting twice to one revision changes nothing,
    /// so a compaction that outlasts its lease does no harm.
    pub async fn compact_once(
        self: &Arc<Self>,
        keep_revisions: Option<u64>,
        keep_for: Option<Duration>,
    ) -> Result<u64> {
        let Some(cutoff) = self.compaction_cutoff(keep_revisions, keep_for).await? else { return Ok(0) };
        if self.take_lease(COMPACTION_JOB).await?.is_none() {
            return Ok(0);
        }
        self.compact_to(cutoff).await
    }

    /// Removes the changes before `cutoff` and the replaced versions only
    /// they showed. Returns the number of changes removed.
    async fn compact_to(&self, cutoff: u64) -> Result<u64> {
        let removed = self.store.compact(cutoff).await?;
        let versions = self.forget_versions(cutoff).await?;
        if removed > 0 || versions > 0 {
            tracing::info!(removed, versions, first_revision = cutoff, "compacted the change log");
        }
        Ok(removed)
    }

    /// Deletes the version keys of revisions before `cutoff`. A compaction
    /// stopped between the change log and these leaves some, and so does an
    /// update of a record last written before the cutoff: the next
    /// compaction removes them.
    async fn forget_versions(&self, cutoff: u64) -> Result<u64> {
        let end = versions_from(cutoff);
        let change = StoredChange::bookkeeping(COMPACTION_ACTOR);
        let mut batches = Batches::new(self.store.limits(), change, TxnSize::default());
        let mut start = Vec::new();
        let mut removed = 0;
        'scan: loop {
            let read = self.store.snapshot().await?.scan(VERSION_PREFIX, &start, crate::store::MAX_CHUNK).await?;
            let Some((last, _)) = read.last() else { break };
            start = key_after(last);
            let whole = read.len() == crate::store::MAX_CHUNK;
            for (key, _) in read {
                if key >= end {
                    break 'scan;
                }
                removed += 1;
                if let Some(txn) = batches.push(Txn { ops: vec![Op::Delete { key }], ..Default::default() })? {
                    self.store.commit(txn).await?;
                }
            }
            if !whole {
                break;
            }
        }
        if let Some(txn) = batches.take() {
            self.store.commit(txn).await?;
        }
        Ok(removed)
    }

    /// The first revision a retention policy keeps, if it lets any go.
    async fn compaction_cutoff(&self, keep_revisions: Option<u64>, keep_for: Option<Duration>) -> Result<Option<u64>> {
        let current = self.store.current_revision().await?;
        let mut cutoff = current + 1;
        if let Some(keep) = keep_revisions {
            cutoff = cutoff.min((current + 1).saturating_sub(keep).max(1));
        }
        if let Some(age) = keep_for {
            let oldest_kept = std::time::SystemTime::now() - age;
            let limit = prost_types::Timestamp::from(oldest_kept);
            let mut from = self.store.first_change().await?;
            'scan: loop {
                let batch = self.store.changes(from, 256).await?;
                if batch.is_empty() {
                    break;
                }
                for (revision, bytes) in &batch {
                    let change = StoredChange::decode(bytes.as_slice()).map_err(Error::internal)?;
                    let time = change.commit_time.unwrap_or_default();
                    if (time.seconds, time.nanos) >= (limit.seconds, limit.nanos) {
                        cutoff = cutoff.min(*revision);
                        break 'scan;
                    }
                    from = revision + 1;
                }
            }
            cutoff = cutoff.min(from.max(1));
        }
        if keep_revisions.is_none() && keep_for.is_none() || cutoff <= self.store.first_change().await? {
            return Ok(None);
        }
        Ok(Some(cutoff))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::WatchQuery;
    use crate::pb::cooperation::v1::{Agreement, change};
    use crate::registry::Registry;
    use crate::registry::testing::{anonymous, india_japan};
    use crate::store::Store;
    use crate::store::memory::MemoryStore;

    /// Two registries on one store, as two servers on one engine: a watch on
    /// one delivers the writes of both, in revision order, once each, and
    /// resumes on the other from where it stopped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_on_one_registry_sees_the_other_s_writes_in_order() {
        let store = Arc::new(MemoryStore::new());
        let a = Arc::new(Registry::open(store.clone()).await.unwrap());
        let b = Arc::new(Registry::open(store.clone()).await.unwrap());
        let start = store.current_revision().await.unwrap() + 1;
        let query = |start_revision: u64| WatchQuery {
            start_revision: start_revision as i64,
            resource_types: vec!["agreements".into()],
            names: Vec::new(),
            progress_interval: Some(Duration::from_secs(3600)),
        };
        let mut on_b = b.watch(query(start)).await.unwrap();
        let writers: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .enumerate()
            .map(|(w, registry)| {
                tokio::spawn(async move {
                    for i in 0..10 {
                        let agreement = Agreement { title: format!("writer {w}, agreement {i}"), ..india_japan() };
                        registry.create(&format!("w{w}-{i}"), agreement, &anonymous("CreateAgreement")).await.unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        let mut revisions = Vec::new();
        let mut names = Vec::new();
        while revisions.len() < 20 {
            let response = tokio::time::timeout(Duration::from_secs(5), on_b.recv()).await.unwrap().unwrap().unwrap();
            for change in response.changes {
                assert_eq!(change.r#type(), change::Type::Created);
                revisions.push(change.revision);
                names.push(change.name);
            }
        }
        assert!(revisions.windows(2).all(|w| w[0] < w[1]), "in revision order: {revisions:?}");
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 20, "each write once");

        // Resumed on the other registry from the middle: the rest, in order.
        let mut on_a = a.watch(query(revisions[10] as u64)).await.unwrap();
        let mut resumed = Vec::new();
        while resumed.len() < 10 {
            let response = tokio::time::timeout(Duration::from_secs(5), on_a.recv()).await.unwrap().unwrap().unwrap();
            resumed.extend(response.changes.iter().map(|c| c.revision));
        }
        assert_eq!(resumed, revisions[10..]);
    }

    fn title_of(change: &crate::pb::cooperation::v1::Change) -> (change::Type, String, bool) {
        let Some(change::Record::Agreement(agreement)) = &change.record else { panic!("{change:?}") };
        (change.r#type(), agreement.title.clone(), agreement.delete_time.is_some())
    }

    /// The change log names the records a change wrote without copying them:
    /// history, GetRevision and the change feed read each version from the
    /// record while it is current and from its version key once replaced, and
    /// compaction takes the versions only the removed changes showed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_version_is_read_back_though_the_change_log_holds_no_copy() {
        use prost::Message;

        use crate::registry::keys::{VERSION_PREFIX, version_key};
        use crate::registry::records::StoredChange;

        let store = Arc::new(MemoryStore::new());
        let registry = Arc::new(Registry::open(store.clone()).await.unwrap());
        let start = store.current_revision().await.unwrap() + 1;
        let created = registry
            .create("a1", Agreement { title: "t0".into(), ..india_japan() }, &anonymous("CreateAgreement"))
            .await
            .unwrap();
        let name = created.name.clone();
        for title in ["t1", "t2"] {
            let patch = Agreement { name: name.clone(), title: title.into(), ..Default::default() };
            registry.update(patch, &["title".into()], "", &anonymous("UpdateAgreement")).await.unwrap();
        }
        registry.delete::<Agreement>(&name, "", &anonymous("DeleteAgreement")).await.unwrap();
        registry.undelete::<Agreement>(&name, "", &anonymous("UndeleteAgreement")).await.unwrap();

        let logged = store.changes(start, 100).await.unwrap();
        let revisions: Vec<u64> = logged.iter().map(|(revision, _)| *revision).collect();
        assert_eq!(revisions.len(), 5);
        for (_, bytes) in &logged {
            let change = StoredChange::decode(bytes.as_slice()).unwrap();
            assert!(change.events.iter().all(|e| e.name == name && e.record.is_empty()), "{change:?}");
        }
        // The four replaced versions are kept apart; the current one is the record.
        let versions = store.snapshot().await.unwrap().scan(VERSION_PREFIX, b"", 100).await.unwrap();
        let expected: Vec<Vec<u8>> = revisions[..4].iter().map(|r| version_key(&name, *r)).collect();
        assert_eq!(versions.iter().map(|(key, _)| key.clone()).collect::<Vec<_>>(), expected);

        use change::Type::{Created, Deleted, Undeleted, Updated};
        let wanted = vec![
            (Undeleted, "t2".to_string(), false),
            (Deleted, "t2".to_string(), true),
            (Updated, "t2".to_string(), false),
            (Updated, "t1".to_string(), false),
            (Created, "t0".to_string(), false),
        ];
        let (history, _, truncated) = registry.list_revisions(&name, 100, "").await.unwrap();
        assert_eq!(history.iter().map(title_of).collect::<Vec<_>>(), wanted);
        assert!(!truncated);
        for (revision, change) in revisions.iter().rev().zip(&history) {
            assert_eq!(change.revision as u64, *revision);
            assert_eq!(&registry.get_revision(&name, *revision as i64).await.unwrap(), change);
        }
        let query = WatchQuery {
            start_revision: start as i64,
            resource_types: Vec::new(),
            names: vec![name.clone()],
            progress_interval: Some(Duration::from_secs(3600)),
        };
        let mut feed = registry.watch(query).await.unwrap();
        let mut watched = Vec::new();
        while watched.len() < 5 {
            let response = tokio::time::timeout(Duration::from_secs(5), feed.recv()).await.unwrap().unwrap().unwrap();
            watched.extend(response.changes.iter().map(title_of));
        }
        watched.reverse();
        assert_eq!(watched, wanted);

        // Compacted before the second update: its version and those after it stay.
        let keep = store.current_revision().await.unwrap() + 1 - revisions[2];
        registry.compact(Some(keep), None).await.unwrap();
        let versions = store.snapshot().await.unwrap().scan(VERSION_PREFIX, b"", 100).await.unwrap();
        let expected: Vec<Vec<u8>> = revisions[2..4].iter().map(|r| version_key(&name, *r)).collect();
        assert_eq!(versions.iter().map(|(key, _)| key.clone()).collect::<Vec<_>>(), expected);
        let (history, _, truncated) = registry.list_revisions(&name, 100, "").await.unwrap();
        assert_eq!(history.iter().map(title_of).collect::<Vec<_>>(), wanted[..3]);
        assert!(truncated);
    }

    /// Entries of older data dirs carry their record: they are read as they
    /// are, even where no version key was written when the record changed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_older_entry_shows_the_record_it_carries() {
        use prost::Message;

        use crate::registry::keys::record_key;
        use crate::registry::records::{ChangeKind, StoredChange, StoredEvent};
        use crate::store::{Op, Txn};

        let store = Arc::new(MemoryStore::new());
        let registry = Registry::open(store.clone()).await.unwrap();
        let name = "agreements/old".to_string();
        let mut revisions = Vec::new();
        for (kind, title, previous_revision) in [(ChangeKind::Created, "first", 0), (ChangeKind::Updated, "second", 1)]
        {
            let record = Agreement { name: name.clone(), title: title.into(), ..india_japan() }.encode_to_vec();
            let previous_revision = revisions.last().copied().unwrap_or(previous_revision);
            let event =
                StoredEvent { kind: kind as i32, name: name.clone(), record: record.clone(), previous_revision };
            let change = StoredChange { actor: "old".into(), commit_time: None, events: vec![event] };
            let txn = Txn {
                ops: vec![Op::Put { key: record_key(&name), value: record }],
                change: change.encode_to_vec(),
                ..Default::default()
            };
            store.commit(txn).await.unwrap();
            revisions.push(store.current_revision().await.unwrap());
        }
        let (history, _, _) = registry.list_revisions(&name, 10, "").await.unwrap();
        let titles: Vec<String> = history.iter().map(|c| title_of(c).1).collect();
        assert_eq!(titles, ["second", "first"]);
        assert_eq!(title_of(&registry.get_revision(&name, revisions[0] as i64).await.unwrap()).1, "first");
    }
}
