//! The markdown report of `compare`: rates, latencies and CPU per call at each
//! shape, the writes that shared a durable sync, memory, start times and
//! checkpoints, printed and written to `target/bench-service.md` or
//! `target/bench-floor.md`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::common::stats::{median, min_and_median};
use crate::compare::{Comparison, Peer, Results, SHAPES, Target};
use crate::floor::{BATCH_TARGET, HOT_TARGET};
use crate::load::Run;

/// What a comparison measured, and on what.
pub struct Summary<'a> {
    pub comparison: Comparison,
    /// Agreements loaded (plus one engagement per ten).
    pub count: usize,
    pub reps: usize,
    pub seconds: u32,
    pub targets: &'a [Target],
    pub results: &'a Results,
    /// The registry's peak memory: at its first start on the loaded data dir,
    /// and while measuring.
    pub peak_kib: u64,
    pub data_mib: f64,
    /// Process start to serving, the first time after the load and the next.
    pub cold_start: Duration,
    pub restart: Duration,
    /// The data dir was loaded by an earlier run (DATA_DIR).
    pub loaded_before: bool,
    /// The load's checkpoints (count, last pause in seconds), when this run loaded.
    pub load_checkpoints: Option<(f64, f64)>,
    /// The runs during which the registry took a checkpoint.
    pub checkpointed_in: &'a [String],
    /// How long the last of those held calls, in seconds.
    pub last_pause: f64,
}

/// The report.
pub fn table(summary: &Summary) -> String {
    let Summary { count, reps, seconds, targets, results, .. } = *summary;
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{} benchmark: {count} agreements + {} engagements, {reps} interleaved repetitions of {seconds} s, \
         server on core 0, h2load on core 1.\n",
        match summary.comparison {
            Comparison::Service => "Service",
            Comparison::Floor => "Floor",
        },
        count / 10
    );
    // Updates are held to a share of the create rate, so where both run,
    // each update is set beside the create of its shape: the registry's
    // beside CreateAgreement, the floor's hot record beside its atomic create.
    let position = |name: &str| targets.iter().position(|t| t.name.starts_with(name));
    let create_of = |target: &Target| match target.name {
        n if n.starts_with("UpdateAgreement") => position("CreateAgreement"),
        n if n == HOT_TARGET => position(BATCH_TARGET),
        _ => None,
    };
    let versus_create = targets.iter().any(|t| create_of(t).is_some());
    let _ = writeln!(
        table,
        "| shape | target | rate min | rate median | p50 µs | p99 µs | CPU µs/call | / ceiling | / etcd |{}\n\
         |---|---|---|---|---|---|---|---|---|{}",
        if versus_create { " / create |" } else { "" },
        if versus_create { "---|" } else { "" },
    );
    let median_rate = |s: usize, t: usize| min_and_median(results[&(s, t)].iter().map(|r| r.rate));
    let etcd_index = |name: &str| targets.iter().position(|t| t.name.starts_with(name));
    for (s, &(c, m)) in SHAPES.iter().enumerate() {
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
            let versus_create = match (versus_create, create_of(target)) {
                (true, Some(create)) => format!(" {:.2} |", rate / median_rate(s, create).1),
                (true, None) => " |".into(),
                (false, _) => String::new(),
            };
            let _ = writeln!(
                table,
                "| c{c}/m{m} | {} | {min:.0} | {rate:.0} | {:.0} | {:.0} | {:.1} | {versus_ceiling} | {versus_etcd} |\
                 {versus_create}",
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
        SHAPES.map(|(c, m)| format!("c{c}/m{m}")).join(" | "),
        "---|".repeat(SHAPES.len())
    );
    for (t, target) in targets.iter().enumerate() {
        if !target.check.writes() {
            continue;
        }
        let per_shape = (0..SHAPES.len())
            .map(|s| format!("{:.1}", median(results[&(s, t)].iter().filter_map(|r| r.writes_per_sync))));
        let _ = writeln!(table, "| {} | {} |", target.name, per_shape.collect::<Vec<_>>().join(" | "));
    }
    let _ = writeln!(
        table,
        "\nPeak server memory {:.1} MiB (the first start on the loaded data dir, and while measuring); data dir \
         {:.1} MiB; cold start (process start to serving) {:.2} s the first time after the load{}, {:.2} s \
         the next time.",
        summary.peak_kib as f64 / 1024.0,
        summary.data_mib,
        summary.cold_start.as_secs_f64(),
        if summary.loaded_before { " (loaded by an earlier run: not its first start)" } else { "" },
        summary.restart.as_secs_f64()
    );
    let _ = writeln!(
        table,
        "Durability: the registry acknowledges a write after sled's flush and an fdatasync of its data file \
         (--durability fsync, the default); etcd after fsyncing its WAL."
    );
    let during_load = match summary.load_checkpoints {
        Some((0.0, _)) => "none during the load".into(),
        Some((count, last)) => format!("{count:.0} during the load (the last held calls {last:.2} s)"),
        None => "the load's are not known (loaded by an earlier run)".into(),
    };
    let during_runs = match summary.checkpointed_in.len() {
        0 => "none during the measurements".to_string(),
        _ => format!("during {} (the last held calls {:.2} s)", summary.checkpointed_in.join(", "), summary.last_pause),
    };
    let _ = writeln!(
        table,
        "Checkpoints (the store reopening its database, --checkpoint-mib): {during_load}; {during_runs}."
    );
    table
}

/// Prints the report and writes it under `target/`.
pub fn write(comparison: Comparison, table: &str) {
    let file = match comparison {
        Comparison::Service => "bench-service.md",
        Comparison::Floor => "bench-floor.md",
    };
    write_to(file, table);
}

/// Prints a report and writes it to `target/<file>`.
pub fn write_to(file: &str, table: &str) {
    println!("{table}");
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join(file);
    std::fs::write(&out, table).unwrap();
    eprintln!("written to {}", out.display());
}
