//! Queries through the API: filters, ordering, paging under concurrent writes,
//! status as of a day, index-planned answers equal to full scans, and the
//! relationship between parties.

mod common;

use std::time::Duration;

use common::{client::*, records::*, server::*};
use cooperation_registry::api::ScanLimits;
use cooperation_registry::cli::import::{import, parse_dataset};
use cooperation_registry::pb::cooperation::v1::agreement_service_client::AgreementServiceClient;
use cooperation_registry::pb::cooperation::v1::relationship_service_client::RelationshipServiceClient;
use cooperation_registry::pb::cooperation::v1::{self as v1, agreement, relationship};
use cooperation_registry::server::ServerOptions;
use prost_types::FieldMask;
use tonic::Code;

/// The states of the dataset. Under `numbered_agreement`'s pairing India,
/// Japan and the United States (0, 3 and 6 of nine) are each a party with the
/// other two, so two parties' sets overlap without either holding the other.
const STATES: [&str; 9] = ["ind", "fra", "deu", "jpn", "aus", "gbr", "usa", "can", "bra"];

/// Agreement `i` of a dataset over STATES, signed in year 2000 + i % 20 (to
/// the month), not yet in force, with a term of 1 to 7 years, and without
/// signatories (they must be parties, and the tests change the parties).
fn numbered(i: usize) -> v1::Agreement {
    v1::Agreement {
        title: format!("Agreement {i:03}"),
        signature_date: date(2000 + (i % 20) as i32, 1 + (i % 12) as i32, 0),
        entry_into_force_date: None,
        signatories: Vec::new(),
        term: Some(agreement::Term { years: 1 + (i % 7) as i32, ..Default::default() }),
        labels: [("source".to_string(), if i % 4 == 0 { "test" } else { "bench" }.to_string())].into(),
        ..numbered_agreement(i, &STATES)
    }
}

async fn load(server: &TestServer, count: usize) {
    let mut client = server.agreements();
    for i in 0..count {
        client.create_agreement(create_agreement(&format!("n{i:03}"), numbered(i))).await.unwrap();
    }
}

fn list(filter: &str, order_by: &str, page_size: i32, page_token: String) -> v1::ListAgreementsRequest {
    v1::ListAgreementsRequest {
        filter: filter.into(),
        order_by: order_by.into(),
        page_size,
        page_token,
        ..Default::default()
    }
}

/// Every name the query returns, page by page.
async fn all_pages(server: &TestServer, filter: &str, order_by: &str, page_size: i32) -> Vec<String> {
    let mut client = server.agreements();
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = client.list_agreements(list(filter, order_by, page_size, token)).await.unwrap().into_inner();
        assert!(page.agreements.len() <= page_size as usize);
        names.extend(page.agreements.into_iter().map(|a| a.name));
        if page.next_page_token.is_empty() {
            return names;
        }
        token = page.next_page_token;
    }
}

#[tokio::test]
async fn indexed_filters_answer_exactly_what_a_full_scan_answers() {
    let server = TestServer::start().await;
    load(&server, 60).await;
    for filter in [
        r#"parties:"parties/jpn""#,
        r#"parties = "parties/jpn" AND parties = "parties/ind""#,
        r#"parties:"parties/usa" AND provisions.category = BASING_ACCESS"#,
        "provisions.category = BASING_ACCESS",
        r#"signature_date >= "2010" AND signature_date < "2015-06""#,
        r#"signature_date = "2004""#,
        r#"signature_date <= "2003-05""#,
        r#"signature_date > "2018""#,
        r#"parties:"parties/fra" OR parties:"parties/deu""#,
        r#"title = "Agreement 01*""#,
        r#"title = "Agreement 013""#,
        r#"title:"agreement 01""#,
        r#"title:"AGREEMENT""#,
        r#"title:"ágreement 013" OR labels.source = "test""#,
        r#"labels.source = "test" AND title:"0""#,
        r#"title:"agreement 01" OR (parties:"parties/usa" AND term.years > 3)"#,
        r#"parties:"parties/usa" OR signature_date < "2002""#,
    ] {
        let planned = all_pages(&server, filter, "", 7).await;
        // NOT NOT hides the conditions from the planner: a full scan.
        let scanned = all_pages(&server, &format!("NOT (NOT ({filter}))"), "", 1000).await;
        assert_eq!(planned, scanned, "{filter}");
        assert!(!planned.is_empty(), "{filter} should match something");
    }
    server.stop().await;
}

#[tokio::test]
async fn filter_errors_name_the_position_and_change_nothing() {
    let server = TestServer::start().await;
    let mut client = server.agreements();
    for (filter, position, problem) in [
        (r#"parties:"parties/jpn" AND colour = "red""#, 26, "no field \"colour\""),
        ("term.years = ten", 13, "not an integer"),
        ("provisions.category = BASES", 22, "BASING_ACCESS"),
        ("(title = \"x\"", 12, "expected ')'"),
        (r#"signature_date >= "10 September 2020""#, 18, "YYYY"),
    ] {
        let err = client.list_agreements(list(filter, "", 0, String::new())).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&err), ["filter"]);
        assert!(err.message().contains(&format!("at position {position}")), "{filter}: {}", err.message());
        assert!(err.message().contains(problem), "{filter}: {}", err.message());
    }
    let err = client.list_agreements(list("", "parties desc", 0, String::new())).await.unwrap_err();
    assert_eq!(violated_fields(&err), ["order_by"]);
    let err = client
        .list_agreements(v1::ListAgreementsRequest { as_of: date(2020, 0, 0), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["as_of"]);
    // A token is bound to its filter.
    load(&server, 5).await;
    let page = client.list_agreements(list("term.years > 0", "", 2, String::new())).await.unwrap().into_inner();
    let err = client.list_agreements(list("term.years > 1", "", 2, page.next_page_token)).await.unwrap_err();
    assert_eq!(violated_fields(&err), ["page_token"]);
    server.stop().await;
}

#[tokio::test]
async fn order_by_several_keys_pages_correctly_under_concurrent_writes() {
    let server = TestServer::start().await;
    load(&server, 40).await;
    let order = "signature_date desc, term.years, title";
    let expected_before = all_pages(&server, "", order, 1000).await;
    assert_eq!(expected_before.len(), 40);

    // Page through while writers add records on both sides of the cursor and
    // delete some ahead of it.
    let mut client = server.agreements();
    let mut names = Vec::new();
    let mut token = String::new();
    let mut page_number = 0;
    loop {
        let page = client.list_agreements(list("", order, 6, token)).await.unwrap().into_inner();
        names.extend(page.agreements.into_iter().map(|a| a.name));
        page_number += 1;
        if page_number == 2 {
            let mut newest = numbered(1000);
            newest.signature_date = date(2030, 1, 1); // sorts before the cursor: not seen
            client.create_agreement(create_agreement("z-newest", newest)).await.unwrap();
            let mut oldest = numbered(1001);
            oldest.signature_date = date(1990, 1, 1); // sorts after the cursor: seen at the end
            client.create_agreement(create_agreement("z-oldest", oldest)).await.unwrap();
            let ahead = expected_before.last().unwrap().clone();
            client.delete_agreement(v1::DeleteAgreementRequest { name: ahead, ..Default::default() }).await.unwrap();
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut expected: Vec<String> = expected_before[..expected_before.len() - 1].to_vec();
    expected.push("agreements/z-oldest".into());
    assert_eq!(names, expected, "no record skipped or repeated");

    // The order itself: dates descending, then term ascending, then title.
    let rows = client.list_agreements(list("", order, 1000, String::new())).await.unwrap().into_inner().agreements;
    for pair in rows.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let key = |x: &v1::Agreement| x.signature_date.map(|d| (d.year, d.month)).unwrap_or_default();
        assert!(
            key(a) > key(b) || (key(a) == key(b) && a.term.as_ref().unwrap().years <= b.term.as_ref().unwrap().years),
            "{} before {}",
            a.name,
            b.name
        );
    }
    server.stop().await;
}

/// A day: year, month, day.
type Day = (i32, i32, i32);

/// A date as `order_by` sorts it: its first day, then its last (unset first).
fn date_key(date: Option<&cooperation_registry::pb::google::r#type::Date>) -> Option<(Day, Day)> {
    let d = date?;
    let last_day = match d.month {
        0 => 31,
        2 if d.year % 4 == 0 && (d.year % 100 != 0 || d.year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    let first = (d.year, d.month.max(1), d.day.max(1));
    let last = (d.year, if d.month == 0 { 12 } else { d.month }, if d.day == 0 { last_day } else { d.day });
    Some((first, last))
}

/// Records whose keys tie, partial dates sharing a first day, unset values
/// and a deleted record: the dataset of the ordered-walk test.
fn ordered_dataset(i: usize) -> v1::Agreement {
    let mut record = numbered(i);
    // Titles tie in threes; a few start with accents or digits.
    record.title = ["Zeta pact", "alpha accord", "Économie 2", "10 Years", "Beta"][i / 3 % 5].to_string();
    record.signature_date = match i % 6 {
        0 => None,
        1 => date(2010, 0, 0),
        2 => date(2010, 1, 0),
        3 => date(2010, 1, 1),
        4 => date(2000 + (i % 20) as i32, 2, 0),
        _ => date(2000 + (i % 20) as i32, 2, (i % 28) as i32 + 1),
    };
    record.end = (i % 5 == 0).then(|| agreement::End {
        date: date(2030 + (i % 3) as i32, 0, 0),
        reason: 1,
        ..Default::default()
    });
    record
}

/// A List ordered by a field with an index walks the index: every order and
/// direction, with a filter or without, pages exactly as sorting every record
/// by the documented rules would (unset values first, a partial date by its
/// first day then its last, ties by name), at any page size.
#[tokio::test]
async fn pages_ordered_along_an_index_equal_the_records_sorted() {
    let server = TestServer::start().await;
    let mut client = server.agreements();
    for i in 0..45 {
        client.create_agreement(create_agreement(&format!("w{:02}", (i * 7) % 45), ordered_dataset(i))).await.unwrap();
    }
    client
        .delete_agreement(v1::DeleteAgreementRequest { name: "agreements/w07".into(), ..Default::default() })
        .await
        .unwrap();
    let everything = client.list_agreements(list("", "", 1000, String::new())).await.unwrap().into_inner().agreements;
    assert_eq!(everything.len(), 44);
    type Key = (Option<String>, Option<(Day, Day)>);
    let key_of = |a: &v1::Agreement, field: &str| -> Key {
        match field {
            "title" => (Some(a.title.clone()), None),
            "signature_date" => (None, date_key(a.signature_date.as_ref())),
            "end.date" => (None, date_key(a.end.as_ref().and_then(|e| e.date.as_ref()))),
            other => panic!("{other}"),
        }
    };
    for order_by in [
        "title",
        "title desc",
        "signature_date",
        "signature_date desc",
        "signature_date desc, title",
        "signature_date, title desc",
        "end.date desc",
        "end.date, signature_date desc",
    ] {
        let keys: Vec<(&str, bool)> = order_by
            .split(", ")
            .map(|k| match k.strip_suffix(" desc") {
                Some(field) => (field, true),
                None => (k, false),
            })
            .collect();
        for filter in ["", "term.years > 2", r#"signature_date >= "2005" AND signature_date < "2015""#] {
            let matching = all_pages(&server, filter, "", 1000).await;
            let mut expected: Vec<&v1::Agreement> = everything.iter().filter(|a| matching.contains(&a.name)).collect();
            expected.sort_by(|a, b| {
                for (field, desc) in &keys {
                    let ordering = key_of(a, field).cmp(&key_of(b, field));
                    let ordering = if *desc { ordering.reverse() } else { ordering };
                    if ordering.is_ne() {
                        return ordering;
                    }
                }
                a.name.cmp(&b.name)
            });
            let expected: Vec<String> = expected.iter().map(|a| a.name.clone()).collect();
            assert!(!expected.is_empty(), "{filter}");
            for page_size in [1, 4, 1000] {
                let names = all_pages(&server, filter, order_by, page_size).await;
                assert_eq!(names, expected, "order_by {order_by:?}, filter {filter:?}, pages of {page_size}");
            }
        }
    }
    server.stop().await;
}

/// A derived status is narrowed through the date indexes: for every status,
/// alone or with a party, on days around the dataset's dates, the planned
/// answer is exactly what reading and testing every agreement finds.
#[tokio::test]
async fn derived_status_filters_answer_what_a_full_scan_answers() {
    let server = TestServer::start().await;
    let mut client = server.agreements();
    for i in 0..48 {
        let mut record = numbered(i);
        record.signature_date = if i % 8 == 0 { None } else { date(2000 + (i % 10) as i32, 1 + (i % 12) as i32, 0) };
        record.provisional_application_date = (i % 7 == 1).then(|| date(2001 + (i % 10) as i32, 0, 0)).flatten();
        record.entry_into_force_date = (i % 3 != 0).then(|| date(2002 + (i % 10) as i32, 6, 1)).flatten();
        record.end = match i % 5 {
            1 => Some(agreement::End {
                date: date(2008 + (i % 6) as i32, 0, 0),
                reason: 1 + (i % 6) as i32,
                ..Default::default()
            }),
            _ => None,
        };
        client.create_agreement(create_agreement(&format!("s{i:02}"), record)).await.unwrap();
    }
    let every = |filter: &str, as_of| {
        let mut client = server.agreements();
        let filter = filter.to_string();
        async move {
            let mut names = Vec::new();
            let mut request = v1::ListAgreementsRequest { filter, as_of, page_size: 5, ..Default::default() };
            loop {
                let page = client.list_agreements(request.clone()).await.unwrap().into_inner();
                names.extend(page.agreements.into_iter().map(|a| a.name));
                if page.next_page_token.is_empty() {
                    return names;
                }
                request.page_token = page.next_page_token;
            }
        }
    };
    let mut matched = 0;
    for status in [
        "UNSPECIFIED",
        "NOT_YET_SIGNED",
        "SIGNED",
        "PROVISIONALLY_APPLIED",
        "IN_FORCE",
        "EXPIRED",
        "TERMINATED",
        "SUPERSEDED",
    ] {
        for as_of in [date(1999, 1, 1), date(2003, 6, 1), date(2005, 6, 30), date(2009, 1, 1), date(2020, 1, 1), None] {
            for filter in [format!("status = {status}"), format!(r#"parties:"parties/ind" AND status = {status}"#)] {
                let planned = every(&filter, as_of).await;
                let scanned = every(&format!("NOT (NOT ({filter}))"), as_of).await;
                assert_eq!(planned, scanned, "{filter} as of {as_of:?}");
                matched += planned.len();
            }
        }
    }
    assert!(matched > 100, "the days reach every status: {matched}");
    server.stop().await;
}

#[tokio::test]
async fn filtered_paging_by_index_stays_correct_while_others_write() {
    let server = TestServer::start().await;
    load(&server, 30).await;
    let filter = r#"parties:"parties/jpn""#;
    let before = all_pages(&server, filter, "", 1000).await;
    let mut client = server.agreements();
    let first = client.list_agreements(list(filter, "", 3, String::new())).await.unwrap().into_inner();
    // A new match after the cursor, one before it, and a change that moves a
    // later match out of the filter.
    let mut after = numbered(2000);
    after.parties = vec!["parties/jpn".into(), "parties/ind".into()];
    client.create_agreement(create_agreement("zz-after", after.clone())).await.unwrap();
    client.create_agreement(create_agreement("a-before", after)).await.unwrap();
    let moved = before.last().unwrap().clone();
    let patch = v1::Agreement {
        name: moved.clone(),
        parties: vec!["parties/fra".into(), "parties/deu".into()],
        ..Default::default()
    };
    client.update_agreement(update_request(patch, Some(FieldMask { paths: vec!["parties".into()] }))).await.unwrap();
    let mut names: Vec<String> = first.agreements.iter().map(|a| a.name.clone()).collect();
    let mut token = first.next_page_token;
    while !token.is_empty() {
        let page = client.list_agreements(list(filter, "", 3, token)).await.unwrap().into_inner();
        names.extend(page.agreements.into_iter().map(|a| a.name));
        token = page.next_page_token;
    }
    let mut expected: Vec<String> = before.iter().filter(|n| **n != moved).cloned().collect();
    expected.push("agreements/zz-after".into());
    assert_eq!(names, expected);
    // The index follows the update: the moved record is found by its new parties.
    assert!(all_pages(&server, r#"parties:"parties/deu" AND parties:"parties/fra""#, "", 50).await.contains(&moved));
    server.stop().await;
}

#[tokio::test]
async fn status_follows_as_of_around_each_boundary() {
    let server = TestServer::start().await;
    let mut client = server.agreements();
    let mut a = agreement("Ten years");
    a.signature_date = date(2020, 9, 9);
    a.entry_into_force_date = date(2020, 9, 10);
    a.term = Some(agreement::Term { years: 10, ..Default::default() });
    client.create_agreement(create_agreement("ten", a)).await.unwrap();
    for (as_of, status) in [
        (date(2020, 9, 8), agreement::Status::NotYetSigned),
        (date(2020, 9, 9), agreement::Status::Signed),
        (date(2020, 9, 10), agreement::Status::InForce),
        (date(2030, 9, 9), agreement::Status::InForce),
        (date(2030, 9, 10), agreement::Status::Expired),
    ] {
        let got = client
            .get_agreement(v1::GetAgreementRequest { name: "agreements/ten".into(), as_of })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.status(), status, "{as_of:?}");
        let listed = client
            .list_agreements(v1::ListAgreementsRequest {
                filter: format!("status = {}", status.as_str_name()),
                as_of,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.agreements.len(), 1, "status filter as of {as_of:?}");
        assert_eq!(listed.agreements[0].status(), status);
    }
    // What was worked out for the record at its old revision does not outlive
    // an update: a longer term keeps it in force on the day it had expired.
    let get = |as_of| v1::GetAgreementRequest { name: "agreements/ten".into(), as_of };
    let before = client.get_agreement(get(date(2030, 9, 10))).await.unwrap().into_inner();
    let patch = v1::Agreement {
        name: "agreements/ten".into(),
        term: Some(agreement::Term { years: 20, ..Default::default() }),
        ..Default::default()
    };
    client.update_agreement(update_request(patch, Some(FieldMask { paths: vec!["term".into()] }))).await.unwrap();
    for _ in 0..2 {
        let after = client.get_agreement(get(date(2030, 9, 10))).await.unwrap().into_inner();
        assert_eq!(after.status(), agreement::Status::InForce);
        assert_ne!(after.etag, before.etag);
        let listed = client
            .list_agreements(v1::ListAgreementsRequest { as_of: date(2030, 9, 10), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (listed.agreements[0].status(), &listed.agreements[0].etag),
            (agreement::Status::InForce, &after.etag)
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn the_relationship_of_india_and_japan_reproduces_the_seed_article() {
    let server = TestServer::start().await;
    import(server.channel.clone(), parse_dataset(include_str!("../examples/india-japan-2020.json")).unwrap(), false)
        .await
        .unwrap();
    let mut client = RelationshipServiceClient::new(server.channel.clone());
    let request = v1::GetRelationshipRequest {
        parties: vec!["parties/ind".into(), "parties/jpn".into()],
        as_of: date(2025, 1, 1),
        window_months: 0,
        max_section_items: 0,
    };
    let got = client.get_relationship(request.clone()).await.unwrap().into_inner();
    let counts = got.counts.unwrap();
    assert_eq!(
        (counts.agreements, counts.agreements_in_force, counts.partnership_domains, counts.engagements),
        (2, 1, 12, 2)
    );
    assert_eq!(got.window_months, 12);
    // The CEPA (in force since August 2011) first, then the 2020 agreement, signed.
    let agreements: Vec<_> = got.agreements.iter().map(|a| (a.agreement.as_str(), a.status())).collect();
    assert_eq!(
        agreements,
        [
            ("agreements/india-japan-cepa-2011", agreement::Status::InForce),
            ("agreements/india-japan-rpss-2020", agreement::Status::Signed)
        ]
    );
    assert_eq!(got.agreements_in_force, ["agreements/india-japan-cepa-2011"]);
    assert!(got.agreements[1].provision_categories.contains(&(agreement::ProvisionCategory::BasingAccess as i32)));
    // The domains, including the emerging trilateral one with ASEAN.
    let domains: Vec<_> = got.partnership_domains.iter().map(|d| d.partnership_domain.as_str()).collect();
    assert!(domains.contains(&"partnershipDomains/india-japan-civil-nuclear"));
    assert!(domains.contains(&"partnershipDomains/india-asean-japan-trilateral"));
    assert!(!domains.contains(&"partnershipDomains/india-asean-maritime-security"));
    // The timeline: the 2019 2+2, then the 2020 signing.
    let timeline: Vec<_> = got.engagements.iter().map(|e| e.engagement.as_str()).collect();
    assert_eq!(timeline, ["engagements/india-japan-2plus2-2019", "engagements/india-japan-rpss-signing-2020"]);

    // Had the 2020 agreement entered into force on signature, its ten-year term
    // would come up in the window of 2030.
    let patch = v1::Agreement {
        name: "agreements/india-japan-rpss-2020".into(),
        entry_into_force_date: date(2020, 9, 10),
        ..Default::default()
    };
    server
        .agreements()
        .update_agreement(update_request(patch, Some(FieldMask { paths: vec!["entry_into_force_date".into()] })))
        .await
        .unwrap();
    let later = client
        .get_relationship(v1::GetRelationshipRequest { as_of: date(2030, 1, 1), ..request.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(later.upcoming_term_events.len(), 1);
    let event = &later.upcoming_term_events[0];
    assert_eq!(
        (event.agreement.as_str(), event.date, event.kind()),
        ("agreements/india-japan-rpss-2020", date(2030, 9, 10), relationship::term_event::Kind::Expiry)
    );
    let after = client
        .get_relationship(v1::GetRelationshipRequest { as_of: date(2030, 9, 10), ..request.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(after.upcoming_term_events.is_empty());
    assert!(after.agreements.iter().any(|a| a.status() == agreement::Status::Expired));

    // Bad requests.
    let err = client
        .get_relationship(v1::GetRelationshipRequest {
            parties: vec!["parties/ind".into(), "parties/nowhere".into(), "parties/ind".into()],
            window_months: -1,
            max_section_items: 1001,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["parties[1]", "parties[2]", "window_months", "max_section_items"]);
    let err = client.get_relationship(v1::GetRelationshipRequest::default()).await.unwrap_err();
    assert_eq!(violated_fields(&err), ["parties"]);
    server.stop().await;
}

/// Each list of a relationship holds the first `max_section_items` of its
/// items (100 unless asked), and `counts` every one: the first items of the
/// longer answer, in its order.
#[tokio::test]
async fn a_relationship_keeps_the_first_items_of_each_list_and_counts_all() {
    let server = TestServer::start().await;
    let mut agreements = server.agreements();
    for i in 0..600 {
        let record = numbered_agreement(i, &STATES);
        agreements.create_agreement(create_agreement(&format!("r{i:03}"), record)).await.unwrap();
    }
    let mut client = RelationshipServiceClient::new(server.channel.clone());
    let ask = |most: i32| v1::GetRelationshipRequest {
        parties: vec!["parties/ind".into()],
        as_of: date(2020, 1, 1),
        window_months: 1200,
        max_section_items: most,
    };
    let whole = client.get_relationship(ask(1000)).await.unwrap().into_inner();
    let counts = whole.counts.unwrap();
    assert!(counts.agreements > 100, "{counts:?}");
    assert_eq!(whole.agreements.len() as i32, counts.agreements);
    assert_eq!(whole.upcoming_term_events.len() as i32, counts.upcoming_term_events);
    for (most, kept) in [(0, 100), (3, 3)] {
        let part = client.get_relationship(ask(most)).await.unwrap().into_inner();
        assert_eq!(part.counts, Some(counts), "counts are of the whole");
        assert_eq!(part.agreements[..], whole.agreements[..kept]);
        let events = kept.min(whole.upcoming_term_events.len());
        assert_eq!(part.upcoming_term_events[..], whole.upcoming_term_events[..events]);
    }
    // A deleted agreement is neither shown nor counted.
    let gone = whole.agreements[1].agreement.clone();
    agreements.delete_agreement(v1::DeleteAgreementRequest { name: gone.clone(), ..Default::default() }).await.unwrap();
    let after = client.get_relationship(ask(1000)).await.unwrap().into_inner();
    assert_eq!(after.counts.unwrap().agreements, counts.agreements - 1);
    assert!(after.agreements.iter().all(|a| a.agreement != gone));
    assert_eq!(after.agreements[1..], whole.agreements[2..]);
    server.stop().await;
}

#[tokio::test]
async fn a_passed_deadline_stops_scans_and_writes_and_changes_nothing() {
    use cooperation_registry::registry::{ListQuery, Mutation};
    use std::time::{Duration, Instant};
    let server = TestServer::start().await;
    load(&server, 200).await;
    let registry = &server.registry;

    // A filter no index answers scans every agreement; with the deadline gone
    // the scan stops within its first records.
    let passed = Some(Instant::now() - Duration::from_millis(1));
    let query = ListQuery { filter: "description:\"nothing like it\"".into(), deadline: passed, ..Default::default() };
    let err = registry.list::<v1::Agreement>(&query).await.unwrap_err();
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("64 records were examined"), "{}", status.message());
    // With time left the same query answers.
    let query = ListQuery { deadline: Some(Instant::now() + Duration::from_secs(60)), ..query };
    assert!(registry.list::<v1::Agreement>(&query).await.unwrap().items.is_empty());

    let revision = registry.revision().await.unwrap();
    let late = Mutation {
        actor: "test".into(),
        request_id: String::new(),
        method: "CreateAgreement",
        fingerprint: 0,
        deadline: passed,
    };
    let err = registry.create("late", agreement("Late"), &late).await.unwrap_err();
    assert_eq!(tonic::Status::from(err).code(), Code::DeadlineExceeded);
    assert_eq!(registry.revision().await.unwrap(), revision, "nothing was written");
    assert_eq!(count_agreements(&server, true).await, 200);

    // Through the API: a caller's timeout reaches the server as grpc-timeout.
    let mut request = tonic::Request::new(list("description:\"nothing like it\"", "", 10, String::new()));
    request.set_timeout(Duration::from_nanos(1));
    let err = server.agreements().list_agreements(request).await.unwrap_err();
    assert!(matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled), "{err:?}");
    // The server goes on serving.
    assert_eq!(all_pages(&server, "", "", 100).await.len(), 200);
    server.stop().await;
}

/// As many List calls at once as a load test sends (64 connections × 8
/// streams) are all answered with the default waiting room: they wait their
/// turn. (The wait limit is raised: unoptimised test builds scan much
/// slower, and 512 of their scans could take longer than the default second.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_lists_within_the_limits_is_served_not_shed() {
    let defaults = ServerOptions::default();
    let patient = ScanLimits { max_wait: Duration::from_secs(60), ..defaults.scan_limits };
    let server =
        TestServer::start_in(tempfile::tempdir().unwrap(), ServerOptions { scan_limits: patient, ..defaults }).await;
    let mut client = server.agreements();
    for i in 0..60 {
        client.create_agreement(create_agreement(&format!("a{i}"), agreement(&format!("A {i}")))).await.unwrap();
    }
    let mut calls = Vec::new();
    for c in 0..64 {
        let channel = connect(server.addr).await;
        for _ in 0..8 {
            let mut client = AgreementServiceClient::new(channel.clone());
            calls.push(tokio::spawn(async move {
                let filter = if c % 2 == 0 { "title:\"A 1\"" } else { "" };
                client
                    .list_agreements(v1::ListAgreementsRequest {
                        filter: filter.into(),
                        page_size: 50,
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().agreements.len())
            }));
        }
    }
    for call in calls {
        let listed = call.await.unwrap().unwrap_or_else(|status| panic!("a List was refused: {status:?}"));
        assert!(listed > 0);
    }
    server.stop().await;
}

/// A Get or List is answered from the stored bytes, the derived fields
/// appended (`Registry::get_encoded`, `list_encoded`): it gives what the
/// registry's decoded reads give (`Registry::get`, `list`), as of any day,
/// deleted or not, with the same page tokens and the same errors.
#[tokio::test]
async fn reads_from_stored_bytes_equal_decoded_reads() {
    use cooperation_registry::pb::cooperation::v1::engagement_service_client::EngagementServiceClient;
    use cooperation_registry::pb::cooperation::v1::partnership_domain_service_client::PartnershipDomainServiceClient;
    use cooperation_registry::pb::cooperation::v1::party_service_client::PartyServiceClient;
    use cooperation_registry::registry::ListQuery;

    let server = TestServer::start().await;
    import(server.channel.clone(), parse_dataset(include_str!("../examples/india-japan-2020.json")).unwrap(), false)
        .await
        .unwrap();
    let mut stored = server.agreements();
    let registry = server.registry.clone();
    // The registry's decoded reads, as the API would answer them.
    let decoded_get = |request: v1::GetAgreementRequest| {
        let registry = registry.clone();
        async move {
            registry.get::<v1::Agreement>(&request.name, request.as_of.as_ref()).await.map_err(tonic::Status::from)
        }
    };
    let decoded_list = |request: v1::ListAgreementsRequest| {
        let registry = registry.clone();
        async move {
            let query = ListQuery {
                page_size: request.page_size,
                page_token: request.page_token,
                show_deleted: request.show_deleted,
                filter: request.filter,
                order_by: request.order_by,
                as_of: request.as_of,
                deadline: None,
            };
            let page = registry.list::<v1::Agreement>(&query).await.map_err(tonic::Status::from)?;
            Ok::<_, tonic::Status>(v1::ListAgreementsResponse {
                agreements: page.items,
                next_page_token: page.next_page_token,
                revision: page.revision as i64,
            })
        }
    };
    let mut ended = agreement("Ended");
    ended.signature_date = date(2000, 1, 1);
    ended.entry_into_force_date = date(2000, 2, 1);
    ended.end = Some(agreement::End {
        date: date(2010, 1, 1),
        reason: agreement::end::Reason::Superseded as i32,
        ..Default::default()
    });
    let mut provisional = agreement("Provisional");
    provisional.signature_date = date(2019, 5, 5);
    provisional.provisional_application_date = date(2019, 6, 1);
    let mut renewing = agreement("Renewing");
    renewing.signature_date = date(2000, 12, 1);
    renewing.entry_into_force_date = date(2001, 1, 1);
    renewing.term =
        Some(agreement::Term { years: 5, renewal: agreement::term::Renewal::Automatic as i32, ..Default::default() });
    for (id, record) in [("ended", ended), ("provisional", provisional), ("renewing", renewing)] {
        stored.create_agreement(create_agreement(id, record)).await.unwrap();
    }
    stored
        .delete_agreement(v1::DeleteAgreementRequest { name: "agreements/ended".into(), ..Default::default() })
        .await
        .unwrap();
    let agreements = stored
        .list_agreements(v1::ListAgreementsRequest { page_size: 1000, show_deleted: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .agreements;
    assert_eq!(agreements.len(), 5, "{agreements:?}");
    let days = [None, date(1990, 1, 1), date(2011, 8, 1), date(2020, 9, 10), date(2025, 1, 1), date(2040, 1, 1)];
    for listed in &agreements {
        for as_of in days {
            let request = v1::GetAgreementRequest { name: listed.name.clone(), as_of };
            let fast = stored.get_agreement(request.clone()).await.unwrap().into_inner();
            let slow = decoded_get(request).await.unwrap();
            assert_eq!(fast, slow, "{} as of {as_of:?}", listed.name);
            if as_of.is_none() {
                assert_eq!(&fast, listed);
            }
        }
    }
    let mut statuses: Vec<_> = agreements.iter().map(|a| a.status()).collect();
    statuses.dedup();
    assert!(statuses.len() > 1, "the example holds agreements in more than one status: {statuses:?}");

    // Lists, page by page: the same records, the same page tokens.
    let queries = [
        ("", "", false),
        ("", "", true),
        ("parties:\"parties/ind\"", "", false),
        ("parties:\"parties/ind\" AND parties:\"parties/jpn\"", "", true),
        ("title:\"India\"", "", false),
        ("status = IN_FORCE", "", false),
        ("", "title desc", true),
        ("parties:\"parties/jpn\"", "signature_date", false),
    ];
    for (filter, order_by, show_deleted) in queries {
        for as_of in [None, date(2011, 8, 1), date(2025, 1, 1)] {
            let mut request = v1::ListAgreementsRequest {
                filter: filter.into(),
                order_by: order_by.into(),
                show_deleted,
                as_of,
                page_size: 2,
                ..Default::default()
            };
            let mut pages = 0;
            loop {
                let fast = stored.list_agreements(request.clone()).await.unwrap().into_inner();
                let slow = decoded_list(request.clone()).await.unwrap();
                assert_eq!(fast, slow, "{request:?}");
                pages += 1;
                if fast.next_page_token.is_empty() {
                    break;
                }
                request.page_token = fast.next_page_token;
            }
            assert!(pages >= 1);
        }
    }
    let everything = v1::ListAgreementsRequest { page_size: 1000, ..Default::default() };
    let live = stored.list_agreements(everything).await.unwrap().into_inner().agreements;
    assert_eq!(live.len(), 4, "the deleted one is left out: {live:?}");
    for request in [
        v1::ListAgreementsRequest { filter: "parties:".into(), ..Default::default() },
        v1::ListAgreementsRequest { page_token: "not-a-token".into(), ..Default::default() },
        v1::ListAgreementsRequest { page_size: -1, ..Default::default() },
    ] {
        let fast = stored.list_agreements(request.clone()).await.unwrap_err();
        let slow = decoded_list(request.clone()).await.unwrap_err();
        assert_eq!((fast.code(), fast.message()), (slow.code(), slow.message()), "{request:?}");
        assert_eq!(fast.code(), Code::InvalidArgument);
    }

    // The other kinds.
    let parties = PartyServiceClient::new(server.channel.clone())
        .list_parties(v1::ListPartiesRequest { page_size: 5, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .parties;
    for party in parties {
        let request = v1::GetPartyRequest { name: party.name.clone() };
        let fast = PartyServiceClient::new(server.channel.clone()).get_party(request.clone()).await.unwrap();
        let slow = server.registry.get::<v1::Party>(&request.name, None).await.unwrap();
        assert_eq!(fast.get_ref(), &slow);
        assert_eq!(fast.get_ref(), &party);
    }
    let domains = PartnershipDomainServiceClient::new(server.channel.clone())
        .list_partnership_domains(v1::ListPartnershipDomainsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .partnership_domains;
    let domain = &domains[0];
    let request = v1::GetPartnershipDomainRequest { name: domain.name.clone() };
    let fast =
        PartnershipDomainServiceClient::new(server.channel.clone()).get_partnership_domain(request).await.unwrap();
    assert_eq!(fast.get_ref(), domain);
    let engagements = EngagementServiceClient::new(server.channel.clone())
        .list_engagements(v1::ListEngagementsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .engagements;
    let engagement = &engagements[0];
    let request = v1::GetEngagementRequest { name: engagement.name.clone() };
    let fast = EngagementServiceClient::new(server.channel.clone()).get_engagement(request).await.unwrap();
    assert_eq!(fast.get_ref(), engagement);

    // Errors: missing, malformed name, bad day.
    for request in [
        v1::GetAgreementRequest { name: "agreements/none".into(), as_of: None },
        v1::GetAgreementRequest { name: "parties/ind".into(), as_of: None },
        v1::GetAgreementRequest { name: agreements[0].name.clone(), as_of: date(2020, 2, 30) },
    ] {
        let fast = stored.get_agreement(request.clone()).await.unwrap_err();
        let slow = decoded_get(request.clone()).await.unwrap_err();
        assert_eq!((fast.code(), fast.message()), (slow.code(), slow.message()), "{request:?}");
        assert_eq!(fast.details(), slow.details(), "{request:?}");
        assert_ne!(fast.code(), Code::Ok);
    }
    server.stop().await;
}

/// A page the indexes answer is served by the async workers when it takes
/// little work, with the same bytes as the full path; one that must read past
/// many soft-deleted records is handed on and still answered whole.
#[tokio::test]
async fn a_quick_page_equals_the_full_one_and_deleted_records_hand_it_on() {
    use cooperation_registry::registry::ListQuery;
    let server = TestServer::start().await;
    let mut client = server.agreements();
    for i in 0..30 {
        client.create_agreement(create_agreement(&format!("q{i:02}"), agreement(&format!("Quick {i}")))).await.unwrap();
    }
    let registry = &server.registry;
    let query = ListQuery { filter: "parties:\"parties/ind\"".into(), page_size: 4, ..Default::default() };
    let quick = registry.list_encoded_quick::<v1::Agreement>(&query).await.unwrap().expect("4 of 30 is quick");
    let full = registry.list_encoded::<v1::Agreement>(&query).await.unwrap();
    assert_eq!((quick.items, quick.next_page_token, quick.revision), (full.items, full.next_page_token, full.revision));
    // A filter the indexes do not answer exactly is never quick.
    let tested = ListQuery { filter: "title:\"Quick\"".into(), ..query.clone() };
    assert!(registry.list_encoded_quick::<v1::Agreement>(&tested).await.unwrap().is_none());
    // Nor is a page too large to hold an async worker for.
    let large = ListQuery { page_size: 101, ..query.clone() };
    assert!(registry.list_encoded_quick::<v1::Agreement>(&large).await.unwrap().is_none());
    let largest_quick = ListQuery { page_size: 100, ..query.clone() };
    assert!(registry.list_encoded_quick::<v1::Agreement>(&largest_quick).await.unwrap().is_some());

    // The first 20 deleted: 4 live records (and one more) are found only
    // after reading 25, more than twice the page.
    for i in 0..20 {
        let name = format!("agreements/q{i:02}");
        client.delete_agreement(v1::DeleteAgreementRequest { name, ..Default::default() }).await.unwrap();
    }
    assert!(registry.list_encoded_quick::<v1::Agreement>(&query).await.unwrap().is_none());
    let page =
        client.list_agreements(list("parties:\"parties/ind\"", "", 4, String::new())).await.unwrap().into_inner();
    let names: Vec<String> = page.agreements.iter().map(|a| a.name.clone()).collect();
    assert_eq!(names, ["agreements/q20", "agreements/q21", "agreements/q22", "agreements/q23"]);
    assert!(page.agreements.iter().all(|a| a.delete_time.is_none() && !a.etag.is_empty()));
    assert!(!page.next_page_token.is_empty());
    let live = all_pages(&server, "parties:\"parties/ind\"", "", 4).await;
    assert_eq!(live, (20..30).map(|i| format!("agreements/q{i:02}")).collect::<Vec<_>>());
    server.stop().await;
}
