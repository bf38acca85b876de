//! The overview, workers, queues, schedules and cluster pages, and the
//! queue and schedule actions.
//!
//! Counts come from the core's per-queue counters (live tasks) and the
//! app's transition counters (since start): no page counts stored tasks.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use chrono::{DateTime, Utc};
use dispatch_core::{Millis, QueueInfo, TaskState};

use super::html::{button_form, count, esc, relative, time, time_cell, url};
use super::{Look, Page, Ui, act_and_return, posted};
use crate::clock::{now_ms, wall_ms};

/// The queues as the core counts them, by name, with the strategy and
/// depth limit in force (the config file's, or the API's once changed).
fn queue_rows(ui: &Ui) -> Vec<(QueueInfo, Option<String>, Option<u64>)> {
    let infos = ui.app.lock().sched.queues();
    let settings = ui.app.queue_settings();
    infos
        .into_iter()
        .map(|q| {
            let d = settings.queues.get(&*q.name);
            let strategy = d.and_then(|d| d.strategy).map(|s| s.as_str().to_owned());
            let depth = d.and_then(|d| d.max_depth);
            (q, strategy, depth)
        })
        .collect()
}

/// The pause or resume button of a queue.
fn pause_button(q: &QueueInfo, csrf: &str, back: &str) -> String {
    let (action, label) = if q.paused {
        ("resume", "Resume")
    } else {
        ("pause", "Pause")
    };
    button_form(
        &format!("/ui/queues/{}/{action}?back={}", url(&q.name), url(back)),
        csrf,
        label,
        "small",
    )
}

fn paused_badge(paused: bool) -> &'static str {
    if paused {
        "<span class=\"badge s-paused\">paused</span>"
    } else {
        "<span class=\"badge s-active\">active</span>"
    }
}

/// `GET /ui`: the throughput chart, totals, and the queues.
pub(crate) async fn overview(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    let look = match ui.look(&headers) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let mut page = Page::new("Overview", "/ui");
    let seconds = ui.app.metrics.throughput.last(now_ms());
    let (workers, slots, busy) = {
        let shared = ui.app.lock();
        let mut n = 0u64;
        let (mut slots, mut busy) = (0u64, 0u64);
        for w in shared.sched.workers() {
            n += 1;
            slots += u64::from(w.spec.capacity);
            busy += u64::from(w.in_flight());
        }
        (n, slots, busy)
    };
    let qs = queue_rows(&ui);
    let (mut scheduled, mut queued, mut running) = (0u64, 0u64, 0u64);
    for (q, _, _) in &qs {
        scheduled += q.scheduled as u64;
        queued += q.queued as u64;
        running += q.running as u64;
    }
    let m = &ui.app.metrics;
    let live = &mut page.live;
    live.push_str("<section><h2>Throughput, per second</h2>");
    live.push_str(&super::chart::throughput(&seconds));
    live.push_str("</section><section class=cards>");
    let cards: [(&str, String, &str); 6] = [
        ("Scheduled", count(scheduled), "/ui/tasks?state=scheduled"),
        ("Queued", count(queued), "/ui/tasks?state=queued"),
        ("Running", count(running), "/ui/tasks?state=running"),
        (
            "Workers",
            format!(
                "{} <small>{} of {} slots busy</small>",
                count(workers),
                count(busy),
                count(slots)
            ),
            "/ui/workers",
        ),
        (
            "Succeeded since start",
            count(m.transitions(TaskState::Succeeded)),
            "/ui/tasks?state=succeeded",
        ),
        (
            "Dead since start",
            count(m.transitions(TaskState::Dead)),
            "/ui/tasks?state=dead",
        ),
    ];
    for (label, value, href) in cards {
        let _ = write!(
            live,
            "<a class=card href=\"{href}\"><span class=label>{label}</span><span class=value>{value}</span></a>"
        );
    }
    live.push_str("</section><section><h2>Queues</h2>");
    live.push_str(&queue_counts(&look, &qs, "/ui"));
    live.push_str("</section>");
    ui.render(&look, page)
}

/// The queues with their live counts, paused state and pause buttons.
fn queue_counts(
    look: &Look,
    qs: &[(QueueInfo, Option<String>, Option<u64>)],
    back: &str,
) -> String {
    if qs.is_empty() {
        return "<p class=empty>No queue yet: a queue exists once a task names it.</p>".into();
    }
    let mut t = String::from(
        "<table class=queues><thead><tr><th>Queue</th><th>State</th><th class=num>Scheduled</th>\
         <th class=num>Queued</th><th class=num>Running</th><th></th></tr></thead><tbody>",
    );
    for (q, _, _) in qs {
        let name = url(&q.name);
        let _ = write!(
            t,
            "<tr data-queue=\"{n}\"><td><a href=\"/ui/tasks?queue={name}\">{n}</a></td><td>{}</td>\
             <td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td class=actions>",
            paused_badge(q.paused),
            count(q.scheduled as u64),
            count(q.queued as u64),
            count(q.running as u64),
            n = esc(&q.name),
        );
        if look.viewer.admin {
            t.push_str(&pause_button(q, &look.viewer.csrf, back));
        }
        t.push_str("</td></tr>");
    }
    t.push_str("</tbody></table>");
    t
}

/// `GET /ui/workers`: the registry.
pub(crate) async fn workers(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    let look = match ui.look(&headers) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let mut page = Page::new("Workers", "/ui/workers");
    let now = now_ms();
    let lease_ms = ui.app.config.lease_ms;
    let mut rows = String::new();
    let mut n = 0;
    {
        let shared = ui.app.lock();
        let mut workers: Vec<_> = shared.sched.workers().collect();
        workers.sort_by_key(|w| w.id);
        for w in workers {
            n += 1;
            let transport = if w.streaming() { "gRPC" } else { "HTTP" };
            let labels: Vec<String> = w
                .spec
                .labels
                .iter()
                .map(|(k, v)| format!("<span class=tag>{}={}</span>", esc(k), esc(v)))
                .collect();
            let types: Vec<String> = w.spec.types.iter().map(|t| esc(t)).collect();
            let lease_end = w.last_seen_at.saturating_add(lease_ms);
            let _ = write!(
                rows,
                "<tr><td class=mono>{id}</td><td>{name}</td><td>{transport}</td><td>{types}</td>\
                 <td>{labels}</td><td><meter min=0 max={cap} value={load}></meter> {load}/{cap}</td>\
                 <td>{state}</td><td title=\"{seen_at}\">{seen}</td><td>{lease}</td>\
                 <td class=num>{done}</td><td class=num>{failed}</td></tr>",
                id = w.id,
                name = esc(&w.spec.name),
                types = types.join(", "),
                labels = labels.join(" "),
                cap = w.spec.capacity,
                load = w.in_flight(),
                state = esc(w.state.as_str()),
                seen_at = time(w.last_seen_at),
                seen = relative(w.last_seen_at, now),
                lease = relative(lease_end, now),
                done = count(w.completed),
                failed = count(w.failed),
            );
        }
    }
    if n == 0 {
        page.live = "<p class=empty>No worker is registered. Start one with \
                     <code>dispatch worker</code> or an SDK.</p>"
            .into();
    } else {
        page.live = format!(
            "<p class=muted>{n} registered; a worker silent for {} s loses its lease and its tasks \
             are requeued.</p><table><thead><tr><th>Id</th><th>Name</th><th>Transport</th>\
             <th>Types</th><th>Labels</th><th>Load</th><th>State</th><th>Last seen</th>\
             <th>Lease ends</th><th class=num>Done</th><th class=num>Failed</th></tr></thead>\
             <tbody>{rows}</tbody></table>",
            lease_ms / 1000
        );
    }
    ui.render(&look, page)
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(
        || "<span class=muted>–</span>".to_owned(),
        |v| esc(&v.to_string()),
    )
}

fn opt_value<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(String::new, |v| esc(&v.to_string()))
}

/// `GET /ui/queues`: settings and counts; an admin edits them.
fn queues_page(ui: &Ui, look: &Look) -> Page {
    let mut page = Page::new("Queues", "/ui/queues");
    let qs = queue_rows(ui);
    if qs.is_empty() {
        page.live = "<p class=empty>No queue yet: a queue exists once a task names it.</p>".into();
        return page;
    }
    let mut t = String::from(
        "<p class=muted>Counts are the scheduler's live counters; finished tasks are in \
         <a href=\"/ui/tasks\">Tasks</a>.</p><table><thead><tr><th>Queue</th><th>State</th>\
         <th class=num>Scheduled</th><th class=num>Queued</th><th class=num>Running</th>\
         <th class=num>Weight</th><th class=num>Max running</th><th class=num>Rate/s</th>\
         <th class=num>Burst</th><th class=num>Max per key</th><th class=num>Max depth</th>\
         <th>Strategy</th><th></th></tr></thead><tbody>",
    );
    for (q, strategy, depth) in &qs {
        let c = &q.config;
        let _ = write!(
            t,
            "<tr data-queue=\"{n}\"><td><a href=\"/ui/tasks?queue={u}\">{n}</a></td><td>{}</td>\
             <td class=num>{}</td><td class=num>{}</td><td class=num>{}</td>\
             <td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td>\
             <td class=num>{}</td><td class=num>{}</td><td>{}</td><td class=actions>",
            paused_badge(q.paused),
            count(q.scheduled as u64),
            count(q.queued as u64),
            count(q.running as u64),
            c.weight,
            opt(c.max_running),
            opt(c.rate_per_sec),
            opt(c.burst),
            opt(c.max_per_key),
            opt(*depth),
            strategy
                .as_deref()
                .map_or_else(|| "<span class=muted>default</span>".into(), esc),
            n = esc(&q.name),
            u = url(&q.name),
        );
        if look.viewer.admin {
            t.push_str(&pause_button(q, &look.viewer.csrf, "/ui/queues"));
            let _ = write!(
                t,
                "<details class=edit><summary>Edit</summary>\
                 <form method=post action=\"/ui/queues/{u}/edit\" class=grid>\
                 <input type=hidden name=csrf value=\"{csrf}\">\
                 <label>Weight <input name=weight inputmode=numeric value=\"{w}\"></label>\
                 <label>Max running <input name=max_running inputmode=numeric value=\"{mr}\"></label>\
                 <label>Rate per second <input name=rate_per_sec inputmode=decimal value=\"{rate}\"></label>\
                 <label>Burst <input name=burst inputmode=numeric value=\"{burst}\"></label>\
                 <label>Max per key <input name=max_per_key inputmode=numeric value=\"{mpk}\"></label>\
                 <label>Max depth <input name=max_depth inputmode=numeric value=\"{depth}\"></label>\
                 <label>Strategy <input name=strategy value=\"{strategy}\"></label>\
                 <p class=muted>An empty field clears the setting.</p>\
                 <button type=submit class=primary>Save</button></form></details>",
                u = url(&q.name),
                csrf = esc(&look.viewer.csrf),
                w = c.weight,
                mr = opt_value(c.max_running),
                rate = opt_value(c.rate_per_sec),
                burst = opt_value(c.burst),
                mpk = opt_value(c.max_per_key),
                depth = opt_value(*depth),
                strategy = opt_value(strategy.as_deref()),
            );
        }
        t.push_str("</td></tr>");
    }
    t.push_str("</tbody></table>");
    page.live = t;
    page
}

/// `GET /ui/queues`.
pub(crate) async fn queues(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    let look = match ui.look(&headers) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let page = queues_page(&ui, &look);
    ui.render(&look, page)
}

/// A form's number field for a PATCH: empty clears it (`null`), else the
/// number, else the text as given (the API names the field it refuses).
fn number_or_null(p: &super::Posted, name: &str) -> serde_json::Value {
    match p.get(name) {
        None => serde_json::Value::Null,
        Some(v) => match v.parse::<u64>() {
            Ok(n) => n.into(),
            Err(_) => match v.parse::<f64>() {
                Ok(f) => f.into(),
                Err(_) => v.into(),
            },
        },
    }
}

/// `POST /ui/queues/{name}/{pause|resume|edit}`.
pub(crate) async fn queue_action(
    State(ui): State<Arc<Ui>>,
    Path((name, action)): Path<(String, String)>,
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
    let back = p.back("/ui/queues");
    let path = format!("/v1/queues/{}", url(&name));
    match action.as_str() {
        "pause" | "resume" => {
            let verb = if action == "pause" {
                "paused"
            } else {
                "resumed"
            };
            let shown = name.clone();
            act_and_return(
                &ui,
                &p,
                Method::POST,
                &format!("{path}/{action}"),
                None,
                &back,
                move |_| format!("Queue {shown} {verb}."),
            )
            .await
        }
        "edit" => {
            let mut body = serde_json::Map::new();
            for field in [
                "weight",
                "max_running",
                "rate_per_sec",
                "burst",
                "max_per_key",
                "max_depth",
            ] {
                body.insert(field.into(), number_or_null(&p, field));
            }
            body.insert(
                "strategy".into(),
                p.get("strategy")
                    .map_or(serde_json::Value::Null, |s| s.into()),
            );
            let shown = name.clone();
            act_and_return(
                &ui,
                &p,
                Method::PATCH,
                &path,
                Some(body.into()),
                &back,
                move |_| format!("Queue {shown} saved."),
            )
            .await
        }
        _ => super::refusal_page(
            axum::http::StatusCode::NOT_FOUND,
            "There is no such queue action.",
        ),
    }
}

/// The next `n` fires of a schedule after `now`, in its own zone.
fn next_fires(cron: &str, zone: &str, now: Millis, n: usize) -> Vec<String> {
    let Ok(schedule) = dispatch_cron::CronSchedule::parse(cron, zone) else {
        return Vec::new();
    };
    let Ok(tz) = zone.parse::<chrono_tz::Tz>() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut t = now;
    while out.len() < n {
        let Some(next) = schedule.next_after(t) else {
            break;
        };
        if let Some(at) = DateTime::<Utc>::from_timestamp_millis(next as i64) {
            out.push(
                at.with_timezone(&tz)
                    .format("%Y-%m-%d %H:%M:%S %Z")
                    .to_string(),
            );
        }
        t = next;
    }
    out
}

/// `GET /ui/schedules`.
pub(crate) async fn schedules(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    let look = match ui.look(&headers) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let mut page = Page::new("Schedules", "/ui/schedules");
    let list = ui.app.schedules.shown();
    if list.is_empty() {
        page.live =
            "<p class=empty>No schedule. Create one with <code>dispatch schedule create</code> \
                     or <code>POST /v1/schedules</code>.</p>"
                .into();
        return ui.render(&look, page);
    }
    let now = wall_ms();
    let csrf = &look.viewer.csrf;
    let mut t = String::from(
        "<table><thead><tr><th>Name</th><th>Cron</th><th>Zone</th><th>Next fires (its zone)</th>\
         <th>Last fire</th><th>Misfire</th><th>Task</th><th>State</th><th></th></tr></thead><tbody>",
    );
    for s in &list {
        let fires = if s.paused {
            vec!["<span class=muted>paused</span>".to_owned()]
        } else {
            next_fires(&s.cron, &s.timezone, now, 3)
                .iter()
                .map(|f| esc(f))
                .collect()
        };
        let last = s
            .last_fire_at
            .as_deref()
            .and_then(|l| dispatch_proto::time::parse_rfc3339(l).ok());
        let template: serde_json::Value =
            serde_json::from_str(s.task.get()).unwrap_or(serde_json::Value::Null);
        let kind = template.get("type").and_then(|t| t.as_str()).unwrap_or("?");
        let queue = template
            .get("queue")
            .and_then(|t| t.as_str())
            .unwrap_or("default");
        let _ = write!(
            t,
            "<tr data-schedule=\"{n}\"><td>{n}</td><td class=mono>{cron}</td><td>{tz}</td>\
             <td class=fires>{fires}</td><td>{last}</td><td>{misfire}</td><td>{kind} \
             <span class=muted>in {queue}</span></td><td>{state}</td><td class=actions>",
            n = esc(&s.name),
            cron = esc(&s.cron),
            tz = esc(&s.timezone),
            fires = fires.join("<br>"),
            last = time_cell(last, now),
            misfire = esc(&s.misfire),
            kind = esc(kind),
            queue = esc(queue),
            state = paused_badge(s.paused),
        );
        if look.viewer.admin {
            let base = format!("/ui/schedules/{}", url(&s.name));
            let toggle = if s.paused {
                ("resume", "Resume")
            } else {
                ("pause", "Pause")
            };
            t.push_str(&button_form(
                &format!("{base}/{}", toggle.0),
                csrf,
                toggle.1,
                "small",
            ));
            t.push_str(&button_form(
                &format!("{base}/trigger"),
                csrf,
                "Run now",
                "small",
            ));
            let pretty = serde_json::to_string_pretty(&template).unwrap_or_default();
            let misfire_options: String = ["skip", "fire_once", "catch_up"]
                .iter()
                .map(|m| {
                    let sel = if *m == s.misfire { " selected" } else { "" };
                    format!("<option{sel}>{m}</option>")
                })
                .collect();
            let _ = write!(
                t,
                "<details class=edit><summary>Edit</summary>\
                 <form method=post action=\"{base}/edit\" class=grid>\
                 <input type=hidden name=csrf value=\"{csrf}\">\
                 <label>Cron <input name=cron required value=\"{cron}\"></label>\
                 <label>Time zone <input name=timezone required value=\"{tz}\"></label>\
                 <label>Misfire <select name=misfire>{misfire_options}</select></label>\
                 <label>Catch-up limit <input name=catch_up_limit inputmode=numeric value=\"{limit}\"></label>\
                 <label class=wide>Task template (JSON) <textarea name=task rows=5>{task}</textarea></label>\
                 <button type=submit class=primary>Save</button></form></details>",
                csrf = esc(csrf),
                cron = esc(&s.cron),
                tz = esc(&s.timezone),
                limit = s.catch_up_limit,
                task = esc(&pretty),
            );
        }
        t.push_str("</td></tr>");
    }
    t.push_str("</tbody></table>");
    page.live = t;
    ui.render(&look, page)
}

/// `POST /ui/schedules/{name}/{pause|resume|trigger|edit}`.
pub(crate) async fn schedule_action(
    State(ui): State<Arc<Ui>>,
    Path((name, action)): Path<(String, String)>,
    req: Request,
) -> Response {
    let p = match posted(&ui, req).await {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let back = p.back("/ui/schedules");
    let path = format!("/v1/schedules/{}", url(&name));
    let shown = name.clone();
    match action.as_str() {
        "pause" | "resume" | "trigger" => {
            let msg = match action.as_str() {
                "pause" => format!("Schedule {shown} paused."),
                "resume" => format!("Schedule {shown} resumed."),
                _ => format!("Schedule {shown} fired now."),
            };
            act_and_return(
                &ui,
                &p,
                Method::POST,
                &format!("{path}/{action}"),
                None,
                &back,
                move |_| msg,
            )
            .await
        }
        "edit" => {
            let mut body = serde_json::Map::new();
            for field in ["cron", "timezone", "misfire"] {
                if let Some(v) = p.get(field) {
                    body.insert(field.into(), v.into());
                }
            }
            if let Some(v) = p.get("catch_up_limit") {
                body.insert(
                    "catch_up_limit".into(),
                    v.parse::<u64>().map_or_else(|_| v.into(), Into::into),
                );
            }
            if let Some(task) = p.get("task") {
                match serde_json::from_str::<serde_json::Value>(task) {
                    Ok(v) => {
                        body.insert("task".into(), v);
                    }
                    Err(e) => {
                        return super::flash_back(
                            &ui,
                            &back,
                            &format!("Refused: task: the template is not JSON ({e})"),
                        );
                    }
                }
            }
            act_and_return(
                &ui,
                &p,
                Method::PATCH,
                &path,
                Some(body.into()),
                &back,
                move |_| format!("Schedule {shown} saved."),
            )
            .await
        }
        _ => super::refusal_page(
            axum::http::StatusCode::NOT_FOUND,
            "There is no such schedule action.",
        ),
    }
}

/// `GET /ui/cluster`: this replica, the leader, and every replica the
/// store knows.
pub(crate) async fn cluster(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    let look = match ui.look(&headers) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let mut page = Page::new("Cluster", "/ui/cluster");
    let Some(cluster) = ui.app.config.cluster.clone() else {
        page.live = format!(
            "<p>This server runs alone on its store ({}): it leads from start to stop, with no \
             replicas. Run several <code>dispatch server --store postgres://…</code> to share one \
             database between replicas.</p>",
            esc(&ui.app.config.store_name)
        );
        return ui.render(&look, page);
    };
    let store = ui.app.store.clone();
    let replicas = match tokio::task::spawn_blocking(move || store.list_replicas()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            page.live = format!(
                "<p class=error>Cannot read the replicas: {}</p>",
                esc(&e.to_string())
            );
            return ui.render(&look, page);
        }
        Err(e) => {
            page.live = format!("<p class=error>{}</p>", esc(&e.to_string()));
            return ui.render(&look, page);
        }
    };
    let now = wall_ms();
    let me = &cluster.replica;
    let mut t = format!(
        "<p>This page is served by the leader, <b>{}</b>, in term (epoch) <b>{}</b>. \
         Standbys forward every request to it; the lease is {} ms.</p>\
         <table><thead><tr><th>Replica</th><th>URL</th><th>Role</th><th>Last seen</th>\
         <th>Alive</th></tr></thead><tbody>",
        esc(&me.id),
        ui.app.epoch.unwrap_or(0),
        cluster.lease_ms
    );
    for r in &replicas {
        let leader = r.id == me.id;
        let alive = now.saturating_sub(r.last_seen_at) <= 2 * cluster.lease_ms;
        let _ = write!(
            t,
            "<tr><td>{}</td><td class=mono>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.id),
            esc(&r.url),
            if leader {
                "<span class=\"badge s-active\">leader</span>"
            } else {
                "standby"
            },
            time_cell(Some(r.last_seen_at), now),
            if alive {
                "yes"
            } else {
                "<span class=error>no</span>"
            },
        );
    }
    t.push_str("</tbody></table>");
    page.live = t;
    ui.render(&look, page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_fires_are_shown_in_the_schedules_zone() {
        // 2026-03-07 12:00 UTC; New York changes to daylight time on the 8th.
        let now = 1_772_884_800_000;
        let fires = next_fires("0 9 * * *", "America/New_York", now, 3);
        assert_eq!(
            fires,
            [
                "2026-03-07 09:00:00 EST",
                "2026-03-08 09:00:00 EDT",
                "2026-03-09 09:00:00 EDT"
            ]
        );
        assert!(next_fires("nope", "UTC", now, 3).is_empty());
    }
}
