//! The hub's batched registration of envoys on a spoke (`SpokeAdmin.RegisterEnvoys`),
//! called the way the hub calls it and the ways a careless or hostile caller might:
//! each envoy of a batch gets its own outcome, a batch over the limit changes nothing,
//! and only the hub may call it.

use tonic::Code;
use vigo_common::pki::Role;
use vigo_common::signing::generate_key;
use vigo_proto::v1 as pb;
use vigo_proto::v1::register_envoy_outcome::Outcome;
use vigo_tests::cluster::Cluster;

fn registration(id: u64, hostname: &str, key: &[u8]) -> pb::RegisterEnvoyRequest {
    pb::RegisterEnvoyRequest {
        envoy_id: id,
        hostname: hostname.into(),
        public_key: key.to_vec().into(),
        token_name: "test".into(),
    }
}

fn new_key() -> Vec<u8> {
    generate_key().verifying_key().to_bytes().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_envoy_of_a_batch_gets_its_own_outcome_and_bad_batches_change_nothing() {
    let cluster = Cluster::start(1, &["spoke-a"]).await;
    let (enrolled, _) = cluster.enroll(0, "web-1").await.unwrap();
    let enrolled_key = enrolled.key.verifying_key().to_bytes();
    let spoke = || {
        pb::spoke_admin_client::SpokeAdminClient::new(cluster.channel_as(
            "hub-1",
            &cluster.spoke_address(0),
            Role::Spoke,
        ))
    };
    let envoys = || async {
        spoke()
            .stats(pb::StatsRequest {})
            .await
            .unwrap()
            .into_inner()
            .envoys
    };
    assert_eq!(envoys().await, 1);

    let batch = vec![
        registration(0x1111, "web-2", &new_key()),
        // The hub's retry of an enrollment already recorded.
        registration(enrolled.envoy_id.get(), "web-1", &enrolled_key),
        // An id the spoke holds for another hostname.
        registration(enrolled.envoy_id.get(), "web-9", &new_key()),
        registration(0, "web-3", &new_key()),
        registration(0x2222, "web-4", &[7u8; 5]),
        registration(0x3333, "not a hostname!", &new_key()),
    ];
    let outcomes = spoke()
        .register_envoys(pb::RegisterEnvoysRequest { envoys: batch })
        .await
        .unwrap()
        .into_inner()
        .outcomes;
    let got: Vec<Result<(u64, bool), Code>> = outcomes
        .into_iter()
        .map(|o| match o.outcome.expect("an outcome") {
            Outcome::Registered(r) => Ok((r.envoy_id, r.already_registered)),
            Outcome::Refused(r) => Err(Code::from(r.code)),
        })
        .collect();
    assert_eq!(
        got,
        vec![
            Ok((0x1111, false)),
            Ok((enrolled.envoy_id.get(), true)),
            Err(Code::FailedPrecondition),
            Err(Code::InvalidArgument),
            Err(Code::InvalidArgument),
            Err(Code::InvalidArgument),
        ]
    );
    assert_eq!(envoys().await, 2, "only web-2 is new");

    // Over the limit: refused whole, nothing recorded.
    let oversized: Vec<_> = (0..=vigo_common::limits::MAX_REGISTER_BATCH as u64)
        .map(|i| registration(0x10_0000 + i, &format!("bulk-{i}"), &new_key()))
        .collect();
    let e = spoke()
        .register_envoys(pb::RegisterEnvoysRequest { envoys: oversized })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(envoys().await, 2);

    // An admin certificate may read a spoke, not register envoys on it.
    let mut admin = pb::spoke_admin_client::SpokeAdminClient::new(cluster.channel_as(
        "admin",
        &cluster.spoke_address(0),
        Role::Spoke,
    ));
    let e = admin
        .register_envoys(pb::RegisterEnvoysRequest {
            envoys: vec![registration(0x4444, "web-5", &new_key())],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(envoys().await, 2);
}
