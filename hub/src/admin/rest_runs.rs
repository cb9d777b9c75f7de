//! The operator's reads on the REST face: `GET /api/v1/envoys/{id}/runs?limit=` (an
//! envoy's recent runs with every resource's outcome) and `GET
//! /api/v1/config/trace?host=&version=` (what a host name resolves to in a published
//! config, and where each variable came from), and `GET
//! /api/v1/compliance/history?window=24h` (the fleet's counts per status over time).
//! All for viewers.

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use utoipa::IntoParams;
use vigo_proto::admin::v1 as api;

use super::Caller;
use super::rest::{Api, ApiError, answer};
use super::rest_tasks::query;
use crate::error::HubError;

/// Query parameters of the runs route (documentation only: the query string is parsed
/// by hand so an unknown parameter is refused by name).
#[allow(dead_code)]
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// 1..=100 (default 10), newest first.
    limit: Option<u32>,
}

/// Query parameters of the trace route (documentation only, as [`RunsQuery`]).
#[allow(dead_code)]
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TraceQuery {
    /// The host name to trace (as envoys enroll under it).
    host: String,
    /// A published version or a unique prefix (default: the current one).
    version: Option<String>,
}

fn runs_request(envoy_id: String, raw: Option<&str>) -> Result<api::EnvoyRunsRequest, HubError> {
    let mut req = api::EnvoyRunsRequest { envoy_id, limit: 0 };
    for (_, value) in query(raw, &["limit"])? {
        req.limit = value
            .parse()
            .map_err(|_| HubError::malformed("limit", format!("{value:?} is not a number")))?;
    }
    Ok(req)
}

fn trace_request(raw: Option<&str>) -> Result<api::TraceConfigRequest, HubError> {
    let mut req = api::TraceConfigRequest::default();
    for (key, value) in query(raw, &["host", "version"])? {
        match key.as_str() {
            "host" => req.hostname = value,
            _ => req.version = value,
        }
    }
    if req.hostname.is_empty() {
        return Err(HubError::malformed("host", "is required"));
    }
    Ok(req)
}

#[utoipa::path(get, path = "/api/v1/envoys/{envoy_id}/runs", tag = "envoys",
    params(("envoy_id" = String, Path, description = "16 hex digits"), RunsQuery),
    responses((status = 200, body = api::EnvoyRunList), (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 503, body = ApiError)))]
pub async fn envoy_runs(
    State(a): Api,
    Extension(c): Extension<Caller>,
    Path(envoy_id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let req = runs_request(envoy_id, q.as_deref());
    answer(
        &a,
        "GET /envoys/{envoy_id}/runs",
        c,
        req,
        |a, c, r| async move { a.envoy_runs(&c, r).await },
    )
    .await
}

#[utoipa::path(get, path = "/api/v1/config/trace", tag = "config", params(TraceQuery),
    responses((status = 200, body = api::ConfigTrace), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn trace_config(
    State(a): Api,
    Extension(c): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> Response {
    answer(
        &a,
        "GET /config/trace",
        c,
        trace_request(q.as_deref()),
        |a, c, r| async move { a.trace_config(&c, r).await },
    )
    .await
}

/// Query parameters of the history route (documentation only, as [`RunsQuery`]).
#[allow(dead_code)]
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// How far back: `90m`, `24h`, `7d` (default 24h).
    window: Option<String>,
}

fn history_request(raw: Option<&str>) -> Result<api::ComplianceHistoryRequest, HubError> {
    let mut req = api::ComplianceHistoryRequest::default();
    for (_, value) in query(raw, &["window"])? {
        let window = humantime::parse_duration(&value)
            .map_err(|e| HubError::malformed("window", format!("{value:?}: {e}")))?;
        if window.is_zero() {
            return Err(HubError::malformed("window", "must be longer than zero"));
        }
        req.window_ms = window.as_millis().min(u128::from(u64::MAX)) as u64;
    }
    Ok(req)
}

#[utoipa::path(get, path = "/api/v1/compliance/history", tag = "compliance", params(HistoryQuery),
    responses((status = 200, body = api::ComplianceTimeline), (status = 400, body = ApiError)))]
pub async fn compliance_history(
    State(a): Api,
    Extension(c): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> Response {
    answer(
        &a,
        "GET /compliance/history",
        c,
        history_request(q.as_deref()),
        |a, c, r| async move { a.compliance_history(&c, r).await },
    )
    .await
}
