//! End-to-end tests of the `dispatch` client commands against a real
//! server: output for people and `--json`, and one-line errors with a
//! non-zero exit.

mod common;

use std::process::Output;

use common::{Server, free_port, id_of, ok, run_cli, stderr, stdout};
use serde_json::{Value, json};

/// Asserts failure with a one-line error on stderr; returns that line.
#[track_caller]
fn one_line_error(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "dispatch succeeded but should not have:\n{}",
        stdout(o)
    );
    let err = stderr(o);
    let err = err.trim_end();
    assert!(!err.is_empty(), "no error message on stderr");
    assert!(!err.contains('\n'), "the error is not one line:\n{err}");
    err.to_owned()
}

/// The id in "submitted task ID (state)".
#[track_caller]
fn submitted_id(out: &str) -> String {
    let rest = out
        .split("task ")
        .nth(1)
        .unwrap_or_else(|| panic!("no task id in {out:?}"));
    let id: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
    assert!(!id.is_empty(), "no task id in {out:?}");
    id
}

/// The header of a table: its first line, words upper-cased.
#[track_caller]
fn header(out: &str) -> Vec<String> {
    out.lines()
        .next()
        .unwrap_or_else(|| panic!("empty table output"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn submit_and_inspect_tasks() {
    let server = Server::start().await;
    let api = server.api();
    let url = server.url.as_str();

    // submit prints the id.
    let out = ok(&run_cli(
        &[
            "submit",
            "cli.job",
            "--payload",
            r#"{"a":1}"#,
            "--server",
            url,
        ],
        &[],
    ));
    let id = submitted_id(&out);
    let t = api.task(&id).await;
    assert_eq!(t["type"], "cli.job");
    assert_eq!(t["payload"], json!({"a": 1}));
    assert_eq!(t["state"], "queued");

    // --json, with the server from DISPATCH_SERVER and options.
    let out = ok(&run_cli(
        &[
            "submit",
            "cli.job",
            "--payload",
            "[1,2]",
            "--priority",
            "-3",
            "--queue",
            "cq",
            "--json",
        ],
        &[("DISPATCH_SERVER", url)],
    ));
    let t: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("--json output is not JSON ({e}): {out}"));
    assert_eq!(t["state"], "queued");
    assert_eq!(t["type"], "cli.job");
    assert_eq!(t["priority"], -3);
    assert_eq!(t["queue"], "cq");
    assert_eq!(t["payload"], json!([1, 2]));
    let second = t["id"].as_str().expect("id").to_owned();
    assert_eq!(api.task(&second).await["priority"], -3);

    // An idempotent resubmission says so.
    let args = [
        "submit",
        "cli.job",
        "--idempotency-key",
        "k1",
        "--server",
        url,
    ];
    let first = submitted_id(&ok(&run_cli(&args, &[])));
    let again = ok(&run_cli(&args, &[]));
    assert!(again.contains("already"), "{again}");
    assert_eq!(submitted_id(&again), first);

    // dispatch task ID
    let out = ok(&run_cli(&["task", &id, "--server", url], &[]));
    assert!(out.contains(&id), "{out}");
    assert!(out.contains("cli.job"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("state") && l.contains("queued")),
        "{out}"
    );
    let out = ok(&run_cli(&["task", &id, "--json", "--server", url], &[]));
    let t: Value = serde_json::from_str(&out).expect("task --json is JSON");
    assert_eq!(t["id"], json!(id));

    // dispatch tasks --state queued: a table with a header and our rows.
    let out = ok(&run_cli(
        &["tasks", "--state", "queued", "--server", url],
        &[],
    ));
    let head = header(&out);
    for col in ["ID", "TYPE", "STATE"] {
        assert!(
            head.iter().any(|h| h == col),
            "no {col} column in {head:?}:\n{out}"
        );
    }
    let rows: Vec<&str> = out
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with('('))
        .collect();
    assert_eq!(rows.len(), 3, "three queued tasks:\n{out}");
    for want in [&id, &second, &first] {
        assert!(
            rows.iter()
                .any(|r| r.split_whitespace().next() == Some(want.as_str())),
            "task {want} not listed:\n{out}"
        );
    }
    assert!(rows.iter().all(|r| r.contains("queued")), "{out}");
    let out = ok(&run_cli(
        &["tasks", "--state", "succeeded", "--server", url],
        &[],
    ));
    assert_eq!(out.lines().count(), 1, "only the header:\n{out}");

    // dispatch cancel ID
    let out = ok(&run_cli(&["cancel", &id, "--server", url], &[]));
    assert!(out.contains(&id), "{out}");
    assert_eq!(api.task(&id).await["state"], "cancelled");
}

#[tokio::test]
async fn workers_table() {
    let server = Server::start().await;
    let api = server.api();
    let url = server.url.as_str();

    let out = ok(&run_cli(&["workers", "--server", url], &[]));
    let head = header(&out);
    assert!(head.iter().any(|h| h == "ID"), "{out}");
    assert!(head.iter().any(|h| h == "TYPES"), "{out}");
    assert_eq!(out.lines().count(), 1, "no workers yet:\n{out}");

    let w = api.register(&["resize", "email"], 4).await;
    let out = ok(&run_cli(&["workers"], &[("DISPATCH_SERVER", url)]));
    let row = out
        .lines()
        .skip(1)
        .find(|l| l.split_whitespace().next() == Some(w.as_str()))
        .unwrap_or_else(|| panic!("worker {w} not listed:\n{out}"));
    assert!(row.contains("resize") && row.contains("email"), "{row}");

    let out = ok(&run_cli(&["workers", "--json", "--server", url], &[]));
    let list: Value = serde_json::from_str(&out).expect("workers --json is JSON");
    assert_eq!(list["workers"][0]["id"], json!(w));
}

#[tokio::test]
async fn errors_are_one_line_with_a_non_zero_exit() {
    let server = Server::start().await;
    let url = server.url.as_str();

    // A payload that is not JSON.
    let err = one_line_error(&run_cli(
        &["submit", "x", "--payload", "{bad", "--server", url],
        &[],
    ));
    assert!(err.to_lowercase().contains("payload"), "{err}");

    // The server refuses: its detail names the field.
    let err = one_line_error(&run_cli(
        &["submit", "x", "--priority", "500", "--server", url],
        &[],
    ));
    assert!(err.contains("priority"), "{err}");
    let err = one_line_error(&run_cli(&["task", "987654321", "--server", url], &[]));
    assert!(err.contains("987654321"), "{err}");
    let err = one_line_error(&run_cli(
        &["tasks", "--state", "bogus"],
        &[("DISPATCH_SERVER", url)],
    ));
    assert!(err.contains("state"), "{err}");

    // Nothing listens there.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let err = one_line_error(&run_cli(&["submit", "x", "--server", &closed], &[]));
    assert!(err.contains("cannot reach"), "{err}");
    let err = one_line_error(&run_cli(&["tasks"], &[("DISPATCH_SERVER", &closed)]));
    assert!(err.contains("cannot reach"), "{err}");

    // None of these created a task.
    assert_eq!(server.api().list("").await["tasks"], json!([]));
}

/// Runs `dispatch` with `input` on stdin; killed after 20 s.
fn run_cli_stdin(args: &[&str], env: &[(&str, &str)], input: &str) -> Output {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(common::BIN);
    cmd.args(args)
        .env_remove("DISPATCH_SERVER")
        .env_remove("DISPATCH_TOKEN")
        .env_remove("DISPATCH_CA")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn dispatch");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(std::time::Duration::from_secs(20)) {
        Ok(out) => out.expect("wait for dispatch"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("dispatch {args:?} did not finish within 20 s");
        }
    };
    let _ = writer.join();
    out
}

/// Runs `dispatch` off the async runtime (it may wait for the server).
async fn run_cli_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&args, &[])
    })
    .await
    .expect("join")
}

#[tokio::test]
async fn submit_takes_every_field_of_the_api() {
    let server = Server::start().await;
    let api = server.api();
    let url = server.url.as_str();
    let parent = api.submit_id("cli.parent", json!(null)).await;

    let out = ok(&run_cli(
        &[
            "submit",
            "cli.full",
            "--payload",
            r#"{"n": 1}"#,
            "--priority",
            "7",
            "--queue",
            "fullq",
            "--delay",
            "5m",
            "--strategy",
            "consistent_hash",
            "--routing-key",
            "customer-42",
            "--label",
            "zone=eu",
            "--label",
            "gpu=a100",
            "--depends-on",
            &parent,
            "--max-attempts",
            "7",
            "--timeout",
            "30s",
            "--backoff",
            "2s,1m,3",
            "--idempotency-key",
            "full-1",
            "--json",
            "--server",
            url,
        ],
        &[],
    ));
    let t: Value = serde_json::from_str(&out).expect("JSON");
    let t = api.task(t["id"].as_str().expect("id")).await;
    assert_eq!(t["state"], "scheduled");
    assert_eq!(t["priority"], 7);
    assert_eq!(t["queue"], "fullq");
    assert_eq!(t["strategy"], "consistent_hash");
    assert_eq!(t["routing_key"], "customer-42");
    assert_eq!(t["labels"], json!({"zone": "eu", "gpu": "a100"}));
    assert_eq!(t["depends_on"], json!([parent]));
    assert_eq!(t["max_attempts"], 7);
    assert_eq!(t["timeout_ms"], 30_000);
    assert_eq!(
        t["backoff"],
        json!({"initial_ms": 2000, "max_ms": 60_000, "multiplier": 3.0})
    );
    assert_eq!(t["idempotency_key"], "full-1");
    assert!(t["run_at"].is_string(), "{t}");

    // --run-at, and --strategy sharding with --shards.
    let out = ok(&run_cli(
        &[
            "submit",
            "cli.later",
            "--run-at",
            "2099-01-01T00:00:00Z",
            "--json",
            "--server",
            url,
        ],
        &[],
    ));
    let t: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(t["state"], "scheduled");
    assert_eq!(t["run_at"], "2099-01-01T00:00:00.000Z");
    let out = ok(&run_cli(
        &[
            "submit",
            "cli.shard",
            "--strategy",
            "sharding",
            "--shards",
            "3",
            "--json",
            "--server",
            url,
        ],
        &[],
    ));
    let t: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(t["strategy"], "sharding");
    assert_eq!(t["depends_on"].as_array().map(Vec::len), Some(3), "{t}");

    // Bad flag values are named.
    for (args, word) in [
        (vec!["--delay", "5 weeks"], "--delay"),
        (vec!["--label", "novalue"], "--label"),
        (vec!["--backoff", "1s,2s,x"], "--backoff"),
    ] {
        let mut all = vec!["submit", "cli.bad", "--server", url];
        all.extend(args);
        let err = one_line_error(&run_cli(&all, &[]));
        assert!(err.contains(word), "{err}");
    }
    let err = one_line_error(&run_cli(
        &["submit", "cli.bad", "--run-at", "tomorrow", "--server", url],
        &[],
    ));
    assert!(err.contains("run_at"), "{err}");
}

#[tokio::test]
async fn task_shows_every_field() {
    let server = Server::start().await;
    let api = server.api();
    let t = api
        .submit(json!({
            "type": "cli.show", "payload": {"k": "v"}, "routing_key": "rk",
            "labels": {"zone": "eu"}, "timeout_ms": 1234, "idempotency_key": "show-1",
            "delay_ms": 60000
        }))
        .await;
    let id = id_of(&t);
    let out = ok(&run_cli(&["task", &id, "--server", &server.url], &[]));
    for key in [
        "id",
        "type",
        "queue",
        "state",
        "priority",
        "attempts",
        "worker",
        "strategy",
        "routing_key",
        "labels",
        "depends_on",
        "run_at",
        "timeout",
        "backoff",
        "idempotency_key",
        "created_at",
        "started_at",
        "finished_at",
        "payload",
        "result",
        "error",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{key}:"))),
            "no {key} line:\n{out}"
        );
    }
    for value in ["rk", "zone=eu", "1234 ms", "show-1", r#"{"k":"v"}"#] {
        assert!(out.contains(value), "no {value}:\n{out}");
    }
}

#[tokio::test]
async fn submit_batch_reads_json_lines_from_stdin() {
    let server = Server::start().await;
    let api = server.api();
    let url = server.url.as_str();
    let mut input = String::new();
    for i in 0..25 {
        input.push_str(&format!(
            "{{\"type\": \"cli.batch\", \"payload\": {i}, \"priority\": {}}}\n",
            i % 3
        ));
        if i == 10 {
            input.push('\n');
        }
    }
    let out = ok(&run_cli_stdin(
        &["submit", "--batch", "--chunk", "10", "--server", url],
        &[],
        &input,
    ));
    let ids: Vec<&str> = out.lines().collect();
    assert_eq!(ids.len(), 25, "{out}");
    for (i, id) in ids.iter().enumerate() {
        let t = api.task(id).await;
        assert_eq!(t["payload"], json!(i), "{t}");
        assert_eq!(t["priority"], json!(i % 3));
    }

    // --json: the ids and states in one object.
    let out = ok(&run_cli_stdin(
        &["submit", "--batch", "--json", "--server", url],
        &[],
        "{\"type\": \"cli.batch\"}\n{\"type\": \"cli.batch\", \"queue\": \"b2\"}\n",
    ));
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["tasks"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["tasks"][0]["state"], "queued");

    // A line that is not a task stops everything before anything is sent.
    let before = api.list("limit=1000").await["tasks"]
        .as_array()
        .map_or(0, Vec::len);
    let err = one_line_error(&run_cli_stdin(
        &["submit", "--batch", "--server", url],
        &[],
        "{\"type\": \"cli.batch\"}\n{\"type\": \"cli.batch\", \"prioirty\": 1}\n",
    ));
    assert!(err.contains("line 2") && err.contains("prioirty"), "{err}");
    // A line the server refuses is named; earlier chunks stay submitted.
    let o = run_cli_stdin(
        &["submit", "--batch", "--chunk", "2", "--server", url],
        &[],
        "{\"type\": \"cli.batch\"}\n{\"type\": \"cli.batch\"}\n{\"type\": \"cli.batch\"}\n{\"type\": \"cli.batch\", \"priority\": 500}\n",
    );
    let err = one_line_error(&o);
    assert!(err.contains("line 4") && err.contains("priority"), "{err}");
    assert_eq!(stdout(&o).lines().count(), 2, "the first chunk's ids");
    let after = api.list("limit=1000").await["tasks"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(after, before + 2);
    // A type and --batch do not mix.
    let o = run_cli(&["submit", "x", "--batch", "--server", url], &[]);
    assert_eq!(o.status.code(), Some(2));
}

#[tokio::test]
async fn submit_wait_exits_by_how_the_task_ended() {
    let server = Server::start().await;
    let api = server.api();
    let url = server.url.clone();
    let wait = |kind: &str, extra: &[&str]| {
        let mut args: Vec<String> = ["submit", kind, "--wait", "--wait-timeout", "30", "--server"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(url.clone());
        args.extend(extra.iter().map(|s| s.to_string()));
        run_cli_async(args)
    };
    let worker = api.register(&["w.ok", "w.dead"], 4).await;
    let within = std::time::Duration::from_secs(15);

    // succeeded: 0, the task printed.
    let run = tokio::spawn(wait("w.ok", &[]));
    let t = api.poll_one(&worker, within).await;
    api.complete(&id_of(&t), &worker, json!({"fine": true}))
        .await
        .expect(200);
    let o = run.await.expect("join");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("succeeded"), "{}", stdout(&o));

    // dead: 3.
    let run = tokio::spawn(wait("w.dead", &["--max-attempts", "1", "--json"]));
    let t = api.poll_one(&worker, within).await;
    api.fail(&id_of(&t), &worker, "boom", json!({}))
        .await
        .expect(200);
    let o = run.await.expect("join");
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let task: Value = serde_json::from_str(&stdout(&o)).expect("the task as JSON");
    assert_eq!(task["state"], "dead");

    // cancelled: 4.
    let run = tokio::spawn(wait("w.nobody", &[]));
    let id = loop {
        let ids = api.list_ids("type=w.nobody").await;
        if let Some(id) = ids.first() {
            break id.clone();
        }
        tokio::time::sleep(common::POLL_EVERY).await;
    };
    api.post_empty(&format!("/v1/tasks/{id}/cancel"))
        .await
        .expect(200);
    let o = run.await.expect("join");
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("cancelled"), "{}", stderr(&o));

    // The wait runs out: 5, with a message.
    let o = run_cli(
        &[
            "submit",
            "w.nobody",
            "--wait",
            "--wait-timeout",
            "1",
            "--server",
            &server.url,
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("timed out") && err.contains("queued"), "{err}");
}

#[tokio::test]
async fn errors_name_what_was_not_found_and_hold_with_json() {
    let server = Server::start().await;
    let url = server.url.as_str();
    let err = one_line_error(&run_cli(&["task", "424242", "--server", url], &[]));
    assert_eq!(err, "error: not found: task 424242");
    let err = one_line_error(&run_cli(&["retry", "424242", "--server", url], &[]));
    assert_eq!(err, "error: not found: task 424242");
    let err = one_line_error(&run_cli(
        &["schedule", "delete", "nothing.here", "--server", url],
        &[],
    ));
    assert_eq!(err, "error: not found: schedule nothing.here");

    // --json: one JSON object on stderr, nothing on stdout, exit 1.
    let o = run_cli(&["task", "424242", "--json", "--server", url], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).is_empty());
    let e: Value = serde_json::from_str(stderr(&o).trim()).expect("a JSON error");
    assert_eq!(e["error"], "not found: task 424242");
    assert_eq!(e["exit_code"], 1);
    assert_eq!(e["status"], 404);
    assert_eq!(e["problem"]["status"], 404);
    // Before the command too, and for errors that are not the server's.
    let o = run_cli(
        &[
            "--json",
            "submit",
            "x",
            "--payload",
            "{bad",
            "--server",
            url,
        ],
        &[],
    );
    let e: Value = serde_json::from_str(stderr(&o).trim()).expect("a JSON error");
    assert!(e["error"].as_str().unwrap_or("").contains("payload"), "{e}");
    let closed = format!("http://127.0.0.1:{}", free_port());
    let o = run_cli(&["tasks", "--json", "--server", &closed], &[]);
    let e: Value = serde_json::from_str(stderr(&o).trim()).expect("a JSON error");
    assert!(
        e["error"].as_str().unwrap_or("").contains("cannot reach"),
        "{e}"
    );
    // A usage error: exit 2, JSON too.
    let o = run_cli(&["tasks", "--json", "--bogus"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let e: Value = serde_json::from_str(stderr(&o).trim()).expect("a JSON error");
    assert!(e["error"].as_str().unwrap_or("").contains("--bogus"), "{e}");
    assert_eq!(e["exit_code"], 2);
}

#[tokio::test]
async fn client_options_belong_to_client_commands() {
    // Shown under their own heading where they work...
    for cmd in [&["submit"][..], &["tasks"], &["queue", "pause"], &["retry"]] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let help = ok(&run_cli(&args, &[]));
        assert!(help.contains("Client options"), "{cmd:?}:\n{help}");
        assert!(help.contains("--server <URL>"), "{cmd:?}:\n{help}");
    }
    let help = ok(&run_cli(&["worker", "--help"], &[]));
    assert!(
        help.contains("--server <URL>") && !help.contains("--json"),
        "{help}"
    );
    // ...and nowhere else.
    for cmd in [&["server"][..], &["demo"], &["token", "create"]] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let help = ok(&run_cli(&args, &[]));
        for flag in ["--server", "--token <", "--ca", "--json"] {
            assert!(!help.contains(flag), "{cmd:?} shows {flag}:\n{help}");
        }
    }
    let o = run_cli(&["demo", "--server", "http://127.0.0.1:1"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = run_cli(&["--server", "http://127.0.0.1:1", "demo"], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("client option"), "{}", stderr(&o));

    // Before or after the command, the flag wins over the environment.
    let server = Server::start().await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    let env = [("DISPATCH_SERVER", closed.as_str())];
    ok(&run_cli(&["--server", &server.url, "tasks"], &env));
    ok(&run_cli(&["tasks", "--server", &server.url], &env));
    ok(&run_cli(
        &["queue", "pause", "q1", "--server", &server.url],
        &env,
    ));
}

#[tokio::test]
async fn schedules_show_the_next_fire_in_their_zone() {
    let server = Server::start().await;
    let env = [("DISPATCH_SERVER", server.url.as_str())];
    let out = ok(&run_cli(
        &[
            "schedule",
            "create",
            "tz.daily",
            "--cron",
            "30 2 * * *",
            "--timezone",
            "America/New_York",
            "--type",
            "tz.run",
        ],
        &env,
    ));
    // 02:30 in New York is 06:30 or 07:30 UTC, by the season.
    assert!(out.contains("T02:30:00-0"), "{out}");
    assert!(out.contains("America/New_York"), "{out}");
    let table = ok(&run_cli(&["schedules"], &env));
    assert!(
        table
            .lines()
            .next()
            .unwrap_or("")
            .contains("NEXT_FIRE_LOCAL"),
        "{table}"
    );
    let row = table.lines().nth(1).unwrap_or("");
    assert!(row.contains("T02:30:00-0"), "{row}");
    assert!(row.contains("Z"), "the UTC time too: {row}");
}
