//! The admin API as REST/JSON under `/api/v1/`, with the same messages and operations
//! as the gRPC service. Routes and the OpenAPI document (`/api/v1/openapi.json`) come
//! from the same declarations, so the document describes exactly what is served.
//!
//! Errors are `{"error": "...", "code": "..."}` with the HTTP status of the operation's
//! refusal kind (`vigo_common::refusal::Kind::http_status`): 400 for a malformed request (the message
//! names the field), 401 without a valid token, 403 for a role too low, 413 for a body
//! above its route's limit, 408 for a body that does not arrive in time.
//!
//! Every route but the OpenAPI document is behind [`admit`]: the bearer token is checked
//! before the body is read, and the body is read under the route's size limit and a
//! deadline before the handler sees it.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, MatchedPath, Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use vigo_common::fleet_query::listing_from_query;
use vigo_common::limits::MAX_CONFIG_MESSAGE;
use vigo_common::pki::Peer;
use vigo_proto::admin::v1 as api;

use super::{AdminApi, Caller, authenticate};
use vigo_common::refusal::{Kind, Refusal};

use crate::error::HubError;

/// How long a request body may take to arrive once its headers have.
const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// The largest body a route takes: a policy tree, an override list, a push's target
/// list; anything else is a small JSON object.
fn body_limit(method: &Method, path: &str) -> usize {
    match (method.as_str(), path) {
        ("POST", "/api/v1/config") => MAX_CONFIG_MESSAGE,
        ("PUT", "/api/v1/overrides") => 1 << 20,
        ("POST", "/api/v1/push") => 256 << 10,
        _ => 64 << 10,
    }
}

/// Runs before every route's handler: authenticates the bearer token before the body
/// is read, then reads the body under the route's limit and [`BODY_DEADLINE`], and hands
/// the handler the caller and the body.
async fn admit(
    State(api): Api,
    matched: MatchedPath,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = format!(
        "{} {}",
        request.method(),
        matched.as_str().trim_start_matches("/api/v1")
    );
    let refuse = |route: String, status: StatusCode, kind: Kind, error: String| {
        super::grpc::record(route, Some(kind), started);
        let code = format!("{:?}", kind.grpc_code());
        (status, Json(ApiError { error, code })).into_response()
    };
    let caller = match authenticate(&api.node, request.headers(), &Peer::Anonymous, "") {
        Ok(c) => c,
        Err(e) => {
            super::grpc::record(route, Some(e.kind()), started);
            return Failure(e).into_response();
        }
    };
    let limit = body_limit(request.method(), matched.as_str());
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = |route| {
        refuse(
            route,
            StatusCode::PAYLOAD_TOO_LARGE,
            Kind::TooLarge,
            format!("the request body is larger than this route takes ({limit} bytes)"),
        )
    };
    if declared.is_some_and(|n| n > limit) {
        return too_large(route);
    }
    let bytes = match tokio::time::timeout(BODY_DEADLINE, Limited::new(body, limit).collect()).await
    {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(route),
        Ok(Err(e)) => {
            return refuse(
                route,
                StatusCode::BAD_REQUEST,
                Kind::Malformed,
                format!("reading the request body: {e}"),
            );
        }
        Err(_) => {
            return refuse(
                route,
                StatusCode::REQUEST_TIMEOUT,
                Kind::DeadlineExceeded,
                format!("the request body did not arrive within {BODY_DEADLINE:?}"),
            );
        }
    };
    let mut request = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// An error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    /// What went wrong; a malformed request names the field.
    pub error: String,
    /// The gRPC code of the same failure (`InvalidArgument`, `PermissionDenied`, ...).
    pub code: String,
}

pub(super) struct Failure(pub(super) HubError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let code = self.0.code();
        let status = StatusCode::from_u16(self.0.kind().http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = match &self.0 {
            HubError::Forward(s) => s.message().to_string(),
            e => e.to_string(),
        };
        (
            status,
            Json(ApiError {
                error: vigo_common::refusal::bounded(message),
                code: format!("{code:?}"),
            }),
        )
            .into_response()
    }
}

/// Decodes a JSON body; an error names the field at fault.
pub(super) fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, HubError> {
    if bytes.is_empty() {
        return serde_json::from_str("{}").map_err(|e| HubError::malformed("body", e));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let why = e.into_inner();
        if path == "." {
            HubError::malformed("body", why)
        } else {
            HubError::malformed("body", format!("field {path}: {why}"))
        }
    })
}

/// Runs one operation for the caller [`admit`] authenticated and answers in JSON,
/// counting the call.
pub(super) async fn answer<Req, Resp, Op, Fut>(
    api: &Arc<AdminApi>,
    route: &'static str,
    caller: Caller,
    request: Result<Req, HubError>,
    op: Op,
) -> Response
where
    Resp: Serialize,
    Req: prost::Message,
    Op: FnOnce(Arc<AdminApi>, Caller, Req) -> Fut,
    Fut: Future<Output = Result<Resp, HubError>>,
{
    let started = Instant::now();
    let result = match (request, api.check_fresh(&caller).await) {
        (Err(e), _) | (_, Err(e)) => Err(e),
        (Ok(req), Ok(())) => {
            let caller = caller.asking(&req);
            op(api.clone(), caller, req).await
        }
    };
    super::grpc::record(route, result.as_ref().err().map(Refusal::kind), started);
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => Failure(e).into_response(),
    }
}

/// Filter, order and page of a listing, as query parameters. Only documents them:
/// `fleet_query::listing_from_query` parses the query string itself, to refuse unknown parameters by name.
#[allow(dead_code)]
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EnvoyQuery {
    /// Hostname glob.
    hostname: Option<String>,
    spoke: Option<String>,
    /// converged | relapsed | diverged | degraded | failed | offline | no_data | revoked
    status: Option<String>,
    hostcrate: Option<String>,
    /// Trait predicate, repeatable: `os=debian`, `mem_mb>4096`.
    #[param(rename = "trait")]
    traits: Option<Vec<String>>,
    /// hostname | id | last_seen | status, `-` prefix to reverse (listing only).
    sort: Option<String>,
    /// 1..=1000 (listing only).
    limit: Option<u32>,
    /// next_cursor of the previous page (listing only).
    cursor: Option<String>,
    /// Include traits (listing only).
    with_traits: Option<bool>,
}

pub(super) type Api = State<Arc<AdminApi>>;

#[utoipa::path(get, path = "/api/v1/status", tag = "cluster",
    responses((status = 200, body = api::ClusterStatus), (status = 401, body = ApiError)))]
async fn status(State(a): Api, Extension(c): Extension<Caller>) -> Response {
    answer(
        &a,
        "GET /status",
        c,
        Ok(api::StatusRequest {}),
        |a, c, r| async move { a.status(&c, r).await },
    )
    .await
}

#[utoipa::path(get, path = "/api/v1/hubs", tag = "cluster",
    responses((status = 200, body = api::MemberList), (status = 401, body = ApiError)))]
async fn members(State(a): Api, Extension(c): Extension<Caller>) -> Response {
    answer(
        &a,
        "GET /hubs",
        c,
        Ok(api::MembersRequest {}),
        |a, c, r| async move { a.list_members(&c, r).await },
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/hubs", tag = "cluster", request_body = api::AddHubRequest,
    responses((status = 200, body = api::MemberList), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
async fn add_hub(State(a): Api, Extension(c): Extension<Caller>, b: Bytes) -> Response {
    answer(&a, "POST /hubs", c, body(&b), |a, c, r| async move {
        a.add_hub(&c, r).await
    })
    .await
}

#[utoipa::path(delete, path = "/api/v1/hubs/{node_id}", tag = "cluster",
    params(("node_id" = u64, Path, description = "raft node id")),
    responses((status = 200, body = api::MemberList), (status = 404, body = ApiError)))]
async fn remove_hub(
    State(a): Api,
    Extension(c): Extension<Caller>,
    Path(node_id): Path<String>,
) -> Response {
    let req = node_id
        .parse()
        .map(|node_id| api::RemoveHubRequest { node_id })
        .map_err(|_| HubError::malformed("node_id", format!("{node_id:?} is not a number")));
    answer(&a, "DELETE /hubs/{node_id}", c, req, |a, c, r| async move {
        a.remove_hub(&c, r).await
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/envoys", tag = "envoys", params(EnvoyQuery),
    responses((status = 200, body = api::EnvoyPage), (status = 400, body = ApiError)))]
async fn list_envoys(
    State(a): Api,
    Extension(c): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> Response {
    let req = listing_from_query(q.as_deref(), true).map_err(HubError::from);
    answer(&a, "GET /envoys", c, req, |a, c, r| async move {
        a.list_envoys(&c, r).await
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/envoys/{envoy_id}", tag = "envoys",
    params(("envoy_id" = String, Path, description = "16 hex digits")),
    responses((status = 200, body = api::EnvoyDetail), (status = 404, body = ApiError)))]
async fn show_envoy(
    State(a): Api,
    Extension(c): Extension<Caller>,
    Path(envoy_id): Path<String>,
) -> Response {
    answer(
        &a,
        "GET /envoys/{envoy_id}",
        c,
        Ok(api::EnvoyRef { envoy_id }),
        |a, c, r| async move { a.show_envoy(&c, r).await },
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/envoys/{envoy_id}/revoke", tag = "envoys",
    params(("envoy_id" = String, Path, description = "16 hex digits")),
    request_body = api::RevokeEnvoyRequest,
    responses((status = 200, body = api::RevokeEnvoyResult), (status = 404, body = ApiError)))]
async fn revoke_envoy(
    State(a): Api,
    Extension(c): Extension<Caller>,
    Path(envoy_id): Path<String>,
    b: Bytes,
) -> Response {
    let req =
        body::<api::RevokeEnvoyRequest>(&b).map(|r| api::RevokeEnvoyRequest { envoy_id, ..r });
    answer(
        &a,
        "POST /envoys/{envoy_id}/revoke",
        c,
        req,
        |a, c, r| async move { a.revoke_envoy(&c, r).await },
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/envoys/{envoy_id}/reassign", tag = "envoys",
    params(("envoy_id" = String, Path, description = "16 hex digits")),
    request_body = api::ReassignEnvoyRequest,
    responses((status = 200, body = api::MoveResult), (status = 412, body = ApiError)))]
async fn reassign_envoy(
    State(a): Api,
    Extension(c): Extension<Caller>,
    Path(envoy_id): Path<String>,
    b: Bytes,
) -> Response {
    let req =
        body::<api::ReassignEnvoyRequest>(&b).map(|r| api::ReassignEnvoyRequest { envoy_id, ..r });
    answer(
        &a,
        "POST /envoys/{envoy_id}/reassign",
        c,
        req,
        |a, c, r| async move { a.reassign_envoy(&c, r).await },
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/push", tag = "envoys", request_body = api::PushRequest,
    responses((status = 200, body = api::PushResult), (status = 400, body = ApiError)))]
async fn push(State(a): Api, Extension(c): Extension<Caller>, b: Bytes) -> Response {
    answer(&a, "POST /push", c, body(&b), |a, c, r| async move {
        a.push(&c, r).await
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/compliance", tag = "compliance",
    responses((status = 200, body = api::ComplianceReport)))]
async fn compliance(State(a): Api, Extension(c): Extension<Caller>) -> Response {
    answer(
        &a,
        "GET /compliance",
        c,
        Ok(api::ComplianceRequest {}),
        |a, c, r| async move { a.compliance(&c, r).await },
    )
    .await
}

/// The filter of a roll-up, as query parameters (documentation only, as [`EnvoyQuery`]).
#[allow(dead_code)]
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FilterQuery {
    /// Hostname glob.
    hostname: Option<String>,
    spoke: Option<String>,
    /// converged | relapsed | diverged | degraded | failed | offline | no_data | revoked
    status: Option<String>,
    hostcrate: Option<String>,
    /// Trait predicate, repeatable: `os=debian`, `mem_mb>4096`.
    #[param(rename = "trait")]
    traits: Option<Vec<String>>,
}

#[utoipa::path(get, path = "/api/v1/traits/{key}", tag = "compliance", params(("key" = String, Path, description = "the trait to count values of"), FilterQuery),
    responses((status = 200, body = api::TraitCountReport)))]
async fn trait_count(
    State(a): Api,
    Extension(c): Extension<Caller>,
    Path(key): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let req = listing_from_query(q.as_deref(), false)
        .map_err(HubError::from)
        .map(|l| api::TraitCountRequest {
            key,
            filter: l.filter,
        });
    answer(&a, "GET /traits/{key}", c, req, |a, c, r| async move {
        a.trait_count(&c, r).await
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/config", tag = "config",
    responses((status = 200, body = api::ConfigVersions)))]
async fn config_history(State(a): Api, Extension(c): Extension<Caller>) -> Response {
    answer(
        &a,
        "GET /config",
        c,
        Ok(api::ConfigHistoryRequest {}),
        |a, c, r| async move { a.config_history(&c, r).await },
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/config", tag = "config", request_body = api::PublishConfigRequest,
    responses((status = 200, body = api::ConfigVersionInfo), (status = 400, body = ApiError)))]
async fn publish_config(State(a): Api, Extension(c): Extension<Caller>, b: Bytes) -> Response {
    answer(&a, "POST /config", c, body(&b), |a, c, r| async move {
        a.publish_config(&c, r).await
    })
    .await
}

#[utoipa::path(post, path = "/api/v1/config/rollback", tag = "config", request_body = api::RollbackConfigRequest,
    responses((status = 200, body = api::ConfigVersionInfo), (status = 404, body = ApiError)))]
async fn rollback_config(State(a): Api, Extension(c): Extension<Caller>, b: Bytes) -> Response {
    answer(
        &a,
        "POST /config/rollback",
        c,
        body(&b),
        |a, c, r| async move { a.rollback_config(&c, r).await },
    )
    .await
}

#[utoipa::path(get, path = "/api/v1/spokes", tag = "spokes",
    responses((status = 200, body = api::SpokeList)))]
async fn list_spokes(State(a): Api, Extension(c): Extension<Caller>) -> Response {
    answer(
        &a,
        "GET /spokes",
        c,
        Ok(api::ListSpokesRequest {}),
        |a, c, r| async move { a.list_spokes(&c, r).await },
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/spokes", tag = "spokes", request_body = api::AddSpokeRequest,
    responses((status = 200, body = api::SpokeInfo), (status = 400, body = ApiError)))]
async fn add_spoke(State(a): Api, Extension(c): Extension<Caller>, b: Bytes) -> Response {
    answer(&a, "POST /spokes", c, body(&b), |a, c, r| async move {
        a.add_spoke(&c, r).await
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/spokes/{spoke_id}", tag = "spokes", params(("spoke_id" = String, Path)),
    responses((status = 200, body = api::SpokeDetail), (status = 404, body = ApiError)))]
async fn show_spoke(
    State(a): Api,
    Extension(c): Extension<Caller>,
    Path(spoke_id): Path<String>,
) -> Response {
    answer(
        &a,
        "GET /spokes/{spoke_id}",
        c,
        Ok(api::SpokeRef { spoke_id }),
        |a, c, r| async move { a.show_spoke(&c, r).await },
    )
    .await
}

#[utoipa::path(delete, path = "/api/v1/spokes/{spoke_id}", tag = "spokes", params(("spoke_id" = String, Path)),
    responses((status = 200, body = api::SpokeInfo), (status = 412, body = ApiError)))]
async fn remove_spoke(
    State(a): Api,
    Extension(c): Extension<Caller>,
    Path(spoke_id): Path<String>,
) -> Response {
    answer(
        &a,
        "DELETE /spokes/{spoke_id}",
        c,
        Ok(api::SpokeRef { spoke_id }),
        |a, c, r| async move { a.remove_spoke(&c, r).await },
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/spokes/{spoke_id}/drain", tag = "spokes", params(("spoke_id" = String, Path)),
    responses((status = 200, body = api::MoveResult), (status = 503, body = ApiError)))]
async fn drain_spoke(
    State(a): Api,
    Extension(c): Extension<Caller>,
    Path(spoke_id): Path<String>,
) -> Response {
    answer(
        &a,
        "POST /spokes/{spoke_id}/drain",
        c,
        Ok(api::SpokeRef { spoke_id }),
        |a, c, r| async move { a.drain_spoke(&c, r).await },
    )
    .await
}

#[utoipa::path(put, path = "/api/v1/overrides", tag = "spokes", request_body = api::SetOverridesRequest,
    responses((status = 200, body = api::OverrideList), (status = 400, body = ApiError)))]
async fn set_overrides(State(a): Api, Extension(c): Extension<Caller>, b: Bytes) -> Response {
    answer(&a, "PUT /overrides", c, body(&b), |a, c, r| async move {
        a.set_overrides(&c, r).await
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses((status = 200, body = api::TokenList), (status = 403, body = ApiError)))]
async fn list_tokens(State(a): Api, Extension(c): Extension<Caller>) -> Response {
    answer(
        &a,
        "GET /tokens",
        c,
        Ok(api::ListTokensRequest {}),
        |a, c, r| async move { a.list_tokens(&c, r).await },
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = api::CreateTokenRequest,
    responses((status = 200, body = api::CreatedToken), (status = 409, body = ApiError)))]
async fn create_token(State(a): Api, Extension(c): Extension<Caller>, b: Bytes) -> Response {
    answer(&a, "POST /tokens", c, body(&b), |a, c, r| async move {
        a.create_token(&c, r).await
    })
    .await
}

#[utoipa::path(delete, path = "/api/v1/tokens/{name}", tag = "tokens", params(("name" = String, Path)),
    responses((status = 200, body = api::TokenInfo), (status = 404, body = ApiError)))]
async fn revoke_token(
    State(a): Api,
    Extension(c): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    answer(
        &a,
        "DELETE /tokens/{name}",
        c,
        Ok(api::RevokeTokenRequest { name }),
        |a, c, r| async move { a.revoke_token(&c, r).await },
    )
    .await
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Vigo Spanner admin API", version = "v1",
        description = "Fleet-wide administration, served by every hub node. Bearer tokens with roles admin | operator | viewer."),
    modifiers(&BearerAuth),
    components(schemas(ApiError))
)]
struct ApiDoc;

/// The REST router and the OpenAPI document it serves at `/api/v1/openapi.json`.
pub fn router(api: Arc<AdminApi>) -> axum::Router {
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(status))
        .routes(routes!(members, add_hub))
        .routes(routes!(remove_hub))
        .routes(routes!(list_envoys))
        .routes(routes!(show_envoy))
        .routes(routes!(super::rest_runs::envoy_runs))
        .routes(routes!(super::rest_runs::trace_config))
        .routes(routes!(revoke_envoy))
        .routes(routes!(reassign_envoy))
        .routes(routes!(push))
        .routes(routes!(compliance))
        .routes(routes!(super::rest_runs::compliance_history))
        .routes(routes!(trait_count))
        .routes(routes!(config_history, publish_config))
        .routes(routes!(rollback_config))
        .routes(routes!(list_spokes, add_spoke))
        .routes(routes!(show_spoke, remove_spoke))
        .routes(routes!(drain_spoke))
        .routes(routes!(set_overrides))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(
            super::rest_revocations::list_revocations,
            super::rest_revocations::revoke_certificate
        ))
        .routes(routes!(
            super::bundle_keys::list_bundle_keys,
            super::bundle_keys::add_bundle_key
        ))
        .routes(routes!(super::bundle_keys::use_bundle_key))
        .routes(routes!(
            super::rest_tasks::list_tasks,
            super::rest_tasks::run_task
        ))
        .routes(routes!(
            super::rest_tasks::show_task,
            super::rest_tasks::cancel_task
        ))
        .routes(routes!(super::rest_tasks::task_results))
        .routes(routes!(super::rest_tasks::task_events))
        .routes(routes!(super::bundle_keys::retire_bundle_key))
        .with_state(api.clone())
        .split_for_parts();
    let doc = Arc::new(super::openapi::finish(doc));
    router
        .route_layer(axum::middleware::from_fn_with_state(api, admit))
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .fallback(|| async {
            Failure(HubError::NotFound(
                "no such route; the API is described at /api/v1/openapi.json".into(),
            ))
        })
        // `admit` read the body under the route's own limit already.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_CONFIG_MESSAGE))
}
