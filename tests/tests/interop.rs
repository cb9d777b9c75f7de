//! Any TLS stack can talk to it: OpenSSL reads every file `pki init` writes, a client on
//! gRPC's C core (Python grpcio, installed by `tests/interop/setup.sh`) calls the admin
//! API with an admin certificate and checks in as an envoy over its P-256 certificate,
//! and a PKI made by an earlier release (Ed25519 TLS keys) keeps working.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use vigo_common::pki::{
    CertAuthority, LEGACY_TLS_KEY_ALGORITHM, PkiLayout, Role, legacy_envoy_csr,
};
use vigo_common::signing::{generate_key, key_to_pkcs8_pem};
use vigo_common::tls;
use vigo_envoy::client::Identity;
use vigo_proto::admin::v1 as api;
use vigo_proto::v1 as pb;
use vigo_tests::cluster::Cluster;
use vigo_tests::{SpokeHome, TestEnvoy, binary, init, repo_root};

fn run(command: &mut Command) -> String {
    let out = command.output().expect("runs");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `openssl x509` reads every certificate and `openssl pkey` every key in `dir`;
/// returns the keys' descriptions.
fn openssl_reads(dir: &Path) -> Vec<(String, String)> {
    let mut keys = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".pem") {
            run(Command::new("openssl")
                .args(["x509", "-noout", "-subject", "-in"])
                .arg(&path));
        } else if name.ends_with(".key") {
            let text = run(Command::new("openssl")
                .args(["pkey", "-noout", "-text", "-in"])
                .arg(&path));
            keys.push((name, text));
        }
    }
    keys
}

#[test]
fn openssl_reads_every_file_pki_init_writes() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster");
    run(Command::new(binary("vigo-hub"))
        .args(["pki", "init"])
        .arg(&cluster)
        .args(["--hubs", "1,2", "--spokes", "spoke-a"]));
    let standalone = dir.path().join("standalone");
    run(Command::new(binary("vigo-spoke"))
        .args(["pki", "init"])
        .arg(&standalone));
    let mut keys = openssl_reads(&cluster);
    keys.extend(openssl_reads(&standalone));
    assert!(keys.len() >= 9, "{keys:?}");
    for (name, text) in keys {
        if name == "bundle-signing.key" {
            assert!(text.contains("ED25519"), "{name}: {text}");
        } else {
            assert!(
                text.contains("prime256v1"),
                "{name} is a P-256 TLS key: {text}"
            );
        }
    }
}

/// The venv's python with grpcio (made by `tests/interop/setup.sh`).
fn python() -> String {
    let setup = repo_root().join("tests/interop/setup.sh");
    let bin = run(Command::new("bash").arg(setup).arg("grpc"));
    format!("{}/python", bin.trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_c_core_calls_the_admin_api_and_checks_in_as_an_envoy() {
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let cluster = Cluster::start(1, &["spoke-a"]).await;
    cluster
        .publish(0, &repo_root().join("deploy/policy"), "interop")
        .await
        .unwrap();
    let (identity, _) = cluster.enroll(0, "py-1").await.unwrap();
    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let envoy_cert = write("envoy.pem", &identity.cert_pem);
    let envoy_key = write("envoy.key", &identity.tls_key_pem);
    let address = identity.spoke_address.clone();
    let mut envoy = TestEnvoy::new(identity, &address);
    let check_in = hex::encode(envoy.check_in_request().encode_to_vec());
    let job = serde_json::json!({
        "hub": cluster.hub_address(0),
        "spoke": address,
        "ca": cluster.pki("ca.pem"),
        "admin_cert": cluster.pki("admin.pem"),
        "admin_key": cluster.pki("admin.key"),
        "envoy_cert": envoy_cert,
        "envoy_key": envoy_key,
        "check_in": check_in,
    });
    let job_path = write("job.json", &job.to_string());
    let script = repo_root().join("tests/interop/grpc_c_core.py");
    let out =
        tokio::task::spawn_blocking(move || run(Command::new(python).arg(script).arg(job_path)))
            .await
            .unwrap();
    let answer: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
    let hex_field = |k: &str| hex::decode(answer[k].as_str().unwrap()).unwrap();
    let status = api::ClusterStatus::decode(hex_field("status").as_slice()).unwrap();
    assert_eq!(status.leader_id, 1, "{status:?}");
    let response = pb::CheckInResponse::decode(hex_field("check_in").as_slice()).unwrap();
    assert!(
        matches!(
            response.answer,
            Some(pb::check_in_response::Answer::Bundle(_))
        ),
        "the signed check-in was taken: {response:?}"
    );
}

/// A spoke whose PKI an earlier release made (Ed25519 CA and node keys) serves envoys
/// enrolled the old way (certificate on the identity key) and the new way (P-256 TLS
/// key) alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pki_of_an_earlier_release_keeps_working() {
    init();
    let home = SpokeHome::new();
    let layout = PkiLayout::new(home.path("pki"));
    let (ca, ca_key) = CertAuthority::create_with("earlier CA", LEGACY_TLS_KEY_ALGORITHM).unwrap();
    std::fs::write(layout.ca_cert(), ca.cert_pem()).unwrap();
    std::fs::write(layout.ca_key(), ca_key).unwrap();
    let spoke_cert = ca
        .issue_node(
            Role::Spoke,
            "spoke-test",
            &["localhost".into(), "127.0.0.1".into()],
        )
        .unwrap();
    assert!(spoke_cert.key_pem.contains("PRIVATE KEY"));
    layout.write_issued("spoke", &spoke_cert).unwrap();
    let spoke = home.start().await;
    let address = spoke.addr.to_string();

    let mut new = home.enroll(&address, "new-1").await;
    new.check_in()
        .await
        .expect("a P-256 envoy under an Ed25519 CA");

    // An envoy of the earlier release: its CSR and certificate are on its identity key.
    let key = generate_key();
    let config = tls::client_config(&home.ca_pem(), None, &[Role::Spoke]).unwrap();
    let channel = tls::channel(&address, Arc::new(config), Duration::from_secs(5)).unwrap();
    let enrolled = pb::enrollment_client::EnrollmentClient::new(channel)
        .enroll(pb::EnrollRequest {
            token: home.tokens.fleet.clone(),
            hostname: "old-1".into(),
            public_key: key.verifying_key().to_bytes().to_vec().into(),
            csr_der: legacy_envoy_csr(&key).unwrap().into(),
            key_proof: Default::default(),
        })
        .await
        .unwrap()
        .into_inner();
    let identity = Identity {
        envoy_id: vigo_common::EnvoyId::new(enrolled.envoy_id).unwrap(),
        hostname: "old-1".into(),
        tls_key_pem: key_to_pkcs8_pem(&key),
        key,
        cert_pem: vigo_common::pki::cert_der_to_pem(&enrolled.client_certificate_der),
        ca_pem: home.ca_pem(),
        spoke_address: address.clone(),
        bundle_keys: new.identity.bundle_keys.clone(),
    };
    let mut old = TestEnvoy::new(identity, &address);
    old.check_in()
        .await
        .expect("an envoy of the earlier release");
}
