//! The simulator's gateway client (`tls::direct`): one HTTP/2 connection per envoy with
//! nothing in front of it, against a real spoke — it checks in, says UNAVAILABLE while
//! the spoke is down, and connects again when it is back.

use tonic::Code;
use vigo_envoy::client;
use vigo_tests::{SpokeHome, init};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_channel_checks_in_and_reconnects_after_a_restart() {
    init();
    let (home, spoke, addr, mut envoy) = SpokeHome::with_envoy("direct-1").await;
    let config = envoy.identity.tls_config().expect("tls config");
    let mut direct = client::gateway_direct(&addr, config, None).expect("client");
    for _ in 0..3 {
        client::send_check_in(&mut direct, envoy.check_in_request())
            .await
            .expect("checks in over the direct channel");
    }

    spoke.shutdown().await.expect("shutdown");
    let down = client::send_check_in(&mut direct, envoy.check_in_request())
        .await
        .expect_err("the spoke is down");
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");

    let spoke = home.start().await;
    assert_eq!(spoke.addr.to_string(), addr, "the same address again");
    client::send_check_in(&mut direct, envoy.check_in_request())
        .await
        .expect("connected again");

    // An address that is not host:port is refused before anything is sent.
    let config = envoy.identity.tls_config().expect("tls config");
    assert!(client::gateway_direct("no-port", config, None).is_err());
}
