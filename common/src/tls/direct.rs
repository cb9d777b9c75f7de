//! A gRPC client channel of exactly one HTTP/2 connection with nothing in front of it.
//!
//! tonic's `Channel` puts a queue and a task of its own (tower's `Buffer`) before every
//! connection, and hyper's HTTP/2 client another queue between the caller and the
//! connection task: every request goes through both, and each queue keeps a second
//! 32-slot block (~9 KB each) from its 33rd request on. That is the right shape for a
//! process with a few channels shared by many callers; an envoy holds one connection
//! for days and the simulator one per simulated envoy. [`DirectChannel`] hands a
//! request straight to its connection's h2 handle (which takes it under a lock, no
//! queue); the connection is made on first use and again after it closes, by one
//! caller while the others wait for it.
//!
//! For methods whose request is one message (every envoy method is): the request body
//! is sent whole before the answer is awaited; the answer may stream.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http_body::Body as _;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::body::Body;

use crate::Error;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One HTTP/2 connection over our TLS, as a tonic service (wrap it with
/// `Client::with_origin`, which gives requests their scheme and authority).
#[derive(Clone)]
pub struct DirectChannel {
    inner: Arc<Inner>,
}

struct Inner {
    server_name: ServerName<'static>,
    target: String,
    local: Option<IpAddr>,
    connector: TlsConnector,
    connect_timeout: Duration,
    /// The open connection's handle, and whether its connection has ended.
    open: Mutex<Option<(SendRequest<Bytes>, Arc<AtomicBool>)>>,
    /// Held by the caller that is connecting.
    connecting: tokio::sync::Mutex<()>,
}

impl DirectChannel {
    /// A channel to `address` (`host:port`, the host naming the server's certificate),
    /// connecting from `local` when given; nothing is connected before the first call.
    pub fn new(
        address: &str,
        config: Arc<ClientConfig>,
        connect_timeout: Duration,
        local: Option<IpAddr>,
    ) -> Result<Self, Error> {
        let (server_name, target) = super::split_address(address)?;
        Ok(Self {
            inner: Arc::new(Inner {
                server_name,
                target: target.to_string(),
                local,
                connector: TlsConnector::from(config),
                connect_timeout,
                open: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
        })
    }

    fn open(&self) -> Option<SendRequest<Bytes>> {
        let open = self.inner.open.lock().unwrap_or_else(|p| p.into_inner());
        open.as_ref()
            .filter(|(_, ended)| !ended.load(Ordering::Acquire))
            .map(|(send, _)| send.clone())
    }

    /// The open connection's handle, connecting first if there is none.
    async fn sender(&self) -> Result<SendRequest<Bytes>, tonic::Status> {
        if let Some(send) = self.open() {
            return Ok(send);
        }
        let _turn = self.inner.connecting.lock().await;
        if let Some(send) = self.open() {
            return Ok(send);
        }
        let unavailable = |e: &dyn std::fmt::Display| {
            tonic::Status::unavailable(format!("connecting to {}: {e}", self.inner.target))
        };
        let connect = self.connect();
        let io = tokio::time::timeout(self.inner.connect_timeout, connect)
            .await
            .map_err(|_| unavailable(&"no connection within the connect timeout"))?
            .map_err(|e| unavailable(&e))?;
        let (send, connection) = h2::client::Builder::new()
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| unavailable(&e))?;
        let ended = Arc::new(AtomicBool::new(false));
        let marker = ended.clone();
        tokio::spawn(async move {
            let _ = connection.await;
            marker.store(true, Ordering::Release);
        });
        *self.inner.open.lock().unwrap_or_else(|p| p.into_inner()) = Some((send.clone(), ended));
        Ok(send)
    }

    /// Opens a stream for a request with `head`: the connection (connecting when there
    /// is none: a failure there is final), then the stream on it (a refusal there means
    /// the connection takes no more).
    async fn start(
        &self,
        head: &http::request::Parts,
        end_of_stream: bool,
    ) -> Result<Result<Started, h2::Error>, tonic::Status> {
        let send = self.sender().await?;
        let mut request = http::Request::new(());
        *request.method_mut() = head.method.clone();
        *request.uri_mut() = head.uri.clone();
        *request.version_mut() = head.version;
        *request.headers_mut() = head.headers.clone();
        Ok(match send.ready().await {
            Ok(mut send) => send.send_request(request, end_of_stream),
            Err(e) => Err(e),
        })
    }

    /// Stops using the open connection: the next call makes a new one.
    fn forget(&self) {
        if let Some((_, ended)) = self
            .inner
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            ended.store(true, Ordering::Release);
        }
    }

    async fn connect(&self) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = match self.inner.local {
            None => TcpStream::connect(&self.inner.target).await?,
            Some(ip) => super::connect_from(&self.inner.target, ip).await?,
        };
        tcp.set_nodelay(true)?;
        self.inner
            .connector
            .connect(self.inner.server_name.clone(), tcp)
            .await
    }
}

impl tower::Service<http::Request<Body>> for DirectChannel {
    type Response = http::Response<Answer>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is the connection's, awaited in `call`: HTTP/2 takes many requests.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            // Every failure here is the transport's (a gRPC refusal arrives as a
            // response): UNAVAILABLE, as from a tonic channel, which callers retry.
            let lost = |e: h2::Error| tonic::Status::unavailable(format!("connection lost: {e}"));
            let (head, mut body) = request.into_parts();
            let empty = body.is_end_stream();
            // A connection told to go away (renewed at its maximum age, or idle) takes
            // no new request but may live on while a held stream finishes: a request
            // it refuses was never sent, so it goes once more on a new connection.
            let (answer, mut stream) = match this.start(&head, empty).await? {
                Ok(started) => started,
                Err(_) => {
                    this.forget();
                    this.start(&head, empty).await?.map_err(lost)?
                }
            };
            if !empty {
                send_body(&mut body, &mut stream).await?;
            }
            let answer = answer.await.map_err(lost)?;
            Ok(answer.map(|recv| Answer { recv, done: false }))
        })
    }
}

/// A request's stream: its answer to come, and its body's way out.
type Started = (h2::client::ResponseFuture, h2::SendStream<Bytes>);

/// Sends a request's body on its stream (h2 holds what the window does not take yet:
/// a request here is one message, bounded by its method's limit).
async fn send_body(body: &mut Body, stream: &mut h2::SendStream<Bytes>) -> Result<(), BoxError> {
    let mut ended = false;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
        let frame = frame?;
        match frame.into_data() {
            Ok(data) => {
                ended = body.is_end_stream();
                stream.send_data(data, ended)?;
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    stream.send_trailers(trailers)?;
                    return Ok(());
                }
            }
        }
        if ended {
            return Ok(());
        }
    }
    stream.send_data(Bytes::new(), true)?;
    Ok(())
}

/// An answer's body as it arrives on its stream: data frames (their flow-control
/// capacity given back as each is taken), then the trailers that carry the gRPC status.
pub struct Answer {
    recv: h2::RecvStream,
    done: bool,
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, h2::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if !self.recv.is_end_stream() {
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {}
            }
        }
        let trailers = std::task::ready!(self.recv.poll_trailers(cx));
        self.done = true;
        Poll::Ready(match trailers {
            Ok(Some(t)) => Some(Ok(http_body::Frame::trailers(t))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
