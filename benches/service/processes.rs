//! The processes under test, each pinned with `taskset` (h2load runs on core
//! 1): the registry, etcd (one member, or a cluster) and the floor server,
//! and what they use of the machine.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::process::{Serve, Served, spawn_server};

/// The registry's log filter under load: no per-call access lines (batched,
/// they still cost a share of a call, and this process's reading them a share
/// of a core), only the lines with its addresses.
const LOG_FILTER: &str = "warn,cooperation_registry::server=info";

/// Starts the registry on `data_dir` pinned to core 0, with `--metrics-listen`
/// and `extra` flags; returns once it serves, with the time that took.
pub fn start_registry(data_dir: &Path, extra: &[&str]) -> (Served, Duration) {
    start_registry_on(data_dir, extra, "0")
}

/// Starts the registry on `cores` (a taskset list).
pub fn start_registry_on(data_dir: &Path, extra: &[&str], cores: &str) -> (Served, Duration) {
    let started = Instant::now();
    let server =
        Serve::new(data_dir).default_durability().flags(extra).metrics().log_filter(LOG_FILTER).pinned(cores).start();
    (server, started.elapsed())
}

/// Starts the floor server (`floor.rs`) on a fresh sled database in
/// `data_dir`, pinned to core 0.
pub fn start_floor(data_dir: &Path) -> Served {
    let mut command = Command::new("taskset");
    command.args(["-c", "0"]).arg(std::env::current_exe().expect("the bench binary's path"));
    command.env("FLOOR_DATA_DIR", data_dir);
    spawn_server(&mut command, true)
}

/// Starts etcd on a fresh data dir, pinned to core 0; None if it is not
/// installed or does not answer within 30 s.
pub fn start_etcd(data_dir: &Path) -> Option<Served> {
    let (client, peer) = (free_port(), free_port());
    let initial_cluster = format!("bench=http://127.0.0.1:{peer}");
    start_etcd_member("bench", data_dir, (client, peer), &initial_cluster, "0")
}

/// Starts a cluster of `size` etcd members on loopback, each on a fresh data
/// dir under `dir` and pinned to `cores`, with etcd's defaults otherwise
/// (what an operator gets); None if etcd is not installed or a member does
/// not answer within 30 s. The members answer once their ports are open,
/// not once they have elected a leader.
pub fn start_etcd_cluster(dir: &Path, size: usize, cores: &str) -> Option<Vec<Served>> {
    let (ports, initial_cluster) = cooperation_registry::store::etcd::testing::loopback_cluster(size);
    ports
        .iter()
        .enumerate()
        .map(|(i, &ports)| {
            start_etcd_member(&format!("n{i}"), &dir.join(format!("n{i}")), ports, &initial_cluster, cores)
        })
        .collect()
}

/// Starts etcd member `name` of `initial_cluster` on `data_dir`, serving
/// clients and peers on the `(client, peer)` ports of 127.0.0.1, pinned to
/// `cores`; None if it is not installed or its client port does not open
/// within 30 s.
fn start_etcd_member(
    name: &str,
    data_dir: &Path,
    (client, peer): (u16, u16),
    initial_cluster: &str,
    cores: &str,
) -> Option<Served> {
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("taskset")
        .args(["-c", cores, "etcd", "--name", name, "--data-dir"])
        .arg(data_dir)
        .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", initial_cluster, "--initial-cluster-state", "new"])
        .args(["--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let addr: SocketAddr = format!("127.0.0.1:{client}").parse().unwrap();
    // etcd serves its Prometheus metrics on the client port.
    let etcd = Served::unlogged(child, addr, Some(addr));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    Some(etcd)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// user + system CPU time of process `pid` so far, in microseconds.
pub fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks * 1_000_000 / clock_ticks()
}

/// Clock ticks a second (`getconf CLK_TCK`), asked once.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().ok();
        out.and_then(|o| String::from_utf8(o.stdout).ok()).and_then(|s| s.trim().parse().ok()).unwrap_or(100)
    })
}

/// The disk space under `path`, in MiB (`du -sk`).
pub fn du_mib(path: &Path) -> f64 {
    let out = Command::new("du").arg("-sk").arg(path).output().unwrap();
    let kib: f64 =
        String::from_utf8_lossy(&out.stdout).split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    kib / 1024.0
}
