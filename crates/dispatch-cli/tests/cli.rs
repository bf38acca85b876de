//! End-to-end tests of the `dispatch` client commands against a real
//! server: output for people and `--json`, and one-line errors with a
//! non-zero exit.

mod common;

use std::process::Output;

use common::{Server, free_port, ok, run_cli, stderr, stdout};
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
