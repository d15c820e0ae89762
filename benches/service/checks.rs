//! Each run checked, because h2load counts a call that failed with a gRPC
//! status as a success: against the server's own count of answers by code (a
//! scrape of its metrics before and after), the bytes of DATA it returned,
//! and for the registry's writes the revision they moved.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::load::Run;

/// How a run is checked beyond the server's own count of OK answers (which
/// must cover every call h2load counted, with no other code).
#[derive(Clone)]
pub enum Check {
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

impl Check {
    /// Whether the run writes (and its writes per durable sync are reported).
    pub fn writes(&self) -> bool {
        matches!(self, Check::RegistryWrite | Check::EtcdWrite | Check::FloorWrite(_))
    }
}

/// Checks `run` of `name` at c`clients`/m`streams` against the server's
/// answers counted between `before` and `after` (scrapes of its metrics) for
/// `path`, and sets the run's `server_calls` (and `writes_per_sync` for a
/// write). Panics if the server answered fewer calls OK than h2load counted,
/// any with another code, or more cancelled than were in flight.
pub fn count_answers(
    run: &mut Run,
    check: &Check,
    path: &str,
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    name: &str,
    (clients, streams): (u32, u32),
) {
    let counted_before = handled(before, path);
    let counted_after = handled(after, path);
    let ok = counted_after.0 - counted_before.0;
    let cancelled = counted_after.1 - counted_before.1;
    let other = counted_after.2 - counted_before.2;
    run.server_calls = ok + cancelled + other;
    if check.writes() {
        let synced = syncs(after) - syncs(before);
        run.writes_per_sync = Some(run.server_calls / synced.max(1.0));
    }
    if other > 0.0 || cancelled > (clients * streams) as f64 || ok < run.calls as f64 || run.failed > 0 {
        panic!(
            "{name} at c{clients}/m{streams}: the server answered {ok} OK, {cancelled} cancelled and {other} \
             otherwise for {} calls h2load counted ({} failed)",
            run.calls, run.failed
        );
    }
}

/// Checks what `run` returned, by `check`; `revision_moved` is how far the
/// registry's revision moved in the run, for `Check::RegistryWrite`.
pub fn verify(check: &Check, run: &Run, revision_moved: Option<u64>) -> Result<(), String> {
    match check {
        Check::ResponseBytes(size) | Check::FloorWrite(size) => {
            if run.data_bytes >= run.calls * size {
                Ok(())
            } else {
                Err(format!("{} bytes of DATA for {} calls of {size}", run.data_bytes, run.calls))
            }
        }
        Check::RegistryWrite => {
            let moved = revision_moved.expect("the revision before and after a registry write");
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
    }
}

/// A scrape of a server's metrics: every series and its value.
pub async fn scrape(metrics: SocketAddr) -> BTreeMap<String, f64> {
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

/// The durable syncs in a metrics scrape: the registry's flushes, etcd's
/// WAL fsyncs, or the floor server's.
pub fn syncs(scrape: &BTreeMap<String, f64>) -> f64 {
    ["cooperation_registry_store_flushes_total", "etcd_disk_wal_fsync_duration_seconds_count", "floor_syncs_total"]
        .iter()
        .filter_map(|name| scrape.get(*name))
        .sum()
}

/// The store's checkpoints in a metrics scrape: how many, and how long the
/// last one held calls (seconds).
pub fn checkpoints(scrape: &BTreeMap<String, f64>) -> (f64, f64) {
    let value = |name: &str| scrape.get(name).copied().unwrap_or(0.0);
    (value("cooperation_registry_checkpoints_total"), value("cooperation_registry_last_checkpoint_seconds"))
}

/// (OK, cancelled, other codes) answers of `path` in a metrics scrape, for
/// the registry's labels (`Ok`, `Cancelled`) and etcd's (`OK`, `Canceled`).
/// Calls in flight when h2load stops are cancelled.
pub fn handled(scrape: &BTreeMap<String, f64>, path: &str) -> (f64, f64, f64) {
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
