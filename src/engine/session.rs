//! What a writer is and what it speaks: the [`Session`] trait (one DuckDB connection, in production
//! `duck_session::DuckSession`; a fake in tests) and the values that cross between the network side and a writer
//! thread: a request's batches ([`BatchRx`], [`Msg`]), a buffered request ([`Buffered`]), a statement and its
//! result channel ([`Statement`], [`QueryOut`]).
//!
//! The end of a request is explicit: the pipeline sends [`Msg::End`] only when the input ended normally. A
//! writer that sees its channel close without `End` treats it as a disconnect and rolls back, so an aborted task
//! can never commit half a request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::catalog::registry::{Mapping, Target};
use crate::engine::budget::Charge;
use crate::engine::error::EngineError;
use crate::engine::policy::Access;

/// A value bound to a statement parameter (DuckDB's binding, carried through the engine as data).
pub use crate::duck::statement::Param;

/// What a writer reports after commit.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Written {
    pub rows: u64,
    /// Time spent in DuckDB, first batch to commit.
    pub write_seconds: f64,
    /// Commits tried again after losing a race with another writer of a shared catalog.
    pub retries: u32,
    /// A followable stream's commit: its table (as [`crate::engine::follow_hub::table_key`] names it) and position.
    pub position: Option<(String, i64)>,
}

/// Counts kept while a request runs.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) batches: AtomicU64,
    /// Rows handed to the writer (committed, or rolled back on failure).
    pub(crate) rows: AtomicU64,
    pub(crate) decoded_bytes: AtomicU64,
}

/// What a queued batch holds until the writer takes it: its share of the request's queue budget and its charge
/// on the host's memory budget.
#[derive(Debug, Default)]
pub struct Held {
    pub(crate) _queue: Option<OwnedSemaphorePermit>,
    pub(crate) _charge: Charge,
}

/// Messages from the network side to a writer. A batch carries what it [`Held`], given back when the writer
/// takes it.
#[derive(Debug)]
pub enum Msg {
    Batch(RecordBatch, Held),
    /// A batch read ahead by the core, already counted.
    Counted(RecordBatch, Held),
    /// The input ended normally: commit.
    End,
    /// The input failed: roll back with this error.
    Fail(EngineError),
}

/// The writer's side of a request: a blocking source of batches.
pub struct BatchRx {
    rx: mpsc::Receiver<Msg>,
    ended: bool,
    counts: Arc<Counts>,
}

impl BatchRx {
    pub(crate) fn new(rx: mpsc::Receiver<Msg>, counts: Arc<Counts>) -> BatchRx {
        BatchRx { rx, ended: false, counts }
    }
}

impl BatchRx {
    /// The next batch (blocking), `Ok(None)` after a clean end, or why the request must roll back.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>, EngineError> {
        if self.ended {
            return Ok(None);
        }
        match self.rx.blocking_recv() {
            Some(Msg::Batch(b, _held)) => {
                self.counts.batches.fetch_add(1, Ordering::Relaxed);
                self.counts.rows.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                Ok(Some(b))
            }
            Some(Msg::Counted(b, _held)) => Ok(Some(b)),
            Some(Msg::End) => {
                self.ended = true;
                Ok(None)
            }
            Some(Msg::Fail(e)) => Err(e),
            None => Err(EngineError::Disconnected),
        }
    }
}

/// An idempotency key as a writer records it: in the same transaction as the request's rows, in the target's
/// catalog (`<catalog>.arrowport.requests`), with the acknowledgement the request was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    pub key: String,
    /// The stream the request was for (the acknowledgement's `stream`).
    pub stream: String,
    /// How long keys are kept; older ones are purged.
    pub window: Duration,
}

/// The HTTP header and gRPC metadata that name a request for exactly-once retries.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Longest idempotency key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// Checks a client's idempotency key: 1 to 255 printable ASCII characters.
pub fn validate_key(key: &str) -> Result<(), EngineError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| (0x21..0x7F).contains(&b)) {
        return Err(EngineError::BadInput(format!(
            "an idempotency key must be 1 to {MAX_KEY_LEN} printable ASCII characters without spaces"
        )));
    }
    Ok(())
}

/// A committed request's key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub stream: String,
    /// The acknowledgement JSON the request was given at commit.
    pub ack: String,
}

/// What a key lookup found, and whether the catalog's commits check keys themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyLookup {
    pub record: Option<KeyRecord>,
    /// The catalog's key table has no constraint (a DuckLake's), so every commit that records a key first looks
    /// for it inside its own transaction and fails `InProgress` when it is there: a lookup before a request only
    /// saves writing a replay's rows.
    pub checked_at_commit: bool,
}

/// A small request received whole before it is written, for group commit.
#[derive(Debug, Clone)]
pub struct Buffered {
    pub mapping: Mapping,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub rows: u64,
    pub key: Option<RequestKey>,
    /// How often a commit that lost a race (see `EngineError::is_commit_conflict`) is tried again.
    pub commit_retries: u32,
    /// DuckLake's pause before it retries the group's commit after a lost race (see `Policy::commit_retry_wait`).
    pub commit_retry_wait: Duration,
    /// How long its group commit waits for more requests after the first (see `Policy::group_window`).
    pub group_window: Duration,
}

/// Stops the statement a writer's connection is running, from another thread.
pub type Interrupter = Arc<dyn Fn() + Send + Sync>;

/// Writes one request into the database: everything or nothing. Runs on a writer thread; may block.
pub trait Session: Send + 'static {
    /// How to interrupt this writer's running statement from another thread (when `arrowport_stop` must not
    /// wait for it); `None` when it cannot be interrupted.
    fn interrupter(&self) -> Option<Interrupter> {
        None
    }

    fn write(
        &mut self,
        mapping: &Mapping,
        schema: SchemaRef,
        input: BatchRx,
        key: Option<&RequestKey>,
    ) -> Result<Written, EngineError>;
    /// The committed request an idempotency key names, in `catalog` (`None`: the host database), if it
    /// committed within `window`; and whether that catalog's commits check keys themselves.
    fn lookup_key(&mut self, _catalog: Option<&str>, _key: &str, _window: Duration) -> Result<KeyLookup, EngineError> {
        Ok(KeyLookup::default())
    }
    /// Writes several buffered requests, in one transaction when it can; one result per request, each
    /// "committed" only if its rows are. A request that fails must not fail the others.
    fn write_group(&mut self, items: &[Buffered]) -> Vec<Result<Written, EngineError>>;
    /// The target's Arrow schema, `None` when it does not exist.
    fn table_schema(&mut self, target: &Target) -> Result<Option<Schema>, EngineError>;
    /// The tables unmapped streams land in, with their Arrow schemas.
    fn list_tables(&mut self) -> Result<Vec<(String, Schema)>, EngineError>;

    /// Prepares a statement sent over the network (see `query`); describes its result and parameters.
    fn describe_sql(
        &mut self,
        _sql: &str,
        _params: Option<&[Param]>,
        _access: Access,
    ) -> Result<Described, EngineError> {
        Err(EngineError::Unsupported("this writer runs no SQL".into()))
    }
    /// Runs a statement and sends its schema, then its batches, to `out`.
    fn query(&mut self, _statement: &Statement, _access: Access, _out: &QueryOut) -> Result<(), EngineError> {
        Err(EngineError::Unsupported("this writer runs no SQL".into()))
    }
    /// Runs a query of the host's own session (`arrowport_send`) in a read-only transaction and sends its
    /// schema, then its batches, to `out`. Not a network statement: arrowport's own functions are not refused
    /// in it, and administrative calls do not wait for it.
    fn export(&mut self, _sql: &str, _out: &QueryOut) -> Result<(), EngineError> {
        Err(EngineError::Unsupported("this writer runs no SQL".into()))
    }
    /// A read for followers (see `engine::follow`): `SELECT <columns> FROM <target> AS t WHERE arrowport_cursor >
    /// after ORDER BY arrowport_cursor LIMIT <limit>` (without the ORDER BY unless `ordered`: the first rows in the
    /// table's order), its whole result. Not a network statement. Runs on a
    /// statement prepared once per connection, so a live follower's frequent reads are not parsed and planned
    /// each time.
    fn follow_read(
        &mut self,
        _target: &crate::catalog::registry::Target,
        _columns: &str,
        _after: i64,
        _limit: usize,
        _ordered: bool,
    ) -> Result<(SchemaRef, Vec<arrow::array::RecordBatch>), EngineError> {
        Err(EngineError::Unsupported("this writer runs no SQL".into()))
    }
    /// Compacts a DuckLake catalog: flushes inlined rows to files, merges small files, expires snapshots and
    /// deletes the files no snapshot younger than `older_than` needs.
    fn maintain(&mut self, _catalog: &str, _older_than: Duration) -> Result<Vec<Maintained>, EngineError> {
        Err(EngineError::Unsupported("this writer runs no SQL".into()))
    }
    /// Runs a statement that changes data; returns the rows changed.
    fn update(&mut self, _statement: &Statement, _access: Access) -> Result<u64, EngineError> {
        Err(EngineError::Unsupported("this writer runs no SQL".into()))
    }
    /// Catalogs, schemas and tables.
    fn catalog(&mut self, _with_schemas: bool) -> Result<Catalog, EngineError> {
        Err(EngineError::Unsupported("this writer has no catalog".into()))
    }
}

/// One statement and its parameter rows (none, or one execution per row).
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Vec<Param>>,
}

/// One step of a lake's maintenance: DuckLake's function, the rows it reported, how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Maintained {
    pub step: &'static str,
    pub rows: u64,
    pub seconds: f64,
}

/// What a prepared statement returns and takes.
#[derive(Debug, Clone)]
pub struct Described {
    pub schema: Schema,
    pub params: Schema,
}

/// A table or view, for catalog browsing.
#[derive(Debug, Clone)]
pub struct TableEntry {
    pub catalog: String,
    pub schema: String,
    pub name: String,
    /// `TABLE` or `VIEW`.
    pub kind: String,
    /// Filled when asked for.
    pub arrow: Option<Schema>,
}

/// What the catalog holds, for `GetCatalogs` / `GetDbSchemas` / `GetTables`.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub catalogs: Vec<String>,
    /// (catalog, schema)
    pub schemas: Vec<(String, String)>,
    pub tables: Vec<TableEntry>,
}

/// Items from a running statement: its schema first, then batches.
#[derive(Debug)]
pub enum QueryItem {
    Schema(SchemaRef),
    Batch(RecordBatch),
}

/// The writer's end of a statement's result.
pub struct QueryOut {
    tx: mpsc::Sender<QueryItem>,
    stall: Duration,
    /// The runtime the receiving side runs on: the writer's thread waits on it for room in the channel.
    runtime: tokio::runtime::Handle,
    /// Rows per handed-over batch: DuckDB's chunks are gathered on the writer's thread up to this many (0: each
    /// chunk as it comes), so the other side is woken once per batch, not once per 2,048 rows.
    gather: usize,
    /// The chunks gathered so far.
    held: std::cell::RefCell<Gathered>,
}

/// Chunks gathered for one batch, with their rows and bytes.
#[derive(Default)]
struct Gathered {
    batches: Vec<RecordBatch>,
    rows: usize,
    bytes: usize,
}

/// A gathered batch is handed over at this size even short of its rows, so wide rows do not make batches (and the
/// few that are held or in flight at once) of hundreds of megabytes. Flight messages are cut at this size anyway.
pub const GATHER_BYTES: usize = 8 << 20;

/// The held chunks as one batch (the one itself when there is one).
fn gathered(mut held: Vec<RecordBatch>) -> Result<RecordBatch, EngineError> {
    if held.len() == 1 {
        return Ok(held.pop().expect("one batch"));
    }
    arrow::compute::concat_batches(&held[0].schema(), &held)
        .map_err(|e| EngineError::Internal(format!("gathering a result: {e}")))
}

impl QueryOut {
    pub(crate) fn gathering(
        tx: mpsc::Sender<QueryItem>,
        stall: Duration,
        rows: usize,
        runtime: tokio::runtime::Handle,
    ) -> QueryOut {
        QueryOut { tx, stall, runtime, gather: rows, held: Default::default() }
    }
}

impl QueryOut {
    /// Hands a batch over, or gathers it with the ones before: batches of exactly `gather` rows are handed over
    /// (a larger chunk is cut), or fewer when what is held reaches [`GATHER_BYTES`] first.
    pub fn batch(&self, batch: RecordBatch) -> Result<(), EngineError> {
        if self.gather <= 1 {
            return self.send(QueryItem::Batch(batch));
        }
        {
            let mut held = self.held.borrow_mut();
            held.rows += batch.num_rows();
            held.bytes += batch.get_array_memory_size();
            held.batches.push(batch);
        }
        loop {
            let ready = {
                let held = self.held.borrow();
                held.rows >= self.gather || held.bytes >= GATHER_BYTES
            };
            if !ready {
                return Ok(());
            }
            let held = std::mem::take(&mut *self.held.borrow_mut());
            let whole = gathered(held.batches)?;
            let take = whole.num_rows().min(self.gather);
            let rest = whole.num_rows() - take;
            if rest > 0 {
                // The rest starts the next batch; its bytes in proportion (a slice reports its whole buffers).
                let bytes = held.bytes / held.rows.max(1) * rest;
                *self.held.borrow_mut() = Gathered { batches: vec![whole.slice(take, rest)], rows: rest, bytes };
            }
            self.send(QueryItem::Batch(whole.slice(0, take)))?;
        }
    }

    /// Hands over what is held (the end of a result).
    pub fn finish(&self) -> Result<(), EngineError> {
        let held = std::mem::take(&mut *self.held.borrow_mut()).batches;
        if held.is_empty() {
            return Ok(());
        }
        self.send(QueryItem::Batch(gathered(held)?))
    }

    /// Hands an item to the client side; waits for room while the client is slow, up to the stall timeout (on
    /// a writer's thread, never a runtime's).
    pub fn send(&self, item: QueryItem) -> Result<(), EngineError> {
        // The timer is made inside the runtime (it needs its clock).
        match self.runtime.block_on(async { tokio::time::timeout(self.stall, self.tx.send(item)).await }) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(EngineError::Disconnected),
            Err(_) => Err(EngineError::Stalled(self.stall)),
        }
    }
}

#[cfg(test)]
mod query_out_tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field};

    fn handed_over(gather: usize, chunks: &[i64]) -> Vec<usize> {
        let schema = Arc::new(Schema::new(vec![Field::new("i", DataType::Int64, false)]));
        let chunk = |n: i64| {
            RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(Int64Array::from_iter_values(0..n))]).unwrap()
        };
        let (tx, mut rx) = mpsc::channel(64);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let out = QueryOut::gathering(tx, Duration::from_secs(1), gather, runtime.handle().clone());
        for &n in chunks {
            out.batch(chunk(n)).unwrap();
        }
        out.finish().unwrap();
        let mut rows = Vec::new();
        while let Ok(QueryItem::Batch(b)) = rx.try_recv() {
            rows.push(b.num_rows());
        }
        rows
    }

    #[test]
    fn chunks_are_gathered_into_batches() {
        assert_eq!(handed_over(7, &[3, 3, 3, 3, 3]), vec![7, 7, 1]);
        assert_eq!(handed_over(2, &[5]), vec![2, 2, 1]);
    }
}

#[cfg(test)]
mod query_out_wait_tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_full_channel_is_waited_on_until_the_stall_limit_or_the_other_side_goes() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let out = QueryOut::gathering(tx, Duration::from_millis(200), 0, runtime.handle().clone());
        out.send(QueryItem::Schema(Arc::new(Schema::empty()))).unwrap();
        let started = Instant::now();
        assert!(matches!(out.send(QueryItem::Schema(Arc::new(Schema::empty()))), Err(EngineError::Stalled(_))));
        assert!(started.elapsed() >= Duration::from_millis(200));
        // Room made while the writer waits lets it go on at once.
        let taker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let _ = rx.blocking_recv();
            rx
        });
        out.send(QueryItem::Schema(Arc::new(Schema::empty()))).unwrap();
        drop(taker.join().unwrap());
        assert!(matches!(out.send(QueryItem::Schema(Arc::new(Schema::empty()))), Err(EngineError::Disconnected)));
    }
}
