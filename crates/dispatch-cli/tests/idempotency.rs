//! Idempotency keys: the same key with the same request answers the
//! original task (200); with a different request it is refused (409 naming
//! the key), single or batch, and both hold across a crash and restart.

mod common;

use common::{Body, Server, id_of, unique_type};
use serde_json::{Value, json};

/// `POST /v1/tasks` with this exact JSON text.
async fn submit_text(api: &common::Api, text: &str) -> common::Resp {
    api.send(
        "POST",
        "/v1/tasks",
        Body::Raw(text.as_bytes().to_vec(), Some("application/json")),
    )
    .await
}

#[tokio::test]
async fn a_key_reused_with_another_request_is_refused_also_after_a_restart() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("idem");
    let request =
        json!({"type": kind, "payload": {"to": "ada", "n": [1, 2]}, "idempotency_key": "order-1"});
    let first = api.post("/v1/tasks", request.clone()).await.expect(201);
    let id = id_of(&first);

    // The same request, spelt differently: members in another order, the
    // defaults written out, other spacing.
    let same = format!(
        r#"{{ "idempotency_key":"order-1", "payload":{{"n":[1,2],"to":"ada"}}, "queue":"default", "priority":0, "max_attempts":3, "type":"{kind}" }}"#
    );
    let again = submit_text(&api, &same).await.expect(200);
    assert_eq!(id_of(&again), id);

    // Another payload, another priority, another type: each is a conflict.
    let others = [
        json!({"type": kind, "payload": {"to": "bob", "n": [1, 2]}, "idempotency_key": "order-1"}),
        json!({"type": kind, "payload": {"to": "ada", "n": [1, 2]}, "priority": 5, "idempotency_key": "order-1"}),
        json!({"type": "other.kind", "payload": {"to": "ada", "n": [1, 2]}, "idempotency_key": "order-1"}),
    ];
    for other in &others {
        let p = api
            .post("/v1/tasks", other.clone())
            .await
            .problem(409, Some("idempotency_key"));
        let detail = p["detail"].as_str().expect("detail");
        assert!(detail.contains(&id) && detail.contains("order-1"), "{p}");
    }
    assert_eq!(
        api.list_ids(&format!("type={kind}")).await,
        vec![id.clone()]
    );
    assert_eq!(api.list_ids("type=other.kind").await, Vec::<String>::new());

    // A batch holding one conflicting task is refused whole.
    let fresh = json!({"type": kind, "payload": 7, "idempotency_key": "order-2"});
    let p = api
        .post(
            "/v1/tasks/batch",
            json!({"tasks": [fresh.clone(), others[0].clone()]}),
        )
        .await
        .problem(409, Some("tasks[1].idempotency_key"));
    assert!(p["detail"].as_str().expect("detail").contains(&id), "{p}");
    assert_eq!(
        api.list_ids(&format!("type={kind}")).await,
        vec![id.clone()]
    );
    // Two tasks of one batch under one key asking for different things.
    let twin = json!({"type": kind, "payload": 8, "idempotency_key": "order-2"});
    api.post("/v1/tasks/batch", json!({"tasks": [fresh.clone(), twin]}))
        .await
        .problem(409, Some("tasks[1].idempotency_key"));
    assert_eq!(
        api.list_ids(&format!("type={kind}")).await,
        vec![id.clone()]
    );

    // The digest is stored with the key: both answers survive a crash.
    let server = server.crash_and_restart().await;
    let api = server.api();
    let again = submit_text(&api, &same).await.expect(200);
    assert_eq!(id_of(&again), id);
    api.post("/v1/tasks", others[0].clone())
        .await
        .problem(409, Some("idempotency_key"));

    // A batch repeating the original beside a new task: the original's id,
    // and one new task.
    let batch = api
        .post("/v1/tasks/batch", json!({"tasks": [request, fresh]}))
        .await
        .expect(201);
    let tasks: Vec<String> = batch["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(tasks[0], id);
    assert_ne!(tasks[1], id);
    let mut ids = api.list_ids(&format!("type={kind}")).await;
    ids.sort();
    let mut expected = tasks.clone();
    expected.sort();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn a_delay_is_compared_as_sent_and_fires_keep_their_keys() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("later");
    // delay_ms digests as given, not as the instant it became, so a client
    // that retries a delayed submission later still gets its task.
    let request = json!({"type": kind, "delay_ms": 600000, "idempotency_key": "remind-1"});
    let first = api.post("/v1/tasks", request.clone()).await.expect(201);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let again = api.post("/v1/tasks", request).await.expect(200);
    assert_eq!(id_of(&again), id_of(&first));
    api.post(
        "/v1/tasks",
        json!({"type": kind, "delay_ms": 1000, "idempotency_key": "remind-1"}),
    )
    .await
    .problem(409, Some("idempotency_key"));

    // A schedule's fires carry derived keys and are stored as before.
    let fired = unique_type("fired");
    api.post(
        "/v1/schedules",
        json!({"name": "every-second", "cron": "* * * * * *", "task": {"type": fired}}),
    )
    .await
    .expect(201);
    let page = api
        .wait_list(
            &format!("type={fired}"),
            std::time::Duration::from_secs(20),
            |p| p["tasks"].as_array().is_some_and(|t| t.len() >= 2),
        )
        .await;
    let tasks = page["tasks"].as_array().expect("tasks");
    for t in tasks {
        let key = t["idempotency_key"].as_str().unwrap_or_default();
        assert!(key.starts_with("schedule:every-second:"), "{t}");
    }
    // A fire's key is in the namespace the server keeps for itself: a
    // client cannot send it, so it can never take a fire's place.
    let t: &Value = &tasks[0];
    let resent = json!({"type": fired, "idempotency_key": t["idempotency_key"]});
    api.post("/v1/tasks", resent)
        .await
        .problem(422, Some("idempotency_key"));
}
