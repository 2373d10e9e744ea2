//! What a listener allows: its admission limit, stall timeout and unknown-stream rule ([`Policy`]), whether
//! and how SQL statements may run over the network ([`Access`], [`check_statement`]), and the gate that lets
//! arrowport's own administrative SQL functions refuse statements that came over the network ([`admit_admin`]).

use std::cell::Cell;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::catalog::access::Principal;
use crate::catalog::registry::{OWN_SCHEMA, split_qualified};
use crate::engine::error::EngineError;
use crate::engine::sql_tree::{self, Calls};

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
    /// How often a grouped commit that lost a race with another writer of a shared catalog is tried again
    /// (`commit_retries`).
    pub commit_retries: u32,
    /// DuckLake's pause before it sends a grouped commit that lost the race for the lake's next snapshot again
    /// (`commit_retry_wait`; DuckLake's `ducklake_retry_wait_ms`, set on the writer's own connection).
    pub commit_retry_wait: Duration,
    /// How long a group commit waits for more small requests after its first (`group_window`; 0: it takes what
    /// is waiting and commits).
    pub group_window: Duration,
    /// Fields a request's schema may have, nested ones included (`max_columns`).
    pub max_columns: usize,
    /// Bytes a request's schema message may take (`max_schema_bytes`).
    pub max_schema_bytes: usize,
    /// How long a statement sent over the network may run (its result streaming included) before it is
    /// interrupted (`statement_timeout`).
    pub statement_timeout: Duration,
    /// Bytes of SQL text one statement may have (`max_sql_bytes`).
    pub max_sql_bytes: usize,
}

/// How long a statement sent over the network may run by default.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes of SQL text a statement may have by default.
pub const MAX_SQL_BYTES: usize = 1 << 20;

/// Fields a request's schema may have by default.
pub const MAX_COLUMNS: usize = 4096;
/// Bytes a request's schema message may take by default.
pub const MAX_SCHEMA_BYTES: usize = 4 << 20;

/// Retries of a lost commit race by default.
pub const COMMIT_RETRIES: u32 = 5;

/// DuckLake's pause before it retries a grouped commit that lost a race, by default (DuckLake's own: 100 ms). The
/// loser's next attempt reads what changed and commits at once, a short span in which another host seldom commits
/// again; a long pause only leaves the host's turn at the lake idle (see docs/lake.md).
pub const COMMIT_RETRY_WAIT: Duration = Duration::from_millis(10);

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
            commit_retries: COMMIT_RETRIES,
            commit_retry_wait: COMMIT_RETRY_WAIT,
            group_window: Duration::ZERO,
            max_columns: MAX_COLUMNS,
            max_schema_bytes: MAX_SCHEMA_BYTES,
            statement_timeout: STATEMENT_TIMEOUT,
            max_sql_bytes: MAX_SQL_BYTES,
        }
    }

    /// The same rules, with these bounds on statements sent over the network.
    pub fn with_statement_limits(mut self, timeout: Duration, max_sql_bytes: usize) -> Policy {
        self.statement_timeout = timeout;
        self.max_sql_bytes = max_sql_bytes;
        self
    }

    /// The same rules, with these bounds on a request's schema.
    pub fn with_schema_limits(mut self, max_columns: usize, max_schema_bytes: usize) -> Policy {
        self.max_columns = max_columns;
        self.max_schema_bytes = max_schema_bytes;
        self
    }

    /// The same rules, retrying lost commit races `n` times.
    pub fn with_commit_retries(mut self, n: u32) -> Policy {
        self.commit_retries = n;
        self
    }

    /// The same rules, DuckLake pausing `wait` before it retries a grouped commit that lost a race.
    pub fn with_commit_retry_wait(mut self, wait: Duration) -> Policy {
        self.commit_retry_wait = wait;
        self
    }

    /// The same rules, group commits waiting up to `window` for more requests.
    pub fn with_group_window(mut self, window: Duration) -> Policy {
        self.group_window = window;
        self
    }

    /// The same rules, keeping idempotency keys for `window`.
    pub fn with_idempotency_window(mut self, window: Duration) -> Policy {
        self.idempotency_window = window;
        self
    }

    /// A place among the listener's concurrent requests, or "busy" at once.
    pub(crate) fn admit(&self) -> Result<OwnedSemaphorePermit, EngineError> {
        Arc::clone(&self.admission).try_acquire_owned().map_err(|_| EngineError::Overloaded(self.max_concurrent))
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

pub fn check_statement(sql: &str, access: Access, principal: &Principal, policy: &Policy) -> Result<(), EngineError> {
    if sql.len() > policy.max_sql_bytes {
        return Err(EngineError::TooLarge(format!(
            "the statement has {} bytes of SQL, over the listener's limit of {} bytes (max_sql_bytes)",
            sql.len(),
            policy.max_sql_bytes
        )));
    }
    if access == Access::Off {
        return Err(EngineError::Denied(
            "SQL statements are off on this listener; start it with sql := 'read_only' or sql := 'read_write' to allow them".into(),
        ));
    }
    if !principal.may_choose_target() {
        return Err(EngineError::Denied("a token limited to streams cannot run SQL statements".into()));
    }
    let lower = sql.to_ascii_lowercase();
    if creates_code(&lower) {
        return Err(EngineError::Denied(
            "CREATE MACRO / CREATE FUNCTION is not accepted over the network: a macro is code that runs later in the session \
             of whoever calls it (the host's own included), and can shadow a function of the same name"
                .into(),
        ));
    }
    if first_word(&lower) == "import" {
        // DuckDB expands IMPORT DATABASE into the statements of files on the host while it parses, so its text
        // says nothing of what it runs.
        return Err(EngineError::Denied(
            "IMPORT DATABASE is not accepted over the network: it runs statements from files on the host".into(),
        ));
    }
    Ok(())
}

/// The scratch database the writers' scan views live in (one per writer, each bound only on its own thread).
pub const SCRATCH_DB: &str = "arrowport_scratch";

/// A refusal if `name` (a catalog or schema a statement names) is arrowport's own: the schema of the idempotency
/// keys (in any catalog) or the writers' scratch database.
fn own_name(name: &str) -> Result<(), EngineError> {
    if name.eq_ignore_ascii_case(OWN_SCHEMA) {
        return Err(EngineError::Denied(format!(
            "statements sent over the network may not name the schema {OWN_SCHEMA:?}: it holds arrowport's idempotency keys \
             (ask GET /streams/{{stream}}/requests/{{key}} or the Flight action request_status for a key's outcome)"
        )));
    }
    if name.eq_ignore_ascii_case(SCRATCH_DB) {
        return Err(EngineError::Denied(format!(
            "statements sent over the network may not name {SCRATCH_DB:?}: it holds the writers' requests in flight"
        )));
    }
    Ok(())
}

/// Refuses a query (as DuckDB parsed it) whose tables, or the table names it gives `query_table`, are in
/// arrowport's own schema or scratch database.
pub fn check_tables(calls: &Calls) -> Result<(), EngineError> {
    for t in &calls.tables {
        own_name(&t.catalog)?;
        own_name(&t.schema)?;
    }
    for text in &calls.table_texts {
        let parts = split_qualified(text).unwrap_or_else(|_| vec![text.clone()]);
        // A bare name is a table's; the parts before it are a schema and a catalog.
        for qualifier in &parts[..parts.len().saturating_sub(1)] {
            own_name(qualifier)?;
        }
    }
    Ok(())
}

/// Refuses a statement that is not a query (DuckDB's serializer does not take it) if one of its names is
/// arrowport's schema or scratch database ([`sql_tree::identifiers`]: string literals and comments are not names).
pub fn check_identifiers(sql: &str) -> Result<(), EngineError> {
    sql_tree::identifiers(sql).iter().try_for_each(|name| own_name(name))
}

/// Whether a statement (lower case) creates a macro or function: `CREATE [OR REPLACE] [TEMP | TEMPORARY]
/// (MACRO | FUNCTION)`, keywords only (DuckDB reports such a statement as a plain CREATE).
fn creates_code(text: &str) -> bool {
    let mut rest = text;
    let mut word = || {
        let w = first_word(rest);
        let at = rest.find(w).map_or(rest.len(), |i| i + w.len());
        rest = &rest[at..];
        w.to_string()
    };
    if word() != "create" {
        return false;
    }
    let mut w = word();
    if w == "or" {
        if word() != "replace" {
            return false;
        }
        w = word();
    }
    if w == "temp" || w == "temporary" {
        w = word();
    }
    w == "macro" || w == "function"
}

/// The statement's first word, past white space and comments.
fn first_word(text: &str) -> &str {
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, after)| after);
        } else {
            break;
        }
    }
    let end = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
    &rest[..end]
}

thread_local! {
    /// Set while a writer thread runs a statement that came over the network.
    static REMOTE: Cell<bool> = const { Cell::new(false) };
}

/// Statements sent over the network that are running, and administrative calls waiting for them to end.
///
/// DuckDB may run a statement's functions on any of its worker threads, so a thread-local marker alone cannot
/// tell an administrative call inside a client's statement from the host's own. The gate can: an administrative
/// function runs only at a moment when no statement sent over the network is running. A call made inside such a
/// statement can never see that moment (its own statement is running while it waits), so it is refused, on
/// whatever thread DuckDB runs it. One gate per process: every database that loaded arrowport shares it.
struct AdminGate {
    state: Mutex<AdminGateState>,
    changed: Condvar,
}

struct AdminGateState {
    running: usize,
    admins_waiting: usize,
    /// How many times an administrative call interrupted the running statements, and the last one's name.
    interrupts: u64,
    interrupted_for: &'static str,
}

static ADMIN_GATE: AdminGate = AdminGate {
    state: Mutex::new(AdminGateState { running: 0, admins_waiting: 0, interrupts: 0, interrupted_for: "" }),
    changed: Condvar::new(),
};

/// How long an administrative call waits for statements sent over the network to end before interrupting them.
pub const ADMIN_GRACE: Duration = Duration::from_secs(1);
/// How long it then waits for the interrupted statements to end before it refuses to run.
pub const ADMIN_AFTER_INTERRUPT: Duration = Duration::from_secs(2);
/// How long a statement sent over the network waits at the gate while an administrative call is waiting.
const ENTRY_WAIT: Duration = Duration::from_secs(5);

impl AdminGate {
    fn lock(&self) -> MutexGuard<'_, AdminGateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (within `limit`) until `done` holds; returns the state, and whether `done` held.
    fn wait_until<'a>(
        &self,
        state: MutexGuard<'a, AdminGateState>,
        limit: Duration,
        done: impl Fn(&AdminGateState) -> bool,
    ) -> (MutexGuard<'a, AdminGateState>, bool) {
        let (state, _) = self.changed.wait_timeout_while(state, limit, |s| !done(s)).unwrap_or_else(|e| e.into_inner());
        let ok = done(&state);
        (state, ok)
    }
}

/// Runs `f` marked as executing a statement sent over the network: the thread is marked (see
/// [`refuse_if_remote`]) and the statement counts as running at the gate (see [`admit_admin`]). Also returns the
/// administrative function that interrupted the running statements meanwhile, if one did (so the client's
/// "Interrupted" error can say why).
pub fn as_remote<T>(f: impl FnOnce() -> T) -> (T, Option<&'static str>) {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            REMOTE.with(|r| r.set(false));
            let mut state = ADMIN_GATE.lock();
            state.running -= 1;
            drop(state);
            ADMIN_GATE.changed.notify_all();
        }
    }
    // An administrative call waiting for running statements to end is not starved by new ones; after ENTRY_WAIT
    // the statement runs anyway (the administrative call then interrupts it, or refuses).
    let interrupts = {
        let (mut state, _) = ADMIN_GATE.wait_until(ADMIN_GATE.lock(), ENTRY_WAIT, |s| s.admins_waiting == 0);
        state.running += 1;
        state.interrupts
    };
    REMOTE.with(|r| r.set(true));
    let reset = Reset;
    let out = f();
    drop(reset);
    let state = ADMIN_GATE.lock();
    let by = (state.interrupts != interrupts).then_some(state.interrupted_for);
    (out, by)
}

/// arrowport's own administrative SQL functions call this: they manage listeners, streams and tokens, and must
/// not be reachable through SQL that a client sent over the network (a token could mint itself a better one).
/// Refuses at once on a thread marked by [`as_remote`]; elsewhere waits until no statement sent over the network
/// runs: [`ADMIN_GRACE`], then `interrupt` (which interrupts them), then [`ADMIN_AFTER_INTERRUPT`]; refuses if
/// one still runs (then this call is most likely part of it).
pub fn admit_admin(function: &'static str, interrupt: impl Fn()) -> Result<(), String> {
    refuse_if_remote(function)?;
    let mut state = ADMIN_GATE.lock();
    state.admins_waiting += 1;
    let (mut state, mut clear) = ADMIN_GATE.wait_until(state, ADMIN_GRACE, |s| s.running == 0);
    if !clear {
        state.interrupts += 1;
        state.interrupted_for = function;
        drop(state);
        interrupt();
        (state, clear) = ADMIN_GATE.wait_until(ADMIN_GATE.lock(), ADMIN_AFTER_INTERRUPT, |s| s.running == 0);
    }
    let running = state.running;
    state.admins_waiting -= 1;
    drop(state);
    ADMIN_GATE.changed.notify_all();
    if clear {
        Ok(())
    } else {
        Err(format!(
            "{function} cannot be called over the network; call it in the host's own session ({running} statement(s) sent over the network were still running {} s after this call, interrupted or not)",
            (ADMIN_GRACE + ADMIN_AFTER_INTERRUPT).as_secs()
        ))
    }
}

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
    fn administrative_calls_inside_a_network_statement_are_refused_on_any_thread() {
        // Nothing running: admitted at once.
        assert!(admit_admin("f", || {}).is_ok());
        // On the statement's own thread: refused at once.
        let err = as_remote(|| admit_admin("f", || panic!("no interrupt expected"))).0.unwrap_err();
        assert!(err.starts_with("f cannot be called over the network"), "{err}");
        // On another thread while the statement runs (as on a DuckDB worker): refused after the waits, and the
        // interrupt was asked for.
        let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&interrupted);
        let started = std::time::Instant::now();
        let (result, by) = as_remote(|| {
            std::thread::spawn(move || admit_admin("f", move || flag.store(true, std::sync::atomic::Ordering::SeqCst)))
                .join()
                .unwrap()
        });
        assert_eq!(by, Some("f"));
        let err = result.unwrap_err();
        assert!(err.contains("1 statement(s) sent over the network were still running"), "{err}");
        assert!(interrupted.load(std::sync::atomic::Ordering::SeqCst));
        assert!(started.elapsed() >= ADMIN_GRACE + ADMIN_AFTER_INTERRUPT);
        // A statement that ends while the call waits: admitted without an interrupt.
        let (tx, rx) = std::sync::mpsc::channel();
        let statement = std::thread::spawn(move || {
            as_remote(|| {
                tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(200));
            })
        });
        rx.recv().unwrap();
        assert!(admit_admin("f", || panic!("no interrupt expected")).is_ok());
        assert_eq!(statement.join().unwrap().1, None);
    }

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
        assert!(check_statement("SELECT 1", Access::ReadOnly, &anon, &Policy::default()).is_ok());
        assert!(
            check_statement("SELECT 1", Access::Off, &anon, &Policy::default())
                .unwrap_err()
                .to_string()
                .contains("sql := 'read_only'")
        );
        // Administrative functions are refused where they are bound (the caller's connection), not by their name.
        assert!(check_statement("select ARROWPORT_STOP()", Access::ReadWrite, &anon, &Policy::default()).is_ok());
        let scoped = Principal::Token {
            name: Arc::from("etl"),
            scope: Arc::new(crate::catalog::access::Scope::Streams(vec!["events".into()])),
            access: Default::default(),
        };
        assert!(check_statement("SELECT 1", Access::ReadWrite, &scoped, &Policy::default()).is_err());
    }

    #[test]
    fn statements_naming_the_keys_schema_or_importing_files_are_refused() {
        let anon = Principal::Anonymous;
        // Statements DuckDB's serializer does not take are read by their names, never their strings.
        for sql in [
            "DELETE FROM lake.arrowport.requests",
            "UPDATE \"ARROWPORT\".requests SET committed_at = now()",
            "DROP SCHEMA arrowport CASCADE",
            "CREATE VIEW peek AS FROM arrowport.requests",
        ] {
            let e = check_identifiers(sql).unwrap_err().to_string();
            assert!(e.contains("may not name the schema \"arrowport\""), "{sql}: {e}");
        }
        let e = check_identifiers("DETACH arrowport_scratch").unwrap_err().to_string();
        assert!(e.contains("may not name \"arrowport_scratch\""), "{e}");
        for sql in [
            "INSERT INTO t VALUES ('arrowport')",
            "UPDATE t SET arrowport_sender = 1 -- arrowport",
            "CREATE TABLE arrowports (a INT)",
            "COPY (SELECT * FROM arrowport_metrics()) TO 'x.csv'",
        ] {
            assert!(check_identifiers(sql).is_ok(), "{sql}");
        }
        // Queries are read from DuckDB's parse: their tables' catalogs and schemas, query_table's names.
        let table = |catalog: &str, schema: &str| sql_tree::TableRef {
            catalog: catalog.into(),
            schema: schema.into(),
            table: "requests".into(),
        };
        let refused = [
            Calls { tables: vec![table("lake", "arrowport")], ..Default::default() },
            Calls { tables: vec![table("", "ARROWPORT")], ..Default::default() },
            Calls { tables: vec![table("arrowport_scratch", "main")], ..Default::default() },
            Calls { table_texts: vec!["arrowport.requests".into()], ..Default::default() },
            Calls { table_texts: vec!["\"Arrowport\".\"tokens\"".into()], ..Default::default() },
        ];
        for calls in refused {
            assert!(check_tables(&calls).is_err(), "{calls:?}");
        }
        let allowed = [
            Calls { tables: vec![table("", "main")], ..Default::default() },
            Calls { table_texts: vec!["arrowport".into()], ..Default::default() },
            Calls { functions: vec!["arrowport_metrics".into()], ..Default::default() },
        ];
        for calls in allowed {
            assert!(check_tables(&calls).is_ok(), "{calls:?}");
        }
        for sql in ["IMPORT DATABASE '/tmp/x'", "  -- note\n /* c */ import database 'x'"] {
            let e = check_statement(sql, Access::ReadWrite, &anon, &Policy::default()).unwrap_err().to_string();
            assert!(e.contains("IMPORT DATABASE is not accepted over the network"), "{sql}: {e}");
        }
        assert_eq!(first_word("/* a */ -- b\n\tSelect 1"), "Select");
        let small = Policy::default().with_statement_limits(STATEMENT_TIMEOUT, 16);
        let e = check_statement("SELECT 'a long statement'", Access::ReadOnly, &anon, &small).unwrap_err().to_string();
        assert!(e.contains("25 bytes of SQL, over the listener's limit of 16 bytes (max_sql_bytes)"), "{e}");
        assert_eq!(first_word("-- only a comment"), "");
        for sql in [
            "CREATE MACRO m() AS 1",
            "create or replace temp macro x(a) as a",
            "Create /* c */ Temporary -- x\n FUNCTION f() AS 1",
        ] {
            let e = check_statement(sql, Access::ReadWrite, &anon, &Policy::default()).unwrap_err().to_string();
            assert!(e.starts_with("CREATE MACRO / CREATE FUNCTION is not accepted"), "{sql}: {e}");
        }
        for sql in ["CREATE TABLE macro (x INT)", "CREATE VIEW function AS SELECT 1", "SELECT 'create macro'"] {
            assert!(check_statement(sql, Access::ReadWrite, &anon, &Policy::default()).is_ok(), "{sql}");
        }
    }
}
