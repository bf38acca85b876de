"""The client against a real server: every call, and the errors it raises."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from conftest import Server, free_port
from dispatch_client import Client, Conflict, InvalidRequest, NotFound, Unreachable, task_spec


def test_submit_takes_every_field(client: Client) -> None:
    parent = client.submit("report.build", {"day": "2026-12-01"})
    task = client.submit(
        "email.send",
        {"to": "ada@example.com"},
        queue="mail",
        priority=7,
        delay=timedelta(hours=1),
        timeout_ms=5000,
        max_attempts=5,
        backoff={"initial_ms": 200, "max_ms": 1000, "multiplier": 3.0},
        idempotency_key="mail-1",
        routing_key="customer-42",
        strategy="consistent_hash",
        labels={"region": "eu"},
        depends_on=[parent["id"]],
    )
    assert task["type"] == "email.send"
    assert task["payload"] == {"to": "ada@example.com"}
    assert task["queue"] == "mail"
    assert task["priority"] == 7
    assert task["state"] == "scheduled"
    assert task["timeout_ms"] == 5000
    assert task["max_attempts"] == 5
    assert task["backoff"] == {"initial_ms": 200, "max_ms": 1000, "multiplier": 3.0}
    assert task["idempotency_key"] == "mail-1"
    assert task["routing_key"] == "customer-42"
    assert task["strategy"] == "consistent_hash"
    assert task["labels"] == {"region": "eu"}
    assert task["depends_on"] == [parent["id"]]
    run_at = datetime.fromisoformat(str(task["run_at"]).replace("Z", "+00:00"))
    assert run_at > datetime.now(timezone.utc) + timedelta(minutes=50)

    at = datetime.now(timezone.utc) + timedelta(days=1)
    later = client.submit("report.build", run_at=at)
    assert later["state"] == "scheduled"
    assert later["run_at"] == task_spec("x", run_at=at)["run_at"]
    assert client.get(later["id"])["id"] == later["id"]


def test_idempotency_key_answers_the_first_task_or_a_conflict(client: Client) -> None:
    first = client.submit("email.send", {"to": "a"}, idempotency_key="k-1")
    again = client.submit("email.send", {"to": "a"}, idempotency_key="k-1")
    assert again["id"] == first["id"]
    with pytest.raises(Conflict) as e:
        client.submit("email.send", {"to": "b"}, idempotency_key="k-1")
    assert e.value.status == 409
    assert e.value.field == "idempotency_key"


def test_submit_batch_and_list_with_filters_and_cursor(client: Client) -> None:
    made = client.submit_batch(
        [{"type": "a.b", "payload": {"n": i}, "queue": "q1" if i % 2 else "q2"} for i in range(7)]
    )
    assert [t["payload"] for t in made] == [{"n": i} for i in range(7)]
    assert client.submit_batch([]) == []

    page = client.list(type="a.b", limit=3)
    assert len(page["tasks"]) == 3
    seen = [t["id"] for t in page["tasks"]]
    while page["next_cursor"] is not None:
        page = client.list(type="a.b", limit=3, cursor=page["next_cursor"])
        seen += [t["id"] for t in page["tasks"]]
    # Newest first, each once.
    assert seen == [t["id"] for t in reversed(made)]
    assert [t["id"] for t in client.iter_tasks(type="a.b", page_size=2)] == seen

    q1 = client.list(queue="q1", state="queued")["tasks"]
    assert sorted(t["payload"]["n"] for t in q1) == [1, 3, 5]


def test_wait_answers_the_task_as_last_seen_after_the_timeout(client: Client) -> None:
    task = client.submit("nobody.runs.this")
    seen = client.wait(task["id"], timeout=0.3)
    assert seen["id"] == task["id"]
    assert seen["state"] == "queued"


def test_cancel_then_cancel_again_is_a_conflict(client: Client) -> None:
    task = client.submit("email.send", delay=3600)
    cancelled = client.cancel(task["id"])
    assert cancelled["state"] == "cancelled"
    # wait returns at once for an ended task
    assert client.wait(task["id"], timeout=60)["state"] == "cancelled"
    with pytest.raises(Conflict) as e:
        client.cancel(task["id"])
    assert e.value.status == 409
    assert "detail" in e.value.problem


def test_bulk_cancel_and_retry_of_a_live_task(client: Client) -> None:
    for _ in range(3):
        client.submit("bulk.one", queue="bulk")
    assert client.cancel_matching(queue="bulk") == 3
    assert client.retry_matching(type="bulk.one") == 0
    # A task that is not dead cannot be retried.
    task = client.submit("bulk.two")
    with pytest.raises(Conflict):
        client.retry(task["id"])


def test_bad_input_raises_the_problem(client: Client) -> None:
    with pytest.raises(InvalidRequest) as e:
        client.submit("email.send", priority=1000)
    assert e.value.status == 422
    assert e.value.field == "priority"
    assert e.value.problem["status"] == 422
    assert "priority" in str(e.value)

    with pytest.raises(InvalidRequest) as e:
        client.submit_batch([{"type": "ok"}, {"type": "bad type!"}])
    assert e.value.field == "tasks[1].type"

    with pytest.raises(InvalidRequest) as e:
        client.submit_batch([{"type": "ok", "prioirty": 1}])
    assert e.value.status == 400
    assert e.value.field is not None and "prioirty" in e.value.field

    with pytest.raises(InvalidRequest) as e:
        client.list(state="sleeping")
    assert e.value.field == "state"

    with pytest.raises(NotFound) as missing:
        client.get("999999")
    assert missing.value.status == 404

    with pytest.raises(TypeError):
        client.submit("x", delay=1, delay_ms=1000)


def test_queues_workers_schedules_and_health(client: Client) -> None:
    client.submit("q.task", queue="reports")
    assert client.pause_queue("reports")["paused"] is True
    assert any(q["name"] == "reports" and q["paused"] for q in client.queues())
    assert client.resume_queue("reports")["paused"] is False
    assert client.workers() == []
    s = client.create_schedule("nightly", "0 3 * * *", {"type": "report.build", "payload": {"k": 1}})
    assert s["name"] == "nightly" and s["next_fire_at"]
    assert [x["name"] for x in client.schedules()] == ["nightly"]
    assert client.schedule("nightly")["cron"] == "0 3 * * *"
    client.delete_schedule("nightly")
    with pytest.raises(NotFound):
        client.schedule("nightly")
    assert client.health()["status"] == "ok"


def test_an_unreachable_server_raises_unreachable() -> None:
    c = Client(f"http://127.0.0.1:{free_port()}", retry_for=0.2)
    with pytest.raises(Unreachable) as e:
        c.submit("x")
    assert isinstance(e.value, ConnectionError)


def test_failover_moves_past_a_dead_url(server: Server) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    c = Client(f"{dead}, {server.url}", token=server.admin)
    task = c.submit("email.send", {"to": "x"})
    assert c.base_url == server.url
    assert c.get(task["id"])["id"] == task["id"]
    # A list of URLs works the same.
    c2 = Client([dead, server.url], token=server.admin)
    assert c2.get(task["id"])["state"] == "queued"


def test_bad_urls_are_refused() -> None:
    for bad in ("", "127.0.0.1:7070", "ftp://x", "http://", "http://x?a=1"):
        with pytest.raises(ValueError):
            Client(bad)
