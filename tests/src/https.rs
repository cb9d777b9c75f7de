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
    request_with(
        addr,
        ca_pem,
        method,
        path,
        &headers,
        "application/json",
        body,
    )
    .await
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
    let (status, _, payload) =
        exchange(addr, ca_pem, method, path, headers, content_type, body).await;
    let json = if payload.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload))
    };
    (status, json)
}

/// One request on its own connection: the status, the answer's head and its body.
pub async fn exchange(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    content_type: &str,
    body: Option<&str>,
) -> (u16, String, String) {
    let mut tls = connect(addr, ca_pem).await;
    let body = body.unwrap_or("");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
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
    (status, head.to_string(), payload.to_string())
}

/// Logs in to the web console on `addr` with an API token as a browser does (the log-in
/// form's double-submit nonce, then the form): the session cookie's `name=value`.
pub async fn console_session(addr: std::net::SocketAddr, ca_pem: &str, token: &str) -> String {
    let (_, _, page) = exchange(
        addr,
        ca_pem,
        "GET",
        "/console/login",
        &[],
        "text/html",
        None,
    )
    .await;
    let nonce = page
        .split("name=\"login_csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the log-in form's nonce");
    let form = format!("login_csrf={nonce}&token={token}");
    let cookie = vec![("cookie", format!("__Host-vigo-login={nonce}"))];
    let (status, head, body) = exchange(
        addr,
        ca_pem,
        "POST",
        "/console/login",
        &cookie,
        "application/x-www-form-urlencoded",
        Some(&form),
    )
    .await;
    assert_eq!(status, 303, "log-in: {body}");
    head.lines()
        .filter_map(|l| l.strip_prefix("set-cookie: "))
        .find(|c| c.starts_with("__Host-vigo-session="))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_string()
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
