//! The floor under a durable create: what tonic and sled cost on their own,
//! with none of the registry (`BENCH=floor`). A create of the registry does
//! more than any of these, so none of its rates can be beaten by it: they say
//! how much of the way to a target the stack leaves.
//!
//! The bench binary serves this in a process of its own when
//! `FLOOR_DATA_DIR` is set, pinned to core 0 like the registry, on tokio's
//! default runtime and transport (the registry's). Each method takes the registry's
//! CreateAgreementRequest and answers with the agreement, named, as the
//! registry does; they differ in what they do between:
//!
//! - `Decode`: nothing (the gRPC call and the messages);
//! - `Insert`: two sled inserts, the record under its name and a copy under
//!   its revision (the least a create with a change feed writes);
//! - `InsertFsync`: and waits until they are durable: sled's flush and an
//!   fdatasync of its data file, shared by every create that waits at the
//!   time, as the registry makes its writes durable (`--durability fsync`);
//! - `BatchFsync`: as `InsertFsync`, but the two inserts are one sled batch
//!   (`apply_batch`), so that a crash keeps both or neither: the least an
//!   atomic write costs on sled, and every write of the registry is atomic
//!   (its record, index entries and change-log entry);
//! - `IndexedFsync`: as `BatchFsync`, but also one key for each index entry
//!   the registry keeps for the agreement (`index::entries`) and for each
//!   party it names (the referrer sets), in the batch with the record and
//!   the copy: the least a create costs on sled that keeps the indexes the
//!   registry's queries read, kept the plainest way, a key an entry;
//! - `HotFsync`: an update of one record from every call, as the service
//!   benchmark's hot UpdateAgreement: each call takes its turn at the
//!   record, reads it, writes the new version and the replaced one under
//!   its revision as one batch, passes the turn on and waits until durable:
//!   the least a read-modify-write of one record costs on sled.
//!
//! It serves its counts of answers, in the registry's metric names, on a
//! second port, so the bench checks its runs like the registry's.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use cooperation_registry::pb::cooperation::v1::{Agreement, CreateAgreementRequest};
use cooperation_registry::registry::{index, resource};
use prost::Message;
use tokio_stream::StreamExt;
use tonic::codegen::{BoxFuture, Service, http};

use crate::checks::Check;
use crate::compare::{Peer, Target};
use crate::data::{frame, response_frame_len, write_body};

/// The target of the floor's atomic create (`BatchFsync`).
pub const BATCH_TARGET: &str = "floor: + 2 inserts as one batch, fsync";
/// The target of the floor's hot record (`HotFsync`), set beside `BATCH_TARGET`.
pub const HOT_TARGET: &str = "floor: one record updated in turns, fsync";

/// The gRPC service the floor's methods are under.
pub const SERVICE: &str = "floor.v1.Floor";

/// What a method does between decoding the request and answering.
#[derive(Clone, Copy, PartialEq)]
enum Work {
    Decode,
    Insert,
    InsertFsync,
    BatchFsync,
    IndexedFsync,
    HotFsync,
}

/// The methods, by name.
const METHODS: [(&str, Work); 6] = [
    ("Decode", Work::Decode),
    ("Insert", Work::Insert),
    ("InsertFsync", Work::InsertFsync),
    ("BatchFsync", Work::BatchFsync),
    ("IndexedFsync", Work::IndexedFsync),
    ("HotFsync", Work::HotFsync),
];

/// The record every `HotFsync` call updates, named as long as a created one
/// so that its answers are as large.
fn hot_name() -> String {
    format!("agreements/{}", uuid::Uuid::nil())
}

/// The path of method `name` (one of `METHODS`).
pub fn path(name: &str) -> String {
    assert!(METHODS.iter().any(|(method, _)| *method == name), "no floor method {name}");
    format!("/{SERVICE}/{name}")
}

struct Floor {
    db: sled::Db,
    data_file: PathBuf,
    /// The last revision inserted: inserts take revisions in order under it,
    /// so everything up to it is in sled when it is read.
    inserted: Mutex<u64>,
    /// The last revision made durable; held while a flush runs, so the
    /// creates that arrive meanwhile share the next one.
    durable: tokio::sync::Mutex<u64>,
    /// The turn at the hot record (`HotFsync`), held from its read to its write.
    hot_turn: tokio::sync::Mutex<()>,
    answered: [AtomicU64; METHODS.len()],
    syncs: AtomicU64,
}

impl Floor {
    async fn create(&self, work: Work, request: CreateAgreementRequest) -> Result<Agreement, tonic::Status> {
        let mut agreement =
            request.agreement.ok_or_else(|| tonic::Status::invalid_argument("agreement: is required"))?;
        agreement.name = match work {
            Work::HotFsync => hot_name(),
            _ => format!("agreements/{}", uuid::Uuid::now_v7()),
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let time = prost_types::Timestamp { seconds: now.as_secs() as i64, nanos: now.subsec_nanos() as i32 };
        agreement.create_time = Some(time);
        agreement.update_time = Some(time);
        if work == Work::Decode {
            return Ok(agreement);
        }
        let record = agreement.encode_to_vec();
        let revision = match work {
            Work::IndexedFsync => {
                let id = &agreement.name["agreements/".len()..];
                let entries = index::entries(&resource::AGREEMENT, &record).map_err(internal)?;
                let mut batch = sled::Batch::default();
                for set in entries {
                    batch.insert([set.as_slice(), id.as_bytes()].concat(), &[]);
                }
                for party in &agreement.parties {
                    batch.insert(format!("x/{party}\0{}", agreement.name).into_bytes(), &[]);
                }
                batch.insert(agreement.name.as_bytes(), record.as_slice());
                let mut inserted = self.inserted.lock().unwrap();
                *inserted += 1;
                batch.insert(&inserted.to_be_bytes(), record);
                self.db.apply_batch(batch).map_err(internal)?;
                *inserted
            }
            Work::BatchFsync => {
                let mut batch = sled::Batch::default();
                batch.insert(agreement.name.as_bytes(), record.as_slice());
                let mut inserted = self.inserted.lock().unwrap();
                *inserted += 1;
                batch.insert(&inserted.to_be_bytes(), record);
                self.db.apply_batch(batch).map_err(internal)?;
                *inserted
            }
            Work::HotFsync => {
                let turn = self.hot_turn.lock().await;
                let replaced = self.db.get(agreement.name.as_bytes()).map_err(internal)?;
                let mut batch = sled::Batch::default();
                batch.insert(agreement.name.as_bytes(), record);
                let mut inserted = self.inserted.lock().unwrap();
                *inserted += 1;
                if let Some(replaced) = replaced {
                    batch.insert([b"v/".as_slice(), &inserted.to_be_bytes()].concat(), replaced);
                }
                self.db.apply_batch(batch).map_err(internal)?;
                drop(turn);
                *inserted
            }
            _ => {
                let mut inserted = self.inserted.lock().unwrap();
                *inserted += 1;
                self.db.insert(agreement.name.as_bytes(), record.as_slice()).map_err(internal)?;
                self.db.insert(inserted.to_be_bytes(), record).map_err(internal)?;
                *inserted
            }
        };
        if !matches!(work, Work::Decode | Work::Insert) {
            self.make_durable(revision).await?;
        }
        Ok(agreement)
    }

    /// Returns once `revision` is durable, flushing if no flush running
    /// now or before covered it.
    async fn make_durable(&self, revision: u64) -> Result<(), tonic::Status> {
        let mut durable = self.durable.lock().await;
        if *durable >= revision {
            return Ok(());
        }
        let upto = *self.inserted.lock().unwrap();
        let (db, data_file) = (self.db.clone(), self.data_file.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            db.flush().map_err(std::io::Error::other)?;
            File::open(&data_file)?.sync_data()
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        *durable = upto;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The counts, in the metric names the bench reads from the registry.
    fn metrics(&self) -> String {
        let mut text = String::new();
        for ((method, _), answered) in METHODS.iter().zip(&self.answered) {
            text += &format!(
                "grpc_server_handled_total{{grpc_service=\"{SERVICE}\",grpc_method=\"{method}\",grpc_code=\"Ok\"}} {}\n",
                answered.load(Ordering::Relaxed)
            );
        }
        text + &format!("floor_syncs_total {}\n", self.syncs.load(Ordering::Relaxed))
    }
}

fn internal(e: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::internal(e.to_string())
}

#[derive(Clone)]
struct FloorService(Arc<Floor>);

impl tonic::server::NamedService for FloorService {
    const NAME: &'static str = SERVICE;
}

/// One method, as tonic's generated servers wrap theirs.
struct Method(Arc<Floor>, Work, usize);

impl tonic::server::UnaryService<CreateAgreementRequest> for Method {
    type Response = Agreement;
    type Future = BoxFuture<tonic::Response<Agreement>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<CreateAgreementRequest>) -> Self::Future {
        let (floor, work, index) = (self.0.clone(), self.1, self.2);
        Box::pin(async move {
            let answer = floor.create(work, request.into_inner()).await?;
            floor.answered[index].fetch_add(1, Ordering::Relaxed);
            Ok(tonic::Response::new(answer))
        })
    }
}

impl<B> Service<http::Request<B>> for FloorService
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().rsplit('/').next().unwrap_or_default();
        let Some(index) = METHODS.iter().position(|(name, _)| *name == method) else {
            let status = tonic::Status::unimplemented(format!("{SERVICE} has no method {method}"));
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let method = Method(self.0.clone(), METHODS[index].1, index);
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(method, request).await)
        })
    }
}

/// Serves the floor on a fresh sled database in `dir` until killed; prints
/// its addresses on stderr the way the registry logs them.
pub fn serve(dir: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        // The registry's engine settings (src/store/sled), but the default cache.
        let db = sled::Config::new().path(dir).mode(sled::Mode::HighThroughput).open().unwrap();
        let floor = Arc::new(Floor {
            db,
            data_file: dir.join("db"),
            inserted: Mutex::new(0),
            durable: tokio::sync::Mutex::new(0),
            hot_turn: tokio::sync::Mutex::new(()),
            answered: Default::default(),
            syncs: AtomicU64::new(0),
        });
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = |listener: &tokio::net::TcpListener| -> SocketAddr { listener.local_addr().unwrap() };
        eprintln!("serving Prometheus metrics address={}", address(&metrics));
        eprintln!("serving {SERVICE} address={}", address(&grpc));
        tokio::spawn(serve_metrics(metrics, floor.clone()));
        tonic::transport::Server::builder()
            .add_service(FloorService(floor))
            // The registry's transport (src/server/mod.rs): without TCP_NODELAY
            // an answer waits for the client's delayed ACK.
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(grpc)
                    .with_nodelay(Some(true))
                    .map(|accepted| accepted.map(cooperation_registry::server::coalesce::Coalesced::new)),
            )
            .await
            .unwrap();
    });
}

/// Answers any request on `listener` with the counts, then closes.
async fn serve_metrics(listener: tokio::net::TcpListener, floor: Arc<Floor>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    while let Ok((mut stream, _)) = listener.accept().await {
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request).await;
        let body = floor.metrics();
        let head = format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n", body.len());
        let _ = stream.write_all((head + &body).as_bytes()).await;
    }
}

/// Sets the floor's targets beside a durable create and update: keeps the
/// ceiling, CreateAgreement, the hot UpdateAgreement and etcd's Put of
/// `targets`, and puts the floor's
/// methods answering `create` (their bodies written to `dir`) before etcd's
/// Put (the last target when `etcd`).
pub fn use_targets(targets: &mut Vec<Target>, create: &CreateAgreementRequest, dir: &Path, etcd: bool) {
    let kept = ["Health/Check", "CreateAgreement", "UpdateAgreement (fsync)", "etcd Put"];
    targets.retain(|t| kept.iter().any(|n| t.name.starts_with(n)));
    // The smallest answer: the agreement as named, its times with no nanoseconds.
    let mut answer = create.agreement.clone().expect("an agreement to create");
    answer.name = format!("agreements/{}", uuid::Uuid::now_v7());
    let time = prost_types::Timestamp { seconds: 1_800_000_000, nanos: 0 };
    (answer.create_time, answer.update_time) = (Some(time), Some(time));
    let at = targets.len() - usize::from(etcd);
    let create_body = frame(create);
    let size = response_frame_len(&answer);
    let floor_targets = [
        ("floor: decode only", "Decode", Check::ResponseBytes(size)),
        ("floor: + 2 sled inserts", "Insert", Check::ResponseBytes(size)),
        ("floor: + 2 inserts, fsync", "InsertFsync", Check::FloorWrite(size)),
        (BATCH_TARGET, "BatchFsync", Check::FloorWrite(size)),
        ("floor: + index keys, fsync", "IndexedFsync", Check::FloorWrite(size)),
        (HOT_TARGET, "HotFsync", Check::FloorWrite(size)),
    ]
    .map(|(name, method, check)| Target {
        name,
        peer: Peer::Floor,
        path: path(method),
        body: write_body(dir, &format!("floor-{method}.bin"), &create_body),
        scattered: Vec::new(),
        check,
    });
    targets.splice(at..at, floor_targets);
}
