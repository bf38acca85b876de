"""The worker against a real server: tasks end to end, Abort, RetryAfter,
timeouts, cancellation, a graceful stop and failover."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List

import pytest

from conftest import RunningWorker, Server, free_port, wait_for, worker_kwargs
from dispatch_client import Abort, Client, InvalidRequest, RetryAfter, TaskContext, Worker


def test_tasks_run_end_to_end_with_concurrency(
    server: Server, client: Client, start_worker: Callable[[Worker], RunningWorker]
) -> None:
    worker = Worker(server.url, name="py-e2e", concurrency=4, **worker_kwargs(server))
    lock = threading.Lock()
    now = {"running": 0, "most": 0}
    attempts: List[int] = []

    @worker.task("square")
    def square(payload: Dict[str, int], ctx: TaskContext) -> Dict[str, Any]:
        with lock:
            now["running"] += 1
            now["most"] = max(now["most"], now["running"])
            attempts.append(ctx.attempt)
        # Hold the slot until the others arrive, so that the tasks overlap.
        wait_for(lambda: now["most"] >= 4 or ctx.cancelled, timeout=20, message="overlap")
        with lock:
            now["running"] -= 1
        return {"square": payload["n"] ** 2, "worker": ctx.worker_id}

    start_worker(worker)
    tasks = [client.submit("square", {"n": n}) for n in range(12)]
    done = [client.wait(t["id"], timeout=60) for t in tasks]
    assert [t["state"] for t in done] == ["succeeded"] * 12
    assert [t["result"]["square"] for t in done] == [n * n for n in range(12)]
    assert now["most"] == 4
    assert attempts == [1] * 12
    (registered,) = client.workers()
    assert registered["name"] == "py-e2e"
    assert registered["capacity"] == 4
    assert registered["types"] == ["square"]
    assert done[0]["result"]["worker"] == registered["id"]
    assert registered["completed"] == 12


def test_abort_ends_the_task_dead_without_retry(
    server: Server, client: Client, start_worker: Callable[[Worker], RunningWorker]
) -> None:
    worker = Worker(server.url, **worker_kwargs(server))
    calls: List[str] = []

    @worker.task("email.send")
    def send(payload: Dict[str, str], ctx: TaskContext) -> None:
        calls.append(ctx.id)
        raise Abort(f"not an address: {payload['to']}")

    start_worker(worker)
    task = client.submit("email.send", {"to": "nobody"}, max_attempts=5)
    done = client.wait(task["id"], timeout=60)
    assert done["state"] == "dead"
    assert done["attempts"] == 1
    assert done["error"] == "not an address: nobody"
    assert calls == [task["id"]]
    # The admin retry brings it back with fresh attempts.
    again = client.retry(task["id"])
    assert again["state"] in ("queued", "running", "dead")
    assert client.wait(task["id"], timeout=60)["state"] == "dead"
    assert len(calls) == 2


def test_retry_after_retries_after_its_delay_and_errors_are_retried(
    server: Server, client: Client, start_worker: Callable[[Worker], RunningWorker]
) -> None:
    worker = Worker(server.url, concurrency=2, **worker_kwargs(server))
    failed_at: Dict[str, float] = {}
    started_at: Dict[str, float] = {}

    @worker.task("flaky")
    def flaky(payload: Dict[str, str], ctx: TaskContext) -> Dict[str, int]:
        if ctx.attempt == 1:
            failed_at[ctx.id] = time.monotonic()
            if payload["how"] == "retry_after":
                raise RetryAfter(1500, "busy")
            raise RuntimeError("smtp down")
        started_at[ctx.id] = time.monotonic()
        return {"attempt": ctx.attempt, "max_attempts": ctx.max_attempts}

    start_worker(worker)
    later = client.submit("flaky", {"how": "retry_after"}, max_attempts=3)
    plain = client.submit("flaky", {"how": "error"}, max_attempts=3, backoff={"initial_ms": 100})
    first = wait_for(lambda: client.get(later["id"]) if later["id"] in failed_at else None, message="first attempt")
    assert first["state"] in ("scheduled", "running", "queued", "succeeded")
    done = client.wait(later["id"], timeout=60)
    assert done["state"] == "succeeded"
    assert done["result"] == {"attempt": 2, "max_attempts": 3}
    assert started_at[later["id"]] - failed_at[later["id"]] >= 1.4
    other = client.wait(plain["id"], timeout=60)
    assert other["state"] == "succeeded"
    assert other["attempts"] == 2


def test_a_handler_past_its_timeout_is_cancelled_and_its_result_dropped(
    server: Server, client: Client, start_worker: Callable[[Worker], RunningWorker]
) -> None:
    worker = Worker(server.url, concurrency=2, **worker_kwargs(server))
    seen: Dict[str, Any] = {}
    released = threading.Event()

    @worker.task("slow.cooperative")
    def cooperative(payload: None, ctx: TaskContext) -> str:
        seen["timeout"] = ctx.timeout
        seen["deadline_set"] = ctx.deadline is not None
        seen["cancelled"] = ctx.wait(60)
        seen["reason"] = ctx.reason
        return "too late"

    @worker.task("slow.stubborn")
    def stubborn(payload: None, ctx: TaskContext) -> str:
        released.wait(60)
        return "too late"

    start_worker(worker)
    a = client.submit("slow.cooperative", timeout_ms=500, max_attempts=1)
    b = client.submit("slow.stubborn", timeout_ms=500, max_attempts=1)
    done_a = client.wait(a["id"], timeout=60)
    done_b = client.wait(b["id"], timeout=60)
    released.set()
    assert done_a["state"] == "dead" and "timeout" in str(done_a["error"])
    assert done_b["state"] == "dead" and "timeout" in str(done_b["error"])
    wait_for(lambda: "reason" in seen, message="the handler to see the cancellation")
    assert seen["cancelled"] is True
    assert seen["timeout"] == 0.5 and seen["deadline_set"]
    # The stubborn handler's late result changed nothing, and its slot was
    # given back: the worker takes new tasks.
    time.sleep(0.2)
    assert client.get(b["id"])["state"] == "dead"
    c = client.submit("slow.cooperative", timeout_ms=60_000)
    wait_for(lambda: client.get(c["id"])["state"] == "running", message="a new task to run")
    client.cancel(c["id"])


def test_cancellation_reaches_a_running_handler(
    server: Server, client: Client, start_worker: Callable[[Worker], RunningWorker]
) -> None:
    worker = Worker(server.url, concurrency=1, **worker_kwargs(server))
    started = threading.Event()
    outcome: Dict[str, Any] = {}

    @worker.task("long")
    def long(payload: None, ctx: TaskContext) -> str:
        started.set()
        outcome["cancelled"] = ctx.wait(60)
        outcome["reason"] = ctx.reason
        return "unused"

    start_worker(worker)
    task = client.submit("long")
    assert started.wait(30)
    wait_for(lambda: client.get(task["id"])["state"] == "running", message="running")
    assert client.cancel(task["id"])["state"] == "cancelled"
    wait_for(lambda: "reason" in outcome, message="the handler to hear of the cancellation")
    assert outcome == {"cancelled": True, "reason": "cancelled"}
    # The slot is free again: the next task runs.
    follow = client.submit("long")
    wait_for(lambda: client.get(follow["id"])["state"] == "running", message="the next task")
    client.cancel(follow["id"])
    assert client.get(task["id"])["state"] == "cancelled"


def test_graceful_stop_finishes_the_running_task_then_leaves(
    server: Server, client: Client, start_worker: Callable[[Worker], RunningWorker]
) -> None:
    worker = Worker(server.url, concurrency=2, **worker_kwargs(server))
    started = threading.Event()

    @worker.task("work")
    def work(payload: None, ctx: TaskContext) -> str:
        started.set()
        time.sleep(1.0)
        return "finished"

    running = start_worker(worker)
    task = client.submit("work")
    assert started.wait(30)
    running.stop()
    # run() returned: the task it held finished and was reported, and the
    # worker left the scheduler.
    done = client.get(task["id"])
    assert done["state"] == "succeeded" and done["result"] == "finished"
    assert client.workers() == []
    # A task submitted now stays queued: nobody takes it.
    queued = client.submit("work")
    assert client.wait(queued["id"], timeout=0.5)["state"] == "queued"


def test_a_stop_past_its_grace_gives_the_task_back(
    server: Server, client: Client, start_worker: Callable[[Worker], RunningWorker]
) -> None:
    worker = Worker(server.url, grace=0.3, **worker_kwargs(server))
    seen: Dict[str, Any] = {}
    started = threading.Event()

    @worker.task("forever")
    def forever(payload: None, ctx: TaskContext) -> None:
        started.set()
        seen["cancelled"] = ctx.wait(120)
        seen["reason"] = ctx.reason

    running = start_worker(worker)
    task = client.submit("forever")
    assert started.wait(30)
    running.stop()
    wait_for(lambda: "reason" in seen, message="the handler to be told")
    assert seen["cancelled"] is True
    back = client.get(task["id"])
    assert back["state"] == "queued"
    assert client.workers() == []


def test_a_result_that_is_not_json_fails_the_attempt(
    server: Server, client: Client, start_worker: Callable[[Worker], RunningWorker]
) -> None:
    worker = Worker(server.url, **worker_kwargs(server))

    @worker.task("odd")
    def odd(payload: None, ctx: TaskContext) -> object:
        return object()

    start_worker(worker)
    task = client.submit("odd", max_attempts=1)
    done = client.wait(task["id"], timeout=60)
    assert done["state"] == "dead"
    assert "TypeError" in str(done["error"])


def test_the_worker_fails_over_past_a_dead_url(
    server: Server, client: Client, start_worker: Callable[[Worker], RunningWorker]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    worker = Worker([dead, server.url], **worker_kwargs(server))
    worker.register("echo", lambda payload, ctx: payload)
    start_worker(worker)
    task = client.submit("echo", {"hello": "world"})
    done = client.wait(task["id"], timeout=60)
    assert done["state"] == "succeeded" and done["result"] == {"hello": "world"}


def test_the_worker_waits_for_a_server_that_starts_late(
    make_server: Callable[..., Server], start_worker: Callable[[Worker], RunningWorker]
) -> None:
    server = make_server()
    port = server.port
    server.stop()
    worker = Worker(server.url, **worker_kwargs(server))
    worker.register("echo", lambda payload, ctx: payload)
    start_worker(worker)
    time.sleep(0.5)
    server.start(port)
    client = Client(server.url, token=server.admin)
    task = client.submit("echo", 7)
    assert client.wait(task["id"], timeout=60)["result"] == 7


def test_a_worker_that_lost_its_lease_registers_again(
    server: Server, client: Client, start_worker: Callable[[Worker], RunningWorker]
) -> None:
    worker = Worker(server.url, **worker_kwargs(server))
    seen: Dict[str, Any] = {}
    started = threading.Event()

    @worker.task("held")
    def held(payload: str, ctx: TaskContext) -> str:
        if payload == "first" and not started.is_set():
            started.set()
            seen["cancelled"] = ctx.wait(60)
            seen["reason"] = ctx.reason
        return payload

    start_worker(worker)
    first = client.submit("held", "first", max_attempts=1)
    assert started.wait(30)
    old_id = worker.id
    assert old_id is not None
    # Removed by an operator: the scheduler requeues its task, and its next
    # poll finds the lease lost.
    client.remove_worker(old_id)
    wait_for(lambda: "reason" in seen, message="the running handler to be told")
    assert seen["cancelled"] is True and "lease" in str(seen["reason"])
    wait_for(lambda: worker.id != old_id, message="a new registration")
    second = client.submit("held", "second")
    assert client.wait(second["id"], timeout=60)["result"] == "second"
    # The requeued task ran again, on the new registration (the removal
    # did not count its attempt).
    again = client.wait(first["id"], timeout=60)
    assert again["state"] == "succeeded" and again["attempts"] == 1
    (registered,) = client.workers()
    assert registered["id"] == worker.id == again["worker_id"]


def test_polls_keep_the_lease_of_a_worker_whose_slots_are_all_busy(
    make_server: Callable[..., Server], start_worker: Callable[[Worker], RunningWorker]
) -> None:
    server = make_server(["--lease-ms", "1500"])
    client = Client(server.url, token=server.admin)
    worker = Worker(server.url, concurrency=1, **worker_kwargs(server))

    @worker.task("long")
    def long(payload: None, ctx: TaskContext) -> str:
        # Three leases without a free slot: only the report-only polls
        # keep the worker alive.
        return "cancelled" if ctx.wait(4.5) else "done"

    start_worker(worker)
    task = client.submit("long", max_attempts=1)
    done = client.wait(task["id"], timeout=60)
    assert done["state"] == "succeeded" and done["result"] == "done"
    assert done["attempts"] == 1


def test_a_result_goes_out_while_a_long_poll_waits(
    make_server: Callable[..., Server], start_worker: Callable[[Worker], RunningWorker]
) -> None:
    # A long lease: the worker's long poll waits 20 s for work.
    server = make_server(["--lease-ms", "60000"])
    client = Client(server.url, token=server.admin)
    worker = Worker(server.url, concurrency=3, **worker_kwargs(server))
    release = threading.Event()

    @worker.task("blocker")
    def blocker(payload: None, ctx: TaskContext) -> str:
        release.wait(60)
        return "released"

    @worker.task("quick")
    def quick(payload: None, ctx: TaskContext) -> str:
        # Long enough for the worker to open its next long poll (a slot
        # is still free) before this ends.
        time.sleep(0.5)
        return "quick"

    start_worker(worker)
    held = client.submit("blocker")
    wait_for(lambda: client.get(held["id"])["state"] == "running", message="the blocker to run")
    # A slot stays free, so a long poll is open when the quick task ends;
    # its result must not wait for that poll to end.
    fast = client.submit("quick")
    try:
        done = client.wait(fast["id"], timeout=10)
        assert done["state"] == "succeeded"
        assert client.get(held["id"])["state"] == "running"
    finally:
        release.set()
    assert client.wait(held["id"], timeout=60)["result"] == "released"


def test_run_refuses_a_worker_without_handlers(server: Server) -> None:
    with pytest.raises(ValueError):
        Worker(server.url).run(signals=False)
    with pytest.raises(ValueError):
        Worker(server.url, concurrency=0)


def test_a_worker_the_server_refuses_raises_the_problem(server: Server) -> None:
    worker = Worker(server.url, **worker_kwargs(server))
    worker.register("bad type!", lambda payload, ctx: None)
    with pytest.raises(InvalidRequest) as e:
        worker.run(signals=False)
    assert e.value.status == 422
    assert e.value.field == "types[0]"
