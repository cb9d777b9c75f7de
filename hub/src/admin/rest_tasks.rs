//! Tasks on the REST face: `POST /api/v1/tasks` runs one (or, with `dry_run`, plans
//! it), `GET /api/v1/tasks[?state=]` lists them, `GET /api/v1/tasks/{id}` shows one,
//! `DELETE /api/v1/tasks/{id}` cancels it, `GET /api/v1/tasks/{id}/results` pages
//! through its results, and `GET /api/v1/tasks/{id}/events` streams its progress as
//! Server-Sent Events (`event: task`, the `TaskInfo` as JSON; the stream ends when
//! the task does).

use std::convert::Infallible;
use std::time::Instant;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio_stream::StreamExt;
use utoipa::IntoParams;
use vigo_common::refusal::Refusal;
use vigo_proto::admin::v1 as api;

use super::Caller;
use super::rest::{Api, ApiError, Failure, answer, body};
use crate::error::HubError;

/// Query parameters of the listing (documentation only: the query string is parsed by
/// hand so an unknown parameter is refused by name).
#[allow(dead_code)]
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskListQuery {
    /// running | finished | stopped | cancelled | expired.
    state: Option<String>,
}

/// Query parameters of a results page (documentation only, as [`TaskListQuery`]).
#[allow(dead_code)]
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskResultsQuery {
    /// Only failed, timed-out, refused and unreachable envoys.
    failed_only: Option<bool>,
    /// 1..=1000 (default 100).
    limit: Option<u32>,
    /// next_cursor of the previous page.
    cursor: Option<String>,
}

pub(super) fn query(
    raw: Option<&str>,
    allowed: &[&str],
) -> Result<Vec<(String, String)>, HubError> {
    let mut out = Vec::new();
    for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if !allowed.contains(&key.as_ref()) {
            return Err(HubError::malformed(
                "query",
                format!(
                    "unknown parameter {key:?}; this route takes {}",
                    allowed.join(", ")
                ),
            ));
        }
        out.push((key.into_owned(), value.into_owned()));
    }
    Ok(out)
}

#[utoipa::path(post, path = "/api/v1/tasks", tag = "tasks", request_body = api::RunTaskRequest,
    responses((status = 200, body = api::TaskInfo), (status = 400, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError), (status = 413, body = ApiError)))]
pub async fn run_task(State(a): Api, Extension(c): Extension<Caller>, b: Bytes) -> Response {
    answer(&a, "POST /tasks", c, body(&b), |a, c, r| async move {
        a.run_task(&c, r).await
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks", params(TaskListQuery),
    responses((status = 200, body = api::TaskList), (status = 400, body = ApiError)))]
pub async fn list_tasks(
    State(a): Api,
    Extension(c): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> Response {
    let req = query(q.as_deref(), &["state"]).map(|q| api::ListTasksRequest {
        state: q
            .into_iter()
            .map(|(_, v)| v)
            .next_back()
            .unwrap_or_default(),
    });
    answer(&a, "GET /tasks", c, req, |a, c, r| async move {
        a.list_tasks(&c, r).await
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/tasks/{task_id}", tag = "tasks",
    params(("task_id" = String, Path, description = "32 hex digits")),
    responses((status = 200, body = api::TaskInfo), (status = 404, body = ApiError)))]
pub async fn show_task(
    State(a): Api,
    Extension(c): Extension<Caller>,
    Path(task_id): Path<String>,
) -> Response {
    answer(
        &a,
        "GET /tasks/{task_id}",
        c,
        Ok(api::TaskRef { task_id }),
        |a, c, r| async move { a.show_task(&c, r).await },
    )
    .await
}

#[utoipa::path(delete, path = "/api/v1/tasks/{task_id}", tag = "tasks",
    params(("task_id" = String, Path, description = "32 hex digits")),
    responses((status = 200, body = api::TaskInfo), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 412, body = ApiError)))]
pub async fn cancel_task(
    State(a): Api,
    Extension(c): Extension<Caller>,
    Path(task_id): Path<String>,
) -> Response {
    answer(
        &a,
        "DELETE /tasks/{task_id}",
        c,
        Ok(api::TaskRef { task_id }),
        |a, c, r| async move { a.cancel_task(&c, r).await },
    )
    .await
}

#[utoipa::path(get, path = "/api/v1/tasks/{task_id}/results", tag = "tasks",
    params(("task_id" = String, Path, description = "32 hex digits"), TaskResultsQuery),
    responses((status = 200, body = api::TaskResultPage), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn task_results(
    State(a): Api,
    Extension(c): Extension<Caller>,
    Path(task_id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let req = query(q.as_deref(), &["failed_only", "limit", "cursor"]).and_then(|q| {
        let mut req = api::TaskResultsRequest {
            task_id,
            ..Default::default()
        };
        for (key, value) in q {
            match key.as_str() {
                "failed_only" => {
                    req.failed_only = value.parse().map_err(|_| {
                        HubError::malformed("failed_only", format!("{value:?}: true or false"))
                    })?
                }
                "limit" => {
                    req.limit = value.parse().map_err(|_| {
                        HubError::malformed("limit", format!("{value:?} is not a number"))
                    })?
                }
                _ => req.cursor = value,
            }
        }
        Ok(req)
    });
    answer(
        &a,
        "GET /tasks/{task_id}/results",
        c,
        req,
        |a, c, r| async move { a.task_results(&c, r).await },
    )
    .await
}

#[utoipa::path(get, path = "/api/v1/tasks/{task_id}/events", tag = "tasks",
    params(("task_id" = String, Path, description = "32 hex digits")),
    responses((status = 200, description = "text/event-stream: `event: task` with a TaskInfo as JSON, at once and at each change, until the task ends", content_type = "text/event-stream"),
        (status = 404, body = ApiError)))]
pub async fn task_events(
    State(a): Api,
    Extension(c): Extension<Caller>,
    Path(task_id): Path<String>,
) -> Response {
    let started = Instant::now();
    let req = api::TaskRef { task_id };
    let result = match a.check_fresh(&c).await {
        Ok(()) => {
            let c = c.asking(&req);
            a.watch_task(&c, req).await
        }
        Err(e) => Err(e),
    };
    super::grpc::record(
        "GET /tasks/{task_id}/events",
        result.as_ref().err().map(Refusal::kind),
        started,
    );
    match result {
        Ok(updates) => {
            let events = updates.map(|info| {
                Ok::<_, Infallible>(
                    Event::default()
                        .event("task")
                        .json_data(&info)
                        .unwrap_or_else(|_| Event::default().event("error")),
                )
            });
            Sse::new(events)
                .keep_alive(KeepAlive::default())
                .into_response()
        }
        Err(e) => Failure(e).into_response(),
    }
}
