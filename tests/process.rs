//! The real binary: command line, restart, graceful shutdown, refusal of foreign
//! data dirs, import, backup and restore, and crash tests that kill the server
//! with SIGKILL and then find every acknowledged write. The servers run with
//! `--durability none` (a graceful stop flushes everything) except in the
//! crash tests, which keep the default.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client::*, env_or, process::*, records::*};
use cooperation_registry::pb::cooperation::v1::agreement_service_client::AgreementServiceClient;
use cooperation_registry::pb::cooperation::v1::{self as v1};

#[test]
fn help_documents_every_flag_and_its_environment_variable() {
    let out = Command::new(BINARY).args(["serve", "--help"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--data-dir",
        "--durability",
        "--cache-mib",
        "--read-cache-mib",
        "--checkpoint-mib",
        "--shutdown-timeout-secs",
        "--max-request-bytes",
        "--max-response-bytes",
    ] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
    for env in ["COOPERATION_REGISTRY_LISTEN", "COOPERATION_REGISTRY_DATA_DIR", "COOPERATION_REGISTRY_DURABILITY"] {
        assert!(text.contains(env), "{env} missing from:\n{text}");
    }
    assert!(text.contains("127.0.0.1:50051") && text.contains("./data"));
    let out = Command::new(BINARY).args(["import", "--help"]).output().unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().contains("--server"));
}

#[test]
fn a_foreign_or_newer_data_dir_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("thesis.tex"), "precious").unwrap();
    let out = Serve::new(dir.path()).refused(Duration::from_secs(20));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a cooperation-registry data dir"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_a_restart_keeps_the_data_and_import_works() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Serve::new(dir.path()).start();
    let out = Command::new(BINARY)
        .args(["import", "examples/india-japan-2020.json", "--server", &server.addr.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("19 records created"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(15));
    let log = server.log();
    assert!(status.success(), "{status:?}: {log:?}");
    // The close flushes every write, whatever --durability says.
    assert!(log.iter().any(|l| l.contains("store flushed and closed")));
    // Every call's access line is out by exit (they are written in batches),
    // and before the shutdown lines.
    let access: Vec<usize> =
        (0..log.len()).filter(|&i| log[i].contains("cooperation_registry::access: call finished code=Ok")).collect();
    // (The import creates each kind's records in one batch.)
    let creates = access.iter().filter(|&&i| log[i].contains("/BatchCreate")).count();
    assert_eq!(creates, 4, "{log:?}");
    let shutting_down = log.iter().position(|l| l.contains("shutting down")).unwrap();
    assert!(access.iter().all(|&i| i < shutting_down), "{log:?}");

    let mut server = Serve::new(dir.path()).start();
    let mut client = AgreementServiceClient::new(connect(server.addr).await);
    let rpss = client
        .get_agreement(v1::GetAgreementRequest {
            name: "agreements/india-japan-rpss-2020".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rpss.signatories.len(), 2);
    server.kill();
}

/// Kills the server with SIGKILL at a different moment of each cycle while 16
/// clients write, and checks after each restart that every acknowledged write
/// is there. `CRASH_CYCLES=100 cargo test --release --test process sigkill`
/// runs more cycles than the default 3. The server keeps its default
/// durability (fsync): an acknowledged write surviving a crash is what is
/// tested. The store checkpoints (closes and reopens its database) after
/// every MiB written, so crashes also fall around and between checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let cycles: usize = env_or("CRASH_CYCLES", 3);
    let mut acknowledged: Vec<(String, String)> = Vec::new();
    let mut checkpoints = 0;
    for cycle in 0..cycles {
        let mut server = Serve::new(dir.path()).default_durability().flags(["--checkpoint-mib", "1"]).start();
        let channel = connect(server.addr).await;
        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut writers = Vec::new();
        for w in 0..16 {
            let mut client = AgreementServiceClient::new(channel.clone());
            let acked = acked.clone();
            writers.push(tokio::spawn(async move {
                for i in 0.. {
                    let id = format!("c{cycle}-w{w}-n{i}");
                    match client.create_agreement(create_agreement(&id, agreement(&id))).await {
                        Ok(reply) => acked.lock().unwrap().push((reply.into_inner().name, id)),
                        Err(_) => return, // the server is gone
                    }
                }
            }));
        }
        // Writes are flowing (the first acknowledged; a loaded machine may take
        // a while), then a different moment in each cycle, 150 ms to 1 s on.
        let flowing = Instant::now() + Duration::from_secs(30);
        while acked.lock().unwrap().is_empty() && Instant::now() < flowing {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The first cycle crashes after a checkpoint, the others wherever they fall.
        let checkpointed = || server.logged("checkpoint: reopened") > 0;
        let limit = Instant::now() + Duration::from_secs(60);
        while cycle == 0 && !checkpointed() && Instant::now() < limit {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(150 + (cycle as u64 * 379) % 850)).await;
        server.kill();
        for w in writers {
            w.await.unwrap();
        }
        checkpoints += server.logged("checkpoint: reopened");
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        assert!(!acked.is_empty(), "cycle {cycle}: no write acknowledged");
        acknowledged.extend(acked);

        let mut server = Serve::new(dir.path()).default_durability().start();
        let mut client = AgreementServiceClient::new(connect(server.addr).await);
        for (name, title) in &acknowledged {
            let got = client.get_agreement(v1::GetAgreementRequest { name: name.clone(), ..Default::default() }).await;
            let got = got.unwrap_or_else(|e| panic!("cycle {cycle}: acknowledged {name} is lost: {e:?}"));
            assert_eq!(&got.into_inner().title, title);
        }
        server.kill();
    }
    eprintln!("{} acknowledged writes survived {cycles} SIGKILLs and {checkpoints} checkpoints", acknowledged.len());
    assert!(checkpoints > 0, "the writes reached no checkpoint");
}

/// A watch interrupted by a server crash resumes from the last revision it
/// processed, with nothing missed and nothing repeated. The writes before the
/// crash must survive it, so the server keeps its default durability (fsync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_after_the_server_restarts() {
    use cooperation_registry::pb::cooperation::v1::change_service_client::ChangeServiceClient;
    use tokio_stream::StreamExt;

    let dir = tempfile::tempdir().unwrap();
    let mut server = Serve::new(dir.path()).default_durability().start();
    let channel = connect(server.addr).await;
    let mut writer = AgreementServiceClient::new(channel.clone());
    let mut watcher = ChangeServiceClient::new(connect(server.addr).await);
    let mut stream = watcher
        .watch_changes(v1::WatchChangesRequest { start_revision: 2, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    for i in 0..10 {
        writer.create_agreement(create_agreement(&format!("before-{i}"), agreement("before"))).await.unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let response = stream.next().await.unwrap().unwrap();
        seen.extend(response.changes.iter().map(|c| c.revision));
    }
    server.kill();

    let mut server = Serve::new(dir.path()).default_durability().start();
    let resume = seen.last().unwrap() + 1;
    let mut watcher = ChangeServiceClient::new(connect(server.addr).await);
    let mut stream = watcher
        .watch_changes(v1::WatchChangesRequest { start_revision: resume, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut writer = AgreementServiceClient::new(connect(server.addr).await);
    for i in 0..5 {
        writer.create_agreement(create_agreement(&format!("after-{i}"), agreement("after"))).await.unwrap();
    }
    while seen.len() < 15 {
        let response = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap();
        seen.extend(response.changes.iter().map(|c| c.revision));
    }
    assert_eq!(seen, (2..=16).collect::<Vec<i64>>());
    server.kill();
}

#[test]
fn json_logs_are_one_object_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        Serve::new(dir.path()).flags(["--log-format", "json"]).command().stderr(Stdio::piped()).spawn().unwrap(),
    );
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut serving = None;
    for line in lines.by_ref().take(20) {
        let line = line.unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if value["fields"]["message"] == "serving cooperation.v1" {
            serving = Some(value);
            break;
        }
    }
    drop(child);
    let serving = serving.expect("a serving line");
    assert!(serving["fields"]["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(serving["level"], "INFO");
}

type Snapshot = (i64, Vec<v1::Agreement>, Vec<v1::Party>, Vec<(i64, String)>);

/// What a restore must keep: the revision, every agreement (deleted too)
/// and party, and a record's history.
async fn snapshot(addr: SocketAddr) -> Snapshot {
    use cooperation_registry::pb::cooperation::v1::change_service_client::ChangeServiceClient;
    use cooperation_registry::pb::cooperation::v1::party_service_client::PartyServiceClient;
    let channel = connect(addr).await;
    let listed = AgreementServiceClient::new(channel.clone())
        .list_agreements(v1::ListAgreementsRequest { page_size: 1000, show_deleted: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let parties = PartyServiceClient::new(channel.clone())
        .list_parties(v1::ListPartiesRequest { page_size: 1000, show_deleted: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .parties;
    let history = ChangeServiceClient::new(channel)
        .list_revisions(v1::ListRevisionsRequest {
            name: "partnershipDomains/india-japan-defence".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .revisions
        .into_iter()
        .map(|c| (c.revision, c.actor))
        .collect();
    (listed.revision, listed.agreements, parties, history)
}

/// A server over `dir` with the example dataset imported, and its address.
fn serve_example(dir: &Path) -> (Served, String) {
    let server = Serve::new(dir).start();
    let address = server.addr.to_string();
    let out =
        Command::new(BINARY).args(["import", "examples/india-japan-2020.json", "--server", &address]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (server, address)
}

/// `backup FILE --server ADDRESS`, which must succeed; what it printed.
fn backup(file: &Path, address: &str) -> String {
    let out = Command::new(BINARY).args(["backup", file.to_str().unwrap(), "--server", address]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `backup --server` of a live server and `restore --data-dir` give a server
/// with every record, field, etag and revision, and the same change log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_keep_every_record_revision_and_change() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, address) = serve_example(&dir.path().join("original"));
    let mut agreements = AgreementServiceClient::new(connect(server.addr).await);
    agreements.create_agreement(create_agreement("soft-deleted", agreement("Soft-deleted"))).await.unwrap();
    agreements
        .delete_agreement(v1::DeleteAgreementRequest { name: "agreements/soft-deleted".into(), ..Default::default() })
        .await
        .unwrap();

    let before = snapshot(server.addr).await;

    let file = dir.path().join("registry.backup");
    assert!(backup(&file, &address).contains(&format!("backed up revision {}", before.0)));
    server.kill();

    let restored_dir = dir.path().join("restored");
    let out = Command::new(BINARY)
        .args(["restore", file.to_str().unwrap(), "--data-dir", restored_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again = Command::new(BINARY)
        .args(["restore", file.to_str().unwrap(), "--data-dir", restored_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success(), "restore refuses a used data dir");

    let mut server = Serve::new(&restored_dir).start();
    assert_eq!(snapshot(server.addr).await, before);
    // New writes continue the revision sequence.
    let mut agreements = AgreementServiceClient::new(connect(server.addr).await);
    let created = agreements
        .create_agreement(create_agreement("after-restore", agreement("After restore")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.etag, (before.0 + 1).to_string());
    server.kill();
}

/// The same backup restores onto etcd (`restore --store etcd`), and a server
/// on it answers as the original did, at the same revisions; a backup of
/// that server restores into sled again, the same once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_moves_a_registry_from_sled_to_etcd_and_back() {
    use cooperation_registry::store::etcd::{EtcdOptions, testing};
    let dir = tempfile::tempdir().unwrap();
    let (mut server, address) = serve_example(&dir.path().join("original"));
    let before = snapshot(server.addr).await;
    let file = dir.path().join("sled.backup");
    backup(&file, &address);
    server.kill();

    // sled's first revision holds every ISO state: more writes than etcd's
    // default 128 a transaction.
    let ready = |urls| EtcdOptions::new(urls, b"ready/");
    let member = testing::start_member_with("http", &["--max-txn-ops", "4096"], ready).await;
    let etcd = ["--store", "etcd", "--etcd-endpoints", &member.url, "--etcd-max-txn-ops", "4096"];
    let restore = |prefix: &str| {
        Command::new(BINARY)
            .args(["restore", file.to_str().unwrap()])
            .args(etcd)
            .args(["--etcd-prefix", prefix])
            .output()
    };
    let out = restore("registry/").unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!restore("registry/").unwrap().status.success(), "restore refuses a prefix that holds keys");
    let mut on_etcd = Serve::new(&dir.path().join("unused")).flags(etcd).flags(["--etcd-prefix", "registry/"]).start();
    assert_eq!(snapshot(on_etcd.addr).await, before);
    let mut agreements = AgreementServiceClient::new(connect(on_etcd.addr).await);
    let created =
        agreements.create_agreement(create_agreement("on-etcd", agreement("On etcd"))).await.unwrap().into_inner();
    assert!(created.etag.parse::<i64>().unwrap() > before.0);
    let after = snapshot(on_etcd.addr).await;

    let file = dir.path().join("etcd.backup");
    backup(&file, &on_etcd.addr.to_string());
    on_etcd.kill();
    let back = dir.path().join("back");
    let out =
        Command::new(BINARY).args(["restore", file.to_str().unwrap(), "--data-dir", back.to_str().unwrap()]).output();
    assert!(out.as_ref().unwrap().status.success(), "{}", String::from_utf8_lossy(&out.unwrap().stderr));
    let mut server = Serve::new(&back).start();
    assert_eq!(snapshot(server.addr).await, after);
    server.kill();
}
