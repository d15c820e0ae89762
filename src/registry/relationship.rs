//! The relationship between a set of parties on one day, computed from the
//! records that name all of them (found through the party indexes).

use crate::error::{Error, Result, Violations};
use crate::pb::cooperation::v1::relationship::{
    AgreementSummary, Counts, DomainSummary, EngagementSummary, TermEvent, term_event,
};
use crate::pb::cooperation::v1::{Agreement, Engagement, PartnershipDomain, Relationship, agreement};
use crate::pb::google::r#type::Date;
use crate::registry::filter::Filter;
use crate::registry::{Registry, agreement as agreement_rules, dates, resource};

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

        let mut agreements: Vec<Agreement> = self
            .query(
                &compile(all_named("parties", &query.parties), Agreement::default().descriptor())?,
                &as_of,
                query.deadline,
            )
            .await?;
        agreements.sort_by_key(|a| {
            (date_key(a.signature_date.as_ref().or(a.entry_into_force_date.as_ref())), a.name.clone())
        });
        let today = dates::first_day(&as_of);
        let window_end = dates::add_term(today, 0, window);
        let mut in_force = Vec::new();
        let mut events = Vec::new();
        let mut summaries = Vec::new();
        for a in &agreements {
            let status = a.status();
            let term_end =
                (status == agreement::Status::InForce).then(|| agreement_rules::term_end(a, today)).flatten();
            if status == agreement::Status::InForce {
                in_force.push(a.name.clone());
            }
            if let Some((day, renews)) = term_end
                && day < window_end
            {
                let kind = if renews { term_event::Kind::AutomaticRenewal } else { term_event::Kind::Expiry };
                let notice_months = a.term.as_ref().map(|t| t.notice_months).unwrap_or_default();
                events.push(TermEvent {
                    agreement: a.name.clone(),
                    date: Some(date_of(day)),
                    kind: kind as i32,
                    notice_months,
                });
            }
            let mut categories = Vec::new();
            for provision in &a.provisions {
                if !categories.contains(&provision.category) {
                    categories.push(provision.category);
                }
            }
            summaries.push(AgreementSummary {
                agreement: a.name.clone(),
                title: a.title.clone(),
                short_name: a.short_name.clone(),
                status: a.status,
                signature_date: a.signature_date,
                entry_into_force_date: a.entry_into_force_date,
                term_end_date: term_end.map(|(day, _)| date_of(day)),
                provision_categories: categories,
                partnership_domains: a.partnership_domains.clone(),
            });
        }
        events.sort_by_key(|e| (e.date.as_ref().map(dates::first_day), e.agreement.clone()));

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

        let mut engagements: Vec<Engagement> = self
            .query(
                &compile(all_named("participants.party", &query.parties), Engagement::default().descriptor())?,
                &as_of,
                query.deadline,
            )
            .await?;
        engagements.sort_by_key(|e| (date_key(e.start_date.as_ref()), e.name.clone()));
        let engagements: Vec<EngagementSummary> = engagements
            .into_iter()
            .map(|e| EngagementSummary {
                engagement: e.name,
                title: e.title,
                kind: e.kind,
                status: e.status,
                start_date: e.start_date,
                end_date: e.end_date,
                agreements: e.agreements,
                partnership_domains: e.partnership_domains,
            })
            .collect();

        let counts = Counts {
            agreements: summaries.len() as i32,
            agreements_in_force: in_force.len() as i32,
            upcoming_term_events: events.len() as i32,
            partnership_domains: domains.len() as i32,
            engagements: engagements.len() as i32,
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
