//! The ingest pipeline, shared by every protocol: decoded Arrow in, one committed transaction out.
//!
//! A protocol adapter hands [`Core::ingest`] a stream name and a stream of [`Incoming`] items (the schema
//! first, then batches). The pipeline checks the principal and the schema, resolves the target, and reads
//! ahead: a request that ends within [`GROUP_BYTES`] is committed with others by the group committer; a larger
//! one checks out a writer thread and is pumped to it through a small bounded channel with a byte budget, so a
//! slow DuckDB slows the sender instead of queueing memory. The writer commits only after the adapter's stream
//! ended cleanly; any failure, cancellation, stall or disconnect rolls back. This module runs no SQL and knows
//! no protocol.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::{Stream, StreamExt};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::catalog::access::Principal;
use crate::catalog::registry::{Mapping, Mode, TableRule, Target};
use crate::catalog::schema;
use crate::engine::budget::{Charge, Reservation};
use crate::engine::core::Core;
use crate::engine::error::EngineError;
use crate::engine::metrics::{Outcome, Protocol};
use crate::engine::policy::Policy;
use crate::engine::session::{
    BatchRx, Buffered, Counts, Held, KeyRecord, Msg, RequestKey, Session, Written, validate_key,
};
use crate::engine::writers::{Job, Work};

/// What an idempotency key gave a request: its claim (held until the request ends), or the acknowledgement of
/// the request that committed under it.
enum Claimed {
    Guard(Option<crate::engine::core::KeyGuard>),
    Replayed(Report),
}

/// What the pipeline read ahead of a streamed request, and whether that was the whole input.
struct Ahead {
    batches: Vec<(RecordBatch, usize, Charge)>,
    ended: bool,
}

/// Batches buffered between the network and a writer. Small on purpose: it bounds memory per request...
const QUEUE_DEPTH: usize = 4;

/// ...and so does this budget of decoded bytes queued (a batch larger than the budget still passes, alone), so a
/// request's memory does not grow with the size of its batches (up to `max_message_bytes` each).
const QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// A request whose decoded batches stay under this is received whole and committed in a group with others.
pub const GROUP_BYTES: usize = 4 * 1024 * 1024;

/// One decoded item of an incoming Arrow stream.
#[derive(Debug)]
pub enum Incoming {
    Schema(SchemaRef),
    Batch(RecordBatch),
}

/// The memory a decoded batch's columns use.
fn batch_bytes(b: &RecordBatch) -> usize {
    b.columns().iter().map(|c| c.to_data().get_slice_memory_size().unwrap_or(0)).sum()
}

/// What a committed request wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub stream: String,
    pub table: String,
    pub rows: u64,
    pub batches: u64,
    /// The request's idempotency key had committed before: nothing was written now, this is its acknowledgement.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub replayed: bool,
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
    /// What the adapter reserved of the memory budget for messages not yet decoded (see `budget`).
    pub reservation: Reservation,
    /// The client's name for this request (`Idempotency-Key`): a retry under the same key writes nothing again.
    pub idempotency_key: Option<String>,
}

impl Request {
    pub fn new(stream: impl Into<String>, protocol: Protocol, principal: Principal, policy: Arc<Policy>) -> Request {
        Request {
            stream: stream.into(),
            protocol,
            wire_bytes: Arc::default(),
            target: None,
            mapping: None,
            principal,
            policy,
            reservation: Reservation::default(),
            idempotency_key: None,
        }
    }
}

/// Counts a request as in flight while it lives.
struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request on its way to a writer: what each step of reading its input needs.
struct RequestInput<'a> {
    /// How long the client may send nothing.
    stall: Duration,
    /// The schema the client sent; a repeated schema message must equal it.
    incoming: &'a SchemaRef,
    /// The schema batches are cast to before DuckDB sees them, when a type needs it (see `schema::storable`).
    cast_to: Option<&'a SchemaRef>,
    counts: &'a Arc<Counts>,
    /// The reservations of the messages being decoded, given up as their batches are admitted.
    reservation: &'a Reservation,
}

/// The writer's end of a streamed request: its channel and the byte budget of what may wait in it.
struct WriterChannel {
    tx: mpsc::Sender<Msg>,
    budget: Arc<Semaphore>,
}

impl<S: Session> Core<S> {
    /// Lands one request: the schema first, then batches, all in one transaction. Returns after commit.
    pub async fn ingest<I>(&self, request: Request, input: I) -> Result<Report, EngineError>
    where
        I: Stream<Item = Result<Incoming, EngineError>> + Unpin + Send,
    {
        let started = Instant::now();
        let _in_flight = self.metrics.in_flight(request.protocol);
        self.active.fetch_add(1, Ordering::Relaxed);
        let _active = Active(&self.active);
        let counts = Arc::new(Counts::default());
        let result = self.run(&request, input, &counts).await;
        if let Ok((report, _)) = &result
            && report.replayed
        {
            // Counted as a replay (in `run`): it wrote nothing now.
            return result.map(|(report, _)| report);
        }
        if let Ok((_, written)) = &result {
            self.metrics.commit_retried(request.protocol, written.retries);
        }
        self.metrics.record(&Outcome {
            stream: &request.stream,
            defined: self.registry.contains(&request.stream),
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

    /// A request's steps: admission and the principal, the mapping, the idempotency key, the schema, then the
    /// rows, grouped with others or streamed to a writer of their own.
    async fn run<I>(
        &self,
        request: &Request,
        mut input: I,
        counts: &Arc<Counts>,
    ) -> Result<(Report, Written), EngineError>
    where
        I: Stream<Item = Result<Incoming, EngineError>> + Unpin + Send,
    {
        let stream = request.stream.as_str();
        let _admitted = request.policy.admit()?;
        if !request.principal.may_use(stream) {
            return Err(EngineError::Denied(request.principal.denied(stream)));
        }
        let mapping = self.resolve_mapping(request)?;
        let _key_guard = match self.claim_or_replay(request, &mapping, &mut input).await? {
            Claimed::Replayed(report) => {
                return Ok((report, Written { rows: 0, write_seconds: 0.0, ..Default::default() }));
            }
            Claimed::Guard(guard) => guard,
        };
        let key = request.idempotency_key.as_ref().map(|k| RequestKey {
            key: k.clone(),
            stream: stream.to_string(),
            window: request.policy.idempotency_window,
        });
        let stall = request.policy.stall_timeout;
        let incoming = match self.next_or_cancel(&mut input, stall).await? {
            Some(Incoming::Schema(s)) => s,
            Some(Incoming::Batch(_)) => {
                return Err(EngineError::BadInput("the stream sent a batch before its schema".into()));
            }
            None => return Err(EngineError::BadInput("the stream ended before it sent a schema".into())),
        };
        schema::check_supported(&incoming).map_err(EngineError::Unsupported)?;
        // Types DuckDB's scan refuses but can hold after a lossless cast (float16, decimal256 in range).
        let (schema, needs_cast) = schema::storable(&incoming);
        let flow = RequestInput {
            stall,
            incoming: &incoming,
            cast_to: needs_cast.then_some(&schema),
            counts,
            reservation: &request.reservation,
        };

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
                match self.next_batch(&mut input, &flow).await? {
                    None => {
                        ended = true;
                        break;
                    }
                    Some((b, size, charge)) => {
                        bytes += size;
                        counts.batches.fetch_add(1, Ordering::Relaxed);
                        counts.rows.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                        ahead.push((b, size, charge));
                    }
                }
            }
        }
        let table = mapping.target.display();
        let catalog = mapping.target.catalog.clone();
        let written = if ended && !ahead.is_empty() {
            let (batches, charges) = ahead.into_iter().map(|(b, _, c)| (b, c)).unzip();
            self.land_grouped(request, mapping, Arc::clone(&schema), batches, charges, key).await?
        } else {
            let channel = Ahead { batches: ahead, ended };
            self.land_streamed(mapping, Arc::clone(&schema), key, channel, &mut input, &flow).await?
        };
        let written = match written {
            Ok(w) => w,
            Err(e) => return self.resolve_unknown(&catalog, request, stream, e).await,
        };
        if let Some((table, position)) = &written.position {
            self.follow.committed(table, *position);
        }
        let batches = counts.batches.load(Ordering::Relaxed);
        Ok((Report { stream: stream.to_string(), table, rows: written.rows, batches, replayed: false }, written))
    }

    /// The mapping a request lands by, and whether its principal may land there.
    fn resolve_mapping(&self, request: &Request) -> Result<Mapping, EngineError> {
        let stream = request.stream.as_str();
        let mut mapping = match &request.mapping {
            // A listener that takes only defined streams takes Flight SQL ingest only into them too: the table
            // the client names is the stream, and it lands where the stream's mapping says, in the client's mode.
            Some(m) if request.policy.reject_unknown => {
                let defined = self.mapping(stream, true)?;
                if m.target != Mapping::default_for(stream).target && m.target != defined.target {
                    return Err(EngineError::Denied(format!(
                        "stream {stream:?} lands in {}; this listener takes only defined streams (unknown_streams := 'reject'), \
                         so the ingest cannot name {}",
                        defined.target.display(),
                        m.target.display()
                    )));
                }
                Mapping { rule: m.rule, ..defined }
            }
            // A stream that merges on a key merges whatever protocol its rows come by: Flight SQL ingest naming the
            // stream's table lands through its mapping, in the client's mode.
            Some(m) => match self.mapping(stream, true) {
                Ok(defined) if defined.is_keyed() && m.target == Mapping::default_for(stream).target => {
                    Mapping { rule: m.rule, ..defined }
                }
                _ => m.clone(),
            },
            None => self.mapping(stream, request.policy.reject_unknown)?,
        };
        if let Some(t) = &request.target {
            mapping.target = t.clone();
        }
        // A principal limited to streams writes only where its stream name lands by default (or its defined
        // mapping says), never where the request itself points.
        let client_chose = request.target.is_some() || (request.mapping.is_some() && !request.policy.reject_unknown);
        if !request.principal.may_choose_target()
            && mapping.target != Mapping::default_for(stream).target
            && client_chose
        {
            return Err(EngineError::Denied(format!(
                "{}; a token limited to streams cannot name its own target table",
                request.principal.denied(&mapping.target.display())
            )));
        }
        Ok(mapping)
    }

    /// An idempotency key: one request in progress per key on this host, and a committed one is answered with its
    /// acknowledgement, nothing written again (its input is read to the end and dropped).
    async fn claim_or_replay<I>(
        &self,
        request: &Request,
        mapping: &Mapping,
        input: &mut I,
    ) -> Result<Claimed, EngineError>
    where
        I: Stream<Item = Result<Incoming, EngineError>> + Unpin + Send,
    {
        let Some(key) = &request.idempotency_key else { return Ok(Claimed::Guard(None)) };
        validate_key(key)?;
        let guard = match self.claim_key(key) {
            Ok(guard) => guard,
            Err(e) => {
                self.drain(input, request).await;
                return Err(e);
            }
        };
        // A DuckLake's commit looks for the key in its own transaction (a lookup there is a query of the lake
        // and its catalog, a large part of a small request's cost): a retry is found then (`resolve_unknown`).
        if self.keys_checked_at_commit(mapping.target.catalog.as_deref()) {
            return Ok(Claimed::Guard(Some(guard)));
        }
        let Some(record) =
            self.lookup_key(mapping.target.catalog.clone(), key, request.policy.idempotency_window).await?
        else {
            return Ok(Claimed::Guard(Some(guard)));
        };
        let report = self.replay(request, key, record)?;
        self.drain(input, request).await;
        Ok(Claimed::Replayed(report))
    }

    /// The answer to a request whose key names a committed one: the acknowledgement it was given, `replayed`
    /// (counted as such); a key of another stream is refused.
    fn replay(&self, request: &Request, key: &str, record: KeyRecord) -> Result<Report, EngineError> {
        if record.stream != request.stream {
            return Err(EngineError::KeyReused { key: key.to_string(), stream: record.stream });
        }
        let mut report: Report = serde_json::from_str(&record.ack)
            .map_err(|e| EngineError::Internal(format!("a stored acknowledgement does not parse: {e}")))?;
        report.replayed = true;
        self.metrics.replayed(&request.stream, request.protocol);
        Ok(report)
    }

    /// A request received whole, handed to the group committer. The outer error is the pipeline's; the inner
    /// one the commit's (whose outcome a key may resolve).
    async fn land_grouped(
        &self,
        request: &Request,
        mapping: Mapping,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        charges: Vec<Charge>,
        key: Option<RequestKey>,
    ) -> Result<Result<Written, EngineError>, EngineError> {
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let (reply, done) = oneshot::channel();
        let item = Buffered {
            mapping,
            schema,
            batches,
            rows,
            key,
            commit_retries: request.policy.commit_retries,
            commit_retry_wait: request.policy.commit_retry_wait,
            group_window: request.policy.group_window,
        };
        self.writers.submit_group(item, reply, charges)?;
        done.await.map_err(|_| EngineError::Internal("the group committer went away".into()))
    }

    /// A request streamed to a writer of its own: what was read ahead first, then the rest of the input as it
    /// arrives. The outer error is the input's or the pipeline's; the inner one the writer's.
    async fn land_streamed<I>(
        &self,
        mapping: Mapping,
        schema: SchemaRef,
        key: Option<RequestKey>,
        ahead: Ahead,
        input: &mut I,
        flow: &RequestInput<'_>,
    ) -> Result<Result<Written, EngineError>, EngineError>
    where
        I: Stream<Item = Result<Incoming, EngineError>> + Unpin + Send,
    {
        let permit = self.permit().await?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (reply_tx, reply_rx) = oneshot::channel();
        let batch_rx = BatchRx::new(rx, Arc::clone(flow.counts));
        let work = Work::Write { mapping, schema, input: batch_rx, key, reply: reply_tx };
        self.writers.submit(Job { work, _permit: permit, watch: None })?;

        let feed = WriterChannel { tx, budget: Arc::new(Semaphore::new(QUEUE_BYTES)) };
        let mut pumped = Ok(());
        for (b, size, charge) in ahead.batches {
            pumped = match self.queue(&feed, b, size, charge, true).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(EngineError::Internal("the writer stopped reading".into())),
                Err(e) => Err(e),
            };
            if pumped.is_err() {
                break;
            }
        }
        if pumped.is_ok() && !ahead.ended {
            pumped = self.pump(input, flow, &feed).await;
        }
        let last = match &pumped {
            Ok(()) => Msg::End,
            Err(e) => Msg::Fail(e.clone()),
        };
        // The writer may already have finished (it failed early); then it ignores this.
        let _ = feed.tx.send(last).await;
        drop(feed);
        let written = reply_rx.await.map_err(|_| EngineError::Internal("the writer went away".into()));
        // A failure of the input is the cause; the writer's error is only its echo. (A writer that stopped
        // reading early reports why in its reply.)
        if let Err(EngineError::Internal(_)) = &pumped
            && let Ok(Err(e)) = &written
        {
            return Err(e.clone());
        }
        pumped?;
        written
    }

    /// A keyed request whose commit failed in a way that leaves its outcome unknown (the connection to a
    /// DuckLake's catalog lost during COMMIT, say) is resolved through its key, which commits with the rows: found,
    /// the request committed and is acknowledged; not found, the failure stands. A request whose commit found its
    /// key already committed (a retry into a catalog that checks keys at commit, written without a lookup before
    /// it) is answered as the replay it is.
    async fn resolve_unknown(
        &self,
        catalog: &Option<String>,
        request: &Request,
        stream: &str,
        e: EngineError,
    ) -> Result<(Report, Written), EngineError> {
        if let (Some(key), EngineError::InProgress(_)) = (&request.idempotency_key, &e) {
            return match self.lookup_key(catalog.clone(), key, request.policy.idempotency_window).await? {
                Some(record) => Ok((self.replay(request, key, record)?, Written::default())),
                None => Err(e),
            };
        }
        let (Some(key), EngineError::Db(_)) = (&request.idempotency_key, &e) else { return Err(e) };
        if e.is_commit_conflict() {
            return Err(e);
        }
        match self.lookup_key(catalog.clone(), key, request.policy.idempotency_window).await {
            Ok(Some(record)) if record.stream == stream => {
                let report: Report = serde_json::from_str(&record.ack).map_err(|_| e.clone())?;
                Ok((report, Written { rows: 0, write_seconds: 0.0, ..Default::default() }))
            }
            _ => Err(e),
        }
    }

    /// Reads the rest of a request that is answered without being written (a replay, a key in progress) and
    /// drops it, so a client still sending its body reads the answer instead of a reset connection. Bounded by
    /// the stall timeout per item; a malformed rest ends the drain.
    async fn drain<I>(&self, input: &mut I, request: &Request)
    where
        I: Stream<Item = Result<Incoming, EngineError>> + Unpin + Send,
    {
        while let Ok(Some(_)) = self.next_or_cancel(input, request.policy.stall_timeout).await {
            request.reservation.release();
        }
        request.reservation.release();
    }

    async fn next_or_cancel<I>(&self, input: &mut I, stall: Duration) -> Result<Option<Incoming>, EngineError>
    where
        I: Stream<Item = Result<Incoming, EngineError>> + Unpin + Send,
    {
        tokio::select! {
            _ = self.cancel.cancelled() => Err(EngineError::Stopping),
            item = tokio::time::timeout(stall, input.next()) => match item {
                Ok(item) => item.transpose(),
                Err(_) => Err(EngineError::Stalled(stall)),
            },
        }
    }

    /// The next non-empty batch of the input (cast when needed) and its decoded size, counted; `None` at the
    /// end. A repeated schema must equal the first.
    async fn next_batch<I>(
        &self,
        input: &mut I,
        flow: &RequestInput<'_>,
    ) -> Result<Option<(RecordBatch, usize, Charge)>, EngineError>
    where
        I: Stream<Item = Result<Incoming, EngineError>> + Unpin + Send,
    {
        loop {
            match self.next_or_cancel(input, flow.stall).await? {
                None => return Ok(None),
                Some(Incoming::Schema(s)) => {
                    if s.fields() != flow.incoming.fields() {
                        return Err(EngineError::BadInput("the schema changed in the middle of the stream".into()));
                    }
                }
                Some(Incoming::Batch(b)) if b.num_rows() == 0 => {}
                Some(Incoming::Batch(b)) => {
                    let size = batch_bytes(&b);
                    flow.counts.decoded_bytes.fetch_add(size as u64, Ordering::Relaxed);
                    let b = match flow.cast_to {
                        Some(to) => schema::cast_batch(&b, to).map_err(EngineError::BadInput)?,
                        None => b,
                    };
                    // Admitted: the batch's own charge replaces its message's reservation.
                    flow.reservation.release();
                    let charge = self.budget.charge(size)?;
                    return Ok(Some((b, size, charge)));
                }
            }
        }
    }

    /// Moves batches from the input to the writer until the input ends (Ok) or fails (Err). Returns Ok early
    /// when the writer stopped reading: its reply carries the reason.
    async fn pump<I>(&self, input: &mut I, flow: &RequestInput<'_>, feed: &WriterChannel) -> Result<(), EngineError>
    where
        I: Stream<Item = Result<Incoming, EngineError>> + Unpin + Send,
    {
        loop {
            match self.next_batch(input, flow).await? {
                None => return Ok(()),
                Some((b, size, charge)) => {
                    if !self.queue(feed, b, size, charge, false).await? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Queues a batch for the writer once the request's byte budget has room for it (the writer's pace is the
    /// sender's: while this waits, the request reads nothing more). `Ok(false)` when the writer stopped reading.
    async fn queue(
        &self,
        feed: &WriterChannel,
        b: RecordBatch,
        size: usize,
        charge: Charge,
        counted: bool,
    ) -> Result<bool, EngineError> {
        // Within QUEUE_BYTES (64 MiB), so the count fits a u32.
        let share = size.clamp(1, QUEUE_BYTES) as u32;
        let permit = tokio::select! {
            _ = self.cancel.cancelled() => return Err(EngineError::Stopping),
            p = Arc::clone(&feed.budget).acquire_many_owned(share) => p.map_err(|_| EngineError::Internal("the queue budget was closed".into()))?,
        };
        let held = Held { _queue: Some(permit), _charge: charge };
        let msg = if counted { Msg::Counted(b, held) } else { Msg::Batch(b, held) };
        tokio::select! {
            _ = self.cancel.cancelled() => Err(EngineError::Stopping),
            r = feed.tx.send(msg) => Ok(r.is_ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use futures::stream;
    use tokio_util::sync::CancellationToken;

    use crate::engine::error::Code;
    use crate::engine::policy::STALL_LIMIT;
    use crate::engine::writers::Writers;

    /// A session that keeps what it was given and "commits" only at a clean end.
    #[derive(Default)]
    struct Fake {
        committed: Arc<Mutex<Vec<(String, u64)>>>,
        groups: Arc<Mutex<Vec<usize>>>,
        /// When set, a streamed write reads nothing until this yields (a slow DuckDB).
        hold: Option<Arc<Mutex<std::sync::mpsc::Receiver<()>>>>,
    }

    impl Session for Fake {
        fn write(
            &mut self,
            mapping: &Mapping,
            _schema: SchemaRef,
            mut input: BatchRx,
            _key: Option<&RequestKey>,
        ) -> Result<Written, EngineError> {
            if let Some(hold) = &self.hold {
                let _ = hold.lock().unwrap().recv();
            }
            let mut rows = 0;
            while let Some(b) = input.next_batch()? {
                rows += b.num_rows() as u64;
            }
            self.committed.lock().unwrap().push((mapping.target.table.clone(), rows));
            Ok(Written { rows, write_seconds: 0.0, ..Default::default() })
        }

        fn write_group(&mut self, items: &[Buffered]) -> Vec<Result<Written, EngineError>> {
            self.groups.lock().unwrap().push(items.len());
            std::thread::sleep(Duration::from_millis(20));
            items
                .iter()
                .map(|i| {
                    self.committed.lock().unwrap().push((i.mapping.target.table.clone(), i.rows));
                    Ok(Written { rows: i.rows, write_seconds: 0.0, ..Default::default() })
                })
                .collect()
        }

        fn table_schema(&mut self, _: &Target) -> Result<Option<Schema>, EngineError> {
            Ok(None)
        }

        fn list_tables(&mut self) -> Result<Vec<(String, Schema)>, EngineError> {
            Ok(vec![])
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
        assert_eq!(
            report,
            Report { stream: "events".into(), table: "main.events".into(), rows: 7, batches: 2, replayed: false }
        );
        assert_eq!(*committed.lock().unwrap(), vec![("events".to_string(), 7)]);
        let m = &core.metrics().rows()[0];
        assert_eq!((m.stream.as_str(), m.requests_ok, m.rows, m.batches, m.decoded_bytes), ("events", 1, 7, 2, 7 * 8));
        assert_eq!(core.writers().stop(Duration::from_secs(5)).len(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_writer_holds_the_sender_to_the_queue_budget() {
        let committed: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
        let (release, hold) = std::sync::mpsc::channel();
        let hold = Arc::new(Mutex::new(hold));
        let sinks = (0..3)
            .map(|_| Fake { committed: Arc::clone(&committed), hold: Some(Arc::clone(&hold)), ..Fake::default() })
            .collect();
        let core = Arc::new(Core::new(
            Writers::start(sinks).unwrap(),
            CancellationToken::new(),
            Arc::default(),
            Arc::default(),
        ));
        // Batches of 24 MiB: the 64 MiB budget queues two; the third waits for room, and nothing more is read.
        let rows = (24 << 20) / 8;
        let pulled = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&pulled);
        let items = std::iter::once(Ok(Incoming::Schema(schema())))
            .chain((0..6).map(move |_| Ok(Incoming::Batch(batch(rows as i64)))));
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
            Err(EngineError::BadInput("truncated IPC message".into())),
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
        assert!(matches!(err, EngineError::Stopping), "{err:?}");
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
        let err =
            core.ingest(Request::new("events", Protocol::Rest, Principal::Anonymous, policy), rx).await.unwrap_err();
        assert!(matches!(err, EngineError::Stalled(_)), "{err:?}");
        assert_eq!(err.code(), Code::Timeout);
        assert!(committed.lock().unwrap().is_empty());
        assert_eq!(core.metrics().rows()[0].rows_rolled_back, 5);
        drop(tx);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_producer_is_a_disconnect_not_a_commit() {
        let (tx, rx) = mpsc::channel(1);
        let mut input = BatchRx::new(rx, Arc::default());
        tx.send(Msg::Batch(batch(1), Held::default())).await.unwrap();
        drop(tx);
        let got = tokio::task::spawn_blocking(move || {
            (input.next_batch().map(|b| b.is_some()), input.next_batch().map(|_| ()))
        })
        .await
        .unwrap();
        assert!(matches!(got.0, Ok(true)));
        assert!(matches!(got.1, Err(EngineError::Disconnected)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unsupported_types_are_refused_before_any_write() {
        let committed = Arc::default();
        let core = core(&committed);
        let s = Arc::new(Schema::new(vec![Field::new(
            "u",
            DataType::Union(arrow::datatypes::UnionFields::empty(), arrow::datatypes::UnionMode::Sparse),
            true,
        )]));
        let err = core
            .ingest(req("events", Protocol::Flight), stream::iter(vec![Ok(Incoming::Schema(s))]))
            .await
            .unwrap_err();
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
        let first = tokio::spawn(async move {
            c.ingest(Request::new("events", Protocol::Flight, Principal::Anonymous, p), rx).await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let items = vec![Ok(Incoming::Schema(schema())), Ok(Incoming::Batch(batch(2)))];
        let err = core
            .ingest(
                Request::new("events", Protocol::Flight, Principal::Anonymous, Arc::clone(&policy)),
                stream::iter(items),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, EngineError::Overloaded(1)), "{err:?}");
        assert_eq!(err.code(), Code::Busy);
        tx.unbounded_send(Ok(Incoming::Batch(batch(3)))).unwrap();
        drop(tx);
        assert_eq!(first.await.unwrap().unwrap().rows, 3);
        let items = vec![Ok(Incoming::Schema(schema())), Ok(Incoming::Batch(batch(2)))];
        assert_eq!(
            core.ingest(Request::new("events", Protocol::Flight, Principal::Anonymous, policy), stream::iter(items))
                .await
                .unwrap()
                .rows,
            2
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_writes_only_its_streams() {
        use crate::catalog::access::Scope;
        let committed = Arc::default();
        let core = core(&committed);
        let etl = Principal::Token {
            name: Arc::from("etl"),
            scope: Arc::new(Scope::Streams(vec!["events".into()])),
            access: Default::default(),
        };
        let items = || vec![Ok(Incoming::Schema(schema())), Ok(Incoming::Batch(batch(2)))];
        let err = core
            .ingest(Request::new("orders", Protocol::Rest, etl.clone(), Arc::default()), stream::iter(items()))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.to_string()),
            (Code::Denied, "token \"etl\" is not allowed to use stream \"orders\"".to_string())
        );
        let mut own_target = Request::new("events", Protocol::Rest, etl.clone(), Arc::default());
        own_target.target = Some(Target { catalog: None, schema: "main".into(), table: "orders".into() });
        assert_eq!(core.ingest(own_target, stream::iter(items())).await.unwrap_err().code(), Code::Denied);
        assert_eq!(
            core.ingest(Request::new("events", Protocol::Rest, etl, Arc::default()), stream::iter(items()))
                .await
                .unwrap()
                .rows,
            2
        );
        assert_eq!(*committed.lock().unwrap(), vec![("events".to_string(), 2)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_requests_commit_in_groups_and_large_ones_stream() {
        let committed: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
        let groups: Arc<Mutex<Vec<usize>>> = Arc::default();
        let sinks = (0..3)
            .map(|_| Fake { committed: Arc::clone(&committed), groups: Arc::clone(&groups), ..Fake::default() })
            .collect();
        let core = Arc::new(Core::new(
            Writers::start(sinks).unwrap(),
            CancellationToken::new(),
            Arc::default(),
            Arc::default(),
        ));
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
        let items =
            vec![Ok(Incoming::Schema(schema())), Ok(Incoming::Batch(batch(big))), Ok(Incoming::Batch(batch(3)))];
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
        assert_eq!(core.writers().stop(Duration::from_secs(5)).len(), 3);
    }
}
