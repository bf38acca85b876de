//! Helpers shared by the end-to-end tests: a real `dispatch server` child
//! process on a free loopback port and a small HTTP client that refuses to
//! see a 5xx, and checks every answer against the server's OpenAPI
//! document (`openapi.rs`).
//!
//! Every test owns its server. [`Server`] kills (SIGKILL) and reaps the
//! child when dropped, also when the test panics, and then prints the tail
//! of the server's output to help with the diagnosis.

#![allow(dead_code)]

pub(crate) mod openapi;
pub(crate) mod postgres;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_dispatch");

/// How long a server may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Lines of server output kept for diagnosis.
const LOG_TAIL: usize = 200;

/// Polling period of every bounded wait.
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(20);

/// A free loopback port: bind port 0, read it, release it.
pub(crate) fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

type Log = Arc<Mutex<VecDeque<String>>>;

fn drain(stream: impl Read + Send + 'static, log: Log, listening: Option<mpsc::Sender<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Some(tx) = listening
                .as_ref()
                .filter(|_| line.contains("dispatch server listening on"))
            {
                let _ = tx.send(line.clone());
            }
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            if log.len() == LOG_TAIL {
                log.pop_front();
            }
            log.push_back(line);
        }
    });
}

/// Makes `ring` the process's rustls provider, for the tests' own
/// `reqwest::Client::new()`: reqwest has no `ring` feature of its own, and
/// without a provider it panics when a client is built. (`dispatch-client`
/// names `ring` in its configurations and needs none.)
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A `dispatch server` child process on a free loopback port.
pub(crate) struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`, or `https://` when it serves TLS.
    pub(crate) url: String,
    /// Extra `dispatch server` arguments, kept for restarts.
    args: Vec<String>,
    /// The CA certificate (PEM file) that the TLS server's certificate
    /// chains to; `None` for a cleartext server.
    ca: Option<PathBuf>,
    log: Log,
    data: PathBuf,
    /// Removed when the last server using it is gone (after the kill).
    dir: Arc<tempfile::TempDir>,
}

/// How a start attempt ended.
enum Attempt {
    Up(Server),
    PortTaken,
}

impl Server {
    /// A server with the default lease on a fresh data folder.
    pub(crate) async fn start() -> Server {
        Server::with_args(&[]).await
    }

    /// A server with `--lease-ms lease_ms` on a fresh data folder.
    pub(crate) async fn with_lease(lease_ms: u64) -> Server {
        Server::with_args(&["--lease-ms", &lease_ms.to_string()]).await
    }

    /// A server with extra `dispatch server` arguments on a fresh folder.
    pub(crate) async fn with_args(args: &[&str]) -> Server {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let args = args.iter().map(|a| a.to_string()).collect();
        Server::start_in(dir, args, None, None).await
    }

    /// A server with extra arguments whose address space is limited to
    /// `mib` MiB (`ulimit -v`), so that a memory overshoot fails as a crash
    /// instead of passing quietly.
    pub(crate) async fn with_address_space(args: &[&str], mib: u64) -> Server {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let args = args.iter().map(|a| a.to_string()).collect();
        Server::start_in(dir, args, None, Some(mib)).await
    }

    /// A TLS server: `args` give `--tls-cert` and `--tls-key`, whose
    /// certificate chains to the CA certificate in the PEM file `ca`.
    pub(crate) async fn with_tls(ca: &Path, args: &[&str]) -> Server {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let args = args.iter().map(|a| a.to_string()).collect();
        Server::start_in(dir, args, Some(ca.to_owned()), None).await
    }

    /// A server on the data folder `dir`; retries on another port when the
    /// chosen one was taken in between.
    async fn start_in(
        dir: Arc<tempfile::TempDir>,
        args: Vec<String>,
        ca: Option<PathBuf>,
        address_space_mib: Option<u64>,
    ) -> Server {
        for _ in 0..5 {
            match Server::try_start(dir.clone(), args.clone(), ca.clone(), address_space_mib).await
            {
                Attempt::Up(s) => return s,
                Attempt::PortTaken => continue,
            }
        }
        panic!("could not start a server: the chosen ports were taken five times");
    }

    async fn try_start(
        dir: Arc<tempfile::TempDir>,
        args: Vec<String>,
        ca: Option<PathBuf>,
        address_space_mib: Option<u64>,
    ) -> Attempt {
        install_crypto_provider();
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let data = dir.path().join("data");
        let mut cmd = match address_space_mib {
            // The shell sets the limit, then becomes the server (same pid).
            Some(mib) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -v {} && exec \"$0\" \"$@\"", mib * 1024))
                    .arg(BIN);
                sh
            }
            None => Command::new(BIN),
        };
        cmd.arg("server").arg("--listen").arg(&listen);
        // A replica on PostgreSQL has no data folder.
        if !args.iter().any(|a| a == "--store") {
            cmd.arg("--data").arg(&data);
        }
        cmd.args(&args);
        cmd.env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn dispatch server");
        let log: Log = Arc::default();
        let (tx, rx) = mpsc::channel();
        drain(
            child.stdout.take().expect("stdout"),
            log.clone(),
            Some(tx.clone()),
        );
        drain(child.stderr.take().expect("stderr"), log.clone(), Some(tx));
        let mut server = Server {
            child: Some(child),
            url: format!("{}://{listen}", if ca.is_some() { "https" } else { "http" }),
            args,
            ca,
            log,
            data,
            dir,
        };
        // The child prints its address once it is bound: wait for that, so
        // that a health answer cannot come from someone else on the port.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(line) = rx.try_recv() {
                assert!(
                    line.contains(&listen),
                    "server listens elsewhere than asked: {line}"
                );
                break;
            }
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                // Let the drain threads catch the last lines.
                let drained = Instant::now() + Duration::from_millis(500);
                while Instant::now() < drained && !server.logs().contains("cannot listen") {
                    tokio::time::sleep(POLL_EVERY).await;
                }
                let logs = server.logs();
                server.child = None;
                if logs.contains("cannot listen") || logs.contains("in use") {
                    return Attempt::PortTaken;
                }
                panic!("dispatch server exited at start ({status}):\n{logs}");
            }
            assert!(
                Instant::now() < deadline,
                "dispatch server did not report listening within {START_TIMEOUT:?}:\n{}",
                server.logs()
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
        let api = server.api();
        loop {
            let health = api.http.get(format!("{}/healthz", server.url)).send().await;
            if health.is_ok_and(|r| r.status().as_u16() == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "GET /healthz did not answer 200 within {START_TIMEOUT:?}:\n{}",
                server.logs()
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
        // Fetched now, while no test holds the server's connections.
        openapi::document(&api.http, &server.url).await;
        Attempt::Up(server)
    }

    /// A client for this server.
    pub(crate) fn api(&self) -> Api {
        match &self.ca {
            Some(ca) => Api::with_ca(&self.url, ca),
            None => Api::new(&self.url),
        }
    }

    /// The data folder given to `--data`.
    pub(crate) fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The tail of the server's output.
    pub(crate) fn logs(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the server process.
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Starts another server with the same arguments (a replica on the
    /// same store) on its own port and folder.
    pub(crate) async fn sibling(&self) -> Server {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        Server::start_in(dir, self.args.clone(), self.ca.clone(), None).await
    }

    /// SIGKILLs the server and reaps it.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILLs the server and starts a new one on the same data folder
    /// (on a new port).
    pub(crate) async fn crash_and_restart(mut self) -> Server {
        self.kill();
        Server::start_in(self.dir.clone(), self.args.clone(), self.ca.clone(), None).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- dispatch server output ({}) ----\n{}",
                self.url,
                self.logs()
            );
        }
    }
}

/// One HTTP answer, read in full.
#[derive(Debug)]
pub(crate) struct Resp {
    /// The status code.
    pub(crate) status: u16,
    /// The Content-Type header, or "".
    pub(crate) content_type: String,
    /// The headers.
    pub(crate) headers: reqwest::header::HeaderMap,
    /// The body as text.
    pub(crate) text: String,
    /// What was asked, for messages.
    pub(crate) what: String,
}

impl Resp {
    /// The body as JSON; panics with the body when it is not JSON.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {}", self.what, self.text))
    }

    /// Asserts the status and returns the JSON body.
    #[track_caller]
    pub(crate) fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status, status,
            "{} -> {}: {}",
            self.what, self.status, self.text
        );
        if self.text.is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts an `application/problem+json` answer with this status and,
    /// when given, this `field`; returns the problem.
    #[track_caller]
    pub(crate) fn problem(&self, status: u16, field: Option<&str>) -> Value {
        assert_eq!(
            self.status, status,
            "{} -> {}: {}",
            self.what, self.status, self.text
        );
        let p = assert_problem_shape(self);
        if let Some(f) = field {
            assert_eq!(
                p["field"],
                json!(f),
                "{}: wrong field in {}",
                self.what,
                self.text
            );
        }
        p
    }
}

/// Asserts the problem+json shape of an error answer: the media type and
/// the `type`, `title`, `status` and `detail` members.
#[track_caller]
pub(crate) fn assert_problem_shape(r: &Resp) -> Value {
    let essence = r
        .content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    assert_eq!(
        essence, "application/problem+json",
        "{}: content type of a {} answer: {}",
        r.what, r.status, r.text
    );
    let p = r.json();
    assert!(
        p.is_object(),
        "{}: problem is not an object: {}",
        r.what,
        r.text
    );
    for key in ["type", "title", "detail"] {
        assert!(
            p[key].as_str().is_some_and(|s| !s.is_empty()),
            "{}: problem without a {key} string: {}",
            r.what,
            r.text
        );
    }
    assert_eq!(
        p["status"],
        json!(r.status),
        "{}: problem status: {}",
        r.what,
        r.text
    );
    p
}

/// A request body.
pub(crate) enum Body {
    /// No body at all.
    None,
    /// JSON sent as `application/json`.
    Json(Value),
    /// Raw bytes with this Content-Type (`None`: no Content-Type header).
    Raw(Vec<u8>, Option<&'static str>),
}

/// A small HTTP client for one server. Every answer is checked not to be
/// a 5xx: the contract forbids one for any input.
#[derive(Clone)]
pub(crate) struct Api {
    /// The server's base URL.
    pub(crate) base: String,
    http: reqwest::Client,
}

impl Api {
    /// A client for `base`.
    pub(crate) fn new(base: &str) -> Api {
        Api::with_trust(base, &dispatch_client::TrustStore::empty())
    }

    /// A client for the `https://` server at `base` whose certificate
    /// chains to the CA certificate in the PEM file `ca`.
    pub(crate) fn with_ca(base: &str, ca: &Path) -> Api {
        let pem = std::fs::read(ca).expect("read the CA certificate");
        let trust = dispatch_client::TrustStore::with_ca_pem(&pem).expect("a usable CA");
        Api::with_trust(base, &trust)
    }

    fn with_trust(base: &str, trust: &dispatch_client::TrustStore) -> Api {
        let tls = trust.client_config(&[b"http/1.1"]).expect("TLS config");
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(20))
            .build()
            .expect("reqwest client");
        Api {
            base: base.to_owned(),
            http,
        }
    }

    /// Sends a request and reads the whole answer, which must not be a
    /// 5xx and must be what the server's OpenAPI document says.
    pub(crate) async fn send(&self, method: &str, path: &str, body: Body) -> Resp {
        let what = format!("{method} {path}");
        let method_name = method;
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        match body {
            Body::None => {}
            Body::Json(v) => req = req.json(&v),
            Body::Raw(bytes, ct) => {
                if let Some(ct) = ct {
                    req = req.header(reqwest::header::CONTENT_TYPE, ct);
                }
                req = req.body(bytes);
            }
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: no answer: {e:?}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let content_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("{what}: cannot read the body: {e:?}"));
        assert!(
            status < 500,
            "{what} answered {status} (a 5xx is never allowed): {text}"
        );
        openapi::document(&self.http, &self.base).await.check(
            &what,
            method_name,
            path,
            status,
            &content_type,
            &text,
        );
        Resp {
            status,
            content_type,
            headers,
            text,
            what,
        }
    }

    /// `GET path`.
    pub(crate) async fn get(&self, path: &str) -> Resp {
        self.send("GET", path, Body::None).await
    }

    /// `POST path` with a JSON body.
    pub(crate) async fn post(&self, path: &str, body: Value) -> Resp {
        self.send("POST", path, Body::Json(body)).await
    }

    /// `POST path` without a body.
    pub(crate) async fn post_empty(&self, path: &str) -> Resp {
        self.send("POST", path, Body::None).await
    }

    /// `DELETE path`.
    pub(crate) async fn delete(&self, path: &str) -> Resp {
        self.send("DELETE", path, Body::None).await
    }

    // ---- client endpoints -------------------------------------------------

    /// Submits a task; asserts 201 and returns it.
    pub(crate) async fn submit(&self, task: Value) -> Value {
        self.post("/v1/tasks", task).await.expect(201)
    }

    /// Submits a batch; asserts 201 and returns the ids, in order.
    pub(crate) async fn submit_batch(&self, tasks: Vec<Value>) -> Vec<String> {
        let r = self
            .post("/v1/tasks/batch", json!({"tasks": tasks}))
            .await
            .expect(201);
        ids_of(&r["tasks"])
    }

    /// Submits a task of `kind` with `payload`; returns its id.
    pub(crate) async fn submit_id(&self, kind: &str, payload: Value) -> String {
        let t = self.submit(json!({"type": kind, "payload": payload})).await;
        id_of(&t)
    }

    /// One task; asserts 200.
    pub(crate) async fn task(&self, id: &str) -> Value {
        self.get(&format!("/v1/tasks/{id}")).await.expect(200)
    }

    /// One page of `GET /v1/tasks?query`; asserts 200.
    pub(crate) async fn list(&self, query: &str) -> Value {
        self.get(&format!("/v1/tasks?{query}")).await.expect(200)
    }

    /// The ids of one page of `GET /v1/tasks?query`.
    pub(crate) async fn list_ids(&self, query: &str) -> Vec<String> {
        ids_of(&self.list(query).await["tasks"])
    }

    /// Registered workers, as `GET /v1/workers` lists them.
    pub(crate) async fn workers(&self) -> Vec<Value> {
        let w = self.get("/v1/workers").await.expect(200);
        w["workers"].as_array().expect("workers array").clone()
    }

    // ---- worker protocol ----------------------------------------------------

    /// Registers a worker for `types` with `capacity`; asserts 201 and the
    /// reply's shape; returns its id.
    pub(crate) async fn register(&self, types: &[&str], capacity: u32) -> String {
        let r = self
            .post(
                "/v1/workers",
                json!({"name": "test-worker", "types": types, "labels": {}, "capacity": capacity}),
            )
            .await
            .expect(201);
        assert!(r["lease_ms"].as_u64().is_some(), "register reply: {r}");
        assert!(r["heartbeat_ms"].as_u64().is_some(), "register reply: {r}");
        r["id"].as_str().expect("worker id").to_owned()
    }

    /// One poll; asserts 200 and returns the whole reply.
    pub(crate) async fn poll_raw(&self, worker: &str, body: Value) -> Value {
        self.post(&format!("/v1/workers/{worker}/poll"), body)
            .await
            .expect(200)
    }

    /// One poll for up to `max` tasks, holding up to `wait_ms`.
    pub(crate) async fn poll(&self, worker: &str, max: u32, wait_ms: u64) -> Vec<Value> {
        let r = self
            .poll_raw(worker, json!({"max": max, "wait_ms": wait_ms}))
            .await;
        r["tasks"].as_array().expect("tasks array").clone()
    }

    /// Polls until `n` tasks were received in total or `within` passes;
    /// returns what was received.
    pub(crate) async fn poll_n(&self, worker: &str, n: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            let want = u32::try_from(n - got.len()).expect("small n");
            got.extend(self.poll(worker, want, 100).await);
        }
        got
    }

    /// Polls until one task arrives; panics after `within`.
    pub(crate) async fn poll_one(&self, worker: &str, within: Duration) -> Value {
        let mut got = self.poll_n(worker, 1, within).await;
        assert_eq!(
            got.len(),
            1,
            "worker {worker} got no task within {within:?}"
        );
        got.remove(0)
    }

    /// `POST /v1/tasks/{task}/complete`.
    pub(crate) async fn complete(&self, task: &str, worker: &str, result: Value) -> Resp {
        self.post(
            &format!("/v1/tasks/{task}/complete"),
            json!({"worker_id": worker, "result": result}),
        )
        .await
    }

    /// `POST /v1/tasks/{task}/fail` with `extra` fields merged in.
    pub(crate) async fn fail(&self, task: &str, worker: &str, error: &str, extra: Value) -> Resp {
        let mut body = json!({"worker_id": worker, "error": error});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        self.post(&format!("/v1/tasks/{task}/fail"), body).await
    }

    /// `POST /v1/workers/{worker}/heartbeat`.
    pub(crate) async fn heartbeat(&self, worker: &str) -> Resp {
        self.post_empty(&format!("/v1/workers/{worker}/heartbeat"))
            .await
    }

    /// Polls `GET /v1/tasks/{id}` until `pred` holds; panics after `within`.
    pub(crate) async fn wait_task(
        &self,
        id: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let t = self.task(id).await;
            if pred(&t) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} did not reach the condition within {within:?}: {t}"
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Polls `GET /v1/tasks?query` until `pred` holds on the page; panics
    /// after `within`.
    pub(crate) async fn wait_list(
        &self,
        query: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let page = self.list(query).await;
            if pred(&page) {
                return page;
            }
            assert!(
                Instant::now() < deadline,
                "GET /v1/tasks?{query} did not match within {within:?}: {page}"
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

/// The HTTP client of `api`, for requests outside its helpers.
pub(crate) fn http_client(api: &Api) -> reqwest::Client {
    api.http.clone()
}

/// The `id` of a task or worker object.
#[track_caller]
pub(crate) fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no string id in {v}"))
        .to_owned()
}

/// The ids of an array of objects.
#[track_caller]
pub(crate) fn ids_of(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(id_of)
        .collect()
}

/// A task type unique to the caller, so that list filters isolate it.
pub(crate) fn unique_type(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Checks that `s` is an RFC 3339 timestamp (`2026-01-31T09:30:00.123Z` or
/// with an offset such as `+02:00`).
#[track_caller]
pub(crate) fn assert_rfc3339(v: &Value) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("timestamp is not a string: {v}"));
    assert!(is_rfc3339(s), "not an RFC 3339 timestamp: {s:?}");
}

fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let date_time = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && matches!(b[10], b'T' | b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !date_time {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    let r = rest.as_bytes();
    let offset = r.len() == 6
        && matches!(r[0], b'+' | b'-')
        && r[1..3].iter().all(u8::is_ascii_digit)
        && r[3] == b':'
        && r[4..6].iter().all(u8::is_ascii_digit);
    matches!(rest, "Z" | "z") || offset
}

/// Runs the `dispatch` binary with `args` and `env`, killing it after 20 s.
pub(crate) fn run_cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("DISPATCH_SERVER")
        .env_remove("DISPATCH_TOKEN")
        .env_remove("DISPATCH_CA")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn dispatch");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(out) => out.expect("wait for dispatch"),
        Err(_) => {
            // The waiting thread owns the child; end it by its pid.
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("dispatch {args:?} did not finish within 20 s");
        }
    }
}

impl Server {
    /// SIGKILLs the server, leaves it down for `down`, then starts a new
    /// one on the same data folder (on a new port).
    pub(crate) async fn crash_and_restart_after(mut self, down: Duration) -> Server {
        self.kill();
        tokio::time::sleep(down).await;
        Server::start_in(self.dir.clone(), self.args.clone(), self.ca.clone(), None).await
    }
}

/// A command's stdout as text.
pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command's stderr as text.
pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
#[track_caller]
pub(crate) fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "dispatch failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// Runs `dispatch token create` and returns the printed token.
pub(crate) fn create_token(file: &Path, scope: &str, name: &str) -> String {
    let out = run_cli(
        &[
            "token",
            "create",
            "--scope",
            scope,
            "--name",
            name,
            "--tokens",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "token create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "the token is printed once: {stdout:?}");
    let token = lines[0].to_owned();
    assert!(token.starts_with("dsp_") && token.len() > 40, "{token}");
    token
}
