//! The load generator: h2load runs pinned to core 1, and what they measured.

use std::path::Path;
use std::process::Command;

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
    let mut command = Command::new("taskset");
    command
        .args(["-c", "1", "h2load", "-c", &clients.to_string(), "-m", &streams.to_string()])
        .args(["-D", &seconds.to_string(), "--warm-up-time", "1"])
        .arg("-d")
        .arg(body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("--log-file")
        .arg(log.path());
    if let Some(rps) = rps {
        command.arg(format!("--rps={rps:.2}"));
    }
    let out = command.arg(format!("http://{}{path}", server.addr)).output().expect("h2load runs");
    let cpu = cpu_us(server.pid()) - cpu_before;
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
    let latencies: Vec<u64> = sorted(
        std::fs::read_to_string(log.path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split('\t').nth(2).and_then(|v| v.trim().parse().ok())),
    );
    if calls == 0 {
        eprintln!("h2load on {path} completed nothing:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Run {
        calls,
        failed,
        rate,
        data_bytes,
        p50_us: quantile(&latencies, 0.50).unwrap_or(0),
        p99_us: quantile(&latencies, 0.99).unwrap_or(0),
        cpu_us: cpu,
        server_calls: 0.0,
        writes_per_sync: None,
    }
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
