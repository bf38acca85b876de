//! The OpenAPI document at `GET /openapi.json`: served to anyone, also
//! when the server takes tokens, and the check that every other test's
//! answers go through (`common/openapi.rs`) refuses what the document does
//! not allow.

mod common;

use common::{Server, openapi};
use serde_json::json;

#[tokio::test]
async fn the_document_is_open_to_all_and_describes_every_error_as_a_problem() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    common::create_token(&tokens, "submit", "client");
    let server = Server::with_args(&["--tokens", tokens.to_str().unwrap()]).await;
    let api = server.api();
    let r = api.get("/openapi.json").await;
    let doc = r.expect(200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["paths"]["/v1/tasks"]["post"]["security"],
        json!([{"bearer": ["submit"]}])
    );
    assert_eq!(
        doc["paths"]["/v1/tasks/{id}"]["get"]["responses"]["404"]["content"]["application/problem+json"]
            ["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
    // Refused without a token, as the document says.
    api.get("/v1/tasks").await.problem(401, None);
}

/// Whether checking this answer panics.
fn refused(
    doc: &openapi::Document,
    method: &str,
    path: &str,
    status: u16,
    ct: &str,
    body: &str,
) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        doc.check("check", method, path, status, ct, body)
    }))
    .is_err()
}

#[tokio::test]
async fn the_check_refuses_what_the_document_does_not_allow() {
    let server = Server::start().await;
    let api = server.api();
    let id = api.submit_id("openapi.check", json!({"a": 1})).await;
    let task = api.get(&format!("/v1/tasks/{id}")).await;
    let doc = openapi::document(&common::http_client(&api), &server.url).await;
    let json_ct = "application/json";
    // The real answer passes.
    assert!(!refused(
        &doc,
        "GET",
        "/v1/tasks/7",
        200,
        json_ct,
        &task.text
    ));
    // A body missing required members, of the wrong type, or not JSON.
    assert!(refused(&doc, "GET", "/v1/tasks/7", 200, json_ct, "{}"));
    let mut wrong = task.json();
    wrong["attempts"] = json!("none");
    assert!(refused(
        &doc,
        "GET",
        "/v1/tasks/7",
        200,
        json_ct,
        &wrong.to_string()
    ));
    assert!(refused(
        &doc,
        "GET",
        "/v1/tasks/7",
        200,
        json_ct,
        "not json"
    ));
    // A status the operation does not give, or another media type.
    assert!(refused(
        &doc,
        "GET",
        "/v1/tasks/7",
        418,
        json_ct,
        &task.text
    ));
    assert!(refused(
        &doc,
        "GET",
        "/v1/tasks/7",
        200,
        "text/plain",
        &task.text
    ));
    // An error that is not a problem; a success outside every operation.
    assert!(refused(&doc, "GET", "/v1/tasks/7", 404, json_ct, "{}"));
    assert!(refused(&doc, "GET", "/nowhere", 200, json_ct, "{}"));
    // The literal segment routes before the parameter: a GET of the batch
    // route is no task read, and only a problem may answer it.
    assert!(refused(
        &doc,
        "GET",
        "/v1/tasks/batch",
        200,
        json_ct,
        &task.text
    ));
    let problem = api.get("/v1/tasks/batch").await;
    assert_eq!(problem.status, 405);
    assert!(!refused(
        &doc,
        "GET",
        "/v1/tasks/batch",
        405,
        &problem.content_type,
        &problem.text
    ));
}

/// Found by schemathesis: `TRACE /v1/tasks/11?wait_ms=0` was refused 400
/// for its query (the query check ran before the router knew that the path
/// takes no TRACE) instead of 405.
#[tokio::test]
async fn a_method_a_path_does_not_take_is_405_whatever_its_query() {
    let server = Server::start().await;
    let api = server.api();
    for (method, path) in [
        ("TRACE", "/v1/tasks/11?wait_ms=0"),
        ("PUT", "/v1/tasks?state=dead"),
        ("DELETE", "/v1/tasks/11?nonsense=1"),
        ("POST", "/healthz?x=1"),
        ("DELETE", "/openapi.json?x=1"),
    ] {
        api.send(method, path, common::Body::None)
            .await
            .problem(405, None);
    }
    // A method the path takes still has its query checked.
    api.get("/v1/tasks/11?nonsense=1")
        .await
        .problem(400, Some("nonsense"));
}
