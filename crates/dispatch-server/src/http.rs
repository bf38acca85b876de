//! The router, the JSON body extractor and problem+json errors.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use dispatch_proto::{FieldError, Problem};
use dispatch_store::{ErrorKind, StoreError};
use serde::de::DeserializeOwned;

use crate::app::App;
use crate::{metrics, queues, schedules, tasks, workers};

/// An error answered as `application/problem+json`.
#[derive(Debug)]
pub(crate) struct ApiError {
    problem: Problem,
    retry_after: Option<u32>,
}

impl ApiError {
    pub(crate) fn new(status: u16, detail: impl Into<String>) -> Self {
        ApiError {
            problem: Problem::new(status, detail),
            retry_after: None,
        }
    }

    pub(crate) fn not_found(what: impl std::fmt::Display) -> Self {
        ApiError::new(404, format!("no {what}"))
    }

    /// 429 with `Retry-After: 1`: the server or a queue is full.
    pub(crate) fn overloaded(detail: impl Into<String>) -> Self {
        ApiError {
            problem: Problem::new(429, detail),
            retry_after: Some(1),
        }
    }

    pub(crate) fn conflict(detail: impl Into<String>) -> Self {
        ApiError::new(409, detail)
    }

    /// Whether this is a 409.
    pub(crate) fn is_conflict(&self) -> bool {
        self.problem.status == 409
    }
}

impl From<Problem> for ApiError {
    fn from(problem: Problem) -> Self {
        ApiError {
            problem,
            retry_after: None,
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        Problem::invalid(e).into()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e.kind {
            ErrorKind::Unavailable => ApiError {
                problem: Problem::new(503, format!("the store is unavailable: {e}")),
                retry_after: Some(1),
            },
            ErrorKind::Fenced => ApiError {
                problem: Problem::new(
                    503,
                    "this replica no longer leads: another one took over; retry",
                ),
                retry_after: Some(1),
            },
            _ => {
                tracing::error!(error = %e, "store error");
                ApiError::new(500, "internal store error")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.problem).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Refuses a body declared as anything but JSON with 415. A body is read
/// as JSON when its Content-Type is `application/json` or `*/*+json`, when
/// it has none, and when it is `application/x-www-form-urlencoded`: that is
/// what `curl -d '{...}'` declares unless told otherwise, and a form body
/// is never JSON, so reading it as JSON misreads nothing (a real form is a
/// 400: not JSON).
fn check_content_type(req: &Request) -> Result<(), ApiError> {
    let Some(ct) = req.headers().get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim();
    let json = essence == "application/json" || essence.ends_with("+json");
    let curl_default = essence.is_empty() || essence == "application/x-www-form-urlencoded";
    if json || curl_default {
        return Ok(());
    }
    Err(ApiError::new(
        415,
        format!("content type {essence:?} is not JSON; send application/json"),
    ))
}

/// A JSON request body: limited in size (413), refused when it names
/// another media type (415, see [`check_content_type`]), bounded in depth
/// and decoded with errors that name the field (400).
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        check_content_type(&req)?;
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        Ok(JsonBody(dispatch_proto::decode(&bytes)?))
    }
}

/// A JSON body that may be absent (heartbeat, poll with defaults); its
/// Content-Type is checked like [`JsonBody`]'s.
pub(crate) struct OptionalJsonBody<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        check_content_type(&req)?;
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(T::default()));
        }
        Ok(OptionalJsonBody(dispatch_proto::decode(&bytes)?))
    }
}

fn body_rejection(e: BytesRejection) -> ApiError {
    let status = e.status().as_u16();
    if status == 413 {
        ApiError::new(413, "the request body is larger than the server accepts")
    } else {
        ApiError::new(
            status.clamp(400, 499),
            format!("cannot read the request body: {e}"),
        )
    }
}

/// A JSON response with a status.
pub(crate) fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut resp = (status, bytes).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => ApiError::new(500, format!("cannot encode the response: {e}")).into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(404, "no such endpoint; see the README for the API")
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(405, "this endpoint does not accept that method")
}

/// Most bytes of a rejection's text kept as the problem's detail.
const MAX_REJECTION_TEXT: usize = 4 * 1024;

/// Turns error answers that axum gives itself as text (a path segment that
/// is not UTF-8, a query it cannot read) into problem+json with the same
/// status and the text as the detail, so every error has one shape.
async fn problem_bodies(req: Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    // Our own JSON answers (problems, and the health report's 503) pass.
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.starts_with("application/problem+json") || ct.starts_with("application/json")
        });
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_REJECTION_TEXT)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let detail = match text.trim() {
        "" => status
            .canonical_reason()
            .unwrap_or("the request failed")
            .to_lowercase(),
        t => t.to_owned(),
    };
    let mut out = ApiError::new(status.as_u16(), detail).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().append(name, value.clone());
        }
    }
    out
}

/// THE query table: (method, route pattern) -> the query parameters the
/// route takes. A parameter not listed here, on any route (those that take
/// none included: `/healthz`, `/metrics`, every `POST`), is refused by
/// [`refuse_unknown_query`] with 400 naming it, before the handler runs. The
/// handlers decode the listed ones with their own types.
const QUERY_PARAMS: &[(&str, &str, &[&str])] = &[
    (
        "GET",
        "/v1/tasks",
        &["state", "type", "queue", "limit", "cursor"],
    ),
    ("GET", "/v1/tasks/{id}", &["wait_ms"]),
];

/// The query parameters a route takes, from [`QUERY_PARAMS`].
fn query_params(method: &axum::http::Method, route: &str) -> &'static [&'static str] {
    QUERY_PARAMS
        .iter()
        .find(|(m, r, _)| *m == method.as_str() && *r == route)
        .map_or(&[], |(_, _, params)| params)
}

/// Middleware: refuses a request to a known route whose query string names
/// a parameter the route does not take (a misspelt `stat=dead` would
/// otherwise be ignored and list every task), or one it takes twice. Unknown paths are left to
/// their 404; the gRPC service is routed apart and never sees this.
pub(crate) async fn refuse_unknown_query(req: Request, next: axum::middleware::Next) -> Response {
    if let (Some(query), Some(route)) = (
        req.uri().query(),
        req.extensions().get::<axum::extract::MatchedPath>(),
    ) {
        // HEAD is served by the GET handler, with its parameters.
        let method = if req.method() == axum::http::Method::HEAD {
            &axum::http::Method::GET
        } else {
            req.method()
        };
        let known = query_params(method, route.as_str());
        let mut seen: Vec<std::borrow::Cow<'_, str>> = Vec::new();
        for (name, _) in form_urlencoded::parse(query.as_bytes()) {
            let refusal = if !known.contains(&&*name) {
                if known.is_empty() {
                    "unknown query parameter; this endpoint takes none".to_owned()
                } else {
                    format!(
                        "unknown query parameter; this endpoint takes only {}",
                        known.join(", ")
                    )
                }
            } else if seen.contains(&name) {
                "is given more than once".to_owned()
            } else {
                seen.push(name);
                continue;
            };
            let e = FieldError::new(name.into_owned(), refusal);
            return ApiError::from(Problem::field(400, e)).into_response();
        }
    }
    next.run(req).await
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::new(500, "internal error").into_response()
}

/// Every route of the contract served by this version.
pub(crate) fn router(app: Arc<App>) -> Router {
    let limit = app.config.max_body_bytes;
    Router::new()
        .route("/v1/tasks", post(tasks::submit).get(tasks::list))
        .route("/v1/tasks/batch", post(tasks::submit_batch))
        .route("/v1/tasks/retry", post(tasks::retry_matching))
        .route("/v1/tasks/cancel", post(tasks::cancel_matching))
        .route("/v1/tasks/{id}", get(tasks::get_one))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/v1/tasks/{id}/retry", post(tasks::retry))
        .route("/v1/tasks/{id}/complete", post(workers::complete))
        .route("/v1/tasks/{id}/fail", post(workers::fail))
        .route("/v1/workers", post(workers::register).get(workers::list))
        .route("/v1/workers/{id}", delete(workers::leave))
        .route("/v1/workers/{id}/heartbeat", post(workers::heartbeat))
        .route("/v1/workers/{id}/poll", post(workers::poll))
        .route(
            "/v1/schedules",
            post(schedules::create).get(schedules::list),
        )
        .route(
            "/v1/schedules/{name}",
            get(schedules::get_one).delete(schedules::delete),
        )
        .route("/v1/queues", get(queues::list))
        .route("/v1/queues/{name}/pause", post(queues::pause))
        .route("/v1/queues/{name}/resume", post(queues::resume))
        .route("/metrics", get(metrics::prometheus))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(refuse_unknown_query))
        .layer(axum::middleware::from_fn(problem_bodies))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            crate::auth::require,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            metrics::count_requests,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(app)
}
