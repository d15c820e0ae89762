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

use crate::error::{Error, Result, Violations};
use crate::pb::cooperation::v1::{self as v1, change};
use crate::pb::google::r#type::Date;
use crate::registry::records::{ChangeKind, StoredChange, StoredEvent};
use crate::registry::resource::{self, Kind, Resource};
use crate::registry::{Registry, dates, etag_of, paging};
use crate::store::StoreError;

pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
const MAX_PROGRESS_INTERVAL: Duration = Duration::from_secs(3600);
/// Responses a watcher may have waiting for its consumer.
const WATCH_BUFFER: usize = 16;

/// The job of compacting the change log (see `jobs`).
const COMPACTION_JOB: &str = "compaction";

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

/// The public form of one stored event.
fn to_change(revision: u64, change: &StoredChange, event: &StoredEvent) -> Result<v1::Change> {
    let as_of = commit_day(change);
    let kind =
        resource::kind_of_name(&event.name).ok_or_else(|| Error::internal(format!("no kind for {}", event.name)))?;
    let record = match kind.collection {
        "parties" => change::Record::Party(present(&event.record, revision, &as_of)?),
        "agreements" => change::Record::Agreement(present(&event.record, revision, &as_of)?),
        "partnershipDomains" => change::Record::PartnershipDomain(present(&event.record, revision, &as_of)?),
        _ => change::Record::Engagement(present(&event.record, revision, &as_of)?),
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
                    let changes = change
                        .events
                        .iter()
                        .filter(|e| selection.admits(&e.name))
                        .map(|e| to_change(revision, &change, e))
                        .collect::<Result<Vec<_>>>()?;
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
            let Some((change, event)) = self.change_of(name, revision).await? else {
                truncated = revision < self.store.first_change().await?;
                revision = 0;
                break;
            };
            found.push(to_change(revision, &change, &event)?);
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
        match self.change_of(name, revision).await? {
            Some((change, event)) => to_change(revision, &change, &event),
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

    /// The change at `revision` and its event for `name`, if both exist.
    pub(super) async fn change_of(&self, name: &str, revision: u64) -> Result<Option<(StoredChange, StoredEvent)>> {
        let Some((found, bytes)) = self.store.changes(revision, 1).await?.into_iter().next() else { return Ok(None) };
        if found != revision {
            return Ok(None);
        }
        let change = StoredChange::decode(bytes.as_slice()).map_err(Error::internal)?;
        let event = change.events.iter().find(|e| e.name == name).cloned();
        Ok(event.map(|e| (change, e)))
    }

    /// Applies a retention policy to the change log: keeps at least the last
    /// `keep_revisions` revisions (when set) and the changes younger than
    /// `keep_for` (when set); compacts only what both allow. Returns the number
    /// of entries removed.
    pub async fn compact(&self, keep_revisions: Option<u64>, keep_for: Option<Duration>) -> Result<u64> {
        let Some(cutoff) = self.compaction_cutoff(keep_revisions, keep_for).await? else { return Ok(0) };
        let removed = self.store.compact(cutoff).await?;
        if removed > 0 {
            tracing::info!(removed, first_revision = cutoff, "compacted the change log");
        }
        Ok(removed)
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
        let removed = self.store.compact(cutoff).await?;
        if removed > 0 {
            tracing::info!(removed, first_revision = cutoff, "compacted the change log");
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
}
