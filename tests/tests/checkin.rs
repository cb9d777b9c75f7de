//! A spoke in this process, reached over real TLS sockets: the check-in cycle, policy
//! changes, and every way a request is refused.

use std::time::Duration;

use prost::Message;
use tonic::Code;
use vigo_common::signing::Domain;
use vigo_common::signing::generate_key;
use vigo_envoy::client;
use vigo_proto::v1 as pb;
use vigo_tests::{SpokeHome, TestEnvoy, init};

fn is_bundle(r: &pb::CheckInResponse) -> bool {
    matches!(r.answer, Some(pb::check_in_response::Answer::Bundle(_)))
}

fn is_no_change(r: &pb::CheckInResponse) -> bool {
    matches!(r.answer, Some(pb::check_in_response::Answer::NoChange(_)))
}

async fn envoy_info(home: &SpokeHome, addr: &str, envoy: &TestEnvoy) -> pb::EnvoyInfo {
    home.admin(addr)
        .get_envoy(pb::GetEnvoyRequest {
            envoy_id: envoy.id().get(),
        })
        .await
        .expect("GetEnvoy")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_check_in_bundle_report_then_no_change() {
    init();
    let home = SpokeHome::new();
    let spoke = home.start().await;
    let addr = spoke.addr.to_string();
    let mut envoy = home.enroll(&addr, "web-01").await;

    let first = envoy.check_in().await.unwrap();
    assert!(is_bundle(&first), "a new envoy gets its bundle");
    let bundle = envoy.bundle.clone().unwrap();
    assert_eq!(bundle.manifest.hostcrate, "web");
    assert_eq!(bundle.modules.len(), 3, "motd, vigo-layout, webapp in full");
    assert_eq!(first.interval_ms, 60_000);

    let info = envoy_info(&home, &addr, &envoy).await;
    assert_eq!(info.status, pb::ComplianceStatus::NoData as i32);
    assert_eq!(info.traits.get("os").map(String::as_str), Some("debian"));

    let ack = envoy
        .report(1, &[pb::Outcome::Changed, pb::Outcome::Ok])
        .await
        .unwrap();
    assert_eq!(ack.status, pb::ComplianceStatus::Converged as i32);
    assert!(!ack.duplicate);
    let again = envoy.report(1, &[pb::Outcome::Changed]).await.unwrap();
    assert!(again.duplicate, "a retried report is stored once");

    let second = envoy.check_in().await.unwrap();
    assert!(is_no_change(&second), "nothing changed: {second:?}");
    assert!(!second.send_traits, "traits are known");
    assert!(
        second.encoded_len() < 64,
        "the no-change answer is small: {} bytes",
        second.encoded_len()
    );
    let info = envoy_info(&home, &addr, &envoy).await;
    assert_eq!(info.status, pb::ComplianceStatus::Converged as i32);
    assert_eq!(info.stored_runs, 1);
    assert_eq!(info.hostcrate, "web");
    assert_eq!(
        info.bundle_fingerprint.as_ref(),
        bundle.fingerprint.as_slice()
    );

    // A second run in a row with changes under the same bundle.
    let relapse = envoy.report(2, &[pb::Outcome::Changed]).await.unwrap();
    assert_eq!(relapse.status, pb::ComplianceStatus::Relapsed as i32);
    spoke.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_change_sends_new_bundle_with_unchanged_modules_as_stubs() {
    let (home, spoke, _, mut envoy) = SpokeHome::with_envoy("web-02").await;
    let old = envoy.fingerprint().unwrap();
    assert!(is_no_change(&envoy.check_in().await.unwrap()));

    home.write_policy(
        "configcrates/motd.yaml",
        "vars:\n  greeting: Changed greeting\nresources:\n  - id: motd\n    type: file\n    path: /tmp/vigo-demo/etc/motd\n    content: \"{{ vars.greeting }}\"\n",
    );
    spoke.reload_policy().await.expect("valid policy reloads");

    let response = envoy.check_in().await.unwrap();
    let Some(pb::check_in_response::Answer::Bundle(delivery)) = &response.answer else {
        panic!("policy changed, expected a bundle: {response:?}");
    };
    let sent: Vec<&str> = delivery.modules.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(sent, ["motd"], "only the changed module travels in full");
    assert_ne!(envoy.fingerprint().unwrap(), old);
    let bundle = envoy.bundle.as_ref().unwrap();
    assert_eq!(bundle.manifest.variables["greeting"], "Changed greeting");
    assert_eq!(
        bundle.modules.len(),
        3,
        "stubs resolved from the envoy's cache"
    );
    assert!(is_no_change(&envoy.check_in().await.unwrap()));
    spoke.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_policy_reload_leaves_previous_bundles_serving() {
    let (home, spoke, addr, mut envoy) = SpokeHome::with_envoy("web-03").await;
    let before = envoy.fingerprint().unwrap();

    home.write_policy(
        "roles/webserver.yaml",
        "configcrates: [webapp, missing-crate]\n",
    );
    let errors = spoke
        .reload_policy()
        .await
        .expect_err("broken policy is refused");
    assert!(
        errors
            .to_string()
            .contains("unknown configcrate \"missing-crate\""),
        "{errors}"
    );
    assert!(
        is_no_change(&envoy.check_in().await.unwrap()),
        "the envoy keeps the bundle it has"
    );
    let mut newcomer = home.enroll(&addr, "web-04").await;
    newcomer.check_in().await.unwrap();
    assert_eq!(
        newcomer.fingerprint().unwrap(),
        before,
        "new envoys get the old policy"
    );
    spoke.shutdown().await.unwrap();
}

/// Sends `request` over `envoy`'s connection and checks the exact status code.
async fn refused(envoy: &mut TestEnvoy, request: pb::SignedRequest, code: Code, needle: &str) {
    let status = envoy
        .send(request)
        .await
        .expect_err("request must be refused");
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(
        status.message().contains(needle),
        "{:?} does not mention {needle:?}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_has_its_status_and_writes_nothing() {
    init();
    let home = SpokeHome::new();
    let spoke = home.start().await;
    let addr = spoke.addr.to_string();
    let mut a = home.enroll(&addr, "web-10").await;
    let mut b = home.enroll(&addr, "web-11").await;
    a.check_in().await.unwrap();
    b.check_in().await.unwrap();
    let baseline = envoy_info(&home, &addr, &a).await;

    // Bad signature.
    let mut req = a.check_in_request();
    let mut sig = req.signature.to_vec();
    sig[10] ^= 1;
    req.signature = sig.into();
    refused(&mut a, req, Code::Unauthenticated, "signature").await;

    // Signature of the wrong length.
    let mut req = a.check_in_request();
    req.signature = req.signature.slice(..10);
    refused(&mut a, req, Code::InvalidArgument, "signature").await;

    // Another envoy's request over this envoy's certificate.
    let req = b.check_in_request();
    refused(&mut a, req, Code::PermissionDenied, "belongs to envoy").await;

    // Replay: the same signed request twice.
    let req = a.check_in_request();
    a.send(req.clone())
        .await
        .expect("first delivery is accepted");
    let accepted = envoy_info(&home, &addr, &a).await;
    refused(&mut a, req, Code::FailedPrecondition, "replayed").await;

    // Stale timestamp, correctly signed.
    let body = pb::CheckInBody {
        timestamp_ms: vigo_common::time::now_ms() - 3_600_000,
        ..a.body()
    };
    let req = a.seal(Domain::CheckIn, &body);
    refused(
        &mut a,
        req,
        Code::FailedPrecondition,
        "off the spoke's clock",
    )
    .await;

    // A timestamp at the end of time: refused, not an arithmetic overflow.
    let body = pb::CheckInBody {
        timestamp_ms: 1 << 63,
        ..a.body()
    };
    let req = a.seal(Domain::CheckIn, &body);
    refused(
        &mut a,
        req,
        Code::FailedPrecondition,
        "off the spoke's clock",
    )
    .await;

    // Oversized body (over checkin.max_body, under the transport limit).
    let body = pb::CheckInBody {
        bundle_fingerprint: vec![0u8; 70 << 10].into(),
        ..a.body()
    };
    let req = a.seal(Domain::CheckIn, &body);
    refused(&mut a, req, Code::ResourceExhausted, "limit").await;

    // Malformed body, correctly signed.
    let junk = [0xff, 0xff, 0xff, 0xff, 0x0f];
    let garbage = pb::SignedRequest {
        body: bytes::Bytes::copy_from_slice(&junk),
        signature: vigo_common::signing::sign(&a.identity.key, Domain::CheckIn, &junk)
            .to_bytes()
            .to_vec()
            .into(),
    };
    refused(&mut a, garbage, Code::InvalidArgument, "request body").await;

    // A signature made for a run report is not a check-in signature.
    let body = a.body();
    let req = a.seal(Domain::ReportRun, &body);
    refused(&mut a, req, Code::Unauthenticated, "signature").await;

    // Traits that do not match the signed hash.
    let mut other_traits = a.traits.clone();
    other_traits.insert("os".into(), "plan9".into());
    let body = pb::CheckInBody {
        traits: Some(pb::Traits {
            values: other_traits,
        }),
        ..a.body()
    };
    let req = a.seal(Domain::CheckIn, &body);
    refused(&mut a, req, Code::InvalidArgument, "traits_hash").await;

    // None of that changed the envoy.
    let after = envoy_info(&home, &addr, &a).await;
    assert_eq!(
        after.sequence, accepted.sequence,
        "only the accepted check-in moved the sequence"
    );
    assert_eq!(after.last_seen_ms, accepted.last_seen_ms);
    assert_eq!(after.traits, baseline.traits);
    assert_eq!(after.stored_runs, 0);

    // Unknown envoy: a valid certificate for an id this spoke never enrolled.
    let mut stranger = home.stranger(&addr);
    let req = stranger.check_in_request();
    refused(&mut stranger, req, Code::NotFound, "not enrolled").await;

    // Revoked envoy.
    let revoked = home
        .admin(&addr)
        .revoke_envoy(pb::RevokeEnvoyRequest {
            envoy_id: b.id().get(),
            reason: "test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked_now);
    let before_revoked = envoy_info(&home, &addr, &b).await;
    let req = b.check_in_request();
    refused(&mut b, req, Code::PermissionDenied, "revoked").await;
    assert_eq!(
        envoy_info(&home, &addr, &b).await.sequence,
        before_revoked.sequence
    );

    // No client certificate at all: the enrollment-only TLS identity.
    let anonymous =
        vigo_common::tls::client_config(&home.ca_pem(), None, &[vigo_common::pki::Role::Spoke])
            .unwrap();
    let mut anon = client::gateway(&addr, std::sync::Arc::new(anonymous)).unwrap();
    let status = client::send_check_in(&mut anon, a.check_in_request())
        .await
        .expect_err("no certificate, no check-in");
    assert_eq!(status.code(), Code::Unauthenticated);

    // An envoy certificate cannot administer.
    let mut as_envoy = vigo_proto::v1::spoke_admin_client::SpokeAdminClient::new(
        vigo_common::tls::channel(
            &addr,
            a.identity.tls_config().unwrap(),
            Duration::from_secs(5),
        )
        .unwrap(),
    );
    let status = as_envoy
        .revoke_envoy(pb::RevokeEnvoyRequest {
            envoy_id: a.id().get(),
            reason: String::new(),
        })
        .await
        .expect_err("envoys cannot revoke");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(!envoy_info(&home, &addr, &a).await.revoked);

    let stats = home
        .admin(&addr)
        .stats(pb::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.envoys, stats.revoked), (2, 1));
    spoke.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_rejections_have_their_status_and_spend_nothing() {
    init();
    let home = SpokeHome::new();
    let spoke = home.start().await;
    let addr = spoke.addr.to_string();
    let ca = home.ca_pem();
    let enroll = |token: String, hostname: &'static str, key| {
        let (addr, ca) = (addr.clone(), ca.clone());
        async move { client::enroll(&addr, &ca, &token, hostname, key).await }
    };
    let code = |r: Result<_, client::ClientError>| match r {
        Err(client::ClientError::Rpc { status, .. }) => {
            (status.code(), status.message().to_string())
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("enrollment should have been refused"),
    };

    let (c, m) = code(enroll("vgt_wrong".into(), "db-1", generate_key()).await);
    assert_eq!(c, Code::Unauthenticated, "{m}");

    enroll(home.tokens.one_shot.clone(), "db-1", generate_key())
        .await
        .expect("a one-shot token works once");
    let (c, m) = code(enroll(home.tokens.one_shot.clone(), "db-2", generate_key()).await);
    assert_eq!(c, Code::PermissionDenied, "{m}");
    assert!(m.contains("used up"), "{m}");

    let (c, m) = code(enroll(home.tokens.fleet.clone(), "bad host!", generate_key()).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");

    // A known hostname with a new key needs an allow_rekey token.
    let (c, m) = code(enroll(home.tokens.fleet.clone(), "db-1", generate_key()).await);
    assert_eq!(c, Code::FailedPrecondition, "{m}");
    assert!(m.contains("allow_rekey"), "{m}");

    // A weak (small-order) public key.
    let mut weak = [0u8; 32];
    weak[0] = 1;
    let mut raw = vigo_proto::v1::enrollment_client::EnrollmentClient::new(
        vigo_common::tls::channel(
            &addr,
            std::sync::Arc::new(
                vigo_common::tls::client_config(&ca, None, &[vigo_common::pki::Role::Spoke])
                    .unwrap(),
            ),
            Duration::from_secs(5),
        )
        .unwrap(),
    );
    let status = raw
        .enroll(pb::EnrollRequest {
            token: home.tokens.fleet.clone(),
            hostname: "db-3".into(),
            public_key: weak.to_vec().into(),
            ..Default::default()
        })
        .await
        .expect_err("weak key refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("weak"), "{}", status.message());

    // A TLS key vouched for by another key than the one enrolled, a P-256 CSR without
    // its proof, and (as an earlier release sends it) an Ed25519 CSR of another key.
    let key = generate_key();
    let tls = vigo_common::pki::envoy_tls_request(&key).unwrap();
    let enrolled = generate_key().verifying_key().to_bytes().to_vec();
    // A key proof that does not verify is a bad signature: UNAUTHENTICATED, as every
    // other; a CSR of another key is malformed.
    for (csr_der, key_proof, code) in [
        (
            tls.csr_der.clone(),
            tls.key_proof.clone(),
            Code::Unauthenticated,
        ),
        (tls.csr_der.clone(), Vec::new(), Code::Unauthenticated),
        (
            vigo_common::pki::legacy_envoy_csr(&key).unwrap(),
            Vec::new(),
            Code::InvalidArgument,
        ),
    ] {
        let status = raw
            .enroll(pb::EnrollRequest {
                token: home.tokens.fleet.clone(),
                hostname: "db-4".into(),
                public_key: enrolled.clone().into(),
                csr_der: csr_der.into(),
                key_proof: key_proof.into(),
            })
            .await
            .expect_err("mismatched CSR refused");
        assert_eq!(status.code(), code, "{status:?}");
    }

    let stats = home
        .admin(&addr)
        .stats(pb::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.envoys, 1, "only db-1 was enrolled");

    // Retrying a successful enrollment returns the same envoy and spends nothing, even
    // with a spent one-shot token.
    let db5_key = generate_key();
    let (first, _) = enroll(home.tokens.fleet.clone(), "db-5", db5_key.clone())
        .await
        .unwrap();
    let (again, response) = enroll(home.tokens.fleet.clone(), "db-5", db5_key)
        .await
        .unwrap();
    assert_eq!(first.envoy_id, again.envoy_id);
    assert!(response.already_enrolled);

    // Re-key with an allow_rekey token: new id, the old one revoked.
    let (rebuilt, _) = enroll(home.tokens.rekey.clone(), "db-1", generate_key())
        .await
        .unwrap();
    let stats = home
        .admin(&addr)
        .stats(pb::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.envoys, stats.revoked), (3, 1));
    let mut rebuilt = TestEnvoy::new(rebuilt, &addr);
    assert!(
        rebuilt.check_in().await.is_ok(),
        "the re-keyed envoy checks in"
    );
    spoke.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_push_resends_the_bundle_once() {
    let (home, spoke, addr, mut envoy) = SpokeHome::with_envoy("web-20").await;
    assert!(is_no_change(&envoy.check_in().await.unwrap()));
    let marked = home
        .admin(&addr)
        .force_push(pb::ForcePushRequest {
            envoy_ids: vec![envoy.id().get()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .marked;
    assert_eq!(marked, 1);
    assert!(is_bundle(&envoy.check_in().await.unwrap()), "forced bundle");
    assert!(
        is_no_change(&envoy.check_in().await.unwrap()),
        "forced once"
    );
    let unknown = home
        .admin(&addr)
        .force_push(pb::ForcePushRequest {
            envoy_ids: vec![envoy.id().get(), 12345],
            ..Default::default()
        })
        .await
        .expect_err("unknown envoy in the batch");
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(
        is_no_change(&envoy.check_in().await.unwrap()),
        "a refused batch marks nobody"
    );
    spoke.shutdown().await.unwrap();
}
