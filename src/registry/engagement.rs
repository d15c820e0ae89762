//! Engagement rules: distinct participants, a format that fits them, an end not
//! before the start, a well-formed CAMEO code.

use crate::error::Violations;
use crate::pb::cooperation::v1::{Engagement, engagement::Status};
use crate::registry::resource::{Rules, check_format, check_order, normalize_format};

impl Rules for Engagement {
    fn normalize(&mut self) {
        let parties: Vec<&str> = self.participants.iter().map(|p| p.party.as_str()).collect();
        normalize_format(&mut self.format, &parties);
        if self.status == Status::Unspecified as i32 {
            self.status = Status::Held as i32;
        }
    }

    fn check(&self, violations: &mut Violations) {
        let mut seen = std::collections::HashSet::new();
        for (i, participant) in self.participants.iter().enumerate() {
            if !participant.party.is_empty() && !seen.insert(participant.party.as_str()) {
                violations.add(
                    format!("participants[{i}].party"),
                    format!("{} takes part more than once", participant.party),
                );
            }
        }
        let parties: Vec<&str> = self.participants.iter().map(|p| p.party.as_str()).collect();
        check_format(self.format, &parties, "format", violations);
        check_order(self.start_date.as_ref(), self.end_date.as_ref(), "end_date", "start_date", violations);
        let code = &self.cameo_code;
        let well_formed = (2..=4).contains(&code.len()) && code.chars().all(|c| c.is_ascii_digit());
        if !code.is_empty() && !well_formed {
            violations.add(
                "cameo_code",
                format!("must be a CAMEO event code of 2 to 4 digits, such as \"057\" (got {code:?})"),
            );
        }
        if !self.parent_engagement.is_empty() && self.parent_engagement == self.name {
            violations.add("parent_engagement", "an engagement cannot be its own parent");
        }
    }
}
