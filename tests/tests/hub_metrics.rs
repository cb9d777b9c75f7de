//! The hub's Prometheus metrics, rendered from a real cluster's activity: raft's view,
//! the compliance roll-up, fan-out latency per spoke, enrollments, and admin requests by
//! route and outcome; and the whole scrape of hubs and spokes as Prometheus' own linter
//! (`promtool check metrics`) reads it, every family with its HELP text. (Its own test
//! binary: the metrics recorder is process-wide.)

use std::sync::Arc;

use vigo_proto::admin::v1 as api;
use vigo_tests::cluster::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_metrics_cover_raft_rollup_fanout_and_admin_calls() {
    let handle = vigo_common::telemetry::install_metrics().expect("recorder");
    vigo_hub::metrics::describe();
    vigo_spoke::metrics::describe();
    let cluster = Arc::new(Cluster::start(3, &["spoke-a", "spoke-b", "spoke-c"]).await);
    // Families are there from the start (the nodes up, the first scrape's refresh run),
    // before anything happened.
    let first = cluster.leader().await;
    vigo_hub::metrics::publish_raft(&cluster.hub(first).node);
    let fresh = handle.render();
    for family in [
        "vigo_checkins_total",
        "vigo_fleet_envoys",
        "vigo_hub_enrollments_total",
        "vigo_policy_reloads_total",
        "vigo_open_streams",
    ] {
        assert!(
            fresh.contains(&format!("# TYPE {family} ")),
            "{family} absent at start:\n{fresh}"
        );
    }
    cluster.enroll_fleet("metrics", 6).await;
    let leader = cluster.leader().await;
    cluster
        .admin(leader)
        .status(api::StatusRequest {})
        .await
        .unwrap();
    cluster
        .admin(leader)
        .compliance(api::ComplianceRequest {})
        .await
        .unwrap();
    let refused = cluster
        .admin(leader)
        .list_envoys(api::ListEnvoysRequest {
            sort: "size".into(),
            ..Default::default()
        })
        .await;
    assert!(refused.is_err());
    vigo_hub::metrics::publish_raft(&cluster.hub(leader).node);

    let text = handle.render();
    for needle in [
        "vigo_hub_raft_term ",
        "vigo_hub_raft_is_leader 1",
        "vigo_hub_raft_commit_index ",
        "vigo_hub_raft_applied_index ",
        "vigo_hub_enrollments_total 6",
        "vigo_fleet_envoys{status=\"no_data\"} 6",
        "vigo_hub_fanout_seconds_bucket{spoke=\"spoke-a\"",
        "vigo_hub_admin_requests_total{route=\"grpc:status\",code=\"ok\"} 1",
        "vigo_hub_admin_requests_total{route=\"grpc:list_envoys\",code=\"malformed\"} 1",
        "vigo_hub_admin_request_seconds_bucket{route=\"grpc:compliance\"",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }

    // Every family scraped now was scraped at the start too.
    let families = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()
    };
    let late: Vec<String> = families(&text)
        .difference(&families(&fresh))
        .cloned()
        .collect();
    assert!(late.is_empty(), "families absent at start: {late:?}");

    // What a scrape serves: the recorder's families, then the process ones.
    let scrape = format!("{text}{}", vigo_common::telemetry::process::render());
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let family = rest.split_whitespace().next().unwrap();
            assert!(
                scrape.contains(&format!("# HELP {family} ")),
                "{family} has no HELP text"
            );
        }
    }
    promtool_check(&scrape);
    monitoring_queries_known_families(&scrape);
}

/// Every family the shipped dashboards and alert rules query is one a node exports
/// (a renamed metric must not leave a panel blank or an alert silent).
fn monitoring_queries_known_families(scrape: &str) {
    let dir = vigo_tests::repo_root().join("deploy/monitoring");
    let mut checked = 0;
    for file in ["alerts.yml", "fleet.json", "spokes.json", "hub.json"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find(['v', 'p']) {
            rest = &rest[at..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[name.len().max(1)..];
            if !(name.starts_with("vigo_") || name.starts_with("process_")) {
                continue;
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                scrape.contains(&format!("# TYPE {family} ")),
                "{file} queries {name}, which no node exports"
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "{checked} references checked");
}

/// `promtool check metrics` (Debian's `prometheus` package; `tests/monitoring/setup.sh`
/// installs it) finds nothing to say about `scrape`.
fn promtool_check(scrape: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (install it with tests/monitoring/setup.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}
