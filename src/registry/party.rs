//! Party rules, and the ISO 3166-1 states every registry starts with.

use crate::error::Violations;
use crate::pb::cooperation::v1::{Party, party};
use crate::registry::resource::{Rules, check_order};

impl Rules for Party {
    fn check(&self, violations: &mut Violations) {
        let code = |field: &str, value: &str, len: usize, digits: bool, violations: &mut Violations| {
            let ok = value.len() == len
                && value.chars().all(|c| if digits { c.is_ascii_digit() } else { c.is_ascii_uppercase() });
            if !value.is_empty() && !ok {
                let what = if digits { "digits" } else { "upper-case letters" };
                violations.add(field, format!("must be {len} {what} (got {value:?})"));
            }
        };
        code("iso_alpha2", &self.iso_alpha2, 2, false, violations);
        code("iso_alpha3", &self.iso_alpha3, 3, false, violations);
        code("iso_numeric", &self.iso_numeric, 3, true, violations);
        let kind = self.kind();
        let has_iso = !(self.iso_alpha2.is_empty() && self.iso_alpha3.is_empty() && self.iso_numeric.is_empty());
        if has_iso && kind != party::Kind::State && kind != party::Kind::Unspecified {
            violations.add("iso_alpha3", "ISO 3166-1 codes are for states (kind KIND_STATE)");
        }
        let groups = matches!(kind, party::Kind::InternationalOrganization | party::Kind::RegionalGrouping);
        if !self.members.is_empty() && !groups {
            violations.add("members", "only international organisations and regional groupings have members");
        }
        let mut seen = std::collections::HashSet::new();
        for (i, member) in self.members.iter().enumerate() {
            if !member.party.is_empty() && !seen.insert(member.party.as_str()) {
                violations.add(format!("members[{i}].party"), format!("{} is a member more than once", member.party));
            }
            if member.party == self.name && !self.name.is_empty() {
                violations.add(format!("members[{i}].party"), "a party cannot be a member of itself");
            }
            let end = format!("members[{i}].end_date");
            check_order(member.start_date.as_ref(), member.end_date.as_ref(), &end, "start_date", violations);
        }
        if !self.parent.is_empty() && kind != party::Kind::PublicBody && kind != party::Kind::Other {
            violations.add("parent", "only public bodies and other actors have a parent party");
        }
        if !self.parent.is_empty() && self.parent == self.name {
            violations.add("parent", "a party cannot be its own parent");
        }
        check_order(
            self.founding_date.as_ref(),
            self.dissolution_date.as_ref(),
            "dissolution_date",
            "founding_date",
            violations,
        );
    }
}

/// Every ISO 3166-1 state as `parties/{alpha-3 in lower case}`, from the
/// maintained `rust_iso3166` tables. CAMEO codes countries by ISO alpha-3.
pub fn iso_states() -> Vec<(String, Party)> {
    rust_iso3166::ALL
        .iter()
        .map(|c| {
            let id = c.alpha3.to_ascii_lowercase();
            let party = Party {
                display_name: c.name.to_string(),
                kind: party::Kind::State as i32,
                iso_alpha2: c.alpha2.to_string(),
                iso_alpha3: c.alpha3.to_string(),
                iso_numeric: format!("{:03}", c.numeric),
                cameo_code: c.alpha3.to_string(),
                ..Default::default()
            };
            (id, party)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_states_are_complete_and_valid() {
        let states = iso_states();
        assert_eq!(states.len(), 249);
        let india = states.iter().find(|(id, _)| id == "ind").unwrap();
        assert_eq!((india.1.display_name.as_str(), india.1.iso_numeric.as_str()), ("India", "356"));
        for (id, party) in &states {
            crate::registry::resource::check_id(id).unwrap();
            let mut v = Violations::new();
            party.check(&mut v);
            assert!(v.is_empty(), "{id}: {v:?}");
        }
    }
}
