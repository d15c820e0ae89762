//! The writes the writer has answered but not yet applied to sled.
//!
//! The writer stages the transactions that reach it while it gathers a group
//! and applies the group as one sled batch before its flush: sled writes its
//! log to the disk at every batch, so a batch for each write to a hot record
//! would cost a write to the disk each. A staged transaction is answered at
//! once, so the next write to its record (which waited its turn) is planned
//! and joins the same group; that write reads the record here. Only the
//! latest-state point reads (`Store::get_many`) look here: a snapshot shows
//! the applied revision, and sets (which no write plans from) are read from
//! sled. A read that returns a staged entry waits, as every read does, for
//! its revision to be durable, which it is only once applied and flushed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock};

use crate::store::{Entry, Op};

#[derive(Default)]
pub(super) struct Staged {
    /// Each user key a staged transaction wrote: its entry, or `None` where
    /// it was removed.
    entries: RwLock<HashMap<Vec<u8>, Option<Entry>>>,
    /// Whether `entries` holds anything, so that reads skip the lock when
    /// nothing is staged.
    any: AtomicBool,
}

impl Staged {
    /// Shows the plain writes of a transaction staged at `revision`.
    pub fn show(&self, ops: &[Op], revision: u64) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        for op in ops {
            match op {
                Op::Put { key, value } => {
                    let entry = Entry { mod_revision: revision, value: bytes::Bytes::copy_from_slice(value) };
                    entries.insert(key.clone(), Some(entry));
                }
                Op::Delete { key } => {
                    entries.insert(key.clone(), None);
                }
                Op::Add { .. } | Op::Remove { .. } => {}
            }
        }
        self.any.store(!entries.is_empty(), Ordering::Release);
    }

    /// The staged entry under the user key `key`: `None` if no staged
    /// transaction wrote it, `Some(None)` if one removed it.
    pub fn get(&self, key: &[u8]) -> Option<Option<Entry>> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.entries.read().unwrap_or_else(PoisonError::into_inner).get(key).cloned()
    }

    /// Forgets everything staged, once the group is applied (or failed).
    pub fn clear(&self) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.clear();
        self.any.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_put_or_delete_is_shown_until_cleared() {
        let staged = Staged::default();
        assert_eq!(staged.get(b"a"), None);
        staged.show(&[Op::Put { key: b"a".to_vec(), value: b"one".to_vec() }, Op::Delete { key: b"b".to_vec() }], 7);
        let shown = staged.get(b"a").flatten().expect("the put is shown");
        assert_eq!((shown.mod_revision, &shown.value[..]), (7, &b"one"[..]));
        assert_eq!(staged.get(b"b"), Some(None));
        assert_eq!(staged.get(b"c"), None);
        staged.show(&[Op::Put { key: b"a".to_vec(), value: b"two".to_vec() }], 8);
        assert_eq!(staged.get(b"a").flatten().map(|e| e.mod_revision), Some(8));
        staged.clear();
        assert_eq!(staged.get(b"a"), None);
        assert_eq!(staged.get(b"b"), None);
    }
}
