//! Index-planned List against a full scan, at 100,000 agreements (AGREEMENTS
//! overrides), in one run: a party-filtered page of 50 answered from the party
//! index, and the same filter hidden from the planner (`NOT (NOT ...)`), which
//! must read and test every agreement. Also times GetRelationship, and two
//! conditions that indexes answer together against the same filter with the
//! second hidden from the planner: two parties (the ids both parties' sets
//! hold, against reading every agreement of the first) and one year of
//! signature dates (one range, against the smaller of its two bounds).
//!
//! The agreements are the service bench's dataset (`numbered_agreement` over
//! 40 states, in `tests/common/records.rs`), written through the registry in
//! this process without waiting for the disk.
//!
//! Run: `cargo bench --bench query`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::env_or;
use common::records::{STATES, agreement_id, numbered_agreement};
use common::stats::median;
use cooperation_registry::pb::cooperation::v1::Agreement;
use cooperation_registry::registry::relationship::RelationshipQuery;
use cooperation_registry::registry::{ANONYMOUS, ListQuery, Mutation, Registry};
use cooperation_registry::store::sled::Durability;
use cooperation_registry::store::sled::{SledOptions, SledStore};

/// One List call, its time added to `times`.
async fn timed(registry: &Registry, query: &ListQuery, times: &mut Vec<Duration>) -> Vec<Agreement> {
    let t = Instant::now();
    let page = registry.list::<Agreement>(query).await.unwrap();
    times.push(t.elapsed());
    page.items
}

/// The names on a page, to compare two plans' answers.
fn names(page: &[Agreement]) -> Vec<&str> {
    page.iter().map(|a| a.name.as_str()).collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let count: usize = env_or("AGREEMENTS", 100_000);
    let dir = tempfile::tempdir().unwrap();
    let options = SledOptions { durability: Durability::None, ..SledOptions::default() };
    let store = Arc::new(SledStore::open(dir.path(), options).unwrap());
    let registry = Arc::new(Registry::open(store.clone()).await.unwrap());

    let started = Instant::now();
    let mut tasks = Vec::new();
    let writers = 32;
    for w in 0..writers {
        let registry = registry.clone();
        tasks.push(tokio::spawn(async move {
            let mutation = Mutation {
                actor: ANONYMOUS.into(),
                request_id: String::new(),
                method: "bench",
                fingerprint: 0,
                deadline: None,
            };
            for i in (w..count).step_by(writers) {
                registry.create(&agreement_id(i), numbered_agreement(i, &STATES), &mutation).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let load = started.elapsed();
    println!(
        "loaded {count} agreements in {:.1} s ({:.0}/s); data dir {} MiB",
        load.as_secs_f64(),
        count as f64 / load.as_secs_f64(),
        store.size_on_disk().unwrap() / (1 << 20)
    );

    let query = |filter: &str| ListQuery { page_size: 50, filter: filter.into(), ..Default::default() };
    let indexed = query(r#"parties:"parties/jpn""#);
    // The same filter hidden from the planner: it scans from the start until
    // the page is full (here about 1,000 records, as Japan is in 1 in 20).
    let scanned = query(r#"NOT (NOT (parties:"parties/jpn"))"#);
    // A full scan: every agreement read and tested (what an unindexed answer
    // costs when matches are few or far into the collection).
    let full = query(r#"NOT (NOT (parties:"parties/jpn")) AND title = "no such title""#);
    let first = registry.list::<Agreement>(&indexed).await.unwrap();
    let same = registry.list::<Agreement>(&scanned).await.unwrap();
    assert_eq!(names(&first.items), names(&same.items), "both plans give the same page");
    assert_eq!(first.items.len(), 50);

    // Interleave the two plans so machine noise hits both alike.
    let (mut index_times, mut scan_times, mut full_times) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        for _ in 0..10 {
            timed(&registry, &indexed, &mut index_times).await;
            timed(&registry, &scanned, &mut scan_times).await;
        }
        assert!(timed(&registry, &full, &mut full_times).await.is_empty());
    }
    let (index, scan, full) = (median(index_times), median(scan_times), median(full_times));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("party-filtered page of 50 from the party index:      median {:8.2} ms", ms(index));
    println!(
        "the same page scanning from the start (no index):    median {:8.2} ms  ({:.1}x the index)",
        ms(scan),
        ms(scan) / ms(index)
    );
    println!(
        "a full scan of all {count} agreements (no index):  median {:8.2} ms  ({:.0}x the index)",
        ms(full),
        ms(full) / ms(index)
    );

    // Two indexed conditions together, against the second left for the
    // records to be tested on, interleaved.
    for (together, alone) in [
        (
            r#"parties:"parties/ind" AND parties:"parties/jpn""#,
            r#"parties:"parties/ind" AND NOT (NOT (parties:"parties/jpn"))"#,
        ),
        (
            "signature_date >= 2020 AND signature_date < 2021",
            "signature_date >= 2020 AND NOT (NOT (signature_date < 2021))",
        ),
    ] {
        let (together, alone) = (query(together), query(alone));
        let (mut together_times, mut alone_times) = (Vec::new(), Vec::new());
        let both_found = timed(&registry, &together, &mut together_times).await;
        let one_found = timed(&registry, &alone, &mut alone_times).await;
        assert_eq!(names(&both_found), names(&one_found), "both plans give the same page");
        for _ in 0..10 {
            timed(&registry, &together, &mut together_times).await;
            timed(&registry, &alone, &mut alone_times).await;
        }
        let (both, one) = (median(together_times), median(alone_times));
        println!("{}: median {:8.2} ms", together.filter, ms(both));
        println!(
            "  the second condition hidden from the planner: median {:8.2} ms ({:.1}x)",
            ms(one),
            ms(one) / ms(both)
        );
    }

    let relationship =
        RelationshipQuery { parties: vec!["parties/ind".into(), "parties/aus".into()], ..Default::default() };
    let mut times = Vec::new();
    let mut found = 0;
    for _ in 0..10 {
        let t = Instant::now();
        found = registry.relationship(&relationship).await.unwrap().counts.unwrap().agreements;
        times.push(t.elapsed());
    }
    println!("GetRelationship(ind, aus): {found} agreements, median {:.2} ms", median(times).as_secs_f64() * 1e3);
}
