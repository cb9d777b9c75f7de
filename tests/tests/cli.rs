//! vigocli against a cluster, as an operator runs it: a real process.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use vigo_tests::binary;
use vigo_tests::cluster::Cluster;

/// A port that accepts connections and never says a word: a frozen hub node (its
/// kernel still completes TCP handshakes).
fn frozen_node() -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < until {
            match listener.accept() {
                Ok((s, _)) => open.push(s),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    (address, held)
}

/// With a frozen node first in its list, vigocli moves on to one that answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vigocli_skips_a_hub_that_accepts_but_does_not_answer() {
    let cluster = Cluster::start(1, &["spoke-a"]).await;
    let (frozen, _held) = frozen_node();
    let token = cluster.dir.path().join("hub-1").join("admin.token");
    let ca = cluster.pki("ca.pem");
    let hubs = format!("{frozen},{}", cluster.hub_address(0));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(binary("vigocli"))
            .args(["--hub", &hubs, "--ca"])
            .arg(&ca)
            .arg("--token-file")
            .arg(&token)
            .args(["--timeout", "10s", "hub", "members", "--json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vigocli failed: {stderr}");
    let members: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        members.to_string().contains(&cluster.hub_address(0)),
        "{members}"
    );
    drop(cluster);
}

/// A script that retries a write with the same `--request-id` (it saw no answer) gets
/// the first outcome: the same token secret, which works, and no "exists" refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vigocli_retried_with_the_same_request_id_answers_the_first_outcome() {
    let cluster = Cluster::start(3, &["spoke-a"]).await;
    let token = cluster.dir.path().join("hub-1").join("admin.token");
    let ca = cluster.pki("ca.pem");
    let run = |hub: String, request_id: &'static str| {
        let (token, ca) = (token.clone(), ca.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(binary("vigocli"))
                .args(["--hub", &hub, "--ca"])
                .arg(&ca)
                .arg("--token-file")
                .arg(&token)
                .args(["--request-id", request_id, "--json"])
                .args(["token", "create", "nightly", "--role", "viewer"])
                .output()
                .unwrap()
        })
    };
    let secret = |out: &std::process::Output| -> String {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "vigocli failed: {stderr}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["secret"].as_str().unwrap().to_string()
    };
    let first = secret(&run(cluster.hub_address(0), "nightly-1").await.unwrap());
    let again = secret(&run(cluster.hub_address(2), "nightly-1").await.unwrap());
    assert_eq!(first, again);
    let other = run(cluster.hub_address(1), "nightly-2").await.unwrap();
    assert!(
        !other.status.success(),
        "a new request for the name is refused"
    );
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("exists"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
}

/// Bundle-key rotation as an operator types it: add, use by a prefix, retire; retiring
/// the signing key is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vigocli_rotates_the_bundle_key() {
    let cluster = Cluster::start(1, &["spoke-a"]).await;
    let token = cluster.dir.path().join("hub-1").join("admin.token");
    let ca = cluster.pki("ca.pem");
    let hub = cluster.hub_address(0);
    let run = |args: Vec<String>| {
        let (token, ca, hub) = (token.clone(), ca.clone(), hub.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(binary("vigocli"))
                .args(["--hub", &hub, "--ca"])
                .arg(&ca)
                .arg("--token-file")
                .arg(&token)
                .arg("bundle-key")
                .args(args)
                .output()
                .unwrap()
        })
    };
    let ok = |out: std::process::Output| -> String {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "vigocli failed: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let listed = ok(run(args(&["list"])).await.unwrap());
    let old = listed
        .lines()
        .find(|l| l.contains("signing"))
        .and_then(|l| l.split_whitespace().next())
        .expect("a signing key")
        .to_string();
    let added = ok(run(args(&["add"])).await.unwrap());
    let new = added
        .lines()
        .find(|l| l.contains("trusted"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the new key, trusted")
        .to_string();
    let refused = run(vec!["retire".into(), old[..12].into()]).await.unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("signs the bundles in force"), "{stderr}");
    ok(run(vec!["use".into(), new[..12].into()]).await.unwrap());
    let after = ok(run(vec!["retire".into(), old[..12].into()]).await.unwrap());
    assert!(!after.contains(&old), "{after}");
    assert!(
        after
            .lines()
            .any(|l| l.starts_with(&new) && l.contains("signing")),
        "{after}"
    );
}
