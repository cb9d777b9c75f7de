//! The operator's day end to end (3 hubs, a spoke, a real agent applying real
//! resources): a run is read resource by resource over gRPC, REST and `vigocli`; a
//! config change refreshes a handler exactly once and an unchanged run not at all;
//! conditions skip what they should; `config trace` says where every value came from.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vigo_envoy::agent::Agent;
use vigo_envoy::agent::state::StateDir;
use vigo_proto::admin::v1 as api;
use vigo_tests::binary;
use vigo_tests::cluster::{Cluster, eventually};

/// The policy of a web host whose files live under `w`; `greeting` is the role's.
fn write_policy(dir: &Path, w: &Path, greeting: &str) {
    let w = w.display();
    let files = [
        (
            "hostcrates.yaml",
            "hostcrates:\n  - {name: web, match: 'web-*', roles: [web], vars: {port: '8080'}}\n"
                .to_string(),
        ),
        (
            "roles/web.yaml",
            format!(
                "configcrates:\n  - site\n  - {{name: extras, when: 'traits.os == \"nowhere\"'}}\n\
                 vars: {{greeting: {greeting}}}\n"
            ),
        ),
        (
            "configcrates/site.yaml",
            format!(
                "vars: {{port: '80', greeting: hi}}\n\
                 resources:\n\
                 \x20 - {{id: conf, type: file, path: {w}/site.conf, content: \"{{{{ vars.greeting }}}} on {{{{ vars.port }}}}\\n\", notify: [reload]}}\n\
                 \x20 - {{id: reload, type: exec, command: 'echo reload >> {w}/reloads', refresh_only: true}}\n\
                 \x20 - {{id: broken, type: file, path: {w}/missing/dir/x, content: x}}\n\
                 \x20 - {{id: after-broken, type: file, path: {w}/after, content: x, depends_on: [broken]}}\n\
                 \x20 - {{id: never, type: file, path: {w}/never, content: x, when: 'traits.os == \"nowhere\"'}}\n\
                 \x20 - {{id: old, type: directory, path: {w}/old, ensure: absent, recursive: true}}\n"
            ),
        ),
        (
            "configcrates/extras.yaml",
            format!("resources:\n  - {{id: x, type: file, path: {w}/extras, content: x}}\n"),
        ),
    ];
    for (rel, text) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

struct Day {
    cluster: Cluster,
    policy: tempfile::TempDir,
    work: tempfile::TempDir,
    agent: Agent,
    envoy_id: String,
    _homes: tempfile::TempDir,
}

/// Roll-ups every second, each kept in the history.
const QUICK_HISTORY: &str = "compliance: {roll_up_every: 1s, sample_every: 1s}\n";

impl Day {
    async fn start() -> Day {
        let cluster = Cluster::start_custom(
            3,
            &["spoke-a"],
            Cluster::FAST_RAFT,
            "{interval: 2s}",
            QUICK_HISTORY,
        )
        .await;
        let (policy, work, homes) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        write_policy(policy.path(), work.path(), "hello");
        cluster.publish(0, policy.path(), "web v1").await.unwrap();
        let (identity, _) =
            eventually(Duration::from_secs(60), || cluster.enroll(0, "web-01")).await;
        let state = StateDir::new(homes.path().join("web-01"));
        state.save_identity(&identity, false).unwrap();
        Day {
            envoy_id: identity.envoy_id.to_string(),
            agent: Agent::load(state).unwrap(),
            cluster,
            policy,
            work,
            _homes: homes,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.work.path().join(rel)
    }

    fn reloads(&self) -> usize {
        std::fs::read_to_string(self.path("reloads"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// Runs the agent until the site config reads `want` (the spoke may not serve a new
    /// publish yet).
    async fn converge_to(&mut self, want: &str) {
        for _ in 0..60 {
            self.agent.run_once(false).await.unwrap();
            if std::fs::read_to_string(self.path("site.conf")).unwrap_or_default() == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("site.conf never became {want:?}");
    }

    async fn runs(&self, limit: u32) -> api::EnvoyRunList {
        self.cluster
            .admin(1)
            .envoy_runs(api::EnvoyRunsRequest {
                envoy_id: self.envoy_id.clone(),
                limit,
            })
            .await
            .unwrap()
            .into_inner()
    }

    fn vigocli(&self, args: &[&str]) -> (bool, String, String) {
        self.vigocli_at(0, args)
    }

    /// `vigocli` against hub `i`: (succeeded, stdout, stderr).
    fn vigocli_at(&self, i: usize, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(binary("vigocli"))
            .args(["--hub", &self.cluster.hub_address(i), "--ca"])
            .arg(self.cluster.pki("ca.pem"))
            .arg("--token-file")
            .arg(self.cluster.dir.path().join("hub-1").join("admin.token"))
            .args(["--timeout", "20s"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn outcome<'a>(run: &'a api::RunInfo, id: &str) -> &'a api::ResourceRun {
    run.resources
        .iter()
        .find(|r| r.resource_id == id)
        .unwrap_or_else(|| panic!("{id} not in {run:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reads_resource_by_resource_and_a_change_refreshes_once() {
    let mut day = Day::start().await;
    std::fs::create_dir_all(day.path("old/deep/er")).unwrap();
    std::fs::write(day.path("old/deep/er/file"), "stale").unwrap();

    day.converge_to("hello on 8080\n").await;
    assert_eq!(
        day.reloads(),
        1,
        "the first write of the config refreshed the handler"
    );
    assert!(!day.path("old").exists(), "the absent tree was removed");
    assert!(!day.path("never").exists() && !day.path("extras").exists());

    let list = day.runs(0).await;
    assert_eq!(list.spoke, "spoke-a");
    let run = &list.runs[0];
    assert_eq!(run.status, "degraded", "{run:?}");
    assert_eq!((run.failed, run.changed), (1, 3), "{run:?}");
    assert_eq!(outcome(run, "site/conf").outcome, "changed");
    let reload = outcome(run, "site/reload");
    assert_eq!(reload.outcome, "changed");
    assert!(reload.message.contains("(site/conf changed)"), "{reload:?}");
    let broken = outcome(run, "site/broken");
    assert_eq!(broken.outcome, "failed");
    assert!(broken.message.contains("does not exist"), "{broken:?}");
    let after = outcome(run, "site/after-broken");
    assert_eq!(after.outcome, "skipped");
    assert_eq!(after.message, "dependency site/broken failed");
    for id in ["site/never", "extras/x"] {
        let r = outcome(run, id);
        assert_eq!(r.outcome, "skipped", "{r:?}");
        assert!(r.message.contains("condition is false"), "{r:?}");
    }

    // Nothing changed: the handler is not refreshed, and the runs list grows newest
    // first.
    day.agent.run_once(false).await.unwrap();
    assert_eq!(day.reloads(), 1);
    let list = day.runs(2).await;
    assert_eq!(list.runs.len(), 2);
    assert!(list.runs[0].run_id > list.runs[1].run_id);
    assert_eq!(outcome(&list.runs[0], "site/reload").outcome, "ok");

    // A change of the role's variable rewrites the config and refreshes exactly once.
    write_policy(day.policy.path(), day.work.path(), "bonjour");
    day.cluster
        .publish(0, day.policy.path(), "greeting v2")
        .await
        .unwrap();
    day.converge_to("bonjour on 8080\n").await;
    assert_eq!(day.reloads(), 2);
    day.agent.run_once(false).await.unwrap();
    assert_eq!(day.reloads(), 2);

    // The same reading through vigocli.
    let id = day.envoy_id.clone();
    let (ok, out, err) = day.vigocli(&["envoys", "runs", &id, "--limit", "3"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("site/broken") && out.contains("failed"),
        "{out}"
    );
    assert!(
        !out.contains("site/never") || out.contains("skipped"),
        "{out}"
    );
    let (ok, out, err) = day.vigocli(&["envoys", "show", &id, "--run", "latest"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("hostname   web-01") && out.contains("site/after-broken"),
        "{out}"
    );
    let (ok, out, err) = day.vigocli(&["--json", "envoys", "show", &id, "--run", "latest"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["status"], "degraded", "{json}");
    let (ok, _, err) = day.vigocli(&["envoys", "show", &id, "--run", "12345"]);
    assert!(!ok && err.contains("keeps no run 12345"), "{err}");
    let (ok, _, err) = day.vigocli(&["envoys", "runs", &id, "--limit", "0"]);
    assert!(!ok && err.contains("0"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_and_runs_answer_the_same_over_rest_grpc_and_the_cli() {
    let mut day = Day::start().await;
    day.converge_to("hello on 8080\n").await;

    let trace = day
        .cluster
        .admin(2)
        .trace_config(api::TraceConfigRequest {
            hostname: "WEB-01".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (trace.hostname.as_str(), trace.hostcrate.as_str()),
        ("web-01", "web")
    );
    let port = trace.vars.iter().find(|v| v.name == "port").unwrap();
    assert_eq!(
        (port.value.as_str(), port.source.as_str()),
        ("8080", "hostcrate web")
    );
    assert_eq!(port.overrides[0].source, "configcrate site");
    let extras = trace
        .configcrates
        .iter()
        .find(|c| c.name == "extras")
        .unwrap();
    assert_eq!(extras.when, "traits.os == \"nowhere\"");

    let (ok, out, err) = day.vigocli(&["config", "trace", "web-01"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("hostcrate web") && out.contains("role web"),
        "{out}"
    );
    let dir = day.policy.path().display().to_string();
    // A local trace needs no hub: the one named here does not exist.
    let out = Command::new(binary("vigocli"))
        .args([
            "--hub",
            "127.0.0.1:1",
            "config",
            "trace",
            "db-01",
            "--dir",
            &dir,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("none matches"), "{text}");

    let rest = day.cluster.rest_address(1);
    let (ca, token) = (day.cluster.ca_pem(), day.cluster.api_token());
    let get = |path: String| {
        let (ca, token) = (ca.clone(), token.clone());
        async move { vigo_tests::https::request(rest, &ca, "GET", &path, Some(&token), None).await }
    };
    let (status, body) = get(format!("/api/v1/envoys/{}/runs?limit=1", day.envoy_id)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["runs"].as_array().unwrap().len(), 1);
    assert_eq!(body["runs"][0]["status"], "degraded");
    for (path, why) in [
        (
            format!("/api/v1/envoys/{}/runs?limit=500", day.envoy_id),
            "above the maximum",
        ),
        (
            format!("/api/v1/envoys/{}/runs?since=1", day.envoy_id),
            "unknown parameter",
        ),
        ("/api/v1/config/trace".to_string(), "is required"),
        (
            "/api/v1/config/trace?host=web%2101".to_string(),
            "not a host name",
        ),
        (
            "/api/v1/config/trace?host=web-01&version=ffff".to_string(),
            "no config version",
        ),
    ] {
        let (status, body) = get(path.clone()).await;
        assert!(status == 400 || status == 404, "{path}: {status} {body}");
        assert!(body.to_string().contains(why), "{path}: {body}");
    }
    let (status, body) = get("/api/v1/config/trace?host=web-01".to_string()).await;
    assert_eq!(
        (status, body["hostcrate"].as_str()),
        (200, Some("web")),
        "{body}"
    );
    let (status, _) = get("/api/v1/envoys/00000000000000aa/runs".to_string()).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compliance_history_is_sampled_bounded_by_window_and_outlives_its_leader() {
    let mut day = Day::start().await;
    day.converge_to("hello on 8080\n").await;
    let history = |hub: usize| {
        let mut admin = day.cluster.admin(hub);
        async move {
            admin
                .compliance_history(api::ComplianceHistoryRequest {
                    window_ms: 3_600_000,
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    // Samples come from the leader's roll-ups; the latest counts the degraded envoy.
    let timeline = eventually(Duration::from_secs(30), || async {
        let t = history(0).await.map_err(|e| e.to_string())?;
        let degraded = |s: &api::ComplianceSample| {
            s.counts
                .as_ref()
                .and_then(|c| c.by_status.get("degraded"))
                .copied()
        };
        match t.samples.last() {
            Some(s) if t.samples.len() >= 2 && degraded(s) == Some(1) => Ok(t),
            _ => Err(format!("{} samples so far", t.samples.len())),
        }
    })
    .await;
    assert_eq!(timeline.sample_every_ms, 1000);
    assert!(timeline.samples.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
    let last = timeline.samples.last().unwrap().counts.clone().unwrap();
    assert_eq!(last.total, 1);
    assert!(last.by_status.contains_key("converged") && last.by_status.contains_key("offline"));

    // A window that begins after the first sample leaves it out (the hub's clock is
    // this machine's, read later than here).
    let first = timeline.samples[0].at_ms;
    let window_ms = vigo_common::time::now_ms() - first - 1;
    let recent = day
        .cluster
        .admin(1)
        .compliance_history(api::ComplianceHistoryRequest { window_ms })
        .await
        .unwrap()
        .into_inner();
    assert!(recent.samples.iter().all(|s| s.at_ms > first), "{recent:?}");

    // The history is replicated: with the leader stopped, the others still hold it and
    // the new leader goes on sampling.
    let leader = day.cluster.leader().await;
    let before = timeline.samples.len();
    day.cluster.stop_hub(leader).await;
    let other = (leader + 1) % 3;
    eventually(Duration::from_secs(30), || async {
        let t = history(other).await.map_err(|e| e.to_string())?;
        if t.samples.len() > before + 1 {
            Ok(())
        } else {
            Err(format!("{} samples", t.samples.len()))
        }
    })
    .await;

    let (ok, text, err) = day.vigocli_at(other, &["compliance", "--history", "1h"]);
    assert!(ok, "{err}");
    assert!(
        text.contains("one sample every 1s") && text.contains("CONVERGED %"),
        "{text}"
    );
    let rest = day.cluster.rest_address(other);
    let (ca, token) = (day.cluster.ca_pem(), day.cluster.api_token());
    for (path, want) in [
        ("/api/v1/compliance/history?window=1h", 200),
        ("/api/v1/compliance/history?window=soon", 400),
        ("/api/v1/compliance/history?window=0s", 400),
        ("/api/v1/compliance/history?span=1h", 400),
    ] {
        let (status, body) =
            vigo_tests::https::request(rest, &ca, "GET", path, Some(&token), None).await;
        assert_eq!(status, want, "{path}: {body}");
    }
}
