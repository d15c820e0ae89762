//! Update masks (AIP-134, AIP-161): which fields of a patch replace the stored
//! ones. Paths may be snake_case or camelCase, may reach into nested messages
//! (`term.years`), and `*` means every field a client may set.

use prost_reflect::{FieldDescriptor, MessageDescriptor};

use crate::error::Violations;
use crate::registry::resource::Resource;
use crate::registry::{validate, wire};

/// The stored record (its encoding, as the store holds it) with the fields
/// named by `paths` taken from `patch`. An empty list means the fields the
/// patch sets (AIP-134's implied mask). Output-only and identifier fields are
/// ignored wherever named. `mask_field` is the request field of the mask, for
/// error paths. The fields are moved on the wire: the records are not
/// reflected to be merged.
pub fn apply<R: Resource>(stored: &[u8], patch: &R, paths: &[String], mask_field: &str) -> Result<R, Violations> {
    let descriptor = patch.descriptor();
    let patch = patch.encode_to_vec();
    let mut violations = Violations::new();
    let cannot_build = |e: wire::Malformed| {
        let mut v = Violations::new();
        v.add(mask_field, format!("the masked record cannot be built: {e}"));
        v
    };

    // Each target is the field numbers along a path.
    let mut targets: Vec<Vec<u32>> = Vec::new();
    if paths.is_empty() {
        let mut set = std::collections::BTreeSet::new();
        for field in wire::fields(&patch) {
            set.insert(field.map_err(cannot_build)?.number);
        }
        targets.extend(settable(&descriptor).filter(|f| set.contains(&f.number())).map(|f| vec![f.number()]));
    }
    for (i, path) in paths.iter().enumerate() {
        if path == "*" {
            targets.extend(settable(&descriptor).map(|f| vec![f.number()]));
            continue;
        }
        match resolve(&descriptor, path) {
            Ok(Some(fields)) => targets.push(fields.iter().map(FieldDescriptor::number).collect()),
            Ok(None) => {} // output-only or identifier: ignored
            Err(e) => violations.add(format!("{mask_field}.paths[{i}]"), e),
        }
    }
    if !violations.is_empty() {
        return Err(violations);
    }
    let targets: Vec<&[u32]> = targets.iter().map(Vec::as_slice).collect();
    let mut merged = Vec::new();
    splice(stored, &patch, &targets, &mut merged).map_err(cannot_build)?;
    R::decode(merged.as_slice()).map_err(|e| cannot_build(e.into()))
}

/// Writes `stored`'s encoding to `out` with the field at the end of each
/// target path (field numbers) taken from `patch`'s, or left out where the
/// patch does not set it. A field named whole is replaced whole (a repeated
/// or map field with all its entries); one reached into is spliced the same
/// way, level by level, and is set afterwards even if it was not before. The
/// fields come out of order, which a decode takes as it would in order.
fn splice(stored: &[u8], patch: &[u8], targets: &[&[u32]], out: &mut Vec<u8>) -> Result<(), wire::Malformed> {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let whole: Vec<u32> = targets.iter().filter(|t| t.len() == 1).map(|t| t[0]).collect();
    let mut within: Vec<u32> = targets.iter().filter(|t| t.len() > 1 && !whole.contains(&t[0])).map(|t| t[0]).collect();
    within.sort_unstable();
    within.dedup();
    for field in wire::fields(stored) {
        let field = field?;
        if !whole.contains(&field.number) && !within.contains(&field.number) {
            out.extend_from_slice(field.raw);
        }
    }
    for field in wire::fields(patch) {
        let field = field?;
        if whole.contains(&field.number) {
            out.extend_from_slice(field.raw);
        }
    }
    for number in within {
        // A message field given more than once is the merge of its parts,
        // which is what their payloads one after the other decode to.
        let payload = |bytes: &[u8]| -> Result<Vec<u8>, wire::Malformed> {
            let mut joined = Vec::new();
            for field in wire::fields(bytes) {
                let field = field?;
                match (field.number == number, field.value) {
                    (true, wire::Value::Bytes(part)) => joined.extend_from_slice(part),
                    (true, _) => return Err(wire::MISMATCH),
                    (false, _) => {}
                }
            }
            Ok(joined)
        };
        let rest: Vec<&[u32]> = targets.iter().filter(|t| t.len() > 1 && t[0] == number).map(|t| &t[1..]).collect();
        let mut inner = Vec::new();
        splice(&payload(stored)?, &payload(patch)?, &rest, &mut inner)?;
        encode_key(number, WireType::LengthDelimited, out);
        encode_varint(inner.len() as u64, out);
        out.extend_from_slice(&inner);
    }
    Ok(())
}

/// The top-level fields a client may set.
fn settable(descriptor: &MessageDescriptor) -> impl Iterator<Item = FieldDescriptor> + '_ {
    validate::plans(descriptor).iter().filter(|p| !p.output_only && !p.identifier).map(|p| p.field.clone())
}

/// The fields along a dotted path, `None` when the path ends at a field the
/// server owns, or why the path names no field.
fn resolve(descriptor: &MessageDescriptor, path: &str) -> Result<Option<Vec<FieldDescriptor>>, String> {
    if path.is_empty() {
        return Err("is empty".into());
    }
    let mut message = descriptor.clone();
    let mut fields = Vec::new();
    let segments: Vec<&str> = path.split('.').collect();
    for (i, segment) in segments.iter().enumerate() {
        let field = message
            .get_field_by_name(segment)
            .or_else(|| message.get_field_by_json_name(segment))
            .ok_or_else(|| format!("{path:?}: {} has no field {segment:?}", message.full_name()))?;
        if let Some(plan) = validate::plans(&message).iter().find(|p| p.field == field)
            && (plan.output_only || plan.identifier)
        {
            return Ok(None);
        }
        let last = i + 1 == segments.len();
        if !last {
            match field.kind() {
                prost_reflect::Kind::Message(inner) if !field.is_list() && !field.is_map() => message = inner,
                _ => {
                    return Err(format!(
                        "{path:?}: {segment} is a repeated, map or scalar field; a mask can only reach into single message fields"
                    ));
                }
            }
        }
        fields.push(field);
    }
    Ok(Some(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::cooperation::v1::{Agreement, agreement::Term};

    /// [`super::apply`] on the stored record's encoding, as an update reads it.
    fn apply(stored: &Agreement, patch: &Agreement, paths: &[String], field: &str) -> Result<Agreement, Violations> {
        use prost::Message;
        super::apply(&stored.encode_to_vec(), patch, paths, field)
    }

    fn stored() -> Agreement {
        Agreement {
            name: "agreements/x".into(),
            title: "Old".into(),
            short_name: "OLD".into(),
            term: Some(Term { years: 10, months: 2, ..Default::default() }),
            etag: "7".into(),
            ..Default::default()
        }
    }

    #[test]
    fn named_paths_replace_only_those_fields() {
        let patch = Agreement {
            title: "New".into(),
            short_name: "IGNORED".into(),
            term: Some(Term { years: 5, ..Default::default() }),
            status: 4,
            ..Default::default()
        };
        let paths = ["title", "term.years", "status", "name"].map(String::from);
        let merged = apply(&stored(), &patch, &paths, "update_mask").unwrap();
        assert_eq!(merged.title, "New");
        assert_eq!(merged.short_name, "OLD");
        assert_eq!(merged.term, Some(Term { years: 5, months: 2, ..Default::default() }));
        assert_eq!(merged.status, 0, "output-only fields are ignored");
        assert_eq!(merged.name, "agreements/x");
    }

    #[test]
    fn camel_case_star_and_implied_masks() {
        let patch = Agreement { short_name: "NEW".into(), ..Default::default() };
        let merged = apply(&stored(), &patch, &["shortName".to_string()], "update_mask").unwrap();
        assert_eq!(merged.short_name, "NEW");

        let replaced = apply(&stored(), &patch, &["*".to_string()], "update_mask").unwrap();
        assert_eq!((replaced.title.as_str(), replaced.term), ("", None), "* replaces every settable field");
        assert_eq!(replaced.name, "agreements/x");

        let implied = apply(&stored(), &patch, &[], "update_mask").unwrap();
        assert_eq!((implied.title.as_str(), implied.short_name.as_str()), ("Old", "NEW"));
    }

    /// A repeated or map field named whole is replaced with all its entries,
    /// never added to; a path into a message the record or the patch lacks
    /// sets or clears just that field; naming a message whole wins over a
    /// path into it.
    #[test]
    fn whole_fields_are_replaced_and_paths_into_missing_messages_work() {
        let mut before = stored();
        before.parties = vec!["parties/ind".into(), "parties/jpn".into()];
        before.labels = [("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())].into();
        let mut patch = Agreement { parties: vec!["parties/fra".into()], ..Default::default() };
        patch.labels = [("c".to_string(), "3".to_string())].into();
        let merged = apply(&before, &patch, &["parties".into(), "labels".into()], "update_mask").unwrap();
        assert_eq!(merged.parties, ["parties/fra"]);
        assert_eq!(merged.labels, patch.labels);
        assert_eq!((merged.title.as_str(), merged.term), ("Old", before.term.clone()), "the rest is kept");

        let years = ["term.years".to_string()];
        let set_in_missing = apply(
            &Agreement { term: None, ..stored() },
            &Agreement { term: Some(Term { years: 5, ..Default::default() }), ..Default::default() },
            &years,
            "update_mask",
        )
        .unwrap();
        assert_eq!(set_in_missing.term, Some(Term { years: 5, ..Default::default() }));
        let cleared = apply(&stored(), &Agreement::default(), &years, "update_mask").unwrap();
        assert_eq!(cleared.term, Some(Term { months: 2, ..Default::default() }), "years cleared, months kept");

        let patch = Agreement { term: Some(Term { years: 5, ..Default::default() }), ..Default::default() };
        let whole = apply(&stored(), &patch, &["term.years".into(), "term".into()], "update_mask").unwrap();
        assert_eq!(whole.term, patch.term, "the whole term, months and all");
    }

    #[test]
    fn unknown_paths_are_named() {
        let paths = ["title", "nope", "parties.x", ""].map(String::from);
        let err = apply(&stored(), &Agreement::default(), &paths, "update_mask").unwrap_err();
        let crate::error::Error::InvalidArgument { violations } = err.into_result().unwrap_err() else { panic!() };
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["update_mask.paths[1]", "update_mask.paths[2]", "update_mask.paths[3]"]);
        assert!(violations[0].description.contains("has no field \"nope\""), "{:?}", violations[0]);
    }
}
