//! The service under a real HTTP/2 load generator (h2load, from Debian's
//! nghttp2-client), in one run on one machine so the figures can be compared.
//!
//! `cargo bench --bench service` builds the release binary, starts it on a
//! fresh data dir pinned to core 0 (h2load on core 1, with `taskset`), loads
//! AGREEMENTS agreements (default 10,000; plus one engagement per ten) and
//! runs one of:
//!
//! - `BENCH=compare` (default): grpc.health.v1.Health/Check (the ceiling),
//!   GetAgreement, party-filtered ListAgreements (page of 50), durable
//!   CreateAgreement and UpdateAgreement, and etcd 3.4 (Range of one key,
//!   serializable, after compaction; Put of a value the size of our encoded
//!   agreement), each at c1/m1, c16/m16 and c64/m8, interleaved, REPS times
//!   (default 3). Writes a table to `target/bench-service.md`. With
//!   `DATA_DIR=path` the loaded data dir is kept there and a later run with
//!   the same AGREEMENTS uses it instead of loading again.
//! - `BENCH=overload`: the sustainable rate of a ListAgreements page that
//!   scans (a party, and a word of the title that no index answers, so each
//!   record is tested and the page runs on the blocking pool under the scan
//!   limits) with `--max-concurrent-calls 64`, then ten times that rate offered
//!   open-loop for OVERLOAD_SECS (default 10) seconds: served and shed calls,
//!   the p99 of admitted calls (from the server's own latency histogram) and
//!   the server's memory before, at peak and after.
//!
//! - `BENCH=floor`: the floor under a durable create. The ceiling, durable
//!   CreateAgreement and etcd's Put as in `compare`, interleaved with a
//!   server of tonic and sled alone (`service/floor.rs`) answering the same
//!   request: decoding it only, with two sled inserts, and with two inserts
//!   made durable as the registry makes them. Writes `target/bench-floor.md`.
//!
//! Every run is checked, because h2load counts a call that failed with a gRPC
//! status as a success: reads must return exactly calls × response bytes of
//! DATA, writes must move the revision by exactly the number of calls.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cooperation_registry::pb::cooperation::v1::agreement_service_client::AgreementServiceClient;
use cooperation_registry::pb::cooperation::v1::engagement_service_client::EngagementServiceClient;
use cooperation_registry::pb::cooperation::v1::{self as v1, agreement, engagement};
use cooperation_registry::pb::google::r#type::Date;
use prost::Message;

#[path = "service/floor.rs"]
mod floor;

const BINARY: &str = env!("CARGO_BIN_EXE_cooperation-registry");

const STATES: [&str; 40] = [
    "ind", "jpn", "usa", "aus", "fra", "deu", "gbr", "can", "bra", "zaf", "idn", "vnm", "phl", "sgp", "mys", "tha",
    "kor", "nzl", "ita", "esp", "nld", "bel", "pol", "swe", "nor", "fin", "dnk", "mex", "arg", "chl", "egy", "nga",
    "ken", "sau", "are", "isr", "tur", "pak", "bgd", "lka",
];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn date(year: i32, month: i32, day: i32) -> Option<Date> {
    Some(Date { year, month, day })
}

/// Agreement `i`: two parties, signatories, dates, a ten-year term, three
/// provisions, identifiers and labels, like the seed article's.
fn agreement(i: usize) -> v1::Agreement {
    let a = STATES[i % STATES.len()];
    let b = STATES[(i * 7 + 3) % STATES.len()];
    let b = if a == b { STATES[(i + 1) % STATES.len()] } else { b };
    let year = 1990 + (i % 35) as i32;
    v1::Agreement {
        title: format!("Agreement {i} between {a} and {b} concerning reciprocal provision of supplies and services"),
        parties: vec![format!("parties/{a}"), format!("parties/{b}")],
        instrument_type: 1 + (i % 5) as i32,
        signatories: vec![
            agreement::Signatory {
                person: "Ajay Kumar".into(),
                post: "Defence Secretary".into(),
                party: format!("parties/{a}"),
                ..Default::default()
            },
            agreement::Signatory {
                person: "Suzuki Satoshi".into(),
                post: "Ambassador".into(),
                party: format!("parties/{b}"),
                ..Default::default()
            },
        ],
        signature_date: date(year, 1 + (i % 12) as i32, 1 + (i % 28) as i32),
        entry_into_force_date: date(year + 1, 1, 1),
        term: Some(agreement::Term { years: 10, ..Default::default() }),
        provisions: (0..3)
            .map(|p| agreement::Provision {
                category: 1 + ((i + p) % 20) as i32,
                summary: "food, water, billeting, transportation, petroleum, clothing, repair and maintenance".into(),
                reciprocal: true,
                ..Default::default()
            })
            .collect(),
        description: "A bilateral agreement recorded for the service benchmark, with the fields a treaty \
                      database would hold for it."
            .into(),
        labels: [("source".to_string(), "bench".to_string())].into(),
        ..Default::default()
    }
}

fn engagement(i: usize) -> v1::Engagement {
    let a = STATES[i % STATES.len()];
    let b = STATES[(i * 3 + 1) % STATES.len()];
    let b = if a == b { STATES[(i + 2) % STATES.len()] } else { b };
    v1::Engagement {
        title: format!("Meeting {i} of {a} and {b}"),
        kind: 1 + (i % 4) as i32,
        participants: vec![
            engagement::Participant { party: format!("parties/{a}"), ..Default::default() },
            engagement::Participant { party: format!("parties/{b}"), ..Default::default() },
        ],
        start_date: date(2000 + (i % 25) as i32, 1 + (i % 12) as i32, 1 + (i % 28) as i32),
        ..Default::default()
    }
}

/// A message in gRPC's length-prefixed framing: what h2load sends as the body.
fn frame(message: &impl Message) -> Vec<u8> {
    let bytes = message.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    framed.extend_from_slice(&bytes);
    framed
}

/// etcd's RangeRequest and PutRequest (etcdserverpb), the fields used here.
#[derive(Clone, PartialEq, Message)]
struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bool, tag = "7")]
    serializable: bool,
}

#[derive(Clone, PartialEq, Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct CompactionRequest {
    #[prost(int64, tag = "1")]
    revision: i64,
    #[prost(bool, tag = "2")]
    physical: bool,
}

/// A server process pinned to core 0.
struct Server {
    child: Child,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// user + system CPU time so far, in microseconds.
    fn cpu_us(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let after_name = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        ticks * 1_000_000 / clock_ticks()
    }

    /// (resident, peak resident) in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        memory_kib(self.pid())
    }

    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (resident, peak resident) memory of process `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Clock ticks a second (`getconf CLK_TCK`), asked once.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().ok();
        out.and_then(|o| String::from_utf8(o.stdout).ok()).and_then(|s| s.trim().parse().ok()).unwrap_or(100)
    })
}

/// Starts the registry on `data_dir`; returns once it serves, with the time
/// that took.
fn start_registry(data_dir: &Path, extra: &[&str]) -> (Server, Duration) {
    start_registry_on(data_dir, extra, "0")
}

/// Starts the registry on `cores` (a taskset list).
fn start_registry_on(data_dir: &Path, extra: &[&str], cores: &str) -> (Server, Duration) {
    let started = Instant::now();
    let mut child = Command::new("taskset")
        .args(["-c", cores, BINARY, "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        // No per-call access lines under load: batched, they still cost ~5 µs
        // of a call (and this process's reading them, a share of a core).
        .env("RUST_LOG", "warn,cooperation_registry::server=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("taskset and the binary run");
    let (addr, metrics) = addresses(&mut child);
    (Server { child, addr, metrics: Some(metrics) }, started.elapsed())
}

/// Starts the floor server (`service/floor.rs`) on a fresh sled database in
/// `data_dir`, pinned to core 0.
fn start_floor(data_dir: &Path) -> Server {
    let mut child = Command::new("taskset")
        .args(["-c", "0"])
        .arg(std::env::current_exe().expect("the bench binary's path"))
        .env("FLOOR_DATA_DIR", data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("taskset and the bench binary run");
    let (addr, metrics) = addresses(&mut child);
    Server { child, addr, metrics: Some(metrics) }
}

/// The gRPC and metrics addresses a server logs as it starts (its other
/// lines are read on, and dropped, until it stops).
fn addresses(child: &mut Child) -> (SocketAddr, SocketAddr) {
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("call finished") {
                continue;
            }
            let _ = lines_tx.send(line);
        }
    });
    let address = |line: &str| -> Option<SocketAddr> {
        let at = line.find("address=")?;
        line[at + 8..].chars().take_while(|c| !c.is_whitespace()).collect::<String>().parse().ok()
    };
    let (mut addr, mut metrics) = (None, None);
    while addr.is_none() || metrics.is_none() {
        let line = lines.recv_timeout(Duration::from_secs(120)).expect("the server starts");
        if line.contains("Prometheus") {
            metrics = address(&line);
        } else if line.contains("serving ") {
            addr = address(&line);
        }
    }
    (addr.unwrap(), metrics.unwrap())
}

/// Starts etcd on a fresh data dir, pinned to core 0.
fn start_etcd(data_dir: &Path) -> Option<Server> {
    let client = free_port();
    let peer = free_port();
    let child = Command::new("taskset")
        .args(["-c", "0", "etcd", "--name", "bench", "--data-dir"])
        .arg(data_dir)
        .args([
            "--listen-client-urls",
            &format!("http://127.0.0.1:{client}"),
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{client}"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-cluster",
            &format!("bench=http://127.0.0.1:{peer}"),
            "--log-level",
            "error",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let addr: SocketAddr = format!("127.0.0.1:{client}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    // etcd serves its Prometheus metrics on the client port.
    Some(Server { child, addr, metrics: Some(addr) })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// What h2load measured in one run.
#[derive(Clone, Debug, Default)]
struct Run {
    calls: u64,
    failed: u64,
    rate: f64,
    data_bytes: u64,
    p50_us: u64,
    p99_us: u64,
    /// Server CPU over the whole run, warm-up included.
    cpu_us: u64,
    /// Calls the server itself counted in the run, warm-up included (h2load's
    /// `calls` leaves the warm-up out).
    server_calls: f64,
    /// For writes: the writes that shared each durable sync (the server's
    /// calls over its flushes, or etcd's over its WAL fsyncs), warm-up included.
    writes_per_sync: Option<f64>,
}

impl Run {
    fn cpu_us_per_call(&self) -> f64 {
        self.cpu_us as f64 / self.server_calls.max(1.0)
    }
}

/// One h2load run of `seconds` (after a one-second warm-up) posting `body` to
/// `path` with `clients` connections of `streams` streams each; `rps` makes it
/// open-loop at that many calls a second per client.
fn h2load(server: &Server, path: &str, body: &Path, clients: u32, streams: u32, seconds: u32, rps: Option<f64>) -> Run {
    let log = tempfile::NamedTempFile::new().unwrap();
    let cpu_before = server.cpu_us();
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
    let cpu = server.cpu_us() - cpu_before;
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
    let mut latencies: Vec<u64> = std::fs::read_to_string(log.path())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('\t').nth(2).and_then(|v| v.trim().parse().ok()))
        .collect();
    latencies.sort_unstable();
    let quantile = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    if calls == 0 {
        eprintln!("h2load on {path} completed nothing:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Run {
        calls,
        failed,
        rate,
        data_bytes,
        p50_us: quantile(0.50),
        p99_us: quantile(0.99),
        cpu_us: cpu,
        server_calls: 0.0,
        writes_per_sync: None,
    }
}

/// The bytes of one response frame for a unary call.
fn response_frame_len(response: &impl Message) -> u64 {
    5 + response.encoded_len() as u64
}

/// The DATA bytes in h2load's "traffic:" line.
fn data_bytes(h2load_output: &str) -> u64 {
    h2load_output
        .lines()
        .find(|l| l.starts_with("traffic:"))
        .and_then(|l| l.rsplit_once(" data").map(|(head, _)| head))
        .and_then(|head| head.rsplit_once('(').map(|(_, n)| n.trim_end_matches(')').to_string()))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Loads `count` agreements and `count / 10` engagements through the API with
/// 64 concurrent callers; returns the name of one agreement of India's.
async fn load(addr: SocketAddr, count: usize) -> String {
    let started = Instant::now();
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let callers = 64;
    let mut tasks = Vec::new();
    for c in 0..callers {
        let mut agreements = AgreementServiceClient::new(channel.clone());
        let mut engagements = EngagementServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            for i in (c..count).step_by(callers) {
                let request = v1::CreateAgreementRequest {
                    agreement_id: format!("a{i:07}"),
                    agreement: Some(agreement(i)),
                    request_id: String::new(),
                };
                agreements.create_agreement(request).await.expect("create agreement");
                if i % 10 == 0 {
                    let request = v1::CreateEngagementRequest {
                        engagement_id: format!("e{i:07}"),
                        engagement: Some(engagement(i)),
                        request_id: String::new(),
                    };
                    engagements.create_engagement(request).await.expect("create engagement");
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    eprintln!(
        "loaded {count} agreements and {} engagements in {:.1} s ({:.0} records/s)",
        count / 10,
        elapsed.as_secs_f64(),
        (count + count / 10) as f64 / elapsed.as_secs_f64()
    );
    "agreements/a0000000".into()
}

async fn revision(addr: SocketAddr) -> i64 {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut client = AgreementServiceClient::new(channel);
    client
        .list_agreements(v1::ListAgreementsRequest { page_size: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .revision
}

/// A scrape of the server's metrics: every series and its value.
async fn scrape(metrics: SocketAddr) -> BTreeMap<String, f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(metrics).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(series, value)| Some((series.to_string(), value.parse().ok()?))))
        .collect()
}

fn write_body(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn du_mib(path: &Path) -> f64 {
    let out = Command::new("du").arg("-sk").arg(path).output().unwrap();
    let kib: f64 =
        String::from_utf8_lossy(&out.stdout).split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    kib / 1024.0
}

fn main() {
    // The bench binary is also the floor server, in a process of its own.
    if let Some(dir) = std::env::var_os("FLOOR_DATA_DIR") {
        floor::serve(Path::new(&dir));
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    for tool in ["h2load", "taskset"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("{tool} is missing: install Debian's nghttp2-client (h2load) and util-linux (taskset)");
            std::process::exit(1);
        }
    }
    match std::env::var("BENCH").as_deref().unwrap_or("compare") {
        "overload" => overload().await,
        "compare" => compare(Comparison::Service).await,
        "floor" => compare(Comparison::Floor).await,
        other => {
            eprintln!("BENCH={other}: use compare, floor or overload");
            std::process::exit(1);
        }
    }
}

/// The path of a method of cooperation.v1.AgreementService.
fn agreements(method: &str) -> String {
    format!("/cooperation.v1.AgreementService/{method}")
}

async fn overload() {
    let count: usize = env_or("AGREEMENTS", 10_000);
    let seconds: u32 = env_or("OVERLOAD_SECS", 10);
    let limit = 64;
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("data");
    let (server, _) = start_registry(&data_dir, &["--max-concurrent-calls", &limit.to_string()]);
    load(server.addr, count).await;
    let metrics = server.metrics.expect("metrics address");
    // (A party alone is answered from its index without a scan: see
    // `Registry::list_encoded_quick`.)
    let list = v1::ListAgreementsRequest {
        filter: "parties:\"parties/ind\" AND title:\"supplies\"".into(),
        page_size: 50,
        ..Default::default()
    };
    let body = write_body(work.path(), "list.bin", &frame(&list));
    let path = agreements("ListAgreements");

    let (rss_loaded, _) = server.memory_kib();
    let ok = "grpc_server_handled_total{grpc_service=\"cooperation.v1.AgreementService\",grpc_method=\"ListAgreements\",grpc_code=\"Ok\"}".to_string();
    let served_in = |before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>| {
        after.get(&ok).copied().unwrap_or(0.0) - before.get(&ok).copied().unwrap_or(0.0)
    };
    // Closed loop with 8 calls in flight, within what the server admits.
    let start = scrape(metrics).await;
    let sustainable = tokio::task::block_in_place(|| h2load(&server, &path, &body, 2, 4, 5, None));
    let served_closed = served_in(&start, &scrape(metrics).await);
    assert!(served_closed as u64 >= sustainable.calls, "every closed-loop call was served");
    println!(
        "sustainable (closed loop, c2/m4): {:.0} calls/s served, p50 {} µs, p99 {} µs",
        sustainable.rate, sustainable.p50_us, sustainable.p99_us
    );

    let before = scrape(metrics).await;
    let clients = 64;
    let offered = sustainable.rate * 10.0;
    let mut peak_rss = 0;
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let pid = server.pid();
    let sampler = tokio::spawn(async move {
        loop {
            peak_rss = peak_rss.max(memory_kib(pid).0);
            tokio::select! {
                _ = &mut stop_rx => return peak_rss,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    });
    let server_ref = &server;
    let overloaded = tokio::task::block_in_place(|| {
        h2load(server_ref, &path, &body, clients, 100, seconds, Some(offered / clients as f64))
    });
    let _ = stop_tx.send(());
    let peak = sampler.await.unwrap();
    let after = scrape(metrics).await;
    let series = |code: &str| {
        format!(
            "grpc_server_handled_total{{grpc_service=\"cooperation.v1.AgreementService\",grpc_method=\"ListAgreements\",grpc_code=\"{code}\"}}"
        )
    };
    let delta = |key: &str| after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0);
    let served = delta(&series("Ok"));
    let shed = delta(&series("ResourceExhausted"));
    // p99 of the admitted calls from the server's histogram (all codes: shed
    // calls end in microseconds and only pull the quantile down, so this is
    // an upper bound for admitted calls' p99 when they are the slow ones).
    let bucket_prefix = "grpc_server_handling_seconds_bucket{grpc_service=\"cooperation.v1.AgreementService\",grpc_method=\"ListAgreements\",le=\"";
    let mut buckets: Vec<(f64, f64)> = after
        .keys()
        .filter_map(|k| {
            let le = k.strip_prefix(bucket_prefix)?.trim_end_matches("\"}");
            let le: f64 = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, delta(k)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    // Shed calls are the fastest: the admitted calls' p99 is the bucket holding
    // the (shed + 0.99 × served)-th call.
    let rank = shed + 0.99 * served;
    let admitted_p99 = buckets.iter().find(|(_, n)| *n >= rank).map(|(le, _)| *le).unwrap_or(f64::NAN);
    let recovered = tokio::task::block_in_place(|| h2load(&server, &path, &body, 2, 4, 5, None));
    let (rss_after, _) = server.memory_kib();
    println!(
        "offered {:.0} calls/s (10 × sustainable) open loop for {seconds} s from {clients} connections × 100 streams",
        offered
    );
    println!(
        "server: {served:.0} served ({:.0}/s), {shed:.0} shed with RESOURCE_EXHAUSTED, {} calls in the histogram",
        served / seconds as f64,
        total
    );
    println!(
        "h2load: {} completed ({:.0}/s), p50 {} µs, p99 {} µs (shed and served together)",
        overloaded.calls, overloaded.rate, overloaded.p50_us, overloaded.p99_us
    );
    println!("admitted calls' p99 (server histogram bucket): ≤ {:.1} ms", admitted_p99 * 1000.0);
    println!(
        "server memory: {:.1} MiB loaded, {:.1} MiB peak under overload, {:.1} MiB after",
        rss_loaded as f64 / 1024.0,
        peak as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
    println!("after the overload (closed loop again): {:.0} calls/s, p99 {} µs", recovered.rate, recovered.p99_us);
    server.stop();
}

/// A target of the comparison: where to send which body, and how to check a run.
struct Target {
    name: &'static str,
    peer: Peer,
    path: String,
    body: PathBuf,
    check: Check,
}

#[derive(Clone, Copy, PartialEq)]
enum Peer {
    Registry,
    Etcd,
    Floor,
}

/// What `compare` sets side by side.
#[derive(Clone, Copy, PartialEq)]
enum Comparison {
    /// The registry's calls, the ceiling and etcd.
    Service,
    /// A durable create, the ceiling, etcd's Put and the floor server's.
    Floor,
}

/// How a run is checked beyond the server's own count of OK answers (which
/// must cover every call h2load counted, with no other code).
enum Check {
    /// Each answer carried at least this many bytes of DATA.
    ResponseBytes(u64),
    /// Every call moved the registry's revision by one.
    RegistryWrite,
    /// Each answer carried at least a gRPC frame header.
    EtcdWrite,
    /// Each answer carried at least this many bytes of DATA, for a durable
    /// write of the floor server (which keeps no revision to read back).
    FloorWrite(u64),
}

/// The values in ascending order.
fn sorted(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(|a, b| a.total_cmp(b));
    values
}

/// The middle of values in ascending order (the upper one of an even count).
fn middle(sorted: &[f64]) -> f64 {
    sorted[sorted.len() / 2]
}

/// The median of the repetitions' values.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    middle(&sorted(values))
}

/// The durable syncs in a metrics scrape: the registry's flushes, etcd's
/// WAL fsyncs, or the floor server's.
fn syncs(scrape: &BTreeMap<String, f64>) -> f64 {
    ["cooperation_registry_store_flushes_total", "etcd_disk_wal_fsync_duration_seconds_count", "floor_syncs_total"]
        .iter()
        .filter_map(|name| scrape.get(*name))
        .sum()
}

/// The store's checkpoints in a metrics scrape: how many, and how long the
/// last one held calls (seconds).
fn checkpoints(scrape: &BTreeMap<String, f64>) -> (f64, f64) {
    let value = |name: &str| scrape.get(name).copied().unwrap_or(0.0);
    (value("cooperation_registry_checkpoints_total"), value("cooperation_registry_last_checkpoint_seconds"))
}

/// (OK, cancelled, other codes) answers of `path` in a metrics scrape, for
/// the registry's labels (`Ok`, `Cancelled`) and etcd's (`OK`, `Canceled`).
/// Calls in flight when h2load stops are cancelled.
fn handled(scrape: &BTreeMap<String, f64>, path: &str) -> (f64, f64, f64) {
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap();
    let (mut ok, mut cancelled, mut other) = (0.0, 0.0, 0.0);
    for (series, value) in scrape {
        if series.starts_with("grpc_server_handled_total{")
            && series.contains(&format!("grpc_service=\"{service}\""))
            && series.contains(&format!("grpc_method=\"{method}\""))
        {
            if series.contains("grpc_code=\"Ok\"") || series.contains("grpc_code=\"OK\"") {
                ok += value;
            } else if series.contains("grpc_code=\"Cancel") || series.contains("grpc_code=\"Unknown\"") {
                // (A stream the client resets while its answer is sent
                // shows as Unknown.)
                cancelled += value;
            } else {
                if *value > 0.0 {
                    eprintln!("  {series} {value}");
                }
                other += value;
            }
        }
    }
    (ok, cancelled, other)
}

async fn compare(comparison: Comparison) {
    let count: usize = env_or("AGREEMENTS", 10_000);
    let reps: usize = env_or("REPS", 3);
    let seconds: u32 = env_or("SECONDS", 4);
    let work = tempfile::tempdir().unwrap();
    // DATA_DIR keeps the loaded data dir for later runs (a 1,000,000-agreement
    // load takes a quarter of an hour); a file beside it records the count.
    let data_dir = std::env::var_os("DATA_DIR").map(PathBuf::from).unwrap_or_else(|| work.path().join("registry"));
    let loaded_marker = data_dir.with_extension("loaded");
    let already_loaded = std::fs::read_to_string(&loaded_marker).ok().and_then(|t| t.trim().parse::<usize>().ok());

    // The defaults: they leave room for c64/m8 (512 calls in flight) without
    // shedding, and a new user gets them too.
    let serve_flags: [&str; 0] = [];
    // Loaded on both cores without waiting for each write to be durable (the
    // clean shutdown after it flushes everything): how the data got there is
    // not what is measured.
    // The load's checkpoints (count, last pause), when this run loaded.
    let mut load_checkpoints = None;
    let get_name = match already_loaded {
        Some(loaded) if loaded == count => {
            eprintln!("{} already holds {count} agreements (DATA_DIR): not loading", data_dir.display());
            "agreements/a0000000".to_string()
        }
        Some(other) => {
            panic!("{} holds {other} agreements, not {count}: remove it or set AGREEMENTS", data_dir.display())
        }
        None => {
            let (server, _) = start_registry_on(&data_dir, &["--durability", "none"], "0,1");
            let name = load(server.addr, count).await;
            load_checkpoints = Some(checkpoints(&scrape(server.metrics.expect("metrics address")).await));
            server.stop();
            std::fs::write(&loaded_marker, count.to_string()).unwrap();
            name
        }
    };
    // sled replays at start what was logged since the previous start, so the
    // first start after the load and the one after it differ; both are shown.
    let (server, cold_start) = start_registry(&data_dir, &serve_flags);
    let first_start_peak_kib = server.memory_kib().1;
    server.stop();
    let (server, restart) = start_registry(&data_dir, &serve_flags);
    let data_mib = du_mib(&data_dir);

    // Request bodies, and the exact response sizes of the reads.
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap();
    let mut client = AgreementServiceClient::new(channel.clone());
    let get = v1::GetAgreementRequest { name: get_name.clone(), ..Default::default() };
    let got = client.get_agreement(get.clone()).await.unwrap().into_inner();
    let list =
        v1::ListAgreementsRequest { filter: "parties:\"parties/ind\"".into(), page_size: 50, ..Default::default() };
    let listed = client.list_agreements(list.clone()).await.unwrap().into_inner();
    assert_eq!(listed.agreements.len(), 50, "a full page of India's agreements");
    let create = v1::CreateAgreementRequest {
        agreement_id: String::new(),
        agreement: Some(agreement(7)),
        request_id: String::new(),
    };
    let mut changed = got.clone();
    changed.title = "Agreement retitled by the benchmark".into();
    changed.etag = String::new();
    let update = v1::UpdateAgreementRequest {
        agreement: Some(changed),
        update_mask: Some(prost_types::FieldMask { paths: vec!["title".into()] }),
        request_id: String::new(),
    };
    let health = tonic_health::pb::HealthCheckRequest { service: String::new() };
    let health_reply = tonic_health::pb::HealthCheckResponse { status: 1 };
    let encoded_agreement = agreement(7).encode_to_vec();
    // BODIES_DIR keeps the request bodies, to drive the server with h2load by hand.
    let bodies_dir = std::env::var_os("BODIES_DIR").map(PathBuf::from);
    if let Some(kept) = &bodies_dir {
        std::fs::create_dir_all(kept).unwrap();
    }
    let dir = bodies_dir.as_deref().unwrap_or(work.path());
    // The request written where h2load reads it, named after its method.
    let registry = |name, path: String, request: Vec<u8>, check| {
        let file = format!("{}.bin", path.rsplit('/').next().unwrap());
        Target { name, peer: Peer::Registry, body: write_body(dir, &file, &request), path, check }
    };
    let mut targets = vec![
        registry(
            "Health/Check (ceiling)",
            "/grpc.health.v1.Health/Check".into(),
            frame(&health),
            Check::ResponseBytes(response_frame_len(&health_reply)),
        ),
        registry(
            "GetAgreement",
            agreements("GetAgreement"),
            frame(&get),
            Check::ResponseBytes(response_frame_len(&got)),
        ),
        registry(
            "ListAgreements party page 50",
            agreements("ListAgreements"),
            frame(&list),
            Check::ResponseBytes(response_frame_len(&listed)),
        ),
        registry("CreateAgreement (fsync)", agreements("CreateAgreement"), frame(&create), Check::RegistryWrite),
        registry("UpdateAgreement (fsync)", agreements("UpdateAgreement"), frame(&update), Check::RegistryWrite),
    ];

    // etcd, if installed: one key of our agreement's size, compacted.
    let etcd_dir = work.path().join("etcd");
    let etcd = start_etcd(&etcd_dir);
    if let Some(etcd) = &etcd {
        let key = b"agreements/a0000000".to_vec();
        let put = PutRequest { key: key.clone(), value: encoded_agreement.clone() };
        let range = RangeRequest { key: key.clone(), serializable: true };
        let put_body = write_body(dir, "etcd-put.bin", &frame(&put));
        let range_body = write_body(dir, "etcd-range.bin", &frame(&range));
        // Write the key, compact, and measure the Range response size.
        let warm = h2load(etcd, "/etcdserverpb.KV/Put", &put_body, 1, 1, 1, None);
        let compact = CompactionRequest { revision: warm.calls as i64 + 1, physical: true };
        let compact_body = write_body(dir, "etcd-compact.bin", &frame(&compact));
        let once = |path: &str, body: &Path| {
            let out = Command::new("h2load")
                .args(["-n", "1", "-c", "1", "-d"])
                .arg(body)
                .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
                .arg(format!("http://{}{path}", etcd.addr))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        once("/etcdserverpb.KV/Compact", &compact_body);
        let range_bytes = data_bytes(&once("/etcdserverpb.KV/Range", &range_body));
        targets.push(Target {
            name: "etcd Range (serializable)",
            peer: Peer::Etcd,
            path: "/etcdserverpb.KV/Range".into(),
            body: range_body,
            check: Check::ResponseBytes(range_bytes),
        });
        targets.push(Target {
            name: "etcd Put (same size)",
            peer: Peer::Etcd,
            path: "/etcdserverpb.KV/Put".into(),
            body: put_body,
            check: Check::EtcdWrite,
        });
    } else {
        eprintln!("etcd is not installed (Debian's etcd-server): the etcd rows are left out");
    }

    // The floor: a durable create against what tonic and sled do alone, at
    // the ceiling and etcd's Put.
    let floor = (comparison == Comparison::Floor).then(|| start_floor(&work.path().join("floor")));
    if floor.is_some() {
        targets.retain(|t| ["Health/Check", "CreateAgreement", "etcd Put"].iter().any(|n| t.name.starts_with(n)));
        // The smallest answer: the agreement as named, its times with no nanoseconds.
        let mut answer = agreement(7);
        answer.name = format!("agreements/{}", uuid::Uuid::now_v7());
        let time = prost_types::Timestamp { seconds: 1_800_000_000, nanos: 0 };
        (answer.create_time, answer.update_time) = (Some(time), Some(time));
        let at = targets.len() - usize::from(etcd.is_some());
        let create_body = frame(&create);
        let size = response_frame_len(&answer);
        let floor_targets = [
            ("floor: decode only", "Decode", Check::ResponseBytes(size)),
            ("floor: + 2 sled inserts", "Insert", Check::ResponseBytes(size)),
            ("floor: + 2 inserts, fsync", "InsertFsync", Check::FloorWrite(size)),
        ]
        .map(|(name, method, check)| Target {
            name,
            peer: Peer::Floor,
            path: floor::path(method),
            body: write_body(dir, &format!("floor-{method}.bin"), &create_body),
            check,
        });
        targets.splice(at..at, floor_targets);
    }

    let shapes: [(u32, u32); 3] = [(1, 1), (16, 16), (64, 8)];
    let mut results: BTreeMap<(usize, usize), Vec<Run>> = BTreeMap::new();
    let mut peak_kib = server.memory_kib().1.max(first_start_peak_kib);
    // The runs during which the registry took a checkpoint, and the last pause.
    let mut checkpointed_in = Vec::new();
    let mut last_pause = 0.0;
    for rep in 0..reps {
        for (s, &(c, m)) in shapes.iter().enumerate() {
            for (t, target) in targets.iter().enumerate() {
                let process = match target.peer {
                    Peer::Registry => &server,
                    Peer::Etcd => etcd.as_ref().unwrap(),
                    Peer::Floor => floor.as_ref().unwrap(),
                };
                let before = match target.check {
                    Check::RegistryWrite => Some(revision(server.addr).await),
                    _ => None,
                };
                let metrics_addr = process.metrics.expect("metrics address");
                let scraped_before = scrape(metrics_addr).await;
                let counted_before = handled(&scraped_before, &target.path);
                let mut run =
                    tokio::task::block_in_place(|| h2load(process, &target.path, &target.body, c, m, seconds, None));
                let scraped_after = scrape(metrics_addr).await;
                let counted_after = handled(&scraped_after, &target.path);
                if target.peer == Peer::Registry {
                    let (before, after) = (checkpoints(&scraped_before), checkpoints(&scraped_after));
                    if after.0 > before.0 {
                        checkpointed_in.push(format!("{} at c{c}/m{m} in repetition {}", target.name, rep + 1));
                        last_pause = after.1;
                    }
                }
                let ok = counted_after.0 - counted_before.0;
                let cancelled = counted_after.1 - counted_before.1;
                let other = counted_after.2 - counted_before.2;
                run.server_calls = ok + cancelled + other;
                if matches!(target.check, Check::RegistryWrite | Check::EtcdWrite | Check::FloorWrite(_)) {
                    let synced = syncs(&scraped_after) - syncs(&scraped_before);
                    run.writes_per_sync = Some(run.server_calls / synced.max(1.0));
                }
                if other > 0.0 || cancelled > (c * m) as f64 || ok < run.calls as f64 || run.failed > 0 {
                    panic!(
                        "{} at c{c}/m{m}: the server answered {ok} OK, {cancelled} cancelled and {other} otherwise \
                         for {} calls h2load counted ({} failed)",
                        target.name, run.calls, run.failed
                    );
                }
                let verdict = match target.check {
                    Check::ResponseBytes(size) | Check::FloorWrite(size) => {
                        if run.data_bytes >= run.calls * size {
                            Ok(())
                        } else {
                            Err(format!("{} bytes of DATA for {} calls of {size}", run.data_bytes, run.calls))
                        }
                    }
                    Check::RegistryWrite => {
                        let moved = (revision(server.addr).await - before.unwrap()) as u64;
                        if moved >= run.calls && run.failed == 0 {
                            Ok(())
                        } else {
                            Err(format!("revision moved {moved} for {} calls", run.calls))
                        }
                    }
                    Check::EtcdWrite => {
                        if run.data_bytes >= run.calls * 5 {
                            Ok(())
                        } else {
                            Err("too little DATA".into())
                        }
                    }
                };
                if let Err(problem) = verdict {
                    panic!("{} at c{c}/m{m}: the run failed its check: {problem}", target.name);
                }
                peak_kib = peak_kib.max(server.memory_kib().1);
                eprintln!(
                    "rep {rep} c{c}/m{m} {:<32} {:>9.0}/s p50 {:>6} µs p99 {:>6} µs {:>6.1} CPU µs/call",
                    target.name,
                    run.rate,
                    run.p50_us,
                    run.p99_us,
                    run.cpu_us_per_call()
                );
                results.entry((s, t)).or_default().push(run);
            }
        }
    }

    let mut table = String::new();
    let _ = writeln!(
        table,
        "{} benchmark: {count} agreements + {} engagements, {reps} interleaved repetitions of {seconds} s, \
         server on core 0, h2load on core 1.\n",
        match comparison {
            Comparison::Service => "Service",
            Comparison::Floor => "Floor",
        },
        count / 10
    );
    let _ = writeln!(
        table,
        "| shape | target | rate min | rate median | p50 µs | p99 µs | CPU µs/call | / ceiling | / etcd |\n|---|---|---|---|---|---|---|---|---|"
    );
    let median_rate = |s: usize, t: usize| {
        let rates = sorted(results[&(s, t)].iter().map(|r| r.rate));
        (rates[0], middle(&rates))
    };
    let etcd_index = |name: &str| targets.iter().position(|t| t.name.starts_with(name));
    for (s, &(c, m)) in shapes.iter().enumerate() {
        let ceiling = median_rate(s, 0).1;
        for (t, target) in targets.iter().enumerate() {
            let runs = &results[&(s, t)];
            let (min, rate) = median_rate(s, t);
            let mid = |f: fn(&Run) -> f64| median(runs.iter().map(f));
            let peer = match target.name {
                "GetAgreement" => etcd_index("etcd Range"),
                n if ["CreateAgreement", "UpdateAgreement", "floor"].iter().any(|w| n.starts_with(w)) => {
                    etcd_index("etcd Put")
                }
                _ => None,
            };
            let versus_etcd = peer.map(|p| format!("{:.2}", rate / median_rate(s, p).1)).unwrap_or_default();
            let versus_ceiling =
                if target.peer == Peer::Registry && t > 0 { format!("{:.2}", rate / ceiling) } else { String::new() };
            let _ = writeln!(
                table,
                "| c{c}/m{m} | {} | {min:.0} | {rate:.0} | {:.0} | {:.0} | {:.1} | {versus_ceiling} | {versus_etcd} |",
                target.name,
                mid(|r| r.p50_us as f64),
                mid(|r| r.p99_us as f64),
                mid(|r| r.cpu_us_per_call()),
            );
        }
    }
    let _ = writeln!(
        table,
        "\nWrites that shared one durable sync (median; the registry's flushes, etcd's WAL fsyncs):\n\n| target | {} |\n|---|{}",
        shapes.map(|(c, m)| format!("c{c}/m{m}")).join(" | "),
        "---|".repeat(shapes.len())
    );
    for (t, target) in targets.iter().enumerate() {
        if !matches!(target.check, Check::RegistryWrite | Check::EtcdWrite | Check::FloorWrite(_)) {
            continue;
        }
        let per_shape = (0..shapes.len())
            .map(|s| format!("{:.1}", median(results[&(s, t)].iter().filter_map(|r| r.writes_per_sync))));
        let _ = writeln!(table, "| {} | {} |", target.name, per_shape.collect::<Vec<_>>().join(" | "));
    }
    let _ = writeln!(
        table,
        "\nPeak server memory {:.1} MiB (the first start on the loaded data dir, and while measuring); data dir \
         {data_mib:.1} MiB; cold start (process start to serving) {:.2} s the first time after the load{}, {:.2} s \
         the next time.",
        peak_kib as f64 / 1024.0,
        cold_start.as_secs_f64(),
        if already_loaded.is_some() { " (loaded by an earlier run: not its first start)" } else { "" },
        restart.as_secs_f64()
    );
    let _ = writeln!(
        table,
        "Durability: the registry acknowledges a write after sled's flush and an fdatasync of its data file \
         (--durability fsync, the default); etcd after fsyncing its WAL."
    );
    let during_load = match load_checkpoints {
        Some((0.0, _)) => "none during the load".into(),
        Some((count, last)) => format!("{count:.0} during the load (the last held calls {last:.2} s)"),
        None => "the load's are not known (loaded by an earlier run)".into(),
    };
    let during_runs = match checkpointed_in.len() {
        0 => "none during the measurements".to_string(),
        _ => format!("during {} (the last held calls {last_pause:.2} s)", checkpointed_in.join(", ")),
    };
    let _ = writeln!(
        table,
        "Checkpoints (the store reopening its database, --checkpoint-mib): {during_load}; {during_runs}."
    );
    println!("{table}");
    let file = match comparison {
        Comparison::Service => "bench-service.md",
        Comparison::Floor => "bench-floor.md",
    };
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join(file);
    std::fs::write(&out, &table).unwrap();
    eprintln!("written to {}", out.display());
    server.stop();
    if let Some(etcd) = etcd {
        etcd.stop();
    }
    if let Some(floor) = floor {
        floor.stop();
    }
}
