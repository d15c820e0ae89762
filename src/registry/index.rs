//! Secondary indexes, written in the same transaction as the record, and the
//! planner that answers a filter from the most selective one.
//!
//! Entry: the id, a member of the store set `i/{collection}/{field path}\0{value}\0`,
//! one per distinct value of the path in the record (through repeated fields),
//! read in the order of `set || id` as if each were a key. Strings are stored as
//! they are, enums as 4 big-endian bytes, dates as the 8-byte order-preserving
//! day number of their first day, so date ranges are key ranges. Soft-deleted
//! records keep their entries: List with `show_deleted` uses them too.

use std::collections::BTreeSet;

use prost_reflect::{DynamicMessage, ReflectMessage, Value};

use crate::registry::dates;
use crate::registry::filter::{self, Filter, Op, Typed};
use crate::registry::resource::Kind;
use crate::store::{Store, StoreResult};

/// Most index entries counted to judge an index's selectivity.
const COUNT_LIMIT: usize = 100_000;

fn prefix(kind: &Kind, path: &str) -> Vec<u8> {
    format!("i/{}/{path}\0", kind.collection).into_bytes()
}

fn encode_date(first_day: i64) -> [u8; 8] {
    ((first_day as u64) ^ (1 << 63)).to_be_bytes()
}

/// Appends the index encoding of `value` to `out`; false (and nothing
/// appended) for a value that is not indexed (an empty string, say).
fn append_value(value: &Value, out: &mut Vec<u8>) -> bool {
    match value {
        Value::String(s) if !s.is_empty() => out.extend_from_slice(s.as_bytes()),
        Value::EnumNumber(n) => out.extend_from_slice(&((*n as u32) ^ (1 << 31)).to_be_bytes()),
        Value::Message(m) => match dates::from_dynamic(m) {
            Some(date) => out.extend_from_slice(&encode_date(dates::first_day(&date))),
            None => return false,
        },
        _ => return false,
    }
    true
}

/// Visits every value at a dotted path, through repeated and nested fields
/// (borrowed: a write computes its index sets from every indexed field).
fn for_each_value_at(message: &DynamicMessage, path: &[&str], visit: &mut dyn FnMut(&Value)) {
    let Some((name, rest)) = path.split_first() else { return };
    let Some(field) = message.descriptor().get_field_by_name(name) else { return };
    if !message.has_field(&field) {
        return;
    }
    let value = message.get_field(&field);
    let mut each = |item: &Value| {
        if rest.is_empty() {
            visit(item);
        } else if let Value::Message(inner) = item {
            for_each_value_at(inner, rest, visit);
        }
    };
    match &*value {
        Value::List(items) => items.iter().for_each(&mut each),
        single => each(single),
    }
}

/// The index sets a record of `kind` is in (its id is the member).
pub fn entries(kind: &Kind, record: &DynamicMessage) -> BTreeSet<Vec<u8>> {
    let mut sets = BTreeSet::new();
    for path in kind.indexes {
        let steps: Vec<&str> = path.split('.').collect();
        let base = prefix(kind, path);
        for_each_value_at(record, &steps, &mut |value| {
            let mut set = base.clone();
            if append_value(value, &mut set) {
                set.push(0);
                sets.insert(set);
            }
        });
    }
    sets
}

/// A lookup in one index: keys from `start` (inclusive) while under `prefix`
/// and, for ranges, not beyond `end` (inclusive, on the value part).
#[derive(Clone, Debug)]
pub struct Lookup {
    prefix: Vec<u8>,
    start: Vec<u8>,
    /// For date ranges: the largest value bytes to include.
    end: Option<[u8; 8]>,
    /// Bytes of the value part; ids follow after a 0 byte.
    value_len: Option<usize>,
}

impl Lookup {
    /// One indexed value (ids in id order), as opposed to a range of dates.
    fn is_exact(&self) -> bool {
        self.end.is_none() && self.value_len.is_none()
    }
}

/// The lookups an index can do for one condition of a filter.
fn lookup_for(kind: &Kind, condition: &Filter) -> Option<Lookup> {
    let Filter::Compare { path, op, value } = condition else { return None };
    let path = filter::field_path(path)?;
    if !kind.indexes.contains(&path.as_str()) {
        return None;
    }
    let base = prefix(kind, &path);
    let exact = |bytes: Vec<u8>| {
        let mut start = base.clone();
        start.extend_from_slice(&bytes);
        start.push(0);
        Some(Lookup { prefix: start.clone(), start, end: None, value_len: None })
    };
    match (op, value) {
        // (`:` on a singular string is a substring test: no lookup; on a
        // repeated one the compiler already made it `=`.)
        (Op::Eq, Typed::Str(s)) if !s.is_empty() && !s.contains('*') => exact(s.as_bytes().to_vec()),
        (Op::Eq | Op::Has, Typed::Enum(n)) => exact(((*n as u32) ^ (1 << 31)).to_be_bytes().to_vec()),
        (op, Typed::Date(first, last)) => {
            // Candidates by the record's first day; the filter is applied after.
            let (low, high) = match op {
                Op::Eq | Op::Has => (Some(*first), Some(*last)),
                Op::Ge => (Some(*first), None),
                Op::Gt => (Some(*last + 1), None),
                Op::Lt => (None, Some(*first - 1)),
                Op::Le => (None, Some(*last)),
                Op::Ne => return None,
            };
            let mut start = base.clone();
            if let Some(low) = low {
                start.extend_from_slice(&encode_date(low));
            }
            Some(Lookup { prefix: base, start, end: high.map(encode_date), value_len: Some(8) })
        }
        _ => None,
    }
}

/// Ids found by a lookup, up to `limit` keys; `None` when more were found.
fn run(store: &dyn Store, lookup: &Lookup, limit: usize) -> StoreResult<Option<BTreeSet<String>>> {
    let mut ids = BTreeSet::new();
    let mut seen = 0;
    let complete = walk(store, lookup, &lookup.start, &mut |id| {
        seen += 1;
        if seen > limit {
            return false;
        }
        ids.insert(id.to_string());
        true
    })?;
    Ok(complete.then_some(ids))
}

/// Calls `visit` with the id of every key of a lookup from `start`, in key
/// order, until it returns false. Returns whether every key was visited.
fn walk(store: &dyn Store, lookup: &Lookup, start: &[u8], visit: &mut dyn FnMut(&str) -> bool) -> StoreResult<bool> {
    let mut past_end = false;
    let complete = crate::store::for_each_member(store, &lookup.prefix, start, |key| {
        let rest = &key[lookup.prefix.len()..];
        if let (Some(end), Some(len)) = (lookup.end, lookup.value_len)
            && rest.len() >= len
            && rest[..len] > end[..]
        {
            past_end = true;
            return Ok::<_, crate::store::StoreError>(false);
        }
        // The id follows the last 0 byte of the key (ids never hold one).
        match key.iter().rposition(|b| *b == 0) {
            Some(at) => Ok(visit(&String::from_utf8_lossy(&key[at + 1..]))),
            None => Ok(true),
        }
    })?;
    Ok(complete || past_end)
}

/// Where the records that may match a filter are.
#[derive(Debug)]
pub enum Candidates {
    /// The entries of one indexed value: ids in id order, read as needed.
    Exact(Lookup),
    /// The ids of a range of values, collected and sorted.
    Ids(BTreeSet<String>),
}

impl Candidates {
    /// Calls `visit` with each candidate id after `after` in id order, until it
    /// returns false.
    pub fn for_each(
        &self,
        store: &dyn Store,
        after: Option<&str>,
        visit: &mut dyn FnMut(&str) -> bool,
    ) -> StoreResult<()> {
        match self {
            Candidates::Exact(lookup) => {
                let start = match after {
                    Some(id) => {
                        let mut key = lookup.prefix.clone();
                        key.extend_from_slice(id.as_bytes());
                        crate::store::key_after(&key)
                    }
                    None => lookup.start.clone(),
                };
                walk(store, lookup, &start, visit).map(|_| ())
            }
            Candidates::Ids(ids) => {
                let range = match after {
                    Some(id) => ids.range::<str, _>((std::ops::Bound::Excluded(id), std::ops::Bound::Unbounded)),
                    None => ids.range::<str, _>(..),
                };
                for id in range {
                    if !visit(id) {
                        break;
                    }
                }
                Ok(())
            }
        }
    }
}

/// Whether the index entries of `filter`'s one condition are exactly the
/// records it matches, so a record found through them need not be tested
/// again (an equality on an indexed string or enum, through repeated fields
/// with any-element semantics like the filter's).
pub fn answers_exactly(kind: &Kind, filter: &Filter) -> bool {
    match filter.conjuncts().as_slice() {
        [only] => lookup_for(kind, only).is_some_and(|lookup| lookup.is_exact()),
        _ => false,
    }
}

/// Where to look for the records that may match `filter`: its most selective
/// indexed condition, or `None` when no condition can use an index (scan
/// everything). A single exact condition is read lazily; with several, each is
/// counted (up to the best so far) to pick the smallest.
pub fn candidates(store: &dyn Store, kind: &Kind, filter: &Filter) -> StoreResult<Option<Candidates>> {
    let lookups: Vec<Lookup> = filter.conjuncts().into_iter().filter_map(|c| lookup_for(kind, c)).collect();
    if let [only] = lookups.as_slice()
        && only.is_exact()
    {
        return Ok(Some(Candidates::Exact(only.clone())));
    }
    let mut best: Option<(BTreeSet<String>, &Lookup)> = None;
    for lookup in &lookups {
        let limit = best.as_ref().map(|(ids, _)| ids.len()).unwrap_or(COUNT_LIMIT);
        if let Some(ids) = run(store, lookup, limit)?
            && best.as_ref().is_none_or(|(b, _)| ids.len() < b.len())
        {
            best = Some((ids, lookup));
        }
    }
    Ok(best.map(
        |(ids, lookup)| {
            if lookup.is_exact() { Candidates::Exact(lookup.clone()) } else { Candidates::Ids(ids) }
        },
    ))
}
