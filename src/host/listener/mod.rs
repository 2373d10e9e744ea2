//! Listeners: a tokio runtime on threads of its own, the writer threads, and one port per listener that
//! carries gRPC (Flight) and plain HTTP side by side.
//!
//! A [`Host`] belongs to one DuckDB database (the one arrowport was loaded into). The first `listen` readies the
//! pooled connections, starts the writers and the runtime; `stop` cancels every listener, lets requests in
//! flight roll back (or commit, if their stream had already ended), waits for them within [`DRAIN_LIMIT`], shuts
//! the runtime down, joins the writer threads and keeps the connections for the next `listen`. The process's
//! exit runs `stop` too (see [`stop_all_at_exit`]), so a host that exits with listeners running exits cleanly.

mod accept;
mod admin;
mod maintenance;
mod options;
mod stored;

pub use admin::AdminCall;
pub use options::{DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_MESSAGE_BYTES, ListenError, ListenOptions, parse_addr};

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio_util::sync::CancellationToken;

use crate::catalog::access::{self, Scope, TokenRecord, Tokens};
use crate::catalog::registry::{Mapping, MappingOptions, Registry, validate_stream_name};
use crate::catalog::store::Store;
use crate::duck::conn::RawConn;
use crate::engine::budget::{Budget, DEFAULT_MEMORY_BUDGET};
use crate::engine::core::Core;
use crate::engine::duck_session::{CreateLocks, DuckSession};
use crate::engine::memory_guard::MemoryGuard;
use crate::engine::metrics::Metrics;
use crate::engine::policy::{self, Access, IDEMPOTENCY_WINDOW, MAX_CONCURRENT_REQUESTS, Policy, STALL_LIMIT};
use crate::engine::session::Maintained;
use crate::engine::writers::Writers;
use crate::host::checkpoints::Checkpoints;
use crate::host::connections::{self, Admission, Admitted, Connections};
use crate::host::gate::{self, AuthMode, Gate};
use crate::host::settings::HostSettings;
use crate::host::tls::{self, TlsError};
use crate::proto::flight::FlightAdapter;
use crate::proto::send::{self, SendOptions, Sent, Target};
use crate::proto::{rest, status};

/// How long `stop` waits for requests in flight before it aborts them (aborted requests roll back).
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// How long `stop` waits for the runtime's threads once the requests are done.
const JOIN_LIMIT: Duration = Duration::from_secs(5);

/// Threads of the network runtime. Decoding is cheap next to DuckDB's write (see README), so two suffice.
const IO_THREADS: usize = 2;

/// One row of `arrowport_status()`.
#[derive(Debug, Clone)]
pub struct StatusRow {
    pub protocol: &'static str,
    pub address: String,
    pub uptime_seconds: f64,
    pub requests_in_flight: i64,
    pub tls: bool,
    pub auth: &'static str,
}

/// The writers' connections and the statement pool's.
enum Pool {
    /// Connections as the entrypoint opened them.
    Raw(Vec<RawConn>, Vec<RawConn>),
    /// Connections readied by an earlier listen (a statement that never ended keeps its connection).
    Ready(Vec<DuckSession>, Vec<DuckSession>),
    /// Lent to a running writer pool.
    Lent,
}

struct Listener {
    protocols: Vec<&'static str>,
    addr: SocketAddr,
    started: Instant,
    task: tokio::task::JoinHandle<()>,
    tls: bool,
    auth: AuthMode,
}

struct Running {
    runtime: tokio::runtime::Runtime,
    core: Arc<Core<DuckSession>>,
    cancel: CancellationToken,
    guard: Arc<MemoryGuard>,
    listeners: Vec<Listener>,
    /// The listeners as every REST service's `/status.json` shows them.
    board: rest::Listeners,
    /// `arrowport_maintain(..., every := ...)` schedules, by catalog.
    schedules: std::collections::HashMap<String, tokio::task::JoinHandle<()>>,
}

struct State {
    pool: Pool,
    running: Option<Running>,
}

/// arrowport's state for one host database.
pub struct Host {
    /// The ids of arrowport's own connections to this database (writers and the statement pool), as DuckDB's
    /// client context tells them; empty where it cannot.
    own_connections: Vec<u64>,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    tokens: Arc<Tokens>,
    store: Arc<Store>,
    /// The host's settings arrowport reads (memory_limit) and changes (extension autoloading, while a listener
    /// accepts SQL).
    settings: HostSettings,
    /// Who checkpoints the host's database files while listeners run (see `host::checkpoints`).
    checkpoints: Checkpoints,
    /// Whether the registry and the tokens hold what is persisted yet (loaded on first use, never during LOAD).
    loaded: Mutex<bool>,
}

static HOSTS: Mutex<Vec<Weak<Host>>> = Mutex::new(Vec::new());

/// Set once the process has begun to exit (a Python host's finalization, or C's exit handlers, see
/// `duck::entry::at_exit`): `stop` runs no SQL to put settings back (they die with the process): neither the
/// checkpoint threshold nor extension autoloading.
static EXITING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn exiting() -> bool {
    EXITING.load(std::sync::atomic::Ordering::SeqCst)
}

/// Stops every host's listeners; registered with `atexit` by the entrypoint (called from C, so behind the
/// panic boundary).
pub extern "C" fn stop_all_at_exit() {
    let _ = crate::panic::contain("stopping at exit", || {
        EXITING.store(true, std::sync::atomic::Ordering::SeqCst);
        let hosts: Vec<Arc<Host>> =
            HOSTS.lock().map(|h| h.iter().filter_map(Weak::upgrade).collect()).unwrap_or_default();
        // The checkpointers first: idle listeners run no SQL of their own, but a checkpointer does every few
        // seconds, and draining the listeners can take a while.
        for host in &hosts {
            host.checkpoints.stop(false);
        }
        for host in hosts {
            host.stop();
        }
    });
}

impl Host {
    pub fn new(
        pool: Vec<RawConn>,
        statements: Vec<RawConn>,
        store: Store,
        settings: HostSettings,
        checkpoints: Checkpoints,
    ) -> Arc<Host> {
        let own_connections = pool.iter().chain(&statements).filter_map(RawConn::connection_id).collect();
        let host = Arc::new(Host {
            own_connections,
            state: Mutex::new(State { pool: Pool::Raw(pool, statements), running: None }),
            metrics: Arc::new(Metrics::new()),
            registry: Arc::new(Registry::default()),
            tokens: Arc::new(Tokens::default()),
            store: Arc::new(store),
            settings,
            checkpoints,
            loaded: Mutex::new(false),
        });
        if let Ok(mut hosts) = HOSTS.lock() {
            hosts.retain(|h| h.strong_count() > 0);
            hosts.push(Arc::downgrade(&host));
        }
        host
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a listener; returns `(protocol, address)` rows with the bound address.
    pub fn listen(&self, addr: &str, options: &ListenOptions) -> Result<Vec<(String, String)>, ListenError> {
        let addr = parse_addr(addr)?;
        let rest_addr = options.rest.as_deref().map(parse_addr).transpose()?;
        if options.max_message_bytes == 0 {
            return Err(ListenError::BadOption("max_message_bytes", "must be positive".into()));
        }
        if options.max_body_bytes == 0 {
            return Err(ListenError::BadOption("max_body_bytes", "must be positive".into()));
        }
        if options.max_concurrent_requests == 0 {
            return Err(ListenError::BadOption("max_concurrent_requests", "must be positive".into()));
        }
        if options.max_columns == 0 || options.max_schema_bytes == 0 {
            return Err(ListenError::BadOption(
                "max_columns",
                "max_columns and max_schema_bytes must be positive".into(),
            ));
        }
        if options.statement_timeout.is_zero() || options.max_sql_bytes == 0 {
            return Err(ListenError::BadOption(
                "statement_timeout",
                "statement_timeout and max_sql_bytes must be positive".into(),
            ));
        }
        if options.max_connections == 0 {
            return Err(ListenError::BadOption("max_connections", "must be positive".into()));
        }
        if options.stall_timeout.is_zero() {
            return Err(ListenError::BadOption("stall_timeout", "must be positive".into()));
        }
        let tls = tls::config(options.tls_cert.as_deref(), options.tls_key.as_deref())?;
        if options.sql != Access::Off {
            self.settings.hold_off_extension_loading().map_err(ListenError::Start)?;
        }
        let gate = Arc::new(Gate {
            mode: options.auth,
            tokens: Arc::clone(&self.tokens),
            tls: tls.map(tokio_rustls::TlsAcceptor::from),
            handshake_timeout: options.stall_timeout,
            allowed_hosts: options.allowed_hosts.iter().map(|h| h.trim().to_ascii_lowercase()).collect(),
            allowed_origins: options.allowed_origins.iter().map(|o| gate::normal_origin(o)).collect(),
        });
        let mut state = self.lock();
        let running =
            self.running(&mut state, options.memory_budget.unwrap_or(DEFAULT_MEMORY_BUDGET), options.sql_memory_limit)?;
        if running.listeners.is_empty() {
            // The first listener (the writers may have been started earlier by arrowport_send).
            self.metrics.set_started(Some(Instant::now()));
        }
        let budget = running.core.budget().limit();
        let memory_limit = running.guard.limit();
        if options.sql_memory_limit.is_some_and(|l| l != memory_limit) {
            return Err(ListenError::BadOption(
                "sql_memory_limit",
                format!(
                    "the host's listeners share one memory guard, already at {memory_limit} bytes; stop them all to change it"
                ),
            ));
        }
        if options.memory_budget.is_some_and(|b| b != budget) {
            return Err(ListenError::BadOption(
                "memory_budget",
                format!("the host's listeners share one budget, already {budget} bytes; stop them all to change it"),
            ));
        }
        for a in std::iter::once(addr).chain(rest_addr) {
            if a.port() != 0 && running.listeners.iter().any(|l| l.addr == a) {
                return Err(ListenError::AlreadyListening(a));
            }
        }
        if rest_addr == Some(addr) && addr.port() != 0 {
            return Err(ListenError::BadOption(
                "rest",
                "is the Flight address; leave it out to serve both on one port".into(),
            ));
        }
        let policy = Arc::new(
            Policy::new(options.reject_unknown, options.stall_timeout, options.max_concurrent_requests)
                .with_idempotency_window(options.idempotency_window)
                .with_commit_retries(options.commit_retries)
                .with_group_window(options.group_window)
                .with_commit_retry_wait(options.commit_retry_wait)
                .with_schema_limits(options.max_columns, options.max_schema_bytes)
                .with_statement_limits(options.statement_timeout, options.max_sql_bytes),
        );
        let flight = FlightServiceServer::new(FlightAdapter::new(
            Arc::clone(&running.core),
            Arc::clone(&policy),
            options.sql,
            options.max_message_bytes,
        ))
        .max_decoding_message_size(options.max_message_bytes)
        .max_encoding_message_size(options.max_message_bytes);
        let flight = crate::proto::grpc_body::watch_request_bodies(
            tonic::service::Routes::new(flight).into_axum_router(),
            Arc::clone(running.core.budget()),
        );
        let limits = rest::Limits {
            max_message_bytes: options.max_message_bytes,
            max_body_bytes: options.max_body_bytes,
            policy,
            duckdb_version: crate::duck::library_version(),
            listeners: Arc::clone(&running.board),
        };
        let rest = rest::router(Arc::clone(&running.core), limits);

        // Bind everything before serving anything, so a failure leaves nothing half-started.
        let main = running
            .runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .map_err(|e| ListenError::Bind(addr, e.to_string()))?;
        let separate = match rest_addr {
            Some(ra) => Some(
                running
                    .runtime
                    .block_on(tokio::net::TcpListener::bind(ra))
                    .map_err(|e| ListenError::Bind(ra, e.to_string()))?,
            ),
            None => None,
        };
        let core = Arc::downgrade(&running.core);
        let busy = Box::new(move || core.upgrade().is_some_and(|c| c.in_flight() > 0));
        self.checkpoints
            .start(options.checkpoint_wal, busy, Arc::clone(&self.metrics))
            .map_err(|e| ListenError::BadOption("checkpoint_wal", e))?;
        let mut rows = Vec::new();
        match separate {
            None => {
                let app = flight.merge(rest).fallback(status::not_found);
                let bound = running.serve(main, app, gate, &["flight", "rest"], options.max_connections)?;
                rows.push(("flight".to_string(), bound.to_string()));
                rows.push(("rest".to_string(), bound.to_string()));
            }
            Some(rest_listener) => {
                let bound = running.serve(
                    main,
                    flight.fallback(status::not_found),
                    Arc::clone(&gate),
                    &["flight"],
                    options.max_connections,
                )?;
                let rest_bound = running.serve(
                    rest_listener,
                    rest.fallback(status::not_found),
                    gate,
                    &["rest"],
                    options.max_connections,
                )?;
                rows.push(("flight".to_string(), bound.to_string()));
                rows.push(("rest".to_string(), rest_bound.to_string()));
            }
        }
        Ok(rows)
    }

    /// Stops every listener and joins its threads; returns how many listeners were stopped.
    ///
    /// Bounded in time whatever clients do: statements sent over the network are interrupted at once (their
    /// clients get DuckDB's "Interrupted" error); requests in flight get [`DRAIN_LIMIT`] to end (a request
    /// whose stream has ended commits, others roll back), then every writer still busy is interrupted and
    /// waited for at most [`JOIN_LIMIT`]. The state lock is held only to take the running state out and to put
    /// the connections back, so `arrowport_status()` and the like never wait for a stop.
    pub fn stop(&self) -> usize {
        let Some(running) = self.lock().running.take() else {
            self.put_settings_back();
            return 0;
        };
        let Running { runtime, core, cancel, listeners, schedules, .. } = running;
        schedules.values().for_each(|t| t.abort());
        let count = listeners.len();
        cancel.cancel();
        core.writers().interrupt(true);
        if let Some(statements) = core.statements() {
            statements.interrupt(false);
        }
        let tasks: Vec<_> = listeners.into_iter().map(|l| l.task).collect();
        // On a thread of its own: at process exit (the atexit hook) the calling thread's thread-locals, tokio's
        // among them, are already gone, and block_on would panic there.
        let drained = std::thread::Builder::new().name("arrowport-stop".into()).spawn(move || {
            let _ =
                runtime.block_on(async { tokio::time::timeout(DRAIN_LIMIT, futures::future::join_all(tasks)).await });
            runtime.shutdown_timeout(JOIN_LIMIT);
        });
        match drained {
            Ok(t) => {
                let _ = t.join();
            }
            Err(e) => eprintln!("arrowport: could not start the thread that stops the listeners: {e}"),
        }
        let sinks = core.writers().stop(JOIN_LIMIT);
        let statement_sinks = core.statements().map(|s| s.stop(JOIN_LIMIT)).unwrap_or_default();
        self.lock().pool = Pool::Ready(sinks, statement_sinks);
        self.metrics.set_started(None);
        self.metrics.watch_budget(None);
        self.put_settings_back();
        count
    }

    /// Ends the checkpointer, puts back the settings the listeners changed and saves the token uses seen; none of
    /// it at process exit (no SQL then, see [`EXITING`]: the uses since the last periodic save are lost).
    fn put_settings_back(&self) {
        let exiting = exiting();
        self.checkpoints.stop(!exiting);
        if exiting {
            return;
        }
        self.settings.restore_extension_loading();
        if let Err(e) = self.store.save_last_used(&self.tokens.used()) {
            eprintln!("arrowport: could not save when tokens were last used: {e}");
        }
    }

    /// The running writers and runtime, started (with a memory budget of `budget` bytes) if they are not.
    fn running<'s>(
        &self,
        state: &'s mut State,
        budget: usize,
        memory_limit: Option<u64>,
    ) -> Result<&'s mut Running, ListenError> {
        if state.running.is_none() {
            self.mappings_loaded().map_err(ListenError::Start)?;
            let budget = Arc::new(Budget::new(budget));
            // Without a limit of its own or DuckDB's, the guard never interrupts.
            let limit = memory_limit.or_else(|| self.settings.memory_limit()).unwrap_or(u64::MAX);
            let guard = Arc::new(MemoryGuard::new(limit, crate::duck::os::resident_bytes));
            self.metrics.watch_budget(Some(Arc::clone(&budget)));
            let running = start(&mut state.pool, Arc::clone(&self.metrics), Arc::clone(&self.registry), budget, guard)?;
            let (tokens, store) = (Arc::clone(&self.tokens), Arc::clone(&self.store));
            running.runtime.spawn(save_token_uses(tokens, store, running.cancel.clone()));
            state.running = Some(running);
        }
        state.running.as_mut().ok_or_else(|| ListenError::Start("the runtime did not start".into()))
    }

    /// The writers and the runtime, for work that needs no listener (`arrowport_send`, `arrowport_maintain`).
    fn engine(&self) -> Result<(tokio::runtime::Handle, Arc<Core<DuckSession>>), String> {
        let mut state = self.lock();
        let running = self.running(&mut state, DEFAULT_MEMORY_BUDGET, None).map_err(|e| e.to_string())?;
        Ok((running.runtime.handle().clone(), Arc::clone(&running.core)))
    }

    /// `arrowport_send`: runs `sql` on a writer (starting the writers and the runtime if no listener has) and
    /// sends its result to `stream` at `target`, retrying transient failures under one idempotency key.
    pub fn send(&self, target: &Target, stream: &str, sql: &str, options: &SendOptions) -> Result<Sent, String> {
        let (runtime, core) = self.engine()?;
        // The writer waits for the sender to take batches a little longer than the sender waits for the remote,
        // so a stalled remote is reported as such.
        let stall = options.timeout + std::time::Duration::from_secs(30);
        let (sql, rows) = (sql.to_string(), options.batch_rows);
        let source: send::Source<'_> = Box::new(move || {
            let (core, sql) = (Arc::clone(&core), sql.clone());
            Box::pin(async move { core.export(&sql, rows, stall).await })
        });
        runtime.block_on(send::send(target, stream, options, source))
    }

    pub fn status(&self) -> Vec<StatusRow> {
        let state = self.lock();
        let Some(running) = state.running.as_ref() else { return vec![] };
        let in_flight = running.core.in_flight() as i64;
        running
            .listeners
            .iter()
            .flat_map(|l| {
                l.protocols.iter().map(move |p| StatusRow {
                    protocol: p,
                    address: l.addr.to_string(),
                    uptime_seconds: l.started.elapsed().as_secs_f64(),
                    requests_in_flight: in_flight,
                    tls: l.tls,
                    auth: l.auth.name(),
                })
            })
            .collect()
    }

    /// The counters behind `arrowport_metrics()`; they outlive listener restarts.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// How often token uses seen since the last save are saved while the runtime runs: `arrowport_stop()` saves them
/// too, process exit cannot (no SQL then), so an exit without a stop loses at most this much of them.
const SAVE_TOKEN_USES: std::time::Duration = std::time::Duration::from_secs(5);

/// Saves new token uses every [`SAVE_TOKEN_USES`] until `cancel`; a failure is said once and tried again.
async fn save_token_uses(tokens: Arc<Tokens>, store: Arc<Store>, cancel: CancellationToken) {
    let mut said = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(SAVE_TOKEN_USES) => {}
        }
        let Some(used) = tokens.unsaved() else { continue };
        let store = Arc::clone(&store);
        let saved = tokio::task::spawn_blocking(move || store.save_last_used(&used)).await;
        if let Ok(Err(e)) = &saved
            && !std::mem::replace(&mut said, true)
        {
            eprintln!("arrowport: could not save when tokens were last used (tried again every 5 s): {e}");
        }
        if !matches!(saved, Ok(Ok(()))) {
            tokens.unsaved_again();
        }
    }
}

/// Readies the connections, starts the writers and the runtime.
fn start(
    pool: &mut Pool,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    budget: Arc<Budget>,
    guard: Arc<MemoryGuard>,
) -> Result<Running, ListenError> {
    let (sinks, statement_sinks) = match std::mem::replace(pool, Pool::Lent) {
        Pool::Ready(sinks, statements) => (sinks, statements),
        Pool::Raw(conns, statements) => {
            let locks = Arc::new(CreateLocks::default());
            let mut sinks = Vec::with_capacity(conns.len());
            let mut statement_sinks = Vec::with_capacity(statements.len());
            let n = conns.len();
            for (i, conn) in conns.into_iter().chain(statements).enumerate() {
                match DuckSession::prepare(conn, i, Arc::clone(&locks)) {
                    Ok(s) if i < n => sinks.push(s),
                    Ok(s) => statement_sinks.push(s),
                    Err(e) => {
                        *pool = Pool::Ready(sinks, statement_sinks);
                        return Err(ListenError::Start(e.to_string()));
                    }
                }
            }
            (sinks, statement_sinks)
        }
        Pool::Lent => {
            return Err(ListenError::Start(
                "arrowport is stopping; listen again once arrowport_stop() has returned".into(),
            ));
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(IO_THREADS)
        .thread_name("arrowport-io")
        .enable_all()
        .build()
        .map_err(|e| ListenError::Start(e.to_string()))?;
    let writers = Writers::start(sinks).map_err(|e| ListenError::Start(e.to_string()))?;
    let statements = Writers::start_shaped(statement_sinks, &crate::engine::writers::STATEMENTS)
        .map_err(|e| ListenError::Start(e.to_string()))?;
    let cancel = CancellationToken::new();
    let core = Arc::new(
        Core::new(writers, cancel.clone(), metrics, registry)
            .with_budget(budget)
            .with_statements(statements)
            .with_memory_guard(Arc::clone(&guard)),
    );
    runtime.spawn(Arc::clone(&guard).run(cancel.clone()));
    Ok(Running {
        runtime,
        core,
        cancel,
        guard,
        listeners: Vec::new(),
        board: Default::default(),
        schedules: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_bare_ports_mean_loopback() {
        assert_eq!(parse_addr("127.0.0.1:8815").unwrap().to_string(), "127.0.0.1:8815");
        assert_eq!(parse_addr(":0").unwrap().to_string(), "127.0.0.1:0");
        assert_eq!(parse_addr("[::1]:9").unwrap().to_string(), "[::1]:9");
        assert!(matches!(parse_addr("nonsense"), Err(ListenError::BadAddress(..))));
        assert!(matches!(parse_addr("127.0.0.1:99999"), Err(ListenError::BadAddress(..))));
    }
}
