//! Faults of the data dir, through the real binary: read-only, full at start,
//! filling up while serving, locked by another process, corrupted. Each must
//! end in a clear error and a non-zero exit (never a panic or a silent empty
//! start), and a disk that fills up must lose nothing acknowledged.
//!
//! The read-only and full disks are real filesystems (tmpfs, mounted here),
//! which needs root: those tests are ignored unless asked for
//! (`cargo test --test faults -- --include-ignored`, as CI runs them, as
//! root), and fail if they are run where they cannot mount.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{client::*, process::*, records::*};
use cooperation_registry::pb::cooperation::v1::agreement_service_client::AgreementServiceClient;
use cooperation_registry::pb::cooperation::v1::{self as v1};
use tonic::Code;

/// Runs `mount` with `args`, or panics with its error: the tests that call it
/// cannot run without the privilege to mount.
fn mount(args: &[&str], target: &Path) {
    let out = Command::new("mount").args(args).arg(target).output().expect("mount runs");
    assert!(
        out.status.success(),
        "mount {} {} failed ({}): {}\nThis test needs root to mount; run it as root \
         (`cargo test --test faults -- --include-ignored`) or leave it ignored.",
        args.join(" "),
        target.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A tmpfs mounted on a fresh temporary dir, unmounted when dropped.
struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    /// Mounts a tmpfs with `options` (e.g. `size=1m`).
    fn tmpfs(options: &str) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        mount(&["-t", "tmpfs", "-o", options, "tmpfs"], dir.path());
        Mount { dir }
    }

    /// Binds `path` onto itself read-only.
    fn read_only_bind(path: &Path) -> BindMount {
        mount(&["--bind", path.to_str().unwrap()], path);
        let bind = BindMount { path: path.to_path_buf() };
        mount(&["-o", "remount,ro,bind"], path);
        bind
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, options: &str) {
        mount(&["-o", &format!("remount,{options}")], self.dir.path());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

struct BindMount {
    path: PathBuf,
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// How long a server that should refuse to start may run.
const REFUSAL_LIMIT: Duration = Duration::from_secs(20);

/// Runs `serve` on `data_dir` expecting it to refuse to start.
fn serve_refused(data_dir: &Path) -> Output {
    Serve::new(data_dir).refused(REFUSAL_LIMIT)
}

fn assert_refused(out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(expected), "expected {expected:?} in:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
#[ignore = "needs root: mounts a read-only tmpfs and a read-only bind mount"]
fn a_read_only_data_dir_is_refused_whether_new_or_existing() {
    let mount = Mount::tmpfs("size=4m,ro");
    assert_refused(&serve_refused(&mount.path().join("db")), "Read-only file system");

    // An initialised data dir that has become read-only.
    let dir = tempfile::tempdir().unwrap();
    Serve::new(dir.path()).start().stop();
    let _ro = Mount::read_only_bind(dir.path());
    assert_refused(&serve_refused(dir.path()), "Read-only file system");
}

/// The first start's writes (the states it seeds) must reach the disk to find
/// it full, so the server keeps its default durability (fsync).
#[test]
#[ignore = "needs root: mounts a tmpfs"]
fn a_disk_too_full_to_start_on_is_refused() {
    let mount = Mount::tmpfs("size=64k");
    let out = Serve::new(&mount.path().join("db")).default_durability().refused(REFUSAL_LIMIT);
    assert_refused(&out, "No space left on device");
}

/// Every acknowledged write must have reached the disk before it filled up, so
/// the server keeps its default durability (fsync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: mounts a tmpfs"]
async fn a_disk_filling_up_stops_the_server_and_loses_nothing_acknowledged() {
    let mount = Mount::tmpfs("size=1m");
    let data_dir = mount.path().join("db");
    let mut server = Serve::new(&data_dir).default_durability().start();
    let mut client = AgreementServiceClient::new(connect(server.addr).await);
    let mut acknowledged = Vec::new();
    let mut refusal = None;
    for i in 0..200 {
        let mut record = agreement(&format!("Filler {i}"));
        record.description = "x".repeat(16_000);
        match client.create_agreement(create_agreement(&format!("filler-{i}"), record)).await {
            Ok(created) => acknowledged.push(created.into_inner().name),
            Err(status) => {
                refusal = Some(status);
                break;
            }
        }
    }
    let refusal = refusal.expect("1 MiB filled up within 200 writes of 16 kB");
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(refusal.message().contains("disk is full"), "{refusal:?}");
    assert_eq!(reason(&refusal), "STORAGE_FULL");
    assert!(acknowledged.len() > 5, "only {} writes fitted", acknowledged.len());
    drop(client);

    // The server stops by itself, with the cause and a non-zero exit.
    let status = server.wait_exit(Duration::from_secs(30));
    let log = server.log().join("\n");
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("stopped because the store cannot write") && log.contains("No space left on device"), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    // With room again, every acknowledged write is there and writes work.
    mount.remount("size=32m");
    let server = Serve::new(&data_dir).default_durability().start();
    let mut client = AgreementServiceClient::new(connect(server.addr).await);
    for name in &acknowledged {
        let got = client.get_agreement(v1::GetAgreementRequest { name: name.clone(), ..Default::default() }).await;
        assert!(got.is_ok(), "acknowledged {name} lost: {got:?}");
    }
    client.create_agreement(create_agreement("after-the-fix", agreement("After"))).await.unwrap();
    drop(server);
    eprintln!("{} acknowledged writes survived the disk filling up", acknowledged.len());
}

#[test]
fn a_data_dir_in_use_by_another_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = Serve::new(dir.path()).start();
    let out = serve_refused(dir.path());
    drop(first);
    assert_refused(&out, "in use by another process");
}

#[tokio::test]
async fn a_corrupted_database_is_refused_not_started_empty() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Serve::new(dir.path()).start();
    let mut client = AgreementServiceClient::new(connect(server.addr).await);
    for i in 0..20 {
        client.create_agreement(create_agreement(&format!("kept-{i}"), agreement("Kept"))).await.unwrap();
    }
    drop(client);
    // A graceful stop flushes the writes into the data file. It is waited for
    // off the runtime, which meanwhile closes the dropped client's connection
    // (left open, it would hold the drain until its timeout).
    let stopped = tokio::task::spawn_blocking(move || {
        server.sigterm();
        server.wait_exit(Duration::from_secs(20))
    });
    assert!(stopped.await.unwrap().success());
    // Overwrite the middle of sled's data file with garbage.
    let file = dir.path().join("db");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    let end = (middle + 64 * 1024).min(bytes.len());
    for (i, b) in bytes[middle..end].iter_mut().enumerate() {
        *b = (i * 7919 % 251) as u8;
    }
    std::fs::write(&file, &bytes).unwrap();
    let out = serve_refused(dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot open the data dir"), "{stderr}");
    assert!(stderr.contains("is damaged") || stderr.contains("not a readable sled database"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
