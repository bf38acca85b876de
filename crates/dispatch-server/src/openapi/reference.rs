//! Renders the OpenAPI document as a Markdown reference
//! (`docs/http-reference.md`): one section per tag with its operations
//! (scope, parameters, body, responses), then every schema with its
//! fields. Plain Markdown reads anywhere, offline, without a viewer; the
//! test beside this file keeps the committed page equal to the document.

use std::fmt::Write as _;

use serde_json::Value;

/// HTTP methods in the order operations are listed under one path.
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// The Markdown reference of `doc`.
pub(super) fn render(doc: &Value) -> String {
    let mut out = String::new();
    let title = doc["info"]["title"].as_str().unwrap_or("API");
    let _ = writeln!(out, "# {title} HTTP API reference\n");
    out.push_str(
        "<!-- Generated from the OpenAPI document (GET /openapi.json); do not edit. \
         Rewrite with: DISPATCH_WRITE_REFERENCE=1 cargo test -p dispatch-server --lib openapi -->\n\n",
    );
    out.push_str(
        "Rendered from the OpenAPI 3.1 document that the server serves at \
         `GET /openapi.json`; see [the HTTP API](http-api.md) for a guided tour.\n\n",
    );
    if let Some(d) = doc["info"]["description"].as_str() {
        let _ = writeln!(out, "{d}\n");
    }
    if let Some(d) = doc["components"]["securitySchemes"]["bearer"]["description"].as_str() {
        let _ = writeln!(out, "**Authentication.** {d}\n");
    }
    let ops = operations(doc);
    out.push_str("| Method | Path | What it does |\n|---|---|---|\n");
    for tag in tags(doc) {
        for (method, path, op) in ops.iter().filter(|(_, _, op)| has_tag(op, &tag)) {
            let _ = writeln!(
                out,
                "| {} | [`{path}`](#{}) | {} |",
                method.to_uppercase(),
                anchor(&format!("{} {path}", method.to_uppercase())),
                cell(op["summary"].as_str().unwrap_or(""))
            );
        }
    }
    out.push('\n');
    for tag in tags(doc) {
        let _ = writeln!(out, "## {tag}\n");
        let about = doc["tags"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["name"] == tag.as_str()))
            .and_then(|t| t["description"].as_str());
        if let Some(d) = about {
            let _ = writeln!(out, "{d}\n");
        }
        for (method, path, op) in ops.iter().filter(|(_, _, op)| has_tag(op, &tag)) {
            operation(&mut out, method, path, op);
        }
    }
    out.push_str("## Schemas\n\n");
    if let Some(schemas) = doc["components"]["schemas"].as_object() {
        for (name, schema) in schemas {
            schema_section(&mut out, name, schema);
        }
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

/// Every operation: (method, path, operation), by path then method.
fn operations(doc: &Value) -> Vec<(&'static str, &str, &Value)> {
    let mut out = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for method in METHODS {
                if item[method].is_object() {
                    out.push((method, path.as_str(), &item[method]));
                }
            }
        }
    }
    out
}

fn tags(doc: &Value) -> Vec<String> {
    doc["tags"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn has_tag(op: &Value, tag: &str) -> bool {
    op["tags"]
        .as_array()
        .is_some_and(|ts| ts.iter().any(|t| t == tag))
}

/// GitHub's anchor of a heading.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Text fit for one table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn operation(out: &mut String, method: &str, path: &str, op: &Value) {
    let _ = writeln!(out, "### {} {path}\n", method.to_uppercase());
    for key in ["summary", "description"] {
        if let Some(d) = op[key].as_str().filter(|d| !d.is_empty()) {
            let _ = writeln!(out, "{d}\n");
        }
    }
    let needs = match op["security"].as_array().and_then(|s| s.first()) {
        None => "nothing: open to all".to_owned(),
        Some(req) => match req["bearer"].as_array().map(Vec::as_slice) {
            Some([]) | None => "any valid token".to_owned(),
            Some(scopes) => {
                let names: Vec<String> = scopes
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|s| format!("`{s}`"))
                    .collect();
                if names == ["`admin`"] {
                    "a token with scope `admin`".to_owned()
                } else {
                    format!("a token with scope {} (or `admin`)", names.join(", "))
                }
            }
        },
    };
    let _ = writeln!(out, "**Needs:** {needs}.\n");
    if let Some(params) = op["parameters"].as_array().filter(|p| !p.is_empty()) {
        out.push_str("| Parameter | In | Type | Required | Description |\n|---|---|---|---|---|\n");
        for p in params {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} |",
                p["name"].as_str().unwrap_or(""),
                p["in"].as_str().unwrap_or(""),
                cell(&type_of(&p["schema"])),
                if p["required"] == true { "yes" } else { "no" },
                cell(p["description"].as_str().unwrap_or(""))
            );
        }
        out.push('\n');
    }
    let body = &op["requestBody"];
    if body.is_object() {
        let kinds = contents(&body["content"]);
        let required = if body["required"] == true {
            "required"
        } else {
            "optional"
        };
        let _ = write!(out, "**Request body** ({required}): {kinds}.");
        if let Some(d) = body["description"].as_str() {
            let _ = write!(out, " {d}");
        }
        out.push_str("\n\n");
    }
    out.push_str("| Status | Body | Meaning |\n|---|---|---|\n");
    if let Some(responses) = op["responses"].as_object() {
        for (status, resp) in responses {
            let _ = writeln!(
                out,
                "| {status} | {} | {} |",
                cell(&contents(&resp["content"])),
                cell(resp["description"].as_str().unwrap_or(""))
            );
        }
    }
    out.push('\n');
}

/// The media types of a `content` map with their schemas.
fn contents(content: &Value) -> String {
    let Some(map) = content.as_object().filter(|m| !m.is_empty()) else {
        return "none".to_owned();
    };
    map.iter()
        .map(|(media, c)| format!("`{media}` {}", type_of(&c["schema"])))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A schema in a few words: a link to a named schema, or its type and
/// bounds.
fn type_of(s: &Value) -> String {
    if let Some(r) = s["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("[{name}](#{})", anchor(name));
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(items) = s[key].as_array() {
            let nullable = items.iter().any(|i| i["type"] == "null");
            let mut text = items
                .iter()
                .filter(|i| i["type"] != "null")
                .map(type_of)
                .collect::<Vec<_>>()
                .join(" or ");
            if nullable {
                text.push_str(", or null");
            }
            return text;
        }
    }
    let types: Vec<&str> = match &s["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let mut words: Vec<String> = Vec::new();
    for t in types.iter().filter(|t| **t != "null") {
        words.push(match *t {
            "array" => format!("array of {}", type_of(&s["items"])),
            "object" if s["additionalProperties"].is_object() => {
                format!("map of {}", type_of(&s["additionalProperties"]))
            }
            "string" => match s["format"].as_str() {
                Some(f) => format!("string ({f})"),
                None => "string".to_owned(),
            },
            other => other.to_owned(),
        });
    }
    let mut text = if words.is_empty() {
        "any JSON".to_owned()
    } else {
        words.join(" or ")
    };
    let mut bounds = Vec::new();
    match (s["minimum"].as_f64(), s["maximum"].as_f64()) {
        (Some(lo), Some(hi)) => bounds.push(format!("{lo} to {hi}")),
        (Some(lo), None) if lo != 0.0 => bounds.push(format!("at least {lo}")),
        (None, Some(hi)) => bounds.push(format!("at most {hi}")),
        _ => {}
    }
    for (key, what) in [
        ("minLength", "at least {} characters"),
        ("maxLength", "at most {} characters"),
        ("minItems", "at least {} items"),
        ("maxItems", "at most {} items"),
    ] {
        if let Some(n) = s[key].as_u64() {
            bounds.push(what.replace("{}", &n.to_string()));
        }
    }
    if let Some(p) = s["pattern"].as_str() {
        bounds.push(format!("matching `{p}`"));
    }
    if !bounds.is_empty() {
        let _ = write!(text, ", {}", bounds.join(", "));
    }
    if types.contains(&"null") {
        text.push_str(", or null");
    }
    text
}

fn schema_section(out: &mut String, name: &str, s: &Value) {
    let _ = writeln!(out, "### {name}\n");
    if let Some(d) = s["description"].as_str() {
        let _ = writeln!(out, "{d}\n");
    }
    let Some(props) = s["properties"].as_object() else {
        let _ = writeln!(out, "{}.\n", type_of(s));
        return;
    };
    let required: Vec<&str> = s["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    out.push_str("| Field | Type | Required | Description |\n|---|---|---|---|\n");
    for (field, p) in props {
        let _ = writeln!(
            out,
            "| `{field}` | {} | {} | {} |",
            cell(&type_of(p)),
            if required.contains(&field.as_str()) {
                "yes"
            } else {
                "no"
            },
            cell(p["description"].as_str().unwrap_or(""))
        );
    }
    out.push('\n');
    if s["additionalProperties"] == false {
        out.push_str("Other members are refused (400, naming them).\n\n");
    }
}
