//! The web console: server-rendered HTML pages over the admin API, served by every hub
//! node on its admin listener next to `/api/v1/`. It owns sessions (an API token
//! exchanged for a signed cookie), CSRF, the pages and their assets; it must not know
//! anything the admin API does not answer — every page is one or more `AdminApi` calls
//! made as the logged-in caller, so roles, filters, cursors and missing spokes are the
//! API's own.
//!
//! Order of checks on every request: security headers are set on every answer
//! (`harden`); a page or action first proves its session (`session::Session`, from the
//! cookie alone, then against the leader's state), *then* reads a body — an action's
//! form under [`FORM_LIMIT`] and [`FORM_DEADLINE`] — then checks the form's CSRF token,
//! then the role the action needs, and only then asks for a confirmation or acts.
//! Nothing here needs JavaScript; `assets/console.js` only refreshes live sections.

mod actions;
mod assets;
mod charts;
mod config_pages;
mod envoys;
mod layout;
mod overview;
mod session;
mod spokes;
mod tasks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use vigo_common::refusal::{Kind, Refusal};

use crate::admin::AdminApi;
use crate::error::HubError;

/// The largest form an action or the log-in takes.
const FORM_LIMIT: usize = 16 << 10;
/// How long a form may take to arrive once its headers have.
const FORM_DEADLINE: Duration = Duration::from_secs(10);

/// What no page may do: run script from anywhere but our own asset, style inline,
/// be framed, post a form elsewhere, or fetch from another origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Shared by every console handler.
pub struct Console {
    pub api: Arc<AdminApi>,
    keys: session::Keys,
}

type State = axum::extract::State<Arc<Console>>;

/// The console's routes (`/` and `/console/...`), to merge beside the REST API.
pub fn router(api: Arc<AdminApi>) -> Router {
    let key = api.node.ca.derive_secret(b"vigo console session key v1");
    let console = Arc::new(Console {
        api,
        keys: session::Keys::new(&key),
    });
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(overview::page))
        .route("/console/live/overview", get(overview::live))
        .route(
            "/console/login",
            get(session::login_page).post(session::log_in),
        )
        .route("/console/logout", post(session::log_out))
        .route("/console/envoys", get(envoys::list))
        .route("/console/envoys/{envoy_id}", get(envoys::show))
        .route("/console/spokes", get(spokes::list))
        .route("/console/config", get(config_pages::history))
        .route("/console/tasks", get(tasks::list))
        .route("/console/tasks/{task_id}", get(tasks::show))
        .route("/console/live/tasks/{task_id}", get(tasks::live))
        .route("/console/tokens", get(config_pages::tokens))
        .route("/console/actions/{action}", post(actions::act))
        .route("/console/assets/{file}", get(assets::serve))
        .route("/console/{*rest}", get(not_found).post(not_found))
        .with_state(console)
        .layer(axum::middleware::from_fn(harden))
}

/// Sets the security headers on every console answer and counts it by route and outcome
/// (`vigo_hub_admin_requests_total{route="console ..."}`).
async fn harden(matched: Option<MatchedPath>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = format!(
        "console {} {}",
        request.method(),
        matched.as_ref().map_or("?", |m| m.as_str())
    );
    let mut response = next.run(request).await;
    let outcome = response.extensions().get::<Kind>().copied();
    crate::admin::grpc::record(route, outcome, started);
    let headers = response.headers_mut();
    let set = |name, value: &'static str| (name, HeaderValue::from_static(value));
    for (name, value) in [
        set(header::CONTENT_SECURITY_POLICY, CSP),
        set(header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        set(header::REFERRER_POLICY, "no-referrer"),
        set(header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, value);
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Any other path under `/console/`.
async fn not_found() -> Refused {
    Refused::new(Kind::NotFound, "no such console page")
}

/// Why a page or an action was refused: its refusal kind fixes the HTTP status, as on
/// the REST face.
#[derive(Debug)]
pub struct Refused {
    pub kind: Kind,
    pub message: String,
    /// The HTTP status when it is not the kind's own: a body that did not arrive in
    /// time is the client's delay (408, as on the REST face), not a deadline of ours.
    status: Option<StatusCode>,
}

impl Refused {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Refused {
            kind,
            message: message.into(),
            status: None,
        }
    }
}

impl From<HubError> for Refused {
    fn from(e: HubError) -> Self {
        let message = match &e {
            HubError::Forward(s) => s.message().to_string(),
            e => e.to_string(),
        };
        Refused::new(e.kind(), message)
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let status = self.status.unwrap_or_else(|| {
            StatusCode::from_u16(self.kind.http_status()).unwrap_or(StatusCode::BAD_REQUEST)
        });
        let mut response = (
            status,
            html_answer(layout::error_page(status, &self.message)),
        )
            .into_response();
        response.extensions_mut().insert(self.kind);
        response
    }
}

/// A page or a refusal.
pub type Page = Result<Html<String>, Refused>;
/// Part of a page (a live fragment is also served alone), or a refusal.
pub type Part = Result<maud::Markup, Refused>;

/// A rendered page as an HTML answer.
pub fn html_answer(markup: maud::Markup) -> Html<String> {
    Html(markup.into_string())
}

/// Reads a url-encoded form body under [`FORM_LIMIT`] and [`FORM_DEADLINE`].
async fn read_form(body: axum::body::Body) -> Result<Form, Refused> {
    let read = Limited::new(body, FORM_LIMIT).collect();
    match tokio::time::timeout(FORM_DEADLINE, read).await {
        Ok(Ok(collected)) => Ok(Form(
            form_urlencoded::parse(&collected.to_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(Refused::new(
            Kind::TooLarge,
            format!("the form is larger than {FORM_LIMIT} bytes"),
        )),
        Ok(Err(e)) => Err(Refused::new(
            Kind::Malformed,
            format!("reading the form: {e}"),
        )),
        Err(_) => Err(Refused {
            status: Some(StatusCode::REQUEST_TIMEOUT),
            ..Refused::new(
                Kind::DeadlineExceeded,
                format!("the form did not arrive within {FORM_DEADLINE:?}"),
            )
        }),
    }
}

/// A submitted form's fields, in order.
pub struct Form(Vec<(String, String)>);

impl Form {
    /// The first value of `name`, trimmed; empty when absent.
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.trim())
    }

    /// The field `name`, which must be present and not empty.
    pub fn required(&self, name: &'static str) -> Result<&str, Refused> {
        match self.get(name) {
            "" => Err(Refused::new(
                Kind::Malformed,
                format!("the form needs {name}"),
            )),
            v => Ok(v),
        }
    }
}
