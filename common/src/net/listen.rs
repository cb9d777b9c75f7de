//! Accepting TLS connections without letting anyone stall the door.
//!
//! The accept loop never waits: a connection is accepted at once and closed at once when
//! the server holds its cap of connections. Otherwise it gets a task of its own that
//! waits its turn — at most `max_handshakes_per_source` handshakes run for one source
//! address, at most `max_handshakes` in all — and then handshakes; waiting and
//! handshaking together must finish within the handshake timeout, or the connection is
//! dropped. So connections that stall their handshake hold at most their source's share
//! of the handshake slots, for at most the timeout, while other sources keep theirs.
//! Only a finished handshake becomes a [`PeerConn`]: the connection with its peer's
//! identity, read once from its certificate. Every connection holds a slot of the
//! connection cap that it gives back when it closes, however it closes.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tracing::debug;

use crate::pki::Peer;

/// Who is calling, attached to every request of a connection.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub peer: Peer,
    pub remote: SocketAddr,
    /// The client certificate's serial (`pki::serial_hex`); empty without one.
    pub serial: Arc<str>,
}

/// Limits on the way in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceptLimits {
    /// From accept to finished handshake, waiting for a slot included.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; more connections wait their turn.
    pub max_handshakes: usize,
    /// Handshakes in progress at once from one source address.
    pub max_handshakes_per_source: usize,
    /// Open connections (waiting, handshaking or serving); a connection beyond is
    /// closed at once.
    pub max_connections: usize,
    /// Open connections from one source address; beyond, closed at once.
    pub max_per_source: usize,
    /// Open connections without a client certificate from one source address; beyond,
    /// closed after the handshake.
    pub max_anonymous_per_source: usize,
    /// Open connections without a client certificate in all.
    pub max_anonymous: usize,
}

impl Default for AcceptLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: 256,
            max_handshakes_per_source: 16,
            max_connections: 50_000,
            max_per_source: 4096,
            max_anonymous_per_source: 256,
            max_anonymous: 4096,
        }
    }
}

/// What the door holds now, shared by the accept loop and the connections.
struct Gate {
    connections: AtomicUsize,
    /// `connections`, as the `vigo_connections_open` gauge shows it.
    open: metrics::Gauge,
    handshakes: Arc<Semaphore>,
    per_source: usize,
    by_source: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
    /// Open connections by source: all of them, and those without a certificate.
    open_by_source: Mutex<HashMap<IpAddr, (usize, usize)>>,
    anonymous: AtomicUsize,
}

/// A connection's place in the counts; given back on drop.
pub struct ConnSlot {
    gate: Arc<Gate>,
    source: IpAddr,
    anonymous: bool,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let gate = &self.gate;
        gate.connections.fetch_sub(1, Ordering::AcqRel);
        gate.open.decrement(1.0);
        if self.anonymous {
            gate.anonymous.fetch_sub(1, Ordering::AcqRel);
        }
        let mut open = gate
            .open_by_source
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((all, anonymous)) = open.get_mut(&self.source) {
            *all = all.saturating_sub(1);
            if self.anonymous {
                *anonymous = anonymous.saturating_sub(1);
            }
            if *all == 0 {
                open.remove(&self.source);
            }
        }
    }
}

impl ConnSlot {
    /// Counts the connection as one without a certificate, or refuses it (`false`)
    /// when its source or the server holds its share of those.
    fn anonymous(&mut self, limits: &AcceptLimits) -> bool {
        let gate = &self.gate;
        if gate.anonymous.fetch_add(1, Ordering::AcqRel) >= limits.max_anonymous {
            gate.anonymous.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let mut open = gate
            .open_by_source
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mine = open.entry(self.source).or_insert((1, 0));
        if mine.1 >= limits.max_anonymous_per_source {
            gate.anonymous.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        mine.1 += 1;
        self.anonymous = true;
        true
    }
}

/// A handshake's turn: its source's share and the server's; given back on drop.
struct Turn {
    gate: Arc<Gate>,
    source: IpAddr,
    mine: Arc<Semaphore>,
    _source_permit: OwnedSemaphorePermit,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut by_source = self
            .gate
            .by_source
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: nobody else holds or waits for this source's semaphore.
        if Arc::strong_count(&self.mine) <= 3
            && self.mine.available_permits() + 1 >= self.gate.per_source
        {
            by_source.remove(&self.source);
        }
    }
}

impl Gate {
    fn new(limits: &AcceptLimits, what: &'static str) -> Arc<Self> {
        Arc::new(Self {
            connections: AtomicUsize::new(0),
            open: metrics::gauge!("vigo_connections_open", "listener" => what),
            handshakes: Arc::new(Semaphore::new(limits.max_handshakes.max(1))),
            per_source: limits.max_handshakes_per_source.max(1),
            by_source: Mutex::new(HashMap::new()),
            open_by_source: Mutex::new(HashMap::new()),
            anonymous: AtomicUsize::new(0),
        })
    }

    /// A slot of the connection cap and of `source`'s share of it, or why not.
    fn connection(
        self: &Arc<Self>,
        limits: &AcceptLimits,
        source: IpAddr,
    ) -> Result<ConnSlot, Full> {
        if self.connections.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(Full::Server);
        }
        {
            let mut open = self
                .open_by_source
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let mine = open.entry(source).or_insert((0, 0));
            if mine.0 >= limits.max_per_source {
                self.connections.fetch_sub(1, Ordering::AcqRel);
                return Err(Full::Source);
            }
            mine.0 += 1;
        }
        self.open.increment(1.0);
        Ok(ConnSlot {
            gate: self.clone(),
            source,
            anonymous: false,
        })
    }

    /// Waits for `source`'s turn to handshake: its own share first, then the server's.
    async fn turn(self: &Arc<Self>, source: IpAddr) -> Turn {
        let mine = {
            let mut by_source = self.by_source.lock().unwrap_or_else(|p| p.into_inner());
            by_source
                .entry(source)
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_source)))
                .clone()
        };
        let source_permit = mine.clone().acquire_owned().await.expect("never closed");
        let permit = self
            .handshakes
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        Turn {
            gate: self.clone(),
            source,
            mine,
            _source_permit: source_permit,
            _permit: permit,
        }
    }
}

/// Which cap refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Full {
    Server,
    Source,
}

/// A server-side connection whose peer is known: TLS, or plain TCP for the metrics
/// listener (whose peers are anonymous).
pub struct PeerConn {
    stream: Stream,
    pub info: PeerInfo,
    _slot: ConnSlot,
}

enum Stream {
    Tls(Box<TlsStream<TcpStream>>),
    Plain(TcpStream),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.get_mut().stream {
            Stream::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            Stream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
        }
    };
}

impl AsyncRead for PeerConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for PeerConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::Plain(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// Accepts connections on `listener` and calls `serve` with each one whose handshake
/// finished (at once for plain TCP, `tls` `None`), on a task of its own. Runs until the
/// returned future is dropped.
pub async fn accept_loop<F>(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    limits: AcceptLimits,
    what: &'static str,
    serve: F,
) where
    F: Fn(PeerConn) + Clone + Send + Sync + 'static,
{
    let acceptor = tls.map(TlsAcceptor::from);
    let gate = Gate::new(&limits, what);
    let full = metrics::counter!("vigo_connections_refused_total", "listener" => what);
    let limited = |limit: &'static str| metrics::counter!("vigo_connections_limited_total", "listener" => what, "limit" => limit);
    let (source_full, anonymous_full) = (limited("per_source"), limited("anonymous"));
    let timed_out = metrics::counter!("vigo_handshakes_failed_total", "listener" => what, "reason" => "timeout");
    let failed =
        metrics::counter!("vigo_handshakes_failed_total", "listener" => what, "reason" => "error");
    // Registered for TLS listeners only: a plain one (metrics) has no handshakes.
    let (full_handshakes, resumed) = match acceptor {
        Some(_) => (
            metrics::counter!("vigo_handshakes_total", "listener" => what, "kind" => "full"),
            metrics::counter!("vigo_handshakes_total", "listener" => what, "kind" => "resumed"),
        ),
        None => (metrics::Counter::noop(), metrics::Counter::noop()),
    };
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let mut conn = match gate.connection(&limits, remote.ip()) {
            Ok(conn) => conn,
            Err(Full::Server) => {
                full.increment(1);
                debug!(%remote, "connection refused: the server holds its cap of connections");
                continue;
            }
            Err(Full::Source) => {
                source_full.increment(1);
                debug!(%remote, "connection refused: its source holds its share of connections");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Some(acceptor) = acceptor.clone() else {
            // Plain TCP (metrics): every peer is anonymous.
            if !conn.anonymous(&limits) {
                anonymous_full.increment(1);
                continue;
            }
            serve(PeerConn {
                stream: Stream::Plain(tcp),
                info: PeerInfo {
                    peer: Peer::Anonymous,
                    remote,
                    serial: Arc::from(""),
                },
                _slot: conn,
            });
            continue;
        };
        let (gate, serve) = (gate.clone(), serve.clone());
        let (failed, timed_out) = (failed.clone(), timed_out.clone());
        let (full_handshakes, resumed) = (full_handshakes.clone(), resumed.clone());
        let anonymous_full = anonymous_full.clone();
        tokio::spawn(async move {
            let handshake = async {
                let _turn = gate.turn(remote.ip()).await;
                acceptor.accept(tcp).await
            };
            let stream = match tokio::time::timeout(limits.handshake_timeout, handshake).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    failed.increment(1);
                    return debug!(%remote, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    timed_out.increment(1);
                    return debug!(%remote, "TLS handshake not done within its timeout");
                }
            };
            let tls = stream.get_ref().1;
            let resumption = tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            match resumption {
                true => resumed.increment(1),
                false => full_handshakes.increment(1),
            }
            let (peer, serial) = match tls.peer_certificates() {
                None | Some([]) => (Peer::Anonymous, String::new()),
                // A resumed session's chain was verified when the ticket was issued.
                Some([leaf, ..]) if resumption && !Peer::still_valid(leaf) => {
                    failed.increment(1);
                    return debug!(%remote, "resumed session with an expired certificate");
                }
                Some([leaf, ..]) => match Peer::identify(leaf) {
                    Ok(p) => p,
                    Err(e) => return debug!(%remote, error = %e, "unusable client certificate"),
                },
            };
            if matches!(peer, Peer::Anonymous) && !conn.anonymous(&limits) {
                anonymous_full.increment(1);
                return debug!(%remote, "connection without a certificate refused: its source or the server holds its share");
            }
            serve(PeerConn {
                stream: Stream::Tls(Box::new(stream)),
                info: PeerInfo {
                    peer,
                    remote,
                    serial: serial.into(),
                },
                _slot: conn,
            });
        });
    }
}

/// Describes the metric families of this module (once per process is enough).
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "vigo_connections_open",
        "Connections open now (waiting to handshake, handshaking or serving), by listener"
    );
    metrics::describe_counter!(
        "vigo_connections_refused_total",
        "Connections closed at once because the listener held its cap of open connections"
    );
    metrics::describe_counter!(
        "vigo_connections_limited_total",
        "Connections closed at once because their source held its share of connections (limit per_source) or, without a client certificate, its source or the server held its share of those (limit anonymous), by listener"
    );
    metrics::describe_counter!(
        "vigo_connections_renewed_total",
        "Connections told to go away at their maximum age (connections.max_connection_age) so they are renewed"
    );
    metrics::describe_counter!(
        "vigo_handshakes_total",
        "TLS handshakes finished, by listener and kind: full, or resumed from a session ticket (no certificate exchange)"
    );
    metrics::describe_counter!(
        "vigo_handshakes_failed_total",
        "TLS handshakes that failed (reason error) or did not finish, waiting for a slot included, within the handshake timeout (reason timeout), by listener"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AcceptLimits {
        AcceptLimits {
            handshake_timeout: Duration::from_secs(1),
            max_handshakes: 3,
            max_handshakes_per_source: 2,
            max_connections: 4,
            max_per_source: 3,
            max_anonymous_per_source: 1,
            max_anonymous: 2,
        }
    }

    #[test]
    fn the_connection_cap_refuses_beyond_it_and_slots_come_back() {
        let gate = Gate::new(&limits(), "test");
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        let held: Vec<_> = (1..=4)
            .map(|n| gate.connection(&limits(), ip(n)).unwrap())
            .collect();
        assert_eq!(gate.connection(&limits(), ip(5)).err(), Some(Full::Server));
        drop(held);
        assert!(gate.connection(&limits(), ip(5)).is_ok());
    }

    /// One source holds at most its share of connections, and of connections without
    /// a certificate a smaller one; the server's anonymous total is bounded too; every
    /// share comes back when its connections close.
    #[test]
    fn a_source_holds_its_share_and_anonymous_peers_a_smaller_one() {
        let (gate, l) = (Gate::new(&limits(), "test"), limits());
        let (a, b, c) = (
            IpAddr::from([10, 0, 0, 1]),
            IpAddr::from([10, 0, 0, 2]),
            IpAddr::from([10, 0, 0, 3]),
        );
        let mut from_a: Vec<_> = (0..3).map(|_| gate.connection(&l, a).unwrap()).collect();
        assert_eq!(gate.connection(&l, a).err(), Some(Full::Source));
        assert!(from_a[0].anonymous(&l), "a's first anonymous connection");
        assert!(
            !from_a[1].anonymous(&l),
            "a's share of anonymous ones is one"
        );
        let mut from_b = gate.connection(&l, b).unwrap();
        assert!(from_b.anonymous(&l));
        let refused = gate.connection(&l, c).err();
        assert_eq!(refused, Some(Full::Server), "four open in all");
        drop(from_a.pop());
        let mut from_c = gate.connection(&l, c).unwrap();
        assert!(
            !from_c.anonymous(&l),
            "the server's two anonymous are taken"
        );
        drop(from_a);
        assert!(from_c.anonymous(&l), "a's came back");
        drop((from_b, from_c));
        assert!(gate.open_by_source.lock().unwrap().is_empty());
        assert_eq!(gate.anonymous.load(Ordering::Acquire), 0);
        assert_eq!(gate.connections.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn one_source_waits_for_its_share_others_go_ahead() {
        let gate = Gate::new(&limits(), "test");
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = gate.turn(a).await;
        let second = gate.turn(a).await;
        let soon = Duration::from_millis(50);
        assert!(
            tokio::time::timeout(soon, gate.turn(a)).await.is_err(),
            "a third handshake from a waits"
        );
        let third = gate.turn(b).await;
        assert!(
            tokio::time::timeout(soon, gate.turn(b)).await.is_err(),
            "the server's three are taken"
        );
        drop(first);
        let fourth = tokio::time::timeout(soon, gate.turn(b))
            .await
            .expect("a slot came back");
        drop((second, third, fourth));
        assert!(
            gate.by_source.lock().unwrap().is_empty(),
            "sources forgotten"
        );
    }
}
