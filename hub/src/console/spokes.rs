//! The spokes page: each spoke's state, weight, envoys, heartbeat and the config it
//! serves, asked of every spoke at once (`ShowSpoke`; one that does not answer is named
//! with its error), and to operators the forms to add, drain and remove a spoke.

use axum::extract::State as AxumState;
use maud::{Markup, html};
use vigo_proto::admin::v1 as api;

use super::layout::{Nav, short, status, time};
use super::session::{Session, render};
use super::{Page, State};
use crate::state::ApiRole;

pub async fn list(session: Session, AxumState(console): State) -> Page {
    let (api, c) = (&console.api, &session.caller);
    let spokes = api.list_spokes(c, api::ListSpokesRequest {}).await?.spokes;
    let details = futures::future::join_all(spokes.iter().map(|s| {
        api.show_spoke(
            c,
            api::SpokeRef {
                spoke_id: s.spoke_id.clone(),
            },
        )
    }))
    .await;
    let operator = session.caller.role >= ApiRole::Operator;
    let body = html! {
        div.table-wrap {
            table #spokes {
                thead { tr {
                    th { "Spoke" } th { "Address" } th { "State" } th { "Health" } th.num { "Weight" }
                    th.num { "Envoys" } th { "Heartbeat" } th { "Config served" } th.num { "Dirty" }
                    @if operator { th { "Actions" } }
                } }
                tbody {
                    @for (s, detail) in spokes.iter().zip(&details) {
                        tr {
                            td { a href={ "/console/envoys?spoke=" (s.spoke_id) } { (s.spoke_id) } }
                            td { code { (s.address) } }
                            td { (status(&s.state)) }
                            td { (status(if s.healthy { "healthy" } else { "unhealthy" })) }
                            td.num { (s.weight) }
                            td.num { (s.pins) }
                            td { (time(s.last_heartbeat_ms)) }
                            (served(detail))
                            @if operator { td { (row_actions(&session, &s.spoke_id)) } }
                        }
                    }
                }
            }
        }
        @if operator { (add_form(&session)) }
    };
    render(&session, "Spokes", Nav::Spokes, body)
}

fn served(detail: &Result<api::SpokeDetail, crate::HubError>) -> Markup {
    html! {
        @match detail {
            Ok(d) if d.error.is_empty() => {
                td { code { (short(&d.serving_version)) } }
                td.num { (d.dirty) }
            }
            Ok(d) => td colspan="2" { span.error { "✗ did not answer: " (d.error) } },
            Err(e) => td colspan="2" { span.error { "✗ " (e) } },
        }
    }
}

fn row_actions(session: &Session, spoke: &str) -> Markup {
    html! {
        div.inline-forms {
            @for (action, label) in [("drain", "Drain…"), ("remove-spoke", "Remove…")] {
                form method="post" action={ "/console/actions/" (action) } {
                    input type="hidden" name="csrf" value=(session.csrf);
                    input type="hidden" name="spoke_id" value=(spoke);
                    button.danger type="submit" aria-label={ (label) " " (spoke) } { (label) }
                }
            }
        }
    }
}

fn add_form(session: &Session) -> Markup {
    html! {
        section.card aria-labelledby="add-h" {
            h2 #add-h { "Add a spoke" }
            form.filters method="post" action="/console/actions/add-spoke" {
                input type="hidden" name="csrf" value=(session.csrf);
                label { "Spoke id " input type="text" name="spoke_id" required maxlength="64"; }
                label { "Address " input type="text" name="address" required placeholder="spoke-d.example:7443"; }
                label { "Weight " input type="number" name="weight" min="1" value="100"; }
                button type="submit" { "Add…" }
            }
        }
    }
}
