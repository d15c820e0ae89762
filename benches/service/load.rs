//! The load generator: h2load runs pinned to core 1, and what they measured.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::common::process::Served;
use crate::common::stats::{quantile, sorted};
use crate::processes::cpu_us;

/// What h2load measured in one run.
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub calls: u64,
    pub failed: u64,
    pub rate: f64,
    pub data_bytes: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// The 99.9th percentile and the slowest call (µs).
    pub p999_us: u64,
    pub max_us: u64,
    /// Server CPU over the whole run, warm-up included.
    pub cpu_us: u64,
    /// Calls the server itself counted in the run, warm-up included (h2load's
    /// `calls` leaves the warm-up out).
    pub server_calls: f64,
    /// For writes: the writes that shared each durable sync (the server's
    /// calls over its flushes, or etcd's over its WAL fsyncs), warm-up included.
    pub writes_per_sync: Option<f64>,
}

impl Run {
    pub fn cpu_us_per_call(&self) -> f64 {
        self.cpu_us as f64 / self.server_calls.max(1.0)
    }
}

/// The seconds of h2load's warm-up before it measures.
pub const WARM_UP_SECS: u32 = 1;

/// One h2load run of `seconds` (after a one-second warm-up) posting `body` to
/// `path` with `clients` connections of `streams` streams each; `rps` makes it
/// open-loop at that many calls a second per client.
pub fn h2load(
    server: &Served,
    path: &str,
    body: &Path,
    clients: u32,
    streams: u32,
    seconds: u32,
    rps: Option<f64>,
) -> Run {
    let log = tempfile::NamedTempFile::new().unwrap();
    let cpu_before = cpu_us(server.pid());
    let out = command(server, path, body, (clients, streams), seconds, rps, log.path()).output().expect("h2load runs");
    let cpu = cpu_us(server.pid()) - cpu_before;
    let (run, latencies) = reported(path, &out, log.path());
    with_latencies(Run { cpu_us: cpu, ..run }, latencies)
}

/// One run as `h2load`'s at c`bodies.len()`/m`streams`, but with a body for
/// each connection: h2load sends one body to every stream, so each
/// connection is an h2load process of its own, all pinned as one is. Their
/// calls, rates and DATA add up, and the latencies are those of all their
/// calls together, as one process would have measured them.
pub fn h2load_each(server: &Served, path: &str, bodies: &[&Path], streams: u32, seconds: u32) -> Run {
    let logs: Vec<_> = bodies.iter().map(|_| tempfile::NamedTempFile::new().unwrap()).collect();
    let cpu_before = cpu_us(server.pid());
    // All started before any is waited for, so that they overlap but for
    // the time it takes to start them (the warm-up covers it).
    let started: Vec<_> = bodies
        .iter()
        .zip(&logs)
        .map(|(body, log)| {
            command(server, path, body, (1, streams), seconds, None, log.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("h2load starts")
        })
        .collect();
    let outs: Vec<_> = started.into_iter().map(|child| child.wait_with_output().expect("h2load runs")).collect();
    let cpu = cpu_us(server.pid()) - cpu_before;
    let mut total = Run { cpu_us: cpu, ..Run::default() };
    let mut latencies = Vec::new();
    for (out, log) in outs.iter().zip(&logs) {
        let (run, mut more) = reported(path, out, log.path());
        total.calls += run.calls;
        total.failed += run.failed;
        total.rate += run.rate;
        total.data_bytes += run.data_bytes;
        latencies.append(&mut more);
    }
    with_latencies(total, latencies)
}

/// h2load pinned to core 1, posting `body` to `path` at `server` with
/// `clients` connections of `streams` streams, each call logged to `log`.
fn command(
    server: &Served,
    path: &str,
    body: &Path,
    (clients, streams): (u32, u32),
    seconds: u32,
    rps: Option<f64>,
    log: &Path,
) -> Command {
    let mut command = Command::new("taskset");
    command
        .args(["-c", "1", "h2load", "-c", &clients.to_string(), "-m", &streams.to_string()])
        .args(["-D", &seconds.to_string(), "--warm-up-time", &WARM_UP_SECS.to_string()])
        .arg("-d")
        .arg(body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("--log-file")
        .arg(log);
    if let Some(rps) = rps {
        command.arg(format!("--rps={rps:.2}"));
    }
    command.arg(format!("http://{}{path}", server.addr));
    command
}

/// What one h2load process reported on `path` (`out`, and the calls in its
/// `log`): its counts, and each call's latency in µs, in no order.
fn reported(path: &str, out: &Output, log: &Path) -> (Run, Vec<u64>) {
    let text = String::from_utf8_lossy(&out.stdout);
    let number_after = |line_start: &str, word: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| {
                let words: Vec<&str> =
                    l.split(|c: char| c == ',' || c.is_whitespace()).filter(|w| !w.is_empty()).collect();
                words
                    .iter()
                    .position(|w| *w == word)
                    .and_then(|i| words.get(i.wrapping_sub(1)))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0.0)
    };
    let calls = number_after("requests:", "succeeded") as u64;
    let failed = number_after("requests:", "failed") as u64 + number_after("requests:", "errored") as u64;
    let rate = number_after("finished in", "req/s");
    let data_bytes = data_bytes(&text);
    // Each call's latency in µs, the third column of the log file.
    let latencies = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('\t').nth(2).and_then(|v| v.trim().parse().ok()))
        .collect();
    if calls == 0 {
        eprintln!("h2load on {path} completed nothing:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    (Run { calls, failed, rate, data_bytes, ..Run::default() }, latencies)
}

/// `run` with its median, 99th and 99.9th percentiles and slowest of
/// `latencies` (µs).
fn with_latencies(run: Run, latencies: Vec<u64>) -> Run {
    let latencies = sorted(latencies);
    let at = |q| quantile(&latencies, q).unwrap_or(0);
    Run { p50_us: at(0.50), p99_us: at(0.99), p999_us: at(0.999), max_us: at(1.0), ..run }
}

/// One call of `path` with `body` to the server at `addr`: h2load's report.
pub fn once(addr: std::net::SocketAddr, path: &str, body: &Path) -> String {
    let out = Command::new("h2load")
        .args(["-n", "1", "-c", "1", "-d"])
        .arg(body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DATA bytes in h2load's "traffic:" line.
pub fn data_bytes(h2load_output: &str) -> u64 {
    h2load_output
        .lines()
        .find(|l| l.starts_with("traffic:"))
        .and_then(|l| l.rsplit_once(" data").map(|(head, _)| head))
        .and_then(|head| head.rsplit_once('(').map(|(_, n)| n.trim_end_matches(')').to_string()))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
