//! What a List shows of a record beyond its stored bytes, kept for the
//! records read again and again.
//!
//! A record's etag and the fields derived on read (an agreement's status as
//! of a day) follow from its stored bytes, its revision and the day alone,
//! and its stored bytes never change at a given revision. So what was worked
//! out for a name at a revision and a day holds as long as the record stays
//! at that revision: a write needs nothing forgotten here, since the entry of
//! an older revision simply no longer matches.

use std::sync::{Arc, Mutex, PoisonError};

use crate::pb::google::r#type::Date;
use crate::store::generations::Generations;

/// Memory for it: some 50,000 records' worth.
const MAX_BYTES: usize = 8 * 1024 * 1024;

#[derive(Clone)]
struct Entry {
    revision: u64,
    as_of: Date,
    shown: Shown,
}

/// A record's deletion and what is appended to its stored bytes.
#[derive(Clone)]
pub struct Shown {
    pub deleted: bool,
    /// The derived fields and the etag, encoded.
    pub appended: Arc<[u8]>,
}

pub struct PresentedMemo(Mutex<Generations<Entry>>);

impl PresentedMemo {
    pub fn new() -> PresentedMemo {
        PresentedMemo(Mutex::new(Generations::new(MAX_BYTES)))
    }

    /// What was kept for `name` at `revision` as of `as_of`.
    pub fn get(&self, name: &[u8], revision: u64, as_of: &Date) -> Option<Shown> {
        let entry = self.0.lock().unwrap_or_else(PoisonError::into_inner).get(name)?;
        (entry.revision == revision && entry.as_of == *as_of).then_some(entry.shown)
    }

    pub fn keep(&self, name: &[u8], revision: u64, as_of: &Date, shown: Shown) {
        let weight = shown.appended.len() + size_of::<Entry>();
        let entry = Entry { revision, as_of: *as_of, shown };
        self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(name.into(), entry, weight);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_holds_only_at_its_revision_and_day() {
        let memo = PresentedMemo::new();
        let day = Date { year: 2025, month: 1, day: 1 };
        memo.keep(b"agreements/a", 7, &day, Shown { deleted: false, appended: b"seven".as_slice().into() });
        let found = memo.get(b"agreements/a", 7, &day).expect("kept");
        assert_eq!((found.deleted, &*found.appended), (false, &b"seven"[..]));
        assert!(memo.get(b"agreements/a", 8, &day).is_none(), "a later revision");
        assert!(memo.get(b"agreements/a", 7, &Date { day: 2, ..day }).is_none(), "another day");
        assert!(memo.get(b"agreements/b", 7, &day).is_none());
    }
}
