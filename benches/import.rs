//! What a user gets from `cooperation-registry import`: a dataset file of
//! AGREEMENTS agreements and AGREEMENTS / 10 engagements (proto3 JSON of
//! `cooperation.v1.Dataset`, the records of `numbered_agreement` and
//! `numbered_engagement` over the 40 `STATES`) loaded into a fresh server with
//! its default durability (fsync), both the release binary, unpinned.
//!
//! It writes the file (its size and the time that took are printed, not part
//! of the import), starts `serve` on a fresh data dir, then times
//! `cooperation-registry import FILE --server ADDR` end to end (wall clock,
//! from the process's start to its exit: reading and parsing the file, every
//! BatchCreate) and prints records/s, the import's CPU time and peak resident
//! memory (from `/usr/bin/time` when installed, otherwise sampled from
//! `/proc`), the server's CPU time over the import and its peak resident
//! memory, the data dir's size after and the size of a backup of it (what it
//! holds, each key, member and change once), and the checkpoints the server
//! logged (how long each held calls). It checks that the import reports
//! every record created and that the first and last agreement and the last
//! engagement read back as generated, times `cooperation-registry export` of
//! every live record to a file (one revision, streamed: the client's peak
//! memory shows it holds no more than a chunk), then kills the server
//! (SIGKILL, a crash) and times a start on the data dir, stops that one with
//! SIGTERM and times a start again, and times sled alone opening it twice
//! (the floor under a checkpoint's reopen). `CHECKPOINT_MIB` sets the
//! server's `--checkpoint-mib` (its default when unset; 0 for no
//! checkpoints, to measure what a start after a crash then replays).
//!
//! Run:
//!
//! ```sh
//! cargo bench --bench import                         # 100,000 agreements
//! AGREEMENTS=1000000 cargo bench --bench import      # the issue's million
//! CHECKPOINT_MIB=0 AGREEMENTS=1000000 cargo bench --bench import   # no checkpoints
//! DATA_DIR=/mnt/big AGREEMENTS=1000000 cargo bench --bench import
//! ```
//!
//! The file and the server's data dir live in a temporary directory (under
//! DATA_DIR when it is set), removed at the end. At 1,000,000 agreements the
//! file takes about 1 GB and the data dir several GB more.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::env_or;
use common::process::{BINARY, Serve};
use common::records::{STATES, agreement_id, engagement_id, numbered_agreement, numbered_engagement};
use common::stats::memory_kib;
use cooperation_registry::pb::cooperation::v1::agreement_service_client::AgreementServiceClient;
use cooperation_registry::pb::cooperation::v1::engagement_service_client::EngagementServiceClient;
use cooperation_registry::pb::cooperation::v1::{self as v1};
use prost_reflect::ReflectMessage;

/// Indexes of the dataset's engagements: one for every tenth agreement, as
/// the service bench loads them.
fn engagement_indexes(agreements: usize) -> impl Iterator<Item = usize> {
    (0..agreements).step_by(10)
}

fn agreement_record(i: usize) -> v1::Agreement {
    v1::Agreement { name: format!("agreements/{}", agreement_id(i)), ..numbered_agreement(i, &STATES) }
}

fn engagement_record(i: usize) -> v1::Engagement {
    v1::Engagement { name: format!("engagements/{}", engagement_id(i)), ..numbered_engagement(i, &STATES) }
}

/// Writes the dataset to `path` record by record (proto3 JSON through
/// prost-reflect's serde support, in a hand-written Dataset envelope);
/// returns how many records it holds.
fn write_dataset(path: &Path, agreements: usize) -> std::io::Result<usize> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut records = 0;
    out.write_all(b"{\"agreements\":[\n")?;
    for i in 0..agreements {
        if i > 0 {
            out.write_all(b",\n")?;
        }
        serde_json::to_writer(&mut out, &agreement_record(i).transcode_to_dynamic())?;
        records += 1;
    }
    out.write_all(b"\n],\"engagements\":[\n")?;
    for (n, i) in engagement_indexes(agreements).enumerate() {
        if n > 0 {
            out.write_all(b",\n")?;
        }
        serde_json::to_writer(&mut out, &engagement_record(i).transcode_to_dynamic())?;
        records += 1;
    }
    out.write_all(b"\n]}\n")?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(records)
}

/// user + system CPU time of process `pid` so far (`/proc/<pid>/stat`).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_micros(ticks * 1_000_000 / clock_ticks())
}

/// Clock ticks a second (`getconf CLK_TCK`), asked once: `run_import`
/// samples CPU times every 20 ms.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().ok();
        out.and_then(|o| String::from_utf8(o.stdout).ok()).and_then(|s| s.trim().parse().ok()).unwrap_or(100)
    })
}

/// The disk space under `path`, in MiB (`du -sk`).
fn du_mib(path: &Path) -> f64 {
    let out = Command::new("du").arg("-sk").arg(path).output().expect("du runs");
    let kib: f64 =
        String::from_utf8_lossy(&out.stdout).split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    kib / 1024.0
}

/// What one run of the import used.
struct ImportRun {
    wall: Duration,
    stdout: String,
    /// user + system CPU time.
    cpu: Duration,
    peak_rss_kib: u64,
    /// How the CPU time and memory were measured.
    measured_by: &'static str,
    /// When the server had used 50 ms of CPU since the import started: about
    /// when the client had read and parsed the file and sent its first batch.
    server_busy_after: Option<Duration>,
}

const TIME: &str = "/usr/bin/time";

/// Runs `cooperation-registry import file --server addr` to its end, under
/// `/usr/bin/time` when it is installed (its rusage: exact CPU time and peak
/// RSS), otherwise sampling `/proc/<pid>` every 20 ms (the last sample before
/// the exit; a little short).
fn run_import(file: &Path, addr: SocketAddr, server_pid: u32, scratch: &Path) -> ImportRun {
    let args = [std::ffi::OsStr::new("import"), file.as_os_str()];
    run_timed(&args, addr, server_pid, scratch)
}

/// Runs `cooperation-registry ARGS --server ADDR` to its end, timed as
/// [`run_import`] says.
fn run_timed(args: &[&std::ffi::OsStr], addr: SocketAddr, server_pid: u32, scratch: &Path) -> ImportRun {
    let usage_file = scratch.join("command.rusage");
    let timed = Path::new(TIME).exists();
    let mut command = match timed {
        true => {
            let mut command = Command::new(TIME);
            command.args(["-f", "%U %S %M", "-o"]).arg(&usage_file).arg(BINARY);
            command
        }
        false => Command::new(BINARY),
    };
    command.args(args).args(["--server", &addr.to_string()]);
    command.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let server_cpu = cpu_time(server_pid);
    let mut server_busy_after = None;
    let started = Instant::now();
    let mut child = command.spawn().expect("the command starts");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    let (mut cpu, mut peak_rss_kib) = (Duration::ZERO, 0);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if server_busy_after.is_none() && cpu_time(server_pid) >= server_cpu + Duration::from_millis(50) {
            server_busy_after = Some(started.elapsed());
        }
        if !timed {
            let sample = cpu_time(child.id());
            cpu = cpu.max(sample);
            peak_rss_kib = peak_rss_kib.max(memory_kib(child.id()).1);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = started.elapsed();
    let stdout = reader.join().unwrap();
    assert!(status.success(), "{args:?} failed ({status}); its output: {stdout}");
    if !timed {
        let measured_by = "sampled from /proc every 20 ms";
        return ImportRun { wall, stdout, cpu, peak_rss_kib, measured_by, server_busy_after };
    }
    let usage = std::fs::read_to_string(&usage_file).expect("/usr/bin/time wrote its figures");
    let figures: Vec<f64> = usage.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    assert_eq!(figures.len(), 3, "unexpected /usr/bin/time output: {usage:?}");
    ImportRun {
        wall,
        stdout,
        cpu: Duration::from_secs_f64(figures[0] + figures[1]),
        peak_rss_kib: figures[2] as u64,
        measured_by: "/usr/bin/time",
        server_busy_after,
    }
}

/// The N of "N records created" in the import's output.
fn created_count(stdout: &str) -> Option<usize> {
    let before = &stdout[..stdout.find(" records created")?];
    before.rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Reads the first and last agreement and the last engagement back and
/// compares them with the generated records.
async fn check_records(addr: SocketAddr, agreements: usize) {
    let channel = common::client::connect(addr).await;
    let mut client = AgreementServiceClient::new(channel.clone());
    for i in [0, agreements - 1] {
        let expected = agreement_record(i);
        let request = v1::GetAgreementRequest { name: expected.name.clone(), ..Default::default() };
        let got = client.get_agreement(request).await.unwrap_or_else(|s| panic!("{}: {s}", expected.name));
        let got = got.into_inner();
        assert_eq!((&got.name, &got.title, &got.parties), (&expected.name, &expected.title, &expected.parties));
        assert_eq!(got.provisions.len(), expected.provisions.len(), "{}", expected.name);
    }
    let last = engagement_indexes(agreements).last().unwrap();
    let expected = engagement_record(last);
    let request = v1::GetEngagementRequest { name: expected.name.clone() };
    let got = EngagementServiceClient::new(channel).get_engagement(request).await;
    let got = got.unwrap_or_else(|s| panic!("{}: {s}", expected.name)).into_inner();
    assert_eq!((&got.name, &got.title), (&expected.name, &expected.title));
}

/// What a backup holds, in bytes by kind: records, replaced versions and
/// other keys by their prefix; set members by index (the path of an index,
/// the word and outline sets, the referrer sets), each set's name counted
/// once, as the store keeps it once for many members; the change log.
fn contents_of(backup: &Path) -> Vec<(String, u64)> {
    use cooperation_registry::store::backup::{BackupEntry, BackupReader};
    let mut file = File::open(backup).unwrap();
    let mut entries = BackupReader::new(&mut file).expect("the backup reads");
    let mut kinds: std::collections::BTreeMap<String, u64> = Default::default();
    let mut last_set = Vec::new();
    while let Some(entry) = entries.next_entry().expect("the backup reads") {
        let (kind, bytes) = match entry {
            BackupEntry::Key { key, value, .. } => {
                let prefix = String::from_utf8_lossy(&key[..key.iter().position(|b| *b == b'/').unwrap_or(0) + 1]);
                (format!("keys {prefix}"), key.len() + value.len())
            }
            BackupEntry::Change { bytes, .. } => ("change log".to_string(), bytes.len() + 8),
            BackupEntry::Member { set, member, .. } => {
                let index = &set[..set.iter().position(|b| *b == 0).unwrap_or(set.len())];
                let name = if set != last_set { set.len() } else { 0 };
                last_set = set.clone();
                let index =
                    if set.starts_with(b"x/") { "x/ (referrers)".into() } else { String::from_utf8_lossy(index) };
                (format!("set members {index}"), member.len() + name)
            }
        };
        *kinds.entry(kind).or_default() += bytes as u64;
    }
    let mut kinds: Vec<(String, u64)> = kinds.into_iter().collect();
    kinds.sort_by_key(|kind| std::cmp::Reverse(kind.1));
    kinds
}

/// The server's log as the bench reads it: its checkpoints are timed from it.
const LOG_FILTER: &str = "warn,cooperation_registry::server=info,cooperation_registry::store=info";

/// The seconds each checkpoint the server logged held its calls.
fn checkpoint_seconds(log: &[String]) -> Vec<f64> {
    log.iter()
        .filter(|line| line.contains("checkpoint: reopened"))
        .filter_map(|line| line.split("seconds=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

fn main() {
    let agreements: usize = env_or("AGREEMENTS", 100_000);
    assert!(agreements > 0, "AGREEMENTS must be at least 1");
    let scratch = match std::env::var_os("DATA_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).expect("a temporary directory under DATA_DIR"),
        None => tempfile::tempdir().expect("a temporary directory"),
    };
    println!("binary: {BINARY}");
    println!("scratch dir: {}", scratch.path().display());

    // 1. The dataset file.
    let file = scratch.path().join("dataset.json");
    let started = Instant::now();
    let records = write_dataset(&file, agreements).expect("the dataset file is written");
    let size = std::fs::metadata(&file).unwrap().len();
    println!(
        "dataset: {agreements} agreements + {} engagements = {records} records, {:.1} MiB ({:.0} bytes a record), \
         written in {:.1} s",
        records - agreements,
        size as f64 / (1 << 20) as f64,
        size as f64 / records as f64,
        started.elapsed().as_secs_f64()
    );

    // 2. A fresh server with its default durability.
    let data_dir = scratch.path().join("data");
    let started = Instant::now();
    let checkpoint_mib = std::env::var("CHECKPOINT_MIB").ok();
    let flags: Vec<&str> = match &checkpoint_mib {
        Some(mib) => vec!["--checkpoint-mib", mib],
        None => Vec::new(),
    };
    let serve = || Serve::new(&data_dir).default_durability().flags(&flags).log_filter(LOG_FILTER);
    let mut server = serve().start();
    println!("server: pid {} serving on {} after {:.2} s", server.pid(), server.addr, started.elapsed().as_secs_f64());

    // 3. The import, timed.
    let server_cpu_before = cpu_time(server.pid());
    let run = run_import(&file, server.addr, server.pid(), scratch.path());
    let server_cpu = cpu_time(server.pid()).saturating_sub(server_cpu_before);
    let (_, server_peak_kib) = memory_kib(server.pid());
    let data_mib = du_mib(&data_dir);
    // What the data dir holds, without sled's own overhead: a backup writes
    // every key, set member and change-log entry once.
    let backup = scratch.path().join("registry.backup");
    let status = Command::new(BINARY)
        .arg("backup")
        .arg(&backup)
        .args(["--server", &server.addr.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("the backup command runs");
    assert!(status.success(), "the backup failed ({status})");
    let backup_mib = std::fs::metadata(&backup).unwrap().len() as f64 / (1 << 20) as f64;
    let contents = contents_of(&backup);
    std::fs::remove_file(&backup).unwrap();

    // 4. Correctness, cheaply.
    print!("import output: {}", run.stdout);
    let created = created_count(&run.stdout);
    assert_eq!(created, Some(records), "the import should report every record created");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(check_records(server.addr, agreements));

    let wall = run.wall.as_secs_f64();
    println!();
    println!("import of {records} records ({agreements} agreements) into a fresh fsync server:");
    println!("  wall time          {wall:9.1} s");
    println!("  records/s          {:9.0}", records as f64 / wall);
    println!(
        "  client CPU         {:9.1} s  ({:.0} % of the wall time; {})",
        run.cpu.as_secs_f64(),
        run.cpu.as_secs_f64() / wall * 100.0,
        run.measured_by
    );
    if let Some(busy) = run.server_busy_after {
        println!(
            "  first batch        {:9.1} s  (the server busy from then on: the client read and parsed the file before)",
            busy.as_secs_f64()
        );
    }
    println!("  client peak RSS    {:9.0} MiB", run.peak_rss_kib as f64 / 1024.0);
    println!(
        "  server CPU         {:9.1} s  ({:.0} % of the wall time; {:.0} µs a record)",
        server_cpu.as_secs_f64(),
        server_cpu.as_secs_f64() / wall * 100.0,
        server_cpu.as_secs_f64() * 1e6 / records as f64
    );
    println!("  server peak RSS    {:9.0} MiB", server_peak_kib as f64 / 1024.0);
    println!(
        "  data dir after     {:9.0} MiB  ({:.0} bytes a record)",
        data_mib,
        data_mib * (1 << 20) as f64 / records as f64
    );
    let mut checkpoints = checkpoint_seconds(&server.log());
    checkpoints.sort_by(f64::total_cmp);
    if let (Some(longest), Some(median)) = (checkpoints.last(), checkpoints.get(checkpoints.len() / 2)) {
        println!(
            "  checkpoints        {:9}    (calls held: median {:.2} s, longest {:.2} s)",
            checkpoints.len(),
            median,
            longest
        );
    }
    println!(
        "  its contents        {:9.0} MiB  (a backup: every key, set member and change once; the data dir is {:.1} times it)",
        backup_mib,
        data_mib / backup_mib
    );
    println!("  what it holds, by kind (bytes of keys, values and members; a set's name once):");
    for (kind, bytes) in &contents {
        println!(
            "    {kind:<40} {:7.0} MiB  ({:.0} bytes a record)",
            *bytes as f64 / (1 << 20) as f64,
            *bytes as f64 / records as f64
        );
    }
    println!("  checked: {records} created reported; first and last agreement and last engagement read back");
    println!("  issue 27 target: 1,000,000 agreements in at most 180 s");

    // 4b. Every live record exported at one revision, streamed to a file.
    let exported = scratch.path().join("export.json");
    let server_cpu_before = cpu_time(server.pid());
    let export =
        run_timed(&[std::ffi::OsStr::new("export"), exported.as_os_str()], server.addr, server.pid(), scratch.path());
    let export_server_cpu = cpu_time(server.pid()).saturating_sub(server_cpu_before);
    let export_wall = export.wall.as_secs_f64();
    let export_mib = std::fs::metadata(&exported).unwrap().len() as f64 / (1 << 20) as f64;
    std::fs::remove_file(&exported).unwrap();
    println!();
    print!("export output: {}", export.stdout);
    println!("export of every live record (the import's and the seeded states) to a dataset file:");
    println!("  wall time          {export_wall:9.1} s  ({:.0} records/s)", (records + 249) as f64 / export_wall);
    println!("  file               {export_mib:9.0} MiB");
    println!("  client CPU         {:9.1} s  ({})", export.cpu.as_secs_f64(), export.measured_by);
    println!("  client peak RSS    {:9.0} MiB", export.peak_rss_kib as f64 / 1024.0);
    println!("  server CPU         {:9.1} s", export_server_cpu.as_secs_f64());
    println!("  server RSS after   {:9.0} MiB", memory_kib(server.pid()).0 as f64 / 1024.0);

    // 5. Crash the server, and time a start on what it left: sled reading its
    // page table and replaying what it logged since its last open (the
    // import's last checkpoint, or its start without checkpoints). Then stop
    // that one and start again: sled's page table alone, the most of which a
    // checkpoint's reopen also does.
    drop(runtime);
    server.kill();
    let started = Instant::now();
    let again = serve().start();
    println!(
        "  start after a crash {:8.2} s  (process start to serving, on the data dir the import left; \
         --checkpoint-mib {})",
        started.elapsed().as_secs_f64(),
        checkpoint_mib.as_deref().unwrap_or("default")
    );
    again.stop();
    let started = Instant::now();
    let again = serve().start();
    println!("  start after stop   {:9.2} s  (process start to serving)", started.elapsed().as_secs_f64());
    again.stop();

    // 6. The floor under a checkpoint at this size: sled alone closing and
    // opening the data dir, with the registry's engine settings. The first
    // open replays what was logged since the server's last open; the second
    // has nothing to replay, only sled's page table to read and write.
    for open in ["sled open, then close", "sled open again"] {
        let started = Instant::now();
        let db = sled::Config::new()
            .path(&data_dir)
            .cache_capacity(cooperation_registry::store::sled::DEFAULT_CACHE_MIB * 1024 * 1024)
            .mode(sled::Mode::HighThroughput)
            .open()
            .expect("sled opens the data dir");
        let opened = started.elapsed().as_secs_f64();
        let started = Instant::now();
        drop(db);
        println!("  {open:<22} {opened:5.2} s + {:.2} s", started.elapsed().as_secs_f64());
    }
}
