//! Bundles are signed by the hub: spokes hold no signing key, serve the hub's
//! signatures and refuse a version whose signatures do not verify over the manifests
//! they build. Rotating the key (add, use, retire) moves envoys to the new key without
//! a moment in which a bundle they need is signed by a key they do not trust.

use std::time::Duration;

use tonic::Code;
use vigo_common::pki::Role;
use vigo_common::policy::bundle::{BundleError, verify_delivery};
use vigo_proto::admin::v1 as api;
use vigo_proto::v1 as pb;
use vigo_tests::cluster::{Cluster, eventually};
use vigo_tests::{TestEnvoy, repo_root};

fn keys_of(list: &api::BundleKeyList) -> Vec<(String, String)> {
    list.keys
        .iter()
        .map(|k| (k.key.clone(), k.state.clone()))
        .collect()
}

/// Checks in until the spoke sends a bundle, and returns its manifest.
async fn next_bundle(envoy: &mut TestEnvoy) -> pb::BundleManifest {
    let before = envoy.fingerprint();
    for _ in 0..100 {
        envoy.check_in().await.expect("check-in");
        match &envoy.bundle {
            Some(b) if Some(b.fingerprint) != before => return b.manifest.clone(),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    panic!("no new bundle within 20 s");
}

fn hex_keys(manifest: &pb::BundleManifest) -> Vec<String> {
    manifest.trusted_keys.iter().map(hex::encode).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_bundle_key_moves_the_fleet_to_the_new_key() {
    let cluster = Cluster::start(3, &["spoke-a"]).await;
    assert!(
        !cluster.spoke_config_text(0).contains("bundle_signing_key"),
        "the spoke holds no signing key"
    );
    // The hub keeps the keys in its replicated state, in a directory of its own.
    use std::os::unix::fs::PermissionsExt;
    let data = std::fs::metadata(cluster.dir.path().join("hub-1")).unwrap();
    assert_eq!(data.permissions().mode() & 0o777, 0o700);
    cluster
        .publish(0, &repo_root().join("deploy/policy"), "first")
        .await
        .unwrap();
    let (identity, _) = cluster.enroll(0, "web-1").await.unwrap();
    let address = identity.spoke_address.clone();
    let mut online = TestEnvoy::new(identity, &address);
    let first = next_bundle(&mut online).await;
    let (identity, _) = cluster.enroll(1, "web-2").await.unwrap();
    let mut offline = TestEnvoy::new(identity, &address);
    offline.check_in().await.unwrap();

    let admin = cluster.admin(1);
    let listed = admin
        .clone()
        .list_bundle_keys(api::ListBundleKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    let [(old, state)] = keys_of(&listed).try_into().unwrap();
    assert_eq!(state, "signing");
    assert_eq!(hex::encode(&first.signing_key), old, "the hub's key signs");
    assert_eq!(hex_keys(&first), [old.as_str()]);

    // Add: the old key still signs; envoys learn the new one with their next bundle.
    let added = admin
        .clone()
        .add_bundle_key(api::AddBundleKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    let [_, (new, state)] = keys_of(&added).try_into().unwrap();
    assert_eq!(state, "trusted");
    assert!(
        added.generation > first.generation,
        "re-signed at a new generation"
    );
    let learned = next_bundle(&mut online).await;
    assert_eq!(hex::encode(&learned.signing_key), old);
    assert_eq!(hex_keys(&learned), [old.clone(), new.clone()]);
    assert_eq!(online.identity.bundle_keys.len(), 2);

    // Use: the new key signs, named by a prefix; the envoy that learned it takes it.
    admin
        .clone()
        .use_bundle_key(api::BundleKeyRef {
            key: new[..10].to_uppercase(),
        })
        .await
        .unwrap();
    let used = next_bundle(&mut online).await;
    assert_eq!(hex::encode(&used.signing_key), new);
    // An envoy that slept through `add` cannot trust it: it refuses and keeps its bundle.
    let request = offline.check_in_request();
    let response = offline.send(request).await.unwrap();
    let Some(pb::check_in_response::Answer::Bundle(delivery)) = response.answer else {
        panic!("the offline envoy gets the new bundle")
    };
    assert_eq!(
        verify_delivery(&delivery, &offline.identity.bundle_keys, |_| None).unwrap_err(),
        BundleError::UntrustedKey
    );

    // The signing key cannot be retired; an unknown one is not found.
    let refused = admin
        .clone()
        .retire_bundle_key(api::BundleKeyRef { key: new.clone() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let refused = admin
        .clone()
        .use_bundle_key(api::BundleKeyRef {
            key: "00000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    let refused = admin
        .clone()
        .use_bundle_key(api::BundleKeyRef {
            key: new[..6].into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::NotFound,
        "a prefix under 8 digits names nothing"
    );

    // Retire: the old key leaves every envoy's trusted set.
    let retired = admin
        .clone()
        .retire_bundle_key(api::BundleKeyRef { key: old.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys_of(&retired), [(new.clone(), "signing".to_string())]);
    let last = next_bundle(&mut online).await;
    assert_eq!(hex_keys(&last), [new.as_str()]);
    assert_eq!(online.identity.bundle_keys.len(), 1);

    // Every hub node holds the same keys; a new leader signs with the new key.
    let leader = cluster.leader().await;
    cluster.stop_hub(leader).await;
    let other = (leader + 1) % 3;
    let changed = tempfile::tempdir().unwrap();
    for (path, text) in vigo_common::policy::read_files(&repo_root().join("deploy/policy")).unwrap()
    {
        let to = changed.path().join(path);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, format!("{text}\n# after failover\n")).unwrap();
    }
    let published = eventually(Duration::from_secs(30), || async {
        cluster
            .publish(other, changed.path(), "after failover")
            .await
    })
    .await;
    assert!(!published.version.is_empty());
    let after = next_bundle(&mut online).await;
    assert_eq!(hex::encode(&after.signing_key), new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoke_refuses_a_version_its_hub_did_not_sign() {
    let cluster = Cluster::start(1, &["spoke-a"]).await;
    cluster
        .publish(0, &repo_root().join("deploy/policy"), "first")
        .await
        .unwrap();
    let (identity, _) = cluster.enroll(0, "web-1").await.unwrap();
    let address = identity.spoke_address.clone();
    let mut envoy = TestEnvoy::new(identity, &address);
    let held = next_bundle(&mut envoy).await;

    // Whoever holds a hub certificate (or sits between hub and spoke) and changes the
    // policy cannot make the spoke serve it: the signatures are over the hub's manifests.
    let good = cluster
        .as_spoke("spoke-a", 0)
        .get_config(pb::GetConfigRequest::default())
        .await
        .unwrap()
        .into_inner();
    let spoke = pb::spoke_admin_client::SpokeAdminClient::new(cluster.channel_as(
        "hub-1",
        &address,
        Role::Spoke,
    ));
    let mut forged = good.clone();
    forged.generation += 1;
    let refused = spoke.clone().apply_config(forged).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("does not verify"),
        "{}",
        refused.message()
    );
    let mut unsigned = good.clone();
    unsigned.bundle_key = Default::default();
    unsigned.generation += 1;
    let refused = spoke.clone().apply_config(unsigned).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("no bundle signatures"),
        "{}",
        refused.message()
    );
    let mut short = good.clone();
    short.bundle_signatures.pop();
    short.generation += 1;
    assert_eq!(
        spoke.clone().apply_config(short).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // Nothing changed: the envoy's bundle is still the one in force.
    let request = envoy.check_in_request();
    let response = envoy.send(request).await.unwrap();
    assert!(
        matches!(
            response.answer,
            Some(pb::check_in_response::Answer::NoChange(_))
        ),
        "{response:?}"
    );
    assert_eq!(envoy.bundle.as_ref().unwrap().manifest, held);
    // The genuine version is accepted (a no-op: it is the one in force).
    spoke
        .clone()
        .apply_config(good)
        .await
        .expect("the hub's own version");
}
