//! The etcd v3 engine behind [`Store`]: several registry servers on one
//! replicated cluster.
//!
//! Layout under a prefix of the cluster's keyspace (`p`):
//! - `p k {key}`: a key and its value; its revision is etcd's `mod_revision`.
//! - `p s {set}{member}`: a set member, one etcd key each; its value is the
//!   set name's length, for a backup to tell set from member.
//! - `p log`: the change log. Every transaction puts its change-log entry
//!   there, so the key's history is the log: an entry's revision is the
//!   transaction's, and reading the log is watching the key from a revision.
//! - `p m first`: where the log starts (see [`Store::compact`]).
//! - `p m base`: under a prefix a backup was restored into, the cluster's
//!   revision before the restore. The store's revisions are etcd's less it,
//!   so the restored registry keeps its backup's revisions (its etags, its
//!   history, its watchers' resume points); 0 (absent) elsewhere.
//!
//! One [`Txn`] is one etcd transaction: its conditions are etcd compares, its
//! writes and its change-log entry the success branch, so it commits whole
//! at one revision or not at all. etcd acknowledges once a quorum has made it
//! durable. A view is a revision: reads through it ask etcd for that
//! revision, which it serves until its history is compacted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;

use super::{
    Applied, BoxFuture, ChangeStream, Changes, Condition, Engine, Entries, Entry, Members, Op, Outcome, Snapshot,
    Store, StoreError, StoreResult, Txn, TxnLimits,
};
use crate::pb::etcd::etcdserverpb::{
    self as pb, CompactionRequest, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest,
    WatchRequest, compare, kv_client::KvClient, request_op, response_op, watch_client::WatchClient, watch_request,
};
use crate::pb::etcd::mvccpb::event::EventType;

mod connection;
mod restore;
pub mod testing;

use connection::{Connection, token_unknown};
pub use connection::{EtcdCredentials, EtcdTls};
#[cfg(test)]
mod tests;

/// etcd's defaults for `--max-txn-ops` and `--max-request-bytes`: what a
/// cluster takes unless its operator raised them (the API cannot tell).
pub const DEFAULT_LIMITS: TxnLimits = TxnLimits { max_ops: 128, max_bytes: 1536 * 1024 };

/// How long a write whose answer was lost waits for the cluster to tell
/// whether it committed (see `Inner::resolve`): long enough for a leader's
/// election, short of a client's patience while the cluster has no quorum.
const RESOLVE_FOR: Duration = Duration::from_secs(10);

/// How long a watch that a member's loss ended is opened again without
/// delivering anything, before it ends with the error.
const WATCH_REOPEN_FOR: Duration = Duration::from_secs(30);

/// How long a read (idempotent: it may go to another member) is retried
/// while the cluster is unavailable, before UNAVAILABLE.
const READ_RETRY_FOR: Duration = Duration::from_secs(5);

/// Runs a read again while it finds the cluster unavailable, for up to
/// READ_RETRY_FOR: a member that went away fails the calls sent to it until
/// the client turns to the others.
async fn retrying<T, F, Fut>(mut read: F) -> StoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<T>>,
{
    let started = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        match read().await {
            Err(StoreError::Unavailable(_)) if started.elapsed() < READ_RETRY_FOR => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

/// Space kept in each request for what a transaction adds to the writes it
/// is given (its change-log entry's key, the keys' prefixes, the framing).
const REQUEST_OVERHEAD: usize = 4096;

#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Client URLs of the cluster's members (`http://127.0.0.1:2379`).
    pub endpoints: Vec<String>,
    /// The part of the cluster's keyspace the registry keeps its data under.
    pub prefix: Vec<u8>,
    /// The cluster's `--max-txn-ops` and `--max-request-bytes`.
    pub limits: TxnLimits,
    /// TLS to `https` endpoints.
    pub tls: Option<EtcdTls>,
    /// A user of etcd's authentication, for a cluster that has it on.
    pub credentials: Option<EtcdCredentials>,
}

impl EtcdOptions {
    /// A cluster at `endpoints` with etcd's default limits, over plain
    /// HTTP/2 and without authentication, under `prefix`.
    pub fn new(endpoints: Vec<String>, prefix: &[u8]) -> EtcdOptions {
        EtcdOptions { endpoints, prefix: prefix.to_vec(), limits: DEFAULT_LIMITS, tls: None, credentials: None }
    }
}

pub struct EtcdStore(Arc<Inner>);

/// The store's clients and settings, shared with its views and watches.
struct Inner {
    kv: KvClient<Connection>,
    watch: WatchClient<Connection>,
    keys: Keys,
    limits: TxnLimits,
    closed: AtomicBool,
    /// `p m base` (see the module's documentation), read once.
    base: tokio::sync::OnceCell<u64>,
    /// The highest revision (etcd's) an answer of the cluster named: a transaction
    /// sent after it commits, if at all, after it.
    seen: AtomicU64,
    /// Answers to transactions to drop as if the connection failed, for the
    /// tests of an unknown outcome.
    #[cfg(test)]
    lose_answers: std::sync::atomic::AtomicUsize,
}

/// Where the registry's keys sit in the cluster's keyspace.
struct Keys {
    prefix: Vec<u8>,
}

impl Keys {
    fn with(&self, kind: u8, rest: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + 1 + rest.len());
        key.extend_from_slice(&self.prefix);
        key.push(kind);
        key.extend_from_slice(rest);
        key
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        self.with(b'k', key)
    }

    fn member(&self, set_and_member: &[u8]) -> Vec<u8> {
        self.with(b's', set_and_member)
    }

    fn log(&self) -> Vec<u8> {
        self.with(b'l', b"og")
    }

    fn first(&self) -> Vec<u8> {
        self.with(b'm', b"first")
    }

    fn base(&self) -> Vec<u8> {
        self.with(b'm', b"base")
    }
}

/// The smallest key after every key that starts with `prefix` (etcd's
/// `range_end` for a prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match crate::store::prefix_end(prefix) {
        // Every byte 0xff: to the end of the keyspace.
        end if end.is_empty() => vec![0],
        end => end,
    }
}

/// A call's failure: etcd unreachable or without a quorum is "retry"; a
/// request etcd refused is a storage error.
fn failed(status: tonic::Status) -> StoreError {
    use tonic::Code;
    // A connection to a member that went away fails with Unknown (or
    // Internal, naming HTTP/2) rather than a status of etcd's own.
    let transport = matches!(status.code(), Code::Unknown)
        || (status.code() == Code::Internal
            && ["h2", "transport", "connection"].iter().any(|w| status.message().contains(w)));
    match status.code() {
        // A token etcd no longer knows is forgotten (see `connection`): the
        // call goes again with a new one.
        code if token_unknown(code, status.message()) => {
            StoreError::Unavailable(format!("etcd: {} (authenticating again)", status.message()))
        }
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Cancelled => {
            StoreError::Unavailable(format!("etcd: {}", status.message()))
        }
        _ if transport => StoreError::Unavailable(format!("etcd: {}: {}", status.code(), status.message())),
        Code::OutOfRange if status.message().contains("compacted") => StoreError::Compacted { first: 0 },
        _ => StoreError::Storage(format!("etcd: {}: {}", status.code(), status.message())),
    }
}

/// A revision as the store's meta keys hold it.
fn decode_revision(value: &[u8]) -> StoreResult<u64> {
    value.try_into().map(u64::from_be_bytes).map_err(|_| StoreError::Storage("etcd holds a malformed revision".into()))
}

fn revision_of(header: Option<&pb::ResponseHeader>) -> StoreResult<u64> {
    header.map(|h| h.revision as u64).ok_or_else(|| StoreError::Storage("etcd answered without a header".into()))
}

impl EtcdStore {
    /// Connects to the cluster (lazily: the first call finds out whether it
    /// is reachable).
    pub fn connect(options: EtcdOptions) -> StoreResult<EtcdStore> {
        let channel = Connection::open(&options)?;
        Ok(EtcdStore(Arc::new(Inner {
            kv: KvClient::new(channel.clone()).max_decoding_message_size(64 * 1024 * 1024),
            watch: WatchClient::new(channel).max_decoding_message_size(64 * 1024 * 1024),
            keys: Keys { prefix: options.prefix },
            limits: options.limits,
            closed: AtomicBool::new(false),
            base: tokio::sync::OnceCell::new(),
            seen: AtomicU64::new(0),
            #[cfg(test)]
            lose_answers: Default::default(),
        })))
    }
}

impl Inner {
    /// What a caller may put in one transaction: the cluster's limits less
    /// what every transaction adds (the change-log entry's write, the keys'
    /// prefix, the request's framing).
    fn usable_limits(&self) -> TxnLimits {
        TxnLimits {
            max_ops: self.limits.max_ops.saturating_sub(1),
            max_bytes: self.limits.max_bytes.saturating_sub(REQUEST_OVERHEAD),
        }
    }

    fn check_open(&self) -> StoreResult<()> {
        match self.closed.load(Ordering::Acquire) {
            true => Err(StoreError::Closed),
            false => Ok(()),
        }
    }

    async fn range(&self, request: RangeRequest) -> StoreResult<pb::RangeResponse> {
        self.check_open()?;
        let response = retrying(|| async { self.kv.clone().range(request.clone()).await.map_err(failed) }).await?;
        let response = response.into_inner();
        self.saw(response.header.as_ref());
        Ok(response)
    }

    fn saw(&self, header: Option<&pb::ResponseHeader>) {
        if let Some(header) = header {
            self.seen.fetch_max(header.revision as u64, Ordering::AcqRel);
        }
    }

    /// What the store's revisions lack of etcd's (see `p m base`).
    async fn base(&self) -> StoreResult<u64> {
        let base = self.base.get_or_try_init(|| async {
            let range = self.range(RangeRequest { key: self.keys.base(), ..Default::default() }).await?;
            Ok::<_, StoreError>(range.kvs.first().map(|kv| decode_revision(&kv.value)).transpose()?.unwrap_or(0))
        });
        Ok(*base.await?)
    }

    /// etcd's revision for the store's `revision` (0, "the latest", stays 0).
    async fn etcd_revision(&self, revision: u64) -> StoreResult<i64> {
        Ok(match revision {
            0 => 0,
            revision => (revision + self.base().await?) as i64,
        })
    }

    /// The store's revision for the header of an answer.
    async fn revision_of(&self, header: Option<&pb::ResponseHeader>) -> StoreResult<u64> {
        let revision = revision_of(header)?;
        Ok(revision.saturating_sub(self.base().await?))
    }

    /// The outcome of a transaction whose answer was lost (`error`): once
    /// the cluster answers a linearizable read again, a transaction sent
    /// before it has committed or never will, and it has committed if the
    /// change log after `before` holds its change (the registry's change
    /// entries name their commit time to the nanosecond, the caller and what
    /// was written, so no two writes in flight at once are alike; a job's
    /// batches share one, but go one after another). Committed if so, `error`
    /// if not; UNAVAILABLE naming the uncertainty if the cluster does not
    /// answer within RESOLVE_FOR.
    async fn resolve(&self, change: &[u8], before: u64, error: StoreError) -> StoreResult<Outcome> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(50);
        // The base is known: the transaction was made with it.
        let after = before.saturating_sub(self.base().await?) + 1;
        loop {
            match self.read_log(after, usize::MAX).await {
                Ok(entries) => {
                    return match entries.into_iter().find(|(_, entry)| entry.as_slice() == change) {
                        Some((revision, _)) => Ok(Outcome::Committed { revision }),
                        None => Err(error),
                    };
                }
                Err(StoreError::Unavailable(_)) if started.elapsed() < RESOLVE_FOR => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(StoreError::Unavailable(cause)) => {
                    return Err(StoreError::Unavailable(format!(
                        "a write's answer was lost ({error}) and etcd has not answered since ({cause}): whether it \
                         committed is unknown; retry it with its request_id"
                    )));
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// The entries under `keys` at `revision` (0: the latest), in one
    /// transaction of ranges a batch of the cluster's op limit at a time.
    async fn get_at(&self, keys: &[&[u8]], revision: u64) -> StoreResult<Vec<Option<Entry>>> {
        self.check_open()?;
        let (base, revision) = (self.base().await?, self.etcd_revision(revision).await?);
        let mut found = Vec::with_capacity(keys.len());
        for batch in keys.chunks(self.limits.max_ops.max(1)) {
            let success = batch
                .iter()
                .map(|key| RequestOp {
                    request: Some(request_op::Request::RequestRange(RangeRequest {
                        key: self.keys.key(key),
                        revision,
                        ..Default::default()
                    })),
                })
                .collect();
            let request = TxnRequest { success, ..Default::default() };
            let response = retrying(|| async { self.kv.clone().txn(request.clone()).await.map_err(failed) }).await?;
            for op in response.into_inner().responses {
                let Some(response_op::Response::ResponseRange(range)) = op.response else {
                    return Err(StoreError::Storage("etcd answered a range with something else".into()));
                };
                found.push(
                    range
                        .kvs
                        .into_iter()
                        .next()
                        .map(|kv| Entry { mod_revision: kv.mod_revision as u64 - base, value: kv.value.into() }),
                );
            }
        }
        Ok(found)
    }

    /// Up to `limit` etcd keys of `kind` under `prefix` from `start` (as
    /// `Snapshot::scan` takes them) at `revision`, and how many bytes of each
    /// key come before the store's own key.
    async fn range_under(
        &self,
        kind: u8,
        (prefix, start, limit): (&[u8], &[u8], usize),
        revision: u64,
        keys_only: bool,
    ) -> StoreResult<(Vec<crate::pb::etcd::mvccpb::KeyValue>, usize)> {
        let from = if start.is_empty() { prefix } else { start };
        let range = self.range(RangeRequest {
            key: self.keys.with(kind, from),
            range_end: prefix_end(&self.keys.with(kind, prefix)),
            limit: limit.min(i64::MAX as usize) as i64,
            revision: self.etcd_revision(revision).await?,
            keys_only,
            ..Default::default()
        });
        Ok((range.await?.kvs, self.keys.prefix.len() + 1))
    }

    async fn scan_at(&self, prefix: &[u8], start: &[u8], limit: usize, revision: u64) -> StoreResult<Entries> {
        let (kvs, skip) = self.range_under(b'k', (prefix, start, limit), revision, false).await?;
        let base = self.base().await?;
        Ok(kvs
            .into_iter()
            .map(|kv| {
                (kv.key[skip..].to_vec(), Entry { mod_revision: kv.mod_revision as u64 - base, value: kv.value.into() })
            })
            .collect())
    }

    async fn members_at(&self, prefix: &[u8], start: &[u8], limit: usize, revision: u64) -> StoreResult<Members> {
        let (kvs, skip) = self.range_under(b's', (prefix, start, limit), revision, true).await?;
        let mut members = Members::with_capacity(kvs.len());
        for kv in &kvs {
            members.push(&kv.key[skip..]);
        }
        Ok(members)
    }

    async fn members_before_at(
        &self,
        prefix: &[u8],
        before: &[u8],
        limit: usize,
        revision: u64,
    ) -> StoreResult<Members> {
        let range_end = match before {
            [] => prefix_end(&self.keys.with(b's', prefix)),
            before => self.keys.with(b's', before),
        };
        let range = self.range(RangeRequest {
            key: self.keys.with(b's', prefix),
            range_end,
            limit: limit.min(i64::MAX as usize) as i64,
            revision: self.etcd_revision(revision).await?,
            keys_only: true,
            sort_order: pb::range_request::SortOrder::Descend as i32,
            sort_target: pb::range_request::SortTarget::Key as i32,
            ..Default::default()
        });
        let kvs = range.await?.kvs;
        let skip = self.keys.prefix.len() + 1;
        let mut members = Members::with_capacity(kvs.len());
        for kv in &kvs {
            members.push(&kv.key[skip..]);
        }
        Ok(members)
    }

    /// The log's entries from `from` on, up to `limit`, as a watch of the
    /// log key delivers them up to the log's latest entry.
    async fn read_log(&self, from: u64, limit: usize) -> StoreResult<Changes> {
        retrying(|| self.read_log_once(from, limit)).await
    }

    async fn read_log_once(&self, from: u64, limit: usize) -> StoreResult<Changes> {
        let mut entries = Vec::new();
        self.walk_log(from, u64::MAX, &mut |revision, entry| {
            entries.push((revision, entry));
            Ok(entries.len() < limit)
        })
        .await?;
        Ok(entries)
    }

    /// Calls `visit` with each change-log entry from `from` up to `until`
    /// (inclusive) and the log's latest entry, in order, until it returns
    /// false: a watch of the log key, ended once it has delivered them.
    async fn walk_log(
        &self,
        from: u64,
        until: u64,
        visit: &mut (dyn FnMut(u64, Vec<u8>) -> StoreResult<bool> + Send),
    ) -> StoreResult<()> {
        let base = self.base().await?;
        let (from, until) = (from + base, until.saturating_add(base));
        let latest = self.range(RangeRequest { key: self.keys.log(), keys_only: true, ..Default::default() }).await?;
        let Some(log) = latest.kvs.first() else { return Ok(()) };
        let last = (log.mod_revision as u64).min(until);
        // Nothing of the log is before its key was created, whatever etcd
        // compacted before then (another prefix's compaction, say).
        let from = from.max(log.create_revision as u64);
        if from > last {
            return Ok(());
        }
        let mut stream = open_watch(&self.watch, self.keys.log(), from).await?;
        while let Some(response) = stream.next().await {
            let response = response.map_err(failed)?;
            if response.compact_revision > 0 {
                return Err(StoreError::Compacted { first: (response.compact_revision as u64).saturating_sub(base) });
            }
            for event in response.events {
                let Some(kv) = event.kv.filter(|_| event.r#type == EventType::Put as i32) else { continue };
                let revision = kv.mod_revision as u64;
                if revision > last || !visit(revision - base, kv.value)? || revision == last {
                    return Ok(());
                }
            }
        }
        Err(StoreError::Unavailable("etcd ended a watch of the change log".into()))
    }

    async fn first(&self) -> StoreResult<u64> {
        let range = self.range(RangeRequest { key: self.keys.first(), ..Default::default() }).await?;
        Ok(range.kvs.first().map(|kv| decode_revision(&kv.value)).transpose()?.unwrap_or(1))
    }

    /// `txn` as one etcd transaction, on a cluster whose revisions are the
    /// store's + `base`.
    fn request(&self, txn: &Txn, base: u64) -> TxnRequest {
        let compare = txn
            .conditions
            .iter()
            .flat_map(|condition| match condition {
                Condition::ModRevision { key, equals } => {
                    // 0, "absent", is etcd's too.
                    let equals = match *equals {
                        0 => 0,
                        equals => (equals + base) as i64,
                    };
                    vec![mod_revision_is(compare::CompareResult::Equal, self.keys.key(key), Vec::new(), equals)]
                }
                Condition::NoneWrittenAfter { prefix, revision } => [self.keys.key(prefix), self.keys.member(prefix)]
                    .into_iter()
                    .map(|key| {
                        let end = prefix_end(&key);
                        mod_revision_is(compare::CompareResult::Less, key, end, (*revision + base) as i64 + 1)
                    })
                    .collect(),
            })
            .collect();
        // etcd refuses a key twice in one transaction: the last write to a
        // key is the one that counts, as when the writes run in order.
        enum Write {
            Put(Vec<u8>),
            Delete,
            /// A member added only if absent: adding one that is there
            /// changes nothing, so must not move its revision.
            Add(Vec<u8>),
        }
        let mut writes: std::collections::BTreeMap<Vec<u8>, Write> = Default::default();
        for op in &txn.ops {
            let (key, write) = match op {
                Op::Put { key, value } => (self.keys.key(key), Write::Put(value.clone())),
                Op::Delete { key } => (self.keys.key(key), Write::Delete),
                Op::Add { set, member } => {
                    let length = (set.len() as u32).to_be_bytes().to_vec();
                    (self.keys.member(&[set.as_slice(), member].concat()), Write::Add(length))
                }
                Op::Remove { set, member } => (self.keys.member(&[set.as_slice(), member].concat()), Write::Delete),
            };
            writes.insert(key, write);
        }
        let put = |key, value| request_op::Request::RequestPut(PutRequest { key, value, ..Default::default() });
        let mut success: Vec<RequestOp> = writes
            .into_iter()
            .map(|(key, write)| RequestOp {
                request: Some(match write {
                    Write::Put(value) => put(key, value),
                    Write::Delete => {
                        request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest { key, ..Default::default() })
                    }
                    Write::Add(value) => put_if_absent(key, value),
                }),
            })
            .collect();
        success.push(RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: self.keys.log(),
                value: txn.change.clone(),
                ..Default::default()
            })),
        });
        TxnRequest { compare, success, failure: Vec::new() }
    }
}

/// A compare of the revision that last wrote `key` (or each key from it to
/// `range_end`, when not empty) with `revision`.
pub fn mod_revision_is(result: compare::CompareResult, key: Vec<u8>, range_end: Vec<u8>, revision: i64) -> Compare {
    Compare {
        result: result as i32,
        target: compare::CompareTarget::Mod as i32,
        key,
        range_end,
        target_union: Some(compare::TargetUnion::ModRevision(revision)),
    }
}

/// A put of `key` only if it is absent, as a set member is added: a
/// transaction within, whose compare of the key's version (0: absent) etcd
/// makes as the whole transaction starts.
pub fn put_if_absent(key: Vec<u8>, value: Vec<u8>) -> request_op::Request {
    let absent = Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Version as i32,
        key: key.clone(),
        range_end: Vec::new(),
        target_union: Some(compare::TargetUnion::Version(0)),
    };
    let put = request_op::Request::RequestPut(PutRequest { key, value, ..Default::default() });
    request_op::Request::RequestTxn(TxnRequest {
        compare: vec![absent],
        success: vec![RequestOp { request: Some(put) }],
        failure: Vec::new(),
    })
}

/// A watch of `key` from `from`, once etcd has created it.
async fn open_watch(
    client: &WatchClient<Connection>,
    key: Vec<u8>,
    from: u64,
) -> StoreResult<tonic::Streaming<pb::WatchResponse>> {
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            key,
            start_revision: from as i64,
            ..Default::default()
        })),
    };
    // The request stream stays open for as long as the watch lives.
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    sender.send(create).await.map_err(|_| StoreError::Closed)?;
    let requests = tokio_stream::wrappers::ReceiverStream::new(receiver);
    let stream = client.clone().watch(requests).await.map_err(failed)?.into_inner();
    // The sender lives until etcd's end of the watch is dropped: dropping it
    // sooner would end the watch.
    tokio::spawn(async move { sender.closed().await });
    Ok(stream)
}

/// A view of the cluster at one revision.
struct EtcdSnapshot {
    store: Arc<Inner>,
    revision: u64,
}

impl Snapshot for EtcdSnapshot {
    fn revision(&self) -> u64 {
        self.revision
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a [u8]]) -> BoxFuture<'a, StoreResult<Vec<Option<Entry>>>> {
        Box::pin(self.store.get_at(keys, self.revision))
    }

    fn scan<'a>(&'a self, prefix: &'a [u8], start: &'a [u8], limit: usize) -> BoxFuture<'a, StoreResult<Entries>> {
        Box::pin(self.store.scan_at(prefix, start, limit, self.revision))
    }

    fn members<'a>(&'a self, prefix: &'a [u8], start: &'a [u8], limit: usize) -> BoxFuture<'a, StoreResult<Members>> {
        Box::pin(self.store.members_at(prefix, start, limit, self.revision))
    }

    fn members_before<'a>(
        &'a self,
        prefix: &'a [u8],
        before: &'a [u8],
        limit: usize,
    ) -> BoxFuture<'a, StoreResult<Members>> {
        Box::pin(self.store.members_before_at(prefix, before, limit, self.revision))
    }
}

impl Store for EtcdStore {
    fn snapshot(&self) -> BoxFuture<'_, StoreResult<Box<dyn Snapshot>>> {
        Box::pin(async move {
            let revision = self.current_revision().await?;
            let snapshot: Box<dyn Snapshot> = Box::new(EtcdSnapshot { store: self.0.clone(), revision });
            Ok(snapshot)
        })
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a [u8]]) -> BoxFuture<'a, StoreResult<Vec<Option<Entry>>>> {
        Box::pin(self.0.get_at(keys, 0))
    }

    fn current_revision(&self) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(async move {
            // A linearizable read of one key: its header is the cluster's revision.
            let range = self.0.range(RangeRequest { key: self.0.keys.log(), count_only: true, ..Default::default() });
            self.0.revision_of(range.await?.header.as_ref()).await
        })
    }

    fn limits(&self) -> TxnLimits {
        self.0.usable_limits()
    }

    fn wait_durable(&self, _revision: u64) -> BoxFuture<'static, StoreResult<()>> {
        // etcd answers a write once a quorum has made it durable.
        Box::pin(std::future::ready(Ok(())))
    }

    fn apply(&self, txn: Txn) -> BoxFuture<'static, StoreResult<Applied>> {
        let inner = self.0.clone();
        Box::pin(async move {
            inner.check_open()?;
            inner.usable_limits().check(&txn)?;
            let request = inner.request(&txn, inner.base().await?);
            if request.compare.len() > inner.limits.max_ops {
                let size = txn.size();
                return Err(StoreError::TooLarge { size, limits: inner.usable_limits() });
            }
            let before = inner.seen.load(Ordering::Acquire);
            let mut answer = inner.kv.clone().txn(request.clone()).await;
            // Refused for its token, it was not applied: once more with a new one.
            if let Err(status) = &answer
                && token_unknown(status.code(), status.message())
            {
                answer = inner.kv.clone().txn(request).await;
            }
            #[cfg(test)]
            let answer =
                match inner.lose_answers.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)) {
                    Ok(_) => Err(tonic::Status::unavailable("the answer was lost (a test)")),
                    Err(_) => answer,
                };
            let response = match answer.map_err(failed) {
                Ok(response) => response.into_inner(),
                // Not answered: it may have committed all the same.
                Err(error @ StoreError::Unavailable(_)) => {
                    return inner.resolve(&txn.change, before, error).await.map(Applied::at_once);
                }
                Err(refused) => return Err(refused),
            };
            inner.saw(response.header.as_ref());
            let outcome = match response.succeeded {
                true => Outcome::Committed { revision: inner.revision_of(response.header.as_ref()).await? },
                false => Outcome::ConditionFailed,
            };
            Ok(Applied::at_once(outcome))
        })
    }

    fn watch(&self, from_revision: u64) -> ChangeStream {
        let inner = self.0.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let failure = async {
                let (first, base) = (inner.first().await?, inner.base().await?);
                let from = from_revision.max(1);
                if from < first {
                    return Err(StoreError::Compacted { first });
                }
                // From no earlier than the log's key was created (see `walk_log`).
                let log = RangeRequest { key: inner.keys.log(), keys_only: true, ..Default::default() };
                let created = inner.range(log).await?.kvs.first().map_or(0, |kv| kv.create_revision as u64);
                let mut next = (from + base).max(created);
                // A watch that a member's loss ends is opened again from the
                // next entry (on another member), for as long as a lost
                // answer is waited for: the consumer sees a pause, not an end.
                let mut lost: Option<(Instant, StoreError)> = None;
                loop {
                    let opened = retrying(|| open_watch(&inner.watch, inner.keys.log(), next)).await;
                    let ended = match opened {
                        Ok(mut stream) => loop {
                            let response = match stream.next().await {
                                Some(Ok(response)) => response,
                                Some(Err(status)) => break failed(status),
                                None => break StoreError::Unavailable("etcd ended the watch of the change log".into()),
                            };
                            if response.compact_revision > 0 {
                                let compacted = (response.compact_revision as u64).saturating_sub(base);
                                return Err(StoreError::Compacted { first: compacted.max(first) });
                            }
                            for event in response.events {
                                let Some(kv) = event.kv.filter(|_| event.r#type == EventType::Put as i32) else {
                                    continue;
                                };
                                next = kv.mod_revision as u64 + 1;
                                lost = None;
                                if sender.send(Ok((kv.mod_revision as u64 - base, kv.value))).await.is_err() {
                                    return Ok(());
                                }
                            }
                        },
                        Err(error) => error,
                    };
                    if !matches!(ended, StoreError::Unavailable(_)) || sender.is_closed() {
                        return Err(ended);
                    }
                    let (since, _) = lost.get_or_insert_with(|| (Instant::now(), ended));
                    if since.elapsed() > WATCH_REOPEN_FOR {
                        return Err(lost.map(|(_, error)| error).expect("a loss"));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            };
            if let Err(e) = failure.await {
                let _ = sender.send(Err(e)).await;
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
    }

    fn changes(&self, from_revision: u64, limit: usize) -> BoxFuture<'_, StoreResult<Changes>> {
        Box::pin(async move {
            let from = from_revision.max(self.0.first().await?);
            // The entry at a revision, as a record's history asks for one:
            // the log key read at it, when it was written there (a watch
            // from the past waits for etcd to catch it up, every 100 ms).
            if limit == 1 {
                let at = RangeRequest {
                    key: self.0.keys.log(),
                    revision: self.0.etcd_revision(from).await?,
                    ..Default::default()
                };
                if let Ok(read) = self.0.range(at).await
                    && let Some(kv) = read.kvs.into_iter().next()
                    && kv.mod_revision as u64 == from + self.0.base().await?
                {
                    return Ok(vec![(from, kv.value)]);
                }
            }
            self.0.read_log(from, limit).await
        })
    }

    fn first_change(&self) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(self.0.first())
    }

    fn compact(&self, revision: u64) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(async move {
            let revision = revision.min(self.current_revision().await? + 1);
            let first = self.0.first().await?;
            if revision <= first {
                return Ok(0);
            }
            let mut removed = 0u64;
            self.0
                .walk_log(first, revision - 1, &mut |_, _| {
                    removed += 1;
                    Ok(true)
                })
                .await?;
            // The floor first, so no reader takes a compacted entry for a gap;
            // then etcd's own history up to it (the floor's own write is at or
            // below the revision compacted to, or the newest).
            let floor =
                PutRequest { key: self.0.keys.first(), value: revision.to_be_bytes().to_vec(), ..Default::default() };
            let put = self.0.kv.clone().put(floor).await.map_err(failed)?.into_inner();
            let newest = self.0.revision_of(put.header.as_ref()).await?;
            let to = (revision - 1).min(newest);
            if to > 0 {
                let to = self.0.etcd_revision(to).await?;
                self.0.kv.clone().compact(CompactionRequest { revision: to, physical: false }).await.map_err(failed)?;
            }
            Ok(removed)
        })
    }

    fn engine(&self) -> &dyn Engine {
        self
    }
}

impl Engine for EtcdStore {
    fn backup(&self, out: std::sync::mpsc::SyncSender<Vec<u8>>) -> StoreResult<u64> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Storage("an etcd backup runs within the server's runtime".into()))?;
        handle.block_on(async {
            let view = EtcdSnapshot { store: self.0.clone(), revision: self.current_revision().await? };
            let (first, base) = (self.0.first().await?, self.0.base().await?);
            let mut writer = super::backup::BackupWriter::new(out, view.revision, first);
            // Read a page at a time, all at the view's revision.
            crate::store::for_each_entry(&view, b"", b"", |key, entry| {
                writer.key(key, entry.mod_revision, &entry.value)?;
                Ok::<_, StoreError>(true)
            })
            .await?;
            let mut start = Vec::new();
            loop {
                let page = (&b""[..], start.as_slice(), crate::store::MAX_CHUNK);
                let (kvs, skip) = self.0.range_under(b's', page, view.revision, false).await?;
                for kv in &kvs {
                    let full = &kv.key[skip..];
                    let set_len = kv
                        .value
                        .as_slice()
                        .try_into()
                        .map(u32::from_be_bytes)
                        .map_err(|_| StoreError::Storage("a set member without its set name's length".into()))?
                        as usize;
                    let (set, member) = full.split_at(set_len.min(full.len()));
                    writer.member(set, member, kv.mod_revision as u64 - base)?;
                }
                match kvs.last() {
                    Some(last) if kvs.len() == crate::store::MAX_CHUNK => {
                        start = crate::store::key_after(&last.key[skip..])
                    }
                    _ => break,
                }
            }
            self.0
                .walk_log(first, view.revision, &mut |revision, bytes| {
                    writer.change(revision, &bytes)?;
                    Ok(true)
                })
                .await?;
            writer.finish()?;
            Ok(view.revision)
        })
    }

    fn close(&self) -> StoreResult<()> {
        self.0.closed.store(true, Ordering::Release);
        Ok(())
    }
}
