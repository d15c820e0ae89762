//! `order_by` (AIP-132): sort keys over singular fields, ties broken by name,
//! and the cursor that keyset paging resumes after in any order.

use std::cmp::Ordering;

use prost::Message;
use prost_reflect::{DynamicMessage, Kind as FieldKind, Value};

use crate::registry::dates;
use crate::registry::filter::{self, Step};

/// One sort value; unset values sort first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SortValue {
    Missing,
    Int(i128),
    Str(String),
    /// First and last day of a (partial) date: "2019" sorts before "2019-03".
    Period(i64, i64),
}

#[derive(Clone, Debug, Default)]
pub struct OrderBy {
    keys: Vec<(Vec<Step>, bool)>,
}

impl OrderBy {
    /// Parses `field [desc], ...` against a descriptor; empty means by name.
    pub fn parse(text: &str, descriptor: &prost_reflect::MessageDescriptor) -> Result<OrderBy, String> {
        let mut keys = Vec::new();
        if text.trim().is_empty() {
            return Ok(OrderBy { keys });
        }
        for (i, part) in text.split(',').enumerate() {
            let words: Vec<&str> = part.split_whitespace().collect();
            let (path, desc) = match words.as_slice() {
                [path] => (*path, false),
                [path, "asc"] => (*path, false),
                [path, "desc"] => (*path, true),
                _ => {
                    return Err(format!(
                        "key {} ({:?}) must be a field path, optionally followed by \"desc\"",
                        i + 1,
                        part.trim()
                    ));
                }
            };
            let (steps, repeated) =
                filter::resolve_path_names(descriptor, path).map_err(|e| format!("key {}: {e}", i + 1))?;
            let Some(Step::Field(leaf)) = steps.last() else {
                return Err(format!("key {}: {path} goes through a map; order by singular fields only", i + 1));
            };
            if repeated || leaf.is_map() {
                return Err(format!("key {}: {path} is repeated; order by singular fields only", i + 1));
            }
            let sortable = match leaf.kind() {
                FieldKind::Message(m) => matches!(m.full_name(), dates::DATE_MESSAGE | "google.protobuf.Timestamp"),
                FieldKind::Double | FieldKind::Float | FieldKind::Bytes => false,
                _ => true,
            };
            if !sortable {
                return Err(format!("key {}: {path} cannot be ordered by", i + 1));
            }
            keys.push((steps, desc));
        }
        Ok(OrderBy { keys })
    }

    /// How many keys there are besides the name.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Whether this is the default order (by name), which paging can stream.
    pub fn is_by_name(&self) -> bool {
        self.keys.is_empty()
    }

    /// The path of the first key and whether it is descending.
    pub fn first_key(&self) -> Option<(&[Step], bool)> {
        self.keys.first().map(|(steps, desc)| (steps.as_slice(), *desc))
    }

    pub fn sort_key(&self, record: &DynamicMessage) -> Vec<SortValue> {
        self.keys.iter().map(|(steps, _)| value_at(record, steps)).collect()
    }

    /// Compares two records by their keys, then by name.
    pub fn compare(&self, a: (&[SortValue], &str), b: (&[SortValue], &str)) -> Ordering {
        for (i, (_, desc)) in self.keys.iter().enumerate() {
            let ordering = a.0[i].cmp(&b.0[i]);
            let ordering = if *desc { ordering.reverse() } else { ordering };
            if ordering.is_ne() {
                return ordering;
            }
        }
        a.1.cmp(b.1)
    }
}

/// The first `keep` rows of all those offered, in an order, holding at most
/// twice that many at once: a page ordered by a field reads every candidate
/// but keeps a page's worth: holding them all, a page ordered by title would
/// hold every record of a large collection in memory.
pub struct Best<T, F> {
    keep: usize,
    rows: Vec<T>,
    order: F,
}

impl<T, F: Fn(&T, &T) -> Ordering> Best<T, F> {
    pub fn new(keep: usize, order: F) -> Self {
        Best { keep, rows: Vec::new(), order }
    }

    pub fn offer(&mut self, row: T) {
        self.rows.push(row);
        if self.rows.len() >= 2 * self.keep.max(1) {
            self.settle();
        }
    }

    /// The first `keep` rows, in order.
    pub fn into_sorted(mut self) -> Vec<T> {
        self.settle();
        self.rows.sort_by(&self.order);
        self.rows
    }

    /// Drops all but the first `keep` rows, leaving them in no order (each
    /// settling would otherwise sort again the rows kept by the last).
    fn settle(&mut self) {
        if self.rows.len() > self.keep {
            if self.keep > 0 {
                self.rows.select_nth_unstable_by(self.keep - 1, &self.order);
            }
            self.rows.truncate(self.keep);
        }
    }
}

fn value_at(record: &DynamicMessage, steps: &[Step]) -> SortValue {
    let mut message = record;
    for (i, step) in steps.iter().enumerate() {
        let Step::Field(field) = step else { return SortValue::Missing };
        let last = i + 1 == steps.len();
        if !last {
            if !message.has_field(field) {
                return SortValue::Missing;
            }
            // (A field that is set is lent, not copied.)
            match message.get_field(field) {
                std::borrow::Cow::Borrowed(Value::Message(inner)) => message = inner,
                _ => return SortValue::Missing,
            }
            continue;
        }
        let present = message.has_field(field);
        return match &*message.get_field(field) {
            Value::String(s) => SortValue::Str(s.clone()),
            Value::Bool(b) => SortValue::Int(i128::from(*b)),
            Value::I32(n) | Value::EnumNumber(n) => SortValue::Int(i128::from(*n)),
            Value::I64(n) => SortValue::Int(i128::from(*n)),
            Value::U32(n) => SortValue::Int(i128::from(*n)),
            Value::U64(n) => SortValue::Int(i128::from(*n)),
            Value::Message(_) if !present => SortValue::Missing,
            Value::Message(m) if let Some(d) = dates::from_dynamic(m) => {
                SortValue::Period(dates::first_day(&d), dates::last_day(&d))
            }
            Value::Message(m) => match m.transcode_to::<prost_types::Timestamp>() {
                Ok(t) => SortValue::Int(i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)),
                Err(_) => SortValue::Missing,
            },
            _ => SortValue::Missing,
        };
    }
    SortValue::Missing
}

/// Where the previous page ended: its last record's sort values and name.
#[derive(Clone, PartialEq, Message)]
struct StoredCursor {
    #[prost(message, repeated, tag = "1")]
    values: Vec<StoredValue>,
    #[prost(string, tag = "2")]
    name: String,
}

#[derive(Clone, PartialEq, Message)]
struct StoredValue {
    /// 0 missing, 1 int (in `text`, decimal), 2 string, 3 period.
    #[prost(uint32, tag = "1")]
    kind: u32,
    #[prost(string, tag = "2")]
    text: String,
    #[prost(sint64, tag = "3")]
    first: i64,
    #[prost(sint64, tag = "4")]
    last: i64,
}

pub fn encode_cursor(values: &[SortValue], name: &str) -> Vec<u8> {
    let values = values
        .iter()
        .map(|v| match v {
            SortValue::Missing => StoredValue { kind: 0, ..Default::default() },
            SortValue::Int(n) => StoredValue { kind: 1, text: n.to_string(), ..Default::default() },
            SortValue::Str(s) => StoredValue { kind: 2, text: s.clone(), ..Default::default() },
            SortValue::Period(first, last) => StoredValue { kind: 3, first: *first, last: *last, ..Default::default() },
        })
        .collect();
    StoredCursor { values, name: name.to_string() }.encode_to_vec()
}

pub fn decode_cursor(bytes: &[u8], keys: usize) -> Option<(Vec<SortValue>, String)> {
    let cursor = StoredCursor::decode(bytes).ok()?;
    if cursor.values.len() != keys {
        return None;
    }
    let values = cursor
        .values
        .into_iter()
        .map(|v| match v.kind {
            0 => Some(SortValue::Missing),
            1 => v.text.parse().ok().map(SortValue::Int),
            2 => Some(SortValue::Str(v.text)),
            3 => Some(SortValue::Period(v.first, v.last)),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some((values, cursor.name))
}

#[cfg(test)]
mod tests {
    use prost_reflect::ReflectMessage;

    use super::*;
    use crate::pb::cooperation::v1::Agreement;
    use crate::pb::google::r#type::Date;

    fn record(name: &str, year: i32, month: i32, title: &str) -> (Vec<SortValue>, String, DynamicMessage) {
        let a = Agreement {
            name: name.into(),
            title: title.into(),
            signature_date: (year > 0).then_some(Date { year, month, day: 0 }),
            ..Default::default()
        };
        let d = a.transcode_to_dynamic();
        (Vec::new(), name.to_string(), d)
    }

    /// Of any number of rows offered, the first `keep` come out in order,
    /// and no more than twice that many are held at any time.
    #[test]
    fn best_keeps_the_first_rows_and_no_more_than_twice_as_many() {
        let mut best = Best::new(3, |a: &u32, b: &u32| b.cmp(a));
        let mut most_held = 0;
        for i in 0..10_000u32 {
            best.offer(i.wrapping_mul(7919) % 10_000);
            most_held = most_held.max(best.rows.len());
        }
        assert_eq!(best.into_sorted(), [9999, 9998, 9997]);
        assert!(most_held < 6, "held {most_held}");
        let few = Best::new(3, u32::cmp);
        assert!(few.into_sorted().is_empty());
        let mut none = Best::new(0, u32::cmp);
        none.offer(1);
        assert!(none.into_sorted().is_empty(), "keeping none keeps none");
    }

    #[test]
    fn several_keys_desc_and_ties_by_name() {
        let order = OrderBy::parse("signature_date desc, title", &Agreement::default().descriptor()).unwrap();
        let mut rows: Vec<_> = [
            record("agreements/b", 2019, 0, "x"),
            record("agreements/a", 2019, 0, "x"),
            record("agreements/c", 2019, 3, "a"),
            record("agreements/d", 0, 0, "a"),
            record("agreements/e", 2020, 0, "z"),
        ]
        .into_iter()
        .map(|(_, n, d)| (order.sort_key(&d), n))
        .collect();
        rows.sort_by(|a, b| order.compare((&a.0, &a.1), (&b.0, &b.1)));
        let names: Vec<_> = rows.iter().map(|r| r.1.as_str()).collect();
        assert_eq!(names, ["agreements/e", "agreements/c", "agreements/a", "agreements/b", "agreements/d"]);
        let (values, name) = decode_cursor(&encode_cursor(&rows[1].0, &rows[1].1), 2).unwrap();
        assert_eq!((values, name), rows[1].clone());
    }

    #[test]
    fn bad_keys_are_explained() {
        let d = Agreement::default().descriptor();
        assert!(OrderBy::parse("parties", &d).unwrap_err().contains("repeated"));
        assert!(OrderBy::parse("nope", &d).unwrap_err().contains("no field"));
        assert!(OrderBy::parse("title sideways", &d).unwrap_err().contains("desc"));
        assert!(OrderBy::parse("term", &d).unwrap_err().contains("cannot be ordered"));
        assert!(OrderBy::parse("term.years desc, createTime", &d).is_ok());
    }
}
