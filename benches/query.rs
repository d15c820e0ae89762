//! What the registry's reads cost at scale, in one run, over 100,000
//! agreements of the bench dataset (AGREEMENTS overrides) plus the example
//! data (`examples/india-japan-2020.json`, with the README's update that
//! labels the 2020 agreement, and `examples/paris-agreement-2015.json`).
//!
//! First the planner against a full scan: a party-filtered page of 50
//! answered from the party index, and the same filter hidden from the planner
//! (`NOT (NOT ...)`), which must read and test every agreement; then two
//! conditions that indexes answer together against the same filter with the
//! second hidden from the planner: two parties (the ids both parties' sets
//! hold, against reading every agreement of the first) and one year of
//! signature dates (one range, against the smaller of its two bounds).
//!
//! Then every question the README and `docs/api.md` ask with grpcurl, one row
//! each: the request, how many records it answered and the bytes of the
//! response message, and the median and slowest of several calls after a
//! warm-up. A deep page is reached through page tokens first, and only its own
//! call is timed. The calls go to the registry in this process, as the server
//! makes them (Lists answered still encoded), so the times are the server's
//! work without the network or gRPC framing; each has a deadline far beyond
//! any plan's cost, so a slow plan is measured rather than cut short, and a
//! question the registry refuses shows its error in its row.
//!
//! The agreements are the service bench's dataset (`numbered_agreement` over
//! 40 states, in `tests/common/records.rs`), written through the registry in
//! this process without waiting for the disk, in batches of 1,000 as
//! `cooperation-registry import` writes them. The example data goes through
//! the import command's own path, over a server in this process, so it is
//! stored exactly as `cooperation-registry import` stores it.
//!
//! Run: `cargo bench --bench query`, or at a million agreements
//! `AGREEMENTS=1000000 cargo bench --bench query`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::env_or;
use common::records::{STATES, agreement_id, numbered_agreement};
use common::server::TestServer;
use common::stats::median;
use cooperation_registry::cli::import::{import, parse_dataset};
use cooperation_registry::pb::cooperation::v1::{Agreement, Engagement, Party};
use cooperation_registry::pb::google::r#type::Date;
use cooperation_registry::registry::relationship::RelationshipQuery;
use cooperation_registry::registry::{ANONYMOUS, EncodedPage, ListQuery, MAX_BATCH, Mutation, Registry};
use cooperation_registry::server::ServerOptions;
use cooperation_registry::store::sled::Durability;
use cooperation_registry::store::sled::{SledOptions, SledStore};
use prost::Message;

const EXAMPLE: &str = include_str!("../examples/india-japan-2020.json");
const MULTILATERAL_EXAMPLE: &str = include_str!("../examples/paris-agreement-2015.json");

/// Far beyond what any plan takes at a million agreements: a question is
/// timed to its end, never cut short by DEADLINE_EXCEEDED.
const DEADLINE: Duration = Duration::from_secs(60);

/// Timed calls of one question after its warm-up: at least the first figure,
/// and more, up to the second, while the third has not been spent, so a fast
/// question gets a steady median and a full scan at a million agreements
/// does not hold the run for minutes.
const MIN_CALLS: usize = 3;
const MAX_CALLS: usize = 20;
const CALLS_BUDGET: Duration = Duration::from_secs(3);

/// A write by the anonymous caller, as the bench's own writes are not
/// requests that could be retried.
fn bench_write(method: &'static str) -> Mutation {
    Mutation { actor: ANONYMOUS.into(), request_id: String::new(), method, fingerprint: 0, deadline: None }
}

/// One List call, its time added to `times`.
async fn timed(registry: &Registry, query: &ListQuery, times: &mut Vec<Duration>) -> Vec<Agreement> {
    let t = Instant::now();
    let page = registry.list::<Agreement>(query).await.unwrap();
    times.push(t.elapsed());
    page.items
}

/// The names on a page, to compare two plans' answers.
fn names(page: &[Agreement]) -> Vec<&str> {
    page.iter().map(|a| a.name.as_str()).collect()
}

#[derive(Clone, Copy)]
enum Collection {
    Agreements,
    Engagements,
    Parties,
}

/// What one question sends.
enum Ask {
    /// A List, at page `page` (1 for the first), reached through the tokens of
    /// the pages before it.
    List {
        collection: Collection,
        query: ListQuery,
        page: usize,
    },
    Relationship(RelationshipQuery),
}

struct Question {
    label: &'static str,
    ask: Ask,
}

/// What one call answered.
struct Answer {
    items: usize,
    /// The response message's bytes, as the server would send them.
    bytes: usize,
    next_page_token: String,
    /// What a relationship holds besides its agreements.
    detail: Option<String>,
}

fn show_date(date: &Date) -> String {
    format!("{:04}-{:02}-{:02}", date.year, date.month, date.day)
}

/// The request as its row shows it: every field the question sets, so a row
/// can be repeated with grpcurl.
fn describe(ask: &Ask) -> String {
    match ask {
        Ask::List { collection, query, page } => {
            let method = match collection {
                Collection::Agreements => "ListAgreements",
                Collection::Engagements => "ListEngagements",
                Collection::Parties => "ListParties",
            };
            let mut out = method.to_string();
            if !query.filter.is_empty() {
                out += &format!(" filter=`{}`", query.filter);
            }
            if !query.order_by.is_empty() {
                out += &format!(" order_by=`{}`", query.order_by);
            }
            if query.page_size != 0 {
                out += &format!(" page_size={}", query.page_size);
            }
            if let Some(as_of) = &query.as_of {
                out += &format!(" as_of={}", show_date(as_of));
            }
            if *page > 1 {
                out += &format!(" (page {page}, through page tokens)");
            }
            out
        }
        Ask::Relationship(query) => {
            let mut out = format!("GetRelationship parties=[{}]", query.parties.join(", "));
            if let Some(as_of) = &query.as_of {
                out += &format!(" as_of={}", show_date(as_of));
            }
            if query.window_months != 0 {
                out += &format!(" window_months={}", query.window_months);
            }
            out
        }
    }
}

/// The bytes of the List response the server writes for `page`
/// (`api::encoded` frames the records it is given without decoding them):
/// each record as field 1, then the page token and the revision.
fn response_len(page: &EncodedPage) -> usize {
    use prost::encoding::{encoded_len_varint, int64, key_len, string};
    let items: usize =
        page.items.iter().map(|record| key_len(1) + encoded_len_varint(record.len() as u64) + record.len()).sum();
    let token = if page.next_page_token.is_empty() { 0 } else { string::encoded_len(2, &page.next_page_token) };
    let revision = if page.revision == 0 { 0 } else { int64::encoded_len(3, &(page.revision as i64)) };
    items + token + revision
}

/// One call of `ask` at `page_token`, with a fresh deadline.
async fn call(registry: &Registry, ask: &Ask, page_token: &str) -> Result<Answer, String> {
    let deadline = Some(Instant::now() + DEADLINE);
    match ask {
        Ask::List { collection, query, .. } => {
            let query = ListQuery { page_token: page_token.into(), deadline, ..query.clone() };
            let page = match collection {
                Collection::Agreements => registry.list_encoded::<Agreement>(&query).await,
                Collection::Engagements => registry.list_encoded::<Engagement>(&query).await,
                Collection::Parties => registry.list_encoded::<Party>(&query).await,
            }
            .map_err(|e| e.to_string())?;
            Ok(Answer {
                items: page.items.len(),
                bytes: response_len(&page),
                next_page_token: page.next_page_token,
                detail: None,
            })
        }
        Ask::Relationship(query) => {
            let query = RelationshipQuery { deadline, ..query.clone() };
            let relationship = registry.relationship(&query).await.map_err(|e| e.to_string())?;
            Ok(Answer {
                items: relationship.agreements.len(),
                bytes: relationship.encoded_len(),
                next_page_token: String::new(),
                detail: Some(format!(
                    "{} agreements ({} in force), {} term events, {} partnership domains, {} engagements",
                    relationship.agreements.len(),
                    relationship.agreements_in_force.len(),
                    relationship.upcoming_term_events.len(),
                    relationship.partnership_domains.len(),
                    relationship.engagements.len()
                )),
            })
        }
    }
}

/// A question's answer and the times of its calls after the warm-up.
struct Measured {
    answer: Answer,
    times: Vec<Duration>,
}

async fn measure(registry: &Registry, ask: &Ask) -> Result<Measured, String> {
    let mut token = String::new();
    if let Ask::List { page, .. } = ask {
        for before in 1..*page {
            let answer = call(registry, ask, &token).await?;
            if answer.next_page_token.is_empty() {
                return Err(format!("no page {page}: the answer ends at page {before}"));
            }
            token = answer.next_page_token;
        }
    }
    let answer = call(registry, ask, &token).await?;
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < MIN_CALLS || (times.len() < MAX_CALLS && started.elapsed() < CALLS_BUDGET) {
        let t = Instant::now();
        call(registry, ask, &token).await?;
        times.push(t.elapsed());
    }
    Ok(Measured { answer, times })
}

/// Every question of the README and of `docs/api.md` ("Questions, one call
/// each", and the relationship service's example), in their order.
fn questions() -> Vec<Question> {
    let new_year_2025 = Some(Date { year: 2025, month: 1, day: 1 });
    let list = |filter: &str, order_by: &str| ListQuery {
        filter: filter.into(),
        order_by: order_by.into(),
        ..Default::default()
    };
    let agreements =
        |label, query| Question { label, ask: Ask::List { collection: Collection::Agreements, query, page: 1 } };
    let in_2020 = ListQuery {
        page_size: 50,
        ..list(r#"signature_date >= "2020" AND signature_date < "2021""#, "signature_date desc")
    };
    let by_title = ListQuery { page_size: 5, ..list("", "title") };
    vec![
        agreements(
            "1. ind+jpn in force on 2025-01-01",
            ListQuery {
                as_of: new_year_2025,
                ..list(r#"parties:"parties/ind" AND parties:"parties/jpn" AND status = IN_FORCE"#, "")
            },
        ),
        agreements("2. ind signed, not in force", list(r#"parties:"parties/ind" AND status = SIGNED"#, "")),
        agreements(
            "2a. in force for ind on 2025-01-01",
            ListQuery { as_of: new_year_2025, ..list("parties_status.parties/ind = IN_FORCE", "") },
        ),
        agreements(
            "2b. ratified by jpn, not in force for it",
            ListQuery {
                as_of: Some(Date { year: 2016, month: 11, day: 20 }),
                ..list("parties_status.parties/jpn = RATIFIED", "")
            },
        ),
        agreements(
            "3. ind basing or re-supply access",
            list(
                r#"parties:"parties/ind" AND (provisions.category = BASING_ACCESS OR provisions.category = LOGISTICS)"#,
                "",
            ),
        ),
        Question {
            label: "4. ind terms due in 12 months",
            ask: Ask::Relationship(RelationshipQuery {
                parties: vec!["parties/ind".into()],
                window_months: 12,
                ..Default::default()
            }),
        },
        Question {
            label: "5. ind+jpn engagements by date, kind",
            ask: Ask::List {
                collection: Collection::Engagements,
                query: list(
                    r#"participants.party = "parties/ind" AND participants.party = "parties/jpn""#,
                    "start_date, kind",
                ),
                page: 1,
            },
        },
        agreements(
            "6. an agreement's lineage",
            list(r#"relations.agreement = "agreements/india-japan-cepa-2011""#, ""),
        ),
        Question {
            label: "7. groupings idn belongs to",
            ask: Ask::List {
                collection: Collection::Parties,
                query: list(r#"members.party = "parties/idn""#, ""),
                page: 1,
            },
        },
        agreements("8. who signed for ind", list(r#"signatories.party = "parties/ind""#, "")),
        agreements(
            "9. title word or registration number",
            list(r#"title:"economic" OR identifiers.value = "I:33521""#, ""),
        ),
        agreements("10. signed in 2020, newest first", in_2020.clone()),
        Question {
            label: "10. the same, page 20",
            ask: Ask::List { collection: Collection::Agreements, query: in_2020, page: 20 },
        },
        agreements("11. labelled theme=logistics", list(r#"labels.theme = "logistics""#, "")),
        agreements("12. pages of 5 by title", by_title.clone()),
        Question {
            // Shallower than question 10's: every page in title order reads the
            // whole collection, so each page on the way costs a full scan.
            label: "12. the same, page 10",
            ask: Ask::List { collection: Collection::Agreements, query: by_title, page: 10 },
        },
        Question {
            label: "13. ind+jpn relationship 2025-01-01",
            ask: Ask::Relationship(RelationshipQuery {
                parties: vec!["parties/ind".into(), "parties/jpn".into()],
                as_of: new_year_2025,
                ..Default::default()
            }),
        },
    ]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let count: usize = env_or("AGREEMENTS", 100_000);
    let dir = tempfile::tempdir().unwrap();
    let options = SledOptions { durability: Durability::None, ..SledOptions::default() };
    let store = Arc::new(SledStore::open(dir.path(), options).unwrap());
    // The import command speaks gRPC, so the registry is served for it; the
    // questions go to the same registry in this process.
    let server = TestServer::start_on(store.clone(), dir, ServerOptions::default()).await;
    let registry = server.registry.clone();

    let started = Instant::now();
    let example = parse_dataset(EXAMPLE).expect("the example parses");
    let mut report = import(server.channel.clone(), example, false).await.expect("the example imports");
    let multilateral = parse_dataset(MULTILATERAL_EXAMPLE).expect("the second example parses");
    let second = import(server.channel.clone(), multilateral, false).await.expect("the second example imports");
    report.created += second.created;
    report.linked += second.linked;
    // The README's update, which question 11 looks for.
    let labelled = Agreement {
        name: "agreements/india-japan-rpss-2020".into(),
        labels: [("theme".to_string(), "logistics".to_string())].into(),
        ..Default::default()
    };
    registry.update(labelled, &["labels".to_string()], "", &bench_write("UpdateAgreement")).await.unwrap();
    println!(
        "imported the example data in {:.2} s: {} records created, {} forward references set",
        started.elapsed().as_secs_f64(),
        report.created,
        report.linked
    );

    let started = Instant::now();
    // In batches, two at a time, as `cooperation-registry import` writes.
    let mut tasks = Vec::new();
    let (writers, batches) = (2, count.div_ceil(MAX_BATCH));
    for w in 0..writers {
        let registry = registry.clone();
        tasks.push(tokio::spawn(async move {
            let mutation = bench_write("bench");
            for b in (w..batches).step_by(writers) {
                let items = (b * MAX_BATCH..count.min((b + 1) * MAX_BATCH))
                    .map(|i| (agreement_id(i), numbered_agreement(i, &STATES)))
                    .collect();
                registry.create_many::<Agreement>(items, &mutation).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let load = started.elapsed();
    println!(
        "loaded {count} agreements in {:.1} s ({:.0}/s); data dir {} MiB",
        load.as_secs_f64(),
        count as f64 / load.as_secs_f64(),
        store.size_on_disk().unwrap() / (1 << 20)
    );

    let query = |filter: &str| ListQuery { page_size: 50, filter: filter.into(), ..Default::default() };
    let indexed = query(r#"parties:"parties/jpn""#);
    // The same filter hidden from the planner: it scans from the start until
    // the page is full (here about 1,000 records, as Japan is in 1 in 20).
    let scanned = query(r#"NOT (NOT (parties:"parties/jpn"))"#);
    // A full scan: every agreement read and tested (what an unindexed answer
    // costs when matches are few or far into the collection).
    let full = query(r#"NOT (NOT (parties:"parties/jpn")) AND description = "no such description""#);
    let first = registry.list::<Agreement>(&indexed).await.unwrap();
    let same = registry.list::<Agreement>(&scanned).await.unwrap();
    assert_eq!(names(&first.items), names(&same.items), "both plans give the same page");
    assert_eq!(first.items.len(), 50);

    // Interleave the two plans so machine noise hits both alike.
    let (mut index_times, mut scan_times, mut full_times) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        for _ in 0..10 {
            timed(&registry, &indexed, &mut index_times).await;
            timed(&registry, &scanned, &mut scan_times).await;
        }
        assert!(timed(&registry, &full, &mut full_times).await.is_empty());
    }
    let (index, scan, full) = (median(index_times), median(scan_times), median(full_times));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("party-filtered page of 50 from the party index:      median {:8.2} ms", ms(index));
    println!(
        "the same page scanning from the start (no index):    median {:8.2} ms  ({:.1}x the index)",
        ms(scan),
        ms(scan) / ms(index)
    );
    println!(
        "a full scan of all {count} agreements (no index):  median {:8.2} ms  ({:.0}x the index)",
        ms(full),
        ms(full) / ms(index)
    );

    // Two indexed conditions together, against the second left for the
    // records to be tested on, interleaved.
    for (together, alone) in [
        (
            r#"parties:"parties/ind" AND parties:"parties/jpn""#,
            r#"parties:"parties/ind" AND NOT (NOT (parties:"parties/jpn"))"#,
        ),
        (
            "signature_date >= 2020 AND signature_date < 2021",
            "signature_date >= 2020 AND NOT (NOT (signature_date < 2021))",
        ),
    ] {
        let (together, alone) = (query(together), query(alone));
        let (mut together_times, mut alone_times) = (Vec::new(), Vec::new());
        let both_found = timed(&registry, &together, &mut together_times).await;
        let one_found = timed(&registry, &alone, &mut alone_times).await;
        assert_eq!(names(&both_found), names(&one_found), "both plans give the same page");
        for _ in 0..10 {
            timed(&registry, &together, &mut together_times).await;
            timed(&registry, &alone, &mut alone_times).await;
        }
        let (both, one) = (median(together_times), median(alone_times));
        println!("{}: median {:8.2} ms", together.filter, ms(both));
        println!(
            "  the second condition hidden from the planner: median {:8.2} ms ({:.1}x)",
            ms(one),
            ms(one) / ms(both)
        );
    }

    let relationship =
        RelationshipQuery { parties: vec!["parties/ind".into(), "parties/aus".into()], ..Default::default() };
    let mut times = Vec::new();
    let mut found = 0;
    for _ in 0..10 {
        let t = Instant::now();
        found = registry.relationship(&relationship).await.unwrap().counts.unwrap().agreements;
        times.push(t.elapsed());
    }
    println!("GetRelationship(ind, aus): {found} agreements, median {:.2} ms", median(times).as_secs_f64() * 1e3);

    println!();
    println!("the questions of the README and docs/api.md ({count} agreements and the example data):");
    println!(
        "{:<38} {:>6} {:>9} {:>10} {:>10} {:>5}  request",
        "question", "items", "bytes", "median ms", "max ms", "calls"
    );
    for question in questions() {
        let request = describe(&question.ask);
        match measure(&registry, &question.ask).await {
            Ok(Measured { answer, times }) => {
                let slowest = times.iter().copied().max().unwrap_or_default();
                println!(
                    "{:<38} {:>6} {:>9} {:>10.3} {:>10.3} {:>5}  {request}{}",
                    question.label,
                    answer.items,
                    answer.bytes,
                    ms(median(times.iter().copied())),
                    ms(slowest),
                    times.len(),
                    answer.detail.map(|d| format!(": {d}")).unwrap_or_default()
                );
            }
            Err(e) => println!("{:<38} error: {e}  ({request})", question.label),
        }
    }
    server.stop().await;
}
