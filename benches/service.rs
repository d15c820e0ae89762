//! The service under a real HTTP/2 load generator (h2load, from Debian's
//! nghttp2-client), in one run on one machine so the figures can be compared.
//!
//! `cargo bench --bench service` builds the release binary, starts it on a
//! fresh data dir pinned to core 0 (h2load on core 1, with `taskset`), loads
//! AGREEMENTS agreements (default 10,000; plus one engagement per ten) as
//! `cooperation-registry import` does (BatchCreate) and runs one of:
//!
//! - `BENCH=compare` (default): grpc.health.v1.Health/Check (the ceiling),
//!   GetAgreement, party-filtered ListAgreements (page of 50), durable
//!   CreateAgreement, UpdateAgreement of one hot record from every stream
//!   and of different records (one h2load process per connection, each
//!   posting its own record: h2load sends one body), and etcd 3.4 (Range of one key,
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
//! - `BENCH=etcd`: the registry on the etcd engine. A 3-member etcd 3.4
//!   cluster on loopback (members on core 1, with h2load), registry servers
//!   with `--store etcd` on core 0: GetAgreement, the party page, durable
//!   CreateAgreement and UpdateAgreement through one server and through two
//!   sharing the prefix (one h2load each, at the shape), and etcd's own
//!   Range (linearizable and serializable) and Put sent to the leader, with
//!   the floor under a create: the transaction a create sends, replayed raw
//!   (as sent, and with every key put); at the three shapes, interleaved,
//!   REPS times; the registry's CPU per call and the members'
//!   (`service/etcd.rs`). Writes `target/bench-etcd.md`.
//!
//! - `BENCH=mixed`: GetAgreement's tail under a steady mixed load, open loop
//!   (h2load `--rps`): GetAgreement at MIXED_READS_PER_SEC (default 8,000,
//!   c16) and durable CreateAgreement at a ninth of that (c4), so 10 % of
//!   calls write, both at once for SECONDS; once with checkpoints off
//!   (`--checkpoint-mib 0`) and once with MIXED_CHECKPOINT_MIB (by default
//!   what the creates write until the middle of the window, for one checkpoint
//!   in it; the run fails if none falls in it), each on its own copy of the
//!   loaded data dir (DATA_DIR as in `compare`). Reads/s and writes/s,
//!   GetAgreement's p50, p99, p99.9 and max and the creates' p50, p99 and
//!   p99.9 (from h2load's log of every call), and the checkpoints in the
//!   window and the last one's pause (from the server's metrics)
//!   (`service/mixed.rs`). Writes `target/bench-mixed.md`.
//!
//! Every run is checked, because h2load counts a call that failed with a gRPC
//! status as a success: reads must return exactly calls × response bytes of
//! DATA, writes must move the revision by exactly the number of calls.
//!
//! Each run lasts SECONDS (default 4) after a second of warm-up. With
//! `BODIES_DIR=path` the request bodies are kept there, to drive the server
//! with h2load by hand.
//!
//! The files under `service/` do one job each: `processes` starts the
//! registry, etcd and the floor server, `load` runs h2load and reads what it
//! measured, `checks` verifies each run against the servers' own counts,
//! `data` loads the agreements and writes the request bodies, `report` writes
//! the table, and `compare`, `overload`, `floor`, `etcd` and `mixed` are
//! the benchmarks.

#[path = "../tests/common/mod.rs"]
mod common;

#[path = "service/checks.rs"]
mod checks;
#[path = "service/compare.rs"]
mod compare;
#[path = "service/data.rs"]
mod data;
#[path = "service/etcd.rs"]
mod etcd;
#[path = "service/floor.rs"]
mod floor;
#[path = "service/load.rs"]
mod load;
#[path = "service/mixed.rs"]
mod mixed;
#[path = "service/overload.rs"]
mod overload;
#[path = "service/processes.rs"]
mod processes;
#[path = "service/report.rs"]
mod report;

use std::path::Path;
use std::process::Command;

use compare::Comparison;

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
        "overload" => overload::overload().await,
        "compare" => compare::compare(Comparison::Service).await,
        "floor" => compare::compare(Comparison::Floor).await,
        "etcd" => etcd::etcd().await,
        "mixed" => mixed::mixed().await,
        other => {
            eprintln!("BENCH={other}: use compare, floor, etcd, mixed or overload");
            std::process::exit(1);
        }
    }
}
