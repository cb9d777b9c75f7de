//! A small HTTPS/1.1 client for the REST admin API: one request per connection,
//! verified against the cluster CA, the answer's status and JSON body.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A TLS connection to `addr` speaking HTTP/1.1, verified against `ca_pem`.
async fn connect(
    addr: std::net::SocketAddr,
    ca_pem: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut config = vigo_common::tls::client_config(ca_pem, None, &[vigo_common::pki::Role::Hub])
        .expect("client tls");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("tls")
}

/// Sends `method path` with an optional bearer token and JSON body to `addr`.
pub async fn request(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let auth = token.map(|t| ("authorization", format!("Bearer {t}")));
    let headers: Vec<(&str, String)> = auth.into_iter().collect();
    request_with(addr, ca_pem, method, path, &headers, "application/json", body).await
}

/// As [`request`] with any headers and content type (a console form with its cookie).
pub async fn request_with(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    content_type: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut tls = connect(addr, ca_pem).await;
    let body = body.unwrap_or("");
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{extra}content-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.expect("write");
    tls.write_all(body.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    // The server closes after answering (connection: close); a TLS close without
    // close_notify is fine here.
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw);
    let (head, payload) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let json = if payload.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(payload).unwrap_or(serde_json::Value::String(payload.to_string()))
    };
    (status, json)
}

/// Opens a TLS connection to `addr` and sends `bytes` as they are (a request head
/// without its body, half a head, nothing); then reads what comes back until the
/// server answers a status line or closes. `Some(status)` if it answered, `None` if it
/// closed without an answer.
pub async fn send_raw(addr: std::net::SocketAddr, ca_pem: &str, bytes: &[u8]) -> Option<u16> {
    let mut tls = connect(addr, ca_pem).await;
    tls.write_all(bytes).await.expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
        if raw.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw);
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok())
}
