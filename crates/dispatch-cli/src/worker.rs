//! `dispatch worker --config worker.toml`: a worker that needs no code.
//!
//! The config file maps each task type to a shell command or an HTTP
//! endpoint; this module parses it ([`load`]), turns each entry into a
//! handler of the Rust worker SDK ([`Command`] or [`Endpoint`]) and runs one
//! [`dispatch_worker::Worker`] with them until Ctrl-C or SIGTERM. The SDK
//! does the protocol: registration, leases, timeouts, cancellation, retries
//! and the graceful drain.
//!
//! ```toml
//! server = "http://127.0.0.1:7070"   # --server / DISPATCH_SERVER win
//! name = "media-1"
//! concurrency = 4
//! labels = { zone = "eu" }
//!
//! [types."image.resize"]
//! command = ["sh", "scripts/resize.sh"]   # argv; no shell unless you ask
//! env = { QUALITY = "80" }
//! cwd = "."                               # relative to this file's folder
//! timeout_ms = 60000                      # a local cap
//!
//! [types."email.send"]
//! url = "http://127.0.0.1:8080/hooks/email"
//! method = "POST"
//! headers = { Authorization = "Bearer abc" }
//! ```
//!
//! **A command** gets the payload as JSON on stdin and `DISPATCH_TASK_ID`,
//! `DISPATCH_TASK_TYPE`, `DISPATCH_ATTEMPT` in its environment. Exit 0:
//! success, stdout is the result (JSON when it parses, else a string).
//! Exit [`EXIT_ABORT`] (100): failure without retry. Any other exit:
//! failure, retried with the task's backoff; the error is
//! `exit status N: <last lines of stderr>`. The command runs in a process
//! group of its own, killed whole on timeout, cancellation or shutdown of
//! the attempt, so nothing it started is left behind.
//!
//! **An endpoint** gets the payload as the JSON body with the headers
//! `X-Dispatch-Task-Id`, `X-Dispatch-Task-Type` and `X-Dispatch-Attempt`.
//! 2xx: success, the body is the result. 4xx other than 408 and 429:
//! failure without retry. Anything else, and network errors: retried
//! (after `Retry-After` seconds when the answer has that header). An
//! `https://` endpoint, like an `https://` scheduler, must present a
//! certificate that the system's CAs or `--ca` vouch for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use dispatch_worker::{TaskContext, TaskError, Worker};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// The scheduler asked when neither `--server`, `DISPATCH_SERVER` nor the
/// config file names one (the same as the CLI's default).
const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// Tasks run at once when the config does not say.
const DEFAULT_CONCURRENCY: i64 = 4;

/// The SDK's largest concurrency.
const MAX_CONCURRENCY: i64 = 10_000;

/// Exit code with which a command fails its task for good (no retry).
pub(crate) const EXIT_ABORT: i32 = 100;

/// Largest result: bytes of a command's stdout or an endpoint's body.
const MAX_OUTPUT: usize = 1024 * 1024;

/// Bytes of stderr (or of an error body) kept for the error text.
const ERROR_TAIL: usize = 2048;

/// Lines of stderr kept for the error text.
const ERROR_LINES: usize = 20;

/// What `dispatch worker` runs: the parsed config file.
#[derive(Debug)]
pub(crate) struct Config {
    /// `server`: the scheduler's URL, unless the CLI names one.
    pub(crate) server: Option<String>,
    /// `name`: shown in `dispatch workers`.
    pub(crate) name: String,
    /// `concurrency`: tasks run at once.
    pub(crate) concurrency: usize,
    /// `labels`: describe this worker to the scheduler.
    pub(crate) labels: BTreeMap<String, String>,
    /// `types`: one handler per task type.
    pub(crate) types: BTreeMap<String, TypeConfig>,
}

/// One `[types."..."]` table.
#[derive(Debug)]
pub(crate) struct TypeConfig {
    /// What runs a task of this type.
    pub(crate) action: Action,
    /// `timeout_ms`: a local cap on one attempt, on top of the task's own.
    pub(crate) timeout: Option<Duration>,
}

/// A command or an HTTP endpoint.
#[derive(Debug)]
pub(crate) enum Action {
    /// `command = [...]`.
    Command(Command),
    /// `url = "..."`.
    Http(Endpoint),
}

/// A process to start per task.
#[derive(Debug)]
pub(crate) struct Command {
    /// The program and its arguments; never through a shell.
    pub(crate) argv: Vec<String>,
    /// Variables added to the worker's own environment.
    pub(crate) env: BTreeMap<String, String>,
    /// Where it runs: `cwd`, relative to the config file's folder (which is
    /// also the default).
    pub(crate) cwd: PathBuf,
}

/// An HTTP endpoint to call per task.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// `url`: `http://...`.
    pub(crate) url: reqwest::Url,
    /// `method`: POST unless told.
    pub(crate) method: reqwest::Method,
    /// `headers`: sent with every call.
    pub(crate) headers: HeaderMap,
}

// ---- config ---------------------------------------------------------------

/// Reads and checks the config file at `path`; every error names the file
/// and the key at fault, on one line.
pub(crate) fn load(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the worker config {}", path.display()))?;
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let config = parse(&path.display().to_string(), &text, &base)?;
    check_programs(&path.display().to_string(), &config)?;
    Ok(config)
}

/// Parses a config: `file` names it in errors, `base` is the folder that
/// relative `cwd`s start from.
pub(crate) fn parse(file: &str, text: &str, base: &Path) -> Result<Config> {
    let table = parse_toml(file, text)?;
    let top = Section {
        file,
        path: String::new(),
        table: &table,
    };
    top.only(&["server", "name", "concurrency", "labels", "types"])?;
    let server = top.string("server")?;
    if let Some(s) = &server
        && !(s.starts_with("http://") || s.starts_with("https://"))
    {
        return Err(top.error(
            "server",
            format!("must be an http:// or https:// URL, got {s:?}"),
        ));
    }
    let name = top
        .string("name")?
        .unwrap_or_else(|| "dispatch-worker".into());
    if name.is_empty() {
        return Err(top.error("name", "must not be empty"));
    }
    let concurrency = top
        .integer("concurrency", 1, MAX_CONCURRENCY)?
        .unwrap_or(DEFAULT_CONCURRENCY) as usize;
    let labels = top.string_table("labels")?;
    let Some(types) = top.table("types")? else {
        return Err(top.error(
            "types",
            "is missing: add a [types.\"TYPE\"] table per task type",
        ));
    };
    if types.table.is_empty() {
        return Err(top.error("types", "give at least one task type"));
    }
    let mut parsed = BTreeMap::new();
    for kind in types.table.keys() {
        let Some(section) = types.table(kind)? else {
            unreachable!("the key exists")
        };
        if let Err(e) = dispatch_proto::task::validate_name("type", kind) {
            return Err(section.error_here(format!("is not a valid task type: {}", e.message)));
        }
        parsed.insert(kind.clone(), parse_type(&section, base)?);
    }
    Ok(Config {
        server,
        name,
        concurrency,
        labels,
        types: parsed,
    })
}

fn parse_type(s: &Section<'_>, base: &Path) -> Result<TypeConfig> {
    s.only(&[
        "command",
        "env",
        "cwd",
        "url",
        "method",
        "headers",
        "timeout_ms",
    ])?;
    let has = |k: &str| s.table.contains_key(k);
    let action = match (has("command"), has("url")) {
        (true, true) => return Err(s.error_here("give either command or url, not both")),
        (false, false) => return Err(s.error_here("give either command or url")),
        (true, false) => {
            for k in ["method", "headers"] {
                if has(k) {
                    return Err(s.error(k, "applies to url, not to command"));
                }
            }
            let argv = s.string_array("command")?.unwrap_or_default();
            if argv.is_empty() || argv[0].is_empty() {
                return Err(s.error(
                    "command",
                    "must name a program, e.g. [\"/usr/bin/env\", \"python3\", \"job.py\"]",
                ));
            }
            let env = s.string_table("env")?;
            if let Some(k) = env.keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
                return Err(s.error("env", format!("{k:?} is not a variable name")));
            }
            let cwd = match s.string("cwd")? {
                Some(c) => base.join(c),
                None => base.to_path_buf(),
            };
            Action::Command(Command { argv, env, cwd })
        }
        (false, true) => {
            for k in ["env", "cwd"] {
                if has(k) {
                    return Err(s.error(k, "applies to command, not to url"));
                }
            }
            let raw = s.string("url")?.unwrap_or_default();
            let url = reqwest::Url::parse(&raw)
                .map_err(|e| s.error("url", format!("{raw:?} is not a URL: {e}")))?;
            match url.scheme() {
                "http" | "https" => {}
                other => {
                    return Err(
                        s.error("url", format!("must be http:// or https://, not {other}:"))
                    );
                }
            }
            let method = match s.string("method")? {
                None => reqwest::Method::POST,
                Some(m) => reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| s.error("method", format!("{m:?} is not an HTTP method")))?,
            };
            let mut headers = HeaderMap::new();
            for (k, v) in s.string_table("headers")? {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| s.error("headers", format!("{k:?} is not a valid header name")))?;
                let value = HeaderValue::from_str(&v).map_err(|_| {
                    s.error(
                        "headers",
                        format!("the value of {k:?} is not a valid header"),
                    )
                })?;
                headers.insert(name, value);
            }
            Action::Http(Endpoint {
                url,
                method,
                headers,
            })
        }
    };
    let timeout = s
        .integer("timeout_ms", 1, i64::MAX)?
        .map(|ms| Duration::from_millis(ms as u64));
    Ok(TypeConfig { action, timeout })
}

/// Checks, before registering, that every command's program and folder
/// exist, so a typo is an error at start and not a dead task per attempt.
fn check_programs(file: &str, config: &Config) -> Result<()> {
    for (kind, t) in &config.types {
        let Action::Command(c) = &t.action else {
            continue;
        };
        let at = format!("{file}: types.{}", key(kind));
        if !c.cwd.is_dir() {
            return Err(anyhow!("{at}.cwd: {} is not a folder", c.cwd.display()));
        }
        let program = &c.argv[0];
        let found = if program.contains('/') {
            c.cwd.join(program).is_file()
        } else {
            let path = c
                .env
                .get("PATH")
                .cloned()
                .or_else(|| std::env::var("PATH").ok())
                .unwrap_or_default();
            std::env::split_paths(&path).any(|d| d.join(program).is_file())
        };
        if !found {
            return Err(anyhow!("{at}.command: program {program:?} not found"));
        }
    }
    Ok(())
}

/// Parses TOML text; a syntax error names the file, line and column, on
/// one line.
pub(crate) fn parse_toml(file: &str, text: &str) -> Result<toml::Table> {
    text.parse().map_err(|e: toml::de::Error| {
        let at = e
            .span()
            .map(|s| {
                let before = &text[..s.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {column}: ")
            })
            .unwrap_or_default();
        let message = e.message().trim().replace('\n', "; ");
        anyhow!("{file}: {at}{message}")
    })
}

/// A key as TOML writes it: bare when it can be, quoted otherwise.
fn key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare { k.to_owned() } else { format!("{k:?}") }
}

/// One table of a config file, with its place for error messages (also
/// used by the server's config file).
pub(crate) struct Section<'a> {
    pub(crate) file: &'a str,
    /// `types."email.send"`; empty at the top level.
    pub(crate) path: String,
    pub(crate) table: &'a toml::Table,
}

impl<'a> Section<'a> {
    pub(crate) fn key_path(&self, k: &str) -> String {
        if self.path.is_empty() {
            key(k)
        } else {
            format!("{}.{}", self.path, key(k))
        }
    }

    /// `file: path.key: message`.
    pub(crate) fn error(&self, k: &str, message: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{}: {}: {message}", self.file, self.key_path(k))
    }

    /// `file: path: message`, about the table itself.
    pub(crate) fn error_here(&self, message: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{}: {}: {message}", self.file, self.path)
    }

    /// Refuses keys not in `allowed`.
    pub(crate) fn only(&self, allowed: &[&str]) -> Result<()> {
        match self.table.keys().find(|k| !allowed.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => {
                let (last, rest) = allowed.split_last().expect("allowed is not empty");
                Err(self.error(
                    k,
                    format!("unknown key (expected {} or {last})", rest.join(", ")),
                ))
            }
        }
    }

    pub(crate) fn wrong_type(&self, k: &str, want: &str, got: &toml::Value) -> anyhow::Error {
        self.error(k, format!("must be {want}, not {}", got.type_str()))
    }

    pub(crate) fn string(&self, k: &str) -> Result<Option<String>> {
        match self.table.get(k) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.wrong_type(k, "a string", v)),
        }
    }

    pub(crate) fn integer(&self, k: &str, lo: i64, hi: i64) -> Result<Option<i64>> {
        match self.table.get(k) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) if (lo..=hi).contains(i) => Ok(Some(*i)),
            Some(toml::Value::Integer(i)) if hi == i64::MAX => {
                Err(self.error(k, format!("must be at least {lo}, got {i}")))
            }
            Some(toml::Value::Integer(i)) => {
                Err(self.error(k, format!("must be from {lo} to {hi}, got {i}")))
            }
            Some(v) => Err(self.wrong_type(k, "an integer", v)),
        }
    }

    pub(crate) fn string_array(&self, k: &str) -> Result<Option<Vec<String>>> {
        match self.table.get(k) {
            None => Ok(None),
            Some(toml::Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    v => Err(self.error(
                        k,
                        format!("item {i} must be a string, not {}", v.type_str()),
                    )),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(self.wrong_type(k, "an array of strings", v)),
        }
    }

    pub(crate) fn table(&self, k: &str) -> Result<Option<Section<'a>>> {
        match self.table.get(k) {
            None => Ok(None),
            Some(toml::Value::Table(t)) => Ok(Some(Section {
                file: self.file,
                path: self.key_path(k),
                table: t,
            })),
            Some(v) => Err(self.wrong_type(k, "a table", v)),
        }
    }

    pub(crate) fn string_table(&self, k: &str) -> Result<BTreeMap<String, String>> {
        let Some(t) = self.table(k)? else {
            return Ok(BTreeMap::new());
        };
        t.table
            .keys()
            .map(|name| Ok((name.clone(), t.string(name)?.unwrap_or_default())))
            .collect()
    }
}

// ---- running --------------------------------------------------------------

/// Runs the worker described by the config file at `path` until Ctrl-C or
/// SIGTERM. The scheduler is `cli_server` when the CLI named one (`--server`
/// or `DISPATCH_SERVER`), else the file's `server`, else the default.
/// `token` (`--token` / `DISPATCH_TOKEN`) is sent to a server that requires
/// one. `ca` (`--ca` / `DISPATCH_CA`) is a CA certificate trusted besides
/// the system's, for an https:// scheduler and https:// endpoints alike.
pub(crate) async fn run(
    path: &Path,
    cli_server: Option<String>,
    token: Option<String>,
    ca: Option<&Path>,
) -> Result<()> {
    crate::init_logs("info");
    let config = load(path)?;
    let server = cli_server
        .or(config.server.clone())
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    let https = server.starts_with("https://")
        || config
            .types
            .values()
            .any(|t| matches!(&t.action, Action::Http(e) if e.url.scheme() == "https"));
    let trust = crate::trust_store(ca, https)?;
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(trust.client_config(&[b"http/1.1"])?)
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("dispatch-worker/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot set up the HTTP client")?;
    let mut builder = Worker::builder(server.clone())
        .trust(trust)
        .name(config.name.clone())
        .concurrency(config.concurrency);
    if let Some(t) = token {
        builder = builder.token(t);
    }
    for (k, v) in &config.labels {
        builder = builder.label(k, v);
    }
    for (kind, t) in config.types {
        let handler = Arc::new(TypeHandler {
            action: t.action,
            timeout: t.timeout,
            http: http.clone(),
        });
        builder = builder.handle(kind, move |ctx: TaskContext, payload: Box<RawValue>| {
            let handler = handler.clone();
            async move { handler.run(ctx, payload).await }
        });
    }
    let worker = builder.build()?;
    tracing::info!(
        server = %server,
        name = %config.name,
        concurrency = config.concurrency,
        types = ?worker.types(),
        "generic worker starting"
    );
    worker.run(shutdown_signal()).await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down: taking no new tasks, finishing the running ones");
}

/// Runs the tasks of one type.
struct TypeHandler {
    action: Action,
    timeout: Option<Duration>,
    http: reqwest::Client,
}

impl TypeHandler {
    async fn run(&self, ctx: TaskContext, payload: Box<RawValue>) -> Result<Value, TaskError> {
        let started = Instant::now();
        let outcome = match &self.action {
            Action::Command(c) => run_command(c, &ctx, &payload, self.timeout).await,
            Action::Http(e) => call_endpoint(e, &self.http, &ctx, &payload, self.timeout).await,
        };
        let took = started.elapsed();
        match &outcome {
            Ok(_) => {
                tracing::info!(task = %ctx.id, kind = %ctx.kind, attempt = ctx.attempt, ?took, "succeeded")
            }
            Err(e) => {
                tracing::warn!(task = %ctx.id, kind = %ctx.kind, attempt = ctx.attempt, ?took, error = %e, "failed")
            }
        }
        outcome
    }
}

/// A result as JSON: the output itself when it is JSON (within the
/// server's nesting limit), else a string; nothing at all is `null`.
fn output_value(bytes: &[u8]) -> Value {
    let text = String::from_utf8_lossy(bytes);
    if text.trim().is_empty() {
        return Value::Null;
    }
    if dispatch_proto::json_depth(text.as_bytes()) <= dispatch_proto::MAX_JSON_DEPTH
        && let Ok(v) = serde_json::from_str(&text)
    {
        return v;
    }
    Value::String(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// The last lines of some output, for an error message.
fn tail_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.trim().lines().collect();
    lines[lines.len().saturating_sub(ERROR_LINES)..].join("\n")
}

/// Reads up to `limit` bytes, then discards the rest (so the writer never
/// blocks); says whether there was more.
async fn read_bounded(mut r: impl AsyncRead + Unpin, limit: usize) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let _ = (&mut r).take(limit as u64 + 1).read_to_end(&mut buf).await;
    let over = buf.len() > limit;
    if over {
        buf.truncate(limit);
        let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
    }
    (buf, over)
}

/// Reads everything, keeping the last `keep` bytes.
async fn read_tail(mut r: impl AsyncRead + Unpin, keep: usize) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut chunk = [0u8; 8192];
    while let Ok(n) = r.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&chunk[..n]);
        if tail.len() > 2 * keep {
            tail.drain(..tail.len() - keep);
        }
    }
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
    tail
}

/// SIGKILLs a command's whole process group when dropped (the SDK drops a
/// handler on timeout, cancellation or a lost lease), unless disarmed once
/// the command was reaped. The leader is not reaped while armed, so its
/// process group id cannot have been reused.
struct GroupKill(Option<rustix::process::Pid>);

impl GroupKill {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs one attempt as a process: payload on stdin, result on stdout.
async fn run_command(
    c: &Command,
    ctx: &TaskContext,
    payload: &RawValue,
    cap: Option<Duration>,
) -> Result<Value, TaskError> {
    // A path is taken relative to where the command runs (whatever the
    // platform would do); a bare name is looked up in PATH.
    let program = if c.argv[0].contains('/') {
        c.cwd.join(&c.argv[0])
    } else {
        PathBuf::from(&c.argv[0])
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&c.argv[1..])
        .envs(&c.env)
        .env("DISPATCH_TASK_ID", &ctx.id)
        .env("DISPATCH_TASK_TYPE", &ctx.kind)
        .env("DISPATCH_ATTEMPT", ctx.attempt.to_string())
        .env("DISPATCH_MAX_ATTEMPTS", ctx.max_attempts.to_string())
        .env("DISPATCH_QUEUE", &ctx.queue)
        .current_dir(&c.cwd)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Its own process group: Ctrl-C at the terminal reaches the worker
        // only (which then drains), and a kill reaches all it started.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        let text = format!("cannot start {:?}: {e}", c.argv[0]);
        match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                TaskError::abort(text)
            }
            _ => TaskError::retry(text),
        }
    })?;
    let mut group = GroupKill(
        child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32)),
    );
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let input = payload.get().as_bytes();
    let finished = {
        let work = async {
            let feed = async {
                if let Some(mut w) = stdin.take() {
                    // A command that does not read its input is fine.
                    let _ = w.write_all(input).await;
                    let _ = w.shutdown().await;
                }
            };
            let out = async {
                match stdout {
                    Some(r) => read_bounded(r, MAX_OUTPUT).await,
                    None => (Vec::new(), false),
                }
            };
            let err = async {
                match stderr {
                    Some(r) => read_tail(r, ERROR_TAIL).await,
                    None => Vec::new(),
                }
            };
            let ((), out, err, status) = tokio::join!(feed, out, err, child.wait());
            (out, err, status)
        };
        // The task's own timeout_ms is the SDK's: it drops this future,
        // and `group` and kill_on_drop stop the process.
        tokio::select! {
            r = work => Ok(r),
            _ = ctx.cancelled() => Err(TaskError::retry("cancelled")),
            _ = sleep_or_forever(cap) => Err(local_timeout(cap)),
        }
    };
    let ((stdout, too_big), stderr, status) = match finished {
        Ok(r) => r,
        Err(e) => {
            // Stop it and all it started, then reap it.
            group.kill();
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            return Err(e);
        }
    };
    let status =
        status.map_err(|e| TaskError::retry(format!("cannot wait for the command: {e}")))?;
    group.disarm();
    let with_stderr = |head: String| {
        let tail = tail_text(&stderr);
        if tail.is_empty() {
            head
        } else {
            format!("{head}: {tail}")
        }
    };
    match status.code() {
        Some(0) if too_big => Err(TaskError::abort(format!(
            "the command printed more than {MAX_OUTPUT} bytes on stdout (the result limit)"
        ))),
        Some(0) => Ok(output_value(&stdout)),
        Some(EXIT_ABORT) => Err(TaskError::abort(with_stderr(format!(
            "exit status {EXIT_ABORT}"
        )))),
        Some(code) => Err(TaskError::retry(with_stderr(format!("exit status {code}")))),
        None => {
            use std::os::unix::process::ExitStatusExt;
            let signal = status.signal().unwrap_or(0);
            Err(TaskError::retry(with_stderr(format!(
                "killed by signal {signal}"
            ))))
        }
    }
}

/// The error of an attempt stopped by the type's `timeout_ms`.
fn local_timeout(cap: Option<Duration>) -> TaskError {
    TaskError::retry(format!(
        "timeout after {} ms (timeout_ms of this type in the worker config)",
        cap.map_or(0, |d| d.as_millis())
    ))
}

async fn sleep_or_forever(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Runs one attempt as an HTTP call: payload as the body, answer as the
/// result.
async fn call_endpoint(
    e: &Endpoint,
    http: &reqwest::Client,
    ctx: &TaskContext,
    payload: &RawValue,
    cap: Option<Duration>,
) -> Result<Value, TaskError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.extend(e.headers.clone());
    let task_headers = [
        ("x-dispatch-task-id", ctx.id.clone()),
        ("x-dispatch-task-type", ctx.kind.clone()),
        ("x-dispatch-attempt", ctx.attempt.to_string()),
    ];
    for (name, value) in task_headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    let mut req = http
        .request(e.method.clone(), e.url.clone())
        .headers(headers);
    if !matches!(e.method, reqwest::Method::GET | reqwest::Method::HEAD) {
        req = req.body(payload.get().to_owned());
    }
    if let Some(cap) = cap {
        req = req.timeout(cap);
    }
    let resp = req.send().await.map_err(|err| {
        if err.is_timeout() {
            local_timeout(cap)
        } else {
            TaskError::retry(format!("{} {} failed: {}", e.method, e.url, chain(&err)))
        }
    })?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let (body, too_big) = read_body(resp, MAX_OUTPUT)
        .await
        .map_err(|err| TaskError::retry(format!("reading the answer failed: {}", chain(&err))))?;
    if status.is_success() {
        if too_big {
            return Err(TaskError::abort(format!(
                "the answer is larger than {MAX_OUTPUT} bytes (the result limit)"
            )));
        }
        return Ok(output_value(&body));
    }
    let mut text = format!("HTTP {}", status.as_u16());
    let snippet = tail_text(&body[..body.len().min(ERROR_TAIL)]);
    if !snippet.is_empty() {
        text = format!("{text}: {snippet}");
    }
    let code = status.as_u16();
    if status.is_client_error() && code != 408 && code != 429 {
        return Err(TaskError::abort(text));
    }
    Err(match retry_after {
        Some(d) => TaskError::retry_after(text, d),
        None => TaskError::retry(text),
    })
}

/// Reads a body up to `limit` bytes; says whether there was more.
async fn read_body(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > limit {
            body.extend_from_slice(&chunk[..limit - body.len()]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text` as `w.toml` and returns the error, on one line.
    #[track_caller]
    fn error_of(text: &str) -> String {
        match parse("w.toml", text, Path::new("/base")) {
            Ok(c) => panic!("parsed but should not have: {c:?}"),
            Err(e) => {
                let e = e.to_string();
                assert!(!e.contains('\n'), "not one line: {e}");
                e
            }
        }
    }

    #[track_caller]
    fn check(text: &str, expected: &str) {
        let e = error_of(text);
        assert!(e.starts_with(expected), "got {e:?}\nwanted {expected:?}...");
    }

    #[test]
    fn a_full_config_parses() {
        let c = parse(
            "w.toml",
            r#"
            server = "http://10.0.0.1:7070"
            name = "media-1"
            concurrency = 2
            labels = { zone = "eu" }

            [types."image.resize"]
            command = ["sh", "resize.sh"]
            env = { QUALITY = "80" }
            cwd = "jobs"
            timeout_ms = 500

            [types."email.send"]
            url = "http://127.0.0.1:8080/hooks/email"
            method = "put"
            headers = { Authorization = "Bearer x" }
            "#,
            Path::new("/etc/dispatch"),
        )
        .unwrap();
        assert_eq!(c.server.as_deref(), Some("http://10.0.0.1:7070"));
        assert_eq!(c.name, "media-1");
        assert_eq!(c.concurrency, 2);
        assert_eq!(c.labels["zone"], "eu");
        let resize = &c.types["image.resize"];
        assert_eq!(resize.timeout, Some(Duration::from_millis(500)));
        let Action::Command(cmd) = &resize.action else {
            panic!("not a command")
        };
        assert_eq!(cmd.argv, ["sh", "resize.sh"]);
        assert_eq!(cmd.env["QUALITY"], "80");
        assert_eq!(cmd.cwd, Path::new("/etc/dispatch/jobs"));
        let Action::Http(ep) = &c.types["email.send"].action else {
            panic!("not http")
        };
        assert_eq!(ep.method, reqwest::Method::PUT);
        assert_eq!(ep.headers["authorization"], "Bearer x");
    }

    #[test]
    fn defaults() {
        let c = parse(
            "w.toml",
            "[types.a]\ncommand = [\"true\"]\n[types.b]\nurl = \"http://h/\"\n",
            Path::new("/base"),
        )
        .unwrap();
        assert_eq!(c.server, None);
        assert_eq!(c.concurrency, 4);
        assert_eq!(c.name, "dispatch-worker");
        let Action::Command(cmd) = &c.types["a"].action else {
            panic!("not a command")
        };
        assert_eq!(cmd.cwd, Path::new("/base"));
        let Action::Http(ep) = &c.types["b"].action else {
            panic!("not http")
        };
        assert_eq!(ep.method, reqwest::Method::POST);
        assert_eq!(c.types["a"].timeout, None);
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let cmd = "command = [\"true\"]";
        let cases: &[(&str, &str)] = &[
            (
                "[types.\"email.send\"]\ncommand = [\"x\"]\nurl = \"http://h/\"",
                "w.toml: types.\"email.send\": give either command or url, not both",
            ),
            (
                "[types.\"email.send\"]\nenv = {}",
                "w.toml: types.\"email.send\": give either command or url",
            ),
            (
                "[types.a]\ncomand = [\"x\"]",
                "w.toml: types.a.comand: unknown key (expected command, env",
            ),
            (
                "sever = \"x\"\n[types.a]\ncommand = [\"x\"]",
                "w.toml: sever: unknown key",
            ),
            ("name = \"w\"", "w.toml: types: is missing"),
            ("types = {}", "w.toml: types: give at least one task type"),
            ("types = 3", "w.toml: types: must be a table, not integer"),
            (
                "[types]\na = 1",
                "w.toml: types.a: must be a table, not integer",
            ),
            (
                "concurrency = 0\n[types.a]\ncommand = [\"x\"]",
                "w.toml: concurrency: must be from 1 to 10000, got 0",
            ),
            (
                "concurrency = \"4\"\n[types.a]\ncommand = [\"x\"]",
                "w.toml: concurrency: must be an integer, not string",
            ),
            (
                "server = \"localhost:7070\"\n[types.a]\ncommand = [\"x\"]",
                "w.toml: server: must be an http:// or https:// URL",
            ),
            (
                "labels = { zone = 1 }\n[types.a]\ncommand = [\"x\"]",
                "w.toml: labels.zone: must be a string, not integer",
            ),
            (
                "[types.a]\ncommand = []",
                "w.toml: types.a.command: must name a program",
            ),
            (
                "[types.a]\ncommand = \"echo hi\"",
                "w.toml: types.a.command: must be an array of strings, not string",
            ),
            (
                "[types.a]\ncommand = [\"sh\", 1]",
                "w.toml: types.a.command: item 1 must be a string, not integer",
            ),
            (
                "[types.a]\ncommand = [\"x\"]\ntimeout_ms = 0",
                "w.toml: types.a.timeout_ms: must be at least 1, got 0",
            ),
            (
                "[types.a]\ncommand = [\"x\"]\nmethod = \"GET\"",
                "w.toml: types.a.method: applies to url, not to command",
            ),
            (
                "[types.a]\nurl = \"http://h/\"\ncwd = \"/\"",
                "w.toml: types.a.cwd: applies to command, not to url",
            ),
            (
                "[types.a]\nurl = \"not a url\"",
                "w.toml: types.a.url: \"not a url\" is not a URL",
            ),
            (
                "[types.a]\nurl = \"ftp://h/\"",
                "w.toml: types.a.url: must be http:// or https://, not ftp:",
            ),
            (
                "[types.a]\nurl = \"http://h/\"\nmethod = \"G T\"",
                "w.toml: types.a.method: \"G T\" is not an HTTP method",
            ),
            (
                "[types.a]\nurl = \"http://h/\"\nheaders = { \"a b\" = \"x\" }",
                "w.toml: types.a.headers: \"a b\" is not a valid header name",
            ),
            (
                "[types.\"bad type!\"]\ncommand = [\"x\"]",
                "w.toml: types.\"bad type!\": is not a valid task type",
            ),
            ("[types.a]\ncommand = [\"x\"\n", "w.toml: line 2, column"),
        ];
        for (text, expected) in cases {
            check(text, expected);
        }
        // And a valid type beside them parses.
        parse("w.toml", &format!("[types.a]\n{cmd}"), Path::new("/")).unwrap();
    }

    #[test]
    fn missing_programs_and_folders_are_errors_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let parse_in = |text: &str| parse("w.toml", text, dir.path()).unwrap();
        let c = parse_in("[types.a]\ncommand = [\"no-such-program-here\"]");
        let e = check_programs("w.toml", &c).unwrap_err().to_string();
        assert_eq!(
            e,
            "w.toml: types.a.command: program \"no-such-program-here\" not found"
        );
        let c = parse_in("[types.a]\ncommand = [\"./missing.sh\"]");
        let e = check_programs("w.toml", &c).unwrap_err().to_string();
        assert!(e.starts_with("w.toml: types.a.command: program"), "{e}");
        let c = parse_in("[types.a]\ncommand = [\"sh\"]\ncwd = \"nope\"");
        let e = check_programs("w.toml", &c).unwrap_err().to_string();
        assert!(e.starts_with("w.toml: types.a.cwd: "), "{e}");
        let c = parse_in("[types.a]\ncommand = [\"sh\"]");
        check_programs("w.toml", &c).unwrap();
    }

    #[test]
    fn the_example_config_is_valid() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let c = load(&examples.join("worker.toml")).unwrap();
        assert!(matches!(c.types["image.resize"].action, Action::Command(_)));
        assert!(matches!(c.types["email.send"].action, Action::Http(_)));
    }

    #[test]
    fn outputs_become_json_or_strings() {
        assert_eq!(output_value(b""), Value::Null);
        assert_eq!(output_value(b" \n"), Value::Null);
        assert_eq!(output_value(b"{\"a\": 1}\n"), serde_json::json!({"a": 1}));
        assert_eq!(output_value(b"42"), serde_json::json!(42));
        assert_eq!(output_value(b"hello\n"), serde_json::json!("hello"));
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(output_value(deep.as_bytes()), Value::String(deep.clone()));
    }

    #[test]
    fn error_tails_keep_the_last_lines() {
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let tail = tail_text(text.as_bytes());
        assert!(tail.starts_with("line 11\n"), "{tail}");
        assert!(tail.ends_with("line 30"), "{tail}");
    }
}
