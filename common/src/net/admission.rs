//! Who may call what, decided before a request body is read.
//!
//! Every gRPC service is served [`Guarded`]: before the service sees a request, its
//! [`Admit`] table looks at the method, the peer's certificate role (and, for services
//! that take bearer tokens, the headers) and either refuses at once — the body is never
//! read, the service never runs — or admits the call with the limits of that method: the
//! largest message it may carry and its deadline. The message limit is enforced on the
//! gRPC frame header as it arrives, so a frame that announces more than its method
//! takes is refused with `RESOURCE_EXHAUSTED` before any of it is buffered. The deadline
//! is the method's, or the caller's `grpc-timeout` when sooner.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Extensions, HeaderMap, Request, Response};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Code, Status};

use super::listen::PeerInfo;
use super::revoked::RevokedCerts;
use crate::pki::Peer;

/// What an admitted call may do.
#[derive(Debug)]
pub struct Limits {
    /// Largest request message, in bytes.
    pub max_message: usize,
    /// The call must be answered (for a server stream: started) within this.
    pub deadline: Duration,
    /// Held until the call is answered: its place among the requests a [`Shedder`]
    /// counts, when its kind is counted.
    ///
    /// [`Shedder`]: super::Shedder
    pub ticket: Option<super::Ticket>,
    /// Anything else held until the call is answered (a per-caller share's place).
    pub hold: Option<Box<dyn std::any::Any + Send>>,
    /// For a streaming answer: how long it may last in all. Past it the stream ends
    /// with DEADLINE_EXCEEDED — what keeps a stream anyone may open (reflection) from
    /// holding its connection for ever.
    pub lifetime: Option<Duration>,
}

impl Limits {
    pub fn new(max_message: usize, deadline: Duration) -> Self {
        Self {
            max_message,
            deadline,
            ticket: None,
            hold: None,
            lifetime: None,
        }
    }

    /// The same, with a streaming answer ended after `lifetime`.
    pub fn living(mut self, lifetime: Duration) -> Self {
        self.lifetime = Some(lifetime);
        self
    }
}

/// Marks the connection a request came on as used with a credential (a valid bearer
/// token): a connection without a client certificate is otherwise closed at its
/// `anonymous_max_age`. In the request's extensions on every gRPC connection.
#[derive(Clone, Debug, Default)]
pub struct Vouch(pub(crate) Arc<std::sync::atomic::AtomicBool>);

impl Vouch {
    pub fn vouched(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// One call, as the admission table sees it.
pub struct Call<'a> {
    pub method: &'a str,
    pub headers: &'a HeaderMap,
    /// The request's extensions: the peer is there, and a table may add what it learnt
    /// (the API caller a token names) for the service to read.
    pub extensions: &'a mut Extensions,
}

static ANONYMOUS: Peer = Peer::Anonymous;

impl Call<'_> {
    /// The peer certificate's serial (empty without one).
    pub fn serial(&self) -> &str {
        self.extensions.get::<PeerInfo>().map_or("", |p| &p.serial)
    }

    /// Says the call carried a credential that checked out: its connection is not
    /// closed for being anonymous.
    pub fn vouch(&self) {
        if let Some(v) = self.extensions.get::<Vouch>() {
            v.0.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    pub fn peer(&self) -> &Peer {
        self.extensions
            .get::<PeerInfo>()
            .map(|p| &p.peer)
            .unwrap_or(&ANONYMOUS)
    }
}

/// A service's admission table.
pub trait Admit: Send + Sync + 'static {
    /// Admits `call` with its limits, or refuses it with the status to answer.
    fn admit(&self, call: &mut Call<'_>) -> Result<Limits, Status>;
}

/// Refuses a peer whose role is not among `roles`: UNAUTHENTICATED without a
/// certificate, PERMISSION_DENIED with one of another role.
pub fn require_role(peer: &Peer, roles: &[crate::pki::Role], method: &str) -> Result<(), Status> {
    match peer {
        Peer::Anonymous => Err(Status::unauthenticated(format!(
            "{method} needs a client certificate"
        ))),
        Peer::Envoy { .. } if roles.contains(&crate::pki::Role::Envoy) => Ok(()),
        Peer::Node { role, .. } if roles.contains(role) => Ok(()),
        other => Err(Status::permission_denied(format!(
            "{} may not call {method}",
            crate::pki::a_certificate(other.role().map_or("anonymous", |r| r.as_str()))
        ))),
    }
}

/// When an admitted call must be answered by (its method's deadline, or the caller's
/// when sooner): in the request's extensions, for services that pass the call on and
/// must not outlive it.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(pub std::time::Instant);

/// A gRPC service behind its admission table (and, when given, the node's revoked
/// certificates: a call from one is refused before the table looks at it).
pub struct Guarded<S> {
    inner: S,
    table: Arc<dyn Admit>,
    revoked: Option<Arc<RevokedCerts>>,
}

impl<S: Clone> Clone for Guarded<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            table: self.table.clone(),
            revoked: self.revoked.clone(),
        }
    }
}

impl<S: NamedService> Guarded<S> {
    /// `inner` behind `table`. Its refusal counters are registered at zero, so the
    /// family is scraped before the first refusal.
    pub fn new(inner: S, table: Arc<dyn Admit>) -> Self {
        for kind in crate::refusal::Kind::ALL {
            metrics::counter!(
                "vigo_admission_refusals_total",
                "service" => S::NAME,
                "code" => kind.label()
            )
            .increment(0);
        }
        Self {
            inner,
            table,
            revoked: None,
        }
    }
}

impl<S> Guarded<S> {
    /// Refuses calls made with a certificate in `revoked`.
    pub fn refusing(mut self, revoked: Arc<RevokedCerts>) -> Self {
        self.revoked = Some(revoked);
        self
    }

    fn check_revoked(&self, extensions: &Extensions) -> Result<(), Status> {
        let (Some(revoked), Some(info)) = (&self.revoked, extensions.get::<PeerInfo>()) else {
            return Ok(());
        };
        if revoked.contains(&info.serial) {
            return Err(Status::permission_denied(format!(
                "{} with serial {} is revoked",
                crate::pki::a_certificate(info.peer.role().map_or("anonymous", |r| r.as_str())),
                info.serial
            )));
        }
        Ok(())
    }
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<Request<Body>> for Guarded<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let method = parts.uri.path().rsplit('/').next().unwrap_or("");
        let admitted = self.check_revoked(&parts.extensions).and_then(|()| {
            self.table.admit(&mut Call {
                method,
                headers: &parts.headers,
                extensions: &mut parts.extensions,
            })
        });
        let limits = match admitted {
            Ok(l) => l,
            Err(status) => {
                refused(S::NAME, status.code());
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
        };
        let deadline = match grpc_timeout(&parts.headers) {
            Some(t) => t.min(limits.deadline),
            None => limits.deadline,
        };
        parts
            .extensions
            .insert(Deadline(std::time::Instant::now() + deadline));
        let body = Body::new(FrameLimit::new(body, limits.max_message));
        let req = Request::from_parts(parts, body);
        // The clone that was made ready is the one called (tower's convention).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (ticket, hold) = (limits.ticket, limits.hold);
        let lifetime = limits.lifetime;
        Box::pin(async move {
            let _held = (ticket, hold);
            match tokio::time::timeout(deadline, inner.call(req)).await {
                Ok(Ok(response)) => Ok(match lifetime {
                    None => response,
                    Some(life) => response.map(|b| Body::new(Mortal::new(b, life))),
                }),
                Ok(Err(never)) => match never {},
                Err(_) => {
                    refused(S::NAME, Code::DeadlineExceeded);
                    Ok(Status::deadline_exceeded(format!(
                        "not answered within the deadline of {deadline:?}"
                    ))
                    .into_http())
                }
            }
        })
    }
}

/// A streaming answer that ends at its lifetime with DEADLINE_EXCEEDED trailers.
struct Mortal {
    inner: Body,
    end: Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl Mortal {
    fn new(inner: Body, life: Duration) -> Self {
        Self {
            inner,
            end: Box::pin(tokio::time::sleep(life)),
            done: false,
        }
    }
}

impl http_body::Body for Mortal {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.end.as_mut().poll(cx).is_ready() {
            self.done = true;
            let mut trailers = HeaderMap::new();
            trailers.insert(
                "grpc-status",
                http::HeaderValue::from(Code::DeadlineExceeded as i32),
            );
            trailers.insert(
                "grpc-message",
                http::HeaderValue::from_static("the stream reached its lifetime"),
            );
            return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
        }
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            self.done = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }
}

fn refused(service: &'static str, code: Code) {
    metrics::counter!(
        "vigo_admission_refusals_total",
        "service" => service,
        "code" => crate::refusal::Kind::of_code(code).label()
    )
    .increment(1);
}

/// The caller's deadline from its `grpc-timeout` header ("<digits><unit>").
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A request body whose gRPC frames may announce at most `limit` bytes each: the
/// 5-byte frame headers are read as they pass, and one that announces more ends the
/// body with RESOURCE_EXHAUSTED before the message is buffered.
struct FrameLimit {
    inner: Body,
    limit: usize,
    header: [u8; 5],
    have: usize,
    remaining: usize,
}

impl FrameLimit {
    fn new(inner: Body, limit: usize) -> Self {
        Self {
            inner,
            limit,
            header: [0; 5],
            have: 0,
            remaining: 0,
        }
    }

    /// Walks the frame headers in `data`; the first too-large announcement is an error.
    fn check(&mut self, data: &[u8]) -> Result<(), Status> {
        let mut i = 0;
        while i < data.len() {
            if self.remaining > 0 {
                let take = self.remaining.min(data.len() - i);
                self.remaining -= take;
                i += take;
                continue;
            }
            self.header[self.have] = data[i];
            self.have += 1;
            i += 1;
            if self.have == self.header.len() {
                self.have = 0;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                if len > self.limit {
                    return Err(Status::resource_exhausted(format!(
                        "request message is {len} bytes; the limit for this call is {}",
                        self.limit
                    )));
                }
                self.remaining = len;
            }
        }
        Ok(())
    }
}

impl http_body::Body for FrameLimit {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref()
            && let Err(status) = self.check(data)
        {
            return Poll::Ready(Some(Err(status)));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers_are_read_across_chunks() {
        let mut f = FrameLimit::new(Body::empty(), 10);
        // A 4-byte message, then a header split over two chunks announcing 11 bytes.
        let mut wire = vec![0, 0, 0, 0, 4, 1, 2, 3, 4, 0, 0];
        assert!(f.check(&wire).is_ok());
        wire = vec![0, 0, 11];
        let err = f.check(&wire).unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        let mut ok = FrameLimit::new(Body::empty(), 10);
        assert!(ok.check(&[0, 0, 0, 0, 10]).is_ok());
        assert!(ok.check(&[7; 10]).is_ok());
        assert!(ok.check(&[0, 0, 0, 0, 0]).is_ok());
    }

    #[test]
    fn grpc_timeouts_parse() {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(grpc_timeout(&h), Some(Duration::from_millis(250)));
        h.insert("grpc-timeout", "3S".parse().unwrap());
        assert_eq!(grpc_timeout(&h), Some(Duration::from_secs(3)));
        h.insert("grpc-timeout", "12x".parse().unwrap());
        assert_eq!(grpc_timeout(&h), None);
        h.insert("grpc-timeout", "9999999999S".parse().unwrap());
        assert_eq!(grpc_timeout(&h), None, "at most 8 digits");
    }
}
