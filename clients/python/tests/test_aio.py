"""The asyncio worker: async handlers, and a timeout that really stops one."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Dict, List, Optional

import pytest

from conftest import Server, wait_for, worker_kwargs
from dispatch_client import AsyncWorker, Client, RetryAfter, TaskContext


class LoopThread:
    """An event loop in a thread, running one AsyncWorker."""

    def __init__(self, worker: AsyncWorker) -> None:
        self.worker = worker
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        try:
            asyncio.run(self.worker.run(signals=False))
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(60)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def test_async_handlers_run_concurrently_and_timeouts_cancel_them(server: Server, client: Client) -> None:
    worker = AsyncWorker(server.url, concurrency=8, **worker_kwargs(server))
    state: Dict[str, Any] = {"now": 0, "most": 0, "stopped": []}

    @worker.task("fetch")
    async def fetch(payload: Dict[str, int], ctx: TaskContext) -> Dict[str, int]:
        state["now"] += 1
        state["most"] = max(state["most"], state["now"])
        try:
            for _ in range(400):
                if state["most"] >= 8:
                    break
                await asyncio.sleep(0.05)
            return {"n": payload["n"], "attempt": ctx.attempt}
        finally:
            state["now"] -= 1

    @worker.task("hang")
    async def hang(payload: None, ctx: TaskContext) -> None:
        try:
            await asyncio.sleep(120)
        except asyncio.CancelledError:
            state["stopped"].append(ctx.reason)
            raise

    @worker.task("later")
    async def later(payload: None, ctx: TaskContext) -> int:
        if ctx.attempt == 1:
            raise RetryAfter(200)
        return ctx.attempt

    running = LoopThread(worker)
    try:
        tasks = [client.submit("fetch", {"n": n}) for n in range(16)]
        done = [client.wait(t["id"], timeout=60) for t in tasks]
        assert [t["state"] for t in done] == ["succeeded"] * 16
        assert [t["result"]["n"] for t in done] == list(range(16))
        assert state["most"] == 8

        h = client.submit("hang", timeout_ms=300, max_attempts=1)
        assert client.wait(h["id"], timeout=60)["state"] == "dead"
        wait_for(lambda: state["stopped"], message="the coroutine to be cancelled")
        assert state["stopped"][0] in ("timeout", "cancelled")

        r = client.submit("later")
        assert client.wait(r["id"], timeout=60)["result"] == 2
    finally:
        running.stop()
    assert client.workers() == []


def test_async_worker_refuses_plain_functions(server: Server) -> None:
    worker = AsyncWorker(server.url)
    with pytest.raises(TypeError):
        worker.register("x", lambda payload, ctx: None)
