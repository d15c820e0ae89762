//! A backup restored under an empty prefix of a cluster, every key, member
//! and change at its backup's revision (see `p m base` in the module above),
//! so the restored registry answers with the same etags, history and resume
//! points as the one backed up, whichever engine that was.

use std::collections::BTreeMap;

use super::{EtcdOptions, EtcdStore, REQUEST_OVERHEAD, failed, prefix_end, revision_of};
use crate::pb::etcd::etcdserverpb::{PutRequest, RangeRequest, RequestOp, TxnRequest, request_op};
use crate::store::backup::{BackupEntry, BackupReader};
use crate::store::{StoreError, StoreResult};

/// How many fill writes are in flight at once.
const FILLS_IN_FLIGHT: usize = 32;

/// The etcd writes of one revision of a backup.
#[derive(Default)]
struct Revision {
    puts: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Bytes a put counts for in a transaction's size, beyond its key and value.
const PUT_OVERHEAD: usize = 16;

impl Revision {
    fn request(self) -> TxnRequest {
        let success = self
            .puts
            .into_iter()
            .map(|(key, value)| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest { key, value, ..Default::default() })),
            })
            .collect();
        TxnRequest { success, ..Default::default() }
    }
}

impl EtcdStore {
    /// Restores the backup `input` under `options.prefix`, which must hold
    /// nothing, and answers the backup's revision.
    ///
    /// Each revision of the backup becomes one etcd transaction at the
    /// cluster's revision before the restore + that revision, in order; the
    /// revisions the backup lacks (compacted, or written under another
    /// prefix of an etcd cluster) are filled with a write of a meta key. So
    /// nothing else may write to the cluster meanwhile (the restore stops,
    /// saying so, if anything does), and a revision with more writes than
    /// one of the cluster's transactions takes is refused before anything is
    /// written. A restore cut short leaves a prefix to delete before trying
    /// again.
    pub async fn restore(options: EtcdOptions, input: &mut dyn std::io::Read) -> StoreResult<u64> {
        let mut backup = BackupReader::new(input)?;
        let (last, first_change) = (backup.revision, backup.first_change);
        let store = EtcdStore::connect(options)?;
        let inner = &store.0;
        let keys = &inner.keys;
        let mut writes = ByRevision::new()?;
        while let Some(entry) = backup.next_entry()? {
            let (revision, key, value) = match entry {
                BackupEntry::Key { key, mod_revision, value } => (mod_revision, keys.key(&key), value),
                BackupEntry::Member { set, member, revision } => {
                    let length = (set.len() as u32).to_be_bytes().to_vec();
                    (revision, keys.member(&[set.as_slice(), &member].concat()), length)
                }
                BackupEntry::Change { revision, bytes } => (revision, keys.log(), bytes),
            };
            if revision == 0 || revision > last {
                return Err(StoreError::Incompatible(format!(
                    "the backup holds a write at revision {revision}, outside its revisions 1..={last}"
                )));
            }
            writes.push(revision, &key, &value)?;
        }

        // Before anything is written: the prefix is empty, and every revision
        // fits one transaction (the first also carries the meta keys).
        let held = inner.range(RangeRequest {
            key: keys.prefix.clone(),
            range_end: prefix_end(&keys.prefix),
            count_only: true,
            ..Default::default()
        });
        let held = held.await?;
        if held.count > 0 {
            return Err(StoreError::Incompatible(format!(
                "the cluster holds {} keys under the prefix {:?}: restore under an empty prefix",
                held.count,
                String::from_utf8_lossy(&keys.prefix)
            )));
        }
        let base = revision_of(held.header.as_ref())?;
        let meta = [(keys.base(), base.to_be_bytes().to_vec()), (keys.first(), first_change.to_be_bytes().to_vec())];
        let (ops, bytes) = writes.totals.entry(1).or_default();
        *ops += meta.len();
        *bytes += meta.iter().map(|(key, value)| key.len() + value.len() + PUT_OVERHEAD).sum::<usize>();
        let most_ops = writes.totals.values().map(|(ops, _)| *ops).max().unwrap_or(0);
        let most_bytes = writes.totals.values().map(|(_, bytes)| *bytes).max().unwrap_or(0);
        if most_ops > inner.limits.max_ops || most_bytes + REQUEST_OVERHEAD > inner.limits.max_bytes {
            return Err(StoreError::Incompatible(format!(
                "a revision of the backup writes up to {most_ops} keys and {most_bytes} bytes, more than one \
                 transaction of the cluster takes (--max-txn-ops {}, --max-request-bytes {}): restore onto a \
                 cluster started with at least --max-txn-ops {most_ops} --max-request-bytes {}, and give the restore \
                 the same --etcd-max-txn-ops and --etcd-max-request-bytes (they can be lowered again afterwards)",
                inner.limits.max_ops,
                inner.limits.max_bytes,
                most_bytes + REQUEST_OVERHEAD
            )));
        }

        let mut next = 1;
        let revisions: Vec<u64> = writes.totals.keys().copied().collect();
        for revision in revisions {
            store.fill(next, revision).await?;
            let mut puts = writes.of(revision)?;
            if revision == 1 {
                puts.puts.extend(meta.clone());
            }
            let answer = inner.kv.clone().txn(puts.request()).await.map_err(failed)?.into_inner();
            let landed = revision_of(answer.header.as_ref())?;
            if landed != base + revision {
                return Err(StoreError::Storage(format!(
                    "the restore wrote revision {revision} of the backup at etcd's revision {landed}, not {}: \
                     something else writes to the cluster; stop it, delete the prefix and restore again",
                    base + revision
                )));
            }
            next = revision + 1;
        }
        store.fill(next, last + 1).await?;
        Ok(last)
    }

    /// Moves the cluster's revision from the store's `from - 1` to `to - 1`
    /// with writes of a meta key, many at once (their order does not matter).
    async fn fill(&self, from: u64, to: u64) -> StoreResult<()> {
        let mut remaining = to.saturating_sub(from);
        while remaining > 0 {
            let batch = remaining.min(FILLS_IN_FLIGHT as u64);
            let mut fills = tokio::task::JoinSet::new();
            for _ in 0..batch {
                let mut kv = self.0.kv.clone();
                let fill = PutRequest { key: self.0.keys.with(b'm', b"fill"), ..Default::default() };
                fills.spawn(async move { kv.put(fill).await.map_err(failed) });
            }
            while let Some(done) = fills.join_next().await {
                done.map_err(|e| StoreError::Storage(format!("a fill write failed: {e}")))??;
            }
            remaining -= batch;
        }
        Ok(())
    }
}

/// A backup's writes in the order of their revisions, spilled to a temporary
/// sled tree on disk (removed when dropped): a backup lists keys in key
/// order, and holding all of it in memory to group it by revision would
/// take several times its size. Only each revision's count and bytes stay in
/// memory.
struct ByRevision {
    spill: sled::Db,
    /// Puts and their bytes, by revision.
    totals: BTreeMap<u64, (usize, usize)>,
    /// Orders the writes of one revision as they came.
    written: u64,
}

fn spill_error(e: sled::Error) -> StoreError {
    StoreError::Storage(format!("the restore's temporary spill failed: {e}"))
}

impl ByRevision {
    fn new() -> StoreResult<ByRevision> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let path = std::env::temp_dir().join(format!("cooperation-registry-restore-{}-{nanos}", std::process::id()));
        let spill =
            sled::Config::new().path(path).temporary(true).cache_capacity(64 << 20).open().map_err(spill_error)?;
        Ok(ByRevision { spill, totals: BTreeMap::new(), written: 0 })
    }

    fn push(&mut self, revision: u64, key: &[u8], value: &[u8]) -> StoreResult<()> {
        let (ops, bytes) = self.totals.entry(revision).or_default();
        *ops += 1;
        *bytes += key.len() + value.len() + PUT_OVERHEAD;
        self.written += 1;
        let spilled_key = [revision.to_be_bytes(), self.written.to_be_bytes()].concat();
        let spilled = [&(key.len() as u32).to_be_bytes()[..], key, value].concat();
        self.spill.insert(spilled_key, spilled).map_err(spill_error)?;
        Ok(())
    }

    /// The writes of `revision`, in the order they came.
    fn of(&self, revision: u64) -> StoreResult<Revision> {
        let mut puts = Vec::new();
        for spilled in self.spill.scan_prefix(revision.to_be_bytes()) {
            let (_, raw) = spilled.map_err(spill_error)?;
            let length = raw.get(..4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize);
            let key = length.and_then(|length| raw.get(4..4 + length));
            let key = key.ok_or_else(|| StoreError::Storage("the restore's temporary spill is corrupt".into()))?;
            puts.push((key.to_vec(), raw[4 + key.len()..].to_vec()));
        }
        Ok(Revision { puts })
    }
}
