//! A backup restored under an empty prefix of a cluster, every key, member
//! and change at its backup's revision (see `p m base` in the module above),
//! so the restored registry answers with the same etags, history and resume
//! points as the one backed up, whichever engine that was.

use std::collections::BTreeMap;

use super::{EtcdOptions, EtcdStore, REQUEST_OVERHEAD, failed, prefix_end, revision_of};
use crate::pb::etcd::etcdserverpb::{PutRequest, RangeRequest, RequestOp, TxnRequest, request_op};
use crate::store::backup::{BackupEntry, read_backup};
use crate::store::{StoreError, StoreResult};

/// How many fill writes are in flight at once.
const FILLS_IN_FLIGHT: usize = 32;

/// The etcd writes of one revision of a backup.
#[derive(Default)]
struct Revision {
    puts: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Revision {
    fn bytes(&self) -> usize {
        self.puts.iter().map(|(key, value)| key.len() + value.len() + 16).sum()
    }

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
        let (last, first_change, entries) = read_backup(input)?;
        let store = EtcdStore::connect(options)?;
        let inner = &store.0;
        let keys = &inner.keys;
        let mut revisions: BTreeMap<u64, Revision> = BTreeMap::new();
        for entry in entries {
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
            revisions.entry(revision).or_default().puts.push((key, value));
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
        let revision_one = revisions.entry(1).or_default();
        revision_one.puts.push((keys.base(), base.to_be_bytes().to_vec()));
        revision_one.puts.push((keys.first(), first_change.to_be_bytes().to_vec()));
        let most_ops = revisions.values().map(|r| r.puts.len()).max().unwrap_or(0);
        let most_bytes = revisions.values().map(Revision::bytes).max().unwrap_or(0);
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
        for (revision, writes) in revisions {
            store.fill(next, revision).await?;
            let answer = inner.kv.clone().txn(writes.request()).await.map_err(failed)?.into_inner();
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
