//! The config page (every publish the hub keeps, newest first, with author and
//! message; a roll-back to any earlier one for operators) and the tokens page (admin
//! only: the admin API's tokens, a form to create one, revoke buttons).

use axum::extract::State as AxumState;
use maud::html;
use vigo_proto::admin::v1 as api;

use super::layout::{Nav, short, status, time};
use super::session::{Session, render};
use super::{Page, State};
use crate::state::ApiRole;

pub async fn history(session: Session, AxumState(console): State) -> Page {
    let configs = console
        .api
        .config_history(&session.caller, api::ConfigHistoryRequest {})
        .await?;
    let operator = session.caller.role >= ApiRole::Operator;
    let body = html! {
        @if configs.versions.is_empty() { p.muted { "No config published yet (" code { "vigocli config publish DIR" } ")." } }
        div.table-wrap {
            table #configs {
                thead { tr { th { "Version" } th { "Published" } th { "Author" } th { "Message" } th.num { "Files" }
                    @if operator { th { "Action" } } } }
                tbody {
                    @for v in &configs.versions {
                        tr class=[v.current.then_some("current")] {
                            td { code title=(v.version) { (short(&v.version)) }
                                @if v.current { " " (status("active")) } }
                            td { (time(v.published_ms)) }
                            td { (v.author) }
                            td { (v.message) }
                            td.num { (v.files) }
                            @if operator { td {
                                @if !v.current {
                                    form method="post" action="/console/actions/rollback" {
                                        input type="hidden" name="csrf" value=(session.csrf);
                                        input type="hidden" name="version" value=(v.version);
                                        button type="submit" aria-label={ "Roll back to " (short(&v.version)) } { "Roll back…" }
                                    }
                                }
                            } }
                        }
                    }
                }
            }
        }
    };
    render(&session, "Config", Nav::Config, body)
}

pub async fn tokens(session: Session, AxumState(console): State) -> Page {
    let tokens = console
        .api
        .list_tokens(&session.caller, api::ListTokensRequest {})
        .await?;
    let body = html! {
        div.table-wrap {
            table #tokens {
                thead { tr { th { "Name" } th { "Role" } th { "Used" } th { "Expires" } th { "State" } th { "Action" } } }
                tbody {
                    @for t in &tokens.tokens {
                        tr {
                            td { (t.name) }
                            td { (t.role) }
                            td { (t.used) @if t.uses > 0 { " / " (t.uses) } }
                            td { @if t.expires_ms == 0 { "never" } @else { (vigo_common::time::format_ms(t.expires_ms)) } }
                            td { (status(if t.revoked { "revoked" } else { "active" })) }
                            td { @if !t.revoked {
                                form method="post" action="/console/actions/revoke-token" {
                                    input type="hidden" name="csrf" value=(session.csrf);
                                    input type="hidden" name="name" value=(t.name);
                                    button.danger type="submit" aria-label={ "Revoke " (t.name) } { "Revoke…" }
                                }
                            } }
                        }
                    }
                }
            }
        }
        section.card aria-labelledby="new-h" {
            h2 #new-h { "Create a token" }
            form.filters method="post" action="/console/actions/create-token" {
                input type="hidden" name="csrf" value=(session.csrf);
                label { "Name " input type="text" name="name" required maxlength="64"; }
                label { "Role "
                    select name="role" {
                        @for r in ["viewer", "operator", "admin", "enroll"] { option value=(r) { (r) } }
                    }
                }
                label { "Expires in (days) " input type="number" name="days" min="1" placeholder="never"; }
                button type="submit" { "Create…" }
            }
        }
    };
    render(&session, "Tokens", Nav::Tokens, body)
}
