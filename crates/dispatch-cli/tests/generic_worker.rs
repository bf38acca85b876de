//! End-to-end tests of `dispatch worker --config worker.toml`, the generic
//! worker: a real server, a real `dispatch worker` child process driven by
//! a TOML file written here, shell commands and a tiny HTTP endpoint served
//! from inside the test.

mod common;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Api, BIN, POLL_EVERY, Server, id_of, run_cli};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long anything here may take to happen.
const WITHIN: Duration = Duration::from_secs(10);

/// Retries come quickly: 100 to 200 ms apart. (Not closer: the SDK removes
/// a finished attempt's cancel switch by task id after reporting it, so a
/// retry handed back to the same worker within that round trip would lose
/// its switch and be dropped unreported.)
fn fast_retries(max_attempts: u32) -> Value {
    json!({"max_attempts": max_attempts, "backoff": {"initial_ms": 200, "max_ms": 200, "multiplier": 1}})
}

/// A `dispatch worker` child process, SIGKILLed and reaped when dropped
/// (printing its output when the test failed).
struct WorkerProcess {
    child: Option<Child>,
    log: Arc<Mutex<VecDeque<String>>>,
    /// The folder holding the config file and whatever the scripts write.
    dir: tempfile::TempDir,
}

impl WorkerProcess {
    /// Writes `config` as `worker.toml` in a fresh folder and starts
    /// `dispatch worker --config` on it with `args`; waits until a worker
    /// named `name` is registered with `server`.
    async fn start(server: &Server, name: &str, config: &str, args: &[&str]) -> WorkerProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        WorkerProcess::start_in(server, name, dir, config, args).await
    }

    /// Like [`WorkerProcess::start`], in a folder prepared by the caller.
    async fn start_in(
        server: &Server,
        name: &str,
        dir: tempfile::TempDir,
        config: &str,
        args: &[&str],
    ) -> WorkerProcess {
        let path = dir.path().join("worker.toml");
        std::fs::write(&path, config).expect("write worker.toml");
        let mut child = Command::new(BIN)
            .arg("worker")
            .arg("--config")
            .arg(&path)
            .args(args)
            .env_remove("DISPATCH_SERVER")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dispatch worker");
        let log = Arc::default();
        drain(child.stdout.take().expect("stdout"), Arc::clone(&log));
        drain(child.stderr.take().expect("stderr"), Arc::clone(&log));
        let mut worker = WorkerProcess {
            child: Some(child),
            log,
            dir,
        };
        let api = server.api();
        let deadline = Instant::now() + WITHIN;
        while !api.workers().await.iter().any(|w| w["name"] == name) {
            if let Some(status) = worker
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("dispatch worker exited ({status}):\n{}", worker.logs());
            }
            assert!(
                Instant::now() < deadline,
                "worker {name} did not register within {WITHIN:?}:\n{}",
                worker.logs()
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
        worker
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn logs(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Waits for the process to exit by itself; panics after `within`.
    async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "dispatch worker did not exit within {within:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- dispatch worker output ----\n{}", self.logs());
        }
    }
}

fn drain(stream: impl Read + Send + 'static, log: Arc<Mutex<VecDeque<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            if log.len() == 300 {
                log.pop_front();
            }
            log.push_back(line);
        }
    });
}

/// A TOML string (JSON's quoting is TOML's basic string).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

/// Submits `task` (with `type` and `payload`) plus `extra`; returns its id.
async fn submit(api: &Api, kind: &str, payload: Value, extra: Value) -> String {
    let mut task = json!({"type": kind, "payload": payload});
    if let (Some(t), Some(e)) = (task.as_object_mut(), extra.as_object()) {
        t.extend(e.clone());
    }
    id_of(&api.submit(task).await)
}

/// Waits until the task is terminal and returns it.
async fn terminal(api: &Api, id: &str) -> Value {
    api.wait_task(id, WITHIN, |t| {
        matches!(
            t["state"].as_str(),
            Some("succeeded" | "dead" | "cancelled")
        )
    })
    .await
}

/// True once `pid` is gone (or a zombie: dead, waiting for its parent).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// Reads a PID the script wrote, waiting for the file.
async fn read_pid(path: &Path) -> u32 {
    let deadline = Instant::now() + WITHIN;
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && let Ok(pid) = s.trim().parse()
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "{} was not written",
            path.display()
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// The worker config header: the server and the worker's name.
fn header(server: &Server, name: &str) -> String {
    format!(
        "server = {}\nname = {}\n",
        toml_str(&server.url),
        toml_str(name)
    )
}

#[tokio::test]
async fn command_stdout_is_the_result() {
    let server = Server::start().await;
    let api = server.api();
    let config = header(&server, "cmd-ok")
        + r#"
labels = { zone = "test" }

[types."greet.json"]
# Answers {"hello": NAME} for a payload {"name": NAME}.
command = ["sh", "-c", "sed -n 's/.*\"name\": *\"\\([^\"]*\\)\".*/{\"hello\": \"\\1\"}/p'"]

[types."greet.text"]
command = ["sh", "-c", "cat >/dev/null; echo \"$DISPATCH_TASK_TYPE $DISPATCH_ATTEMPT $GREETING $(pwd)\""]
env = { GREETING = "hi" }
cwd = "sub"
"#;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir sub");
    let worker = WorkerProcess::start_in(&server, "cmd-ok", dir, &config, &[]).await;

    let json_id = submit(&api, "greet.json", json!({"name": "ada"}), json!({})).await;
    let text_id = submit(&api, "greet.text", json!({"x": 1}), json!({})).await;
    let t = terminal(&api, &json_id).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(t["result"], json!({"hello": "ada"}), "{t}");
    assert_eq!(t["attempts"], 1, "{t}");

    // Not JSON: a string, without the final newline.
    let t = terminal(&api, &text_id).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    let sub = worker.path("sub").canonicalize().expect("sub");
    assert_eq!(
        t["result"],
        json!(format!("greet.text 1 hi {}", sub.display())),
        "{t}"
    );

    let workers = api.workers().await;
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert_eq!(workers[0]["labels"], json!({"zone": "test"}));
    assert_eq!(workers[0]["capacity"], 4, "the default concurrency");
}

#[tokio::test]
async fn a_failing_command_is_retried_then_dead_with_its_stderr() {
    let server = Server::start().await;
    let api = server.api();
    let config = header(&server, "cmd-fail")
        + r#"
[types."job.fail"]
command = ["sh", "-c", "echo starting >&2; echo 'disk on fire' >&2; exit 3"]

[types."job.abort"]
command = ["sh", "-c", "echo 'no such user' >&2; exit 100"]
"#;
    let _worker = WorkerProcess::start(&server, "cmd-fail", &config, &[]).await;

    let fail = submit(&api, "job.fail", json!({}), fast_retries(3)).await;
    let abort = submit(&api, "job.abort", json!({}), fast_retries(3)).await;

    let t = terminal(&api, &fail).await;
    assert_eq!(t["state"], "dead", "{t}");
    assert_eq!(t["attempts"], 3, "retried until attempts ran out: {t}");
    let error = t["error"].as_str().expect("error text");
    assert!(error.starts_with("exit status 3: "), "{error}");
    assert!(error.contains("disk on fire"), "{error}");

    // Exit 100: dead at once.
    let t = terminal(&api, &abort).await;
    assert_eq!(t["state"], "dead", "{t}");
    assert_eq!(t["attempts"], 1, "exit 100 is not retried: {t}");
    assert_eq!(t["error"], "exit status 100: no such user", "{t}");
}

#[tokio::test]
async fn a_timed_out_command_is_killed_with_all_it_started() {
    let server = Server::start().await;
    let api = server.api();
    // The script writes its own PID and that of a child it starts, then
    // waits far longer than any timeout here.
    let config = header(&server, "cmd-slow")
        + r#"
[types."job.slow"]
command = ["sh", "-c", "echo $$ > \"$DISPATCH_TASK_ID.leader\"; sleep 30 & echo $! > \"$DISPATCH_TASK_ID.child\"; wait"]

[types."job.capped"]
command = ["sh", "-c", "echo $$ > \"$DISPATCH_TASK_ID.leader\"; sleep 30 & echo $! > \"$DISPATCH_TASK_ID.child\"; wait"]
timeout_ms = 300
"#;
    let worker = WorkerProcess::start(&server, "cmd-slow", &config, &[]).await;

    // The task's own timeout_ms, and the type's local cap.
    let mut slow = fast_retries(1);
    slow["timeout_ms"] = json!(300);
    let slow = submit(&api, "job.slow", json!({}), slow).await;
    let capped = submit(&api, "job.capped", json!({}), fast_retries(1)).await;

    let started = Instant::now();
    for (id, error) in [
        (&slow, "timeout after 300 ms (the task's timeout_ms)"),
        (&capped, "timeout after 300 ms (timeout_ms of this type"),
    ] {
        let leader = read_pid(&worker.path(&format!("{id}.leader"))).await;
        let child = read_pid(&worker.path(&format!("{id}.child"))).await;
        let t = terminal(&api, id).await;
        assert_eq!(t["state"], "dead", "{t}");
        let text = t["error"].as_str().expect("error text");
        assert!(text.starts_with(error), "{id}: {text}");
        // Well before the command's own 30 s sleep would end it.
        let deadline = Instant::now() + Duration::from_secs(15);
        while !(process_gone(leader) && process_gone(child)) {
            assert!(
                Instant::now() < deadline,
                "task {id}: the command (pid {leader}) or its child (pid {child}) is still running"
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
        // The worker reaped the command itself: not even a zombie is left.
        let deadline = Instant::now() + Duration::from_secs(15);
        while Path::new(&format!("/proc/{leader}")).exists() {
            assert!(
                Instant::now() < deadline,
                "task {id}: /proc/{leader} still exists"
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
    // Both commands ended long before their 30 s sleeps would have.
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
}

/// One request the endpoint received.
struct Request {
    method: String,
    path: String,
    /// Names in lower case.
    headers: Vec<(String, String)>,
    body: String,
}

impl Request {
    fn header(&self, name: &str) -> String {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
}

/// A tiny HTTP server on 127.0.0.1:0: answers by path and records each
/// request.
struct Endpoint {
    url: String,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Endpoint {
    async fn start() -> Endpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen: Arc<Mutex<Vec<_>>> = Arc::default();
        let record = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let record = Arc::clone(&record);
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut conn).await else {
                        return;
                    };
                    let (status, extra, reply) = match req.path.as_str() {
                        "/ok" => {
                            let payload: Value =
                                serde_json::from_str(&req.body).unwrap_or(Value::Null);
                            let reply = json!({
                                "echo": payload,
                                "task_id": req.header("x-dispatch-task-id"),
                                "attempt": req.header("x-dispatch-attempt"),
                                "token": req.header("authorization"),
                                "content_type": req.header("content-type"),
                            });
                            ("200 OK", "", reply.to_string())
                        }
                        "/text" => ("201 Created", "", "plain words".to_owned()),
                        "/down" => ("500 Internal Server Error", "", "boom".to_owned()),
                        "/busy" => (
                            "503 Service Unavailable",
                            "Retry-After: 1\r\n",
                            "busy".to_owned(),
                        ),
                        _ => ("400 Bad Request", "", "no such user".to_owned()),
                    };
                    record.lock().unwrap().push(req);
                    let answer = format!(
                        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                        reply.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Endpoint { url, seen }
    }

    /// The times `path` was called.
    fn calls(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .count()
    }
}

/// Reads one HTTP/1.1 request with a Content-Length body.
async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[end + 4..].to_vec();
    while body.len() < length {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Request {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

#[tokio::test]
async fn http_endpoints_decide_by_status() {
    let server = Server::start().await;
    let api = server.api();
    let ep = Endpoint::start().await;
    let url = |path: &str| toml_str(&format!("{}{path}", ep.url));
    // The config names a server nobody listens on: --server wins.
    let config = format!(
        r#"
server = "http://127.0.0.1:9"
name = "http-w"

[types."hook.ok"]
url = {ok}
headers = {{ Authorization = "Bearer s3cret" }}

[types."hook.text"]
url = {text}
method = "put"

[types."hook.down"]
url = {down}

[types."hook.busy"]
url = {busy}

[types."hook.bad"]
url = {bad}
"#,
        ok = url("/ok"),
        text = url("/text"),
        down = url("/down"),
        busy = url("/busy"),
        bad = url("/bad"),
    );
    let _worker =
        WorkerProcess::start(&server, "http-w", &config, &["--server", &server.url]).await;

    let ok = submit(&api, "hook.ok", json!({"to": "ada"}), json!({})).await;
    let text = submit(&api, "hook.text", json!([1]), json!({})).await;
    let down = submit(&api, "hook.down", json!({}), fast_retries(2)).await;
    let busy = submit(&api, "hook.busy", json!({}), fast_retries(2)).await;
    let bad = submit(&api, "hook.bad", json!({}), fast_retries(3)).await;

    let t = terminal(&api, &ok).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(
        t["result"],
        json!({
            "echo": {"to": "ada"},
            "task_id": ok,
            "attempt": "1",
            "token": "Bearer s3cret",
            "content_type": "application/json",
        })
    );

    let t = terminal(&api, &text).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(t["result"], "plain words");
    let methods: Vec<String> = ep
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.path == "/text")
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(methods, ["PUT"]);

    // 500: retried, then dead.
    let t = terminal(&api, &down).await;
    assert_eq!(t["state"], "dead", "{t}");
    assert_eq!(t["attempts"], 2, "{t}");
    assert_eq!(t["error"], "HTTP 500: boom");
    assert_eq!(ep.calls("/down"), 2);

    // 400: dead at once.
    let t = terminal(&api, &bad).await;
    assert_eq!(t["state"], "dead", "{t}");
    assert_eq!(t["attempts"], 1, "{t}");
    assert_eq!(t["error"], "HTTP 400: no such user");
    assert_eq!(ep.calls("/bad"), 1);

    // 503 with Retry-After: 1 waits a second, not the 200 ms backoff.
    let t = terminal(&api, &busy).await;
    assert_eq!(t["state"], "dead", "{t}");
    assert_eq!(t["attempts"], 2, "{t}");
    assert_eq!(t["error"], "HTTP 503: busy");
    let created = t["created_at"].as_str().unwrap().to_owned();
    let finished = t["finished_at"].as_str().unwrap().to_owned();
    assert!(
        (seconds(&finished) - seconds(&created)).rem_euclid(86_400.0) >= 0.9,
        "Retry-After was not honoured: {created} .. {finished}"
    );
}

/// Seconds within the day of an RFC 3339 UTC timestamp (enough to
/// measure a gap of about a second).
fn seconds(ts: &str) -> f64 {
    let time = &ts[11..ts.len() - 1];
    let mut parts = time.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + s
}

#[tokio::test]
async fn sigterm_lets_running_commands_finish_then_leaves() {
    let server = Server::start().await;
    let api = server.api();
    let config = header(&server, "cmd-drain")
        + r#"
[types."job.brief"]
command = ["sh", "-c", "touch started; sleep 0.5; echo '{\"done\": true}'"]
"#;
    let mut worker = WorkerProcess::start(&server, "cmd-drain", &config, &[]).await;
    let id = submit(&api, "job.brief", json!({}), json!({})).await;
    let started = worker.path("started");
    let deadline = Instant::now() + WITHIN;
    while !started.exists() {
        assert!(Instant::now() < deadline, "the command did not start");
        tokio::time::sleep(POLL_EVERY).await;
    }
    let kill = Command::new("kill")
        .arg("-TERM")
        .arg(worker.pid().to_string())
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = worker.wait_exit(WITHIN).await;
    assert!(status.success(), "{status}:\n{}", worker.logs());
    let t = api.task(&id).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(t["result"], json!({"done": true}));
    assert!(api.workers().await.is_empty(), "the worker did not leave");
}

#[tokio::test]
async fn a_bad_config_is_a_one_line_error_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        (
            "[types.\"email.send\"]\ncommand = [\"true\"]\nurl = \"http://127.0.0.1:1/\"\n",
            "types.\"email.send\": give either command or url, not both",
        ),
        (
            "[types.a]\ncommand = [\"true\"]\ntimeout = 5\n",
            "types.a.timeout: unknown key",
        ),
        (
            "[types.a]\ncommand = [\"surely-not-a-program\"]\n",
            "types.a.command: program \"surely-not-a-program\" not found",
        ),
    ];
    for (i, (config, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, config).expect("write");
        let path = path.to_str().expect("utf-8 path");
        let out = run_cli(&["worker", "--config", path], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{config}: accepted:\n{stderr}");
        let err = stderr.trim_end();
        assert!(!err.contains('\n'), "not one line:\n{err}");
        let want = format!("error: {path}: {expected}");
        assert!(err.starts_with(&want), "got {err:?}, wanted {want:?}...");
    }
}

/// A command that prints more than 1 MiB on stdout is not stored as a
/// result: the task is dead at once (no retry would print less), saying
/// why; one just under the limit succeeds with its whole output.
#[tokio::test]
async fn stdout_over_one_mib_is_refused_as_a_result() {
    let server = Server::start().await;
    let api = server.api();
    // 1 MiB + 1 byte, and 1 MiB - 2 bytes plus the quotes of a JSON string.
    let config = header(&server, "cmd-big")
        + r#"
[types."out.big"]
command = ["sh", "-c", "cat >/dev/null; head -c 1048577 /dev/zero | tr '\\0' x"]

[types."out.fits"]
command = ["sh", "-c", "cat >/dev/null; printf '\"'; head -c 1048574 /dev/zero | tr '\\0' y; printf '\"'"]
"#;
    let _worker = WorkerProcess::start(&server, "cmd-big", &config, &[]).await;
    let big = submit(&api, "out.big", json!({}), fast_retries(3)).await;
    let fits = submit(&api, "out.fits", json!({}), fast_retries(3)).await;

    let t = terminal(&api, &big).await;
    assert_eq!(t["state"], "dead", "{}", t["error"]);
    assert_eq!(t["attempts"], 1, "not retried");
    assert!(
        t["error"]
            .as_str()
            .is_some_and(|e| e.contains("more than 1048576 bytes")),
        "{}",
        t["error"]
    );
    let t = terminal(&api, &fits).await;
    assert_eq!(t["state"], "succeeded", "{}", t["error"]);
    assert_eq!(t["result"].as_str().map(str::len), Some(1_048_574));
}
