//! The console's page chrome and the small pieces every page uses: the header and its
//! navigation (what a role may not use is not shown), status badges that carry a
//! symbol and a word besides their colour, times, and the log-in and error pages.

use axum::http::StatusCode;
use maud::{DOCTYPE, Markup, html};

use super::assets;
use super::session::Session;
use crate::state::ApiRole;

/// The page a navigation entry points at.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Envoys,
    Spokes,
    Config,
    Tasks,
    Tokens,
}

const NAV: &[(Nav, &str, &str, ApiRole)] = &[
    (Nav::Overview, "Overview", "/console/", ApiRole::Viewer),
    (Nav::Envoys, "Envoys", "/console/envoys", ApiRole::Viewer),
    (Nav::Spokes, "Spokes", "/console/spokes", ApiRole::Viewer),
    (Nav::Config, "Config", "/console/config", ApiRole::Viewer),
    (Nav::Tasks, "Tasks", "/console/tasks", ApiRole::Viewer),
    (Nav::Tokens, "Tokens", "/console/tokens", ApiRole::Admin),
];

fn head(title: &str) -> Markup {
    html! {
        (DOCTYPE)
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Vigo Spanner" }
            link rel="stylesheet" href=(assets::CSS_PATH);
            script src=(assets::JS_PATH) defer {}
        }
    }
}

/// A whole page for a logged-in caller.
pub fn page(session: &Session, title: &str, active: Nav, body: Markup) -> Markup {
    let role = session.caller.role;
    html! {
        (head(title))
        body {
            a.skip href="#main" { "Skip to content" }
            header.top {
                a.brand href="/console/" { span.logo aria-hidden="true" { "◆" } " Vigo Spanner" }
                nav aria-label="Main" {
                    ul {
                        @for (nav, label, href, needs) in NAV {
                            @if role >= *needs {
                                li {
                                    @if *nav == active {
                                        a href=(href) aria-current="page" { (label) }
                                    } @else {
                                        a href=(href) { (label) }
                                    }
                                }
                            }
                        }
                    }
                }
                div.who {
                    span { (session.caller.name) }
                    " "
                    span.role { (role.as_str()) }
                    form method="post" action="/console/logout" {
                        input type="hidden" name="csrf" value=(session.csrf);
                        button.link type="submit" { "Log out" }
                    }
                }
            }
            main #main {
                h1 { (title) }
                (body)
            }
        }
    }
}

/// The log-in form (`error`: why the last attempt failed).
pub fn login_page(nonce: &str, error: Option<&str>) -> Markup {
    html! {
        (head("Log in"))
        body.login {
            main #main {
                h1 { span.logo aria-hidden="true" { "◆" } " Vigo Spanner" }
                p { "Log in with an admin API token (" code { "vigocli tokens create NAME --role viewer" } ")." }
                @if let Some(error) = error {
                    p.error role="alert" { "✗ " (error) }
                }
                form method="post" action="/console/login" {
                    input type="hidden" name="login_csrf" value=(nonce);
                    label for="token" { "API token" }
                    input #token type="password" name="token" autocomplete="off" required autofocus;
                    button type="submit" { "Log in" }
                }
            }
        }
    }
}

/// The page of a refusal.
pub fn error_page(status: StatusCode, message: &str) -> Markup {
    html! {
        (head("Refused"))
        body {
            main #main {
                h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                p.error role="alert" { "✗ " (message) }
                p { a href="/console/" { "Back to the overview" } }
            }
        }
    }
}

/// The symbol shown with each status word, so no status depends on its colour.
pub fn status_symbol(status: &str) -> &'static str {
    match status {
        "converged" => "✓",
        "relapsed" => "↺",
        "diverged" => "≠",
        "degraded" => "◐",
        "failed" | "unhealthy" | "unreachable" | "timed_out" | "refused" => "✗",
        "offline" => "○",
        "no_data" => "?",
        "revoked" => "⊘",
        "ok" | "healthy" | "active" | "finished" => "✓",
        "running" | "planned" => "▶",
        "cancelled" | "stopped" | "expired" | "draining" => "■",
        "changed" => "Δ",
        "skipped" => "–",
        _ => "•",
    }
}

/// A status as a badge: symbol, word, and a class for its colour.
pub fn status(status: &str) -> Markup {
    let word = if status.is_empty() { "unknown" } else { status };
    html! {
        span class={ "badge s-" (word) } { span aria-hidden="true" { (status_symbol(word)) } " " (word) }
    }
}

/// A Unix-ms time as "3 min ago" with the exact UTC time on hover; "never" for 0.
pub fn time(ms: u64) -> Markup {
    if ms == 0 {
        return html! { span.muted { "never" } };
    }
    let exact = vigo_common::time::format_ms(ms);
    html! { time datetime=(exact) title=(exact) { (ago(ms, vigo_common::time::now_ms())) } }
}

/// How long before `now` a time was, in the largest whole unit.
pub fn ago(ms: u64, now: u64) -> String {
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86400),
    }
}

/// The banner naming the spokes that did not answer a fan-out.
pub fn missing_banner(missing: &[vigo_proto::admin::v1::MissingSpoke]) -> Markup {
    html! {
        @if !missing.is_empty() {
            div.banner role="alert" {
                strong { "⚠ " (missing.len()) " spoke" @if missing.len() > 1 { "s" } " did not answer: " }
                @for (i, m) in missing.iter().enumerate() {
                    @if i > 0 { ", " }
                    strong.missing-spoke { (m.spoke) }
                    span.muted { " (" (m.error) ")" }
                }
                ". Their envoys are not in these figures."
            }
        }
    }
}

/// A short form of a long hex id (a config version, a fingerprint).
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
