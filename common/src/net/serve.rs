//! Serving accepted connections: HTTP/2 for gRPC, HTTP/1.1 for REST and metrics, each
//! connection on a task of its own that closes it when it is of no more use.
//!
//! A connection must start its first request within `first_request` of its handshake
//! (a peer that finishes TLS and then says nothing is dropped), and is closed once no
//! request has been in flight for its idle timeout — shorter for anonymous peers, who
//! can only enroll. An open server stream (an envoy's promotion stream) is a request in
//! flight. Idle connections get a graceful close (HTTP/2 GOAWAY), so a request that
//! crosses it is refused cleanly rather than cut off.
//!
//! Stopping a server stops accepting, asks every connection to finish what it is doing,
//! and after a drain period drops what is left.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::Service as _;
use tracing::debug;

use super::listen::{AcceptLimits, PeerConn, PeerInfo, accept_loop};
use crate::pki::Peer;

/// How HTTP/2 connections of a gRPC server behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Http2Limits {
    /// Requests one connection may have in flight at once.
    pub max_concurrent_streams: u32,
    /// Flow-control window per stream and per connection.
    pub window: u32,
    /// Largest header block a request may carry.
    pub max_header_list_size: u32,
    /// After the handshake, the first request must start within this.
    pub first_request: Duration,
    /// Closed when no request has been in flight for this long (certificate holders).
    pub idle: Duration,
    /// The same for peers without a certificate.
    pub anonymous_idle: Duration,
    /// A connection without a certificate is closed this long after its handshake,
    /// busy or not, unless a request on it carried a valid credential ([`Vouch`]).
    ///
    /// [`Vouch`]: super::Vouch
    pub anonymous_max_age: Duration,
    /// Every connection is told to go away this long after its handshake (jittered by
    /// ±10 %), so long-lived connections are renewed; `None`: never.
    pub max_age: Option<Duration>,
    /// How long such a connection may finish its calls before it is closed.
    pub max_age_grace: Duration,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 64,
            window: 1 << 20,
            max_header_list_size: 16 << 10,
            first_request: Duration::from_secs(10),
            idle: Duration::from_secs(300),
            anonymous_idle: Duration::from_secs(30),
            anonymous_max_age: Duration::from_secs(60),
            max_age: None,
            max_age_grace: Duration::from_secs(30),
        }
    }
}

/// How HTTP/1.1 connections (REST, metrics) behave.
#[derive(Clone, Copy, Debug)]
pub struct Http1Limits {
    /// The whole request head must arrive within this; it is also how long a
    /// kept-alive connection may wait for its next request.
    pub header_read: Duration,
    pub max_header_bytes: usize,
}

impl Default for Http1Limits {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            max_header_bytes: 16 << 10,
        }
    }
}

/// What requests are in flight on one connection, and since when none is.
struct Activity {
    base: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `base` when the last request ended; `u64::MAX` before any began.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(u64::MAX),
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// No request has started on the connection yet.
    fn never_used(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && self.idle_since_ms.load(Ordering::Acquire) == u64::MAX
    }

    /// When the connection may be closed for idleness, `None` while a request runs.
    fn closes_at(&self, first_request: Duration, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(match self.idle_since_ms.load(Ordering::Acquire) {
            u64::MAX => self.base + first_request,
            ms => self.base + Duration::from_millis(ms) + idle,
        })
    }
}

/// When a connection is closed for what it does not do.
struct Timeouts {
    first_request: Duration,
    idle: Duration,
    /// Without a certificate: when it is closed whatever it does, unless vouched for.
    max_age: Option<(Instant, super::Vouch)>,
    /// When it is told to go away to be renewed, and how long it may then finish.
    renew_at: Option<Instant>,
    renew_grace: Duration,
}

/// `age` give or take 10 %, so connections made together are not renewed together.
fn jittered(age: Duration) -> Duration {
    age.mul_f64(0.9 + 0.2 * rand::random::<f64>())
}

/// One request in flight; ends when dropped (its response body is done or abandoned).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = self.0.base.elapsed().as_millis() as u64;
        self.0.idle_since_ms.store(ms, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight until it is done.
pub struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The service of one connection: who the peer is goes into every request.
#[derive(Clone)]
struct GrpcConn {
    routes: tonic::service::Routes,
    peer: PeerInfo,
    activity: Arc<Activity>,
    vouch: super::Vouch,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl hyper::service::Service<Request<Incoming>> for GrpcConn {
    type Response = Response<Tracked<tonic::body::Body>>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin();
        req.extensions_mut().insert(self.peer.clone());
        req.extensions_mut().insert(self.vouch.clone());
        req.extensions_mut()
            .insert(super::Received(std::time::Instant::now()));
        let mut routes = self.routes.clone();
        Box::pin(async move {
            let response = match routes.call(req.map(tonic::body::Body::new)).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok(response.map(|inner| Tracked {
                inner,
                _in_flight: in_flight,
            }))
        })
    }
}

/// A running server: stop it with [`Serving::stop`].
pub struct Serving {
    pub local: SocketAddr,
    stop: watch::Sender<Stop>,
    accept: JoinHandle<()>,
    drained: mpsc::Receiver<()>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Run,
    Finish,
    Now,
}

impl Serving {
    /// Resolves only if the accept loop ends on its own (it does not, short of a bug).
    pub async fn ended(&mut self) {
        let _ = (&mut self.accept).await;
    }

    /// Stops accepting, lets connections finish their requests for up to `drain`, then
    /// drops the rest.
    pub async fn stop(mut self, drain: Duration) {
        self.accept.abort();
        let _ = self.stop.send(Stop::Finish);
        if tokio::time::timeout(drain, self.drained.recv())
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?drain, "connections still open after the drain period; closing them");
            let _ = self.stop.send(Stop::Now);
            let _ = tokio::time::timeout(Duration::from_secs(1), self.drained.recv()).await;
        }
    }
}

/// Serves gRPC `routes` on `listener` over TLS.
pub fn serve_grpc(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    accept: AcceptLimits,
    limits: Http2Limits,
    routes: tonic::service::Routes,
    what: &'static str,
) -> std::io::Result<Serving> {
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // No `date` header: HPACK would index a new value on every answer, filling each
    // connection's header tables with stale dates (~10 KB per connection at a check-in
    // a minute, on both ends). gRPC clients do not read it.
    h2.timer(TokioTimer::new())
        .auto_date_header(false)
        .initial_stream_window_size(limits.window)
        .initial_connection_window_size(limits.window)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_size);
    let routes = routes.prepare();
    start(
        listener,
        Some(tls),
        accept,
        what,
        move |conn, stop, drained| {
            let (idle, max_age) = match conn.info.peer {
                Peer::Anonymous => (limits.anonymous_idle, Some(limits.anonymous_max_age)),
                _ => (limits.idle, None),
            };
            let activity = Activity::new();
            let vouch = super::Vouch::default();
            let service = GrpcConn {
                routes: routes.clone(),
                peer: conn.info.clone(),
                activity: activity.clone(),
                vouch: vouch.clone(),
            };
            let max_age = max_age.map(|age| (Instant::now() + age, vouch));
            let renew_at = limits.max_age.map(|age| Instant::now() + jittered(age));
            let connection = h2.serve_connection(TokioIo::new(conn), service);
            tokio::spawn(drive(
                connection,
                activity,
                Timeouts {
                    first_request: limits.first_request,
                    idle,
                    max_age,
                    renew_at,
                    renew_grace: limits.max_age_grace,
                },
                stop,
                drained,
            ));
        },
    )
}

/// Serves an axum router with HTTP/1.1, over TLS (REST) or plain TCP (`tls` `None`:
/// metrics).
pub fn serve_http1(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    accept: AcceptLimits,
    limits: Http1Limits,
    router: axum::Router,
    what: &'static str,
) -> std::io::Result<Serving> {
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_buf_size(limits.max_header_bytes.max(8192));
    start(
        listener,
        tls,
        accept,
        what,
        move |conn, mut stop, drained| {
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            let connection = h1.serve_connection(TokioIo::new(conn), service);
            tokio::spawn(async move {
                let _drained = drained;
                let mut connection = pin!(connection);
                // A server whose handle was dropped serves on, unstoppable.
                let mut watching = true;
                loop {
                    tokio::select! {
                        r = &mut connection => {
                            if let Err(e) = r {
                                debug!(error = %e, "HTTP/1.1 connection ended");
                            }
                            return;
                        }
                        changed = stop.changed(), if watching => match changed.map(|()| *stop.borrow()) {
                            Ok(Stop::Finish) => connection.as_mut().graceful_shutdown(),
                            Ok(_) => return,
                            Err(_) => watching = false,
                        },
                    }
                }
            });
        },
    )
}

/// The accept loop and the stop signals shared by both kinds of server.
fn start<F>(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    accept: AcceptLimits,
    what: &'static str,
    serve: F,
) -> std::io::Result<Serving>
where
    F: Fn(PeerConn, watch::Receiver<Stop>, mpsc::Sender<()>) + Send + Sync + 'static,
{
    super::describe_metrics();
    let local = listener.local_addr()?;
    let (stop, stop_rx) = watch::channel(Stop::Run);
    let (drain_tx, drained) = mpsc::channel(1);
    let serve = Arc::new(serve);
    let accept = tokio::spawn(accept_loop(listener, tls, accept, what, move |conn| {
        serve(conn, stop_rx.clone(), drain_tx.clone())
    }));
    Ok(Serving {
        local,
        stop,
        accept,
        drained,
    })
}

/// The next stop signal. A server whose handle was dropped serves on: its connections
/// wait for a signal that never comes.
async fn next_stop(stop: &mut watch::Receiver<Stop>) -> Stop {
    match stop.changed().await {
        Ok(()) => *stop.borrow(),
        Err(_) => std::future::pending().await,
    }
}

type H2Connection =
    hyper::server::conn::http2::Connection<TokioIo<PeerConn>, GrpcConn, TokioExecutor>;

/// Runs one HTTP/2 connection until it ends, closing it when idle or told to stop.
async fn drive(
    connection: H2Connection,
    activity: Arc<Activity>,
    timeouts: Timeouts,
    mut stop: watch::Receiver<Stop>,
    _drained: mpsc::Sender<()>,
) {
    let Timeouts {
        first_request,
        idle,
        max_age,
        renew_at,
        renew_grace,
    } = timeouts;
    let mut connection = pin!(connection);
    let mut closing = false;
    let mut check = Instant::now() + first_request;
    if let Some((end, _)) = &max_age {
        check = check.min(*end);
    }
    if let Some(at) = renew_at {
        check = check.min(at);
    }
    loop {
        tokio::select! {
            r = &mut connection => {
                if let Err(e) = r {
                    debug!(error = %e, "connection ended");
                }
                return;
            }
            _ = tokio::time::sleep_until(check) => {
                let now = Instant::now();
                if closing {
                    // Told to go away and still open after a grace period: drop it.
                    return;
                }
                if renew_at.is_some_and(|at| at <= now) {
                    debug!("renewing a connection at its maximum age");
                    metrics::counter!("vigo_connections_renewed_total").increment(1);
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                    check = now + renew_grace;
                    continue;
                }
                if let Some((end, vouch)) = &max_age
                    && *end <= now
                    && !vouch.vouched()
                {
                    debug!("closing a connection without a certificate at its maximum age");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                    check = now + Duration::from_secs(5);
                    continue;
                }
                let next = match activity.closes_at(first_request, idle) {
                    None => now + idle,
                    // Never a request: nothing to finish, so no grace period (the
                    // documented `first_request_timeout` is when it closes).
                    Some(at) if at <= now && activity.never_used() => return,
                    Some(at) if at <= now => {
                        debug!("closing an idle connection");
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                        now + Duration::from_secs(5)
                    }
                    Some(at) => at,
                };
                check = match &max_age {
                    Some((end, vouch)) if !vouch.vouched() && !closing => next.min(*end),
                    _ => next,
                };
                if let Some(at) = renew_at.filter(|_| !closing) {
                    check = check.min(at);
                }
            }
            signal = next_stop(&mut stop) => match signal {
                Stop::Finish => connection.as_mut().graceful_shutdown(),
                _ => return,
            },
        }
    }
}
