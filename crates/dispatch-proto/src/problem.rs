//! Problem details (RFC 9457) as every 4xx and 5xx body.

use serde::{Deserialize, Serialize};

/// One field of a request is at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Where, as a path: `priority`, `tasks[3].type`, `labels.zone`.
    pub field: String,
    /// What is wrong, in a sentence fragment a user can act on.
    pub message: String,
}

impl FieldError {
    /// A new field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error under a parent path (`tasks[2]` + `type`).
    pub fn within(self, parent: &str) -> Self {
        let field = if self.field.is_empty() {
            parent.to_owned()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        FieldError { field, ..self }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for FieldError {}

/// An `application/problem+json` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened this time.
    pub detail: String,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
}

impl Problem {
    /// A problem of the given status; the kind and title follow from it.
    pub fn new(status: u16, detail: impl Into<String>) -> Self {
        let (slug, title) = match status {
            400 => ("bad-request", "Malformed request"),
            401 => ("unauthorized", "Authentication required"),
            403 => ("forbidden", "Not allowed"),
            404 => ("not-found", "Not found"),
            405 => ("method-not-allowed", "Method not allowed"),
            409 => ("conflict", "Conflict"),
            413 => ("too-large", "Request body too large"),
            415 => ("unsupported-media-type", "Unsupported media type"),
            422 => ("invalid", "Invalid request"),
            429 => ("over-limit", "Too many requests"),
            503 => ("unavailable", "Service unavailable"),
            _ if status >= 500 => ("internal", "Internal error"),
            _ => ("error", "Request failed"),
        };
        Problem {
            kind: format!("urn:dispatch:problem:{slug}"),
            title: title.to_owned(),
            status,
            detail: detail.into(),
            field: None,
        }
    }

    /// A 422 for one invalid field.
    pub fn invalid(e: FieldError) -> Self {
        Problem::field(422, e)
    }

    /// A problem of `status` about one field.
    pub fn field(status: u16, e: FieldError) -> Self {
        let mut p = Problem::new(status, e.to_string());
        p.field = Some(e.field).filter(|f| !f.is_empty());
        p
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.detail, self.status)
    }
}

impl std::error::Error for Problem {}
