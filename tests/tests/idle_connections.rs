//! What an idle connection costs: once a gRPC-shaped exchange is over, an HTTP/2
//! connection over TLS holds none of its codec buffers at either end — the h2 write
//! buffer (16 KiB), its read buffer (8 KiB), its HPACK Huffman buffer (4 KiB) and the
//! rustls record buffer (4 KiB) are freed until the next frame (the patches under
//! `third_party/`, see its README). A spoke holds one such connection per envoy.
//!
//! Heap bytes are counted by this test binary's own allocator: live bytes after N
//! connections went idle, less live bytes before they opened, over N — both ends.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use vigo_common::pki::{CertAuthority, Role};
use vigo_common::telemetry::heap::{CountingAllocator, live_bytes};
use vigo_common::tls;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const CONNECTIONS: usize = 200;

/// Both tests read the process's live heap: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The codec buffers one end held idle before the patches: 16 + 8 + 4 + 4 KiB.
const CODEC_BUFFERS: isize = 32 * 1024;

/// Serves every connection: each request is answered like a unary gRPC call (headers,
/// a message, trailers); the connection then stays open.
async fn serve(listener: TcpListener, acceptor: TlsAcceptor) {
    loop {
        let (tcp, _) = listener.accept().await.expect("accept");
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let tls = acceptor.accept(tcp).await.expect("server handshake");
            let mut connection = h2::server::handshake(tls).await.expect("h2 server");
            while let Some(request) = connection.accept().await {
                let (request, mut respond) = request.expect("request");
                let mut body = request.into_body();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.expect("request body");
                    body.flow_control()
                        .release_capacity(chunk.len())
                        .expect("release");
                }
                let response = Response::builder()
                    .header("content-type", "application/grpc")
                    .body(())
                    .expect("response");
                let mut send = respond.send_response(response, false).expect("send");
                send.send_data(Bytes::from(vec![7u8; 180]), false)
                    .expect("data");
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                send.send_trailers(trailers).expect("trailers");
            }
        });
    }
}

/// Opens a connection, makes one call and a ping round trip (so every frame either
/// end had to send is sent and read), and hands back what keeps it open.
async fn open_and_call(
    address: std::net::SocketAddr,
    connector: &TlsConnector,
) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(address).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("spoke.test").expect("name");
    let tls = connector
        .connect(name, tcp)
        .await
        .expect("client handshake");
    let (send, mut connection) = h2::client::handshake(tls).await.expect("h2 client");
    let mut ping = connection.ping_pong().expect("ping handle");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut send = send.ready().await.expect("ready");
    let request = Request::post("https://spoke.test/vigo.spoke.v1.Spoke/CheckIn")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "10S")
        .header("user-agent", "vigo-envoy/0.1")
        .body(())
        .expect("request");
    let (response, mut stream) = send.send_request(request, false).expect("send request");
    stream
        .send_data(Bytes::from(vec![1u8; 420]), true)
        .expect("request body");
    let mut body = response.await.expect("response").into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("response body");
        body.flow_control()
            .release_capacity(chunk.len())
            .expect("release");
    }
    body.trailers()
        .await
        .expect("trailers")
        .expect("grpc-status");
    ping.ping(h2::Ping::opaque()).await.expect("pong");
    send
}

#[tokio::test(flavor = "current_thread")]
async fn an_idle_connection_holds_no_codec_buffers_at_either_end() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (ca, _) = CertAuthority::create("idle test CA").expect("CA");
    let node = |name: &str| {
        ca.issue_node(Role::Spoke, name, &["spoke.test".to_string()])
            .expect("certificate")
    };
    let server = node("spoke");
    let client = node("client");
    let server_config = tls::server_config(
        ca.cert_pem(),
        &server.cert_pem,
        &server.key_pem,
        tls::ClientAuth::Required,
    )
    .expect("server config");
    let client_config = tls::client_config(
        ca.cert_pem(),
        Some((&client.cert_pem, &client.key_pem)),
        &[Role::Spoke],
    )
    .expect("client config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(serve(listener, TlsAcceptor::from(Arc::new(server_config))));
    let connector = TlsConnector::from(Arc::new(client_config));

    // One connection first, so what is made once (the runtime's, rustls' and the
    // tracing machinery's lazily built state) is not counted against the others.
    let mut open = vec![open_and_call(address, &connector).await];
    settle().await;
    let before = live_bytes();
    for _ in 0..CONNECTIONS {
        open.push(open_and_call(address, &connector).await);
    }
    settle().await;
    let per_connection = (live_bytes() - before) / CONNECTIONS as isize;
    println!(
        "live heap per idle connection, both ends: {per_connection} bytes ({CONNECTIONS} connections)"
    );
    // Without the patches each end holds its codec buffers on top of everything else.
    assert!(
        per_connection < CODEC_BUFFERS,
        "an idle connection holds {per_connection} bytes of heap at its two ends; \
         its codec buffers alone were {} before they were released when idle",
        2 * CODEC_BUFFERS
    );
    // Still open and usable: the released buffers come back for the next call.
    for send in open.iter_mut().take(3) {
        let request = Request::post("https://spoke.test/vigo.spoke.v1.Spoke/CheckIn")
            .body(())
            .expect("request");
        let (response, _stream) = send
            .clone()
            .ready()
            .await
            .expect("ready")
            .send_request(request, true)
            .expect("send");
        assert_eq!(response.await.expect("response").status(), 200);
    }
}

/// Waits until the spoke has flushed every envoy's record, then lets every task run.
async fn flushed(spoke: &vigo_spoke::server::Spoke) {
    while spoke.fleet.dirty_count() > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    settle().await;
}

/// Lets every task that has something to do run until none has.
async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

/// Memory over days: at one check-in a minute a connection makes ~1,440 calls a day.
/// Nothing a server or client sends may vary per call in a way HPACK indexes (a `date`
/// header did: each connection's header tables filled with stale dates within about
/// an hour), and no queue may grow a block on the way (tonic's `Channel` did, on the
/// 33rd call: the agent now uses a direct channel). A real spoke in this process and
/// the agent's client, one connection each: the live heap of both ends after 200
/// check-ins per connection is within 512 bytes per connection of what it was after 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_costs_the_same_after_200_calls_as_after_two() {
    let _alone = ONE_AT_A_TIME.lock().await;
    const ENVOYS: usize = 100;
    let calls: usize = 200;
    vigo_tests::init();
    let home = vigo_tests::SpokeHome::new();
    let spoke = home.start().await;
    let address = spoke.addr.to_string();
    let mut envoys = Vec::new();
    for i in 0..ENVOYS {
        envoys.push(home.enroll(&address, &format!("mem-{i}")).await);
    }
    // Two calls each: the bundle, then "no change" — the steady state.
    for envoy in &mut envoys {
        envoy.check_in().await.expect("first check-in");
        envoy.check_in().await.expect("second check-in");
    }
    // Measured with every envoy's record flushed, as it is between check-ins.
    flushed(&spoke).await;
    let before = live_bytes();
    for _ in 2..calls {
        for envoy in &mut envoys {
            envoy.check_in().await.expect("check-in");
        }
    }
    flushed(&spoke).await;
    let growth = (live_bytes() - before) / ENVOYS as isize;
    println!(
        "live heap per connection, both ends, after {calls} calls less after 2: {growth} bytes ({ENVOYS} connections)"
    );
    assert!(
        growth <= 512,
        "each connection grew by {growth} bytes over {} calls",
        calls - 2
    );
    drop(spoke);
}
