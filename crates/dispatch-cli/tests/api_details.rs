//! The small things a first user of the API trips on: report answers in
//! one shape, `results` always in a poll reply, ids echoed as sent in
//! errors, a retried task without its previous run, and which content
//! types a body may declare.

mod common;

use std::time::Duration;

use common::{Body, Server, id_of, unique_type};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(10);

/// The members of a JSON object, sorted.
fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

#[tokio::test]
async fn every_report_is_answered_in_one_shape() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("report");
    let w = api.register(&[&kind], 4).await;

    // complete, fail with a retry left, fail for good.
    let done = api.submit_id(&kind, json!(1)).await;
    let retried = id_of(
        &api.submit(json!({"type": kind, "backoff": {"initial_ms": 600000}}))
            .await,
    );
    let dead = id_of(&api.submit(json!({"type": kind, "max_attempts": 1})).await);
    let got = api.poll_n(&w, 3, WITHIN).await;
    assert_eq!(got.len(), 3, "{got:?}");

    let a = api
        .complete(&done, &w, json!({"ok": true}))
        .await
        .expect(200);
    assert_eq!(
        a,
        json!({"task_id": done, "status": 200, "state": "succeeded"})
    );
    let a = api.fail(&retried, &w, "busy", json!({})).await.expect(200);
    assert_eq!(
        a,
        json!({"task_id": retried, "status": 200, "state": "scheduled"})
    );
    let a = api.fail(&dead, &w, "broken", json!({})).await.expect(200);
    assert_eq!(a, json!({"task_id": dead, "status": 200, "state": "dead"}));

    // The same shape inside a poll reply, plus `detail` on a refusal.
    let t1 = api.submit_id(&kind, json!(2)).await;
    let t2 = id_of(&api.submit(json!({"type": kind, "max_attempts": 1})).await);
    assert_eq!(api.poll_n(&w, 2, WITHIN).await.len(), 2);
    let r = api
        .poll_raw(
            &w,
            json!({"max": 1, "results": [
                {"task_id": t1, "result": 1},
                {"task_id": t2, "error": "no", "abort": true},
                {"task_id": done, "result": 2},
            ]}),
        )
        .await;
    let results = r["results"].as_array().expect("results");
    assert_eq!(results.len(), 3, "{r}");
    assert_eq!(
        results[0],
        json!({"task_id": t1, "status": 200, "state": "succeeded"})
    );
    assert_eq!(
        results[1],
        json!({"task_id": t2, "status": 200, "state": "dead"})
    );
    assert_eq!(
        keys(&results[2]),
        ["detail", "state", "status", "task_id"],
        "{r}"
    );
    assert_eq!(results[2]["status"], 409);
    assert_eq!(results[2]["state"], Value::Null);

    // A poll that reports nothing still answers `results`, empty.
    let r = api.poll_raw(&w, json!({"max": 1})).await;
    assert_eq!(r["results"], json!([]), "{r}");
    let r = api
        .send("POST", &format!("/v1/workers/{w}/poll"), Body::None)
        .await
        .expect(200);
    assert_eq!(r["results"], json!([]), "{r}");
}

#[tokio::test]
async fn ids_are_echoed_as_the_client_sent_them() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("echo");
    // A short worker id that parses, but names no worker.
    let short = "wdeadbeef";
    let long = "w00000000deadbeef";
    for (method, path) in [
        ("POST", format!("/v1/workers/{short}/heartbeat")),
        ("POST", format!("/v1/workers/{short}/poll")),
        ("DELETE", format!("/v1/workers/{short}")),
    ] {
        let r = api.send(method, &path, Body::None).await;
        let p = r.problem(404, None);
        let detail = p["detail"].as_str().expect("detail");
        assert!(
            detail.contains(short) && !detail.contains(long),
            "{method} {path}: {p}"
        );
    }
    let w = api.register(&[&kind], 1).await;
    let id = api.submit_id(&kind, json!(null)).await;
    api.poll_one(&w, WITHIN).await;
    for (path, body) in [
        (
            format!("/v1/tasks/{id}/complete"),
            json!({"worker_id": short}),
        ),
        (
            format!("/v1/tasks/{id}/fail"),
            json!({"worker_id": short, "error": "x"}),
        ),
    ] {
        let p = api.post(&path, body).await.problem(409, None);
        let detail = p["detail"].as_str().expect("detail");
        assert!(detail.contains(short) && !detail.contains(long), "{p}");
    }
    // Task ids too: `007` is task 7, and is called `007` back.
    let r = api
        .poll_raw(
            &w,
            json!({"max": 1, "results": [{"task_id": format!("00{id}"), "result": 1}]}),
        )
        .await;
    assert_eq!(r["results"][0]["task_id"], json!(format!("00{id}")), "{r}");
    assert_eq!(r["results"][0]["status"], 200, "{r}");
}

#[tokio::test]
async fn a_retried_dead_task_starts_afresh_and_stays_so_after_a_restart() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("again");
    let w = api.register(&[&kind], 1).await;
    let id = id_of(&api.submit(json!({"type": kind, "max_attempts": 1})).await);
    api.poll_one(&w, WITHIN).await;
    api.fail(&id, &w, "broken", json!({})).await.expect(200);
    let t = api.task(&id).await;
    assert_eq!(t["state"], "dead", "{t}");
    assert_eq!(t["error"], "broken", "{t}");
    assert!(
        t["started_at"].is_string() && t["finished_at"].is_string(),
        "{t}"
    );
    // Nobody runs it, so it stays queued.
    api.delete(&format!("/v1/workers/{w}")).await.expect(204);

    let fresh = |t: &Value| {
        assert_eq!(t["state"], "queued", "{t}");
        assert_eq!(t["attempts"], 0, "{t}");
        for field in ["error", "started_at", "finished_at", "worker_id", "result"] {
            assert_eq!(t[field], Value::Null, "{field} after the retry: {t}");
        }
    };
    let r = api
        .post_empty(&format!("/v1/tasks/{id}/retry"))
        .await
        .expect(200);
    fresh(&r);
    fresh(&api.task(&id).await);
    let server = server.crash_and_restart().await;
    fresh(&server.api().task(&id).await);
}

#[tokio::test]
async fn json_bodies_may_come_as_curl_sends_them_other_types_are_415() {
    let server = Server::start().await;
    let api = server.api();
    let kind = unique_type("ct");
    let body = format!(r#"{{"type": "{kind}"}}"#);
    // JSON, none at all, and what `curl -d` declares by default.
    for ct in [
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("application/merge-patch+json"),
        None,
        Some("application/x-www-form-urlencoded"),
    ] {
        let r = api
            .send(
                "POST",
                "/v1/tasks",
                Body::Raw(body.clone().into_bytes(), ct),
            )
            .await;
        assert_eq!(r.status, 201, "{ct:?}: {}", r.text);
    }
    // A real form is not JSON.
    let r = api
        .send(
            "POST",
            "/v1/tasks",
            Body::Raw(
                b"type=x".to_vec(),
                Some("application/x-www-form-urlencoded"),
            ),
        )
        .await;
    r.problem(400, None);
    // Any other declared type is refused, on every JSON endpoint.
    let w = api.register(&[&kind], 1).await;
    for ct in [
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/xml",
    ] {
        api.send(
            "POST",
            "/v1/tasks",
            Body::Raw(body.clone().into_bytes(), Some(ct)),
        )
        .await
        .problem(415, None);
        api.send(
            "POST",
            &format!("/v1/workers/{w}/poll"),
            Body::Raw(br#"{"max": 1}"#.to_vec(), Some(ct)),
        )
        .await
        .problem(415, None);
    }
    let r = api
        .send(
            "POST",
            &format!("/v1/workers/{w}/poll"),
            Body::Raw(
                br#"{"max": 1}"#.to_vec(),
                Some("application/x-www-form-urlencoded"),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(api.list_ids(&format!("type={kind}")).await.len(), 5);
}
