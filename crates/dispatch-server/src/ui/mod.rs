//! The dashboard under `/ui`: server-rendered HTML, one stylesheet and a
//! few lines of script, all compiled into the binary (nothing is fetched
//! from elsewhere, so it works offline).
//!
//! - `session`: sign-in with a bearer token, sessions, CSRF.
//! - `html`: escaping, the shared layout and small pieces.
//! - `chart`: the throughput chart (inline SVG) over the ring of
//!   `throughput.rs`.
//! - `pages`: the overview, workers, queues, schedules and cluster pages
//!   and their actions; `tasks`: the task list, one task, and retries.
//!
//! Pages read the app directly: the core's counters and registries, the
//! schedules in memory, the store's indexed listings (never a count over
//! every task). Actions are API requests: [`Ui::act`] sends the same
//! request a script would (`POST /v1/tasks/{id}/cancel`, ...) through the
//! REST router in process, with the session's bearer token, so the scope
//! table, the handlers and the audit log treat a click exactly as they
//! treat the API. On top of that the dashboard lets only an admin act.
//!
//! The dashboard is a module of the server, not a crate of its own,
//! because its pages read the app's state (`App`, the scheduler lock, the
//! schedules table), which is private to the server crate.
//!
//! The live part of each page (`<div id=live>`) is fetched again every two
//! seconds by `assets/ui.js` with the `X-Dispatch-Live` header, which
//! answers that part alone; a button in the header pauses it.

mod chart;
mod html;
mod pages;
mod session;
mod tasks;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::app::App;
use session::{FLASH_COOKIE, Refusal, Sessions, Viewer};

/// The dashboard's state: the app it shows, the REST router its actions
/// go through, and the sessions.
pub(crate) struct Ui {
    app: Arc<App>,
    api: Router,
    sessions: Sessions,
}

/// The dashboard's routes. `api` is the REST router (with its middleware:
/// auth, audit, limits) that actions are sent through.
pub(crate) fn router(app: Arc<App>, api: Router) -> Router {
    let ui = Arc::new(Ui {
        app,
        api,
        sessions: Sessions::new(),
    });
    Router::new()
        .route("/ui", get(pages::overview))
        .route("/ui/", get(|| async { see_other("/ui", None) }))
        .route("/ui/assets/ui.css", get(css))
        .route("/ui/assets/ui.js", get(js))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/tasks", get(tasks::list))
        .route("/ui/tasks/retry", post(tasks::retry_matching))
        .route("/ui/tasks/{id}", get(tasks::detail))
        .route("/ui/tasks/{id}/{action}", post(tasks::act_on_task))
        .route("/ui/workers", get(pages::workers))
        .route("/ui/queues", get(pages::queues))
        .route("/ui/queues/{name}/{action}", post(pages::queue_action))
        .route("/ui/schedules", get(pages::schedules))
        .route(
            "/ui/schedules/{name}/{action}",
            post(pages::schedule_action),
        )
        .route("/ui/cluster", get(pages::cluster))
        .route("/ui/{*rest}", get(not_found))
        .with_state(ui)
}

const CSS: &str = include_str!("assets/ui.css");
const JS: &str = include_str!("assets/ui.js");

async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

async fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// The headers of every page: no caching, no framing, nothing but this
/// server's own script and style.
fn secure(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn html_response(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure(resp)
}

/// 303 to `to`, setting `cookie` if given.
fn see_other(to: &str, cookie: Option<String>) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    secure(resp)
}

/// A page's parts: its title, which navigation entry it is, the part
/// drawn once and the part refreshed.
pub(crate) struct Page {
    title: String,
    section: &'static str,
    intro: String,
    live: String,
    status: StatusCode,
    /// Whether the script fetches the live part again every 2 s.
    refresh: bool,
}

impl Page {
    fn new(title: impl Into<String>, section: &'static str) -> Page {
        Page {
            title: title.into(),
            section,
            intro: String::new(),
            live: String::new(),
            status: StatusCode::OK,
            refresh: true,
        }
    }
}

/// What a page request comes with: its viewer, whether only the live part
/// is asked for, and the message left by the last action.
pub(crate) struct Look {
    viewer: Viewer,
    live_only: bool,
    flash: Option<String>,
}

impl Ui {
    fn secure_cookies(&self) -> bool {
        self.app.config.tls.is_some()
    }

    fn viewer(&self, headers: &HeaderMap) -> Option<Viewer> {
        self.sessions
            .viewer(self.app.config.tokens.as_ref(), headers)
    }

    /// The viewer of a page request, or the answer that sends them to sign
    /// in (a 401 for the script's refresh, which must not follow it).
    fn look(&self, headers: &HeaderMap) -> Result<Look, Box<Response>> {
        let live_only = headers.contains_key("x-dispatch-live");
        let Some(viewer) = self.viewer(headers) else {
            if live_only {
                return Err(Box::new(html_response(
                    StatusCode::UNAUTHORIZED,
                    String::new(),
                )));
            }
            return Err(Box::new(see_other("/ui/login", None)));
        };
        let flash = session::cookie(headers, FLASH_COOKIE)
            .filter(|_| !live_only)
            .map(|v| {
                form_urlencoded::parse(format!("m={v}").as_bytes())
                    .next()
                    .map(|(_, m)| m.into_owned())
                    .unwrap_or_default()
            })
            .filter(|m| !m.is_empty());
        Ok(Look {
            viewer,
            live_only,
            flash,
        })
    }

    /// The answer of a page: the live part alone, or the whole page (which
    /// clears the message it shows).
    fn render(&self, look: &Look, page: Page) -> Response {
        if look.live_only {
            return html_response(page.status, page.live);
        }
        let v = &look.viewer;
        let viewer = html::Viewer {
            who: v.who.as_deref(),
            admin: v.admin,
            csrf: &v.csrf,
        };
        let body = html::page(
            &page.title,
            page.section,
            &viewer,
            look.flash.as_deref(),
            &page.intro,
            &page.live,
            page.refresh,
        );
        let mut resp = html_response(page.status, body);
        if look.flash.is_some()
            && let Ok(c) = HeaderValue::from_str(&session::set_cookie(
                FLASH_COOKIE,
                "",
                Some(0),
                self.secure_cookies(),
            ))
        {
            resp.headers_mut().append(header::SET_COOKIE, c);
        }
        resp
    }

    /// Sends an API request in process, as the viewer: through the REST
    /// router and its middleware (scopes, audit with the token's name),
    /// to the handler a script's request would reach. The answer's JSON,
    /// or the problem's detail.
    async fn act(
        &self,
        viewer: &Viewer,
        remote: Option<ConnectInfo<SocketAddr>>,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(token) = &viewer.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let mut req = req.body(body).map_err(|e| e.to_string())?;
        if let Some(remote) = remote {
            req.extensions_mut().insert(remote);
        }
        let mut api = self.api.clone();
        let resp = match tower_service::Service::call(&mut api, req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
            .await
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        let value: serde_json::Value = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
        };
        if status.is_success() {
            return Ok(value);
        }
        let detail = value
            .get("detail")
            .and_then(|d| d.as_str())
            .unwrap_or("the request failed");
        Err(match value.get("field").and_then(|f| f.as_str()) {
            Some(field) => format!("{field}: {detail}"),
            None => detail.to_owned(),
        })
    }
}

/// A POST's form fields, its viewer, and where the request came from.
pub(crate) struct Posted {
    viewer: Viewer,
    fields: Vec<(String, String)>,
    remote: Option<ConnectInfo<SocketAddr>>,
}

impl Posted {
    /// The first value of a field, trimmed; `None` when absent or empty.
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// Where to go after the action: the form's `back`, when it is a
    /// dashboard path, else `default`.
    fn back(&self, default: &str) -> String {
        match self.get("back") {
            Some(b) if b.starts_with("/ui") && !b.contains("//") && !b.contains('\\') => {
                b.to_owned()
            }
            _ => default.to_owned(),
        }
    }
}

/// Most bytes of a dashboard form.
const MAX_FORM_BYTES: usize = 256 * 1024;

/// Reads and checks a POST: a viewer (else to sign-in), a form from this
/// dashboard with its CSRF token (else 403), a viewer who may act (else
/// 403).
async fn posted(ui: &Ui, req: Request) -> Result<Posted, Box<Response>> {
    let (parts, body) = req.into_parts();
    let Some(viewer) = ui.viewer(&parts.headers) else {
        return Err(Box::new(see_other("/ui/login", None)));
    };
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| {
            Box::new(refusal_page(
                StatusCode::PAYLOAD_TOO_LARGE,
                "The form is too large.",
            ))
        })?;
    let fields: Vec<(String, String)> = form_urlencoded::parse(&bytes).into_owned().collect();
    let csrf = fields
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str());
    match session::check_post(&viewer, &parts.headers, csrf) {
        Ok(()) => {}
        Err(Refusal::Forged) => {
            return Err(Box::new(refusal_page(
                StatusCode::FORBIDDEN,
                "This form did not come from this dashboard, or it is out of date. \
                 Go back, reload the page and try again.",
            )));
        }
        Err(Refusal::ReadOnly) => {
            return Err(Box::new(refusal_page(
                StatusCode::FORBIDDEN,
                "Your token can look but not act: actions need a token with the admin scope.",
            )));
        }
    }
    Ok(Posted {
        viewer,
        fields,
        remote: parts.extensions.get::<ConnectInfo<SocketAddr>>().copied(),
    })
}

fn refusal_page(status: StatusCode, why: &str) -> Response {
    let body = format!(
        "<p class=error>{}</p><p><a href=\"/ui\">Back to the dashboard</a></p>",
        html::esc(why)
    );
    html_response(status, html::bare_page("Refused", &body))
}

/// Runs an action through the API and goes `back` with a message saying
/// how it went.
async fn act_and_return(
    ui: &Ui,
    p: &Posted,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
    back: &str,
    done: impl FnOnce(&serde_json::Value) -> String,
) -> Response {
    let msg = match ui.act(&p.viewer, p.remote, method, path, body).await {
        Ok(v) => done(&v),
        Err(e) => format!("Refused: {e}"),
    };
    flash_back(ui, back, &msg)
}

/// Goes `back` with a message shown once there.
fn flash_back(ui: &Ui, back: &str, msg: &str) -> Response {
    let value: String = form_urlencoded::byte_serialize(msg.as_bytes()).collect();
    let cookie = session::set_cookie(FLASH_COOKIE, &value, Some(60), ui.secure_cookies());
    see_other(back, Some(cookie))
}

async fn not_found(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    let look = match ui.look(&headers) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let mut page = Page::new("Not found", "");
    page.live =
        "<p class=empty>There is no such page. <a href=\"/ui\">Back to the overview</a>.</p>"
            .to_owned();
    page.status = StatusCode::NOT_FOUND;
    ui.render(&look, page)
}

/// `GET /ui/login`: the sign-in form; without tokens, straight to the
/// overview.
async fn login_form(State(ui): State<Arc<Ui>>) -> Response {
    if ui.app.config.tokens.is_none() {
        return see_other("/ui", None);
    }
    html_response(StatusCode::OK, login_page(None))
}

fn login_page(error: Option<&str>) -> String {
    let mut body = String::new();
    if let Some(e) = error {
        body.push_str(&format!("<p class=error role=alert>{}</p>", html::esc(e)));
    }
    body.push_str(
        "<form method=post action=\"/ui/login\" class=stack>\
         <label for=token>Bearer token</label>\
         <input id=token name=token type=password autocomplete=off required autofocus \
          placeholder=\"dsp_…\">\
         <button type=submit class=primary id=sign-in>Sign in</button></form>\
         <p class=muted>Any token in the server's token file signs in. \
         A token with the admin scope may act; others see everything, read-only.</p>",
    );
    html::bare_page("Sign in", &body)
}

/// `POST /ui/login`: a known token opens a session.
async fn login(State(ui): State<Arc<Ui>>, req: Request) -> Response {
    let Some(tokens) = ui.app.config.tokens.clone() else {
        return see_other("/ui", None);
    };
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let Ok(bytes) = axum::body::to_bytes(req.into_body(), MAX_FORM_BYTES).await else {
        return refusal_page(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.");
    };
    let token = form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let known = tokens.identify(&token);
    audit(
        &ui,
        "ui.login",
        known.as_ref().map(|(w, _)| w.clone()),
        remote,
        known.is_some(),
    );
    if known.is_none() {
        return html_response(
            StatusCode::UNAUTHORIZED,
            login_page(Some("That token is not valid.")),
        );
    }
    let Some(id) = ui.sessions.open(token) else {
        return refusal_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The server cannot draw a session id right now.",
        );
    };
    let cookie = session::set_cookie(session::COOKIE, &id, None, ui.secure_cookies());
    see_other("/ui", Some(cookie))
}

/// `POST /ui/logout`: ends the session.
async fn logout(State(ui): State<Arc<Ui>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Some(viewer) = ui.viewer(&parts.headers) else {
        return see_other("/ui/login", None);
    };
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .unwrap_or_default();
    let csrf = form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.into_owned());
    // Signing out needs no admin scope, only a form of this dashboard.
    let reader = Viewer {
        admin: true,
        ..viewer.clone()
    };
    if session::check_post(&reader, &parts.headers, csrf.as_deref()).is_err() {
        return refusal_page(
            StatusCode::FORBIDDEN,
            "This form did not come from this dashboard.",
        );
    }
    if let Some(id) = &viewer.id {
        ui.sessions.close(id);
    }
    let remote = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    audit(&ui, "ui.logout", viewer.who.clone(), remote, true);
    let cookie = session::set_cookie(session::COOKIE, "", Some(0), ui.secure_cookies());
    see_other("/ui/login", Some(cookie))
}

/// Records a sign-in or sign-out in the audit log, when there is one.
/// A refused sign-in is limited like the API's refusals, so that nobody
/// fills the disk by guessing.
fn audit(ui: &Ui, action: &str, who: Option<String>, remote: Option<SocketAddr>, ok: bool) {
    if let Some(log) = &ui.app.audit {
        let entry = crate::audit::Entry {
            at: dispatch_proto::time::format_rfc3339(crate::clock::now_ms()),
            action,
            target: None,
            outcome: if ok { 200 } else { 401 },
            token: who,
            remote,
            method: None,
            path: None,
        };
        if ok {
            log.record(&entry);
        } else {
            log.record_denied(&entry);
        }
    }
}
