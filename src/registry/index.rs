//! Secondary indexes, written in the same transaction as the record, and the
//! planner that answers a filter from the ids all its indexed conditions find.
//!
//! Entry: the id, a member of the store set `i/{collection}/{field path}\0{value}\0`,
//! one per distinct value of the path in the record (through repeated fields),
//! read in the order of `set || id` as if each were a key. Strings are stored as
//! they are, enums as 4 big-endian bytes, dates as the 8-byte order-preserving
//! day number of their first day, so date ranges are key ranges. Soft-deleted
//! records keep their entries: List with `show_deleted` uses them too.

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

use prost::Message;
use prost_reflect::Kind as FieldKind;

use crate::pb::DESCRIPTOR_POOL;
use crate::pb::google::r#type::Date;
use crate::registry::filter::{self, Filter, Op, Typed};
use crate::registry::resource::{self, Kind};
use crate::registry::{dates, wire};
use crate::store::{Members, Snapshot, StoreResult};

/// Most index entries counted to judge an index's selectivity.
const COUNT_LIMIT: usize = 100_000;

fn prefix(kind: &Kind, path: &str) -> Vec<u8> {
    format!("i/{}/{path}\0", kind.collection).into_bytes()
}

fn encode_date(first_day: i64) -> [u8; 8] {
    ((first_day as u64) ^ (1 << 63)).to_be_bytes()
}

/// One of a kind's indexes, resolved once: its set prefix and the field at
/// each step of its path.
struct IndexPath {
    prefix: Vec<u8>,
    steps: Vec<wire::Shape>,
    /// The path crosses no repeated field (see `Lookup::one_value`).
    one_value: bool,
}

impl IndexPath {
    /// Whether a filter's path names this index's fields (by number: the
    /// path starts at the same message), through no map key.
    fn is_at(&self, path: &[filter::Step]) -> bool {
        path.len() == self.steps.len()
            && path.iter().zip(&self.steps).all(|(step, shape)| match step {
                filter::Step::Field(field) => field.number() == shape.number,
                filter::Step::MapKey(_) => false,
            })
    }
}

/// Every kind's indexes, by collection.
static INDEX_PATHS: LazyLock<HashMap<&'static str, Vec<IndexPath>>> = LazyLock::new(|| {
    resource::KINDS
        .iter()
        .map(|kind| {
            let message = DESCRIPTOR_POOL.get_message_by_name(kind.message).expect("every kind's message is known");
            let paths = kind
                .indexes
                .iter()
                .map(|path| {
                    let mut steps: Vec<wire::Shape> = Vec::new();
                    for name in path.split('.') {
                        let within = match steps.last().map(|step| &step.kind) {
                            Some(FieldKind::Message(inner)) => inner.clone(),
                            Some(_) => panic!("index path {path} steps into a field that is not a message"),
                            None => message.clone(),
                        };
                        let field = within.get_field_by_name(name);
                        let field = field.unwrap_or_else(|| panic!("index path {path}: no field {name}"));
                        steps.push(wire::Shape::of(&field));
                    }
                    let one_value = steps.iter().all(|step| !step.list && !step.map);
                    IndexPath { prefix: prefix(kind, path), steps, one_value }
                })
                .collect();
            (kind.collection, paths)
        })
        .collect()
});

/// The index sets a record of `kind` is in (its id is the member), read from
/// the record's encoding in one pass: one per distinct value of each indexed
/// path, through repeated and nested fields.
pub fn entries(kind: &Kind, record: &[u8]) -> Result<BTreeSet<Vec<u8>>, wire::Malformed> {
    let indexes = INDEX_PATHS.get(kind.collection).map(Vec::as_slice).unwrap_or_default();
    let mut sets = BTreeSet::new();
    for found in wire::fields(record) {
        let found = found?;
        for index in indexes.iter().filter(|index| index.steps[0].number == found.number) {
            for_each_value_in(&index.steps, found.value, &mut |field, value| {
                let mut set = index.prefix.clone();
                if append_value(field, value, &mut set)? {
                    set.push(0);
                    sets.insert(set);
                }
                Ok(())
            })?;
        }
    }
    Ok(sets)
}

/// Visits every value at a path of fields, given one value of its first
/// field: through repeated and nested fields. A field without presence that
/// holds its default is not set, so it has no value to visit.
fn for_each_value_in(
    steps: &[wire::Shape],
    value: wire::Value,
    visit: &mut dyn FnMut(&FieldKind, wire::Value) -> Result<(), wire::Malformed>,
) -> Result<(), wire::Malformed> {
    let Some((field, rest)) = steps.split_first() else { return Ok(()) };
    match value {
        wire::Value::Bytes(inner) if !rest.is_empty() => {
            for found in wire::fields(inner) {
                let found = found?;
                if found.number == rest[0].number {
                    for_each_value_in(rest, found.value, visit)?;
                }
            }
        }
        _ if !rest.is_empty() => return Err(wire::MISMATCH),
        value if field.sets(&value) => field.items(value, &mut |item| visit(&field.kind, item))?,
        _ => {}
    }
    Ok(())
}

/// Appends the index encoding of a value of a field of `kind` to `out`; false (and
/// nothing appended) for a value that is not indexed (an empty string, say).
fn append_value(kind: &FieldKind, value: wire::Value, out: &mut Vec<u8>) -> Result<bool, wire::Malformed> {
    match (kind, value) {
        (FieldKind::String, value) => {
            let text = value.text()?;
            if text.is_empty() {
                return Ok(false);
            }
            out.extend_from_slice(text.as_bytes());
        }
        (FieldKind::Enum(_), wire::Value::Varint(n)) => {
            out.extend_from_slice(&((n as i32 as u32) ^ (1 << 31)).to_be_bytes())
        }
        (FieldKind::Message(m), wire::Value::Bytes(bytes)) if m.full_name() == dates::DATE_MESSAGE => {
            out.extend_from_slice(&encode_date(dates::first_day(&Date::decode(bytes)?)))
        }
        _ => return Ok(false),
    }
    Ok(true)
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
    /// The path crosses no repeated field: a record has at most one value
    /// there, so two ranges on it hold together only within both.
    one_value: bool,
}

impl Lookup {
    /// One indexed value (ids in id order), as opposed to a range of dates.
    fn is_exact(&self) -> bool {
        self.end.is_none() && self.value_len.is_none()
    }

    /// One range within both this one and `other`, when both are ranges of
    /// one index whose records have one value each (`d >= 2020 AND d < 2021`
    /// is one year, not everything after 2020 and everything before 2021).
    fn within(&self, other: &Lookup) -> Option<Lookup> {
        let ranges = self.value_len.is_some() && other.value_len.is_some();
        if !(ranges && self.one_value && self.prefix == other.prefix) {
            return None;
        }
        // A start is the prefix alone (no lower bound) or the prefix and a
        // value: the larger is the later.
        let start = self.start.clone().max(other.start.clone());
        let end = match (self.end, other.end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Some(Lookup { start, end, ..self.clone() })
    }
}

/// The lookups of a filter's conditions, ranges on one index joined into one.
fn joined(lookups: Vec<Lookup>) -> Vec<Lookup> {
    let mut joined: Vec<Lookup> = Vec::new();
    for lookup in lookups {
        match joined.iter_mut().find_map(|kept| kept.within(&lookup).map(|both| (kept, both))) {
            Some((kept, both)) => *kept = both,
            None => joined.push(lookup),
        }
    }
    joined
}

/// The lookups an index can do for one condition of a filter.
fn lookup_for(kind: &Kind, condition: &Filter) -> Option<Lookup> {
    let Filter::Compare { path, op, value } = condition else { return None };
    let indexes = INDEX_PATHS.get(kind.collection)?;
    let index = indexes.iter().find(|index| index.is_at(path))?;
    let (base, one_value) = (&index.prefix, index.one_value);
    let exact = |bytes: Vec<u8>| {
        let mut start = base.clone();
        start.extend_from_slice(&bytes);
        start.push(0);
        Some(Lookup { prefix: start.clone(), start, end: None, value_len: None, one_value })
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
            Some(Lookup { prefix: base.clone(), start, end: high.map(encode_date), value_len: Some(8), one_value })
        }
        _ => None,
    }
}

/// Ids found by a lookup (only those `among` a set, if given), reading up to
/// `limit` of its keys; `None` when it has more.
async fn run(
    snapshot: &dyn Snapshot,
    lookup: &Lookup,
    limit: usize,
    among: Option<&BTreeSet<String>>,
) -> StoreResult<Option<BTreeSet<String>>> {
    let mut ids = BTreeSet::new();
    let mut seen = 0;
    let complete = walk(snapshot, lookup, &lookup.start, |id| {
        seen += 1;
        if seen > limit {
            return false;
        }
        match among {
            None => _ = ids.insert(String::from_utf8_lossy(id).into_owned()),
            Some(among) => {
                if let Some(id) = std::str::from_utf8(id).ok().and_then(|id| among.get(id)) {
                    ids.insert(id.clone());
                }
            }
        }
        true
    })
    .await?;
    Ok(complete.then_some(ids))
}

/// Calls `visit` with the id of every key of a lookup from `start`, in key
/// order, until it returns false. Returns whether every key was visited.
async fn walk(
    snapshot: &dyn Snapshot,
    lookup: &Lookup,
    start: &[u8],
    mut visit: impl FnMut(&[u8]) -> bool,
) -> StoreResult<bool> {
    let mut past_end = false;
    let complete = crate::store::for_each_member(snapshot, &lookup.prefix, start, |key| match lookup.id_of(key) {
        Some([]) => Ok::<_, crate::store::StoreError>(true),
        Some(id) => Ok(visit(id)),
        None => {
            past_end = true;
            Ok(false)
        }
    })
    .await?;
    Ok(complete || past_end)
}

impl Lookup {
    /// The id in an index key of this lookup (it follows the key's last 0
    /// byte: ids never hold one; empty for a key without one); `None` past
    /// the lookup's end.
    fn id_of<'k>(&self, key: &'k [u8]) -> Option<&'k [u8]> {
        let rest = &key[self.prefix.len()..];
        if let (Some(end), Some(len)) = (self.end, self.value_len)
            && rest.len() >= len
            && rest[..len] > end[..]
        {
            return None;
        }
        Some(key.iter().rposition(|b| *b == 0).map_or(&[][..], |at| &key[at + 1..]))
    }
}

/// Where the records that may match a filter are.
#[derive(Debug)]
pub enum Candidates {
    /// The entries of one indexed value: ids in id order, read as needed.
    Exact(Lookup),
    /// The ids that a range of values, or several conditions together, found:
    /// collected and sorted.
    Ids(BTreeSet<String>),
}

impl Candidates {
    /// Up to `limit` candidate ids after `after` (an id), in id order, as the
    /// index holds them (bytes, for the caller to put into keys without
    /// checking each one's UTF-8); fewer only when there are no more.
    pub async fn next_ids(&self, snapshot: &dyn Snapshot, after: Option<&[u8]>, limit: usize) -> StoreResult<Members> {
        let mut ids = Members::with_capacity(limit);
        match self {
            Candidates::Exact(lookup) => {
                let start = match after {
                    Some(id) => crate::store::key_after(&[lookup.prefix.as_slice(), id].concat()),
                    None => lookup.start.clone(),
                };
                for key in snapshot.members(&lookup.prefix, &start, limit).await?.iter() {
                    match lookup.id_of(key) {
                        Some(id) if !id.is_empty() => ids.push(id),
                        Some(_) => {}
                        None => break,
                    }
                }
            }
            Candidates::Ids(all) => {
                let range = match after.map(String::from_utf8_lossy) {
                    Some(id) => all.range::<str, _>((std::ops::Bound::Excluded(&*id), std::ops::Bound::Unbounded)),
                    None => all.range::<str, _>(..),
                };
                for id in range.take(limit) {
                    ids.push(id.as_bytes());
                }
            }
        }
        Ok(ids)
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

/// Where to look for the records that may match `filter`: the ids that all
/// its indexed conditions find, or `None` when no condition can use an index
/// (scan everything). A single exact condition is read lazily. With several,
/// each must hold, so only ids every one finds can match ("India and Japan"
/// is the few agreements both parties' sets hold, not all of India's). A
/// condition with more than `COUNT_LIMIT` entries is left for the filter to
/// test on the records.
pub async fn candidates(snapshot: &dyn Snapshot, kind: &Kind, filter: &Filter) -> StoreResult<Option<Candidates>> {
    let lookups = joined(filter.conjuncts().into_iter().filter_map(|c| lookup_for(kind, c)).collect());
    if let [only] = lookups.as_slice()
        && only.is_exact()
    {
        return Ok(Some(Candidates::Exact(only.clone())));
    }
    // The ids found so far (already read: no lookup is walked twice).
    let mut found: Option<BTreeSet<String>> = None;
    for lookup in &lookups {
        match &mut found {
            None => found = run(snapshot, lookup, COUNT_LIMIT, None).await?,
            Some(ids) if ids.is_empty() => break,
            Some(ids) => {
                // (A lookup with more keys narrows nothing for its cost.)
                if let Some(kept) = run(snapshot, lookup, COUNT_LIMIT, Some(ids)).await? {
                    *ids = kept;
                }
            }
        }
    }
    Ok(found.map(Candidates::Ids))
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::pb::cooperation::v1::{Agreement, agreement};
    use crate::registry::dates::date;

    fn set(path: &str, value: &[u8]) -> Vec<u8> {
        [format!("i/agreements/{path}\0").as_bytes(), value, b"\0"].concat()
    }

    #[test]
    fn a_record_is_in_one_set_per_distinct_value_of_each_indexed_path() {
        let record = Agreement {
            title: "not indexed".into(),
            parties: vec!["parties/ind".into(), "parties/jpn".into()],
            instrument_type: 3,
            signature_date: Some(date(2020, 9, 9)),
            entry_into_force_date: Some(date(2021, 0, 0)),
            signatories: vec![
                agreement::Signatory { person: "A".into(), party: "parties/ind".into(), ..Default::default() },
                agreement::Signatory { person: "B".into(), party: "parties/jpn".into(), ..Default::default() },
                agreement::Signatory { person: "C".into(), party: "parties/jpn".into(), ..Default::default() },
            ],
            provisions: vec![
                agreement::Provision { category: 3, ..Default::default() },
                agreement::Provision { category: 0, ..Default::default() },
            ],
            end: Some(agreement::End { date: Some(date(2030, 6, 0)), reason: 1, ..Default::default() }),
            ..Default::default()
        };
        let day = |d: &Date| encode_date(dates::first_day(d));
        let expected: BTreeSet<Vec<u8>> = [
            set("parties", b"parties/ind"),
            set("parties", b"parties/jpn"),
            set("instrument_type", &(3u32 ^ (1 << 31)).to_be_bytes()),
            set("signature_date", &day(&date(2020, 9, 9))),
            set("entry_into_force_date", &day(&date(2021, 1, 1))),
            set("signatories.party", b"parties/ind"),
            set("signatories.party", b"parties/jpn"),
            set("provisions.category", &(3u32 ^ (1 << 31)).to_be_bytes()),
            set("end.date", &day(&date(2030, 6, 1))),
        ]
        .into();
        // A provision's unset category (0) is no value: it is in no set.
        assert_eq!(entries(&resource::AGREEMENT, &record.encode_to_vec()).unwrap(), expected);
        assert!(entries(&resource::AGREEMENT, &Agreement::default().encode_to_vec()).unwrap().is_empty());
    }

    #[test]
    fn every_kinds_index_paths_resolve_and_bad_bytes_are_refused() {
        for kind in resource::KINDS {
            assert_eq!(INDEX_PATHS[kind.collection].len(), kind.indexes.len(), "{}", kind.collection);
            assert!(entries(kind, &[]).unwrap().is_empty());
        }
        let bytes = Agreement { parties: vec!["parties/ind".into()], ..Default::default() }.encode_to_vec();
        assert!(entries(&resource::AGREEMENT, &bytes[..bytes.len() - 1]).is_err(), "a cut record");
        // `parties` (a string) sent as a varint: not what the field is.
        let mut mistyped = Vec::new();
        prost::encoding::encode_key(8, prost::encoding::WireType::Varint, &mut mistyped);
        prost::encoding::encode_varint(7, &mut mistyped);
        let parties = INDEX_PATHS["agreements"].iter().find(|p| p.prefix.ends_with(b"/parties\0")).unwrap();
        assert_eq!(parties.steps[0].number, 8, "the test's field number is the parties field's");
        assert!(entries(&resource::AGREEMENT, &mistyped).is_err());
    }

    /// Two ranges on one date that a record has once are one range; on a
    /// path through a repeated field they stay two (one element may hold the
    /// lower bound and another the upper), as do ranges of two indexes.
    #[test]
    fn ranges_on_one_value_are_joined_and_others_are_not() {
        use prost_reflect::ReflectMessage;
        let descriptor = Agreement::default().descriptor();
        let lookups = |text: &str| -> Vec<Lookup> {
            let filter = Filter::compile(text, &descriptor).unwrap();
            joined(filter.conjuncts().into_iter().filter_map(|c| lookup_for(&resource::AGREEMENT, c)).collect())
        };
        let year = lookups("signature_date >= 2020-01-01 AND signature_date < 2021-01-01 AND signature_date > 2019");
        let [one] = year.as_slice() else { panic!("{year:?}") };
        let day = |d: Date| encode_date(dates::first_day(&d));
        assert_eq!(one.start, [b"i/agreements/signature_date\0".as_slice(), &day(date(2020, 1, 1))].concat());
        assert_eq!(one.end, Some(day(date(2020, 12, 31))));
        assert_eq!(lookups("signature_date >= 2020 AND entry_into_force_date < 2021").len(), 2, "two indexes");
        let repeated = Lookup { one_value: false, ..one.clone() };
        assert!(repeated.within(one).is_none(), "a path through a repeated field");
    }

    /// A condition finds its index by the fields its path names, nested ones
    /// included; a field without an index, or a map key, finds none.
    #[test]
    fn a_condition_finds_the_index_of_the_fields_it_names() {
        use prost_reflect::ReflectMessage;
        let descriptor = Agreement::default().descriptor();
        let lookup = |text: &str| {
            let filter = Filter::compile(text, &descriptor).unwrap();
            lookup_for(&resource::AGREEMENT, filter.conjuncts()[0])
        };
        let exact = lookup(r#"parties = "parties/ind""#).unwrap();
        assert_eq!(exact.prefix, set("parties", b"parties/ind"));
        assert!(exact.is_exact());
        let nested = lookup(r#"signatories.party = "parties/jpn""#).unwrap();
        assert_eq!(nested.prefix, set("signatories.party", b"parties/jpn"));
        let dates = lookup("end.date >= 2030-01-01").unwrap();
        assert_eq!(dates.prefix, b"i/agreements/end.date\0");
        assert!(!dates.is_exact());
        assert!(lookup(r#"title = "Reciprocal""#).is_none(), "no index");
        assert!(lookup(r#"labels.parties = "x""#).is_none(), "a map key");
    }
}
