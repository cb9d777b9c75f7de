//! What an anonymous or wrongly credentialed peer can try against a spoke and a hub over
//! the network, and what it gets: refused before its request body is read (so a huge
//! body costs the server nothing), RESOURCE_EXHAUSTED for what is too large, its stalled
//! connections closed, and real envoys served all the while.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::Code;
use vigo_common::procfs::rss_kib;
use vigo_common::tls::client_config;
use vigo_tests::cluster::Cluster;
use vigo_tests::https::{request, send_raw};
use vigo_tests::raw::{call, frame};
use vigo_tests::{SpokeHome, init};

fn anonymous(ca: &str) -> Arc<rustls::ClientConfig> {
    Arc::new(client_config(ca, None, vigo_tests::ANY_SERVER).unwrap())
}

fn with_cert(ca: &str, cert: &std::path::Path, key: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let cert = std::fs::read_to_string(cert).unwrap();
    let key = std::fs::read_to_string(key).unwrap();
    Arc::new(client_config(ca, Some((&cert, &key)), vigo_tests::ANY_SERVER).unwrap())
}

/// `EnvoyExport { envoys: [ExportedEnvoy::default(); n] }` as it is on the wire: two
/// bytes per entry, each of which a server that decoded it would turn into a ~200-byte
/// struct.
fn empty_exports(n: usize) -> Vec<u8> {
    [0x0a, 0x00].repeat(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoke_admin_calls_are_refused_before_their_body_is_read() {
    init();
    let home = SpokeHome::new();
    let spoke = home.spawn();
    let addr = home.address();
    let ca = home.ca_pem();
    let import = "/vigo.v1.SpokeAdmin/ImportEnvoys";

    // 4 million empty entries in 8 MB: decoded, gigabytes of heap. Refused unread.
    let before = rss_kib(spoke.pid()).unwrap();
    let payload = empty_exports(4_000_000);
    let (code, message) = call(
        &addr,
        anonymous(&ca),
        import,
        frame(payload.len(), &payload),
        true,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(code, Code::Unauthenticated, "{message}");
    let grown = rss_kib(spoke.pid()).unwrap().saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "an anonymous import cost the spoke {grown} KiB"
    );

    // A frame that announces 64 MiB and never sends it: the answer comes anyway, so the
    // server did not wait for (or buffer) the body.
    let (code, _) = call(
        &addr,
        anonymous(&ca),
        import,
        frame(64 << 20, &[0; 1024]),
        false,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(code, Code::Unauthenticated);

    // Certificates of the wrong role are refused the same way, by name.
    let envoy = home.enroll(&addr, "web-1").await;
    let envoy_tls = envoy.identity.tls_config().unwrap();
    let (code, message) = call(
        &addr,
        envoy_tls.clone(),
        import,
        frame(64 << 20, &[]),
        false,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(code, Code::PermissionDenied, "{message}");
    assert!(
        message.contains("an envoy certificate may not call ImportEnvoys"),
        "{message}"
    );
    let admin = with_cert(
        &ca,
        &home.path("pki/admin.pem"),
        &home.path("pki/admin.key"),
    );
    let (code, message) = call(
        &addr,
        admin.clone(),
        import,
        frame(64 << 20, &[]),
        false,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        code,
        Code::PermissionDenied,
        "the hub's call, not an admin's: {message}"
    );

    // An admin call may carry what its method takes, and no more: the frame header says
    // too much, and the answer is RESOURCE_EXHAUSTED before the rest is sent.
    let (code, message) = call(
        &addr,
        admin,
        "/vigo.v1.SpokeAdmin/ForcePush",
        frame(2 << 20, &[0; 16]),
        false,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(code, Code::ResourceExhausted, "{message}");

    // An envoy's own check-in above the transport's old 1 MiB limit: RESOURCE_EXHAUSTED
    // (it used to be OUT_OF_RANGE), through the ordinary client.
    let mut envoy = envoy;
    let mut body = envoy.body();
    body.bundle_fingerprint = vec![0u8; 2 << 20].into();
    let request = envoy.seal(vigo_common::signing::Domain::CheckIn, &body);
    let refused = envoy.send(request).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Code::ResourceExhausted,
        "{}",
        refused.message()
    );
    envoy.check_in().await.expect("the envoy itself is fine");
    drop(spoke);
}

/// Connections that never send a byte, and TLS connections that never start HTTP/2,
/// do not keep an envoy from checking in; the latter are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_do_not_lock_out_envoys() {
    init();
    vigo_common::procfs::raise_fd_limit();
    let home = SpokeHome::new();
    let spoke = home.spawn();
    let addr = home.address();
    let target: SocketAddr = addr.parse().unwrap();
    let mut envoy = home.enroll(&addr, "web-1").await;
    envoy.check_in().await.unwrap();

    // 1,000 connections from another address that never send a byte.
    let attacker = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), 0));
    let mut stalled = Vec::new();
    for _ in 0..1000 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(attacker).unwrap();
        stalled.push(socket.connect(target).await.unwrap());
    }
    // A new connection of the real envoy is served within its own deadline.
    let mut fresh = vigo_tests::TestEnvoy::new(envoy.identity.clone(), &addr);
    fresh.sequence = envoy.sequence.clone();
    let started = Instant::now();
    fresh
        .check_in()
        .await
        .expect("checked in past 1,000 stalled connections");
    println!(
        "check-in past 1,000 stalled connections: {:?}",
        started.elapsed()
    );

    // TLS finished, HTTP/2 never started: closed after the first-request timeout (2s in
    // the test config).
    let mut silent = Vec::new();
    for _ in 0..20 {
        let tcp = tokio::net::TcpStream::connect(target).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(anonymous(&home.ca_pem()))
            .connect(
                rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        silent.push(tls);
    }
    for mut tls in silent {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a silent TLS connection is closed by the spoke"
        );
    }
    drop(stalled);
    drop(spoke);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_calls_are_refused_before_their_body_is_read() {
    let cluster = Cluster::start(1, &["spoke-a"]).await;
    let hub = cluster.hub_address(0);
    let ca = cluster.ca_pem();

    let (code, _) = call(
        &hub,
        anonymous(&ca),
        "/vigo.admin.v1.HubAdmin/SetOverrides",
        frame(32 << 20, &[0x0a, 0x00, 0x0a, 0x00]),
        false,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(code, Code::Unauthenticated);
    let (code, _) = call(
        &hub,
        anonymous(&ca),
        "/vigo.admin.v1.HubAdmin/SetOverrides",
        frame(32 << 20, &[]),
        false,
        &[("authorization", "Bearer vgt_wrong")],
    )
    .await
    .unwrap();
    assert_eq!(code, Code::Unauthenticated, "a wrong token, refused unread");
    let spoke_cert = with_cert(
        &ca,
        &cluster.pki("spoke-a.pem"),
        &cluster.pki("spoke-a.key"),
    );
    let (code, message) = call(
        &hub,
        spoke_cert,
        "/vigo.v1.HubRaft/AppendEntries",
        frame(32 << 20, &[]),
        false,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(code, Code::PermissionDenied, "{message}");
    // A valid token, a message above what the method takes.
    let token = cluster.api_token();
    let bearer = format!("Bearer {token}");
    let (code, _) = call(
        &hub,
        anonymous(&ca),
        "/vigo.admin.v1.HubAdmin/Status",
        frame(1 << 20, &[]),
        false,
        &[("authorization", &bearer)],
    )
    .await
    .unwrap();
    assert_eq!(code, Code::ResourceExhausted);

    // REST: no token, a 16 MiB body announced and not sent — 401 at once.
    let rest = cluster.rest_address(0);
    let head = format!(
        "PUT /api/v1/overrides HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        16 << 20
    );
    assert_eq!(send_raw(rest, &ca, head.as_bytes()).await, Some(401));
    // A token, a body above the route's limit: 413 without reading it.
    let head = format!(
        "PUT /api/v1/overrides HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: {}\r\n\r\n",
        4 << 20
    );
    assert_eq!(send_raw(rest, &ca, head.as_bytes()).await, Some(413));
    // Half a request head, then nothing: the connection is closed (header timeout, 2s
    // in the test config), not held forever.
    let started = Instant::now();
    let answer = send_raw(rest, &ca, b"GET /api/v1/status HTTP/1.1\r\n").await;
    assert!(
        answer.is_none() || answer == Some(408),
        "closed, or told it timed out: {answer:?}"
    );
    println!("half a head: closed after {:?}", started.elapsed());

    // Viewer-level work is bounded: at most 32 trait predicates, hostname globs of at
    // most 256 bytes; a glob the matcher cannot build is an error, not a panic.
    let many: Vec<String> = (0..33).map(|i| format!("trait=k{i}")).collect();
    let path = format!("/api/v1/envoys?{}", many.join("&"));
    let (s, body) = request(rest, &ca, "GET", &path, Some(&token), None).await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("at most 32"),
        "{body}"
    );
    let path = format!("/api/v1/envoys?hostname={}", "%3F".repeat(300));
    let (s, body) = request(rest, &ca, "GET", &path, Some(&token), None).await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("at most 256"),
        "{body}"
    );
    let (s, _) = request(rest, &ca, "GET", "/api/v1/status", Some(&token), None).await;
    assert_eq!(s, 200, "the hub still serves");
}

/// One size limit end to end: a policy whose bundle is above gRPC's customary 4 MiB
/// (but within what validation accepts) is published, pulled by a spoke that missed the
/// push, and delivered to an envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_above_four_mebibytes_reaches_its_envoy() {
    let mut cluster = Cluster::start(1, &["spoke-a"]).await;
    let policy = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: String| {
        let path = policy.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write(
        "hostcrates.yaml",
        "hostcrates:\n  - {name: big, match: '*', roles: [r]}\n".into(),
    );
    write("roles/r.yaml", "configcrates: [blob]\n".into());
    let content = "v".repeat(6 << 20);
    write(
        "configcrates/blob.yaml",
        format!(
            "resources:\n  - {{id: f, type: file, path: /tmp/vigo-blob, template: false, content: '{content}'}}\n"
        ),
    );

    // The spoke is down during the publish: it must pull the 6 MiB version itself.
    cluster.stop_spoke(0).await;
    let published = cluster.publish(0, policy.path(), "big").await.unwrap();
    cluster.start_spoke(0).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.spokes[0]
        .as_ref()
        .unwrap()
        .policy
        .current()
        .version_hex()
        != published.version
    {
        assert!(
            Instant::now() < deadline,
            "the spoke never pulled the large version"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (identity, _) = cluster.enroll(0, "blob-1").await.unwrap();
    let mut envoy = vigo_tests::TestEnvoy::new(identity.clone(), &identity.spoke_address);
    envoy
        .check_in()
        .await
        .expect("a 6 MiB check-in answer is decoded");
    let bundle = envoy.bundle.as_ref().expect("the bundle arrived");
    let size: usize = bundle.modules.iter().map(|(_, b)| b.len()).sum();
    assert!(size > 6 << 20, "{size}");
}

/// A saturated spoke sheds envoy requests before any work, with a retry hint: here every
/// request "waited too long" (the limit is zero), so every one is shed. Enrollment is
/// not an envoy request and is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_spoke_sheds_with_a_retry_hint_before_any_work() {
    init();
    let home = SpokeHome::with(vigo_tests::HomeOptions {
        extra: "shedding:\n  max_queue_wait: 0s\n  retry_after: 300ms\n".into(),
        ..Default::default()
    });
    let spoke = home.start().await;
    let addr = spoke.addr.to_string();
    let mut envoy = home.enroll(&addr, "web-1").await;
    let shed = envoy.check_in().await.unwrap_err();
    assert_eq!(shed.code(), Code::ResourceExhausted, "{}", shed.message());
    assert_eq!(
        vigo_common::net::shedding::retry_after(&shed),
        Some(Duration::from_millis(300))
    );
    let info = home
        .admin(&addr)
        .get_envoy(vigo_tests::v1::GetEnvoyRequest {
            envoy_id: envoy.id().get(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (info.sequence, info.last_seen_ms),
        (0, info.enrolled_at_ms),
        "nothing was consumed"
    );
    spoke.shutdown().await.unwrap();
}

/// One anonymous stream held open from `source`: an HTTP/2 connection over TLS without
/// a client certificate, a reflection call whose request half stays open. `None` when
/// the hub refused the connection or the call.
async fn held_reflection_stream(
    source: Ipv4Addr,
    hub: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Option<h2::RecvStream> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::from((source, 0))).ok()?;
    let tcp = socket.connect(hub).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").ok()?;
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .ok()?;
    let (mut sender, connection) = h2::client::handshake(tls).await.ok()?;
    tokio::spawn(connection);
    let request = http::Request::post(format!(
        "https://{hub}/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .ok()?;
    let (answer, send) = sender.send_request(request, false).ok()?;
    let answer = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .ok()?
        .ok()?;
    // The request half stays open for as long as the stream lives.
    std::mem::forget(send);
    (answer.status() == 200).then(|| answer.into_body())
}

/// N1: one host cannot take the hub's connections. From 127.0.0.2, 300 TLS connections
/// without a certificate each hold a reflection stream open and send nothing more;
/// the hub keeps only that source's share of them (50 here), an envoy from 127.0.0.1
/// enrolls and checks in and an admin call with a token works meanwhile, and every
/// held stream is closed at the anonymous connections' maximum age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_take_the_hubs_connections() {
    vigo_common::procfs::raise_fd_limit();
    let cluster = Arc::new(
        Cluster::start_custom(
            1,
            &["spoke-a"],
            Cluster::FAST_RAFT,
            "{interval: 5m}",
            "connections: {first_request_timeout: 2s, anonymous_connections_per_source: 50, \
             max_anonymous_connections: 200, anonymous_max_age: 3s}\n",
        )
        .await,
    );
    let hub: SocketAddr = cluster.hub_address(0).parse().unwrap();
    let attacker = Ipv4Addr::new(127, 0, 0, 2);
    let tls = anonymous(&cluster.ca_pem());
    let mut held = Vec::new();
    for _ in 0..300 {
        if let Some(stream) = held_reflection_stream(attacker, hub, tls.clone()).await {
            held.push(stream);
        }
    }
    println!(
        "anonymous streams the hub kept from one source: {}",
        held.len()
    );
    assert!(
        !held.is_empty() && held.len() <= 50,
        "{} held: the source's share is 50",
        held.len()
    );

    // Meanwhile, from another address: an enrollment, a check-in and an admin call.
    let (identity, enrolled) = cluster.enroll(0, "web-1").await.expect("enrolled");
    let mut envoy = vigo_tests::TestEnvoy::new(identity, &enrolled.spoke_address);
    envoy.check_in().await.expect("checked in");
    let status = cluster
        .admin(0)
        .status(vigo_proto::admin::v1::StatusRequest::default())
        .await;
    assert!(status.is_ok(), "{status:?}");

    // Every held stream ends: its connection reached its maximum age (3 s), was told
    // to go away, and was dropped after its grace period.
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        for mut stream in held {
            while let Some(Ok(_)) = stream.data().await {}
        }
    })
    .await;
    assert!(ended.is_ok(), "held anonymous streams were not closed");
}

/// N4: one enrolled machine cannot get its spoke to shed the others. Its envoy sends
/// 200 check-ins at once, each with a random signature: beyond its own share and,
/// once its first bad signature is seen, beyond one a second, it is refused before any
/// verification; its bad signatures never share a batch with honest ones; 30 honest
/// envoys checking in meanwhile are all answered. Revoked, it is refused at admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_envoy_cannot_get_its_spoke_to_shed_the_others() {
    init();
    let home = SpokeHome::new();
    let spoke = home.start().await;
    let addr = spoke.addr.to_string();
    let mut attacker = home.enroll(&addr, "rogue-1").await;
    attacker.check_in().await.expect("an honest first check-in");
    let mut honest = Vec::new();
    for i in 0..30 {
        honest.push(home.enroll(&addr, &format!("honest-{i}")).await);
    }

    let forged: Vec<_> = (0..200)
        .map(|_| {
            let mut request = attacker.check_in_request();
            request.signature = rand::random::<[u8; 64]>().to_vec().into();
            request
        })
        .collect();
    let attacks = forged.into_iter().map(|request| {
        let mut gateway = attacker.gateway.clone();
        async move { gateway.check_in(request).await.map(|_| ()) }
    });
    let honest_calls = honest.iter_mut().map(|e| e.check_in());
    let (refusals, answers) = tokio::join!(
        futures::future::join_all(attacks),
        futures::future::join_all(honest_calls)
    );
    let count = |code: Code| {
        refusals
            .iter()
            .filter(|r| r.as_ref().err().map(|s| s.code()) == Some(code))
            .count()
    };
    let (verified, shed) = (count(Code::Unauthenticated), count(Code::ResourceExhausted));
    println!("200 forged check-ins: {verified} verified and refused, {shed} shed before any work");
    assert_eq!(verified + shed, 200, "{refusals:?}");
    assert!(
        verified <= vigo_spoke::fairness::MAX_IN_FLIGHT as usize + 1,
        "{verified} forged signatures were verified"
    );
    for answer in answers {
        answer.expect("an honest envoy is answered");
    }

    // Revoked: refused before its body is read, whatever it sends.
    let mut admin = home.admin(&addr);
    admin
        .revoke_envoy(vigo_tests::v1::RevokeEnvoyRequest {
            envoy_id: attacker.id().get(),
            reason: "rogue".into(),
        })
        .await
        .expect("revoked");
    let refused = attacker
        .gateway
        .clone()
        .check_in(attacker.check_in_request())
        .await;
    assert_eq!(
        refused.map(|_| ()).unwrap_err().code(),
        Code::PermissionDenied
    );
    drop(spoke);
}
