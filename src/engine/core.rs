//! The object the protocol adapters call ([`Core`]): it owns the writer pool, the stop signal, the metrics and
//! the stream registry, and hands work to writers. The ingest pipeline (`ingest`) and the query core (`query`)
//! add their methods to it; here are the calls every protocol shares: describing and listing streams, and
//! proving the database answers.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::datatypes::Schema;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio_util::sync::CancellationToken;

use crate::catalog::registry::{Mapping, Registry, ResolveError};
use crate::engine::budget::Budget;
use crate::engine::error::EngineError;
use crate::engine::memory_guard::MemoryGuard;
use crate::engine::metrics::{self, Metrics, Outcome, Protocol};
use crate::engine::session::{KeyRecord, Session};
use crate::engine::writers::{Job, Watch, Work, Writers};

/// How long a request waits for a free writer before it is answered "busy".
const WRITER_WAIT: Duration = Duration::from_secs(30);

/// What became of a request, as its idempotency key tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStatus {
    /// Committed; its acknowledgement (JSON).
    Committed(String),
    /// Being received or written on this host now.
    InProgress,
    /// Not committed (within the key window): never received, rolled back, or forgotten.
    Unknown,
}

/// An idempotency key in progress; released when dropped.
pub(crate) struct KeyGuard {
    keys: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
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

/// The object protocol adapters call.
pub struct Core<S: Session> {
    pub(crate) writers: Writers<S>,
    /// The threads and connections that run statements sent over the network (never the ingest writers).
    pub(crate) statements: Option<Writers<S>>,
    pub(crate) cancel: CancellationToken,
    pub(crate) active: AtomicUsize,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) registry: Arc<Registry>,
    /// The host-wide memory budget (shared by every listener of the host).
    pub(crate) budget: Arc<Budget>,
    /// Idempotency keys of requests in progress on this host.
    keys: Arc<Mutex<HashSet<String>>>,
    /// Catalogs (lower case) whose commits check idempotency keys themselves (DuckLakes), learnt from lookups.
    checked_at_commit: Mutex<HashSet<String>>,
    /// Watches the process's memory while statements sent over the network run.
    guard: Option<Arc<MemoryGuard>>,
    /// Positions committed into followable tables on this host, for their followers.
    pub(crate) follow: crate::engine::follow_hub::FollowHub,
}

impl<S: Session> Core<S> {
    pub fn new(
        writers: Writers<S>,
        cancel: CancellationToken,
        metrics: Arc<Metrics>,
        registry: Arc<Registry>,
    ) -> Core<S> {
        Core {
            writers,
            statements: None,
            cancel,
            active: AtomicUsize::new(0),
            metrics,
            registry,
            budget: Arc::default(),
            keys: Arc::default(),
            checked_at_commit: Mutex::default(),
            guard: None,
            follow: Default::default(),
        }
    }

    /// The same core running statements sent over the network on `statements`.
    pub fn with_statements(mut self, statements: Writers<S>) -> Core<S> {
        self.statements = Some(statements);
        self
    }

    /// The pool of statements sent over the network, if there is one.
    pub fn statements(&self) -> Option<&Writers<S>> {
        self.statements.as_ref()
    }

    /// The same core with its statements watched by `guard`.
    pub fn with_memory_guard(mut self, guard: Arc<MemoryGuard>) -> Core<S> {
        self.guard = Some(guard);
        self
    }

    /// The same core drawing on `budget` (the host's, shared by its listeners).
    pub fn with_budget(mut self, budget: Arc<Budget>) -> Core<S> {
        self.budget = budget;
        self
    }

    /// The memory budget requests draw on.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// The mapping a request uses.
    pub(crate) fn mapping(&self, stream: &str, reject_unknown: bool) -> Result<Mapping, EngineError> {
        self.registry.resolve(stream, reject_unknown).map_err(|e| match e {
            ResolveError::BadName(m) => EngineError::BadInput(m),
            ResolveError::Unknown(m) => EngineError::NotFound(m),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts a request an adapter refused before it reached the core (bad descriptor, wrong media type...).
    pub fn reject(&self, protocol: Protocol, error: &EngineError) {
        self.metrics.record(&Outcome {
            stream: metrics::UNKNOWN_STREAM,
            defined: false,
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

    /// The Arrow schema of the table a stream lands in; `None` when that table does not exist yet.
    pub async fn describe(&self, stream: &str) -> Result<Option<Schema>, EngineError> {
        let target = self.mapping(stream, false)?.target;
        let (reply, rx) = oneshot::channel();
        self.call(Work::Describe { target, reply }, rx).await
    }

    /// Every table an unmapped stream name lands in, with its Arrow schema.
    pub async fn list(&self) -> Result<Vec<(String, Schema)>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.call(Work::List { reply }, rx).await
    }

    /// The streams a client can see: every defined mapping (with its table's schema when the table exists),
    /// then every table of `main` that an unmapped name of the same name lands in.
    pub async fn streams(&self) -> Result<Vec<StreamInfo>, EngineError> {
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
    pub async fn stream(&self, name: &str) -> Result<Option<StreamInfo>, EngineError> {
        let defined = self.registry.get(name);
        let mapping = self.mapping(name, false)?;
        let (reply, rx) = oneshot::channel();
        let schema = self.call(Work::Describe { target: mapping.target.clone(), reply }, rx).await?;
        if defined.is_none() && schema.is_none() {
            return Ok(None);
        }
        Ok(Some(StreamInfo { mapping, defined: defined.is_some(), schema }))
    }

    /// Marks an idempotency key in progress while the guard lives; refuses a key already in progress.
    pub(crate) fn claim_key(&self, key: &str) -> Result<KeyGuard, EngineError> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if !keys.insert(key.to_string()) {
            return Err(EngineError::InProgress(key.to_string()));
        }
        Ok(KeyGuard { keys: Arc::clone(&self.keys), key: key.to_string() })
    }

    /// The committed request a key names, in the target's catalog.
    pub(crate) async fn lookup_key(
        &self,
        catalog: Option<String>,
        key: &str,
        window: Duration,
    ) -> Result<Option<KeyRecord>, EngineError> {
        let (reply, rx) = oneshot::channel();
        let found =
            self.call(Work::LookupKey { catalog: catalog.clone(), key: key.to_string(), window, reply }, rx).await?;
        if let (true, Some(c)) = (found.checked_at_commit, catalog) {
            self.checked_at_commit.lock().unwrap_or_else(|p| p.into_inner()).insert(c.to_lowercase());
        }
        Ok(found.record)
    }

    /// Whether a catalog's commits are known to check idempotency keys themselves (see `KeyLookup`), so that a
    /// request into it needs no lookup before it is written.
    pub(crate) fn keys_checked_at_commit(&self, catalog: Option<&str>) -> bool {
        catalog.is_some_and(|c| {
            self.checked_at_commit.lock().unwrap_or_else(|p| p.into_inner()).contains(&c.to_lowercase())
        })
    }

    /// What became of the request a stream's idempotency key names (within the listener's key `window`).
    pub async fn request_status(&self, stream: &str, key: &str, window: Duration) -> Result<KeyStatus, EngineError> {
        crate::engine::session::validate_key(key)?;
        if self.keys.lock().unwrap_or_else(|p| p.into_inner()).contains(key) {
            return Ok(KeyStatus::InProgress);
        }
        let catalog = self.mapping(stream, false)?.target.catalog;
        match self.lookup_key(catalog, key, window).await? {
            Some(record) if record.stream == stream => Ok(KeyStatus::Committed(record.ack)),
            Some(record) => Err(EngineError::KeyReused { key: key.to_string(), stream: record.stream }),
            None => Ok(KeyStatus::Unknown),
        }
    }

    /// Writers free to take a request now (readiness: no writer is borrowed to find out).
    pub fn free_writers(&self) -> usize {
        if self.cancel.is_cancelled() { 0 } else { self.writers.permits.available_permits() }
    }

    /// Whether the listeners are stopping.
    pub fn stopping(&self) -> bool {
        self.cancel.is_cancelled()
    }

    pub(crate) async fn call<T>(
        &self,
        work: Work,
        rx: oneshot::Receiver<Result<T, EngineError>>,
    ) -> Result<T, EngineError> {
        self.submit_work(work).await?;
        rx.await.map_err(|_| EngineError::Internal("the writer went away".into()))?
    }

    /// Hands work to a free writer (waiting for one); the work replies on its own channel.
    pub(crate) async fn submit_work(&self, work: Work) -> Result<(), EngineError> {
        let permit = self.permit().await?;
        self.writers.submit(Job { work, _permit: permit, watch: None })
    }

    /// Hands a statement sent over the network to a free thread of the statement pool (waiting for one), and
    /// interrupts it if it still runs after `limit`.
    pub(crate) async fn submit_statement(&self, work: Work, limit: Duration) -> Result<(), EngineError> {
        let pool = self
            .statements
            .as_ref()
            .ok_or_else(|| EngineError::Unsupported("this host has no connections for SQL statements".into()))?;
        if pool.size == 0 {
            return Err(EngineError::Busy(0));
        }
        let permit = self.permit_of(pool).await?;
        let watch = Arc::new(Watch::default());
        let timer = Arc::clone(&watch);
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            timer.fire(EngineError::TimedOut(limit));
        });
        if let Some(guard) = &self.guard {
            guard.watch(&watch);
        }
        pool.submit(Job { work, _permit: permit, watch: Some(watch) })
    }

    pub(crate) async fn call_statement<T>(
        &self,
        work: Work,
        limit: Duration,
        rx: oneshot::Receiver<Result<T, EngineError>>,
    ) -> Result<T, EngineError> {
        self.submit_statement(work, limit).await?;
        rx.await.map_err(|_| EngineError::Internal("the statement's thread went away".into()))?
    }

    pub(crate) async fn permit(&self) -> Result<OwnedSemaphorePermit, EngineError> {
        self.permit_of(&self.writers).await
    }

    /// A free thread of `pool` (waiting at most [`WRITER_WAIT`]), or "busy" / "stopping".
    async fn permit_of(&self, pool: &Writers<S>) -> Result<OwnedSemaphorePermit, EngineError> {
        tokio::select! {
            _ = self.cancel.cancelled() => Err(EngineError::Stopping),
            p = tokio::time::timeout(WRITER_WAIT, Arc::clone(&pool.permits).acquire_owned()) => match p {
                Ok(Ok(p)) => Ok(p),
                Ok(Err(_)) => Err(EngineError::Stopping),
                Err(_) => Err(EngineError::Busy(pool.size)),
            },
        }
    }
}
