//! Validation driven by the contract itself: `google.api.field_behavior`
//! (REQUIRED, OUTPUT_ONLY, IDENTIFIER) and `google.api.resource_reference`
//! annotations, enum values, `google.type.Date` fields, labels and size limits,
//! checked by walking any message's encoding with its descriptor. A rule written in the
//! .proto is enforced here without code per field.

use std::collections::HashMap;
use std::sync::LazyLock;

use prost::Message;
use prost_reflect::{FieldDescriptor, Kind as FieldKind, MessageDescriptor, Value};

use crate::error::Violations;
use crate::pb::DESCRIPTOR_POOL;
use crate::pb::google::r#type::Date;
use crate::registry::resource::{self, Kind};
use crate::registry::{dates, wire};

/// Longest string field, in bytes.
pub const MAX_STRING_BYTES: usize = 16 * 1024;
/// Most items in a repeated field.
pub const MAX_REPEATED: usize = 1000;
/// Most party actions on an agreement: a convention of some 190 parties
/// records several actions of each (signature, consent, declarations,
/// reservations, objections).
pub const MAX_PARTY_ACTIONS: usize = 5000;

/// Most items `field` may hold.
fn max_items(field: &FieldDescriptor) -> usize {
    match field.full_name() {
        "cooperation.v1.Agreement.party_actions" => MAX_PARTY_ACTIONS,
        _ => MAX_REPEATED,
    }
}
/// Most labels on a record.
pub const MAX_LABELS: usize = 64;

/// What the annotations say about one field, with the facts about it a walk
/// of every write asks for, looked up once.
pub struct FieldPlan {
    pub field: FieldDescriptor,
    pub required: bool,
    pub output_only: bool,
    pub identifier: bool,
    /// The kind a resource-name string field refers to.
    pub reference: Option<&'static Kind>,
    shape: wire::Shape,
}

const FIELD_BEHAVIOR_REQUIRED: i32 = 2;
const FIELD_BEHAVIOR_OUTPUT_ONLY: i32 = 3;
const FIELD_BEHAVIOR_IDENTIFIER: i32 = 8;

type Plans = HashMap<String, Vec<FieldPlan>, foldhash::fast::RandomState>;

static PLANS: LazyLock<Plans> = LazyLock::new(|| {
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
                        shape: wire::Shape::of(&field),
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
                p.output_only || matches!(&p.shape.kind, FieldKind::Message(m) if holders.contains(m.full_name()))
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
/// request to drop them.
pub fn strip_output_only(bytes: &[u8], message: &MessageDescriptor) -> Result<Vec<u8>, wire::Malformed> {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let plans = plans(message);
    let mut out = Vec::with_capacity(bytes.len());
    for field in wire::fields(bytes) {
        let field = field?;
        let plan = plans.iter().find(|p| p.shape.number == field.number);
        match (plan.map(|p| (p.output_only, &p.shape.kind)), field.value) {
            (Some((true, _)), _) => {}
            // A message of ours may hold OUTPUT_ONLY fields of its own.
            (Some((false, FieldKind::Message(inner))), wire::Value::Bytes(payload))
                if HOLDS_OUTPUT_ONLY.contains(inner.full_name()) =>
            {
                let stripped = strip_output_only(payload, inner)?;
                encode_key(field.number, WireType::LengthDelimited, &mut out);
                encode_varint(stripped.len() as u64, &mut out);
                out.extend_from_slice(&stripped);
            }
            _ => out.extend_from_slice(field.raw),
        }
    }
    Ok(out)
}

/// Checks an encoded message (of type `message`) against its annotations and
/// the generic rules, adding a violation per bad field (paths relative to
/// `path`, fields in the order the .proto declares them) and returning every
/// resource name it refers to. Reads the encoding as it is: a record is not
/// built, nor reflected, to be checked.
pub fn check_encoded(
    bytes: &[u8],
    message: &MessageDescriptor,
    path: &str,
    violations: &mut Violations,
) -> Result<Vec<Reference>, wire::Malformed> {
    let mut references = Vec::new();
    walk(bytes, message, &Path::Root(path), violations, &mut references)?;
    Ok(references)
}

/// Where a value sits in the message being checked. Written out only for a
/// violation or a reference: most fields of a valid record need neither, and
/// building every path as a string would cost a tenth of a create's instructions.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root(&'a str),
    Field(&'a Path<'a>, &'a str),
    Item(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn render(&self) -> String {
        let mut out = String::with_capacity(48);
        self.render_into(&mut out);
        out
    }

    /// Writes the path into one buffer (a reference's path is written for
    /// every reference a record makes, valid or not).
    fn render_into(&self, out: &mut String) {
        match self {
            Path::Root(root) => out.push_str(root),
            Path::Field(parent, name) => {
                parent.render_into(out);
                if !out.is_empty() && !name.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
            }
            Path::Item(parent, i) => {
                use std::fmt::Write;
                parent.render_into(out);
                let _ = write!(out, "[{i}]");
            }
        }
    }
}

fn walk(
    bytes: &[u8],
    message: &MessageDescriptor,
    path: &Path,
    violations: &mut Violations,
    references: &mut Vec<Reference>,
) -> Result<(), wire::Malformed> {
    let plans = plans(message);
    // Each value with the index of its field's plan, sorted by plan (a stable
    // sort: a repeated field's items stay in their order).
    let mut found: Vec<(usize, wire::Value)> = Vec::new();
    for field in wire::fields(bytes) {
        let field = field?;
        if let Some(i) = plans.iter().position(|p| p.shape.number == field.number) {
            found.push((i, field.value));
        }
    }
    found.sort_by_key(|(i, _)| *i);
    let mut rest = found.as_slice();
    for (i, plan) in plans.iter().enumerate() {
        let count = rest.iter().take_while(|(j, _)| *j == i).count();
        let (values, after) = rest.split_at(count);
        rest = after;
        if plan.output_only || plan.identifier {
            continue;
        }
        let field_path = Path::Field(path, plan.field.name());
        if plan.shape.map {
            match values.is_empty() {
                true if plan.required => violations.add(field_path.render(), "is required"),
                true => {}
                false => check_labels(values, &field_path, violations)?,
            }
            continue;
        }
        if plan.shape.list {
            let mut items = Vec::with_capacity(values.len());
            for (_, value) in values {
                plan.shape.items(*value, &mut |item| {
                    items.push(item);
                    Ok(())
                })?;
            }
            if items.is_empty() {
                if plan.required {
                    violations.add(field_path.render(), "is required");
                }
                continue;
            }
            let most = max_items(&plan.field);
            if items.len() > most {
                violations.add(field_path.render(), format!("has {} items; at most {most} are allowed", items.len()));
                continue;
            }
            let mut seen = std::collections::HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let item_path = Path::Item(&field_path, i);
                if plan.reference.is_some()
                    && let wire::Value::Bytes(name) = item
                    && !seen.insert(*name)
                {
                    let name = String::from_utf8_lossy(name);
                    violations.add(item_path.render(), format!("{name} is named more than once"));
                    continue;
                }
                check_value(plan, *item, &item_path, violations, references)?;
            }
            continue;
        }
        // A field without presence that holds its default reads as not set.
        match values.last() {
            Some((_, value)) if plan.shape.sets(value) => {
                check_value(plan, *value, &field_path, violations, references)?
            }
            _ if plan.required => violations.add(field_path.render(), "is required"),
            _ => {}
        }
    }
    Ok(())
}

fn check_value(
    plan: &FieldPlan,
    value: wire::Value,
    path: &Path,
    violations: &mut Violations,
    references: &mut Vec<Reference>,
) -> Result<(), wire::Malformed> {
    match (&plan.shape.kind, value) {
        (FieldKind::String, value) => {
            let text = value.text()?;
            if text.len() > MAX_STRING_BYTES {
                violations.add(
                    path.render(),
                    format!("is {} bytes long; at most {MAX_STRING_BYTES} are allowed", text.len()),
                );
            } else if let Some(kind) = plan.reference {
                match kind.parse_name(text) {
                    Ok(_) => references.push(Reference { field: path.render(), name: text.to_string() }),
                    Err(e) => violations.add(path.render(), e),
                }
            }
        }
        (FieldKind::Enum(enum_type), wire::Value::Varint(number)) => {
            let number = number as i32;
            if enum_type.get_value(number).is_none() {
                violations.add(path.render(), format!("{number} is not a value of {}", enum_type.full_name()));
            }
        }
        (FieldKind::Message(inner), wire::Value::Bytes(bytes)) if inner.full_name() == dates::DATE_MESSAGE => {
            let date = Date::decode(bytes)?;
            let mut found = Violations::new();
            dates::check(&date, "", &mut found);
            if !found.is_empty() {
                violations.extend(found.prefixed(&path.render()));
            }
        }
        (FieldKind::Message(inner), wire::Value::Bytes(bytes)) => walk(bytes, inner, path, violations, references)?,
        (FieldKind::Int32 | FieldKind::Sint32 | FieldKind::Sfixed32, value) => {
            let n = match (&plan.shape.kind, value) {
                (FieldKind::Int32, wire::Value::Varint(n)) => n as i32,
                (FieldKind::Sint32, wire::Value::Varint(n)) => ((n >> 1) as i32) ^ -((n & 1) as i32),
                (FieldKind::Sfixed32, wire::Value::Fixed32(n)) => n as i32,
                _ => return Err(wire::MISMATCH),
            };
            if n < 0 {
                violations.add(path.render(), format!("must not be negative (got {n})"));
            }
        }
        (FieldKind::Enum(_) | FieldKind::Message(_), _) => return Err(wire::MISMATCH),
        _ => {}
    }
    Ok(())
}

/// AIP-122-style labels: keys `[a-z][a-z0-9_-]{0,62}`, values `[a-z0-9_-]{0,63}`.
/// `entries` are the map's entries on the wire; a key given twice keeps its last value.
fn check_labels(
    entries: &[(usize, wire::Value)],
    path: &Path,
    violations: &mut Violations,
) -> Result<(), wire::Malformed> {
    let mut map = std::collections::BTreeMap::new();
    for (_, entry) in entries {
        let wire::Value::Bytes(entry) = entry else { return Err(wire::MISMATCH) };
        let (mut key, mut value) = ("", "");
        for field in wire::fields(entry) {
            let field = field?;
            match field.number {
                1 => key = field.value.text()?,
                2 => value = field.value.text()?,
                _ => {}
            }
        }
        map.insert(key, value);
    }
    if map.len() > MAX_LABELS {
        violations.add(path.render(), format!("has {} labels; at most {MAX_LABELS} are allowed", map.len()));
    }
    let label_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    for (key, value) in map {
        let key_ok =
            key.len() <= 63 && key.starts_with(|c: char| c.is_ascii_lowercase()) && key.chars().all(label_char);
        if !key_ok {
            violations.add(format!("{}[{key:?}]", path.render()), "label keys must match [a-z][a-z0-9_-]{0,62}");
        }
        if value.len() > 63 || !value.chars().all(label_char) {
            violations.add(format!("{}[{key:?}]", path.render()), "label values must match [a-z0-9_-]{0,63}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use prost::Message;
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
        let refs = check_encoded(&a.encode_to_vec(), &a.descriptor(), "agreement", &mut v).unwrap();
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

    /// A repeated field holds at most MAX_REPEATED items; an agreement's
    /// party actions, MAX_PARTY_ACTIONS.
    #[test]
    fn repeated_fields_are_bounded() {
        let action = agreement::PartyAction {
            party: "parties/ind".into(),
            kind: agreement::party_action::Kind::Declaration as i32,
            date: Some(Date { year: 2016, month: 4, day: 22 }),
            ..Default::default()
        };
        let provision = agreement::Provision { category: 3, ..Default::default() };
        let violations_of = |provisions: usize, actions: usize| {
            let a = Agreement {
                title: "t".into(),
                parties: vec!["parties/ind".into(), "parties/jpn".into()],
                provisions: vec![provision.clone(); provisions],
                party_actions: vec![action.clone(); actions],
                ..Default::default()
            };
            let mut v = Violations::new();
            check_encoded(&a.encode_to_vec(), &a.descriptor(), "agreement", &mut v).unwrap();
            match v.into_result() {
                Ok(()) => Vec::new(),
                Err(crate::error::Error::InvalidArgument { violations }) => {
                    violations.into_iter().map(|v| (v.field, v.description)).collect()
                }
                Err(other) => panic!("{other}"),
            }
        };
        assert_eq!(violations_of(MAX_REPEATED, MAX_PARTY_ACTIONS), vec![]);
        assert_eq!(
            violations_of(MAX_REPEATED + 1, MAX_PARTY_ACTIONS + 1),
            vec![
                ("agreement.provisions".to_string(), "has 1001 items; at most 1000 are allowed".to_string()),
                ("agreement.party_actions".to_string(), "has 5001 items; at most 5000 are allowed".to_string()),
            ]
        );
    }

    /// The checks read the encoding as a decode would: a default sent for a
    /// field without presence is no value, a label key sent twice keeps its
    /// last value, and bytes that do not parse are refused rather than half
    /// checked (packed runs: `wire`'s tests).
    #[test]
    fn the_encoding_reads_as_a_decode_would() {
        use prost::encoding::{WireType, encode_key, encode_varint};
        const TITLE: u32 = 2;
        const LABELS: u32 = 25;
        let valid = Agreement {
            title: "t".into(),
            instrument_type: 1,
            parties: vec!["parties/ind".into()],
            ..Default::default()
        };
        let check = |bytes: &[u8]| {
            let mut v = Violations::new();
            let refs = check_encoded(bytes, &valid.descriptor(), "agreement", &mut v).map(|r| r.len());
            (refs.map_err(|e| e.to_string()), fields(v))
        };
        assert_eq!(check(&valid.encode_to_vec()), (Ok(1), vec![]));

        let mut empty_title = Agreement { title: String::new(), ..valid.clone() }.encode_to_vec();
        encode_key(TITLE, WireType::LengthDelimited, &mut empty_title);
        encode_varint(0, &mut empty_title);
        assert_eq!(check(&empty_title), (Ok(1), vec!["agreement.title".to_string()]));

        let mut labels = valid.encode_to_vec();
        for value in ["Not Valid", "valid"] {
            let entry = [&[0x0a, 4][..], b"kind", &[0x12, value.len() as u8], value.as_bytes()].concat();
            encode_key(LABELS, WireType::LengthDelimited, &mut labels);
            encode_varint(entry.len() as u64, &mut labels);
            labels.extend_from_slice(&entry);
        }
        assert_eq!(check(&labels), (Ok(1), vec![]), "the second value of `kind` is the one kept");

        let bytes = valid.encode_to_vec();
        assert!(check(&bytes[..bytes.len() - 1]).0.is_err(), "a cut record");
    }

    #[test]
    fn output_only_fields_are_stripped_and_every_other_field_kept() {
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
        assert!(strip_output_only(&[0x0a, 0x05, b'a'], &kept.descriptor()).is_err(), "a cut field");
        // Only messages with an OUTPUT_ONLY field somewhere are looked inside.
        for resource in ["Agreement", "Party", "PartnershipDomain", "Engagement"] {
            assert!(HOLDS_OUTPUT_ONLY.contains(format!("cooperation.v1.{resource}").as_str()), "{resource}");
        }
        assert!(!HOLDS_OUTPUT_ONLY.contains("cooperation.v1.Agreement.Signatory"));
    }
}
