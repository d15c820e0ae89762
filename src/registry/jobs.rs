//! Jobs that run once among the servers sharing a store: preparing its
//! layout (the first start's states, upgrades), compacting the change log,
//! removing expired request answers.
//!
//! A server takes a job's lease, the key `meta/jobs/{job}`, by a write
//! conditioned on what it read there: absent, or a lease that has expired.
//! Each of its writes for the job renews the lease on the condition that it
//! still holds it, so a server that lost it (it stalled past the lease and
//! another took over) writes nothing more. The others wait or skip while the
//! lease is held, and take it over once it has expired, so a server that
//! died in the middle of a job does not leave it undone.

use std::time::{Duration, SystemTime};

use super::Registry;
use super::records::StoredChange;
use crate::error::{Error, Result};
use crate::store::{Condition, Op, Outcome, Txn, TxnSize};

/// How long a lease lasts after its holder's last write for the job.
pub(super) const LEASE: Duration = Duration::from_secs(30);

/// The actor of a job's changes that no other actor names.
pub const JOBS_ACTOR: &str = "system:jobs";

pub(super) fn lease_key(job: &str) -> Vec<u8> {
    format!("meta/jobs/{job}").into_bytes()
}

/// A lease's value: until when it holds (milliseconds since the epoch,
/// big-endian), then who holds it.
fn lease_value(holder: &str, until: SystemTime) -> Vec<u8> {
    let millis = until.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    [&millis.to_be_bytes()[..], holder.as_bytes()].concat()
}

fn lease_expired(value: &[u8], at: SystemTime) -> bool {
    let Some((millis, _)) = value.split_first_chunk::<8>() else { return true };
    let until = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::from_be_bytes(*millis));
    until <= at
}

/// A job's lease, held by this registry.
pub(super) struct Lease {
    job: &'static str,
    /// The revision that last wrote it: each write for the job is
    /// conditioned on it.
    revision: u64,
}

impl Lease {
    /// What a lease adds to each transaction of its job.
    pub(super) const SIZE: TxnSize = TxnSize { ops: 2, bytes: 128 };
}

impl Registry {
    /// Takes the lease of `job` (or renews it, if this registry holds it);
    /// `None` while another server holds it.
    pub(super) async fn take_lease(&self, job: &'static str) -> Result<Option<Lease>> {
        let key = lease_key(job);
        let now = SystemTime::now();
        let read = self.store.get(&key).await?;
        let equals = match &read {
            None => 0,
            Some(entry) if entry.value[8.min(entry.value.len())..] == *self.instance.as_bytes() => entry.mod_revision,
            Some(entry) if lease_expired(&entry.value, now) => entry.mod_revision,
            Some(_) => return Ok(None),
        };
        let txn = Txn {
            conditions: vec![Condition::ModRevision { key: key.clone(), equals }],
            ops: vec![Op::Put { key, value: lease_value(&self.instance, now + LEASE) }],
            change: job_change(),
        };
        Ok(match self.store.commit(txn).await? {
            Outcome::Committed { revision } => Some(Lease { job, revision }),
            Outcome::ConditionFailed => None,
        })
    }

    /// Commits `txn` for the job of `lease`, renewing it. Fails, writing
    /// nothing, if the lease was lost; `ConditionFailed` when one of the
    /// transaction's own conditions did not hold.
    pub(super) async fn commit_leased(&self, lease: &mut Lease, mut txn: Txn) -> Result<Outcome> {
        let key = lease_key(lease.job);
        txn.conditions.push(Condition::ModRevision { key: key.clone(), equals: lease.revision });
        txn.ops.push(Op::Put { key: key.clone(), value: lease_value(&self.instance, SystemTime::now() + LEASE) });
        let outcome = self.store.commit(txn).await?;
        match outcome {
            Outcome::Committed { revision } => lease.revision = revision,
            Outcome::ConditionFailed => {
                let held = self.store.get(&key).await?.is_some_and(|entry| entry.mod_revision == lease.revision);
                if !held {
                    return Err(Error::Unavailable {
                        message: format!("another server took over the job {} from this one", lease.job),
                    });
                }
            }
        }
        Ok(outcome)
    }

    /// Ends the job of `lease` with `txn` (which may be empty): the others
    /// need not wait for the lease to expire.
    pub(super) async fn finish_leased(&self, lease: Lease, mut txn: Txn) -> Result<Outcome> {
        let key = lease_key(lease.job);
        txn.conditions.push(Condition::ModRevision { key: key.clone(), equals: lease.revision });
        txn.ops.push(Op::Delete { key });
        if txn.change.is_empty() {
            txn.change = job_change();
        }
        Ok(self.store.commit(txn).await?)
    }
}

/// The change-log entry of a job's lease: no record changes.
fn job_change() -> Vec<u8> {
    StoredChange::bookkeeping(JOBS_ACTOR)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{Registry, RegistryOptions};
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn a_lease_is_held_by_one_registry_until_it_ends_it() {
        let store = Arc::new(MemoryStore::new());
        let a = Registry::open_with(store.clone(), RegistryOptions::default()).await.unwrap();
        let b = Registry::open_with(store.clone(), RegistryOptions::default()).await.unwrap();
        let mut lease = a.take_lease("test").await.unwrap().expect("a free lease is taken");
        assert!(b.take_lease("test").await.unwrap().is_none(), "a held lease is not taken");
        a.commit_leased(&mut lease, crate::store::Txn::default()).await.unwrap();
        assert!(a.take_lease("test").await.unwrap().is_some(), "its holder renews it");
        let lease = a.take_lease("test").await.unwrap().unwrap();
        a.finish_leased(lease, crate::store::Txn::default()).await.unwrap();
        assert!(b.take_lease("test").await.unwrap().is_some(), "an ended lease is free");
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_and_its_old_holder_writes_nothing_more() {
        let store = Arc::new(MemoryStore::new());
        let a = Registry::open_with(store.clone(), RegistryOptions::default()).await.unwrap();
        let b = Registry::open_with(store.clone(), RegistryOptions::default()).await.unwrap();
        let mut stalled = a.take_lease("test").await.unwrap().unwrap();
        // The lease as it is once its holder has stalled past it.
        let key = super::lease_key("test");
        let expired = super::lease_value(&a.instance, std::time::SystemTime::UNIX_EPOCH);
        let txn = crate::store::Txn {
            ops: vec![crate::store::Op::Put { key, value: expired }],
            change: super::job_change(),
            ..Default::default()
        };
        crate::store::Store::commit(&*store, txn).await.unwrap();
        assert!(b.take_lease("test").await.unwrap().is_some(), "an expired lease is taken over");
        let late = a.commit_leased(&mut stalled, crate::store::Txn::default()).await.unwrap_err();
        assert!(matches!(late, crate::error::Error::Unavailable { .. }), "{late:?}");
    }
}
