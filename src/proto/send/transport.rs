//! One attempt over either transport: Flight DoPut (batches as FlightData, the acknowledgement from the
//! PutResult) or REST (an IPC stream as the body), with a watchdog on the remote's progress.

use super::*;

/// Largest Flight message the sender builds: batches are split to stay under it.
pub(super) const MAX_FLIGHT_DATA: usize = crate::engine::session::GATHER_BYTES;

/// Largest acknowledgement body read.
pub(super) const MAX_ACK_BYTES: usize = 1024 * 1024;

/// What the outgoing stream has done: for the acknowledgement's defaults and for the no-progress timeout.
#[derive(Default)]
pub(super) struct Progress {
    pub(super) rows: AtomicU64,
    pub(super) batches: AtomicU64,
    pub(super) bytes: AtomicU64,
    /// Milliseconds since the attempt began, at the last step the remote took.
    pub(super) last: AtomicU64,
    /// Whether the transport is waiting for the local query (that time is not the remote's).
    pub(super) local: AtomicBool,
}

/// Wraps the outgoing messages: counts them, and on a local failure reports it and stays pending, so the
/// transport never ends the request normally (the caller then drops the connection).
pub(super) struct Outgoing<S, T> {
    pub(super) inner: Pin<Box<S>>,
    pub(super) failed: Option<tokio::sync::oneshot::Sender<String>>,
    pub(super) progress: Arc<Progress>,
    pub(super) began: Instant,
    pub(super) size: fn(&T) -> usize,
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
pub(super) async fn stalled(progress: Arc<Progress>, began: Instant, limit: Duration) -> Failure {
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

pub(super) struct Attempt<'a> {
    pub(super) target: &'a Target,
    pub(super) stream: &'a str,
    pub(super) options: &'a SendOptions,
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
}

impl Attempt<'_> {
    pub(super) async fn run(&self, schema: SchemaRef, batches: QueryStream) -> Result<Ack, Failure> {
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
        S: Stream<Item = Result<RecordBatch, EngineError>> + Send + 'static,
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

    async fn channel(&self) -> Result<tonic::transport::Channel, Failure> {
        channel(self.target, self.tls.clone(), self.options.timeout).await
    }

    async fn http<S>(&self, schema: SchemaRef, batches: S, parts: Parts) -> Result<Ack, Failure>
    where
        S: Stream<Item = Result<RecordBatch, EngineError>> + Send + 'static,
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

/// A fresh HTTP/2 channel for one call (dropping it breaks the connection).
pub(super) async fn channel(
    target: &Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<tonic::transport::Channel, Failure> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", target.authority()))
        .map_err(|e| Failure::Permanent(format!("invalid url: {e}")))?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(16 * 1024 * 1024))
        .initial_connection_window_size(Some(32 * 1024 * 1024));
    let connector = Connector { target: target.clone(), tls, timeout };
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| Failure::transient(format!("could not connect to {}: {}", target.authority(), error_chain(&e))))
}

/// The sending half of an [`Outgoing`], made before the stream it wraps.
pub(super) struct Parts {
    pub(super) failed: tokio::sync::oneshot::Sender<String>,
    pub(super) progress: Arc<Progress>,
    pub(super) began: Instant,
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
pub(super) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// Opens TCP (and TLS) connections to the target; also tonic's connector.
#[derive(Clone)]
pub(super) struct Connector {
    pub(super) target: Target,
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    pub(super) timeout: Duration,
}

impl Connector {
    pub(super) async fn open(&self) -> std::io::Result<Box<dyn Io>> {
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

/// An acknowledgement from the remote's answer: arrowport's JSON (`stream`, `table`, `rows`, `batches`,
/// `bytes`, `replayed`); whatever is missing (a Flight server that answers with no metadata) is filled in from
/// what was sent (`u64::MAX` marks it until then).
pub(super) fn ack_from(body: &[u8]) -> Ack {
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

/// A stream name as one path segment.
pub(super) fn percent_encode(segment: &str) -> String {
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
