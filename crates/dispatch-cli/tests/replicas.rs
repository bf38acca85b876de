//! Several `dispatch server` replicas on one PostgreSQL database, as real
//! processes on loopback: any replica serves everything, a killed or
//! frozen leader is replaced without losing an acknowledged task, cron
//! fires once per fire across a leader kill, and a restarted database is
//! survived without restarting Dispatch.
//!
//! The database server is the one `./scripts/test` starts
//! (`DISPATCH_TEST_POSTGRES`), a fresh database per test; the test that
//! restarts PostgreSQL starts a cluster of its own.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Server;
use common::postgres;
use serde_json::{Value, json};

/// A plain client that shows every answer, 5xx included.
fn http() -> reqwest::Client {
    common::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("client")
}

async fn health(client: &reqwest::Client, url: &str) -> Option<Value> {
    let r = client.get(format!("{url}/healthz")).send().await.ok()?;
    r.json().await.ok()
}

struct Replicas {
    servers: Vec<Server>,
    /// Which of them were killed (and must not be asked).
    dead: BTreeSet<usize>,
    client: reqwest::Client,
}

impl Replicas {
    /// `n` replicas on `store` (a postgres:// URL) with extra arguments.
    async fn start(n: usize, store: &str, extra: &[&str]) -> Replicas {
        let mut args = vec!["--store", store, "--lease-ms", "30000"];
        args.extend_from_slice(extra);
        let first = Server::with_args(&args).await;
        let mut servers = vec![first];
        for _ in 1..n {
            let next = servers[0].sibling().await;
            servers.push(next);
        }
        Replicas {
            servers,
            dead: BTreeSet::new(),
            client: http(),
        }
    }

    fn urls(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.url.clone()).collect()
    }

    /// The one leader every live replica names, once they agree.
    async fn leader(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let mut leaders = Vec::new();
            let mut named = BTreeSet::new();
            for (i, s) in self.servers.iter().enumerate() {
                if self.dead.contains(&i) {
                    continue;
                }
                let h = health(&self.client, &s.url).await.unwrap_or(Value::Null);
                if h["role"] == "leader" {
                    leaders.push(i);
                }
                named.insert(h["leader_url"].as_str().unwrap_or("").to_owned());
            }
            if let [one] = leaders.as_slice()
                && named.len() == 1
                && named.contains(&self.servers[*one].url)
            {
                return *one;
            }
            assert!(
                Instant::now() < deadline,
                "no single leader within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn kill(&mut self, i: usize) {
        self.servers[i].kill();
        self.dead.insert(i);
    }
}

/// Sends `body` to the first of `urls` that answers (a replica that is
/// down is skipped); answers its status and body. 503s are answered too.
async fn send(
    client: &reqwest::Client,
    urls: &[String],
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> Option<(u16, Value)> {
    for url in urls {
        let mut req = client.request(method.clone(), format!("{url}{path}"));
        if let Some(b) = body {
            req = req.json(b);
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let v = r.json().await.unwrap_or(Value::Null);
                return Some((status, v));
            }
            Err(e) if e.is_connect() => continue,
            Err(_) => return None,
        }
    }
    None
}

/// Any replica serves every endpoint: a task submitted through one
/// standby is run by a worker talking to the other standby, and all three
/// read it back; `/v1/cluster` lists them with one leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_postgres_serve_from_any() {
    let db = postgres::fresh_database();
    let r = Replicas::start(3, &db, &[]).await;
    let leader = r.leader(Duration::from_secs(20)).await;
    let urls = r.urls();
    let standbys: Vec<&String> = (0..3).filter(|&i| i != leader).map(|i| &urls[i]).collect();
    let c = &r.client;

    let (status, task) = send(
        c,
        &[standbys[0].clone()],
        reqwest::Method::POST,
        "/v1/tasks",
        Some(&json!({"type": "job", "payload": {"n": 1}})),
    )
    .await
    .expect("answer");
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().expect("id").to_owned();

    let other = [standbys[1].clone()];
    let (status, reg) = send(
        c,
        &other,
        reqwest::Method::POST,
        "/v1/workers",
        Some(&json!({"types": ["job"], "capacity": 2})),
    )
    .await
    .expect("answer");
    assert_eq!(status, 201, "{reg}");
    let w = reg["id"].as_str().expect("id").to_owned();
    let (status, polled) = send(
        c,
        &other,
        reqwest::Method::POST,
        &format!("/v1/workers/{w}/poll"),
        Some(&json!({"max": 1, "wait_ms": 5000})),
    )
    .await
    .expect("answer");
    assert_eq!(status, 200, "{polled}");
    assert_eq!(polled["tasks"][0]["id"], id.as_str());
    let (status, done) = send(
        c,
        &other,
        reqwest::Method::POST,
        &format!("/v1/workers/{w}/poll"),
        Some(&json!({"max": 0, "results": [{"task_id": id, "result": {"ok": true}}]})),
    )
    .await
    .expect("answer");
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["results"][0]["state"], "succeeded", "{done}");
    for url in &urls {
        let (status, t) = send(
            c,
            std::slice::from_ref(url),
            reqwest::Method::GET,
            &format!("/v1/tasks/{id}"),
            None,
        )
        .await
        .expect("answer");
        assert_eq!(
            (status, t["state"].as_str()),
            (200, Some("succeeded")),
            "via {url}"
        );
    }
    let (status, cluster) = send(
        c,
        &[standbys[1].clone()],
        reqwest::Method::GET,
        "/v1/cluster",
        None,
    )
    .await
    .expect("answer");
    assert_eq!(status, 200);
    let replicas = cluster["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 3, "{cluster}");
    let leaders: Vec<&Value> = replicas.iter().filter(|x| x["role"] == "leader").collect();
    assert_eq!(leaders.len(), 1, "{cluster}");
    assert_eq!(leaders[0]["url"], urls[leader].as_str());
}

/// What the worker of the load test saw.
#[derive(Default)]
struct Seen {
    /// Executions per task id.
    runs: BTreeMap<String, u32>,
    /// When it first got a task after the leader was killed.
    first_after_kill: Option<Instant>,
}

/// A worker that runs every task at once, names what it runs, keeps its
/// results until a poll carrying them is answered, moves to the next
/// replica when one is down, and registers again when it is unknown.
async fn work(
    client: reqwest::Client,
    urls: Vec<String>,
    seen: Arc<Mutex<Seen>>,
    killed_at: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
) {
    let mut id: Option<String> = None;
    let mut results: Vec<Value> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Some(w) = id.clone() else {
            match send(
                &client,
                &urls,
                reqwest::Method::POST,
                "/v1/workers",
                Some(&json!({"types": ["job"], "capacity": 64})),
            )
            .await
            {
                Some((201, reg)) => id = reg["id"].as_str().map(str::to_owned),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            continue;
        };
        let body = json!({"max": 64, "wait_ms": 500, "results": results, "running": []});
        match send(
            &client,
            &urls,
            reqwest::Method::POST,
            &format!("/v1/workers/{w}/poll"),
            Some(&body),
        )
        .await
        {
            Some((200, reply)) => {
                results.clear();
                let tasks = reply["tasks"].as_array().cloned().unwrap_or_default();
                if !tasks.is_empty() {
                    let mut seen = seen.lock().expect("seen");
                    if seen.first_after_kill.is_none() && killed_at.lock().expect("kill").is_some()
                    {
                        seen.first_after_kill = Some(Instant::now());
                    }
                    for t in tasks {
                        let tid = t["id"].as_str().expect("id").to_owned();
                        *seen.runs.entry(tid.clone()).or_default() += 1;
                        results.push(json!({"task_id": tid, "result": null}));
                    }
                }
            }
            Some((404, _)) => {
                id = None;
                results.clear();
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// `kill -9` of the leader under load: every task a replica acknowledged
/// is there and runs to the end, none runs twice (its worker lived), and
/// the time from the kill to the first task handed out by the new leader
/// is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_under_load_loses_nothing_acknowledged() {
    let db = postgres::fresh_database();
    let mut r = Replicas::start(3, &db, &[]).await;
    let leader = r.leader(Duration::from_secs(20)).await;
    let urls = r.urls();
    // Everyone is given every replica, the leader last, as a user would.
    let mut order: Vec<String> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| urls[i].clone())
        .collect();
    order.push(urls[leader].clone());

    let seen = Arc::new(Mutex::new(Seen::default()));
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let stop_work = Arc::new(AtomicBool::new(false));
    let worker = tokio::spawn(work(
        r.client.clone(),
        order.clone(),
        seen.clone(),
        killed_at.clone(),
        stop_work.clone(),
    ));

    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop_submit = Arc::new(AtomicBool::new(false));
    let submitter = {
        let (client, order, acked, stop) = (
            r.client.clone(),
            order.clone(),
            acked.clone(),
            stop_submit.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 200 {
                let tasks: Vec<Value> = (0..10)
                    .map(|k| json!({"type": "job", "payload": {"n": n * 10 + k}}))
                    .collect();
                match send(
                    &client,
                    &order,
                    reqwest::Method::POST,
                    "/v1/tasks/batch",
                    Some(&json!({"tasks": tasks})),
                )
                .await
                {
                    Some((201, reply)) => {
                        let ids = reply["tasks"]
                            .as_array()
                            .expect("tasks")
                            .iter()
                            .map(|t| t["id"].as_str().expect("id").to_owned());
                        acked.lock().expect("acked").extend(ids);
                        n += 1;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
    };

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = acked.lock().expect("acked").len();
    assert!(before > 0, "tasks flowed before the kill");
    r.kill(leader);
    let kill = Instant::now();
    *killed_at.lock().expect("kill") = Some(kill);
    let next = r.leader(Duration::from_secs(30)).await;
    assert_ne!(next, leader);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_submit.store(true, Ordering::Relaxed);
    submitter.await.expect("submitter");
    let acked: Vec<String> = acked.lock().expect("acked").clone();
    assert!(acked.len() > before, "tasks flowed after the takeover");

    // Every acknowledged task runs to the end.
    let live: Vec<String> = (0..3)
        .filter(|i| !r.dead.contains(i))
        .map(|i| urls[i].clone())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &acked {
        loop {
            let got = send(
                &r.client,
                &live,
                reqwest::Method::GET,
                &format!("/v1/tasks/{id}"),
                None,
            )
            .await;
            match got {
                Some((200, t)) if t["state"] == "succeeded" => break,
                Some((404, t)) => panic!("acknowledged task {id} is gone: {t}"),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "task {id} did not succeed in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop_work.store(true, Ordering::Relaxed);
    worker.await.expect("worker");
    let seen = seen.lock().expect("seen");
    let twice: Vec<(&String, &u32)> = seen.runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "tasks ran twice though their worker lived: {twice:?}"
    );
    let takeover = seen
        .first_after_kill
        .map(|t| t.duration_since(kill))
        .expect("the new leader handed out tasks");
    eprintln!(
        "takeover: {} ms from kill -9 of the leader to the first task handed out by the new one ({} tasks acknowledged, {} before the kill)",
        takeover.as_millis(),
        acked.len(),
        before
    );
}

/// A leader frozen (SIGSTOP) past its lease is replaced; woken up
/// (SIGCONT), it writes nothing (a task it had scheduled and the new leader
/// ran keeps the new leader's outcome) and stands by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_fenced_and_steps_down_when_it_wakes() {
    let db = postgres::fresh_database();
    let r = Replicas::start(3, &db, &["--leader-lease-ms", "1500"]).await;
    let leader = r.leader(Duration::from_secs(20)).await;
    let urls = r.urls();
    let c = &r.client;
    // Due while the leader is frozen: its timer would move it.
    let (status, task) = send(
        c,
        &[urls[leader].clone()],
        reqwest::Method::POST,
        "/v1/tasks",
        Some(&json!({"type": "job", "payload": {}, "delay_ms": 2500})),
    )
    .await
    .expect("answer");
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().expect("id").to_owned();

    // Frozen under load: most likely in the middle of a write
    // transaction, holding its fence's lock on the lease row.
    let load = {
        let (client, url) = (c.clone(), urls[leader].clone());
        tokio::spawn(async move {
            loop {
                let tasks: Vec<Value> = (0..50)
                    .map(|n| json!({"type": "load", "payload": n}))
                    .collect();
                let _ = client
                    .post(format!("{url}/v1/tasks/batch"))
                    .json(&json!({"tasks": tasks}))
                    .send()
                    .await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.servers[leader].signal("STOP");
    let others: Vec<String> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| urls[i].clone())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let next = loop {
        let mut found = None;
        for (i, u) in urls.iter().enumerate() {
            if i != leader && health(c, u).await.is_some_and(|h| h["role"] == "leader") {
                found = Some(i);
            }
        }
        if let Some(i) = found {
            break i;
        }
        assert!(Instant::now() < deadline, "no standby took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The new leader runs the task to the end.
    let (_, reg) = send(
        c,
        &others,
        reqwest::Method::POST,
        "/v1/workers",
        Some(&json!({"types": ["job"]})),
    )
    .await
    .expect("answer");
    let w = reg["id"].as_str().expect("worker id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, polled) = send(
            c,
            &others,
            reqwest::Method::POST,
            &format!("/v1/workers/{w}/poll"),
            Some(&json!({"max": 1, "wait_ms": 1000})),
        )
        .await
        .expect("answer");
        assert_eq!(status, 200, "{polled}");
        if polled["tasks"][0]["id"] == id.as_str() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new leader never handed the task out"
        );
    }
    let (status, done) = send(
        c,
        &others,
        reqwest::Method::POST,
        &format!("/v1/workers/{w}/poll"),
        Some(&json!({"max": 0, "results": [{"task_id": id, "result": 1}]})),
    )
    .await
    .expect("answer");
    assert_eq!(
        (status, done["results"][0]["state"].as_str()),
        (200, Some("succeeded")),
        "{done}"
    );

    load.abort();
    r.servers[leader].signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if health(c, &urls[leader])
            .await
            .is_some_and(|h| h["role"] == "standby")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the woken leader did not step down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give its timer every chance to write, then read the task.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (status, t) = send(
        c,
        &[urls[next].clone()],
        reqwest::Method::GET,
        &format!("/v1/tasks/{id}"),
        None,
    )
    .await
    .expect("answer");
    assert_eq!(status, 200);
    assert_eq!(
        (t["state"].as_str(), t["attempts"].as_u64()),
        (Some("succeeded"), Some(1)),
        "{t}"
    );
    assert_eq!(r.leader(Duration::from_secs(10)).await, next);
    assert!(
        r.servers[leader].logs().contains("stepping down"),
        "the old leader says it stepped down:\n{}",
        r.servers[leader].logs()
    );
}

/// A schedule firing every second across a kill of the leader: one task
/// per fire time, never two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_every_second_across_a_leader_kill_fires_once_per_fire() {
    let db = postgres::fresh_database();
    let mut r = Replicas::start(3, &db, &["--leader-lease-ms", "1500"]).await;
    let leader = r.leader(Duration::from_secs(20)).await;
    let urls = r.urls();
    let (status, s) = send(
        &r.client,
        &urls,
        reqwest::Method::POST,
        "/v1/schedules",
        Some(&json!({"name": "tick", "cron": "* * * * * *", "task": {"type": "tick"}, "misfire": "catch_up", "catch_up_limit": 100})),
    )
    .await
    .expect("answer");
    assert_eq!(status, 201, "{s}");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    r.kill(leader);
    let next = r.leader(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let live = vec![urls[next].clone()];
    let (status, list) = send(
        &r.client,
        &live,
        reqwest::Method::GET,
        "/v1/tasks?type=tick&limit=1000",
        None,
    )
    .await
    .expect("answer");
    assert_eq!(status, 200, "{list}");
    let tasks = list["tasks"].as_array().expect("tasks");
    assert!(
        tasks.len() >= 6,
        "fires before and after the kill: {}",
        tasks.len()
    );
    let mut keys = BTreeSet::new();
    for t in tasks {
        let key = t["idempotency_key"]
            .as_str()
            .expect("a fire's key")
            .to_owned();
        assert!(keys.insert(key.clone()), "fire {key} has two tasks");
    }
    // Catch-up fills the gap of the takeover: consecutive seconds.
    let mut seconds: Vec<u64> = keys
        .iter()
        .map(|k| {
            k.rsplit(':')
                .next()
                .expect("fire time")
                .parse::<u64>()
                .expect("ms")
                / 1000
        })
        .collect();
    seconds.sort_unstable();
    for pair in seconds.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "a fire was missed: {seconds:?}");
    }
}

/// PostgreSQL restarted under load: submissions fail while it is down and
/// succeed again once it is back, without restarting any replica; nothing
/// acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_database_is_survived_without_restarting_dispatch() {
    let cluster = postgres::Cluster::start();
    let db = postgres::fresh_database_on(&cluster.url());
    let r = Replicas::start(2, &db, &["--leader-lease-ms", "1500"]).await;
    r.leader(Duration::from_secs(20)).await;
    let urls = r.urls();
    let mut acked = Vec::new();
    let submit = |n: u64| json!({"type": "job", "payload": {"n": n}});
    for n in 0..20 {
        if let Some((201, t)) = send(
            &r.client,
            &urls,
            reqwest::Method::POST,
            "/v1/tasks",
            Some(&submit(n)),
        )
        .await
        {
            acked.push(t["id"].as_str().expect("id").to_owned());
        }
    }
    assert_eq!(acked.len(), 20);
    cluster.stop();
    let (status, _) = send(
        &r.client,
        &urls,
        reqwest::Method::POST,
        "/v1/tasks",
        Some(&submit(99)),
    )
    .await
    .expect("an answer, not a hang");
    assert!(
        status >= 500,
        "a write while the database is down is refused: {status}"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    cluster.start_again();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 100;
    loop {
        if let Some((201, t)) = send(
            &r.client,
            &urls,
            reqwest::Method::POST,
            "/v1/tasks",
            Some(&submit(n)),
        )
        .await
        {
            acked.push(t["id"].as_str().expect("id").to_owned());
            break;
        }
        n += 1;
        assert!(
            Instant::now() < deadline,
            "Dispatch did not recover from the database restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = r.leader(Duration::from_secs(20)).await;
    for id in &acked {
        let (status, t) = send(
            &r.client,
            &[urls[leader].clone()],
            reqwest::Method::GET,
            &format!("/v1/tasks/{id}"),
            None,
        )
        .await
        .expect("answer");
        assert_eq!(
            (status, t["state"].as_str()),
            (200, Some("queued")),
            "task {id}: {t}"
        );
    }
}

/// What operators changed and what attempts ran survive a takeover: the
/// new leader serves the attempt history written by the old one and loads
/// the queue settings the API stored, over the config's defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_history_and_queue_settings_survive_a_takeover() {
    let db = postgres::fresh_database();
    let mut r = Replicas::start(2, &db, &["--leader-lease-ms", "1500"]).await;
    let leader = r.leader(Duration::from_secs(20)).await;
    let urls = r.urls();
    let post = |path: &'static str, body: Value| {
        let (client, urls) = (r.client.clone(), urls.clone());
        async move {
            send(&client, &urls, reqwest::Method::POST, path, Some(&body))
                .await
                .expect("answer")
        }
    };
    let (s, w) = post(
        "/v1/workers",
        json!({"name": "pg-worker", "types": ["pg.attempts"], "labels": {}, "capacity": 1}),
    )
    .await;
    assert_eq!(s, 201, "{w}");
    let worker = w["id"].as_str().unwrap().to_owned();
    let (s, t) = post(
        "/v1/tasks",
        json!({"type": "pg.attempts", "max_attempts": 3}),
    )
    .await;
    assert_eq!(s, 201, "{t}");
    let id = t["id"].as_str().unwrap().to_owned();
    let poll = format!("/v1/workers/{worker}/poll");
    let (s, got) = send(
        &r.client,
        &urls,
        reqwest::Method::POST,
        &poll,
        Some(&json!({"max": 1, "wait_ms": 5000})),
    )
    .await
    .expect("answer");
    assert_eq!(
        (s, got["tasks"][0]["id"].clone()),
        (200, json!(id)),
        "{got}"
    );
    let fail = format!("/v1/tasks/{id}/fail");
    let (s, _) = send(
        &r.client,
        &urls,
        reqwest::Method::POST,
        &fail,
        Some(
            &json!({"worker_id": worker, "error": "before the takeover", "retry_after_ms": 60000}),
        ),
    )
    .await
    .expect("answer");
    assert_eq!(s, 200);
    let (s, q) = send(
        &r.client,
        &urls,
        reqwest::Method::PATCH,
        "/v1/queues/pg",
        Some(&json!({"weight": 4, "max_running": 2})),
    )
    .await
    .expect("answer");
    assert_eq!(s, 200, "{q}");

    r.kill(leader);
    let next = r.leader(Duration::from_secs(30)).await;
    let live = vec![urls[next].clone()];
    let (s, list) = send(
        &r.client,
        &live,
        reqwest::Method::GET,
        &format!("/v1/tasks/{id}/attempts"),
        None,
    )
    .await
    .expect("answer");
    assert_eq!(s, 200, "{list}");
    let attempts = list["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{list}");
    assert_eq!(attempts[0]["outcome"], "failed");
    assert_eq!(attempts[0]["error"], "before the takeover");
    assert_eq!(attempts[0]["worker_name"], "pg-worker");
    assert_eq!(attempts[0]["retry_delay_ms"], 60000);
    let (s, queues) = send(&r.client, &live, reqwest::Method::GET, "/v1/queues", None)
        .await
        .expect("answer");
    assert_eq!(s, 200);
    let pg = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "pg")
        .unwrap_or_else(|| panic!("no queue pg: {queues}"));
    assert_eq!(
        (pg["weight"].clone(), pg["max_running"].clone()),
        (json!(4), json!(2))
    );
}
