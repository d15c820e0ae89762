//! The standard methods of every resource through the generated clients, with
//! their failure paths.

mod common;

use common::{client::*, records::*, server::*};
use cooperation_registry::pb::cooperation::v1::{self as v1, agreement, engagement, partnership_domain, party};
use prost_types::FieldMask;
use tonic::Code;

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() })
}

#[tokio::test]
async fn iso_states_exist_from_the_first_start() {
    let server = TestServer::start().await;
    let mut parties = server.parties();
    let india = parties.get_party(v1::GetPartyRequest { name: "parties/ind".into() }).await.unwrap().into_inner();
    assert_eq!((india.display_name.as_str(), india.kind()), ("India", party::Kind::State));
    assert_eq!((india.iso_alpha2.as_str(), india.iso_alpha3.as_str()), ("IN", "IND"));
    let japan = parties.get_party(v1::GetPartyRequest { name: "parties/jpn".into() }).await.unwrap().into_inner();
    assert_eq!(japan.display_name, "Japan");
    assert!(!japan.etag.is_empty() && japan.create_time.is_some());

    let all = parties
        .list_parties(v1::ListPartiesRequest { page_size: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.parties.len(), 249);
    assert!(all.next_page_token.is_empty());
    let names: Vec<_> = all.parties.iter().map(|p| p.name.clone()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "default order is ascending resource name");
    server.stop().await;
}

#[tokio::test]
async fn agreement_lifecycle_create_get_update_delete_undelete() {
    let server = TestServer::start().await;
    let mut client = server.agreements();

    let mut input = agreement("India–Japan RPSS");
    input.entry_into_force_date = date(2020, 9, 10);
    input.term = Some(agreement::Term { years: 10, ..Default::default() });
    input.signatories = vec![agreement::Signatory {
        person: "Ajay Kumar".into(),
        post: "Union Defence Secretary".into(),
        party: "parties/ind".into(),
        ..Default::default()
    }];
    input.provisions = vec![agreement::Provision {
        category: agreement::ProvisionCategory::BasingAccess as i32,
        summary: "re-stocking and repair".into(),
        reciprocal: true,
        ..Default::default()
    }];
    input.labels.insert("region".into(), "indo-pacific".into());
    // Output-only fields in the input are ignored.
    input.status = agreement::Status::Terminated as i32;
    input.etag = "bogus".into();
    input.name = "agreements/ignored".into();

    let created = client.create_agreement(create_agreement("rpss", input)).await.unwrap().into_inner();
    assert_eq!(created.name, "agreements/rpss");
    assert_eq!(created.format(), v1::Format::Bilateral, "format derived from two parties");
    assert_eq!(created.status(), agreement::Status::InForce, "derived as of today");
    assert_ne!(created.etag, "bogus");
    assert!(created.create_time.is_some() && created.create_time == created.update_time);
    assert!(created.delete_time.is_none());

    let got = client
        .get_agreement(v1::GetAgreementRequest { name: "agreements/rpss".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);

    // Update with a snake_case and a camelCase path; other fields stay.
    let patch = v1::Agreement {
        name: "agreements/rpss".into(),
        title: "Renamed".into(),
        short_name: "RPSS".into(),
        signature_place: "not in the mask".into(),
        etag: created.etag.clone(),
        ..Default::default()
    };
    let updated =
        client.update_agreement(update_request(patch, mask(&["title", "shortName"]))).await.unwrap().into_inner();
    assert_eq!((updated.title.as_str(), updated.short_name.as_str()), ("Renamed", "RPSS"));
    assert_eq!(updated.signature_place, "");
    assert_eq!(updated.term, created.term);
    assert_eq!(updated.create_time, created.create_time);
    assert_ne!(updated.update_time, created.update_time);
    assert_ne!(updated.etag, created.etag);

    // The old etag is stale now.
    let stale = v1::Agreement {
        name: "agreements/rpss".into(),
        title: "Lost".into(),
        etag: created.etag.clone(),
        ..Default::default()
    };
    let err = client.update_agreement(update_request(stale, mask(&["title"]))).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert_eq!(reason(&err), "ETAG_MISMATCH");
    let err = client
        .delete_agreement(v1::DeleteAgreementRequest {
            name: "agreements/rpss".into(),
            etag: created.etag.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);

    // Soft delete: Get still answers, List hides it unless asked.
    let deleted = client
        .delete_agreement(v1::DeleteAgreementRequest {
            name: "agreements/rpss".into(),
            etag: updated.etag.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.delete_time.is_some());
    let got = client
        .get_agreement(v1::GetAgreementRequest { name: "agreements/rpss".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(got.delete_time.is_some());
    assert_eq!(count_agreements(&server, false).await, 0);
    assert_eq!(count_agreements(&server, true).await, 1);

    // A deleted record can be neither updated nor deleted again; creating its name again is ALREADY_EXISTS.
    let again = client
        .delete_agreement(v1::DeleteAgreementRequest { name: "agreements/rpss".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    let update_deleted = client
        .update_agreement(v1::UpdateAgreementRequest {
            agreement: Some(v1::Agreement { name: "agreements/rpss".into(), title: "x".into(), ..Default::default() }),
            update_mask: mask(&["title"]),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(update_deleted.code(), Code::FailedPrecondition);
    let duplicate = client.create_agreement(create_agreement("rpss", agreement("again"))).await.unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);

    let restored = client
        .undelete_agreement(v1::UndeleteAgreementRequest {
            name: "agreements/rpss".into(),
            etag: deleted.etag.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(restored.delete_time.is_none());
    assert_eq!(restored.title, "Renamed");
    assert_eq!(count_agreements(&server, false).await, 1);
    let live = client
        .undelete_agreement(v1::UndeleteAgreementRequest { name: "agreements/rpss".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(live.code(), Code::FailedPrecondition);
    server.stop().await;
}

#[tokio::test]
async fn every_violation_is_reported_at_once_and_nothing_is_stored() {
    let server = TestServer::start().await;
    let mut client = server.agreements();
    let bad = v1::Agreement {
        title: String::new(),
        parties: vec!["parties/ind".into(), "parties/nowhere".into(), "countries/jpn".into()],
        signature_date: date(2020, 13, 1),
        entry_into_force_date: date(2021, 2, 29),
        signatories: vec![agreement::Signatory {
            person: "X".into(),
            party: "parties/fra".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let err = client.create_agreement(create_agreement("Bad_Id", bad)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(reason(&err), "INVALID_REQUEST");
    let fields = violated_fields(&err);
    for expected in [
        "agreement_id",
        "agreement.title",
        "agreement.parties[1]",
        "agreement.parties[2]",
        "agreement.signature_date",
        "agreement.entry_into_force_date",
        "agreement.signatories[0].party",
    ] {
        assert!(fields.contains(&expected.to_string()), "{expected} missing from {fields:?}");
    }
    assert!(err.message().contains("month must be from 1 to 12"), "{}", err.message());
    assert!(err.message().contains("parties/nowhere does not exist"), "{}", err.message());
    assert_eq!(count_agreements(&server, true).await, 0);

    // A missing resource, a bad name, a negative page size.
    let err = client.create_agreement(v1::CreateAgreementRequest::default()).await.unwrap_err();
    assert_eq!((err.code(), violated_fields(&err)), (Code::InvalidArgument, vec!["agreement".to_string()]));
    let err = client
        .get_agreement(v1::GetAgreementRequest { name: "parties/ind".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!((err.code(), violated_fields(&err)), (Code::InvalidArgument, vec!["name".to_string()]));
    let err = client
        .get_agreement(v1::GetAgreementRequest { name: "agreements/missing".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!((err.code(), reason(&err)), (Code::NotFound, "RESOURCE_NOT_FOUND".to_string()));
    let err =
        client.list_agreements(v1::ListAgreementsRequest { page_size: -1, ..Default::default() }).await.unwrap_err();
    assert_eq!((err.code(), violated_fields(&err)), (Code::InvalidArgument, vec!["page_size".to_string()]));

    // Rules of the other kinds.
    let err = server
        .domains()
        .create_partnership_domain(v1::CreatePartnershipDomainRequest {
            partnership_domain: Some(v1::PartnershipDomain {
                title: "t".into(),
                parties: vec!["parties/ind".into()],
                since_date: date(2011, 8, 0),
                end_date: date(2010, 0, 0),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&err),
        ["partnership_domain.category", "partnership_domain.parties", "partnership_domain.end_date"]
    );
    let err = server
        .engagements()
        .create_engagement(v1::CreateEngagementRequest {
            engagement: Some(v1::Engagement {
                title: "t".into(),
                kind: 99,
                participants: vec![
                    engagement::Participant { party: "parties/ind".into(), ..Default::default() },
                    engagement::Participant { party: "parties/ind".into(), ..Default::default() },
                ],
                cameo_code: "5x".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["engagement.kind", "engagement.participants[1].party", "engagement.cameo_code"]);
    server.stop().await;
}

#[tokio::test]
async fn update_masks_star_implied_and_unknown_paths() {
    let server = TestServer::start().await;
    let mut client = server.agreements();
    let mut input = agreement("Original");
    input.short_name = "ORIG".into();
    input.term = Some(agreement::Term { years: 5, months: 6, ..Default::default() });
    client.create_agreement(create_agreement("a", input)).await.unwrap();

    let update = |agreement: v1::Agreement, paths: Option<FieldMask>| v1::UpdateAgreementRequest {
        agreement: Some(agreement),
        update_mask: paths,
        request_id: String::new(),
    };
    let nested = v1::Agreement {
        name: "agreements/a".into(),
        term: Some(agreement::Term { years: 10, ..Default::default() }),
        ..Default::default()
    };
    let got = client.update_agreement(update(nested, mask(&["term.years"]))).await.unwrap().into_inner();
    assert_eq!(got.term, Some(agreement::Term { years: 10, months: 6, ..Default::default() }));

    // No mask: the fields the patch sets.
    let implied = v1::Agreement { name: "agreements/a".into(), short_name: "NEW".into(), ..Default::default() };
    let got = client.update_agreement(update(implied, None)).await.unwrap().into_inner();
    assert_eq!((got.title.as_str(), got.short_name.as_str()), ("Original", "NEW"));

    // `*` replaces everything settable: the required title must then be given.
    let replace = v1::Agreement {
        name: "agreements/a".into(),
        parties: vec!["parties/fra".into(), "parties/deu".into()],
        ..Default::default()
    };
    let err = client.update_agreement(update(replace.clone(), mask(&["*"]))).await.unwrap_err();
    assert_eq!(violated_fields(&err), ["agreement.title"]);
    let full = v1::Agreement { title: "Replaced".into(), ..replace };
    let got = client.update_agreement(update(full, mask(&["*"]))).await.unwrap().into_inner();
    assert_eq!((got.title.as_str(), got.short_name.as_str(), got.term), ("Replaced", "", None));
    assert_eq!(got.parties, ["parties/fra", "parties/deu"]);

    let err = client
        .update_agreement(update(
            v1::Agreement { name: "agreements/a".into(), ..Default::default() },
            mask(&["title", "no_such_field", "term.nope"]),
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["update_mask.paths[1]", "update_mask.paths[2]"]);
    let err = client
        .update_agreement(update(
            v1::Agreement { name: "agreements/missing".into(), ..Default::default() },
            mask(&["title"]),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client.update_agreement(update(v1::Agreement::default(), mask(&["title"]))).await.unwrap_err();
    assert_eq!(violated_fields(&err), ["agreement.name"]);
    server.stop().await;
}

#[tokio::test]
async fn request_id_retries_get_the_first_answer() {
    let server = TestServer::start().await;
    let mut client = server.agreements();
    let request_id = "6f1c1c3e-5a7b-4c2d-9e8f-0a1b2c3d4e5f".to_string();
    let request = v1::CreateAgreementRequest {
        agreement_id: String::new(),
        agreement: Some(agreement("Generated id")),
        request_id: request_id.clone(),
    };
    let first = client.create_agreement(request.clone()).await.unwrap().into_inner();
    assert!(first.name.starts_with("agreements/a"), "{}", first.name);
    let retry = client.create_agreement(request.clone()).await.unwrap().into_inner();
    assert_eq!(retry, first, "same record, same etag, no second create");
    assert_eq!(count_agreements(&server, true).await, 1);

    // Even after the record changed, the retry answers what the first call answered.
    let patch = v1::Agreement { name: first.name.clone(), title: "Changed".into(), ..Default::default() };
    client.update_agreement(update_request(patch, mask(&["title"]))).await.unwrap();
    assert_eq!(client.create_agreement(request.clone()).await.unwrap().into_inner(), first);

    // The same id for a different request, and ids that are not a UUID in its
    // 36-character form (the contract's `(google.api.field_info).format = UUID4`):
    // refused before anything is written.
    let other = v1::CreateAgreementRequest { agreement: Some(agreement("Another")), ..request.clone() };
    let err = client.create_agreement(other).await.unwrap_err();
    assert_eq!((err.code(), violated_fields(&err)), (Code::InvalidArgument, vec!["request_id".to_string()]));
    let braced = format!("{{{request_id}}}");
    for bad in ["retry-1", "abc", "6f1c1c3e5a7b4c2d9e8f0a1b2c3d4e5f", braced.as_str()] {
        let err = client
            .create_agreement(v1::CreateAgreementRequest { request_id: bad.into(), ..request.clone() })
            .await
            .unwrap_err();
        assert_eq!((err.code(), violated_fields(&err)), (Code::InvalidArgument, vec!["request_id".to_string()]));
        let expected = "request_id: must be a UUID (RFC 4122) in its 36-character form";
        assert!(err.message().contains(expected), "{}", err.message());
        assert!(err.message().contains(&format!("got {bad:?}")), "{}", err.message());
    }
    assert_eq!(count_agreements(&server, true).await, 1);

    // An update naming the etag it read, retried after it succeeded (its etag
    // is gone by then), and a delete retried once the record is deleted:
    // each retry answers with the first answer, not with ABORTED or
    // "already deleted".
    let current = client
        .get_agreement(v1::GetAgreementRequest { name: first.name.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let patch =
        v1::Agreement { name: first.name.clone(), title: "Once".into(), etag: current.etag, ..Default::default() };
    let update = v1::UpdateAgreementRequest {
        request_id: "1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d".into(),
        ..update_request(patch, mask(&["title"]))
    };
    let updated = client.update_agreement(update.clone()).await.unwrap().into_inner();
    assert_eq!(client.update_agreement(update).await.unwrap().into_inner(), updated);
    let delete = v1::DeleteAgreementRequest {
        name: first.name.clone(),
        request_id: "2e3d4c5b-6f7a-4b8c-9d0e-1f2a3b4c5d6e".into(),
        ..Default::default()
    };
    let deleted = client.delete_agreement(delete.clone()).await.unwrap().into_inner();
    assert_eq!(client.delete_agreement(delete).await.unwrap().into_inner(), deleted);
    server.stop().await;
}

/// Retries of one request sent at once, each with an id the server generates
/// (so they wait for no turn at a record), still create one record, and each
/// answers with it.
#[tokio::test]
async fn concurrent_retries_of_a_request_create_one_record() {
    let server = TestServer::start().await;
    let request = v1::CreateAgreementRequest {
        agreement_id: String::new(),
        agreement: Some(agreement("Sent sixteen times at once")),
        request_id: "0b6f3d2a-8c1e-4f5a-9d7b-2e4c6a8f0b1d".to_string(),
    };
    let retries: Vec<_> = (0..16)
        .map(|_| {
            let mut client = server.agreements();
            let request = request.clone();
            tokio::spawn(async move { client.create_agreement(request).await.map(|r| r.into_inner()) })
        })
        .collect();
    let mut answers = Vec::new();
    for retry in retries {
        answers.push(retry.await.unwrap().unwrap());
    }
    assert!(answers.iter().all(|a| *a == answers[0]), "every retry answers with the one record");
    assert_eq!(count_agreements(&server, true).await, 1);
    server.stop().await;
}

#[tokio::test]
async fn references_must_exist_and_block_deletion() {
    let server = TestServer::start().await;
    let mut parties = server.parties();
    let mut agreements = server.agreements();
    let mut domains = server.domains();
    let mut engagements = server.engagements();

    let asean = v1::Party {
        display_name: "Association of Southeast Asian Nations".into(),
        kind: party::Kind::RegionalGrouping as i32,
        members: vec![party::Membership { party: "parties/idn".into(), ..Default::default() }],
        ..Default::default()
    };
    parties
        .create_party(v1::CreatePartyRequest {
            party_id: "asean".into(),
            party: Some(asean),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let mut pact = agreement("India–ASEAN");
    pact.parties = vec!["parties/ind".into(), "parties/asean".into()];
    agreements.create_agreement(create_agreement("pact", pact)).await.unwrap();
    let domain = v1::PartnershipDomain {
        title: "Maritime".into(),
        category: partnership_domain::Category::MaritimeSecurity as i32,
        parties: vec!["parties/ind".into(), "parties/asean".into()],
        agreements: vec!["agreements/pact".into()],
        ..Default::default()
    };
    let domain = domains
        .create_partnership_domain(v1::CreatePartnershipDomainRequest {
            partnership_domain_id: "maritime".into(),
            partnership_domain: Some(domain),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((domain.status(), domain.format()), (partnership_domain::Status::Active, v1::Format::Bilateral));
    let meeting = v1::Engagement {
        title: "Summit".into(),
        kind: engagement::Kind::Summit as i32,
        participants: vec![engagement::Participant {
            party: "parties/asean".into(),
            role: engagement::Role::Host as i32,
            ..Default::default()
        }],
        start_date: date(2019, 0, 0),
        partnership_domains: vec!["partnershipDomains/maritime".into()],
        ..Default::default()
    };
    let meeting = engagements
        .create_engagement(v1::CreateEngagementRequest {
            engagement_id: "summit".into(),
            engagement: Some(meeting),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((meeting.status(), meeting.format()), (engagement::Status::Held, v1::Format::Unilateral));
    assert_eq!(meeting.start_date, date(2019, 0, 0), "a year-only date is kept as given");

    // ASEAN is referred to by the agreement, the domain and the engagement.
    let err = parties
        .delete_party(v1::DeletePartyRequest { name: "parties/asean".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!((err.code(), reason(&err)), (Code::FailedPrecondition, "RESOURCE_REFERENCED".to_string()));
    for referrer in ["agreements/pact", "engagements/summit", "partnershipDomains/maritime"] {
        assert!(err.message().contains(referrer), "{referrer} not named in {}", err.message());
    }
    // Indonesia is referred to by ASEAN's members.
    let err = parties
        .delete_party(v1::DeletePartyRequest { name: "parties/idn".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert!(err.message().contains("parties/asean"), "{}", err.message());

    // Delete the referrers (the engagement refers to the domain, the domain to the agreement).
    engagements
        .delete_engagement(v1::DeleteEngagementRequest { name: "engagements/summit".into(), ..Default::default() })
        .await
        .unwrap();
    domains
        .delete_partnership_domain(v1::DeletePartnershipDomainRequest {
            name: "partnershipDomains/maritime".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = parties
        .delete_party(v1::DeletePartyRequest { name: "parties/asean".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert!(err.message().contains("agreements/pact") && !err.message().contains("summit"), "{}", err.message());
    agreements
        .delete_agreement(v1::DeleteAgreementRequest { name: "agreements/pact".into(), ..Default::default() })
        .await
        .unwrap();
    parties.delete_party(v1::DeletePartyRequest { name: "parties/asean".into(), ..Default::default() }).await.unwrap();

    // A deleted party cannot be referred to, and what referred to it cannot come back.
    let mut again = agreement("Refers to a deleted party");
    again.parties = vec!["parties/ind".into(), "parties/asean".into()];
    let err = agreements.create_agreement(create_agreement("again", again)).await.unwrap_err();
    assert_eq!(violated_fields(&err), ["agreement.parties[1]"]);
    assert!(err.message().contains("parties/asean is deleted"), "{}", err.message());
    let err = agreements
        .undelete_agreement(v1::UndeleteAgreementRequest { name: "agreements/pact".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!((err.code(), reason(&err)), (Code::FailedPrecondition, "REFERENCE_MISSING".to_string()));

    parties
        .undelete_party(v1::UndeletePartyRequest { name: "parties/asean".into(), ..Default::default() })
        .await
        .unwrap();
    agreements
        .undelete_agreement(v1::UndeleteAgreementRequest { name: "agreements/pact".into(), ..Default::default() })
        .await
        .unwrap();
    let err = parties
        .delete_party(v1::DeletePartyRequest { name: "parties/asean".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert!(err.message().contains("agreements/pact"), "undelete restores the reference: {}", err.message());

    // Updating a reference away releases the target.
    let moved = v1::Agreement {
        name: "agreements/pact".into(),
        parties: vec!["parties/ind".into(), "parties/jpn".into()],
        ..Default::default()
    };
    agreements.update_agreement(update_request(moved, mask(&["parties"]))).await.unwrap();
    parties.delete_party(v1::DeletePartyRequest { name: "parties/asean".into(), ..Default::default() }).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn paging_is_keyset_and_tokens_are_bound_to_their_query() {
    let server = TestServer::start().await;
    let mut client = server.agreements();
    for i in 0..7 {
        client
            .create_agreement(create_agreement(&format!("a{i}"), agreement(&format!("Agreement {i}"))))
            .await
            .unwrap();
    }
    client
        .delete_agreement(v1::DeleteAgreementRequest { name: "agreements/a3".into(), ..Default::default() })
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_agreements(v1::ListAgreementsRequest {
                page_size: 2,
                page_token: token.clone(),
                show_deleted: false,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        seen.extend(page.agreements.into_iter().map(|a| a.name));
        if pages == 1 {
            // Records written behind and ahead of the cursor while paging.
            client.create_agreement(create_agreement("a0a", agreement("behind"))).await.unwrap();
            client.create_agreement(create_agreement("a9", agreement("ahead"))).await.unwrap();
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        // The token belongs to show_deleted = false.
        let err = client
            .list_agreements(v1::ListAgreementsRequest {
                page_size: 2,
                page_token: token.clone(),
                show_deleted: true,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&err), ["page_token"]);
    }
    assert_eq!(
        seen,
        [
            "agreements/a0",
            "agreements/a1",
            "agreements/a2",
            "agreements/a4",
            "agreements/a5",
            "agreements/a6",
            "agreements/a9"
        ]
    );

    let err = client
        .list_agreements(v1::ListAgreementsRequest { page_token: "garbage".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["page_token"]);
    let all = client
        .list_agreements(v1::ListAgreementsRequest { page_size: 5000, show_deleted: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.agreements.len(), 9, "page sizes above 1000 are served as 1000");
    server.stop().await;
}

#[tokio::test]
async fn a_restart_keeps_every_record() {
    let server = TestServer::start().await;
    let created =
        server.agreements().create_agreement(create_agreement("kept", agreement("Kept"))).await.unwrap().into_inner();
    let dir = server.stop().await;
    let server = TestServer::start_in(dir, Default::default()).await;
    let got = server
        .agreements()
        .get_agreement(v1::GetAgreementRequest { name: "agreements/kept".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);
    let parties = server
        .parties()
        .list_parties(v1::ListPartiesRequest { page_size: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(parties.parties.len(), 249, "the states are not written twice");
    server.stop().await;
}

#[tokio::test]
async fn parties_domains_and_engagements_answer_all_six_methods() {
    let server = TestServer::start().await;

    let mut parties = server.parties();
    let quad = v1::Party {
        display_name: "Quadrilateral Security Dialogue".into(),
        kind: party::Kind::RegionalGrouping as i32,
        other_names: vec!["Quad".into()],
        members: ["ind", "jpn", "usa", "aus"]
            .iter()
            .map(|p| party::Membership {
                party: format!("parties/{p}"),
                start_date: date(2007, 0, 0),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let created = parties
        .create_party(v1::CreatePartyRequest { party_id: "quad".into(), party: Some(quad), request_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        parties.get_party(v1::GetPartyRequest { name: "parties/quad".into() }).await.unwrap().into_inner(),
        created
    );
    let patch = v1::Party {
        name: "parties/quad".into(),
        cameo_code: "QUD".into(),
        etag: created.etag.clone(),
        ..Default::default()
    };
    let updated = parties
        .update_party(v1::UpdatePartyRequest {
            party: Some(patch),
            update_mask: mask(&["cameo_code"]),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((updated.cameo_code.as_str(), updated.members.len()), ("QUD", 4));
    let listed = parties
        .list_parties(v1::ListPartiesRequest { page_size: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.parties.len(), 250);
    parties.delete_party(v1::DeletePartyRequest { name: "parties/quad".into(), ..Default::default() }).await.unwrap();
    parties
        .undelete_party(v1::UndeletePartyRequest { name: "parties/quad".into(), ..Default::default() })
        .await
        .unwrap();
    // Party rules: ISO codes only for states, members only for groupings.
    let bad = v1::Party {
        display_name: "x".into(),
        kind: party::Kind::State as i32,
        iso_alpha2: "ind".into(),
        members: vec![party::Membership { party: "parties/jpn".into(), ..Default::default() }],
        ..Default::default()
    };
    let err = parties
        .create_party(v1::CreatePartyRequest { party_id: "x".into(), party: Some(bad), request_id: String::new() })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["party.iso_alpha2", "party.members"]);

    let mut domains = server.domains();
    let domain = v1::PartnershipDomain {
        title: "Quad maritime security".into(),
        category: partnership_domain::Category::MaritimeSecurity as i32,
        parties: vec!["parties/ind".into(), "parties/jpn".into(), "parties/usa".into(), "parties/aus".into()],
        since_date: date(2017, 11, 0),
        ..Default::default()
    };
    let created = domains
        .create_partnership_domain(v1::CreatePartnershipDomainRequest {
            partnership_domain_id: String::new(),
            partnership_domain: Some(domain),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(created.name.starts_with("partnershipDomains/d"), "generated id: {}", created.name);
    assert_eq!(created.format(), v1::Format::Multilateral);
    let name = created.name.clone();
    assert_eq!(
        domains
            .get_partnership_domain(v1::GetPartnershipDomainRequest { name: name.clone() })
            .await
            .unwrap()
            .into_inner(),
        created
    );
    let patch = v1::PartnershipDomain {
        name: name.clone(),
        status: partnership_domain::Status::Dormant as i32,
        ..Default::default()
    };
    let updated = domains
        .update_partnership_domain(v1::UpdatePartnershipDomainRequest {
            partnership_domain: Some(patch),
            update_mask: mask(&["status"]),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.status(), partnership_domain::Status::Dormant);
    let listed =
        domains.list_partnership_domains(v1::ListPartnershipDomainsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.partnership_domains.len(), 1);
    domains
        .delete_partnership_domain(v1::DeletePartnershipDomainRequest { name: name.clone(), ..Default::default() })
        .await
        .unwrap();
    domains
        .undelete_partnership_domain(v1::UndeletePartnershipDomainRequest { name: name.clone(), ..Default::default() })
        .await
        .unwrap();

    let mut engagements = server.engagements();
    let exercise = v1::Engagement {
        title: "Malabar".into(),
        kind: engagement::Kind::JointExercise as i32,
        participants: ["ind", "jpn", "usa"]
            .iter()
            .map(|p| engagement::Participant { party: format!("parties/{p}"), ..Default::default() })
            .collect(),
        start_date: date(2020, 11, 3),
        end_date: date(2020, 11, 6),
        partnership_domains: vec![name.clone()],
        ..Default::default()
    };
    let created = engagements
        .create_engagement(v1::CreateEngagementRequest {
            engagement_id: "malabar-2020".into(),
            engagement: Some(exercise),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.format(), v1::Format::Trilateral);
    let got = engagements
        .get_engagement(v1::GetEngagementRequest { name: "engagements/malabar-2020".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);
    let patch = v1::Engagement { name: got.name.clone(), end_date: date(2020, 11, 2), ..Default::default() };
    let err = engagements
        .update_engagement(v1::UpdateEngagementRequest {
            engagement: Some(patch),
            update_mask: mask(&["end_date"]),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["engagement.end_date"], "an end before the start");
    let listed = engagements.list_engagements(v1::ListEngagementsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.engagements, std::slice::from_ref(&got), "the rejected update changed nothing");
    let err = domains
        .delete_partnership_domain(v1::DeletePartnershipDomainRequest { name: name.clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert!(err.message().contains("engagements/malabar-2020"), "{}", err.message());
    engagements
        .delete_engagement(v1::DeleteEngagementRequest {
            name: got.name.clone(),
            etag: got.etag.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    engagements
        .undelete_engagement(v1::UndeleteEngagementRequest { name: got.name.clone(), ..Default::default() })
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_of_one_record_all_succeed_in_turn() {
    // Blind updates (no etag) of one agreement, all at once: each must be
    // applied at a revision of its own, none refused with ABORTED.
    let server = TestServer::start().await;
    let mut client = server.agreements();
    let created = client
        .create_agreement(v1::CreateAgreementRequest { agreement: Some(agreement("Hot record")), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let calls = 150;
    let mut tasks = Vec::new();
    for i in 0..calls {
        let mut client = server.agreements();
        let mut changed = created.clone();
        changed.title = format!("Hot record, version {i}");
        changed.etag = String::new();
        tasks.push(tokio::spawn(async move {
            client
                .update_agreement(v1::UpdateAgreementRequest {
                    agreement: Some(changed),
                    update_mask: mask(&["title"]),
                    request_id: String::new(),
                })
                .await
                .map(|r| r.into_inner())
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap().expect("every update succeeds"));
    }
    let mut etags: Vec<u64> = answers.iter().map(|a| a.etag.parse().unwrap()).collect();
    etags.sort_unstable();
    etags.dedup();
    assert_eq!(etags.len(), calls, "each update has a revision of its own");
    let last = answers.iter().max_by_key(|a| a.etag.parse::<u64>().unwrap()).unwrap();
    let stored = client
        .get_agreement(v1::GetAgreementRequest { name: created.name.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stored.title.as_str(), stored.etag.as_str()), (last.title.as_str(), last.etag.as_str()));
    server.stop().await;
}

/// BatchCreate (AIP-233) creates all its records at one revision or none:
/// a record may name another of the batch; every bad field is named with its
/// request; an id that exists, or comes twice, or a request_id inside the
/// batch refuses the whole batch, and nothing is stored.
#[tokio::test]
async fn a_batch_creates_all_its_records_at_one_revision_or_none() {
    use cooperation_registry::pb::cooperation::v1::change_service_client::ChangeServiceClient;
    let server = TestServer::start().await;
    let mut client = server.agreements();
    let amends = |target: &str| {
        let mut record = agreement("Amending protocol");
        record.relations = vec![agreement::Relation {
            r#type: agreement::RelationType::Amends as i32,
            agreement: format!("agreements/{target}"),
        }];
        record
    };
    let batch = |requests: Vec<v1::CreateAgreementRequest>| v1::BatchCreateAgreementsRequest { requests };
    let before = count_agreements(&server, true).await;

    // A bad field, an id created twice, a request_id inside, a missing record:
    // all named at once, nothing stored.
    let mut bad = agreement("Bad date");
    bad.signature_date = date(2020, 13, 1);
    let mut with_request_id = create_agreement("c", agreement("C"));
    with_request_id.request_id = "123e4567-e89b-12d3-a456-426614174000".into();
    let err = client
        .batch_create_agreements(batch(vec![
            create_agreement("a", agreement("A")),
            create_agreement("b", bad),
            create_agreement("a", agreement("A again")),
            with_request_id,
            v1::CreateAgreementRequest { agreement_id: "d".into(), ..Default::default() },
        ]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(violated_fields(&err), ["requests[3].request_id", "requests[4].agreement"]);
    let err = client
        .batch_create_agreements(batch(vec![
            create_agreement("a", agreement("A")),
            create_agreement("b", bad_date()),
            create_agreement("a", agreement("A again")),
            create_agreement("e", amends("nowhere")),
        ]))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&err),
        [
            "requests[1].agreement.signature_date",
            "requests[2].agreement_id",
            "requests[3].agreement.relations[0].agreement"
        ]
    );
    let err = client.batch_create_agreements(batch(Vec::new())).await.unwrap_err();
    assert_eq!(violated_fields(&err), ["requests"]);
    assert_eq!(count_agreements(&server, true).await, before, "nothing was stored");

    // Records naming each other, in any order: one revision, a change each.
    let created = client
        .batch_create_agreements(batch(vec![
            create_agreement("protocol", amends("treaty")),
            create_agreement("treaty", agreement("Treaty")),
            create_agreement("", agreement("Generated id")),
        ]))
        .await
        .unwrap()
        .into_inner()
        .agreements;
    let names: Vec<&str> = created.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names[..2], ["agreements/protocol", "agreements/treaty"]);
    assert!(names[2].starts_with("agreements/a"), "{names:?}");
    let etag = &created[0].etag;
    assert!(created.iter().all(|a| &a.etag == etag && a.create_time.is_some()), "{created:?}");
    let got = client
        .get_agreement(v1::GetAgreementRequest { name: "agreements/protocol".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created[0]);
    let mut changes = ChangeServiceClient::new(server.channel.clone())
        .watch_changes(v1::WatchChangesRequest { start_revision: etag.parse().unwrap(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let first = changes.message().await.unwrap().unwrap();
    let changed: Vec<&str> = first.changes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(changed, names, "one change for each record, at the batch's revision");
    // The treaty is referenced by the protocol: it cannot be deleted first.
    let err = client
        .delete_agreement(v1::DeleteAgreementRequest { name: "agreements/treaty".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // An id that exists refuses the batch whole.
    let err = client
        .batch_create_agreements(batch(vec![
            create_agreement("fresh", agreement("Fresh")),
            create_agreement("treaty", agreement("Treaty again")),
        ]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains("agreements/treaty"), "{}", err.message());
    assert_eq!(count_agreements(&server, true).await, before + 3, "the fresh one was not created");
    server.stop().await;
}

fn bad_date() -> v1::Agreement {
    let mut record = agreement("Bad date");
    record.signature_date = date(2020, 13, 1);
    record
}
