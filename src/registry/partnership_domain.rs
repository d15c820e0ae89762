//! Partnership domain rules: at least two parties, a format that fits them, and a
//! status that agrees with the end date.

use crate::error::Violations;
use crate::pb::cooperation::v1::{PartnershipDomain, partnership_domain::Status};
use crate::registry::resource::{Rules, check_format, check_order, normalize_format};

impl Rules for PartnershipDomain {
    fn normalize(&mut self) {
        let parties: Vec<&str> = self.parties.iter().map(String::as_str).collect();
        normalize_format(&mut self.format, &parties);
        if self.status == Status::Unspecified as i32 {
            self.status = if self.end_date.is_some() { Status::Ended } else { Status::Active } as i32;
        }
    }

    fn check(&self, violations: &mut Violations) {
        if self.parties.len() == 1 {
            violations.add("parties", "a partnership needs at least two parties");
        }
        let parties: Vec<&str> = self.parties.iter().map(String::as_str).collect();
        check_format(self.format, &parties, "format", violations);
        check_order(self.since_date.as_ref(), self.end_date.as_ref(), "end_date", "since_date", violations);
        if self.end_date.is_some() && self.status != Status::Ended as i32 {
            violations.add("status", "a partnership with an end_date must have status STATUS_ENDED");
        }
    }
}
