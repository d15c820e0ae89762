//! Hierarchies stay acyclic: the references from a kind to itself (an
//! engagement's parent, a party's parent and members, an agreement's
//! relations) never lead from a record back to itself, through the generated
//! clients: the refusal's code, reason and chain, and nothing stored.

mod common;

use common::{client::*, records::*, server::*};
use cooperation_registry::pb::cooperation::v1::{self as v1, agreement, engagement, party};
use prost_types::FieldMask;
use tonic::Code;
use tonic_types::StatusExt;

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() })
}

/// Checks that `status` refuses a cycle, naming `chain` in its message and
/// its PreconditionFailure.
#[track_caller]
fn assert_cycle(status: &tonic::Status, chain: &[&str]) {
    let chain = chain.join(" -> ");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(reason(status), "HIERARCHY_CYCLE");
    assert!(status.message().contains(&chain), "{} does not name {chain}", status.message());
    let details = status.get_error_details();
    let violations = &details.precondition_failure().expect("a PreconditionFailure").violations;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].r#type, "HIERARCHY_CYCLE");
    assert_eq!(violations[0].description, chain);
}

// ----- engagements -----

fn meeting(parent: &str) -> v1::Engagement {
    v1::Engagement {
        title: "India–Japan 2+2 Foreign and Defence Ministerial Meeting".into(),
        kind: engagement::Kind::MinisterialDialogue as i32,
        participants: ["parties/ind", "parties/jpn"]
            .iter()
            .map(|p| engagement::Participant { party: p.to_string(), ..Default::default() })
            .collect(),
        parent_engagement: parent.into(),
        ..Default::default()
    }
}

fn create_meeting(id: &str, parent: &str) -> v1::CreateEngagementRequest {
    v1::CreateEngagementRequest {
        engagement_id: id.into(),
        engagement: Some(meeting(parent)),
        request_id: String::new(),
    }
}

async fn get_engagement(server: &TestServer, name: &str) -> Result<v1::Engagement, tonic::Status> {
    server.engagements().get_engagement(v1::GetEngagementRequest { name: name.into() }).await.map(|r| r.into_inner())
}

/// Sets the parent of engagement `id` with a field-mask update.
async fn set_parent_engagement(server: &TestServer, id: &str, parent: &str) -> Result<v1::Engagement, tonic::Status> {
    let engagement = v1::Engagement { name: format!("engagements/{id}"), ..meeting(parent) };
    let request = v1::UpdateEngagementRequest {
        engagement: Some(engagement),
        update_mask: mask(&["parent_engagement"]),
        ..Default::default()
    };
    server.engagements().update_engagement(request).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn engagement_parents_that_would_close_a_cycle_are_refused_and_nothing_is_stored() {
    let server = TestServer::start().await;
    let mut client = server.engagements();
    for (id, parent) in [("a", ""), ("b", "engagements/a"), ("c", "engagements/b")] {
        client.create_engagement(create_meeting(id, parent)).await.unwrap();
    }
    let before = get_engagement(&server, "engagements/a").await.unwrap();

    let two = set_parent_engagement(&server, "a", "engagements/b").await.unwrap_err();
    assert_cycle(&two, &["engagements/a", "engagements/b", "engagements/a"]);
    let three = set_parent_engagement(&server, "a", "engagements/c").await.unwrap_err();
    assert_cycle(&three, &["engagements/a", "engagements/c", "engagements/b", "engagements/a"]);
    // A whole-record update is checked as a field-mask one is.
    let whole = v1::Engagement { name: "engagements/a".into(), ..meeting("engagements/c") };
    let whole = client
        .update_engagement(v1::UpdateEngagementRequest { engagement: Some(whole), ..Default::default() })
        .await
        .unwrap_err();
    assert_cycle(&whole, &["engagements/a", "engagements/c", "engagements/b", "engagements/a"]);
    assert_eq!(get_engagement(&server, "engagements/a").await.unwrap(), before, "nothing was stored");

    // A tree: siblings, and a parent from elsewhere for the top.
    client.create_engagement(create_meeting("d", "engagements/a")).await.unwrap();
    client.create_engagement(create_meeting("series", "")).await.unwrap();
    let moved = set_parent_engagement(&server, "a", "engagements/series").await.unwrap();
    assert_eq!(moved.parent_engagement, "engagements/series");
    set_parent_engagement(&server, "c", "engagements/d").await.unwrap();
    server.stop().await;
}

// ----- parties -----

fn public_body(parent: &str) -> v1::Party {
    v1::Party {
        display_name: "Ministry of Defence".into(),
        kind: party::Kind::PublicBody as i32,
        parent: parent.into(),
        ..Default::default()
    }
}

fn grouping(members: &[&str]) -> v1::Party {
    v1::Party {
        display_name: "A grouping".into(),
        kind: party::Kind::RegionalGrouping as i32,
        members: members.iter().map(|m| party::Membership { party: m.to_string(), ..Default::default() }).collect(),
        ..Default::default()
    }
}

async fn create_party(server: &TestServer, id: &str, party: v1::Party) {
    let request = v1::CreatePartyRequest { party_id: id.into(), party: Some(party), request_id: String::new() };
    server.parties().create_party(request).await.unwrap();
}

async fn get_party(server: &TestServer, name: &str) -> v1::Party {
    server.parties().get_party(v1::GetPartyRequest { name: name.into() }).await.unwrap().into_inner()
}

async fn update_party(server: &TestServer, party: v1::Party, paths: &[&str]) -> Result<v1::Party, tonic::Status> {
    let request = v1::UpdatePartyRequest { party: Some(party), update_mask: mask(paths), ..Default::default() };
    server.parties().update_party(request).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn party_parents_that_would_close_a_cycle_are_refused_and_nothing_is_stored() {
    let server = TestServer::start().await;
    for (id, parent) in [("mod-a", ""), ("mod-b", "parties/mod-a"), ("mod-c", "parties/mod-b")] {
        create_party(&server, id, public_body(parent)).await;
    }
    let before = get_party(&server, "parties/mod-a").await;
    let with_parent = |parent: &str| v1::Party { name: "parties/mod-a".into(), ..public_body(parent) };

    let two = update_party(&server, with_parent("parties/mod-b"), &["parent"]).await.unwrap_err();
    assert_cycle(&two, &["parties/mod-a", "parties/mod-b", "parties/mod-a"]);
    let three = update_party(&server, with_parent("parties/mod-c"), &["parent"]).await.unwrap_err();
    assert_cycle(&three, &["parties/mod-a", "parties/mod-c", "parties/mod-b", "parties/mod-a"]);
    assert_eq!(get_party(&server, "parties/mod-a").await, before, "nothing was stored");

    // A tree under a state.
    let under_india = update_party(&server, with_parent("parties/ind"), &["parent"]).await.unwrap();
    assert_eq!(under_india.parent, "parties/ind");
    create_party(&server, "mod-d", public_body("parties/mod-a")).await;
    server.stop().await;
}

#[tokio::test]
async fn a_grouping_that_would_be_its_own_member_is_refused_and_nothing_is_stored() {
    let server = TestServer::start().await;
    create_party(&server, "g1", grouping(&["parties/ind", "parties/jpn"])).await;
    create_party(&server, "g2", grouping(&["parties/g1"])).await;
    create_party(&server, "g3", grouping(&["parties/g2", "parties/ind"])).await;
    let before = get_party(&server, "parties/g1").await;
    let with_members = |members: &[&str]| v1::Party { name: "parties/g1".into(), ..grouping(members) };

    let two = update_party(&server, with_members(&["parties/ind", "parties/g2"]), &["members"]).await.unwrap_err();
    assert_cycle(&two, &["parties/g1", "parties/g2", "parties/g1"]);
    let three = update_party(&server, with_members(&["parties/g3"]), &["members"]).await.unwrap_err();
    assert_cycle(&three, &["parties/g1", "parties/g3", "parties/g2", "parties/g1"]);
    assert_eq!(get_party(&server, "parties/g1").await, before, "nothing was stored");

    // A grouping of groupings that share members is no cycle.
    create_party(&server, "g4", grouping(&["parties/jpn"])).await;
    let shared = update_party(&server, with_members(&["parties/ind", "parties/g4"]), &["members"]).await.unwrap();
    assert_eq!(shared.members.len(), 2);
    create_party(&server, "g5", grouping(&["parties/g3", "parties/g4", "parties/g1"])).await;
    server.stop().await;
}

// ----- agreements -----

fn relating(title: &str, relations: &[(agreement::RelationType, &str)]) -> v1::Agreement {
    v1::Agreement {
        relations: relations
            .iter()
            .map(|(kind, other)| agreement::Relation { r#type: *kind as i32, agreement: other.to_string() })
            .collect(),
        ..agreement(title)
    }
}

async fn get_agreement(server: &TestServer, name: &str) -> v1::Agreement {
    let request = v1::GetAgreementRequest { name: name.into(), ..Default::default() };
    server.agreements().get_agreement(request).await.unwrap().into_inner()
}

#[tokio::test]
async fn agreement_relations_that_would_close_a_cycle_are_refused_and_diamonds_are_accepted() {
    use agreement::RelationType::{Amends, Extends, Implements, Supersedes};
    let server = TestServer::start().await;
    let mut client = server.agreements();
    for (id, relations) in [
        ("framework", vec![]),
        ("amendment", vec![(Amends, "agreements/framework")]),
        ("replacement", vec![(Supersedes, "agreements/amendment")]),
    ] {
        client.create_agreement(create_agreement(id, relating(id, &relations))).await.unwrap();
    }
    let before = get_agreement(&server, "agreements/framework").await;
    let relate = |relations: &[(agreement::RelationType, &str)]| v1::Agreement {
        name: "agreements/framework".into(),
        ..relating("framework", relations)
    };

    // Relations of every type make one lineage.
    let two = client
        .update_agreement(update_request(relate(&[(Implements, "agreements/amendment")]), mask(&["relations"])))
        .await
        .unwrap_err();
    assert_cycle(&two, &["agreements/framework", "agreements/amendment", "agreements/framework"]);
    let three = client
        .update_agreement(update_request(relate(&[(Extends, "agreements/replacement")]), mask(&["relations"])))
        .await
        .unwrap_err();
    assert_cycle(
        &three,
        &["agreements/framework", "agreements/replacement", "agreements/amendment", "agreements/framework"],
    );
    assert_eq!(get_agreement(&server, "agreements/framework").await, before, "nothing was stored");

    // A diamond: two ways down to one agreement, no way back.
    for (id, relations) in [
        ("protocol", vec![(Implements, "agreements/framework")]),
        ("consolidated", vec![(Amends, "agreements/amendment"), (Implements, "agreements/protocol")]),
    ] {
        client.create_agreement(create_agreement(id, relating(id, &relations))).await.unwrap();
    }
    let mut top = relating("top", &[]);
    top.name = "agreements/replacement".into();
    top.relations = vec![
        agreement::Relation { r#type: Supersedes as i32, agreement: "agreements/amendment".into() },
        agreement::Relation { r#type: Supersedes as i32, agreement: "agreements/consolidated".into() },
    ];
    let diamond = client.update_agreement(update_request(top, mask(&["relations"]))).await.unwrap().into_inner();
    assert_eq!(diamond.relations.len(), 2);
    server.stop().await;
}

// ----- batches, concurrency, undelete -----

#[tokio::test]
async fn a_batch_whose_records_would_close_a_cycle_among_themselves_is_refused_whole() {
    let server = TestServer::start().await;
    let mut client = server.engagements();
    client.create_engagement(create_meeting("series", "")).await.unwrap();
    let batch = |records: &[(&str, &str)]| v1::BatchCreateEngagementsRequest {
        requests: records.iter().map(|(id, parent)| create_meeting(id, parent)).collect(),
    };
    let revision_before = revision(server.addr).await;

    let refused = client
        .batch_create_engagements(batch(&[
            ("x", "engagements/y"),
            ("y", "engagements/z"),
            ("z", "engagements/x"),
            ("w", "engagements/series"),
        ]))
        .await
        .unwrap_err();
    assert_cycle(&refused, &["engagements/x", "engagements/y", "engagements/z", "engagements/x"]);
    for name in ["engagements/x", "engagements/y", "engagements/z", "engagements/w"] {
        assert_eq!(get_engagement(&server, name).await.unwrap_err().code(), Code::NotFound, "{name}");
    }
    assert_eq!(revision(server.addr).await, revision_before, "nothing was written");

    // A chain through the batch down to a stored record is no cycle.
    let created = client
        .batch_create_engagements(batch(&[("x", "engagements/y"), ("y", "engagements/series")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.engagements.len(), 2);
    server.stop().await;
}

/// Two updates that each close half of a cycle, raced: exactly one
/// succeeds. With `b -> c` stored, `a -> b` and `c -> a` close `a -> b -> c
/// -> a`; `c` is no record the first refers to, only one its walk reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_concurrent_updates_that_each_close_half_of_a_cycle_one_succeeds() {
    let server = std::sync::Arc::new(TestServer::start().await);
    let mut client = server.engagements();
    for round in 0..20 {
        let [a, b, c] = ["a", "b", "c"].map(|r| format!("{r}{round}"));
        client.create_engagement(create_meeting(&a, "")).await.unwrap();
        client.create_engagement(create_meeting(&c, "")).await.unwrap();
        client.create_engagement(create_meeting(&b, &format!("engagements/{c}"))).await.unwrap();
        let update = |id: String, parent: String| {
            let server = server.clone();
            tokio::spawn(async move { set_parent_engagement(&server, &id, &parent).await })
        };
        let first = update(a.clone(), format!("engagements/{b}"));
        let second = update(c.clone(), format!("engagements/{a}"));
        let answers = [first.await.unwrap(), second.await.unwrap()];
        let refused: Vec<&tonic::Status> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
        assert_eq!(refused.len(), 1, "round {round}: {answers:?}");
        assert_eq!(reason(refused[0]), "HIERARCHY_CYCLE", "round {round}: {:?}", refused[0]);
        let parents = [
            get_engagement(&server, &format!("engagements/{a}")).await.unwrap().parent_engagement,
            get_engagement(&server, &format!("engagements/{c}")).await.unwrap().parent_engagement,
        ];
        assert_eq!(parents.iter().filter(|p| !p.is_empty()).count(), 1, "round {round}: {parents:?}");
    }
}

/// While a record is deleted no live record can come to refer to it, so
/// undeleting it closes no cycle; once it is back, a link to it is checked.
#[tokio::test]
async fn undeleting_a_record_closes_no_cycle() {
    let server = TestServer::start().await;
    let mut client = server.engagements();
    client.create_engagement(create_meeting("b", "")).await.unwrap();
    client.create_engagement(create_meeting("a", "engagements/b")).await.unwrap();
    client
        .delete_engagement(v1::DeleteEngagementRequest { name: "engagements/a".into(), ..Default::default() })
        .await
        .unwrap();
    let to_deleted = set_parent_engagement(&server, "b", "engagements/a").await.unwrap_err();
    assert_eq!(to_deleted.code(), Code::InvalidArgument, "{to_deleted:?}");
    assert!(to_deleted.message().contains("engagements/a is deleted"), "{}", to_deleted.message());
    client
        .undelete_engagement(v1::UndeleteEngagementRequest { name: "engagements/a".into(), ..Default::default() })
        .await
        .unwrap();
    let closing = set_parent_engagement(&server, "b", "engagements/a").await.unwrap_err();
    assert_cycle(&closing, &["engagements/b", "engagements/a", "engagements/b"]);
    server.stop().await;
}
