//! What the generic engine needs to know of each resource kind: its collection,
//! its name rules, its common fields, and its own rules (in the kind's module).

use prost_reflect::ReflectMessage;
use prost_types::Timestamp;

use crate::error::Violations;
use crate::pb::cooperation::v1::{Agreement, Engagement, PartnershipDomain, Party};
use crate::pb::google::r#type::Date;

/// A resource kind's names.
#[derive(Debug, PartialEq, Eq)]
pub struct Kind {
    /// The collection in resource names: `agreements`.
    pub collection: &'static str,
    /// The request field that carries the resource, and the `{singular}_id` field.
    pub singular: &'static str,
    /// `google.api.resource` type.
    pub resource_type: &'static str,
    /// First letter of generated ids, so they pass the id rule.
    pub id_prefix: char,
    /// Full protobuf name of the message.
    pub message: &'static str,
    /// Field paths with a secondary index (see `index`), for the planner.
    pub indexes: &'static [&'static str],
    /// Singular field paths with an ordered index: a List ordered by one of
    /// them walks its index (see `index`).
    pub ordered: &'static [&'static str],
    /// Text fields with an index of their words, for `:`.
    pub words: &'static [&'static str],
}

pub const PARTY: Kind = Kind {
    collection: "parties",
    singular: "party",
    resource_type: "cooperationregistry.io/Party",
    id_prefix: 'p',
    message: "cooperation.v1.Party",
    indexes: &["kind", "members.party", "parent", "iso_alpha3", "labels"],
    ordered: &["display_name"],
    words: &["display_name"],
};
pub const AGREEMENT: Kind = Kind {
    collection: "agreements",
    singular: "agreement",
    resource_type: "cooperationregistry.io/Agreement",
    id_prefix: 'a',
    message: "cooperation.v1.Agreement",
    indexes: &[
        "parties",
        "partnership_domains",
        "provisions.category",
        "instrument_type",
        "signatories.party",
        "relations.agreement",
        "identifiers.value",
        "labels",
        "party_actions.party",
    ],
    ordered: &["title", "signature_date", "entry_into_force_date", "end.date"],
    words: &["title"],
};
pub const PARTNERSHIP_DOMAIN: Kind = Kind {
    collection: "partnershipDomains",
    singular: "partnership_domain",
    resource_type: "cooperationregistry.io/PartnershipDomain",
    id_prefix: 'd',
    message: "cooperation.v1.PartnershipDomain",
    indexes: &["parties", "category", "status", "agreements", "labels"],
    ordered: &["title", "since_date"],
    words: &["title"],
};
pub const ENGAGEMENT: Kind = Kind {
    collection: "engagements",
    singular: "engagement",
    resource_type: "cooperationregistry.io/Engagement",
    id_prefix: 'e',
    message: "cooperation.v1.Engagement",
    indexes: &["participants.party", "kind", "agreements", "partnership_domains", "parent_engagement", "labels"],
    ordered: &["title", "start_date"],
    words: &["title"],
};

pub const KINDS: [&Kind; 4] = [&PARTY, &AGREEMENT, &PARTNERSHIP_DOMAIN, &ENGAGEMENT];

/// The kind a `google.api.resource_reference` type names.
pub fn kind_of_type(resource_type: &str) -> Option<&'static Kind> {
    KINDS.into_iter().find(|k| k.resource_type == resource_type)
}

/// The kind whose collection a resource name starts with.
pub fn kind_of_name(name: &str) -> Option<&'static Kind> {
    let collection = name.split('/').next()?;
    KINDS.into_iter().find(|k| k.collection == collection)
}

/// The id rule (docs/api.md): a lower-case letter, then up to 62 lower-case
/// letters, digits or hyphens.
pub fn check_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if first_ok && rest_ok && id.len() <= 63 {
        Ok(())
    } else {
        Err(format!(
            "must match [a-z][a-z0-9-]{{0,62}}: a lower-case letter, then up to 62 lower-case letters, digits or hyphens (got {id:?})"
        ))
    }
}

/// The number of each kind's `delete_time` field, by collection: looked up
/// once, where each read that checks a deletion looked it up by name.
static DELETE_TIME_FIELDS: std::sync::LazyLock<std::collections::HashMap<&'static str, u32>> =
    std::sync::LazyLock::new(|| {
        KINDS
            .iter()
            .map(|kind| {
                let field = kind
                    .descriptor()
                    .get_field_by_name("delete_time")
                    .unwrap_or_else(|| panic!("{} has no delete_time", kind.message));
                (kind.collection, field.number())
            })
            .collect()
    });

impl Kind {
    /// Its message's descriptor (every kind's message is in the pool).
    pub fn descriptor(&self) -> prost_reflect::MessageDescriptor {
        crate::pb::DESCRIPTOR_POOL
            .get_message_by_name(self.message)
            .unwrap_or_else(|| panic!("{} is not in the descriptor pool", self.message))
    }

    /// The number of its message's `delete_time` field.
    pub fn delete_time_field(&self) -> u32 {
        DELETE_TIME_FIELDS[self.collection]
    }

    /// The id of a resource name of this kind, or why the name is not one.
    pub fn parse_name<'a>(&self, name: &'a str) -> Result<&'a str, String> {
        let id = name
            .strip_prefix(self.collection)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| format!("must be a resource name of the form {}/{{id}} (got {name:?})", self.collection))?;
        check_id(id).map_err(|e| format!("the id in {name:?} {e}"))?;
        Ok(id)
    }

    pub fn name_of(&self, id: &str) -> String {
        format!("{}/{id}", self.collection)
    }

    /// A new time-ordered id: the kind's letter and a UUIDv7 in hex.
    pub fn generate_id(&self) -> String {
        format!("{}{}", self.id_prefix, uuid::Uuid::now_v7().simple())
    }
}

/// A resource the generic engine stores: the four record kinds. The common
/// fields come from `resource!`; the kind's own rules from [`Rules`].
pub trait Resource: Rules + ReflectMessage + Default + Clone + Send + Sync + 'static {
    const KIND: &'static Kind;

    fn name(&self) -> &str;
    fn set_name(&mut self, name: String);
    /// The number of the kind's `etag` field.
    fn etag_field() -> u32;
    fn set_etag(&mut self, etag: String);
    fn create_time(&self) -> Option<&Timestamp>;
    fn set_create_time(&mut self, time: Option<Timestamp>);
    fn set_update_time(&mut self, time: Option<Timestamp>);
    fn delete_time(&self) -> Option<&Timestamp>;
    fn set_delete_time(&mut self, time: Option<Timestamp>);
}

/// A kind's own rules, beyond what the proto annotations say (those are checked
/// generically by `validate`).
pub trait Rules {
    /// Fills optional fields whose value follows from others (format from the
    /// parties, a default status), before validation.
    fn normalize(&mut self) {}

    /// Rules across fields; paths are relative to the resource.
    fn check(&self, _violations: &mut Violations) {}

    /// Sets output-only fields derived on read, as of `as_of`.
    fn derive(&mut self, _as_of: &Date) {}

    /// The top-level fields `derive` reads: `encode_derived` gives the same
    /// answer from just these fields of a stored record as from all of it.
    const DERIVED_FROM_FIELDS: &'static [u32] = &[];

    /// Appends to `out` the fields `derive` sets, encoded, read from the
    /// stored record's bytes: appended to those bytes they give the record as
    /// `derive` leaves it (a later occurrence of a field replaces an earlier
    /// one), without decoding the rest or building a record.
    fn encode_derived(_stored: &[u8], _as_of: &Date, _out: &mut Vec<u8>) -> Result<(), prost::DecodeError> {
        Ok(())
    }
}

macro_rules! resource {
    ($type:ty, $kind:expr) => {
        impl Resource for $type {
            const KIND: &'static Kind = &$kind;
            fn name(&self) -> &str {
                &self.name
            }
            fn set_name(&mut self, name: String) {
                self.name = name;
            }
            fn etag_field() -> u32 {
                static FIELD: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
                *FIELD.get_or_init(|| {
                    Self::default().descriptor().get_field_by_name("etag").expect("every resource has an etag").number()
                })
            }
            fn set_etag(&mut self, etag: String) {
                self.etag = etag;
            }
            fn create_time(&self) -> Option<&Timestamp> {
                self.create_time.as_ref()
            }
            fn set_create_time(&mut self, time: Option<Timestamp>) {
                self.create_time = time;
            }
            fn set_update_time(&mut self, time: Option<Timestamp>) {
                self.update_time = time;
            }
            fn delete_time(&self) -> Option<&Timestamp> {
                self.delete_time.as_ref()
            }
            fn set_delete_time(&mut self, time: Option<Timestamp>) {
                self.delete_time = time;
            }
        }
    };
}

resource!(Party, PARTY);
resource!(Agreement, AGREEMENT);
resource!(PartnershipDomain, PARTNERSHIP_DOMAIN);
resource!(Engagement, ENGAGEMENT);

/// The format that `count` distinct parties imply.
pub fn format_for(count: usize) -> crate::pb::cooperation::v1::Format {
    use crate::pb::cooperation::v1::Format;
    match count {
        0 => Format::Unspecified,
        1 => Format::Unilateral,
        2 => Format::Bilateral,
        3 => Format::Trilateral,
        _ => Format::Multilateral,
    }
}

/// Sets an unspecified format from the number of distinct parties.
pub fn normalize_format(format: &mut i32, parties: &[&str]) {
    if *format == 0 {
        *format = format_for(distinct(parties)) as i32;
    }
}

/// Checks a given format against the number of distinct parties.
pub fn check_format(format: i32, parties: &[&str], field: &str, violations: &mut Violations) {
    use crate::pb::cooperation::v1::Format;
    let count = distinct(parties);
    let implied = format_for(count);
    let Ok(given) = Format::try_from(format) else { return };
    let fits = given == implied || (given == Format::Multilateral && count == 3) || count == 0;
    if !fits {
        violations.add(
            field,
            format!(
                "{} does not fit {count} distinct parties (that is {})",
                given.as_str_name(),
                implied.as_str_name()
            ),
        );
    }
}

fn distinct(parties: &[&str]) -> usize {
    let mut seen: Vec<&str> = parties.to_vec();
    seen.sort_unstable();
    seen.dedup();
    seen.len()
}

/// Checks that every name in `names` is one of `allowed` (e.g. a signatory's
/// party among the agreement's parties).
pub fn check_among(names: &[(String, &str)], allowed: &[String], what: &str, violations: &mut Violations) {
    for (field, name) in names {
        if !name.is_empty() && !allowed.iter().any(|a| a == name) {
            violations.add(field.clone(), format!("{name} is not one of the {what}"));
        }
    }
}

/// Checks that `end` is not before `start`, comparing the periods they name.
pub fn check_order(
    start: Option<&Date>,
    end: Option<&Date>,
    end_field: &str,
    start_field: &str,
    violations: &mut Violations,
) {
    if let (Some(s), Some(e)) = (start, end) {
        if crate::registry::dates::last_day(e) < crate::registry::dates::first_day(s) {
            violations.add(
                end_field,
                format!(
                    "{} is before {start_field} {}",
                    crate::registry::dates::display(e),
                    crate::registry::dates::display(s)
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_knows_its_delete_time_field() {
        for kind in KINDS {
            let message = kind.descriptor();
            assert_eq!(message.get_field(kind.delete_time_field()).unwrap().name(), "delete_time", "{}", kind.message);
        }
    }

    #[test]
    fn ids_follow_the_rule() {
        assert!(check_id("ind").is_ok());
        assert!(check_id("india-japan-rpss-2020").is_ok());
        assert!(check_id(&"a".repeat(63)).is_ok());
        for bad in ["", "Ind", "1abc", "a_b", "a b", &"a".repeat(64), "é"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        let generated = AGREEMENT.generate_id();
        assert!(check_id(&generated).is_ok(), "{generated}");
    }

    #[test]
    fn names_are_parsed_per_kind() {
        assert_eq!(PARTY.parse_name("parties/ind"), Ok("ind"));
        assert!(PARTY.parse_name("agreements/ind").is_err());
        assert!(PARTY.parse_name("parties/").is_err());
        assert!(PARTY.parse_name("parties/ind/x").is_err());
        assert_eq!(kind_of_name("partnershipDomains/x"), Some(&PARTNERSHIP_DOMAIN));
    }
}
