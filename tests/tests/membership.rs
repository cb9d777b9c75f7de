//! Spoke membership is the hub's decision: a removed spoke stays removed when it
//! restarts and asks to register, until an operator adds it again.

use std::sync::Arc;
use std::time::Duration;

use tonic::Code;
use vigo_common::pki::Role;
use vigo_proto::admin::v1 as api;
use vigo_tests::cluster::Cluster;
use vigo_tests::v1 as pb;

const SPOKES: &[&str] = &["spoke-a", "spoke-b"];

/// The hub's spoke service, as spoke-b (its own certificate).
fn as_spoke_b(
    cluster: &Cluster,
) -> pb::hub_spokes_client::HubSpokesClient<tonic::transport::Channel> {
    let cert = std::fs::read_to_string(cluster.pki("spoke-b.pem")).unwrap();
    let key = std::fs::read_to_string(cluster.pki("spoke-b.key")).unwrap();
    let tls = vigo_common::tls::client_config(&cluster.ca_pem(), Some((&cert, &key)), &[Role::Hub])
        .unwrap();
    pb::hub_spokes_client::HubSpokesClient::new(
        vigo_common::tls::channel(
            &cluster.hub_address(0),
            Arc::new(tls),
            Duration::from_secs(5),
        )
        .unwrap(),
    )
}

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
    let refused = as_spoke_b(&cluster)
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
        refused.message().contains("vigocli spokes add spoke-b"),
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
    as_spoke_b(&cluster)
        .register_spoke(pb::RegisterSpokeRequest { address, weight: 1 })
        .await
        .expect("an added spoke registers");
    assert_eq!(state_of(&cluster, "spoke-b"), "active");
}
