//! The connection loop: accepts connections up to a cap, serves each with
//! hyper (HTTP/1.1 and HTTP/2 on the one port) and closes the ones that
//! hold the server without asking anything of it.
//!
//! `axum::serve` has none of these knobs, so the loop is ours:
//!
//! - **Connection cap** (`--max-connections`): past it a new connection is
//!   answered `503` (problem+json, `Connection: close`) and closed at once;
//!   over TLS it is closed without a handshake. The connections already
//!   open keep being served.
//! - **Header timeout** (`--header-timeout-ms`): an HTTP/1.1 request head
//!   must arrive whole within this long of its first byte, and the first
//!   request within this long of the connection opening (slowloris). A
//!   small request body (up to [`BUFFERED_BODY`]) must follow within the
//!   same time, else `408`.
//! - **Idle timeout** (`--idle-timeout-ms`): an HTTP/1.1 keep-alive
//!   connection with no request in progress and no byte either way for this
//!   long is closed.
//! - **HTTP/2** (gRPC workers, h2 clients) is exempt from both: a gRPC
//!   stream is long-lived and may be silent for minutes. A dead peer is
//!   found by keep-alive pings instead: every [`H2_PING_INTERVAL`] of
//!   silence, closed when the ping is not answered within
//!   [`H2_PING_TIMEOUT`].
//!
//! Small HTTP/1.1 request bodies are read whole before the router sees the
//! request. A handler that answers without reading its body (a heartbeat
//! with `{}`) would otherwise leave bytes on the connection, and hyper would
//! close it after the answer, without a `Connection: close`, failing the
//! client's next request on that connection.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, Version, header};
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::api::ApiError;

/// HTTP/1.1 request bodies up to this size are read whole before routing.
pub(crate) const BUFFERED_BODY: u64 = 64 * 1024;

/// Silence on an HTTP/2 connection after which the server pings its peer.
pub(crate) const H2_PING_INTERVAL: Duration = Duration::from_secs(20);

/// How long an HTTP/2 peer has to answer a ping before its connection is
/// closed.
pub(crate) const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Open files the server keeps for itself (store, logs, listener) when it
/// fits the connection cap under the open-files limit.
const RESERVED_FILES: u64 = 128;

/// The connection bounds of [`serve`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnLimits {
    /// Most connections open at once.
    pub(crate) max_connections: usize,
    /// Time to send a whole request head (and a small body).
    pub(crate) header_timeout: Duration,
    /// Time an HTTP/1.1 connection may sit with nothing to do.
    pub(crate) idle_timeout: Duration,
}

/// A connection the loop accepted.
pub(crate) trait Accepted: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Set up the socket (Nagle's algorithm off: a pushed task or a stop
    /// notice must not wait for the peer's delayed ACK).
    fn prepare(&mut self);
    /// True when the connection is known to speak HTTP/2 from the start
    /// (negotiated by ALPN).
    fn is_h2(&self) -> bool;
    /// Turns the connection away: the cap is reached.
    fn refuse(self);
}

impl Accepted for TcpStream {
    fn prepare(&mut self) {
        let _ = self.set_nodelay(true);
    }

    fn is_h2(&self) -> bool {
        false
    }

    fn refuse(self) {
        // Best effort and never waiting: whatever the client already sent
        // is read first, so that closing does not reset the connection
        // before it has read the answer.
        let mut buf = [0u8; 4096];
        let _ = self.try_read(&mut buf);
        let _ = self.try_write(refusal().as_bytes());
    }
}

impl Accepted for tokio_rustls::server::TlsStream<TcpStream> {
    fn prepare(&mut self) {
        let _ = self.get_ref().0.set_nodelay(true);
    }

    fn is_h2(&self) -> bool {
        self.get_ref().1.alpn_protocol() == Some(b"h2")
    }

    fn refuse(self) {
        // Answering would need a write through TLS, which may wait on the
        // client: the connection is closed instead.
    }
}

/// The raw answer to a connection past the cap.
fn refusal() -> String {
    let body = serde_json::to_string(&dispatch_proto::Problem::new(
        503,
        "the server has as many connections open as --max-connections allows; retry later",
    ))
    .unwrap_or_default();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Raises the soft limit of open files to the hard limit, and lowers
/// `max_connections` when the connections could not all have a file.
pub(crate) fn fit_open_files(max_connections: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit = getrlimit(Resource::Nofile),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
        }
    }
    let Some(files) = limit.current else {
        return max_connections;
    };
    let fits = files.saturating_sub(RESERVED_FILES).max(1);
    if (max_connections as u64) > fits {
        tracing::warn!(
            open_files = files,
            max_connections,
            lowered_to = fits,
            "the open-files limit is below --max-connections: lowering the cap"
        );
        return fits as usize;
    }
    tracing::debug!(open_files = files, max_connections, "open-files limit");
    max_connections
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting, lets every connection finish the requests in progress, and
/// returns once all are closed.
pub(crate) async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
    L::Io: Accepted,
{
    // Each connection holds a receiver of both: `signal` tells it to shut
    // down gracefully (its sender is dropped), `close` tells the loop when
    // the last one is gone.
    let (signal_tx, signal_rx) = watch::channel(());
    let (close_tx, close_rx) = watch::channel(());
    let open = Arc::new(AtomicUsize::new(0));
    let mut refused = Refusals::default();
    tokio::pin!(shutdown);
    loop {
        let (mut io, remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        if open.load(Ordering::Relaxed) >= limits.max_connections {
            io.refuse();
            refused.count(limits.max_connections);
            continue;
        }
        io.prepare();
        open.fetch_add(1, Ordering::Relaxed);
        let open = OpenGuard(open.clone());
        let conn = connection(
            io,
            remote,
            router.clone(),
            limits,
            signal_rx.clone(),
            close_rx.clone(),
        );
        tokio::spawn(async move {
            conn.await;
            drop(open);
        });
    }
    drop(listener);
    drop(signal_rx);
    drop(signal_tx);
    drop(close_rx);
    close_tx.closed().await;
}

/// Counts one open connection until dropped.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Refused connections, logged at most once every ten seconds.
#[derive(Default)]
struct Refusals {
    since_log: u64,
    last_log: Option<Instant>,
}

impl Refusals {
    fn count(&mut self, cap: usize) {
        self.since_log += 1;
        let now = Instant::now();
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            tracing::warn!(
                refused = self.since_log,
                max_connections = cap,
                "connection cap reached: refusing new connections"
            );
            self.since_log = 0;
            self.last_log = Some(now);
        }
    }
}

/// Serves one connection until it ends, times out, or the server stops.
async fn connection<I: Accepted>(
    io: I,
    remote: SocketAddr,
    router: Router,
    limits: ConnLimits,
    mut signal: watch::Receiver<()>,
    close: watch::Receiver<()>,
) {
    let state = Arc::new(ConnState::new(io.is_h2()));
    let io = TokioIo::new(Watched {
        inner: io,
        state: state.clone(),
    });
    let service = ConnService {
        router,
        state: state.clone(),
        remote,
        body_timeout: limits.header_timeout,
    };
    let mut builder = Builder::new(TokioExecutor::new());
    // hyper's own header timer would also close an idle connection at the
    // header timeout; the watchdog below keeps the two apart.
    builder.http1().header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let deadline = state.deadline(&limits);
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::trace!(%remote, error = %e, "connection ended");
                }
                break;
            }
            _ = signal.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                if let Some(why) = state.expired(&limits) {
                    tracing::debug!(%remote, why, "closing connection");
                    break;
                }
            }
        }
    }
    drop(close);
}

/// What a connection's watchdog knows of it; times in milliseconds since
/// `epoch`.
struct ConnState {
    epoch: Instant,
    h2: AtomicBool,
    /// Whether any byte was read yet.
    started: AtomicBool,
    /// Requests in progress (HTTP/1.1: at most one).
    in_flight: AtomicUsize,
    /// Last byte read or written.
    last_io: AtomicU64,
    /// When a request head began to arrive and none was parsed since;
    /// [`NONE`] when no head is pending.
    head_since: AtomicU64,
}

const NONE: u64 = u64::MAX;

/// The HTTP/2 connection preface starts so; no HTTP/1 method does.
const H2_PREFACE_START: &[u8] = b"PRI ";

impl ConnState {
    fn new(h2: bool) -> Self {
        ConnState {
            epoch: Instant::now(),
            h2: AtomicBool::new(h2),
            started: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_io: AtomicU64::new(0),
            // The first request head is due from the connection's start.
            head_since: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    fn on_read(&self, bytes: &[u8]) {
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        let first = !self.started.swap(true, Ordering::Relaxed);
        if first && bytes.starts_with(H2_PREFACE_START) {
            self.h2.store(true, Ordering::Relaxed);
        }
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let _ =
                self.head_since
                    .compare_exchange(NONE, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// When to look again; `None` for HTTP/2, which pings instead.
    fn deadline(&self, limits: &ConnLimits) -> Option<Instant> {
        if self.h2.load(Ordering::Relaxed) {
            return None;
        }
        let ms = |d: Duration| d.as_millis() as u64;
        let at = if self.in_flight.load(Ordering::Relaxed) > 0 {
            self.now() + ms(limits.idle_timeout)
        } else {
            match self.head_since.load(Ordering::Relaxed) {
                NONE => self.last_io.load(Ordering::Relaxed) + ms(limits.idle_timeout),
                since => since + ms(limits.header_timeout),
            }
        };
        Some(self.at(at))
    }

    /// Why the connection should be closed now, if it should.
    fn expired(&self, limits: &ConnLimits) -> Option<&'static str> {
        if self.h2.load(Ordering::Relaxed) || self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let now = self.now();
        let ms = |d: Duration| d.as_millis() as u64;
        match self.head_since.load(Ordering::Relaxed) {
            NONE if now >= self.last_io.load(Ordering::Relaxed) + ms(limits.idle_timeout) => {
                Some("idle timeout")
            }
            NONE => None,
            since if now >= since + ms(limits.header_timeout) => Some("header timeout"),
            _ => None,
        }
    }
}

/// The connection's stream, noting every byte read and written.
struct Watched<I> {
    inner: I,
    state: Arc<ConnState>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let filled = buf.filled();
        if filled.len() > before {
            self.state.on_read(&filled[before..]);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.state
                .last_io
                .store(self.state.now(), Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.state
                .last_io
                .store(self.state.now(), Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Marks a request in progress until dropped.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn enter(state: &Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        state.head_since.store(NONE, Ordering::Relaxed);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last_io.store(self.0.now(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The per-connection service: the peer's address for auth and audit, the
/// watchdog's bookkeeping, small bodies read whole, then the router.
#[derive(Clone)]
struct ConnService {
    router: Router,
    state: Arc<ConnState>,
    remote: SocketAddr,
    body_timeout: Duration,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::enter(&self.state);
        let mut router = self.router.clone();
        let remote = self.remote;
        let body_timeout = self.body_timeout;
        Box::pin(async move {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(remote));
            let req = match read_small_body(req, body_timeout).await {
                Ok(req) => req,
                Err(resp) => return Ok(resp),
            };
            let resp = tower_service::Service::call(&mut router, req).await;
            drop(in_flight);
            resp
        })
    }
}

/// Reads an HTTP/1.1 body of a known, small length whole, within
/// `timeout`.
async fn read_small_body(
    req: Request<Body>,
    timeout: Duration,
) -> Result<Request<Body>, Response<Body>> {
    let small = req.version() < Version::HTTP_2
        && req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|n| n > 0 && n <= BUFFERED_BODY);
    if !small {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, BUFFERED_BODY as usize)).await {
        Ok(Ok(bytes)) => Ok(Request::from_parts(parts, Body::from(bytes))),
        Ok(Err(_)) => Err(ApiError::new(400, "the request body could not be read").into_response()),
        Err(_) => Err(ApiError::new(
            408,
            format!(
                "the request body did not arrive within {} ms (--header-timeout-ms)",
                timeout.as_millis()
            ),
        )
        .into_response()),
    }
}
