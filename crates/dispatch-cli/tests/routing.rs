//! Routing strategies and label constraints over the HTTP API: the
//! scheduler chooses the worker, whatever the worker asks for.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Api, Server, id_of};
use serde_json::{Value, json};

/// Registers a worker with labels and a weight; returns its id.
async fn register(api: &Api, kind: &str, capacity: u32, weight: u32, labels: Value) -> String {
    let r = api
        .post(
            "/v1/workers",
            json!({"name": "w", "types": [kind], "capacity": capacity, "weight": weight, "labels": labels}),
        )
        .await
        .expect(201);
    r["id"].as_str().unwrap().to_owned()
}

/// Polls every worker once (no wait) and returns which task went where.
async fn collect(api: &Api, workers: &[String]) -> HashMap<String, String> {
    let mut placed = HashMap::new();
    for w in workers {
        for t in api.poll(w, 1000, 0).await {
            placed.insert(id_of(&t), w.clone());
        }
    }
    placed
}

#[tokio::test]
async fn consistent_hash_keeps_a_key_on_one_worker() {
    let server = Server::start().await;
    let api = server.api();
    let workers: Vec<String> = futures_join(&api, 4, "hashed").await;
    let mut ids_by_key: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..60 {
        let key = format!("customer-{}", i % 6);
        let t = api
            .submit(json!({"type": "hashed", "strategy": "consistent_hash", "routing_key": key}))
            .await;
        ids_by_key.entry(key).or_default().push(id_of(&t));
    }
    let placed = collect(&api, &workers).await;
    assert_eq!(placed.len(), 60);
    for (key, ids) in ids_by_key {
        let homes: std::collections::HashSet<&String> = ids.iter().map(|id| &placed[id]).collect();
        assert_eq!(homes.len(), 1, "{key} went to {homes:?}");
    }
    // consistent_hash without a key is refused, naming the field.
    api.post(
        "/v1/tasks",
        json!({"type": "hashed", "strategy": "consistent_hash"}),
    )
    .await
    .problem(422, Some("routing_key"));
}

async fn futures_join(api: &Api, n: usize, kind: &str) -> Vec<String> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(register(api, kind, 1000, 1, json!({})).await);
    }
    v
}

#[tokio::test]
async fn weighted_round_robin_follows_the_weights() {
    let server = Server::start().await;
    let api = server.api();
    let light = register(&api, "weighted", 1000, 1, json!({})).await;
    let heavy = register(&api, "weighted", 1000, 3, json!({})).await;
    let tasks: Vec<Value> = (0..400)
        .map(|_| json!({"type": "weighted", "strategy": "weighted_round_robin"}))
        .collect();
    api.post("/v1/tasks/batch", json!({"tasks": tasks}))
        .await
        .expect(201);
    let placed = collect(&api, &[light.clone(), heavy.clone()]).await;
    let on_heavy = placed.values().filter(|w| **w == heavy).count();
    assert_eq!(placed.len(), 400);
    assert_eq!(on_heavy, 300, "3 of every 4 to the weight-3 worker");
}

#[tokio::test]
async fn labelled_tasks_reach_only_workers_with_those_labels() {
    let server = Server::start().await;
    let api = server.api();
    let plain = register(&api, "render", 10, 1, json!({})).await;
    let gpu = register(&api, "render", 10, 1, json!({"gpu": "a100", "zone": "eu"})).await;
    let mut gpu_tasks = Vec::new();
    for _ in 0..5 {
        let t = api
            .submit(
                json!({"type": "render", "labels": {"gpu": "a100"}, "strategy": "least_loaded"}),
            )
            .await;
        gpu_tasks.push(id_of(&t));
    }
    let anywhere = id_of(&api.submit(json!({"type": "render"})).await);
    let placed = collect(&api, &[plain.clone(), gpu.clone()]).await;
    for id in &gpu_tasks {
        assert_eq!(placed[id], gpu, "labelled task {id} went elsewhere");
    }
    assert!(placed.contains_key(&anywhere));
    // A label no worker carries: the task waits.
    let nowhere = id_of(
        &api.submit(json!({"type": "render", "labels": {"gpu": "h100"}}))
            .await,
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(collect(&api, &[plain, gpu]).await.is_empty());
    assert_eq!(api.task(&nowhere).await["state"], "queued");
}

#[tokio::test]
async fn failover_uses_the_first_worker_until_it_is_gone() {
    let server = Server::with_lease(400).await;
    let api = server.api();
    let primary = register(&api, "fo", 100, 1, json!({})).await;
    let backup = register(&api, "fo", 100, 1, json!({})).await;
    for _ in 0..3 {
        api.submit(json!({"type": "fo", "strategy": "failover"}))
            .await;
    }
    let placed = collect(&api, &[primary.clone(), backup.clone()]).await;
    assert_eq!(placed.len(), 3, "{placed:?}");
    assert!(placed.values().all(|w| *w == primary), "{placed:?}");
    // The primary goes silent; its tasks and new ones move to the backup.
    let late = id_of(
        &api.submit(json!({"type": "fo", "strategy": "failover"}))
            .await,
    );
    let got = api.poll_n(&backup, 4, Duration::from_secs(5)).await;
    let got: Vec<String> = got.iter().map(id_of).collect();
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got.contains(&late));
}

#[tokio::test]
async fn unknown_and_unavailable_strategies_are_refused() {
    let server = Server::start().await;
    let api = server.api();
    api.post("/v1/tasks", json!({"type": "x", "strategy": "fastest"}))
        .await
        .problem(422, Some("strategy"));
    api.post("/v1/tasks", json!({"type": "x", "strategy": "broadcast"}))
        .await
        .problem(422, Some("strategy"));
    api.post("/v1/tasks", json!({"type": "x", "strategy": "sharding"}))
        .await
        .problem(422, Some("shards"));
    api.post("/v1/tasks", json!({"type": "x", "shards": 3}))
        .await
        .problem(422, Some("shards"));
    api.post("/v1/workers", json!({"types": ["x"], "weight": 0}))
        .await
        .problem(422, Some("weight"));
}

#[tokio::test]
async fn broadcast_reaches_every_matching_worker_exactly_once() {
    let server = Server::start().await;
    let api = server.api();
    let workers = futures_join(&api, 3, "bc").await;
    let _other = register(&api, "not-bc", 10, 1, json!({})).await;
    let parent = api
        .submit(json!({"type": "bc", "strategy": "broadcast", "payload": {"flush": true}}))
        .await;
    assert_eq!(parent["state"], "scheduled");
    let copies: Vec<String> = parent["depends_on"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(copies.len(), 3, "one copy per worker of the type");
    let placed = collect(&api, &workers).await;
    assert_eq!(placed.len(), 3);
    let mut homes: Vec<&String> = placed.values().collect();
    homes.sort();
    homes.dedup();
    assert_eq!(homes.len(), 3, "each worker got exactly one copy");
    for id in &copies {
        let copy = api.task(id).await;
        assert_eq!(copy["pinned_worker_id"].as_str(), Some(placed[id].as_str()));
        api.complete(id, &placed[id], json!("flushed"))
            .await
            .expect(200);
    }
    let done = api
        .wait_task(&id_of(&parent), Duration::from_secs(5), |t| {
            t["state"] == "succeeded"
        })
        .await;
    assert_eq!(done["state"], "succeeded");
}

#[tokio::test]
async fn sharding_splits_a_task_and_joins_the_shards() {
    let server = Server::start().await;
    let api = server.api();
    let workers = futures_join(&api, 2, "sh").await;
    let parent = api
        .submit(json!({"type": "sh", "strategy": "sharding", "shards": 4, "max_attempts": 1}))
        .await;
    let placed = collect(&api, &workers).await;
    assert_eq!(placed.len(), 4);
    let mut indexes = Vec::new();
    for (id, w) in &placed {
        let t = api.task(id).await;
        assert_eq!(t["shard_total"], 4);
        indexes.push(t["shard_index"].as_u64().unwrap());
        if t["shard_index"] == 2 {
            api.fail(id, w, "disk full", json!({})).await.expect(200);
        } else {
            api.complete(id, w, json!(null)).await.expect(200);
        }
    }
    indexes.sort();
    assert_eq!(indexes, vec![0, 1, 2, 3]);
    let ended = api
        .wait_task(&id_of(&parent), Duration::from_secs(5), |t| {
            t["state"] == "dead"
        })
        .await;
    assert!(
        ended["error"].as_str().unwrap().contains("ended dead"),
        "{ended}"
    );
}
