//! The tasks pages: every task the hub keeps, and one task's progress (counts per
//! outcome, refreshed every few seconds by the page's script through
//! `/console/live/tasks/{id}`) with its results envoy by envoy.

use axum::extract::{Path, State as AxumState};
use maud::{Markup, html};
use vigo_proto::admin::v1 as api;

use super::layout::{self, Nav, status, time};
use super::session::{Session, render};
use super::{Page, Part, State, html_answer};
use crate::state::ApiRole;

/// Results shown on a task's page.
const RESULTS: u32 = 100;

pub async fn list(session: Session, AxumState(console): State) -> Page {
    let tasks = console
        .api
        .list_tasks(&session.caller, api::ListTasksRequest::default())
        .await?;
    let body = html! {
        @if tasks.tasks.is_empty() { p.muted { "No tasks yet (" code { "vigocli tasks run" } ")." } }
        div.table-wrap {
            table #tasks {
                thead { tr { th { "Task" } th { "Kind" } th { "What" } th { "State" } th { "Progress" } th { "By" } th { "Created" } } }
                tbody {
                    @for t in &tasks.tasks {
                        tr {
                            td { a href={ "/console/tasks/" (t.task_id) } { code { (t.task_id) } } }
                            td { (t.kind) }
                            td { code { (t.definition) } }
                            td { (status(&t.state)) }
                            td { (progress(t.counts.as_ref())) }
                            td { (t.requested_by) }
                            td { (time(t.created_ms)) }
                        }
                    }
                }
            }
        }
    };
    render(&session, "Tasks", Nav::Tasks, body)
}

fn progress(counts: Option<&api::TaskCounts>) -> Markup {
    let c = counts.copied().unwrap_or_default();
    let done = c.ok + c.failed + c.timed_out + c.refused + c.unreachable;
    html! {
        progress max=(c.targets.max(1)) value=(done) { (done) " / " (c.targets) }
        " " (done) " / " (c.targets)
    }
}

pub async fn show(
    session: Session,
    AxumState(console): State,
    Path(task_id): Path<String>,
) -> Page {
    let live = fragment(&session, &console, &task_id).await?;
    let body = html! {
        div #live data-live={ "/console/live/tasks/" (task_id) } data-every="3" aria-live="polite" { (live) }
    };
    render(&session, &format!("Task {task_id}"), Nav::Tasks, body)
}

pub async fn live(
    session: Session,
    AxumState(console): State,
    Path(task_id): Path<String>,
) -> Page {
    fragment(&session, &console, &task_id)
        .await
        .map(html_answer)
}

async fn fragment(session: &Session, console: &super::Console, task_id: &str) -> Part {
    let (api, c) = (&console.api, &session.caller);
    let (task, results) = tokio::join!(
        api.show_task(
            c,
            api::TaskRef {
                task_id: task_id.to_string()
            }
        ),
        api.task_results(
            c,
            api::TaskResultsRequest {
                task_id: task_id.to_string(),
                limit: RESULTS,
                ..Default::default()
            }
        ),
    );
    let (task, results) = (task?, results?);
    let counts = task.counts.unwrap_or_default();
    let running = matches!(task.state.as_str(), "running" | "planned");
    Ok(html! {
        (layout::missing_banner(&results.missing))
        section.card {
            dl.facts {
                dt { "State" } dd #task-state { (status(&task.state)) }
                dt { "What" } dd { code { (task.definition) } }
                dt { "Selector" } dd { code { (task.selector) } }
                dt { "Requested by" } dd { (task.requested_by) ", " (time(task.created_ms)) }
                dt { "Progress" } dd { (progress(Some(&counts))) }
                dt { "Outcomes" } dd {
                    (counts.ok) " ok · " (counts.failed) " failed · " (counts.timed_out) " timed out · "
                    (counts.refused) " refused · " (counts.unreachable) " unreachable · " (counts.running) " running"
                }
            }
            @if running && session.caller.role >= ApiRole::Operator {
                form method="post" action="/console/actions/cancel-task" {
                    input type="hidden" name="csrf" value=(session.csrf);
                    input type="hidden" name="task_id" value=(task.task_id);
                    button.danger type="submit" { "Cancel task…" }
                }
            }
        }
        div.table-wrap {
            table #results {
                thead { tr { th { "Envoy" } th { "Outcome" } th.num { "Exit" } th { "Output" } th.num { "ms" } } }
                tbody {
                    @for r in &results.results {
                        tr {
                            td { a href={ "/console/envoys/" (r.envoy_id) } { (r.hostname) } }
                            td { (status(&r.status)) }
                            td.num { @if r.status == "running" || r.exit_code < 0 { "–" } @else { (r.exit_code) } }
                            td { pre.output { (r.stdout) (r.stderr) (r.message)
                                @for row in &r.rows { (row.collector) ": " (format!("{:?}", row.fields)) (row.error) "\n" } } }
                            td.num { (r.duration_ms) }
                        }
                    }
                }
            }
        }
        @if !results.next_cursor.is_empty() {
            p.muted { "The first " (RESULTS) " results; the rest with " code { "vigocli tasks results " (task.task_id) } "." }
        }
    })
}
