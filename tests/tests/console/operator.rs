//! The operator's and the admin's steps of the console's browser test: a push, a spoke
//! that cannot be removed, a roll-back, a task followed and cancelled, a stopped spoke
//! named on the live overview, a token created and revoked.

use std::time::Duration;

use vigo_proto::admin::v1 as api;
use vigo_tests::https;
use vigo_tests::webdriver::Browser;

use super::{Console, WAIT, shoot, write_policy};

pub async fn admin_creates_and_revokes_a_token(c: &Console, browser: &Browser) {
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

pub async fn operator_pushes_an_envoy(c: &Console, browser: &Browser) {
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

pub async fn operator_is_told_why_a_spoke_stays(c: &Console, browser: &Browser) {
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

pub async fn operator_rolls_back_a_config(c: &Console, browser: &Browser) {
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

pub async fn operator_follows_and_cancels_a_task(c: &Console, browser: &Browser) {
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

pub async fn a_stopped_spoke_is_named(c: &mut Console, browser: &Browser) {
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
