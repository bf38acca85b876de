//! The document against the code it describes: every route of the router
//! has its operation and the other way round, the scope table and the query
//! table agree with it, every reference resolves, and the rendered
//! reference in `docs/` is the one this document gives.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::*;

/// Whether a route of the scope table is one of the gRPC services'.
fn is_grpc(path: &str) -> bool {
    path.starts_with(crate::auth::GRPC_PREFIX) || path.starts_with("/grpc.")
}

/// The document as JSON.
fn doc() -> Value {
    serde_json::from_str(document_json()).expect("the document is JSON")
}

/// (METHOD, path) of every operation of the document.
fn doc_operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text of a call starting at `start` (just after its opening
/// parenthesis), up to the parenthesis that closes it.
fn call_text(src: &str, start: usize) -> &str {
    let mut depth = 1;
    for (i, c) in src[start..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &src[start..start + i];
                }
            }
            _ => {}
        }
    }
    &src[start..]
}

/// (METHOD, path) of every `.route("path", get(..).post(..))` in the
/// crate's source: what the routers serve. A route added any other way
/// (`route_service`, `nest`) fails the test unless it is the gRPC service.
fn source_routes() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut routes = BTreeSet::new();
    // This file names the calls it looks for.
    for file in files
        .into_iter()
        .filter(|f| !f.ends_with("openapi/tests.rs"))
    {
        let src = std::fs::read_to_string(&file).expect("read source");
        let name = file.display().to_string();
        for other in [".route_service(", ".nest(", ".nest_service("] {
            for (at, _) in src.match_indices(other) {
                let text = call_text(&src, at + other.len());
                // The gRPC services (workers, health, reflection) are
                // described by their .proto files, not by this document.
                let grpc = [
                    "SERVICE_NAME",
                    "/dispatch.v1.",
                    "/grpc.",
                    "health_service_name",
                ];
                assert!(
                    grpc.iter().any(|g| text.contains(g)),
                    "{name}: a route added with {other} outside the gRPC services: \
                     route it with .route(PATH, METHOD(handler)) and document it"
                );
            }
        }
        for (at, _) in src.match_indices(".route(") {
            let text = call_text(&src, at + ".route(".len());
            let path = text
                .split('"')
                .nth(1)
                .unwrap_or_else(|| panic!("{name}: a route whose path is not a literal: {text}"));
            // The dashboard's HTML pages are not part of the API.
            if path == "/ui" || path.starts_with("/ui/") {
                continue;
            }
            let mut found = false;
            for method in ["get", "post", "put", "delete", "patch"] {
                let called = text.match_indices(&format!("{method}(")).any(|(i, _)| {
                    i == 0 || !text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
                });
                if called {
                    routes.insert((method.to_uppercase(), path.to_owned()));
                    found = true;
                }
            }
            assert!(found, "{name}: no method found in .route({text})");
        }
    }
    routes
}

#[test]
fn every_route_has_its_operation_and_every_operation_its_route() {
    let doc = doc();
    let documented = doc_operations(&doc);
    let served = source_routes();
    // The scan must see the routers: a sample of what they are known to hold.
    for known in [
        ("POST", "/v1/tasks"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
    ] {
        assert!(
            served.contains(&(known.0.to_owned(), known.1.to_owned())),
            "the route scan missed {known:?}: {served:?}"
        );
    }
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes without an operation in the OpenAPI document (annotate the handler with \
         #[utoipa::path] and list it in openapi.rs): {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "operations of the document that no route serves: {unserved:?}"
    );
}

#[test]
fn the_scope_table_and_the_document_name_the_same_operations() {
    let documented = doc_operations(&doc());
    let table: BTreeSet<(String, String)> = crate::auth::TABLE
        .iter()
        .filter(|(_, path, _)| !is_grpc(path))
        .map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(
        table, documented,
        "auth.rs's TABLE and the document differ: give every route its row"
    );
}

#[test]
fn security_follows_the_scope_table() {
    let doc = doc();
    for (method, path, need) in crate::auth::TABLE {
        if is_grpc(path) {
            continue;
        }
        let op = &doc["paths"][path][method.to_lowercase()];
        let want = match need {
            Need::Open => Value::Null,
            Need::AnyToken => serde_json::json!([{"bearer": []}]),
            Need::Scope(s) => serde_json::json!([{"bearer": [s.as_str()]}]),
        };
        assert_eq!(op["security"], want, "{method} {path}");
        let responses = &op["responses"];
        assert_eq!(
            responses.get("401").is_some(),
            *need != Need::Open,
            "{method} {path}: 401"
        );
        if matches!(need, Need::Scope(_)) {
            assert!(responses.get("403").is_some(), "{method} {path}: 403");
        }
    }
}

#[test]
fn the_query_table_names_every_operation_once() {
    let documented = doc_operations(&doc());
    let rows: Vec<(String, String)> = crate::router::QUERY_PARAMS
        .iter()
        .map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    let table: BTreeSet<(String, String)> = rows.iter().cloned().collect();
    assert_eq!(
        table.len(),
        rows.len(),
        "a route named twice in QUERY_PARAMS"
    );
    assert_eq!(
        table, documented,
        "router.rs's QUERY_PARAMS and the document differ"
    );
}

#[test]
fn query_parameters_follow_the_query_table() {
    let doc = doc();
    for (method, path) in doc_operations(&doc) {
        let op = &doc["paths"][&path][method.to_lowercase()];
        let documented: BTreeSet<&str> = op["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["in"] == "query")
                    .filter_map(|p| p["name"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        let taken: BTreeSet<&str> = crate::router::QUERY_PARAMS
            .iter()
            .find(|(m, p, _)| *m == method && *p == path)
            .map(|(_, _, ps)| ps.iter().copied().collect())
            .unwrap_or_else(|| panic!("{method} {path} has no row in router.rs's QUERY_PARAMS"));
        assert_eq!(documented, taken, "{method} {path}: query parameters");
    }
}

/// Every `$ref` of `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_reference_resolves_and_every_error_is_a_problem() {
    let doc = doc();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {r}"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{r} does not resolve"
        );
    }
    for (method, path) in doc_operations(&doc) {
        let responses = doc["paths"][&path][method.to_lowercase()]["responses"]
            .as_object()
            .expect("responses");
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{method} {path}: no success"
        );
        for (status, resp) in responses {
            if !status.starts_with('2') {
                assert_eq!(
                    resp["content"][PROBLEM_JSON]["schema"]["$ref"], "#/components/schemas/Problem",
                    "{method} {path} {status}"
                );
            }
        }
    }
}

#[test]
fn request_types_refuse_unknown_members_in_the_document_too() {
    let doc = doc();
    for name in [
        "SubmitTask",
        "SubmitBatch",
        "RegisterWorker",
        "PollRequest",
        "CreateSchedule",
    ] {
        assert_eq!(
            doc["components"]["schemas"][name]["additionalProperties"],
            Value::Bool(false),
            "{name}"
        );
    }
}

/// The reference page rendered from the document.
const REFERENCE: &str = "docs/http-reference.md";

#[test]
fn the_reference_in_docs_is_rendered_from_this_document() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(REFERENCE);
    let rendered = super::reference::render(&doc());
    if std::env::var_os("DISPATCH_WRITE_REFERENCE").is_some() {
        std::fs::write(&path, &rendered).expect("write the reference");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == rendered,
        "{REFERENCE} is not the reference of this document; rewrite it with \
         DISPATCH_WRITE_REFERENCE=1 cargo test -p dispatch-server --lib openapi"
    );
}
