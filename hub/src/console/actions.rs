//! Every change the console can make, through one route (`POST /console/actions/{action}`).
//!
//! Order of checks: the session (before the body is read), the form under its size
//! limit and deadline, the form's CSRF token, the action and its fields, the role the
//! action needs (a viewer gets 403 here, before any confirmation), then — unless the
//! form says `confirmed=yes` — a confirmation page that names what will happen and
//! carries the same fields with a fresh request id. The confirmed form runs the admin
//! API call under that request id, so a second click or a resubmitted form is applied
//! once (the API's idempotency, `crate::state::Requests`).

use std::sync::Arc;

use axum::extract::{Path, State as AxumState};
use maud::{Markup, html};
use vigo_common::refusal::Kind;
use vigo_proto::admin::v1 as api;

use super::layout::{self, Nav};
use super::session::{Session, render};
use super::{Form, Page, Refused, State, read_form};
use crate::admin::{AdminApi, Caller};
use crate::error::HubError;
use crate::state::ApiRole;

/// One change, with its fields checked for presence (the API checks their content).
enum Action {
    Push {
        envoy: String,
    },
    Reassign {
        envoy: String,
        to: String,
    },
    Revoke {
        envoy: String,
        reason: String,
    },
    AddSpoke {
        spoke: String,
        address: String,
        weight: u32,
    },
    Drain {
        spoke: String,
    },
    RemoveSpoke {
        spoke: String,
    },
    Rollback {
        version: String,
    },
    CreateToken {
        name: String,
        role: String,
        expires_ms: u64,
    },
    RevokeToken {
        name: String,
    },
    CancelTask {
        task: String,
    },
}

impl Action {
    fn parse(kind: &str, form: &Form) -> Result<Action, Refused> {
        let field = |name| form.required(name).map(str::to_string);
        Ok(match kind {
            "push" => Action::Push {
                envoy: field("envoy_id")?,
            },
            "reassign" => Action::Reassign {
                envoy: field("envoy_id")?,
                to: field("to")?,
            },
            "revoke" => Action::Revoke {
                envoy: field("envoy_id")?,
                reason: field("reason")?,
            },
            "add-spoke" => Action::AddSpoke {
                spoke: field("spoke_id")?,
                address: field("address")?,
                weight: number(form, "weight")?.unwrap_or(100) as u32,
            },
            "drain" => Action::Drain {
                spoke: field("spoke_id")?,
            },
            "remove-spoke" => Action::RemoveSpoke {
                spoke: field("spoke_id")?,
            },
            "rollback" => Action::Rollback {
                version: field("version")?,
            },
            "create-token" => Action::CreateToken {
                name: field("name")?,
                role: field("role")?,
                expires_ms: match (number(form, "expires_ms")?, number(form, "days")?) {
                    (Some(at), _) => at,
                    (None, Some(days)) => vigo_common::time::now_ms() + days * 86_400_000,
                    (None, None) => 0,
                },
            },
            "revoke-token" => Action::RevokeToken {
                name: field("name")?,
            },
            "cancel-task" => Action::CancelTask {
                task: field("task_id")?,
            },
            other => {
                return Err(Refused::new(
                    Kind::NotFound,
                    format!("no console action {other:?}"),
                ));
            }
        })
    }

    /// The role it needs and the admin call it makes (as the API names them).
    fn needs(&self) -> (ApiRole, &'static str) {
        match self {
            Action::Push { .. } => (ApiRole::Operator, "Push"),
            Action::Reassign { .. } => (ApiRole::Operator, "ReassignEnvoy"),
            Action::Revoke { .. } => (ApiRole::Operator, "RevokeEnvoy"),
            Action::AddSpoke { .. } => (ApiRole::Operator, "AddSpoke"),
            Action::Drain { .. } => (ApiRole::Operator, "DrainSpoke"),
            Action::RemoveSpoke { .. } => (ApiRole::Operator, "RemoveSpoke"),
            Action::Rollback { .. } => (ApiRole::Operator, "RollbackConfig"),
            Action::CreateToken { .. } => (ApiRole::Admin, "CreateToken"),
            Action::RevokeToken { .. } => (ApiRole::Admin, "RevokeToken"),
            Action::CancelTask { .. } => (ApiRole::Operator, "CancelTask"),
        }
    }

    /// The fields a confirmation carries forward.
    fn fields(&self) -> Vec<(&'static str, String)> {
        match self {
            Action::Push { envoy } => vec![("envoy_id", envoy.clone())],
            Action::Reassign { envoy, to } => vec![("envoy_id", envoy.clone()), ("to", to.clone())],
            Action::Revoke { envoy, reason } => {
                vec![("envoy_id", envoy.clone()), ("reason", reason.clone())]
            }
            Action::AddSpoke {
                spoke,
                address,
                weight,
            } => vec![
                ("spoke_id", spoke.clone()),
                ("address", address.clone()),
                ("weight", weight.to_string()),
            ],
            Action::Drain { spoke } | Action::RemoveSpoke { spoke } => {
                vec![("spoke_id", spoke.clone())]
            }
            Action::Rollback { version } => vec![("version", version.clone())],
            Action::CreateToken {
                name,
                role,
                expires_ms,
            } => vec![
                ("name", name.clone()),
                ("role", role.clone()),
                ("expires_ms", expires_ms.to_string()),
            ],
            Action::RevokeToken { name } => vec![("name", name.clone())],
            Action::CancelTask { task } => vec![("task_id", task.clone())],
        }
    }

    /// What the confirmation asks, and where "Cancel" goes.
    fn question(&self) -> (Markup, String) {
        match self {
            Action::Push { envoy } => (
                html! { "Ask envoy " code { (envoy) } " to run its policy now?" },
                envoy_page(envoy),
            ),
            Action::Reassign { envoy, to } => (
                html! { "Move envoy " code { (envoy) } " to spoke " strong { (to) } "? Its state moves with it; it reconnects there." },
                envoy_page(envoy),
            ),
            Action::Revoke { envoy, reason } => (
                html! { "Revoke envoy " code { (envoy) } " (" (reason) ")? It is refused everywhere from now on; this cannot be undone." },
                envoy_page(envoy),
            ),
            Action::AddSpoke {
                spoke,
                address,
                weight,
            } => (
                html! { "Add spoke " strong { (spoke) } " at " code { (address) } " with weight " (weight) "?" },
                "/console/spokes".into(),
            ),
            Action::Drain { spoke } => (
                html! { "Drain spoke " strong { (spoke) } "? Every envoy on it moves to the other spokes." },
                "/console/spokes".into(),
            ),
            Action::RemoveSpoke { spoke } => (
                html! { "Remove spoke " strong { (spoke) } " from the cluster? It must be drained first." },
                "/console/spokes".into(),
            ),
            Action::Rollback { version } => (
                html! { "Roll the fleet's config back to " code { (layout::short(version)) } "? Every spoke serves it next." },
                "/console/config".into(),
            ),
            Action::CreateToken {
                name,
                role,
                expires_ms,
            } => (
                html! { "Create the " strong { (role) } " token " strong { (name) } "?"
                @if *expires_ms > 0 { " It expires " (vigo_common::time::format_ms(*expires_ms)) "." } },
                "/console/tokens".into(),
            ),
            Action::RevokeToken { name } => (
                html! { "Revoke the token " strong { (name) } "? Its holders are refused from now on." },
                "/console/tokens".into(),
            ),
            Action::CancelTask { task } => (
                html! { "Cancel task " code { (task) } "? Envoys not yet released never run it." },
                format!("/console/tasks/{task}"),
            ),
        }
    }

    /// Makes the admin call as `caller`; what happened, and where to go next.
    async fn run(self, api: &Arc<AdminApi>, caller: Caller) -> Result<(Markup, String), HubError> {
        Ok(match self {
            Action::Push { envoy } => {
                let req = api::PushRequest {
                    envoy_ids: vec![envoy.clone()],
                    ..Default::default()
                };
                let r = api.push(&caller.clone().asking(&req), req).await?;
                (
                    html! { "Pushed: " (r.marked) " marked, " (r.woken) " woken now." },
                    envoy_page(&envoy),
                )
            }
            Action::Reassign { envoy, to } => {
                let req = api::ReassignEnvoyRequest {
                    envoy_id: envoy.clone(),
                    to,
                };
                let r = api
                    .reassign_envoy(&caller.clone().asking(&req), req)
                    .await?;
                (
                    html! { "Moved " (r.moved) " envoy in " (r.duration_ms) " ms." },
                    envoy_page(&envoy),
                )
            }
            Action::Revoke { envoy, reason } => {
                let req = api::RevokeEnvoyRequest {
                    envoy_id: envoy.clone(),
                    reason,
                };
                let r = api.revoke_envoy(&caller.clone().asking(&req), req).await?;
                let what = if r.revoked_now {
                    "Revoked."
                } else {
                    "It was revoked already."
                };
                (html! { (what) }, envoy_page(&envoy))
            }
            Action::AddSpoke {
                spoke,
                address,
                weight,
            } => {
                let req = api::AddSpokeRequest {
                    spoke_id: spoke,
                    address,
                    weight,
                };
                let r = api.add_spoke(&caller.clone().asking(&req), req).await?;
                (
                    html! { "Spoke " (r.spoke_id) " is " (r.state) "." },
                    "/console/spokes".into(),
                )
            }
            Action::Drain { spoke } => {
                let req = api::SpokeRef { spoke_id: spoke };
                let r = api.drain_spoke(&caller.clone().asking(&req), req).await?;
                (
                    html! { "Drained: " (r.moved) " envoys moved in " (r.duration_ms) " ms." },
                    "/console/spokes".into(),
                )
            }
            Action::RemoveSpoke { spoke } => {
                let req = api::SpokeRef { spoke_id: spoke };
                let r = api.remove_spoke(&caller.clone().asking(&req), req).await?;
                (
                    html! { "Spoke " (r.spoke_id) " removed." },
                    "/console/spokes".into(),
                )
            }
            Action::Rollback { version } => {
                let req = api::RollbackConfigRequest { version };
                let r = api
                    .rollback_config(&caller.clone().asking(&req), req)
                    .await?;
                (
                    html! { "The fleet's config is " code #current-version { (layout::short(&r.version)) } " again." },
                    "/console/config".into(),
                )
            }
            Action::CreateToken {
                name,
                role,
                expires_ms,
            } => {
                let req = api::CreateTokenRequest {
                    name,
                    role,
                    expires_ms,
                    ..Default::default()
                };
                let r = api.create_token(&caller.clone().asking(&req), req).await?;
                (
                    html! {
                        "Created. Copy the secret now: it is not shown again." br;
                        code.secret #secret { (r.secret) }
                    },
                    "/console/tokens".into(),
                )
            }
            Action::RevokeToken { name } => {
                let req = api::RevokeTokenRequest { name };
                let r = api.revoke_token(&caller.clone().asking(&req), req).await?;
                (
                    html! { "Token " (r.name) " revoked." },
                    "/console/tokens".into(),
                )
            }
            Action::CancelTask { task } => {
                let req = api::TaskRef {
                    task_id: task.clone(),
                };
                let r = api.cancel_task(&caller.clone().asking(&req), req).await?;
                (
                    html! { "Task " (r.task_id) " is " (r.state) "." },
                    format!("/console/tasks/{task}"),
                )
            }
        })
    }
}

fn envoy_page(envoy: &str) -> String {
    format!("/console/envoys/{envoy}")
}

fn number(form: &Form, name: &'static str) -> Result<Option<u64>, Refused> {
    match form.get(name) {
        "" => Ok(None),
        v => v.parse().map(Some).map_err(|_| {
            Refused::new(
                Kind::Malformed,
                format!("{name}: {v:?} is not a whole number"),
            )
        }),
    }
}

/// A request id from a confirmation form: 32 hex digits, as the console makes them.
fn request_id(form: &Form) -> Result<String, Refused> {
    let id = form.required("request_id")?;
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.to_string())
    } else {
        Err(Refused::new(Kind::Malformed, "request_id: 32 hex digits"))
    }
}

pub async fn act(
    session: Session,
    AxumState(console): State,
    Path(kind): Path<String>,
    body: axum::body::Body,
) -> Page {
    let form = read_form(body).await?;
    session.check_csrf(form.get("csrf"))?;
    let action = Action::parse(&kind, &form)?;
    let (needs, call) = action.needs();
    session.caller.require(needs, call)?;
    let (question, back) = action.question();
    if form.get("confirmed") != "yes" {
        let body = html! {
            form.confirm method="post" action={ "/console/actions/" (kind) } {
                p.question { (question) }
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="confirmed" value="yes";
                input type="hidden" name="request_id" value=(hex::encode(rand::random::<[u8; 16]>()));
                @for (name, value) in action.fields() {
                    input type="hidden" name=(name) value=(value);
                }
                button.danger #confirm type="submit" autofocus { "Yes, " (kind.replace('-', " ")) }
                " "
                a.button href=(back) { "Cancel" }
            }
        };
        return render(&session, "Confirm", nav_of(&kind), body);
    }
    let mut caller = session.caller.clone();
    caller.request_id = request_id(&form)?;
    tracing::info!(caller = %caller.name, action = %kind, "console action");
    let (done, next) = action.run(&console.api, caller).await?;
    let body = html! {
        p.done role="status" { "✓ " (done) }
        p { a href=(next) { "Continue →" } }
    };
    render(&session, "Done", nav_of(&kind), body)
}

fn nav_of(kind: &str) -> Nav {
    match kind {
        "push" | "reassign" | "revoke" => Nav::Envoys,
        "add-spoke" | "drain" | "remove-spoke" => Nav::Spokes,
        "rollback" => Nav::Config,
        "create-token" | "revoke-token" => Nav::Tokens,
        _ => Nav::Tasks,
    }
}
