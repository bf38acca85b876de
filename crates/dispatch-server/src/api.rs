//! What every handler answers with and reads from: [`ApiError`] (any
//! refusal, as `application/problem+json`), the [`JsonBody`] and
//! [`OptionalJsonBody`] extractors (413 / 415 / 400, depth-bounded, errors
//! naming the field) and [`json`] answers. It knows no handler and no route.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dispatch_proto::{FieldError, Problem};
use dispatch_store::{ErrorKind, StoreError};
use serde::de::DeserializeOwned;

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
        let bytes = body_bytes(req, state).await?;
        Ok(JsonBody(dispatch_proto::decode(&bytes)?))
    }
}

/// A JSON body that may be absent (heartbeat, poll with defaults); its
/// Content-Type is checked like [`JsonBody`]'s.
pub(crate) struct OptionalJsonBody<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(T::default()));
        }
        Ok(OptionalJsonBody(dispatch_proto::decode(&bytes)?))
    }
}

/// A request's body, once its Content-Type says JSON (or nothing): see
/// [`check_content_type`].
async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    check_content_type(&req)?;
    Bytes::from_request(req, state)
        .await
        .map_err(body_rejection)
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
