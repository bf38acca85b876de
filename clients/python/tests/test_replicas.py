"""Failover between two real replicas on PostgreSQL: the leader is killed,
and the client and the worker, given both URLs, carry on with the other
once it has taken over (its 503s meanwhile are retried).

Needs the PostgreSQL server that ``./scripts/test`` starts
(``DISPATCH_TEST_POSTGRES``); fails without one, saying so.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from typing import Any, Callable, Dict, List

import pytest

from conftest import RunningWorker, Server, wait_for
from dispatch_client import Client, TaskContext, Worker

POSTGRES = os.environ.get("DISPATCH_TEST_POSTGRES")


def fresh_database() -> str:
    if POSTGRES is None:
        pytest.fail(
            "DISPATCH_TEST_POSTGRES is not set: run the tests with ./scripts/test, or "
            "./scripts/with-postgres scripts/test-python (from the repository root), which start a throwaway PostgreSQL"
        )
    name = f"dispatch_py_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    subprocess.run(["psql", POSTGRES, "-v", "ON_ERROR_STOP=1", "-q", "-c", f"CREATE DATABASE {name}"], check=True)
    return POSTGRES.rsplit("/", 1)[0] + "/" + name


def role(url: str) -> Dict[str, Any]:
    try:
        return Client(url, retry_for=0, timeout=5).health()
    except Exception:  # noqa: BLE001 - not up, or not answering yet
        return {}


def test_client_and_worker_survive_the_leaders_death(
    make_server: Callable[..., Server], start_worker: Callable[[Worker], RunningWorker]
) -> None:
    store = fresh_database()
    args = ["--store", store, "--lease-ms", "30000", "--leader-lease-ms", "1500"]
    first = make_server(args, tokens=False)
    wait_for(lambda: role(first.url).get("role") == "leader", message="the first replica to lead")
    second = make_server(args, tokens=False)
    wait_for(lambda: role(second.url).get("leader_url") == first.url, message="the second replica to stand by")
    urls = [first.url, second.url]

    client = Client(urls, retry_for=60)
    worker = Worker(",".join(urls), concurrency=2)
    ran: List[str] = []

    @worker.task("echo")
    def echo(payload: Any, ctx: TaskContext) -> Any:
        ran.append(ctx.id)
        return payload

    start_worker(worker)
    before = client.submit("echo", {"n": 1}, idempotency_key="before")
    assert client.wait(before["id"], timeout=60)["result"] == {"n": 1}

    first.stop()
    after = client.submit("echo", {"n": 2}, idempotency_key="after")
    assert client.base_url == second.url
    done = client.wait(after["id"], timeout=120)
    assert done["state"] == "succeeded" and done["result"] == {"n": 2}
    assert role(second.url).get("role") == "leader"
    assert after["id"] in ran and before["id"] in ran
    # The same worker carried on: the new leader kept its registration.
    (registered,) = client.workers()
    assert registered["id"] == worker.id
