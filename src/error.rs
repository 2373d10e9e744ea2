//! One classification of failures, and its two tables: to gRPC status codes and to HTTP statuses.
//!
//! Each layer has its own error enum (`DbError` in `ffi`, `IngestError` in `ingest`, `ListenError` in
//! `server`) with messages written for users; each classifies itself with a [`Code`]. Only the protocol edges
//! (`flight`, later `rest`) turn a `Code` into a wire status, through the two functions here. Both matches name
//! every variant, so a new `Code` does not compile until both edges decide.

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
            Code::Internal => "internal",
        }
    }
}

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
        Code::Busy | Code::Stopping => 503,
        Code::Timeout => 408,
        Code::Unauthenticated => 401,
        Code::Denied => 403,
        Code::Internal => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Code; 12] = [
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
        Code::Internal,
    ];

    #[test]
    fn every_code_has_a_distinct_name() {
        let mut names: Vec<_> = ALL.iter().map(|c| c.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
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
}
