//! The OpenAPI document describes what the server does: schemathesis (from PyPI,
//! installed by `tests/interop/setup.sh fuzz`) generates requests from the document for
//! every read operation and checks every answer against it — status codes, content
//! types, response schemas, no server errors — against a live 3-hub, 3-spoke cluster
//! with envoys, as an admin, as a viewer and with no token. Zero failures.

use std::process::Command;
use std::sync::Arc;

use vigo_tests::cluster::Cluster;
use vigo_tests::repo_root;

fn schemathesis() -> String {
    let setup = repo_root().join("tests/interop/setup.sh");
    let out = Command::new("bash")
        .arg(setup)
        .arg("fuzz")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{}/st", String::from_utf8_lossy(&out.stdout).trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_in_the_admin_api() {
    let st = tokio::task::spawn_blocking(schemathesis).await.unwrap();
    let cluster = Arc::new(Cluster::start(3, &["spoke-a", "spoke-b", "spoke-c"]).await);
    cluster
        .publish(0, &repo_root().join("deploy/policy"), "fuzzed")
        .await
        .unwrap();
    cluster.enroll_fleet("fuzz", 6).await;
    let viewer = cluster.new_api_token("fuzz-viewer", "viewer").await;
    let seed = std::env::var("VIGO_FUZZ_SEED").unwrap_or_else(|_| "20261202".into());
    let base = format!("https://{}", cluster.rest_address(0));
    let ca = cluster.pki("ca.pem");
    // Kept for whoever reads a failure: the document as served.
    let kept = repo_root().join("target/openapi-fuzzed.json");
    let fetched = Command::new("curl")
        .args(["-sf", "--cacert"])
        .arg(&ca)
        .arg(format!("{base}/api/v1/openapi.json"))
        .arg("-o")
        .arg(&kept)
        .status();
    assert!(fetched.is_ok_and(|s| s.success()), "the document is served");
    for (who, token) in [
        ("admin", Some(cluster.api_token())),
        ("viewer", Some(viewer)),
        ("nobody", None),
    ] {
        let mut command = Command::new(&st);
        command
            .arg("--config-file")
            .arg(repo_root().join("tests/interop/schemathesis.toml"))
            .args([
                "run",
                &format!("{base}/api/v1/openapi.json"),
                "--url",
                &base,
            ])
            .args(["--include-method", "GET", "--checks", "all"])
            // A query string has no types: the "boolean" false schemathesis sends for a
            // string parameter arrives as the string "false", which a trait predicate
            // may well be. Every other check runs.
            .args(["--exclude-checks", "negative_data_rejection"])
            // A fixed seed: the same cases every run, so CI is not at the mercy of a
            // draw. VIGO_FUZZ_SEED=<n> explores others.
            .args(["--max-examples", "20", "--seed", &seed])
            .args(["--workers", "1", "--request-timeout", "20", "--no-color"])
            .arg("--tls-verify")
            .arg(&ca);
        if let Some(token) = token {
            command.args(["--header", &format!("Authorization: Bearer {token}")]);
        }
        let out = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        println!("== schemathesis as {who}\n{said}");
        // An empty run also exits 0: every read operation must have been tested.
        let tested: usize = said
            .lines()
            .find_map(|l| l.trim().strip_prefix("Tested: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        assert!(
            tested >= 12,
            "schemathesis as {who} tested {tested} operations:\n{said}"
        );
        assert!(
            out.status.success(),
            "schemathesis as {who} found failures:\n{said}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
