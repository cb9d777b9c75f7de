//! The viewer's steps of the console's browser test: log-in, totals, a trait filter
//! paged through, an envoy's page, the refusals, a phone-sized window.

use std::collections::BTreeSet;

use vigo_tests::https;
use vigo_tests::webdriver::Browser;

use super::{Console, FLEET, INJECTED, WAIT, shoot};

pub async fn session_cookie(browser: &Browser) -> String {
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

pub async fn viewer_sees_the_api_totals(c: &Console, browser: &Browser) {
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

pub async fn viewer_pages_through_a_trait_filter(c: &Console, browser: &Browser) {
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

pub async fn viewer_opens_an_envoy(browser: &Browser) {
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

pub async fn viewer_cannot_act(c: &Console, browser: &Browser, session: &str) {
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
    // A form that never finishes arriving: 408 after the form deadline (10 s).
    let head = format!(
        "POST /console/actions/push HTTP/1.1\r\nhost: x\r\ncookie: __Host-vigo-session={session}\r\n\
         content-type: application/x-www-form-urlencoded\r\ncontent-length: 100\r\n\r\ncsrf="
    );
    let ca = c.cluster.ca_pem();
    let status = https::send_raw(c.cluster.rest_address(1), &ca, head.as_bytes()).await;
    assert_eq!(status, Some(408));
    assert_eq!(
        c.api("/api/v1/config").await["current"],
        before,
        "nothing changed"
    );
    // A page that does not exist: the console's own 404, with its headers.
    let (status, head, body) = c.get_anonymously("/console/no/such/page").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no such console page") && head.contains("content-security-policy"));
    // A log-in form posted from elsewhere (no double-submit cookie): refused.
    let login = format!("login_csrf=00&token={}", c.viewer);
    let (status, _) = post("/console/login", login, false).await;
    assert_eq!(status, 403);
    // Every answer forbids inline script, framing and sniffing.
    let (status, head, _) = c.get_anonymously("/console/login").await;
    assert_eq!(status, 200);
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    assert!(head.contains("x-frame-options: DENY"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
}

pub async fn usable_on_a_phone(c: &Console, browser: &Browser) {
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
