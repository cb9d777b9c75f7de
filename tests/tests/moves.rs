//! Moves are records in the replicated state: a move stopped midway (the hand-off
//! failed, the leader stopped) is finished by running it again or by whichever node
//! leads; a second move of the same envoy elsewhere is refused while one is open; and
//! reports that reach the old spoke during a move are kept.

use std::time::Duration;

use tonic::Code;
use vigo_common::pki::Role;
use vigo_hub::state::{Command, MovePhase};
use vigo_proto::admin::v1 as api;
use vigo_proto::v1 as pb;
use vigo_tests::TestEnvoy;
use vigo_tests::cluster::Cluster;

const SPOKES: &[&str] = &["spoke-a", "spoke-b", "spoke-c"];

/// An envoy enrolled and checked in, with the index of its spoke.
async fn one_envoy(cluster: &Cluster, host: &str) -> (TestEnvoy, usize) {
    let (identity, _) = cluster.enroll(0, host).await.unwrap();
    let address = identity.spoke_address.clone();
    let mut envoy = TestEnvoy::new(identity, &address);
    envoy.check_in().await.unwrap();
    let j = (0..SPOKES.len())
        .find(|j| cluster.spoke_address(*j) == address)
        .unwrap();
    (envoy, j)
}

fn spoke_admin(
    cluster: &Cluster,
    j: usize,
) -> pb::spoke_admin_client::SpokeAdminClient<tonic::transport::Channel> {
    pb::spoke_admin_client::SpokeAdminClient::new(cluster.channel_as(
        "hub-1",
        &cluster.spoke_address(j),
        Role::Spoke,
    ))
}

async fn reassign(
    cluster: &Cluster,
    hub: usize,
    envoy: &TestEnvoy,
    to: &str,
) -> Result<api::MoveResult, tonic::Status> {
    cluster
        .admin(hub)
        .reassign_envoy(api::ReassignEnvoyRequest {
            envoy_id: envoy.id().to_string(),
            to: to.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Opens a move of `envoy` through the leader, as the first step of a move does.
async fn open_move(cluster: &Cluster, envoy: u64, from: usize, to: usize) {
    let leader = cluster.hub(cluster.leader().await);
    leader
        .node
        .propose_ok(Command::BeginMove {
            envoys: vec![envoy],
            from: SPOKES[from].into(),
            to: SPOKES[to].into(),
            at_ms: 1,
        })
        .await
        .unwrap();
}

/// Leaves a move of `envoy` open where a leader that stopped after moving the pins left
/// it: copied to `to` and pinned there, never handed off by the old spoke.
async fn stop_after_pins(cluster: &Cluster, envoy: &TestEnvoy, from: usize, to: usize) {
    let leader = cluster.hub(cluster.leader().await);
    let id = envoy.id().get();
    open_move(cluster, id, from, to).await;
    let export = spoke_admin(cluster, from)
        .export_envoys(pb::ExportEnvoysRequest {
            envoy_ids: vec![id],
        })
        .await
        .unwrap()
        .into_inner();
    spoke_admin(cluster, to)
        .import_envoys(export)
        .await
        .unwrap();
    leader
        .node
        .propose_ok(Command::MovePins(vec![(id, SPOKES[to].into())]))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_stopped_after_its_pins_moved_is_finished_by_running_it_again() {
    let cluster = Cluster::start(3, SPOKES).await;
    let (mut envoy, from) = one_envoy(&cluster, "mover-1").await;
    let to = (from + 1) % SPOKES.len();
    stop_after_pins(&cluster, &envoy, from, to).await;
    // The old spoke still serves it, and a report it sends now must not be lost.
    envoy
        .report(7, &[pb::Outcome::Ok])
        .await
        .expect("the old spoke takes the report");

    // A move elsewhere is refused while this one is open.
    let elsewhere = (from + 2) % SPOKES.len();
    let refused = reassign(&cluster, 1, &envoy, SPOKES[elsewhere])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Aborted, "{refused:?}");
    assert!(
        refused.message().contains("being moved"),
        "{}",
        refused.message()
    );

    // The operator runs the same move again: finished, not "already on spoke".
    let done = reassign(&cluster, 2, &envoy, SPOKES[to]).await.unwrap();
    assert_eq!(done.moved, 1);
    let leader = cluster.leader().await;
    assert!(cluster.state(leader).moves.is_empty());
    let old = spoke_admin(&cluster, from)
        .get_envoy(pb::GetEnvoyRequest {
            envoy_id: envoy.id().get(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        old.code(),
        Code::NotFound,
        "one live copy: the old spoke let it go"
    );
    let new = spoke_admin(&cluster, to)
        .get_envoy(pb::GetEnvoyRequest {
            envoy_id: envoy.id().get(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        new.stored_runs, 1,
        "the report sent during the move came along"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_leader_finishes_a_move_the_last_one_left_open() {
    let cluster = Cluster::start(3, SPOKES).await;
    let (envoy, from) = one_envoy(&cluster, "mover-2").await;
    let to = (from + 1) % SPOKES.len();
    let old_leader = cluster.leader().await;
    open_move(&cluster, envoy.id().get(), from, to).await;
    assert_eq!(
        cluster.state(old_leader).moves[&envoy.id().get()].phase,
        MovePhase::Copying
    );
    cluster.stop_hub(old_leader).await;
    let id = envoy.id().get();
    let to_id = SPOKES[to].to_string();
    let survivor = (old_leader + 1) % 3;
    cluster
        .wait_until(
            Duration::from_secs(30),
            "the move finished by the new leader",
            |s| s.moves.is_empty() && s.pins[&id].spoke == to_id,
        )
        .await;
    let new = spoke_admin(&cluster, to)
        .get_envoy(pb::GetEnvoyRequest { envoy_id: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(new.hostname, "mover-2");
    let old = spoke_admin(&cluster, from)
        .get_envoy(pb::GetEnvoyRequest { envoy_id: id })
        .await
        .unwrap_err();
    assert_eq!(old.code(), Code::NotFound);
    assert!(cluster.state(survivor).moves.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_whose_old_spoke_is_down_stays_open_and_finishes_when_it_is_back() {
    let mut cluster = Cluster::start(3, SPOKES).await;
    let (envoy, from) = one_envoy(&cluster, "mover-3").await;
    let to = (from + 1) % SPOKES.len();
    stop_after_pins(&cluster, &envoy, from, to).await;
    cluster.stop_spoke(from).await;

    let failed = reassign(&cluster, 0, &envoy, SPOKES[to]).await.unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    let id = envoy.id().get();
    let leader = cluster.leader().await;
    assert_eq!(
        cluster.state(leader).moves[&id].phase,
        MovePhase::Pinned,
        "the move stays open where it stopped"
    );

    cluster.start_spoke(from).await;
    cluster
        .wait_until(Duration::from_secs(30), "the move finished", |s| {
            s.moves.is_empty()
        })
        .await;
    let old = spoke_admin(&cluster, from)
        .get_envoy(pb::GetEnvoyRequest { envoy_id: id })
        .await
        .unwrap_err();
    assert_eq!(old.code(), Code::NotFound, "one live copy");
    spoke_admin(&cluster, to)
        .get_envoy(pb::GetEnvoyRequest { envoy_id: id })
        .await
        .expect("on the new spoke");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_towards_a_spoke_that_left_is_closed_and_the_envoy_moves_elsewhere() {
    let mut cluster = Cluster::start(3, SPOKES).await;
    let (mut envoy, from) = one_envoy(&cluster, "mover-4").await;
    let (gone, other) = ((from + 1) % SPOKES.len(), (from + 2) % SPOKES.len());
    let id = envoy.id().get();
    let leader = cluster.leader().await;
    open_move(&cluster, id, from, gone).await;
    // The target goes away for good before anything was copied.
    cluster.stop_spoke(gone).await;
    cluster
        .admin(0)
        .remove_spoke(api::SpokeRef {
            spoke_id: SPOKES[gone].into(),
        })
        .await
        .unwrap();
    cluster
        .wait_until(Duration::from_secs(30), "the moot move closed", |s| {
            s.moves.is_empty()
        })
        .await;
    assert_eq!(cluster.state(leader).pins[&id].spoke, SPOKES[from]);
    envoy.check_in().await.expect("still served where it was");
    let moved = reassign(&cluster, 1, &envoy, SPOKES[other]).await.unwrap();
    assert_eq!(moved.moved, 1);
}

/// Where a move can stop: opened, copied to the new spoke, pinned there.
#[derive(Clone, Copy, Debug)]
enum Boundary {
    Opened,
    Copied,
    Pinned,
}

/// The spokes that hold `id` as a live (not revoked) envoy, and its stored runs there.
async fn holders(cluster: &Cluster, id: u64) -> Vec<(usize, u32, bool)> {
    let mut found = Vec::new();
    for j in 0..SPOKES.len() {
        if let Ok(e) = spoke_admin(cluster, j)
            .get_envoy(pb::GetEnvoyRequest { envoy_id: id })
            .await
        {
            let e = e.into_inner();
            found.push((j, e.stored_runs, e.revoked));
        }
    }
    found
}

/// At every phase boundary the leader and the old spoke both go down; when they are
/// back the move finishes: the envoy lives on exactly one spoke, the new one, with its
/// history, and an envoy revoked midway stays revoked there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_survives_losing_the_leader_and_the_old_spoke_at_every_boundary() {
    let mut cluster = Cluster::start(3, SPOKES).await;
    for (n, boundary) in [Boundary::Opened, Boundary::Copied, Boundary::Pinned]
        .into_iter()
        .enumerate()
    {
        let (mut envoy, from) = one_envoy(&cluster, &format!("boundary-{n}")).await;
        envoy.report(1, &[pb::Outcome::Ok]).await.unwrap();
        let id = envoy.id().get();
        let to = (from + 1) % SPOKES.len();
        let revoke = matches!(boundary, Boundary::Copied);
        match boundary {
            Boundary::Opened => open_move(&cluster, id, from, to).await,
            Boundary::Copied => {
                open_move(&cluster, id, from, to).await;
                let export = spoke_admin(&cluster, from)
                    .export_envoys(pb::ExportEnvoysRequest {
                        envoy_ids: vec![id],
                    })
                    .await
                    .unwrap()
                    .into_inner();
                spoke_admin(&cluster, to)
                    .import_envoys(export)
                    .await
                    .unwrap();
            }
            Boundary::Pinned => stop_after_pins(&cluster, &envoy, from, to).await,
        }
        if revoke {
            cluster
                .admin(0)
                .revoke_envoy(api::RevokeEnvoyRequest {
                    envoy_id: envoy.id().to_string(),
                    reason: "lost laptop".into(),
                })
                .await
                .unwrap();
        }
        let leader = cluster.leader().await;
        cluster.stop_hub(leader).await;
        cluster.stop_spoke(from).await;
        cluster.start_spoke(from).await;
        cluster.start_hub(leader).await;
        let to_id = SPOKES[to].to_string();
        cluster
            .wait_until(Duration::from_secs(60), "the move finished", |s| {
                s.moves.is_empty() && s.pins[&id].spoke == to_id
            })
            .await;
        let held = holders(&cluster, id).await;
        assert_eq!(held.len(), 1, "{boundary:?}: one copy, on {held:?}");
        let (j, runs, revoked) = held[0];
        assert_eq!(j, to, "{boundary:?}: on the new spoke");
        assert!(runs >= 1, "{boundary:?}: its history came along");
        assert_eq!(revoked, revoke, "{boundary:?}: revocation intact");
        let mut moved = TestEnvoy::new(envoy.identity.clone(), &cluster.spoke_address(to));
        let answer = moved.check_in().await;
        if revoke {
            assert_eq!(answer.unwrap_err().code(), Code::PermissionDenied);
        } else {
            answer.expect("served by the new spoke");
        }
    }
}
