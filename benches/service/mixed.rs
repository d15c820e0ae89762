//! `BENCH=mixed`: GetAgreement's tail under a steady mixed load, reads with
//! 10 % durable writes, with checkpoints off and with a checkpoint in the
//! measured window.
//!
//! Each configuration runs the registry on its own copy of the loaded data
//! dir, so that both start from the same records (the creates of the first
//! would otherwise be in the second's store), and offers the load open loop:
//! two h2load processes at once, GetAgreement at a fixed rate and
//! CreateAgreement at a ninth of it (`--rps`, per connection). Latencies are
//! h2load's, from its log of every call in the window.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::checks::{Check, checkpoints, count_answers, handled, scrape, verify};
use crate::common::client::revision;
use crate::common::env_or;
use crate::common::process::Served;
use crate::compare::{Loaded, Target, loaded, registry_targets};
use crate::load::{Run, WARM_UP_SECS, h2load};
use crate::processes::start_registry;

/// The reads' connections and the writes', and the calls each connection
/// may have in flight: 640 at most, within the server's default
/// `--max-concurrent-calls` (1024), so that a pause sheds nothing.
const READ_CLIENTS: u32 = 16;
const WRITE_CLIENTS: u32 = 4;
const STREAMS: u32 = 32;

/// The GetAgreement calls offered a second (MIXED_READS_PER_SEC): with a
/// create for every nine, a little over half of the server's core at a
/// million agreements (at 10,000 it takes four fifths, and the reads' p99 is
/// four times as long; GetAgreement alone, the server answers some 80,000 a
/// second at c16/m32).
const READS_PER_SEC: f64 = 8_000.0;

/// What one create of the bench's agreement adds to the bytes the store
/// counts toward a checkpoint (its record and change, and the index chunks it
/// changes; see `SledOptions::checkpoint_bytes`), measured with
/// `--checkpoint-mib 1` at the default rates. It is less where more creates
/// share a group (a group writes each chunk it changes once): 4.6 KiB at
/// 1,111 creates a second.
const CREATE_BYTES: f64 = 5.5 * 1024.0;

/// The checkpoint threshold that puts one checkpoint in the middle of the
/// window: what the creates at `writes_per_sec` write from the start of the
/// warm-up to the middle of the window, in MiB.
fn one_checkpoint_mib(writes_per_sec: f64, seconds: u32) -> u64 {
    let until_middle = f64::from(WARM_UP_SECS) + f64::from(seconds) / 2.0;
    ((writes_per_sec * until_middle * CREATE_BYTES / (1024.0 * 1024.0)).round() as u64).max(1)
}

/// The offered load, in calls a second.
#[derive(Clone, Copy)]
struct Rates {
    reads: f64,
    writes: f64,
}

/// What one configuration measured in its window.
struct Window {
    checkpoint_mib: u64,
    reads: Run,
    writes: Run,
    /// The checkpoints that fell in the window, and how long the last one held
    /// calls (seconds).
    checkpoints: (f64, f64),
    /// The server's CPU time over the run (warm-up included) over the run's
    /// time: the share of its core it used.
    cpu_share: f64,
}

pub async fn mixed() {
    let count: usize = env_or("AGREEMENTS", 10_000);
    let seconds: u32 = env_or("SECONDS", 4);
    let reads: f64 = env_or("MIXED_READS_PER_SEC", READS_PER_SEC);
    let rates = Rates { reads, writes: reads / 9.0 };
    let checkpoint_mib: u64 = env_or("MIXED_CHECKPOINT_MIB", one_checkpoint_mib(rates.writes, seconds));
    assert!(checkpoint_mib > 0, "MIXED_CHECKPOINT_MIB: 0 is the configuration without checkpoints, which runs anyway");
    let work = tempfile::tempdir().unwrap();
    let data = loaded(count, work.path()).await;

    let mut windows = Vec::new();
    for mib in [0, checkpoint_mib] {
        let data_dir = work.path().join(format!("checkpoint-mib-{mib}"));
        copy_dir(&data.data_dir, &data_dir);
        let (server, _) = start_registry(&data_dir, &["--checkpoint-mib", &mib.to_string()]);
        let (targets, _) = registry_targets(&server, &data.get_name, work.path()).await;
        let target = |name: &str| targets.iter().find(|t| t.name.starts_with(name)).expect("a registry target");
        let window = window(&server, (target("GetAgreement"), target("CreateAgreement")), rates, seconds, mib).await;
        server.stop();
        std::fs::remove_dir_all(&data_dir).unwrap();
        eprintln!(
            "--checkpoint-mib {mib}: {:.0} reads/s p50 {} p99 {} p99.9 {} max {} µs; {:.0} writes/s p99.9 {} µs; \
             {:.0} checkpoints in the window",
            window.reads.rate,
            window.reads.p50_us,
            window.reads.p99_us,
            window.reads.p999_us,
            window.reads.max_us,
            window.writes.rate,
            window.writes.p999_us,
            window.checkpoints.0
        );
        if mib > 0 && window.checkpoints.0 < 1.0 {
            panic!(
                "--checkpoint-mib {mib}: no checkpoint fell in the {seconds} s window at {:.0} creates/s: lower \
                 MIXED_CHECKPOINT_MIB or raise SECONDS",
                window.writes.rate
            );
        }
        windows.push(window);
    }
    let setup = Setup { count, seconds, rates, checkpoint_mib, loaded: &data };
    crate::report::write_to("bench-mixed.md", &table(&setup, &windows));
}

/// A copy of the data dir `from` at `to`, on disk before it is served (so
/// that the kernel's writeback of the copy does not fall in the window).
fn copy_dir(from: &Path, to: &Path) {
    let copied = Command::new("cp").arg("-a").arg(from).arg(to).status().expect("cp runs");
    assert!(copied.success(), "cp -a {} {}", from.display(), to.display());
    let synced = Command::new("sync").status().expect("sync runs");
    assert!(synced.success(), "sync");
}

/// One configuration's window: the reads and the writes offered at `rates`
/// at once for `seconds` after h2load's warm-up, each checked, and the
/// checkpoints the server took in the window (it serves with
/// `--checkpoint-mib {checkpoint_mib}`).
async fn window(
    server: &Served,
    (get, create): (&Target, &Target),
    rates: Rates,
    seconds: u32,
    checkpoint_mib: u64,
) -> Window {
    let metrics = server.metrics.expect("metrics address");
    let revision_before = revision(server.addr).await;
    let before = scrape(metrics).await;
    let runtime = tokio::runtime::Handle::current();
    // h2load's --rps is per connection.
    let reads_rps = Some(rates.reads / f64::from(READ_CLIENTS));
    let writes_rps = Some(rates.writes / f64::from(WRITE_CLIENTS));
    let (mut reads, mut writes, opened) = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let reads = scope.spawn(|| h2load(server, &get.path, &get.body, READ_CLIENTS, STREAMS, seconds, reads_rps));
            let writes =
                scope.spawn(|| h2load(server, &create.path, &create.body, WRITE_CLIENTS, STREAMS, seconds, writes_rps));
            // The window opens when h2load's warm-up ends.
            std::thread::sleep(Duration::from_secs(WARM_UP_SECS.into()));
            let opened = runtime.block_on(scrape(metrics));
            (reads.join().expect("h2load ran"), writes.join().expect("h2load ran"), opened)
        })
    });
    let (after, revision_after) = settled(server, &[&get.path, &create.path]).await;
    let moved = (revision_after - revision_before) as u64;

    for (run, target, clients) in [(&mut reads, get, READ_CLIENTS), (&mut writes, create, WRITE_CLIENTS)] {
        count_answers(run, &target.check, &target.path, &before, &after, target.name, (clients, STREAMS));
        let moved = matches!(target.check, Check::RegistryWrite).then_some(moved);
        if let Err(problem) = verify(&target.check, run, moved) {
            panic!("{} in the mixed load: the run failed its check: {problem}", target.name);
        }
    }
    // The revision moved by exactly the creates committed: those answered OK,
    // and at most those cancelled in flight when h2load stopped.
    let (answered, answered_before) = (handled(&after, &create.path), handled(&before, &create.path));
    let (ok, cancelled) = (answered.0 - answered_before.0, answered.1 - answered_before.1);
    if !(ok..=ok + cancelled).contains(&(moved as f64)) {
        panic!("the revision moved {moved} for {ok} creates answered OK and {cancelled} cancelled");
    }
    let (at_open, at_close) = (checkpoints(&opened), checkpoints(&after));
    if checkpoint_mib == 0 {
        assert_eq!(checkpoints(&before).0, at_close.0, "a checkpoint with --checkpoint-mib 0");
    }
    let cpu_share = reads.cpu_us as f64 / (f64::from(WARM_UP_SECS + seconds) * 1e6);
    Window { checkpoint_mib, reads, writes, checkpoints: (at_close.0 - at_open.0, at_close.1), cpu_share }
}

/// A scrape of the server's metrics and its revision once the calls h2load
/// left in flight on `paths` have ended (they end after h2load has, answered
/// or cancelled, and a create may commit meanwhile): when two readings 100 ms
/// apart agree.
async fn settled(server: &Served, paths: &[&str]) -> (BTreeMap<String, f64>, i64) {
    let metrics = server.metrics.expect("metrics address");
    // (Not every call: reading the revision is a ListAgreements call.)
    let ended = |scrape: &BTreeMap<String, f64>| -> f64 {
        paths.iter().map(|path| handled(scrape, path)).map(|(ok, cancelled, other)| ok + cancelled + other).sum()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (scrape(metrics).await, revision(server.addr).await);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let next = (scrape(metrics).await, revision(server.addr).await);
        if ended(&next.0) == ended(&last.0) && next.1 == last.1 {
            return next;
        }
        assert!(Instant::now() < deadline, "the server still ends calls a minute after h2load stopped");
        last = next;
    }
}

/// What the run was, for the report's first lines.
struct Setup<'a> {
    count: usize,
    seconds: u32,
    rates: Rates,
    checkpoint_mib: u64,
    loaded: &'a Loaded,
}

/// The report: each configuration's rates, GetAgreement's latencies and the
/// creates', and the checkpoints in its window.
fn table(setup: &Setup, windows: &[Window]) -> String {
    let Setup { count, seconds, rates, checkpoint_mib, .. } = *setup;
    let mut table = String::new();
    let _ = writeln!(
        table,
        "Mixed benchmark (`AGREEMENTS={count} SECONDS={seconds} MIXED_READS_PER_SEC={:.0} \
         MIXED_CHECKPOINT_MIB={checkpoint_mib} BENCH=mixed cargo bench --bench service`): {count} agreements + {} \
         engagements{}; GetAgreement offered at {:.0}/s (c{READ_CLIENTS}/m{STREAMS}) and durable CreateAgreement at \
         {:.0}/s (c{WRITE_CLIENTS}/m{STREAMS}), open loop (h2load --rps), so 10 % of calls write; {seconds} s \
         measured after {WARM_UP_SECS} s of warm-up; server on core 0 (--durability fsync, the default), both h2load \
         on core 1; --checkpoint-mib 0, then {checkpoint_mib}, each on its own copy of the loaded data dir.\n",
        rates.reads,
        count / 10,
        if setup.loaded.before { " (loaded by an earlier run, DATA_DIR)" } else { "" },
        rates.reads,
        rates.writes,
    );
    let _ = writeln!(
        table,
        "| --checkpoint-mib | checkpoints in window | last held calls s | reads/s | writes/s | Get p50 µs | Get p99 µs \
         | Get p99.9 µs | Get max µs | Create p50 µs | Create p99 µs | Create p99.9 µs | writes per sync | server CPU \
         |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for window in windows {
        let Window { checkpoint_mib, reads, writes, checkpoints: (taken, last), cpu_share } = window;
        let last = if *taken > 0.0 { format!("{last:.3}") } else { String::new() };
        let _ = writeln!(
            table,
            "| {checkpoint_mib} | {taken:.0} | {last} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.0} % |",
            reads.rate,
            writes.rate,
            reads.p50_us,
            reads.p99_us,
            reads.p999_us,
            reads.max_us,
            writes.p50_us,
            writes.p99_us,
            writes.p999_us,
            writes.writes_per_sync.unwrap_or(0.0),
            cpu_share * 100.0
        );
    }
    let short: Vec<String> = windows
        .iter()
        .filter(|w| w.reads.rate < 0.95 * rates.reads || w.writes.rate < 0.95 * rates.writes)
        .map(|w| w.checkpoint_mib.to_string())
        .collect();
    if !short.is_empty() {
        let _ = writeln!(
            table,
            "\nThe server fell behind the offered rates with --checkpoint-mib {}: its latencies are those of a queue.",
            short.join(" and ")
        );
    }
    let _ = writeln!(
        table,
        "\nLatencies: h2load's log of every call in the window, from when h2load sends a call to its answer. \
         h2load's --rps timer runs at most every 10 ms, so each connection sends its calls in bursts, some {:.0} \
         calls every 10 ms in all, and a call's latency includes its wait behind its burst. A connection has at most \
         {STREAMS} calls in flight: a call it holds back for a free stream (in a pause, say) does not count that \
         wait. Checkpoints: `cooperation_registry_checkpoints_total` when the window opened and when it closed, and \
         `cooperation_registry_last_checkpoint_seconds` (how long the last held calls). Writes per sync: the \
         creates that shared each durable flush, warm-up included. Server CPU: its CPU time over the run, warm-up \
         included, as a share of its core. Every call was answered OK by the server's own count, each GetAgreement \
         in full, and the revision moved by exactly the creates committed.",
        (rates.reads + rates.writes) / 100.0
    );
    table
}
