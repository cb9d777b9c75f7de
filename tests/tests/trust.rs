//! Who each side trusts, checked from the client side too: a client talks only to the
//! server role it expects, whatever else the cluster's CA has signed.

use std::time::Duration;

use tonic::Code;
use vigo_common::net::status_chain;
use vigo_common::pki::Role;
use vigo_envoy::client;
use vigo_tests::cluster::Cluster;

const SPOKES: &[&str] = &["spoke-a"];

/// The call failed in the TLS handshake, for the reason given: nothing was sent.
fn refused_in_handshake(refused: &tonic::Status, why: &str) {
    let chain = status_chain(refused);
    assert_eq!(refused.code(), Code::Unavailable, "{chain}");
    assert!(chain.contains(why), "{chain}");
}

/// An envoy's certificate-holding client accepts only a spoke: pointed at a hub (a
/// server the same CA vouches for), it refuses the handshake and sends nothing. The
/// same client checks in at its spoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_talks_only_to_a_spoke_certificate() {
    let cluster = Cluster::start(1, SPOKES).await;
    let (identity, _) = cluster.enroll(0, "trusting-1").await.unwrap();
    let tls = identity.tls_config().unwrap();
    let request = || {
        client::check_in_request(
            identity.envoy_id,
            &identity.key,
            vigo_common::time::now_ms() * 1000,
            None,
            &Default::default(),
            true,
        )
    };

    let mut at_hub = client::gateway(&cluster.hub_address(0), tls.clone()).unwrap();
    let refused = client::send_check_in(&mut at_hub, request())
        .await
        .expect_err("a hub's certificate is not a spoke's");
    refused_in_handshake(
        &refused,
        "a hub certificate where a spoke certificate was expected",
    );

    let mut at_spoke = client::gateway(&identity.spoke_address, tls).unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        client::send_check_in(&mut at_spoke, request()),
    )
    .await
    .expect("answered")
    .expect("its spoke answers");
}

/// Each product client names the one role it expects; a config for another role refuses
/// the same server. (Spoke → hub and hub → spoke use the same verifier.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_for_hubs_refuses_a_spoke() {
    let cluster = Cluster::start(1, SPOKES).await;
    let ca = cluster.ca_pem();
    let for_hubs = vigo_common::tls::client_config(&ca, None, &[Role::Hub]).unwrap();
    let mut enroll = vigo_tests::v1::enrollment_client::EnrollmentClient::new(
        vigo_common::tls::channel(
            &cluster.spoke_address(0),
            std::sync::Arc::new(for_hubs),
            Duration::from_secs(5),
        )
        .unwrap(),
    );
    let refused = enroll
        .enroll(vigo_tests::v1::EnrollRequest::default())
        .await
        .expect_err("a spoke is not a hub");
    refused_in_handshake(
        &refused,
        "a spoke certificate where a hub certificate was expected",
    );
}
