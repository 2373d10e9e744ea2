//! The client side: following a remote stream (`follow`), and sending: a query's batches to a remote stream, over Flight DoPut (`grpc://`, `grpc+tls://`) or the
//! REST endpoint (`http://`, `https://`), one request per attempt, every attempt under one idempotency key.
//!
//! The batches come from a [`Source`] the caller gives (the host runs the local query); this module encodes,
//! sends, reads the acknowledgement and decides whether a failure is worth another attempt. A failure of the
//! local query aborts the upload by breaking the connection, never by ending the stream, so a remote never
//! commits a partial result. Memory is bounded by the query's small result queue, one coalesced batch and the
//! transport's flow-control window.

mod follow;
mod retry;
mod tls;
mod transport;

pub use follow::{FollowOptions, Followed, follow};
pub use retry::Failure;
use retry::*;
use tls::*;
use transport::*;

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

use crate::engine::error::{Code as ErrorCode, EngineError, GRPC_CODE_KEY};
use crate::engine::query::QueryStream;

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

/// The query's result, started afresh for each attempt.
pub type Source<'a> =
    Box<dyn FnMut() -> Pin<Box<dyn Future<Output = Result<(SchemaRef, QueryStream), EngineError>> + Send>> + Send + 'a>;

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
