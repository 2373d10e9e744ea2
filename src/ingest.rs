//! The ingest core, shared by every protocol: decoded Arrow in, one committed transaction out.
//!
//! A protocol adapter hands [`Core::ingest`] a stream name and a stream of [`Incoming`] items (the schema
//! first, then batches). The core resolves the target, checks the schema, checks out a writer thread, and
//! pumps batches to it through a small bounded channel, so a slow DuckDB slows the sender instead of queueing
//! memory. The writer (a [`Sink`], in production `writer::DuckSink`) writes everything in one transaction and
//! commits only after the adapter's stream ended cleanly; any failure, cancellation or disconnect rolls back.
//!
//! The end of a request is explicit: the pump sends [`Msg::End`] only when the input ended normally. A writer
//! that sees its channel close without `End` treats it as a disconnect and rolls back, so an aborted task can
//! never commit half a request. This module runs no SQL and knows no protocol.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use futures::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::auth::Principal;
use crate::error::Code;
use crate::ffi::Param;
use crate::metrics::{self, Metrics, Outcome, Protocol};
use crate::query::{Access, Catalog, Described, QueryOut, Statement};
use crate::registry::{Mapping, Mode, Registry, ResolveError, TableRule, Target};
use crate::schema;

/// Batches buffered between the network and a writer. Small on purpose: it bounds memory per request...
const QUEUE_DEPTH: usize = 4;

/// ...and so does this budget of decoded bytes queued (a batch larger than the budget still passes, alone), so a
/// request's memory does not grow with the size of its batches (up to `max_message_bytes` each).
const QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// How long a request waits for a free writer before it is answered "busy".
const WRITER_WAIT: Duration = Duration::from_secs(30);

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
}

impl Policy {
    pub fn new(reject_unknown: bool, stall_timeout: Duration, max_concurrent: usize) -> Policy {
        Policy { reject_unknown, stall_timeout, max_concurrent, admission: Arc::new(Semaphore::new(max_concurrent)) }
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

/// One decoded item of an incoming Arrow stream.
#[derive(Debug)]
pub enum Incoming {
    Schema(SchemaRef),
    Batch(RecordBatch),
}

/// Why a request did not commit. Messages are written for the client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
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
    Sql(String),
    #[error("arrowport is stopping; the request was rolled back and nothing was written")]
    Stopping,
    #[error("the client went away before the end of the stream; nothing was written")]
    Disconnected,
    #[error("the client sent nothing for {0:?}; the request was rolled back and nothing was written")]
    Stalled(Duration),
    #[error("all {0} writers are busy; retry later")]
    Busy(usize),
    #[error("{0} requests are already in flight on this listener (max_concurrent_requests); retry later")]
    Overloaded(usize),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Db(String),
    #[error("internal error")]
    Internal(String),
}

impl IngestError {
    pub fn code(&self) -> Code {
        match self {
            IngestError::BadInput(_) | IngestError::Unsupported(_) => Code::InvalidInput,
            IngestError::TooLarge(_) => Code::TooLarge,
            IngestError::Conflict(_) => Code::Conflict,
            IngestError::NotFound(_) => Code::NotFound,
            IngestError::AlreadyExists(_) => Code::AlreadyExists,
            IngestError::Sql(msg) if msg.starts_with("Catalog Error") => Code::NotFound,
            IngestError::Sql(_) => Code::InvalidInput,
            IngestError::Stopping => Code::Stopping,
            IngestError::Disconnected => Code::InvalidInput,
            IngestError::Stalled(_) => Code::Timeout,
            IngestError::Busy(_) | IngestError::Overloaded(_) => Code::Busy,
            IngestError::Denied(_) => Code::Denied,
            IngestError::Db(msg) => db_code(msg),
            IngestError::Internal(_) => Code::Internal,
        }
    }
}

/// The memory a decoded batch's columns use.
fn batch_bytes(b: &RecordBatch) -> usize {
    b.columns().iter().map(|c| c.to_data().get_slice_memory_size().unwrap_or(0)).sum()
}

/// DuckDB's error text starts with its class; the data-shaped ones are the client's to fix.
fn db_code(msg: &str) -> Code {
    const DATA: [&str; 6] =
        ["Constraint Error", "Conversion Error", "Invalid Input Error", "Catalog Error", "Binder Error", "Mismatch Type Error"];
    if DATA.iter().any(|p| msg.starts_with(p)) { Code::Conflict } else { Code::Internal }
}

/// A stream as listings show it.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    pub mapping: Mapping,
    /// Defined with `arrowport_create_stream` (else the default: `main.<name>`).
    pub defined: bool,
    /// The target table's Arrow schema; `None` while the table does not exist.
    pub schema: Option<Schema>,
}

/// What a committed request wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub stream: String,
    pub table: String,
    pub rows: u64,
    pub batches: u64,
}

/// What a writer reports after commit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Written {
    pub rows: u64,
    /// Time spent in DuckDB, first batch to commit.
    pub write_seconds: f64,
}

/// One request as a protocol adapter hands it to the core.
#[derive(Debug, Clone)]
pub struct Request {
    pub stream: String,
    pub protocol: Protocol,
    /// Bytes on the wire, counted by the adapter as the request streams in.
    pub wire_bytes: Arc<AtomicU64>,
    /// The target the client named itself (the original JSON endpoint); `None` uses the stream's mapping.
    pub target: Option<Target>,
    /// A complete mapping the client gave (Flight SQL ingest: table and mode); bypasses the stream's mapping.
    pub mapping: Option<Mapping>,
    /// Who sent it; the core checks the stream against the principal's scope.
    pub principal: Principal,
    /// The rules of the listener it came in on.
    pub policy: Arc<Policy>,
}

impl Request {
    pub fn new(stream: impl Into<String>, protocol: Protocol, principal: Principal, policy: Arc<Policy>) -> Request {
        Request { stream: stream.into(), protocol, wire_bytes: Arc::default(), target: None, mapping: None, principal, policy }
    }
}

/// Counts kept while a request runs.
#[derive(Debug, Default)]
struct Counts {
    batches: AtomicU64,
    /// Rows handed to the writer (committed, or rolled back on failure).
    rows: AtomicU64,
    decoded_bytes: AtomicU64,
}

/// Messages from the network side to a writer. A batch carries its share of the request's queue budget, given
/// back when the writer takes it.
#[derive(Debug)]
pub enum Msg {
    Batch(RecordBatch, Option<OwnedSemaphorePermit>),
    /// A batch read ahead by the core, already counted.
    Counted(RecordBatch, Option<OwnedSemaphorePermit>),
    /// The input ended normally: commit.
    End,
    /// The input failed: roll back with this error.
    Fail(IngestError),
}

/// The writer's side of a request: a blocking source of batches.
pub struct BatchRx {
    rx: mpsc::Receiver<Msg>,
    ended: bool,
    counts: Arc<Counts>,
}

impl BatchRx {
    /// The next batch (blocking), `Ok(None)` after a clean end, or why the request must roll back.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>, IngestError> {
        if self.ended {
            return Ok(None);
        }
        match self.rx.blocking_recv() {
            Some(Msg::Batch(b, _budget)) => {
                self.counts.batches.fetch_add(1, Ordering::Relaxed);
                self.counts.rows.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                Ok(Some(b))
            }
            Some(Msg::Counted(b, _budget)) => Ok(Some(b)),
            Some(Msg::End) => {
                self.ended = true;
                Ok(None)
            }
            Some(Msg::Fail(e)) => Err(e),
            None => Err(IngestError::Disconnected),
        }
    }
}

/// A small request received whole before it is written, for group commit.
#[derive(Debug, Clone)]
pub struct Buffered {
    pub mapping: Mapping,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub rows: u64,
}

/// Writes one request into the database: everything or nothing. Runs on a writer thread; may block.
pub trait Sink: Send + 'static {
    fn write(&mut self, mapping: &Mapping, schema: SchemaRef, input: BatchRx) -> Result<Written, IngestError>;
    /// Writes several buffered requests, in one transaction when it can; one result per request, each
    /// "committed" only if its rows are. A request that fails must not fail the others.
    fn write_group(&mut self, items: &[Buffered]) -> Vec<Result<Written, IngestError>>;
    /// The target's Arrow schema, `None` when it does not exist.
    fn table_schema(&mut self, target: &Target) -> Result<Option<Schema>, IngestError>;
    /// The tables unmapped streams land in, with their Arrow schemas.
    fn list_tables(&mut self) -> Result<Vec<(String, Schema)>, IngestError>;
    /// Proves the database answers; returns its version.
    fn ping(&mut self) -> Result<String, IngestError>;

    /// Prepares a statement sent over the network (see `query`); describes its result and parameters.
    fn describe_sql(&mut self, _sql: &str, _params: Option<&[Param]>, _access: Access) -> Result<Described, IngestError> {
        Err(IngestError::Unsupported("this writer runs no SQL".into()))
    }
    /// Runs a statement and sends its schema, then its batches, to `out`.
    fn query(&mut self, _statement: &Statement, _access: Access, _out: &QueryOut) -> Result<(), IngestError> {
        Err(IngestError::Unsupported("this writer runs no SQL".into()))
    }
    /// Runs a statement that changes data; returns the rows changed.
    fn update(&mut self, _statement: &Statement, _access: Access) -> Result<u64, IngestError> {
        Err(IngestError::Unsupported("this writer runs no SQL".into()))
    }
    /// Catalogs, schemas and tables.
    fn catalog(&mut self, _with_schemas: bool) -> Result<Catalog, IngestError> {
        Err(IngestError::Unsupported("this writer has no catalog".into()))
    }
}

type Reply<T> = oneshot::Sender<Result<T, IngestError>>;

pub(crate) enum Work {
    Write { mapping: Mapping, schema: SchemaRef, input: BatchRx, reply: Reply<Written> },
    Describe { target: Target, reply: Reply<Option<Schema>> },
    List { reply: Reply<Vec<(String, Schema)>> },
    Ping { reply: Reply<String> },
    DescribeSql { sql: String, params: Option<Vec<Param>>, access: Access, reply: Reply<Described> },
    Query { statement: Statement, access: Access, out: QueryOut, reply: Reply<()> },
    Update { statement: Statement, access: Access, reply: Reply<u64> },
    Catalog { with_schemas: bool, reply: Reply<Catalog> },
}

struct Job {
    work: Work,
    _permit: OwnedSemaphorePermit,
}

/// A small request waiting for the group committer.
struct GroupJob {
    item: Buffered,
    reply: Reply<Written>,
}

/// Writers that commit groups (when the pool has four connections or more). Measured on 2 cores, 8 clients of
/// 1,000-row DoPuts: one committer 41-44k requests/min, two 42-46k (the committer is DuckDB's own work, and the
/// clients share the cores); one keeps more writers for large requests.
const GROUP_COMMITTERS: usize = 1;

/// The requests waiting for a group committer (at least one, blocking for it); `None` once the queue is closed.
fn take_group(rx: &Mutex<std::sync::mpsc::Receiver<GroupJob>>) -> Option<Vec<GroupJob>> {
    let rx = rx.lock().ok()?;
    let mut jobs = vec![rx.recv().ok()?];
    while jobs.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(j) => jobs.push(j),
            Err(_) => break,
        }
    }
    Some(jobs)
}

/// Lands one group and answers each request in it.
fn commit_group<S: Sink>(sink: &mut S, jobs: Vec<GroupJob>) {
    let items: Vec<Buffered> = jobs.iter().map(|j| j.item.clone()).collect();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.write_group(&items))) {
        Ok(results) if results.len() == jobs.len() => {
            for (job, result) in jobs.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        }
        Ok(_) => {
            for job in jobs {
                let _ = job.reply.send(Err(IngestError::Internal("the group committer lost a result".into())));
            }
        }
        Err(p) => {
            let msg = format!("group committer panicked: {}", crate::ffi::panic_message(p.as_ref()));
            for job in jobs {
                let _ = job.reply.send(Err(IngestError::Internal(msg.clone())));
            }
        }
    }
}

/// Requests one group commit takes at most.
const MAX_GROUP: usize = 128;

/// A request whose decoded batches stay under this is received whole and committed in a group with others.
pub const GROUP_BYTES: usize = 4 * 1024 * 1024;

fn guarded<T>(f: impl FnOnce() -> Result<T, IngestError>) -> Result<T, IngestError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|p| Err(IngestError::Internal(format!("writer panicked: {}", crate::ffi::panic_message(p.as_ref())))))
}

/// A fixed set of writer threads, each owning one sink (one DuckDB connection). A request holds a permit for
/// the whole time a writer works for it, so a submitted job always finds a free thread.
pub struct Writers<S: Sink> {
    jobs: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    permits: Arc<Semaphore>,
    threads: Mutex<Vec<JoinHandle<S>>>,
    size: usize,
    /// The group committer: one writer of the pool that lands small requests, as many per transaction as have
    /// arrived while it committed the last group (so N waiting requests cost one commit, not N).
    group: Mutex<Option<std::sync::mpsc::Sender<GroupJob>>>,
    group_threads: Mutex<Vec<JoinHandle<S>>>,
}

impl<S: Sink> Writers<S> {
    pub fn start(mut sinks: Vec<S>) -> std::io::Result<Writers<S>> {
        // The last connection(s) of the pool commit groups of small requests.
        let committers = match sinks.len() {
            0 | 1 => 0,
            2 | 3 => 1,
            _ => GROUP_COMMITTERS,
        };
        let group_sinks = sinks.split_off(sinks.len() - committers);
        let (group, group_threads) = if group_sinks.is_empty() {
            (None, Vec::new())
        } else {
            let (tx, handles) = Self::start_group(group_sinks)?;
            (Some(tx), handles)
        };
        let size = sinks.len();
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::with_capacity(size);
        for (i, mut sink) in sinks.into_iter().enumerate() {
            let rx = Arc::clone(&rx);
            let handle = std::thread::Builder::new().name(format!("arrowport-writer-{i}")).spawn(move || {
                loop {
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => break,
                    };
                    let Ok(job) = job else { break };
                    match job.work {
                        Work::Write { mapping, schema, input, reply } => {
                            let _ = reply.send(guarded(|| sink.write(&mapping, schema, input)));
                        }
                        Work::Describe { target, reply } => {
                            let _ = reply.send(guarded(|| sink.table_schema(&target)));
                        }
                        Work::List { reply } => {
                            let _ = reply.send(guarded(|| sink.list_tables()));
                        }
                        Work::Ping { reply } => {
                            let _ = reply.send(guarded(|| sink.ping()));
                        }
                        Work::DescribeSql { sql, params, access, reply } => {
                            let _ = reply.send(guarded(|| sink.describe_sql(&sql, params.as_deref(), access)));
                        }
                        Work::Query { statement, access, out, reply } => {
                            let _ = reply.send(guarded(|| sink.query(&statement, access, &out)));
                        }
                        Work::Update { statement, access, reply } => {
                            let _ = reply.send(guarded(|| sink.update(&statement, access)));
                        }
                        Work::Catalog { with_schemas, reply } => {
                            let _ = reply.send(guarded(|| sink.catalog(with_schemas)));
                        }
                    }
                }
                sink
            })?;
            threads.push(handle);
        }
        Ok(Writers {
            jobs: Mutex::new(Some(tx)),
            permits: Arc::new(Semaphore::new(size)),
            threads: Mutex::new(threads),
            size,
            group: Mutex::new(group),
            group_threads: Mutex::new(group_threads),
        })
    }

    fn start_group(sinks: Vec<S>) -> std::io::Result<(std::sync::mpsc::Sender<GroupJob>, Vec<JoinHandle<S>>)> {
        let (tx, rx) = std::sync::mpsc::channel::<GroupJob>();
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::with_capacity(sinks.len());
        for (i, mut sink) in sinks.into_iter().enumerate() {
            let rx = Arc::clone(&rx);
            let handle = std::thread::Builder::new().name(format!("arrowport-commit-{i}")).spawn(move || {
                // Each turn takes every request waiting now; one committer takes while the other may commit.
                while let Some(jobs) = take_group(&rx) {
                    commit_group(&mut sink, jobs);
                }
                sink
            })?;
            handles.push(handle);
        }
        Ok((tx, handles))
    }

    /// Queues a small request for the group committer; `Err(item)` when there is none.
    fn submit_group(&self, item: Buffered, reply: Reply<Written>) -> Result<(), IngestError> {
        let group = self.group.lock().map_err(|_| IngestError::Internal("group queue poisoned".into()))?;
        match group.as_ref() {
            Some(tx) => tx.send(GroupJob { item, reply }).map_err(|_| IngestError::Stopping),
            None => Err(IngestError::Stopping),
        }
    }

    fn has_group(&self) -> bool {
        self.group.lock().map(|g| g.is_some()).unwrap_or(false)
    }

    /// Stops taking jobs, waits for the running ones, joins the threads and gives the sinks back.
    pub fn stop(&self) -> Vec<S> {
        self.permits.close();
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        if let Ok(mut group) = self.group.lock() {
            group.take();
        }
        let threads = self.threads.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default();
        let mut sinks: Vec<S> = threads.into_iter().filter_map(|t| t.join().ok()).collect();
        let group_threads = self.group_threads.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default();
        sinks.extend(group_threads.into_iter().filter_map(|t| t.join().ok()));
        sinks
    }

    fn submit(&self, job: Job) -> Result<(), IngestError> {
        let jobs = self.jobs.lock().map_err(|_| IngestError::Internal("writer queue poisoned".into()))?;
        match jobs.as_ref() {
            Some(tx) => tx.send(job).map_err(|_| IngestError::Stopping),
            None => Err(IngestError::Stopping),
        }
    }
}

/// The object protocol adapters call.
pub struct Core<S: Sink> {
    writers: Writers<S>,
    cancel: CancellationToken,
    active: AtomicUsize,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
}

/// Counts a request as in flight while it lives.
struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S: Sink> Core<S> {
    pub fn new(writers: Writers<S>, cancel: CancellationToken, metrics: Arc<Metrics>, registry: Arc<Registry>) -> Core<S> {
        Core { writers, cancel, active: AtomicUsize::new(0), metrics, registry }
    }

    /// The mapping a request uses.
    fn mapping(&self, stream: &str, reject_unknown: bool) -> Result<Mapping, IngestError> {
        self.registry.resolve(stream, reject_unknown).map_err(|e| match e {
            ResolveError::BadName(m) => IngestError::BadInput(m),
            ResolveError::Unknown(m) => IngestError::NotFound(m),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts a request an adapter refused before it reached the core (bad descriptor, wrong media type...).
    pub fn reject(&self, protocol: Protocol, error: &IngestError) {
        self.metrics.record(&Outcome {
            stream: metrics::UNKNOWN_STREAM,
            protocol,
            result: Err(error.to_string()),
            rows: 0,
            batches: 0,
            wire_bytes: 0,
            decoded_bytes: 0,
            seconds: 0.0,
        });
    }

    /// Requests being received or written right now.
    pub fn in_flight(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn writers(&self) -> &Writers<S> {
        &self.writers
    }

    /// Lands one request: the schema first, then batches, all in one transaction. Returns after commit.
    pub async fn ingest<I>(&self, request: Request, input: I) -> Result<Report, IngestError>
    where
        I: Stream<Item = Result<Incoming, IngestError>> + Unpin + Send,
    {
        let started = Instant::now();
        let _in_flight = self.metrics.in_flight(request.protocol);
        self.active.fetch_add(1, Ordering::Relaxed);
        let _active = Active(&self.active);
        let counts = Arc::new(Counts::default());
        let result = self.run(&request, input, &counts).await;
        self.metrics.record(&Outcome {
            stream: &request.stream,
            protocol: request.protocol,
            result: result.as_ref().map(|(_, w)| w.write_seconds).map_err(|e| e.to_string()),
            rows: match &result {
                Ok((report, _)) => report.rows,
                Err(_) => counts.rows.load(Ordering::Relaxed),
            },
            batches: counts.batches.load(Ordering::Relaxed),
            wire_bytes: request.wire_bytes.load(Ordering::Relaxed),
            decoded_bytes: counts.decoded_bytes.load(Ordering::Relaxed),
            seconds: started.elapsed().as_secs_f64(),
        });
        result.map(|(report, _)| report)
    }

    async fn run<I>(&self, request: &Request, mut input: I, counts: &Arc<Counts>) -> Result<(Report, Written), IngestError>
    where
        I: Stream<Item = Result<Incoming, IngestError>> + Unpin + Send,
    {
        let stream = request.stream.as_str();
        let _admitted = request.policy.admit()?;
        if !request.principal.may_use(stream) {
            return Err(IngestError::Denied(request.principal.denied(stream)));
        }
        let mut mapping = match &request.mapping {
            Some(m) => m.clone(),
            None => self.mapping(stream, request.policy.reject_unknown)?,
        };
        if let Some(t) = &request.target {
            mapping.target = t.clone();
        }
        // A principal limited to streams writes only where its stream name lands by default.
        if !request.principal.may_choose_target() && mapping.target != Mapping::default_for(stream).target {
            if request.target.is_some() || request.mapping.is_some() {
                return Err(IngestError::Denied(format!(
                    "{}; a token limited to streams cannot name its own target table",
                    request.principal.denied(&mapping.target.display())
                )));
            }
        }
        let stall = request.policy.stall_timeout;
        let schema = match self.next_or_cancel(&mut input, stall).await? {
            Some(Incoming::Schema(s)) => s,
            Some(Incoming::Batch(_)) => return Err(IngestError::BadInput("the stream sent a batch before its schema".into())),
            None => return Err(IngestError::BadInput("the stream ended before it sent a schema".into())),
        };
        schema::check_supported(&schema).map_err(IngestError::Unsupported)?;
        // Types DuckDB's scan refuses but can hold after a lossless cast (float16, decimal256 in range).
        let incoming = schema;
        let (schema, needs_cast) = schema::storable(&incoming);

        // Read ahead: a request that ends within GROUP_BYTES is committed with others in one transaction (group
        // commit); a larger one streams into a writer of its own, starting with what was read ahead.
        let groupable = mapping.mode == Mode::Append
            && matches!(mapping.rule, TableRule::Stream | TableRule::Append | TableRule::CreateAppend)
            && self.writers.has_group();
        let mut ahead = Vec::new();
        let mut ended = false;
        if groupable {
            let mut bytes = 0;
            while bytes <= GROUP_BYTES {
                match self.next_batch(&mut input, stall, &incoming, needs_cast.then_some(&schema), counts).await? {
                    None => {
                        ended = true;
                        break;
                    }
                    Some((b, size)) => {
                        bytes += size;
                        counts.batches.fetch_add(1, Ordering::Relaxed);
                        counts.rows.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                        ahead.push((b, size));
                    }
                }
            }
            if ended && !ahead.is_empty() {
                let rows: u64 = ahead.iter().map(|(b, _)| b.num_rows() as u64).sum();
                let table = mapping.target.display();
                let (reply, done) = oneshot::channel();
                let item = Buffered { mapping, schema, batches: ahead.into_iter().map(|(b, _)| b).collect(), rows };
                self.writers.submit_group(item, reply)?;
                let written = done.await.map_err(|_| IngestError::Internal("the group committer went away".into()))??;
                let batches = counts.batches.load(Ordering::Relaxed);
                return Ok((Report { stream: stream.to_string(), table, rows: written.rows, batches }, written));
            }
        }

        let permit = self.permit().await?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (reply_tx, reply_rx) = oneshot::channel();
        let batch_rx = BatchRx { rx, ended: false, counts: Arc::clone(counts) };
        let table = mapping.target.display();
        let work = Work::Write { mapping, schema: Arc::clone(&schema), input: batch_rx, reply: reply_tx };
        self.writers.submit(Job { work, _permit: permit })?;

        let budget = Arc::new(Semaphore::new(QUEUE_BYTES));
        let mut pumped = Ok(());
        for (b, size) in ahead {
            pumped = match self.queue(&tx, &budget, b, size, true).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(IngestError::Internal("the writer stopped reading".into())),
                Err(e) => Err(e),
            };
            if pumped.is_err() {
                break;
            }
        }
        if pumped.is_ok() && !ended {
            pumped = self.pump(&mut input, stall, &tx, &budget, &incoming, needs_cast.then_some(&schema), counts).await;
        }
        let last = match &pumped {
            Ok(()) => Msg::End,
            Err(e) => Msg::Fail(e.clone()),
        };
        // The writer may already have finished (it failed early); then it ignores this.
        let _ = tx.send(last).await;
        drop(tx);
        let written = reply_rx.await.map_err(|_| IngestError::Internal("the writer went away".into()));
        // A failure of the input is the cause; the writer's error is only its echo. (A writer that stopped
        // reading early reports why in its reply.)
        if let Err(IngestError::Internal(_)) = &pumped {
            if let Ok(Err(e)) = &written {
                return Err(e.clone());
            }
        }
        pumped?;
        let written = written??;
        let batches = counts.batches.load(Ordering::Relaxed);
        Ok((Report { stream: stream.to_string(), table, rows: written.rows, batches }, written))
    }

    /// The Arrow schema of the table a stream lands in; `None` when that table does not exist yet.
    pub async fn describe(&self, stream: &str) -> Result<Option<Schema>, IngestError> {
        let target = self.mapping(stream, false)?.target;
        let (reply, rx) = oneshot::channel();
        self.call(Work::Describe { target, reply }, rx).await
    }

    /// Every table an unmapped stream name lands in, with its Arrow schema.
    pub async fn list(&self) -> Result<Vec<(String, Schema)>, IngestError> {
        let (reply, rx) = oneshot::channel();
        self.call(Work::List { reply }, rx).await
    }

    /// The streams a client can see: every defined mapping (with its table's schema when the table exists),
    /// then every table of `main` that an unmapped name of the same name lands in.
    pub async fn streams(&self) -> Result<Vec<StreamInfo>, IngestError> {
        let mut out = Vec::new();
        for mapping in self.registry.all() {
            let (reply, rx) = oneshot::channel();
            let schema = self.call(Work::Describe { target: mapping.target.clone(), reply }, rx).await?;
            out.push(StreamInfo { mapping, defined: true, schema });
        }
        for (name, schema) in self.list().await? {
            if self.registry.get(&name).is_none() {
                out.push(StreamInfo { mapping: Mapping::default_for(&name), defined: false, schema: Some(schema) });
            }
        }
        Ok(out)
    }

    /// One stream as [`Core::streams`] shows it; `None` for a name without a mapping and without a table.
    pub async fn stream(&self, name: &str) -> Result<Option<StreamInfo>, IngestError> {
        let defined = self.registry.get(name);
        let mapping = self.mapping(name, false)?;
        let (reply, rx) = oneshot::channel();
        let schema = self.call(Work::Describe { target: mapping.target.clone(), reply }, rx).await?;
        if defined.is_none() && schema.is_none() {
            return Ok(None);
        }
        Ok(Some(StreamInfo { mapping, defined: defined.is_some(), schema }))
    }

    /// Asks a writer to prove the database answers.
    pub async fn ping(&self) -> Result<String, IngestError> {
        let (reply, rx) = oneshot::channel();
        self.call(Work::Ping { reply }, rx).await
    }

    pub(crate) async fn call<T>(&self, work: Work, rx: oneshot::Receiver<Result<T, IngestError>>) -> Result<T, IngestError> {
        self.submit_work(work).await?;
        rx.await.map_err(|_| IngestError::Internal("the writer went away".into()))?
    }

    /// Hands work to a free writer (waiting for one); the work replies on its own channel.
    pub(crate) async fn submit_work(&self, work: Work) -> Result<(), IngestError> {
        let permit = self.permit().await?;
        self.writers.submit(Job { work, _permit: permit })
    }

    async fn permit(&self) -> Result<OwnedSemaphorePermit, IngestError> {
        tokio::select! {
            _ = self.cancel.cancelled() => Err(IngestError::Stopping),
            p = tokio::time::timeout(WRITER_WAIT, Arc::clone(&self.writers.permits).acquire_owned()) => match p {
                Ok(Ok(p)) => Ok(p),
                Ok(Err(_)) => Err(IngestError::Stopping),
                Err(_) => Err(IngestError::Busy(self.writers.size)),
            },
        }
    }

    async fn next_or_cancel<I>(&self, input: &mut I, stall: Duration) -> Result<Option<Incoming>, IngestError>
    where
        I: Stream<Item = Result<Incoming, IngestError>> + Unpin + Send,
    {
        tokio::select! {
            _ = self.cancel.cancelled() => Err(IngestError::Stopping),
            item = tokio::time::timeout(stall, input.next()) => match item {
                Ok(item) => item.transpose(),
                Err(_) => Err(IngestError::Stalled(stall)),
            },
        }
    }

    /// The next non-empty batch of the input (cast when needed) and its decoded size, counted; `None` at the
    /// end. A repeated schema must equal the first.
    async fn next_batch<I>(
        &self,
        input: &mut I,
        stall: Duration,
        incoming: &SchemaRef,
        cast_to: Option<&SchemaRef>,
        counts: &Counts,
    ) -> Result<Option<(RecordBatch, usize)>, IngestError>
    where
        I: Stream<Item = Result<Incoming, IngestError>> + Unpin + Send,
    {
        loop {
            match self.next_or_cancel(input, stall).await? {
                None => return Ok(None),
                Some(Incoming::Schema(s)) => {
                    if s.fields() != incoming.fields() {
                        return Err(IngestError::BadInput("the schema changed in the middle of the stream".into()));
                    }
                }
                Some(Incoming::Batch(b)) if b.num_rows() == 0 => {}
                Some(Incoming::Batch(b)) => {
                    let size = batch_bytes(&b);
                    counts.decoded_bytes.fetch_add(size as u64, Ordering::Relaxed);
                    let b = match cast_to {
                        Some(to) => schema::cast_batch(&b, to).map_err(IngestError::BadInput)?,
                        None => b,
                    };
                    return Ok(Some((b, size)));
                }
            }
        }
    }

    /// Moves batches from the input to the writer until the input ends (Ok) or fails (Err). Returns Ok early
    /// when the writer stopped reading: its reply carries the reason.
    #[allow(clippy::too_many_arguments)]
    async fn pump<I>(
        &self,
        input: &mut I,
        stall: Duration,
        tx: &mpsc::Sender<Msg>,
        budget: &Arc<Semaphore>,
        incoming: &SchemaRef,
        cast_to: Option<&SchemaRef>,
        counts: &Counts,
    ) -> Result<(), IngestError>
    where
        I: Stream<Item = Result<Incoming, IngestError>> + Unpin + Send,
    {
        loop {
            match self.next_batch(input, stall, incoming, cast_to, counts).await? {
                None => return Ok(()),
                Some((b, size)) => {
                    if !self.queue(tx, budget, b, size, false).await? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Queues a batch for the writer once the request's byte budget has room for it (the writer's pace is the
    /// sender's: while this waits, the request reads nothing more). `Ok(false)` when the writer stopped reading.
    async fn queue(&self, tx: &mpsc::Sender<Msg>, budget: &Arc<Semaphore>, b: RecordBatch, size: usize, counted: bool) -> Result<bool, IngestError> {
        // Within QUEUE_BYTES (64 MiB), so the count fits a u32.
        let share = size.clamp(1, QUEUE_BYTES) as u32;
        let permit = tokio::select! {
            _ = self.cancel.cancelled() => return Err(IngestError::Stopping),
            p = Arc::clone(budget).acquire_many_owned(share) => p.map_err(|_| IngestError::Internal("the queue budget was closed".into()))?,
        };
        let msg = if counted { Msg::Counted(b, Some(permit)) } else { Msg::Batch(b, Some(permit)) };
        tokio::select! {
            _ = self.cancel.cancelled() => Err(IngestError::Stopping),
            r = tx.send(msg) => Ok(r.is_ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use futures::stream;

    /// A sink that keeps what it was given and "commits" only at a clean end.
    #[derive(Default)]
    struct Fake {
        committed: Arc<Mutex<Vec<(String, u64)>>>,
        groups: Arc<Mutex<Vec<usize>>>,
        /// When set, a streamed write reads nothing until this yields (a slow DuckDB).
        hold: Option<Arc<Mutex<std::sync::mpsc::Receiver<()>>>>,
    }

    impl Sink for Fake {
        fn write(&mut self, mapping: &Mapping, _schema: SchemaRef, mut input: BatchRx) -> Result<Written, IngestError> {
            if let Some(hold) = &self.hold {
                let _ = hold.lock().unwrap().recv();
            }
            let mut rows = 0;
            while let Some(b) = input.next_batch()? {
                rows += b.num_rows() as u64;
            }
            self.committed.lock().unwrap().push((mapping.target.table.clone(), rows));
            Ok(Written { rows, write_seconds: 0.0 })
        }

        fn write_group(&mut self, items: &[Buffered]) -> Vec<Result<Written, IngestError>> {
            self.groups.lock().unwrap().push(items.len());
            std::thread::sleep(Duration::from_millis(20));
            items
                .iter()
                .map(|i| {
                    self.committed.lock().unwrap().push((i.mapping.target.table.clone(), i.rows));
                    Ok(Written { rows: i.rows, write_seconds: 0.0 })
                })
                .collect()
        }

        fn table_schema(&mut self, _: &Target) -> Result<Option<Schema>, IngestError> {
            Ok(None)
        }

        fn list_tables(&mut self) -> Result<Vec<(String, Schema)>, IngestError> {
            Ok(vec![])
        }

        fn ping(&mut self) -> Result<String, IngestError> {
            Ok("fake".into())
        }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]))
    }

    fn batch(n: i64) -> RecordBatch {
        RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from_iter_values(0..n))]).unwrap()
    }

    fn req(stream: &str, protocol: Protocol) -> Request {
        Request::new(stream, protocol, Principal::Anonymous, Arc::default())
    }

    fn core(committed: &Arc<Mutex<Vec<(String, u64)>>>) -> Core<Fake> {
        let sinks = (0..3).map(|_| Fake { committed: Arc::clone(committed), ..Fake::default() }).collect();
        Core::new(Writers::start(sinks).unwrap(), CancellationToken::new(), Arc::default(), Arc::default())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_clean_stream_commits_every_row() {
        let committed = Arc::default();
        let core = core(&committed);
        let items = vec![Ok(Incoming::Schema(schema())), Ok(Incoming::Batch(batch(3))), Ok(Incoming::Batch(batch(4)))];
        let report = core.ingest(req("events", Protocol::Flight), stream::iter(items)).await.unwrap();
        assert_eq!(report, Report { stream: "events".into(), table: "main.events".into(), rows: 7, batches: 2 });
        assert_eq!(*committed.lock().unwrap(), vec![("events".to_string(), 7)]);
        let m = &core.metrics().rows()[0];
        assert_eq!((m.stream.as_str(), m.requests_ok, m.rows, m.batches, m.decoded_bytes), ("events", 1, 7, 2, 7 * 8));
        assert_eq!(core.writers().stop().len(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_writer_holds_the_sender_to_the_queue_budget() {
        let committed: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
        let (release, hold) = std::sync::mpsc::channel();
        let hold = Arc::new(Mutex::new(hold));
        let sinks = (0..3).map(|_| Fake { committed: Arc::clone(&committed), hold: Some(Arc::clone(&hold)), ..Fake::default() }).collect();
        let core = Arc::new(Core::new(Writers::start(sinks).unwrap(), CancellationToken::new(), Arc::default(), Arc::default()));
        // Batches of 24 MiB: the 64 MiB budget queues two; the third waits for room, and nothing more is read.
        let rows = (24 << 20) / 8;
        let pulled = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&pulled);
        let items = std::iter::once(Ok(Incoming::Schema(schema()))).chain((0..6).map(move |_| Ok(Incoming::Batch(batch(rows as i64)))));
        let input = stream::iter(items).inspect(move |_| {
            seen.fetch_add(1, Ordering::SeqCst);
        });
        let c = Arc::clone(&core);
        let task = tokio::spawn(async move { c.ingest(req("events", Protocol::Flight), input).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(pulled.load(Ordering::SeqCst), 1 + 3, "the schema, two queued batches and one waiting for room");
        release.send(()).unwrap();
        let report = task.await.unwrap().unwrap();
        assert_eq!(report.rows, 6 * rows as u64);
        assert_eq!(*committed.lock().unwrap(), vec![("events".to_string(), 6 * rows as u64)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_stream_commits_nothing_and_reports_the_input_error() {
        let committed = Arc::default();
        let core = core(&committed);
        let items = vec![
            Ok(Incoming::Schema(schema())),
            Ok(Incoming::Batch(batch(3))),
            Err(IngestError::BadInput("truncated IPC message".into())),
        ];
        let err = core.ingest(req("events", Protocol::Flight), stream::iter(items)).await.unwrap_err();
        assert_eq!(err.to_string(), "truncated IPC message");
        assert!(committed.lock().unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_schema_change_mid_stream_is_refused() {
        let committed = Arc::default();
        let core = core(&committed);
        let other = Arc::new(Schema::new(vec![Field::new("x", DataType::Utf8, true)]));
        let items = vec![Ok(Incoming::Schema(schema())), Ok(Incoming::Batch(batch(3))), Ok(Incoming::Schema(other))];
        let err = core.ingest(req("events", Protocol::Flight), stream::iter(items)).await.unwrap_err();
        assert!(err.to_string().contains("schema changed"), "{err}");
        assert_eq!(err.code(), Code::InvalidInput);
        assert!(committed.lock().unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancellation_rolls_back_a_waiting_request() {
        let committed = Arc::default();
        let core = Arc::new(core(&committed));
        let (tx, rx) = futures::channel::mpsc::unbounded();
        tx.unbounded_send(Ok(Incoming::Schema(schema()))).unwrap();
        tx.unbounded_send(Ok(Incoming::Batch(batch(5)))).unwrap();
        let c = Arc::clone(&core);
        let task = tokio::spawn(async move { c.ingest(req("events", Protocol::Flight), rx).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        core.cancel.cancel();
        let err = task.await.unwrap().unwrap_err();
        assert!(matches!(err, IngestError::Stopping), "{err:?}");
        assert!(committed.lock().unwrap().is_empty());
        drop(tx);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_client_is_rolled_back() {
        let committed = Arc::default();
        let core = core(&committed);
        let (tx, rx) = futures::channel::mpsc::unbounded();
        tx.unbounded_send(Ok(Incoming::Schema(schema()))).unwrap();
        tx.unbounded_send(Ok(Incoming::Batch(batch(5)))).unwrap();
        let policy = Arc::new(Policy::new(false, Duration::from_millis(100), 4));
        let err = core.ingest(Request::new("events", Protocol::Rest, Principal::Anonymous, policy), rx).await.unwrap_err();
        assert!(matches!(err, IngestError::Stalled(_)), "{err:?}");
        assert_eq!(err.code(), Code::Timeout);
        assert!(committed.lock().unwrap().is_empty());
        assert_eq!(core.metrics().rows()[0].rows_rolled_back, 5);
        drop(tx);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_producer_is_a_disconnect_not_a_commit() {
        let (tx, rx) = mpsc::channel(1);
        let mut input = BatchRx { rx, ended: false, counts: Arc::default() };
        tx.send(Msg::Batch(batch(1), None)).await.unwrap();
        drop(tx);
        let got = tokio::task::spawn_blocking(move || (input.next_batch().map(|b| b.is_some()), input.next_batch().map(|_| ())))
            .await
            .unwrap();
        assert!(matches!(got.0, Ok(true)));
        assert!(matches!(got.1, Err(IngestError::Disconnected)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unsupported_types_are_refused_before_any_write() {
        let committed = Arc::default();
        let core = core(&committed);
        let s = Arc::new(Schema::new(vec![Field::new("u", DataType::Union(arrow::datatypes::UnionFields::empty(), arrow::datatypes::UnionMode::Sparse), true)]));
        let err = core.ingest(req("events", Protocol::Flight), stream::iter(vec![Ok(Incoming::Schema(s))])).await.unwrap_err();
        assert!(err.to_string().contains("column \"u\""), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_beyond_the_limit_are_refused_at_once_while_others_go_on() {
        let committed = Arc::default();
        let core = Arc::new(core(&committed));
        let policy = Arc::new(Policy::new(false, STALL_LIMIT, 1));
        let (tx, rx) = futures::channel::mpsc::unbounded();
        tx.unbounded_send(Ok(Incoming::Schema(schema()))).unwrap();
        let (c, p) = (Arc::clone(&core), Arc::clone(&policy));
        let first = tokio::spawn(async move { c.ingest(Request::new("events", Protocol::Flight, Principal::Anonymous, p), rx).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let items = vec![Ok(Incoming::Schema(schema())), Ok(Incoming::Batch(batch(2)))];
        let err = core.ingest(Request::new("events", Protocol::Flight, Principal::Anonymous, Arc::clone(&policy)), stream::iter(items)).await.unwrap_err();
        assert!(matches!(err, IngestError::Overloaded(1)), "{err:?}");
        assert_eq!(err.code(), Code::Busy);
        tx.unbounded_send(Ok(Incoming::Batch(batch(3)))).unwrap();
        drop(tx);
        assert_eq!(first.await.unwrap().unwrap().rows, 3);
        let items = vec![Ok(Incoming::Schema(schema())), Ok(Incoming::Batch(batch(2)))];
        assert_eq!(core.ingest(Request::new("events", Protocol::Flight, Principal::Anonymous, policy), stream::iter(items)).await.unwrap().rows, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_writes_only_its_streams() {
        use crate::auth::Scope;
        let committed = Arc::default();
        let core = core(&committed);
        let etl = Principal::Token { name: Arc::from("etl"), scope: Arc::new(Scope::Streams(vec!["events".into()])) };
        let items = || vec![Ok(Incoming::Schema(schema())), Ok(Incoming::Batch(batch(2)))];
        let err = core.ingest(Request::new("orders", Protocol::Rest, etl.clone(), Arc::default()), stream::iter(items())).await.unwrap_err();
        assert_eq!((err.code(), err.to_string()), (Code::Denied, "token \"etl\" is not allowed to use stream \"orders\"".to_string()));
        let mut own_target = Request::new("events", Protocol::Rest, etl.clone(), Arc::default());
        own_target.target = Some(Target { catalog: None, schema: "main".into(), table: "orders".into() });
        assert_eq!(core.ingest(own_target, stream::iter(items())).await.unwrap_err().code(), Code::Denied);
        assert_eq!(core.ingest(Request::new("events", Protocol::Rest, etl, Arc::default()), stream::iter(items())).await.unwrap().rows, 2);
        assert_eq!(*committed.lock().unwrap(), vec![("events".to_string(), 2)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_requests_commit_in_groups_and_large_ones_stream() {
        let committed: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
        let groups: Arc<Mutex<Vec<usize>>> = Arc::default();
        let sinks = (0..3).map(|_| Fake { committed: Arc::clone(&committed), groups: Arc::clone(&groups), ..Fake::default() }).collect();
        let core = Arc::new(Core::new(Writers::start(sinks).unwrap(), CancellationToken::new(), Arc::default(), Arc::default()));
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let c = Arc::clone(&core);
                tokio::spawn(async move {
                    let items = vec![Ok(Incoming::Schema(schema())), Ok(Incoming::Batch(batch(i + 1)))];
                    c.ingest(req("events", Protocol::Rest), stream::iter(items)).await
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().unwrap().rows, i as u64 + 1);
        }
        let seen = groups.lock().unwrap().clone();
        assert_eq!(seen.iter().sum::<usize>(), 20);
        assert!(seen.len() < 20, "no request was grouped with another: {seen:?}");
        // Over GROUP_BYTES: streamed through a writer (the Fake's write), not grouped.
        let big = (GROUP_BYTES / 8) as i64 + 1;
        let items = vec![Ok(Incoming::Schema(schema())), Ok(Incoming::Batch(batch(big))), Ok(Incoming::Batch(batch(3)))];
        assert_eq!(core.ingest(req("big", Protocol::Rest), stream::iter(items)).await.unwrap().rows, big as u64 + 3);
        assert_eq!(committed.lock().unwrap().iter().filter(|(t, _)| t == "big").count(), 1);
        // A mode that cannot share a transaction (Flight SQL create) streams too, every batch of it.
        let mut create = req("made", Protocol::FlightSql);
        let mut mapping = Mapping::default_for("made");
        mapping.rule = TableRule::Create;
        create.mapping = Some(mapping);
        let items = vec![Ok(Incoming::Schema(schema())), Ok(Incoming::Batch(batch(2))), Ok(Incoming::Batch(batch(5)))];
        assert_eq!(core.ingest(create, stream::iter(items)).await.unwrap().rows, 7);
        assert_eq!(groups.lock().unwrap().iter().sum::<usize>(), 20);
        assert_eq!(core.writers().stop().len(), 3);
    }

    #[test]
    fn duckdb_errors_are_classified_by_their_class() {
        assert_eq!(IngestError::Db("Constraint Error: NOT NULL constraint failed".into()).code(), Code::Conflict);
        assert_eq!(IngestError::Db("IO Error: disk full".into()).code(), Code::Internal);
    }
}
