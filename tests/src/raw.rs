//! gRPC calls built by hand, for tests that send what no well-behaved client would: a
//! message given as the bytes it is on the wire, a frame header that announces more than
//! follows, a body that never ends.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::Code;

/// A gRPC frame: the 5-byte header (not compressed, `announced` bytes) and `payload`.
pub fn frame(announced: usize, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(0);
    b.put_u32(announced as u32);
    b.put_slice(payload);
    b.freeze()
}

/// Calls `path` (`/package.Service/Method`) at `addr` over TLS with `config`, sending
/// `body` and then ending the request only if `finish`. Returns the gRPC status and
/// message the server answered with.
pub async fn call(
    addr: &str,
    config: Arc<ClientConfig>,
    path: &str,
    body: Bytes,
    finish: bool,
    metadata: &[(&str, &str)],
) -> Result<(Code, String), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let first = futures::stream::iter([Ok::<_, std::convert::Infallible>(
        hyper::body::Frame::data(body),
    )]);
    let rest = if finish {
        futures::stream::empty().boxed()
    } else {
        futures::stream::pending().boxed()
    };
    use futures::StreamExt;
    let stream_body = http_body_util::StreamBody::new(first.chain(rest));
    let mut request = http::Request::post(format!("https://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in metadata {
        request = request.header(*k, *v);
    }
    let request = request.body(stream_body).map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status_of = |headers: &http::HeaderMap| {
        let code = headers
            .get("grpc-status")?
            .to_str()
            .ok()?
            .parse::<i32>()
            .ok()?;
        let message = headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .map(percent_decode)
            .unwrap_or_default();
        Some((Code::from_i32(code), message))
    };
    if let Some(s) = status_of(response.headers()) {
        return Ok(s);
    }
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(trailers) = frame.trailers_ref()
            && let Some(s) = status_of(trailers)
        {
            return Ok(s);
        }
    }
    Err("no grpc-status in the answer".into())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
