//! The overview: fleet totals by status, convergence over the last 24 hours, spokes,
//! hub members and recent publishes, with a banner naming any spoke that did not
//! answer. The live part is one fragment (`/console/live/overview`), which the page's
//! script fetches again every few seconds; without script the page shows it as loaded.

use axum::extract::State as AxumState;
use maud::{Markup, html};
use vigo_proto::admin::v1 as api;

use super::layout::{self, Nav, short, status, time};
use super::session::{Session, render};
use super::{Page, Part, State, charts, html_answer};

const WINDOW_MS: u64 = 24 * 3600 * 1000;
/// Publishes shown.
const RECENT_CONFIGS: usize = 5;

pub async fn page(session: Session, AxumState(console): State) -> Page {
    let live = fragment(&session, &console).await?;
    let body = html! {
        div #live data-live="/console/live/overview" data-every="10" aria-live="polite" { (live) }
    };
    render(&session, "Overview", Nav::Overview, body)
}

/// The refreshed part of the overview, on its own.
pub async fn live(session: Session, AxumState(console): State) -> Page {
    fragment(&session, &console).await.map(html_answer)
}

async fn fragment(session: &Session, console: &super::Console) -> Part {
    let (api, c) = (&console.api, &session.caller);
    let (cluster, compliance, history, configs) = tokio::join!(
        api.status(c, api::StatusRequest {}),
        api.compliance(c, api::ComplianceRequest {}),
        api.compliance_history(
            c,
            api::ComplianceHistoryRequest {
                window_ms: WINDOW_MS
            }
        ),
        api.config_history(c, api::ConfigHistoryRequest {}),
    );
    let (cluster, compliance, history, configs) = (cluster?, compliance?, history?, configs?);
    let fleet = compliance.fleet.clone().unwrap_or_default();
    let now = vigo_common::time::now_ms();
    Ok(html! {
        (layout::missing_banner(&compliance.missing))
        div.grid {
            section.card aria-labelledby="fleet-h" {
                h2 #fleet-h { "Fleet" }
                p.big { span #fleet-total { (fleet.total) } " envoys" }
                (charts::status_bars(&fleet))
            }
            section.card aria-labelledby="conv-h" {
                h2 #conv-h { "Convergence, last 24 h" }
                (charts::convergence_line(&history.samples, WINDOW_MS, now))
            }
        }
        (spokes_table(&cluster, &compliance))
        div.grid {
            (members(&cluster))
            (recent_configs(&configs))
        }
        p.muted.small { "As of " (time(now)) " from hub node " (cluster.node_id) "." }
    })
}

fn spokes_table(cluster: &api::ClusterStatus, compliance: &api::ComplianceReport) -> Markup {
    let converged = |spoke: &str| {
        compliance
            .spokes
            .iter()
            .find(|n| n.name == spoke)
            .and_then(|n| n.counts.as_ref())
            .map(|c| (c.by_status.get("converged").copied().unwrap_or(0), c.total))
    };
    html! {
        section.card aria-labelledby="spokes-h" {
            h2 #spokes-h { "Spokes" }
            div.table-wrap {
                table {
                    thead { tr { th { "Spoke" } th { "State" } th { "Health" } th.num { "Envoys" }
                        th.num { "Converged" } th { "Heartbeat" } th { "Config" } } }
                    tbody {
                        @for s in &cluster.spokes {
                            tr {
                                td { a href={ "/console/envoys?spoke=" (s.spoke_id) } { (s.spoke_id) } }
                                td { (status(&s.state)) }
                                td { (status(if s.healthy { "healthy" } else { "unhealthy" })) }
                                td.num { (s.pins) }
                                td.num { @match converged(&s.spoke_id) {
                                    Some((c, t)) => { (c) " / " (t) },
                                    None => span.muted { "no answer" },
                                } }
                                td { (time(s.last_heartbeat_ms)) }
                                td { code { (short(&s.config_version)) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn members(cluster: &api::ClusterStatus) -> Markup {
    html! {
        section.card aria-labelledby="hubs-h" {
            h2 #hubs-h { "Hub members" }
            div.table-wrap {
                table {
                    thead { tr { th { "Node" } th { "Address" } th { "Role" } th { "Reachable" } th.num { "Lag" } } }
                    tbody {
                        @for m in &cluster.members {
                            tr {
                                td { (m.node_id) }
                                td { code { (m.address) } }
                                td { @if m.leader { strong { "★ leader" } } @else if m.voter { "voter" } @else { "learner" } }
                                td { (status(if m.reachable { "ok" } else { "unreachable" })) }
                                td.num { (m.lag) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn recent_configs(configs: &api::ConfigVersions) -> Markup {
    html! {
        section.card aria-labelledby="configs-h" {
            h2 #configs-h { "Recent publishes" }
            @if configs.versions.is_empty() {
                p.muted { "No config published yet." }
            }
            ul.plain {
                @for v in configs.versions.iter().take(RECENT_CONFIGS) {
                    li {
                        code { (short(&v.version)) }
                        @if v.current { " " strong { "current" } }
                        " — " (v.message) " "
                        span.muted { "by " (v.author) ", " (time(v.published_ms)) }
                    }
                }
            }
            p { a href="/console/config" { "All publishes →" } }
        }
    }
}
