//! The real `vigo-spoke` and `vigo-sim` binaries as child processes: crashes, restarts,
//! signals, and the simulator end to end.

use std::process::Command;
use std::time::{Duration, Instant};

use vigo_proto::v1 as pb;
use vigo_tests::{HomeOptions, SpokeHome, TestEnvoy, binary, eventually, init};

async fn info(home: &SpokeHome, envoy: &TestEnvoy) -> pb::EnvoyInfo {
    let addr = home.address();
    eventually(Duration::from_secs(20), || {
        let mut admin = home.admin(&addr);
        let id = envoy.id().get();
        async move { admin.get_envoy(pb::GetEnvoyRequest { envoy_id: id }).await }
    })
    .await
    .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_spoke_restarts_with_every_envoy_and_at_most_one_flush_window_lost() {
    init();
    let flush = Duration::from_millis(500);
    let home = SpokeHome::with(HomeOptions {
        flush_interval: flush,
        ..Default::default()
    });
    let spoke = home.spawn();
    let addr = home.address();

    let mut envoys = Vec::new();
    for i in 0..12 {
        envoys.push(home.enroll(&addr, &format!("web-{i:02}")).await);
    }
    // Round one, then more than a flush window of quiet: round one must survive a crash.
    let mut round_one = Vec::new();
    for e in envoys.iter_mut().take(8) {
        round_one.push(vigo_common::time::now_ms());
        e.check_in().await.unwrap();
        e.report(1, &[pb::Outcome::Ok]).await.unwrap();
    }
    tokio::time::sleep(flush * 3).await;
    // Round two, and crash at once: this window may be lost, nothing older may.
    let mut round_two = Vec::new();
    for e in envoys.iter_mut().take(8) {
        e.check_in().await.unwrap();
        round_two.push(vigo_common::time::now_ms());
    }
    spoke.crash();

    let spoke = home.spawn();
    assert!(
        spoke.log_text().contains("envoys=12"),
        "all enrolled envoys rehydrated:\n{}",
        spoke.log_text()
    );
    for (i, e) in envoys.iter().enumerate() {
        let got = info(&home, e).await;
        assert!(!got.revoked);
        if i < 8 {
            assert!(
                got.last_seen_ms >= round_one[i],
                "envoy {i}: a check-in older than one flush window was lost"
            );
            assert!(got.last_seen_ms <= round_two[i]);
            assert_eq!(
                got.status,
                pb::ComplianceStatus::Converged as i32,
                "reports are written through"
            );
            assert_eq!(got.stored_runs, 1);
        } else {
            assert_eq!(got.status, pb::ComplianceStatus::NoData as i32);
        }
    }
    // They carry on where they were: their connections come back and sequences keep
    // increasing past what the restart restored; the restarted spoke signs the same
    // bundles (same policy, same generation), so those holding one get no change.
    for (i, e) in envoys.iter_mut().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match e.check_in().await {
                Ok(r) => {
                    let unchanged =
                        matches!(r.answer, Some(pb::check_in_response::Answer::NoChange(_)));
                    break assert_eq!(unchanged, i < 8, "envoy {i}: {:?}", r.answer);
                }
                Err(s) if Instant::now() < deadline => {
                    let _ = s;
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(s) => panic!("check-in after restart: {s}"),
            }
        }
    }
    drop(spoke);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_every_dirty_envoy_before_exit() {
    init();
    // A flush interval far longer than the test: only the shutdown flush can save it.
    let home = SpokeHome::with(HomeOptions {
        flush_interval: Duration::from_secs(3600),
        ..Default::default()
    });
    let spoke = home.spawn();
    let addr = home.address();
    let mut envoy = home.enroll(&addr, "db-01").await;
    envoy.check_in().await.unwrap();
    let seen = info(&home, &envoy).await;
    let status = spoke.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");

    let spoke = home.spawn();
    let restored = info(&home, &envoy).await;
    assert_eq!(restored.last_seen_ms, seen.last_seen_ms);
    assert_eq!(restored.sequence, seen.sequence);
    assert_eq!(restored.traits, seen.traits);
    assert!(spoke.log_text().contains("envoys=1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_policy_and_refuses_a_broken_one() {
    init();
    let home = SpokeHome::new();
    let spoke = home.spawn();
    let addr = home.address();
    let mut envoy = home.enroll(&addr, "web-01").await;
    envoy.check_in().await.unwrap();
    let original = envoy.fingerprint().unwrap();

    home.write_policy(
        "hostcrates.yaml",
        "hostcrates:\n  - name: web\n    match: 'web-*'\n    roles: [nope]\n",
    );
    spoke.signal(libc::SIGHUP);
    spoke.wait_for_log("policy rejected", Duration::from_secs(10));
    let r = envoy.check_in().await.unwrap();
    assert!(matches!(
        r.answer,
        Some(pb::check_in_response::Answer::NoChange(_))
    ));

    // Patterns that parse one by one but that the hostname matcher cannot build
    // together: refused like any invalid policy, and the spoke keeps serving.
    let patterns: Vec<String> = (0..4_000)
        .map(|i| format!("'{}-{i}'", "?".repeat(200)))
        .collect();
    home.write_policy(
        "hostcrates.yaml",
        &format!(
            "hostcrates:\n  - name: web\n    match: [{}]\n    roles: [base]\n",
            patterns.join(", ")
        ),
    );
    spoke.signal(libc::SIGHUP);
    spoke.wait_for_log_count("policy rejected", 2, Duration::from_secs(30));
    let r = envoy.check_in().await.expect("the spoke still serves");
    assert!(matches!(
        r.answer,
        Some(pb::check_in_response::Answer::NoChange(_))
    ));

    home.write_policy(
        "hostcrates.yaml",
        "hostcrates:\n  - name: web\n    match: 'web-*'\n    roles: [base]\n",
    );
    spoke.signal(libc::SIGHUP);
    spoke.wait_for_log("policy reloaded", Duration::from_secs(10));
    envoy.check_in().await.unwrap();
    assert_ne!(
        envoy.fingerprint().unwrap(),
        original,
        "the new policy is served"
    );
    assert_eq!(envoy.bundle.as_ref().unwrap().modules.len(), 2, "base only");
}

#[test]
fn simulator_drives_envoys_and_reuses_its_identities() {
    init();
    let home = SpokeHome::with(HomeOptions {
        allow_relay: true,
        ..Default::default()
    });
    let spoke = home.spawn();
    let identities = home.path("sim-identities.json");
    let run = |extra: &[&str]| {
        let out = Command::new(binary("vigo-sim"))
            .args(["--target", &home.address(), "--ca"])
            .arg(home.path("pki/ca.pem"))
            .args([
                "--token",
                &home.tokens.fleet,
                "--envoys",
                "30",
                "--interval",
                "300ms",
            ])
            .args([
                "--duration",
                "3s",
                "--ramp",
                "500ms",
                "--progress",
                "0s",
                "--json",
            ])
            .arg("--identities")
            .arg(&identities)
            .args(["--spoke-pid", &spoke.pid().to_string()])
            .args(extra)
            .output()
            .expect("run vigo-sim");
        assert!(
            out.status.success(),
            "vigo-sim failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines().last().unwrap_or_default().to_string()
    };
    let first = run(&[]);
    let field = |json: &str, key: &str| -> f64 {
        let at = json
            .find(&format!("\"{key}\":"))
            .unwrap_or_else(|| panic!("{key} in {json}"));
        let rest = &json[at + key.len() + 3..];
        let end = rest.find([',', '}']).unwrap();
        rest[..end].parse().unwrap_or(-1.0)
    };
    assert_eq!(field(&first, "enrolled_now"), 30.0, "{first}");
    assert_eq!(
        field(&first, "reports"),
        30.0,
        "one report per bundle: {first}"
    );
    assert!(field(&first, "no_change") > 30.0, "{first}");
    assert!(first.contains("\"failed\":{}"), "{first}");
    assert!(field(&first, "spoke_cpu_us_per_checkin") > 0.0, "{first}");

    let relay_cert = home.path("pki/relay.pem");
    let relay_key = home.path("pki/relay.key");
    let second = run(&[
        "--connections",
        "3",
        "--relay-cert",
        relay_cert.to_str().unwrap(),
        "--relay-key",
        relay_key.to_str().unwrap(),
    ]);
    assert_eq!(
        field(&second, "enrolled_now"),
        0.0,
        "identities reused: {second}"
    );
    assert_eq!(field(&second, "connections"), 3.0);
    assert!(second.contains("\"failed\":{}"), "{second}");
    assert!(field(&second, "checkins_ok") > 30.0, "{second}");
    let started = Instant::now();
    drop(spoke);
    assert!(started.elapsed() < Duration::from_secs(10));
}
