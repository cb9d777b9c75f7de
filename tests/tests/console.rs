//! The web console in a real browser: headless Chromium driven over WebDriver against a
//! 3-hub, 3-spoke cluster with 120 simulated envoys (enrolled through the hubs, checked
//! in, each with a reported run). One test walks an operator's and a viewer's day in
//! order, since the cluster and the browser take a while to start:
//!
//! a viewer logs in (the cookie is HttpOnly, Secure, SameSite=Strict) and sees the
//! totals the API reports; filters envoys by a trait and pages through them, meeting
//! each envoy once; opens an envoy and sees its last run resource by resource; sees no
//! action anywhere, and a forged POST with its own session is refused (403) and changes
//! nothing; the page holds at 375 px; an operator pushes an envoy and rolls a config
//! back and cancels a task, each after a confirmation; a stopped spoke is named on the overview, which
//! refreshes itself without a reload.
//!
//! With `VIGO_CONSOLE_SCREENSHOTS=DIR` set, a PNG of every page goes to DIR
//! (`deploy/console-screenshots.sh`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vigo_proto::admin::v1 as api;
use vigo_proto::v1 as pb;
use vigo_tests::cluster::Cluster;
use vigo_tests::https;
use vigo_tests::webdriver::Browser;

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
}

async fn admin_creates_and_revokes_a_token(c: &Console, browser: &Browser) {
    browser
        .click(&browser.find("a[href='/console/tokens']").await)
        .await;
    browser.wait_for("#tokens", WAIT).await;
    let form = "form[action='/console/actions/create-token']";
    let name = browser.find(&format!("{form} input[name=name]")).await;
    browser.type_into(&name, "ci-reader").await;
    browser
        .click(&browser.find(&format!("{form} button")).await)
        .await;
    browser
        .click(&browser.wait_for("#confirm", WAIT).await)
        .await;
    let secret = browser.text(&browser.wait_for("#secret", WAIT).await).await;
    assert!(secret.starts_with("vgt_"), "{secret}");
    let status = |token: String| async move {
        let ca = c.cluster.ca_pem();
        https::request(
            c.cluster.rest_address(0),
            &ca,
            "GET",
            "/api/v1/status",
            Some(&token),
            None,
        )
        .await
        .0
    };
    assert_eq!(status(secret.clone()).await, 200, "the new token works");
    browser.goto(&c.url("/console/tokens")).await;
    shoot(browser, "tokens").await;
    let revoke = browser
        .wait_for("button[aria-label='Revoke ci-reader']", WAIT)
        .await;
    browser.click(&revoke).await;
    browser
        .click(&browser.wait_for("#confirm", WAIT).await)
        .await;
    browser.wait_for("p.done", WAIT).await;
    assert_eq!(status(secret).await, 401, "revoked");
}

async fn session_cookie(browser: &Browser) -> String {
    let cookies = browser.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c["name"] == "__Host-vigo-session")
        .unwrap_or_else(|| panic!("a session cookie in {cookies:?}"));
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["secure"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    let expiry = session["expiry"].as_u64().expect("the session expires");
    let now = vigo_common::time::now_ms() / 1000;
    assert!(
        expiry > now && expiry <= now + 8 * 3600 + 5,
        "{expiry} vs {now}"
    );
    session["value"].as_str().unwrap().to_string()
}

async fn viewer_sees_the_api_totals(c: &Console, browser: &Browser) {
    let report = c.api("/api/v1/compliance").await;
    let total = report["fleet"]["total"].as_u64().unwrap();
    assert_eq!(total, FLEET as u64);
    let shown = browser.text(&browser.find("#fleet-total").await).await;
    assert_eq!(shown, total.to_string());
    let title = browser.find("svg.chart title").await;
    let bars = browser
        .property(&title, "textContent")
        .await
        .as_str()
        .unwrap()
        .to_string();
    for status in ["converged", "degraded"] {
        let n = report["fleet"]["by_status"][status].as_u64().unwrap_or(0);
        assert!(
            bars.contains(&format!("{status} {n};")),
            "{bars} / {report}"
        );
    }
    assert!(bars.contains("degraded 12;"), "{bars}");
    let rows = browser
        .find_all("section[aria-labelledby=spokes-h] tbody tr")
        .await;
    assert_eq!(rows.len(), 3);
    let members = browser
        .find_all("section[aria-labelledby=hubs-h] tbody tr")
        .await;
    assert_eq!(members.len(), 3);
    let hubs = browser
        .text(&browser.find("section[aria-labelledby=hubs-h]").await)
        .await;
    assert_eq!(hubs.matches("★ leader").count(), 1, "{hubs}");
    let recent = browser
        .text(&browser.find("section[aria-labelledby=configs-h]").await)
        .await;
    assert!(recent.contains("first site"), "{recent}");
    assert!(
        browser.find_all(".banner").await.is_empty(),
        "every spoke answered"
    );
    // The convergence line appears once the hub holds two samples (one a second).
    browser.goto(&c.url("/console/")).await;
    browser.wait_for("polyline.converged", WAIT).await;
    shoot(browser, "overview").await;
    // No link to the tokens page for a viewer.
    assert!(
        browser
            .find_all("a[href='/console/tokens']")
            .await
            .is_empty()
    );
}

async fn viewer_pages_through_a_trait_filter(c: &Console, browser: &Browser) {
    browser.goto(&c.url("/console/envoys")).await;
    let inputs = browser.find_all("input[name=trait]").await;
    browser
        .type_into(inputs.last().unwrap(), "mem_mb>4096")
        .await;
    let per_page = browser.find("select[name=limit] option[value='20']").await;
    browser.click(&per_page).await;
    browser
        .click(&browser.find("form.filters button[type=submit]").await)
        .await;
    browser.wait_for("#matched", WAIT).await;
    let url = browser.url().await;
    assert!(
        url.contains("trait=mem_mb%3E4096") && url.contains("limit=20"),
        "the form lives in the URL: {url}"
    );
    // mem_mb = 1024 × (i % 8 + 1): above 4096 for i % 8 in 4..8.
    let expected: BTreeSet<String> = (0..FLEET)
        .filter(|i| i % 8 >= 4)
        .map(|i| format!("web-{i:04}"))
        .collect();
    let matched = browser.text(&browser.find("#matched").await).await;
    assert_eq!(matched, format!("{} envoys match", expected.len()));
    // Sorted by hostname through its column heading, then paged through.
    browser
        .click(&browser.find("th a[href*='sort=hostname']").await)
        .await;
    browser.wait_for("th[aria-sort=ascending]", WAIT).await;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        for link in browser.find_all("a.envoy").await {
            seen.push(browser.text(&link).await);
        }
        if pages == 1 {
            shoot(browser, "envoys").await;
        }
        let Some(next) = browser.find_all("#next").await.into_iter().next() else {
            break;
        };
        browser.click(&next).await;
        browser.wait_for("#matched", WAIT).await;
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, expected.len().div_ceil(20));
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "pages in hostname order");
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "an envoy appeared twice");
    assert_eq!(unique, expected);
    // The same link works when shared: the filter is in the URL alone.
    browser.goto(&url).await;
    let again = browser
        .text(&browser.wait_for("#matched", WAIT).await)
        .await;
    assert_eq!(again, matched);
    // A malformed predicate is named, with the form kept.
    browser
        .goto(&c.url("/console/envoys?trait=mem_mb%3E%3Ex"))
        .await;
    let error = browser.text(&browser.wait_for("p.error", WAIT).await).await;
    assert!(error.contains("trait"), "{error}");
    assert!(!browser.find_all("form.filters").await.is_empty());
}

async fn viewer_opens_an_envoy(browser: &Browser) {
    let failing = "web-0010"; // i % 10 == 0: one resource of its run failed (degraded)
    let search = "/console/envoys?hostname=web-0010";
    let base = browser.url().await;
    let origin = &base[..base.find("/console").unwrap()];
    browser.goto(&format!("{origin}{search}")).await;
    browser
        .click(&browser.wait_for("a.envoy", WAIT).await)
        .await;
    browser.wait_for("#runs-h", WAIT).await;
    assert_eq!(browser.title().await, format!("{failing} · Vigo Spanner"));
    let status = browser.text(&browser.find("#envoy-status").await).await;
    assert!(status.contains("degraded"), "{status}");
    let run = browser.text(&browser.find("details.run[open]").await).await;
    assert!(run.contains("1 ok") && run.contains("1 failed"), "{run}");
    let traits = browser.text(&browser.find("dl.traits").await).await;
    assert!(
        traits.contains("mem_mb") && traits.contains("3072"),
        "{traits}"
    );
    shoot(browser, "envoy").await;
    // What an envoy says about itself is text on the page, never markup.
    browser
        .goto(&format!("{origin}/console/envoys?hostname=web-0000"))
        .await;
    browser
        .click(&browser.wait_for("a.envoy", WAIT).await)
        .await;
    let traits = browser
        .text(&browser.wait_for("dl.traits", WAIT).await)
        .await;
    assert!(traits.contains(INJECTED), "{traits}");
    assert!(
        browser.find_all("#pwned").await.is_empty(),
        "the trait became an element"
    );
    assert_eq!(browser.title().await, "web-0000 · Vigo Spanner");
    browser.goto(&format!("{origin}{search}")).await;
    browser
        .click(&browser.wait_for("a.envoy", WAIT).await)
        .await;
    browser.wait_for("#runs-h", WAIT).await;
}

/// The page shows no form that posts an action.
async fn assert_no_action(browser: &Browser, page: &str) {
    let forms = browser.find_all("form[action^='/console/actions']").await;
    assert!(forms.is_empty(), "{page}: a viewer is offered an action");
}

async fn viewer_cannot_act(c: &Console, browser: &Browser, session: &str) {
    assert_no_action(browser, "envoy").await;
    let envoy_page = browser.url().await;
    let envoy_id = envoy_page.rsplit('/').next().unwrap().to_string();
    browser.goto(&c.url("/console/config")).await;
    browser.wait_for("#configs", WAIT).await;
    assert_no_action(browser, "config").await;
    browser.goto(&c.url("/console/spokes")).await;
    browser.wait_for("#spokes", WAIT).await;
    assert_no_action(browser, "spokes").await;
    shoot(browser, "spokes").await;
    browser.goto(&c.url("/console/tokens")).await;
    let refused = browser.text(&browser.wait_for("p.error", WAIT).await).await;
    assert!(refused.contains("needs the admin role"), "{refused}");
    assert!(
        browser.find_all("input[name=csrf]").await.is_empty(),
        "an error page carries no form"
    );
    // The CSRF token of this session, from its log-out form.
    browser.goto(&c.url("/console/")).await;
    let csrf = browser
        .attribute(
            &browser.wait_for("header input[name=csrf]", WAIT).await,
            "value",
        )
        .await
        .unwrap();
    let before = c.api("/api/v1/config").await["current"].clone();
    let versions = c.api("/api/v1/config").await["versions"].clone();
    let cookie = ("cookie", format!("__Host-vigo-session={session}"));
    let post = |path: &'static str, body: String, with_cookie: bool| {
        let headers: Vec<(&str, String)> = if with_cookie {
            vec![cookie.clone()]
        } else {
            vec![]
        };
        let ca = c.cluster.ca_pem();
        let addr = c.cluster.rest_address(2);
        async move {
            https::request_with(
                addr,
                &ca,
                "POST",
                path,
                &headers,
                "application/x-www-form-urlencoded",
                Some(&body),
            )
            .await
        }
    };
    let push = format!(
        "csrf={csrf}&envoy_id={envoy_id}&confirmed=yes&request_id={}",
        "ab".repeat(16)
    );
    // The viewer's own session and CSRF token: refused for its role, on any hub node.
    let (status, body) = post("/console/actions/push", push.clone(), true).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.to_string().contains("needs the operator role"),
        "{body}"
    );
    // A forged form without the CSRF token, or with another one: refused before the role.
    let (status, body) = post(
        "/console/actions/push",
        format!("envoy_id={envoy_id}"),
        true,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("CSRF"), "{body}");
    let rollback = format!(
        "csrf={}&version={}&confirmed=yes",
        "0".repeat(64),
        versions[0]["version"].as_str().unwrap()
    );
    let (status, _) = post("/console/actions/rollback", rollback, true).await;
    assert_eq!(status, 403);
    // No session at all.
    let (status, _) = post("/console/actions/push", push.clone(), false).await;
    assert_eq!(status, 401);
    // A session cookie with one byte changed.
    let mut forged = session.to_string();
    forged.replace_range(0..1, if forged.starts_with('0') { "1" } else { "0" });
    let headers = vec![("cookie", format!("__Host-vigo-session={forged}"))];
    let (status, _) = https::request_with(
        c.cluster.rest_address(0),
        &c.cluster.ca_pem(),
        "POST",
        "/console/actions/push",
        &headers,
        "application/x-www-form-urlencoded",
        Some(&push),
    )
    .await;
    assert_eq!(status, 401);
    // A form over the limit is refused before anything is read into a request.
    let big = format!("csrf={csrf}&envoy_id={}", "a".repeat(20_000));
    let (status, _) = post("/console/actions/push", big, true).await;
    assert_eq!(status, 413);
    assert_eq!(
        c.api("/api/v1/config").await["current"],
        before,
        "nothing changed"
    );
    // A page that does not exist: the console's own 404, with its headers.
    let (status, head, body) = https::exchange(
        c.cluster.rest_address(0),
        &c.cluster.ca_pem(),
        "GET",
        "/console/no/such/page",
        &[],
        "text/html",
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no such console page") && head.contains("content-security-policy"));
    // A log-in form posted from elsewhere (no double-submit cookie): refused.
    let login = format!("login_csrf=00&token={}", c.viewer);
    let (status, _) = post("/console/login", login, false).await;
    assert_eq!(status, 403);
    // Every answer forbids inline script, framing and sniffing.
    let (status, head, _) = https::exchange(
        c.cluster.rest_address(0),
        &c.cluster.ca_pem(),
        "GET",
        "/console/login",
        &[],
        "text/html",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    assert!(head.contains("x-frame-options: DENY"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
}

async fn usable_on_a_phone(c: &Console, browser: &Browser) {
    browser.resize(375, 800).await;
    for page in ["/console/", "/console/envoys", "/console/spokes"] {
        browser.goto(&c.url(page)).await;
        browser.wait_for("main h1", WAIT).await;
        if page == "/console/" {
            shoot(browser, "overview-375px").await;
        }
        let width = browser
            .execute("return document.documentElement.scrollWidth;")
            .await;
        let viewport = browser.execute("return window.innerWidth;").await;
        assert!(
            width.as_u64() <= viewport.as_u64(),
            "{page}: the page scrolls sideways at 375 px ({width} > {viewport})"
        );
    }
    // Keyboard: the first Tab reaches the skip link, which leads to the content.
    browser.keys("\u{E004}").await;
    let focused = browser.focused().await;
    assert_eq!(
        browser.attribute(&focused, "href").await.as_deref(),
        Some("#main")
    );
    browser.resize(1280, 1000).await;
}

async fn operator_pushes_an_envoy(c: &Console, browser: &Browser) {
    browser
        .goto(&c.url("/console/envoys?hostname=web-0003"))
        .await;
    browser
        .click(&browser.wait_for("a.envoy", WAIT).await)
        .await;
    let push = browser
        .wait_for("form[action='/console/actions/push'] button", WAIT)
        .await;
    browser.click(&push).await;
    // A confirmation first: nothing has happened yet.
    let question = browser
        .text(&browser.wait_for("p.question", WAIT).await)
        .await;
    assert!(question.contains("run its policy now"), "{question}");
    shoot(browser, "confirm").await;
    browser.click(&browser.find("#confirm").await).await;
    let done = browser.text(&browser.wait_for("p.done", WAIT).await).await;
    assert!(done.contains("Pushed: 1 marked"), "{done}");
}

async fn operator_is_told_why_a_spoke_stays(c: &Console, browser: &Browser) {
    browser.goto(&c.url("/console/spokes")).await;
    browser
        .wait_for("form[action='/console/actions/add-spoke']", WAIT)
        .await;
    shoot(browser, "spokes-operator").await;
    let remove = browser.find("button[aria-label='Remove… spoke-a']").await;
    browser.click(&remove).await;
    browser
        .click(&browser.wait_for("#confirm", WAIT).await)
        .await;
    let refused = browser.text(&browser.wait_for("p.error", WAIT).await).await;
    assert!(refused.contains("drain it first"), "{refused}");
    assert!(
        browser
            .text(&browser.find("h1").await)
            .await
            .starts_with("412")
    );
    let spokes = c.api("/api/v1/spokes").await;
    assert!(
        spokes.to_string().contains(r#""state":"active""#),
        "{spokes}"
    );
}

async fn operator_rolls_back_a_config(c: &Console, browser: &Browser) {
    let first = c.api("/api/v1/config").await["current"]
        .as_str()
        .unwrap()
        .to_string();
    let policy = tempfile::tempdir().unwrap();
    write_policy(policy.path(), "bonjour");
    let second = c
        .cluster
        .publish(0, policy.path(), "second site")
        .await
        .unwrap()
        .version;
    assert_ne!(first, second);
    browser.goto(&c.url("/console/config")).await;
    browser.wait_for("#configs", WAIT).await;
    shoot(browser, "config").await;
    let button = browser
        .find(&format!(
            "button[aria-label='Roll back to {}']",
            &first[..12]
        ))
        .await;
    browser.click(&button).await;
    browser.wait_for("p.question", WAIT).await;
    assert_eq!(
        c.api("/api/v1/config").await["current"],
        second.as_str(),
        "not before the confirmation"
    );
    browser.click(&browser.find("#confirm").await).await;
    let current = browser
        .text(&browser.wait_for("#current-version", WAIT).await)
        .await;
    assert_eq!(current, &first[..12]);
    assert_eq!(c.api("/api/v1/config").await["current"], first.as_str());
}

async fn operator_follows_and_cancels_a_task(c: &Console, browser: &Browser) {
    let task = c
        .cluster
        .admin(0)
        .run_task(api::RunTaskRequest {
            all: true,
            kind: "exec".into(),
            argv: vec!["uptime".into()],
            timeout_ms: 60_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    browser.goto(&c.url("/console/tasks")).await;
    let link = browser
        .wait_for(&format!("a[href='/console/tasks/{}']", task.task_id), WAIT)
        .await;
    shoot(browser, "tasks").await;
    browser.click(&link).await;
    let state = browser
        .text(&browser.wait_for("#task-state", WAIT).await)
        .await;
    assert!(state.contains("running"), "{state}");
    let live = browser.find("#live").await;
    assert_eq!(
        browser.attribute(&live, "data-live").await.as_deref(),
        Some(format!("/console/live/tasks/{}", task.task_id).as_str())
    );
    shoot(browser, "task").await;
    browser
        .click(
            &browser
                .find("form[action='/console/actions/cancel-task'] button")
                .await,
        )
        .await;
    browser
        .click(&browser.wait_for("#confirm", WAIT).await)
        .await;
    let done = browser.text(&browser.wait_for("p.done", WAIT).await).await;
    assert!(done.contains("cancelled"), "{done}");
}

async fn a_stopped_spoke_is_named(c: &mut Console, browser: &Browser) {
    browser.goto(&c.url("/console/")).await;
    browser.wait_for("#fleet-total", WAIT).await;
    assert!(browser.find_all(".missing-spoke").await.is_empty());
    c.cluster.stop_spoke(2).await;
    // The page refreshes itself (every 10 s): no navigation from here on.
    let named = browser
        .wait_for(".missing-spoke", Duration::from_secs(60))
        .await;
    assert_eq!(browser.text(&named).await, "spoke-c");
    let live = browser.find("#live").await;
    assert!(
        browser.attribute(&live, "data-refreshed").await.is_some(),
        "refreshed in place"
    );
    shoot(browser, "overview-spoke-down").await;
    // Revoking the operator's token ends its session at the next request.
    let revoke = api::RevokeTokenRequest {
        name: "olga-operator".into(),
    };
    c.cluster.admin(0).revoke_token(revoke).await.unwrap();
    browser.goto(&c.url("/console/envoys")).await;
    browser.wait_for("#token", WAIT).await;
    assert!(browser.url().await.ends_with("/console/login"));
}
