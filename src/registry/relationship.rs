//! The relationship between a set of parties on one day, computed from the
//! records that name all of them (found through the party indexes).

use crate::error::{Error, Result, Violations};
use crate::pb::cooperation::v1::relationship::{
    AgreementSummary, Counts, DomainSummary, EngagementSummary, TermEvent, term_event,
};
use crate::pb::cooperation::v1::{Agreement, Engagement, PartnershipDomain, Relationship, agreement};
use crate::pb::google::r#type::Date;
use crate::registry::filter::Filter;
use crate::registry::lists::Scope;
use crate::registry::{Registry, agreement as agreement_rules, dates, index, resource};
use prost::Message;

pub const DEFAULT_WINDOW_MONTHS: i32 = 12;
pub const MAX_WINDOW_MONTHS: i32 = 1200;
/// Items each list of a relationship holds unless asked otherwise: the
/// relationship of one party with a large registry names tens of
/// thousands of agreements, and an answer that holds them all outgrows
/// what clients take by default (4 MiB).
pub const DEFAULT_SECTION_ITEMS: i32 = 100;
pub const MAX_SECTION_ITEMS: i32 = 1000;

/// What GetRelationship asks.
#[derive(Clone, Debug, Default)]
pub struct RelationshipQuery {
    pub parties: Vec<String>,
    pub as_of: Option<Date>,
    pub window_months: i32,
    /// Most items in each list (0: DEFAULT_SECTION_ITEMS).
    pub max_section_items: i32,
    /// When the caller stops waiting: the record scans stop then.
    pub deadline: Option<std::time::Instant>,
}

fn date_of(day: i64) -> Date {
    let (year, month, day) = dates::civil_from_days(day);
    Date { year, month: month as i32, day: day as i32 }
}

/// A filter that every one of `names` appears at `path` (names are checked
/// resource names, so quoting them is safe).
fn all_named(path: &str, names: &[String]) -> String {
    names.iter().map(|n| format!("{path} = \"{n}\"")).collect::<Vec<_>>().join(" AND ")
}

/// What GetRelationship reads of every agreement it counts, under
/// `Agreement`'s tags: the rest is decoded only for those it shows.
#[derive(Clone, PartialEq, prost::Message)]
struct AgreementOutline {
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
    #[prost(message, optional, tag = "29")]
    delete_time: Option<prost_types::Timestamp>,
}

agreement_rules::status_fields!(AgreementOutline);

/// What GetRelationship reads of every engagement it counts, under
/// `Engagement`'s tags.
#[derive(Clone, PartialEq, prost::Message)]
struct EngagementOutline {
    #[prost(message, repeated, tag = "5")]
    participants: Vec<ParticipantOutline>,
    #[prost(message, optional, tag = "6")]
    start_date: Option<Date>,
    #[prost(message, optional, tag = "21")]
    delete_time: Option<prost_types::Timestamp>,
}

/// `Engagement.Participant`'s party.
#[derive(Clone, PartialEq, prost::Message)]
struct ParticipantOutline {
    #[prost(string, tag = "1")]
    party: String,
}

/// An agreement as GetRelationship counts it.
struct Counted {
    /// Where it falls in the answer: dated first, by signature (else entry into force).
    order: (bool, i64),
    name: String,
    status: agreement::Status,
    term_end: Option<(i64, bool)>,
    notice_months: i32,
    /// Decoded whole if the answer shows it.
    stored: bytes::Bytes,
}

/// The first `most` items.
fn first<T>(mut items: Vec<T>, most: usize) -> Vec<T> {
    items.truncate(most);
    items
}

/// Sort key of an optional date: dated first, by their first day.
fn date_key(date: Option<&Date>) -> (bool, i64) {
    match date {
        Some(d) => (false, dates::first_day(d)),
        None => (true, 0),
    }
}

impl Registry {
    pub async fn relationship(&self, query: &RelationshipQuery) -> Result<Relationship> {
        let mut violations = Violations::new();
        if query.parties.is_empty() {
            violations.add("parties", "is required: name at least one party");
        }
        for (i, name) in query.parties.iter().enumerate() {
            let field = format!("parties[{i}]");
            if let Err(e) = resource::PARTY.parse_name(name) {
                violations.add(field, e);
            } else if query.parties[..i].contains(name) {
                violations.add(field, format!("{name} is named more than once"));
            } else if self.get::<crate::pb::cooperation::v1::Party>(name, None).await.is_err() {
                violations.add(field, format!("{name} does not exist"));
            }
        }
        let window = match query.window_months {
            0 => DEFAULT_WINDOW_MONTHS,
            n if (1..=MAX_WINDOW_MONTHS).contains(&n) => n,
            n => {
                violations.add(
                    "window_months",
                    format!("must be from 1 to {MAX_WINDOW_MONTHS}, or 0 for {DEFAULT_WINDOW_MONTHS} (got {n})"),
                );
                DEFAULT_WINDOW_MONTHS
            }
        };
        let section_items = match query.max_section_items {
            0 => DEFAULT_SECTION_ITEMS,
            n if (1..=MAX_SECTION_ITEMS).contains(&n) => n,
            n => {
                violations.add(
                    "max_section_items",
                    format!("must be from 1 to {MAX_SECTION_ITEMS}, or 0 for {DEFAULT_SECTION_ITEMS} (got {n})"),
                );
                DEFAULT_SECTION_ITEMS
            }
        } as usize;
        let as_of = super::as_of_day(query.as_of.as_ref(), &mut violations);
        violations.into_result()?;
        let compile =
            |text: String, descriptor| Filter::compile(&text, &descriptor).map_err(|e| Error::internal(e.to_string()));
        use prost_reflect::ReflectMessage;

        let snapshot = self.store.snapshot().await?;
        let agreements_filter = compile(all_named("parties", &query.parties), Agreement::default().descriptor())?;
        let candidates = index::candidates(&*snapshot, &resource::AGREEMENT, &agreements_filter, &as_of).await?;
        let today = dates::first_day(&as_of);
        let window_end = dates::add_term(today, 0, window);
        // Every agreement is counted from its outline; only those the answer
        // shows are decoded whole.
        let mut counted: Vec<Counted> = Vec::new();
        let scope = Scope::whole(&*snapshot, candidates.as_ref());
        self.scan_stored::<Agreement>(scope, query.deadline, |name, entry| {
            let outline = AgreementOutline::decode(&entry.value[..]).map_err(Error::internal)?;
            if outline.delete_time.is_some() || !query.parties.iter().all(|party| outline.parties.contains(party)) {
                return Ok(true);
            }
            let status = agreement_rules::status_as_of(&outline, &as_of);
            let term_end =
                (status == agreement::Status::InForce).then(|| agreement_rules::term_end(&outline, today)).flatten();
            counted.push(Counted {
                order: date_key(outline.signature_date.as_ref().or(outline.entry_into_force_date.as_ref())),
                name: String::from_utf8_lossy(name).into_owned(),
                status,
                term_end,
                notice_months: outline.term.as_ref().map(|t| t.notice_months).unwrap_or_default(),
                stored: entry.value,
            });
            Ok(true)
        })
        .await?;
        counted.sort_by(|a, b| (a.order, &a.name).cmp(&(b.order, &b.name)));
        let mut in_force = Vec::new();
        let mut events = Vec::new();
        for a in &counted {
            if a.status == agreement::Status::InForce {
                in_force.push(a.name.clone());
            }
            if let Some((day, renews)) = a.term_end
                && day < window_end
            {
                let kind = if renews { term_event::Kind::AutomaticRenewal } else { term_event::Kind::Expiry };
                events.push(TermEvent {
                    agreement: a.name.clone(),
                    date: Some(date_of(day)),
                    kind: kind as i32,
                    notice_months: a.notice_months,
                });
            }
        }
        events.sort_by_key(|e| (e.date.as_ref().map(dates::first_day), e.agreement.clone()));
        let mut summaries = Vec::new();
        for a in counted.iter().take(section_items) {
            let whole = Agreement::decode(&a.stored[..]).map_err(Error::internal)?;
            let mut categories = Vec::new();
            for provision in &whole.provisions {
                if !categories.contains(&provision.category) {
                    categories.push(provision.category);
                }
            }
            summaries.push(AgreementSummary {
                agreement: a.name.clone(),
                title: whole.title,
                short_name: whole.short_name,
                status: a.status as i32,
                signature_date: whole.signature_date,
                entry_into_force_date: whole.entry_into_force_date,
                term_end_date: a.term_end.map(|(day, _)| date_of(day)),
                provision_categories: categories,
                partnership_domains: whole.partnership_domains,
            });
        }

        let domains: Vec<PartnershipDomain> = self
            .query(
                &compile(all_named("parties", &query.parties), PartnershipDomain::default().descriptor())?,
                &as_of,
                query.deadline,
            )
            .await?;
        let domains: Vec<DomainSummary> = domains
            .into_iter()
            .map(|d| DomainSummary {
                partnership_domain: d.name,
                title: d.title,
                category: d.category,
                status: d.status,
                since_date: d.since_date,
                agreements: d.agreements,
            })
            .collect();

        // Engagements likewise: each one's outline, the shown ones whole.
        let engagements_filter =
            compile(all_named("participants.party", &query.parties), Engagement::default().descriptor())?;
        let candidates = index::candidates(&*snapshot, &resource::ENGAGEMENT, &engagements_filter, &as_of).await?;
        let mut timeline: Vec<((bool, i64), String, bytes::Bytes)> = Vec::new();
        let scope = Scope::whole(&*snapshot, candidates.as_ref());
        self.scan_stored::<Engagement>(scope, query.deadline, |name, entry| {
            let outline = EngagementOutline::decode(&entry.value[..]).map_err(Error::internal)?;
            let takes_part = |party: &String| outline.participants.iter().any(|p| p.party == *party);
            if outline.delete_time.is_none() && query.parties.iter().all(takes_part) {
                timeline.push((
                    date_key(outline.start_date.as_ref()),
                    String::from_utf8_lossy(name).into_owned(),
                    entry.value,
                ));
            }
            Ok(true)
        })
        .await?;
        timeline.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let engagement_count = timeline.len();
        let mut engagements = Vec::new();
        for (_, name, stored) in timeline.into_iter().take(section_items) {
            let mut e = Engagement::decode(&stored[..]).map_err(Error::internal)?;
            self.present(&mut e, 0, &as_of);
            engagements.push(EngagementSummary {
                engagement: name,
                title: e.title,
                kind: e.kind,
                status: e.status,
                start_date: e.start_date,
                end_date: e.end_date,
                agreements: e.agreements,
                partnership_domains: e.partnership_domains,
            });
        }

        let counts = Counts {
            agreements: counted.len() as i32,
            agreements_in_force: in_force.len() as i32,
            upcoming_term_events: events.len() as i32,
            partnership_domains: domains.len() as i32,
            engagements: engagement_count as i32,
        };
        Ok(Relationship {
            parties: query.parties.clone(),
            as_of: Some(as_of),
            window_months: window,
            agreements: first(summaries, section_items),
            agreements_in_force: first(in_force, section_items),
            upcoming_term_events: first(events, section_items),
            partnership_domains: first(domains, section_items),
            engagements: first(engagements, section_items),
            counts: Some(counts),
        })
    }
}
