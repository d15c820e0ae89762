//! Where the registry keeps what it stores. Keys:
//! - `r/{name}`: the record (protobuf, without etag and derived fields);
//! - `q/{request_id}`: a request that succeeded, and its answer, for retries
//!   (see `idempotency`);
//! - `meta/registry-schema`: the version of this layout (see `schema`);
//!
//! and sets (store members, packed by the engine):
//! - `e/requests\0` holds the kept answers in the order they expire;
//! - `x/{target}\0` holds `source` while `source` (live) refers to `target`;
//! - `i/{collection}/{path}\0{value}\0` holds the ids of the records with that
//!   value, and `i/{collection}/{path}#words\0{word}\0` those whose text holds
//!   the word: secondary indexes (see `index`).

use super::Kind;

/// What every record's key starts with, before its name.
pub(super) const RECORD_PREFIX: &[u8] = b"r/";

pub(super) fn record_key(name: &str) -> Vec<u8> {
    [RECORD_PREFIX, name.as_bytes()].concat()
}

/// What the keys of all the records of `kind` start with: a record's key is
/// this followed by its id.
pub(super) fn collection_key(kind: &Kind) -> Vec<u8> {
    record_key(&kind.name_of(""))
}

/// The set of the records that refer to `target`.
pub(super) fn referrers_set(target: &str) -> Vec<u8> {
    format!("x/{target}\0").into_bytes()
}
