//! The web console in a real browser: headless Chromium driven over WebDriver against a
//! 3-hub, 3-spoke cluster with 120 simulated envoys (enrolled through the hubs, checked
//! in, each with a reported run). One test walks an operator's and a viewer's day in
//! order, since the cluster and the browser take a while to start:
//!
//! a viewer logs in (the cookie is HttpOnly, Secure, SameSite=Strict) and sees the
//! totals the API reports; filters envoys by a trait and pages through them, meeting
//! each envoy once; opens an envoy and sees its last run resource by resource; sees no
//! action anywhere, and a forged POST with its own session is refused (403) and changes
//! nothing; the page holds at 375 px; an operator pushes an envoy, is told why a spoke
//! with envoys cannot be removed, rolls a config back and cancels a task, each after a
//! confirmation; a stopped spoke is named on the overview, which refreshes itself
//! without a reload; an admin creates and revokes a token.
//!
//! With `VIGO_CONSOLE_SCREENSHOTS=DIR` set, a PNG of every page goes to DIR
//! (`deploy/console-screenshots.sh`). The viewer's steps are in `viewer.rs`, the
//! operator's and the admin's in `operator.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vigo_proto::v1 as pb;
use vigo_tests::cluster::Cluster;
use vigo_tests::https;
use vigo_tests::webdriver::Browser;

mod operator;
mod viewer;

use operator::*;
use viewer::*;

const SPOKES: &[&str] = &["spoke-a", "spoke-b", "spoke-c"];
const FLEET: usize = 120;
const WAIT: Duration = Duration::from_secs(30);
/// A trait value a hostile envoy sends, which must be shown as text.
const INJECTED: &str =
    "<img src=x id=pwned onerror=alert(1)><script>document.title='owned'</script>";

fn write_policy(dir: &Path, greeting: &str) {
    let files = [
        (
            "hostcrates.yaml",
            "hostcrates:\n  - {name: web, match: 'web-*', roles: [web]}\n".to_string(),
        ),
        (
            "roles/web.yaml",
            format!("configcrates:\n  - site\nvars: {{greeting: {greeting}}}\n"),
        ),
        (
            "configcrates/site.yaml",
            "vars: {greeting: hi}\nresources:\n  - {id: motd, type: file, path: /tmp/vigo-console-motd, content: \"{{ vars.greeting }}\\n\"}\n"
                .to_string(),
        ),
    ];
    for (rel, text) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

/// Where screenshots go, when asked for.
fn shots() -> Option<PathBuf> {
    std::env::var_os("VIGO_CONSOLE_SCREENSHOTS").map(PathBuf::from)
}

async fn shoot(browser: &Browser, name: &str) {
    if let Some(dir) = shots() {
        std::fs::create_dir_all(&dir).unwrap();
        browser.screenshot(&dir.join(format!("{name}.png"))).await;
    }
}

struct Console {
    cluster: Cluster,
    base: String,
    viewer: String,
    operator: String,
    admin: String,
}

impl Console {
    async fn start() -> Console {
        let cluster = Arc::new(
            Cluster::start_custom(
                3,
                SPOKES,
                Cluster::FAST_RAFT,
                "{interval: 5m}",
                "compliance: {roll_up_every: 1s, sample_every: 1s}\n",
            )
            .await,
        );
        let policy = tempfile::tempdir().unwrap();
        write_policy(policy.path(), "hello");
        cluster
            .publish(0, policy.path(), "first site")
            .await
            .unwrap();
        let mut envoys = cluster.enroll_fleet("web", FLEET).await;
        for (i, envoy) in envoys.iter_mut().enumerate() {
            let outcome = if i % 10 == 0 {
                pb::Outcome::Failed
            } else {
                pb::Outcome::Ok
            };
            if i == 0 {
                // A hostile machine: markup in what it says about itself.
                envoy.traits.insert("note".into(), INJECTED.into());
                envoy.check_in().await.expect("check-in: traits changed");
            }
            envoy.check_in().await.expect("check-in for the bundle");
            envoy
                .report(1, &[pb::Outcome::Ok, outcome])
                .await
                .expect("report");
        }
        drop(envoys);
        let viewer = cluster.new_api_token("ada-viewer", "viewer").await;
        let operator = cluster.new_api_token("olga-operator", "operator").await;
        let admin = cluster.new_api_token("root-admin", "admin").await;
        let base = format!("https://{}", cluster.rest_address(1));
        let cluster = Arc::into_inner(cluster).expect("no other holder of the cluster");
        Console {
            cluster,
            base,
            viewer,
            operator,
            admin,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn api(&self, path: &str) -> serde_json::Value {
        let (status, body) = https::request(
            self.cluster.rest_address(0),
            &self.cluster.ca_pem(),
            "GET",
            path,
            Some(&self.viewer),
            None,
        )
        .await;
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    /// `GET path` with no session: status, head and body.
    async fn get_anonymously(&self, path: &str) -> (u16, String, String) {
        let (addr, ca) = (self.cluster.rest_address(0), self.cluster.ca_pem());
        https::exchange(addr, &ca, "GET", path, &[], "text/html", None).await
    }

    async fn log_in(&self, browser: &Browser, token: &str) {
        browser.goto(&self.url("/console/")).await;
        assert!(
            browser.url().await.ends_with("/console/login"),
            "the overview asks for a log-in first"
        );
        let field = browser.find("#token").await;
        browser.type_into(&field, token).await;
        let submit = browser.find("form button[type=submit]").await;
        browser.click(&submit).await;
        browser.wait_for("#fleet-total", WAIT).await;
    }
}

#[test]
fn the_console_in_a_real_browser() {
    // The walk's future is large (every step's state, unoptimised in a debug build): it
    // runs on a thread with room for it.
    let walk = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(walk())
        })
        .expect("test thread");
    if let Err(panic) = walk.join() {
        std::panic::resume_unwind(panic);
    }
}

async fn walk() {
    let mut c = Console::start().await;
    let browser = Browser::start(1280, 1000).await;

    // A wrong token: refused on the log-in page, no session.
    browser.goto(&c.url("/console/login")).await;
    let field = browser.find("#token").await;
    browser.type_into(&field, "vgt_0000").await;
    browser
        .click(&browser.find("form button[type=submit]").await)
        .await;
    let error = browser.wait_for("p.error", WAIT).await;
    assert!(
        browser
            .text(&error)
            .await
            .contains("unknown, revoked or expired")
    );
    shoot(&browser, "login").await;

    c.log_in(&browser, &c.viewer).await;
    viewer_sees_the_api_totals(&c, &browser).await;
    let session = session_cookie(&browser).await;
    viewer_pages_through_a_trait_filter(&c, &browser).await;
    viewer_opens_an_envoy(&browser).await;
    viewer_cannot_act(&c, &browser, &session).await;
    usable_on_a_phone(&c, &browser).await;

    browser
        .click(&browser.find("header form button").await)
        .await;
    browser.wait_for("#token", WAIT).await;
    c.log_in(&browser, &c.operator).await;
    operator_pushes_an_envoy(&c, &browser).await;
    operator_is_told_why_a_spoke_stays(&c, &browser).await;
    operator_rolls_back_a_config(&c, &browser).await;
    operator_follows_and_cancels_a_task(&c, &browser).await;
    a_stopped_spoke_is_named(&mut c, &browser).await;

    c.log_in(&browser, &c.admin).await;
    admin_creates_and_revokes_a_token(&c, &browser).await;

    // Every page ran under its Content-Security-Policy without breaking it (the live
    // refresh included): the browser reported no violation.
    let log = browser.console_log().await;
    let violations: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("Content Security Policy"))
        .collect();
    assert!(violations.is_empty(), "{violations:#?}");
}
