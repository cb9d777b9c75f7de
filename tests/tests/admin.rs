//! The fleet-wide admin API on a real in-process cluster (3 hubs, 3 spokes, envoys
//! speaking the real protocol): pagination across spokes, missing spokes, drain,
//! force-push through an envoy's stream, roles and malformed requests over REST.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tonic::Code;
use vigo_envoy::agent::Agent;
use vigo_envoy::agent::state::StateDir;
use vigo_proto::admin::v1 as api;
use vigo_proto::v1 as pb;
use vigo_tests::TestEnvoy;
use vigo_tests::cluster::Cluster;
use vigo_tests::https::request;

const SPOKES: &[&str] = &["spoke-a", "spoke-b", "spoke-c"];

async fn list_all(
    cluster: &Cluster,
    hub: usize,
    sort: &str,
    limit: u32,
    filter: Option<api::EnvoyFilter>,
) -> Vec<api::EnvoySummary> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = cluster
            .admin(hub)
            .list_envoys(api::ListEnvoysRequest {
                filter: filter.clone(),
                sort: sort.into(),
                limit,
                cursor: cursor.clone(),
                with_traits: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.missing.is_empty(), "{:?}", page.missing);
        assert!(page.envoys.len() <= limit as usize);
        all.extend(page.envoys);
        if page.next_cursor.is_empty() {
            return all;
        }
        cursor = page.next_cursor;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_across_three_spokes_hold_every_envoy_exactly_once() {
    let cluster = Arc::new(Cluster::start(3, SPOKES).await);
    let envoys = cluster.enroll_fleet("page", 90).await;
    let ids: BTreeSet<String> = envoys.iter().map(|e| e.id().to_string()).collect();
    let spokes_used: BTreeSet<String> = envoys
        .iter()
        .map(|e| e.identity.spoke_address.clone())
        .collect();
    assert_eq!(
        spokes_used.len(),
        3,
        "the ring spreads the envoys over every spoke"
    );

    for (sort, hub) in [
        ("hostname", 0),
        ("-hostname", 1),
        ("id", 2),
        ("last_seen", 0),
        ("-status", 1),
    ] {
        let listed = list_all(&cluster, hub, sort, 7, None).await;
        let got: Vec<String> = listed.iter().map(|e| e.envoy_id.clone()).collect();
        let unique: BTreeSet<String> = got.iter().cloned().collect();
        assert_eq!(got.len(), 90, "sort {sort}: every envoy once");
        assert_eq!(unique, ids, "sort {sort}: exactly the fleet");
        let order = vigo_common::fleet_query::Sort::parse(sort).unwrap();
        for w in listed.windows(2) {
            assert_eq!(
                order.compare(&order.key_of(&w[0]), &order.key_of(&w[1])),
                std::cmp::Ordering::Less,
                "sort {sort}: pages continue in order"
            );
        }
        assert!(listed.iter().all(|e| SPOKES.contains(&e.spoke.as_str())));
    }

    // Trait and hostname filters, applied on every spoke.
    let big = list_all(
        &cluster,
        0,
        "hostname",
        1000,
        Some(api::EnvoyFilter {
            traits: vec!["mem_mb>4096".into(), "os=debian".into()],
            ..Default::default()
        }),
    )
    .await;
    // i % 8 in 4..=7 over i in 0..90: eleven full cycles of four.
    assert_eq!(big.len(), 44, "mem_mb in 5120..=8192");
    let globbed = list_all(
        &cluster,
        1,
        "hostname",
        1000,
        Some(api::EnvoyFilter {
            hostname: "page-001*".into(),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(globbed.len(), 10);

    // Compliance roll-up and trait distribution over the whole fleet.
    let report = cluster
        .admin(2)
        .compliance(api::ComplianceRequest {})
        .await
        .unwrap()
        .into_inner();
    let fleet = report.fleet.unwrap();
    assert_eq!(fleet.total, 90);
    assert_eq!(fleet.by_status["no_data"], 90);
    assert_eq!(report.spokes.len(), 3);
    let per_hostcrate: u64 = report
        .hostcrates
        .iter()
        .map(|h| h.counts.as_ref().unwrap().total)
        .sum();
    assert_eq!(per_hostcrate, 90, "every envoy counted in one hostcrate");
    let traits = cluster
        .admin(0)
        .trait_count(api::TraitCountRequest {
            key: "mem_mb".into(),
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(traits.values.len(), 8);
    assert_eq!(traits.values.iter().map(|v| v.envoys).sum::<u64>(), 90);
    assert_eq!(traits.values[0].envoys, 12, "most common first");

    // A cursor made for one order is refused for another.
    let page = cluster
        .admin(0)
        .list_envoys(api::ListEnvoysRequest {
            limit: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let wrong = cluster
        .admin(0)
        .list_envoys(api::ListEnvoysRequest {
            sort: "id".into(),
            cursor: page.next_cursor,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::InvalidArgument);
    assert!(wrong.message().contains("cursor"), "{}", wrong.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_spoke_is_named_missing_while_the_rest_answers() {
    let cluster = Arc::new(Cluster::start(3, SPOKES).await);
    let envoys = cluster.enroll_fleet("gap", 30).await;
    let mut cluster = Arc::into_inner(cluster).expect("sole owner");
    let on_b = envoys
        .iter()
        .filter(|e| e.identity.spoke_address == cluster.spoke_address(1))
        .count();
    assert!(on_b > 0);
    cluster.stop_spoke(1).await;

    let page = cluster
        .admin(0)
        .list_envoys(api::ListEnvoysRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.missing.len(), 1);
    assert_eq!(page.missing[0].spoke, "spoke-b");
    assert_eq!(
        page.envoys.len(),
        30 - on_b,
        "the other spokes still answer"
    );
    assert!(page.envoys.iter().all(|e| e.spoke != "spoke-b"));

    let report = cluster
        .admin(1)
        .compliance(api::ComplianceRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.missing[0].spoke, "spoke-b");
    assert_eq!(report.fleet.unwrap().total, (30 - on_b) as u64);

    // The same over REST: 200, with the missing spoke named.
    let (status, body) = request(
        cluster.rest_address(2),
        &cluster.ca_pem(),
        "GET",
        "/api/v1/envoys?limit=1000",
        Some(&cluster.api_token()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["missing"][0]["spoke"], "spoke-b");
    assert_eq!(body["envoys"].as_array().unwrap().len(), 30 - on_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_spoke_moves_a_thousand_envoys_without_reenrollment() {
    let cluster = Cluster::start(3, SPOKES).await;
    cluster
        .admin(0)
        .set_overrides(api::SetOverridesRequest {
            overrides: vec![api::Override {
                pattern: "drain-*".into(),
                spoke_id: "spoke-a".into(),
            }],
        })
        .await
        .unwrap();
    let cluster = Arc::new(cluster);
    let mut envoys = cluster.enroll_fleet("drain", 1000).await;
    let a = cluster.spoke_address(0);
    assert!(
        envoys.iter().all(|e| e.identity.spoke_address == a),
        "the override pins them all on spoke-a"
    );
    envoys[7].report(1, &[pb::Outcome::Ok]).await.unwrap();

    let refused = cluster
        .admin(1)
        .remove_spoke(api::SpokeRef {
            spoke_id: "spoke-a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::FailedPrecondition,
        "{}",
        refused.message()
    );

    let pins_before = cluster.state(0).pins.clone();
    let started = Instant::now();
    let moved = cluster
        .admin(1)
        .drain_spoke(api::SpokeRef {
            spoke_id: "spoke-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    println!(
        "drained 1000 envoys in {:?} ({} ms on the leader)",
        started.elapsed(),
        moved.duration_ms
    );
    assert_eq!(moved.moved, 1000);
    assert!(moved.to.contains_key("spoke-b") && moved.to.contains_key("spoke-c"));

    let state = cluster.state(2);
    assert_eq!(
        state.spokes["spoke-a"].state,
        vigo_hub::state::SpokeState::Draining
    );
    assert_eq!(
        state.pins.len(),
        pins_before.len(),
        "no pin lost, none added"
    );
    assert!(state.pins.values().all(|p| p.spoke != "spoke-a"));
    let addresses: HashMap<String, String> = state
        .spokes
        .values()
        .map(|s| (s.id.clone(), s.address.clone()))
        .collect();

    // Every envoy: redirected by its old spoke, then served by the new one under the
    // same identity.
    let mut tasks = JoinSet::new();
    for mut envoy in envoys {
        let expected = addresses[&state.pins[&envoy.id().get()].spoke].clone();
        tasks.spawn(async move {
            let answer = envoy.check_in().await.expect("the old spoke answers");
            let Some(pb::check_in_response::Answer::Redirect(r)) = answer.answer else {
                panic!("expected a redirect, got {answer:?}");
            };
            assert_eq!(r.spoke_address, expected);
            let mut moved = TestEnvoy::new(envoy.identity.clone(), &r.spoke_address);
            moved.sequence = envoy.sequence.clone();
            moved.traits = envoy.traits.clone();
            moved
                .check_in()
                .await
                .expect("the new spoke serves the moved envoy");
            (envoy.id(), r.spoke_address)
        });
        if tasks.len() >= 32 {
            tasks.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(
        cluster.state(0).pins.len(),
        pins_before.len(),
        "none re-enrolled"
    );

    // The record moved with its run history.
    let one = state
        .pins
        .iter()
        .find(|(_, p)| p.hostname == "drain-0007")
        .unwrap();
    let detail = cluster
        .admin(0)
        .show_envoy(api::EnvoyRef {
            envoy_id: format!("{:016x}", one.0),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(detail.stored_runs, 1);
    assert_eq!(detail.envoy.unwrap().traits["mem_mb"], "8192");

    let removed = cluster
        .admin(2)
        .remove_spoke(api::SpokeRef {
            spoke_id: "spoke-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.state, "removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_push_reaches_an_online_envoy_through_its_stream() {
    let cluster = Cluster::start(3, SPOKES).await;
    let machine = tempfile::tempdir().unwrap();
    let policy = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(policy.path().join("roles")).unwrap();
    std::fs::create_dir_all(policy.path().join("configcrates")).unwrap();
    std::fs::write(
        policy.path().join("hostcrates.yaml"),
        "hostcrates:\n  - name: all\n    match: '*'\n    roles: [base]\n",
    )
    .unwrap();
    std::fs::write(
        policy.path().join("roles/base.yaml"),
        "configcrates: [motd]\n",
    )
    .unwrap();
    std::fs::write(
        policy.path().join("configcrates/motd.yaml"),
        format!(
            "resources:\n  - {{id: motd, type: file, path: {}/motd, content: hello}}\n",
            machine.path().display()
        ),
    )
    .unwrap();
    cluster.publish(0, policy.path(), "motd").await.unwrap();

    let (identity, _) = cluster.enroll(1, "stream-1").await.unwrap();
    let state = StateDir::new(machine.path().join("state"));
    state.save_identity(&identity, false).unwrap();
    let mut agent = Agent::load(state.clone()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        agent
            .run(false, async {
                let _ = stopped.await;
            })
            .await;
    });

    // The first bundle is work: the envoy opens its stream. A push now wakes it.
    let runs = || {
        state
            .load_status()
            .ok()
            .flatten()
            .map_or(0, |s| s.finished_at_ms)
    };
    vigo_tests::eventually(Duration::from_secs(20), || async {
        if machine.path().join("motd").exists() {
            Ok(())
        } else {
            Err("not converged")
        }
    })
    .await;
    let first_run = runs();
    // Drift first: the run the push starts must put it right. (Removed after the push,
    // the file could go after that run has already finished.)
    std::fs::remove_file(machine.path().join("motd")).unwrap();
    let mut woken = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while woken == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let pushed = cluster
            .admin(2)
            .push(api::PushRequest {
                envoy_ids: vec![identity.envoy_id.to_string()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(pushed.marked, 1);
        woken = pushed.woken;
    }
    assert_eq!(
        woken, 1,
        "the envoy holds an open stream after its first bundle"
    );
    let pushed_at = Instant::now();
    vigo_tests::eventually(Duration::from_secs(30), || async {
        if runs() > first_run && machine.path().join("motd").exists() {
            Ok(())
        } else {
            Err("no run since the push")
        }
    })
    .await;
    println!(
        "force-push applied {:?} after the push (check-in interval 5 min)",
        pushed_at.elapsed()
    );
    assert!(
        pushed_at.elapsed() < Duration::from_secs(60),
        "applied well before the 5-minute interval"
    );
    let _ = stop.send(());
    running.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_roles_and_malformed_requests_get_precise_answers() {
    let cluster = Cluster::start(3, SPOKES).await;
    let ca = cluster.ca_pem();
    let rest = cluster.rest_address(1);
    let admin = cluster.api_token();
    let call = |method: &'static str,
                path: &'static str,
                token: Option<String>,
                body: Option<&'static str>| {
        let ca = ca.clone();
        async move { request(rest, &ca, method, path, token.as_deref(), body).await }
    };

    let (s, created) = call(
        "POST",
        "/api/v1/tokens",
        Some(admin.clone()),
        Some(r#"{"name":"ro","role":"viewer"}"#),
    )
    .await;
    assert_eq!(s, 200, "{created}");
    let viewer = created["secret"].as_str().unwrap().to_string();
    assert!(viewer.starts_with("vgt_"));

    let (s, status) = call("GET", "/api/v1/status", Some(viewer.clone()), None).await;
    assert_eq!(s, 200, "{status}");
    assert_eq!(status["spokes"].as_array().unwrap().len(), 3);
    let tokens_before = cluster.state(0).api_tokens.clone();

    // Who may do what.
    let (s, body) = call(
        "POST",
        "/api/v1/push",
        Some(viewer.clone()),
        Some(r#"{"all":true}"#),
    )
    .await;
    assert_eq!(s, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("operator"),
        "{body}"
    );
    let (s, _) = call(
        "POST",
        "/api/v1/tokens",
        Some(viewer.clone()),
        Some(r#"{"name":"x","role":"admin"}"#),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = call("GET", "/api/v1/status", None, None).await;
    assert_eq!(s, 401);
    let (s, _) = call("GET", "/api/v1/status", Some("vgt_nope".into()), None).await;
    assert_eq!(s, 401);

    // Malformed requests name the field.
    for (method, path, body, field) in [
        ("POST", "/api/v1/push", Some(r#"{"al":true}"#), "al"),
        ("POST", "/api/v1/push", Some(r#"{"all":"yes"}"#), "all"),
        // An empty filter would reach the whole fleet: that takes an explicit all.
        ("POST", "/api/v1/push", Some(r#"{"filter":{}}"#), "filter"),
        (
            "POST",
            "/api/v1/tokens",
            Some(r#"{"name":"late","role":"viewer","expires_ms":1000}"#),
            "expires_ms",
        ),
        (
            "POST",
            "/api/v1/tokens",
            Some(r#"{"name":"t","role":"root"}"#),
            "role",
        ),
        ("GET", "/api/v1/envoys?limit=abc", None, "limit"),
        ("GET", "/api/v1/envoys?status=green", None, "filter.status"),
        (
            "GET",
            "/api/v1/envoys?trait=mem%3Elots",
            None,
            "filter.traits",
        ),
        ("GET", "/api/v1/envoys?colour=red", None, "colour"),
        ("GET", "/api/v1/envoys/xyz", None, "envoy_id"),
        (
            "POST",
            "/api/v1/config",
            Some(r#"{"message":"m","files":{"hostcrates.yaml":"hostcrates: ["}}"#),
            "hostcrates.yaml",
        ),
    ] {
        let (s, body) = call(method, path, Some(admin.clone()), body).await;
        assert_eq!(s, 400, "{method} {path}: {body}");
        let error = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path}: {body}"));
        assert!(
            error.contains(field),
            "{method} {path}: {error:?} names {field:?}"
        );
    }
    let (s, _) = call("GET", "/api/v1/nowhere", Some(admin.clone()), None).await;
    assert_eq!(s, 404);
    let (s, _) = call("DELETE", "/api/v1/status", Some(admin.clone()), None).await;
    assert_eq!(s, 405);
    assert_eq!(
        cluster.state(0).api_tokens,
        tokens_before,
        "refused requests changed nothing"
    );
    assert!(cluster.state(0).configs.is_empty());

    // The OpenAPI document lists every route, and every listed route is served (and
    // guarded: without a token each answers 401).
    let (s, doc) = call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(s, 200);
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 15, "{}", paths.len());
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path
                .replace("{envoy_id}", "0000000000000001")
                .replace("{spoke_id}", "spoke-a")
                .replace("{node_id}", "9")
                .replace("{name}", "ro")
                .replace("{key}", "os");
            let concrete: &'static str = Box::leak(concrete.into_boxed_str());
            let m: &'static str = Box::leak(method.to_uppercase().into_boxed_str());
            let (s, body) = call(m, concrete, None, Some("{}")).await;
            assert_eq!(s, 401, "{m} {concrete}: {body}");
            // ... and documents it, with every refusal its kind can answer.
            let responses = &ops[method]["responses"];
            for status in ["200", "400", "401", "503"] {
                assert!(
                    responses.get(status).is_some(),
                    "{m} {path} documents {status}"
                );
            }
            if m != "GET" {
                for status in ["403", "404", "409", "412"] {
                    assert!(
                        responses.get(status).is_some(),
                        "{m} {path} documents {status}"
                    );
                }
            }
        }
    }
    let envoy_id = &doc["paths"]["/api/v1/envoys/{envoy_id}"]["get"]["parameters"][0]["schema"];
    assert!(
        envoy_id["pattern"].as_str().unwrap().contains("{16}"),
        "{envoy_id}"
    );
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "EnvoyPage",
        "PushRequest",
        "ComplianceReport",
        "CreateTokenRequest",
    ] {
        assert!(schemas.contains_key(name), "schema {name}");
    }

    // gRPC with the same tokens: the same roles.
    let mut grpc = api::hub_admin_client::HubAdminClient::new(cluster.anonymous_channel(2));
    let mut push = tonic::Request::new(api::PushRequest {
        all: true,
        ..Default::default()
    });
    push.metadata_mut()
        .insert("authorization", format!("Bearer {viewer}").parse().unwrap());
    assert_eq!(
        grpc.push(push).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // A revoked token stops working as soon as the node asked has applied the revocation.
    let (s, _) = call("DELETE", "/api/v1/tokens/ro", Some(admin.clone()), None).await;
    assert_eq!(s, 200);
    vigo_tests::eventually(Duration::from_secs(10), || async {
        match call("GET", "/api/v1/status", Some(viewer.clone()), None)
            .await
            .0
        {
            401 => Ok(()),
            other => Err(other),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_splits_batches_whose_run_histories_exceed_a_message() {
    let cluster = Cluster::start(3, SPOKES).await;
    cluster
        .admin(0)
        .set_overrides(api::SetOverridesRequest {
            overrides: vec![api::Override {
                pattern: "heavy-*".into(),
                spoke_id: "spoke-a".into(),
            }],
        })
        .await
        .unwrap();
    let cluster = Arc::new(cluster);
    let mut envoys = cluster.enroll_fleet("heavy", 7).await;
    // Ten runs of ~1 MB each per envoy: 70 MB for the batch, over the 64 MiB a spoke
    // accepts in one message.
    let big = "x".repeat(1_000_000);
    for envoy in &mut envoys {
        for run_id in 1..=10u64 {
            let report = pb::RunReportBody {
                run_id,
                outcomes: vec![pb::ResourceOutcome {
                    resource_id: "r/big".into(),
                    outcome: pb::Outcome::Ok as i32,
                    message: big.clone(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let request = vigo_envoy::client::report_request(
                envoy.id(),
                &envoy.identity.key,
                envoy.sequence.advance(),
                report,
            );
            vigo_envoy::client::send_report(&mut envoy.gateway, request)
                .await
                .expect("report stored");
        }
    }
    // All of them to one spoke, so they travel as one batch.
    cluster
        .admin(0)
        .set_overrides(api::SetOverridesRequest {
            overrides: vec![api::Override {
                pattern: "heavy-*".into(),
                spoke_id: "spoke-b".into(),
            }],
        })
        .await
        .unwrap();
    let moved = cluster
        .admin(2)
        .drain_spoke(api::SpokeRef {
            spoke_id: "spoke-a".into(),
        })
        .await
        .expect("the drain splits what does not fit")
        .into_inner();
    assert_eq!(moved.moved, 7);
    assert_eq!(moved.to["spoke-b"], 7);
    for envoy in &envoys {
        let detail = cluster
            .admin(1)
            .show_envoy(api::EnvoyRef {
                envoy_id: envoy.id().to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(detail.envoy.unwrap().spoke, "spoke-b");
        assert_eq!(detail.stored_runs, 10, "the whole history moved");
    }
}
