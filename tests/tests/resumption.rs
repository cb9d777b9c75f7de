//! TLS session resumption at the spoke: an envoy reconnecting — also to a restarted
//! spoke — resumes its session from a ticket instead of a full handshake; a ticket from
//! elsewhere, or sealed under a key file that changed, buys nothing.

use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, HandshakeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use vigo_common::tls;
use vigo_tests::{SpokeHome, init};

/// A TLS connection to `address` with `config` that has sent the HTTP/2 preface and an
/// empty SETTINGS frame.
async fn speak_h2(
    address: &str,
    config: &Arc<ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let (name, hostport) = tls::split_address(address).expect("address");
    let tcp = TcpStream::connect(hostport).await.expect("connect");
    let mut stream = TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .expect("handshake");
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface");
    stream
}

/// Connects to `address` with `config`, speaks the start of HTTP/2 and reads the
/// server's first frame (so the session ticket sent after the handshake is taken), and
/// says how the handshake went.
async fn handshake(address: &str, config: &Arc<ClientConfig>) -> HandshakeKind {
    let mut stream = speak_h2(address, config).await;
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut frame))
        .await
        .expect("the spoke answers")
        .expect("a frame");
    stream.get_ref().1.handshake_kind().expect("handshake done")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_spoke_resumes_the_sessions_it_ticketed() {
    init();
    let (home, spoke, addr, envoy) = SpokeHome::with_envoy("resume-1").await;
    let config = envoy.identity.tls_config().expect("tls config");
    // The ticket keys are the spoke's alone: neither the file nor its directory is open
    // to a local user (who could read the keys, or swap in their own).
    let mode = |p: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(p).expect("exists").permissions(),
        ) & 0o777
    };
    let data_dir = home.config().data_dir;
    assert_eq!(mode(&data_dir), 0o700, "data dir");
    assert_eq!(
        mode(&data_dir.join(vigo_common::tls::tickets::FILE)),
        0o600,
        "ticket keys"
    );
    assert_eq!(handshake(&addr, &config).await, HandshakeKind::Full);
    assert_eq!(
        handshake(&addr, &config).await,
        HandshakeKind::Resumed,
        "the same spoke resumes"
    );
    // Take one more ticket, then restart the spoke on the same data directory.
    assert_eq!(handshake(&addr, &config).await, HandshakeKind::Resumed);
    spoke.shutdown().await.expect("shutdown");
    let spoke = home.start().await;
    let addr = spoke.addr.to_string();
    assert_eq!(
        handshake(&addr, &config).await,
        HandshakeKind::Resumed,
        "tickets survive the restart"
    );
    let mut envoy = envoy;
    envoy.gateway = vigo_envoy::client::gateway(&addr, config.clone()).expect("gateway");
    envoy
        .check_in()
        .await
        .expect("a resumed session carries the envoy's identity");

    // A key file that changed (lost, replaced) opens none of the old tickets: the
    // envoy pays a full handshake and is served as before.
    assert_eq!(handshake(&addr, &config).await, HandshakeKind::Resumed);
    spoke.shutdown().await.expect("shutdown");
    let key_file = home.config().data_dir.join(vigo_common::tls::tickets::FILE);
    std::fs::remove_file(&key_file).expect("key file");
    let spoke = home.start().await;
    let addr = spoke.addr.to_string();
    assert_eq!(handshake(&addr, &config).await, HandshakeKind::Full);

    // Another spoke of the same CA, its own keys: the ticket of this one buys nothing.
    assert_eq!(handshake(&addr, &config).await, HandshakeKind::Resumed);
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let other = vigo_spoke::server::Spoke::start(
        vigo_spoke::config::SpokeConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            metrics_listen: None,
            data_dir: elsewhere.path().to_path_buf(),
            ..home.config()
        },
        None,
    )
    .await
    .expect("second spoke");
    assert_eq!(
        handshake(&other.addr.to_string(), &config).await,
        HandshakeKind::Full,
        "a spoke with other ticket keys"
    );
    other.shutdown().await.expect("shutdown");
    spoke.shutdown().await.expect("shutdown");
}

/// `connections.max_connection_age`: a connection is told to go away (GOAWAY) about
/// that long after its handshake, whatever it does, and the envoy carries on: its next
/// check-in connects afresh, resuming its TLS session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_renewed_at_their_maximum_age_and_envoys_carry_on() {
    init();
    let home = SpokeHome::with(vigo_tests::HomeOptions {
        connections: "  max_connection_age: 1s\n  max_connection_age_grace: 1s\n".into(),
        ..Default::default()
    });
    let spoke = home.start().await;
    let addr = spoke.addr.to_string();
    let mut envoy = home.enroll(&addr, "renew-1").await;
    envoy.check_in().await.expect("first check-in");
    // The envoy holds a stream, as a promoted agent does: its connection lives on past
    // the GOAWAY, through the grace, taking no new request.
    let stream = vigo_envoy::client::seal(
        &envoy.identity.key,
        vigo_common::signing::Domain::Stream,
        &vigo_tests::v1::StreamBody {
            envoy_id: envoy.id().get(),
            sequence: envoy.sequence.advance(),
            timestamp_ms: vigo_common::time::now_ms(),
        },
    );
    let mut held = envoy
        .gateway
        .clone()
        .open_stream(stream)
        .await
        .expect("stream opened")
        .into_inner();
    let config = envoy.identity.tls_config().expect("tls config");
    // A first connection takes a session ticket.
    handshake(&addr, &config).await;

    // A connection of the envoy's that stays open: the spoke's next frames end with a
    // GOAWAY (type 7), sent before the first-request timeout (2 s) would close it.
    let mut stream = speak_h2(&addr, &config).await;
    let goaway = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let mut header = [0u8; 9];
            if stream.read_exact(&mut header).await.is_err() {
                return false;
            }
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; len];
            if stream.read_exact(&mut payload).await.is_err() {
                return false;
            }
            if header[3] == 7 {
                return true;
            }
        }
    })
    .await
    .expect("the spoke answers");
    assert!(
        goaway,
        "the connection was told to go away at its maximum age"
    );
    assert_eq!(
        stream.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Resumed),
        "a reconnecting envoy resumes its session"
    );

    // The envoy's own connection is past its age too, held open by its stream: its
    // check-ins go on a new connection, and the held stream ends with the grace.
    for _ in 0..3 {
        envoy.check_in().await.expect("check-in after renewal");
    }
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(_)) = held.message().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the held stream ends with its connection's grace"
    );
    drop(spoke);
}
