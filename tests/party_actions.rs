//! Each party's own actions on an agreement, through the API: stored and
//! checked on write, each party's status derived on read as of a day,
//! filtered on, kept in history, and used by GetRelationship.

mod common;

use common::{client::*, records::*, server::*};
use cooperation_registry::pb::cooperation::v1::change_service_client::ChangeServiceClient;
use cooperation_registry::pb::cooperation::v1::relationship_service_client::RelationshipServiceClient;
use cooperation_registry::pb::cooperation::v1::{
    self as v1, Agreement, agreement, agreement::PartyStatus, agreement::party_action::Kind, change,
};
use cooperation_registry::pb::google::r#type::Date;
use prost_types::FieldMask;
use tonic::Code;

fn action(party: &str, kind: Kind, on: Option<Date>, effective: Option<Date>) -> agreement::PartyAction {
    agreement::PartyAction {
        party: format!("parties/{party}"),
        kind: kind as i32,
        date: on,
        effective_date: effective,
        ..Default::default()
    }
}

/// A multilateral agreement in the shape of the Paris Agreement: in force
/// from 2016-11-04; the United States accepted it and withdrew (effective
/// 2020-11-04); Japan accepted it after it entered into force; Iran signed
/// only; India has no actions recorded.
fn multilateral() -> Agreement {
    Agreement {
        title: "A multilateral agreement with each party's actions".into(),
        parties: ["usa", "jpn", "irn", "ind"].iter().map(|p| format!("parties/{p}")).collect(),
        signature_date: date(2016, 4, 22),
        entry_into_force_date: date(2016, 11, 4),
        party_actions: vec![
            action("usa", Kind::Signature, date(2016, 4, 22), None),
            action("usa", Kind::Acceptance, date(2016, 9, 3), date(2016, 11, 4)),
            action("usa", Kind::Withdrawal, date(2019, 11, 4), date(2020, 11, 4)),
            action("jpn", Kind::Signature, date(2016, 4, 22), None),
            action("jpn", Kind::Acceptance, date(2016, 11, 8), date(2016, 12, 8)),
            action("irn", Kind::Signature, date(2016, 4, 22), None),
            agreement::PartyAction {
                text: "Declaration on signature.".into(),
                ..action("irn", Kind::Declaration, date(2016, 4, 22), None)
            },
        ],
        ..Default::default()
    }
}

fn statuses(a: &Agreement) -> Vec<(String, PartyStatus)> {
    a.parties_status.iter().map(|(p, s)| (p.clone(), PartyStatus::try_from(*s).unwrap())).collect()
}

fn named(pairs: &[(&str, PartyStatus)]) -> Vec<(String, PartyStatus)> {
    let mut pairs: Vec<(String, PartyStatus)> = pairs.iter().map(|(p, s)| (format!("parties/{p}"), *s)).collect();
    pairs.sort();
    pairs
}

async fn get_as_of(server: &TestServer, name: &str, as_of: Option<Date>) -> Agreement {
    let request = v1::GetAgreementRequest { name: name.into(), as_of };
    server.agreements().get_agreement(request).await.unwrap().into_inner()
}

#[tokio::test]
async fn each_party_s_status_is_derived_from_its_actions_and_filtered_on() {
    let server = TestServer::start().await;
    let mut client = server.agreements();
    let created = client.create_agreement(create_agreement("paris", multilateral())).await.unwrap().into_inner();
    assert_eq!(created.party_actions, multilateral().party_actions, "stored as given");
    // A bilateral agreement with no actions: each party shares its status.
    let bilateral = Agreement { entry_into_force_date: date(2020, 9, 10), ..agreement("Bilateral") };
    client.create_agreement(create_agreement("bilateral", bilateral)).await.unwrap();

    use PartyStatus as P;
    let paris = get_as_of(&server, "agreements/paris", date(2016, 11, 20)).await;
    assert_eq!(
        statuses(&paris),
        named(&[("usa", P::InForce), ("jpn", P::Ratified), ("irn", P::Signed), ("ind", P::InForce)])
    );
    let paris = get_as_of(&server, "agreements/paris", date(2021, 1, 1)).await;
    assert_eq!(paris.status, agreement::Status::InForce as i32, "in force as a whole");
    assert_eq!(
        statuses(&paris),
        named(&[("usa", P::Withdrawn), ("jpn", P::InForce), ("irn", P::Signed), ("ind", P::InForce)])
    );
    let both = get_as_of(&server, "agreements/bilateral", date(2021, 1, 1)).await;
    assert_eq!(statuses(&both), named(&[("ind", P::InForce), ("jpn", P::InForce)]));

    // Filters reach each party's status, as of the request's day; the
    // party's indexes narrow them.
    let on = date(2021, 1, 1);
    assert_eq!(agreements_found(&server, "parties_status.parties/usa = WITHDRAWN", on).await, ["agreements/paris"]);
    assert_eq!(agreements_found(&server, "parties_status.parties/usa = IN_FORCE", on).await, Vec::<String>::new());
    assert_eq!(
        agreements_found(&server, "parties_status.parties/jpn = PARTY_STATUS_IN_FORCE", on).await,
        ["agreements/bilateral", "agreements/paris"]
    );
    assert_eq!(
        agreements_found(&server, "parties_status.parties/jpn = RATIFIED", date(2016, 11, 20)).await,
        ["agreements/paris"]
    );
    assert_eq!(
        agreements_found(&server, "status = IN_FORCE AND parties_status.parties/irn != IN_FORCE", on).await,
        ["agreements/bilateral", "agreements/paris"],
        "Iran is not a party to the bilateral one: no key, and != holds"
    );
    assert_eq!(agreements_found(&server, "parties_status:parties/irn", on).await, ["agreements/paris"]);
    let err = client
        .list_agreements(v1::ListAgreementsRequest {
            filter: "parties_status.parties/usa = GONE".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("GONE"), "{}", err.message());
}

#[tokio::test]
async fn bad_actions_are_refused_naming_the_field_and_nothing_is_stored() {
    let server = TestServer::start().await;
    let mut client = server.agreements();
    let cases: Vec<(Vec<agreement::PartyAction>, &str, &str)> = vec![
        (
            vec![action("ind", Kind::Ratification, date(2016, 10, 2), None)],
            "agreement.party_actions[0].kind",
            "follows a signature",
        ),
        (
            vec![action("fra", Kind::Signature, date(2016, 4, 22), None)],
            "agreement.party_actions[0].party",
            "not one of the agreement's parties",
        ),
        (
            vec![
                action("ind", Kind::Signature, date(2016, 4, 22), None),
                action("ind", Kind::Withdrawal, date(2020, 1, 1), None),
            ],
            "agreement.party_actions[1].kind",
            "consent to be bound",
        ),
        (
            vec![action("ind", Kind::Accession, date(2016, 10, 2), date(2016, 9, 0))],
            "agreement.party_actions[0].effective_date",
            "is before",
        ),
        (vec![action("ind", Kind::Unspecified, date(2016, 10, 2), None)], "agreement.party_actions[0].kind", ""),
        (vec![action("ind", Kind::Accession, None, None)], "agreement.party_actions[0].date", ""),
    ];
    for (actions, field, words) in cases {
        let bad = Agreement { party_actions: actions.clone(), ..multilateral() };
        let err = client.create_agreement(create_agreement("bad", bad)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{actions:?}");
        assert!(violated_fields(&err).contains(&field.to_string()), "{actions:?}: {:?}", violated_fields(&err));
        assert!(err.message().contains(words), "{actions:?}: {}", err.message());
    }
    assert_eq!(count_agreements(&server, true).await, 0, "nothing stored");

    // An update that breaks the rules leaves the record as it was.
    let created = client.create_agreement(create_agreement("paris", multilateral())).await.unwrap().into_inner();
    let mut broken = created.clone();
    broken.party_actions.push(action("irn", Kind::Withdrawal, date(2020, 1, 1), None));
    let mask = FieldMask { paths: vec!["party_actions".into()] };
    let err = client.update_agreement(update_request(broken, Some(mask))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(get_as_of(&server, "agreements/paris", None).await.etag, created.etag);
}

#[tokio::test]
async fn actions_change_through_a_field_mask_and_history_keeps_each_version() {
    let server = TestServer::start().await;
    let mut client = server.agreements();
    let created = client.create_agreement(create_agreement("paris", multilateral())).await.unwrap().into_inner();

    // The United States accepts again; only party_actions changes.
    let mut again = Agreement { name: "agreements/paris".into(), ..Default::default() };
    again.party_actions = multilateral().party_actions;
    again.party_actions.push(action("usa", Kind::Acceptance, date(2021, 1, 20), date(2021, 2, 19)));
    let mask = FieldMask { paths: vec!["party_actions".into()] };
    let updated = client.update_agreement(update_request(again, Some(mask))).await.unwrap().into_inner();
    assert_eq!(updated.title, created.title, "the rest is untouched");
    assert_eq!(updated.party_actions.len(), created.party_actions.len() + 1);
    let later = get_as_of(&server, "agreements/paris", date(2022, 1, 1)).await;
    assert_eq!(later.parties_status["parties/usa"], PartyStatus::InForce as i32);

    // History shows the version before, with the actions it had.
    let mut changes = ChangeServiceClient::new(server.channel.clone());
    let then = changes
        .get_revision(v1::GetRevisionRequest {
            name: "agreements/paris".into(),
            revision: created.etag.parse().unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(change::Record::Agreement(original)) = then.record else { panic!("an agreement") };
    assert_eq!(original.party_actions, created.party_actions);
}

#[tokio::test]
async fn a_relationship_is_not_in_force_between_parties_one_of_which_has_left() {
    let server = TestServer::start().await;
    let mut client = server.agreements();
    client.create_agreement(create_agreement("paris", multilateral())).await.unwrap();
    let bilateral = Agreement {
        parties: vec!["parties/usa".into(), "parties/jpn".into()],
        signature_date: date(2015, 12, 1),
        entry_into_force_date: date(2016, 1, 1),
        ..agreement("Bilateral")
    };
    client.create_agreement(create_agreement("bilateral", bilateral)).await.unwrap();

    let mut relationships = RelationshipServiceClient::new(server.channel.clone());
    let ask = |parties: &[&str], as_of| v1::GetRelationshipRequest {
        parties: parties.iter().map(|p| format!("parties/{p}")).collect(),
        as_of,
        ..Default::default()
    };
    // Two parties (the records are read) and one party alone (its outline
    // set is read): the same answer for the multilateral agreement.
    for parties in [&["usa", "jpn"][..], &["usa"]] {
        let before = relationships.get_relationship(ask(parties, date(2019, 1, 1))).await.unwrap().into_inner();
        assert_eq!(before.agreements_in_force, ["agreements/bilateral", "agreements/paris"], "{parties:?}");
        let after = relationships.get_relationship(ask(parties, date(2021, 1, 1))).await.unwrap().into_inner();
        assert_eq!(after.agreements_in_force, ["agreements/bilateral"], "{parties:?}: the United States left");
        assert_eq!(after.counts.unwrap().agreements_in_force, 1);
        let summary = after.agreements.iter().find(|a| a.agreement == "agreements/paris").unwrap();
        assert_eq!(summary.status, agreement::Status::InForce as i32, "in force as a whole");
        assert_eq!(summary.parties_status["parties/usa"], PartyStatus::Withdrawn as i32);
        assert_eq!(summary.parties_status.len(), parties.len(), "the asked parties only");
    }
    // Japan before its acceptance took effect: not yet in force between them.
    let early = relationships.get_relationship(ask(&["jpn", "irn"], date(2016, 11, 20))).await.unwrap().into_inner();
    assert_eq!(early.counts.unwrap().agreements, 1);
    assert!(early.agreements_in_force.is_empty());
    assert_eq!(early.agreements[0].parties_status["parties/jpn"], PartyStatus::Ratified as i32);
}

/// Agreement `i` of a varied dataset: dates, terms and ends of every kind,
/// and party actions on some (consents with their own dates, withdrawals).
fn varied(i: i32) -> Agreement {
    const STATES: [&str; 4] = ["ind", "jpn", "usa", "fra"];
    let parties: Vec<String> = [STATES[i as usize % 4], STATES[(i as usize + 1 + i as usize / 4) % 4]]
        .iter()
        .map(|p| format!("parties/{p}"))
        .collect();
    let parties = if parties[0] == parties[1] { vec![parties[0].clone(), "parties/deu".into()] } else { parties };
    let year = 2000 + i % 20;
    let signed = date(year, 1 + i % 12, 1 + i % 28);
    let in_force = (i % 3 != 0).then(|| Date { year: year + 1, month: 1 + i % 12, day: 1 });
    let end = (i % 7 == 0 && in_force.is_some()).then(|| agreement::End {
        date: date(year + 6, 1, 1),
        reason: [agreement::end::Reason::Expiry, agreement::end::Reason::Superseded, agreement::end::Reason::Withdrawal]
            [i as usize % 3] as i32,
        ..Default::default()
    });
    let term = (i % 5 == 0).then(|| agreement::Term { years: 3, ..Default::default() });
    let mut party_actions = Vec::new();
    if i % 4 == 0 {
        let first = parties[0].trim_start_matches("parties/").to_string();
        party_actions.push(action(&first, Kind::Signature, signed, None));
        party_actions.push(action(&first, Kind::Ratification, date(year, 12, 31), date(year + 2, 6, 1)));
        if i % 8 == 0 {
            party_actions.push(action(&first, Kind::Withdrawal, date(year + 3, 1, 1), date(year + 4, 1, 1)));
        }
    }
    if i % 4 == 1 {
        // Signed only, and applied provisionally on some: never bound.
        let second = parties[1].trim_start_matches("parties/").to_string();
        party_actions.push(action(&second, Kind::Signature, signed, None));
        if i % 3 == 1 {
            party_actions.push(action(&second, Kind::ProvisionalApplication, date(year, 12, 1), None));
        }
    }
    let provisional_application_date = (i % 6 == 2).then_some(Date { year, month: 12, day: 31 });
    Agreement {
        title: format!("Varied {i:03}"),
        parties,
        signature_date: signed,
        entry_into_force_date: in_force,
        end,
        term,
        party_actions,
        provisional_application_date,
        ..Default::default()
    }
}

/// Filters on a party's status give what reading every record gives: the
/// planner's narrowing (the party's agreements, and the agreement's status
/// where the party's implies it) loses nothing.
#[tokio::test]
async fn planned_party_status_filters_equal_full_scans() {
    let server = TestServer::start().await;
    let mut client = server.agreements();
    for i in 0..80 {
        client.create_agreement(create_agreement(&format!("v{i:03}"), varied(i))).await.unwrap();
    }
    let mut matched = 0;
    for day in [date(2001, 1, 1), date(2005, 6, 1), date(2012, 3, 15), date(2019, 12, 31), date(2030, 1, 1)] {
        for party in ["ind", "jpn", "usa", "deu"] {
            for status in [
                "IN_FORCE",
                "RATIFIED",
                "WITHDRAWN",
                "SIGNED",
                "NOT_YET_SIGNED",
                "PROVISIONALLY_APPLIED",
                "UNSPECIFIED",
                "EXPIRED",
                "TERMINATED",
                "SUPERSEDED",
            ] {
                for filter in [
                    format!("parties_status.parties/{party} = {status}"),
                    format!("parties_status.parties/{party} = {status} AND status = IN_FORCE"),
                    format!("parties_status.parties/{party} = {status} OR parties:\"parties/fra\""),
                ] {
                    let planned = agreements_found(&server, &filter, day).await;
                    let scanned = agreements_found(&server, &format!("NOT (NOT ({filter}))"), day).await;
                    assert_eq!(planned, scanned, "{filter} on {day:?}");
                    matched += planned.len();
                }
            }
        }
    }
    assert!(matched > 100, "the filters match something ({matched})");
}
