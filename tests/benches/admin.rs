//! Admin figures (run: `cargo bench -p vigo-tests --bench admin`): the cost of one
//! admin read on the leader and on a follower (each checks the caller's credential
//! against the leader's read index first), `envoys list` with a
//! trait filter over 30,000 envoys on 3 spokes (p50/p99), compliance roll-up latency,
//! the web console's envoys page over the same fleet (as a browser asks for it),
//! and the time to drain a spoke of its ~10,000 envoys. 3 hubs and 3 spokes in this process;
//! envoys enroll through the hubs and check in once over their own TLS connection,
//! which is closed afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vigo_proto::admin::v1 as api;
use vigo_tests::cluster::Cluster;

const SPOKES: &[&str] = &["spoke-a", "spoke-b", "spoke-c"];

/// Enrolls and checks in `n` envoys `{prefix}-{i}` (mem_mb = 1024 × (i % 8 + 1)).
async fn populate(cluster: &Arc<Cluster>, prefix: &str, n: usize) {
    let started = Instant::now();
    cluster.checked_in_fleet(prefix, n, false).await;
    println!(
        "{n} envoys enrolled through the hubs and checked in once: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64, f64) {
    samples.sort();
    let at = |q: f64| {
        samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)].as_secs_f64() * 1e3
    };
    (at(0.5), at(0.99), at(1.0))
}

/// ListSpokes (a read of the local state) on one open connection, 500 times, on the
/// leader and on a follower: the follower's extra is its read-index round trip.
async fn admin_read_cost(cluster: &Cluster) {
    let leader = cluster.leader().await;
    for (who, hub) in [("leader", leader), ("follower", (leader + 1) % 3)] {
        let mut client = cluster.admin(hub);
        client.list_spokes(api::ListSpokesRequest {}).await.unwrap();
        let mut samples = Vec::new();
        for _ in 0..500 {
            let started = Instant::now();
            client.list_spokes(api::ListSpokesRequest {}).await.unwrap();
            samples.push(started.elapsed());
        }
        let (p50, p99, max) = percentiles(samples);
        println!(
            "admin read (ListSpokes) on the {who}, credential checked at the leader's read index: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"
        );
    }
}

/// The web console's envoys page over the same 30,000 envoys, as a browser asks for it
/// (a session cookie, HTML back), one connection per request: the time includes a TLS
/// handshake, shown alone by the stylesheet's request.
async fn console_envoys_pages(cluster: &Cluster) {
    let viewer = cluster.new_api_token("bench-viewer", "viewer").await;
    let ca = cluster.ca_pem();
    let addr = cluster.rest_address(1);
    let cookie = vigo_tests::https::console_session(addr, &ca, &viewer).await;
    for (what, path) in [
        (
            "stylesheet (TLS handshake + a static answer)",
            "/console/assets/console.css",
        ),
        (
            "envoys page, first 50 by hostname",
            "/console/envoys?sort=hostname",
        ),
        (
            "envoys page, trait mem_mb>4096, 50 a page",
            "/console/envoys?trait=mem_mb%3E4096",
        ),
        (
            "envoys page, status=converged, sorted by last seen",
            "/console/envoys?status=converged&sort=-last_seen",
        ),
    ] {
        let mut samples = Vec::new();
        for _ in 0..100 {
            let started = Instant::now();
            let headers = [("cookie", cookie.clone())];
            let (status, _, body) =
                vigo_tests::https::exchange(addr, &ca, "GET", path, &headers, "text/html", None)
                    .await;
            samples.push(started.elapsed());
            assert_eq!(status, 200, "{path}: {body}");
        }
        let (p50, p99, max) = percentiles(samples);
        println!(
            "console {what}: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms (100 requests)"
        );
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let cluster = Arc::new(Cluster::start_with(3, SPOKES, Cluster::FAST_RAFT).await);
    admin_read_cost(&cluster).await;
    populate(&cluster, "web", 30_000).await;

    // envoys list with a trait filter, one page of 100, every spoke walked per call.
    let mut samples = Vec::new();
    let mut matched = 0;
    for round in 0..200 {
        let started = Instant::now();
        let page = cluster
            .admin(round % 3)
            .list_envoys(api::ListEnvoysRequest {
                filter: Some(api::EnvoyFilter {
                    traits: vec!["mem_mb>4096".into()],
                    ..Default::default()
                }),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        samples.push(started.elapsed());
        matched = page.matched;
        assert!(page.missing.is_empty());
    }
    let (p50, p99, max) = percentiles(samples);
    println!(
        "envoys list --where mem_mb>4096 --limit 100 over 30,000 envoys ({matched} match): p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms (200 calls)"
    );

    let mut samples = Vec::new();
    for round in 0..200 {
        let started = Instant::now();
        let report = cluster
            .admin(round % 3)
            .compliance(api::ComplianceRequest {})
            .await
            .unwrap()
            .into_inner();
        samples.push(started.elapsed());
        assert_eq!(report.fleet.unwrap().total, 30_000);
    }
    let (p50, p99, max) = percentiles(samples);
    println!(
        "compliance roll-up over 3 spokes / 30,000 envoys: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms (200 calls)"
    );

    console_envoys_pages(&cluster).await;

    // Drain: spoke-a holds its third of the fleet (~10,000 envoys); they move to the
    // other two along the ring.
    let on_a = cluster
        .state(0)
        .pins
        .values()
        .filter(|p| p.spoke == "spoke-a")
        .count();
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
        "drain spoke-a ({on_a} envoys): {} moved in {:.1} s ({:?})",
        moved.moved,
        started.elapsed().as_secs_f64(),
        moved.to
    );
}
