//! The revocation list on the REST face: `GET /api/v1/revocations?after=&limit=`
//! (viewer) and `POST /api/v1/revocations` with a certificate serial (admin). Envoys are
//! revoked at `POST /api/v1/envoys/{id}/revoke`, beside the other envoy actions.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use utoipa::IntoParams;
use vigo_proto::admin::v1 as api;

use super::Caller;
use super::rest::{Api, ApiError, answer, body};
use crate::error::HubError;

/// Which page of the revocation list.
#[allow(dead_code)]
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RevocationQuery {
    /// Only revocations after this sequence number (default 0: from the first).
    after: Option<u64>,
    /// 1..=1000 (default 1000).
    limit: Option<u32>,
}

fn parse_query(raw: Option<&str>) -> Result<api::ListRevocationsRequest, HubError> {
    let mut req = api::ListRevocationsRequest::default();
    for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        let number = |field: &'static str| {
            value
                .parse::<u64>()
                .map_err(|_| HubError::malformed(field, format!("{value:?} is not a number")))
        };
        match key.as_ref() {
            "after" => req.after = number("after")?,
            "limit" => req.limit = number("limit")?.min(u64::from(u32::MAX)) as u32,
            other => {
                return Err(HubError::malformed(
                    "query",
                    format!("unknown parameter {other:?}; this route takes after and limit"),
                ));
            }
        }
    }
    Ok(req)
}

#[utoipa::path(get, path = "/api/v1/revocations", tag = "revocations", params(RevocationQuery),
    responses((status = 200, body = api::RevocationPage), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub async fn list_revocations(
    State(a): Api,
    Extension(c): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> Response {
    answer(
        &a,
        "GET /revocations",
        c,
        parse_query(q.as_deref()),
        |a, c, r| async move { a.list_revocations(&c, r).await },
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/revocations", tag = "revocations", request_body = api::RevokeCertificateRequest,
    responses((status = 200, body = api::RevocationInfo), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 503, body = ApiError), (status = 504, body = ApiError)))]
pub async fn revoke_certificate(
    State(a): Api,
    Extension(c): Extension<Caller>,
    b: Bytes,
) -> Response {
    answer(&a, "POST /revocations", c, body(&b), |a, c, r| async move {
        a.revoke_certificate(&c, r).await
    })
    .await
}
