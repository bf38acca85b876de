//! `/ui/tasks`: the task list with its filters, one task, and retries
//! (one dead task, or every dead task a filter matches after a
//! confirmation naming how many).
//!
//! The list reads the store's indexed listing newest first, a page at a
//! time, with the API's cursor (an id: the next page lists the tasks below
//! it). State, type and queue are the store's own filters; the others
//! (time range, idempotency key, text in the error) are checked here on
//! the tasks read, and one page reads at most [`MAX_SCAN`] tasks: past
//! that it stops with what it found and a cursor to search on.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use dispatch_core::{Millis, TaskId, TaskState};
use dispatch_store::{TaskQuery, TaskRecord};

use super::html::{button_form, count, counted, esc, state_badge, time_cell, url};
use super::{Look, Page, Ui, act_and_return, posted};
use crate::clock::now_ms;

/// Tasks shown per page.
const PAGE: usize = 50;

/// Tasks read from the store at a time when filtering here.
const READ: usize = 250;

/// Most tasks one page reads when filtering here.
const MAX_SCAN: usize = 5_000;

/// Most dead tasks counted for a bulk retry's confirmation.
const MAX_COUNT: usize = 10_000;

/// The list's filters, as the form sends them (empty fields are absent).
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub(crate) struct Filters {
    #[serde(default)]
    state: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    queue: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    cursor: String,
}

/// The filters, checked.
#[derive(Clone, Debug)]
struct Valid {
    state: Option<TaskState>,
    kind: Option<String>,
    queue: Option<String>,
    from: Option<Millis>,
    to: Option<Millis>,
    id: Option<TaskId>,
    key: Option<String>,
    error: Option<String>,
    cursor: Option<TaskId>,
}

fn some(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// A time as a form gives it (`datetime-local`: `2026-12-03T15:04`, with
/// or without seconds) or as RFC 3339; read as UTC.
fn parse_time(s: &str) -> Option<Millis> {
    if let Ok(ms) = dispatch_proto::time::parse_rfc3339(s) {
        return Some(ms);
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, format) {
            return u64::try_from(t.and_utc().timestamp_millis()).ok();
        }
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .and_then(|t| u64::try_from(t.and_utc().timestamp_millis()).ok())
}

impl Filters {
    fn validate(&self) -> Result<Valid, String> {
        let state = match some(&self.state) {
            None => None,
            Some(s) => Some(
                TaskState::ALL
                    .iter()
                    .copied()
                    .find(|t| t.as_str() == s)
                    .ok_or_else(|| format!("state: {s:?} is not a task state"))?,
            ),
        };
        let time = |name: &str, s: &str| match some(s) {
            None => Ok(None),
            Some(t) => parse_time(&t)
                .map(Some)
                .ok_or_else(|| format!("{name}: {t:?} is not a time (2026-12-03T15:04)")),
        };
        let id = |name: &str, s: &str| match some(s) {
            None => Ok(None),
            Some(v) => v
                .parse::<TaskId>()
                .map(Some)
                .map_err(|_| format!("{name}: {v:?} is not a task id")),
        };
        Ok(Valid {
            state,
            kind: some(&self.kind),
            queue: some(&self.queue),
            from: time("from", &self.from)?,
            to: time("to", &self.to)?,
            id: id("id", &self.id)?,
            key: some(&self.key),
            error: some(&self.error).map(|e| e.to_lowercase()),
            cursor: id("cursor", &self.cursor)?,
        })
    }

    /// The query string of these filters, with another cursor.
    fn query(&self, cursor: Option<TaskId>) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("state", &self.state),
            ("type", &self.kind),
            ("queue", &self.queue),
            ("from", &self.from),
            ("to", &self.to),
            ("id", &self.id),
            ("key", &self.key),
            ("error", &self.error),
        ] {
            if !v.trim().is_empty() {
                q.append_pair(k, v.trim());
            }
        }
        if let Some(c) = cursor {
            q.append_pair("cursor", &c.to_string());
        }
        q.finish()
    }
}

impl Valid {
    /// True when some filter is checked here, not by the store.
    fn scans(&self) -> bool {
        self.from.is_some() || self.to.is_some() || self.key.is_some() || self.error.is_some()
    }

    fn matches(&self, r: &TaskRecord) -> bool {
        self.from.is_none_or(|f| r.body.created_at >= f)
            && self.to.is_none_or(|t| r.body.created_at <= t)
            && self
                .key
                .as_deref()
                .is_none_or(|k| r.body.idempotency_key.as_deref() == Some(k))
            && self.error.as_deref().is_none_or(|e| {
                r.error
                    .as_deref()
                    .is_some_and(|x| x.to_lowercase().contains(e))
            })
    }
}

/// One page of the list: the tasks, the cursor of the next page, and how
/// many tasks were read for it.
struct Found {
    rows: Vec<TaskRecord>,
    next: Option<TaskId>,
    scanned: usize,
    cut_short: bool,
}

fn search(ui: &Ui, f: &Valid) -> Result<Found, String> {
    let mut q = TaskQuery {
        state: f.state,
        kind: f.kind.clone(),
        queue: f.queue.clone(),
        before: f.cursor,
        limit: READ,
    };
    let mut found = Found {
        rows: Vec::new(),
        next: None,
        scanned: 0,
        cut_short: false,
    };
    loop {
        q.limit = if f.scans() {
            READ
        } else {
            PAGE + 1 - found.rows.len()
        };
        let read = ui.app.store.list_tasks(&q).map_err(|e| e.to_string())?;
        let got = read.len();
        for r in read {
            found.scanned += 1;
            q.before = Some(r.id);
            if f.matches(&r) {
                found.rows.push(r);
                if found.rows.len() > PAGE {
                    found.rows.pop();
                    found.next = found.rows.last().map(|r| r.id);
                    return Ok(found);
                }
            }
            if found.scanned >= MAX_SCAN {
                found.next = q.before;
                found.cut_short = true;
                return Ok(found);
            }
        }
        if got < q.limit {
            return Ok(found);
        }
    }
}

/// The filter form.
fn filter_form(f: &Filters) -> String {
    let states: String = std::iter::once("")
        .chain(TaskState::ALL.iter().map(|s| s.as_str()))
        .map(|s| {
            let sel = if s == f.state.trim() { " selected" } else { "" };
            let label = if s.is_empty() { "any state" } else { s };
            format!("<option value=\"{s}\"{sel}>{label}</option>")
        })
        .collect();
    format!(
        "<form method=get action=\"/ui/tasks\" class=filters id=filters>\
         <label>State <select name=state>{states}</select></label>\
         <label>Type <input name=type value=\"{}\"></label>\
         <label>Queue <input name=queue value=\"{}\"></label>\
         <label>Created from (UTC) <input name=from type=datetime-local step=1 value=\"{}\"></label>\
         <label>to <input name=to type=datetime-local step=1 value=\"{}\"></label>\
         <label>Id <input name=id inputmode=numeric value=\"{}\"></label>\
         <label>Idempotency key <input name=key value=\"{}\"></label>\
         <label>Error contains <input name=error value=\"{}\"></label>\
         <div class=buttons><button type=submit class=primary>Filter</button>\
         <a class=button href=\"/ui/tasks\">Clear</a></div></form>",
        esc(&f.kind),
        esc(&f.queue),
        esc(&f.from),
        esc(&f.to),
        esc(&f.id),
        esc(&f.key),
        esc(&f.error),
    )
}

/// The live counts of the filtered queue (or of all), from the core's
/// counters, and the transitions since start: no stored task is counted.
fn counts_line(ui: &Ui, queue: Option<&str>) -> String {
    let (mut s, mut q, mut r) = (0u64, 0u64, 0u64);
    for info in ui.app.lock().sched.queues() {
        if queue.is_none_or(|name| name == &*info.name) {
            s += info.scheduled as u64;
            q += info.queued as u64;
            r += info.running as u64;
        }
    }
    let m = &ui.app.metrics;
    let scope = match queue {
        Some(name) => format!("in {}", esc(name)),
        None => "in all queues".to_owned(),
    };
    format!(
        "<p class=counts>Live {scope}: <b>{}</b> scheduled · <b>{}</b> queued · <b>{}</b> running. \
         <span class=muted>Since the server started: {} succeeded, {} dead, {} cancelled \
         (all queues; estimates from counters, stored tasks are not counted).</span></p>",
        count(s),
        count(q),
        count(r),
        count(m.transitions(TaskState::Succeeded)),
        count(m.transitions(TaskState::Dead)),
        count(m.transitions(TaskState::Cancelled)),
    )
}

/// `GET /ui/tasks`.
pub(crate) async fn list(
    State(ui): State<Arc<Ui>>,
    headers: HeaderMap,
    query: Result<Query<Filters>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let look = match ui.look(&headers) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let f = query.map(|Query(f)| f).unwrap_or_default();
    let mut page = Page::new("Tasks", "/ui/tasks");
    page.intro = filter_form(&f);
    let valid = match f.validate() {
        Ok(v) => v,
        Err(e) => {
            page.status = StatusCode::BAD_REQUEST;
            page.live = format!("<p class=error role=alert>{}</p>", esc(&e));
            return ui.render(&look, page);
        }
    };
    let mut live = counts_line(&ui, valid.queue.as_deref());
    let found = if let Some(id) = valid.id {
        match ui.app.find_task(id).await {
            Ok(r) => Ok(Found {
                rows: r.into_iter().filter(|r| valid.matches(r)).collect(),
                next: None,
                scanned: 1,
                cut_short: false,
            }),
            Err(e) => Err(e.to_string()),
        }
    } else {
        // As the API's list: first let the store take every change the
        // core already made.
        let _ = ui.app.barrier().await;
        let ui2 = ui.clone();
        let v = valid.clone();
        tokio::task::spawn_blocking(move || search(&ui2, &v))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
    };
    let found = match found {
        Ok(f) => f,
        Err(e) => {
            page.status = StatusCode::SERVICE_UNAVAILABLE;
            live.push_str(&format!(
                "<p class=error role=alert>Cannot read the tasks: {}</p>",
                esc(&e)
            ));
            page.live = live;
            return ui.render(&look, page);
        }
    };
    if valid.state == Some(TaskState::Dead) && look.viewer.admin && valid.id.is_none() {
        if valid.scans() {
            live.push_str(
                "<p class=muted>To retry every dead task at once, filter by type and queue only.</p>",
            );
        } else {
            let _ = write!(
                live,
                "<form method=post action=\"/ui/tasks/retry\" class=bulk>\
                 <input type=hidden name=csrf value=\"{}\">\
                 <input type=hidden name=type value=\"{}\"><input type=hidden name=queue value=\"{}\">\
                 <button type=submit id=retry-matching>Retry every matching dead task…</button></form>",
                esc(&look.viewer.csrf),
                esc(valid.kind.as_deref().unwrap_or("")),
                esc(valid.queue.as_deref().unwrap_or("")),
            );
        }
    }
    live.push_str(&task_table(&look, &found.rows, &f));
    live.push_str("<nav class=pager>");
    if valid.cursor.is_some() {
        let _ = write!(
            live,
            "<a class=button href=\"/ui/tasks?{}\">« Newest</a>",
            esc(&f.query(None))
        );
    }
    if let Some(next) = found.next {
        let _ = write!(
            live,
            "<a class=button href=\"/ui/tasks?{}\" id=next-page>Older »</a>",
            esc(&f.query(Some(next)))
        );
    }
    if found.cut_short {
        let _ = write!(
            live,
            "<span class=muted>Read {} tasks for this page and stopped; \
             “Older” searches on from there.</span>",
            count(found.scanned as u64)
        );
    }
    live.push_str("</nav>");
    page.live = live;
    ui.render(&look, page)
}

fn task_table(look: &Look, rows: &[TaskRecord], f: &Filters) -> String {
    if rows.is_empty() {
        return "<p class=empty>No task matches.</p>".into();
    }
    let now = now_ms();
    let back = format!("/ui/tasks?{}", f.query(f.cursor.trim().parse().ok()));
    let mut t = String::from(
        "<table class=tasks><thead><tr><th>Id</th><th>Type</th><th>Queue</th><th>State</th>\
         <th class=num>Attempts</th><th>Created</th><th>Finished</th><th>Error</th><th></th>\
         </tr></thead><tbody>",
    );
    for r in rows {
        let error = r.error.as_deref().unwrap_or("");
        let short: String = error.chars().take(80).collect();
        let more = if error.chars().count() > 80 {
            "…"
        } else {
            ""
        };
        let _ = write!(
            t,
            "<tr data-task=\"{id}\"><td class=mono><a href=\"/ui/tasks/{id}\">{id}</a></td>\
             <td>{kind}</td><td>{queue}</td><td>{state}</td><td class=num>{attempts}/{max}</td>\
             <td>{created}</td><td>{finished}</td><td class=error-text title=\"{full}\">{short}{more}</td>\
             <td class=actions>",
            id = r.id,
            kind = esc(&r.spec.kind),
            queue = esc(&r.spec.queue),
            state = state_badge(r.state.as_str()),
            attempts = r.attempts,
            max = r.spec.max_attempts,
            created = time_cell(Some(r.body.created_at), now),
            finished = time_cell(r.finished_at, now),
            full = esc(error),
            short = esc(&short),
        );
        if look.viewer.admin && r.state == TaskState::Dead {
            t.push_str(&button_form(
                &format!("/ui/tasks/{}/retry?back={}", r.id, url(&back)),
                &look.viewer.csrf,
                "Retry",
                "small",
            ));
        }
        t.push_str("</td></tr>");
    }
    t.push_str("</tbody></table>");
    t
}

/// Most bytes of a payload or result shown.
const MAX_SHOWN: usize = 64 * 1024;

/// JSON text, indented, cut at [`MAX_SHOWN`].
fn pretty(text: &str) -> String {
    let shown = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) if text.len() <= MAX_SHOWN => serde_json::to_string_pretty(&v).unwrap_or_default(),
        _ => text.to_owned(),
    };
    if shown.len() > MAX_SHOWN {
        let mut cut = MAX_SHOWN;
        while !shown.is_char_boundary(cut) {
            cut -= 1;
        }
        format!(
            "{}\n… ({} bytes in all)",
            esc(&shown[..cut]),
            count(text.len() as u64)
        )
    } else {
        esc(&shown)
    }
}

/// Most parents listed on a task's page.
const MAX_PARENTS: usize = 100;

/// `GET /ui/tasks/{id}`.
pub(crate) async fn detail(
    State(ui): State<Arc<Ui>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let look = match ui.look(&headers) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let mut page = Page::new(format!("Task {id}"), "/ui/tasks");
    let record = match id.parse::<TaskId>() {
        Err(_) => Ok(None),
        Ok(tid) => ui.app.find_task(tid).await.map_err(|e| e.to_string()),
    };
    let r = match record {
        Ok(Some(r)) => r,
        Ok(None) => {
            page.status = StatusCode::NOT_FOUND;
            page.live = format!(
                "<p class=empty>There is no task {}. It may have been purged after the retention \
                 period. <a href=\"/ui/tasks\">All tasks</a></p>",
                esc(&id)
            );
            return ui.render(&look, page);
        }
        Err(e) => {
            page.status = StatusCode::SERVICE_UNAVAILABLE;
            page.live = format!("<p class=error>Cannot read the task: {}</p>", esc(&e));
            return ui.render(&look, page);
        }
    };
    let now = now_ms();
    let mut h = String::new();
    let _ = write!(h, "<div class=task-head>{}", state_badge(r.state.as_str()));
    if look.viewer.admin {
        let back = format!("/ui/tasks/{}", r.id);
        if !r.state.is_terminal() {
            h.push_str(&button_form(
                &format!("/ui/tasks/{}/cancel?back={}", r.id, url(&back)),
                &look.viewer.csrf,
                "Cancel",
                "danger",
            ));
        }
        if r.state == TaskState::Dead {
            h.push_str(&button_form(
                &format!("/ui/tasks/{}/retry?back={}", r.id, url(&back)),
                &look.viewer.csrf,
                "Retry",
                "primary",
            ));
        }
    }
    h.push_str("</div><dl class=fields>");
    let mut field = |name: &str, value: String| {
        let _ = write!(h, "<dt>{name}</dt><dd>{value}</dd>");
    };
    field("Type", esc(&r.spec.kind));
    field(
        "Queue",
        format!(
            "<a href=\"/ui/tasks?queue={}\">{}</a>",
            url(&r.spec.queue),
            esc(&r.spec.queue)
        ),
    );
    field("Priority", r.spec.priority.to_string());
    field(
        "Attempts",
        format!("{} of {}", r.attempts, r.spec.max_attempts),
    );
    field(
        "Worker",
        r.worker
            .map_or_else(|| "<span class=muted>–</span>".into(), |w| w.to_string()),
    );
    field("Created", time_cell(Some(r.body.created_at), now));
    field("Runs at", time_cell(r.spec.run_at, now));
    field("Started", time_cell(r.started_at, now));
    field("Finished", time_cell(r.finished_at, now));
    field(
        "Timeout",
        r.spec.timeout_ms.map_or_else(
            || "<span class=muted>none</span>".into(),
            |t| format!("{t} ms"),
        ),
    );
    field("Strategy", esc(r.spec.strategy.as_str()));
    if let Some(k) = &r.spec.routing_key {
        field("Routing key", esc(k));
    }
    if let Some(k) = &r.body.idempotency_key {
        field("Idempotency key", esc(k));
    }
    if !r.spec.labels.is_empty() {
        let labels: Vec<String> = r
            .spec
            .labels
            .iter()
            .map(|(k, v)| format!("<span class=tag>{}={}</span>", esc(k), esc(v)))
            .collect();
        field("Labels", labels.join(" "));
    }
    h.push_str("</dl>");
    let _ = write!(
        h,
        "<section><h2>Payload</h2><pre class=json>{}</pre></section>",
        pretty(&r.body.payload)
    );
    if let Some(result) = &r.result {
        let _ = write!(
            h,
            "<section><h2>Result</h2><pre class=json>{}</pre></section>",
            pretty(result)
        );
    }
    if let Some(error) = &r.error {
        let _ = write!(
            h,
            "<section><h2>Error</h2><pre class=error-text>{}</pre></section>",
            esc(error)
        );
    }
    h.push_str(&attempts_section(&ui, &r).await);
    h.push_str("<section><h2>Dependencies</h2>");
    if r.body.depends_on.is_empty() {
        h.push_str("<p class=muted>None: this task waits for no other.</p>");
    } else {
        h.push_str("<ul class=deps>");
        for parent in r.body.depends_on.iter().take(MAX_PARENTS) {
            let state = match ui.app.find_task(*parent).await {
                Ok(Some(p)) => state_badge(p.state.as_str()),
                Ok(None) => "<span class=muted>purged</span>".into(),
                Err(_) => "<span class=muted>?</span>".into(),
            };
            let _ = write!(
                h,
                "<li><a class=mono href=\"/ui/tasks/{parent}\">{parent}</a> {state}</li>"
            );
        }
        if r.body.depends_on.len() > MAX_PARENTS {
            let _ = write!(
                h,
                "<li class=muted>and {} more</li>",
                r.body.depends_on.len() - MAX_PARENTS
            );
        }
        h.push_str("</ul>");
    }
    h.push_str("</section>");
    page.live = h;
    ui.render(&look, page)
}

/// The attempt history of a task, as `GET /v1/tasks/{id}/attempts`
/// answers it (its handler, called directly: a read-only viewer sees it
/// whatever scopes the API asks).
async fn attempts_section(ui: &Ui, r: &TaskRecord) -> String {
    let mut s = format!(
        "<section><h2>Attempts <span class=muted>({} of {} started)</span></h2>",
        r.attempts, r.spec.max_attempts
    );
    let answer = crate::attempts::list(State(ui.app.clone()), Path(r.id.to_string())).await;
    let list = match answer {
        Ok(resp) => match axum::body::to_bytes(resp.into_body(), 16 << 20).await {
            Ok(bytes) => serde_json::from_slice::<dispatch_proto::AttemptList>(&bytes)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(format!("{e:?}")),
    };
    let attempts = match list {
        Ok(l) => l.attempts,
        Err(e) => {
            let _ = write!(
                s,
                "<p class=error>Cannot read the attempts: {}</p></section>",
                esc(&e)
            );
            return s;
        }
    };
    if attempts.is_empty() {
        s.push_str("<p class=muted>No attempt has started.</p></section>");
        return s;
    }
    s.push_str(
        "<table class=attempts><thead><tr><th class=num>#</th><th>Worker</th><th>Collected</th>\
         <th>Finished</th><th>Outcome</th><th>Error</th><th class=num>Retry after</th></tr>\
         </thead><tbody>",
    );
    let now = now_ms();
    let at = |t: &Option<String>| {
        time_cell(
            t.as_deref()
                .and_then(|t| dispatch_proto::time::parse_rfc3339(t).ok()),
            now,
        )
    };
    for a in &attempts {
        let outcome = a.outcome.as_deref().map_or_else(
            || state_badge("running"),
            |o| {
                let class = match o {
                    "succeeded" => "succeeded",
                    "cancelled" => "cancelled",
                    _ => "dead",
                };
                format!("<span class=\"badge s-{class}\">{}</span>", esc(o))
            },
        );
        let _ = write!(
            s,
            "<tr data-attempt=\"{n}\"><td class=num>{n}</td><td>{name} <span class=\"muted mono\">{id}</span></td>\
             <td>{collected}</td><td>{finished}</td><td>{outcome}</td><td class=error-text>{error}</td>\
             <td class=num>{delay}</td></tr>",
            n = a.attempt,
            name = esc(&a.worker_name),
            id = esc(&a.worker_id),
            collected = at(&Some(a.collected_at.clone())),
            finished = at(&a.finished_at),
            error = esc(a.error.as_deref().unwrap_or("")),
            delay = a
                .retry_delay_ms
                .map_or_else(String::new, |d| format!("{} ms", count(d))),
        );
    }
    s.push_str("</tbody></table></section>");
    s
}

/// `POST /ui/tasks/{id}/{cancel|retry}`.
pub(crate) async fn act_on_task(
    State(ui): State<Arc<Ui>>,
    Path((id, action)): Path<(String, String)>,
    req: Request,
) -> Response {
    let back_query = req
        .uri()
        .query()
        .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "back"))
        .map(|(_, v)| v.into_owned());
    let mut p = match posted(&ui, req).await {
        Ok(p) => p,
        Err(r) => return *r,
    };
    if let Some(b) = back_query {
        p.fields.push(("back".into(), b));
    }
    let back = p.back(&format!("/ui/tasks/{}", url(&id)));
    let (done, verb) = match action.as_str() {
        "cancel" => ("cancelled", "cancel"),
        "retry" => ("requeued", "retry"),
        _ => {
            return super::refusal_page(StatusCode::NOT_FOUND, "There is no such task action.");
        }
    };
    let shown = id.clone();
    act_and_return(
        &ui,
        &p,
        Method::POST,
        &format!("/v1/tasks/{}/{verb}", url(&id)),
        None,
        &back,
        move |_| format!("Task {shown} {done}."),
    )
    .await
}

/// Counts the dead tasks a bulk retry would requeue, up to [`MAX_COUNT`]
/// (true when there are more), reading the dead tasks' index only.
fn count_dead(
    ui: &Ui,
    kind: Option<String>,
    queue: Option<String>,
) -> Result<(usize, bool), String> {
    let mut q = TaskQuery {
        state: Some(TaskState::Dead),
        kind,
        queue,
        before: None,
        limit: 1_000,
    };
    let mut n = 0;
    loop {
        let page = ui.app.store.list_tasks(&q).map_err(|e| e.to_string())?;
        let got = page.len();
        n += got;
        q.before = page.last().map(|r| r.id);
        if n >= MAX_COUNT {
            return Ok((MAX_COUNT, true));
        }
        if got < q.limit {
            return Ok((n, false));
        }
    }
}

/// `POST /ui/tasks/retry`: without `confirmed`, a page naming how many dead
/// tasks match and asking to confirm; with it, `POST /v1/tasks/retry`.
pub(crate) async fn retry_matching(State(ui): State<Arc<Ui>>, req: Request) -> Response {
    let p = match posted(&ui, req).await {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let kind = p.get("type").map(str::to_owned);
    let queue = p.get("queue").map(str::to_owned);
    let back = {
        let mut list_query = form_urlencoded::Serializer::new(String::new());
        list_query.append_pair("state", "dead");
        if let Some(k) = &kind {
            list_query.append_pair("type", k);
        }
        if let Some(q) = &queue {
            list_query.append_pair("queue", q);
        }
        format!("/ui/tasks?{}", list_query.finish())
    };
    let what = match (&kind, &queue) {
        (Some(k), Some(q)) => format!("of type {k} in queue {q}"),
        (Some(k), None) => format!("of type {k}"),
        (None, Some(q)) => format!("in queue {q}"),
        (None, None) => "in every queue".to_owned(),
    };
    if p.get("confirmed").is_some() {
        let mut body = serde_json::json!({ "state": "dead" });
        if let Some(k) = &kind {
            body["type"] = k.clone().into();
        }
        if let Some(q) = &queue {
            body["queue"] = q.clone().into();
        }
        return act_and_return(
            &ui,
            &p,
            Method::POST,
            "/v1/tasks/retry",
            Some(body),
            &back,
            move |v| {
                let n = v.get("count").and_then(|c| c.as_u64()).unwrap_or(0);
                format!("Requeued {} {what}.", counted(n, "dead task", "dead tasks"))
            },
        )
        .await;
    }
    let _ = ui.app.barrier().await;
    let ui2 = ui.clone();
    let (k2, q2) = (kind.clone(), queue.clone());
    let counted = tokio::task::spawn_blocking(move || count_dead(&ui2, k2, q2))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    let look = Look {
        viewer: p.viewer.clone(),
        live_only: false,
        flash: None,
    };
    let mut page = Page::new("Retry dead tasks", "/ui/tasks");
    page.refresh = false;
    page.live = match counted {
        Err(e) => format!(
            "<p class=error>Cannot count the dead tasks: {}</p>",
            esc(&e)
        ),
        Ok((0, _)) => format!(
            "<p class=empty>No dead task {}. <a href=\"{}\">Back</a></p>",
            esc(&what),
            esc(&back)
        ),
        Ok((n, more)) => {
            let (n_text, noun) = if more {
                (format!("more than {}", count(n as u64)), "tasks")
            } else if n == 1 {
                (count(1), "task")
            } else {
                (count(n as u64), "tasks")
            };
            format!(
                "<p class=confirm>Retry <b id=retry-count>{n_text}</b> dead {noun} {what}? Each is \
                 queued again with a fresh set of attempts.</p>\
                 <form method=post action=\"/ui/tasks/retry\" class=inline>\
                 <input type=hidden name=csrf value=\"{csrf}\">\
                 <input type=hidden name=type value=\"{k}\"><input type=hidden name=queue value=\"{q}\">\
                 <input type=hidden name=confirmed value=1>\
                 <button type=submit class=primary id=confirm-retry>Retry {n_text} {noun}</button></form> \
                 <a class=button href=\"{back}\">Cancel</a>",
                what = esc(&what),
                csrf = esc(&look.viewer.csrf),
                k = esc(kind.as_deref().unwrap_or("")),
                q = esc(queue.as_deref().unwrap_or("")),
                back = esc(&back),
            )
        }
    };
    ui.render(&look, page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_times_are_read_as_utc() {
        assert_eq!(parse_time("1970-01-01T00:01"), Some(60_000));
        assert_eq!(parse_time("1970-01-01T00:01:02"), Some(62_000));
        assert_eq!(parse_time("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1_000));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn filters_are_checked_and_kept_in_the_pager_links() {
        let f = Filters {
            state: "dead".into(),
            queue: " mail ".into(),
            error: "Timeout".into(),
            ..Filters::default()
        };
        let v = f.validate().unwrap();
        assert_eq!(v.state, Some(TaskState::Dead));
        assert_eq!(v.queue.as_deref(), Some("mail"));
        assert_eq!(v.error.as_deref(), Some("timeout"));
        assert!(v.scans());
        assert_eq!(
            f.query(Some(TaskId(42))),
            "state=dead&queue=mail&error=Timeout&cursor=42"
        );
        let bad = Filters {
            state: "lost".into(),
            ..Filters::default()
        };
        assert!(bad.validate().unwrap_err().starts_with("state:"));
        let bad = Filters {
            id: "x".into(),
            ..Filters::default()
        };
        assert!(bad.validate().unwrap_err().starts_with("id:"));
    }
}
