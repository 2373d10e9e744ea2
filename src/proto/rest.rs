//! The REST API: a thin axum adapter from HTTP requests to the ingest core, on the same port as Flight.
//!
//! - `POST /streams/{name}`: the body is an Arrow IPC stream, decoded while it streams in (optionally
//!   `Content-Encoding: zstd` or `gzip`); one request is one transaction; `200` after commit.
//! - `POST /stream/{name}`: the original service's JSON body (base64 schema and IPC stream), answered in its shape.
//! - `GET /health`, `GET /streams`, `GET /streams/{name}`.
//!
//! Errors are `{"error": {"code", "message"}}`, built by `proto::status`. Nothing here touches DuckDB.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::Schema;
use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use serde_json::{Value, json};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::catalog::access::Principal;
use crate::catalog::registry::{CURSOR_COLUMN, Target};
use crate::engine::budget::Reservation;
use crate::engine::core::{Core, KeyStatus, StreamInfo};
use crate::engine::error::{Code, EngineError};
use crate::engine::follow::{After, Shape, Until};
use crate::engine::ingest::Request as IngestRequest;
use crate::engine::metrics::{self, Protocol};
use crate::engine::policy::Policy;
use crate::engine::session::IDEMPOTENCY_KEY;
use crate::engine::session::Session;
use crate::proto::ipc::{self, Decoding, SchemaLimits};
use crate::proto::status;

/// The media type of an Arrow IPC stream.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// Limits of one REST listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest single IPC message (and the largest JSON body of the original endpoint).
    pub max_message_bytes: usize,
    /// Largest request body on the wire.
    pub max_body_bytes: u64,
    /// Unknown streams, stall timeout, concurrency: shared with the listener's Flight service.
    pub policy: Arc<Policy>,
    /// The DuckDB version `/health` reports.
    pub duckdb_version: String,
    /// The host's listeners, as `/status.json` shows them.
    pub listeners: Listeners,
}

/// A listening socket as the status page shows it; the host keeps the list up to date.
#[derive(Debug, Clone)]
pub struct ListenerView {
    pub protocol: &'static str,
    pub address: String,
    pub tls: bool,
    pub auth: &'static str,
    pub started: std::time::Instant,
}

/// The host's listeners, shared with every listener's REST service.
pub type Listeners = Arc<std::sync::Mutex<Vec<ListenerView>>>;

/// The status page (`GET /`): one file, no asset from elsewhere; it reads `/status.json` every second.
const PAGE: &str = include_str!("page/index.html");

struct App<S: Session> {
    core: Arc<Core<S>>,
    limits: Limits,
}

/// An error as the client sees it.
#[derive(Debug)]
pub struct ApiError {
    code: Code,
    message: String,
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        status::log_internal(&e);
        ApiError { code: e.code(), message: e.to_string() }
    }
}

impl ApiError {
    fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        status::http(self.code, self.message)
    }
}

pub fn router<S: Session>(core: Arc<Core<S>>, limits: Limits) -> Router {
    let app = Arc::new(App { core, limits });
    Router::new()
        .route("/streams/{name}", post(ingest_ipc::<S>).get(stream_info::<S>))
        .route("/streams/{name}/requests/{key}", get(request_status::<S>))
        .route("/streams/{name}/follow", get(follow_stream::<S>))
        .route("/streams", get(list_streams::<S>))
        .route("/stream/{name}", post(ingest_legacy::<S>))
        .route("/health", get(health::<S>))
        .route("/ready", get(ready::<S>))
        .route("/metrics", get(prometheus_text::<S>))
        .route("/", get(page))
        .route("/status.json", get(host_status::<S>))
        .with_state(app)
}

fn media_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

enum Encoding {
    Identity,
    Zstd,
    Gzip,
}

fn encoding(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    let Some(v) = headers.get(header::CONTENT_ENCODING) else { return Ok(Encoding::Identity) };
    let v = v.to_str().unwrap_or("").trim().to_ascii_lowercase();
    match v.as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "zstd" => Ok(Encoding::Zstd),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        other => Err(ApiError::new(
            Code::UnsupportedMedia,
            format!("unsupported Content-Encoding {other:?}; use zstd, gzip or none"),
        )),
    }
}

fn check_length(headers: &HeaderMap, max: u64) -> Result<(), ApiError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > max => Err(ApiError::new(
            Code::TooLarge,
            format!("the body of {n} bytes is over the listener's limit of {max} bytes"),
        )),
        _ => Ok(()),
    }
}

/// The request body as a byte stream: counted, limited, and with transport failures classified.
fn body_stream(
    body: Body,
    max: u64,
    wire: Arc<AtomicU64>,
) -> impl Stream<Item = Result<Bytes, EngineError>> + Send + Unpin {
    body.into_data_stream().map(move |chunk| match chunk {
        Ok(bytes) => {
            let total = wire.fetch_add(bytes.len() as u64, Ordering::Relaxed) + bytes.len() as u64;
            if total > max {
                Err(EngineError::TooLarge(format!("the body is over the listener's limit of {max} bytes")))
            } else {
                Ok(bytes)
            }
        }
        Err(_) => Err(EngineError::Disconnected),
    })
}

/// Undoes the HTTP Content-Encoding, keeping our own errors (limits, disconnects) as they are.
fn decoded<St>(input: St, enc: Encoding) -> Box<dyn Stream<Item = Result<Bytes, EngineError>> + Send + Unpin>
where
    St: Stream<Item = Result<Bytes, EngineError>> + Send + Unpin + 'static,
{
    if matches!(enc, Encoding::Identity) {
        return Box::new(input);
    }
    let reader = StreamReader::new(input.map_err(std::io::Error::other));
    let unwrap = |e: std::io::Error, what: &str| match e.get_ref().and_then(|inner| inner.downcast_ref::<EngineError>())
    {
        Some(ours) => ours.clone(),
        None => EngineError::BadInput(format!("the {what} body does not decompress: {e}")),
    };
    match enc {
        Encoding::Zstd => Box::new(ReaderStream::new(ZstdDecoder::new(reader)).map_err(move |e| unwrap(e, "zstd"))),
        Encoding::Gzip => Box::new(ReaderStream::new(GzipDecoder::new(reader)).map_err(move |e| unwrap(e, "gzip"))),
        Encoding::Identity => unreachable!("handled above"),
    }
}

/// A refusal of a stream outside the principal's scope.
fn check_scope(principal: &Principal, stream: &str) -> Result<(), ApiError> {
    if principal.may_use(stream) { Ok(()) } else { Err(ApiError::new(Code::Denied, principal.denied(stream))) }
}

/// Counts a request refused before it reached the ingest core.
fn refused<S: Session>(app: &App<S>, result: Result<Response, ApiError>) -> Result<Response, ApiError> {
    if let Err(e) = &result {
        app.core.reject(Protocol::Rest, &EngineError::BadInput(e.message.clone()));
    }
    result
}

async fn ingest_ipc<S: Session>(
    State(app): State<Arc<App<S>>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let enc = match check_ipc_request(&headers, app.limits.max_body_bytes) {
        Ok(enc) => enc,
        Err(e) => return refused(&app, Err(e)),
    };
    let mut request = IngestRequest::new(name, Protocol::Rest, principal, Arc::clone(&app.limits.policy));
    request.idempotency_key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(e) => return refused(&app, Err(e)),
    };
    let bytes = decoded(body_stream(body, app.limits.max_body_bytes, Arc::clone(&request.wire_bytes)), enc);
    let decoding =
        Decoding::new(app.limits.max_message_bytes, Arc::clone(app.core.budget()), request.reservation.clone())
            .with_schema_limits(SchemaLimits::of(&app.limits.policy));
    let items = ipc::ipc_stream(bytes, decoding);
    let wire = Arc::clone(&request.wire_bytes);
    let report = app.core.ingest(request, items).await?;
    let mut body = json!({
        "stream": report.stream,
        "table": report.table,
        "rows": report.rows,
        "batches": report.batches,
        "bytes": wire.load(Ordering::Relaxed),
    });
    if report.replayed {
        body["replayed"] = json!(true);
    }
    Ok(axum::Json(body).into_response())
}

/// The `Idempotency-Key` header, if any (checked by the core).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get(IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim().to_string()))
            .map_err(|_| ApiError::new(Code::InvalidInput, "the Idempotency-Key header is not printable ASCII")),
    }
}

/// `GET /streams/{name}/requests/{key}`: what became of the request a key names.
async fn request_status<S: Session>(
    State(app): State<Arc<App<S>>>,
    Extension(principal): Extension<Principal>,
    Path((name, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    check_scope(&principal, &name)?;
    let status = app.core.request_status(&name, &key, app.limits.policy.idempotency_window).await?;
    Ok(axum::Json(status_json(&name, &key, status)).into_response())
}

/// A request's status as JSON: `committed` with its acknowledgement, `in_progress`, or `unknown`.
pub fn status_json(stream: &str, key: &str, status: KeyStatus) -> Value {
    match status {
        KeyStatus::Committed(ack) => {
            let ack: Value = serde_json::from_str(&ack).unwrap_or(Value::Null);
            json!({"stream": stream, "key": key, "status": "committed", "ack": ack})
        }
        KeyStatus::InProgress => json!({"stream": stream, "key": key, "status": "in_progress"}),
        KeyStatus::Unknown => json!({"stream": stream, "key": key, "status": "unknown"}),
    }
}

/// Checks the headers of an IPC request; returns its Content-Encoding.
fn check_ipc_request(headers: &HeaderMap, max_body: u64) -> Result<Encoding, ApiError> {
    match media_type(headers).as_deref() {
        Some(ARROW_STREAM) => {}
        Some(other) => {
            return Err(ApiError::new(
                Code::UnsupportedMedia,
                format!("unsupported Content-Type {other:?}; send {ARROW_STREAM}"),
            ));
        }
        None => {
            return Err(ApiError::new(Code::UnsupportedMedia, format!("missing Content-Type; send {ARROW_STREAM}")));
        }
    }
    let enc = encoding(headers)?;
    check_length(headers, max_body)?;
    Ok(enc)
}

#[derive(serde::Deserialize)]
struct LegacyRequest {
    config: LegacyConfig,
    batch: LegacyBatch,
}

#[derive(serde::Deserialize)]
struct LegacyConfig {
    target_table: String,
    #[serde(default)]
    storage_backend: Option<String>,
    // `chunk_size` and `compression` are accepted as the original did; DuckDB's scan decides chunking here.
    #[serde(default)]
    #[allow(dead_code)]
    chunk_size: Option<i64>,
    #[serde(default)]
    #[allow(dead_code)]
    compression: Option<Value>,
}

#[derive(serde::Deserialize)]
struct LegacyBatch {
    arrow_schema: String,
    data: String,
}

async fn ingest_legacy<S: Session>(
    State(app): State<Arc<App<S>>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(e) => return refused(&app, Err(e)),
    };
    let prepared = legacy_request(&app, principal, name, headers, body).await;
    let (mut request, data) = match prepared {
        Ok(p) => p,
        Err(e) => return refused(&app, Err(e)),
    };
    request.idempotency_key = key;
    let name = request.stream.clone();
    let decoding =
        Decoding::new(app.limits.max_message_bytes, Arc::clone(app.core.budget()), request.reservation.clone())
            .with_schema_limits(SchemaLimits::of(&app.limits.policy));
    let items = ipc::ipc_stream(futures::stream::iter([Ok(Bytes::from(data))]), decoding);
    let report = app.core.ingest(request, items).await?;
    let mut body = json!({
        "status": "success",
        "stream": name,
        "rows_processed": report.rows,
        "storage_backend": "duckdb",
        "message": "Data processed successfully",
    });
    if report.replayed {
        body["replayed"] = json!(true);
    }
    Ok(axum::Json(body).into_response())
}

/// A whole (small) body, read within `limit` bytes; a client that sends nothing for `stall` is refused.
/// Each chunk is reserved from the host's memory budget before it is kept.
async fn whole_body(
    body: Body,
    limit: usize,
    stall: std::time::Duration,
    reserve: &Decoding,
) -> Result<Bytes, ApiError> {
    let mut chunks = body.into_data_stream();
    let mut out = bytes::BytesMut::new();
    loop {
        match tokio::time::timeout(stall, chunks.next()).await {
            Err(_) => return Err(EngineError::Stalled(stall).into()),
            Ok(None) => return Ok(out.freeze()),
            Ok(Some(Err(_))) => return Err(EngineError::Disconnected.into()),
            Ok(Some(Ok(chunk))) => {
                if out.len() + chunk.len() > limit {
                    return Err(ApiError::new(
                        Code::TooLarge,
                        format!("the body is over the limit of {limit} bytes for JSON requests"),
                    ));
                }
                reserve.reserve(chunk.len())?;
                out.extend_from_slice(&chunk);
            }
        }
    }
}

/// Reads and checks the original service's JSON body; returns the request and the IPC bytes.
async fn legacy_request<S: Session>(
    app: &App<S>,
    principal: Principal,
    name: String,
    headers: HeaderMap,
    body: Body,
) -> Result<(IngestRequest, Vec<u8>), ApiError> {
    if let Some(mt) = media_type(&headers)
        && mt != "application/json"
    {
        return Err(ApiError::new(
            Code::UnsupportedMedia,
            format!("unsupported Content-Type {mt:?}; send application/json"),
        ));
    }
    if !matches!(encoding(&headers)?, Encoding::Identity) {
        return Err(ApiError::new(Code::UnsupportedMedia, "the JSON endpoint takes an uncompressed body"));
    }
    let limit = (app.limits.max_message_bytes as u64).min(app.limits.max_body_bytes);
    check_length(&headers, limit)?;
    let reservation = Reservation::default();
    let decoding = Decoding::new(app.limits.max_message_bytes, Arc::clone(app.core.budget()), reservation.clone())
        .with_schema_limits(SchemaLimits::of(&app.limits.policy));
    let raw = whole_body(body, limit as usize, app.limits.policy.stall_timeout, &decoding).await?;
    let request: LegacyRequest = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::new(Code::InvalidInput, format!("invalid JSON request: {e}")))?;
    if let Some(backend) = request.config.storage_backend.as_deref()
        && backend != "duckdb"
    {
        return Err(ApiError::new(
            Code::InvalidInput,
            format!("storage_backend {backend:?} is not available: arrowport stores into DuckDB"),
        ));
    }
    let target = Target::parse(&request.config.target_table).map_err(|e| ApiError::new(Code::InvalidInput, e))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let schema_bytes = b64
        .decode(request.batch.arrow_schema.trim())
        .map_err(|e| ApiError::new(Code::InvalidInput, format!("batch.arrow_schema is not base64: {e}")))?;
    arrow::ipc::convert::try_schema_from_ipc_buffer(&schema_bytes).map_err(|e| {
        ApiError::new(Code::InvalidInput, format!("batch.arrow_schema is not a serialized Arrow schema: {e}"))
    })?;
    let data = b64
        .decode(request.batch.data.trim())
        .map_err(|e| ApiError::new(Code::InvalidInput, format!("batch.data is not base64: {e}")))?;
    let mut ingest_request = IngestRequest::new(name, Protocol::Rest, principal, Arc::clone(&app.limits.policy));
    ingest_request.wire_bytes.store(raw.len() as u64, Ordering::Relaxed);
    ingest_request.target = Some(target);
    // The JSON body stays reserved until the request's first batch is admitted.
    ingest_request.reservation = reservation;
    Ok((ingest_request, data))
}

/// Liveness: the listener answers. Nothing is asked of DuckDB or the writers.
async fn health<S: Session>(State(app): State<Arc<App<S>>>) -> Response {
    axum::Json(json!({"status": "ok", "duckdb": app.limits.duckdb_version})).into_response()
}

/// Readiness: a writer is free to take a request now (503 with Retry-After when all are busy or the listener
/// is stopping). It counts free writers; it borrows none.
async fn ready<S: Session>(State(app): State<Arc<App<S>>>) -> Result<Response, ApiError> {
    if app.core.stopping() {
        return Err(EngineError::Stopping.into());
    }
    match app.core.free_writers() {
        0 => Err(ApiError::new(Code::Busy, "every writer is busy; retry later")),
        free => Ok(axum::Json(json!({"status": "ready", "writers_free": free})).into_response()),
    }
}

fn schema_json(schema: &Schema) -> Value {
    Value::Array(
        schema
            .fields()
            .iter()
            .map(|f| json!({"name": f.name(), "type": f.data_type().to_string(), "nullable": f.is_nullable()}))
            .collect(),
    )
}

fn stream_json(info: &StreamInfo, metrics: &[metrics::Row]) -> Value {
    let name = info.mapping.stream.as_str();
    let mine = metrics.iter().filter(|r| r.stream == name);
    let (mut ok, mut failed, mut rows, mut batches) = (0, 0, 0, 0);
    for r in mine {
        ok += r.requests_ok;
        failed += r.requests_failed;
        rows += r.rows;
        batches += r.batches;
    }
    json!({
        "stream": name,
        "target": info.mapping.target.display(),
        "mapping": if info.defined { "defined" } else { "default" },
        "create_table": info.mapping.create_table,
        "schema_policy": info.mapping.policy.name(),
        "mode": info.mapping.mode.name(),
        "schema": info.schema.as_ref().map(schema_json),
        "counters": {"requests_ok": ok, "requests_failed": failed, "rows": rows, "batches": batches},
    })
}

async fn prometheus_text<S: Session>(State(app): State<Arc<App<S>>>) -> Response {
    let text = app.core.metrics().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// `GET /streams/{name}/follow?after=...`: an Arrow IPC stream that stays open (the rows carry their cursor in
/// `arrowport_cursor`), or with `Accept: text/event-stream` server-sent events, one per row: `id:` its cursor,
/// `data:` the row as JSON (an `EventSource` resumes by itself: `Last-Event-ID` stands for `after`).
async fn follow_stream<S: Session + 'static>(
    State(app): State<Arc<App<S>>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let after = query_value(query.as_deref().unwrap_or(""), "after")
        .or_else(|| headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_string));
    let after = After::parse(after.as_deref().unwrap_or("start"))?;
    let query = query.as_deref().unwrap_or("");
    let until = Until::parse(query_value(query, "wait").as_deref(), query_value(query, "max_rows").as_deref())?;
    let events = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("text/event-stream"));
    let shape = if events { Shape::Json } else { Shape::Rows };
    let protocol = if events { "sse" } else { "rest" };
    let (schema, rows) = app.core.follow(&principal, &name, after, shape, until, protocol).await?;
    if events {
        let body = rows.map(|item| {
            let (batch, _) = item.map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok::<_, std::io::Error>(Bytes::from(events_of(&batch)))
        });
        let headers = [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-store")];
        return Ok((headers, Body::from_stream(body)).into_response());
    }
    let (mut writer, head) = crate::proto::ipc_out::StreamOut::start(&schema)
        .map_err(|e| ApiError::from(EngineError::Internal(e.to_string())))?;
    // Each batch's message carries the cursor of its last row as custom metadata (`arrowport_cursor`); a clean end
    // (caught up, or the host stopping) ends the IPC stream with its end-of-stream marker.
    let batches = rows.map(move |item| {
        let (batch, cursor) = item.map_err(|e| std::io::Error::other(e.to_string()))?;
        let bytes = writer.batch(&batch, &[(CURSOR_COLUMN, &cursor.to_string())]).map_err(std::io::Error::other)?;
        Ok(Bytes::from(bytes))
    });
    let end = futures::stream::once(async { Ok(Bytes::from_static(&crate::proto::ipc_out::END_OF_STREAM)) });
    let body =
        futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(head)) }).chain(batches).chain(end);
    Ok(([(header::CONTENT_TYPE, ARROW_STREAM), (header::CACHE_CONTROL, "no-store")], Body::from_stream(body))
        .into_response())
}

/// A query string's value for `key` (percent-decoding `%XX` and `+`).
fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| {
            let v = v.replace('+', " ");
            let bytes = v.as_bytes();
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
                    (b'%', Some(b)) => {
                        out.push(b);
                        i += 3;
                    }
                    (c, _) => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        })
    })
}

/// One server-sent event per row of a JSON-shaped follow batch (`arrowport_cursor`, `row`).
fn events_of(batch: &arrow::array::RecordBatch) -> String {
    use arrow::array::{Array, Int64Array, StringArray};
    let cursors = batch.column(0).as_any().downcast_ref::<Int64Array>();
    let rows = batch.column(1).as_any().downcast_ref::<StringArray>();
    let (Some(cursors), Some(rows)) = (cursors, rows) else { return String::new() };
    let mut out = String::new();
    for i in 0..batch.num_rows() {
        // A row's JSON is one line (to_json escapes newlines inside values).
        out.push_str(&format!("id: {}\ndata: {}\n\n", cursors.value(i), rows.value(i)));
    }
    out
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // The page runs only its own inline script and talks only to its own origin; no frame may embed it.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
                 img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
        .into_response()
}

/// What the status page shows: the listeners, requests in flight, the memory budget, and one row per stream and
/// protocol with exactly the counters of `arrowport_metrics()`. Everything is read from counters the host keeps
/// anyway; nothing is kept for the page.
async fn host_status<S: Session>(State(app): State<Arc<App<S>>>) -> Response {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default();
    let listeners: Vec<Value> = app
        .limits
        .listeners
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|l| {
            json!({"protocol": l.protocol, "address": l.address, "tls": l.tls, "auth": l.auth,
                   "uptime_seconds": l.started.elapsed().as_secs_f64()})
        })
        .collect();
    let budget = app.core.budget();
    let followers: Vec<Value> = app
        .core
        .metrics()
        .followers()
        .into_iter()
        .map(|f| {
            json!({"stream": f.stream, "protocol": f.protocol, "cursor": f.cursor, "lag_rows": f.latest - f.cursor,
                        "rows_sent": f.rows, "bytes_sent": f.bytes})
        })
        .collect();
    let streams: Vec<Value> = app
        .core
        .metrics()
        .rows()
        .into_iter()
        .map(|r| {
            let target = app.core.mapping(&r.stream, false).map(|m| m.target.display()).unwrap_or_default();
            status_row(&r, &target)
        })
        .collect();
    let body = json!({
        "version": format!("arrowport {} (DuckDB {})", env!("CARGO_PKG_VERSION"), app.limits.duckdb_version),
        "now_us": now_us,
        "listeners": listeners,
        "requests_in_flight": app.core.in_flight(),
        "memory_budget": {"limit_bytes": budget.limit(), "used_bytes": budget.in_use()},
        "streams": streams,
        "followers": followers,
    });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// One row of `arrowport_metrics()` as `/status.json` carries it (same names), with the stream's target.
pub(crate) fn status_row(r: &crate::engine::metrics::Row, target: &str) -> Value {
    json!({
        "stream": r.stream, "protocol": r.protocol, "target": target,
        "requests_ok": r.requests_ok, "requests_failed": r.requests_failed,
        "rows_committed": r.rows, "batches": r.batches, "wire_bytes": r.wire_bytes, "decoded_bytes": r.decoded_bytes,
        "rows_rolled_back": r.rows_rolled_back, "last_commit_us": r.last_commit_us,
        "last_error": r.last_error, "last_error_us": r.last_error_us,
        "latency_p50_ms": r.latency_p50_ms, "latency_p95_ms": r.latency_p95_ms, "latency_p99_ms": r.latency_p99_ms,
        "write_seconds": r.write_seconds,
    })
}

async fn list_streams<S: Session>(
    State(app): State<Arc<App<S>>>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    let mut infos = app.core.streams().await?;
    infos.retain(|i| principal.may_use(&i.mapping.stream));
    let metrics = app.core.metrics().rows();
    let streams: Vec<Value> = infos.iter().map(|info| stream_json(info, &metrics)).collect();
    Ok(axum::Json(json!({"streams": streams})).into_response())
}

async fn stream_info<S: Session>(
    State(app): State<Arc<App<S>>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    check_scope(&principal, &name)?;
    match app.core.stream(&name).await? {
        Some(info) => Ok(axum::Json(stream_json(&info, &app.core.metrics().rows())).into_response()),
        None => Err(ApiError::new(
            Code::NotFound,
            format!("stream {name:?} is not defined and has no table yet (main.{name})"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_found_and_decoded() {
        assert_eq!(query_value("after=42", "after").as_deref(), Some("42"));
        assert_eq!(query_value("x=1&after=%65nd", "after").as_deref(), Some("end"));
        assert_eq!(query_value("after=a+b%2", "after").as_deref(), Some("a b%2"));
        assert_eq!(query_value("afterwards=1", "after"), None);
        assert_eq!(query_value("", "after"), None);
    }

    #[test]
    fn events_are_one_per_row_with_the_cursor_as_id() {
        use arrow::array::{Int64Array, StringArray};
        let schema = Arc::new(Schema::new(vec![
            arrow::datatypes::Field::new("arrowport_cursor", arrow::datatypes::DataType::Int64, false),
            arrow::datatypes::Field::new("row", arrow::datatypes::DataType::Utf8, false),
        ]));
        let batch = arrow::array::RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(vec![7, 8])), Arc::new(StringArray::from(vec!["{\"a\":1}", "{\"a\":2}"]))],
        )
        .unwrap();
        assert_eq!(events_of(&batch), "id: 7\ndata: {\"a\":1}\n\nid: 8\ndata: {\"a\":2}\n\n");
    }
}
