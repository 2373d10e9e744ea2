//! What a listener allows: its admission limit, stall timeout and unknown-stream rule ([`Policy`]), whether
//! and how SQL statements may run over the network ([`Access`], [`check_statement`]), and the marker that lets
//! arrowport's own administrative SQL functions refuse statements that came over the network.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::catalog::access::Principal;
use crate::engine::error::IngestError;

/// How long a request may send nothing before it is rolled back, by default (`stall_timeout` changes it). A
/// stalled client would otherwise hold a writer, and the DuckDB thread reading its stream, indefinitely.
pub const STALL_LIMIT: Duration = Duration::from_secs(120);

/// Requests one listener takes at once by default (`max_concurrent_requests` changes it); more are refused
/// at once with "busy" rather than queued.
pub const MAX_CONCURRENT_REQUESTS: usize = 64;

/// A listener's rules for the requests it hands the core.
#[derive(Debug)]
pub struct Policy {
    /// Refuse stream names without a mapping (`unknown_streams := 'reject'`).
    pub reject_unknown: bool,
    /// How long a request may send nothing.
    pub stall_timeout: Duration,
    max_concurrent: usize,
    admission: Arc<Semaphore>,
    /// How long idempotency keys are kept (`idempotency_window`).
    pub idempotency_window: Duration,
}

/// How long idempotency keys are kept by default: 24 hours.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

impl Policy {
    pub fn new(reject_unknown: bool, stall_timeout: Duration, max_concurrent: usize) -> Policy {
        Policy {
            reject_unknown,
            stall_timeout,
            max_concurrent,
            admission: Arc::new(Semaphore::new(max_concurrent)),
            idempotency_window: IDEMPOTENCY_WINDOW,
        }
    }

    /// The same rules, keeping idempotency keys for `window`.
    pub fn with_idempotency_window(mut self, window: Duration) -> Policy {
        self.idempotency_window = window;
        self
    }

    /// A place among the listener's concurrent requests, or "busy" at once.
    pub(crate) fn admit(&self) -> Result<OwnedSemaphorePermit, IngestError> {
        Arc::clone(&self.admission).try_acquire_owned().map_err(|_| IngestError::Overloaded(self.max_concurrent))
    }
}

impl Default for Policy {
    fn default() -> Policy {
        Policy::new(false, STALL_LIMIT, MAX_CONCURRENT_REQUESTS)
    }
}

/// What a listener lets clients do with SQL (`sql := ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No statements; metadata calls and ingest only.
    Off,
    /// Only statements that read, each in a read-only transaction.
    ReadOnly,
    ReadWrite,
}

impl Access {
    pub fn parse(text: &str) -> Result<Access, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "off" | "none" => Ok(Access::Off),
            "read_only" => Ok(Access::ReadOnly),
            "read_write" => Ok(Access::ReadWrite),
            other => Err(format!("invalid value for option sql: {other:?} (allowed: off, read_only, read_write)")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Access::Off => "off",
            Access::ReadOnly => "read_only",
            Access::ReadWrite => "read_write",
        }
    }
}

/// Names a statement sent over the network may not contain: the functions that start and stop listeners (from a
/// writer thread they would wait for that very thread), and the scratch database the writers' scan views live
/// in (detaching it would break every writer).
const FORBIDDEN_NAMES: [&str; 3] = ["arrowport_stop", "arrowport_listen", "arrowport_scratch"];

pub fn check_statement(sql: &str, access: Access, principal: &Principal) -> Result<(), IngestError> {
    if access == Access::Off {
        return Err(IngestError::Denied(
            "SQL statements are off on this listener; start it with sql := 'read_only' or sql := 'read_write' to allow them".into(),
        ));
    }
    if !principal.may_choose_target() {
        return Err(IngestError::Denied("a token limited to streams cannot run SQL statements".into()));
    }
    let lower = sql.to_ascii_lowercase();
    if let Some(f) = FORBIDDEN_NAMES.iter().find(|f| lower.contains(*f)) {
        return Err(IngestError::Denied(format!("{f} cannot be used over the network; use it in the host's own session")));
    }
    Ok(())
}

thread_local! {
    /// Set while a writer thread runs a statement that came over the network.
    static REMOTE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` marked as executing a statement sent over the network (see [`refuse_if_remote`]).
pub fn as_remote<T>(f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            REMOTE.with(|r| r.set(false));
        }
    }
    REMOTE.with(|r| r.set(true));
    let _reset = Reset;
    f()
}

/// arrowport's own administrative SQL functions call this: they manage listeners, streams and tokens, and must
/// not be reachable through SQL that a client sent over the network (a token could mint itself a better one).
pub fn refuse_if_remote(function: &str) -> Result<(), String> {
    if REMOTE.with(|r| r.get()) {
        Err(format!("{function} cannot be called over the network; call it in the host's own session"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_parses() {
        assert_eq!(Access::parse("READ_ONLY"), Ok(Access::ReadOnly));
        assert_eq!(Access::parse("read_write"), Ok(Access::ReadWrite));
        assert_eq!(Access::parse("off"), Ok(Access::Off));
        assert!(Access::parse("write").unwrap_err().contains("allowed: off, read_only, read_write"));
    }

    #[test]
    fn statements_are_checked_before_they_reach_duckdb() {
        let anon = Principal::Anonymous;
        assert!(check_statement("SELECT 1", Access::ReadOnly, &anon).is_ok());
        assert!(check_statement("SELECT 1", Access::Off, &anon).unwrap_err().to_string().contains("sql := 'read_only'"));
        let e = check_statement("select ARROWPORT_STOP()", Access::ReadWrite, &anon).unwrap_err();
        assert!(e.to_string().starts_with("arrowport_stop cannot be used over the network"), "{e}");
        let e = check_statement("DETACH arrowport_scratch", Access::ReadWrite, &anon).unwrap_err();
        assert!(e.to_string().starts_with("arrowport_scratch cannot be used over the network"), "{e}");
        let scoped = Principal::Token {
            name: Arc::from("etl"),
            scope: Arc::new(crate::catalog::access::Scope::Streams(vec!["events".into()])),
        };
        assert!(check_statement("SELECT 1", Access::ReadWrite, &scoped).is_err());
    }
}
