//! What the generic worker makes of a command's or an endpoint's output:
//! the result ([`output_value`]), the error text ([`tail_text`]), and the
//! bounds and local timeout both share.

use std::time::Duration;

use serde_json::Value;

use crate::TaskError;

/// Largest result: bytes of a command's stdout or an endpoint's body.
pub(super) const MAX_OUTPUT: usize = 1024 * 1024;

/// Bytes of stderr (or of an error body) kept for the error text.
pub(super) const ERROR_TAIL: usize = 2048;

/// Lines of stderr kept for the error text.
const ERROR_LINES: usize = 20;

/// A result as JSON: the output itself when it is JSON (within the
/// server's nesting limit), else a string; nothing at all is `null`.
pub(super) fn output_value(bytes: &[u8]) -> Value {
    let text = String::from_utf8_lossy(bytes);
    if text.trim().is_empty() {
        return Value::Null;
    }
    if dispatch_proto::json_depth(text.as_bytes()) <= dispatch_proto::MAX_JSON_DEPTH
        && let Ok(v) = serde_json::from_str(&text)
    {
        return v;
    }
    Value::String(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// The last lines of some output, for an error message.
pub(super) fn tail_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.trim().lines().collect();
    lines[lines.len().saturating_sub(ERROR_LINES)..].join("\n")
}

/// The error of an attempt stopped by the type's `timeout_ms`.
pub(super) fn local_timeout(cap: Option<Duration>) -> TaskError {
    TaskError::retry(format!(
        "timeout after {} ms (timeout_ms of this type in the worker config)",
        cap.map_or(0, |d| d.as_millis())
    ))
}

pub(super) async fn sleep_or_forever(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_become_json_or_strings() {
        assert_eq!(output_value(b""), Value::Null);
        assert_eq!(output_value(b" \n"), Value::Null);
        assert_eq!(output_value(b"{\"a\": 1}\n"), serde_json::json!({"a": 1}));
        assert_eq!(output_value(b"42"), serde_json::json!(42));
        assert_eq!(output_value(b"hello\n"), serde_json::json!("hello"));
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(output_value(deep.as_bytes()), Value::String(deep.clone()));
    }

    #[test]
    fn error_tails_keep_the_last_lines() {
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let tail = tail_text(text.as_bytes());
        assert!(tail.starts_with("line 11\n"), "{tail}");
        assert!(tail.ends_with("line 30"), "{tail}");
    }
}
