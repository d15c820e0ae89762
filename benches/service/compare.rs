//! `BENCH=compare` and `BENCH=floor`: targets side by side at three shapes of
//! load, interleaved and repeated, on one loaded data dir.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cooperation_registry::pb::cooperation::v1::agreement_service_client::AgreementServiceClient;
use cooperation_registry::pb::cooperation::v1::{self as v1};
use prost::Message;

use crate::checks::{Check, checkpoints, count_answers, scrape, verify};
use crate::common::client::{connect, revision};
use crate::common::env_or;
use crate::common::process::Served;
use crate::common::records::agreement_id;
use crate::common::stats::memory_kib;
use crate::data::{
    CompactionRequest, PutRequest, RangeRequest, agreement, agreements, frame, load, response_frame_len, scattered,
    write_body,
};
use crate::load::{Run, data_bytes, h2load, h2load_each, once};
use crate::processes::{du_mib, start_etcd, start_floor, start_registry, start_registry_on};
use crate::report::{self, Summary};

/// What `compare` sets side by side.
#[derive(Clone, Copy, PartialEq)]
pub enum Comparison {
    /// The registry's calls, the ceiling and etcd.
    Service,
    /// A durable create, the ceiling, etcd's Put and the floor server's.
    Floor,
}

/// A target of the comparison: where to send which body, and how to check a run.
pub struct Target {
    pub name: &'static str,
    pub peer: Peer,
    pub path: String,
    pub body: PathBuf,
    /// For a target whose calls name different records: a body for each
    /// record, a connection posting each (see `h2load_each`), and each run
    /// taking records that no earlier run took while there are enough; empty
    /// for a target that posts `body` on every stream.
    pub scattered: Vec<PathBuf>,
    pub check: Check,
}

/// The process a target runs against.
#[derive(Clone, Copy, PartialEq)]
pub enum Peer {
    Registry,
    Etcd,
    Floor,
}

/// The shapes of load: (connections, streams each).
pub const SHAPES: [(u32, u32); 3] = [(1, 1), (16, 16), (64, 8)];

/// The runs of each (shape, target), by their indexes.
pub type Results = BTreeMap<(usize, usize), Vec<Run>>;

pub async fn compare(comparison: Comparison) {
    let count: usize = env_or("AGREEMENTS", 10_000);
    let reps: usize = env_or("REPS", 3);
    let seconds: u32 = env_or("SECONDS", 4);
    let work = tempfile::tempdir().unwrap();
    let Loaded { data_dir, get_name, before: loaded_before, checkpoints: load_checkpoints } =
        loaded(count, work.path()).await;
    // The server's defaults: they leave room for c64/m8 (512 calls in flight)
    // without shedding, and a new user gets them too.
    let serve_flags: [&str; 0] = [];
    // sled replays at start what was logged since the previous start, so the
    // first start after the load and the one after it differ; both are shown.
    let (server, cold_start) = start_registry(&data_dir, &serve_flags);
    let first_start_peak_kib = memory_kib(server.pid()).1;
    server.stop();
    let (server, restart) = start_registry(&data_dir, &serve_flags);
    let data_mib = du_mib(&data_dir);

    // BODIES_DIR keeps the request bodies, to drive the server with h2load by hand.
    let bodies_dir = std::env::var_os("BODIES_DIR").map(PathBuf::from);
    if let Some(kept) = &bodies_dir {
        std::fs::create_dir_all(kept).unwrap();
    }
    let dir = bodies_dir.as_deref().unwrap_or(work.path());
    let (mut targets, create) = registry_targets(&server, &get_name, dir).await;
    if comparison == Comparison::Service {
        // As many records as the runs take, so that no run updates a record
        // an earlier run updated.
        let wanted = reps * SHAPES.iter().map(|&(c, _)| c as usize).sum::<usize>();
        targets.push(scattered_updates(&server, &scattered(count, wanted), dir).await);
    }

    // etcd, if installed: one key of our agreement's size, compacted.
    let etcd = start_etcd(&work.path().join("etcd"));
    if let Some(etcd) = &etcd {
        targets.extend(etcd_targets(etcd, dir));
    } else {
        eprintln!("etcd is not installed (Debian's etcd-server): the etcd rows are left out");
    }

    // The floor: a durable create against what tonic and sled do alone, at
    // the ceiling and etcd's Put.
    let floor = (comparison == Comparison::Floor).then(|| start_floor(&work.path().join("floor")));
    if floor.is_some() {
        crate::floor::use_targets(&mut targets, &create, dir, etcd.is_some());
    }

    let processes = Processes { registry: &server, etcd: etcd.as_ref(), floor: floor.as_ref() };
    let measured = measure(&processes, &targets, reps, seconds).await;
    let summary = Summary {
        comparison,
        count,
        reps,
        seconds,
        targets: &targets,
        results: &measured.results,
        peak_kib: measured.peak_kib.max(first_start_peak_kib),
        data_mib,
        cold_start,
        restart,
        loaded_before,
        load_checkpoints,
        checkpointed_in: &measured.checkpointed_in,
        last_pause: measured.last_pause,
    };
    report::write(comparison, &report::table(&summary));
    server.stop();
    if let Some(etcd) = etcd {
        etcd.stop();
    }
    if let Some(floor) = floor {
        floor.stop();
    }
}

/// The data dir the agreements were loaded into (the registry stopped).
pub struct Loaded {
    pub data_dir: PathBuf,
    /// The agreement the GetAgreement calls read.
    pub get_name: String,
    /// The data dir was loaded by an earlier run (DATA_DIR).
    pub before: bool,
    /// The load's checkpoints (count, last pause in seconds), when this run loaded.
    pub checkpoints: Option<(f64, f64)>,
}

/// `count` agreements loaded into a data dir under `work`, or into DATA_DIR:
/// that keeps the loaded data dir for later runs (a large load takes long),
/// with a file beside it recording the count, and a later run with the same
/// count uses it instead of loading again.
pub async fn loaded(count: usize, work: &Path) -> Loaded {
    let data_dir = std::env::var_os("DATA_DIR").map(PathBuf::from).unwrap_or_else(|| work.join("registry"));
    let loaded_marker = data_dir.with_extension("loaded");
    let already_loaded = std::fs::read_to_string(&loaded_marker).ok().and_then(|t| t.trim().parse::<usize>().ok());
    match already_loaded {
        Some(loaded) if loaded == count => {
            eprintln!("{} already holds {count} agreements (DATA_DIR): not loading", data_dir.display());
            Loaded { data_dir, get_name: "agreements/a0000000".to_string(), before: true, checkpoints: None }
        }
        Some(other) => {
            panic!("{} holds {other} agreements, not {count}: remove it or set AGREEMENTS", data_dir.display())
        }
        None => {
            // Loaded on both cores without waiting for each write to be
            // durable (the clean shutdown after it flushes everything): how
            // the data got there is not what is measured.
            let (server, _) = start_registry_on(&data_dir, &["--durability", "none"], "0,1");
            let get_name = load(server.addr, count).await;
            let during_load = checkpoints(&scrape(server.metrics.expect("metrics address")).await);
            server.stop();
            std::fs::write(&loaded_marker, count.to_string()).unwrap();
            Loaded { data_dir, get_name, before: false, checkpoints: Some(during_load) }
        }
    }
}

/// The registry's targets, with their request bodies written to `dir` and the
/// exact response sizes of the reads; and the create request, which the floor
/// server answers too.
pub async fn registry_targets(
    server: &Served,
    get_name: &str,
    dir: &Path,
) -> (Vec<Target>, v1::CreateAgreementRequest) {
    let mut client = AgreementServiceClient::new(connect(server.addr).await);
    let get = v1::GetAgreementRequest { name: get_name.to_string(), ..Default::default() };
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
    let update = retitle(&got);
    let health = tonic_health::pb::HealthCheckRequest { service: String::new() };
    let health_reply = tonic_health::pb::HealthCheckResponse { status: 1 };
    // The request written where h2load reads it, named after its method.
    let registry = |name, path: String, request: Vec<u8>, check| {
        let file = format!("{}.bin", path.rsplit('/').next().unwrap());
        Target {
            name,
            peer: Peer::Registry,
            body: write_body(dir, &file, &request),
            scattered: Vec::new(),
            path,
            check,
        }
    };
    let targets = vec![
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
    (targets, create)
}

/// Updates of the agreements numbered `indexes`, each retitled as the hot
/// record is, their bodies written under `dir`: the calls of a run update
/// different records (as many as it has connections), where the hot update's
/// all take turns at one.
async fn scattered_updates(server: &Served, indexes: &[usize], dir: &Path) -> Target {
    let mut client = AgreementServiceClient::new(connect(server.addr).await);
    let dir = dir.join("UpdateAgreement-scattered");
    std::fs::create_dir_all(&dir).unwrap();
    let mut bodies = Vec::new();
    for &i in indexes {
        let get = v1::GetAgreementRequest { name: format!("agreements/{}", agreement_id(i)), ..Default::default() };
        let got = client.get_agreement(get).await.unwrap().into_inner();
        bodies.push(write_body(&dir, &format!("{}.bin", agreement_id(i)), &frame(&retitle(&got))));
    }
    Target {
        name: "UpdateAgreement, random records (fsync)",
        peer: Peer::Registry,
        path: agreements("UpdateAgreement"),
        body: bodies[0].clone(),
        scattered: bodies,
        check: Check::RegistryWrite,
    }
}

/// The update the benchmark sends again and again: `agreement` retitled,
/// whatever its etag.
pub fn retitle(agreement: &v1::Agreement) -> v1::UpdateAgreementRequest {
    let mut changed = agreement.clone();
    changed.title = "Agreement retitled by the benchmark".into();
    changed.etag = String::new();
    v1::UpdateAgreementRequest {
        agreement: Some(changed),
        update_mask: Some(prost_types::FieldMask { paths: vec!["title".into()] }),
        request_id: String::new(),
    }
}

/// etcd's targets: a Range and a Put of one key the size of our encoded
/// agreement, written once and compacted first.
fn etcd_targets(etcd: &Served, dir: &Path) -> [Target; 2] {
    let key = b"agreements/a0000000".to_vec();
    let put = PutRequest { key: key.clone(), value: agreement(7).encode_to_vec() };
    let range = RangeRequest { key: key.clone(), serializable: true };
    let put_body = write_body(dir, "etcd-put.bin", &frame(&put));
    let range_body = write_body(dir, "etcd-range.bin", &frame(&range));
    // Write the key, compact, and measure the Range response size.
    let warm = h2load(etcd, "/etcdserverpb.KV/Put", &put_body, 1, 1, 1, None);
    let compact = CompactionRequest { revision: warm.calls as i64 + 1, physical: true };
    let compact_body = write_body(dir, "etcd-compact.bin", &frame(&compact));
    once(etcd.addr, "/etcdserverpb.KV/Compact", &compact_body);
    let range_bytes = data_bytes(&once(etcd.addr, "/etcdserverpb.KV/Range", &range_body));
    [
        Target {
            name: "etcd Range (serializable)",
            peer: Peer::Etcd,
            path: "/etcdserverpb.KV/Range".into(),
            body: range_body,
            scattered: Vec::new(),
            check: Check::ResponseBytes(range_bytes),
        },
        Target {
            name: "etcd Put (same size)",
            peer: Peer::Etcd,
            path: "/etcdserverpb.KV/Put".into(),
            body: put_body,
            scattered: Vec::new(),
            check: Check::EtcdWrite,
        },
    ]
}

/// The processes the targets run against.
struct Processes<'a> {
    registry: &'a Served,
    etcd: Option<&'a Served>,
    floor: Option<&'a Served>,
}

/// What the runs measured.
struct Measured {
    results: Results,
    /// The registry's peak memory while measuring, in KiB.
    peak_kib: u64,
    /// The runs during which the registry took a checkpoint.
    checkpointed_in: Vec<String>,
    /// How long the last of those checkpoints held calls, in seconds.
    last_pause: f64,
}

/// Runs every target at every shape, `reps` times interleaved, each run
/// checked.
async fn measure(processes: &Processes<'_>, targets: &[Target], reps: usize, seconds: u32) -> Measured {
    let registry = processes.registry;
    let mut measured = Measured {
        results: BTreeMap::new(),
        peak_kib: memory_kib(registry.pid()).1,
        checkpointed_in: Vec::new(),
        last_pause: 0.0,
    };
    // The bodies of `scattered` each target's runs have taken.
    let mut taken = vec![0; targets.len()];
    for rep in 0..reps {
        for (s, &(c, m)) in SHAPES.iter().enumerate() {
            for (t, target) in targets.iter().enumerate() {
                let process = match target.peer {
                    Peer::Registry => registry,
                    Peer::Etcd => processes.etcd.unwrap(),
                    Peer::Floor => processes.floor.unwrap(),
                };
                let before = match target.check {
                    Check::RegistryWrite => Some(revision(registry.addr).await),
                    _ => None,
                };
                let metrics_addr = process.metrics.expect("metrics address");
                let scraped_before = scrape(metrics_addr).await;
                let mut run = if target.scattered.is_empty() {
                    tokio::task::block_in_place(|| h2load(process, &target.path, &target.body, c, m, seconds, None))
                } else {
                    let pool = &target.scattered;
                    let bodies: Vec<&Path> =
                        (taken[t]..taken[t] + c as usize).map(|b| pool[b % pool.len()].as_path()).collect();
                    taken[t] += bodies.len();
                    tokio::task::block_in_place(|| h2load_each(process, &target.path, &bodies, m, seconds))
                };
                let scraped_after = scrape(metrics_addr).await;
                if target.peer == Peer::Registry {
                    let (before, after) = (checkpoints(&scraped_before), checkpoints(&scraped_after));
                    if after.0 > before.0 {
                        measured.checkpointed_in.push(format!(
                            "{} at c{c}/m{m} in repetition {}",
                            target.name,
                            rep + 1
                        ));
                        measured.last_pause = after.1;
                    }
                }
                count_answers(
                    &mut run,
                    &target.check,
                    &target.path,
                    &scraped_before,
                    &scraped_after,
                    target.name,
                    (c, m),
                );
                let moved = match before {
                    Some(before) => Some((revision(registry.addr).await - before) as u64),
                    None => None,
                };
                if let Err(problem) = verify(&target.check, &run, moved) {
                    panic!("{} at c{c}/m{m}: the run failed its check: {problem}", target.name);
                }
                measured.peak_kib = measured.peak_kib.max(memory_kib(registry.pid()).1);
                eprintln!(
                    "rep {rep} c{c}/m{m} {:<32} {:>9.0}/s p50 {:>6} µs p99 {:>6} µs {:>6.1} CPU µs/call",
                    target.name,
                    run.rate,
                    run.p50_us,
                    run.p99_us,
                    run.cpu_us_per_call()
                );
                measured.results.entry((s, t)).or_default().push(run);
            }
        }
    }
    measured
}
