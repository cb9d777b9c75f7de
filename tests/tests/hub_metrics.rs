//! The hub's Prometheus metrics, rendered from a real cluster's activity: raft's view,
//! the compliance roll-up, fan-out latency per spoke, enrollments, and admin requests by
//! route and outcome. (Its own test binary: the metrics recorder is process-wide.)

use std::sync::Arc;

use vigo_proto::admin::v1 as api;
use vigo_tests::cluster::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_metrics_cover_raft_rollup_fanout_and_admin_calls() {
    let handle = vigo_common::telemetry::install_metrics().expect("recorder");
    let cluster = Arc::new(Cluster::start(3, &["spoke-a", "spoke-b", "spoke-c"]).await);
    cluster.enroll_fleet("metrics", 6).await;
    let leader = cluster.leader().await;
    cluster
        .admin(leader)
        .status(api::StatusRequest {})
        .await
        .unwrap();
    cluster
        .admin(leader)
        .compliance(api::ComplianceRequest {})
        .await
        .unwrap();
    let refused = cluster
        .admin(leader)
        .list_envoys(api::ListEnvoysRequest {
            sort: "size".into(),
            ..Default::default()
        })
        .await;
    assert!(refused.is_err());
    vigo_hub::metrics::publish_raft(&cluster.hub(leader).node);

    let text = handle.render();
    for needle in [
        "vigo_hub_raft_term ",
        "vigo_hub_raft_is_leader 1",
        "vigo_hub_raft_commit_index ",
        "vigo_hub_raft_applied_index ",
        "vigo_hub_enrollments_total 6",
        "vigo_fleet_envoys{status=\"no_data\"} 6",
        "vigo_hub_fanout_seconds_bucket{spoke=\"spoke-a\"",
        "vigo_hub_admin_requests_total{route=\"grpc:status\",code=\"ok\"} 1",
        "vigo_hub_admin_requests_total{route=\"grpc:list_envoys\",code=\"malformed\"} 1",
        "vigo_hub_admin_request_seconds_bucket{route=\"grpc:compliance\"",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }
}
