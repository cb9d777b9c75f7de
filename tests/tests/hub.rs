//! Three hub nodes and three spokes in this process, on loopback, with real redb files
//! and mutual TLS: elections, enrollment storms, failover, partitions, restarts and
//! config publishing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tonic::Code;
use vigo_envoy::client::ClientError;
use vigo_proto::admin::v1 as api;
use vigo_proto::v1 as pb;
use vigo_tests::cluster::Cluster;

const SPOKES: &[&str] = &["spoke-a", "spoke-b", "spoke-c"];

fn code(r: Result<impl Sized, ClientError>) -> Code {
    match r {
        Err(ClientError::Rpc { status, .. }) => status.code(),
        Err(e) => panic!("not an RPC error: {e}"),
        Ok(_) => Code::Ok,
    }
}

/// Enrolls `hosts` through the hub nodes in turn, `parallel` at a time, retrying what
/// fails while a leader is being elected. Returns (hostname, envoy id) of each success.
async fn storm(cluster: &Arc<Cluster>, hosts: Vec<String>, parallel: usize) -> Vec<(String, u64)> {
    let mut tasks = JoinSet::new();
    let mut done = Vec::new();
    let mut queue = hosts.into_iter().enumerate();
    loop {
        while tasks.len() < parallel {
            let Some((n, host)) = queue.next() else { break };
            let cluster = cluster.clone();
            tasks.spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut attempt = n;
                loop {
                    let hubs = cluster.running_hubs();
                    let hub = hubs[attempt % hubs.len()];
                    match cluster.enroll(hub, &host).await {
                        Ok((id, _)) => return (host, id.envoy_id.get()),
                        Err(e) if Instant::now() < deadline => {
                            let _ = e;
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => panic!("{host} never enrolled: {e}"),
                    }
                }
            });
        }
        match tasks.join_next().await {
            Some(r) => done.push(r.expect("enrollment task")),
            None => return done,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hubs_pin_a_thousand_envoys_identically_along_the_ring() {
    let cluster = Arc::new(Cluster::start(3, SPOKES).await);
    let leader = cluster.leader().await;
    let hosts: Vec<String> = (0..1000)
        .map(|i| format!("web-{i:04}.example.com"))
        .collect();
    let started = Instant::now();
    let enrolled = storm(&cluster, hosts, 32).await;
    let elapsed = started.elapsed();
    assert_eq!(enrolled.len(), 1000);

    cluster
        .wait_until(Duration::from_secs(30), "every pin on every hub", |s| {
            s.pins.len() == 1000
        })
        .await;
    let states: Vec<_> = (0..3).map(|i| cluster.state(i)).collect();
    assert_eq!(states[0].pins, states[1].pins, "hub 1 and hub 2 agree");
    assert_eq!(states[0].pins, states[2].pins, "hub 1 and hub 3 agree");

    let counts = states[leader].pin_counts();
    let ideal = 1000.0 / 3.0;
    let worst = counts
        .values()
        .map(|&n| ((n as f64 - ideal) / ideal).abs())
        .fold(0.0, f64::max);
    println!(
        "FIGURE enroll_spread={counts:?} worst_deviation={:.1}% enrollments_per_s={:.0}",
        worst * 100.0,
        1000.0 / elapsed.as_secs_f64()
    );
    for (spoke, n) in &counts {
        assert!(
            (200..=470).contains(n),
            "{spoke} got {n} of 1000: {counts:?}"
        );
    }
    // Every spoke holds exactly the envoys pinned to it.
    for (j, spoke) in cluster.spokes.iter().enumerate() {
        let spoke = spoke.as_ref().unwrap();
        assert_eq!(spoke.fleet.len(), counts[SPOKES[j]], "{}", SPOKES[j]);
    }
    for (host, id) in enrolled.iter().take(50) {
        let pin = &states[0].pins[id];
        assert_eq!(&pin.hostname, host);
        let j = SPOKES.iter().position(|s| *s == pin.spoke).unwrap();
        let record = cluster.spokes[j]
            .as_ref()
            .unwrap()
            .fleet
            .get(vigo_common::EnvoyId::new(*id).unwrap());
        assert!(record.is_some(), "{host} is on its pinned spoke");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_storm_loses_no_acknowledged_enrollment() {
    let cluster = Arc::new(Cluster::start(3, SPOKES).await);
    let leader = cluster.leader().await;
    let hosts: Vec<String> = (0..400).map(|i| format!("storm-{i:03}")).collect();
    let storm_task = {
        let c = cluster.clone();
        tokio::spawn(async move { storm(&c, hosts, 16).await })
    };
    // Let the storm get going, then take the leader down in the middle of it.
    cluster
        .wait_until(Duration::from_secs(30), "some enrollments", |s| {
            s.pins.len() >= 100
        })
        .await;
    let killed_at = Instant::now();
    cluster.stop_hub(leader).await;
    let acknowledged = storm_task.await.expect("storm");
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    println!(
        "FIGURE leader_failover_to_election_ms={}",
        killed_at.elapsed().as_millis()
    );

    // Every acknowledged enrollment is pinned on both surviving hubs, with the same id.
    assert_eq!(
        acknowledged.len(),
        400,
        "the rest succeeded after the election"
    );
    cluster
        .wait_until(Duration::from_secs(30), "all pins", |s| s.pins.len() >= 400)
        .await;
    for i in cluster.running_hubs() {
        let state = cluster.state(i);
        for (host, id) in &acknowledged {
            let pin = state
                .pins
                .get(id)
                .unwrap_or_else(|| panic!("{host} lost on hub {}", i + 1));
            assert_eq!(&pin.hostname, host);
        }
        assert_eq!(state.pins.len(), 400, "nothing pinned twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_commits_again_after_an_election() {
    let cluster = Arc::new(Cluster::start(3, SPOKES).await);
    cluster.enroll(0, "warm-up").await.unwrap();
    let leader = cluster.leader().await;
    let killed_at = Instant::now();
    cluster.stop_hub(leader).await;
    let survivor = cluster.running_hubs()[0];
    loop {
        if cluster.enroll(survivor, "after-failover").await.is_ok() {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "no commit after failover"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "FIGURE failover_kill_to_first_commit_ms={}",
        killed_at.elapsed().as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_stopped_and_restarted_keep_their_state() {
    let cluster = Arc::new(Cluster::start(3, SPOKES).await);
    let hosts: Vec<String> = (0..60).map(|i| format!("keep-{i:02}")).collect();
    storm(&cluster, hosts, 8).await;
    let policy = vigo_tests::repo_root().join("deploy/policy");
    let version = cluster.publish(0, &policy, "first").await.unwrap();
    cluster
        .wait_until(Duration::from_secs(10), "config everywhere", |s| {
            !s.current_config.is_empty()
        })
        .await;
    let before = cluster.state(0);
    for i in 0..3 {
        cluster.stop_hub(i).await;
    }
    for i in 0..3 {
        cluster.start_hub(i).await;
    }
    cluster.leader().await;
    cluster
        .wait_until(Duration::from_secs(30), "state replayed", |s| {
            s.pins.len() == 60
        })
        .await;
    for i in 0..3 {
        let after = cluster.state(i);
        assert_eq!(after.pins, before.pins, "pins on hub {}", i + 1);
        assert_eq!(after.tokens, before.tokens);
        assert_eq!(after.current_config, version.version);
        assert_eq!(after.configs, before.configs);
        assert_eq!(after.ca_cert_pem, before.ca_cert_pem);
    }
    // And it still commits.
    cluster.enroll(1, "after-restart").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_minority_cannot_commit_and_catches_up_when_back() {
    let cluster = Arc::new(Cluster::start(3, SPOKES).await);
    cluster.enroll(0, "before-cut").await.unwrap();
    let leader = cluster.leader().await;
    cluster.hub(leader).isolate(true);

    // The cut-off node still believes it leads, but nothing it proposes commits; what it
    // proposed might still commit (were it to reach a quorum as leader), so the caller
    // is told the outcome is unknown, not that nothing happened.
    let r = cluster.enroll(leader, "on-the-minority").await;
    assert_eq!(code(r), Code::DeadlineExceeded);
    // The majority elects a leader and commits.
    let majority: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if cluster.enroll(majority[0], "on-the-majority").await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the majority never committed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let isolated = cluster.state(leader);
    assert!(!isolated.hostnames.contains_key("on-the-majority"));
    assert!(!isolated.hostnames.contains_key("on-the-minority"));
    let majority_state = cluster.state(majority[0]);
    assert!(
        !majority_state.hostnames.contains_key("on-the-minority"),
        "the minority's write never committed"
    );

    cluster.hub(leader).isolate(false);
    cluster
        .wait_until(Duration::from_secs(30), "the minority caught up", |s| {
            s.hostnames.contains_key("on-the-majority")
        })
        .await;
    assert_eq!(cluster.state(leader).pins, cluster.state(majority[0]).pins);
}

/// The version every running spoke serves.
fn spoke_versions(cluster: &Cluster) -> Vec<Option<String>> {
    cluster
        .spokes
        .iter()
        .map(|s| s.as_ref().map(|s| s.policy.current().version_hex()))
        .collect()
}

/// The bundle generation every running spoke signs with (all equal, or a panic).
fn spoke_generation(cluster: &Cluster) -> u64 {
    let all: Vec<u64> = cluster
        .spokes
        .iter()
        .flatten()
        .map(|s| s.policy.current().bundle_generation)
        .collect();
    assert!(all.windows(2).all(|w| w[0] == w[1]), "{all:?}");
    all[0]
}

async fn wait_for_versions(cluster: &Cluster, want: Vec<Option<String>>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while spoke_versions(cluster) != want {
        assert!(
            Instant::now() < deadline,
            "spokes serve {:?}, want {want:?}",
            spoke_versions(cluster)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reaches_every_spoke_and_a_returning_spoke_catches_up() {
    let mut cluster = Cluster::start(3, SPOKES).await;
    let policy = tempfile::tempdir().unwrap();
    let copy = |greeting: &str| {
        let src = vigo_tests::repo_root().join("deploy/policy");
        for (entry, text) in vigo_common::policy::read_files(&src).unwrap() {
            let to = policy.path().join(entry);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::write(to, text.replace("Managed by Vigo", greeting)).unwrap();
        }
    };
    copy("first");
    let v1 = cluster.publish(1, policy.path(), "one").await.unwrap();
    wait_for_versions(&cluster, vec![Some(v1.version.clone()); 3]).await;
    let g1 = spoke_generation(&cluster);
    assert!(g1 > 0, "a published version carries a generation");

    // spoke-c is down while v2 is published; it pulls v2 when it comes back.
    cluster.stop_spoke(2).await;
    copy("second");
    let v2 = cluster.publish(2, policy.path(), "two").await.unwrap();
    assert_ne!(v1.version, v2.version);
    wait_for_versions(
        &cluster,
        vec![Some(v2.version.clone()), Some(v2.version.clone()), None],
    )
    .await;
    cluster.start_spoke(2).await;
    wait_for_versions(&cluster, vec![Some(v2.version.clone()); 3]).await;
    let g2 = spoke_generation(&cluster);
    assert!(g2 > g1);

    let history = cluster
        .admin(0)
        .config_history(api::ConfigHistoryRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.current, v2.version);
    let versions: Vec<_> = history.versions.iter().map(|v| v.version.clone()).collect();
    assert_eq!(
        versions,
        [v2.version.clone(), v1.version.clone()],
        "newest first"
    );
    assert_eq!(history.versions[0].message, "two");

    cluster
        .admin(0)
        .rollback_config(api::RollbackConfigRequest {
            version: v1.version.clone(),
        })
        .await
        .unwrap();
    wait_for_versions(&cluster, vec![Some(v1.version.clone()); 3]).await;
    // A rollback is a new generation: envoys that took v2 accept v1 again.
    let g3 = spoke_generation(&cluster);
    assert!(g3 > g2, "rolled back to v1 with a generation above v2's");

    // An envoy enrolled through the hub gets the published policy from its spoke.
    let (identity, _) = cluster.enroll(0, "web-7").await.unwrap();
    let mut envoy = vigo_tests::TestEnvoy::new(identity.clone(), &identity.spoke_address);
    envoy.check_in().await.unwrap();
    let bundle = envoy.bundle.as_ref().unwrap();
    assert_eq!(bundle.manifest.variables["greeting"], "first");
    assert_eq!(bundle.manifest.generation, g3);
    assert_eq!(
        bundle.manifest.hostname_patterns,
        ["web-*", "www*.example.com"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_precise_error_and_leaves_no_trace() {
    let cluster = Cluster::start(3, SPOKES).await;
    cluster.enroll(0, "known").await.unwrap();
    let before = cluster.state(0);

    let unknown = vigo_envoy::client::enroll(
        &cluster.hub_address(1),
        &cluster.ca_pem(),
        "vgt_not_a_token",
        "h1",
        vigo_common::signing::generate_key(),
    )
    .await;
    assert_eq!(code(unknown), Code::Unauthenticated);

    let mut raw = pb::enrollment_client::EnrollmentClient::new(cluster.anonymous_channel(2));
    let short_key = raw
        .enroll(pb::EnrollRequest {
            token: cluster.token.clone(),
            hostname: "h2".into(),
            public_key: vec![7u8; 31].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        short_key.code(),
        Code::InvalidArgument,
        "{}",
        short_key.message()
    );
    let mut weak = [0u8; 32];
    weak[0] = 1;
    let weak_key = raw
        .enroll(pb::EnrollRequest {
            token: cluster.token.clone(),
            hostname: "h3".into(),
            public_key: weak.to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(weak_key.code(), Code::InvalidArgument);
    assert!(
        weak_key.message().contains("weak"),
        "{}",
        weak_key.message()
    );

    let bad_override = cluster
        .admin(1)
        .set_overrides(api::SetOverridesRequest {
            overrides: vec![api::Override {
                pattern: "db-*".into(),
                spoke_id: "spoke-z".into(),
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(bad_override.code(), Code::NotFound);
    assert!(bad_override.message().contains("spoke-z"));

    let heavy = cluster
        .admin(0)
        .add_spoke(api::AddSpokeRequest {
            spoke_id: "spoke-z".into(),
            address: "127.0.0.1:1".into(),
            weight: 1 << 24,
        })
        .await
        .unwrap_err();
    assert_eq!(heavy.code(), Code::InvalidArgument, "{}", heavy.message());

    let bad_policy = cluster
        .admin(0)
        .publish_config(api::PublishConfigRequest {
            message: "broken".into(),
            files: [(
                "hostcrates.yaml".to_string(),
                "hostcrates:\n  - name: x\n    match: '*'\n    roles: [ghost]\n".to_string(),
            )]
            .into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_policy.code(), Code::InvalidArgument);
    assert!(
        bad_policy.message().contains("unknown role \"ghost\""),
        "{}",
        bad_policy.message()
    );

    // Parses, but the hostname matcher of its patterns cannot be built: the hub
    // compiles what spokes compile, so this is refused at publish, not on every spoke.
    let patterns: Vec<String> = (0..4_000)
        .map(|i| format!("'{}-{i}'", "?".repeat(200)))
        .collect();
    let uncompilable = cluster
        .admin(0)
        .publish_config(api::PublishConfigRequest {
            message: "too many patterns".into(),
            files: [(
                "hostcrates.yaml".to_string(),
                format!(
                    "hostcrates:\n  - name: x\n    match: [{}]\n    roles: []\n",
                    patterns.join(", ")
                ),
            )]
            .into(),
        })
        .await
        .unwrap_err();
    assert_eq!(uncompilable.code(), Code::InvalidArgument);
    assert!(
        uncompilable.message().contains("do not compile"),
        "{}",
        uncompilable.message()
    );

    let bad_token = cluster
        .admin(0)
        .create_token(api::CreateTokenRequest {
            name: "x".into(),
            role: "superuser".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::InvalidArgument);
    assert!(
        bad_token.message().contains("role"),
        "{}",
        bad_token.message()
    );

    // An envoy certificate is no admin credential.
    let (identity, _) = cluster.enroll(0, "not-an-admin").await.unwrap();
    let mut as_envoy = api::hub_admin_client::HubAdminClient::new(
        vigo_common::tls::channel(
            &cluster.hub_address(0),
            identity
                .tls_config_for(&[vigo_common::pki::Role::Hub])
                .unwrap(),
            Duration::from_secs(5),
        )
        .unwrap(),
    );
    let denied = as_envoy.status(api::StatusRequest {}).await.unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);

    cluster
        .wait_until(Duration::from_secs(10), "the last enrollment", |s| {
            s.pins.len() == 2
        })
        .await;
    for i in 0..3 {
        let after = cluster.state(i);
        assert_eq!(after.overrides, before.overrides);
        assert_eq!(after.configs, before.configs);
        assert_eq!(after.tokens.len(), before.tokens.len());
        assert!(!after.hostnames.contains_key("h1") && !after.hostnames.contains_key("h2"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_spoke_fails_the_enrollment_and_the_retry_completes_it() {
    let mut cluster = Cluster::start(3, SPOKES).await;
    cluster
        .admin(0)
        .set_overrides(api::SetOverridesRequest {
            overrides: vec![api::Override {
                pattern: "db-*".into(),
                spoke_id: "spoke-b".into(),
            }],
        })
        .await
        .unwrap();
    let (id, _) = cluster.enroll(0, "db-1").await.unwrap();
    let state = cluster.state(0);
    assert_eq!(
        state.pins[&id.envoy_id.get()].spoke,
        "spoke-b",
        "the override wins over the ring"
    );

    // The pin commits first (the hub's decision), then the spoke is told: with the
    // spoke down the envoy gets no certificate, and its retry is the same envoy.
    cluster.stop_spoke(1).await;
    let key = vigo_common::signing::generate_key();
    let (hub, ca, token) = (
        cluster.hub_address(2),
        cluster.ca_pem(),
        cluster.token.clone(),
    );
    let enroll = || {
        let (hub, ca, token, key) = (hub.clone(), ca.clone(), token.clone(), key.clone());
        async move { vigo_envoy::client::enroll(&hub, &ca, &token, "db-2", key).await }
    };
    let r = enroll().await;
    assert_eq!(code(r), Code::Unavailable);
    let used = |c: &Cluster| c.state(0).tokens.values().map(|t| t.used).sum::<u64>();
    let pinned = vigo_tests::eventually(Duration::from_secs(5), || async {
        cluster.state(0).hostnames.get("db-2").copied().ok_or(())
    })
    .await;
    let used_before = used(&cluster);

    cluster.start_spoke(1).await;
    let (again, _) = vigo_tests::eventually(Duration::from_secs(20), enroll).await;
    assert_eq!(
        again.envoy_id.get(),
        pinned,
        "the retry is the pinned envoy"
    );
    assert_eq!(cluster.state(0).pins[&pinned].spoke, "spoke-b");
    assert_eq!(used(&cluster), used_before, "the retry spends no token use");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_locate_their_spoke_and_retries_keep_their_pin() {
    let cluster = Cluster::start(3, SPOKES).await;
    let key = vigo_common::signing::generate_key();
    let (first, _) = vigo_envoy::client::enroll(
        &cluster.hub_address(0),
        &cluster.ca_pem(),
        &cluster.token,
        "app-1",
        key.clone(),
    )
    .await
    .unwrap();
    let (again, response) = vigo_envoy::client::enroll(
        &cluster.hub_address(2),
        &cluster.ca_pem(),
        &cluster.token,
        "app-1",
        key.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        first.envoy_id, again.envoy_id,
        "same key and hostname, same pin"
    );
    assert!(response.already_enrolled);

    let body = pb::LocateBody {
        envoy_id: first.envoy_id.get(),
        timestamp_ms: vigo_common::time::now_ms(),
    };
    let mut locate = pb::hub_locate_client::HubLocateClient::new(
        vigo_common::tls::channel(
            &cluster.hub_address(1),
            first
                .tls_config_for(&[vigo_common::pki::Role::Hub])
                .unwrap(),
            Duration::from_secs(5),
        )
        .unwrap(),
    );
    let signed = vigo_envoy::client::seal(&key, vigo_common::signing::Domain::Locate, &body);
    let found = locate.locate(signed).await.unwrap().into_inner();
    assert_eq!(found.spoke_address, first.spoke_address);

    let forged = vigo_envoy::client::seal(
        &vigo_common::signing::generate_key(),
        vigo_common::signing::Domain::Locate,
        &body,
    );
    assert_eq!(
        locate.locate(forged).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // Only the envoy itself may ask, with its own certificate.
    let (other, _) = cluster.enroll(0, "app-2").await.unwrap();
    let mut as_other = pb::hub_locate_client::HubLocateClient::new(
        vigo_common::tls::channel(
            &cluster.hub_address(1),
            other
                .tls_config_for(&[vigo_common::pki::Role::Hub])
                .unwrap(),
            Duration::from_secs(5),
        )
        .unwrap(),
    );
    let signed = vigo_envoy::client::seal(&key, vigo_common::signing::Domain::Locate, &body);
    assert_eq!(
        as_other.locate(signed.clone()).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let mut anonymous = pb::hub_locate_client::HubLocateClient::new(cluster.anonymous_channel(1));
    assert_eq!(
        anonymous.locate(signed).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let mut envoy = vigo_tests::TestEnvoy::new(first.clone(), &first.spoke_address);
    assert!(
        envoy.check_in().await.is_ok(),
        "the envoy checks in at its pinned spoke"
    );
}
