//! A dataset file (proto3 JSON of `cooperation.v1.Dataset`) read as a stream,
//! one list at a time and one record at a time: a file of a million records
//! is never held whole, and its first records are sent while the rest is read.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use prost_reflect::{MessageDescriptor, ReflectMessage};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::pb::cooperation::v1::Dataset;

/// The Dataset field a list is in, by its proto name ("partnership_domains").
fn list_field(field: &str) -> Result<prost_reflect::FieldDescriptor, String> {
    Dataset::default().descriptor().get_field_by_name(field).ok_or_else(|| format!("a Dataset has no field {field}"))
}

/// Whether a key of the file's top-level object names `field` (proto3 JSON
/// writes the JSON name, and parsers take the proto name too).
fn names_field(key: &str, field: &prost_reflect::FieldDescriptor) -> bool {
    key == field.json_name() || key == field.name()
}

fn open(path: &Path) -> Result<serde_json::Deserializer<serde_json::de::IoRead<BufReader<File>>>, String> {
    let file = File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(serde_json::Deserializer::from_reader(BufReader::with_capacity(1 << 20, file)))
}

/// Calls `visit` with each record of the list `field` of the dataset file at
/// `path`, in the file's order, until it returns false; the other lists are
/// skipped. An error names its place in the file.
pub fn for_each_record(
    path: &Path,
    field: &str,
    visit: &mut dyn FnMut(prost_reflect::DynamicMessage) -> bool,
) -> Result<(), String> {
    let field = list_field(field)?;
    let prost_reflect::Kind::Message(record) = field.kind() else {
        return Err(format!("the Dataset's {} is not a list of records", field.name()));
    };
    let mut deserializer = open(path)?;
    let mut visitor = Lists { field: &field, each: Each::Record { descriptor: record, visit } };
    (&mut visitor).deserialize(&mut deserializer).map_err(|e| not_a_dataset(path, e))?;
    deserializer.end().map_err(|e| format!("{}: trailing data after the dataset: {e}", path.display()))
}

/// The `name` of every record of every list of the dataset file at `path`.
pub fn record_names(path: &Path) -> Result<HashSet<String>, String> {
    let mut names = HashSet::new();
    for field in ["parties", "partnership_domains", "agreements", "engagements"] {
        let field = list_field(field)?;
        let mut deserializer = open(path)?;
        let mut visitor = Lists { field: &field, each: Each::Name(&mut names) };
        (&mut visitor).deserialize(&mut deserializer).map_err(|e| not_a_dataset(path, e))?;
    }
    Ok(names)
}

fn not_a_dataset(path: &Path, e: serde_json::Error) -> String {
    format!("{}: not a cooperation.v1.Dataset in proto3 JSON: {e}", path.display())
}

/// What is done with each element of the list read.
enum Each<'a> {
    Record { descriptor: MessageDescriptor, visit: &'a mut dyn FnMut(prost_reflect::DynamicMessage) -> bool },
    Name(&'a mut HashSet<String>),
}

/// The dataset's top-level object: the list `field` read element by
/// element, everything else skipped.
struct Lists<'a> {
    field: &'a prost_reflect::FieldDescriptor,
    each: Each<'a>,
}

impl<'de> DeserializeSeed<'de> for &mut Lists<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for &mut Lists<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a cooperation.v1.Dataset object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if names_field(&key, self.field) {
                map.next_value_seed(List(&mut self.each))?;
            } else if Dataset::default().descriptor().fields().any(|field| names_field(&key, &field)) {
                // Another list, or the revision an export states: not read here.
                map.next_value::<IgnoredAny>()?;
            } else {
                return Err(de::Error::custom(format!("a Dataset has no field {key:?}")));
            }
        }
        Ok(())
    }
}

/// One list of records.
struct List<'a, 'b>(&'a mut Each<'b>);

impl<'de> DeserializeSeed<'de> for List<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for List<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        match self.0 {
            Each::Record { descriptor, visit } => {
                while let Some(record) = seq.next_element_seed(descriptor.clone())? {
                    if !visit(record) {
                        // The reader stopped: the rest is not needed.
                        while seq.next_element::<IgnoredAny>()?.is_some() {}
                        break;
                    }
                }
            }
            Each::Name(names) => {
                while let Some(name) = seq.next_element_seed(NameOf)? {
                    names.insert(name);
                }
            }
        }
        Ok(())
    }
}

/// A record's `name`, the rest of it skipped.
struct NameOf;

impl<'de> DeserializeSeed<'de> for NameOf {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for NameOf {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a record")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<String, A::Error> {
        let mut name = String::new();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "name" => name = map.next_value()?,
                _ => _ = map.next_value::<IgnoredAny>()?,
            }
        }
        Ok(name)
    }
}
