//! Request decoding with bounded nesting and field-naming errors.

use serde::de::DeserializeOwned;

use crate::{FieldError, Problem};

/// The deepest nesting of arrays and objects accepted in a request body.
pub const MAX_JSON_DEPTH: usize = 64;

/// The maximum nesting depth of the JSON text in `bytes`, counting arrays
/// and objects, without parsing it. Brackets inside strings are skipped.
pub fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Decodes a request body, which must be one JSON object, into `T`.
///
/// Errors are 400 problems: syntax errors say where (line and column),
/// type errors name the field path (`tasks[2].priority`).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Problem::new(
            400,
            "the request body is empty; a JSON object is expected",
        ));
    }
    if json_depth(bytes) > MAX_JSON_DEPTH {
        return Err(Problem::new(
            400,
            format!("JSON nesting is deeper than {MAX_JSON_DEPTH} levels"),
        ));
    }
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(Problem::new(400, "the request body must be a JSON object"));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        if inner.is_syntax() || inner.is_eof() {
            Problem::new(400, format!("malformed JSON: {msg}"))
        } else {
            let parent = if path == "." { "" } else { &path };
            Problem::field(400, FieldError::new(member_at_fault(parent, &msg), msg))
        }
    })?;
    de.end().map_err(|e| {
        Problem::new(
            400,
            format!("malformed JSON: unexpected data after the object ({e})"),
        )
    })?;
    Ok(value)
}

/// The field a data error is about: serde reports a missing or repeated
/// member at the object holding it (`missing field \`tasks\``), so the
/// member's name is taken from the message and put under that object.
fn member_at_fault(parent: &str, msg: &str) -> String {
    let member = ["missing field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| msg.strip_prefix(prefix))
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name);
    match member {
        Some(name) if parent.is_empty() => name.to_owned(),
        Some(name) => format!("{parent}.{name}"),
        None => parent.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(json_depth(br#"{"a": "[[[{{{", "b": [1, [2]]}"#), 3);
        assert_eq!(json_depth(br#""\"[""#), 0);
        assert_eq!(json_depth(b"[[[]]]"), 3);
    }

    #[test]
    fn only_one_object_is_accepted() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            a: Option<u8>,
        }
        assert!(decode::<T>(br#" {"a": 1} "#).is_ok());
        for bad in [&br#"[1]"#[..], br#"{"a": 1} x"#, br#"{}{}"#, b"null", b"7"] {
            assert_eq!(decode::<T>(bad).unwrap_err().status, 400, "{bad:?}");
        }
    }

    #[test]
    fn too_deep_is_refused() {
        let body = "[".repeat(65) + &"]".repeat(65);
        let body = format!("{{\"a\": {body}}}");
        let p = decode::<serde_json::Value>(body.as_bytes()).unwrap_err();
        assert_eq!(p.status, 400);
        assert!(p.detail.contains("deeper"));
    }

    #[test]
    fn missing_and_repeated_members_are_named() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Inner {
            id: String,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            a: Option<u8>,
            items: Vec<Inner>,
        }
        let field = |s: &str| decode::<T>(s.as_bytes()).unwrap_err().field;
        assert_eq!(field("{}").as_deref(), Some("items"));
        assert_eq!(field(r#"{"items": [{}]}"#).as_deref(), Some("items[0].id"));
        assert_eq!(
            field(r#"{"a": 1, "a": 2, "items": []}"#).as_deref(),
            Some("a")
        );
        assert_eq!(field(r#"{"a": "x", "items": []}"#).as_deref(), Some("a"));
    }
}
