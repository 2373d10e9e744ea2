//! Following a remote stream, for `arrowport_follow`: its rows past a cursor over Flight DoGet (a follow ticket)
//! or REST (`GET /streams/{stream}/follow`), asking the remote to end once it has caught up (`wait`) or after
//! `max_rows`.
//!
//! The call runs on a thread of its own with a small runtime; its schema and batches reach the caller through
//! a channel of two messages, so the remote is read only as fast as the caller takes rows. Every wait on the
//! remote is bounded (`timeout` past the `wait` asked for); a caller that stops taking rows ends the call.

use super::*;

use crate::engine::ingest::Incoming;
use crate::proto::ipc::{Decoding, flight_items, ipc_stream};

/// Largest message taken from the remote (decompressed): a follower's batches are at most 65,536 rows.
const MAX_MESSAGE: usize = 256 << 20;

/// Options of one follow call.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    pub token: Option<String>,
    /// `start`, `end` or a cursor.
    pub after: String,
    pub max_rows: Option<u64>,
    /// How long the remote waits for a first row when there is none past `after`.
    pub wait: Duration,
    /// A PEM file of certificates to trust instead of the system's.
    pub tls_ca: Option<String>,
    /// How long the remote may make no progress (past `wait`) before the call fails.
    pub timeout: Duration,
}

enum Message {
    Schema(SchemaRef),
    Batch(RecordBatch),
    End,
    Failed(String),
}

/// A follow call under way: the remote stream's schema, then its batches.
pub struct Followed {
    pub schema: SchemaRef,
    messages: tokio::sync::mpsc::Receiver<Message>,
    done: bool,
}

impl Followed {
    /// The next batch; `None` once the remote has ended the call. Blocks (each wait of the call is bounded).
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>, String> {
        if self.done {
            return Ok(None);
        }
        match self.messages.blocking_recv() {
            Some(Message::Batch(b)) => Ok(Some(b)),
            Some(Message::End) => {
                self.done = true;
                Ok(None)
            }
            Some(Message::Failed(e)) => {
                self.done = true;
                Err(e)
            }
            Some(Message::Schema(_)) | None => {
                self.done = true;
                Err("the follow call ended without its end".into())
            }
        }
    }
}

/// Starts following `stream` at `target`; returns once the remote has sent the stream's schema (or refused).
/// Call outside any async runtime.
pub fn follow(target: &Target, stream: &str, options: &FollowOptions) -> Result<Followed, String> {
    let tls = if target.tls { Some(client_tls(options.tls_ca.as_deref(), target.transport)?) } else { None };
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let call = Call { target: target.clone(), stream: stream.to_string(), options: options.clone(), tls };
    std::thread::Builder::new()
        .name("arrowport-follow".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.blocking_send(Message::Failed(format!("no runtime for the follow call: {e}")));
                    return;
                }
            };
            let failed = tx.clone();
            if let Err(e) = runtime.block_on(call.run(tx)) {
                let _ = runtime.block_on(failed.send(Message::Failed(e)));
            }
        })
        .map_err(|e| format!("no thread for the follow call: {e}"))?;
    match rx.blocking_recv() {
        Some(Message::Schema(schema)) => Ok(Followed { schema, messages: rx, done: false }),
        Some(Message::Failed(e)) => Err(e),
        _ => Err("the remote ended the follow call before sending the stream's columns".into()),
    }
}

struct Call {
    target: Target,
    stream: String,
    options: FollowOptions,
    tls: Option<Arc<rustls::ClientConfig>>,
}

type Items = Pin<Box<dyn Stream<Item = Result<Incoming, EngineError>> + Send>>;

impl Call {
    async fn run(self, tx: tokio::sync::mpsc::Sender<Message>) -> Result<(), String> {
        let limit = self.options.wait + self.options.timeout;
        let authority = self.target.authority();
        let mut items = tokio::time::timeout(limit, async {
            match self.target.transport {
                Transport::Grpc => self.flight().await,
                Transport::Http => self.http().await,
            }
        })
        .await
        .map_err(|_| format!("{authority} did not answer within {} s (timeout)", limit.as_secs_f64()))??;
        let mut saw_schema = false;
        loop {
            let item = tokio::time::timeout(limit, items.next()).await.map_err(|_| {
                format!("{authority} sent nothing for {} s (wait + timeout); the call was ended", limit.as_secs_f64())
            })?;
            let message = match item {
                Some(Ok(Incoming::Schema(s))) if !saw_schema => {
                    saw_schema = true;
                    Message::Schema(s)
                }
                Some(Ok(Incoming::Schema(_))) => return Err("the remote sent a second schema".into()),
                Some(Ok(Incoming::Batch(b))) if saw_schema => Message::Batch(b),
                Some(Ok(Incoming::Batch(_))) => return Err("the remote sent rows before their schema".into()),
                Some(Err(e)) => return Err(e.to_string()),
                None if saw_schema => Message::End,
                None => return Err("the remote ended the follow call before sending the stream's columns".into()),
            };
            let end = matches!(message, Message::End);
            if tx.send(message).await.is_err() || end {
                // The caller has stopped taking rows (dropping the call's connection with it), or all was sent.
                return Ok(());
            }
        }
    }

    async fn flight(&self) -> Result<Items, String> {
        use arrow_flight::Ticket;
        use arrow_flight::error::FlightError;
        use arrow_flight::flight_service_client::FlightServiceClient;

        let mut ticket = serde_json::json!({
            "follow": self.stream,
            "after": self.options.after,
            "wait": self.options.wait.as_secs_f64(),
        });
        if let Some(n) = self.options.max_rows {
            ticket["max_rows"] = n.into();
        }
        let channel = channel(&self.target, self.tls.clone(), self.options.timeout).await.map_err(failure_text)?;
        let mut client = FlightServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
        let mut request = tonic::Request::new(Ticket::new(ticket.to_string()));
        if let Some(token) = &self.options.token {
            let value =
                format!("Bearer {token}").parse().map_err(|_| "the token is not printable ASCII".to_string())?;
            request.metadata_mut().insert("authorization", value);
        }
        let messages =
            client.do_get(request).await.map_err(|s| failure_text(status_failure(&s)))?.into_inner().map(|m| {
                m.map_err(|s| {
                    let text = failure_text(status_failure(&s));
                    FlightError::ExternalError(Box::new(EngineError::Unsupported(text)))
                })
            });
        Ok(Box::pin(flight_items(messages, Decoding::unbudgeted(MAX_MESSAGE))))
    }

    async fn http(&self) -> Result<Items, String> {
        let connector = Connector { target: self.target.clone(), tls: self.tls.clone(), timeout: self.options.timeout };
        let io =
            connector.open().await.map_err(|e| format!("could not connect to {}: {e}", self.target.authority()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| format!("could not speak HTTP to {}: {e}", self.target.authority()))?;
        // The connection lives as long as the call's task (the runtime ends with it).
        tokio::spawn(connection);
        let mut path = format!(
            "{}/streams/{}/follow?after={}&wait={}",
            self.target.base_path,
            percent_encode(&self.stream),
            percent_encode(&self.options.after),
            self.options.wait.as_secs_f64()
        );
        if let Some(n) = self.options.max_rows {
            path.push_str(&format!("&max_rows={n}"));
        }
        let mut request = axum::http::Request::get(path)
            .header(axum::http::header::HOST, self.target.authority())
            .header(axum::http::header::ACCEPT, "application/vnd.apache.arrow.stream");
        if let Some(token) = &self.options.token {
            request = request.header(axum::http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(axum::body::Body::empty()).map_err(|e| format!("invalid request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("the connection to {} failed: {}", self.target.authority(), error_chain(&e)))?;
        let status = response.status();
        let body = axum::body::Body::new(response.into_body());
        if !status.is_success() {
            let text = axum::body::to_bytes(body, MAX_ACK_BYTES).await.unwrap_or_default();
            return Err(failure_text(http_failure(status.as_u16(), &text, None)));
        }
        let authority = self.target.authority();
        let chunks = body.into_data_stream().map(move |c| {
            c.map_err(|e| {
                EngineError::Unsupported(format!(
                    "the connection to {authority} failed mid-stream: {}",
                    error_chain(&*e.into_inner())
                ))
            })
        });
        Ok(Box::pin(ipc_stream(chunks, Decoding::unbudgeted(MAX_MESSAGE))))
    }
}

fn failure_text(f: Failure) -> String {
    match f {
        Failure::Permanent(m) | Failure::Transient { message: m, .. } => m,
    }
}
