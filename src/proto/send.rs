//! The sending side: a query's batches to a remote stream, over Flight DoPut (`grpc://`, `grpc+tls://`) or the
//! REST endpoint (`http://`, `https://`), one request per attempt, every attempt under one idempotency key.
//!
//! The batches come from a [`Source`] the caller gives (the host runs the local query); this module encodes,
//! sends, reads the acknowledgement and decides whether a failure is worth another attempt. A failure of the
//! local query aborts the upload by breaking the connection, never by ending the stream, so a remote never
//! commits a partial result. Memory is bounded by the query's small result queue, one coalesced batch and the
//! transport's flow-control window.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::CompressionType;
use arrow::ipc::writer::{IpcWriteOptions, StreamEncoder};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::Value;

use crate::engine::error::{Code as ErrorCode, GRPC_CODE_KEY, IngestError};
use crate::engine::query::QueryStream;

/// Largest Flight message the sender builds: batches are split to stay under it.
const MAX_FLIGHT_DATA: usize = crate::engine::sink::GATHER_BYTES;
/// The first pause between attempts; it doubles up to [`MAX_BACKOFF`] (a 503's Retry-After wins when given).
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Largest acknowledgement body read.
const MAX_ACK_BYTES: usize = 1024 * 1024;

/// How the remote is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Arrow Flight DoPut with a PATH descriptor naming the stream.
    Grpc,
    /// `POST /streams/{stream}` with an Arrow IPC stream body.
    Http,
}

/// A parsed destination URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub transport: Transport,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// A path prefix for REST (`https://h/ingest` posts to `/ingest/streams/{stream}`), without a trailing `/`.
    pub base_path: String,
}

impl Target {
    /// `grpc://host:port`, `grpc+tcp://host:port`, `grpc+tls://host:port`, `http://host[:port][/prefix]`,
    /// `https://host[:port][/prefix]`.
    pub fn parse(url: &str) -> Result<Target, String> {
        let bad = |why: &str| {
            format!(
                "invalid url {url:?}: {why} (use grpc://host:port, grpc+tls://host:port, http://host:port or https://host:port)"
            )
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let (transport, tls) = match scheme.to_ascii_lowercase().as_str() {
            "grpc" | "grpc+tcp" => (Transport::Grpc, false),
            "grpc+tls" => (Transport::Grpc, true),
            "http" => (Transport::Http, false),
            "https" => (Transport::Http, true),
            other => return Err(bad(&format!("unsupported scheme {other:?}"))),
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(bad("credentials in the url are not supported; use token := '...'"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => {
                (h, Some(p.parse::<u16>().map_err(|_| bad("the port is not a number from 1 to 65535"))?))
            }
            _ => (authority, None),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match (port, transport, tls) {
            (Some(0), ..) => return Err(bad("port 0")),
            (Some(p), ..) => p,
            (None, Transport::Http, false) => 80,
            (None, Transport::Http, true) => 443,
            (None, Transport::Grpc, _) => return Err(bad("a grpc url needs a port")),
        };
        if transport == Transport::Grpc && !path.trim_matches('/').is_empty() {
            return Err(bad("a grpc url has no path"));
        }
        Ok(Target { transport, tls, host: host.to_string(), port, base_path: path.trim_end_matches('/').to_string() })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// IPC buffer compression of the sent batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn parse(text: &str) -> Result<Compression, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "none" | "" => Ok(Compression::None),
            "lz4" | "lz4_frame" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            other => Err(format!("invalid value for option compression: {other:?} (allowed: zstd, lz4, none)")),
        }
    }

    fn ipc_options(self) -> Result<IpcWriteOptions, String> {
        let kind = match self {
            Compression::None => None,
            Compression::Lz4 => Some(CompressionType::LZ4_FRAME),
            Compression::Zstd => Some(CompressionType::ZSTD),
        };
        IpcWriteOptions::default().try_with_compression(kind).map_err(|e| e.to_string())
    }
}

/// Options of one send.
#[derive(Debug, Clone)]
pub struct SendOptions {
    pub token: Option<String>,
    pub compression: Compression,
    /// Rows per sent batch (DuckDB's chunks are gathered up to it).
    pub batch_rows: usize,
    pub idempotency_key: String,
    /// A PEM file of certificates to trust instead of the system's.
    pub tls_ca: Option<String>,
    /// How long the remote may make no progress (connect, take data, acknowledge) before an attempt fails.
    pub timeout: Duration,
    /// Attempts after the first, on transient failures.
    pub retries: u32,
}

/// Default rows per sent batch.
pub const DEFAULT_BATCH_ROWS: usize = 122_880;
/// Default time the remote may make no progress.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default attempts after the first.
pub const DEFAULT_RETRIES: u32 = 5;

/// The remote's acknowledgement (filled from what was sent where the remote does not say).
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    pub stream: String,
    pub table: Option<String>,
    pub rows: u64,
    pub batches: u64,
    pub bytes: u64,
    pub replayed: bool,
}

/// The outcome of a send.
#[derive(Debug, Clone)]
pub struct Sent {
    pub ack: Ack,
    pub retries: u32,
    pub elapsed: Duration,
}

/// Why an attempt failed: worth another attempt or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A transient failure; `after` is how long the remote asked to wait.
    Transient {
        message: String,
        after: Option<Duration>,
    },
    Permanent(String),
}

impl Failure {
    fn transient(message: impl Into<String>) -> Failure {
        Failure::Transient { message: message.into(), after: None }
    }
}

/// The query's result, started afresh for each attempt.
pub type Source<'a> =
    Box<dyn FnMut() -> Pin<Box<dyn Future<Output = Result<(SchemaRef, QueryStream), IngestError>> + Send>> + Send + 'a>;

/// Sends the source's rows to `stream` at `target`, retrying transient failures with the same key.
pub async fn send(
    target: &Target,
    stream: &str,
    options: &SendOptions,
    mut source: Source<'_>,
) -> Result<Sent, String> {
    let started = Instant::now();
    let tls = if target.tls { Some(client_tls(options.tls_ca.as_deref(), target.transport)?) } else { None };
    let mut retries = 0;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let (schema, batches) = source().await.map_err(|e| format!("the query failed: {e}"))?;
        let attempt = Attempt { target, stream, options, tls: tls.clone() };
        let failure = match attempt.run(schema, batches).await {
            Ok(ack) => return Ok(Sent { ack, retries, elapsed: started.elapsed() }),
            Err(f) => f,
        };
        match failure {
            Failure::Permanent(message) => return Err(message),
            Failure::Transient { message, after } => {
                if retries >= options.retries {
                    return Err(format!(
                        "{message} (gave up after {} attempts; idempotency key {:?})",
                        retries + 1,
                        options.idempotency_key
                    ));
                }
                retries += 1;
                tokio::time::sleep(after.unwrap_or(backoff).min(Duration::from_secs(60))).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// What the outgoing stream has done: for the acknowledgement's defaults and for the no-progress timeout.
#[derive(Default)]
struct Progress {
    rows: AtomicU64,
    batches: AtomicU64,
    bytes: AtomicU64,
    /// Milliseconds since the attempt began, at the last step the remote took.
    last: AtomicU64,
    /// Whether the transport is waiting for the local query (that time is not the remote's).
    local: AtomicBool,
}

/// Wraps the outgoing messages: counts them, and on a local failure reports it and stays pending, so the
/// transport never ends the request normally (the caller then drops the connection).
struct Outgoing<S, T> {
    inner: Pin<Box<S>>,
    failed: Option<tokio::sync::oneshot::Sender<String>>,
    progress: Arc<Progress>,
    began: Instant,
    size: fn(&T) -> usize,
}

impl<S, T> Stream for Outgoing<S, T>
where
    S: Stream<Item = Result<T, String>>,
{
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        if this.failed.is_none() {
            return Poll::Pending;
        }
        let now = this.began.elapsed().as_millis() as u64;
        match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => {
                this.progress.local.store(true, Ordering::Relaxed);
                Poll::Pending
            }
            Poll::Ready(Some(Ok(item))) => {
                this.progress.local.store(false, Ordering::Relaxed);
                this.progress.last.store(now, Ordering::Relaxed);
                this.progress.bytes.fetch_add((this.size)(&item) as u64, Ordering::Relaxed);
                Poll::Ready(Some(item))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(tx) = this.failed.take() {
                    let _ = tx.send(e);
                }
                Poll::Pending
            }
            Poll::Ready(None) => {
                this.progress.local.store(false, Ordering::Relaxed);
                this.progress.last.store(now, Ordering::Relaxed);
                Poll::Ready(None)
            }
        }
    }
}

/// Resolves when the remote has made no progress for `limit` (time spent waiting for the local query aside): it
/// sleeps until `limit` after the last progress, and again from the progress made meanwhile, if any.
async fn stalled(progress: Arc<Progress>, began: Instant, limit: Duration) -> Failure {
    loop {
        let last = Duration::from_millis(progress.last.load(Ordering::Relaxed));
        tokio::time::sleep_until((began + last + limit).into()).await;
        let now = began.elapsed().as_millis() as u64;
        if progress.local.load(Ordering::Relaxed) {
            // Waiting for the local query is not the remote's time: the limit starts again from now.
            progress.last.store(now, Ordering::Relaxed);
            continue;
        }
        if now.saturating_sub(progress.last.load(Ordering::Relaxed)) >= limit.as_millis() as u64 {
            return Failure::transient(format!("the remote made no progress for {} s (timeout)", limit.as_secs_f64()));
        }
    }
}

struct Attempt<'a> {
    target: &'a Target,
    stream: &'a str,
    options: &'a SendOptions,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Attempt<'_> {
    async fn run(&self, schema: SchemaRef, batches: QueryStream) -> Result<Ack, Failure> {
        let began = Instant::now();
        let progress = Arc::new(Progress::default());
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
        let counting = Arc::clone(&progress);
        let batches = batches.map(move |b| {
            if let Ok(b) = &b {
                counting.rows.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                counting.batches.fetch_add(1, Ordering::Relaxed);
            }
            b
        });
        let upload = async {
            match self.target.transport {
                Transport::Grpc => {
                    self.flight(schema, batches, Parts { failed: failed_tx, progress: Arc::clone(&progress), began })
                        .await
                }
                Transport::Http => {
                    self.http(schema, batches, Parts { failed: failed_tx, progress: Arc::clone(&progress), began })
                        .await
                }
            }
        };
        let connect_and_upload = async {
            tokio::select! {
                r = upload => r,
                f = stalled(Arc::clone(&progress), began, self.options.timeout) => Err(f),
            }
        };
        // A local failure wins: the upload is dropped (and its connection with it) before it can end normally.
        let outcome = tokio::select! {
            biased;
            Ok(local) = failed_rx => Err(Failure::Permanent(format!("the query failed: {local}; nothing was committed on the remote"))),
            r = connect_and_upload => r,
        };
        let mut ack = outcome?;
        let sent = |a: &AtomicU64| a.load(Ordering::Relaxed);
        if ack.stream.is_empty() {
            ack.stream = self.stream.to_string();
        }
        for (field, counted) in
            [(&mut ack.rows, &progress.rows), (&mut ack.batches, &progress.batches), (&mut ack.bytes, &progress.bytes)]
        {
            if *field == u64::MAX {
                *field = sent(counted);
            }
        }
        Ok(ack)
    }

    async fn flight<S>(&self, schema: SchemaRef, batches: S, parts: Parts) -> Result<Ack, Failure>
    where
        S: Stream<Item = Result<RecordBatch, IngestError>> + Send + 'static,
    {
        use arrow_flight::encode::FlightDataEncoderBuilder;
        use arrow_flight::error::FlightError;
        use arrow_flight::flight_service_client::FlightServiceClient;
        use arrow_flight::{FlightData, FlightDescriptor};

        let options = self.options.compression.ipc_options().map_err(Failure::Permanent)?;
        let encoded = FlightDataEncoderBuilder::new()
            .with_options(options)
            .with_schema(schema)
            .with_max_flight_data_size(MAX_FLIGHT_DATA)
            .with_flight_descriptor(Some(FlightDescriptor::new_path(vec![self.stream.to_string()])))
            .build(batches.map(|b| b.map_err(|e| FlightError::ExternalError(Box::new(e)))))
            .map(|m| m.map_err(|e| flight_error_text(&e)));
        let outgoing = parts.wrap(encoded, |m: &FlightData| m.data_header.len() + m.data_body.len());

        let channel = self.channel().await?;
        let mut client = FlightServiceClient::new(channel).max_decoding_message_size(MAX_ACK_BYTES);
        let mut request = tonic::Request::new(outgoing);
        let metadata = request.metadata_mut();
        if let Some(token) = &self.options.token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Failure::Permanent("the token is not printable ASCII".into()))?;
            metadata.insert("authorization", value);
        }
        let key = self
            .options
            .idempotency_key
            .parse()
            .map_err(|_| Failure::Permanent("the idempotency key is not printable ASCII".into()))?;
        metadata.insert("idempotency-key", key);
        let mut results = client.do_put(request).await.map_err(|s| status_failure(&s))?.into_inner();
        let mut ack = None;
        loop {
            match results.message().await {
                Ok(Some(result)) => ack = Some(result.app_metadata),
                Ok(None) => break,
                Err(s) => return Err(status_failure(&s)),
            }
        }
        Ok(ack_from(ack.as_deref().unwrap_or(b"")))
    }

    /// A fresh HTTP/2 channel for one attempt (dropping it breaks the connection).
    async fn channel(&self) -> Result<tonic::transport::Channel, Failure> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", self.target.authority()))
            .map_err(|e| Failure::Permanent(format!("invalid url: {e}")))?
            .connect_timeout(self.options.timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(16 * 1024 * 1024))
            .initial_connection_window_size(Some(32 * 1024 * 1024));
        let connector = Connector { target: self.target.clone(), tls: self.tls.clone(), timeout: self.options.timeout };
        endpoint.connect_with_connector(connector).await.map_err(|e| {
            Failure::transient(format!("could not connect to {}: {}", self.target.authority(), error_chain(&e)))
        })
    }

    async fn http<S>(&self, schema: SchemaRef, batches: S, parts: Parts) -> Result<Ack, Failure>
    where
        S: Stream<Item = Result<RecordBatch, IngestError>> + Send + 'static,
    {
        let options = self.options.compression.ipc_options().map_err(Failure::Permanent)?;
        // The IPC stream as the buffers it is made of: a batch's own column buffers go to the socket as they are
        // (hyper writes a body's chunks with vectored writes), only the message headers are new bytes. The schema
        // goes out with the first batch (or the end of an empty result).
        let mut encoder =
            Some(StreamEncoder::try_new_with_options(&schema, options).map_err(|e| Failure::Permanent(e.to_string()))?);
        let body = batches.map(Some).chain(futures::stream::once(async { None })).flat_map(move |item| {
            let buffers = match item {
                Some(Ok(batch)) => match encoder.as_mut() {
                    Some(e) => e.encode(&batch).map_err(|e| e.to_string()),
                    None => Err("a batch after the end of the stream".to_string()),
                },
                Some(Err(e)) => Err(e.to_string()),
                None => match encoder.take() {
                    Some(e) => e.finish().map_err(|e| e.to_string()),
                    None => Ok(Vec::new()),
                },
            };
            futures::stream::iter(match buffers {
                Ok(buffers) => buffers.into_iter().map(|b| Ok(Bytes::from_owner(b))).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            })
        });
        let outgoing = parts.wrap(body, |b: &Bytes| b.len()).map(Ok::<Bytes, std::io::Error>);

        let io = self.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| Failure::transient(format!("could not speak HTTP to {}: {e}", self.target.authority())))?;
        let driver = tokio::spawn(connection);
        struct Abort(tokio::task::JoinHandle<Result<(), hyper::Error>>);
        impl Drop for Abort {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let _driver = Abort(driver);
        let path = format!("{}/streams/{}", self.target.base_path, percent_encode(self.stream));
        let mut request = axum::http::Request::post(path)
            .header(axum::http::header::HOST, self.target.authority())
            .header(axum::http::header::CONTENT_TYPE, "application/vnd.apache.arrow.stream")
            .header("Idempotency-Key", &self.options.idempotency_key);
        if let Some(token) = &self.options.token {
            request = request.header(axum::http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(axum::body::Body::from_stream(outgoing))
            .map_err(|e| Failure::Permanent(format!("invalid request: {e}")))?;
        let response = sender.send_request(request).await.map_err(|e| {
            Failure::transient(format!("the connection to {} failed: {}", self.target.authority(), error_chain(&e)))
        })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(axum::http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body =
            axum::body::to_bytes(axum::body::Body::new(response.into_body()), MAX_ACK_BYTES).await.map_err(|e| {
                Failure::transient(format!(
                    "the connection to {} failed while reading the acknowledgement: {}",
                    self.target.authority(),
                    error_chain(&*e.into_inner())
                ))
            })?;
        if status.is_success() {
            return Ok(ack_from(&body));
        }
        Err(http_failure(status.as_u16(), &body, retry_after))
    }

    async fn connect(&self) -> Result<Box<dyn Io>, Failure> {
        let connector = Connector { target: self.target.clone(), tls: self.tls.clone(), timeout: self.options.timeout };
        connector
            .open()
            .await
            .map_err(|e| Failure::transient(format!("could not connect to {}: {e}", self.target.authority())))
    }
}

/// The sending half of an [`Outgoing`], made before the stream it wraps.
struct Parts {
    failed: tokio::sync::oneshot::Sender<String>,
    progress: Arc<Progress>,
    began: Instant,
}

impl Parts {
    fn wrap<S, T>(self, inner: S, size: fn(&T) -> usize) -> Outgoing<S, T>
    where
        S: Stream<Item = Result<T, String>>,
    {
        Outgoing { inner: Box::pin(inner), failed: Some(self.failed), progress: self.progress, began: self.began, size }
    }
}

/// A connection's byte stream, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// Opens TCP (and TLS) connections to the target; also tonic's connector.
#[derive(Clone)]
struct Connector {
    target: Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
}

impl Connector {
    async fn open(&self) -> std::io::Result<Box<dyn Io>> {
        let tcp = tokio::time::timeout(
            self.timeout,
            tokio::net::TcpStream::connect((self.target.host.as_str(), self.target.port)),
        )
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {} s", self.timeout.as_secs_f64()),
            )
        })??;
        let _ = tcp.set_nodelay(true);
        let Some(config) = &self.tls else { return Ok(Box::new(tcp)) };
        let name = rustls_pki_types::ServerName::try_from(self.target.host.clone()).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("invalid TLS server name: {e}"))
        })?;
        let tls =
            tokio::time::timeout(self.timeout, tokio_rustls::TlsConnector::from(Arc::clone(config)).connect(name, tcp))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "the TLS handshake did not finish"))??;
        Ok(Box::new(tls))
    }
}

impl tower::Service<axum::http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<Box<dyn Io>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: axum::http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.open().await.map(hyper_util::rt::TokioIo::new) })
    }
}

/// Files where Linux distributions keep the system's trusted certificates (`SSL_CERT_FILE` first).
const SYSTEM_ROOTS: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// A TLS client configuration trusting `ca` (a PEM file) or the system's certificates.
fn client_tls(ca: Option<&str>, transport: Transport) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    let env = std::env::var("SSL_CERT_FILE").ok();
    let (path, chosen) = match ca {
        Some(p) => (p.to_string(), true),
        None => match env.iter().map(String::as_str).chain(SYSTEM_ROOTS).find(|p| std::path::Path::new(p).exists()) {
            Some(p) => (p.to_string(), false),
            None => {
                return Err(
                    "no trusted certificates: the system has no CA bundle; give one with tls_ca := '<file.pem>'".into(),
                );
            }
        },
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path).map_err(|e| format!("could not read tls_ca {path:?}: {e}"))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("could not read tls_ca {path:?}: {e}"))?;
        // A system bundle may hold a certificate rustls cannot use; a file the user chose must be usable whole.
        if let Err(e) = roots.add(cert)
            && chosen
        {
            return Err(format!("tls_ca {path:?} holds a certificate that cannot be trusted: {e}"));
        }
    }
    if roots.is_empty() {
        return Err(format!("tls_ca {path:?} holds no certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![match transport {
        Transport::Grpc => b"h2".to_vec(),
        Transport::Http => b"http/1.1".to_vec(),
    }];
    Ok(Arc::new(config))
}

/// An acknowledgement from the remote's answer: arrowport's JSON (`stream`, `table`, `rows`, `batches`,
/// `bytes`, `replayed`); whatever is missing (a Flight server that answers with no metadata) is filled in from
/// what was sent (`u64::MAX` marks it until then).
fn ack_from(body: &[u8]) -> Ack {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = |k: &str| json.get(k).and_then(Value::as_str).map(str::to_string);
    let number = |k: &str| json.get(k).and_then(Value::as_u64).unwrap_or(u64::MAX);
    Ack {
        stream: text("stream").unwrap_or_default(),
        table: text("table"),
        rows: json.get("rows").or_else(|| json.get("rows_processed")).and_then(Value::as_u64).unwrap_or(u64::MAX),
        batches: number("batches"),
        bytes: number("bytes"),
        replayed: json.get("replayed").and_then(Value::as_bool).unwrap_or(false),
    }
}

/// A gRPC status as a failure: the remote's message, transient where a retry can succeed.
fn status_failure(status: &tonic::Status) -> Failure {
    use tonic::Code;
    let message =
        if status.message().is_empty() { format!("{:?}", status.code()) } else { status.message().to_string() };
    let text = format!("the remote refused the request ({:?}): {message}", status.code());
    // An arrowport receiver names its failure's code; other Flight servers are judged by the gRPC code alone.
    let named = status.metadata().get(GRPC_CODE_KEY).and_then(|v| v.to_str().ok()).and_then(ErrorCode::from_name);
    if let Some(code) = named {
        return if code.is_transient() { Failure::transient(text) } else { Failure::Permanent(text) };
    }
    match status.code() {
        Code::Unavailable | Code::Aborted | Code::Cancelled | Code::DeadlineExceeded => Failure::transient(text),
        // The transport's own failures (a connection reset mid-call) come as Unknown with a source.
        Code::Unknown
            if std::error::Error::source(status).is_some()
                || message.contains("transport")
                || message.contains("h2") =>
        {
            Failure::transient(format!("the connection failed: {}", error_chain(status)))
        }
        _ => Failure::Permanent(text),
    }
}

/// An HTTP error answer as a failure: 503 (with its Retry-After), 502, 504, 408 and 409 "in progress" are
/// transient.
fn http_failure(status: u16, body: &[u8], retry_after: Option<Duration>) -> Failure {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = json.pointer("/error/code").and_then(Value::as_str).unwrap_or("");
    let message = json
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(500)]).trim().to_string());
    let text = format!("the remote refused the request (HTTP {status}): {message}");
    match (status, ErrorCode::from_name(code)) {
        (503, _) => Failure::Transient { message: text, after: retry_after },
        (_, Some(code)) if code.is_transient() => Failure::transient(text),
        (502 | 504 | 408, _) => Failure::transient(text),
        _ => Failure::Permanent(text),
    }
}

fn flight_error_text(e: &arrow_flight::error::FlightError) -> String {
    match e {
        arrow_flight::error::FlightError::ExternalError(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

/// An error with its causes, as one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// A stream name as one path segment.
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A fresh idempotency key: 128 random bits.
pub fn new_key() -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| "no randomness for an idempotency key".to_string())?;
    Ok(format!("send-{}", crate::catalog::access::to_hex(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let t = Target::parse("grpc://127.0.0.1:8815").unwrap();
        assert_eq!((t.transport, t.tls, t.host.as_str(), t.port), (Transport::Grpc, false, "127.0.0.1", 8815));
        let t = Target::parse("grpc+tls://lake.example:443").unwrap();
        assert!(t.tls);
        let t = Target::parse("https://h.example/ingest/").unwrap();
        assert_eq!((t.transport, t.port, t.base_path.as_str()), (Transport::Http, 443, "/ingest"));
        let t = Target::parse("http://[::1]:9000").unwrap();
        assert_eq!((t.host.as_str(), t.authority()), ("::1", "[::1]:9000".to_string()));
        assert!(Target::parse("grpc://h").unwrap_err().contains("needs a port"));
        assert!(Target::parse("ftp://h:1").unwrap_err().contains("unsupported scheme"));
        assert!(Target::parse("h:1").unwrap_err().contains("no scheme"));
        assert!(Target::parse("http://u:p@h:1").unwrap_err().contains("token :="));
        assert!(Target::parse("http://h:99999").unwrap_err().contains("port"));
    }

    #[test]
    fn failures_are_classified() {
        assert!(
            matches!(http_failure(503, br#"{"error":{"code":"busy","message":"all 8 writers are busy; retry later"}}"#, Some(Duration::from_secs(2))),
            Failure::Transient { after: Some(d), .. } if d == Duration::from_secs(2))
        );
        assert!(matches!(
            http_failure(409, br#"{"error":{"code":"in_progress","message":"x"}}"#, None),
            Failure::Transient { .. }
        ));
        let f = http_failure(409, br#"{"error":{"code":"schema_conflict","message":"column x is missing"}}"#, None);
        assert_eq!(f, Failure::Permanent("the remote refused the request (HTTP 409): column x is missing".into()));
        assert!(matches!(http_failure(401, b"nope", None), Failure::Permanent(m) if m.ends_with("nope")));
        assert!(matches!(status_failure(&tonic::Status::unavailable("stopping")), Failure::Transient { .. }));
        // Decided on the code an arrowport receiver names, whatever its message says.
        let busy = crate::proto::status::grpc(ErrorCode::Busy, "the words do not matter");
        assert_eq!(busy.code(), tonic::Code::ResourceExhausted);
        assert!(matches!(status_failure(&busy), Failure::Transient { .. }));
        let too_large = crate::proto::status::grpc(ErrorCode::TooLarge, "retry later");
        assert_eq!(too_large.code(), tonic::Code::ResourceExhausted);
        assert!(matches!(status_failure(&too_large), Failure::Permanent(_)));
        assert!(matches!(
            status_failure(&tonic::Status::resource_exhausted("busy; retry later")),
            Failure::Permanent(_)
        ));
        assert!(matches!(status_failure(&tonic::Status::permission_denied("no")), Failure::Permanent(_)));
    }

    #[test]
    fn acknowledgements_fill_in_what_the_remote_leaves_out() {
        let a = ack_from(br#"{"stream":"ev","table":"main.ev","rows":3,"batches":1,"replayed":true}"#);
        assert_eq!(
            (a.rows, a.batches, a.bytes, a.replayed, a.table.as_deref()),
            (3, 1, u64::MAX, true, Some("main.ev"))
        );
        let a = ack_from(b"");
        assert_eq!((a.rows, a.stream.as_str(), a.replayed), (u64::MAX, "", false));
    }

    #[test]
    fn keys_are_fresh_and_segments_escaped() {
        let (a, b) = (new_key().unwrap(), new_key().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 5 + 32);
        assert_eq!(percent_encode("ev 1/x"), "ev%201%2Fx");
        assert_eq!(Compression::parse("ZSTD"), Ok(Compression::Zstd));
        assert!(Compression::parse("gzip").unwrap_err().contains("allowed: zstd, lz4, none"));
    }
}
