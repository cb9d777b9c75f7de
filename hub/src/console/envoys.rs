//! The envoys pages. The list takes exactly the query of `GET /api/v1/envoys` (the
//! selectors of `vigocli envoys list`: hostname glob, spoke, status, hostcrate, trait
//! predicates; sort and cursor), parsed by the same `fleet_query::listing_from_query`,
//! so a filtered, sorted page is a link anyone can share. One envoy's page shows its
//! identity, traits and recent runs resource by resource, and to operators the actions
//! (each posts to `actions`, which asks for a confirmation first).

use axum::extract::{Path, RawQuery, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use vigo_common::fleet_query::listing_from_query;
use vigo_proto::admin::v1 as api;

use super::charts::STATUSES;
use super::layout::{self, Nav, short, status, time};
use super::session::{Session, render};
use super::{Page, Refused, State};
use crate::state::ApiRole;

/// Envoys per page unless the link says otherwise.
const PAGE: u32 = 50;
/// Runs shown on an envoy's page.
const RUNS: u32 = 10;
/// Sortable columns: (heading, sort key).
const COLUMNS: &[(&str, Option<&str>)] = &[
    ("Hostname", Some("hostname")),
    ("Status", Some("status")),
    ("Spoke", None),
    ("Hostcrate", None),
    ("Last seen", Some("last_seen")),
    ("Envoy id", Some("id")),
];

/// The query's non-empty fields (an empty form field means "any"), in order.
fn fields(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| (k.into_owned(), v.trim().to_string()))
        .collect()
}

/// `fields` as a query string, with `replace` set (None: removed) and the cursor dropped
/// unless given: a new sort or filter starts from the first page.
fn link(fields: &[(String, String)], replace: &[(&str, Option<&str>)]) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        if k != "cursor" && !replace.iter().any(|(r, _)| r == k) {
            out.append_pair(k, v);
        }
    }
    for (k, v) in replace {
        if let Some(v) = v {
            out.append_pair(k, v);
        }
    }
    format!("/console/envoys?{}", out.finish())
}

pub async fn list(session: Session, AxumState(console): State, RawQuery(q): RawQuery) -> Response {
    let fields = fields(q.as_deref());
    let text = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields.iter())
        .finish();
    let mut request = listing_from_query(Some(&text), true).map_err(crate::HubError::from);
    if let Ok(req) = &mut request
        && req.limit == 0
    {
        req.limit = PAGE;
    }
    let answer = match request {
        Ok(req) => console.api.list_envoys(&session.caller, req).await,
        Err(e) => Err(e),
    };
    let (code, result) = match answer {
        Ok(page) => (StatusCode::OK, Ok(page)),
        Err(e) => {
            let refused = Refused::from(e);
            let code =
                StatusCode::from_u16(refused.kind.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
            (code, Err(refused.message))
        }
    };
    let spokes: Vec<String> = console
        .api
        .node
        .read(|s| s.spokes.keys().cloned().collect());
    let body = html! {
        (filter_form(&fields, &spokes))
        @match &result {
            Ok(page) => (table(&fields, page)),
            Err(message) => p.error role="alert" { "✗ " (message) },
        }
    };
    match render(&session, "Envoys", Nav::Envoys, body) {
        Ok(markup) => (code, markup).into_response(),
        Err(refused) => refused.into_response(),
    }
}

fn value<'a>(fields: &'a [(String, String)], key: &str) -> &'a str {
    fields.iter().find(|(k, _)| k == key).map_or("", |(_, v)| v)
}

fn filter_form(fields: &[(String, String)], spokes: &[String]) -> Markup {
    let traits: Vec<&str> = fields
        .iter()
        .filter(|(k, _)| k == "trait")
        .map(|(_, v)| v.as_str())
        .collect();
    let chosen = |key, v: &str| value(fields, key) == v;
    html! {
        form.filters method="get" action="/console/envoys" role="search" aria-label="Filter envoys" {
            label { "Hostname " input type="search" name="hostname" placeholder="web-*" value=(value(fields, "hostname")); }
            label { "Spoke "
                select name="spoke" {
                    option value="" { "any" }
                    @for s in spokes { option value=(s) selected[chosen("spoke", s)] { (s) } }
                }
            }
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for s in STATUSES { option value=(s) selected[chosen("status", s)] { (s) } }
                }
            }
            label { "Hostcrate " input type="text" name="hostcrate" value=(value(fields, "hostcrate")); }
            @for t in &traits {
                label { "Trait " input type="text" name="trait" value=(t); }
            }
            label { "Trait " input type="text" name="trait" placeholder="os=debian, mem_mb>4096"; }
            @if !value(fields, "sort").is_empty() {
                input type="hidden" name="sort" value=(value(fields, "sort"));
            }
            label { "Per page "
                select name="limit" {
                    @for n in ["20", "50", "100", "500"] { option value=(n) selected[chosen("limit", n)] { (n) } }
                }
            }
            button type="submit" { "Filter" }
            a href="/console/envoys" { "Clear" }
        }
    }
}

fn table(fields: &[(String, String)], page: &api::EnvoyPage) -> Markup {
    let sort = value(fields, "sort");
    html! {
        (layout::missing_banner(&page.missing))
        p #matched { strong { (page.matched) } " envoys match" }
        div.table-wrap {
            table #envoys {
                thead { tr {
                    @for (heading, key) in COLUMNS {
                        @match key {
                            Some(key) => {
                                @let (next, mark, aria) = if sort == *key {
                                    (format!("-{key}"), " ▲", "ascending")
                                } else if sort.strip_prefix('-') == Some(key) {
                                    (key.to_string(), " ▼", "descending")
                                } else {
                                    (key.to_string(), "", "none")
                                };
                                th aria-sort=(aria) { a href=(link(fields, &[("sort", Some(&next))])) { (heading) (mark) } }
                            }
                            None => th { (heading) },
                        }
                    }
                } }
                tbody {
                    @for e in &page.envoys {
                        tr {
                            td { a.envoy href={ "/console/envoys/" (e.envoy_id) } { (e.hostname) } }
                            td { (status(&e.status)) }
                            td { (e.spoke) }
                            td { (e.hostcrate) }
                            td { (time(e.last_seen_ms)) }
                            td { code { (e.envoy_id) } }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if !value(fields, "cursor").is_empty() {
                a href=(link(fields, &[])) { "⇤ First page" }
            }
            @if !page.next_cursor.is_empty() {
                a #next rel="next" href=(link(fields, &[("cursor", Some(&page.next_cursor))])) { "Next page →" }
            }
        }
    }
}

pub async fn show(
    session: Session,
    AxumState(console): State,
    Path(envoy_id): Path<String>,
) -> Page {
    let (api, c) = (&console.api, &session.caller);
    let (detail, runs) = tokio::join!(
        api.show_envoy(
            c,
            api::EnvoyRef {
                envoy_id: envoy_id.clone()
            }
        ),
        api.envoy_runs(
            c,
            api::EnvoyRunsRequest {
                envoy_id: envoy_id.clone(),
                limit: RUNS
            }
        ),
    );
    let detail = detail?;
    let envoy = detail.envoy.clone().unwrap_or_default();
    let spokes: Vec<String> = api.node.read(|s| s.spokes.keys().cloned().collect());
    let body = html! {
        div.grid {
            (identity(&detail, &envoy))
            @if session.caller.role >= ApiRole::Operator && !envoy.revoked {
                (actions(&session, &envoy, &spokes))
            }
        }
        section.card aria-labelledby="traits-h" {
            h2 #traits-h { "Traits" }
            dl.traits {
                @for (k, v) in &envoy.traits { div { dt { (k) } dd { (v) } } }
            }
        }
        @match runs {
            Ok(runs) => (run_list(&runs.runs)),
            Err(e) => p.error role="alert" { "✗ runs: " (e) },
        }
    };
    render(&session, &envoy.hostname, Nav::Envoys, body)
}

fn identity(detail: &api::EnvoyDetail, e: &api::EnvoySummary) -> Markup {
    html! {
        section.card aria-labelledby="id-h" {
            h2 #id-h { "Identity" }
            dl.facts {
                dt { "Status" } dd #envoy-status { (status(&e.status)) }
                dt { "Envoy id" } dd { code { (e.envoy_id) } }
                dt { "Spoke" } dd { a href={ "/console/envoys?spoke=" (e.spoke) } { (e.spoke) } " " span.muted { (detail.spoke_address) } }
                dt { "Hostcrate" } dd { (e.hostcrate) }
                dt { "Last seen" } dd { (time(e.last_seen_ms)) }
                dt { "Enrolled" } dd { (time(e.enrolled_at_ms)) }
                dt { "Bundle" } dd { code { (short(&detail.bundle_fingerprint)) } }
                dt { "Public key" } dd { code.wrap { (detail.public_key) } }
                dt { "Runs kept" } dd { (detail.stored_runs) }
            }
        }
    }
}

fn actions(session: &Session, e: &api::EnvoySummary, spokes: &[String]) -> Markup {
    html! {
        section.card.actions aria-labelledby="act-h" {
            h2 #act-h { "Actions" }
            form method="post" action="/console/actions/push" {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="envoy_id" value=(e.envoy_id);
                button type="submit" { "Push now…" }
                span.muted { " asks the envoy to run at once" }
            }
            form method="post" action="/console/actions/reassign" {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="envoy_id" value=(e.envoy_id);
                label { "Move to "
                    select name="to" required {
                        @for s in spokes.iter().filter(|s| **s != e.spoke) { option value=(s) { (s) } }
                    }
                }
                button type="submit" { "Reassign…" }
            }
            form method="post" action="/console/actions/revoke" {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="envoy_id" value=(e.envoy_id);
                label { "Reason " input type="text" name="reason" maxlength="200" required; }
                button.danger type="submit" { "Revoke…" }
            }
        }
    }
}

fn run_list(runs: &[api::RunInfo]) -> Markup {
    html! {
        section.card aria-labelledby="runs-h" {
            h2 #runs-h { "Recent runs" }
            @if runs.is_empty() { p.muted { "No run reported yet." } }
            @for (i, run) in runs.iter().enumerate() {
                details.run open[i == 0] {
                    summary {
                        (status(&run.status)) " " (time(if run.started_ms > 0 { run.started_ms } else { run.received_ms }))
                        @if run.dry_run { " " span.tag { "dry run" } }
                        span.muted { " — " (run.ok) " ok, " (run.changed) " changed, " (run.failed) " failed, "
                            (run.skipped) " skipped · " (run.duration_ms) " ms" }
                    }
                    @if !run.error.is_empty() { p.error { "✗ " (run.error) } }
                    div.table-wrap {
                        table.resources {
                            thead { tr { th { "Resource" } th { "Outcome" } th { "Message" } th.num { "ms" } } }
                            tbody {
                                @for r in &run.resources {
                                    tr { td { code { (r.resource_id) } } td { (status(&r.outcome)) } td { (r.message) } td.num { (r.duration_ms) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
