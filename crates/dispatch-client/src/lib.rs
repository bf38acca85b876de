//! A typed client for a Dispatch server, over its REST API and its HTTP
//! worker protocol.
//!
//! [`Client`] has one method per endpoint; requests and replies are the
//! wire types of `dispatch-proto`. Errors separate "the server could not be
//! reached" from "the server refused" ([`ClientError::Api`] carries the
//! problem+json body, with the field at fault).
//!
//! A client may be given several servers, comma-separated
//! (`http://a:7070,http://b:7070`): the replicas of one cluster. A request
//! that cannot reach one (connection refused, no route) goes to the next,
//! and the client keeps using the one that answered; any replica serves
//! every endpoint, forwarding to the leader.
//!
//! `https://` servers are verified against a [`TrustStore`]: the system's
//! certificate authorities, plus a private CA with
//! [`TrustStore::with_ca_pem`] and [`Client::with_trust`] (rustls with the
//! `ring` provider).
//!
//! ```no_run
//! # async fn demo() -> Result<(), dispatch_client::ClientError> {
//! use dispatch_client::Client;
//! use dispatch_proto::SubmitTask;
//!
//! let client = Client::new("http://127.0.0.1:7070")?;
//! let payload = serde_json::value::to_raw_value(&serde_json::json!({"to": "a@example.com"})).unwrap();
//! let (task, _created) = client.submit(&SubmitTask::new("email.send", payload)).await?;
//! println!("{} is {}", task.id, task.state);
//! # Ok(()) }
//! ```

mod tls;

use std::time::Duration;

use dispatch_proto::{
    BulkCount, BulkFilter, CompleteTask, CreateSchedule, FailTask, HeartbeatReply,
    HeartbeatRequest, ListTasks, PollReply, PollRequest, Problem, QueueJson, QueueList,
    RegisterReply, RegisterWorker, ScheduleJson, ScheduleList, SubmitBatch, SubmitTask, TaskJson,
    TaskList, TaskRef, TaskRefBatch, WorkerList,
};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use tls::{TlsError, TrustStore};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL is not a valid http(s) URL.
    #[error("invalid server URL {0:?}")]
    BadUrl(String),
    /// The server could not be reached (refused, reset, timed out).
    #[error("cannot reach the server at {url}: {source}")]
    Unreachable {
        /// The server's base URL.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("{0}")]
    Api(Problem),
    /// TLS could not be set up (no trusted roots, a bad CA certificate).
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// The server's reply could not be decoded.
    #[error("unexpected reply from the server: {0}")]
    Decode(String),
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api(p) => Some(p.status),
            _ => None,
        }
    }
}

/// A heartbeat not answered within this long failed: a worker's lease is
/// seconds, and a server that holds a heartbeat longer is not serving.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

/// `request`, written for `from`, sent to `to` instead: the same path and
/// query under another base URL.
fn rebase(mut request: reqwest::Request, from: &str, to: &str) -> reqwest::Request {
    if from != to
        && let Some(rest) = request.url().as_str().strip_prefix(from)
        && let Ok(url) = reqwest::Url::parse(&format!("{to}{rest}"))
    {
        *request.url_mut() = url;
    }
    request
}

/// A connection to a Dispatch server, or to the replicas of one. Cheap to
/// clone; clones share which replica answered last.
#[derive(Clone)]
pub struct Client {
    /// Every server given, the first as written in request URLs.
    bases: std::sync::Arc<[String]>,
    /// The index of the one that answered last.
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    http: reqwest::Client,
    token: Option<std::sync::Arc<str>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("Client")
            .field("bases", &self.bases)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Client {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:7070`), or
    /// for several replicas, comma-separated.
    /// An `https://` server must present a certificate that the system's
    /// certificate authorities vouch for; see [`Client::with_trust`] for a
    /// private CA.
    pub fn new(base: &str) -> Result<Client, ClientError> {
        let trust = if base.starts_with("https://") {
            TrustStore::system()?
        } else {
            TrustStore::empty()
        };
        Client::with_trust(base, &trust)
    }

    /// A client for the server at `base` that trusts the certificate
    /// authorities of `trust` for `https://`.
    pub fn with_trust(base: &str, trust: &TrustStore) -> Result<Client, ClientError> {
        let bases: Vec<String> = base
            .split(',')
            .map(|b| b.trim().trim_end_matches('/').to_owned())
            .collect();
        for b in &bases {
            if !(b.starts_with("http://") || b.starts_with("https://")) {
                return Err(ClientError::BadUrl(b.clone()));
            }
        }
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(trust.client_config(&[b"http/1.1"])?)
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok(Client {
            bases: bases.into(),
            current: Default::default(),
            http,
            token: None,
        })
    }

    /// The same client, sending `token` as `Authorization: Bearer` on every
    /// request (a server started with `--tokens` requires one). An empty
    /// token means none.
    pub fn with_token(mut self, token: impl Into<String>) -> Client {
        let token: String = token.into();
        self.token = (!token.is_empty()).then(|| token.into());
        self
    }

    /// The bearer token, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The base URL of the server in use: the one that answered last.
    pub fn base_url(&self) -> &str {
        &self.bases[self.current.load(std::sync::atomic::Ordering::Relaxed) % self.bases.len()]
    }

    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<(StatusCode, R), ClientError> {
        let mut req = self.request(method, path);
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        self.finish(req).await
    }

    /// A request to `path` on the server, with the token if there is one.
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let req = self
            .http
            .request(method, format!("{}{}", self.bases[0], path));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Sends `req` to the server in use; when it cannot be reached, to the
    /// next one given, and so on once round. A request that never reached
    /// a server cannot have been acted on, so sending it again elsewhere is
    /// safe. Answers the response and the base URL that gave it.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(reqwest::Response, String), ClientError> {
        use std::sync::atomic::Ordering;
        let n = self.bases.len();
        let start = self.current.load(Ordering::Relaxed);
        let request = req.build().map_err(|source| ClientError::Unreachable {
            url: self.bases[start % n].clone(),
            source,
        })?;
        let mut last = None;
        // A streamed body cannot be sent twice: such a request gets one try.
        let mut pending = Some(request);
        for attempt in 0..n {
            let Some(request) = pending.take() else {
                break;
            };
            pending = request.try_clone();
            let index = (start + attempt) % n;
            let base = &self.bases[index];
            match self
                .http
                .execute(rebase(request, &self.bases[0], base))
                .await
            {
                Ok(resp) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok((resp, base.clone()));
                }
                Err(source) => {
                    let unreachable = source.is_connect();
                    if source.is_timeout() && n > 1 {
                        // It took the request and never answered (a
                        // frozen replica): the next request goes to the
                        // next one. This one is not sent again, since it
                        // may have been acted on.
                        let _ = self.current.compare_exchange(
                            start % n,
                            (index + 1) % n,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                    }
                    last = Some(ClientError::Unreachable {
                        url: base.clone(),
                        source,
                    });
                    if !unreachable {
                        break;
                    }
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// Sends `req`; a success is decoded as `R`, anything else as a
    /// problem.
    async fn finish<R: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, R), ClientError> {
        let (resp, url) = self.send(req).await?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Unreachable { url, source })?;
        if !status.is_success() {
            let problem = serde_json::from_slice::<Problem>(&bytes).unwrap_or_else(|_| {
                Problem::new(
                    status.as_u16(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                )
            });
            return Err(ClientError::Api(problem));
        }
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes[..]
        };
        let value =
            serde_json::from_slice(bytes).map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok((status, value))
    }

    /// Submits a task. Returns it and whether it was created (false: its
    /// idempotency key was seen and this is the original).
    pub async fn submit(&self, task: &SubmitTask) -> Result<(TaskJson, bool), ClientError> {
        let (status, t) = self
            .call(Method::POST, "/v1/tasks", Some(task), None)
            .await?;
        Ok((t, status == StatusCode::CREATED))
    }

    /// Submits tasks all or nothing.
    pub async fn submit_batch(&self, tasks: Vec<SubmitTask>) -> Result<Vec<TaskJson>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Reply {
            tasks: Vec<TaskJson>,
        }
        let (_, r): (_, Reply) = self
            .call(
                Method::POST,
                "/v1/tasks/batch",
                Some(&SubmitBatch { tasks }),
                None,
            )
            .await?;
        Ok(r.tasks)
    }

    /// Submits tasks all or nothing, and asks only for their ids and
    /// states back (`Prefer: return=minimal`): less for the server to write
    /// and for the client to read when the rest of each task is known.
    pub async fn submit_batch_minimal(
        &self,
        tasks: Vec<SubmitTask>,
    ) -> Result<Vec<TaskRef>, ClientError> {
        let req = self
            .request(Method::POST, "/v1/tasks/batch")
            .header("prefer", "return=minimal")
            .json(&SubmitBatch { tasks });
        let (_, r): (_, TaskRefBatch) = self.finish(req).await?;
        Ok(r.tasks)
    }

    /// One task.
    pub async fn task(&self, id: &str) -> Result<TaskJson, ClientError> {
        let path = format!("/v1/tasks/{}", encode(id));
        Ok(self.call::<(), _>(Method::GET, &path, None, None).await?.1)
    }

    /// A task's attempts, oldest first (the one running now last, with no
    /// outcome).
    pub async fn attempts(&self, id: &str) -> Result<dispatch_proto::AttemptList, ClientError> {
        let path = format!("/v1/tasks/{}/attempts", encode(id));
        Ok(self.call::<(), _>(Method::GET, &path, None, None).await?.1)
    }

    /// Waits until a task is terminal or `timeout` passes (the server holds
    /// each request up to `wait_ms`); returns it as last seen.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<TaskJson, ClientError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let wait_ms = left.as_millis().min(60_000) as u64;
            let path = format!("/v1/tasks/{}?wait_ms={wait_ms}", encode(id));
            let t: TaskJson = self
                .call::<(), _>(
                    Method::GET,
                    &path,
                    None,
                    Some(Duration::from_millis(wait_ms) + Duration::from_secs(30)),
                )
                .await?
                .1;
            let terminal = matches!(t.state.as_str(), "succeeded" | "dead" | "cancelled");
            if terminal || wait_ms == 0 {
                return Ok(t);
            }
        }
    }

    /// A page of tasks.
    pub async fn tasks(&self, q: &ListTasks) -> Result<TaskList, ClientError> {
        let query = serde_urlencoded_pairs(q);
        let path = if query.is_empty() {
            "/v1/tasks".to_owned()
        } else {
            format!("/v1/tasks?{query}")
        };
        Ok(self.call::<(), _>(Method::GET, &path, None, None).await?.1)
    }

    /// Cancels a task.
    pub async fn cancel(&self, id: &str) -> Result<TaskJson, ClientError> {
        let path = format!("/v1/tasks/{}/cancel", encode(id));
        Ok(self.call::<(), _>(Method::POST, &path, None, None).await?.1)
    }

    /// Requeues a dead task with a fresh set of attempts.
    pub async fn retry(&self, id: &str) -> Result<TaskJson, ClientError> {
        let path = format!("/v1/tasks/{}/retry", encode(id));
        Ok(self.call::<(), _>(Method::POST, &path, None, None).await?.1)
    }

    /// Requeues every dead task matching `filter` (at least one filter)
    /// with a fresh set of attempts; returns how many.
    pub async fn retry_matching(&self, filter: &BulkFilter) -> Result<BulkCount, ClientError> {
        Ok(self
            .call(Method::POST, "/v1/tasks/retry", Some(filter), None)
            .await?
            .1)
    }

    /// Cancels every live task matching `filter` (at least one filter);
    /// returns how many.
    pub async fn cancel_matching(&self, filter: &BulkFilter) -> Result<BulkCount, ClientError> {
        Ok(self
            .call(Method::POST, "/v1/tasks/cancel", Some(filter), None)
            .await?
            .1)
    }

    /// Creates a cron schedule.
    pub async fn create_schedule(&self, s: &CreateSchedule) -> Result<ScheduleJson, ClientError> {
        Ok(self
            .call(Method::POST, "/v1/schedules", Some(s), None)
            .await?
            .1)
    }

    /// Every cron schedule, by name.
    pub async fn schedules(&self) -> Result<ScheduleList, ClientError> {
        Ok(self
            .call::<(), _>(Method::GET, "/v1/schedules", None, None)
            .await?
            .1)
    }

    /// One cron schedule.
    pub async fn schedule(&self, name: &str) -> Result<ScheduleJson, ClientError> {
        let path = format!("/v1/schedules/{}", encode(name));
        Ok(self.call::<(), _>(Method::GET, &path, None, None).await?.1)
    }

    /// Changes a cron schedule (what `req` leaves out stays).
    pub async fn update_schedule(
        &self,
        name: &str,
        req: &dispatch_proto::PatchSchedule,
    ) -> Result<ScheduleJson, ClientError> {
        let path = format!("/v1/schedules/{}", encode(name));
        Ok(self.call(Method::PATCH, &path, Some(req), None).await?.1)
    }

    /// Pauses a cron schedule: it does not fire until resumed.
    pub async fn pause_schedule(&self, name: &str) -> Result<ScheduleJson, ClientError> {
        let path = format!("/v1/schedules/{}/pause", encode(name));
        Ok(self.call::<(), _>(Method::POST, &path, None, None).await?.1)
    }

    /// Resumes a paused cron schedule; fires missed meanwhile follow its
    /// misfire policy.
    pub async fn resume_schedule(&self, name: &str) -> Result<ScheduleJson, ClientError> {
        let path = format!("/v1/schedules/{}/resume", encode(name));
        Ok(self.call::<(), _>(Method::POST, &path, None, None).await?.1)
    }

    /// Fires a cron schedule once now; returns the fire's task.
    pub async fn trigger_schedule(&self, name: &str) -> Result<TaskJson, ClientError> {
        let path = format!("/v1/schedules/{}/trigger", encode(name));
        Ok(self.call::<(), _>(Method::POST, &path, None, None).await?.1)
    }

    /// Deletes a cron schedule; the tasks of its past fires stay.
    pub async fn delete_schedule(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/v1/schedules/{}", encode(name));
        self.call::<(), serde_json::Value>(Method::DELETE, &path, None, None)
            .await
            .map(|_| ())
    }

    /// Every queue, by name, with its settings and counts by state.
    pub async fn queues(&self) -> Result<QueueList, ClientError> {
        Ok(self
            .call::<(), _>(Method::GET, "/v1/queues", None, None)
            .await?
            .1)
    }

    /// Pauses a queue: its tasks wait until it is resumed (running ones go
    /// on). Any name is a queue.
    pub async fn pause_queue(&self, name: &str) -> Result<QueueJson, ClientError> {
        let path = format!("/v1/queues/{}/pause", encode(name));
        Ok(self.call::<(), _>(Method::POST, &path, None, None).await?.1)
    }

    /// Changes a queue's settings: each member of `changes` is one of
    /// `weight`, `max_running`, `rate_per_sec`, `burst`, `max_per_key`,
    /// `max_depth`, `strategy`, with a value or null (clears it).
    pub async fn update_queue(
        &self,
        name: &str,
        changes: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<QueueJson, ClientError> {
        let path = format!("/v1/queues/{}", encode(name));
        Ok(self
            .call(Method::PATCH, &path, Some(changes), None)
            .await?
            .1)
    }

    /// Resumes a paused queue.
    pub async fn resume_queue(&self, name: &str) -> Result<QueueJson, ClientError> {
        let path = format!("/v1/queues/{}/resume", encode(name));
        Ok(self.call::<(), _>(Method::POST, &path, None, None).await?.1)
    }

    /// Registered workers.
    pub async fn workers(&self) -> Result<WorkerList, ClientError> {
        Ok(self
            .call::<(), _>(Method::GET, "/v1/workers", None, None)
            .await?
            .1)
    }

    /// Registers a worker.
    pub async fn register(&self, w: &RegisterWorker) -> Result<RegisterReply, ClientError> {
        Ok(self
            .call(Method::POST, "/v1/workers", Some(w), None)
            .await?
            .1)
    }

    /// Renews a worker's lease; returns the tasks it must stop.
    pub async fn heartbeat(&self, worker: &str) -> Result<HeartbeatReply, ClientError> {
        let path = format!("/v1/workers/{}/heartbeat", encode(worker));
        Ok(self
            .call::<(), _>(Method::POST, &path, None, Some(HEARTBEAT_TIMEOUT))
            .await?
            .1)
    }

    /// Renews a worker's lease, naming every task it runs (so that after a
    /// scheduler takeover it keeps them, and those it never got go back)
    /// and the `handout` of the last poll answer whose tasks are among
    /// them (so that tasks of an answer that was lost go back too).
    pub async fn heartbeat_running(
        &self,
        worker: &str,
        running: Vec<String>,
        last_handout: Option<String>,
    ) -> Result<HeartbeatReply, ClientError> {
        let path = format!("/v1/workers/{}/heartbeat", encode(worker));
        let body = HeartbeatRequest {
            running: Some(running),
            last_handout,
        };
        Ok(self
            .call(Method::POST, &path, Some(&body), Some(HEARTBEAT_TIMEOUT))
            .await?
            .1)
    }

    /// Reports finished tasks and takes assigned ones, holding up to
    /// `req.wait_ms`.
    pub async fn poll(&self, worker: &str, req: &PollRequest) -> Result<PollReply, ClientError> {
        let path = format!("/v1/workers/{}/poll", encode(worker));
        let wait = Duration::from_millis(req.wait_ms.unwrap_or(0).max(0) as u64);
        let timeout = wait + Duration::from_secs(30);
        Ok(self
            .call(Method::POST, &path, Some(req), Some(timeout))
            .await?
            .1)
    }

    /// Reports a success.
    pub async fn complete(&self, task: &str, req: &CompleteTask) -> Result<(), ClientError> {
        let path = format!("/v1/tasks/{}/complete", encode(task));
        self.call::<_, serde_json::Value>(Method::POST, &path, Some(req), None)
            .await
            .map(|_| ())
    }

    /// Reports a failed attempt.
    pub async fn fail(&self, task: &str, req: &FailTask) -> Result<(), ClientError> {
        let path = format!("/v1/tasks/{}/fail", encode(task));
        self.call::<_, serde_json::Value>(Method::POST, &path, Some(req), None)
            .await
            .map(|_| ())
    }

    /// Leaves gracefully; the worker's tasks are requeued.
    pub async fn leave(&self, worker: &str) -> Result<(), ClientError> {
        let path = format!("/v1/workers/{}", encode(worker));
        self.call::<(), serde_json::Value>(Method::DELETE, &path, None, None)
            .await
            .map(|_| ())
    }

    /// The server's health document.
    pub async fn health(&self) -> Result<serde_json::Value, ClientError> {
        Ok(self
            .call::<(), _>(Method::GET, "/healthz", None, None)
            .await?
            .1)
    }
}

/// Percent-encodes a path segment.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn serde_urlencoded_pairs(q: &ListTasks) -> String {
    let pairs = [
        ("state", &q.state),
        ("type", &q.kind),
        ("queue", &q.queue),
        ("limit", &q.limit),
        ("cursor", &q.cursor),
    ];
    pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect::<Vec<_>>()
        .join("&")
}
