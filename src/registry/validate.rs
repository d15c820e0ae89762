//! Validation driven by the contract itself: `google.api.field_behavior`
//! (REQUIRED, OUTPUT_ONLY, IDENTIFIER) and `google.api.resource_reference`
//! annotations, enum values, `google.type.Date` fields, labels and size limits,
//! checked by walking any message with prost-reflect. A rule written in the
//! .proto is enforced here without code per field.

use std::collections::HashMap;
use std::sync::LazyLock;

use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind as FieldKind, MapKey, MessageDescriptor, ReflectMessage, Value,
};

use crate::error::{Violations, join_path};
use crate::pb::DESCRIPTOR_POOL;
use crate::registry::dates;
use crate::registry::resource::{self, Kind};

/// Longest string field, in bytes.
pub const MAX_STRING_BYTES: usize = 16 * 1024;
/// Most items in a repeated field.
pub const MAX_REPEATED: usize = 1000;
/// Most labels on a record.
pub const MAX_LABELS: usize = 64;

/// What the annotations say about one field.
pub struct FieldPlan {
    pub field: FieldDescriptor,
    pub required: bool,
    pub output_only: bool,
    pub identifier: bool,
    /// The kind a resource-name string field refers to.
    pub reference: Option<&'static Kind>,
}

const FIELD_BEHAVIOR_REQUIRED: i32 = 2;
const FIELD_BEHAVIOR_OUTPUT_ONLY: i32 = 3;
const FIELD_BEHAVIOR_IDENTIFIER: i32 = 8;

static PLANS: LazyLock<HashMap<String, Vec<FieldPlan>>> = LazyLock::new(|| {
    let behavior = DESCRIPTOR_POOL
        .get_extension_by_name("google.api.field_behavior")
        .expect("field_behavior.proto is in the descriptor set");
    let reference = DESCRIPTOR_POOL
        .get_extension_by_name("google.api.resource_reference")
        .expect("resource.proto is in the descriptor set");
    DESCRIPTOR_POOL
        .all_messages()
        .filter(|m| m.package_name() == "cooperation.v1")
        .map(|message| {
            let plans = message
                .fields()
                .map(|field| {
                    let options = field.options();
                    let behaviors: Vec<i32> = match options.get_extension(&behavior).as_list() {
                        Some(list) => list.iter().filter_map(Value::as_enum_number).collect(),
                        None => Vec::new(),
                    };
                    let reference = options
                        .get_extension(&reference)
                        .as_message()
                        .and_then(|r| r.get_field_by_name("type").and_then(|t| t.as_str().map(str::to_string)))
                        .and_then(|t| resource::kind_of_type(&t));
                    FieldPlan {
                        required: behaviors.contains(&FIELD_BEHAVIOR_REQUIRED),
                        output_only: behaviors.contains(&FIELD_BEHAVIOR_OUTPUT_ONLY),
                        identifier: behaviors.contains(&FIELD_BEHAVIOR_IDENTIFIER),
                        reference,
                        field,
                    }
                })
                .collect();
            (message.full_name().to_string(), plans)
        })
        .collect()
});

/// The annotated fields of a message of ours (none for google.type and others).
pub fn plans(message: &MessageDescriptor) -> &'static [FieldPlan] {
    PLANS.get(message.full_name()).map(Vec::as_slice).unwrap_or(&[])
}

/// The messages of ours with an OUTPUT_ONLY field, at any depth: the only
/// ones [`strip_output_only`] needs to look inside.
static HOLDS_OUTPUT_ONLY: LazyLock<std::collections::HashSet<&'static str>> = LazyLock::new(|| {
    let mut holders = std::collections::HashSet::new();
    loop {
        let before = holders.len();
        for (name, plans) in PLANS.iter() {
            let holds = plans.iter().any(|p| {
                p.output_only || matches!(p.field.kind(), FieldKind::Message(m) if holders.contains(m.full_name()))
            });
            if holds {
                holders.insert(name.as_str());
            }
        }
        if holders.len() == before {
            return holders;
        }
    }
});

/// A resource name found in a reference field, with the path it was found at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub field: String,
    pub name: String,
}

/// The encoded message `bytes` (of type `message`) without its OUTPUT_ONLY
/// fields, at any depth: the server sets those. Works on the wire, copying
/// every other field as it came, so a write does not reflect its whole
/// request to drop them. `None` for bytes that do not parse.
pub fn strip_output_only(mut bytes: &[u8], message: &MessageDescriptor) -> Option<Vec<u8>> {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, encode_varint, skip_field};
    let plans = plans(message);
    let mut out = Vec::with_capacity(bytes.len());
    while !bytes.is_empty() {
        let field_start = bytes;
        let (number, wire_type) = decode_key(&mut bytes).ok()?;
        let plan = plans.iter().find(|p| p.field.number() == number);
        if plan.is_some_and(|p| p.output_only) {
            skip_field(wire_type, number, &mut bytes, DecodeContext::default()).ok()?;
            continue;
        }
        // A message of ours may hold OUTPUT_ONLY fields of its own.
        if let Some(FieldKind::Message(inner)) = plan.map(|p| p.field.kind())
            && wire_type == WireType::LengthDelimited
            && HOLDS_OUTPUT_ONLY.contains(inner.full_name())
        {
            let key = &field_start[..field_start.len() - bytes.len()];
            let len = usize::try_from(decode_varint(&mut bytes).ok()?).ok()?;
            let payload = bytes.get(..len)?;
            bytes = &bytes[len..];
            let stripped = strip_output_only(payload, &inner)?;
            out.extend_from_slice(key);
            encode_varint(stripped.len() as u64, &mut out);
            out.extend_from_slice(&stripped);
            continue;
        }
        skip_field(wire_type, number, &mut bytes, DecodeContext::default()).ok()?;
        out.extend_from_slice(&field_start[..field_start.len() - bytes.len()]);
    }
    Some(out)
}

/// Checks a message against its annotations and the generic rules, adding a
/// violation per bad field (paths relative to `path`) and returning every
/// resource name it refers to.
pub fn check_message(message: &DynamicMessage, path: &str, violations: &mut Violations) -> Vec<Reference> {
    let mut references = Vec::new();
    walk(message, &Path::Root(path), violations, &mut references);
    references
}

/// Where a value sits in the message being checked. Written out only for a
/// violation or a reference: most fields of a valid record need neither, and
/// building every path as a string was a tenth of a create's instructions.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root(&'a str),
    Field(&'a Path<'a>, &'a str),
    Item(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn render(&self) -> String {
        match self {
            Path::Root(root) => root.to_string(),
            Path::Field(parent, name) => join_path(&parent.render(), name),
            Path::Item(parent, i) => format!("{}[{i}]", parent.render()),
        }
    }
}

fn walk(message: &DynamicMessage, path: &Path, violations: &mut Violations, references: &mut Vec<Reference>) {
    for plan in plans(&message.descriptor()) {
        let field = &plan.field;
        if plan.output_only || plan.identifier {
            continue;
        }
        let field_path = Path::Field(path, field.name());
        if !message.has_field(field) {
            if plan.required {
                violations.add(field_path.render(), "is required");
            }
            continue;
        }
        match &*message.get_field(field) {
            Value::List(items) => {
                if items.len() > MAX_REPEATED {
                    violations.add(
                        field_path.render(),
                        format!("has {} items; at most {MAX_REPEATED} are allowed", items.len()),
                    );
                    continue;
                }
                let mut seen = std::collections::HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    let item_path = Path::Item(&field_path, i);
                    if plan.reference.is_some()
                        && let Some(name) = item.as_str()
                        && !seen.insert(name)
                    {
                        violations.add(item_path.render(), format!("{name} is named more than once"));
                        continue;
                    }
                    check_value(plan, item, &item_path, violations, references);
                }
            }
            Value::Map(map) => check_labels(map, &field_path, violations),
            value => check_value(plan, value, &field_path, violations, references),
        }
    }
}

fn check_value(
    plan: &FieldPlan,
    value: &Value,
    path: &Path,
    violations: &mut Violations,
    references: &mut Vec<Reference>,
) {
    match value {
        Value::String(text) => {
            if text.len() > MAX_STRING_BYTES {
                violations.add(
                    path.render(),
                    format!("is {} bytes long; at most {MAX_STRING_BYTES} are allowed", text.len()),
                );
            } else if let Some(kind) = plan.reference {
                match kind.parse_name(text) {
                    Ok(_) => references.push(Reference { field: path.render(), name: text.clone() }),
                    Err(e) => violations.add(path.render(), e),
                }
            }
        }
        Value::EnumNumber(number) => {
            if let FieldKind::Enum(enum_type) = plan.field.kind()
                && enum_type.get_value(*number).is_none()
            {
                violations.add(path.render(), format!("{number} is not a value of {}", enum_type.full_name()));
            }
        }
        Value::Message(inner) if let Some(date) = dates::from_dynamic(inner) => {
            let mut found = Violations::new();
            dates::check(&date, "", &mut found);
            if !found.is_empty() {
                violations.extend(found.prefixed(&path.render()));
            }
        }
        Value::Message(inner) => walk(inner, path, violations, references),
        Value::I32(n) if *n < 0 => violations.add(path.render(), format!("must not be negative (got {n})")),
        _ => {}
    }
}

/// AIP-122-style labels: keys `[a-z][a-z0-9_-]{0,62}`, values `[a-z0-9_-]{0,63}`.
fn check_labels(map: &HashMap<MapKey, Value>, path: &Path, violations: &mut Violations) {
    if map.len() > MAX_LABELS {
        violations.add(path.render(), format!("has {} labels; at most {MAX_LABELS} are allowed", map.len()));
    }
    let label_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    let mut keys: Vec<_> = map.iter().collect();
    keys.sort_by(|a, b| a.0.as_str().cmp(&b.0.as_str()));
    for (key, value) in keys {
        let key = key.as_str().unwrap_or_default();
        let value = value.as_str().unwrap_or_default();
        let key_ok =
            key.len() <= 63 && key.starts_with(|c: char| c.is_ascii_lowercase()) && key.chars().all(label_char);
        if !key_ok {
            violations.add(format!("{}[{key:?}]", path.render()), "label keys must match [a-z][a-z0-9_-]{0,62}");
        }
        if value.len() > 63 || !value.chars().all(label_char) {
            violations.add(format!("{}[{key:?}]", path.render()), "label values must match [a-z0-9_-]{0,63}");
        }
    }
}

#[cfg(test)]
mod tests {
    use prost_reflect::ReflectMessage;

    use super::*;
    use crate::pb::cooperation::v1::{Agreement, agreement};
    use crate::pb::google::r#type::Date;

    fn fields(v: Violations) -> Vec<String> {
        match v.into_result() {
            Ok(()) => Vec::new(),
            Err(crate::error::Error::InvalidArgument { violations }) => {
                violations.into_iter().map(|v| v.field).collect()
            }
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn annotations_drive_the_checks() {
        let mut a = Agreement {
            parties: vec!["parties/ind".into(), "parties/ind".into(), "countries/jpn".into()],
            signature_date: Some(Date { year: 2020, month: 13, day: 1 }),
            signatories: vec![agreement::Signatory { person: "A".into(), party: String::new(), ..Default::default() }],
            instrument_type: 99,
            ..Default::default()
        };
        a.labels.insert("Bad Key".into(), "ok".into());
        let mut v = Violations::new();
        let refs = check_message(&a.transcode_to_dynamic(), "agreement", &mut v);
        assert_eq!(
            fields(v),
            [
                "agreement.title",
                "agreement.instrument_type",
                "agreement.parties[1]",
                "agreement.parties[2]",
                "agreement.signatories[0].party",
                "agreement.signature_date",
                "agreement.labels[\"Bad Key\"]",
            ]
        );
        assert_eq!(refs, [Reference { field: "agreement.parties[0]".into(), name: "parties/ind".into() }]);
    }

    #[test]
    fn output_only_fields_are_stripped_and_every_other_field_kept() {
        use prost::Message;
        let kept = Agreement {
            title: "t".into(),
            parties: vec!["parties/ind".into(), "parties/jpn".into()],
            signatories: vec![agreement::Signatory {
                person: "A".into(),
                party: "parties/ind".into(),
                ..Default::default()
            }],
            signature_date: Some(Date { year: 2020, month: 9, day: 9 }),
            provisions: vec![agreement::Provision { category: 3, reciprocal: true, ..Default::default() }],
            labels: [("source".to_string(), "mea".to_string())].into(),
            ..Default::default()
        };
        let sent = Agreement {
            status: 4,
            etag: "e".into(),
            create_time: Some(prost_types::Timestamp { seconds: 5, nanos: 0 }),
            delete_time: Some(prost_types::Timestamp { seconds: 6, nanos: 0 }),
            ..kept.clone()
        };
        let stripped = strip_output_only(&sent.encode_to_vec(), &sent.descriptor()).unwrap();
        assert_eq!(Agreement::decode(stripped.as_slice()).unwrap(), kept);
        assert_eq!(strip_output_only(&kept.encode_to_vec(), &kept.descriptor()).unwrap(), kept.encode_to_vec());
        assert_eq!(strip_output_only(&[0x0a, 0x05, b'a'], &kept.descriptor()), None, "a cut field");
        // Only messages with an OUTPUT_ONLY field somewhere are looked inside.
        for resource in ["Agreement", "Party", "PartnershipDomain", "Engagement"] {
            assert!(HOLDS_OUTPUT_ONLY.contains(format!("cooperation.v1.{resource}").as_str()), "{resource}");
        }
        assert!(!HOLDS_OUTPUT_ONLY.contains("cooperation.v1.Agreement.Signatory"));
    }
}
