//! The dashboard in a real browser: Debian's chromium, driven through
//! chromium-driver (thirtyfour), against the real binary with seeded data.
//!
//! Every page renders its rows without error text; a cancel, a retry, a
//! bulk retry, a queue pause and a schedule edit made by clicking show in
//! the API; sign-in with an admin token and with a read-only one. Each
//! page's screenshot is written to `target/ui-screenshots/`.
//!
//! These tests need `chromium` and `chromedriver` (Debian: `apt-get install
//! chromium chromium-driver`, which `.ci/run` does); without them they
//! fail, saying so.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Api, Server, create_token, free_port, id_of};
use serde_json::{Value, json};
use thirtyfour::prelude::*;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Generous: the machine running the tests may be loaded.
const WAIT: Duration = Duration::from_secs(20);

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// A chromedriver process on a free port, in its own process group, killed
/// with every browser it started when dropped (also when a test panics).
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        assert!(
            Path::new(CHROMIUM).is_file(),
            "the browser tests need Debian's chromium at {CHROMIUM}: apt-get install chromium chromium-driver"
        );
        let driver = on_path("chromedriver").unwrap_or_else(|| {
            panic!("the browser tests need chromedriver on PATH: apt-get install chromium-driver")
        });
        let port = free_port();
        let mut cmd = Command::new(driver);
        cmd.arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("start chromedriver");
        let d = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        common::install_crypto_provider();
        let http = reqwest::Client::new();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(r) = http.get(format!("{}/status", d.url)).send().await
                && r.status().is_success()
            {
                return d;
            }
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn browser(&self) -> WebDriver {
        let mut caps = DesiredCapabilities::chrome();
        caps.set_binary(CHROMIUM).unwrap();
        for arg in [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1400,1000",
            "--hide-scrollbars",
        ] {
            caps.add_arg(arg).unwrap();
        }
        WebDriver::new(&self.url, caps)
            .await
            .expect("a chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browsers it started.
        let pid = self.child.id() as i32;
        if let Some(group) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Opens `path`, waits for `selector`, checks the page shows no error and
/// saves its screenshot as `name`.
async fn visit(b: &WebDriver, base: &str, path: &str, selector: &str, name: &str) {
    b.goto(format!("{base}{path}")).await.unwrap();
    wait_for(b, selector).await;
    let errors = b.find_all(By::Css(".error")).await.unwrap();
    let mut texts = Vec::new();
    for e in errors {
        texts.push(e.text().await.unwrap_or_default());
    }
    assert!(texts.is_empty(), "{path} shows errors: {texts:?}");
    b.screenshot(&screenshots().join(format!("{name}.png")))
        .await
        .unwrap();
}

async fn wait_for(b: &WebDriver, selector: &str) -> WebElement {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(e) = b.find(By::Css(selector)).await {
            return e;
        }
        if Instant::now() > deadline {
            let url = b
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default();
            let src = b.source().await.unwrap_or_default();
            panic!("{selector} not found on {url}: {src}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the message of the last action contains `text`.
async fn flash(b: &WebDriver, text: &str) {
    let f = wait_for(b, ".flash").await;
    let shown = f.text().await.unwrap();
    assert!(
        shown.contains(text),
        "the page says {shown:?}, not {text:?}"
    );
}

/// Clicks the button of the form posting to an action ending in `action`
/// within `scope`.
async fn click_action(b: &WebDriver, scope: &str, action: &str) {
    let selector = format!("{scope} form[action*='{action}'] button");
    wait_for(b, &selector).await.click().await.unwrap();
}

async fn until(api: &Api, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let t = api.task(id).await;
        if pred(&t) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} never became {what}: {t}"
        );
        tokio::time::sleep(common::POLL_EVERY).await;
    }
}

async fn queue_paused(api: &Api, name: &str) -> bool {
    let q = api.get("/v1/queues").await.expect(200);
    q["queues"]
        .as_array()
        .unwrap()
        .iter()
        .any(|q| q["name"] == name && q["paused"] == true)
}

/// Tasks in every state, a worker, queues and a schedule.
struct Seeded {
    ok: Vec<String>,
    dead: Vec<String>,
    idle: String,
    child: String,
    _heartbeat: tokio::task::JoinHandle<()>,
}

async fn seed(api: &Api) -> Seeded {
    let worker = api
        .post(
            "/v1/workers",
            json!({"name": "render-1", "types": ["ui.ok", "ui.fail"],
                   "labels": {"zone": "eu-west"}, "capacity": 4}),
        )
        .await
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let beat = {
        let (api, worker) = (api.clone(), worker.clone());
        tokio::spawn(async move {
            loop {
                let _ = api.heartbeat(&worker).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let ok: Vec<String> = futures_ids(api, "ui.ok", "default", 3, json!({})).await;
    let dead = futures_ids(api, "ui.fail", "mail", 2, json!({"max_attempts": 1})).await;
    let mut collected = Vec::new();
    while collected.len() < 5 {
        for t in api.poll(&worker, 4, 2_000).await {
            let id = id_of(&t);
            if dead.contains(&id) {
                api.fail(
                    &id,
                    &worker,
                    "smtp: connection refused by mx.example",
                    json!({}),
                )
                .await
                .expect(200);
            } else if id != ok[2] {
                api.complete(&id, &worker, json!({"pages": 12, "bytes": 48213}))
                    .await
                    .expect(200);
            }
            collected.push(id);
        }
    }
    let idle = id_of(
        &api.submit(json!({"type": "ui.idle", "queue": "reports",
                            "payload": {"report": "weekly", "format": "pdf"},
                            "idempotency_key": "weekly-report-49"}))
            .await,
    );
    let child = id_of(
        &api.submit(json!({"type": "ui.idle", "queue": "reports", "depends_on": [idle]}))
            .await,
    );
    api.post(
        "/v1/schedules",
        json!({"name": "nightly-report", "cron": "0 3 * * *", "timezone": "Europe/Paris",
               "task": {"type": "ui.idle", "queue": "reports"}}),
    )
    .await
    .expect(201);
    Seeded {
        ok,
        dead,
        idle,
        child,
        _heartbeat: beat,
    }
}

async fn futures_ids(api: &Api, kind: &str, queue: &str, n: usize, extra: Value) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let mut t = json!({"type": kind, "queue": queue, "payload": {"n": i}});
        for (k, v) in extra.as_object().unwrap() {
            t[k] = v.clone();
        }
        ids.push(id_of(&api.submit(t).await));
    }
    ids
}

#[tokio::test]
async fn every_page_renders_and_clicks_act_through_the_api() {
    let driver = Driver::start().await;
    let server = Server::start().await;
    let api = server.api();
    let seeded = seed(&api).await;
    let base = server.url.clone();
    let b = driver.browser().await;

    // Every page, with its seeded rows.
    visit(&b, &base, "/ui", "tr[data-queue='reports']", "overview").await;
    let chart = wait_for(&b, "svg.chart").await;
    assert_eq!(chart.find_all(By::Css("polyline")).await.unwrap().len(), 3);
    let legend = wait_for(&b, ".legend").await.text().await.unwrap();
    assert!(legend.contains("succeeded 2 in 15 min"), "{legend}");
    visit(
        &b,
        &base,
        "/ui/tasks",
        &format!("tr[data-task='{}']", seeded.ok[0]),
        "tasks",
    )
    .await;
    visit(
        &b,
        &base,
        &format!("/ui/tasks/{}", seeded.ok[0]),
        "tr[data-attempt='1']",
        "task",
    )
    .await;
    let body = b.find(By::Css("main")).await.unwrap().text().await.unwrap();
    assert!(body.contains("48213"), "the result is shown: {body}");
    let attempt = wait_for(&b, "tr[data-attempt='1']")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        attempt.contains("render-1") && attempt.contains("succeeded"),
        "{attempt}"
    );
    visit(&b, &base, "/ui/workers", "meter", "workers").await;
    let workers = b.find(By::Css("main")).await.unwrap().text().await.unwrap();
    for expected in ["render-1", "HTTP", "zone=eu-west", "1/4"] {
        assert!(workers.contains(expected), "{expected} in {workers}");
    }
    visit(
        &b,
        &base,
        "/ui/queues",
        "tr[data-queue='reports']",
        "queues",
    )
    .await;
    visit(
        &b,
        &base,
        "/ui/schedules",
        "tr[data-schedule='nightly-report']",
        "schedules",
    )
    .await;
    let fires = wait_for(&b, "td.fires").await.text().await.unwrap();
    assert!(
        fires.contains("03:00:00 CET") || fires.contains("03:00:00 CEST"),
        "{fires}"
    );
    visit(&b, &base, "/ui/cluster", "main p", "cluster").await;

    // Filters: the dead letters of one queue, by text in their error.
    visit(
        &b,
        &base,
        "/ui/tasks?state=dead&queue=mail&error=REFUSED",
        &format!("tr[data-task='{}']", seeded.dead[1]),
        "dead-letters",
    )
    .await;
    assert_eq!(b.find_all(By::Css("tr[data-task]")).await.unwrap().len(), 2);
    // By idempotency key, typed into the form.
    b.goto(format!("{base}/ui/tasks")).await.unwrap();
    let key = wait_for(&b, "input[name=key]").await;
    key.send_keys("weekly-report-49").await.unwrap();
    wait_for(&b, "#filters button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
    wait_for(&b, &format!("tr[data-task='{}']", seeded.idle)).await;
    assert_eq!(b.find_all(By::Css("tr[data-task]")).await.unwrap().len(), 1);

    // A task's page lists its parent; cancel the parent by clicking.
    visit(
        &b,
        &base,
        &format!("/ui/tasks/{}", seeded.child),
        "ul.deps a",
        "task-with-parent",
    )
    .await;
    b.goto(format!("{base}/ui/tasks/{}", seeded.idle))
        .await
        .unwrap();
    click_action(&b, ".task-head", "/cancel").await;
    flash(&b, "cancelled").await;
    until(&api, &seeded.idle, "cancelled", |t| {
        t["state"] == "cancelled"
    })
    .await;
    // Its child was cancelled with it.
    until(&api, &seeded.child, "cancelled", |t| {
        t["state"] == "cancelled"
    })
    .await;

    // Retry one dead letter from the list.
    b.goto(format!("{base}/ui/tasks?state=dead&queue=mail"))
        .await
        .unwrap();
    click_action(&b, &format!("tr[data-task='{}']", seeded.dead[0]), "/retry").await;
    flash(&b, "requeued").await;
    until(&api, &seeded.dead[0], "requeued", |t| t["state"] != "dead").await;
    // Retry all that match, after a confirmation naming how many.
    wait_for(&b, "#retry-matching").await.click().await.unwrap();
    let n = wait_for(&b, "#retry-count").await.text().await.unwrap();
    assert_eq!(n, "1");
    b.screenshot(&screenshots().join("retry-confirmation.png"))
        .await
        .unwrap();
    // The confirmation answers a POST: it is not refreshed away.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        wait_for(&b, "#retry-count").await.text().await.unwrap(),
        "1"
    );
    wait_for(&b, "#confirm-retry").await.click().await.unwrap();
    flash(&b, "Requeued 1 dead task in queue mail").await;
    until(&api, &seeded.dead[1], "requeued", |t| t["state"] != "dead").await;

    // Pause a queue.
    assert!(!queue_paused(&api, "default").await);
    b.goto(format!("{base}/ui/queues")).await.unwrap();
    click_action(&b, "tr[data-queue='default']", "/pause").await;
    flash(&b, "Queue default paused").await;
    assert!(queue_paused(&api, "default").await);
    wait_for(&b, "tr[data-queue='default'] .s-paused").await;

    // Edit a queue's settings: the cap is in force in the API.
    b.goto(format!("{base}/ui/queues")).await.unwrap();
    wait_for(&b, "tr[data-queue='mail'] summary")
        .await
        .click()
        .await
        .unwrap();
    let cap = wait_for(&b, "tr[data-queue='mail'] input[name=max_running]").await;
    cap.clear().await.unwrap();
    cap.send_keys("7").await.unwrap();
    wait_for(&b, "tr[data-queue='mail'] form[action$='/edit'] button")
        .await
        .click()
        .await
        .unwrap();
    flash(&b, "Queue mail saved").await;
    let queues = api.get("/v1/queues").await.expect(200);
    let mail = queues["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["name"] == "mail")
        .cloned()
        .expect("queue mail listed");
    assert_eq!(mail["max_running"], 7, "{mail}");

    // Edit a schedule, then pause it, by clicking.
    b.goto(format!("{base}/ui/schedules")).await.unwrap();
    wait_for(&b, "tr[data-schedule='nightly-report'] summary")
        .await
        .click()
        .await
        .unwrap();
    let cron = wait_for(&b, "tr[data-schedule='nightly-report'] input[name=cron]").await;
    cron.clear().await.unwrap();
    cron.send_keys("30 4 * * *").await.unwrap();
    wait_for(
        &b,
        "tr[data-schedule='nightly-report'] form[action$='/edit'] button",
    )
    .await
    .click()
    .await
    .unwrap();
    flash(&b, "Schedule nightly-report saved").await;
    let s = api.get("/v1/schedules/nightly-report").await.expect(200);
    assert_eq!(s["cron"], "30 4 * * *");
    b.goto(format!("{base}/ui/schedules")).await.unwrap();
    click_action(&b, "tr[data-schedule='nightly-report']", "/pause").await;
    flash(&b, "Schedule nightly-report paused").await;
    let s = api.get("/v1/schedules/nightly-report").await.expect(200);
    assert_eq!(s["paused"], true, "{s}");

    // The live updates pause and resume.
    let toggle = wait_for(&b, "#live-toggle").await;
    toggle.click().await.unwrap();
    assert_eq!(toggle.text().await.unwrap(), "Resume updates");
    toggle.click().await.unwrap();
    assert_eq!(toggle.text().await.unwrap(), "Pause updates");
    // The live part follows the API without a reload.
    b.goto(format!("{base}/ui/queues")).await.unwrap();
    wait_for(&b, "tr[data-queue='default'] .s-paused").await;
    api.post_empty("/v1/queues/default/resume")
        .await
        .expect(200);
    wait_for(&b, "tr[data-queue='default'] .s-active").await;

    b.quit().await.unwrap();
    drop(seeded);
}

#[tokio::test]
async fn an_admin_acts_and_a_read_only_token_only_looks() {
    let driver = Driver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let admin = create_token(&file, "admin", "ops");
    let reader = create_token(&file, "submit", "viewer");
    let server = Server::with_args(&["--tokens", file.to_str().unwrap()]).await;
    let base = server.url.clone();
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/v1/tasks"))
        .bearer_auth(&admin)
        .json(&json!({"type": "ui.t", "queue": "billing"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let task: Value = r.json().await.unwrap();
    let id = id_of(&task);
    let b = driver.browser().await;

    // Any page sends to the sign-in form first.
    b.goto(format!("{base}/ui/queues")).await.unwrap();
    wait_for(&b, "#token").await;
    b.screenshot(&screenshots().join("login.png"))
        .await
        .unwrap();
    // A wrong token is refused.
    wait_for(&b, "#token")
        .await
        .send_keys("dsp_wrong")
        .await
        .unwrap();
    wait_for(&b, "#sign-in").await.click().await.unwrap();
    let e = wait_for(&b, ".error").await.text().await.unwrap();
    assert!(e.contains("not valid"), "{e}");

    // The admin.
    wait_for(&b, "#token")
        .await
        .send_keys(&admin)
        .await
        .unwrap();
    wait_for(&b, "#sign-in").await.click().await.unwrap();
    let who = wait_for(&b, ".who").await.text().await.unwrap();
    assert_eq!(who, "ops");
    b.goto(format!("{base}/ui/queues")).await.unwrap();
    click_action(&b, "tr[data-queue='billing']", "/pause").await;
    flash(&b, "Queue billing paused").await;
    let api = Api::new(&base);
    let queues = http
        .get(format!("{base}/v1/queues"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert!(
        queues["queues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["name"] == "billing" && q["paused"] == true),
        "{queues}"
    );
    drop(api);
    wait_for(&b, "form[action='/ui/logout'] button")
        .await
        .click()
        .await
        .unwrap();
    wait_for(&b, "#token").await;

    // The read-only token sees the same pages without a single button.
    wait_for(&b, "#token")
        .await
        .send_keys(&reader)
        .await
        .unwrap();
    wait_for(&b, "#sign-in").await.click().await.unwrap();
    let who = wait_for(&b, ".who").await.text().await.unwrap();
    assert_eq!(who, "viewer read-only");
    for (path, selector) in [
        ("/ui".to_owned(), "tr[data-queue='billing']".to_owned()),
        (
            "/ui/queues".to_owned(),
            "tr[data-queue='billing']".to_owned(),
        ),
        ("/ui/tasks".to_owned(), format!("tr[data-task='{id}']")),
        (format!("/ui/tasks/{id}"), ".task-head".to_owned()),
    ] {
        b.goto(format!("{base}{path}")).await.unwrap();
        wait_for(&b, &selector).await;
        let forms = b.find_all(By::Css("main form[method=post]")).await.unwrap();
        assert!(forms.is_empty(), "{path} offers {} actions", forms.len());
        assert!(
            b.find_all(By::Css("details.edit"))
                .await
                .unwrap()
                .is_empty()
        );
    }
    b.screenshot(&screenshots().join("task-read-only.png"))
        .await
        .unwrap();
    b.quit().await.unwrap();
}
