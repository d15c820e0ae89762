//! What an acknowledgement costs: durable commits per second through the store's
//! group-committing writer with 1, 16 and 64 concurrent writers, for each durability
//! mode, interleaved and repeated so the modes are compared within one run; and
//! the raw cost of a 4 KiB append + fsync on this disk for reference.
//!
//! Run: `cargo bench --bench durability` (COMMITS=2000 by default per run).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use common::env_or;
use common::stats::min_and_median;
use cooperation_registry::store::sled::Durability;
use cooperation_registry::store::sled::{SledOptions, SledStore};
use cooperation_registry::store::{Op, Store, Txn};

const REPETITIONS: usize = 3;

async fn commits_per_second(durability: Durability, writers: usize, commits: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SledStore::open(dir.path(), SledOptions { durability, ..SledOptions::default() }).unwrap());
    let per_writer = commits / writers;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let key = format!("r/agreements/w{w}-{i}").into_bytes();
                let txn = Txn {
                    conditions: vec![],
                    ops: vec![Op::Put { key, value: vec![7u8; 300] }],
                    change: vec![1u8; 320],
                };
                store.commit(txn).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rate = (per_writer * writers) as f64 / start.elapsed().as_secs_f64();
    store.engine().close().unwrap();
    rate
}

fn fsync_micros(samples: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut file = std::fs::File::create(dir.path().join("append")).unwrap();
    let block = [0u8; 4096];
    let start = Instant::now();
    for _ in 0..samples {
        file.write_all(&block).unwrap();
        file.sync_data().unwrap();
    }
    start.elapsed().as_secs_f64() * 1e6 / samples as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let commits: usize = env_or("COMMITS", 2000);
    let modes = [("fsync", Durability::Fsync), ("flush", Durability::Flush), ("none", Durability::None)];
    let mut results: Vec<((&str, usize), Vec<f64>)> = Vec::new();
    for writers in [1usize, 16, 64] {
        for (label, _) in modes {
            results.push(((label, writers), Vec::new()));
        }
    }
    let mut fsync = Vec::new();
    for _ in 0..REPETITIONS {
        for writers in [1usize, 16, 64] {
            for (label, mode) in modes {
                let rate = commits_per_second(mode, writers, commits).await;
                results.iter_mut().find(|(k, _)| *k == (label, writers)).unwrap().1.push(rate);
            }
        }
        fsync.push(fsync_micros(500));
    }
    println!("durable commits/s through the store writer ({commits} commits a run, {REPETITIONS} interleaved runs)");
    println!("{:<10} {:>8} {:>14} {:>14}", "mode", "writers", "min/s", "median/s");
    for ((label, writers), rates) in results {
        let (min, median) = min_and_median(rates);
        println!("{label:<10} {writers:>8} {min:>14.0} {median:>14.0}");
    }
    let (min, median) = min_and_median(fsync);
    println!("4 KiB append + fdatasync: min {min:.0} µs, median {median:.0} µs");
}
