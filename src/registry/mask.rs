//! Update masks (AIP-134, AIP-161): which fields of a patch replace the stored
//! ones. Paths may be snake_case or camelCase, may reach into nested messages
//! (`term.years`), and `*` means every field a client may set.

use prost_reflect::{DynamicMessage, FieldDescriptor, MessageDescriptor, ReflectMessage};

use crate::error::Violations;
use crate::registry::resource::Resource;
use crate::registry::validate;

/// `stored` with the fields named by `paths` taken from `patch`. An empty list
/// means the fields the patch sets (AIP-134's implied mask). Output-only and
/// identifier fields are ignored wherever named. `mask_field` is the request
/// field of the mask, for error paths.
pub fn apply<R: Resource>(stored: &R, patch: &R, paths: &[String], mask_field: &str) -> Result<R, Violations> {
    let patch = patch.transcode_to_dynamic();
    let mut merged = stored.transcode_to_dynamic();
    let descriptor = merged.descriptor();
    let mut violations = Violations::new();

    let mut targets: Vec<Vec<FieldDescriptor>> = Vec::new();
    if paths.is_empty() {
        targets.extend(settable(&descriptor).filter(|f| patch.has_field(f)).map(|f| vec![f]));
    }
    for (i, path) in paths.iter().enumerate() {
        if path == "*" {
            targets.extend(settable(&descriptor).map(|f| vec![f]));
            continue;
        }
        match resolve(&descriptor, path) {
            Ok(Some(fields)) => targets.push(fields),
            Ok(None) => {} // output-only or identifier: ignored
            Err(e) => violations.add(format!("{mask_field}.paths[{i}]"), e),
        }
    }
    if !violations.is_empty() {
        return Err(violations);
    }
    for fields in targets {
        copy_path(&patch, &mut merged, &fields);
    }
    merged.transcode_to::<R>().map_err(|e| {
        let mut v = Violations::new();
        v.add(mask_field, format!("the masked record cannot be built: {e}"));
        v
    })
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

/// Sets the field at the end of `fields` in `target` to its value in `source`
/// (or clears it when `source` does not set it), creating parent messages.
fn copy_path(source: &DynamicMessage, target: &mut DynamicMessage, fields: &[FieldDescriptor]) {
    let (field, rest) = fields.split_first().expect("paths have at least one field");
    if rest.is_empty() {
        if source.has_field(field) {
            target.set_field(field, source.get_field(field).into_owned());
        } else {
            target.clear_field(field);
        }
        return;
    }
    let empty = DynamicMessage::new(match field.kind() {
        prost_reflect::Kind::Message(m) => m,
        _ => unreachable!("resolve only descends into messages"),
    });
    let source_inner = source.get_field(field).as_message().cloned().unwrap_or_else(|| empty.clone());
    if let prost_reflect::Value::Message(target_inner) = target.get_field_mut(field) {
        copy_path(&source_inner, target_inner, rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::cooperation::v1::{Agreement, agreement::Term};

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
