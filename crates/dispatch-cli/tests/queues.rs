//! Queues end to end, with the real binary: pause and resume (durable
//! across a crash), the listing with counts by state, the config file's
//! limits and default strategies, its errors, name validation, metrics and
//! the CLI commands.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Api, Server, id_of, ok, run_cli, stderr};
use serde_json::{Value, json};

/// A config file in a folder of its own, kept while the value lives.
struct ConfigFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn config_file(text: &str) -> ConfigFile {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("dispatch.toml");
    std::fs::write(&path, text).expect("write config");
    ConfigFile { _dir: dir, path }
}

/// A server started with `--config` holding `text`.
async fn server_with_config(text: &str) -> (Server, ConfigFile) {
    let file = config_file(text);
    let path = file.path.to_str().expect("utf-8 path").to_owned();
    let server = Server::with_args(&["--config", &path]).await;
    (server, file)
}

/// `GET /v1/queues` by name.
async fn queues(api: &Api) -> HashMap<String, Value> {
    let list = api.get("/v1/queues").await.expect(200);
    let queues = list["queues"].as_array().expect("queues array");
    let names: Vec<&str> = queues.iter().map(|q| q["name"].as_str().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "queues are listed by name");
    queues
        .iter()
        .map(|q| (q["name"].as_str().unwrap().to_owned(), q.clone()))
        .collect()
}

/// The counts of one queue, in contract order.
fn counts(q: &Value) -> [u64; 6] {
    let c = &q["counts"];
    [
        "scheduled",
        "queued",
        "running",
        "succeeded",
        "dead",
        "cancelled",
    ]
    .map(|s| {
        c[s].as_u64()
            .unwrap_or_else(|| panic!("no count {s} in {q}"))
    })
}

async fn register(api: &Api, kind: &str, capacity: u32, weight: u32) -> String {
    let r = api
        .post(
            "/v1/workers",
            json!({"name": "queue-test", "types": [kind], "capacity": capacity, "weight": weight,
                   "labels": {"zone": "eu"}}),
        )
        .await
        .expect(201);
    id_of(&r)
}

fn queue_of(t: &Value) -> &str {
    t["queue"].as_str().expect("queue")
}

#[tokio::test]
async fn a_paused_queue_holds_its_tasks_across_a_crash_until_resumed() {
    // The timer's idle tick is ten minutes: a resume must dispatch by
    // itself, not wait for the next tick.
    let server = Server::with_args(&["--idle-tick-ms", "600000"]).await;
    let api = server.api();
    let q = api.post_empty("/v1/queues/bulk/pause").await.expect(200);
    assert_eq!(
        (q["name"].as_str(), q["paused"].as_bool()),
        (Some("bulk"), Some(true))
    );
    let worker = register(&api, "pausing", 10, 1).await;
    for queue in ["bulk", "default", "bulk", "default", "bulk", "default"] {
        api.submit(json!({"type": "pausing", "queue": queue})).await;
    }
    // Only the other queue flows.
    let got = api.poll_n(&worker, 6, Duration::from_millis(800)).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().all(|t| queue_of(t) == "default"), "{got:?}");
    let listed = queues(&api).await;
    assert_eq!(listed["bulk"]["paused"], json!(true));
    assert_eq!(counts(&listed["bulk"]), [0, 3, 0, 0, 0, 0]);
    assert_eq!(counts(&listed["default"]), [0, 0, 3, 0, 0, 0]);
    let metrics = api.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    let metrics = metrics.text;
    for line in [
        "dispatch_queue_paused{queue=\"bulk\"} 1",
        "dispatch_queue_paused{queue=\"default\"} 0",
        "dispatch_queue_tasks{queue=\"bulk\",state=\"queued\"} 3",
        "dispatch_queue_tasks{queue=\"default\",state=\"running\"} 3",
        &format!("dispatch_worker_tasks_in_flight{{worker=\"{worker}\",name=\"queue-test\"}} 3"),
        &format!("dispatch_worker_capacity_slots{{worker=\"{worker}\",name=\"queue-test\"}} 10"),
        "dispatch_tasks{state=\"queued\"} 3",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }

    // The pause was stored before it was answered: it survives SIGKILL.
    let server = server.crash_and_restart().await;
    let api = server.api();
    let listed = queues(&api).await;
    assert_eq!(listed["bulk"]["paused"], json!(true));
    assert_eq!(counts(&listed["bulk"]), [0, 3, 0, 0, 0, 0]);
    assert_eq!(listed["default"]["paused"], json!(false));
    let worker = register(&api, "pausing", 10, 1).await;
    let got = api.poll_n(&worker, 6, Duration::from_millis(500)).await;
    assert!(got.iter().all(|t| queue_of(t) == "default"), "{got:?}");

    // A resume dispatches at once, to a poll that is already waiting.
    let waiting = {
        let api = api.clone();
        let worker = worker.clone();
        tokio::spawn(async move {
            let asked = Instant::now();
            let got = api.poll(&worker, 10, 5_000).await;
            (got, asked.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let q = api.post_empty("/v1/queues/bulk/resume").await.expect(200);
    assert_eq!(q["paused"], json!(false));
    // Answered within the poll's 5 s, where the idle tick is ten minutes.
    let (got, took) = waiting.await.expect("poll task");
    assert!(!got.is_empty(), "nothing after {took:?}");
    let mut got = got;
    got.extend(
        api.poll_n(&worker, 3 - got.len(), Duration::from_secs(2))
            .await,
    );
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().all(|t| queue_of(t) == "bulk"), "{got:?}");
}

#[tokio::test]
async fn the_listing_counts_every_state_of_every_named_queue() {
    let server = Server::start().await;
    let api = server.api();
    let worker = register(&api, "counted", 10, 1).await;
    api.submit(json!({"type": "counted", "queue": "alpha", "delay_ms": 600_000}))
        .await;
    for _ in 0..3 {
        api.submit(json!({"type": "counted", "queue": "beta", "max_attempts": 1}))
            .await;
    }
    let got = api.poll_n(&worker, 3, Duration::from_secs(3)).await;
    assert_eq!(got.len(), 3);
    api.complete(&id_of(&got[0]), &worker, json!(1))
        .await
        .expect(200);
    api.fail(&id_of(&got[1]), &worker, "boom", json!({}))
        .await
        .expect(200);
    let doomed = api
        .submit(json!({"type": "counted", "queue": "gamma", "delay_ms": 600_000}))
        .await;
    api.post_empty(&format!("/v1/tasks/{}/cancel", id_of(&doomed)))
        .await
        .expect(200);
    api.submit(json!({"type": "nobody.runs.this", "queue": "epsilon"}))
        .await;
    api.post_empty("/v1/queues/delta/pause").await.expect(200);

    let expect = |listed: &HashMap<String, Value>, running_beta: bool| {
        let mut names: Vec<&String> = listed.keys().collect();
        names.sort();
        assert_eq!(names, ["alpha", "beta", "delta", "epsilon", "gamma"]);
        assert_eq!(counts(&listed["alpha"]), [1, 0, 0, 0, 0, 0]);
        let beta = if running_beta {
            [0, 0, 1, 1, 1, 0]
        } else {
            [0, 1, 0, 1, 1, 0]
        };
        assert_eq!(counts(&listed["beta"]), beta);
        assert_eq!(counts(&listed["gamma"]), [0, 0, 0, 0, 0, 1]);
        assert_eq!(counts(&listed["delta"]), [0; 6]);
        assert_eq!(counts(&listed["epsilon"]), [0, 1, 0, 0, 0, 0]);
        assert_eq!(listed["delta"]["paused"], json!(true));
        let alpha = &listed["alpha"];
        assert_eq!(alpha["paused"], json!(false));
        assert_eq!(alpha["weight"], json!(1));
        for k in [
            "max_running",
            "rate_per_sec",
            "burst",
            "max_per_key",
            "strategy",
        ] {
            assert_eq!(alpha[k], Value::Null, "{k} of {alpha}");
        }
    };
    expect(&queues(&api).await, true);
    // After a crash a queue whose tasks all ended is known from the store
    // alone; the running task is queued again.
    let server = server.crash_and_restart().await;
    expect(&queues(&server.api()).await, false);
}

#[tokio::test]
async fn max_running_caps_a_queue_on_a_worker_with_room_for_more() {
    let (server, _file) = server_with_config("[queues.capped]\nmax_running = 2\n").await;
    let api = server.api();
    assert_eq!(queues(&api).await["capped"]["max_running"], json!(2));
    let worker = register(&api, "capped.job", 10, 1).await;
    let batch: Vec<Value> = (0..8)
        .map(|i| {
            let queue = if i < 6 { "capped" } else { "free" };
            json!({"type": "capped.job", "queue": queue})
        })
        .collect();
    api.post("/v1/tasks/batch", json!({"tasks": batch}))
        .await
        .expect(201);
    let mut held: Vec<String> = Vec::new();
    let mut done = 0;
    let mut free = 0;
    let deadline = Instant::now() + Duration::from_secs(8);
    while done < 6 {
        assert!(
            Instant::now() < deadline,
            "capped tasks stalled after {done}"
        );
        for t in api.poll(&worker, 10, 300).await {
            if queue_of(&t) == "capped" {
                held.push(id_of(&t));
            } else {
                free += 1;
            }
        }
        assert!(
            held.len() <= 2,
            "the worker holds {} capped tasks",
            held.len()
        );
        if let Some(id) = held.pop() {
            api.complete(&id, &worker, json!(null)).await.expect(200);
            done += 1;
        }
    }
    assert_eq!(free, 2, "the other queue is not capped");
}

#[tokio::test]
async fn a_rate_limit_spaces_deliveries() {
    let (server, _file) = server_with_config("[queues.slow]\nrate_per_sec = 5\nburst = 1\n").await;
    let api = server.api();
    let worker = register(&api, "paced", 100, 1).await;
    let tasks = |queue: &str| -> Value {
        let t: Vec<Value> = (0..6)
            .map(|_| json!({"type": "paced", "queue": queue}))
            .collect();
        json!({"tasks": t})
    };
    // Without a limit six tasks come at once.
    api.post("/v1/tasks/batch", tasks("fast")).await.expect(201);
    assert_eq!(api.poll(&worker, 100, 1_000).await.len(), 6);
    // At 5 per second, one at a time: the sixth starts about a second
    // after the first. The starts are read from the server's `started_at`,
    // so a slow client, whose polls may each bring several, cannot bunch
    // them.
    let start = Instant::now();
    api.post("/v1/tasks/batch", tasks("slow")).await.expect(201);
    let mut ids = Vec::new();
    while ids.len() < 6 && start.elapsed() < Duration::from_secs(10) {
        ids.extend(api.poll(&worker, 100, 1_000).await.iter().map(id_of));
    }
    assert_eq!(ids.len(), 6, "{ids:?}");
    let mut arrivals = Vec::new();
    for id in &ids {
        let t = api.task(id).await;
        let at = t["started_at"].as_str().expect("started_at");
        arrivals.push(Duration::from_millis(
            dispatch_proto::time::parse_rfc3339(at).expect("a timestamp"),
        ));
    }
    arrivals.sort();
    let span = arrivals[5] - arrivals[0];
    assert!(
        span >= Duration::from_millis(750),
        "six tasks at 5/s over {span:?}: {arrivals:?}"
    );
    let early = arrivals
        .iter()
        .filter(|a| **a < arrivals[0] + Duration::from_millis(350))
        .count();
    assert!(
        early <= 3,
        "burst of 1 let {early} through at once: {arrivals:?}"
    );
}

#[tokio::test]
async fn type_and_queue_default_strategies_apply_to_tasks_that_name_none() {
    let (server, _file) = server_with_config(
        r#"
        [queues.hashed]
        strategy = "consistent_hash"

        [queues.spread]
        strategy = "random"

        [types."wrr.job"]
        strategy = "weighted_round_robin"
        "#,
    )
    .await;
    let api = server.api();
    let strategy = |t: &Value| t["strategy"].as_str().unwrap().to_owned();
    // A queue default of consistent_hash needs a routing key.
    let p = api
        .post("/v1/tasks", json!({"type": "x", "queue": "hashed"}))
        .await
        .problem(422, Some("routing_key"));
    assert!(p["detail"].as_str().unwrap().contains("hashed"), "{p}");
    let t = api
        .submit(json!({"type": "x", "queue": "hashed", "routing_key": "k1"}))
        .await;
    assert_eq!(strategy(&t), "consistent_hash");
    let t = api
        .submit(json!({"type": "x", "queue": "hashed", "strategy": "round_robin"}))
        .await;
    assert_eq!(strategy(&t), "round_robin", "the task's own strategy wins");
    let batch = json!({"tasks": [
        {"type": "x", "queue": "hashed", "routing_key": "k"},
        {"type": "x", "queue": "hashed"},
    ]});
    api.post("/v1/tasks/batch", batch)
        .await
        .problem(422, Some("tasks[1].routing_key"));
    let schedule = json!({"name": "hashed.nightly", "cron": "0 3 * * *",
                          "task": {"type": "x", "queue": "hashed"}});
    api.post("/v1/schedules", schedule)
        .await
        .problem(422, Some("task.routing_key"));
    // The type's default beats the queue's.
    let t = api
        .submit(json!({"type": "other", "queue": "spread"}))
        .await;
    assert_eq!(strategy(&t), "random");
    let t = api
        .submit(json!({"type": "wrr.job", "queue": "spread"}))
        .await;
    assert_eq!(strategy(&t), "weighted_round_robin");
    let listed = queues(&api).await;
    assert_eq!(listed["hashed"]["strategy"], json!("consistent_hash"));
    assert_eq!(listed["spread"]["strategy"], json!("random"));

    // And it routes by it: three quarters to the worker of weight 3.
    let light = register(&api, "wrr.job", 1000, 1).await;
    let heavy = register(&api, "wrr.job", 1000, 3).await;
    let tasks: Vec<Value> = (0..40).map(|_| json!({"type": "wrr.job"})).collect();
    api.post("/v1/tasks/batch", json!({"tasks": tasks}))
        .await
        .expect(201);
    let heavy_got = api
        .poll_n(&heavy, 41, Duration::from_millis(600))
        .await
        .len();
    let light_got = api
        .poll_n(&light, 41, Duration::from_millis(600))
        .await
        .len();
    assert_eq!(heavy_got + light_got, 41, "40 new and the earlier one");
    assert!(
        (28..=33).contains(&heavy_got),
        "heavy {heavy_got}, light {light_got}"
    );
}

#[tokio::test]
async fn a_bad_config_file_stops_the_server_with_one_line_naming_the_key() {
    let data = tempfile::tempdir().expect("temp dir");
    let data = data.path().to_str().unwrap().to_owned();
    let cases = [
        (
            "[queues.bulk]\nmax_runing = 2\n",
            "queues.bulk.max_runing: unknown key",
        ),
        (
            "[queues.bulk]\nrate_per_sec = -1\n",
            "queues.bulk.rate_per_sec: must be above 0",
        ),
        (
            "[types.render]\nstrategy = \"fastest\"\n",
            "types.render.strategy: unknown strategy",
        ),
        (
            "[queues.\"no good\"]\n",
            "queues.\"no good\": is not a valid queue name",
        ),
    ];
    for (text, expected) in cases {
        let file = config_file(text);
        let path = file.path.to_str().unwrap();
        let out = run_cli(
            &[
                "server",
                "--listen",
                "127.0.0.1:0",
                "--data",
                &data,
                "--config",
                path,
            ],
            &[],
        );
        assert!(!out.status.success(), "{text:?} started a server");
        let err = stderr(&out);
        let lines: Vec<&str> = err.trim().lines().collect();
        assert_eq!(lines.len(), 1, "{text:?}: not one line: {err}");
        assert!(
            lines[0].contains(path) && lines[0].contains(expected),
            "{text:?}: {err}"
        );
    }
    let out = run_cli(
        &[
            "server",
            "--data",
            &data,
            "--config",
            "/no/such/dispatch.toml",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/no/such/dispatch.toml"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn malformed_queue_names_are_refused_and_any_other_name_is_a_queue() {
    let server = Server::start().await;
    let api = server.api();
    let long = "q".repeat(129);
    for name in ["bad%20name", "a%2Fb", "%C3%BC", long.as_str(), "a*b"] {
        for action in ["pause", "resume"] {
            let p = api
                .post_empty(&format!("/v1/queues/{name}/{action}"))
                .await
                .problem(422, Some("name"));
            assert!(p["detail"].as_str().is_some_and(|d| !d.is_empty()), "{p}");
        }
    }
    let q = api
        .post_empty("/v1/queues/brand.new:queue-1_x/resume")
        .await
        .expect(200);
    assert_eq!(q["paused"], json!(false));
    assert_eq!(counts(&q), [0; 6]);
    assert!(queues(&api).await.contains_key("brand.new:queue-1_x"));
    assert_eq!(api.get("/v1/queues/bulk/pause").await.status, 405);
}

#[tokio::test]
async fn the_cli_lists_pauses_and_resumes_queues() {
    let server = Server::start().await;
    let api = server.api();
    register(&api, "cli.job", 4, 7).await;
    api.submit(json!({"type": "nobody.runs.this", "queue": "mail"}))
        .await;
    let url = server.url.as_str();
    let out = ok(&run_cli(&["--server", url, "queue", "pause", "mail"], &[]));
    assert_eq!(out.trim(), "paused queue mail (1 queued, 0 running)");
    let table = ok(&run_cli(&["--server", url, "queues"], &[]));
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "PAUSED",
            "WEIGHT",
            "LIMITS",
            "STRATEGY",
            "SCHEDULED",
            "QUEUED",
            "RUNNING",
            "SUCCEEDED",
            "DEAD",
            "CANCELLED"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        row,
        ["mail", "yes", "1", "-", "-", "0", "1", "0", "0", "0", "0"]
    );
    let json_out = ok(&run_cli(
        &["--server", url, "--json", "queue", "resume", "mail"],
        &[],
    ));
    let q: Value = serde_json::from_str(&json_out).expect("json");
    assert_eq!(
        (q["name"].as_str(), q["paused"].as_bool()),
        (Some("mail"), Some(false))
    );
    let json_out = ok(&run_cli(&["--server", url, "--json", "queues"], &[]));
    let list: Value = serde_json::from_str(&json_out).expect("json");
    assert_eq!(list["queues"][0]["counts"]["queued"], json!(1));
    let out = run_cli(&["--server", url, "queue", "pause", "no good"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("name"), "{}", stderr(&out));

    let workers = ok(&run_cli(&["--server", url, "workers"], &[]));
    let mut lines = workers.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert!(
        header.windows(2).any(|w| w == ["WEIGHT", "LABELS"]),
        "{workers}"
    );
    let row = lines.next().unwrap();
    assert!(row.contains(" 7 ") && row.contains("zone=eu"), "{workers}");
}
