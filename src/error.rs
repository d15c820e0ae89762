//! The one error type of the service and its mapping to `tonic::Status` with
//! google.rpc details (AIP-193): every error carries an `ErrorInfo` with a reason;
//! bad input carries a `BadRequest` naming every bad field.

use std::collections::HashMap;

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

use crate::store::StoreError;

/// `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "cooperationregistry.io";

/// One bad field of a request: `field` is its path in the request
/// (`agreement.signatories[0].party`), `description` says which rule it breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// One reason a precondition failed, for `PreconditionFailure` details.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreconditionViolation {
    /// A reason in UPPER_SNAKE_CASE, e.g. `REFERENCED_BY`.
    pub kind: String,
    /// The resource the violation is about.
    pub subject: String,
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The request is malformed; nothing was changed.
    InvalidArgument { violations: Vec<FieldViolation> },
    /// The named resource does not exist.
    NotFound { resource_type: String, name: String },
    /// A resource with this name exists already (possibly soft-deleted).
    AlreadyExists { resource_type: String, name: String },
    /// The etag in the request is not the stored one.
    EtagMismatch { name: String },
    /// Concurrent writes kept changing what this request depended on.
    Conflict { name: String },
    /// The request is well-formed but the stored state forbids it.
    FailedPrecondition { reason: String, message: String, violations: Vec<PreconditionViolation> },
    /// A revision the change log no longer holds (compacted).
    OutOfRange { message: String, oldest_revision: u64 },
    /// The caller's deadline passed before the work was done; nothing was changed.
    DeadlineExceeded { message: String },
    /// The disk of the data dir is full: the write was not acknowledged.
    StorageFull,
    /// The service cannot serve now (closed store, shutting down); retry later.
    Unavailable { message: String },
    /// A fault inside the service; the details go to the log, not to the caller.
    Internal { detail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// One bad field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Error {
        Error::InvalidArgument {
            violations: vec![FieldViolation { field: field.into(), description: description.into() }],
        }
    }

    pub fn internal(detail: impl std::fmt::Display) -> Error {
        Error::Internal { detail: detail.to_string() }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::Closed => Error::Unavailable { message: "the registry is shutting down".into() },
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "the store is unavailable");
                Error::Unavailable { message: "the store is unavailable for now; retry".into() }
            }
            StoreError::Full(detail) => {
                tracing::error!(%detail, "the data dir's disk is full");
                Error::StorageFull
            }
            // A view of the store held past a compaction of its revision (an
            // export on etcd with change-log retention): a new call reads anew.
            StoreError::Compacted { first } => Error::OutOfRange {
                message: "the revision this call reads was compacted while it ran; call again".into(),
                oldest_revision: first,
            },
            other => Error::internal(other),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Displayed to operators (logs, the command line), so an internal
        // error shows its detail, which callers never see.
        if let Error::Internal { detail } = self {
            return write!(f, "internal error: {detail}");
        }
        let status = tonic::Status::from(self.clone());
        write!(f, "{:?}: {}", status.code(), status.message())
    }
}

impl std::error::Error for Error {}

/// Collects every violation of a request before answering, so the caller learns
/// about all of them at once.
#[derive(Clone, Debug, Default)]
pub struct Violations {
    list: Vec<FieldViolation>,
}

impl Violations {
    pub fn new() -> Violations {
        Violations::default()
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.list.push(FieldViolation { field: field.into(), description: description.into() });
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn extend(&mut self, other: Violations) {
        self.list.extend(other.list);
    }

    /// `Ok` when nothing was found, else INVALID_ARGUMENT with them all.
    pub fn into_result(self) -> Result<()> {
        if self.list.is_empty() { Ok(()) } else { Err(Error::InvalidArgument { violations: self.list }) }
    }

    /// Prefixes every field path, e.g. with the request field holding the resource.
    pub fn prefixed(self, prefix: &str) -> Violations {
        Violations {
            list: self.list.into_iter().map(|v| FieldViolation { field: join_path(prefix, &v.field), ..v }).collect(),
        }
    }
}

/// `a` + `.` + `b`, where either may be empty.
pub fn join_path(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}.{b}"),
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> tonic::Status {
        let mut details = ErrorDetails::new();
        let info = |details: &mut ErrorDetails, reason: &str, metadata: &[(&str, &str)]| {
            let metadata: HashMap<String, String> =
                metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            details.set_error_info(reason, ERROR_DOMAIN, metadata);
        };
        let (code, message) = match error {
            Error::InvalidArgument { violations } => {
                info(&mut details, "INVALID_REQUEST", &[]);
                let summary = violations
                    .iter()
                    .map(|v| {
                        if v.field.is_empty() {
                            v.description.clone()
                        } else {
                            format!("{}: {}", v.field, v.description)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                for v in violations {
                    details.add_bad_request_violation(v.field, v.description);
                }
                (Code::InvalidArgument, format!("invalid request: {summary}"))
            }
            Error::NotFound { resource_type, name } => {
                info(&mut details, "RESOURCE_NOT_FOUND", &[("name", &name)]);
                details.set_resource_info(&resource_type, &name, "", "no such resource");
                (Code::NotFound, format!("{name} does not exist"))
            }
            Error::AlreadyExists { resource_type, name } => {
                info(&mut details, "RESOURCE_ALREADY_EXISTS", &[("name", &name)]);
                details.set_resource_info(&resource_type, &name, "", "already exists");
                (
                    Code::AlreadyExists,
                    format!("{name} already exists (possibly soft-deleted: see show_deleted, Undelete)"),
                )
            }
            Error::EtagMismatch { name } => {
                info(&mut details, "ETAG_MISMATCH", &[("name", &name)]);
                (Code::Aborted, format!("{name} was changed since the etag given was read; get it again and retry"))
            }
            Error::Conflict { name } => {
                info(&mut details, "CONCURRENT_MODIFICATION", &[("name", &name)]);
                (Code::Aborted, format!("{name} or a record it refers to kept changing during the request; retry"))
            }
            Error::FailedPrecondition { reason, message, violations } => {
                info(&mut details, &reason, &[]);
                for v in violations {
                    details.add_precondition_failure_violation(v.kind, v.subject, v.description);
                }
                (Code::FailedPrecondition, message)
            }
            Error::OutOfRange { message, oldest_revision } => {
                // (0: the store did not say which revision is its oldest.)
                let oldest = oldest_revision.to_string();
                let metadata: &[(&str, &str)] = match oldest_revision {
                    0 => &[],
                    _ => &[("oldest_revision", &oldest)],
                };
                info(&mut details, "REVISION_COMPACTED", metadata);
                (Code::OutOfRange, message)
            }
            Error::DeadlineExceeded { message } => {
                info(&mut details, "DEADLINE_EXCEEDED", &[]);
                (Code::DeadlineExceeded, message)
            }
            Error::StorageFull => {
                info(&mut details, "STORAGE_FULL", &[]);
                (
                    Code::ResourceExhausted,
                    "the server's disk is full: this write was not acknowledged and the server is stopping; \
                     what was acknowledged before is safe"
                        .to_string(),
                )
            }
            Error::Unavailable { message } => {
                info(&mut details, "UNAVAILABLE", &[]);
                (Code::Unavailable, message)
            }
            Error::Internal { detail } => {
                tracing::error!(%detail, "internal error");
                info(&mut details, "INTERNAL", &[]);
                (Code::Internal, "internal error; the server log has the details".to_string())
            }
        };
        tonic::Status::with_error_details(code, message, details)
    }
}

#[cfg(test)]
mod tests {
    use super::Error;
    use crate::store::StoreError;

    /// A store that cannot serve for now answers UNAVAILABLE, which clients
    /// retry, without its detail; one that failed answers INTERNAL.
    #[test]
    fn store_errors_keep_the_difference_between_retry_and_failure() {
        let unavailable = tonic::Status::from(Error::from(StoreError::Unavailable("no quorum at 10.0.0.7".into())));
        assert_eq!(unavailable.code(), tonic::Code::Unavailable);
        assert!(!unavailable.message().contains("10.0.0.7"), "{}", unavailable.message());
        let failed = tonic::Status::from(Error::from(StoreError::Storage("io error".into())));
        assert_eq!(failed.code(), tonic::Code::Internal);
        assert_eq!(tonic::Status::from(Error::from(StoreError::Closed)).code(), tonic::Code::Unavailable);
    }

    /// A read of a revision compacted meanwhile answers OUT_OF_RANGE, saying
    /// to call again, with the oldest revision when the store knows it.
    #[test]
    fn a_compacted_revision_is_out_of_range() {
        use tonic_types::StatusExt;
        for (first, oldest) in [(42, Some("42")), (0, None)] {
            let status = tonic::Status::from(Error::from(StoreError::Compacted { first }));
            assert_eq!(status.code(), tonic::Code::OutOfRange);
            assert!(status.message().contains("call again"), "{}", status.message());
            let info = status.get_details_error_info().expect("an ErrorInfo");
            assert_eq!(info.reason, "REVISION_COMPACTED");
            assert_eq!(info.metadata.get("oldest_revision").map(String::as_str), oldest);
        }
    }
}
