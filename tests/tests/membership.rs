//! Who may join, as the hub decides it: a removed spoke stays removed when it restarts
//! and asks to register, until an operator adds it again; an enrollment token scoped to
//! hostname patterns enrolls those hostnames only.

use tonic::Code;
use vigo_proto::admin::v1 as api;
use vigo_tests::cluster::Cluster;
use vigo_tests::v1 as pb;

const SPOKES: &[&str] = &["spoke-a", "spoke-b"];

fn state_of(cluster: &Cluster, spoke: &str) -> String {
    cluster.state(0).spokes[spoke].state.as_str().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_spoke_stays_removed_until_an_operator_adds_it() {
    let mut cluster = Cluster::start(1, SPOKES).await;
    let removed = cluster
        .admin(0)
        .remove_spoke(api::SpokeRef {
            spoke_id: "spoke-b".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.state, "removed");

    // The spoke restarts and registers, as it does at every start: refused, and the
    // hub's state does not move.
    cluster.stop_spoke(1).await;
    cluster.start_spoke(1).await;
    let address = cluster.spoke_address(1);
    let refused = cluster
        .as_spoke("spoke-b", 0)
        .register_spoke(pb::RegisterSpokeRequest {
            address: address.clone(),
            weight: 1,
        })
        .await
        .expect_err("removed");
    assert_eq!(
        refused.code(),
        Code::FailedPrecondition,
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains("vigocli spoke add spoke-b"),
        "{}",
        refused.message()
    );
    assert_eq!(state_of(&cluster, "spoke-b"), "removed");
    let ring = cluster.state(0);
    assert!(
        ring.spokes
            .values()
            .filter(|s| s.state.as_str() == "active")
            .count()
            == 1,
        "only spoke-a takes enrollments"
    );

    // The operator brings it back; now it registers.
    let added = cluster
        .admin(0)
        .add_spoke(api::AddSpokeRequest {
            spoke_id: "spoke-b".into(),
            address: String::new(),
            weight: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.state, "active");
    cluster
        .as_spoke("spoke-b", 0)
        .register_spoke(pb::RegisterSpokeRequest { address, weight: 1 })
        .await
        .expect("an added spoke registers");
    assert_eq!(state_of(&cluster, "spoke-b"), "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_scoped_to_hostnames_enrolls_only_those() {
    let cluster = Cluster::start(1, SPOKES).await;
    let bad_pattern = cluster
        .admin(0)
        .create_token(api::CreateTokenRequest {
            name: "broken".into(),
            role: "enroll".into(),
            hostnames: vec!["web-[".into()],
            ..Default::default()
        })
        .await
        .expect_err("a pattern that does not compile");
    assert_eq!(bad_pattern.code(), Code::InvalidArgument);
    let secret = cluster
        .admin(0)
        .create_token(api::CreateTokenRequest {
            name: "web-only".into(),
            role: "enroll".into(),
            uses: 10,
            hostnames: vec!["web-*".into(), "www".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let enroll = |hostname: &'static str| {
        let (ca, secret, hub) = (cluster.ca_pem(), secret.clone(), cluster.hub_address(0));
        async move {
            vigo_envoy::client::enroll(
                &hub,
                &ca,
                &secret,
                hostname,
                vigo_common::signing::generate_key(),
            )
            .await
        }
    };
    let before = cluster.state(0);
    let Err(refused) = enroll("db-1").await else {
        panic!("db-1 is not web-*");
    };
    match refused {
        vigo_envoy::client::ClientError::Rpc { status, .. } => {
            assert_eq!(
                status.code(),
                Code::PermissionDenied,
                "{}",
                status.message()
            );
            assert!(status.message().contains("web-*"), "{}", status.message());
        }
        other => panic!("{other:?}"),
    }
    let after = cluster.state(0);
    assert_eq!(after.pins, before.pins, "nothing pinned");
    assert_eq!(after.tokens, before.tokens, "no use spent");
    enroll("web-1").await.expect("web-1 matches");
    enroll("www").await.expect("www matches");
    let listed = cluster
        .admin(0)
        .list_tokens(api::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner();
    let web = listed.tokens.iter().find(|t| t.name == "web-only").unwrap();
    assert_eq!(
        (web.used, web.hostnames.clone()),
        (2, vec!["web-*".to_string(), "www".to_string()])
    );
}
