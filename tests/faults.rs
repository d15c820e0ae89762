//! Faults of the data dir, through the real binary: read-only, full at start,
//! filling up while serving, locked by another process, corrupted. Each must
//! end in a clear error and a non-zero exit (never a panic or a silent empty
//! start), and a disk that fills up must lose nothing acknowledged.
//!
//! The read-only and full disks are real filesystems (tmpfs, mounted here),
//! which needs root, as CI runs; elsewhere those tests say so and pass.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use cooperation_registry::pb::cooperation::v1::agreement_service_client::AgreementServiceClient;
use cooperation_registry::pb::cooperation::v1::{self as v1};
use tonic::Code;

const BINARY: &str = env!("CARGO_BIN_EXE_cooperation-registry");

/// A tmpfs mounted on a fresh temporary dir, unmounted when dropped.
struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    /// Mounts a tmpfs with `options` (e.g. `size=1m`), or None without the
    /// privilege to mount.
    fn tmpfs(options: &str) -> Option<Mount> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(Mount { dir })
    }

    /// Binds `path` onto itself read-only, or None without the privilege.
    fn read_only_bind(path: &Path) -> Option<BindMount> {
        let bind = Command::new("mount").arg("--bind").arg(path).arg(path).stderr(Stdio::null()).status();
        if !bind.is_ok_and(|s| s.success()) {
            eprintln!("skipped: cannot bind-mount here (needs root)");
            return None;
        }
        let mount = BindMount { path: path.to_path_buf() };
        let ro = Command::new("mount").args(["-o", "remount,ro,bind"]).arg(path).status().unwrap();
        assert!(ro.success(), "remount read-only");
        Some(mount)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, options: &str) {
        let status =
            Command::new("mount").args(["-o", &format!("remount,{options}")]).arg(self.dir.path()).status().unwrap();
        assert!(status.success(), "remount {options}");
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

/// Runs `serve` on `data_dir` expecting it to refuse to start.
fn serve_refused(data_dir: &Path) -> Output {
    let mut child = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("serve on {} did not stop: it should have refused to start", data_dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn assert_refused(out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(expected), "expected {expected:?} in:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A served process, killed if a failing test leaves it running.
struct Served(std::process::Child);

impl std::ops::Deref for Served {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Served {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` on `data_dir` and returns it with its address and log lines.
fn serve(data_dir: &Path) -> (Served, std::net::SocketAddr, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader};
    let mut child = Served(
        Command::new(BINARY)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "warn,cooperation_registry::server=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = lines.recv_timeout(deadline - Instant::now()).expect("a serving line");
        if let Some(at) = line.find("address=") {
            let addr: String = line[at + 8..].chars().take_while(|c| !c.is_whitespace()).collect();
            return (child, addr.parse().unwrap(), lines);
        }
    }
}

#[test]
fn a_read_only_data_dir_is_refused_whether_new_or_existing() {
    let Some(mount) = Mount::tmpfs("size=4m,ro") else { return };
    assert_refused(&serve_refused(&mount.path().join("db")), "Read-only file system");

    // An initialised data dir that has become read-only.
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _, _) = serve(dir.path());
    child.kill().unwrap();
    child.wait().unwrap();
    let Some(_ro) = Mount::read_only_bind(dir.path()) else { return };
    assert_refused(&serve_refused(dir.path()), "Read-only file system");
}

#[test]
fn a_disk_too_full_to_start_on_is_refused() {
    let Some(mount) = Mount::tmpfs("size=64k") else { return };
    assert_refused(&serve_refused(&mount.path().join("db")), "No space left on device");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filling_up_stops_the_server_and_loses_nothing_acknowledged() {
    let Some(mount) = Mount::tmpfs("size=1m") else { return };
    let data_dir = mount.path().join("db");
    let (mut child, addr, lines) = serve(&data_dir);
    let mut client = AgreementServiceClient::new(connect(addr).await);
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
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop after its disk filled up: {:?}",
            lines.try_iter().collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log: Vec<String> = lines.try_iter().collect();
    let log = log.join("\n");
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("stopped because the store cannot write") && log.contains("No space left on device"), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    // With room again, every acknowledged write is there and writes work.
    mount.remount("size=32m");
    let (mut child, addr, _) = serve(&data_dir);
    let mut client = AgreementServiceClient::new(connect(addr).await);
    for name in &acknowledged {
        let got = client.get_agreement(v1::GetAgreementRequest { name: name.clone(), ..Default::default() }).await;
        assert!(got.is_ok(), "acknowledged {name} lost: {got:?}");
    }
    client.create_agreement(create_agreement("after-the-fix", agreement("After"))).await.unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!("{} acknowledged writes survived the disk filling up", acknowledged.len());
}

#[test]
fn a_data_dir_in_use_by_another_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, _, _) = serve(dir.path());
    let out = serve_refused(dir.path());
    first.kill().unwrap();
    first.wait().unwrap();
    assert_refused(&out, "in use by another process");
}

#[tokio::test]
async fn a_corrupted_database_is_refused_not_started_empty() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, _) = serve(dir.path());
    let mut client = AgreementServiceClient::new(connect(addr).await);
    for i in 0..20 {
        client.create_agreement(create_agreement(&format!("kept-{i}"), agreement("Kept"))).await.unwrap();
    }
    drop(client);
    let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    assert!(child.wait().unwrap().success());
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
