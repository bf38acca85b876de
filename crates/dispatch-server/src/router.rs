//! The one place that names every route and its handler, the middleware
//! around them (auth, request counting, body limit, panics), the query
//! table [`QUERY_PARAMS`] with its middleware, and [`problem_bodies`], which
//! gives axum's own text errors the problem+json shape. Handlers never
//! import this module: it depends on them, not the other way round.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use dispatch_proto::{FieldError, Problem};

use crate::api::ApiError;
use crate::app::App;
use crate::{attempts, grpc, metrics, queues, schedules, tasks, workers};

async fn not_found() -> ApiError {
    ApiError::new(
        404,
        "no such endpoint; the API is described at /openapi.json",
    )
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

/// THE query table: every route served, (method, route pattern) -> the
/// query parameters it takes. A parameter not listed here (on a route that
/// takes none too: `/healthz`, `/metrics`, every `POST`) is refused by
/// [`refuse_unknown_query`] with 400 naming it, before the handler runs. The
/// handlers decode the listed ones with their own types. A method a route
/// does not take has no row: its 405 comes first. The OpenAPI document's
/// tests keep this table equal to the routes.
pub(crate) const QUERY_PARAMS: &[(&str, &str, &[&str])] = &[
    (
        "GET",
        "/v1/tasks",
        &["state", "type", "queue", "limit", "cursor"],
    ),
    ("POST", "/v1/tasks", &[]),
    ("POST", "/v1/tasks/batch", &[]),
    ("POST", "/v1/tasks/retry", &[]),
    ("POST", "/v1/tasks/cancel", &[]),
    ("GET", "/v1/tasks/{id}", &["wait_ms"]),
    ("GET", "/v1/tasks/{id}/attempts", &[]),
    ("POST", "/v1/tasks/{id}/cancel", &[]),
    ("POST", "/v1/tasks/{id}/retry", &[]),
    ("POST", "/v1/tasks/{id}/complete", &[]),
    ("POST", "/v1/tasks/{id}/fail", &[]),
    ("GET", "/v1/workers", &[]),
    ("POST", "/v1/workers", &[]),
    ("DELETE", "/v1/workers/{id}", &[]),
    ("POST", "/v1/workers/{id}/heartbeat", &[]),
    ("POST", "/v1/workers/{id}/poll", &[]),
    ("GET", "/v1/schedules", &[]),
    ("POST", "/v1/schedules", &[]),
    ("GET", "/v1/schedules/{name}", &[]),
    ("DELETE", "/v1/schedules/{name}", &[]),
    ("PATCH", "/v1/schedules/{name}", &[]),
    ("POST", "/v1/schedules/{name}/pause", &[]),
    ("POST", "/v1/schedules/{name}/resume", &[]),
    ("POST", "/v1/schedules/{name}/trigger", &[]),
    ("PATCH", "/v1/queues/{name}", &[]),
    ("GET", "/v1/queues", &[]),
    ("POST", "/v1/queues/{name}/pause", &[]),
    ("POST", "/v1/queues/{name}/resume", &[]),
    ("GET", "/metrics", &[]),
    // Answered by every replica itself (`cluster.rs`).
    ("GET", "/healthz", &[]),
    ("GET", "/v1/cluster", &[]),
    ("GET", "/openapi.json", &[]),
];

/// The query parameters a route takes, from [`QUERY_PARAMS`]; `None` when
/// the route does not take the method.
fn query_params(method: &axum::http::Method, route: &str) -> Option<&'static [&'static str]> {
    QUERY_PARAMS
        .iter()
        .find(|(m, r, _)| *m == method.as_str() && *r == route)
        .map(|(_, _, params)| *params)
}

/// Middleware: refuses a request to a known route whose query string names
/// a parameter the route does not take (a misspelt `stat=dead` would
/// otherwise be ignored and list every task), or one it takes twice.
/// Unknown paths are left to their 404 and methods a route does not take to
/// their 405; the gRPC service is routed apart and never sees this.
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
        let Some(known) = query_params(method, route.as_str()) else {
            return next.run(req).await;
        };
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

/// Every route of the contract served by this version: the REST routes,
/// the gRPC worker service and the dashboard (whose actions are requests
/// to the REST routes, through their middleware).
pub(crate) fn router(app: Arc<App>) -> Router {
    let rest = rest_router(app.clone());
    rest.clone()
        .merge(grpc::router(app.clone()))
        .merge(crate::ui::router(app, rest).layer(
            tower_http::catch_panic::CatchPanicLayer::custom(panic_response),
        ))
}

/// The REST routes with their middleware.
fn rest_router(app: Arc<App>) -> Router {
    let limit = app.config.max_body_bytes;
    Router::new()
        .route("/v1/tasks", post(tasks::submit).get(tasks::list))
        .route("/v1/tasks/batch", post(tasks::submit_batch))
        .route("/v1/tasks/retry", post(tasks::retry_matching))
        .route("/v1/tasks/cancel", post(tasks::cancel_matching))
        .route("/v1/tasks/{id}", get(tasks::get_one))
        .route("/v1/tasks/{id}/attempts", get(attempts::list))
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
            get(schedules::get_one)
                .delete(schedules::delete)
                .patch(schedules::patch),
        )
        .route("/v1/schedules/{name}/pause", post(schedules::pause))
        .route("/v1/schedules/{name}/resume", post(schedules::resume))
        .route("/v1/schedules/{name}/trigger", post(schedules::trigger))
        .route("/v1/queues", get(queues::list))
        .route("/v1/queues/{name}", patch(queues::patch))
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
