//! Agreement rules, and its status as of a date (the rule documented on
//! `Agreement` in agreement.proto).

use prost::Message;

use crate::error::Violations;
use crate::pb::cooperation::v1::agreement::party_action::Kind as PartyActionKind;
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

        let signatories = self.signatories.iter().map(|s| s.party.as_str());
        check_among_parties(self, signatories, |i| format!("signatories[{i}].party"), violations);
        for (i, provision) in self.provisions.iter().enumerate() {
            let bound = provision.bound_parties.iter().map(String::as_str);
            check_among_parties(self, bound, |j| format!("provisions[{i}].bound_parties[{j}]"), violations);
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
        check_party_actions(self, violations);
    }

    fn derive(&mut self, as_of: &Date) {
        let derived = derived_as_of(self, as_of);
        self.status = derived.status;
        self.parties_status = derived.parties_status;
    }

    /// The tags of [`StatusInputs`].
    const DERIVED_FROM_FIELDS: &'static [u32] = &[8, 10, 12, 13, 15, 16, 30];

    fn encode_derived(stored: &[u8], as_of: &Date, out: &mut Vec<u8>) -> Result<(), prost::DecodeError> {
        derived_as_of(&StatusInputs::decode(stored)?, as_of).encode_raw(out);
        Ok(())
    }
}

/// An agreement holding only what is derived from `a` on `as_of`: its
/// status and each party's.
fn derived_as_of(a: &impl StatusFields, as_of: &Date) -> Agreement {
    let status = status_as_of(a, as_of);
    let parties_status =
        a.parties().iter().map(|party| (party.clone(), party_status_given(a, status, party, as_of) as i32)).collect();
    Agreement { status: status as i32, parties_status, ..Default::default() }
}

/// The kinds of party action that give consent to be bound.
fn is_consent(kind: PartyActionKind) -> bool {
    use PartyActionKind as K;
    matches!(
        kind,
        K::DefinitiveSignature | K::Ratification | K::Acceptance | K::Approval | K::Accession | K::Succession
    )
}

/// The kinds of party action that place a party on its own timeline (see
/// `Agreement.parties_status`); declarations, reservations and objections do not.
fn is_binding_step(kind: PartyActionKind) -> bool {
    use PartyActionKind as K;
    is_consent(kind) || matches!(kind, K::Signature | K::ProvisionalApplication | K::Withdrawal)
}

/// Checks that each of `named` (the `i`th at the field `field(i)`) is one of
/// the agreement's parties.
fn check_among_parties<'a>(
    a: &Agreement,
    named: impl Iterator<Item = &'a str>,
    field: impl Fn(usize) -> String,
    violations: &mut Violations,
) {
    let named: Vec<(String, &str)> = named.enumerate().map(|(i, name)| (field(i), name)).collect();
    check_among(&named, &a.parties, "agreement's parties", violations);
}

/// The rules of `Agreement.PartyAction` that involve more than one field:
/// each action's party among the agreement's, an effective date not before
/// the action, a ratification after the same party's signature, a withdrawal
/// after its consent.
fn check_party_actions(a: &Agreement, violations: &mut Violations) {
    use PartyActionKind as K;
    let acting = a.party_actions.iter().map(|action| action.party.as_str());
    check_among_parties(a, acting, |i| format!("party_actions[{i}].party"), violations);
    let earliest = |party: &str, wanted: &dyn Fn(PartyActionKind) -> bool| {
        a.party_actions
            .iter()
            .filter(|other| other.party == party && wanted(other.kind()))
            .filter_map(|other| other.date.as_ref())
            .min_by_key(|date| dates::first_day(date))
    };
    for (i, action) in a.party_actions.iter().enumerate() {
        let field = |name: &str| format!("party_actions[{i}].{name}");
        check_order(
            action.date.as_ref(),
            action.effective_date.as_ref(),
            &field("effective_date"),
            &field("date"),
            violations,
        );
        match action.kind() {
            K::Ratification => match earliest(&action.party, &|kind| kind == K::Signature) {
                Some(signed) => {
                    check_order(Some(signed), action.date.as_ref(), &field("date"), "the party's signature", violations)
                }
                None => violations.add(
                    field("kind"),
                    format!(
                        "a ratification follows a signature, and {} has none in party_actions; a party that did \
                         not sign accedes (ACCESSION), or accepts or approves (ACCEPTANCE, APPROVAL)",
                        action.party
                    ),
                ),
            },
            K::Withdrawal => match earliest(&action.party, &is_consent) {
                Some(consented) => check_order(
                    Some(consented),
                    action.date.as_ref(),
                    &field("date"),
                    "the party's consent to be bound",
                    violations,
                ),
                None => violations.add(
                    field("kind"),
                    format!(
                        "a withdrawal follows a consent to be bound (ratification, acceptance, approval, \
                         accession, succession or definitive signature), and {} has none in party_actions",
                        action.party
                    ),
                ),
            },
            _ => {}
        }
    }
}

/// The fields an agreement's status follows from: read from a whole record
/// or from [`StatusInputs`], decoded from a stored one.
pub trait StatusFields {
    fn signature_date(&self) -> Option<&Date>;
    fn provisional_application_date(&self) -> Option<&Date>;
    fn entry_into_force_date(&self) -> Option<&Date>;
    fn term(&self) -> Option<&agreement::Term>;
    fn end(&self) -> Option<&agreement::End>;
    fn parties(&self) -> &[String];
    fn party_actions(&self) -> &[agreement::PartyAction];
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
            fn parties(&self) -> &[String] {
                &self.parties
            }
            fn party_actions(&self) -> &[agreement::PartyAction] {
                &self.party_actions
            }
        }
    )*};
}

status_fields!(Agreement, StatusInputs);
pub(super) use status_fields;

/// The fields of `Agreement` its status and its parties' are derived from,
/// under the same tags: decoding a stored agreement into it skips the
/// titles, provisions and the rest (tested against `Agreement` below).
#[derive(Clone, PartialEq, prost::Message)]
struct StatusInputs {
    #[prost(string, repeated, tag = "8")]
    parties: Vec<String>,
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
    #[prost(message, repeated, tag = "30")]
    party_actions: Vec<agreement::PartyAction>,
}

/// The status of `a` for `party` on `as_of`, given `a`'s own status then
/// (the rule on `Agreement.parties_status`).
pub fn party_status_given(
    a: &impl StatusFields,
    overall: agreement::Status,
    party: &str,
    as_of: &Date,
) -> agreement::PartyStatus {
    use PartyActionKind as K;
    use agreement::{PartyStatus as P, Status as S};
    let shared = match overall {
        S::Unspecified => P::Unspecified,
        S::NotYetSigned => P::NotYetSigned,
        S::Signed => P::Signed,
        S::ProvisionallyApplied => P::ProvisionallyApplied,
        S::InForce => P::InForce,
        S::Expired => return P::Expired,
        S::Terminated => return P::Terminated,
        S::Superseded => return P::Superseded,
    };
    let own: Vec<&agreement::PartyAction> =
        a.party_actions().iter().filter(|action| action.party == party && is_binding_step(action.kind())).collect();
    if own.is_empty() {
        return shared;
    }
    let day = dates::first_day(as_of);
    let on = |date: Option<&Date>| date.map(dates::first_day);
    let taken = |action: &&&agreement::PartyAction| on(action.date.as_ref()).is_some_and(|d| d <= day);
    // The effect of a consent or a withdrawal: its effective date, else its date.
    let effect = |action: &agreement::PartyAction| on(action.effective_date.as_ref().or(action.date.as_ref()));
    let latest_withdrawal = own
        .iter()
        .filter(|action| action.kind() == K::Withdrawal)
        .filter_map(|action| effect(action))
        .filter(|effective| *effective <= day)
        .max();
    let after_withdrawal = |date: Option<i64>| match (latest_withdrawal, date) {
        (Some(withdrawn), Some(date)) => date > withdrawn,
        _ => true,
    };
    let latest_consent = own
        .iter()
        .filter(|action| is_consent(action.kind()))
        .filter(taken)
        .filter(|action| after_withdrawal(on(action.date.as_ref())))
        .max_by_key(|action| on(action.date.as_ref()));
    if let Some(consent) = latest_consent {
        let in_effect = effect(consent).is_some_and(|effective| effective <= day);
        return if in_effect && overall == S::InForce { P::InForce } else { P::Ratified };
    }
    if latest_withdrawal.is_some() {
        return P::Withdrawn;
    }
    let has_taken =
        |kind: PartyActionKind| own.iter().filter(|action| action.kind() == kind).any(|action| taken(&action));
    if has_taken(K::ProvisionalApplication) {
        P::ProvisionallyApplied
    } else if has_taken(K::Signature) {
        P::Signed
    } else {
        P::NotYetSigned
    }
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
    use agreement::party_action::Kind;
    use agreement::{PartyAction, PartyStatus, Status};

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
            party_actions: vec![
                action("parties/ind", Kind::Signature, d(2019, 5, 5)),
                PartyAction {
                    effective_date: Some(d(2020, 3, 1)),
                    ..action("parties/ind", Kind::Ratification, d(2019, 9, 1))
                },
                action("parties/ind", Kind::Withdrawal, d(2026, 1, 1)),
            ],
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
                let expected = Agreement {
                    status: decoded.status,
                    parties_status: decoded.parties_status.clone(),
                    ..Default::default()
                };
                assert_eq!(derived, expected.encode_to_vec());
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

    fn action(party: &str, kind: Kind, date: Date) -> PartyAction {
        PartyAction { party: party.into(), kind: kind as i32, date: Some(date), ..Default::default() }
    }

    /// The Paris Agreement's figures for three of its parties, as the UN
    /// Treaty Collection records them: in force from 2016-11-04; the United
    /// States accepted it, withdrew (effective 2020-11-04), accepted again
    /// (effective 2021-02-19) and withdrew again (effective 2026-01-27); Japan
    /// accepted it after it entered into force (effective 2016-12-08); Iran
    /// signed and never consented.
    fn paris() -> Agreement {
        let accepted = |date, effective| PartyAction {
            effective_date: Some(effective),
            ..action("parties/usa", Kind::Acceptance, date)
        };
        let withdrew = |date, effective| PartyAction {
            effective_date: Some(effective),
            ..action("parties/usa", Kind::Withdrawal, date)
        };
        Agreement {
            parties: ["parties/usa", "parties/jpn", "parties/irn", "parties/ind"].map(String::from).to_vec(),
            signature_date: Some(d(2016, 4, 22)),
            entry_into_force_date: Some(d(2016, 11, 4)),
            party_actions: vec![
                action("parties/usa", Kind::Signature, d(2016, 4, 22)),
                accepted(d(2016, 9, 3), d(2016, 11, 4)),
                withdrew(d(2019, 11, 4), d(2020, 11, 4)),
                accepted(d(2021, 1, 20), d(2021, 2, 19)),
                withdrew(d(2025, 1, 27), d(2026, 1, 27)),
                action("parties/jpn", Kind::Signature, d(2016, 4, 22)),
                PartyAction {
                    effective_date: Some(d(2016, 12, 8)),
                    ..action("parties/jpn", Kind::Acceptance, d(2016, 11, 8))
                },
                action("parties/irn", Kind::Signature, d(2016, 4, 22)),
                PartyAction {
                    text: "an interpretative declaration".into(),
                    ..action("parties/irn", Kind::Declaration, d(2016, 4, 22))
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn each_party_s_status_follows_its_own_actions() {
        let a = paris();
        let status = |party: &str, day: Date| {
            let mut derived = a.clone();
            derived.derive(&day);
            PartyStatus::try_from(derived.parties_status[party]).unwrap()
        };
        use PartyStatus as P;
        assert_eq!(status("parties/usa", d(2016, 4, 21)), P::NotYetSigned);
        assert_eq!(status("parties/usa", d(2016, 4, 22)), P::Signed);
        assert_eq!(status("parties/usa", d(2016, 9, 3)), P::Ratified, "accepted, not in force yet");
        assert_eq!(status("parties/usa", d(2016, 11, 4)), P::InForce);
        assert_eq!(status("parties/usa", d(2020, 11, 3)), P::InForce, "notified, not yet effective");
        assert_eq!(status("parties/usa", d(2020, 11, 4)), P::Withdrawn);
        assert_eq!(status("parties/usa", d(2021, 1, 20)), P::Ratified, "accepted again");
        assert_eq!(status("parties/usa", d(2021, 2, 19)), P::InForce);
        assert_eq!(status("parties/usa", d(2026, 1, 26)), P::InForce);
        assert_eq!(status("parties/usa", d(2026, 1, 27)), P::Withdrawn);
        assert_eq!(status("parties/jpn", d(2016, 11, 4)), P::Signed, "in force, not for Japan");
        assert_eq!(status("parties/jpn", d(2016, 11, 8)), P::Ratified);
        assert_eq!(status("parties/jpn", d(2016, 12, 8)), P::InForce);
        assert_eq!(status("parties/irn", d(2025, 1, 1)), P::Signed, "a declaration is not a consent");
        // No actions: the agreement's own status.
        assert_eq!(status("parties/ind", d(2016, 4, 22)), P::Signed);
        assert_eq!(status("parties/ind", d(2025, 1, 1)), P::InForce);
        assert_eq!(status_as_of(&a, &d(2016, 11, 4)), Status::InForce);

        // The agreement's end ends it for every party, withdrawn or not.
        let mut ended = a.clone();
        ended.end = Some(agreement::End {
            date: Some(d(2030, 1, 1)),
            reason: agreement::end::Reason::Superseded as i32,
            ..Default::default()
        });
        ended.derive(&d(2030, 1, 1));
        assert!(ended.parties_status.values().all(|s| *s == P::Superseded as i32), "{:?}", ended.parties_status);

        // A party that consents before the agreement enters into force is
        // in force from that day.
        let mut early = a.clone();
        early.party_actions.push(action("parties/ind", Kind::Ratification, d(2016, 10, 2)));
        early.party_actions.push(action("parties/ind", Kind::Signature, d(2016, 4, 22)));
        let mut on = |day| {
            early.derive(&day);
            PartyStatus::try_from(early.parties_status["parties/ind"]).unwrap()
        };
        assert_eq!(on(d(2016, 10, 2)), P::Ratified);
        assert_eq!(on(d(2016, 11, 3)), P::Ratified);
        assert_eq!(on(d(2016, 11, 4)), P::InForce);
    }

    fn violations_of(a: &Agreement) -> Vec<(String, String)> {
        let mut a = a.clone();
        a.normalize();
        let mut violations = Violations::new();
        a.check(&mut violations);
        match violations.into_result() {
            Ok(()) => Vec::new(),
            Err(crate::error::Error::InvalidArgument { violations }) => {
                violations.into_iter().map(|v| (v.field, v.description)).collect()
            }
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn party_actions_are_checked_against_the_parties_and_each_other() {
        assert_eq!(violations_of(&paris()), vec![], "the Paris figures hold");
        let with = |actions: Vec<PartyAction>| Agreement { party_actions: actions, ..paris() };

        let stranger = with(vec![action("parties/fra", Kind::Signature, d(2016, 4, 22))]);
        let found = violations_of(&stranger);
        assert_eq!(found[0].0, "party_actions[0].party");
        assert!(found[0].1.contains("parties/fra is not one of the agreement's parties"), "{found:?}");

        let unsigned = with(vec![action("parties/ind", Kind::Ratification, d(2016, 10, 2))]);
        let found = violations_of(&unsigned);
        assert_eq!(found[0].0, "party_actions[0].kind");
        assert!(found[0].1.contains("ACCESSION"), "{found:?}");
        let acceded = with(vec![action("parties/ind", Kind::Accession, d(2016, 10, 2))]);
        assert_eq!(violations_of(&acceded), vec![]);

        let early = with(vec![
            action("parties/ind", Kind::Signature, d(2016, 4, 22)),
            action("parties/ind", Kind::Ratification, d(2016, 3, 0)),
        ]);
        let found = violations_of(&early);
        assert_eq!(found[0].0, "party_actions[1].date");
        assert!(found[0].1.contains("before the party's signature"), "{found:?}");

        let unbound = with(vec![
            action("parties/ind", Kind::Signature, d(2016, 4, 22)),
            action("parties/ind", Kind::Withdrawal, d(2020, 1, 1)),
        ]);
        let found = violations_of(&unbound);
        assert_eq!(found[0].0, "party_actions[1].kind");
        assert!(found[0].1.contains("consent to be bound"), "{found:?}");

        let backwards = with(vec![PartyAction {
            effective_date: Some(d(2016, 1, 1)),
            ..action("parties/ind", Kind::Accession, d(2016, 10, 2))
        }]);
        let found = violations_of(&backwards);
        assert_eq!(found[0].0, "party_actions[0].effective_date");
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
