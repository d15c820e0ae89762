//! Agreement rules, and its status as of a date (the rule documented on
//! `Agreement` in agreement.proto).

use prost::Message;

use crate::error::Violations;
use crate::pb::cooperation::v1::{Agreement, agreement};
use crate::pb::google::r#type::Date;
use crate::registry::dates;
use crate::registry::resource::{Rules, check_among, check_format, check_order, normalize_format};

impl Rules for Agreement {
    fn normalize(&mut self) {
        let parties: Vec<&str> = self.parties.iter().map(String::as_str).collect();
        normalize_format(&mut self.format, &parties);
    }

    fn check(&self, violations: &mut Violations) {
        if self.parties.len() == 1 {
            violations.add("parties", "an agreement needs at least two parties");
        }
        let parties: Vec<&str> = self.parties.iter().map(String::as_str).collect();
        check_format(self.format, &parties, "format", violations);

        let signatory_parties: Vec<(String, &str)> = self
            .signatories
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("signatories[{i}].party"), s.party.as_str()))
            .collect();
        check_among(&signatory_parties, &self.parties, "agreement's parties", violations);
        for (i, provision) in self.provisions.iter().enumerate() {
            let bound: Vec<(String, &str)> = provision
                .bound_parties
                .iter()
                .enumerate()
                .map(|(j, p)| (format!("provisions[{i}].bound_parties[{j}]"), p.as_str()))
                .collect();
            check_among(&bound, &self.parties, "agreement's parties", violations);
        }

        let signed = self.signature_date.as_ref();
        check_order(
            signed,
            self.provisional_application_date.as_ref(),
            "provisional_application_date",
            "signature_date",
            violations,
        );
        check_order(signed, self.entry_into_force_date.as_ref(), "entry_into_force_date", "signature_date", violations);
        if let Some(end) = &self.end {
            check_order(signed, end.date.as_ref(), "end.date", "signature_date", violations);
            check_order(
                self.entry_into_force_date.as_ref(),
                end.date.as_ref(),
                "end.date",
                "entry_into_force_date",
                violations,
            );
        }
        if let Some(term) = &self.term {
            if term.months > 11 {
                violations.add(
                    "term.months",
                    format!("must be from 0 to 11; put whole years in term.years (got {})", term.months),
                );
            }
            if term.years == 0 && term.months == 0 {
                violations.add("term", "a term needs years or months; leave term unset when there is no fixed term");
            }
            if term.years > 1000 {
                violations.add("term.years", format!("must be at most 1000 (got {})", term.years));
            }
        }
        for (i, relation) in self.relations.iter().enumerate() {
            if !self.name.is_empty() && relation.agreement == self.name {
                violations.add(format!("relations[{i}].agreement"), "an agreement cannot relate to itself");
            }
        }
    }

    fn derive(&mut self, as_of: &Date) {
        self.status = status_as_of(self, as_of) as i32;
    }

    /// The tags of [`StatusInputs`].
    const DERIVED_FROM_FIELDS: &'static [u32] = &[10, 12, 13, 15, 16];

    fn encode_derived(stored: &[u8], as_of: &Date, out: &mut Vec<u8>) -> Result<(), prost::DecodeError> {
        let status = status_as_of(&StatusInputs::decode(stored)?, as_of) as i32;
        // (As prost leaves out a field at its default value.)
        if status != 0 {
            prost::encoding::int32::encode(status_field(), &status, out);
        }
        Ok(())
    }
}

/// The number of `Agreement.status`.
fn status_field() -> u32 {
    static FIELD: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *FIELD.get_or_init(|| {
        use prost_reflect::ReflectMessage;
        Agreement::default().descriptor().get_field_by_name("status").expect("an agreement has a status").number()
    })
}

/// The fields an agreement's status follows from: read from a whole record
/// or from [`StatusInputs`], decoded from a stored one.
pub trait StatusFields {
    fn signature_date(&self) -> Option<&Date>;
    fn provisional_application_date(&self) -> Option<&Date>;
    fn entry_into_force_date(&self) -> Option<&Date>;
    fn term(&self) -> Option<&agreement::Term>;
    fn end(&self) -> Option<&agreement::End>;
}

macro_rules! status_fields {
    ($($type:ty),*) => {$(
        impl $crate::registry::agreement::StatusFields for $type {
            fn signature_date(&self) -> Option<&Date> {
                self.signature_date.as_ref()
            }
            fn provisional_application_date(&self) -> Option<&Date> {
                self.provisional_application_date.as_ref()
            }
            fn entry_into_force_date(&self) -> Option<&Date> {
                self.entry_into_force_date.as_ref()
            }
            fn term(&self) -> Option<&agreement::Term> {
                self.term.as_ref()
            }
            fn end(&self) -> Option<&agreement::End> {
                self.end.as_ref()
            }
        }
    )*};
}

status_fields!(Agreement, StatusInputs);
pub(super) use status_fields;

/// The fields of `Agreement` its status is derived from, under the same tags:
/// decoding a stored agreement into it skips the titles, parties, provisions
/// and the rest (tested against `Agreement` below).
#[derive(Clone, PartialEq, prost::Message)]
struct StatusInputs {
    #[prost(message, optional, tag = "10")]
    signature_date: Option<Date>,
    #[prost(message, optional, tag = "12")]
    provisional_application_date: Option<Date>,
    #[prost(message, optional, tag = "13")]
    entry_into_force_date: Option<Date>,
    #[prost(message, optional, tag = "15")]
    term: Option<agreement::Term>,
    #[prost(message, optional, tag = "16")]
    end: Option<agreement::End>,
}

/// The status of `a` on the day `as_of` (see the rule on `Agreement`).
pub fn status_as_of(a: &impl StatusFields, as_of: &Date) -> agreement::Status {
    use agreement::Status;
    let day = dates::first_day(as_of);
    let reached = |date: Option<&Date>| date.is_some_and(|d| dates::first_day(d) <= day);

    if let Some(end) = a.end()
        && reached(end.date.as_ref())
    {
        return match end.reason() {
            agreement::end::Reason::Expiry => Status::Expired,
            agreement::end::Reason::Superseded => Status::Superseded,
            _ => Status::Terminated,
        };
    }
    if let Some(entry) = a.entry_into_force_date()
        && dates::first_day(entry) <= day
    {
        return match term_end(a, day) {
            Some((end, false)) if day >= end => Status::Expired,
            _ => Status::InForce,
        };
    }
    if reached(a.provisional_application_date()) {
        return Status::ProvisionallyApplied;
    }
    if reached(a.signature_date()) {
        return Status::Signed;
    }
    if a.signature_date().is_some() { Status::NotYetSigned } else { Status::Unspecified }
}

/// The first day after the term that runs on day `day`, and whether the
/// agreement renews by itself then; `None` without an entry into force and a
/// term. An automatically renewing term renews for `renewal_years`, or for the
/// term's own length when that is not given.
pub fn term_end(a: &impl StatusFields, day: i64) -> Option<(i64, bool)> {
    let entry = a.entry_into_force_date()?;
    let term = a.term().filter(|t| t.years > 0 || t.months > 0)?;
    let mut end = dates::add_term(dates::first_day(entry), term.years, term.months);
    if term.renewal() != agreement::term::Renewal::Automatic {
        return Some((end, false));
    }
    let (years, months) = if term.renewal_years > 0 { (term.renewal_years, 0) } else { (term.years, term.months) };
    while end <= day {
        end = dates::add_term(end, years, months);
    }
    Some((end, true))
}

#[cfg(test)]
mod tests {

    use super::*;
    use agreement::Status;

    use crate::registry::dates::date as d;

    /// `encode_derived` reads the same fields under the same tags as `derive`:
    /// each status input set alone, and all of them, with the rest of a full
    /// record around them, give the same status on every day tried.
    #[test]
    fn status_from_stored_bytes_equals_status_from_the_record() {
        let full = Agreement {
            title: "Full".into(),
            parties: vec!["parties/ind".into(), "parties/jpn".into()],
            signature_date: Some(d(2019, 5, 5)),
            provisional_application_date: Some(d(2019, 6, 1)),
            entry_into_force_date: Some(d(2020, 1, 1)),
            term: Some(agreement::Term {
                years: 5,
                renewal: agreement::term::Renewal::Automatic as i32,
                ..Default::default()
            }),
            end: Some(agreement::End {
                date: Some(d(2031, 3, 3)),
                reason: agreement::end::Reason::Withdrawal as i32,
                ..Default::default()
            }),
            description: "around the dates".into(),
            ..Default::default()
        };
        let mut variants = vec![full.clone()];
        for keep in 0..5 {
            let mut only = Agreement { title: "One input".into(), ..Default::default() };
            match keep {
                0 => only.signature_date = full.signature_date,
                1 => only.provisional_application_date = full.provisional_application_date,
                2 => only.entry_into_force_date = full.entry_into_force_date,
                3 => (only.entry_into_force_date, only.term) = (full.entry_into_force_date, full.term.clone()),
                _ => only.end = full.end.clone(),
            }
            variants.push(only);
        }
        for record in variants {
            let bytes = record.encode_to_vec();
            for day in [d(2019, 1, 1), d(2019, 5, 20), d(2019, 7, 1), d(2024, 12, 31), d(2026, 6, 1), d(2032, 1, 1)] {
                let mut decoded = record.clone();
                decoded.derive(&day);
                let mut derived = Vec::new();
                Agreement::encode_derived(&bytes, &day, &mut derived).unwrap();
                assert_eq!(derived, Agreement { status: decoded.status, ..Default::default() }.encode_to_vec());
                let mut only_inputs = Vec::new();
                let delete_time = crate::registry::resource::AGREEMENT.delete_time_field();
                let deleted =
                    crate::registry::reads::read_top_level::<Agreement>(&bytes, delete_time, &mut only_inputs);
                assert!(!deleted.unwrap(), "none of these is deleted");
                let mut from_inputs = Vec::new();
                Agreement::encode_derived(&only_inputs, &day, &mut from_inputs).unwrap();
                assert_eq!(from_inputs, derived, "DERIVED_FROM_FIELDS alone, {record:?} on {day:?}");
            }
        }
    }

    fn ten_year_agreement() -> Agreement {
        Agreement {
            signature_date: Some(d(2020, 9, 9)),
            entry_into_force_date: Some(d(2020, 9, 10)),
            term: Some(agreement::Term { years: 10, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn status_follows_the_dates_at_each_boundary() {
        let a = ten_year_agreement();
        assert_eq!(status_as_of(&a, &d(2020, 9, 8)), Status::NotYetSigned);
        assert_eq!(status_as_of(&a, &d(2020, 9, 9)), Status::Signed);
        assert_eq!(status_as_of(&a, &d(2020, 9, 10)), Status::InForce);
        assert_eq!(status_as_of(&a, &d(2030, 9, 9)), Status::InForce);
        assert_eq!(status_as_of(&a, &d(2030, 9, 10)), Status::Expired);
    }

    #[test]
    fn term_ends_and_renewals() {
        let a = ten_year_agreement();
        let day = |y, m, d| dates::days_from_civil(y, m, d);
        assert_eq!(term_end(&a, day(2025, 1, 1)), Some((day(2030, 9, 10), false)));
        let mut renewing = a.clone();
        renewing.term = Some(agreement::Term {
            years: 10,
            renewal: agreement::term::Renewal::Automatic as i32,
            renewal_years: 5,
            ..Default::default()
        });
        assert_eq!(term_end(&renewing, day(2030, 9, 9)), Some((day(2030, 9, 10), true)));
        assert_eq!(term_end(&renewing, day(2030, 9, 10)), Some((day(2035, 9, 10), true)));
        assert_eq!(term_end(&Agreement::default(), day(2030, 1, 1)), None);
    }

    #[test]
    fn automatic_renewal_ends_and_partial_dates() {
        let mut a = ten_year_agreement();
        a.term.as_mut().unwrap().renewal = agreement::term::Renewal::Automatic as i32;
        assert_eq!(status_as_of(&a, &d(2040, 1, 1)), Status::InForce);
        a.end = Some(agreement::End {
            date: Some(d(2041, 0, 0)),
            reason: agreement::end::Reason::Superseded as i32,
            ..Default::default()
        });
        assert_eq!(status_as_of(&a, &d(2040, 12, 31)), Status::InForce);
        assert_eq!(status_as_of(&a, &d(2041, 1, 1)), Status::Superseded);
        a.end.as_mut().unwrap().reason = agreement::end::Reason::Withdrawal as i32;
        assert_eq!(status_as_of(&a, &d(2041, 1, 1)), Status::Terminated);

        let cepa = Agreement { entry_into_force_date: Some(d(2011, 8, 0)), ..Default::default() };
        assert_eq!(status_as_of(&cepa, &d(2011, 7, 31)), Status::Unspecified);
        assert_eq!(status_as_of(&cepa, &d(2011, 8, 1)), Status::InForce);
        let provisional = Agreement {
            signature_date: Some(d(2019, 0, 0)),
            provisional_application_date: Some(d(2019, 6, 1)),
            ..Default::default()
        };
        assert_eq!(status_as_of(&provisional, &d(2019, 5, 31)), Status::Signed);
        assert_eq!(status_as_of(&provisional, &d(2019, 6, 1)), Status::ProvisionallyApplied);
    }
}
