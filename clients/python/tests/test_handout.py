"""The acknowledgement of poll answers (``handout`` / ``last_handout``),
seen through a loopback proxy between the worker and the real server that
records what the worker sends and can drop or hold a request."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Iterator, List, Optional
from urllib.parse import urlsplit

import pytest

from conftest import RunningWorker, Server, wait_for, worker_kwargs
from dispatch_client import AsyncWorker, Client, TaskContext, Worker

PATIENCE = 30.0


class Proxy:
    """Forwards every request to ``upstream`` and records each poll's body
    and answer. ``hold(body)`` runs before a poll is forwarded (it may
    wait); ``drop(reply)`` decides whether the worker gets the answer the
    server gave (False: the connection is closed without one)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.lock = threading.Lock()
        self.polls: List[Dict[str, Any]] = []
        self.hold: Callable[[Dict[str, Any]], None] = lambda body: None
        self.drop: Callable[[Dict[str, Any]], bool] = lambda reply: False
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy._forward(self)

            def do_POST(self) -> None:
                proxy._forward(self)

            def do_DELETE(self) -> None:
                proxy._forward(self)

        class Quiet(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a worker that stops drops its connections

        self.http = Quiet(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def _forward(self, h: BaseHTTPRequestHandler) -> None:
        raw = h.rfile.read(int(h.headers.get("content-length") or 0))
        poll = h.path.endswith("/poll")
        record: Dict[str, Any] = {}
        if poll:
            record = {"body": json.loads(raw), "arrived": time.monotonic()}
            with self.lock:
                self.polls.append(record)
            self.hold(record["body"])
        headers = {k: v for k, v in h.headers.items() if k.lower() in ("content-type", "authorization")}
        conn = http.client.HTTPConnection(self.upstream.hostname or "127.0.0.1", self.upstream.port, timeout=120)
        try:
            conn.request(h.command, h.path, body=raw if raw else None, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            status, ctype = resp.status, resp.getheader("content-type")
        finally:
            conn.close()
        if poll:
            reply = json.loads(body) if status == 200 else {}
            with self.lock:
                record["reply"] = reply
                record["answered"] = time.monotonic()
            if status == 200 and self.drop(reply):
                record["dropped"] = True
                h.close_connection = True
                return
        h.send_response(status)
        if ctype:
            h.send_header("content-type", ctype)
        h.send_header("content-length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def sent(self) -> List[Dict[str, Any]]:
        with self.lock:
            return [dict(p) for p in self.polls]

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def proxy(server: Server) -> Iterator[Proxy]:
    p = Proxy(server.url)
    yield p
    p.close()


class Running:
    """A worker of either flavour running in a thread of the test."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        if isinstance(worker, AsyncWorker):
            aw = worker
            self.error: Optional[BaseException] = None

            def main() -> None:
                try:
                    asyncio.run(aw.run(signals=False))
                except BaseException as e:  # noqa: BLE001 - reported by stop()
                    self.error = e

            self.thread = threading.Thread(target=main, daemon=True)
            self.thread.start()
        else:
            self.inner = RunningWorker(worker)
            self.thread = self.inner.thread

    def stop(self) -> None:
        self.worker.stop()
        self.worker.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the worker did not stop"


def make_worker(flavour: str, proxy: Proxy, server: Server, handlers: Dict[str, Callable[[Any, TaskContext], Any]]) -> Worker:
    """A worker of two slots speaking to the server through the proxy;
    ``handlers`` are plain functions, run as coroutines by the asyncio
    flavour (each in the loop's executor)."""
    if flavour == "thread":
        worker = Worker(proxy.url, concurrency=2, poll_wait=2.0, **worker_kwargs(server))
        for type, fn in handlers.items():
            worker.register(type, fn)
        return worker
    aworker = AsyncWorker(proxy.url, concurrency=2, poll_wait=2.0, **worker_kwargs(server))
    for type, fn in handlers.items():

        def bind(fn: Callable[[Any, TaskContext], Any]) -> Any:
            async def handler(payload: Any, ctx: TaskContext) -> Any:
                return await asyncio.get_running_loop().run_in_executor(None, fn, payload, ctx)

            return handler

        aworker.register(type, bind(fn))
    return aworker


def ids_of(results: Any) -> List[str]:
    return [r["task_id"] for r in results or []]


@pytest.mark.parametrize("flavour", ["thread", "asyncio"])
def test_a_task_whose_answer_was_lost_goes_back_and_runs_once(
    flavour: str, server: Server, client: Client, proxy: Proxy
) -> None:
    dropped = threading.Event()

    def drop(reply: Dict[str, Any]) -> bool:
        if reply.get("tasks") and not dropped.is_set():
            dropped.set()
            return True
        return False

    proxy.drop = drop
    runs: List[str] = []

    def job(payload: str, ctx: TaskContext) -> Dict[str, Any]:
        runs.append(payload)
        return {"attempt": ctx.attempt, "worker": ctx.worker_id}

    running = Running(make_worker(flavour, proxy, server, {"job": job}))
    try:
        a = client.submit("job", "a")
        assert dropped.wait(PATIENCE), "no answer handed the task"
        # The worker never heard of A: it stays running on the server until
        # the worker acknowledges a later answer.
        assert client.get(a["id"])["state"] == "running"
        b = client.submit("job", "b")
        done_b = client.wait(b["id"], timeout=PATIENCE)
        done_a = client.wait(a["id"], timeout=PATIENCE)
    finally:
        running.stop()
    assert done_b["state"] == "succeeded", done_b
    assert done_a["state"] == "succeeded", done_a
    # Given back with no attempt spent, and run once, by the same worker.
    assert done_a["result"]["attempt"] == 1, done_a
    assert done_a["result"]["worker"] == done_b["result"]["worker"]
    assert sorted(runs) == ["a", "b"]

    sent = proxy.sent()
    lost = next(p for p in sent if p.get("dropped"))
    handouts = [p["reply"]["handout"] for p in sent if p.get("reply", {}).get("tasks") and not p.get("dropped")]
    assert handouts, "no answer that handed a task reached the worker"
    acknowledged = [p["body"]["last_handout"] for p in sent if "last_handout" in p["body"]]
    # The first answer that reached it (B's) was acknowledged; the lost one
    # never was.
    assert handouts[0] in acknowledged, sent
    assert lost["reply"]["handout"] not in acknowledged
    for p in sent:
        if "last_handout" in p["body"]:
            assert "running" in p["body"], p
            assert p["body"]["last_handout"] in handouts


@pytest.mark.parametrize("flavour", ["thread", "asyncio"])
def test_a_finished_task_is_named_until_its_report_is_answered(
    flavour: str, server: Server, client: Client, proxy: Proxy
) -> None:
    quick_id: List[str] = []
    quick_seen = threading.Event()
    slow_seen = threading.Event()

    def hold(body: Dict[str, Any]) -> None:
        reported = ids_of(body.get("results"))
        if quick_id and quick_id[0] in reported:
            # The quick task's report is held until the slow one's report
            # has gone out beside it.
            quick_seen.set()
            slow_seen.wait(PATIENCE)
        elif reported:
            slow_seen.set()

    proxy.hold = hold
    runs: List[str] = []

    def quick(payload: None, ctx: TaskContext) -> int:
        runs.append(ctx.id)
        return ctx.attempt

    def slow(payload: None, ctx: TaskContext) -> int:
        # Finishes once the quick task's report is on its way.
        quick_seen.wait(PATIENCE)
        return ctx.attempt

    q = client.submit("quick", None)
    s = client.submit("slow", None)
    quick_id.append(q["id"])
    running = Running(make_worker(flavour, proxy, server, {"quick": quick, "slow": slow}))
    try:
        done_q = client.wait(q["id"], timeout=PATIENCE * 2)
        done_s = client.wait(s["id"], timeout=PATIENCE * 2)
        wait_for(lambda: len(proxy.sent()) >= 3, message="the polls")
    finally:
        running.stop()
    assert quick_seen.is_set() and slow_seen.is_set()
    assert done_q["state"] == "succeeded" and done_q["result"] == 1, done_q
    assert done_s["state"] == "succeeded" and done_s["result"] == 1, done_s
    assert runs == [q["id"]], "the quick task ran again"

    # (A long poll is answered within its wait.)
    wait_for(
        lambda: all("answered" in p for p in proxy.sent() if q["id"] in ids_of(p["body"].get("results"))),
        message="the quick task's report to be answered",
    )
    sent = proxy.sent()
    carrying_quick = next(p for p in sent if q["id"] in ids_of(p["body"].get("results")))
    carrying_slow = next(p for p in sent if s["id"] in ids_of(p["body"].get("results")))
    assert carrying_slow is not carrying_quick
    # Sent while the quick task's report was unanswered: it names the quick
    # task, and acknowledges the answer that handed both.
    assert carrying_slow["arrived"] < carrying_quick["answered"]
    assert q["id"] in carrying_slow["body"]["running"], carrying_slow
    handed = next(p for p in sent if p.get("reply", {}).get("tasks"))
    if len(handed["reply"]["tasks"]) == 2:
        assert carrying_slow["body"].get("last_handout") == handed["reply"]["handout"], carrying_slow
    assert "last_handout" in carrying_slow["body"], carrying_slow
