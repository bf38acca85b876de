//! Every answer an end-to-end test receives through [`super::Api`] is
//! checked against the OpenAPI document of the server that gave it
//! (`GET /openapi.json`, fetched once per server): the operation is found
//! by method and path template, the status must be one it documents, the
//! media type one that status documents, and a JSON body must match its
//! schema. An answer outside every operation (an unknown path, a method
//! the path does not take) must be a problem. A mismatch fails the test.
//! The gRPC services on the same port (`/dispatch.v1.*`, `/grpc.*`) are
//! left to their `.proto` files.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::Value;

/// One server's document, with the validators compiled so far.
pub(crate) struct Document {
    doc: Value,
    /// Compiled validators by the text of their schema.
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

/// The documents fetched, by server base URL.
static DOCUMENTS: LazyLock<Mutex<HashMap<String, Arc<Document>>>> = LazyLock::new(Mutex::default);

/// The document of the server at `base`, fetched on first use.
pub(crate) async fn document(http: &reqwest::Client, base: &str) -> Arc<Document> {
    if let Some(d) = DOCUMENTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(base)
    {
        return d.clone();
    }
    let url = format!("{base}/openapi.json");
    let resp = http
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: no answer: {e:?}"));
    assert_eq!(resp.status().as_u16(), 200, "GET {url}");
    let doc: Value = resp
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e:?}"));
    assert_eq!(doc["openapi"], "3.1.0", "GET {url}: not OpenAPI 3.1");
    let d = Arc::new(Document {
        doc,
        validators: Mutex::default(),
    });
    DOCUMENTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(base.to_owned())
        .or_insert(d)
        .clone()
}

/// The media type of a Content-Type value, lower case, without parameters.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

impl Document {
    /// The path template of the document that routes `path` (without its
    /// query): the one whose literal segments match most, as the router
    /// prefers a literal segment to a parameter.
    fn template(&self, path: &str) -> Option<&str> {
        let segments: Vec<&str> = path.split('/').collect();
        let paths = self.doc["paths"].as_object()?;
        paths
            .keys()
            .filter_map(|t| {
                let parts: Vec<&str> = t.split('/').collect();
                if parts.len() != segments.len() {
                    return None;
                }
                let mut literal = 0;
                for (p, s) in parts.iter().zip(&segments) {
                    if p.starts_with('{') && p.ends_with('}') {
                        if s.is_empty() {
                            return None;
                        }
                    } else if p == s {
                        literal += 1;
                    } else {
                        return None;
                    }
                }
                Some((literal, t.as_str()))
            })
            .max_by_key(|(literal, _)| *literal)
            .map(|(_, t)| t)
    }

    /// A validator of `schema`, where `#/components/schemas/X` references
    /// resolve in this document.
    fn validator(&self, schema: &Value) -> Arc<jsonschema::Validator> {
        let key = schema.to_string();
        let mut cache = self.validators.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = cache.get(&key) {
            return v.clone();
        }
        let mut root = serde_json::json!({
            "allOf": [schema],
            "components": self.doc["components"],
        });
        root["$schema"] = "https://json-schema.org/draft/2020-12/schema".into();
        let v = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("the document's schema {schema} does not compile: {e}"));
        let v = Arc::new(v);
        cache.insert(key, v.clone());
        v
    }

    fn check_body(&self, what: &str, schema: &Value, body: &str) {
        let instance: Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{what}: the body is not JSON ({e}): {body}"));
        let v = self.validator(schema);
        let errors: Vec<String> = v
            .iter_errors(&instance)
            .map(|e| format!("at {}: {e}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: the body does not match the OpenAPI document's schema {schema}:\n  {}\nbody: {body}",
            errors.join("\n  ")
        );
    }

    /// Checks one answer: `method` and `path` as sent (the query is
    /// ignored), the status, the Content-Type and the body.
    pub(crate) fn check(
        &self,
        what: &str,
        method: &str,
        path: &str,
        status: u16,
        content_type: &str,
        body: &str,
    ) {
        let path = path.split('?').next().unwrap_or(path);
        // The gRPC worker service shares the port; its contract is its
        // .proto file, not this document.
        if path.starts_with("/dispatch.v1.") || path.starts_with("/grpc.") {
            return;
        }
        // Nor are the dashboard's HTML pages part of the API.
        if path == "/ui" || path.starts_with("/ui/") {
            return;
        }
        let op = self
            .template(path)
            .map(|t| &self.doc["paths"][t][method.to_ascii_lowercase()])
            .filter(|op| op.is_object());
        let Some(op) = op else {
            // No operation: only a refusal may answer it, as a problem.
            assert!(
                status >= 400,
                "{what} answered {status} but the OpenAPI document has no such operation"
            );
            assert_eq!(
                essence(content_type),
                "application/problem+json",
                "{what} -> {status}: {body}"
            );
            let problem = serde_json::json!({"$ref": "#/components/schemas/Problem"});
            self.check_body(what, &problem, body);
            return;
        };
        let responses = &op["responses"];
        let key = status.to_string();
        let range = format!("{}XX", status / 100);
        let resp = [key.as_str(), range.as_str(), "default"]
            .into_iter()
            .map(|k| &responses[k])
            .find(|r| r.is_object())
            .unwrap_or_else(|| {
                let documented: Vec<&String> = responses
                    .as_object()
                    .map(|r| r.keys().collect())
                    .unwrap_or_default();
                panic!(
                    "{what} answered {status}, a status the OpenAPI document does not give \
                     for it (it gives {documented:?}): {body}"
                )
            });
        let content = resp["content"].as_object();
        let Some(content) = content.filter(|c| !c.is_empty()) else {
            assert!(
                body.is_empty(),
                "{what} -> {status}: the document gives no body, the server sent {body}"
            );
            return;
        };
        let got = essence(content_type);
        let Some((media, entry)) = content.iter().find(|(m, _)| essence(m) == got) else {
            panic!(
                "{what} -> {status}: media type {got:?} is not among those documented ({:?}): {body}",
                content.keys().collect::<Vec<_>>()
            );
        };
        if media.contains("json") {
            self.check_body(what, &entry["schema"], body);
        }
    }
}
