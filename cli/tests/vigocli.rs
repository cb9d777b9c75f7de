//! Every vigocli command, driven as a process against a real in-process cluster (3 hubs,
//! 3 spokes, envoys speaking the real protocol): output and exit status.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use vigo_tests::cluster::Cluster;

const SPOKES: &[&str] = &["spoke-a", "spoke-b", "spoke-c"];

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

/// Runs vigocli against the cluster's hubs (the first address given is hub `first`).
struct Cli {
    hubs: String,
    ca: PathBuf,
    token_file: PathBuf,
}

impl Cli {
    fn new(cluster: &Cluster, first: usize) -> Self {
        let mut hubs: Vec<String> = (0..3).map(|i| cluster.hub_address(i)).collect();
        hubs.rotate_left(first);
        Self {
            hubs: hubs.join(","),
            ca: cluster.pki("ca.pem"),
            token_file: cluster.dir.path().join("hub-1").join("admin.token"),
        }
    }

    async fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, &[]).await
    }

    async fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigocli"));
        cmd.env_remove("VIGO_TOKEN")
            .env("HOME", "/nonexistent")
            .env("VIGO_HUB", &self.hubs)
            .env("VIGO_CA", &self.ca)
            .env("VIGO_TOKEN_FILE", &self.token_file)
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output().expect("run vigocli"))
            .await
            .unwrap();
        let out = Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        println!(
            "$ vigocli {}\n{}{}[exit {}]",
            args.join(" "),
            out.stdout,
            out.stderr,
            out.code
        );
        out
    }

    async fn ok(&self, args: &[&str]) -> Out {
        let out = self.run(args).await;
        assert_eq!(out.code, 0, "vigocli {args:?}: {}", out.stderr);
        out
    }
}

fn policy(dir: &std::path::Path, greeting: &str) {
    std::fs::create_dir_all(dir.join("roles")).unwrap();
    std::fs::create_dir_all(dir.join("configcrates")).unwrap();
    std::fs::write(
        dir.join("hostcrates.yaml"),
        "hostcrates:\n  - name: web\n    match: 'cli-*'\n    roles: [base]\n",
    )
    .unwrap();
    std::fs::write(dir.join("roles/base.yaml"), "configcrates: [motd]\n").unwrap();
    std::fs::write(
        dir.join("configcrates/motd.yaml"),
        format!("vars: {{greeting: {greeting}}}\nresources:\n  - {{id: motd, type: file, path: /tmp/vigo-cli-test/motd, content: hi}}\n"),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_works_end_to_end() {
    let cluster = Arc::new(Cluster::start(3, SPOKES).await);
    let envoys = cluster.enroll_fleet("cli", 12).await;
    let cli = Cli::new(&cluster, 2);
    let id = envoys[0].id().to_string();

    let help = cli.ok(&["--help"]).await;
    assert!(help.stdout.contains("Exit status"), "{}", help.stdout);

    // status
    let status = cli.ok(&["status"]).await;
    for needle in [
        "leader",
        "spoke-a",
        "spoke-b",
        "spoke-c",
        "12 envoys pinned",
    ] {
        assert!(status.stdout.contains(needle), "status shows {needle}");
    }
    assert_eq!(
        cli.ok(&["status", "--json"]).await.json()["members"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // envoys list: pages, all pages, filters, JSON
    let page = cli.ok(&["envoys", "list", "--limit", "5"]).await;
    assert!(page.stdout.contains("more: --cursor"));
    assert_eq!(
        page.stdout
            .lines()
            .filter(|l| l.starts_with("cli-") || l.contains(" cli-"))
            .count(),
        5
    );
    let all = cli
        .ok(&["envoys", "list", "--limit", "5", "--all", "--json"])
        .await
        .json();
    assert_eq!(all["envoys"].as_array().unwrap().len(), 12);
    let cursor = page
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("more: --cursor "))
        .unwrap()
        .to_string();
    let next = cli
        .ok(&[
            "envoys", "list", "--limit", "5", "--cursor", &cursor, "--json",
        ])
        .await
        .json();
    assert_eq!(next["envoys"][0]["hostname"], "cli-0005");
    let big = cli
        .ok(&[
            "envoys",
            "list",
            "--where",
            "os=debian",
            "--where",
            "mem_mb>4096",
            "--json",
            "--traits",
        ])
        .await
        .json();
    // i % 8 in 4..=7 over i in 0..12
    assert_eq!(big["envoys"].as_array().unwrap().len(), 4);
    assert_eq!(big["envoys"][0]["traits"]["os"], "debian");
    let on_b = cli
        .ok(&["envoys", "list", "--spoke", "spoke-b", "--json"])
        .await
        .json();
    assert!(
        on_b["envoys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["spoke"] == "spoke-b")
    );
    let reversed = cli
        .ok(&[
            "envoys",
            "list",
            "--sort",
            "-hostname",
            "--limit",
            "2",
            "--json",
        ])
        .await
        .json();
    assert_eq!(reversed["envoys"][0]["hostname"], "cli-0011");
    let zero = cli.run(&["envoys", "list", "--limit", "0"]).await;
    assert_eq!(zero.code, 2, "a usage error");
    assert!(zero.stderr.contains("1..=1000"), "{}", zero.stderr);
    let help = cli.ok(&["envoys", "list", "--help"]).await;
    assert!(help.stdout.contains("Connection:"), "{}", help.stdout);
    // An empty environment variable is unset: the token file still authenticates.
    let cleared = cli.run_with(&["status"], &[("VIGO_TOKEN", "")]).await;
    assert_eq!(cleared.code, 0, "{}", cleared.stderr);
    let no_ca = cli.run_with(&["status"], &[("VIGO_CA", "")]).await;
    assert!(
        !no_ca.stderr.contains("a value is required"),
        "{}",
        no_ca.stderr
    );
    let bad = cli.run(&["envoys", "list", "--status", "green"]).await;
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("filter.status"), "{}", bad.stderr);

    // envoys show, compliance, traits count
    let show = cli.ok(&["envoys", "show", &id]).await;
    assert!(
        show.stdout.contains("cli-0000") && show.stdout.contains("mem_mb = 1024"),
        "{}",
        show.stdout
    );
    let compliance = cli.ok(&["compliance"]).await;
    assert!(compliance.stdout.contains("FLEET") && compliance.stdout.contains("HOSTCRATE"));
    assert_eq!(
        cli.ok(&["compliance", "--json"]).await.json()["fleet"]["total"],
        12
    );
    let traits = cli.ok(&["traits", "count", "os"]).await;
    assert!(
        traits
            .stdout
            .lines()
            .any(|l| l.starts_with("debian") && l.trim_end().ends_with("12")),
        "{}",
        traits.stdout
    );

    // config publish, history, rollback
    let dir = tempfile::tempdir().unwrap();
    policy(dir.path(), "one");
    let first = cli
        .ok(&[
            "config",
            "publish",
            dir.path().to_str().unwrap(),
            "-m",
            "first",
            "--json",
        ])
        .await
        .json();
    let v1 = first["version"].as_str().unwrap().to_string();
    policy(dir.path(), "two");
    cli.ok(&[
        "config",
        "publish",
        dir.path().to_str().unwrap(),
        "-m",
        "second",
    ])
    .await;
    let history = cli.ok(&["config", "history"]).await;
    assert!(history.stdout.contains("first") && history.stdout.contains("second"));
    let rolled = cli.ok(&["config", "rollback", &v1[..10]]).await;
    assert!(rolled.stdout.contains("now serving") && rolled.stdout.contains(&v1[..12]));
    let broken = dir.path().join("roles/base.yaml");
    std::fs::write(&broken, "configcrates: [ghost]\n").unwrap();
    let refused = cli
        .run(&[
            "config",
            "publish",
            dir.path().to_str().unwrap(),
            "-m",
            "bad",
        ])
        .await;
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("ghost"), "{}", refused.stderr);

    // push: one envoy, a spoke, a filter, the fleet
    assert!(
        cli.ok(&["push", "--envoy", &id])
            .await
            .stdout
            .starts_with("1 envoys")
    );
    let spoke_a = envoys
        .iter()
        .filter(|e| e.identity.spoke_address == cluster.spoke_address(0))
        .count();
    assert_eq!(
        cli.ok(&["push", "--spoke", "spoke-a", "--json"])
            .await
            .json()["marked"],
        spoke_a
    );
    assert_eq!(
        cli.ok(&["push", "--where", "mem_mb<=2048", "--json"])
            .await
            .json()["marked"],
        4
    );
    assert_eq!(
        cli.ok(&["push", "--all", "--json"]).await.json()["marked"],
        12
    );
    assert_eq!(cli.run(&["push"]).await.code, 1);

    // spokes: list, show, reassign, drain, remove, add
    let spokes = cli.ok(&["spoke", "list"]).await;
    assert_eq!(
        spokes
            .stdout
            .lines()
            .filter(|l| l.starts_with("spoke-"))
            .count(),
        3
    );
    assert!(
        cli.ok(&["spoke", "show", "spoke-b"])
            .await
            .stdout
            .contains("LIVE")
    );
    let home = cli.ok(&["envoys", "show", &id, "--json"]).await.json()["envoy"]["spoke"]
        .as_str()
        .unwrap()
        .to_string();
    let other = SPOKES.iter().find(|s| **s != home).unwrap();
    let moved = cli.ok(&["envoys", "reassign", &id, "--to", other]).await;
    assert!(moved.stdout.contains("moved"), "{}", moved.stdout);
    assert_eq!(
        cli.ok(&["envoys", "show", &id, "--json"]).await.json()["envoy"]["spoke"],
        *other
    );
    let refused = cli.run(&["spoke", "remove", "spoke-c"]).await;
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("drain it first"),
        "{}",
        refused.stderr
    );
    let drained = cli.ok(&["spoke", "drain", "spoke-c"]).await;
    assert!(drained.stdout.contains("drained"), "{}", drained.stdout);
    cli.ok(&["spoke", "remove", "spoke-c"]).await;
    let listed = cli.ok(&["spoke", "list", "--json"]).await.json();
    let c = listed["spokes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["spoke_id"] == "spoke-c")
        .unwrap()
        .clone();
    assert_eq!(c["state"], "removed");
    assert_eq!(
        cli.ok(&["spoke", "add", "spoke-c", "--json"]).await.json()["state"],
        "active"
    );
    assert_eq!(
        cli.ok(&["envoys", "list", "--all", "--json"]).await.json()["envoys"]
            .as_array()
            .unwrap()
            .len(),
        12
    );

    // overrides
    assert!(
        cli.ok(&["overrides", "set", "db-*=spoke-b"])
            .await
            .stdout
            .contains("db-*")
    );
    assert_eq!(cli.run(&["overrides", "set", "db-*=nowhere"]).await.code, 1);

    // revoke
    assert!(
        cli.ok(&["envoys", "revoke", &id, "--reason", "decommissioned"])
            .await
            .stdout
            .contains("revoked")
    );
    assert_eq!(
        cli.ok(&["envoys", "show", &id, "--json"]).await.json()["envoy"]["status"],
        "revoked"
    );

    // tokens, and what a viewer may not do
    let created = cli
        .ok(&["token", "create", "ro", "--role", "viewer", "--json"])
        .await
        .json();
    let secret = created["secret"].as_str().unwrap().to_string();
    cli.ok(&[
        "token",
        "create",
        "rollout",
        "--role",
        "enroll",
        "--uses",
        "5",
        "--expires-in",
        "1d",
    ])
    .await;
    cli.ok(&[
        "token",
        "create",
        "brief",
        "--role",
        "viewer",
        "--expires-in",
        "1s",
    ])
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let tokens = cli.ok(&["token", "list"]).await;
    assert!(
        tokens.stdout.contains("ro ") && tokens.stdout.contains("0/5"),
        "{}",
        tokens.stdout
    );
    let brief = tokens
        .stdout
        .lines()
        .find(|l| l.starts_with("brief"))
        .unwrap();
    assert!(
        brief.contains("expired") && !brief.contains("valid"),
        "one state: {brief}"
    );
    let as_viewer = cli
        .run_with(&["push", "--all"], &[("VIGO_TOKEN", &secret)])
        .await;
    assert_eq!(as_viewer.code, 1);
    assert!(
        as_viewer.stderr.contains("PermissionDenied"),
        "{}",
        as_viewer.stderr
    );
    assert_eq!(
        cli.run_with(&["status"], &[("VIGO_TOKEN", &secret)])
            .await
            .code,
        0
    );
    cli.ok(&["token", "revoke", "ro"]).await;
    assert_eq!(
        cli.run(&["token", "create", "rollout", "--role", "enroll"])
            .await
            .code,
        1
    );
    let unknown = cli
        .run_with(&["status"], &[("VIGO_TOKEN", "vgt_wrong")])
        .await;
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("Unauthenticated"));

    // hub membership
    let members = cli.ok(&["hub", "members"]).await;
    assert!(members.stdout.contains("leader"));
    let leader = cluster.leader().await;
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let fid = (follower + 1).to_string();
    let after = cli.ok(&["hub", "remove", &fid, "--json"]).await.json();
    assert_eq!(after["members"].as_array().unwrap().len(), 2);
    let back = cli
        .ok(&["hub", "add", &fid, &cluster.hub_address(follower), "--json"])
        .await
        .json();
    assert_eq!(back["members"].as_array().unwrap().len(), 3);
    assert!(
        back["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["voter"] == true)
    );

    // A spoke that does not answer: partial output, named, exit status 3.
    let mut cluster = Arc::into_inner(cluster).expect("sole owner");
    drop(envoys);
    cluster.stop_spoke(1).await;
    let partial = cli.run(&["envoys", "list"]).await;
    assert_eq!(partial.code, 3);
    assert!(
        partial.stderr.contains("spoke spoke-b did not answer"),
        "{}",
        partial.stderr
    );

    // Any hub answers: with the first address dead, the next one is used.
    let dead_first = Cli {
        hubs: format!("127.0.0.1:1,{}", cluster.hub_address(0)),
        ..Cli::new(&cluster, 0)
    };
    assert_eq!(dead_first.run(&["status"]).await.code, 0);
    tokio::time::sleep(Duration::from_millis(10)).await;
}
