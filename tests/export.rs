//! `cooperation-registry export`: the live records at one revision, written as a
//! dataset that `import` loads into another registry with every record as it
//! was; DatasetService.ExportDataset behind it.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{client::*, process::BINARY, records::*, server::*};
use cooperation_registry::cli::import::{import, parse_dataset};
use cooperation_registry::pb::cooperation::v1::dataset_service_client::DatasetServiceClient;
use cooperation_registry::pb::cooperation::v1::{self as v1, engagement, partnership_domain, party};
use prost_reflect::{DynamicMessage, ReflectMessage};
use tonic::Code;

const EXAMPLE: &str = include_str!("../examples/india-japan-2020.json");

/// Runs the binary with `args`, off the runtime that serves it.
async fn run(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || Command::new(BINARY).args(args).output().expect("the binary runs"))
        .await
        .unwrap()
}

/// `export FILE --server ADDR` with `--filter` for each of `filters`.
async fn export(server: &TestServer, file: &Path, filters: &[&str]) -> Output {
    let address = server.addr.to_string();
    let mut args = vec!["export", file.to_str().unwrap(), "--server", &address];
    for filter in filters {
        args.extend(["--filter", filter]);
    }
    run(&args).await
}

/// `import FILE --server ADDR`, which must succeed.
async fn import_file(server: &TestServer, file: &Path) -> String {
    let out = run(&["import", file.to_str().unwrap(), "--server", &server.addr.to_string()]).await;
    assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn succeeded(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Every live record of a server, kind by kind in name order, without what
/// the server sets on each write (etag, create and update times).
#[derive(Debug, PartialEq)]
struct Contents {
    parties: Vec<v1::Party>,
    partnership_domains: Vec<v1::PartnershipDomain>,
    agreements: Vec<v1::Agreement>,
    engagements: Vec<v1::Engagement>,
}

/// Each page of a List, with `filter`, until the last.
macro_rules! list_all {
    ($client:expr, $method:ident, $request:ident, $items:ident, $filter:expr) => {{
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let request =
                v1::$request { page_size: 1000, page_token: token, filter: $filter.to_string(), ..Default::default() };
            let page = $client.$method(request).await.unwrap().into_inner();
            all.extend(page.$items);
            if page.next_page_token.is_empty() {
                break all;
            }
            token = page.next_page_token;
        }
    }};
}

async fn contents(server: &TestServer) -> Contents {
    let mut parties = list_all!(server.parties(), list_parties, ListPartiesRequest, parties, "");
    let mut partnership_domains =
        list_all!(server.domains(), list_partnership_domains, ListPartnershipDomainsRequest, partnership_domains, "");
    let mut agreements = list_all!(server.agreements(), list_agreements, ListAgreementsRequest, agreements, "");
    let mut engagements = list_all!(server.engagements(), list_engagements, ListEngagementsRequest, engagements, "");
    macro_rules! plain {
        ($records:ident) => {
            for record in &mut $records {
                record.etag.clear();
                record.create_time = None;
                record.update_time = None;
            }
        };
    }
    plain!(parties);
    plain!(partnership_domains);
    plain!(agreements);
    plain!(engagements);
    Contents { parties, partnership_domains, agreements, engagements }
}

/// The example dataset, and records beyond it that refer to one another
/// across kinds: a grouping and a public body of a state, an agreement
/// naming a partnership domain that names it back, an engagement with a
/// parent (whose name sorts after its child's), and a soft-deleted
/// agreement, engagement and party that an export leaves out.
async fn load(server: &TestServer) {
    import(server.channel.clone(), parse_dataset(EXAMPLE).unwrap(), false).await.expect("the example imports");
    let mut parties = server.parties();
    for (id, record) in [
        (
            "x-quad",
            v1::Party {
                display_name: "Quadrilateral Security Dialogue".into(),
                kind: party::Kind::RegionalGrouping as i32,
                members: ["ind", "jpn", "usa", "aus"]
                    .iter()
                    .map(|p| party::Membership { party: format!("parties/{p}"), ..Default::default() })
                    .collect(),
                labels: [("source".to_string(), "export-test".to_string())].into(),
                ..Default::default()
            },
        ),
        (
            "x-jsdf",
            v1::Party {
                display_name: "Japan Self-Defense Forces".into(),
                kind: party::Kind::PublicBody as i32,
                parent: "parties/jpn".into(),
                ..Default::default()
            },
        ),
        (
            "x-gone",
            v1::Party { display_name: "Dissolved".into(), kind: party::Kind::Other as i32, ..Default::default() },
        ),
    ] {
        let request = v1::CreatePartyRequest { party: Some(record), party_id: id.into(), request_id: String::new() };
        parties.create_party(request).await.unwrap();
    }
    let domain = v1::PartnershipDomain {
        title: "India–Japan space cooperation".into(),
        category: partnership_domain::Category::Technology as i32,
        parties: vec!["parties/ind".into(), "parties/jpn".into()],
        since_date: date(2019, 0, 0),
        ..Default::default()
    };
    let mut domains = server.domains();
    let request = v1::CreatePartnershipDomainRequest {
        partnership_domain: Some(domain),
        partnership_domain_id: "x-space".into(),
        request_id: String::new(),
    };
    domains.create_partnership_domain(request).await.unwrap();
    let mut agreements = server.agreements();
    let space = v1::Agreement {
        partnership_domains: vec!["partnershipDomains/x-space".into()],
        ..agreement("Implementing arrangement on space situational awareness")
    };
    agreements.create_agreement(create_agreement("x-space-ssa", space)).await.unwrap();
    // The domain names the agreement back.
    let back = v1::PartnershipDomain {
        name: "partnershipDomains/x-space".into(),
        agreements: vec!["agreements/x-space-ssa".into()],
        ..Default::default()
    };
    let request = v1::UpdatePartnershipDomainRequest {
        partnership_domain: Some(back),
        update_mask: Some(prost_types::FieldMask { paths: vec!["agreements".into()] }),
        request_id: String::new(),
    };
    domains.update_partnership_domain(request).await.unwrap();
    agreements.create_agreement(create_agreement("x-withdrawn", agreement("Withdrawn draft"))).await.unwrap();
    let delete = v1::DeleteAgreementRequest { name: "agreements/x-withdrawn".into(), ..Default::default() };
    agreements.delete_agreement(delete).await.unwrap();

    let mut engagements = server.engagements();
    let meeting = |title: &str, parent: &str| v1::Engagement {
        title: title.into(),
        kind: engagement::Kind::MinisterialDialogue as i32,
        participants: ["ind", "jpn"]
            .iter()
            .map(|p| engagement::Participant { party: format!("parties/{p}"), ..Default::default() })
            .collect(),
        start_date: date(2019, 11, 30),
        parent_engagement: parent.into(),
        ..Default::default()
    };
    for (id, record) in [
        ("x-talks", meeting("India–Japan 2+2 ministerial dialogue", "")),
        ("x-space-group", meeting("Its working group on space", "engagements/x-talks")),
        ("x-cancelled", meeting("A cancelled visit", "")),
    ] {
        let request = v1::CreateEngagementRequest {
            engagement: Some(record),
            engagement_id: id.into(),
            request_id: String::new(),
        };
        engagements.create_engagement(request).await.unwrap();
    }
    let delete = v1::DeleteEngagementRequest { name: "engagements/x-cancelled".into(), ..Default::default() };
    engagements.delete_engagement(delete).await.unwrap();
    let delete = v1::DeletePartyRequest { name: "parties/x-gone".into(), ..Default::default() };
    parties.delete_party(delete).await.unwrap();
}

/// The counts line of an export's output.
fn counts(stdout: &str) -> &str {
    stdout.lines().find(|l| l.starts_with("exported ")).unwrap_or_else(|| panic!("{stdout}"))
}

/// An export imported into a fresh registry (which has its own seeded
/// states) gives every record of every kind as it was; soft-deleted ones
/// stay behind. The file states the revision the export read at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_imports_into_a_fresh_registry_with_every_record_as_it_was() {
    let source = TestServer::start().await;
    load(&source).await;
    let revision = revision(source.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("registry.json");
    let out = succeeded(&export(&source, &file, &[]).await);
    assert_eq!(
        counts(&out),
        format!(
            "exported 252 parties, 14 partnership domains, 3 agreements, 5 engagements at revision {revision} to {}",
            file.display()
        )
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let dataset = parse_dataset(&text).unwrap();
    assert_eq!(dataset.revision, revision);
    for gone in ["x-withdrawn", "x-cancelled", "x-gone"] {
        assert!(!text.contains(gone), "{gone} is soft-deleted");
    }
    assert!(!dir.path().join("registry.json.partial").exists());

    let target = TestServer::start().await;
    let report = import_file(&target, &file).await;
    // The 249 states are there already, as the file has them.
    assert!(
        report.contains("25 records created, 249 already there, 0 skipped as existing with other contents"),
        "{report}"
    );
    assert_eq!(contents(&target).await, contents(&source).await);
}

/// The same records in another order (each list reversed, the lists in
/// another order, references pointing every way) load to the same records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_in_another_order_imports_to_the_same_records() {
    let source = TestServer::start().await;
    load(&source).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("registry.json");
    succeeded(&export(&source, &file, &[]).await);
    let mut dataset = parse_dataset(&std::fs::read_to_string(&file).unwrap()).unwrap();
    dataset.parties.reverse();
    dataset.partnership_domains.reverse();
    dataset.agreements.reverse();
    dataset.engagements.reverse();
    // Every other record to the front: neither name order nor its reverse.
    let len = dataset.parties.len();
    dataset.parties.rotate_left(len / 3);
    // The lists in another order in the file, one record of JSON each.
    let json = |records: Vec<DynamicMessage>| -> String {
        let each: Vec<String> = records.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
        format!("[{}]", each.join(",\n"))
    };
    let text = format!(
        "{{\"engagements\": {},\n\"agreements\": {},\n\"revision\": \"{}\",\n\"partnershipDomains\": {},\n\"parties\": {}}}",
        json(dataset.engagements.iter().map(|r| r.transcode_to_dynamic()).collect()),
        json(dataset.agreements.iter().map(|r| r.transcode_to_dynamic()).collect()),
        dataset.revision,
        json(dataset.partnership_domains.iter().map(|r| r.transcode_to_dynamic()).collect()),
        json(dataset.parties.iter().map(|r| r.transcode_to_dynamic()).collect()),
    );
    let shuffled = dir.path().join("shuffled.json");
    std::fs::write(&shuffled, text).unwrap();
    let target = TestServer::start().await;
    import_file(&target, &shuffled).await;
    assert_eq!(contents(&target).await, contents(&source).await);
}

/// An existing record that differs from the file's still stops an import
/// (and `--skip-existing` leaves it as it is); one the same as the file's,
/// output-only fields aside, counts as already there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_over_different_records_stops_unless_told_to_skip_them() {
    let source = TestServer::start().await;
    load(&source).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("registry.json");
    succeeded(&export(&source, &file, &[]).await);
    // The same file again into the registry it came from: all there.
    let again = import_file(&source, &file).await;
    assert!(again.contains("0 records created, 274 already there"), "{again}");

    // A state renamed in the target registry.
    let target = TestServer::start().await;
    let renamed = v1::Party { name: "parties/jpn".into(), display_name: "Nippon".into(), ..Default::default() };
    let request = v1::UpdatePartyRequest {
        party: Some(renamed),
        update_mask: Some(prost_types::FieldMask { paths: vec!["display_name".into()] }),
        request_id: String::new(),
    };
    target.parties().update_party(request).await.unwrap();
    let out = run(&["import", file.to_str().unwrap(), "--server", &target.addr.to_string()]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("parties/jpn: it already exists, with other values of display_name")
            && stderr.contains("--skip-existing"),
        "{stderr}"
    );
    // Again, leaving it as it is: the rest comes in (the records the first
    // attempt created before it stopped count as already there).
    let out = run(&["import", file.to_str().unwrap(), "--skip-existing", "--server", &target.addr.to_string()]).await;
    let report = succeeded(&out);
    assert!(report.contains(", 1 skipped as existing with other contents"), "{report}");
    let mut expected = contents(&source).await;
    let jpn = expected.parties.iter_mut().find(|p| p.name == "parties/jpn").unwrap();
    jpn.display_name = "Nippon".into();
    assert_eq!(contents(&target).await, expected);
}

/// The export shows the store at the revision it states, however long it
/// runs: a write committed after its first response (while most of it is
/// still unread, held back by the stream's flow control) is not in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_shows_one_revision_and_no_write_after_it() {
    let server = TestServer::start().await;
    load(&server).await;
    // About 17 MiB of agreements: far more than the server reads ahead of
    // a client that does not read, so the engagements after them are read
    // after the write below. (Imported 200 at a time: a batch of large
    // records within the limits of a message.)
    let long = "A description long enough to make each agreement weigh some eight kilobytes. ".repeat(100);
    for part in 0..10 {
        let agreements = (part * 200..part * 200 + 200)
            .map(|i| v1::Agreement {
                name: format!("agreements/{}", agreement_id(i)),
                description: long.clone(),
                ..numbered_agreement(i, &STATES)
            })
            .collect();
        import(server.channel.clone(), v1::Dataset { agreements, ..Default::default() }, false).await.unwrap();
    }
    let before = revision(server.addr).await;

    let mut client = DatasetServiceClient::new(server.channel.clone()).max_decoding_message_size(64 << 20);
    let mut stream = client.export_dataset(v1::ExportDatasetRequest::default()).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.revision, before, "the export reads at the revision current when it began");

    // Written while the export runs: a new engagement that sorts last, a
    // change to the last one, and a deletion of the first.
    let mut engagements = server.engagements();
    let late = v1::Engagement {
        title: "A late meeting".into(),
        kind: engagement::Kind::Visit as i32,
        participants: vec![engagement::Participant { party: "parties/ind".into(), ..Default::default() }],
        ..Default::default()
    };
    let request = v1::CreateEngagementRequest {
        engagement: Some(late),
        engagement_id: "zz-late".into(),
        request_id: String::new(),
    };
    engagements.create_engagement(request).await.unwrap();
    let renamed = v1::Engagement { name: "engagements/x-talks".into(), title: "Renamed".into(), ..Default::default() };
    let request = v1::UpdateEngagementRequest {
        engagement: Some(renamed),
        update_mask: Some(prost_types::FieldMask { paths: vec!["title".into()] }),
        request_id: String::new(),
    };
    engagements.update_engagement(request).await.unwrap();
    let delete = v1::DeleteEngagementRequest { name: "engagements/india-act-east-policy".into(), ..Default::default() };
    engagements.delete_engagement(delete).await.unwrap();
    let after = revision(server.addr).await;
    assert!(after > before);

    let mut chunks = vec![first];
    while let Some(chunk) = stream.message().await.unwrap() {
        chunks.push(chunk);
    }
    assert!(chunks.len() > 10, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|c| c.revision == before));
    let records: Vec<v1::Dataset> = chunks.into_iter().map(|c| c.dataset.unwrap()).collect();
    let agreements: usize = records.iter().map(|d| d.agreements.len()).sum();
    assert_eq!(agreements, 2003);
    let engagements: Vec<(String, String)> =
        records.iter().flat_map(|d| d.engagements.iter().map(|e| (e.name.clone(), e.title.clone()))).collect();
    let names: Vec<&str> = engagements.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "engagements/india-act-east-policy",
            "engagements/india-japan-2plus2-2019",
            "engagements/india-japan-rpss-signing-2020",
            "engagements/x-space-group",
            "engagements/x-talks"
        ]
    );
    assert_eq!(engagements[4].1, "India–Japan 2+2 ministerial dialogue");
    // Every record as it was at that revision, none newer.
    let etags = records.iter().flat_map(|d| {
        let parties = d.parties.iter().map(|r| r.etag.clone());
        let domains = d.partnership_domains.iter().map(|r| r.etag.clone());
        let agreements = d.agreements.iter().map(|r| r.etag.clone());
        parties.chain(domains).chain(agreements).chain(d.engagements.iter().map(|r| r.etag.clone())).collect::<Vec<_>>()
    });
    assert!(etags.into_iter().all(|etag| etag.parse::<i64>().unwrap() <= before));

    // The binary writes the revision it read at into the file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("now.json");
    let out = succeeded(&export(&server, &file, &["agreements=title = \"none\""]).await);
    assert!(counts(&out).ends_with(&format!("at revision {after} to {}", file.display())), "{out}");
    let dataset = parse_dataset(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(dataset.revision, after);
    let names: Vec<&str> = dataset.engagements.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "engagements/india-japan-2plus2-2019",
            "engagements/india-japan-rpss-signing-2020",
            "engagements/x-space-group",
            "engagements/x-talks",
            "engagements/zz-late"
        ]
    );

    // One export per core runs at once: while that many are open (unread,
    // their reading held back), another is refused; a stream dropped stops
    // its reading and frees its turn, however many are dropped.
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let open = || async {
        let mut client = DatasetServiceClient::new(connect(server.addr).await).max_decoding_message_size(64 << 20);
        client.export_dataset(v1::ExportDatasetRequest::default()).await
    };
    let mut streams = Vec::new();
    for _ in 0..cores {
        let mut stream = open().await.unwrap().into_inner();
        stream.message().await.unwrap().unwrap();
        streams.push(stream);
    }
    let refused = open().await.expect_err("one more than the cores is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    for _ in 0..3 * cores {
        streams.remove(0);
        let admitted = async {
            loop {
                match open().await {
                    Ok(stream) => break stream.into_inner(),
                    Err(status) if status.code() == Code::ResourceExhausted => {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await
                    }
                    Err(status) => panic!("{status:?}"),
                }
            }
        };
        let mut stream = tokio::time::timeout(std::time::Duration::from_secs(20), admitted)
            .await
            .expect("a dropped export frees its turn");
        stream.message().await.unwrap().unwrap();
        streams.push(stream);
    }
}

/// A filter the kind's List would refuse is INVALID_ARGUMENT naming its
/// field; the command fails and leaves no file behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_filter_is_refused_naming_the_field_and_leaves_no_file() {
    let server = TestServer::start().await;
    let mut client = DatasetServiceClient::new(server.channel.clone());
    let request = v1::ExportDatasetRequest {
        agreement_filter: "no_such_field = 1".into(),
        engagement_filter: "kind = NOT_A_KIND".into(),
        ..Default::default()
    };
    let status = client.export_dataset(request).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), ["agreement_filter", "engagement_filter"]);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.json");
    let out = export(&server, &file, &["parties=display_name ="]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("InvalidArgument") && stderr.contains("party_filter"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file, partial or whole");
    let out = export(&server, &file, &["treaties=title:x"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("treaties"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A filtered export holds exactly what the kinds' Lists with the same
/// filters hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_export_holds_only_the_matching_records() {
    let server = TestServer::start().await;
    load(&server).await;
    let filters = [
        ("parties", "kind = KIND_REGIONAL_GROUPING"),
        ("partnership-domains", "category = CATEGORY_CONNECTIVITY OR category = CATEGORY_TECHNOLOGY"),
        ("agreements", "labels.region = \"indo-pacific\""),
        ("engagements", "parent_engagement:* OR kind = KIND_SIGNING"),
    ];
    let flags: Vec<String> = filters.iter().map(|(kind, filter)| format!("{kind}={filter}")).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("filtered.json");
    let out = succeeded(&export(&server, &file, &flags.iter().map(String::as_str).collect::<Vec<_>>()).await);
    assert!(counts(&out).starts_with("exported 2 parties, 4 partnership domains, 1 agreement, 2 engagements"), "{out}");
    let dataset = parse_dataset(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let names = |records: Vec<String>| records;
    let listed = (
        names(
            list_all!(server.parties(), list_parties, ListPartiesRequest, parties, filters[0].1)
                .into_iter()
                .map(|r| r.name)
                .collect(),
        ),
        names(
            list_all!(
                server.domains(),
                list_partnership_domains,
                ListPartnershipDomainsRequest,
                partnership_domains,
                filters[1].1
            )
            .into_iter()
            .map(|r| r.name)
            .collect(),
        ),
        names(
            list_all!(server.agreements(), list_agreements, ListAgreementsRequest, agreements, filters[2].1)
                .into_iter()
                .map(|r| r.name)
                .collect(),
        ),
        names(
            list_all!(server.engagements(), list_engagements, ListEngagementsRequest, engagements, filters[3].1)
                .into_iter()
                .map(|r| r.name)
                .collect(),
        ),
    );
    let exported = (
        dataset.parties.into_iter().map(|r| r.name).collect::<Vec<_>>(),
        dataset.partnership_domains.into_iter().map(|r| r.name).collect::<Vec<_>>(),
        dataset.agreements.into_iter().map(|r| r.name).collect::<Vec<_>>(),
        dataset.engagements.into_iter().map(|r| r.name).collect::<Vec<_>>(),
    );
    assert_eq!(exported, listed);
    assert_eq!(exported.0, ["parties/asean", "parties/x-quad"]);
    assert_eq!(exported.3, ["engagements/india-japan-rpss-signing-2020", "engagements/x-space-group"]);
}
