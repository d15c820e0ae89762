//! Request ids (AIP-155): a Create, Update, Delete or Undelete sent with a
//! `request_id` keeps its answer under `q/{request_id}`, written in the same
//! transaction as the change, so a retry of the same request gets the first
//! answer even after the change log was compacted.
//!
//! An answer is kept for the registry's request retention (24 hours unless
//! configured): a retry after that is a new request. Each entry is also a
//! member of the expiry set, ordered by its commit time, so
//! [`Registry::expire_requests`] removes the expired ones by reading only
//! those.

use std::time::{Duration, SystemTime};

use prost::Message;
use prost_types::Timestamp;

use super::jobs::Lease;
use super::records::{StoredChange, StoredRequest};
use super::{Mutation, Registry, Resource, decode, now};
use crate::error::{Error, Result};
use crate::store::{Batches, Condition, Op, Outcome, Txn, for_each_member};

/// How long a request's answer is kept by default: AIP-155 asks for at least
/// a day, long enough for any client's retries.
pub const DEFAULT_REQUEST_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// The actor of the changes that remove expired answers.
pub const EXPIRY_ACTOR: &str = "system:request-expiry";

/// The set of every kept answer, as `commit seconds (big-endian u64) ||
/// request_id`: read in order, the oldest come first.
const EXPIRY_SET: &[u8] = b"e/requests\0";

/// Expired answers removed by one transaction: small enough for any engine's
/// limit on a transaction's operations (each takes three, and the lease two).
const EXPIRY_BATCH: usize = 40;

/// The job of removing expired answers (see `jobs`).
const EXPIRY_JOB: &str = "request-expiry";

/// Whether `text` is a request id as the contract's `(google.api.field_info).format
/// = UUID4` has it: a UUID (RFC 4122) in its 36-character hyphenated form, any
/// version, either case. The other spellings the `uuid` crate reads (32 bare
/// hex digits, braces, `urn:uuid:`) are refused.
pub(super) fn is_request_id(text: &str) -> bool {
    text.len() == 36 && uuid::Uuid::try_parse(text).is_ok()
}

fn request_key(request_id: &str) -> Vec<u8> {
    format!("q/{request_id}").into_bytes()
}

fn expiry_member(commit_time: &Timestamp, request_id: &str) -> Vec<u8> {
    let mut member = (commit_time.seconds.max(0) as u64).to_be_bytes().to_vec();
    member.extend_from_slice(request_id.as_bytes());
    member
}

fn seconds_since(time: &Timestamp, now: SystemTime) -> Option<Duration> {
    let time = SystemTime::try_from(*time).ok()?;
    now.duration_since(time).ok()
}

/// What a request with a request_id finds before it writes.
pub(super) enum Earlier<R> {
    /// The same request succeeded already: its first answer.
    Answered(R),
    /// Nothing to answer from: write, and keep the answer in this slot
    /// (`None` for a request without a request_id).
    New(Option<RequestSlot>),
}

/// Where a new request's answer goes: a key that is absent, or holds an
/// expired answer that it replaces.
pub(super) struct RequestSlot {
    request_id: String,
    /// The mod revision of the expired entry it replaces; 0 when absent.
    replaces: u64,
    /// The expired entry's member of the expiry set.
    stale_member: Option<Vec<u8>>,
}

impl RequestSlot {
    /// The condition and writes that keep `answer` (the record after the
    /// change) with the change, made at `commit_time`.
    pub(super) fn keep(
        self,
        mutation: &Mutation,
        name: &str,
        answer: &[u8],
        commit_time: Timestamp,
        conditions: &mut Vec<Condition>,
        ops: &mut Vec<Op>,
    ) {
        let key = request_key(&self.request_id);
        let entry = StoredRequest {
            method: mutation.method.into(),
            fingerprint: mutation.fingerprint,
            name: name.to_string(),
            answer: answer.to_vec(),
            commit_time: Some(commit_time),
            revision: 0,
        };
        conditions.push(Condition::ModRevision { key: key.clone(), equals: self.replaces });
        ops.push(Op::Put { key, value: entry.encode_to_vec() });
        if let Some(member) = self.stale_member {
            ops.push(Op::Remove { set: EXPIRY_SET.to_vec(), member });
        }
        ops.push(Op::Add { set: EXPIRY_SET.to_vec(), member: expiry_member(&commit_time, &self.request_id) });
    }
}

impl Registry {
    /// The first answer to an earlier success of the same request, or where
    /// to keep this one's. Unless `read`, the request is taken as new without
    /// a read: its entry's absence is then a condition of the write, and a
    /// write whose condition failed reads on its next attempt.
    pub(super) async fn earlier_request<R: Resource>(&self, mutation: &Mutation, read: bool) -> Result<Earlier<R>> {
        if mutation.request_id.is_empty() {
            return Ok(Earlier::New(None));
        }
        let slot = |replaces, stale_member| {
            Earlier::New(Some(RequestSlot { request_id: mutation.request_id.clone(), replaces, stale_member }))
        };
        if !read {
            return Ok(slot(0, None));
        }
        let Some(entry) = self.store.get(&request_key(&mutation.request_id)).await? else {
            return Ok(slot(0, None));
        };
        let first = StoredRequest::decode(&entry.value[..]).map_err(Error::internal)?;
        let commit_time = first.commit_time.ok_or_else(|| Error::internal("a request entry without its time"))?;
        if seconds_since(&commit_time, SystemTime::now()).is_some_and(|age| age > self.request_retention) {
            return Ok(slot(entry.mod_revision, Some(expiry_member(&commit_time, &mutation.request_id))));
        }
        check_same_request(mutation, &first)?;
        let revision = if first.revision == 0 { entry.mod_revision } else { first.revision };
        if first.answer.is_empty() {
            return Err(Error::FailedPrecondition {
                reason: "REQUEST_ANSWER_GONE".into(),
                message: format!(
                    "request_id {} succeeded at revision {revision} on {}, but its answer was not kept; read {} \
                     for its current state",
                    mutation.request_id, first.name, first.name
                ),
                violations: Vec::new(),
            });
        }
        self.store.wait_durable(entry.mod_revision).await?;
        let mut record: R = decode(&first.answer)?;
        self.present(&mut record, revision, &super::dates::today());
        Ok(Earlier::Answered(record))
    }

    /// Removes the answers kept longer than the request retention; returns
    /// how many. Safe while other servers on the same store do the same: each
    /// removal is conditioned on the entry it read.
    pub async fn expire_requests(&self) -> Result<u64> {
        let cutoff = SystemTime::now().checked_sub(self.request_retention).unwrap_or(SystemTime::UNIX_EPOCH);
        let cutoff_seconds = cutoff.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if self.expired_members(cutoff_seconds).await?.is_empty() {
            return Ok(0);
        }
        // One server among those sharing the store removes them.
        let Some(mut lease) = self.take_lease(EXPIRY_JOB).await? else { return Ok(0) };
        let mut removed = 0;
        loop {
            let expired = self.expired_members(cutoff_seconds).await?;
            if expired.is_empty() {
                return Ok(removed);
            }
            let mut txn = Txn::default();
            let mut entries = 0;
            for member in &expired {
                let request_id = std::str::from_utf8(&member[8..]).map_err(Error::internal)?;
                let key = request_key(request_id);
                txn.ops.push(Op::Remove { set: EXPIRY_SET.to_vec(), member: member.clone() });
                // The entry goes only if it is still the one this member
                // stands for (a request after expiry replaces it).
                let Some(entry) = self.store.get(&key).await? else { continue };
                let first = StoredRequest::decode(&entry.value[..]).map_err(Error::internal)?;
                if first.commit_time.is_some_and(|time| expiry_member(&time, request_id) == *member) {
                    txn.conditions.push(Condition::ModRevision { key: key.clone(), equals: entry.mod_revision });
                    txn.ops.push(Op::Delete { key });
                    entries += 1;
                }
            }
            txn.change = StoredChange::bookkeeping(EXPIRY_ACTOR);
            match self.commit_leased(&mut lease, txn).await? {
                Outcome::Committed { .. } => removed += entries,
                // A retry replaced one of them meanwhile: the next sweep reads again.
                Outcome::ConditionFailed => return Ok(removed),
            }
        }
    }

    /// Up to EXPIRY_BATCH members of the expiry set (without the set's name)
    /// from before `cutoff_seconds`, oldest first. Members of the cutoff's
    /// own second wait for the next sweep.
    async fn expired_members(&self, cutoff_seconds: u64) -> Result<Vec<Vec<u8>>> {
        let mut expired = Vec::new();
        let snapshot = self.store.snapshot().await?;
        for_each_member::<Error>(&*snapshot, EXPIRY_SET, EXPIRY_SET, |member| {
            let member = &member[EXPIRY_SET.len()..];
            let Some((seconds, _)) = member.split_first_chunk::<8>() else {
                return Err(Error::internal("an expiry member without its time"));
            };
            if u64::from_be_bytes(*seconds) >= cutoff_seconds {
                return Ok(false);
            }
            expired.push(member.to_vec());
            Ok(expired.len() < EXPIRY_BATCH)
        })
        .await?;
        Ok(expired)
    }

    /// Schema 4: every request entry keeps its answer and its time. An entry
    /// of an older data dir takes its answer from the change log while it
    /// still holds it, and the time of the upgrade, so it expires one
    /// retention after the upgrade.
    pub(super) async fn keep_request_answers(&self, lease: &mut Lease) -> Result<()> {
        let upgraded = now();
        let change = StoredChange::bookkeeping(super::MIGRATION_ACTOR);
        let mut batches = Batches::new(self.store.limits(), change, Lease::SIZE);
        let mut start = Vec::new();
        let mut kept = 0;
        loop {
            let read = self.store.snapshot().await?.scan(b"q/", &start, EXPIRY_BATCH).await?;
            let Some((last, _)) = read.last() else { break };
            start = crate::store::key_after(last);
            for (key, entry) in &read {
                let mut request = StoredRequest::decode(&entry.value[..]).map_err(Error::internal)?;
                if request.commit_time.is_some() {
                    continue;
                }
                request.answer = self
                    .version_of(&request.name, entry.mod_revision)
                    .await?
                    .map(|(_, _, body)| body.to_vec())
                    .unwrap_or_default();
                request.revision = entry.mod_revision;
                request.commit_time = Some(upgraded);
                let request_id = std::str::from_utf8(&key[2..]).map_err(Error::internal)?;
                let item = Txn {
                    conditions: vec![Condition::ModRevision { key: key.clone(), equals: entry.mod_revision }],
                    ops: vec![
                        Op::Add { set: EXPIRY_SET.to_vec(), member: expiry_member(&upgraded, request_id) },
                        Op::Put { key: key.clone(), value: request.encode_to_vec() },
                    ],
                    ..Default::default()
                };
                self.write_batched(lease, &mut batches, item).await?;
                kept += 1;
            }
        }
        self.commit_batch(lease, batches.take()).await?;
        if kept > 0 {
            tracing::info!(entries = kept, "upgraded request entries: each keeps its answer and expires");
        }
        Ok(())
    }
}

/// Refuses a request_id reused for another request.
fn check_same_request(mutation: &Mutation, first: &StoredRequest) -> Result<()> {
    if first.method != mutation.method || first.fingerprint != mutation.fingerprint {
        return Err(Error::invalid(
            "request_id",
            format!(
                "was already used for a different request ({} on {}); use a new UUID for a new request",
                first.method, first.name
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use prost::Message;

    use super::super::{Mutation, Registry, RegistryOptions};
    use super::{EXPIRY_SET, StoredRequest, request_key};
    use crate::error::Error;
    use crate::pb::cooperation::v1::Agreement;
    use crate::pb::google::r#type::Date;
    use crate::store::memory::MemoryStore;
    use crate::store::{Op, Store, Txn};

    const REQUEST_ID: &str = "6f1d3c2a-0b7e-4f5a-9c1d-2e3f4a5b6c7d";

    async fn registry(store: Arc<MemoryStore>, retention: Duration) -> Registry {
        Registry::open_with(store, RegistryOptions { request_retention: retention }).await.unwrap()
    }

    fn create(request_id: &str) -> Mutation {
        Mutation {
            actor: "tester".into(),
            request_id: request_id.into(),
            method: "CreateAgreement",
            fingerprint: 7,
            deadline: None,
        }
    }

    fn agreement() -> Agreement {
        Agreement {
            title: "Agreement concerning reciprocal provision of supplies and services".into(),
            parties: vec!["parties/ind".into(), "parties/jpn".into()],
            signature_date: Some(Date { year: 2020, month: 9, day: 10 }),
            ..Default::default()
        }
    }

    async fn expiry_members(store: &MemoryStore) -> usize {
        store.snapshot().await.unwrap().members(EXPIRY_SET, b"", 100).await.unwrap().len()
    }

    #[test]
    fn request_ids_are_uuids_in_their_36_character_form() {
        for id in [REQUEST_ID, "6F1D3C2A-0B7E-4F5A-9C1D-2E3F4A5B6C7D", "018f3a2b-7c4d-7e5f-8a9b-0c1d2e3f4a5b"] {
            assert!(super::is_request_id(id), "{id}");
        }
        for id in [
            "abc",
            "retry-1",
            "6f1d3c2a0b7e4f5a9c1d2e3f4a5b6c7d",
            "{6f1d3c2a-0b7e-4f5a-9c1d-2e3f4a5b6c7d}",
            "urn:uuid:6f1d3c2a-0b7e-4f5a-9c1d-2e3f4a5b6c7d",
            "6f1d3c2a-0b7e-4f5a-9c1d-2e3f4a5b6c7g",
            "6f1d3c2a-0b7e4-f5a-9c1d-2e3f4a5b6c7d",
        ] {
            assert!(!super::is_request_id(id), "{id}");
        }
    }

    #[tokio::test]
    async fn a_retry_after_the_change_log_was_compacted_gets_the_first_answer() {
        let store = Arc::new(MemoryStore::new());
        let registry = registry(store.clone(), super::DEFAULT_REQUEST_RETENTION).await;
        let first = registry.create("", agreement(), &create(REQUEST_ID)).await.unwrap();
        registry.create("", agreement(), &create("")).await.unwrap();
        let compacted = registry.compact(Some(1), None).await.unwrap();
        assert!(compacted > 0, "the change log lost the first create");

        let retried = registry.create("", agreement(), &create(REQUEST_ID)).await.unwrap();
        assert_eq!(retried, first, "the retry answers with the first record, etag included");

        let mut other = create(REQUEST_ID);
        other.fingerprint = 8;
        let reused = registry.create("", agreement(), &other).await.unwrap_err();
        assert!(matches!(reused, Error::InvalidArgument { .. }), "{reused:?}");
    }

    #[tokio::test]
    async fn a_retry_after_the_retention_is_a_new_request_and_expired_answers_are_removed() {
        let store = Arc::new(MemoryStore::new());
        let registry = registry(store.clone(), Duration::ZERO).await;
        let first = registry.create("", agreement(), &create(REQUEST_ID)).await.unwrap();
        let second = registry.create("", agreement(), &create(REQUEST_ID)).await.unwrap();
        assert_ne!(second.name, first.name, "an expired request_id is a new request");
        assert_eq!(expiry_members(&store).await, 1, "the new answer replaced the expired one");
        let kept = StoredRequest::decode(store.get(&request_key(REQUEST_ID)).await.unwrap().unwrap().value);
        assert_eq!(kept.unwrap().name, second.name);

        // Answers of the sweep's own second wait for the next one.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(registry.expire_requests().await.unwrap(), 1);
        assert!(store.get(&request_key(REQUEST_ID)).await.unwrap().is_none());
        assert_eq!(expiry_members(&store).await, 0);
        assert_eq!(registry.expire_requests().await.unwrap(), 0, "nothing left to expire");
    }

    #[tokio::test]
    async fn answers_within_the_retention_are_kept_by_a_sweep() {
        let store = Arc::new(MemoryStore::new());
        let registry = registry(store.clone(), Duration::from_secs(3600)).await;
        for i in 0..3 {
            registry
                .create("", agreement(), &create(&format!("6f1d3c2a-0b7e-4f5a-9c1d-2e3f4a5b6c7{i}")))
                .await
                .unwrap();
        }
        assert_eq!(registry.expire_requests().await.unwrap(), 0);
        assert_eq!(expiry_members(&store).await, 3);
    }

    #[tokio::test]
    async fn an_older_data_dir_s_request_entries_take_their_answer_from_the_change_log_and_expire() {
        let store = Arc::new(MemoryStore::new());
        let first = {
            let registry = registry(store.clone(), super::DEFAULT_REQUEST_RETENTION).await;
            registry.create("", agreement(), &create("")).await.unwrap()
        };
        // The entry as schema 3 wrote it, in the create's own revision.
        let revision = store.current_revision().await.unwrap();
        let legacy = StoredRequest {
            method: "CreateAgreement".into(),
            fingerprint: 7,
            name: first.name.clone(),
            ..Default::default()
        };
        // Its change-log entry, as schema 5 and before wrote them, carries the record.
        let mut change =
            super::StoredChange::decode(store.changes(revision, 1).await.unwrap()[0].1.as_slice()).unwrap();
        let record_key = super::super::keys::record_key(&first.name);
        change.events[0].record = store.get(&record_key).await.unwrap().unwrap().value.to_vec();
        store
            .commit(Txn {
                ops: vec![
                    Op::Put { key: request_key(REQUEST_ID), value: legacy.encode_to_vec() },
                    Op::Put { key: super::super::schema::SCHEMA_KEY.to_vec(), value: 3u32.to_be_bytes().to_vec() },
                ],
                change: change.encode_to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();

        let registry = registry(store.clone(), super::DEFAULT_REQUEST_RETENTION).await;
        assert_eq!(expiry_members(&store).await, 1, "the upgraded entry expires like a new one");
        registry.compact(Some(1), None).await.unwrap();
        let retried = registry.create("", agreement(), &create(REQUEST_ID)).await.unwrap();
        assert_eq!(retried.name, first.name);
        assert_eq!(retried.etag, super::super::etag_of(revision + 1));
    }
}
