//! `BENCH=overload`: the sustainable rate of a scanning ListAgreements page
//! under `--max-concurrent-calls 64`, then ten times that rate offered
//! open-loop: what is served, what is shed, the admitted calls' p99 and the
//! server's memory.

use std::collections::BTreeMap;
use std::time::Duration;

use cooperation_registry::pb::cooperation::v1::{self as v1};

use crate::checks::scrape;
use crate::common::env_or;
use crate::common::stats::memory_kib;
use crate::data::{agreements, frame, load, write_body};
use crate::load::h2load;
use crate::processes::start_registry;

pub async fn overload() {
    let count: usize = env_or("AGREEMENTS", 10_000);
    let seconds: u32 = env_or("OVERLOAD_SECS", 10);
    let limit = 64;
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("data");
    let (server, _) = start_registry(&data_dir, &["--max-concurrent-calls", &limit.to_string()]);
    load(server.addr, count).await;
    let metrics = server.metrics.expect("metrics address");
    // A word of the title besides the party, so every record of the party is
    // read and tested (a party alone is answered from its index, see
    // `Registry::list_encoded_quick`).
    let list = v1::ListAgreementsRequest {
        filter: "parties:\"parties/ind\" AND title:\"supplies\"".into(),
        page_size: 50,
        ..Default::default()
    };
    let body = write_body(work.path(), "list.bin", &frame(&list));
    let path = agreements("ListAgreements");

    let (rss_loaded, _) = memory_kib(server.pid());
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
    let (rss_after, _) = memory_kib(server.pid());
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
