//! Secondary indexes, written in the same transaction as the record, and the
//! planner that answers a filter from the ids its indexed conditions find.
//!
//! Entry: the id, a member of the store set `i/{collection}/{field path}\0{value}\0`,
//! one per distinct value of the path in the record (through repeated fields),
//! read in the order of `set || id` as if each were a key. Values are encoded
//! so that this order is the order `order_by` sorts in: strings as they are
//! (with the bytes 0 and 1 escaped, so no value holds the 0 that ends it),
//! enums as 4 big-endian bytes, dates as the 8-byte order-preserving day
//! numbers of their first and last days (so date ranges are key ranges),
//! a map's entries as key, 0 and value. Every encoding starts with a byte of
//! at least 1.
//!
//! Three kinds of index (the kind's `indexes`, `ordered` and `words`):
//! - a value index holds the values a record has;
//! - an ordered index on a singular path also holds records without a value,
//!   under the empty value, which sorts first: each record is in it exactly
//!   once, so a List ordered by the path walks it and stops after a page;
//! - a word index (`i/{collection}/{path}#words\0{word}\0`) holds each word of
//!   the text (see `words`), for `:`.
//!
//! Soft-deleted records keep their entries: List with `show_deleted` uses them too.

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

use prost::Message;
use prost_reflect::Kind as FieldKind;

use crate::pb::google::r#type::Date;
use crate::registry::filter::{self, Filter, Op, Typed};
use crate::registry::order::SortValue;
use crate::registry::resource::{self, Kind};
use crate::registry::{dates, wire, words};
use crate::store::{Members, Snapshot, StoreResult, key_after, prefix_end};

/// Most index entries counted to judge an index's selectivity.
const COUNT_LIMIT: usize = 100_000;

/// Ids a condition may find for it to count as narrow: a condition with no
/// more is read whole before wider ones, and its ids are checked in the
/// others' sets one by one, or tested on the records.
const FEW: usize = 1024;

/// Below every encoded value but the empty one (a value an ordered index
/// holds for records without one).
const LOWEST_VALUE: u8 = 1;

fn prefix(kind: &Kind, path: &str) -> Vec<u8> {
    format!("i/{}/{path}\0", kind.collection).into_bytes()
}

fn words_prefix(kind: &Kind, path: &str) -> Vec<u8> {
    format!("i/{}/{path}#words\0", kind.collection).into_bytes()
}

fn encode_date(first_day: i64) -> [u8; 8] {
    ((first_day as u64) ^ (1 << 63)).to_be_bytes()
}

/// A date's period as its index value: first day, then last day.
fn encode_period(first_day: i64, last_day: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(&encode_date(first_day));
    out.extend_from_slice(&encode_date(last_day));
}

/// `text` with the bytes 0 and 1 escaped (as 1 1 and 1 2): no 0 byte, and
/// the same order.
pub(super) fn escape(text: &str, out: &mut Vec<u8>) {
    for byte in text.bytes() {
        match byte {
            0 => out.extend_from_slice(&[1, 1]),
            1 => out.extend_from_slice(&[1, 2]),
            byte => out.push(byte),
        }
    }
}

/// One of a kind's indexes, resolved once: its set prefix and the field at
/// each step of its path.
struct IndexPath {
    prefix: Vec<u8>,
    steps: Vec<wire::Shape>,
    /// The path crosses no repeated field (see `Lookup::one_value`).
    one_value: bool,
    /// An ordered index: records without a value are in it too.
    ordered: bool,
    /// A word index.
    words: bool,
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

    /// The key of a map this index (of a map's entries) holds, if the path
    /// names one.
    fn map_key_at<'p>(&self, path: &'p [filter::Step]) -> Option<&'p str> {
        match (path, self.steps.as_slice()) {
            ([filter::Step::Field(field), filter::Step::MapKey(key)], [shape]) if shape.map => {
                (field.number() == shape.number).then_some(key.as_str())
            }
            _ => None,
        }
    }
}

/// Every kind's indexes, by collection.
static INDEX_PATHS: LazyLock<HashMap<&'static str, Vec<IndexPath>>> = LazyLock::new(|| {
    resource::KINDS
        .iter()
        .map(|kind| {
            let message = kind.descriptor();
            let resolve = |path: &str| {
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
                steps
            };
            let mut paths = Vec::new();
            for (list, ordered, words) in
                [(kind.indexes, false, false), (kind.ordered, true, false), (kind.words, false, true)]
            {
                for path in list {
                    let steps = resolve(path);
                    let one_value = steps.iter().all(|step| !step.list && !step.map);
                    assert!(one_value || !ordered, "ordered index path {path} crosses a repeated field");
                    let prefix = if words { words_prefix(kind, path) } else { prefix(kind, path) };
                    paths.push(IndexPath { prefix, steps, one_value, ordered, words });
                }
            }
            (kind.collection, paths)
        })
        .collect()
});

/// The index sets a record of `kind` is in (its id is the member), read from
/// the record's encoding in one pass: one per distinct value of each indexed
/// path, through repeated and nested fields; the empty value of each ordered
/// index the record has no value for.
pub fn entries(kind: &Kind, record: &[u8]) -> Result<BTreeSet<Vec<u8>>, wire::Malformed> {
    let indexes = INDEX_PATHS.get(kind.collection).map(Vec::as_slice).unwrap_or_default();
    let mut sets = BTreeSet::new();
    let mut valued = vec![false; indexes.len()];
    for found in wire::fields(record) {
        let found = found?;
        for (at, index) in indexes.iter().enumerate().filter(|(_, index)| index.steps[0].number == found.number) {
            for_each_value_in(&index.steps, found.value, &mut |field, value| {
                if index.words {
                    for word in words::words(value.text()?) {
                        let mut set = index.prefix.clone();
                        escape(&word, &mut set);
                        set.push(0);
                        sets.insert(set);
                    }
                    return Ok(());
                }
                let mut set = index.prefix.clone();
                if append_value(field, value, &mut set)? {
                    set.push(0);
                    sets.insert(set);
                    valued[at] = true;
                }
                Ok(())
            })?;
        }
    }
    for (index, _) in indexes.iter().zip(valued).filter(|(index, valued)| index.ordered && !valued) {
        sets.insert([index.prefix.as_slice(), &[0]].concat());
    }
    Ok(sets)
}

/// Visits every value at a path of fields, given one value of its first
/// field: through repeated and nested fields. A field without presence that
/// holds its default is not set, so it has no value to visit.
pub(super) fn for_each_value_in(
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
            escape(text, out);
        }
        (FieldKind::Enum(_), wire::Value::Varint(n)) => {
            out.extend_from_slice(&((n as i32 as u32) ^ (1 << 31)).to_be_bytes())
        }
        (FieldKind::Message(m), wire::Value::Bytes(bytes)) if m.full_name() == dates::DATE_MESSAGE => {
            let date = Date::decode(bytes)?;
            encode_period(dates::first_day(&date), dates::last_day(&date), out);
        }
        (FieldKind::Message(m), wire::Value::Bytes(bytes)) if m.is_map_entry() => {
            // A map of strings: key, 0, value.
            let (mut key, mut text) = ("", "");
            for found in wire::fields(bytes) {
                let found = found?;
                match found.number {
                    1 => key = found.value.text()?,
                    2 => text = found.value.text()?,
                    _ => {}
                }
            }
            escape(key, out);
            out.push(0);
            escape(text, out);
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// The index value of a sort value, as an ordered index holds it (unset and
/// empty values are the empty value).
fn sort_value_bytes(value: &SortValue) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match value {
        SortValue::Missing => {}
        SortValue::Str(text) => escape(text, &mut out),
        SortValue::Period(first, last) => encode_period(*first, *last, &mut out),
        SortValue::Int(_) => return None,
    }
    Some(out)
}

/// What a lookup reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reach {
    /// One set: its ids in id order.
    Set,
    /// The sets of a range of dates.
    Dates,
    /// The sets of the words that start with some letters.
    WordStart,
}

/// A lookup in one index: keys from `start` (inclusive) while under `prefix`
/// and, for ranges, not beyond `end` (inclusive, on the value's first bytes).
#[derive(Clone, Debug)]
pub struct Lookup {
    prefix: Vec<u8>,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    reach: Reach,
    /// The path crosses no repeated field: a record has at most one value
    /// there, so two ranges on it hold together only within both.
    one_value: bool,
}

impl Lookup {
    /// One indexed value (ids in id order), as opposed to a range of values.
    fn is_exact(&self) -> bool {
        self.reach == Reach::Set
    }

    /// Whether this one set holds `id`.
    async fn holds(&self, snapshot: &dyn Snapshot, id: &str) -> StoreResult<bool> {
        let key = [self.prefix.as_slice(), id.as_bytes()].concat();
        Ok(snapshot.members(&self.prefix, &key, 1).await?.iter().next() == Some(key.as_slice()))
    }

    fn set(set: Vec<u8>) -> Lookup {
        Lookup { prefix: set.clone(), start: set, end: None, reach: Reach::Set, one_value: false }
    }

    /// One range within both this one and `other`, when both are ranges of
    /// one index whose records have one value each (`d >= 2020 AND d < 2021`
    /// is one year, not everything after 2020 and everything before 2021).
    fn within(&self, other: &Lookup) -> Option<Lookup> {
        let ranges = self.reach == Reach::Dates && other.reach == Reach::Dates;
        if !(ranges && self.one_value && self.prefix == other.prefix) {
            return None;
        }
        // A start is the prefix and a value: the larger is the later.
        let start = self.start.clone().max(other.start.clone());
        let end = match (&self.end, &other.end) {
            (Some(a), Some(b)) => Some(a.min(b).clone()),
            (a, b) => a.clone().or(b.clone()),
        };
        Some(Lookup { start, end, ..self.clone() })
    }

    /// The id in an index key of this lookup (it follows the key's last 0
    /// byte: ids never hold one; empty for a key to skip: one without an id,
    /// or an unset value in a range); `None` past the lookup's end.
    fn id_of<'k>(&self, key: &'k [u8]) -> Option<&'k [u8]> {
        let rest = &key[self.prefix.len()..];
        if self.reach == Reach::Dates {
            if rest.first() == Some(&0) {
                return Some(&[]);
            }
            if let Some(end) = &self.end
                && rest.len() >= end.len()
                && rest[..end.len()] > end[..]
            {
                return None;
            }
        }
        Some(key.iter().rposition(|b| *b == 0).map_or(&[][..], |at| &key[at + 1..]))
    }
}

/// The lookups of a filter's conditions, ranges on one index joined into one.
fn joined(sources: Vec<Source>) -> Vec<Source> {
    let mut joined: Vec<Source> = Vec::new();
    for source in sources {
        let Source::Lookup(lookup) = &source else {
            joined.push(source);
            continue;
        };
        let both = joined.iter_mut().find_map(|kept| match kept {
            Source::Lookup(kept) => kept.within(lookup).map(|both| (kept, both)),
            _ => None,
        });
        match both {
            Some((kept, both)) => *kept = both,
            None => joined.push(source),
        }
    }
    joined
}

/// Where the indexes find the records a condition may match.
#[derive(Clone, Debug)]
enum Source {
    Lookup(Lookup),
    /// Records every one finds.
    All(Vec<Source>),
    /// Records any one finds.
    Any(Vec<Source>),
}

/// Where the indexes find the records that may match a condition of a
/// filter: its lookup, the lookups of an OR's every branch, those of some of
/// an AND's conditions; `None` when the records must be read to tell.
fn source_for(kind: &Kind, condition: &Filter, day: i64) -> Option<Source> {
    match condition {
        Filter::Compare { path, op, value } => status_source(kind, path, *op, value, day)
            .or_else(|| party_status_source(kind, path, *op, value, day))
            .or_else(|| lookup_for(kind, condition)),
        Filter::Any(branches) => {
            Some(Source::Any(branches.iter().map(|branch| source_for(kind, branch, day)).collect::<Option<_>>()?))
        }
        Filter::All(parts) => {
            let found: Vec<Source> = joined(parts.iter().filter_map(|part| source_for(kind, part, day)).collect());
            match found.len() {
                0 => None,
                1 => found.into_iter().next(),
                _ => Some(Source::All(found)),
            }
        }
        Filter::Not(_) => None,
    }
}

/// Where the agreements whose status (derived as of `day`, see
/// `agreement::status_as_of`) a comparison asks for may be: the dates that
/// status needs, as ranges of the date indexes (an agreement signed but not
/// in force has a signature date up to the day, and no entry into force or
/// one after it, and no end or one after it).
fn status_source(kind: &Kind, path: &[filter::Step], op: Op, value: &Typed, day: i64) -> Option<Source> {
    use crate::pb::cooperation::v1::agreement::Status;
    let at_status = matches!(path, [filter::Step::Field(field)] if field.name() == "status");
    let (true, true, Op::Eq | Op::Has, Typed::Enum(number)) = (*kind == resource::AGREEMENT, at_status, op, value)
    else {
        return None;
    };
    let dates = |path: &str, low: Option<i64>, high: Option<i64>| {
        let base = prefix(kind, path);
        let mut start = base.clone();
        match low {
            Some(low) => start.extend_from_slice(&encode_date(low)),
            None => start.push(LOWEST_VALUE),
        }
        let end = high.map(|high| encode_date(high).to_vec());
        Source::Lookup(Lookup { prefix: base, start, end, reach: Reach::Dates, one_value: true })
    };
    let unset = |path: &str| Source::Lookup(Lookup::set([prefix(kind, path).as_slice(), &[0]].concat()));
    let later = |path: &str| Source::Any(vec![unset(path), dates(path, Some(day + 1), None)]);
    Some(match Status::try_from(*number).ok()? {
        Status::Unspecified => unset("signature_date"),
        Status::NotYetSigned => dates("signature_date", Some(day + 1), None),
        Status::Signed => Source::All(vec![
            dates("signature_date", None, Some(day)),
            later("entry_into_force_date"),
            later("end.date"),
        ]),
        Status::ProvisionallyApplied => Source::All(vec![later("entry_into_force_date"), later("end.date")]),
        Status::InForce => Source::All(vec![dates("entry_into_force_date", None, Some(day)), later("end.date")]),
        Status::Expired => {
            Source::Any(vec![dates("end.date", None, Some(day)), dates("entry_into_force_date", None, Some(day))])
        }
        Status::Terminated | Status::Superseded => dates("end.date", None, Some(day)),
    })
}

/// Where the agreements may be that a condition on one party's status
/// matches (`parties_status.parties/ind = IN_FORCE`, or the key's presence,
/// `parties_status:parties/ind`), following `agreement::party_status_given`:
/// the map has a key for each of the agreement's parties and no other; a
/// party's own actions give RATIFIED and WITHDRAWN, and only they do; IN_FORCE,
/// EXPIRED, TERMINATED, SUPERSEDED and UNSPECIFIED for a party need the
/// agreement's own status to be the same; the rest come from either.
fn party_status_source(kind: &Kind, path: &[filter::Step], op: Op, value: &Typed, day: i64) -> Option<Source> {
    use crate::pb::cooperation::v1::agreement::{PartyStatus, Status};
    let (party, wanted) = match (path, op, value) {
        ([filter::Step::Field(field), filter::Step::MapKey(party)], Op::Eq | Op::Has, Typed::Enum(number)) => {
            (field.name() == "parties_status").then_some((party, Some(PartyStatus::try_from(*number).ok()?)))?
        }
        ([filter::Step::Field(field)], Op::Has, Typed::Str(party)) => {
            (field.name() == "parties_status").then_some((party, None))?
        }
        _ => return None,
    };
    if *kind != resource::AGREEMENT {
        return None;
    }
    let descriptor = kind.descriptor();
    // (A map key is a filter word: quoting it is safe.)
    let set_of = |path: &str| lookup_for(kind, &Filter::compile(&format!("{path} = \"{party}\""), &descriptor).ok()?);
    let naming = set_of("parties")?;
    let Some(wanted) = wanted else { return Some(naming) };
    let overall = |status: Status| {
        let at = filter::Step::Field(descriptor.get_field_by_name("status")?);
        Some(Source::All(vec![naming.clone(), status_source(kind, &[at], Op::Eq, &Typed::Enum(status as i32), day)?]))
    };
    let own = || set_of("party_actions.party");
    let either = |status: Status| Some(Source::Any(vec![own()?, overall(status)?]));
    match wanted {
        PartyStatus::Ratified | PartyStatus::Withdrawn => own(),
        PartyStatus::InForce => overall(Status::InForce),
        PartyStatus::Expired => overall(Status::Expired),
        PartyStatus::Terminated => overall(Status::Terminated),
        PartyStatus::Superseded => overall(Status::Superseded),
        PartyStatus::Unspecified => overall(Status::Unspecified),
        PartyStatus::Signed => either(Status::Signed),
        PartyStatus::NotYetSigned => either(Status::NotYetSigned),
        PartyStatus::ProvisionallyApplied => either(Status::ProvisionallyApplied),
    }
}

/// The lookups an index can do for one comparison of a filter.
fn lookup_for(kind: &Kind, condition: &Filter) -> Option<Source> {
    let Filter::Compare { path, op, value } = condition else { return None };
    let indexes = INDEX_PATHS.get(kind.collection)?;
    if let (Op::Eq, Typed::Str(text)) = (op, value)
        && !text.contains('*')
        && let Some((index, key)) = indexes.iter().find_map(|index| Some((index, index.map_key_at(path)?)))
    {
        let mut set = index.prefix.clone();
        escape(key, &mut set);
        set.push(0);
        escape(text, &mut set);
        set.push(0);
        return Some(Source::Lookup(Lookup::set(set)));
    }
    if let (Op::Has, Typed::Str(text)) = (op, value) {
        let index = indexes.iter().find(|index| index.words && index.is_at(path))?;
        // Each word as a word, the last as the start of one.
        let words = words::words(text);
        let (last, run) = words.split_last()?;
        let mut lookups: Vec<Source> = run
            .iter()
            .map(|word| {
                let mut set = index.prefix.clone();
                escape(word, &mut set);
                set.push(0);
                Source::Lookup(Lookup::set(set))
            })
            .collect();
        let mut start = index.prefix.clone();
        escape(last, &mut start);
        lookups.push(Source::Lookup(Lookup {
            prefix: start.clone(),
            start,
            end: None,
            reach: Reach::WordStart,
            one_value: false,
        }));
        return Some(match lookups.len() {
            1 => lookups.pop().expect("one"),
            _ => Source::All(lookups),
        });
    }
    let index = indexes.iter().find(|index| !index.words && index.is_at(path))?;
    let (base, one_value) = (&index.prefix, index.one_value);
    let exact = |bytes: &[u8]| {
        let mut set = base.clone();
        set.extend_from_slice(bytes);
        set.push(0);
        Some(Source::Lookup(Lookup { one_value, ..Lookup::set(set) }))
    };
    match (op, value) {
        // (`:` on a singular string is a word test: no lookup here; on a
        // repeated one the compiler already made it `=`.)
        (Op::Eq, Typed::Str(s)) if !s.is_empty() && !s.contains('*') => {
            let mut bytes = Vec::new();
            escape(s, &mut bytes);
            exact(&bytes)
        }
        (Op::Eq | Op::Has, Typed::Enum(n)) => exact(&((*n as u32) ^ (1 << 31)).to_be_bytes()),
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
            match low {
                Some(low) => start.extend_from_slice(&encode_date(low)),
                None => start.push(LOWEST_VALUE),
            }
            let end = high.map(|high| encode_date(high).to_vec());
            Some(Source::Lookup(Lookup { prefix: base.clone(), start, end, reach: Reach::Dates, one_value }))
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

/// Ids a source finds (only those `among` a set, if given), reading up to
/// `limit` keys of each lookup; `None` when it finds too many to tell.
fn run_source<'a>(
    snapshot: &'a dyn Snapshot,
    source: &'a Source,
    limit: usize,
    among: Option<&'a BTreeSet<String>>,
) -> crate::store::BoxFuture<'a, StoreResult<Option<BTreeSet<String>>>> {
    Box::pin(async move {
        match source {
            Source::Lookup(lookup) => run(snapshot, lookup, limit, among).await,
            Source::All(parts) if parts.len() > 1 => {
                // Each part read as far as a few ids: the smallest of those
                // read whole seeds the answer, so one narrow condition is
                // not held up by a wide one ("signed but not in force" and
                // one party).
                let mut found: Option<BTreeSet<String>> = None;
                let mut wide = Vec::new();
                for part in parts {
                    match run_source(snapshot, part, FEW.min(limit), among).await? {
                        Some(ids) => match &mut found {
                            None => found = Some(ids),
                            Some(kept) => kept.retain(|id| ids.contains(id)),
                        },
                        None => wide.push(part),
                    }
                }
                // Sets first: each is checked for the ids found so far.
                wide.sort_by_key(|part| !matches!(part, Source::Lookup(lookup) if lookup.is_exact()));
                for part in wide {
                    match (&mut found, part) {
                        (Some(ids), _) if ids.is_empty() => break,
                        (Some(ids), Source::Lookup(lookup)) if lookup.is_exact() && ids.len() <= FEW => {
                            let mut held = BTreeSet::new();
                            for id in ids.iter() {
                                if lookup.holds(snapshot, id).await? {
                                    held.insert(id.clone());
                                }
                            }
                            *ids = held;
                        }
                        // Few enough to test on the records themselves.
                        (Some(ids), _) if ids.len() <= FEW => {}
                        (Some(ids), part) => {
                            // A part with more keys than the ids found so far
                            // narrows nothing for its cost: it is read no
                            // further than that.
                            let within = limit.min(ids.len());
                            if let Some(kept) = run_source(snapshot, part, within, Some(ids)).await? {
                                *ids = kept;
                            }
                        }
                        (None, part) => found = run_source(snapshot, part, limit, among).await?,
                    }
                }
                Ok(found)
            }
            Source::All(parts) => match parts.first() {
                Some(only) => run_source(snapshot, only, limit, among).await,
                None => Ok(None),
            },
            Source::Any(branches) => {
                let mut found = BTreeSet::new();
                for branch in branches {
                    let Some(ids) = run_source(snapshot, branch, limit, among).await? else { return Ok(None) };
                    found.extend(ids);
                    if found.len() > limit {
                        return Ok(None);
                    }
                }
                Ok(Some(found))
            }
        }
    })
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
    /// The ids of one set of an index, in id order, read as needed.
    pub fn set(set: Vec<u8>) -> Candidates {
        Candidates::Exact(Lookup::set(set))
    }

    /// Up to `limit` candidate ids after `after` (an id), in id order, as the
    /// index holds them (bytes, for the caller to put into keys without
    /// checking each one's UTF-8); fewer only when there are no more.
    pub async fn next_ids(&self, snapshot: &dyn Snapshot, after: Option<&[u8]>, limit: usize) -> StoreResult<Members> {
        let mut ids = Members::with_capacity(limit);
        match self {
            Candidates::Exact(lookup) => {
                let start = match after {
                    Some(id) => key_after(&[lookup.prefix.as_slice(), id].concat()),
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

    /// How many ids there are, if no more than `limit`.
    pub async fn count_within(&self, snapshot: &dyn Snapshot, limit: usize) -> StoreResult<Option<usize>> {
        match self {
            Candidates::Ids(all) => Ok((all.len() <= limit).then_some(all.len())),
            Candidates::Exact(lookup) => {
                let mut count = 0;
                let complete = walk(snapshot, lookup, &lookup.start, |_| {
                    count += 1;
                    count <= limit
                })
                .await?;
                Ok(complete.then_some(count))
            }
        }
    }
}

/// Whether the index entries of `filter`'s one condition are exactly the
/// records it matches, so a record found through them need not be tested
/// again (an equality on an indexed string, enum or map entry, through
/// repeated fields with any-element semantics like the filter's).
pub fn answers_exactly(kind: &Kind, filter: &Filter) -> bool {
    match filter.conjuncts().as_slice() {
        [only] => matches!(lookup_for(kind, only), Some(Source::Lookup(lookup)) if lookup.is_exact()),
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
pub async fn candidates(
    snapshot: &dyn Snapshot,
    kind: &Kind,
    filter: &Filter,
    as_of: &Date,
) -> StoreResult<Option<Candidates>> {
    candidates_but(snapshot, kind, filter, dates::first_day(as_of), None).await
}

/// [`candidates`] without the conditions on the index at `skipped` (the
/// index a List walks, which applies them itself).
async fn candidates_but(
    snapshot: &dyn Snapshot,
    kind: &Kind,
    filter: &Filter,
    day: i64,
    skipped: Option<&[u8]>,
) -> StoreResult<Option<Candidates>> {
    let sources = filter.conjuncts().into_iter().filter_map(|c| source_for(kind, c, day));
    let sources: Vec<Source> = joined(sources.collect())
        .into_iter()
        .filter(|source| !matches!((source, skipped), (Source::Lookup(l), Some(p)) if l.prefix == p))
        .collect();
    if let [Source::Lookup(only)] = sources.as_slice()
        && only.is_exact()
    {
        return Ok(Some(Candidates::Exact(only.clone())));
    }
    Ok(run_source(snapshot, &Source::All(sources), COUNT_LIMIT, None).await?.map(Candidates::Ids))
}

/// The ordered index of a kind at a path of fields, if it has one: what a
/// List ordered by that path walks.
pub fn ordered_index(kind: &Kind, path: &[filter::Step]) -> Option<OrderedIndex> {
    let index = INDEX_PATHS.get(kind.collection)?.iter().find(|index| index.ordered && index.is_at(path))?;
    Some(OrderedIndex { prefix: index.prefix.clone() })
}

/// How many records of `kind` there are (deleted ones included), if no
/// more than `limit`: counted in its first ordered index, which holds each
/// record once.
pub async fn count_within(snapshot: &dyn Snapshot, kind: &Kind, limit: usize) -> StoreResult<Option<usize>> {
    let Some(path) = kind.ordered.first() else { return Ok(None) };
    Candidates::set(prefix(kind, path)).count_within(snapshot, limit).await
}

/// An ordered index (see [`ordered_index`]).
#[derive(Clone, Debug)]
pub struct OrderedIndex {
    prefix: Vec<u8>,
}

impl OrderedIndex {
    /// The candidates a List walking this index reads besides it: those of
    /// the filter's other indexed conditions (`None`: every record).
    pub async fn other_candidates(
        &self,
        snapshot: &dyn Snapshot,
        kind: &Kind,
        filter: &Filter,
        as_of: &Date,
    ) -> StoreResult<Option<Candidates>> {
        candidates_but(snapshot, kind, filter, dates::first_day(as_of), Some(&self.prefix)).await
    }

    /// The set of the records whose value is `value`.
    pub fn set_of(&self, value: &SortValue) -> Option<Vec<u8>> {
        Some([self.prefix.as_slice(), &sort_value_bytes(value)?, &[0]].concat())
    }

    /// A walk of its values in order (`descending` or not), from the value
    /// `from` (included) if given, within the range of dates the filter's
    /// conditions on this index allow.
    pub fn walk(&self, kind: &Kind, filter: &Filter, descending: bool, from: Option<&SortValue>) -> ValueWalk {
        let range = filter.conjuncts().into_iter().filter_map(|c| lookup_for(kind, c));
        let range = joined(range.collect()).into_iter().find_map(|source| match source {
            Source::Lookup(lookup) if lookup.reach == Reach::Dates && lookup.prefix == self.prefix => Some(lookup),
            _ => None,
        });
        let (mut low, mut high) = (self.prefix.clone(), prefix_end(&self.prefix));
        if let Some(range) = range {
            low = range.start;
            if let Some(end) = range.end {
                let end = prefix_end(&end);
                if !end.is_empty() {
                    high = [self.prefix.as_slice(), &end].concat();
                }
            }
        }
        if let Some(from) = from.and_then(sort_value_bytes) {
            let set = [self.prefix.as_slice(), &from, &[0]].concat();
            match descending {
                false => low = low.max(set),
                true => high = high.min(prefix_end(&set)),
            }
        }
        ValueWalk { prefix: self.prefix.clone(), descending, low, high, done: false }
    }
}

/// An ordered index's values, each one's set once, in order (see
/// [`OrderedIndex::walk`]).
pub struct ValueWalk {
    prefix: Vec<u8>,
    descending: bool,
    /// The first key it may visit.
    low: Vec<u8>,
    /// Keys from here on are beyond it.
    high: Vec<u8>,
    done: bool,
}

impl ValueWalk {
    /// The set (index prefix, value and 0) of the next value, whose ids a
    /// walk reads in id order; `None` after the last.
    pub async fn next_set(&mut self, snapshot: &dyn Snapshot) -> StoreResult<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        let found = match self.descending {
            false => snapshot.members(&self.prefix, &self.low, 1).await?,
            true => snapshot.members_before(&self.prefix, &self.high, 1).await?,
        };
        let set = match found.iter().next() {
            Some(key) if key >= self.low.as_slice() && key < self.high.as_slice() => {
                // (Ids hold no 0 byte: the set ends at the key's last.)
                let end = key.iter().rposition(|b| *b == 0).map_or(key.len(), |at| at + 1);
                key[..end].to_vec()
            }
            _ => {
                self.done = true;
                return Ok(None);
            }
        };
        match self.descending {
            false => self.low = prefix_end(&set),
            true => self.high = set.clone(),
        }
        Ok(Some(set))
    }
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
            title: "Économie\0 des  Services".into(),
            labels: [("theme".to_string(), "logistics".to_string())].into(),
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
        let day = |d: &Date| [encode_date(dates::first_day(d)), encode_date(dates::last_day(d))].concat();
        let word = |w: &str| [format!("i/agreements/title#words\0{w}\0").as_bytes()].concat();
        let expected: BTreeSet<Vec<u8>> = [
            set("title", "Économie\x01\x01 des  Services".as_bytes()),
            word("economie"),
            word("des"),
            word("services"),
            set("labels", b"theme\0logistics"),
            set("parties", b"parties/ind"),
            set("parties", b"parties/jpn"),
            set("instrument_type", &(3u32 ^ (1 << 31)).to_be_bytes()),
            set("signature_date", &day(&date(2020, 9, 9))),
            set("entry_into_force_date", &day(&date(2021, 0, 0))),
            set("signatories.party", b"parties/ind"),
            set("signatories.party", b"parties/jpn"),
            set("provisions.category", &(3u32 ^ (1 << 31)).to_be_bytes()),
            set("end.date", &day(&date(2030, 6, 0))),
        ]
        .into();
        // A provision's unset category (0) is no value: it is in no set.
        assert_eq!(entries(&resource::AGREEMENT, &record.encode_to_vec()).unwrap(), expected);
        // A record without values is in each ordered index, under the empty value.
        let unset: BTreeSet<Vec<u8>> =
            ["title", "signature_date", "entry_into_force_date", "end.date"].iter().map(|p| set(p, b"")).collect();
        assert_eq!(entries(&resource::AGREEMENT, &Agreement::default().encode_to_vec()).unwrap(), unset);
    }

    #[test]
    fn every_kinds_index_paths_resolve_and_bad_bytes_are_refused() {
        for kind in resource::KINDS {
            let paths = kind.indexes.len() + kind.ordered.len() + kind.words.len();
            assert_eq!(INDEX_PATHS[kind.collection].len(), paths, "{}", kind.collection);
            assert_eq!(entries(kind, &[]).unwrap().len(), kind.ordered.len(), "{}", kind.collection);
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
        let lookups = |text: &str| -> Vec<Source> {
            let filter = Filter::compile(text, &descriptor).unwrap();
            joined(filter.conjuncts().into_iter().filter_map(|c| lookup_for(&resource::AGREEMENT, c)).collect())
        };
        let year = lookups("signature_date >= 2020-01-01 AND signature_date < 2021-01-01 AND signature_date > 2019");
        let [Source::Lookup(one)] = year.as_slice() else { panic!("{year:?}") };
        let day = |d: Date| encode_date(dates::first_day(&d));
        assert_eq!(one.start, [b"i/agreements/signature_date\0".as_slice(), &day(date(2020, 1, 1))].concat());
        assert_eq!(one.end, Some(day(date(2020, 12, 31)).to_vec()));
        assert_eq!(lookups("signature_date >= 2020 AND entry_into_force_date < 2021").len(), 2, "two indexes");
        let repeated = Lookup { one_value: false, ..one.clone() };
        assert!(repeated.within(one).is_none(), "a path through a repeated field");
    }

    /// A condition finds its index by the fields its path names, nested ones
    /// included, or a map's entry; `:` on a text finds its words (each but
    /// the last a word, the last a word's start); a field without an index
    /// finds none.
    #[test]
    fn a_condition_finds_the_index_of_the_fields_it_names() {
        use prost_reflect::ReflectMessage;
        let descriptor = Agreement::default().descriptor();
        let lookup = |text: &str| {
            let filter = Filter::compile(text, &descriptor).unwrap();
            source_for(&resource::AGREEMENT, filter.conjuncts()[0], 0)
        };
        let one = |text: &str| match lookup(text) {
            Some(Source::Lookup(lookup)) => lookup,
            other => panic!("{text}: {other:?}"),
        };
        let exact = one(r#"parties = "parties/ind""#);
        assert_eq!(exact.prefix, set("parties", b"parties/ind"));
        assert!(exact.is_exact());
        assert_eq!(one(r#"signatories.party = "parties/jpn""#).prefix, set("signatories.party", b"parties/jpn"));
        let dates = one("end.date >= 2030-01-01");
        assert_eq!(dates.prefix, b"i/agreements/end.date\0");
        assert!(!dates.is_exact());
        assert_eq!(one(r#"title = "Reciprocal""#).prefix, set("title", b"Reciprocal"));
        assert_eq!(one(r#"labels.theme = "logistics""#).prefix, set("labels", b"theme\0logistics"));
        assert!(lookup(r#"labels.theme = "logi*""#).is_none(), "a wildcard");
        assert!(lookup(r#"description = "x""#).is_none(), "no index");
        let begun = one(r#"title:"Écon""#);
        assert_eq!((begun.prefix.as_slice(), begun.reach), (&b"i/agreements/title#words\0econ"[..], Reach::WordStart));
        let Some(Source::All(words)) = lookup(r#"title:"supplies and serv""#) else { panic!("three words") };
        assert_eq!(words.len(), 3);
        assert!(matches!(&words[0], Source::Lookup(l) if l.prefix == b"i/agreements/title#words\0supplies\0"));
        assert!(lookup(r#"title:"--""#).is_none(), "no words");
        let Some(Source::Any(branches)) = lookup(r#"title:"economic" OR identifiers.value = "I:33521""#) else {
            panic!("either")
        };
        assert_eq!(branches.len(), 2);
        assert!(lookup(r#"title:"economic" OR description = "x""#).is_none(), "a branch without an index");
    }
}
