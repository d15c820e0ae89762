//! The relationship between a set of parties on one day. When the party
//! indexes find few records that name all the parties, those records are
//! read; otherwise the parties' outline sets are: a member for each
//! agreement naming a party and each engagement it takes part in, holding
//! what the answer derives from the record, so that only the records the
//! answer shows are read (a party of a large registry is named by tens of
//! thousands).

use crate::error::{Error, Result, Violations};
use crate::pb::cooperation::v1::relationship::{
    AgreementSummary, Counts, DomainSummary, EngagementSummary, TermEvent, term_event,
};
use crate::pb::cooperation::v1::{Agreement, Engagement, PartnershipDomain, Relationship, agreement};
use crate::pb::google::r#type::Date;
use crate::registry::filter::Filter;
use crate::registry::lists::Scope;
use crate::registry::{Registry, agreement as agreement_rules, check_deadline, dates, index, resource};
use crate::store::{Membership, Snapshot, for_each_member};
use prost::Message;
use std::collections::BTreeSet;

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
/// `Agreement`'s tags: the rest is decoded only for those it shows. Its
/// outline members hold it without its name and parties.
#[derive(Clone, PartialEq, prost::Message)]
struct AgreementOutline {
    #[prost(string, tag = "1")]
    name: String,
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
    #[prost(message, repeated, tag = "30")]
    party_actions: Vec<agreement::PartyAction>,
    /// In an outline member only, in place of `party_actions`: the record has
    /// party actions, so it is read to count it (a member of a multilateral
    /// agreement holding every party's actions, in every party's set, would
    /// grow with the square of its parties).
    #[prost(bool, tag = "100000")]
    has_party_actions: bool,
}

agreement_rules::status_fields!(AgreementOutline);

/// What GetRelationship reads of every engagement it counts, under
/// `Engagement`'s tags.
#[derive(Clone, PartialEq, prost::Message)]
struct EngagementOutline {
    #[prost(string, tag = "1")]
    name: String,
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
    /// In force as a whole and for every asked party.
    in_force_between: bool,
    term_end: Option<(i64, bool)>,
    notice_months: i32,
    /// Decoded whole if the answer shows it (read then when not yet).
    stored: Option<bytes::Bytes>,
}

impl Counted {
    /// `outline` holds the record's party actions, if it has any.
    fn of(
        name: String,
        outline: &AgreementOutline,
        parties: &[String],
        as_of: &Date,
        stored: Option<bytes::Bytes>,
    ) -> Counted {
        let status = agreement_rules::status_as_of(outline, as_of);
        // (Without party actions, each party shares the agreement's status.)
        let in_force_between = status == agreement::Status::InForce
            && (outline.party_actions.is_empty()
                || parties.iter().all(|party| {
                    agreement_rules::party_status_given(outline, status, party, as_of)
                        == agreement::PartyStatus::InForce
                }));
        let today = dates::first_day(as_of);
        let term_end = in_force_between.then(|| agreement_rules::term_end(outline, today)).flatten();
        Counted {
            order: date_key(outline.signature_date.as_ref().or(outline.entry_into_force_date.as_ref())),
            name,
            status,
            in_force_between,
            term_end,
            notice_months: outline.term.as_ref().map(|t| t.notice_months).unwrap_or_default(),
            stored,
        }
    }
}

/// The outline set of each party's agreements.
const AGREEMENT_OUTLINES: &str = "i/agreements/parties#outline\0";
/// The outline set of each party's engagements (as a participant).
const ENGAGEMENT_OUTLINES: &str = "i/engagements/participants.party#outline\0";

/// The outline set under `prefix` of `party`.
fn outline_set(prefix: &str, party: &str) -> Vec<u8> {
    let mut set = prefix.as_bytes().to_vec();
    index::escape(party, &mut set);
    set.push(0);
    set
}

/// An outline member: the record's id, a 0, then what it holds. Ids are
/// time-ordered, so a new record's member goes at the end of its sets (in
/// the answer's order, dates first, nearly every write would split a chunk).
fn outline_member(id: &str, held: &[u8]) -> Vec<u8> {
    [id.as_bytes(), &[0], held].concat()
}

/// The id and what an outline member holds.
fn read_member(member: &[u8]) -> Result<(&str, &[u8])> {
    let corrupt = || Error::internal("an outline member is corrupt");
    let end = member.iter().position(|b| *b == 0).ok_or_else(corrupt)?;
    let id = std::str::from_utf8(&member[..end]).map_err(|_| corrupt())?;
    Ok((id, &member[end + 1..]))
}

/// A place in an answer's order as 9 bytes: dated or not, then the first day.
fn encode_place(place: (bool, i64)) -> [u8; 9] {
    let mut bytes = [0; 9];
    bytes[0] = place.0 as u8;
    bytes[1..].copy_from_slice(&((place.1 as u64) ^ (1 << 63)).to_be_bytes());
    bytes
}

fn decode_place(bytes: &[u8]) -> Result<(bool, i64)> {
    let day: [u8; 8] = bytes
        .get(1..9)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::internal("an outline member is corrupt"))?;
    Ok((bytes[0] != 0, (u64::from_be_bytes(day) ^ (1 << 63)) as i64))
}

/// The id in `name`, checked or not: the memberships of a record that
/// fails validation are computed but never written.
fn id_in<'n>(kind: &resource::Kind, name: &'n str) -> &'n str {
    name.strip_prefix(kind.collection).and_then(|rest| rest.strip_prefix('/')).unwrap_or(name)
}

/// The outline memberships of a record of `kind` (none for parties and
/// domains): one in the outline set of each party an agreement names or an
/// engagement has as a participant. A deleted record stays in them, marked,
/// as it stays in the other index sets.
pub(super) fn outline_memberships(kind: &resource::Kind, record: &[u8]) -> Result<BTreeSet<Membership>> {
    let mut memberships = BTreeSet::new();
    if kind.collection == resource::AGREEMENT.collection {
        let mut outline = AgreementOutline::decode(record).map_err(Error::internal)?;
        let parties = std::mem::take(&mut outline.parties);
        let name = std::mem::take(&mut outline.name);
        outline.has_party_actions = !std::mem::take(&mut outline.party_actions).is_empty();
        let id = id_in(kind, &name);
        let member = outline_member(id, &outline.encode_to_vec());
        for party in parties {
            memberships.insert((outline_set(AGREEMENT_OUTLINES, &party), member.clone()));
        }
    } else if kind.collection == resource::ENGAGEMENT.collection {
        let outline = EngagementOutline::decode(record).map_err(Error::internal)?;
        let id = id_in(kind, &outline.name);
        let held =
            [&[u8::from(outline.delete_time.is_some())][..], &encode_place(date_key(outline.start_date.as_ref()))];
        let member = outline_member(id, &held.concat());
        for participant in &outline.participants {
            memberships.insert((outline_set(ENGAGEMENT_OUTLINES, &participant.party), member.clone()));
        }
    }
    Ok(memberships)
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
        let today = dates::first_day(&as_of);
        let window_end = dates::add_term(today, 0, window);
        let mut counted = self.counted_agreements(&*snapshot, &query.parties, &as_of, query.deadline).await?;
        counted.sort_by(|a, b| (a.order, &a.name).cmp(&(b.order, &b.name)));
        read_shown(&*snapshot, counted.iter_mut().take(section_items).map(|a| (a.name.as_str(), &mut a.stored)))
            .await?;
        // Counted whole, kept to the first items (a party's lists run to
        // tens of thousands).
        let mut in_force = Vec::new();
        let mut in_force_count = 0usize;
        let mut upcoming: Vec<(i64, &Counted)> = Vec::new();
        for a in &counted {
            if a.in_force_between {
                in_force_count += 1;
                if in_force.len() < section_items {
                    in_force.push(a.name.clone());
                }
            }
            if let Some((day, _)) = a.term_end
                && day < window_end
            {
                upcoming.push((day, a));
            }
        }
        upcoming.sort_by(|(day_a, a), (day_b, b)| (day_a, &a.name).cmp(&(day_b, &b.name)));
        let upcoming_count = upcoming.len();
        let events: Vec<TermEvent> = upcoming
            .into_iter()
            .take(section_items)
            .map(|(day, a)| {
                let renews = a.term_end.is_some_and(|(_, renews)| renews);
                let kind = if renews { term_event::Kind::AutomaticRenewal } else { term_event::Kind::Expiry };
                TermEvent {
                    agreement: a.name.clone(),
                    date: Some(date_of(day)),
                    kind: kind as i32,
                    notice_months: a.notice_months,
                }
            })
            .collect();
        let mut summaries = Vec::new();
        for a in counted.iter().take(section_items) {
            let stored = a.stored.as_deref().unwrap_or_default();
            let whole = Agreement::decode(stored).map_err(Error::internal)?;
            let parties_status = query
                .parties
                .iter()
                .map(|party| {
                    let status = agreement_rules::party_status_given(&whole, a.status, party, &as_of);
                    (party.clone(), status as i32)
                })
                .collect();
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
                parties_status,
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
        let mut timeline = self.timed_engagements(&*snapshot, &query.parties, &as_of, query.deadline).await?;
        timeline.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let engagement_count = timeline.len();
        let mut engagements = Vec::new();
        let shown = timeline.iter_mut().take(section_items).map(|(_, name, stored)| (name.as_str(), stored));
        read_shown(&*snapshot, shown).await?;
        for (_, name, stored) in timeline.into_iter().take(section_items) {
            let mut e = Engagement::decode(stored.as_deref().unwrap_or_default()).map_err(Error::internal)?;
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
            agreements_in_force: in_force_count as i32,
            upcoming_term_events: upcoming_count as i32,
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

/// Reads, in one call, the records of the items found from their outlines
/// alone that the answer needs whole (those it shows, those with party
/// actions).
async fn read_shown<'a>(
    snapshot: &dyn Snapshot,
    shown: impl Iterator<Item = (&'a str, &'a mut Option<bytes::Bytes>)>,
) -> Result<()> {
    let unread: Vec<(&str, &mut Option<bytes::Bytes>)> = shown.filter(|(_, stored)| stored.is_none()).collect();
    let keys: Vec<Vec<u8>> = unread.iter().map(|(name, _)| super::keys::record_key(name)).collect();
    let read = snapshot.get_many(&keys.iter().map(Vec::as_slice).collect::<Vec<_>>()).await?;
    for ((name, stored), entry) in unread.into_iter().zip(read) {
        let entry = entry.ok_or_else(|| Error::internal(format!("{name} is outlined but not stored")))?;
        *stored = Some(entry.value);
    }
    Ok(())
}

/// What an engagement's place in the timeline is, its name, and its record
/// when it was read to find it.
type Timed = ((bool, i64), String, Option<bytes::Bytes>);

/// How often a walk of outlines checks the call's deadline.
const DEADLINE_EVERY: usize = 4096;

/// Records of several parties read one by one rather than through their
/// outline sets: up to this many, the records cost less than reading every
/// named party's outline set whole.
const MOST_READ: usize = 1000;

/// The members every one of `lists` holds, each list sorted.
fn common_members(mut lists: Vec<Vec<Vec<u8>>>) -> Vec<Vec<u8>> {
    lists.sort_by_key(Vec::len);
    let mut lists = lists.into_iter();
    let mut common = lists.next().unwrap_or_default();
    for list in lists {
        let mut others = list.iter().peekable();
        common.retain(|member| {
            while others.next_if(|other| *other < member).is_some() {}
            others.peek().is_some_and(|other| *other == member)
        });
    }
    common
}

impl Registry {
    /// The ids of the `kind` records that name all of `parties` at `path`,
    /// if the party indexes find at most `MOST_READ` of them.
    async fn few_named(
        &self,
        snapshot: &dyn Snapshot,
        kind: &resource::Kind,
        path: &str,
        parties: &[String],
        as_of: &Date,
    ) -> Result<Option<index::Candidates>> {
        if parties.len() < 2 {
            return Ok(None);
        }
        let filter = Filter::compile(&all_named(path, parties), &kind.descriptor())
            .map_err(|e| Error::internal(e.to_string()))?;
        Ok(match index::candidates(snapshot, kind, &filter, as_of).await? {
            Some(index::Candidates::Ids(ids)) if ids.len() <= MOST_READ => Some(index::Candidates::Ids(ids)),
            _ => None,
        })
    }

    /// The members that the outline sets under `prefix` of every one of
    /// `parties` hold: a record's member is the same in each of its parties'
    /// sets, so these are the records that name them all, in id order.
    async fn outline_members(
        &self,
        snapshot: &dyn Snapshot,
        prefix: &str,
        parties: &[String],
        deadline: Option<std::time::Instant>,
    ) -> Result<Vec<Vec<u8>>> {
        let mut lists = Vec::with_capacity(parties.len());
        for party in parties {
            let set = outline_set(prefix, party);
            let mut members = Vec::new();
            for_each_member(snapshot, &set, b"", |item| {
                members.push(item[set.len()..].to_vec());
                if members.len() % DEADLINE_EVERY == 0 {
                    check_deadline(deadline, || "the call's deadline passed while its records were read".into())?;
                }
                Ok::<_, Error>(true)
            })
            .await?;
            lists.push(members);
        }
        Ok(common_members(lists))
    }

    /// The agreements naming all of `parties`, each counted from its outline:
    /// read from their records when the party indexes find few, else from
    /// the parties' outline sets alone.
    async fn counted_agreements(
        &self,
        snapshot: &dyn Snapshot,
        parties: &[String],
        as_of: &Date,
        deadline: Option<std::time::Instant>,
    ) -> Result<Vec<Counted>> {
        match self.few_named(snapshot, &resource::AGREEMENT, "parties", parties, as_of).await? {
            Some(few) => self.agreements_read(snapshot, Some(&few), parties, as_of, deadline).await,
            None => self.agreements_outlined(snapshot, parties, as_of, deadline).await,
        }
    }

    /// The agreements among `candidates` (all without) naming all of
    /// `parties`, from their records.
    async fn agreements_read(
        &self,
        snapshot: &dyn Snapshot,
        candidates: Option<&index::Candidates>,
        parties: &[String],
        as_of: &Date,
        deadline: Option<std::time::Instant>,
    ) -> Result<Vec<Counted>> {
        let mut counted = Vec::new();
        self.scan_stored::<Agreement>(Scope::whole(snapshot, candidates), deadline, |name, entry| {
            let outline = AgreementOutline::decode(&entry.value[..]).map_err(Error::internal)?;
            if outline.delete_time.is_none() && parties.iter().all(|party| outline.parties.contains(party)) {
                let name = String::from_utf8_lossy(name).into_owned();
                counted.push(Counted::of(name, &outline, parties, as_of, Some(entry.value)));
            }
            Ok(true)
        })
        .await?;
        Ok(counted)
    }

    /// The agreements naming all of `parties`, from their outline sets alone.
    async fn agreements_outlined(
        &self,
        snapshot: &dyn Snapshot,
        parties: &[String],
        as_of: &Date,
        deadline: Option<std::time::Instant>,
    ) -> Result<Vec<Counted>> {
        let mut counted = Vec::new();
        let mut with_actions: Vec<(String, Option<bytes::Bytes>)> = Vec::new();
        for member in self.outline_members(snapshot, AGREEMENT_OUTLINES, parties, deadline).await? {
            let (id, held) = read_member(&member)?;
            let outline = AgreementOutline::decode(held).map_err(Error::internal)?;
            if outline.delete_time.is_some() {
                continue;
            }
            let name = resource::AGREEMENT.name_of(id);
            match outline.has_party_actions {
                true => with_actions.push((name, None)),
                false => counted.push(Counted::of(name, &outline, parties, as_of, None)),
            }
        }
        // Those with party actions counted from their records, read at once.
        read_shown(snapshot, with_actions.iter_mut().map(|(name, stored)| (name.as_str(), stored))).await?;
        for (name, stored) in with_actions {
            let stored = stored.unwrap_or_default();
            let outline = AgreementOutline::decode(&stored[..]).map_err(Error::internal)?;
            counted.push(Counted::of(name, &outline, parties, as_of, Some(stored)));
        }
        Ok(counted)
    }

    /// The engagements with all of `parties` as participants, as
    /// [`Self::counted_agreements`] finds agreements.
    async fn timed_engagements(
        &self,
        snapshot: &dyn Snapshot,
        parties: &[String],
        as_of: &Date,
        deadline: Option<std::time::Instant>,
    ) -> Result<Vec<Timed>> {
        match self.few_named(snapshot, &resource::ENGAGEMENT, "participants.party", parties, as_of).await? {
            Some(few) => self.engagements_read(snapshot, Some(&few), parties, deadline).await,
            None => self.engagements_outlined(snapshot, parties, deadline).await,
        }
    }

    /// The engagements among `candidates` (all without) with all of
    /// `parties` as participants, from their records.
    async fn engagements_read(
        &self,
        snapshot: &dyn Snapshot,
        candidates: Option<&index::Candidates>,
        parties: &[String],
        deadline: Option<std::time::Instant>,
    ) -> Result<Vec<Timed>> {
        let mut timeline = Vec::new();
        self.scan_stored::<Engagement>(Scope::whole(snapshot, candidates), deadline, |name, entry| {
            let outline = EngagementOutline::decode(&entry.value[..]).map_err(Error::internal)?;
            let takes_part = |party: &String| outline.participants.iter().any(|p| p.party == *party);
            if outline.delete_time.is_none() && parties.iter().all(takes_part) {
                let name = String::from_utf8_lossy(name).into_owned();
                timeline.push((date_key(outline.start_date.as_ref()), name, Some(entry.value)));
            }
            Ok(true)
        })
        .await?;
        Ok(timeline)
    }

    /// The engagements with all of `parties` as participants, from their
    /// outline sets alone.
    async fn engagements_outlined(
        &self,
        snapshot: &dyn Snapshot,
        parties: &[String],
        deadline: Option<std::time::Instant>,
    ) -> Result<Vec<Timed>> {
        let mut timeline = Vec::new();
        for member in self.outline_members(snapshot, ENGAGEMENT_OUTLINES, parties, deadline).await? {
            let (id, held) = read_member(&member)?;
            if held.first() == Some(&0) {
                timeline.push((decode_place(&held[1..])?, resource::ENGAGEMENT.name_of(id), None));
            }
        }
        Ok(timeline)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Counted, RelationshipQuery};
    use crate::pb::cooperation::v1::{Agreement, Engagement, agreement, engagement};
    use crate::pb::google::r#type::Date;
    use crate::registry::Registry;
    use crate::registry::testing::anonymous;
    use crate::store::Store;
    use crate::store::memory::MemoryStore;

    const PARTIES: [&str; 3] = ["parties/ind", "parties/jpn", "parties/usa"];

    fn date(year: i32, month: i32, day: i32) -> Option<Date> {
        Some(Date { year, month, day })
    }

    /// Agreement `i`: two of three parties, dated, partly dated or not,
    /// with and without terms that renew, some ended.
    fn agreement_numbered(i: i32) -> Agreement {
        let year = 2000 + i % 26;
        let (signed, in_force) = match i % 4 {
            0 => (None, None),
            1 => (date(year, 1 + i % 12, 0), date(year + 1, 0, 0)),
            2 => (date(year, 1 + i % 12, 1 + i % 28), None),
            _ => (None, date(year, 6, 1 + i % 28)),
        };
        let renewal = [agreement::term::Renewal::None, agreement::term::Renewal::Automatic][(i % 2) as usize];
        Agreement {
            title: format!("agreement {i}"),
            parties: vec![PARTIES[(i % 3) as usize].into(), PARTIES[((i + 1) % 3) as usize].into()],
            instrument_type: 1,
            signature_date: signed,
            entry_into_force_date: in_force,
            term: (i % 3 != 0).then(|| agreement::Term {
                years: 1 + i % 30,
                renewal: renewal as i32,
                renewal_years: 1,
                notice_months: i % 6,
                ..Default::default()
            }),
            end: (i % 11 == 5 && in_force.is_some()).then(|| agreement::End {
                date: date(year + 3, 1, 1),
                reason: agreement::end::Reason::MutualConsent as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// What the answer takes of a counted agreement: name, place, status, term end, notice.
    type Row = (String, (bool, i64), i32, Option<(i64, bool)>, i32);

    fn comparable(counted: &[Counted]) -> Vec<Row> {
        let mut rows: Vec<_> =
            counted.iter().map(|a| (a.name.clone(), a.order, a.status as i32, a.term_end, a.notice_months)).collect();
        rows.sort();
        rows
    }

    /// What one party's outline sets say is what its records say, after
    /// creates, updates that move dates and parties, deletes and an
    /// undelete; and GetRelationship of one party shows it so.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_party_s_outlines_answer_what_its_records_answer() {
        let store = Arc::new(MemoryStore::new());
        let registry = Registry::open(store.clone()).await.unwrap();
        let mut agreements = Vec::new();
        for i in 0..60 {
            let created = registry.create("", agreement_numbered(i), &anonymous("CreateAgreement")).await.unwrap();
            agreements.push(created.name);
        }
        let requests = (0..30)
            .map(|i| {
                let engagement = Engagement {
                    title: format!("meeting {i}"),
                    kind: 1,
                    participants: [i % 3, (i + 1 + i % 2) % 3]
                        .map(|p| engagement::Participant { party: PARTIES[p as usize].into(), ..Default::default() })
                        .to_vec(),
                    start_date: (i % 5 != 0).then_some(Date { year: 2010 + i % 7, month: 1 + i % 12, day: 0 }),
                    ..Default::default()
                };
                (String::new(), engagement)
            })
            .collect::<Vec<_>>();
        let engagements: Vec<String> = registry
            .create_many::<Engagement>(requests, &anonymous("BatchCreateEngagements"))
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        for (i, name) in agreements.iter().enumerate().filter(|(i, _)| i % 5 == 1) {
            let mut moved = agreement_numbered(i as i32 + 7);
            moved.name = name.clone();
            let paths = ["parties", "signature_date", "entry_into_force_date", "term", "end"].map(String::from);
            registry.update(moved, &paths, "", &anonymous("UpdateAgreement")).await.unwrap();
        }
        for name in agreements.iter().step_by(7) {
            registry.delete::<Agreement>(name, "", &anonymous("DeleteAgreement")).await.unwrap();
        }
        registry.undelete::<Agreement>(&agreements[7], "", &anonymous("UndeleteAgreement")).await.unwrap();
        for name in engagements.iter().step_by(4) {
            registry.delete::<Engagement>(name, "", &anonymous("DeleteEngagement")).await.unwrap();
        }

        let snapshot = store.snapshot().await.unwrap();
        let groups: Vec<Vec<String>> = PARTIES
            .iter()
            .map(|p| vec![p.to_string()])
            .chain([vec![PARTIES[0].into(), PARTIES[1].into()], vec![PARTIES[2].into(), PARTIES[0].into()]])
            .collect();
        for as_of in [Date { year: 2005, month: 3, day: 1 }, Date { year: 2030, month: 1, day: 1 }] {
            for parties in &groups {
                let outlined = registry.agreements_outlined(&*snapshot, parties, &as_of, None).await.unwrap();
                let read = registry.agreements_read(&*snapshot, None, parties, &as_of, None).await.unwrap();
                assert!(read.len() > 5);
                assert_eq!(comparable(&outlined), comparable(&read), "{parties:?} as of {as_of:?}");
                let outlined = registry.engagements_outlined(&*snapshot, parties, None).await.unwrap();
                let read = registry.engagements_read(&*snapshot, None, parties, None).await.unwrap();
                let names = |timed: &[super::Timed]| timed.iter().map(|(o, n, _)| (*o, n.clone())).collect::<Vec<_>>();
                let (mut found, mut expected) = (names(&outlined), names(&read));
                found.sort();
                expected.sort();
                assert!(!expected.is_empty());
                assert_eq!(found, expected, "{parties:?}'s engagements");
            }
        }
        // The answer of one party is the answer its records give.
        let query = RelationshipQuery {
            parties: vec!["parties/ind".into()],
            as_of: Some(Date { year: 2030, month: 1, day: 1 }),
            window_months: 1200,
            max_section_items: 5,
            ..Default::default()
        };
        let answer = registry.relationship(&query).await.unwrap();
        let counted = registry
            .agreements_read(&*snapshot, None, &query.parties, query.as_of.as_ref().unwrap(), None)
            .await
            .unwrap();
        let counts = answer.counts.unwrap();
        assert_eq!(counts.agreements as usize, counted.len());
        let in_force = counted.iter().filter(|a| a.status == agreement::Status::InForce).count();
        assert_eq!(counts.agreements_in_force as usize, in_force);
        assert!(in_force > 0 && counts.upcoming_term_events > 0);
        assert_eq!(answer.agreements.len(), 5);
        let mut first = comparable(&counted);
        first.sort_by_key(|row| (row.1, row.0.clone()));
        let shown: Vec<&str> = answer.agreements.iter().map(|a| a.agreement.as_str()).collect();
        assert_eq!(shown, first.iter().take(5).map(|row| row.0.as_str()).collect::<Vec<_>>());
        assert!(answer.agreements.iter().all(|a| a.title.starts_with("agreement ")), "shown records read whole");
    }
}
