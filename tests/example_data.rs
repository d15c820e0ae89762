//! The example datasets capture their sources' facts as structured records
//! (every fact of the seed article; the Paris Agreement with its parties'
//! actions), and load through the import path, each alone and both together;
//! a dataset of large records loads in batches that fit a request.

mod common;

use common::{records::*, server::*};
use cooperation_registry::cli::import::{ImportReport, import, import_file, parse_dataset};
use cooperation_registry::pb::cooperation::v1::relationship_service_client::RelationshipServiceClient;
use cooperation_registry::pb::cooperation::v1::{self as v1, agreement, engagement, partnership_domain, party};
use cooperation_registry::pb::google::r#type::Date;

const DATASET: &str = include_str!("../examples/india-japan-2020.json");
const PARIS: &str = include_str!("../examples/paris-agreement-2015.json");

#[tokio::test]
async fn the_seed_article_is_stored_as_structured_records() {
    let server = TestServer::start().await;
    let dataset = parse_dataset(DATASET).expect("the example parses");
    let report = import(server.channel.clone(), dataset.clone(), false).await.expect("the example imports");
    assert_eq!(report, ImportReport { created: 19, unchanged: 0, skipped: 0, linked: 2 });
    // A second import changes nothing: every record is there as the file has it.
    for skip_existing in [false, true] {
        let again = import(server.channel.clone(), dataset.clone(), skip_existing).await.unwrap();
        assert_eq!(again, ImportReport { created: 0, unchanged: 19, skipped: 0, linked: 0 });
    }
    // A record that differs from the file's stops it, unless skip_existing
    // leaves it as it is.
    let mut changed = dataset.clone();
    changed.agreements[1].title = "Another title".into();
    let err = import(server.channel.clone(), changed.clone(), false).await.unwrap_err();
    assert!(
        err.contains(&format!("{}: it already exists, with other values of title", changed.agreements[1].name))
            && err.contains("--skip-existing"),
        "{err}"
    );
    let skipped = import(server.channel.clone(), changed, true).await.unwrap();
    assert_eq!(skipped, ImportReport { created: 0, unchanged: 18, skipped: 1, linked: 0 });

    let get = |name: &str| v1::GetAgreementRequest { name: name.into(), ..Default::default() };
    let rpss = server.agreements().get_agreement(get("agreements/india-japan-rpss-2020")).await.unwrap().into_inner();
    // Signed 10 September 2020 by the Union Defence Secretary and Japan's ambassador.
    assert_eq!(rpss.signature_date, date(2020, 9, 10));
    let signatories: Vec<_> =
        rpss.signatories.iter().map(|s| (s.person.as_str(), s.post.as_str(), s.party.as_str())).collect();
    assert_eq!(
        signatories,
        [
            ("Ajay Kumar", "Union Defence Secretary", "parties/ind"),
            ("Suzuki Satoshi", "Ambassador of Japan to India", "parties/jpn")
        ]
    );
    assert_eq!(rpss.parties, ["parties/ind", "parties/jpn"]);
    assert_eq!(rpss.format(), v1::Format::Bilateral);
    // For a span of ten years.
    assert_eq!(rpss.term.as_ref().map(|t| (t.years, t.months)), Some((10, 0)));
    // Bases for re-stocking and repair; humanitarian, disaster, UN peacekeeping;
    // medical, transport and communication aid on a reciprocal basis; training.
    let categories: Vec<_> = rpss.provisions.iter().map(|p| (p.category(), p.reciprocal)).collect();
    use agreement::ProvisionCategory as C;
    for expected in [
        (C::BasingAccess, true),
        (C::Logistics, true),
        (C::Training, false),
        (C::HumanitarianAssistance, true),
        (C::DisasterRelief, true),
        (C::Peacekeeping, true),
        (C::Medical, true),
        (C::Transport, true),
        (C::Communications, true),
    ] {
        assert!(categories.contains(&expected), "{expected:?} missing");
    }
    // Signed, not (per the article) in force.
    assert_eq!(rpss.status(), agreement::Status::Signed);
    assert_eq!(rpss.partnership_domains, ["partnershipDomains/india-japan-defence"]);

    // The CEPA, in place since August 2011: a year-month date kept as given.
    let cepa = server.agreements().get_agreement(get("agreements/india-japan-cepa-2011")).await.unwrap().into_inner();
    assert_eq!((cepa.short_name.as_str(), cepa.entry_into_force_date), ("CEPA", date(2011, 8, 0)));
    assert_eq!(cepa.status(), agreement::Status::InForce);

    // The first 2+2 meeting, held in 2019.
    let two_plus_two = server
        .engagements()
        .get_engagement(v1::GetEngagementRequest { name: "engagements/india-japan-2plus2-2019".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (two_plus_two.kind(), two_plus_two.start_date),
        (engagement::Kind::MinisterialDialogue, date(2019, 0, 0))
    );
    // The Act East policy, initiated by India towards ASEAN.
    let act_east = server
        .engagements()
        .get_engagement(v1::GetEngagementRequest { name: "engagements/india-act-east-policy".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(act_east.kind(), engagement::Kind::PolicyInitiative);
    assert_eq!(act_east.participants[0].role(), engagement::Role::Initiator);
    let asean =
        server.parties().get_party(v1::GetPartyRequest { name: "parties/asean".into() }).await.unwrap().into_inner();
    assert_eq!((asean.kind(), asean.members.len()), (party::Kind::RegionalGrouping, 10));

    // The partnership domains, with the trilateral idea as an emerging one, and
    // the forward references from domains to agreements set after import.
    let domains = server
        .domains()
        .list_partnership_domains(v1::ListPartnershipDomainsRequest { page_size: 100, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .partnership_domains;
    let category_of = |id: &str| {
        domains.iter().find(|d| d.name == format!("partnershipDomains/{id}")).map(|d| (d.category(), d.status()))
    };
    use partnership_domain::{Category, Status};
    assert_eq!(category_of("india-japan-infrastructure"), Some((Category::Infrastructure, Status::Active)));
    assert_eq!(category_of("india-japan-civil-nuclear"), Some((Category::CivilNuclear, Status::Active)));
    assert_eq!(category_of("india-japan-culture"), Some((Category::Culture, Status::Active)));
    assert_eq!(category_of("india-japan-economic"), Some((Category::EconomicAndTrade, Status::Active)));
    assert_eq!(category_of("india-japan-defence"), Some((Category::Defence, Status::Active)));
    assert_eq!(category_of("india-japan-healthcare"), Some((Category::Healthcare, Status::Emerging)));
    assert_eq!(category_of("india-asean-maritime-security"), Some((Category::MaritimeSecurity, Status::Active)));
    let trilateral = domains.iter().find(|d| d.name == "partnershipDomains/india-asean-japan-trilateral").unwrap();
    assert_eq!((trilateral.format(), trilateral.status()), (v1::Format::Trilateral, Status::Emerging));
    let defence = domains.iter().find(|d| d.name == "partnershipDomains/india-japan-defence").unwrap();
    assert_eq!(defence.agreements, ["agreements/india-japan-rpss-2020"]);
    server.stop().await;
}

/// An import cut short after it created the records but before it set the
/// references that pointed forward runs again to the end: the records it
/// created count as already there, and the references are set.
#[tokio::test]
async fn an_import_cut_short_before_its_references_runs_again_to_the_end() {
    let server = TestServer::start().await;
    let dataset = parse_dataset(DATASET).unwrap();
    // What the first run created: the parties and the domains, without the
    // agreements the domains name (created after them).
    let mut first = v1::Dataset { parties: dataset.parties.clone(), ..Default::default() };
    for domain in &dataset.partnership_domains {
        first.partnership_domains.push(v1::PartnershipDomain { agreements: Vec::new(), ..domain.clone() });
    }
    import(server.channel.clone(), first, false).await.unwrap();
    let again = import(server.channel.clone(), dataset.clone(), false).await.unwrap();
    assert_eq!(again, ImportReport { created: 5, unchanged: 14, skipped: 0, linked: 2 });
    let get = v1::GetPartnershipDomainRequest { name: "partnershipDomains/india-japan-defence".into() };
    let defence = server.domains().get_partnership_domain(get).await.unwrap().into_inner();
    assert_eq!(defence.agreements, ["agreements/india-japan-rpss-2020"]);
    // And once more: everything is there.
    let last = import(server.channel.clone(), dataset, false).await.unwrap();
    assert_eq!(last, ImportReport { created: 0, unchanged: 19, skipped: 0, linked: 0 });
    server.stop().await;
}

#[test]
fn a_malformed_dataset_is_refused_with_its_position() {
    let err = parse_dataset(r#"{"agreements": [{"title": 5}]}"#).unwrap_err();
    assert!(err.contains("cooperation.v1.Dataset"), "{err}");
    let err = parse_dataset(r#"{"parties": []} trailing"#).unwrap_err();
    assert!(err.contains("trailing"), "{err}");
}

/// A dataset file is read as a stream, whatever the order of its lists and
/// whichever of the two JSON names they go by: the same records, the same
/// forward references set, as from the dataset in memory; a record that does
/// not parse is named with its place in the file.
#[tokio::test]
async fn a_dataset_file_imports_whatever_the_order_of_its_lists() {
    let dataset: serde_json::Value = serde_json::from_str(DATASET).unwrap();
    let mut reordered = serde_json::Map::new();
    for (key, renamed) in [
        ("engagements", "engagements"),
        ("agreements", "agreements"),
        ("partnershipDomains", "partnership_domains"),
        ("parties", "parties"),
    ] {
        let list = dataset.get(key).or_else(|| dataset.get(renamed)).cloned().unwrap();
        reordered.insert(renamed.to_string(), list);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reordered.json");
    std::fs::write(&path, serde_json::to_string_pretty(&reordered).unwrap()).unwrap();

    let server = TestServer::start().await;
    let report = import_file(server.channel.clone(), &path, false, None).await.unwrap();
    assert_eq!(report, ImportReport { created: 19, unchanged: 0, skipped: 0, linked: 2 });
    let again = import_file(server.channel.clone(), &path, true, None).await.unwrap();
    assert_eq!(again, ImportReport { created: 0, unchanged: 19, skipped: 0, linked: 0 });
    let domain = server
        .domains()
        .get_partnership_domain(v1::GetPartnershipDomainRequest {
            name: "partnershipDomains/india-japan-defence".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(domain.agreements, ["agreements/india-japan-rpss-2020"]);

    // A record that does not parse stops the import, named by line and column.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"agreements\": [\n  {\"name\": \"agreements/x\", \"title\": 5}\n]}").unwrap();
    let err = import_file(server.channel.clone(), &bad, false, None).await.unwrap_err();
    assert!(err.contains("line 2") && err.contains("bad.json"), "{err}");
    std::fs::write(&bad, "{\"agreemints\": []}").unwrap();
    let err = import_file(server.channel.clone(), &bad, false, None).await.unwrap_err();
    assert!(err.contains("agreemints"), "{err}");
    server.stop().await;
}

/// Each party's status of the Paris Agreement on `as_of`, by party id.
async fn paris_as_of(server: &TestServer, as_of: Option<Date>) -> Vec<(String, agreement::PartyStatus)> {
    let request = v1::GetAgreementRequest { name: "agreements/paris-agreement-2015".into(), as_of };
    let paris = server.agreements().get_agreement(request).await.unwrap().into_inner();
    paris
        .parties_status
        .iter()
        .map(|(p, s)| (p.trim_start_matches("parties/").to_string(), agreement::PartyStatus::try_from(*s).unwrap()))
        .collect()
}

fn status_of(statuses: &[(String, agreement::PartyStatus)], party: &str) -> agreement::PartyStatus {
    statuses.iter().find(|(p, _)| p == party).map(|(_, s)| *s).unwrap_or_else(|| panic!("{party} is no party"))
}

/// The Paris Agreement example: a multilateral agreement whose parties each
/// have their own dates, answering what a user asks of each party's status.
#[tokio::test]
async fn the_paris_agreement_answers_each_party_s_status() {
    let server = TestServer::start().await;
    let dataset = parse_dataset(PARIS).expect("the Paris example parses");
    let report = import(server.channel.clone(), dataset, false).await.expect("the Paris example imports");
    // The European Union, the agreement and the signing ceremony.
    assert_eq!(report, ImportReport { created: 3, unchanged: 0, skipped: 0, linked: 0 });

    let request = v1::GetAgreementRequest { name: "agreements/paris-agreement-2015".into(), as_of: None };
    let paris = server.agreements().get_agreement(request).await.unwrap().into_inner();
    assert_eq!(paris.title, "Paris Agreement");
    assert_eq!((paris.format(), paris.bindingness()), (v1::Format::Multilateral, agreement::Bindingness::Binding));
    assert_eq!((paris.signature_date, paris.signature_place.as_str()), (date(2015, 12, 12), "Paris"));
    assert_eq!(paris.entry_into_force_date, date(2016, 11, 4));
    assert!(paris.entry_into_force_provision.starts_with("in accordance with article 21(1)"));
    let identifiers: Vec<_> = paris.identifiers.iter().map(|i| (i.scheme.as_str(), i.value.as_str())).collect();
    assert_eq!(identifiers, [("unts", "I:54113"), ("untc-mtdsg", "XXVII-7-d")]);
    assert_eq!(paris.authentic_languages, ["ar", "zh", "en", "fr", "ru", "es"]);
    assert!(paris.parties.len() >= 8 && paris.parties.contains(&"parties/eu".to_string()));
    // Every action is dated and sourced, with a URL.
    assert!(paris.party_actions.len() >= 16);
    for action in &paris.party_actions {
        assert!(action.date.is_some(), "{action:?}");
        assert!(action.source.as_ref().is_some_and(|s| s.url.starts_with("https://")), "{action:?}");
    }
    let declarations = paris.party_actions.iter().filter(|a| a.kind() == agreement::party_action::Kind::Declaration);
    assert!(declarations.clone().count() >= 1 && declarations.clone().all(|a| !a.text.is_empty()));
    let eu = server.parties().get_party(v1::GetPartyRequest { name: "parties/eu".into() }).await.unwrap().into_inner();
    assert_eq!((eu.kind(), eu.members.len()), (party::Kind::InternationalOrganization, 27));

    use agreement::PartyStatus as P;
    // 2016-11-20: in force since 4 November; Japan accepted on 8 November, in
    // force for it from 8 December; Iran has only signed; India ratified.
    let early = paris_as_of(&server, date(2016, 11, 20)).await;
    assert_eq!(status_of(&early, "usa"), P::InForce);
    assert_eq!(status_of(&early, "jpn"), P::Ratified);
    assert_eq!(status_of(&early, "irn"), P::Signed);
    assert_eq!(status_of(&early, "ind"), P::InForce);
    assert_eq!(status_of(&early, "eu"), P::InForce);
    assert_eq!(status_of(&early, "tur"), P::Signed);
    // Before the signatures opened: each signatory's actions lie ahead.
    assert_eq!(status_of(&paris_as_of(&server, date(2016, 1, 1)).await, "ind"), P::NotYetSigned);
    // The United States: withdrawn from 2020-11-04, in force again from
    // 2021-02-19, withdrawing (notified 2025-01-27) from 2026-01-27.
    for (as_of, expected) in [
        (date(2020, 11, 3), P::InForce),
        (date(2021, 1, 1), P::Withdrawn),
        (date(2021, 2, 1), P::Ratified),
        (date(2022, 1, 1), P::InForce),
        (date(2025, 6, 1), P::InForce),
        (date(2026, 6, 1), P::Withdrawn),
    ] {
        assert_eq!(status_of(&paris_as_of(&server, as_of).await, "usa"), expected, "{as_of:?}");
    }
    // Iran, signed only: still signed; Japan in force.
    let later = paris_as_of(&server, date(2026, 6, 1)).await;
    assert_eq!((status_of(&later, "irn"), status_of(&later, "jpn")), (P::Signed, P::InForce));

    // In force for India; ratified but not yet in force for a party between
    // its consent and its effect.
    let paris_only = ["agreements/paris-agreement-2015"];
    assert_eq!(agreements_found(&server, "parties_status.parties/ind = IN_FORCE", date(2025, 1, 1)).await, paris_only);
    assert_eq!(
        agreements_found(&server, "parties_status.parties/jpn = RATIFIED", date(2016, 11, 20)).await,
        paris_only
    );
    assert_eq!(agreements_found(&server, "parties_status.parties/tur = RATIFIED", date(2021, 11, 1)).await, paris_only);
    assert!(agreements_found(&server, "parties_status.parties/tur = RATIFIED", date(2021, 11, 10)).await.is_empty());
    assert_eq!(
        agreements_found(&server, "parties_status.parties/rus = RATIFIED", date(2019, 10, 20)).await,
        paris_only
    );
    assert_eq!(agreements_found(&server, "parties_status.parties/irn = SIGNED", date(2025, 1, 1)).await, paris_only);
    assert_eq!(agreements_found(&server, "parties_status.parties/usa = WITHDRAWN", date(2021, 1, 1)).await, paris_only);

    // Between India and the United States: not in force while the United
    // States was out, in force once it was back.
    let mut relationships = RelationshipServiceClient::new(server.channel.clone());
    let between = |as_of| v1::GetRelationshipRequest {
        parties: vec!["parties/ind".into(), "parties/usa".into()],
        as_of,
        ..Default::default()
    };
    let out = relationships.get_relationship(between(date(2021, 1, 1))).await.unwrap().into_inner();
    assert_eq!(out.agreements.iter().map(|a| a.agreement.as_str()).collect::<Vec<_>>(), paris_only);
    assert!(out.agreements_in_force.is_empty(), "{:?}", out.agreements_in_force);
    assert_eq!(out.agreements[0].status(), agreement::Status::InForce, "in force as a whole");
    assert_eq!(out.agreements[0].parties_status["parties/usa"], P::Withdrawn as i32);
    let back = relationships.get_relationship(between(date(2022, 1, 1))).await.unwrap().into_inner();
    assert_eq!(back.agreements_in_force, paris_only);
    assert_eq!(back.counts.unwrap().agreements_in_force, 1);
    // The signing ceremony is on their timeline.
    assert_eq!(
        back.engagements.iter().map(|e| e.engagement.as_str()).collect::<Vec<_>>(),
        ["engagements/paris-agreement-signing-2016"]
    );
    server.stop().await;
}

/// Both examples load into one server, in either order, without a clash,
/// and answer together.
#[tokio::test]
async fn both_examples_load_into_one_server() {
    for order in [[DATASET, PARIS], [PARIS, DATASET]] {
        let server = TestServer::start().await;
        let mut created = 0;
        for text in order {
            let report = import(server.channel.clone(), parse_dataset(text).unwrap(), false).await.expect("imports");
            created += report.created;
        }
        assert_eq!(created, 19 + 3);
        // In force for India on 2025-01-01: the CEPA (no party actions, so
        // the agreement's own status) and the Paris Agreement.
        assert_eq!(
            agreements_found(&server, "parties_status.parties/ind = IN_FORCE", date(2025, 1, 1)).await,
            ["agreements/india-japan-cepa-2011", "agreements/paris-agreement-2015"]
        );
        assert_eq!(
            agreements_found(&server, "parties_status.parties/jpn = RATIFIED", date(2016, 11, 20)).await,
            ["agreements/paris-agreement-2015"]
        );
        let mut relationships = RelationshipServiceClient::new(server.channel.clone());
        let request = v1::GetRelationshipRequest {
            parties: vec!["parties/ind".into(), "parties/jpn".into()],
            as_of: date(2025, 1, 1),
            ..Default::default()
        };
        let got = relationships.get_relationship(request).await.unwrap().into_inner();
        assert_eq!(got.agreements_in_force, ["agreements/india-japan-cepa-2011", "agreements/paris-agreement-2015"]);
        server.stop().await;
    }
}

/// Records of 8 KB, a thousand of them (8 MB, twice what a server takes in
/// one request by default): import sends them in batches of fewer records,
/// and every one is created.
#[tokio::test]
async fn large_records_import_in_batches_that_fit_a_request() {
    let server = TestServer::start().await;
    let agreements = (0..1000)
        .map(|i| v1::Agreement {
            name: format!("agreements/large-{i:04}"),
            description: "A long summary of the agreement. ".repeat(250),
            ..agreement(&format!("Large {i}"))
        })
        .collect();
    let dataset = v1::Dataset { agreements, ..Default::default() };
    let report = import(server.channel.clone(), dataset, false).await.unwrap();
    assert_eq!(report, ImportReport { created: 1000, unchanged: 0, skipped: 0, linked: 0 });
    // (Pages of 100: a thousand of them would not fit one answer either.)
    let (mut listed, mut token) = (0, String::new());
    loop {
        let request = v1::ListAgreementsRequest { page_size: 100, page_token: token, ..Default::default() };
        let page = server.agreements().list_agreements(request).await.unwrap().into_inner();
        listed += page.agreements.iter().filter(|a| a.description.len() == 8250).count();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(listed, 1000);
}
