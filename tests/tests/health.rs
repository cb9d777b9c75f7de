//! What `vigocli status` shows, as the leader sees it: each hub node's reachability and
//! replication lag, and each spoke's health from a frequent heartbeat kept out of the
//! raft log — a stopped spoke shows unhealthy within seconds, from any hub node.

use std::time::{Duration, Instant};

use vigo_proto::admin::v1 as api;
use vigo_tests::cluster::Cluster;

async fn status(cluster: &Cluster, hub: usize) -> api::ClusterStatus {
    cluster
        .admin(hub)
        .status(api::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn healthy(s: &api::ClusterStatus, spoke: &str) -> bool {
    s.spokes
        .iter()
        .find(|x| x.spoke_id == spoke)
        .unwrap()
        .healthy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_spoke_shows_unhealthy_within_seconds_from_any_hub() {
    let mut cluster = Cluster::start(3, &["spoke-a", "spoke-b"]).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let s = status(&cluster, follower).await;
    assert!(s.from_leader, "a follower answers with the leader's view");
    assert_eq!(s.node_id, leader as u64 + 1);
    assert!(healthy(&s, "spoke-a") && healthy(&s, "spoke-b"));
    // Once the spoke serves the cluster's config, its heartbeats change nothing logged.
    let log_before = vigo_tests::eventually(Duration::from_secs(10), || async {
        let before = cluster.state(leader).spokes["spoke-a"].last_heartbeat_ms;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = cluster.state(leader).spokes["spoke-a"].last_heartbeat_ms;
        if before == after {
            Ok(after)
        } else {
            Err("still changing")
        }
    })
    .await;

    cluster.stop_spoke(1).await;
    let stopped = Instant::now();
    loop {
        let s = status(&cluster, follower).await;
        if !healthy(&s, "spoke-b") {
            assert!(healthy(&s, "spoke-a"), "the running spoke stays healthy");
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(15),
            "spoke-b still healthy {:?} after it stopped",
            stopped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "stopped spoke shown unhealthy after {:?}",
        stopped.elapsed()
    );
    // Heartbeats came all along, and none was written through raft.
    assert_eq!(
        cluster.state(leader).spokes["spoke-a"].last_heartbeat_ms,
        log_before
    );
    cluster.start_spoke(1).await;
    vigo_tests::eventually(Duration::from_secs(10), || async {
        if healthy(&status(&cluster, 0).await, "spoke-b") {
            Ok(())
        } else {
            Err("not yet")
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_hub_shows_unreachable_and_behind() {
    let cluster = Cluster::start(3, &["spoke-a"]).await;
    let leader = cluster.leader().await;
    let cut = (leader + 1) % 3;
    let s = status(&cluster, leader).await;
    assert!(s.members.iter().all(|m| m.reachable), "{:?}", s.members);

    cluster.hub(cut).isolate(true);
    for n in 0..5 {
        cluster
            .admin(leader)
            .create_token(api::CreateTokenRequest {
                name: format!("while-cut-{n}"),
                role: "viewer".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let member = vigo_tests::eventually(Duration::from_secs(10), || async {
        let s = status(&cluster, leader).await;
        let m = s
            .members
            .iter()
            .find(|m| m.node_id == cut as u64 + 1)
            .cloned()
            .unwrap();
        if !m.reachable && m.lag >= 5 {
            Ok(m)
        } else {
            Err(format!("{m:?}"))
        }
    })
    .await;
    assert!(member.silent_ms >= 1000, "{member:?}");
    cluster.hub(cut).isolate(false);
    vigo_tests::eventually(Duration::from_secs(10), || async {
        let s = status(&cluster, leader).await;
        let m = s
            .members
            .iter()
            .find(|m| m.node_id == cut as u64 + 1)
            .unwrap();
        if m.reachable && m.lag == 0 {
            Ok(())
        } else {
            Err(format!("{m:?}"))
        }
    })
    .await;
}
