//! Replicas on one store, in one process: real servers on loopback over a
//! shared in-memory store (the test double; the PostgreSQL replicas are
//! tested with the real binary in dispatch-cli's `replicas.rs`). One
//! leads, the others forward to it; a leader cut off from the store steps
//! down before its lease ends and cannot write once another took over.
//! gRPC health is `SERVING` on the leader only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatch_client::Client;
use dispatch_proto::{CompleteTask, PollRequest, RegisterWorker, SubmitTask};
use dispatch_server::{ClusterConfig, Replica, RunningServer, ServerConfig};
use dispatch_store::{Faults, FaultyStore, MemoryStore, Store};
use serde_json::value::to_raw_value;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The lease under test: short, so that takeovers happen within a test.
const LEASE_MS: u64 = 900;

struct Replicas {
    servers: Vec<Option<RunningServer>>,
    faults: Vec<Arc<Faults>>,
    urls: Vec<String>,
}

async fn start_replica(store: Arc<dyn Store>, id: &str) -> RunningServer {
    let mut config = ServerConfig::new("127.0.0.1:0".parse().expect("addr"), "shared memory store");
    config.cluster = Some(ClusterConfig {
        replica: Replica {
            id: id.to_owned(),
            url: String::new(),
        },
        lease_ms: LEASE_MS,
    });
    // Long worker leases: only the leader's lease is under test.
    config.lease_ms = 30_000;
    dispatch_server::start(config, store).await.expect("start")
}

/// Three replicas on one store, each through its own fault switch.
async fn three() -> Replicas {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let shared = Arc::new(MemoryStore::new());
    let mut servers = Vec::new();
    let mut faults = Vec::new();
    let mut urls = Vec::new();
    for id in ["a", "b", "c"] {
        let (store, switch) = FaultyStore::new(shared.clone());
        let server = start_replica(Arc::new(store), id).await;
        urls.push(format!("http://{}", server.local_addr()));
        servers.push(Some(server));
        faults.push(switch);
    }
    Replicas {
        servers,
        faults,
        urls,
    }
}

async fn health(url: &str) -> serde_json::Value {
    reqwest::get(format!("{url}/healthz"))
        .await
        .expect("healthz")
        .json()
        .await
        .expect("json")
}

async fn eventually<F, Fut, T>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

impl Replicas {
    /// The index of the one leader, once every live replica agrees on it.
    async fn leader(&self) -> usize {
        let urls = self.urls.clone();
        let live: Vec<usize> = (0..urls.len())
            .filter(|&i| self.servers[i].is_some())
            .collect();
        eventually("one leader that every replica names", || {
            let (urls, live) = (urls.clone(), live.clone());
            async move {
                let mut leaders = Vec::new();
                let mut named = Vec::new();
                for &i in &live {
                    let h = health(&urls[i]).await;
                    if h["role"] == "leader" {
                        leaders.push(i);
                    }
                    named.push(h["leader_url"].as_str().map(str::to_owned));
                }
                let [one] = leaders.as_slice() else {
                    return None;
                };
                named
                    .iter()
                    .all(|n| n.as_deref() == Some(urls[*one].as_str()))
                    .then_some(*one)
            }
        })
        .await
    }
}

/// A poll for up to `max` tasks, waiting for them up to 5 s.
fn take(max: i64) -> PollRequest {
    PollRequest {
        max: Some(max),
        wait_ms: Some(5_000),
        ..PollRequest::default()
    }
}

fn task(kind: &str) -> SubmitTask {
    SubmitTask::new(
        kind,
        to_raw_value(&serde_json::json!({"n": 1})).expect("json"),
    )
}

/// One leader; a task submitted through one standby is run by a worker
/// talking to the other standby, and every replica reads it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_serves_everything() {
    let r = three().await;
    let leader = r.leader().await;
    let standbys: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let first = health(&r.urls[leader]).await;
    assert_eq!(first["role"], "leader");
    assert!(first["epoch"].as_u64().expect("epoch") >= 1);
    let standby = health(&r.urls[standbys[0]]).await;
    assert_eq!(standby["role"], "standby");
    assert_eq!(standby["epoch"], first["epoch"]);

    let submitter = Client::new(&r.urls[standbys[0]]).expect("client");
    let (submitted, created) = submitter
        .submit(&task("job"))
        .await
        .expect("submit via a standby");
    assert!(created);

    let worker_side = Client::new(&r.urls[standbys[1]]).expect("client");
    let reg = worker_side
        .register(&RegisterWorker {
            name: Some("w".into()),
            types: Some(vec!["job".into()]),
            capacity: Some(2),
            ..RegisterWorker::default()
        })
        .await
        .expect("register via the other standby");
    let polled = worker_side
        .poll(&reg.id, &take(1))
        .await
        .expect("poll via a standby");
    assert_eq!(polled.tasks.len(), 1);
    assert_eq!(polled.tasks[0].id, submitted.id);
    worker_side
        .complete(
            &submitted.id,
            &CompleteTask {
                worker_id: Some(reg.id.clone()),
                result: Some(to_raw_value(&serde_json::json!({"ok": true})).expect("json")),
            },
        )
        .await
        .expect("complete via a standby");
    for url in &r.urls {
        let seen = Client::new(url)
            .expect("client")
            .task(&submitted.id)
            .await
            .expect("get");
        assert_eq!(seen.state, "succeeded", "as read through {url}");
    }

    let cluster: serde_json::Value = reqwest::get(format!("{}/v1/cluster", r.urls[standbys[1]]))
        .await
        .expect("cluster")
        .json()
        .await
        .expect("json");
    let replicas = cluster["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 3, "{cluster}");
    let leaders: Vec<&str> = replicas
        .iter()
        .filter(|x| x["role"] == "leader")
        .map(|x| x["url"].as_str().expect("url"))
        .collect();
    assert_eq!(leaders, [r.urls[leader].as_str()], "{cluster}");
    assert_eq!(cluster["epoch"], first["epoch"]);
    assert!(replicas.iter().all(|x| x["alive"] == true), "{cluster}");
}

/// A leader shut down cleanly hands the lead over at once: a standby
/// leads with a higher epoch, and the tasks are all there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_hands_the_lead_over() {
    let mut r = three().await;
    let leader = r.leader().await;
    let epoch = health(&r.urls[leader]).await["epoch"]
        .as_u64()
        .expect("epoch");
    let client = Client::new(&r.urls[leader]).expect("client");
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(client.submit(&task("job")).await.expect("submit").0.id);
    }
    r.servers[leader].take().expect("running").shutdown().await;
    let next = r.leader().await;
    assert_ne!(next, leader);
    let h = health(&r.urls[next]).await;
    assert_eq!(h["epoch"].as_u64(), Some(epoch + 1), "{h}");
    assert_eq!(h["live_tasks"].as_u64(), Some(20), "{h}");
    let other = (0..3).find(|&i| i != leader && i != next).expect("a third");
    let via = Client::new(&r.urls[other]).expect("client");
    for id in &ids {
        assert_eq!(via.task(id).await.expect("get").state, "queued");
    }
    let (later, _) = via
        .submit(&task("job"))
        .await
        .expect("submit after the takeover");
    let later: u64 = later.id.parse().expect("numeric id");
    // A client given every replica, the stopped one first, moves on.
    let mut all = vec![r.urls[leader].clone()];
    all.extend((0..3).filter(|&i| i != leader).map(|i| r.urls[i].clone()));
    let any = Client::new(&all.join(",")).expect("client");
    any.submit(&task("job"))
        .await
        .expect("submit past a stopped replica");
    assert_ne!(any.base_url(), r.urls[leader]);
    let highest: u64 = ids
        .iter()
        .map(|i| i.parse::<u64>().expect("id"))
        .max()
        .expect("ids");
    assert!(
        later > highest,
        "ids stay unique across terms: {later} after {highest}"
    );
}

/// A leader cut off from the store (its claims and writes fail) stops
/// leading before its lease could end; another replica takes over; once
/// the link is back, the old leader's held-back writes are refused for
/// their epoch and it stays a standby that forwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_store_steps_down_and_is_fenced() {
    let r = three().await;
    let leader = r.leader().await;
    let old_epoch = health(&r.urls[leader]).await["epoch"]
        .as_u64()
        .expect("epoch");
    let client = Client::new(&r.urls[leader]).expect("client");
    let (kept, _) = client.submit(&task("job")).await.expect("submit");

    let cut = Instant::now();
    r.faults[leader].fail_writes(true);
    let url = r.urls[leader].clone();
    eventually("the cut-off leader stands by", || {
        let url = url.clone();
        async move { (health(&url).await["role"] == "standby").then_some(()) }
    })
    .await;
    // It stepped down by itself, since no write of its could be refused
    // (the store is out of its reach): it gives up at five sixths of the
    // lease after its last successful claim. The bound is loose, for a
    // loaded machine; that no two replicas ever write is the fence's job,
    // checked below.
    let stepped_down = cut.elapsed();
    assert!(
        stepped_down < Duration::from_millis(3 * LEASE_MS),
        "stepped down {stepped_down:?} after the cut (lease {LEASE_MS} ms)"
    );
    // Its submissions fail now rather than vanish.
    let refused = client.submit(&task("job")).await;
    assert!(refused.is_err(), "{refused:?}");

    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let urls = r.urls.clone();
    let next = eventually("another replica leads", || {
        let (urls, others) = (urls.clone(), others.clone());
        async move {
            for &i in &others {
                if health(&urls[i]).await["role"] == "leader" {
                    return Some(i);
                }
            }
            None
        }
    })
    .await;
    let h = health(&r.urls[next]).await;
    assert!(h["epoch"].as_u64().expect("epoch") > old_epoch, "{h}");

    r.faults[leader].fail_writes(false);
    assert_eq!(r.leader().await, next, "the old leader does not come back");
    let via_old = Client::new(&r.urls[leader]).expect("client");
    assert_eq!(via_old.task(&kept.id).await.expect("get").state, "queued");
    let (fresh, _) = via_old
        .submit(&task("job"))
        .await
        .expect("submit through the old leader");
    assert_eq!(
        Client::new(&r.urls[next])
            .expect("client")
            .task(&fresh.id)
            .await
            .expect("get")
            .state,
        "queued"
    );
}

/// A takeover leaves running tasks with their workers: the new leader
/// knows the worker (its registration was kept in the store), its
/// heartbeats go on, and its report of the task it held is accepted; the
/// task ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_stays_with_its_worker_across_a_takeover() {
    let mut r = three().await;
    let leader = r.leader().await;
    let urls: Vec<String> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| r.urls[i].clone())
        .collect();
    // The worker's client knows only the standbys: all it does is
    // forwarded, before and after the takeover.
    let client = Client::new(&urls.join(",")).expect("client");
    let reg = client
        .register(&RegisterWorker {
            name: Some("w".into()),
            types: Some(vec!["job".into()]),
            capacity: Some(4),
            ..RegisterWorker::default()
        })
        .await
        .expect("register");
    let (submitted, _) = client.submit(&task("job")).await.expect("submit");
    // A second task is handed over too, but (as if the answer had been
    // lost with the old leader) the worker never names it.
    let (lost, _) = client.submit(&task("job")).await.expect("submit");
    let polled = client.poll(&reg.id, &take(2)).await.expect("poll");
    assert_eq!(polled.tasks.len(), 2);

    r.servers[leader].take().expect("running").shutdown().await;
    let next = r.leader().await;
    let h = health(&r.urls[next]).await;
    assert_eq!(h["workers"].as_u64(), Some(1), "the worker is known: {h}");
    for id in [&submitted.id, &lost.id] {
        let seen = client.task(id).await.expect("get");
        assert_eq!(seen.state, "running", "still running on its worker");
    }
    client
        .heartbeat_running(&reg.id, vec![submitted.id.clone()], None)
        .await
        .expect("the worker's lease goes on");
    let back = client.task(&lost.id).await.expect("get");
    assert_eq!(
        (back.state.as_str(), back.attempts),
        ("queued", 0),
        "a task the worker does not hold goes back, no attempt spent"
    );
    assert_eq!(
        client.task(&submitted.id).await.expect("get").state,
        "running"
    );
    client
        .complete(
            &submitted.id,
            &CompleteTask {
                worker_id: Some(reg.id.clone()),
                result: Some(to_raw_value(&serde_json::json!({"ok": true})).expect("json")),
            },
        )
        .await
        .expect("its report is accepted by the new leader");
    let done = client.task(&submitted.id).await.expect("get");
    assert_eq!((done.state.as_str(), done.attempts), ("succeeded", 1));
    // It takes work from the new leader too: first the task it never got.
    let polled = client
        .poll(&reg.id, &take(1))
        .await
        .expect("poll the new leader");
    assert_eq!(polled.tasks[0].id, lost.id);
}

/// A `Watch` stream of the whole server's gRPC health at `url`.
async fn watch_health(url: &str) -> tonic::Streaming<HealthCheckResponse> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner()
}

/// The next status a `Watch` stream sends.
async fn next_status(watch: &mut tonic::Streaming<HealthCheckResponse>) -> ServingStatus {
    let reply = tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("a status within 20 s")
        .expect("the stream")
        .expect("a message");
    ServingStatus::try_from(reply.status).expect("a known status")
}

/// gRPC health says whether a replica takes work: `SERVING` on the leader
/// only, `NOT_SERVING` on standbys, so that a load balancer sends workers
/// to the leader. `Watch` follows the role: the cut-off leader turns
/// `NOT_SERVING`, the standby that takes over turns `SERVING`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_serves_on_the_leader_only_and_follows_the_role() {
    let r = three().await;
    let leader = r.leader().await;
    let mut watches = Vec::new();
    for url in &r.urls {
        watches.push(watch_health(url).await);
    }
    for (i, watch) in watches.iter_mut().enumerate() {
        let expected = if i == leader {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        assert_eq!(next_status(watch).await, expected, "replica {i}");
    }

    r.faults[leader].fail_writes(true);
    assert_eq!(
        next_status(&mut watches[leader]).await,
        ServingStatus::NotServing,
        "the cut-off leader stops serving"
    );
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let urls = r.urls.clone();
    let next = eventually("another replica leads", || {
        let (urls, others) = (urls.clone(), others.clone());
        async move {
            for &i in &others {
                if health(&urls[i]).await["role"] == "leader" {
                    return Some(i);
                }
            }
            None
        }
    })
    .await;
    assert_eq!(
        next_status(&mut watches[next]).await,
        ServingStatus::Serving,
        "the new leader serves"
    );
}
