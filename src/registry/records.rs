//! What the registry keeps beside the records: change-log entries and the
//! answers to requests with a request_id. Private encodings, not part of the API.

use prost_types::Timestamp;

/// What a change did to a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum ChangeKind {
    Unspecified = 0,
    Created = 1,
    Updated = 2,
    Deleted = 3,
    Undeleted = 4,
}

/// One record changed by a revision.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredEvent {
    #[prost(enumeration = "ChangeKind", tag = "1")]
    pub kind: i32,
    #[prost(string, tag = "2")]
    pub name: String,
    /// The record after the change, in entries of data dirs of schema 5 and
    /// before. Empty in entries written since: the record after the change
    /// is at its own key while it is current, then at its version key
    /// (`keys::version_key`), so the log holds no second copy of it.
    #[prost(bytes = "vec", tag = "3")]
    pub record: Vec<u8>,
    /// The revision of the record's previous version (0 for a creation): the
    /// link that lets a record's history be read from the change log.
    #[prost(uint64, tag = "4")]
    pub previous_revision: u64,
}

impl StoredEvent {
    /// The event of a change to `name` that left the record at its key
    /// (see `record`).
    pub fn new(kind: ChangeKind, name: String, previous_revision: u64) -> StoredEvent {
        StoredEvent { kind: kind as i32, name, record: Vec::new(), previous_revision }
    }
}

/// The change-log entry of one revision.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredChange {
    /// Who made the change: the caller's identity (`anonymous` without one),
    /// or a `system:` actor for the registry's own jobs.
    #[prost(string, tag = "1")]
    pub actor: String,
    #[prost(message, optional, tag = "2")]
    pub commit_time: Option<Timestamp>,
    #[prost(message, repeated, tag = "3")]
    pub events: Vec<StoredEvent>,
}

impl StoredChange {
    /// The change-log entry of the registry's own bookkeeping by `actor`
    /// (an upgrade, a job's lease, expiry): no record changes.
    pub fn bookkeeping(actor: &str) -> Vec<u8> {
        let change = StoredChange { actor: actor.into(), commit_time: Some(super::now()), events: Vec::new() };
        prost::Message::encode_to_vec(&change)
    }
}

/// A request with a request_id that succeeded, and its answer (see
/// `idempotency`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredRequest {
    /// The gRPC method, so an id reused for another method is refused.
    #[prost(string, tag = "1")]
    pub method: String,
    /// Fingerprint of the whole request, so an id reused for another request is refused.
    #[prost(uint64, tag = "2")]
    pub fingerprint: u64,
    #[prost(string, tag = "3")]
    pub name: String,
    /// The record after the change: the answer a retry gets. Empty only for an
    /// entry of an older data dir whose change had left the change log.
    #[prost(bytes = "vec", tag = "4")]
    pub answer: Vec<u8>,
    /// When the request succeeded; it expires one request retention later.
    #[prost(message, optional, tag = "5")]
    pub commit_time: Option<Timestamp>,
    /// The revision of the change; 0 when it is this entry's own mod revision
    /// (the entry was written with the change, not by an upgrade).
    #[prost(uint64, tag = "6")]
    pub revision: u64,
}
