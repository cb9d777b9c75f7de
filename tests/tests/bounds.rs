//! Bounds on what reaches the replicated state: a field a peer sends is checked for
//! size and shape before it is proposed, so no spoke can grow the raft log or every
//! snapshot with what it chooses to send.

use tonic::Code;
use vigo_tests::cluster::Cluster;
use vigo_tests::v1 as pb;

const SPOKES: &[&str] = &["spoke-a"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_reports_a_policy_version_or_nothing() {
    let cluster = Cluster::start(1, SPOKES).await;
    let mut hub = cluster.as_spoke("spoke-a", 0);
    let before = cluster.state(0).spokes["spoke-a"].clone();

    for junk in ["x".repeat(60_000), "ab".into(), "g".repeat(64)] {
        let refused = hub
            .heartbeat(pb::HeartbeatRequest {
                config_version: junk.clone(),
                envoys: 0,
            })
            .await
            .expect_err("no policy version");
        assert_eq!(
            refused.code(),
            Code::InvalidArgument,
            "{}",
            refused.message()
        );
    }
    let after = cluster.state(0).spokes["spoke-a"].clone();
    assert_eq!(
        after.config_version, before.config_version,
        "nothing written"
    );

    // A version's shape is not enough: one the cluster never published is answered
    // (the directive tells the spoke what to serve) but not recorded.
    hub.heartbeat(pb::HeartbeatRequest {
        config_version: "ab".repeat(32),
        envoys: 0,
    })
    .await
    .expect("answered");
    assert_eq!(
        cluster.state(0).spokes["spoke-a"].config_version,
        before.config_version,
        "an unpublished version is not recorded"
    );

    // A published version is taken.
    let published = cluster
        .publish(0, &vigo_tests::repo_root().join("deploy/policy"), "bounds")
        .await
        .expect("published")
        .version;
    hub.heartbeat(pb::HeartbeatRequest {
        config_version: published.clone(),
        envoys: 0,
    })
    .await
    .expect("a version");
    cluster
        .wait_until(
            std::time::Duration::from_secs(30),
            "the published version recorded",
            |s| s.spokes["spoke-a"].config_version == published,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoke_registers_with_an_address_that_is_one() {
    let cluster = Cluster::start(1, SPOKES).await;
    let mut hub = cluster.as_spoke("spoke-a", 0);
    let before = cluster.state(0).spokes["spoke-a"].clone();
    // The host part is a DNS name (at most 253 bytes); the port is a port.
    let long = format!("spoke.example:{}", "7".repeat(4000));
    let refused = hub
        .register_spoke(pb::RegisterSpokeRequest {
            address: long,
            weight: 1,
        })
        .await
        .expect_err("too long");
    assert_eq!(
        refused.code(),
        Code::InvalidArgument,
        "{}",
        refused.message()
    );
    assert_eq!(
        cluster.state(0).spokes["spoke-a"],
        before,
        "nothing written"
    );
}

/// N9: a spoke flipping its heartbeat between two published versions as fast as it can
/// does not make each heartbeat a raft entry (an fsync on every hub): what it serves is
/// written at most once per `CONFIG_RECORD_EVERY` per spoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoke_flipping_its_config_version_writes_little() {
    let cluster = Cluster::start(1, SPOKES).await;
    let policy = tempfile::tempdir().unwrap();
    vigo_tests::copy_dir(
        &vigo_tests::repo_root().join("deploy/policy"),
        policy.path(),
    );
    let first = cluster
        .publish(0, policy.path(), "first")
        .await
        .expect("published")
        .version;
    let hostcrates = policy.path().join("hostcrates.yaml");
    let text = std::fs::read_to_string(&hostcrates).unwrap();
    std::fs::write(&hostcrates, format!("{text}\n# second\n")).unwrap();
    let second = cluster
        .publish(0, policy.path(), "second")
        .await
        .expect("published")
        .version;
    assert_ne!(first, second);
    let mut hub = cluster.as_spoke("spoke-a", 0);
    let applied = || {
        let m = cluster.hub(0).node.raft.metrics().borrow().clone();
        m.last_applied.map_or(0, |l| l.index)
    };
    let before = applied();
    for i in 0..100 {
        let version = if i % 2 == 0 { &first } else { &second };
        hub.heartbeat(pb::HeartbeatRequest {
            config_version: version.clone(),
            envoys: 0,
        })
        .await
        .expect("answered");
    }
    let written = applied() - before;
    println!("100 flipping heartbeats: {written} raft entries");
    assert!(written < 20, "{written} raft entries for 100 heartbeats");
}
