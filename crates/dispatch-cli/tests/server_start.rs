//! End-to-end tests of how `dispatch server` starts: the exclusive lock on
//! its data folder, and `--listen` with a host name.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, Server, free_port, run_cli};

/// Runs `dispatch server` with `args` until it exits (it must, within
/// 20 s) and returns its exit status and stderr.
fn server_that_exits(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("server")
        .args(args)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .env_remove("DISPATCH_SERVER")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn dispatch server");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(out) => {
            let out = out.expect("wait for dispatch server");
            (
                out.status,
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("dispatch server {args:?} kept running: it should have refused to start");
        }
    }
}

#[tokio::test]
async fn a_second_server_on_the_same_data_folder_is_refused_and_kill_9_frees_it() {
    let server = Server::start().await;
    let data = server.data_dir().to_str().expect("utf-8 path").to_owned();
    let id = server
        .api()
        .submit_id("lock.job", serde_json::json!(1))
        .await;

    let listen = format!("127.0.0.1:{}", free_port());
    let (status, err) = server_that_exits(&["--listen", &listen, "--data", &data]);
    assert!(!status.success(), "the second server started: {err}");
    assert!(
        err.contains(&data),
        "the error does not name the folder: {err}"
    );
    assert!(
        err.contains(&format!("pid {}", server.pid())),
        "the error does not name the holder's pid {}: {err}",
        server.pid()
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");

    // The first server is untouched, and kill -9 releases the folder: the
    // kernel drops the lock with the process.
    assert_eq!(server.api().task(&id).await["state"], "queued");
    let server = server.crash_and_restart().await;
    assert_eq!(server.api().task(&id).await["state"], "queued");
}

#[tokio::test]
async fn listen_takes_a_host_name() {
    // localhost resolves to loopback: allowed without tokens.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["server", "--listen", &format!("localhost:{port}"), "--data"])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut up = false;
    while std::time::Instant::now() < deadline {
        let out = run_cli(&["tasks", "--json", "--server", &url], &[]);
        if out.status.success() {
            up = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        up,
        "a server on --listen localhost:{port} did not answer on 127.0.0.1"
    );

    // A name that does not resolve is refused with its name.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (status, err) = server_that_exits(&[
        "--listen",
        "no-such-host.invalid:7070",
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(!status.success());
    assert!(err.contains("no-such-host.invalid"), "{err}");
}

#[tokio::test]
async fn logs_carry_no_colours_when_stderr_is_not_a_terminal() {
    use std::io::{BufRead as _, BufReader, Read as _};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // NO_COLOR unset: the pipe alone must turn colours off.
    let mut child = Command::new(BIN)
        .args(["server", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let up = rx
        .recv_timeout(Duration::from_secs(15))
        .is_ok_and(|l| l.contains("listening"));
    let _ = child.kill();
    let _ = child.wait();
    let mut logs = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut logs);
    assert!(up, "the server did not start: {logs}");
    assert!(logs.contains("INFO"), "no log lines: {logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "ANSI escapes in piped logs: {logs:?}"
    );
}

/// The output of `dispatch worker` run on a pseudo-terminal (through
/// util-linux `script`), with `NO_COLOR` set or not, against `server`
/// (which refuses it for want of a token, so it logs and exits at once);
/// `None` when `script` is not installed.
fn worker_output_on_a_terminal(server: &str, no_color: bool) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("w.toml");
    std::fs::write(
        &config,
        format!("server = \"{server}\"\n[types.\"x\"]\ncommand = [\"true\"]\n"),
    )
    .unwrap();
    let out = dir.path().join("tty.out");
    let mut cmd = Command::new("script");
    cmd.arg("-qec")
        .arg(format!("{BIN} worker --config {}", config.display()))
        .arg(&out)
        .env_remove("DISPATCH_SERVER")
        .env_remove("DISPATCH_TOKEN")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if no_color {
        cmd.env("NO_COLOR", "1");
    } else {
        cmd.env_remove("NO_COLOR");
    }
    let Ok(child) = cmd.spawn() else {
        eprintln!("util-linux script is not installed: skipped");
        return None;
    };
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    if rx.recv_timeout(Duration::from_secs(20)).is_err() {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        panic!("the worker refused by the server did not exit");
    }
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        text.contains("generic worker starting"),
        "no log line: {text:?}"
    );
    Some(text)
}

#[tokio::test]
async fn logs_are_coloured_on_a_terminal_unless_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    common::create_token(&tokens, "admin", "ops");
    let server = Server::with_args(&["--tokens", tokens.to_str().unwrap()]).await;
    let url = server.url.clone();
    let (coloured, plain) = tokio::task::spawn_blocking(move || {
        (
            worker_output_on_a_terminal(&url, false),
            worker_output_on_a_terminal(&url, true),
        )
    })
    .await
    .unwrap();
    let (Some(coloured), Some(plain)) = (coloured, plain) else {
        return;
    };
    assert!(
        coloured.contains('\u{1b}'),
        "no colours on a terminal: {coloured:?}"
    );
    assert!(
        !plain.contains('\u{1b}'),
        "colours despite NO_COLOR: {plain:?}"
    );
}

/// Starts `dispatch server` with `args` and `env`, submits a task, stops it
/// with SIGTERM and returns everything it wrote on stderr.
fn server_logs_of_one_life(args: &[&str], env: &[(&str, &str)]) -> String {
    use std::io::{BufRead as _, BufReader, Read as _};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.args(["server", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.path().join("data"))
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("DISPATCH_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    // Killed and reaped on every way out, a failed assertion included.
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let child = Reaped(child);
    let errs = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all);
        all
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let up = rx
        .recv_timeout(Duration::from_secs(15))
        .is_ok_and(|l| l.contains("listening"));
    assert!(up, "the server did not start");
    let submitted = run_cli(
        &[
            "submit",
            "log.check",
            "--server",
            &format!("http://127.0.0.1:{port}"),
        ],
        &[],
    );
    assert!(submitted.status.success(), "{submitted:?}");
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // A clean stop closes stderr; the reader thread then returns.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(errs.join());
    });
    let logs = done_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the server stops within 20 s of SIGTERM")
        .expect("stderr reader");
    drop(child);
    logs
}

/// `--log-format json` (or `DISPATCH_LOG_FORMAT=json`): every line the
/// server writes on stderr, from start to a clean stop, is one JSON
/// object with its timestamp, level, target and fields.
#[test]
fn json_logs_are_one_object_per_line() {
    let by_flag = server_logs_of_one_life(&["--log-format", "json"], &[]);
    let by_env = server_logs_of_one_life(&[], &[("DISPATCH_LOG_FORMAT", "json")]);
    for logs in [by_flag, by_env] {
        let lines: Vec<&str> = logs.lines().collect();
        assert!(lines.len() >= 2, "too few log lines: {logs}");
        let mut messages = Vec::new();
        for line in &lines {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
            for key in ["timestamp", "level", "target"] {
                assert!(v[key].is_string(), "no {key} in {line}");
            }
            assert!(
                ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&v["level"].as_str().unwrap()),
                "{line}"
            );
            assert!(v["fields"].is_object(), "no fields in {line}");
            messages.push(v["fields"]["message"].as_str().unwrap_or("").to_owned());
            if v["fields"]["message"] == "dispatch server listening" {
                assert!(v["fields"]["addr"].is_string(), "structured fields: {line}");
                assert!(
                    v["target"].as_str().unwrap().starts_with("dispatch_server"),
                    "{line}"
                );
            }
        }
        assert!(
            messages.iter().any(|m| m == "dispatch server listening"),
            "{messages:?}"
        );
    }
    // Text stays the default.
    let text = server_logs_of_one_life(&[], &[]);
    assert!(text.lines().any(|l| l.contains("INFO")), "{text}");
    assert!(serde_json::from_str::<serde_json::Value>(text.lines().next().unwrap()).is_err());
}
