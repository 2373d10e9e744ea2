//! Listeners: a tokio runtime on threads of its own, the writer threads, and one port per listener that
//! carries gRPC (Flight) and plain HTTP side by side.
//!
//! A [`Host`] belongs to one DuckDB database (the one arrowport was loaded into). The first `listen` readies the
//! pooled connections, starts the writers and the runtime; `stop` cancels every listener, lets requests in
//! flight roll back (or commit, if their stream had already ended), waits for them within [`DRAIN_LIMIT`], shuts
//! the runtime down, joins the writer threads and keeps the connections for the next `listen`. The process's
//! exit runs `stop` too (see [`stop_all_at_exit`]), so a host that exits with listeners running exits cleanly.

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
use crate::engine::duck_sink::{CreateLocks, DuckSink};
use crate::engine::memory_guard::MemoryGuard;
use crate::engine::metrics::Metrics;
use crate::engine::policy::{self, Access, IDEMPOTENCY_WINDOW, MAX_CONCURRENT_REQUESTS, Policy, STALL_LIMIT};
use crate::engine::sink::Maintained;
use crate::engine::writers::Writers;
use crate::host::connections::{self, Admission, Admitted, Connections};
use crate::host::gate::{self, AuthMode, Gate};
use crate::host::settings::HostSettings;
use crate::host::tls::{self, TlsError};
use crate::proto::flight::FlightAdapter;
use crate::proto::send::{self, SendOptions, Sent, Target};
use crate::proto::{rest, status};

/// Largest Flight or IPC message accepted by default (`max_message_bytes` changes it).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Largest REST body on the wire by default (`max_body_bytes` changes it). Bodies stream, so this bounds a
/// request's duration and disk use, not memory.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// How long `stop` waits for requests in flight before it aborts them (aborted requests roll back).
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// How long `stop` waits for the runtime's threads once the requests are done.
const JOIN_LIMIT: Duration = Duration::from_secs(5);

/// Threads of the network runtime. Decoding is cheap next to DuckDB's write (see README), so two suffice.
const IO_THREADS: usize = 2;

/// HTTP/2 flow-control windows and frame size. hyper's defaults (1 MiB windows, 16 KiB frames) cap one
/// loopback DoPut far below what DuckDB takes in; memory stays bounded by the ingest queue, not by these.
const H2_STREAM_WINDOW: u32 = 16 * 1024 * 1024;
const H2_CONN_WINDOW: u32 = 32 * 1024 * 1024;
const H2_MAX_FRAME: u32 = 1024 * 1024;

/// HTTP/2 pings on idle connections, so a vanished peer's connection is closed.
const H2_KEEPALIVE: Duration = Duration::from_secs(30);

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("invalid listen address {0:?}: {1}")]
    BadAddress(String, String),
    #[error("arrowport is already listening on {0}")]
    AlreadyListening(SocketAddr),
    #[error("could not listen on {0}: {1}")]
    Bind(SocketAddr, String),
    #[error("invalid value for option {0}: {1}")]
    BadOption(&'static str, String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("arrowport could not start: {0}")]
    Start(String),
}

/// Options of `arrowport_listen`.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    pub max_message_bytes: usize,
    pub max_body_bytes: u64,
    /// REST on an address of its own; `None` serves REST on the Flight port.
    pub rest: Option<String>,
    /// Refuse stream names without a mapping (`unknown_streams := 'reject'`).
    pub reject_unknown: bool,
    /// Who is served: protected (default), token, or open (`allow_unauthenticated := true`).
    pub auth: AuthMode,
    /// PEM files; both or neither.
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    /// Requests served at once; more are refused (RESOURCE_EXHAUSTED / 503).
    pub max_concurrent_requests: usize,
    /// How long a client may send nothing (mid-request, or before its request headers / TLS handshake).
    pub stall_timeout: Duration,
    /// SQL statements over Flight SQL: off (default), read_only or read_write.
    pub sql: Access,
    /// Names loopback clients without a token may address the listener by (besides IP literals, `localhost`).
    pub allowed_hosts: Vec<String>,
    /// Browser origins whose requests are served; requests with any other `Origin` header are refused.
    pub allowed_origins: Vec<String>,
    /// The host-wide memory budget (bytes); set by the listen that starts the host's runtime.
    pub memory_budget: Option<usize>,
    /// The process's resident size above which statements sent over the network that grew it are interrupted
    /// (bytes; DuckDB's `memory_limit` when not given); set by the listen that starts the host's runtime.
    pub sql_memory_limit: Option<u64>,
    /// How long idempotency keys of this listener's requests are kept.
    pub idempotency_window: Duration,
    /// Connections kept open at once (see `connections`).
    pub max_connections: usize,
    /// Fields a request's schema may have, and bytes its schema message may take.
    pub max_columns: usize,
    pub max_schema_bytes: usize,
    /// How long a statement sent over the network may run, and how much SQL text it may have.
    pub statement_timeout: Duration,
    pub max_sql_bytes: usize,
    /// How often a grouped commit that lost a race with another host's (a shared DuckLake) is tried again.
    pub commit_retries: u32,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            rest: None,
            reject_unknown: false,
            auth: AuthMode::Protected,
            tls_cert: None,
            tls_key: None,
            max_concurrent_requests: MAX_CONCURRENT_REQUESTS,
            stall_timeout: STALL_LIMIT,
            sql: Access::Off,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            memory_budget: None,
            sql_memory_limit: None,
            idempotency_window: IDEMPOTENCY_WINDOW,
            max_connections: connections::DEFAULT_MAX_CONNECTIONS,
            max_columns: policy::MAX_COLUMNS,
            max_schema_bytes: policy::MAX_SCHEMA_BYTES,
            statement_timeout: policy::STATEMENT_TIMEOUT,
            max_sql_bytes: policy::MAX_SQL_BYTES,
            commit_retries: policy::COMMIT_RETRIES,
        }
    }
}

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
    Ready(Vec<DuckSink>, Vec<DuckSink>),
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
    core: Arc<Core<DuckSink>>,
    cancel: CancellationToken,
    guard: Arc<MemoryGuard>,
    listeners: Vec<Listener>,
    /// `arrowport_maintain(..., every := ...)` schedules, by catalog.
    schedules: std::collections::HashMap<String, tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Serves `app` on a bound listener until the host stops; one status row per protocol it carries.
    fn serve(
        &mut self,
        listener: tokio::net::TcpListener,
        app: axum::Router,
        gate: Arc<Gate>,
        protocols: &[&'static str],
        max_connections: usize,
    ) -> Result<SocketAddr, ListenError> {
        let bound = listener.local_addr().map_err(|e| ListenError::Start(e.to_string()))?;
        let shutdown = self.cancel.clone();
        let (tls, auth) = (gate.tls.is_some(), gate.mode);
        let conns = Connections::new(connection_cap(max_connections));
        let task = self.runtime.spawn(accept_loop(listener, app, gate, shutdown, conns));
        self.listeners.push(Listener {
            protocols: protocols.to_vec(),
            addr: bound,
            started: Instant::now(),
            task,
            tls,
            auth,
        });
        Ok(bound)
    }
}

struct State {
    pool: Pool,
    running: Option<Running>,
}

/// An administrative call as its bind saw it: `verified` when it was bound on a connection of the host's own
/// session (so it runs at once), else it goes through [`Host::admit_admin`] when it runs.
pub struct AdminCall {
    function: &'static str,
    verified: bool,
}

impl AdminCall {
    /// Whether the call was bound on the host's own session.
    pub fn is_verified(&self) -> bool {
        self.verified
    }

    pub fn admit(&self, host: &Host) -> Result<(), String> {
        if self.verified { Ok(()) } else { host.admit_admin(self.function) }
    }
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
    store: Store,
    /// The host's settings arrowport reads (memory_limit) and changes (extension autoloading, while a listener
    /// accepts SQL).
    settings: HostSettings,
    /// Whether the registry and the tokens hold what is persisted yet (loaded on first use, never during LOAD).
    loaded: Mutex<bool>,
}

static HOSTS: Mutex<Vec<Weak<Host>>> = Mutex::new(Vec::new());

/// Stops every host's listeners; registered with `atexit` by the entrypoint (called from C, so behind the
/// panic boundary).
pub extern "C" fn stop_all_at_exit() {
    let _ = crate::panic::contain("stopping at exit", || {
        let hosts: Vec<Arc<Host>> =
            HOSTS.lock().map(|h| h.iter().filter_map(Weak::upgrade).collect()).unwrap_or_default();
        for host in hosts {
            host.stop();
        }
    });
}

/// Parses `host:port`; an address with no host (`:8815`) means loopback.
pub fn parse_addr(text: &str) -> Result<SocketAddr, ListenError> {
    let full = if text.starts_with(':') { format!("127.0.0.1{text}") } else { text.to_string() };
    let mut addrs = full.to_socket_addrs().map_err(|e| ListenError::BadAddress(text.to_string(), e.to_string()))?;
    addrs.next().ok_or_else(|| ListenError::BadAddress(text.to_string(), "it resolves to no address".into()))
}

impl Host {
    pub fn new(pool: Vec<RawConn>, statements: Vec<RawConn>, store: Store, settings: HostSettings) -> Arc<Host> {
        let own_connections = pool.iter().chain(&statements).filter_map(RawConn::connection_id).collect();
        let host = Arc::new(Host {
            own_connections,
            state: Mutex::new(State { pool: Pool::Raw(pool, statements), running: None }),
            metrics: Arc::new(Metrics::new()),
            registry: Arc::new(Registry::default()),
            tokens: Arc::new(Tokens::default()),
            store,
            settings,
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
            self.settings.restore_extension_loading();
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
        self.settings.restore_extension_loading();
        if let Err(e) = self.store.save_last_used(&self.tokens.used()) {
            eprintln!("arrowport: could not save when tokens were last used: {e}");
        }
        count
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
            state.running =
                Some(start(&mut state.pool, Arc::clone(&self.metrics), Arc::clone(&self.registry), budget, guard)?);
        }
        state.running.as_mut().ok_or_else(|| ListenError::Start("the runtime did not start".into()))
    }

    /// The writers and the runtime, for work that needs no listener (`arrowport_send`, `arrowport_maintain`).
    fn engine(&self) -> Result<(tokio::runtime::Handle, Arc<Core<DuckSink>>), String> {
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

    /// `arrowport_maintain`: compacts a DuckLake catalog now; with `every`, also from then on at that interval
    /// (replacing an earlier schedule of that catalog; zero ends it) until the host stops. A scheduled run that
    /// fails says so on the host's stderr and runs again at the next interval.
    pub fn maintain(
        &self,
        catalog: &str,
        older_than: Duration,
        every: Option<Duration>,
    ) -> Result<Vec<Maintained>, String> {
        let (runtime, core) = self.engine()?;
        let done = runtime.block_on(core.maintain(catalog, older_than)).map_err(|e| e.to_string())?;
        if let Some(every) = every {
            let mut state = self.lock();
            let running = state.running.as_mut().ok_or("arrowport stopped meanwhile")?;
            if let Some(old) = running.schedules.remove(&catalog.to_lowercase()) {
                old.abort();
            }
            if !every.is_zero() {
                let (catalog_name, cancel) = (catalog.to_string(), running.cancel.clone());
                let task = running.runtime.spawn(async move {
                    loop {
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(every) => {}
                        }
                        if let Err(e) = core.maintain(&catalog_name, older_than).await {
                            eprintln!("arrowport: scheduled maintenance of {catalog_name} failed: {e}");
                        }
                    }
                });
                running.schedules.insert(catalog.to_lowercase(), task);
            }
        }
        Ok(done)
    }

    /// Who calls an administrative function, from the id of the connection that binds the call: one of
    /// arrowport's own connections (statements sent over the network, the writers) is refused now; any other
    /// connection is the host's own session, served without waiting for anything; an unknown caller (DuckDB does
    /// not tell) is left to [`Host::admit_admin`] when the call runs.
    pub fn admin_call(&self, function: &'static str, caller: Option<u64>) -> Result<AdminCall, String> {
        policy::refuse_if_remote(function)?;
        self.refuse_own_connection(function, caller)?;
        Ok(AdminCall { function, verified: caller.is_some() })
    }

    /// Refuses a call bound on one of arrowport's own connections.
    pub fn refuse_own_connection(&self, function: &str, caller: Option<u64>) -> Result<(), String> {
        match caller {
            Some(id) if self.own_connections.contains(&id) => {
                Err(format!("{function} cannot be called over the network; call it in the host's own session"))
            }
            _ => Ok(()),
        }
    }

    /// Lets an administrative SQL function run, or refuses it when it came over the network
    /// ([`policy::admit_admin`]); statements sent over the network that outlast the grace are interrupted.
    pub fn admit_admin(&self, function: &'static str) -> Result<(), String> {
        policy::admit_admin(function, || {
            if let Some(running) = self.lock().running.as_ref() {
                running.core.writers().interrupt(true);
                if let Some(statements) = running.core.statements() {
                    statements.interrupt(false);
                }
            }
        })
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

    fn mappings_loaded(&self) -> Result<(), String> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if !*loaded {
            self.registry.load(self.store.load().map_err(|e| format!("could not read arrowport.streams: {e}"))?);
            self.tokens.load(self.store.load_tokens().map_err(|e| format!("could not read arrowport.tokens: {e}"))?);
            *loaded = true;
        }
        Ok(())
    }

    /// `arrowport_create_stream`: a new mapping, persisted, in effect for the next request.
    pub fn create_stream(&self, name: &str, options: &MappingOptions) -> Result<Mapping, String> {
        validate_stream_name(name)?;
        self.mappings_loaded()?;
        if self.registry.get(name).is_some() {
            return Err(format!("stream {name:?} already exists; change it with arrowport_alter_stream"));
        }
        let mapping = options.apply(Mapping::default_for(name))?;
        self.store.save(&mapping).map_err(|e| e.to_string())?;
        self.registry.put(mapping.clone());
        Ok(mapping)
    }

    /// `arrowport_alter_stream`: changes the options given, keeps the others.
    pub fn alter_stream(&self, name: &str, options: &MappingOptions) -> Result<Mapping, String> {
        self.mappings_loaded()?;
        let current = self
            .registry
            .get(name)
            .ok_or_else(|| format!("stream {name:?} does not exist; create it with arrowport_create_stream"))?;
        let mapping = options.apply(current)?;
        self.store.save(&mapping).map_err(|e| e.to_string())?;
        self.registry.put(mapping.clone());
        Ok(mapping)
    }

    /// `arrowport_drop_stream`: the stream goes back to landing in `main.<name>` (or is refused).
    pub fn drop_stream(&self, name: &str) -> Result<Mapping, String> {
        self.mappings_loaded()?;
        let current = self.registry.get(name).ok_or_else(|| format!("stream {name:?} does not exist"))?;
        self.store.delete(name).map_err(|e| e.to_string())?;
        self.registry.remove(name);
        Ok(current)
    }

    /// `arrowport_streams()`: every mapping.
    pub fn streams(&self) -> Result<Vec<Mapping>, String> {
        self.mappings_loaded()?;
        Ok(self.registry.all())
    }

    /// `arrowport_create_token`: a new token, persisted as a salted hash, in effect at once. Returns the
    /// record and the secret, which is never shown again.
    pub fn create_token(
        &self,
        name: &str,
        scope: Scope,
        secret: Option<&str>,
    ) -> Result<(TokenRecord, String), String> {
        self.mappings_loaded()?;
        if self.tokens.get(name).is_some() {
            return Err(format!("token {name:?} already exists; revoke it first to replace it"));
        }
        let (record, secret) = access::token_with_secret(name, scope, access::now_us(), secret)?;
        self.store.insert_token(&record).map_err(|e| e.to_string())?;
        self.tokens.put(record.clone());
        Ok((record, secret))
    }

    /// `arrowport_revoke_token`: refused from the next request on.
    pub fn revoke_token(&self, name: &str) -> Result<TokenRecord, String> {
        self.mappings_loaded()?;
        let record = self.tokens.get(name).ok_or_else(|| format!("token {name:?} does not exist"))?;
        self.store.delete_token(name).map_err(|e| e.to_string())?;
        self.tokens.remove(name);
        Ok(record)
    }

    /// `arrowport_tokens()`: every token without its secret; saves the last-use times seen so far.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, String> {
        self.mappings_loaded()?;
        self.store.save_last_used(&self.tokens.used()).map_err(|e| e.to_string())?;
        Ok(self.tokens.all())
    }
}

/// Descriptors kept free for the host's own work (DuckDB's files, its WAL, extensions), whatever clients do.
const DESCRIPTOR_RESERVE: u64 = 256;

/// The connection cap a listener can keep: `wanted`, once the process's descriptor limit is raised to hold it
/// beside what is open now and [`DESCRIPTOR_RESERVE`]; less (said on stderr) when the hard limit is lower.
fn connection_cap(wanted: usize) -> usize {
    let open = crate::duck::os::open_descriptors() as u64;
    let Some(soft) = crate::duck::os::raise_descriptor_limit(open + wanted as u64 + DESCRIPTOR_RESERVE) else {
        return wanted;
    };
    let room = soft.saturating_sub(open + DESCRIPTOR_RESERVE).max(1);
    if room < wanted as u64 {
        eprintln!(
            "arrowport: max_connections {wanted} does not fit the process's descriptor limit ({soft}, {open} open, \
             {DESCRIPTOR_RESERVE} kept for the host); this listener keeps at most {room} connections"
        );
    }
    room.min(wanted as u64) as usize
}

/// Accepts connections until `shutdown`, serving HTTP/1.1 and HTTP/2 (prior knowledge, or ALPN under TLS) on
/// each, every request through the gate; then asks every connection to finish gracefully and waits for them.
/// Connections are admitted by `conns` (a cap; the oldest idle one makes room); one that sends nothing within
/// [`connections::FIRST_BYTE_TIMEOUT`] (or the listener's `stall_timeout`, when shorter) is closed. When the process runs out of descriptors, a spare one is given
/// up to accept and close the waiting connection, so the backlog drains and the loop never spins.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    gate: Arc<Gate>,
    shutdown: CancellationToken,
    conns: Arc<Connections>,
) {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    use hyper_util::server::conn::auto::Builder;

    let mut builder = Builder::new(TokioExecutor::new());
    // half_close: a client that shuts down its sending side after a complete request still gets the answer
    // (without it, hyper closed the connection at the read EOF, and a request that committed was never answered).
    builder.http1().timer(TokioTimer::new()).header_read_timeout(gate.handshake_timeout).half_close(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .max_frame_size(H2_MAX_FRAME);
    let connections = tokio_util::task::TaskTracker::new();
    let mut spare = std::fs::File::open("/dev/null").ok();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if e.raw_os_error() == Some(24) || e.raw_os_error() == Some(23) => {
                // EMFILE / ENFILE: free the spare descriptor, take the waiting connection and close it at once.
                drop(spare.take());
                if let Ok((s, _)) = listener.accept().await {
                    drop(s);
                }
                spare = std::fs::File::open("/dev/null").ok();
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => {
                eprintln!("arrowport: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admitted = match conns.admit() {
            Admission::Admitted(a) => a,
            Admission::Refused(answer) => {
                if let (Some(permit), None) = (answer, gate.tls.as_ref()) {
                    connections.spawn(refuse(builder.clone(), stream, conns.max(), permit));
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (app, gate, builder, shutdown) = (app.clone(), Arc::clone(&gate), builder.clone(), shutdown.clone());
        connections.spawn(async move {
            // Nothing is served, and no TLS handshake started, for a connection that has not said anything.
            let mut first = [0u8; 1];
            let spoke = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = admitted.close.cancelled() => return,
                p = tokio::time::timeout(connections::FIRST_BYTE_TIMEOUT.min(gate.handshake_timeout), stream.peek(&mut first)) => matches!(p, Ok(Ok(n)) if n > 0),
            };
            if !spoke {
                return;
            }
            match gate.tls.clone() {
                None => serve_connection(builder, stream, app, gate, peer, shutdown, admitted).await,
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = admitted.close.cancelled() => return,
                        h = tokio::time::timeout(gate.handshake_timeout, acceptor.accept(stream)) => h,
                    };
                    // A failed or stalled handshake just closes the connection; rustls has sent its alert.
                    if let Ok(Ok(tls)) = handshake {
                        serve_connection(builder, tls, app, gate, peer, shutdown, admitted).await;
                    }
                }
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Answers every request of a refused connection with 503 (gRPC: UNAVAILABLE) for a moment, then closes it.
async fn refuse(
    builder: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    stream: tokio::net::TcpStream,
    max: usize,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let service = hyper::service::service_fn(move |request: axum::http::Request<hyper::body::Incoming>| {
        let text = connections::refusal_text(max);
        async move { Ok::<_, std::convert::Infallible>(status::unavailable(&request, &text)) }
    });
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
}

/// Serves one connection (clear or TLS) until it closes, the listener stops, or it is closed to make room.
async fn serve_connection<IO>(
    builder: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    io: IO,
    app: axum::Router,
    gate: Arc<Gate>,
    peer: SocketAddr,
    shutdown: CancellationToken,
    admitted: Admitted,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let close = admitted.close.clone();
    let admitted = Arc::new(admitted);
    let service = hyper::service::service_fn(move |request| {
        let (app, gate, admitted) = (app.clone(), Arc::clone(&gate), Arc::clone(&admitted));
        async move {
            // The request counts as in progress until its answer's body is done (or dropped).
            let in_request = admitted.request();
            let response = gate.pass(app, peer, request).await;
            Ok::<_, std::convert::Infallible>(response.map(|body| {
                use http_body_util::BodyExt;
                axum::body::Body::new(body.map_frame(move |frame| {
                    let _ = &in_request;
                    frame
                }))
            }))
        }
    });
    let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = close.cancelled() => {}
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
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
                match DuckSink::prepare(conn, i, Arc::clone(&locks)) {
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
    Ok(Running { runtime, core, cancel, guard, listeners: Vec::new(), schedules: Default::default() })
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
