//! The OpenAPI 3.1 document served at `GET /openapi.json`, generated from
//! the code: the schemas derive from the wire types (`dispatch-proto`'s
//! `openapi` feature), each operation from its handler's
//! `#[utoipa::path]` annotation, and what every operation shares from the
//! layers that answer for it ([`Refusals`]): the security requirement and
//! the 401/403 from the scope table of `auth.rs`, the 400 of the query
//! table, the 408/413/415 of the body extractors, the 503 of a replica that
//! cannot answer, and the problem+json body of every error.
//!
//! The document is built once, on first use, and served as is.

use std::sync::OnceLock;

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dispatch_proto::{Problem, TaskBatch, TaskJson, TaskRef, TaskRefBatch};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::Response as OpenApiResponse;
use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use crate::auth::{Need, required};
use crate::{attempts, cluster, metrics, queues, schedules, tasks, workers};

/// The media type of every error body.
pub(crate) const PROBLEM_JSON: &str = "application/problem+json";

/// Every operation of the REST API. The routes are named in `router.rs`
/// and `cluster.rs`; a test there fails when one is missing here.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Dispatch",
        description = "A distributed task scheduler and dispatcher: clients submit tasks, \
            workers (over this API or gRPC) run them.\n\n\
            Every error is `application/problem+json` (RFC 9457) with `type`, `title`, \
            `status` and `detail`, plus `field` when one field of the request is at fault. \
            Malformed JSON or a field of the wrong type is a 400, a well-formed but invalid \
            value a 422.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        tasks::submit,
        tasks::submit_batch,
        tasks::list,
        tasks::get_one,
        tasks::cancel,
        tasks::retry,
        tasks::retry_matching,
        tasks::cancel_matching,
        attempts::list,
        workers::register,
        workers::list,
        workers::heartbeat,
        workers::poll,
        workers::leave,
        workers::complete,
        workers::fail,
        queues::list,
        queues::pause,
        queues::resume,
        queues::patch,
        schedules::create,
        schedules::list,
        schedules::get_one,
        schedules::delete,
        schedules::changes::patch,
        schedules::changes::pause,
        schedules::changes::resume,
        schedules::changes::trigger,
        metrics::prometheus,
        cluster::healthz,
        cluster::cluster,
        serve,
    ),
    components(schemas(Problem, TaskJson, TaskRef, TaskBatch, TaskRefBatch)),
    modifiers(&Refusals),
    tags(
        (name = "tasks", description = "Submit, read, list, cancel and retry tasks."),
        (name = "workers", description = "The HTTP worker protocol: register, poll, report, heartbeat, leave."),
        (name = "queues", description = "Queues: their settings and counts, pause and resume."),
        (name = "schedules", description = "Cron schedules."),
        (name = "operations", description = "Health, metrics, the replicas, and this document."),
    ),
)]
struct ApiDoc;

/// The document.
pub(crate) fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as JSON, built once.
pub(crate) fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        // Serializing the document's own types cannot fail.
        document().to_json().unwrap_or_default()
    })
}

/// `GET /openapi.json`: this document. Open to all, on every replica.
#[utoipa::path(
    get,
    path = "/openapi.json",
    summary = "This document",
    description = "The OpenAPI 3.1 document of this API, generated from the server's code.",
    tag = "operations",
    responses(
        (status = 200, description = "This OpenAPI 3.1 document.", body = Object, content_type = "application/json"),
    ),
)]
pub(crate) async fn serve() -> Response {
    let mut resp = (StatusCode::OK, document_json()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The answer of a submission: the whole task, or under
/// `Prefer: return=minimal` its id and state.
pub(crate) struct TaskOrRef;

impl ToSchema for TaskOrRef {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((TaskJson::name().into(), TaskJson::schema()));
        schemas.push((TaskRef::name().into(), TaskRef::schema()));
        <TaskJson as ToSchema>::schemas(schemas);
        <TaskRef as ToSchema>::schemas(schemas);
    }
}

impl PartialSchema for TaskOrRef {
    fn schema() -> RefOr<Schema> {
        AnyOfBuilder::new()
            .item(Ref::from_schema_name(TaskJson::name()))
            .item(Ref::from_schema_name(TaskRef::name()))
            .description(Some(
                "The task; its id and state only under `Prefer: return=minimal`.",
            ))
            .into()
    }
}

/// The answer of a batch submission: the whole tasks, or under
/// `Prefer: return=minimal` their ids and states.
pub(crate) struct BatchOrRefs;

impl ToSchema for BatchOrRefs {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((TaskBatch::name().into(), TaskBatch::schema()));
        schemas.push((TaskRefBatch::name().into(), TaskRefBatch::schema()));
        <TaskBatch as ToSchema>::schemas(schemas);
        <TaskRefBatch as ToSchema>::schemas(schemas);
    }
}

impl PartialSchema for BatchOrRefs {
    fn schema() -> RefOr<Schema> {
        AnyOfBuilder::new()
            .item(Ref::from_schema_name(TaskBatch::name()))
            .item(Ref::from_schema_name(TaskRefBatch::name()))
            .description(Some(
                "The tasks; their ids and states only under `Prefer: return=minimal`.",
            ))
            .into()
    }
}

/// Adds to every operation what the layers around the handlers answer
/// (see the module header), so that no annotation repeats it.
struct Refusals;

impl Modify for Refusals {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("dsp_ and 64 hex digits")
                    .description(Some(
                        "A token from `dispatch token create`, needed only when the server \
                         runs with a token file (`--tokens`). Each operation names the \
                         scope it needs (`submit`, `work` or `admin`); `admin` implies \
                         the others; an empty list takes any valid token.",
                    ))
                    .build(),
            ),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, op) in operations(item) {
                refusals(&method, path, op);
            }
        }
    }
}

/// The operations of a path, with their methods.
pub(crate) fn operations(item: &mut PathItem) -> Vec<(Method, &mut Operation)> {
    [
        (Method::GET, &mut item.get),
        (Method::PUT, &mut item.put),
        (Method::POST, &mut item.post),
        (Method::DELETE, &mut item.delete),
        (Method::PATCH, &mut item.patch),
        (Method::HEAD, &mut item.head),
        (Method::OPTIONS, &mut item.options),
        (Method::TRACE, &mut item.trace),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_mut().map(|op| (m, op)))
    .collect()
}

fn refusals(method: &Method, path: &str, op: &mut Operation) {
    let need = required(method, Some(path), path);
    let bearer = |scopes: &[&str]| Some(vec![SecurityRequirement::new("bearer", scopes.to_vec())]);
    match need {
        Need::Open => {}
        Need::AnyToken => op.security = bearer(&[]),
        Need::Scope(s) => op.security = bearer(&[s.as_str()]),
    }
    if need != Need::Open {
        add(
            op,
            401,
            "No bearer token, or not a valid one (the server runs with tokens).",
        );
    }
    if let Need::Scope(s) = need {
        add(
            op,
            403,
            &format!("The token lacks the `{s}` scope (or `admin`)."),
        );
    }
    if op.request_body.is_some() {
        add(
            op,
            400,
            "Malformed JSON, a field of the wrong type or an unknown field (named in `field`), \
             or an unknown or repeated query parameter.",
        );
        add(op, 408, "The request body did not arrive in time.");
        add(
            op,
            413,
            "The request body is larger than the server accepts (`--max-body-bytes`).",
        );
        add(op, 415, "The body is declared as something else than JSON.");
    } else {
        add(
            op,
            400,
            "An unknown or repeated query parameter, named in `field`.",
        );
    }
    add(
        op,
        503,
        "The store cannot take writes, this replica cannot reach a leader (or is taking \
         over), or the server holds as many connections as it takes; retry after \
         `Retry-After`.",
    );
    for (status, resp) in op.responses.responses.iter_mut() {
        let RefOr::T(resp) = resp else { continue };
        if status.starts_with('2') {
            continue;
        }
        // Every error has the problem shape; `/healthz` also answers its
        // report with 503.
        if !resp.content.contains_key(PROBLEM_JSON) {
            resp.content.insert(
                PROBLEM_JSON.to_owned(),
                Content::new(Some(Ref::from_schema_name(Problem::name()))),
            );
        }
        if status == "429" || status == "503" {
            resp.headers
                .entry("Retry-After".to_owned())
                .or_insert_with(|| {
                    HeaderBuilder::new()
                        .schema(ObjectBuilder::new().schema_type(Type::Integer))
                        .description(Some("Seconds to wait before trying again."))
                        .build()
                });
        }
    }
}

/// Adds a response for `status` unless the operation documents it already.
fn add(op: &mut Operation, status: u16, description: &str) {
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| RefOr::T(OpenApiResponse::new(description)));
}

#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;
