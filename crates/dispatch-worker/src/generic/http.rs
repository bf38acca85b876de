//! Runs one attempt as an HTTP call ([`call_endpoint`]): the payload as the
//! body, the answer as the result; 4xx answers fail for good, the rest are
//! retried.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;
use serde_json::value::RawValue;

use super::config::Endpoint;
use super::output::{ERROR_TAIL, MAX_OUTPUT, local_timeout, output_value, tail_text};
use crate::{TaskContext, TaskError};

/// Runs one attempt as an HTTP call: payload as the body, answer as the
/// result.
pub(super) async fn call_endpoint(
    e: &Endpoint,
    http: &reqwest::Client,
    ctx: &TaskContext,
    payload: &RawValue,
    cap: Option<Duration>,
) -> Result<Value, TaskError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.extend(e.headers.clone());
    let task_headers = [
        ("x-dispatch-task-id", ctx.id.clone()),
        ("x-dispatch-task-type", ctx.kind.clone()),
        ("x-dispatch-attempt", ctx.attempt.to_string()),
    ];
    for (name, value) in task_headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    let mut req = http
        .request(e.method.clone(), e.url.clone())
        .headers(headers);
    if !matches!(e.method, reqwest::Method::GET | reqwest::Method::HEAD) {
        req = req.body(payload.get().to_owned());
    }
    if let Some(cap) = cap {
        req = req.timeout(cap);
    }
    let resp = req.send().await.map_err(|err| {
        if err.is_timeout() {
            local_timeout(cap)
        } else {
            TaskError::retry(format!("{} {} failed: {}", e.method, e.url, chain(&err)))
        }
    })?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let (body, too_big) = read_body(resp, MAX_OUTPUT)
        .await
        .map_err(|err| TaskError::retry(format!("reading the answer failed: {}", chain(&err))))?;
    if status.is_success() {
        if too_big {
            return Err(TaskError::abort(format!(
                "the answer is larger than {MAX_OUTPUT} bytes (the result limit)"
            )));
        }
        return Ok(output_value(&body));
    }
    let mut text = format!("HTTP {}", status.as_u16());
    let snippet = tail_text(&body[..body.len().min(ERROR_TAIL)]);
    if !snippet.is_empty() {
        text = format!("{text}: {snippet}");
    }
    let code = status.as_u16();
    if status.is_client_error() && code != 408 && code != 429 {
        return Err(TaskError::abort(text));
    }
    Err(match retry_after {
        Some(d) => TaskError::retry_after(text, d),
        None => TaskError::retry(text),
    })
}

/// Reads a body up to `limit` bytes; says whether there was more.
async fn read_body(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > limit {
            body.extend_from_slice(&chunk[..limit - body.len()]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
