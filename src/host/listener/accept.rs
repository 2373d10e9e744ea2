//! The accept loop: connections admitted within `max_connections` (the oldest idle one makes room), a first
//! byte within its timeout, descriptor exhaustion survived, and each connection served over HTTP/1.1 or HTTP/2.

use super::*;

/// HTTP/2 flow-control windows and frame size. hyper's defaults (1 MiB windows, 16 KiB frames) cap one
/// loopback DoPut far below what DuckDB takes in; memory stays bounded by the ingest queue, not by these.
pub(super) const H2_STREAM_WINDOW: u32 = 16 * 1024 * 1024;

pub(super) const H2_CONN_WINDOW: u32 = 32 * 1024 * 1024;

pub(super) const H2_MAX_FRAME: u32 = 1024 * 1024;

/// HTTP/2 pings on idle connections, so a vanished peer's connection is closed.
pub(super) const H2_KEEPALIVE: Duration = Duration::from_secs(30);

impl Running {
    /// Serves `app` on a bound listener until the host stops; one status row per protocol it carries.
    pub(super) fn serve(
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
        let started = Instant::now();
        if let Ok(mut board) = self.board.lock() {
            board.extend(protocols.iter().map(|&protocol| crate::proto::rest::ListenerView {
                protocol,
                address: bound.to_string(),
                tls,
                auth: auth.name(),
                started,
            }));
        }
        self.listeners.push(Listener { protocols: protocols.to_vec(), addr: bound, started, task, tls, auth });
        Ok(bound)
    }
}

/// Descriptors kept free for the host's own work (DuckDB's files, its WAL, extensions), whatever clients do.
pub(super) const DESCRIPTOR_RESERVE: u64 = 256;

/// The connection cap a listener can keep: `wanted`, once the process's descriptor limit is raised to hold it
/// beside what is open now and [`DESCRIPTOR_RESERVE`]; less (said on stderr) when the hard limit is lower.
pub(super) fn connection_cap(wanted: usize) -> usize {
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
pub(super) async fn accept_loop(
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
pub(super) async fn refuse(
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
pub(super) async fn serve_connection<IO>(
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
