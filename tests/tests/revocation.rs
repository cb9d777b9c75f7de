//! Revocation is the cluster's: committed through raft, pushed to every spoke, fetched by
//! a spoke that missed it, and checked on every call — so a revoked certificate is
//! refused by every hub and spoke, on connections already open too, and a revoked envoy
//! stays revoked across a move and on a spoke restarted from an old copy of its data.

use std::time::Duration;

use tonic::Code;
use vigo_common::pki::{Role, serial_of_pem};
use vigo_proto::admin::v1 as api;
use vigo_proto::v1 as pb;
use vigo_tests::TestEnvoy;
use vigo_tests::cluster::Cluster;

fn serial(cluster: &Cluster, cert: &str) -> String {
    let pem = std::fs::read_to_string(cluster.pki(&format!("{cert}.pem"))).unwrap();
    serial_of_pem(&pem).unwrap()
}

async fn heartbeat_code(cluster: &Cluster, spoke: &str, hub: usize) -> Code {
    let r = cluster
        .as_spoke(spoke, hub)
        .heartbeat(pb::HeartbeatRequest::default())
        .await;
    r.map_or_else(|s| s.code(), |_| Code::Ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_spoke_certificate_is_refused_by_every_hub() {
    let cluster = Cluster::start(3, &["spoke-a", "spoke-b"]).await;
    for i in 0..3 {
        assert_eq!(heartbeat_code(&cluster, "spoke-a", i).await, Code::Ok);
    }
    // As an operator pastes it from `openssl x509 -serial -noout`.
    let pasted = format!("serial={}", serial(&cluster, "spoke-a").to_uppercase());
    let revoked = cluster
        .admin(0)
        .revoke_certificate(api::RevokeCertificateRequest {
            serial: pasted,
            reason: "host compromised".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.certificate_serial, serial(&cluster, "spoke-a"));
    for i in 0..3 {
        vigo_tests::eventually(Duration::from_secs(5), || async {
            match heartbeat_code(&cluster, "spoke-a", i).await {
                Code::PermissionDenied => Ok(()),
                other => Err(other),
            }
        })
        .await;
        assert_eq!(
            heartbeat_code(&cluster, "spoke-b", i).await,
            Code::Ok,
            "another spoke's certificate still works on hub {i}"
        );
    }
    // The revoked spoke's raft-adjacent calls are refused too: it cannot fetch config.
    let r = cluster
        .as_spoke("spoke-a", 1)
        .get_config(pb::GetConfigRequest::default())
        .await;
    assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
    // Revoking again changes nothing; a malformed serial is refused by name.
    let again = cluster
        .admin(2)
        .revoke_certificate(api::RevokeCertificateRequest {
            serial: serial(&cluster, "spoke-a"),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.seq, revoked.seq);
    let bad = cluster
        .admin(0)
        .revoke_certificate(api::RevokeCertificateRequest {
            serial: "not-hex".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("serial"), "{}", bad.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_admin_certificate_is_refused_by_the_admin_api_and_the_spokes() {
    let cluster = Cluster::start(3, &["spoke-a"]).await;
    let mut open = cluster.admin(1);
    open.status(api::StatusRequest {}).await.unwrap();
    let mut spoke = pb::spoke_admin_client::SpokeAdminClient::new(cluster.channel_as(
        "admin",
        &cluster.spoke_address(0),
        Role::Spoke,
    ));
    spoke.stats(pb::StatsRequest {}).await.unwrap();

    cluster
        .admin(0)
        .revoke_certificate(api::RevokeCertificateRequest {
            serial: serial(&cluster, "admin"),
            reason: "laptop lost".into(),
        })
        .await
        .unwrap();
    // The connection opened before the revocation is refused at its next call.
    vigo_tests::eventually(Duration::from_secs(5), || async {
        match open.clone().status(api::StatusRequest {}).await {
            Err(s) if s.code() == Code::PermissionDenied => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    for i in 0..3 {
        let r = cluster
            .admin(i)
            .list_spokes(api::ListSpokesRequest {})
            .await;
        let e = r.expect_err("a revoked admin certificate is refused");
        assert_eq!(e.code(), Code::PermissionDenied, "hub {i}: {e:?}");
        assert!(e.message().contains("revoked"), "{}", e.message());
    }
    // The spoke learnt it from the hub's push.
    vigo_tests::eventually(Duration::from_secs(5), || async {
        match spoke.clone().stats(pb::StatsRequest {}).await {
            Err(s) if s.code() == Code::PermissionDenied => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // An API token still administers the cluster, and sees the revocation.
    let page = bearer_revocations(&cluster).await;
    assert_eq!(page.revocations.len(), 1);
    assert_eq!(page.revocations[0].by, "cert:admin");
    assert_eq!(page.revocations[0].reason, "laptop lost");
}

async fn bearer_revocations(cluster: &Cluster) -> api::RevocationPage {
    cluster
        .admin_with_token(2, &cluster.api_token())
        .list_revocations(api::ListRevocationsRequest::default())
        .await
        .unwrap()
        .into_inner()
}

async fn revoke_envoy(cluster: &Cluster, envoy: &TestEnvoy) {
    cluster
        .admin(0)
        .revoke_envoy(api::RevokeEnvoyRequest {
            envoy_id: envoy.id().to_string(),
            reason: "decommissioned".into(),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_envoy_stays_revoked_on_a_spoke_restarted_from_an_old_copy() {
    let mut cluster = Cluster::start(3, &["spoke-a"]).await;
    let mut envoys = Vec::new();
    for host in ["kept-1", "gone-1"] {
        let (identity, _) = cluster.enroll(0, host).await.unwrap();
        let address = identity.spoke_address.clone();
        let mut e = TestEnvoy::new(identity, &address);
        e.check_in().await.unwrap();
        envoys.push(e);
    }
    let [mut kept, mut gone] = <[TestEnvoy; 2]>::try_from(envoys).ok().unwrap();

    // An operator's backup, taken before the revocation.
    cluster.stop_spoke(0).await;
    let backup = cluster.spoke_db(0).with_extension("backup");
    std::fs::copy(cluster.spoke_db(0), &backup).unwrap();
    cluster.start_spoke(0).await;

    revoke_envoy(&cluster, &gone).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match gone.check_in().await {
            Err(s) if s.code() == Code::PermissionDenied => break,
            other => assert!(
                std::time::Instant::now() < deadline,
                "still served: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Restored from the backup, the spoke takes the cluster's revocations before it
    // serves: the first check-in is refused already.
    cluster.stop_spoke(0).await;
    std::fs::copy(&backup, cluster.spoke_db(0)).unwrap();
    cluster.start_spoke(0).await;
    let refused = gone.check_in().await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    kept.check_in().await.expect("the other envoy is served");
    // And the hub refuses to enroll the revoked key again under its hostname.
    let back = vigo_envoy::client::enroll(
        &cluster.hub_address(1),
        &cluster.ca_pem(),
        &cluster.token,
        "gone-1",
        gone.identity.key.clone(),
    )
    .await;
    let Err(e) = back else {
        panic!("a revoked key does not enroll again")
    };
    assert!(format!("{e}").contains("revoked"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_that_crosses_a_move_holds_on_the_new_spoke() {
    let cluster = Cluster::start(3, &["spoke-a", "spoke-b"]).await;
    let (identity, _) = cluster.enroll(0, "moving-1").await.unwrap();
    let id = identity.envoy_id.get();
    let from = cluster.state(0).pins[&id].spoke.clone();
    let (from_j, to_j) = if from == "spoke-a" { (0, 1) } else { (1, 0) };
    let hub_to = |j: usize| {
        pb::spoke_admin_client::SpokeAdminClient::new(cluster.channel_as(
            "hub-1",
            &cluster.spoke_address(j),
            Role::Spoke,
        ))
    };
    // The hand-off exported the envoy before the revocation committed ...
    let export = hub_to(from_j)
        .export_envoys(pb::ExportEnvoysRequest {
            envoy_ids: vec![id],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!export.envoys[0].revoked);
    let envoy = TestEnvoy::new(identity.clone(), &identity.spoke_address);
    revoke_envoy(&cluster, &envoy).await;
    // ... and the new spoke learns the revocation, then imports the stale export.
    let mut to = hub_to(to_j);
    vigo_tests::eventually(Duration::from_secs(5), || async {
        let seq = to
            .clone()
            .apply_revocations(pb::RevocationList::default())
            .await
            .map_err(|s| s.to_string())?
            .into_inner()
            .seq;
        if seq >= 1 {
            Ok(())
        } else {
            Err(format!("seq {seq}"))
        }
    })
    .await;
    to.import_envoys(export).await.unwrap();
    let info = to
        .get_envoy(pb::GetEnvoyRequest { envoy_id: id })
        .await
        .unwrap()
        .into_inner();
    assert!(
        info.revoked,
        "the cluster's revocation wins over the export"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoke_under_a_hub_refuses_a_revocation_of_its_own() {
    let cluster = Cluster::start(1, &["spoke-a"]).await;
    let (identity, _) = cluster.enroll(0, "local-1").await.unwrap();
    let mut admin = pb::spoke_admin_client::SpokeAdminClient::new(cluster.channel_as(
        "admin",
        &cluster.spoke_address(0),
        Role::Spoke,
    ));
    let e = admin
        .revoke_envoy(pb::RevokeEnvoyRequest {
            envoy_id: identity.envoy_id.get(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("vigocli envoys revoke"),
        "{}",
        e.message()
    );
}

/// N7 in part: revocation binds clients too. Once spoke-a's certificate is revoked, a
/// hub that connects to it afresh refuses it during the handshake (no session is
/// resumed between nodes), so the revoked key cannot answer the hub as a spoke; the
/// fan-out names it missing, and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_refuses_a_spoke_serving_a_revoked_certificate() {
    let mut cluster = Cluster::start(1, &["spoke-a", "spoke-b"]).await;
    cluster
        .admin(0)
        .revoke_certificate(api::RevokeCertificateRequest {
            serial: serial(&cluster, "spoke-a"),
            reason: "key copied".into(),
        })
        .await
        .unwrap();
    // The spoke is restarted: the hub's next call to it makes a new connection.
    cluster.stop_spoke(0).await;
    cluster.start_spoke(0).await;
    let missing = vigo_tests::eventually(Duration::from_secs(30), || async {
        let page = cluster
            .admin(0)
            .list_envoys(api::ListEnvoysRequest::default())
            .await
            .map_err(|s| s.to_string())?
            .into_inner();
        match page.missing.iter().find(|m| m.spoke == "spoke-a") {
            Some(m) if m.error.contains("revoked") => Ok(m.error.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    println!("spoke-a after its revocation: {missing}");
    let page = cluster
        .admin(0)
        .list_envoys(api::ListEnvoysRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        page.missing.iter().all(|m| m.spoke != "spoke-b"),
        "spoke-b still answers: {:?}",
        page.missing
    );
}
