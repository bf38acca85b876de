//! Bearer tokens with scopes, and the one table saying which scope each
//! endpoint needs.
//!
//! Tokens are opaque: `dsp_` and 64 hex digits (32 random bytes from the
//! operating system). The server never stores one: the token file holds its
//! SHA-256 digest, one line per token:
//!
//! ```text
//! # comments and blank lines are ignored
//! sha256:<64 hex digits> <scope>[,<scope>...] [name]
//! ```
//!
//! A request's token is hashed and its digest compared with every stored
//! one in constant time ([`subtle::ConstantTimeEq`]), without stopping at
//! the first match.
//!
//! A worker belongs to the token that registered it: the middleware hands
//! the request's `Caller` to the handlers, registration records it in
//! `WorkerOwners` (`owners.rs`), and every later call naming the worker (poll,
//! heartbeat, complete, fail, leave) must come with the same token, else
//! 403; an admin token may still remove any worker. Without tokens there is
//! no one to bind.
//!
//! **Invariant:** [`required`] is the only place that maps a route and a
//! method to what it needs. Handlers never check scopes themselves; the
//! middleware [`require`] wraps the whole router (REST and gRPC), so a new
//! route without a row in the table needs at least a valid token. The
//! dashboard (`/ui`) is the one part outside it: its pages check a sign-in
//! session, and its actions are REST requests with the session's token,
//! which pass through this middleware.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::ApiError;
use crate::app::App;
use crate::owners::Caller;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Create, read and cancel tasks.
    Submit,
    /// Speak a worker protocol (HTTP or gRPC).
    Work,
    /// Everything: retry, queue pause/resume, schedules; implies the others.
    Admin,
}

impl Scope {
    /// Its name in token files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Submit => "submit",
            Scope::Work => "work",
            Scope::Admin => "admin",
        }
    }

    /// Parses one scope name.
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "submit" => Some(Scope::Submit),
            "work" => Some(Scope::Work),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    /// Parses a comma-separated list (`submit,work`), at least one.
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, String> {
        let mut out = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let scope = Scope::parse(part)
                .ok_or_else(|| format!("unknown scope {part:?}: expected submit, work or admin"))?;
            if !out.contains(&scope) {
                out.push(scope);
            }
        }
        if out.is_empty() {
            return Err("no scope given".into());
        }
        Ok(out)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an endpoint needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// Nothing: open to all.
    Open,
    /// Any valid token, whatever its scopes.
    AnyToken,
    /// A token with this scope (or `admin`).
    Scope(Scope),
}

/// Path under which the gRPC worker service is mounted.
pub(crate) const GRPC_PREFIX: &str = "/dispatch.v1.WorkerService/";

/// THE scope table: (method, route pattern) -> what it needs. Anything not
/// listed (unknown routes, other methods) needs a valid token.
pub(crate) const TABLE: &[(&str, &str, Need)] = {
    use Need::{AnyToken, Open, Scope as S};
    use Scope::{Admin, Submit, Work};
    &[
        // Client endpoints.
        ("POST", "/v1/tasks", S(Submit)),
        ("GET", "/v1/tasks", S(Submit)),
        ("POST", "/v1/tasks/batch", S(Submit)),
        ("GET", "/v1/tasks/{id}", S(Submit)),
        ("GET", "/v1/tasks/{id}/attempts", S(Submit)),
        ("POST", "/v1/tasks/{id}/cancel", S(Submit)),
        // The worker protocols.
        ("POST", "/v1/workers", S(Work)),
        ("POST", "/v1/workers/{id}/heartbeat", S(Work)),
        ("POST", "/v1/workers/{id}/poll", S(Work)),
        ("DELETE", "/v1/workers/{id}", S(Work)),
        ("POST", "/v1/tasks/{id}/complete", S(Work)),
        ("POST", "/v1/tasks/{id}/fail", S(Work)),
        ("POST", "/dispatch.v1.WorkerService/{*method}", S(Work)),
        // Administration.
        ("POST", "/v1/tasks/{id}/retry", S(Admin)),
        ("POST", "/v1/tasks/retry", S(Admin)),
        ("POST", "/v1/tasks/cancel", S(Admin)),
        ("PATCH", "/v1/queues/{name}", S(Admin)),
        ("POST", "/v1/queues/{name}/pause", S(Admin)),
        ("POST", "/v1/queues/{name}/resume", S(Admin)),
        ("POST", "/v1/schedules", S(Admin)),
        ("DELETE", "/v1/schedules/{name}", S(Admin)),
        ("PATCH", "/v1/schedules/{name}", S(Admin)),
        ("POST", "/v1/schedules/{name}/pause", S(Admin)),
        ("POST", "/v1/schedules/{name}/resume", S(Admin)),
        ("POST", "/v1/schedules/{name}/trigger", S(Admin)),
        // Reads for any valid token.
        ("GET", "/v1/workers", AnyToken),
        ("GET", "/v1/queues", AnyToken),
        ("GET", "/v1/schedules", AnyToken),
        ("GET", "/v1/schedules/{name}", AnyToken),
        // Answered by every replica itself (`cluster.rs`), with this need.
        ("GET", "/v1/cluster", AnyToken),
        ("GET", "/metrics", AnyToken),
        // Open.
        ("GET", "/healthz", Open),
        ("GET", "/openapi.json", Open),
        // Answered by every replica itself (`grpc_tools.rs`), open: load
        // balancers hold no token, and reflection tells only what the
        // published `worker.proto` says.
        ("POST", "/grpc.health.v1.Health/{*method}", Open),
        (
            "POST",
            "/grpc.reflection.v1.ServerReflection/{*method}",
            Open,
        ),
        (
            "POST",
            "/grpc.reflection.v1alpha.ServerReflection/{*method}",
            Open,
        ),
    ]
};

/// The admin actions the audit log records, keyed like [`TABLE`]:
/// (method, route pattern) -> action name.
const AUDITED: &[(&str, &str, &str)] = &[
    ("POST", "/v1/tasks/{id}/cancel", "task.cancel"),
    ("POST", "/v1/tasks/{id}/retry", "task.retry"),
    ("POST", "/v1/tasks/retry", "tasks.retry"),
    ("POST", "/v1/tasks/cancel", "tasks.cancel"),
    ("PATCH", "/v1/queues/{name}", "queue.update"),
    ("POST", "/v1/queues/{name}/pause", "queue.pause"),
    ("POST", "/v1/queues/{name}/resume", "queue.resume"),
    ("POST", "/v1/schedules", "schedule.create"),
    ("DELETE", "/v1/schedules/{name}", "schedule.delete"),
    ("PATCH", "/v1/schedules/{name}", "schedule.update"),
    ("POST", "/v1/schedules/{name}/pause", "schedule.pause"),
    ("POST", "/v1/schedules/{name}/resume", "schedule.resume"),
    ("POST", "/v1/schedules/{name}/trigger", "schedule.trigger"),
];

/// The audit action of a request, if it is one.
pub(crate) fn audited(method: &Method, route: Option<&str>) -> Option<&'static str> {
    let route = route?;
    AUDITED
        .iter()
        .find(|(m, r, _)| *m == method.as_str() && *r == route)
        .map(|(_, _, action)| *action)
}

/// What a request needs, from the one table. `route` is the matched route
/// pattern when the router found one; `path` the request's path.
pub(crate) fn required(method: &Method, route: Option<&str>, path: &str) -> Need {
    let route = match route {
        Some(r) => r,
        // A route service may not report its pattern: the gRPC service is
        // recognised by its prefix.
        None if path.starts_with(GRPC_PREFIX) => "/dispatch.v1.WorkerService/{*method}",
        None => return Need::AnyToken,
    };
    TABLE
        .iter()
        .find(|(m, r, _)| *m == method.as_str() && *r == route)
        .map_or(Need::AnyToken, |(_, _, need)| *need)
}

/// One stored token: the digest of the token and its scopes.
#[derive(Clone)]
struct Entry {
    digest: [u8; 32],
    scopes: Vec<Scope>,
    name: Option<String>,
    created: Option<String>,
}

/// A stored token as `dispatch token list` shows it: never its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// Its name, if it has one.
    pub name: Option<String>,
    /// Its scopes.
    pub scopes: Vec<Scope>,
    /// When it was created (RFC 3339), for tokens created with a date.
    pub created: Option<String>,
}

/// The tokens a server accepts, as read from a token file.
///
/// Clones share one set: [`Tokens::reload`] (SIGHUP, or a change of the
/// file, see `crate::reload`) replaces it for every holder at once, and a
/// request checks the set in force when it arrives.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Arc<std::sync::RwLock<Arc<Vec<Entry>>>>,
    /// The file they were read from, to read again.
    path: Option<std::path::PathBuf>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens({} tokens)", self.len())
    }
}

/// A token file that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("cannot read the token file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("token file line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

impl Tokens {
    /// Reads a token file.
    pub fn load(path: &Path) -> Result<Tokens, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut tokens = Tokens::parse(&text)?;
        tokens.path = Some(path.to_owned());
        Ok(tokens)
    }

    /// The file the tokens were read from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reads the token file again and puts its tokens in force for every
    /// clone; answers how many there are. On an error (unreadable file, a
    /// bad line) the tokens in force stay as they were.
    pub fn reload(&self) -> Result<usize, TokenFileError> {
        let Some(path) = &self.path else {
            return Ok(self.len());
        };
        let fresh = Tokens::load(path)?;
        let entries = fresh.current();
        let n = entries.len();
        *self.entries.write().unwrap_or_else(|e| e.into_inner()) = entries;
        Ok(n)
    }

    /// The set in force.
    fn current(&self) -> Arc<Vec<Entry>> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every token in force, in file order, without its digest.
    pub fn list(&self) -> Vec<TokenInfo> {
        self.current()
            .iter()
            .map(|e| TokenInfo {
                name: e.name.clone(),
                scopes: e.scopes.clone(),
                created: e.created.clone(),
            })
            .collect()
    }

    /// Parses the text of a token file.
    pub fn parse(text: &str) -> Result<Tokens, TokenFileError> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| TokenFileError::Line {
                line: i + 1,
                message,
            };
            let mut parts = line.split_whitespace();
            let hash = parts.next().unwrap_or_default();
            let hex = hash
                .strip_prefix("sha256:")
                .ok_or_else(|| err("expected `sha256:<hex digest> <scopes> [name]`".to_owned()))?;
            let digest = decode_hex32(hex)
                .ok_or_else(|| err("the digest must be 64 hex digits".to_owned()))?;
            let scopes = parts
                .next()
                .ok_or_else(|| err("no scopes after the digest".to_owned()))?;
            let scopes = Scope::parse_list(scopes).map_err(err)?;
            // Then an optional name and `created=<time>`, in any order; a
            // `#` starts a comment.
            let (mut name, mut created) = (None, None);
            for part in parts.take_while(|p| !p.starts_with('#')) {
                match part.strip_prefix("created=") {
                    Some(at) => created = Some(at.to_owned()),
                    None if name.is_none() => name = Some(part.to_owned()),
                    None => {}
                }
            }
            entries.push(Entry {
                digest,
                scopes,
                name,
                created,
            });
        }
        Ok(Tokens {
            entries: Arc::new(std::sync::RwLock::new(Arc::new(entries))),
            path: None,
        })
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.current().is_empty()
    }

    /// The scopes of `token`, or `None` when it is not a known token. Every
    /// stored digest is compared, in constant time.
    fn scopes_of(&self, token: &str) -> Option<Vec<Scope>> {
        let digest = sha256(token);
        let mut found = None;
        let entries = self.current();
        for e in entries.iter() {
            if bool::from(e.digest.ct_eq(&digest)) && found.is_none() {
                found = Some(e.scopes.clone());
            }
        }
        found
    }

    /// Who `token` is (as [`Tokens::who`] names it) and whether it has the
    /// admin scope, when it is a known token: the dashboard's sign-in.
    pub(crate) fn identify(&self, token: &str) -> Option<(String, bool)> {
        let admin = self.scopes_of(token)?.contains(&Scope::Admin);
        Some((self.who(token), admin))
    }

    /// The caller `token` makes, when it is a known token.
    fn caller(&self, token: &str) -> Option<Caller> {
        let digest = sha256(token);
        let mut found = None;
        let entries = self.current();
        for e in entries.iter() {
            if bool::from(e.digest.ct_eq(&digest)) && found.is_none() {
                found = Some(Caller {
                    digest,
                    admin: e.scopes.contains(&Scope::Admin),
                });
            }
        }
        found
    }

    /// Who `token` is, for the audit log: its name in the token file, else
    /// `sha256:` and the start of its digest (also for unknown tokens).
    /// Never the token itself.
    fn who(&self, token: &str) -> String {
        let digest = sha256(token);
        let mut found = None;
        let entries = self.current();
        for e in entries.iter() {
            if bool::from(e.digest.ct_eq(&digest)) && found.is_none() {
                found = Some(e);
            }
        }
        match found.and_then(|e| e.name.clone()) {
            Some(name) => name,
            None => format!("sha256:{}", &encode_hex(&digest)[..12]),
        }
    }
}

fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn encode_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// A new random token: `dsp_` and 64 hex digits from the OS generator.
pub fn generate_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("cannot get random bytes: {e}"))?;
    Ok(format!("dsp_{}", encode_hex(&bytes)))
}

/// The token file line for `token`: its digest, scopes and name.
pub fn token_line(token: &str, scopes: &[Scope], name: Option<&str>) -> String {
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let mut line = format!("sha256:{} {}", encode_hex(&sha256(token)), scopes.join(","));
    if let Some(n) = name {
        line.push(' ');
        line.push_str(n);
    }
    line
}

/// [`token_line`] with the time the token was created (`created=` and an
/// RFC 3339 time), which `dispatch token list` shows.
pub fn token_line_created(
    token: &str,
    scopes: &[Scope],
    name: Option<&str>,
    created: &str,
) -> String {
    format!("{} created={created}", token_line(token, scopes, name))
}

/// The text of a token file without the tokens named `name`, and how
/// many were removed; comments, blank lines and other tokens stay as
/// they were.
pub fn without_token(text: &str, name: &str) -> (String, usize) {
    let mut out = String::with_capacity(text.len());
    let mut removed = 0;
    for line in text.lines() {
        let named = Tokens::parse(line)
            .ok()
            .and_then(|t| t.list().into_iter().next())
            .and_then(|t| t.name)
            .is_some_and(|n| n == name);
        if named {
            removed += 1;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    (out, removed)
}

/// The bearer token of a request, if it carries one.
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (kind, token) = value.split_once(' ')?;
    kind.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// 401 unless the request carries a valid token (or the server takes
/// none): for the routes a replica answers itself, outside the router and
/// its middleware (`GET /v1/cluster`).
pub(crate) fn any_token(tokens: Option<&Tokens>, req: &Request) -> Result<(), ApiError> {
    let Some(tokens) = tokens else {
        return Ok(());
    };
    match check(tokens, Need::AnyToken, bearer(req)) {
        Ok(()) => Ok(()),
        Err(Denied::Unauthenticated(why)) => Err(ApiError::new(401, why)),
        Err(Denied::Forbidden(scope)) => Err(ApiError::new(
            403,
            format!("this endpoint needs the {scope:?} scope"),
        )),
    }
}

/// Why a request is refused.
enum Denied {
    Unauthenticated(&'static str),
    Forbidden(Scope),
}

fn check(tokens: &Tokens, need: Need, token: Option<&str>) -> Result<(), Denied> {
    if need == Need::Open {
        return Ok(());
    }
    let token = token.ok_or(Denied::Unauthenticated(
        "this endpoint needs a bearer token (Authorization: Bearer <token>)",
    ))?;
    let scopes = tokens
        .scopes_of(token)
        .ok_or(Denied::Unauthenticated("the bearer token is not valid"))?;
    match need {
        Need::Scope(s) if !scopes.contains(&s) && !scopes.contains(&Scope::Admin) => {
            Err(Denied::Forbidden(s))
        }
        _ => Ok(()),
    }
}

/// Middleware: lets a request through when the server has no tokens, or
/// when its token has what [`required`] says; else 401 or 403 (as gRPC
/// statuses on the gRPC service). With an audit log, records refusals and
/// the actions of [`audited`] with their outcome.
pub(crate) async fn require(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let who = match (&app.config.tokens, bearer(&req)) {
        (Some(tokens), Some(token)) if app.audit.is_some() => Some(tokens.who(token)),
        _ => None,
    };
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let verdict = match &app.config.tokens {
        None => Ok(()),
        Some(tokens) => check(
            tokens,
            required(&method, route.as_deref(), &path),
            bearer(&req),
        ),
    };
    let denied = match verdict {
        Ok(()) => {
            if let Some(caller) = app
                .config
                .tokens
                .as_ref()
                .zip(bearer(&req))
                .and_then(|(tokens, token)| tokens.caller(token))
            {
                req.extensions_mut().insert(caller);
            }
            let Some((log, action)) = app.audit.as_ref().zip(audited(&method, route.as_deref()))
            else {
                return next.run(req).await;
            };
            let (req, target) = match route.as_deref() {
                Some(r) if r.contains('{') => (req, crate::audit::path_param(r, &path)),
                _ => match name_in_body(req, app.config.max_body_bytes).await {
                    Ok(x) => x,
                    Err(resp) => return resp,
                },
            };
            let resp = next.run(req).await;
            log.record(&crate::audit::Entry {
                at: dispatch_proto::time::format_rfc3339(crate::clock::now_ms()),
                action,
                target,
                outcome: resp.status().as_u16(),
                token: who,
                remote,
                method: None,
                path: None,
            });
            return resp;
        }
        Err(denied) => denied,
    };
    let resp = if path.starts_with(GRPC_PREFIX) {
        let status = match denied {
            Denied::Unauthenticated(m) => tonic::Status::unauthenticated(m),
            Denied::Forbidden(s) => {
                tonic::Status::permission_denied(format!("this needs a token with scope {s}"))
            }
        };
        status.into_http()
    } else {
        match denied {
            Denied::Unauthenticated(m) => {
                let mut resp = ApiError::new(401, m).into_response();
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                resp
            }
            Denied::Forbidden(s) => ApiError::new(403, forbidden_detail(s)).into_response(),
        }
    };
    if let Some(log) = &app.audit {
        // A gRPC refusal is a 200 with a gRPC status: record it as HTTP.
        let outcome = match resp.status().as_u16() {
            200 if path.starts_with(GRPC_PREFIX) => match denied {
                Denied::Unauthenticated(_) => 401,
                Denied::Forbidden(_) => 403,
            },
            s => s,
        };
        log.record_denied(&crate::audit::Entry {
            at: dispatch_proto::time::format_rfc3339(crate::clock::now_ms()),
            action: "auth.denied",
            target: Some(path.clone()),
            outcome,
            token: who,
            remote,
            method: Some(method.as_str()),
            path: Some(&path),
        });
    }
    resp
}

/// The detail of a 403: the scope needed, and that `admin` also does,
/// unless `admin` is the one needed.
fn forbidden_detail(needed: Scope) -> String {
    match needed {
        Scope::Admin => "this endpoint needs a token with scope admin".to_owned(),
        s => format!("this endpoint needs a token with scope {s} or admin"),
    }
}

/// Reads the audit target from a request's JSON body: its `name` (schedule
/// creation), else a bulk operation's filters as compact JSON; gives the
/// request back with the same body.
async fn name_in_body(req: Request, limit: usize) -> Result<(Request, Option<String>), Response> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(413, "the request body is larger than the server accepts").into_response()
    })?;
    let body = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
    let name = body.as_ref().and_then(|v| match v.get("name") {
        Some(n) => n.as_str().map(str::to_owned),
        // A bulk retry or cancel names its tasks by its filters.
        None => v
            .as_object()
            .filter(|o| {
                ["state", "type", "queue"]
                    .iter()
                    .any(|k| o.contains_key(*k))
            })
            .map(|o| serde_json::Value::Object(o.clone()).to_string()),
    });
    Ok((
        Request::from_parts(parts, axum::body::Body::from(bytes)),
        name,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owners::{Act, WorkerOwners};
    use dispatch_core::WorkerId;

    #[test]
    fn a_token_file_round_trips() {
        let t = generate_token().unwrap();
        let line = token_line(&t, &[Scope::Submit, Scope::Work], Some("ci"));
        assert!(!line.contains(&t));
        let tokens = Tokens::parse(&format!("# c\n\n{line}\n")).unwrap();
        assert_eq!(tokens.scopes_of(&t), Some(vec![Scope::Submit, Scope::Work]));
        assert_eq!(tokens.scopes_of("dsp_nope"), None);
    }

    #[test]
    fn the_audit_log_names_a_token_never_shows_it() {
        let named = generate_token().unwrap();
        let anonymous = generate_token().unwrap();
        let text = format!(
            "{}\n{}\n",
            token_line(&named, &[Scope::Admin], Some("ops")),
            token_line(&anonymous, &[Scope::Submit], None)
        );
        let tokens = Tokens::parse(&text).unwrap();
        assert_eq!(tokens.who(&named), "ops");
        let who = tokens.who(&anonymous);
        assert!(who.starts_with("sha256:") && who.len() == 7 + 12, "{who}");
        assert!(!anonymous.contains(&who[7..]), "{who}");
        assert!(tokens.who("dsp_unknown").starts_with("sha256:"));
        assert_eq!(
            audited(&Method::POST, Some("/v1/tasks/{id}/cancel")),
            Some("task.cancel")
        );
        assert_eq!(audited(&Method::POST, Some("/v1/tasks")), None);
    }

    #[test]
    fn a_403_names_the_scope_once() {
        assert_eq!(
            forbidden_detail(Scope::Admin),
            "this endpoint needs a token with scope admin"
        );
        assert_eq!(
            forbidden_detail(Scope::Work),
            "this endpoint needs a token with scope work or admin"
        );
    }

    #[test]
    fn a_worker_answers_to_the_token_that_registered_it() {
        let (a, b, ops) = (
            generate_token().unwrap(),
            generate_token().unwrap(),
            generate_token().unwrap(),
        );
        let text = [
            token_line(&a, &[Scope::Work], Some("a")),
            token_line(&b, &[Scope::Work], Some("b")),
            token_line(&ops, &[Scope::Admin], Some("ops")),
        ]
        .join("\n");
        let tokens = Tokens::parse(&text).unwrap();
        let (a, b, ops) = (
            tokens.caller(&a).unwrap(),
            tokens.caller(&b).unwrap(),
            tokens.caller(&ops).unwrap(),
        );
        let owners = WorkerOwners::default();
        let id = |n: u64| WorkerId::new(n).unwrap();
        let w = id(7);
        owners.record(Some(&a), w, |_| true);
        assert!(owners.check(Some(&a), w, Act::AsWorker).is_ok());
        assert!(owners.check(Some(&b), w, Act::AsWorker).is_err());
        assert!(owners.check(Some(&b), w, Act::Remove).is_err());
        assert!(owners.check(Some(&ops), w, Act::AsWorker).is_err());
        assert!(owners.check(Some(&ops), w, Act::Remove).is_ok());
        // Without tokens there is no caller and nothing to bind.
        assert!(owners.check(None, w, Act::AsWorker).is_ok());
        // Entries of gone workers do not pile up.
        let recent: Vec<WorkerId> = (9_990..10_000).map(id).collect();
        for i in 100..10_000 {
            owners.record(Some(&b), id(i), |x| x == w || recent.contains(&x));
        }
        let kept = owners.len();
        assert!(kept < 200, "{kept} entries kept");
        assert!(owners.check(Some(&b), w, Act::AsWorker).is_err());
    }

    #[test]
    fn a_bad_line_is_named() {
        let e = Tokens::parse("# c\nsha256:zz submit\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = Tokens::parse(&format!("sha256:{} root\n", "a".repeat(64))).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn admin_implies_every_scope_and_healthz_is_open() {
        let t = generate_token().unwrap();
        let tokens = Tokens::parse(&token_line(&t, &[Scope::Admin], None)).unwrap();
        for need in [
            Need::Scope(Scope::Submit),
            Need::Scope(Scope::Work),
            Need::AnyToken,
        ] {
            assert!(check(&tokens, need, Some(&t)).is_ok());
        }
        assert!(check(&tokens, Need::Open, None).is_ok());
        assert_eq!(
            required(&Method::GET, Some("/healthz"), "/healthz"),
            Need::Open
        );
        assert_eq!(
            required(&Method::POST, None, "/dispatch.v1.WorkerService/Connect"),
            Need::Scope(Scope::Work)
        );
    }
}
