//! The data: the dataset loaded through the API, and the request bodies
//! h2load sends (gRPC's framing of a message, written to a file).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cooperation_registry::cli::import::import;
use cooperation_registry::pb::cooperation::v1::{self as v1};
use prost::Message;

use crate::common::client::connect;
use crate::common::records::{STATES, agreement_id, engagement_id, numbered_agreement, numbered_engagement};

/// Agreement `i` of the dataset (`numbered_agreement` over the 40 `STATES`).
pub fn agreement(i: usize) -> v1::Agreement {
    numbered_agreement(i, &STATES)
}

/// Loads `count` agreements and `count / 10` engagements through the API as
/// `cooperation-registry import` does (BatchCreate, two batches in flight);
/// returns the name of one agreement of India's.
pub async fn load(addr: SocketAddr, count: usize) -> String {
    let started = Instant::now();
    let named = |name: String, mut record: v1::Agreement| {
        record.name = name;
        record
    };
    let dataset = v1::Dataset {
        agreements: (0..count).map(|i| named(format!("agreements/{}", agreement_id(i)), agreement(i))).collect(),
        engagements: (0..count)
            .step_by(10)
            .map(|i| v1::Engagement {
                name: format!("engagements/{}", engagement_id(i)),
                ..numbered_engagement(i, &STATES)
            })
            .collect(),
        ..Default::default()
    };
    let report = import(connect(addr).await, dataset, false).await.expect("the dataset loads");
    let elapsed = started.elapsed();
    eprintln!(
        "loaded {count} agreements and {} engagements in {:.1} s ({:.0} records/s)",
        count.div_ceil(10),
        elapsed.as_secs_f64(),
        report.created as f64 / elapsed.as_secs_f64()
    );
    format!("agreements/{}", agreement_id(0))
}

/// `wanted` indexes of the dataset's `count` agreements, other than the
/// first (which the hot update and the Get name), scattered over it as
/// random records would be but the same in every run of the bench; all
/// different while the dataset has that many.
pub fn scattered(count: usize, wanted: usize) -> Vec<usize> {
    assert!(count > 1, "records besides the first to update");
    let others = count - 1;
    let mut seen = std::collections::HashSet::new();
    let mut indexes = Vec::with_capacity(wanted);
    // splitmix64's steps, from a fixed seed.
    let mut state: u64 = 0x5eed;
    while indexes.len() < wanted {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let index = 1 + ((z ^ (z >> 31)) % others as u64) as usize;
        if seen.insert(index) || seen.len() >= others {
            indexes.push(index);
        }
    }
    indexes
}

/// The path of a method of cooperation.v1.AgreementService.
pub fn agreements(method: &str) -> String {
    format!("/cooperation.v1.AgreementService/{method}")
}

/// A message in gRPC's length-prefixed framing: what h2load sends as the body.
pub fn frame(message: &impl Message) -> Vec<u8> {
    let bytes = message.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    framed.extend_from_slice(&bytes);
    framed
}

/// The bytes of one response frame for a unary call.
pub fn response_frame_len(response: &impl Message) -> u64 {
    5 + response.encoded_len() as u64
}

/// Writes a request body to `dir/name` for h2load to read.
pub fn write_body(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// etcd's RangeRequest, PutRequest and CompactionRequest (etcdserverpb), the
/// fields used here.
#[derive(Clone, PartialEq, Message)]
pub struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bool, tag = "7")]
    pub serializable: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CompactionRequest {
    #[prost(int64, tag = "1")]
    pub revision: i64,
    #[prost(bool, tag = "2")]
    pub physical: bool,
}
