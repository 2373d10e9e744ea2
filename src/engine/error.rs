//! One classification of failures, and its two tables: to gRPC status codes and to HTTP statuses.
//!
//! [`EngineError`] is the engine's error, with messages written for clients; it classifies itself with a
//! [`Code`], and so do the errors of the layers around it (`AuthError` in the gate, `ListenError` in the
//! listener). Only the wire edge (`proto::status`) turns a `Code` into a gRPC status or an HTTP response,
//! through the two tables here. Both matches name every variant, so a new `Code` does not compile until both
//! edges decide.

use std::time::Duration;

use crate::duck::{DbError, DbErrorKind};

/// What kind of failure, as a client needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Malformed input: bad IPC, bad descriptor, bad JSON.
    InvalidInput,
    /// Wrong content type or encoding.
    UnsupportedMedia,
    /// Unknown stream or table.
    NotFound,
    /// The table exists and the request said it must not (Flight SQL ingest, mode `create`).
    AlreadyExists,
    /// The data does not fit the target (schema conflict, constraint).
    Conflict,
    /// Over a size limit.
    TooLarge,
    /// No capacity right now; retry later.
    Busy,
    /// The listener is shutting down.
    Stopping,
    /// The client sent nothing for too long.
    Timeout,
    /// No or bad credentials.
    Unauthenticated,
    /// Credentials that do not allow this.
    Denied,
    /// A call or service arrowport does not offer.
    Unimplemented,
    /// Another request with the same idempotency key is in progress.
    InProgress,
    /// The commit lost a race with another writer of a shared catalog (a DuckLake's); nothing was written, a retry
    /// can succeed.
    Contended,
    /// A well-formed request that contradicts what it refers to (an idempotency key used with another stream).
    Unprocessable,
    /// A fault of ours or of DuckDB that the client cannot fix.
    Internal,
}

impl Code {
    /// Stable snake_case name, used in JSON error bodies and logs.
    pub fn name(self) -> &'static str {
        match self {
            Code::InvalidInput => "invalid_input",
            Code::UnsupportedMedia => "unsupported_media_type",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::Conflict => "schema_conflict",
            Code::TooLarge => "too_large",
            Code::Busy => "busy",
            Code::Stopping => "stopping",
            Code::Timeout => "timeout",
            Code::Unauthenticated => "unauthenticated",
            Code::Denied => "permission_denied",
            Code::Unimplemented => "unimplemented",
            Code::InProgress => "in_progress",
            Code::Contended => "commit_conflict",
            Code::Unprocessable => "unprocessable",
            Code::Internal => "internal",
        }
    }

    /// The code of a name ([`Code::name`]), as a client reads it from an answer.
    pub fn from_name(name: &str) -> Option<Code> {
        ALL_CODES.into_iter().find(|c| c.name() == name)
    }

    /// Whether the same request can succeed when tried again later (nothing was written).
    pub fn is_transient(self) -> bool {
        matches!(self, Code::Busy | Code::Stopping | Code::Contended | Code::InProgress | Code::Timeout)
    }
}

/// Every code.
pub const ALL_CODES: [Code; 16] = [
    Code::Contended,
    Code::InvalidInput,
    Code::UnsupportedMedia,
    Code::NotFound,
    Code::AlreadyExists,
    Code::Conflict,
    Code::TooLarge,
    Code::Busy,
    Code::Stopping,
    Code::Timeout,
    Code::Unauthenticated,
    Code::Denied,
    Code::Unimplemented,
    Code::InProgress,
    Code::Unprocessable,
    Code::Internal,
];

/// The gRPC metadata key that carries a failure's code name (as REST's `error.code` does), so that clients
/// decide on codes, not on messages.
pub const GRPC_CODE_KEY: &str = "arrowport-error-code";

/// The gRPC status code for a failure.
pub fn grpc_code(code: Code) -> tonic::Code {
    match code {
        Code::InvalidInput | Code::UnsupportedMedia => tonic::Code::InvalidArgument,
        Code::NotFound => tonic::Code::NotFound,
        Code::AlreadyExists => tonic::Code::AlreadyExists,
        Code::Conflict => tonic::Code::FailedPrecondition,
        Code::TooLarge | Code::Busy => tonic::Code::ResourceExhausted,
        Code::Stopping => tonic::Code::Unavailable,
        Code::Timeout => tonic::Code::DeadlineExceeded,
        Code::Unauthenticated => tonic::Code::Unauthenticated,
        Code::Denied => tonic::Code::PermissionDenied,
        Code::Unimplemented => tonic::Code::Unimplemented,
        Code::InProgress | Code::Contended => tonic::Code::Aborted,
        Code::Unprocessable => tonic::Code::InvalidArgument,
        Code::Internal => tonic::Code::Internal,
    }
}

/// The HTTP status for a failure.
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::InvalidInput => 400,
        Code::UnsupportedMedia => 415,
        Code::NotFound => 404,
        Code::AlreadyExists => 409,
        Code::Conflict => 409,
        Code::TooLarge => 413,
        Code::Busy | Code::Stopping | Code::Contended => 503,
        Code::Timeout => 408,
        Code::Unauthenticated => 401,
        Code::Denied => 403,
        Code::Unimplemented => 501,
        Code::InProgress => 409,
        Code::Unprocessable => 422,
        Code::Internal => 500,
    }
}

/// Why a request did not commit. Messages are written for the client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// DuckDB refused a statement sent over the network (its text verbatim).
    #[error("{0}")]
    Sql(DbError),
    #[error("arrowport is stopping; the request was rolled back and nothing was written")]
    Stopping,
    #[error("the client went away before the end of the stream; nothing was written")]
    Disconnected,
    #[error("the client sent nothing for {0:?}; the request was rolled back and nothing was written")]
    Stalled(Duration),
    #[error("all {0} writers are busy; retry later")]
    Busy(usize),
    #[error("the statement ran longer than statement_timeout ({0:?}) and was interrupted")]
    TimedOut(Duration),
    #[error(
        "the statement was interrupted: while it ran the host's process grew to {resident} bytes resident, over its \
         memory limit of {limit} bytes (sql_memory_limit)"
    )]
    OverMemory { resident: u64, limit: u64 },
    #[error("{0} requests are already in flight on this listener (max_concurrent_requests); retry later")]
    Overloaded(usize),
    #[error(
        "the host's memory budget ({limit} bytes, memory_budget) has no room now for {bytes} more bytes of this \
         request; retry later"
    )]
    OverBudget { bytes: usize, limit: usize },
    #[error("a request with idempotency key {0:?} is in progress; ask for its outcome, or retry when it has ended")]
    InProgress(String),
    #[error("idempotency key {key:?} belongs to stream {stream:?}; a key names one request of one stream")]
    KeyReused { key: String, stream: String },
    #[error("{0}")]
    Denied(String),
    /// DuckDB failed in arrowport's own work (landing a request, reading the catalog).
    #[error("{0}")]
    Db(DbError),
    #[error("internal error")]
    Internal(String),
}

impl EngineError {
    pub fn code(&self) -> Code {
        match self {
            EngineError::BadInput(_) | EngineError::Unsupported(_) => Code::InvalidInput,
            EngineError::TooLarge(_) => Code::TooLarge,
            EngineError::Conflict(_) => Code::Conflict,
            EngineError::NotFound(_) => Code::NotFound,
            EngineError::AlreadyExists(_) => Code::AlreadyExists,
            EngineError::Sql(e) if e.is(DbErrorKind::Catalog) => Code::NotFound,
            EngineError::Sql(e) if e.is(DbErrorKind::OutOfMemory) => Code::TooLarge,
            EngineError::Sql(_) => Code::InvalidInput,
            EngineError::Stopping => Code::Stopping,
            EngineError::Disconnected => Code::InvalidInput,
            EngineError::Stalled(_) | EngineError::TimedOut(_) => Code::Timeout,
            EngineError::OverMemory { .. } => Code::TooLarge,
            EngineError::Busy(_) | EngineError::Overloaded(_) | EngineError::OverBudget { .. } => Code::Busy,
            EngineError::InProgress(_) => Code::InProgress,
            EngineError::KeyReused { .. } => Code::Unprocessable,
            EngineError::Denied(_) => Code::Denied,
            EngineError::Db(e) => db_code(e),
            EngineError::Internal(_) => Code::Internal,
        }
    }
}

/// What a DuckDB failure in arrowport's own work means for the client, by its kind: data that does not fit the
/// target (or a target that does not take it) is the client's to fix, a lost commit race is worth a retry.
fn db_code(e: &DbError) -> Code {
    if is_commit_conflict(e) {
        return Code::Contended;
    }
    match e.kind {
        DbErrorKind::Constraint
        | DbErrorKind::Conversion
        | DbErrorKind::InvalidInput
        | DbErrorKind::Catalog
        | DbErrorKind::Binder
        | DbErrorKind::Parser => Code::Conflict,
        DbErrorKind::OutOfMemory => Code::Busy,
        _ => Code::Internal,
    }
}

/// Whether DuckDB refused a commit because another writer of a shared catalog committed first (DuckLake, after
/// its own retries): nothing was written.
pub fn is_commit_conflict(e: &DbError) -> bool {
    // DuckLake reports any failure of its commit as one transaction error, "Failed to commit DuckLake
    // transaction" (a type its catalog database lacks too); only these causes, which DuckDB gives no kind of
    // their own, are races.
    e.is(DbErrorKind::Transaction)
        && (e.message.contains("Transaction conflict")
            || e.message.contains("duplicate key value violates unique constraint \"ducklake_snapshot"))
}

impl EngineError {
    /// Whether this failure is a lost commit race (see [`is_commit_conflict`]).
    pub fn is_commit_conflict(&self) -> bool {
        matches!(self, EngineError::Db(e) if is_commit_conflict(e))
    }

    /// A DuckDB error in arrowport's own work (landing a request, reading the catalog).
    pub fn db(e: DbError) -> EngineError {
        EngineError::Db(e)
    }

    /// DuckDB's refusal of a statement sent over the network: the client's to fix, DuckDB's text verbatim.
    pub fn sql(e: DbError) -> EngineError {
        EngineError::Sql(e)
    }
}

impl From<crate::panic::Panicked> for EngineError {
    fn from(p: crate::panic::Panicked) -> EngineError {
        EngineError::Internal(p.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Code; 16] = ALL_CODES;

    #[test]
    fn every_code_has_a_distinct_name() {
        let mut names: Vec<_> = ALL.iter().map(|c| c.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        for c in ALL {
            assert_eq!(Code::from_name(c.name()), Some(c));
        }
    }

    #[test]
    fn a_lost_commit_race_is_worth_a_retry() {
        let e = EngineError::Db(DbError::from_text(
            "TransactionContext Error: Failed to commit: Failed to commit DuckLake transaction.\nTransaction conflict - attempting to insert",
        ));
        assert!(e.is_commit_conflict());
        assert_eq!(
            (e.code(), grpc_code(e.code()), http_status(e.code())),
            (Code::Contended, tonic::Code::Aborted, 503)
        );
        assert!(!EngineError::Db(DbError::from_text("IO Error: disk full")).is_commit_conflict());
        let not_a_race = "TransactionContext Error: Failed to commit: Failed to commit DuckLake transaction.\nFailed to flush changes into DuckLake: ERROR:  type \"time_ns\" does not exist";
        assert!(!EngineError::Db(DbError::from_text(not_a_race)).is_commit_conflict());
    }

    #[test]
    fn tables_match_the_documented_statuses() {
        assert_eq!(grpc_code(Code::TooLarge), tonic::Code::ResourceExhausted);
        assert_eq!(grpc_code(Code::Conflict), tonic::Code::FailedPrecondition);
        assert_eq!(grpc_code(Code::Stopping), tonic::Code::Unavailable);
        assert_eq!(http_status(Code::Conflict), 409);
        assert_eq!(http_status(Code::TooLarge), 413);
        assert_eq!(http_status(Code::UnsupportedMedia), 415);
        assert_eq!(http_status(Code::Busy), 503);
        assert_eq!(http_status(Code::Internal), 500);
    }

    #[test]
    fn duckdb_errors_are_classified_by_their_class() {
        assert_eq!(
            EngineError::Db(DbError::from_text("Constraint Error: NOT NULL constraint failed")).code(),
            Code::Conflict
        );
        assert_eq!(EngineError::Db(DbError::from_text("IO Error: disk full")).code(), Code::Internal);
    }
}
