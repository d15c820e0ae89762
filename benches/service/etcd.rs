//! `BENCH=etcd`: the registry on the etcd engine (`--store etcd`), one server
//! and two sharing a prefix, in front of a 3-member etcd cluster on
//! loopback, with etcd's own Range and Put beside it in the same run, and
//! the floor under a create: the transaction a create sent, read back from
//! the cluster (a watch of the events of its revision) and replayed raw
//! under another prefix, as sent and with every write a put.
//!
//! The layout on two cores: the registry servers on core 0; the three
//! members on core 1, which h2load shares (`load.rs` pins it there). A
//! registry call's etcd work and a raw etcd call's then have the same core,
//! so GetAgreement over Range and CreateAgreement over Put say what the
//! registry adds to the cluster's work, and the registry's own CPU, on the
//! other core, is measured apart.
//!
//! The cluster's revision checks every run: a registry create or update is
//! one etcd transaction, and a Put or a replayed Txn one revision, so the
//! revision moves by exactly the writes committed (at least the calls
//! answered OK, at most those and the calls cancelled in flight when h2load
//! stopped), and a read moves it not at all.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cooperation_registry::pb::cooperation::v1::agreement_service_client::AgreementServiceClient;
use cooperation_registry::pb::cooperation::v1::{self as v1};
use cooperation_registry::pb::etcd::etcdserverpb::{self as etcdpb, kv_client::KvClient};
use prost::Message;
use tonic::transport::Channel;

use crate::checks::{Check, count_answers, handled, scrape, syncs, verify};
use crate::common::client::connect;
use crate::common::env_or;
use crate::common::process::Served;
use crate::common::records::agreement_id;
use crate::common::stats::{median, min_and_median};
use crate::compare::{SHAPES, registry_targets, retitle};
use crate::data::{PutRequest, RangeRequest, agreement, frame, load, write_body};
use crate::load::{Run, data_bytes, h2load, once};
use crate::processes::{cpu_us, start_etcd_cluster, start_registry_on};

/// The registry servers' core; the members run on the other, with h2load.
const REGISTRY_CORES: &str = "0";
const ETCD_CORES: &str = "1";
const MEMBERS: usize = 3;
/// The part of the cluster's keyspace the registry servers share.
const PREFIX: &str = "bench/";
/// The key of etcd's own Range and Put, outside the registry's prefix.
const RAW_KEY: &[u8] = b"raw/agreements/a0000000";
/// The rows of etcd's own that the registry's are compared with.
const RANGE: &str = "etcd Range (linearizable)";
const PUT: &str = "etcd Put (same size)";
/// The floor under a create: the transaction a registry create sends,
/// replayed raw (its member keys as the engine writes them, each put only if
/// absent: after the first call they are there, so only the record and the
/// change-log entry are written again), and the same transaction with every
/// write a put (every key written at every call, as a create writes them).
const TXN: &str = "etcd Txn, a create's writes";
const TXN_PUTS: &str = "etcd Txn, the same writes as puts";
/// Where the replayed transactions write: the keys the create wrote, with
/// this prefix for the registry's.
const FLOOR_PREFIX: &str = "floor/";

/// Where one h2load process sends its calls.
#[derive(Clone, Copy, PartialEq)]
enum To {
    /// Registry server `i`.
    Registry(usize),
    /// The cluster's leader.
    Leader,
}

/// A row of the table: a target, called by one h2load process per send, all
/// at once and each at the shape.
struct Row {
    name: &'static str,
    path: String,
    check: Check,
    sends: Vec<(To, PathBuf)>,
    /// The row of etcd's own it is compared with.
    versus: Option<&'static str>,
}

impl Row {
    /// Who answers its calls, for the table.
    fn servers(&self) -> String {
        match self.sends[0].0 {
            To::Registry(_) => self.sends.len().to_string(),
            To::Leader => "etcd leader".into(),
        }
    }
}

/// What one run of a row measured, its h2load processes together.
struct Sample {
    /// Calls a second, summed over the processes.
    rate: f64,
    /// The slower process's latencies.
    p50_us: u64,
    p99_us: u64,
    /// CPU time per call answered OK (warm-up included) of the registry
    /// servers called, and of the three members together.
    registry_cpu_us: Option<f64>,
    etcd_cpu_us: f64,
    /// The calls of etcd's KV service per call: its round trips.
    etcd_calls: f64,
    /// For writes: the writes committed per WAL fsync of the leader, and the
    /// etcd keys each wrote (put or deleted).
    writes_per_fsync: Option<f64>,
    keys_per_write: Option<f64>,
}

/// The runs of each (shape, row), by their indexes.
type Results = BTreeMap<(usize, usize), Vec<Sample>>;

pub async fn etcd() {
    let count: usize = env_or("AGREEMENTS", 10_000);
    let reps: usize = env_or("REPS", 3);
    let seconds: u32 = env_or("SECONDS", 4);
    let work = tempfile::tempdir().unwrap();
    let Some(cluster) = Cluster::start(&work.path().join("etcd")).await else {
        eprintln!("etcd did not start: install Debian's etcd-server");
        std::process::exit(1);
    };
    let endpoints = cluster.endpoints();
    // (--data-dir, which Serve always passes, is not used with --store etcd.)
    let flags = ["--store", "etcd", "--etcd-endpoints", &endpoints, "--etcd-prefix", PREFIX];
    // Loaded on both cores: how the data got there is not what is measured.
    let (loader, _) = start_registry_on(work.path(), &flags, "0,1");
    let started = Instant::now();
    let get_name = load(loader.addr, count).await;
    let load_time = started.elapsed();
    loader.stop();
    cluster.compact().await;
    let servers = [0, 1].map(|_| start_registry_on(work.path(), &flags, REGISTRY_CORES).0);
    let rows = rows(&servers, &cluster, &get_name, work.path()).await;
    let results = measure(&servers, &cluster, &rows, reps, seconds).await;
    let setup = Setup { count, reps, seconds, load_time, leader: cluster.leader };
    crate::report::write_to("bench-etcd.md", &table(&setup, &rows, &results));
    for server in servers {
        server.stop();
    }
    cluster.stop();
}

/// The cluster: its members, the one leading it, and a client of that one.
struct Cluster {
    members: Vec<Served>,
    leader: usize,
    kv: KvClient<Channel>,
}

impl Cluster {
    /// Starts the members on fresh data dirs under `dir` and waits for a
    /// leader; None if etcd is not installed or no leader is elected in 30 s.
    async fn start(dir: &Path) -> Option<Cluster> {
        let members = start_etcd_cluster(dir, MEMBERS, ETCD_CORES)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let leader = loop {
            if let Some(leader) = leader_of(&members).await {
                break leader;
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let kv = KvClient::new(connect(members[leader].addr).await);
        Some(Cluster { members, leader, kv })
    }

    /// The members' client URLs, as `--etcd-endpoints` takes them.
    fn endpoints(&self) -> String {
        self.members.iter().map(|member| format!("http://{}", member.addr)).collect::<Vec<_>>().join(",")
    }

    fn leader(&self) -> &Served {
        &self.members[self.leader]
    }

    /// The cluster's revision: the header of a linearizable read.
    async fn revision(&self) -> u64 {
        let count = etcdpb::RangeRequest { key: RAW_KEY.to_vec(), count_only: true, ..Default::default() };
        let answer = self.kv.clone().range(count).await.expect("etcd answers a range").into_inner();
        answer.header.expect("a response header").revision as u64
    }

    /// The key-value at `key` now, if there is one.
    async fn entry(&self, key: &[u8]) -> Option<cooperation_registry::pb::etcd::mvccpb::KeyValue> {
        let range = etcdpb::RangeRequest { key: key.to_vec(), ..Default::default() };
        self.kv.clone().range(range).await.expect("etcd answers a range").into_inner().kvs.into_iter().next()
    }

    /// Compacts etcd's history up to now and waits until every member has
    /// applied it, so that writes of earlier runs neither fill the backend
    /// nor are compacted during a later run.
    async fn compact(&self) {
        let revision = self.revision().await as i64;
        let compaction = etcdpb::CompactionRequest { revision, physical: true };
        self.kv.clone().compact(compaction).await.expect("etcd compacts");
    }

    /// A scrape of each member's metrics.
    async fn scrape(&self) -> Vec<BTreeMap<String, f64>> {
        let mut scrapes = Vec::new();
        for member in &self.members {
            scrapes.push(scrape(member.metrics.expect("etcd's metrics address")).await);
        }
        scrapes
    }

    /// user + system CPU time of the members so far, in microseconds.
    fn cpu_us(&self) -> u64 {
        self.members.iter().map(|member| cpu_us(member.pid())).sum()
    }

    /// SIGKILL: a member left without a quorum may ignore SIGTERM.
    fn stop(self) {
        for mut member in self.members {
            member.kill();
        }
    }
}

/// The calls of etcd's KV service (Range, Txn, Put…) a member has answered,
/// in a scrape of its metrics.
fn kv_calls(scrape: &BTreeMap<String, f64>) -> f64 {
    let service = "grpc_service=\"etcdserverpb.KV\"";
    scrape
        .iter()
        .filter(|(series, _)| series.starts_with("grpc_server_handled_total{") && series.contains(service))
        .map(|(_, calls)| calls)
        .sum()
}

/// The keys a member has put or deleted, in a scrape of its metrics (every
/// member applies every write).
fn keys_written(scrape: &BTreeMap<String, f64>) -> f64 {
    ["etcd_mvcc_put_total", "etcd_mvcc_delete_total"].iter().filter_map(|name| scrape.get(*name)).sum()
}

/// The index of the member that leads, if one says it does.
async fn leader_of(members: &[Served]) -> Option<usize> {
    for (i, member) in members.iter().enumerate() {
        if cooperation_registry::store::etcd::testing::leads(&format!("http://{}", member.addr)).await {
            return Some(i);
        }
    }
    None
}

/// The rows: the registry's Get, party page, create and update through one
/// server and through both, then etcd's own Range and Put.
async fn rows(servers: &[Served; 2], cluster: &Cluster, get_name: &str, dir: &Path) -> Vec<Row> {
    let (targets, _) = registry_targets(&servers[0], get_name, dir).await;
    // The second server updates an agreement of its own: two servers taking
    // turns at one record would measure their conflicts (each plans again
    // when the other commits first).
    let mut client = AgreementServiceClient::new(connect(servers[1].addr).await);
    let other = v1::GetAgreementRequest { name: format!("agreements/{}", agreement_id(1)), ..Default::default() };
    let other = client.get_agreement(other).await.unwrap().into_inner();
    let other_update = write_body(dir, "UpdateAgreement-2.bin", &frame(&retitle(&other)));
    let mut rows = Vec::new();
    for target in targets.into_iter().filter(|target| !target.name.starts_with("Health")) {
        let versus = match target.name {
            "GetAgreement" => Some(RANGE),
            name if name.starts_with("CreateAgreement") || name.starts_with("UpdateAgreement") => Some(PUT),
            _ => None,
        };
        let second =
            if target.name.starts_with("UpdateAgreement") { other_update.clone() } else { target.body.clone() };
        let one = vec![(To::Registry(0), target.body.clone())];
        let two = vec![(To::Registry(0), target.body), (To::Registry(1), second)];
        for sends in [one, two] {
            rows.push(Row { name: target.name, path: target.path.clone(), check: target.check.clone(), sends, versus });
        }
    }
    rows.extend(etcd_rows(cluster, dir).await);
    rows.extend(txn_rows(&servers[0], cluster, dir).await);
    rows
}

/// etcd's own rows, against the leader: a Range of one key the size of our
/// encoded agreement (linearizable, as the registry reads, and serializable)
/// and a Put of it.
async fn etcd_rows(cluster: &Cluster, dir: &Path) -> Vec<Row> {
    let value = agreement(7).encode_to_vec();
    let first = etcdpb::PutRequest { key: RAW_KEY.to_vec(), value: value.clone(), ..Default::default() };
    cluster.kv.clone().put(first).await.expect("etcd takes a put");
    let path = |method: &str| format!("/etcdserverpb.KV/{method}");
    let range = |name, serializable, file| {
        let body = write_body(dir, file, &frame(&RangeRequest { key: RAW_KEY.to_vec(), serializable }));
        let size = data_bytes(&once(cluster.leader().addr, &path("Range"), &body));
        Row {
            name,
            path: path("Range"),
            check: Check::ResponseBytes(size),
            sends: vec![(To::Leader, body)],
            versus: None,
        }
    };
    let put = write_body(dir, "etcd-put.bin", &frame(&PutRequest { key: RAW_KEY.to_vec(), value }));
    vec![
        range(RANGE, false, "etcd-range.bin"),
        range("etcd Range (serializable)", true, "etcd-range-serializable.bin"),
        Row { name: PUT, path: path("Put"), check: Check::EtcdWrite, sends: vec![(To::Leader, put)], versus: None },
    ]
}

/// etcd's Txn rows, against the leader: the transaction a registry create
/// sends, replayed raw under FLOOR_PREFIX, as the engine sends it and with
/// every write a put (see TXN).
async fn txn_rows(server: &Served, cluster: &Cluster, dir: &Path) -> Vec<Row> {
    let (compares, writes) = a_create(server, cluster).await;
    let mut rows = Vec::new();
    for (name, as_sent, file) in [(TXN, true, "etcd-txn.bin"), (TXN_PUTS, false, "etcd-txn-puts.bin")] {
        let txn = replay(&compares, &writes, as_sent);
        // Once first: its compares must hold, or every call would write nothing.
        let answer = cluster.kv.clone().txn(txn.clone()).await.expect("etcd takes the transaction").into_inner();
        assert!(answer.succeeded, "{name}: the replayed transaction's compares failed");
        let body = write_body(dir, file, &frame(&txn));
        let path = "/etcdserverpb.KV/Txn".to_string();
        rows.push(Row { name, path, check: Check::EtcdWrite, sends: vec![(To::Leader, body)], versus: Some(PUT) });
    }
    rows
}

/// Creates an agreement through `server` (the request the benchmark's
/// creates send) and reads back from the cluster what its transaction did:
/// the keys and values it wrote, as the events of its revision in a watch
/// of the registry's prefix, in the transaction's order; and the compares
/// it made, made again: that the record's key has no revision (on a key
/// under FLOOR_PREFIX nothing writes, an absent key as for a create) and
/// that each record it refers to (the referrer sets it joined, `s x/{name}\0`)
/// is at the revision it is at.
async fn a_create(server: &Served, cluster: &Cluster) -> (Vec<etcdpb::Compare>, Vec<(Vec<u8>, Vec<u8>)>) {
    use cooperation_registry::pb::etcd::mvccpb::event::EventType;
    use etcdpb::{compare, watch_client::WatchClient, watch_request};
    let mut client = AgreementServiceClient::new(connect(server.addr).await);
    let create = v1::CreateAgreementRequest {
        agreement_id: String::new(),
        agreement: Some(agreement(7)),
        request_id: String::new(),
    };
    let created = client.create_agreement(create).await.expect("a create").into_inner();
    let record = [PREFIX.as_bytes(), b"kr/", created.name.as_bytes()].concat();
    let revision = cluster.entry(&record).await.expect("the created record").create_revision;

    let create = etcdpb::WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(etcdpb::WatchCreateRequest {
            key: PREFIX.as_bytes().to_vec(),
            range_end: cooperation_registry::store::etcd::prefix_end(PREFIX.as_bytes()),
            start_revision: revision,
            prev_kv: false,
            ..Default::default()
        })),
    };
    use tokio_stream::StreamExt as _;
    let requests = tokio_stream::iter([create]).chain(tokio_stream::pending());
    let mut watch = WatchClient::new(connect(cluster.leader().addr).await);
    let mut events = watch.watch(requests).await.expect("etcd watches").into_inner();
    // The events of `revision`: until one of a later revision, or until the
    // watch has been quiet a while after them.
    let mut writes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    'watch: while Instant::now() < deadline {
        let quiet = if writes.is_empty() { Duration::from_secs(10) } else { Duration::from_millis(500) };
        let Ok(answer) = tokio::time::timeout(quiet, events.next()).await else { break };
        let answer = answer.expect("the watch goes on").expect("a watch answer");
        for event in answer.events {
            let kv = event.kv.expect("an event's key");
            if kv.mod_revision > revision {
                break 'watch;
            }
            assert_eq!(event.r#type, EventType::Put as i32, "a create deletes nothing");
            writes.push((kv.key, kv.value));
        }
    }
    assert!(writes.iter().any(|(key, _)| *key == record), "the create's events hold its record");

    let floor = |key: &[u8]| [FLOOR_PREFIX.as_bytes(), &key[PREFIX.len()..]].concat();
    let mod_revision = |key: Vec<u8>, revision: i64| {
        cooperation_registry::store::etcd::mod_revision_is(compare::CompareResult::Equal, key, Vec::new(), revision)
    };
    let mut compares = vec![mod_revision([FLOOR_PREFIX.as_bytes(), b"absent/", &record].concat(), 0)];
    let referrers = [PREFIX.as_bytes(), b"sx/"].concat();
    for (key, _) in &writes {
        if let Some(rest) = key.strip_prefix(referrers.as_slice()) {
            let target = &rest[..rest.iter().position(|&b| b == 0).expect("a referrer set's name ends in \\0")];
            let key = [PREFIX.as_bytes(), b"kr/", target].concat();
            let entry = cluster.entry(&key).await.expect("a referenced record");
            compares.push(mod_revision(key, entry.mod_revision));
        }
    }
    let writes = writes.into_iter().map(|(key, value)| (floor(&key), value)).collect();
    (compares, writes)
}

/// The transaction of `compares` and `writes`: as the engine sends a
/// create's (`as_sent`: a set member's key, `{FLOOR_PREFIX}s…`, put in a
/// transaction within, only if its version is 0), or with every write a put.
fn replay(compares: &[etcdpb::Compare], writes: &[(Vec<u8>, Vec<u8>)], as_sent: bool) -> etcdpb::TxnRequest {
    use etcdpb::{RequestOp, request_op::Request};
    let put = |key: &Vec<u8>, value: &Vec<u8>| {
        Request::RequestPut(etcdpb::PutRequest { key: key.clone(), value: value.clone(), ..Default::default() })
    };
    let member = [FLOOR_PREFIX.as_bytes(), b"s"].concat();
    let success = writes
        .iter()
        .map(|(key, value)| {
            let request = if as_sent && key.starts_with(&member) {
                cooperation_registry::store::etcd::put_if_absent(key.clone(), value.clone())
            } else {
                put(key, value)
            };
            RequestOp { request: Some(request) }
        })
        .collect();
    etcdpb::TxnRequest { compare: compares.to_vec(), success, failure: Vec::new() }
}

/// Runs every row at every shape, `reps` times interleaved, compacting
/// etcd's history after each run that wrote.
async fn measure(servers: &[Served], cluster: &Cluster, rows: &[Row], reps: usize, seconds: u32) -> Results {
    let mut results = Results::new();
    for rep in 0..reps {
        for (s, &(c, m)) in SHAPES.iter().enumerate() {
            for (r, row) in rows.iter().enumerate() {
                let sample = run(servers, cluster, row, (c, m), seconds).await;
                eprintln!(
                    "rep {rep} c{c}/m{m} {:<32} {:>11} {:>9.0}/s p50 {:>6} µs p99 {:>6} µs CPU µs/call registry {:>6.1} etcd {:>6.1}",
                    row.name,
                    row.servers(),
                    sample.rate,
                    sample.p50_us,
                    sample.p99_us,
                    sample.registry_cpu_us.unwrap_or(0.0),
                    sample.etcd_cpu_us
                );
                results.entry((s, r)).or_default().push(sample);
                if row.check.writes() {
                    cluster.compact().await;
                }
            }
        }
    }
    results
}

/// One run of `row` at c`clients`/m`streams`: its h2load processes at once,
/// each checked against the answers of the server it called, and the
/// cluster's revision against the writes answered.
async fn run(servers: &[Served], cluster: &Cluster, row: &Row, (clients, streams): (u32, u32), seconds: u32) -> Sample {
    let called: Vec<&Served> = row
        .sends
        .iter()
        .map(|(to, _)| match to {
            To::Registry(i) => &servers[*i],
            To::Leader => cluster.leader(),
        })
        .collect();
    let registry_pids: Vec<u32> =
        row.sends.iter().zip(&called).filter(|((to, _), _)| *to != To::Leader).map(|(_, s)| s.pid()).collect();
    let registry_cpu = || registry_pids.iter().map(|&pid| cpu_us(pid)).sum::<u64>();

    // (The revision is read outside the members' scrapes: it is an etcd call.)
    let revision_before = cluster.revision().await;
    let mut before = Vec::new();
    for served in &called {
        before.push(scrape(served.metrics.expect("metrics address")).await);
    }
    let members_before = cluster.scrape().await;
    let (registry_cpu_before, etcd_cpu_before) = (registry_cpu(), cluster.cpu_us());
    let mut runs: Vec<Run> = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let path = &row.path;
            let running: Vec<_> = row
                .sends
                .iter()
                .zip(&called)
                .map(|((_, body), served)| {
                    scope.spawn(move || h2load(served, path, body, clients, streams, seconds, None))
                })
                .collect();
            running.into_iter().map(|run| run.join().expect("h2load ran")).collect()
        })
    });
    let (registry_cpu_used, etcd_cpu_used) = (registry_cpu() - registry_cpu_before, cluster.cpu_us() - etcd_cpu_before);
    let members_after = cluster.scrape().await;
    let moved = cluster.revision().await - revision_before;
    let delta =
        |of: fn(&BTreeMap<String, f64>) -> f64, member: usize| of(&members_after[member]) - of(&members_before[member]);
    let etcd_calls: f64 = (0..MEMBERS).map(|member| delta(kv_calls, member)).sum();
    let (leader_fsyncs, leader_keys) = (delta(syncs, cluster.leader), delta(keys_written, cluster.leader));

    let (mut ok, mut cancelled) = (0.0, 0.0);
    for ((run, served), before) in runs.iter_mut().zip(&called).zip(&before) {
        let after = scrape(served.metrics.expect("metrics address")).await;
        count_answers(run, &row.check, &row.path, before, &after, row.name, (clients, streams));
        let (answered, answered_before) = (handled(&after, &row.path), handled(before, &row.path));
        ok += answered.0 - answered_before.0;
        cancelled += answered.1 - answered_before.1;
        if !matches!(row.check, Check::RegistryWrite)
            && let Err(problem) = verify(&row.check, run, None)
        {
            panic!("{} at c{clients}/m{streams}: the run failed its check: {problem}", row.name);
        }
    }
    let committed = if row.check.writes() { ok..=ok + cancelled } else { 0.0..=0.0 };
    if !committed.contains(&(moved as f64)) {
        panic!(
            "{} at c{clients}/m{streams} through {}: the cluster's revision moved {moved} for {ok} calls answered OK \
             and {cancelled} cancelled",
            row.name,
            row.servers()
        );
    }
    // Per call answered OK: a call cancelled at the end of a run while it
    // waited (for its turn at a record, say) did next to nothing.
    let calls = ok.max(1.0);
    Sample {
        rate: runs.iter().map(|run| run.rate).sum(),
        p50_us: runs.iter().map(|run| run.p50_us).max().unwrap_or(0),
        p99_us: runs.iter().map(|run| run.p99_us).max().unwrap_or(0),
        registry_cpu_us: (!registry_pids.is_empty()).then(|| registry_cpu_used as f64 / calls),
        etcd_cpu_us: etcd_cpu_used as f64 / calls,
        etcd_calls: etcd_calls / calls,
        writes_per_fsync: row.check.writes().then(|| moved as f64 / leader_fsyncs.max(1.0)),
        keys_per_write: row.check.writes().then(|| leader_keys / (moved as f64).max(1.0)),
    }
}

/// What the run was, for the report's first lines.
struct Setup {
    count: usize,
    reps: usize,
    seconds: u32,
    load_time: Duration,
    leader: usize,
}

/// The report: rates, latencies and CPU per call of each row at each shape,
/// the registry's over etcd's own, and the writes per WAL fsync.
fn table(setup: &Setup, rows: &[Row], results: &Results) -> String {
    let Setup { count, reps, seconds, .. } = *setup;
    let mut table = String::new();
    let _ = writeln!(
        table,
        "etcd benchmark: {count} agreements + {} engagements (loaded through the API in {:.1} s), {reps} \
         interleaved repetitions of {seconds} s. A 3-member etcd cluster on loopback (data dirs on disk, etcd's \
         defaults), its members on core 1 with h2load; registry servers on core 0 (`--store etcd`, all three \
         endpoints). Two servers: both on core 0, one h2load process each at the shape, rates summed, latencies \
         the slower's. etcd's own Range, Put and Txn go to the leader (n{}).\n",
        count / 10,
        setup.load_time.as_secs_f64(),
        setup.leader
    );
    let _ = writeln!(
        table,
        "| shape | target | servers | rate min | rate median | p50 µs | p99 µs | registry CPU µs/call | etcd CPU µs/call | etcd calls/call | / etcd |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let rate = |s: usize, r: usize| min_and_median(results[&(s, r)].iter().map(|sample| sample.rate));
    let row_named = |name: &str| rows.iter().position(|row| row.name == name);
    // The ratios of the rows compared with etcd's, by (shape, row).
    let versus_etcd = |s: usize, r: usize| rows[r].versus.and_then(row_named).map(|e| rate(s, r).1 / rate(s, e).1);
    for (s, &(c, m)) in SHAPES.iter().enumerate() {
        for (r, row) in rows.iter().enumerate() {
            let samples = &results[&(s, r)];
            let (min, median_rate) = rate(s, r);
            let mid = |f: fn(&Sample) -> f64| median(samples.iter().map(f));
            let registry_cpu = match samples[0].registry_cpu_us {
                Some(_) => format!("{:.1}", mid(|sample| sample.registry_cpu_us.unwrap_or(0.0))),
                None => String::new(),
            };
            let _ = writeln!(
                table,
                "| c{c}/m{m} | {} | {} | {min:.0} | {median_rate:.0} | {:.0} | {:.0} | {registry_cpu} | {:.1} | {:.2} | {} |",
                row.name,
                row.servers(),
                mid(|sample| sample.p50_us as f64),
                mid(|sample| sample.p99_us as f64),
                mid(|sample| sample.etcd_cpu_us),
                mid(|sample| sample.etcd_calls),
                versus_etcd(s, r).map(|ratio| format!("{ratio:.2}")).unwrap_or_default(),
            );
        }
    }
    let _ = writeln!(
        table,
        "\nWrites committed per WAL fsync of the leader, and etcd keys put or deleted per write (medians):\n\n\
         | target | servers | {} | keys per write |\n|---|---|{}---|",
        SHAPES.map(|(c, m)| format!("c{c}/m{m}")).join(" | "),
        "---|".repeat(SHAPES.len())
    );
    for (r, row) in rows.iter().enumerate().filter(|(_, row)| row.check.writes()) {
        let per_shape = (0..SHAPES.len())
            .map(|s| format!("{:.1}", median(results[&(s, r)].iter().filter_map(|sample| sample.writes_per_fsync))));
        let keys =
            median((0..SHAPES.len()).flat_map(|s| results[&(s, r)].iter().filter_map(|sample| sample.keys_per_write)));
        let _ = writeln!(
            table,
            "| {} | {} | {} | {keys:.1} |",
            row.name,
            row.servers(),
            per_shape.collect::<Vec<_>>().join(" | ")
        );
    }
    let _ = writeln!(
        table,
        "\nCPU µs/call: the CPU time of the registry servers called, and of the three members together, \
         over a run (warm-up included) over the calls answered OK. etcd calls/call: the calls of etcd's KV \
         service the three members answered per call (its round trips; a Txn is one, whatever it holds). \
         \"/ etcd\": GetAgreement over etcd's linearizable Range (a Get reads linearizably), creates, \
         updates and the replayed Txns over etcd's Put, at the same shape. A write is acknowledged once a quorum of members has \
         fsynced it to its WAL."
    );
    // The floor under a create: the rows of TXN and TXN_PUTS beside etcd's
    // Put, each against the Put and under the registry's creates.
    let _ = writeln!(
        table,
        "\nThe floor under a create: the transaction a create sent, replayed raw to the leader (\"{TXN}\": its \
         member keys put only if absent, so after the first call only the record and the change-log entry are \
         written; \"{TXN_PUTS}\": every key put at every call), beside etcd's Put; each row's rate over the \
         Put's, and the registry's creates' rates over each row's (medians):\n\n\
         | shape | target | rate | etcd CPU µs/call | keys per write | request bytes | / Put | CreateAgreement \
         (1 server) / it | CreateAgreement (2 servers) / it |\n|---|---|---|---|---|---|---|---|---|"
    );
    let creates: Vec<usize> =
        rows.iter().enumerate().filter(|(_, row)| row.name.starts_with("CreateAgreement")).map(|(r, _)| r).collect();
    for (s, &(c, m)) in SHAPES.iter().enumerate() {
        let Some(put) = row_named(PUT) else { break };
        for f in [PUT, TXN, TXN_PUTS].into_iter().filter_map(row_named) {
            let samples = &results[&(s, f)];
            let floor_rate = rate(s, f).1;
            let over = creates.iter().map(|&r| format!("{:.2}", rate(s, r).1 / floor_rate)).collect::<Vec<_>>();
            // The body less gRPC's 5 bytes of framing.
            let bytes = std::fs::metadata(&rows[f].sends[0].1).map(|file| file.len() - 5).unwrap_or(0);
            let _ = writeln!(
                table,
                "| c{c}/m{m} | {} | {floor_rate:.0} | {:.1} | {:.1} | {bytes} | {:.2} | {} |",
                rows[f].name,
                median(samples.iter().map(|sample| sample.etcd_cpu_us)),
                median(samples.iter().filter_map(|sample| sample.keys_per_write)),
                floor_rate / rate(s, put).1,
                over.join(" | ")
            );
        }
    }
    let ratios = |name: &str, shapes: &[usize]| {
        let mut found = Vec::new();
        for (r, row) in rows.iter().enumerate().filter(|(_, row)| row.name.starts_with(name)) {
            for &s in shapes {
                let (c, m) = SHAPES[s];
                let ratio = versus_etcd(s, r).unwrap_or(0.0);
                found.push(format!("{ratio:.2} at c{c}/m{m} through {} server(s)", row.servers()));
            }
        }
        found.join(", ")
    };
    let _ = writeln!(
        table,
        "\nAgainst the targets: GetAgreement at 0.5 of etcd's Range or more: {}. A durable create at 0.5 of etcd's \
         Put or more at c64/m8: {}.",
        ratios("GetAgreement", &[0, 1, 2]),
        ratios("CreateAgreement", &[2])
    );
    table
}
