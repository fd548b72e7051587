//! Connection hygiene: how many connections the server holds, and how long it
//! holds one that does nothing (issue #24, finding 2).
//!
//! tonic's server has no cap on connections and no timeout for a connection
//! that never sends a request (a silent TCP connection, an HTTP/2 preface
//! alone) or that stays open with nothing in flight: about 20,000 such
//! connections, no token needed, exhausted the process's file descriptors.
//! Every accepted connection is therefore wrapped in a [`Guarded`] stream that
//! ends it (an end of stream on its read side, which the HTTP/2 server answers
//! by closing) when
//! - no request has arrived `handshake_timeout` after it was accepted;
//! - nothing has been in flight on it for `idle_timeout`;
//! - the server holds `max_connections` and a new one arrives: the connection
//!   idle the longest is evicted for it (a busy connection never is). When every
//!   connection is busy, the newcomer is refused at once instead.
//!
//! So an attacker's idle connections are recycled and a health check (or any
//! caller) still gets in while the cap is reached. What counts as "in flight"
//! is tracked by [`ActivityLayer`], the outermost layer of every call: a call is
//! in flight from its headers to the end of its response body (a stream counts
//! until it ends). HTTP/2 keepalive pings, MAX_CONCURRENT_STREAMS and the
//! per-call timeout are set on the HTTP/2 server itself (see `server.rs`).

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::task::AtomicWaker;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::{Instant, Sleep},
};
use tonic::{body::Body, transport::server::Connected};
use tower::{Layer, Service};

/// The limits of [`Connections`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections held at once.
    pub max_connections: usize,
    /// Longest wait for a connection's first request.
    pub handshake_timeout: Duration,
    /// Longest time a connection is kept with nothing in flight.
    pub idle_timeout: Duration,
}

/// The connections a server holds (shared by every I/O thread).
#[derive(Clone)]
pub struct Connections {
    registry: Arc<Registry>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("limits", &self.registry.limits)
            .field("open", &self.open())
            .finish()
    }
}

struct Registry {
    limits: ConnectionLimits,
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
    /// When a refusal was last logged (µs since `epoch`), to log one per second.
    refusal_logged: AtomicU64,
}

impl Registry {
    fn micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the server knows of one connection.
struct ConnState {
    /// The registry's epoch, which `last_us` counts from.
    epoch: Instant,
    /// Calls in flight.
    active: AtomicUsize,
    /// Whether a call has ever arrived.
    requested: AtomicBool,
    /// Accept time, or the end or start of the last call (µs since the epoch).
    last_us: AtomicU64,
    /// Set to end the connection (evicted).
    evict: AtomicBool,
    /// The connection's reader, woken to end it.
    waker: AtomicWaker,
}

impl ConnState {
    /// Whether the connection may make room for a newcomer: nothing in flight,
    /// or calls that have not moved for an idle period (a client that stopped
    /// reading its answers, e.g. an HTTP/2 window of 0, holds them forever).
    fn evictable(&self, now_us: u64, idle_us: u64) -> bool {
        self.active.load(Ordering::Relaxed) == 0
            || now_us.saturating_sub(self.last_us.load(Ordering::Relaxed)) >= idle_us
    }

    fn touch(&self) {
        self.last_us
            .store(self.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

impl Connections {
    /// An empty set of connections under `limits`.
    pub fn new(limits: ConnectionLimits) -> Self {
        Self {
            registry: Arc::new(Registry {
                limits,
                epoch: Instant::now(),
                next_id: AtomicU64::new(0),
                open: Mutex::new(HashMap::new()),
                refusal_logged: AtomicU64::new(0),
            }),
        }
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.registry.open().len()
    }

    /// Takes `stream` in, evicting the connection idle the longest when the cap
    /// is reached; `None` when every held connection is busy (the stream is then
    /// dropped: closed at once).
    pub fn admit(&self, stream: TcpStream) -> Option<Guarded<TcpStream>> {
        let registry = &self.registry;
        let state = Arc::new(ConnState {
            epoch: registry.epoch,
            active: AtomicUsize::new(0),
            requested: AtomicBool::new(false),
            last_us: AtomicU64::new(registry.micros()),
            evict: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        let id = registry.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut open = registry.open();
            if open.len() >= registry.limits.max_connections {
                let now_us = registry.micros();
                let idle_us = registry.limits.idle_timeout.as_micros() as u64;
                let victim = open
                    .iter()
                    .filter(|(_, c)| c.evictable(now_us, idle_us))
                    .min_by_key(|(_, c)| {
                        // Never-used connections go first, then idle ones, then
                        // stalled ones, each the longest quiet first.
                        (
                            c.requested.load(Ordering::Relaxed),
                            c.active.load(Ordering::Relaxed) > 0,
                            c.last_us.load(Ordering::Relaxed),
                        )
                    })
                    .map(|(id, _)| *id);
                match victim.and_then(|id| open.remove(&id)) {
                    Some(victim) => {
                        victim.evict.store(true, Ordering::Release);
                        victim.waker.wake();
                    }
                    None => {
                        drop(open);
                        self.log_refusal();
                        return None;
                    }
                }
            }
            open.insert(id, state.clone());
        }
        let info = ConnInfo {
            remote_addr: stream.peer_addr().ok(),
            local_addr: stream.local_addr().ok(),
            state: state.clone(),
        };
        let first = registry.epoch + Duration::from_micros(state.last_us.load(Ordering::Relaxed));
        Some(Guarded {
            io: stream,
            id,
            state,
            registry: registry.clone(),
            timer: Box::pin(tokio::time::sleep_until(
                first + registry.limits.handshake_timeout,
            )),
            info,
        })
    }

    fn log_refusal(&self) {
        let now = self.registry.micros();
        let last = self.registry.refusal_logged.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1_000_000
            && self
                .registry
                .refusal_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                max_connections = self.registry.limits.max_connections,
                "connection refused: every connection is busy (server.max_connections)"
            );
        }
    }
}

/// The request extension naming the connection a call came on (tonic inserts
/// what [`Connected::connect_info`] returns).
#[derive(Clone)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote_addr: Option<SocketAddr>,
    /// The local address.
    pub local_addr: Option<SocketAddr>,
    state: Arc<ConnState>,
}

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnInfo")
            .field("remote_addr", &self.remote_addr)
            .finish_non_exhaustive()
    }
}

/// An accepted connection under the limits of its [`Connections`].
pub struct Guarded<IO> {
    io: IO,
    id: u64,
    state: Arc<ConnState>,
    registry: Arc<Registry>,
    /// Fires at the earliest moment the connection may have to end.
    timer: Pin<Box<Sleep>>,
    info: ConnInfo,
}

impl<IO> std::fmt::Debug for Guarded<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded").field("id", &self.id).finish()
    }
}

impl<IO> Drop for Guarded<IO> {
    fn drop(&mut self) {
        self.registry.open().remove(&self.id);
    }
}

impl<IO> Guarded<IO> {
    /// Whether the connection must end now; otherwise re-arms the timer for the
    /// next moment it might (and registers `cx` with it).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.state.evict.load(Ordering::Acquire) {
            // A call may have started since `admit` chose this connection:
            // it keeps the connection (which is no longer counted).
            let now_us = self.registry.micros();
            let idle_us = self.registry.limits.idle_timeout.as_micros() as u64;
            if self.state.evictable(now_us, idle_us) {
                return true;
            }
            self.state.evict.store(false, Ordering::Release);
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            let limits = &self.registry.limits;
            let last = self.registry.epoch
                + Duration::from_micros(self.state.last_us.load(Ordering::Relaxed));
            let deadline = if !self.state.requested.load(Ordering::Relaxed) {
                last + limits.handshake_timeout
            } else if self.state.active.load(Ordering::Relaxed) == 0 {
                last + limits.idle_timeout
            } else {
                // Busy: look again an idle period from now.
                Instant::now() + limits.idle_timeout
            };
            if deadline <= Instant::now() {
                tracing::debug!(
                    remote = ?self.info.remote_addr,
                    requested = self.state.requested.load(Ordering::Relaxed),
                    "closing a connection with nothing in flight (server timeouts)"
                );
                return true;
            }
            self.timer.as_mut().reset(deadline);
        }
        false
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        this.state.waker.register(cx.waker());
        if this.expired(cx) {
            // End of stream: the HTTP server closes the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO> Connected for Guarded<IO> {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

/// Tower layer counting each call as in flight on its connection until its
/// response body ends (see the module docs). Outermost, so refused calls count.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActivityLayer;

impl<S> Layer<S> for ActivityLayer {
    type Service = Activity<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Activity { inner }
    }
}

/// The service produced by [`ActivityLayer`].
#[derive(Debug, Clone)]
pub struct Activity<S> {
    inner: S,
}

/// Marks a call in flight; dropped with the response body (or the call).
struct InFlight {
    state: Arc<ConnState>,
}

impl InFlight {
    fn begin(info: &ConnInfo) -> Self {
        let state = info.state.clone();
        state.requested.store(true, Ordering::Relaxed);
        state.active.fetch_add(1, Ordering::Relaxed);
        state.touch();
        Self { state }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The idle period starts now; the connection's timer finds it when it
        // next fires (no wake-up needed).
        self.state.touch();
        self.state.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S, B> Service<http::Request<B>> for Activity<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let guard = request.extensions().get::<ConnInfo>().map(InFlight::begin);
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            Ok(match guard {
                Some(guard) => response.map(|body| {
                    Body::new(Tracked {
                        body,
                        guard: Some(guard),
                    })
                }),
                None => response,
            })
        })
    }
}

/// A response body that keeps its call in flight until it ends (or is
/// dropped), and counts every frame it yields as progress.
struct Tracked {
    body: Body,
    /// Released when the body ends, not when hyper drops it (it may hold a
    /// finished body while it waits for the client's flow-control window).
    guard: Option<InFlight>,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(g) = &self.guard {
                    g.state.touch();
                }
                if frame.is_trailers() || self.body.is_end_stream() {
                    self.guard = None;
                }
            }
            Poll::Ready(_) => self.guard = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
