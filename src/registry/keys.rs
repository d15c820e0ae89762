//! Where the registry keeps what it stores. Keys:
//! - `r/{name}`: the record (protobuf, without etag and derived fields);
//! - `v/{revision}/{name}` (revision zero-padded to 20 digits): the record as
//!   the change at `revision` left it, once a later change replaced it. The
//!   change log names the records a change wrote without copying them: a
//!   version is read from `r/` while it is current and from `v/` after (see
//!   `changes::Registry::bodies`), and leaves with its change at compaction;
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

/// What every kept version's key starts with (see `version_key`).
pub(super) const VERSION_PREFIX: &[u8] = b"v/";

/// Where the version of `name` that the change at `revision` wrote is kept
/// once a later change replaces it. Keys sort by revision, so compaction
/// removes a prefix of them.
pub(super) fn version_key(name: &str, revision: u64) -> Vec<u8> {
    format!("v/{revision:020}/{name}").into_bytes()
}

/// The first version key of a revision at or after `revision`.
pub(super) fn versions_from(revision: u64) -> Vec<u8> {
    format!("v/{revision:020}/").into_bytes()
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
