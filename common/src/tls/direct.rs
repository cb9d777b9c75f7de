//! A gRPC client channel of exactly one HTTP/2 connection with nothing in front of it.
//!
//! tonic's `Channel` puts a queue and a task of its own (tower's `Buffer`) before every
//! connection, and every request goes through both: a hop between tasks and a queue
//! allocated per channel. That is the right shape for a process with a few channels
//! shared by many callers; the simulator holds one channel per simulated envoy — 16,000
//! in a process — each used by one caller at a time. [`DirectChannel`] sends a request
//! straight on its connection's HTTP/2 handle; the connection is made on first use and
//! again after it closes, by one caller while the others wait for it.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
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
    /// The open connection's handle.
    open: Mutex<Option<SendRequest<Body>>>,
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

    fn open(&self) -> Option<SendRequest<Body>> {
        let open = self.inner.open.lock().unwrap_or_else(|p| p.into_inner());
        open.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// The open connection's handle, connecting first if there is none.
    async fn sender(&self) -> Result<SendRequest<Body>, tonic::Status> {
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
        let (send, connection) = http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(|e| unavailable(&e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *self.inner.open.lock().unwrap_or_else(|p| p.into_inner()) = Some(send.clone());
        Ok(send)
    }

    async fn connect(&self) -> io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>> {
        let tcp = match self.inner.local {
            None => TcpStream::connect(&self.inner.target).await?,
            Some(ip) => super::connect_from(&self.inner.target, ip).await?,
        };
        tcp.set_nodelay(true)?;
        let tls = self
            .inner
            .connector
            .connect(self.inner.server_name.clone(), tcp)
            .await?;
        Ok(TokioIo::new(tls))
    }
}

impl tower::Service<http::Request<Body>> for DirectChannel {
    type Response = http::Response<hyper::body::Incoming>;
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
            let lost =
                |e: hyper::Error| tonic::Status::unavailable(format!("connection lost: {e}"));
            let mut send = this.sender().await?;
            send.ready().await.map_err(lost)?;
            Ok(send.send_request(request).await.map_err(lost)?)
        })
    }
}
