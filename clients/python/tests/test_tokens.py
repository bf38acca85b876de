"""A server started with --tokens: the client and the worker carry them,
and a missing or weak token raises the problem."""

from __future__ import annotations

from typing import Callable

import pytest

from conftest import RunningWorker, Server
from dispatch_client import Client, Forbidden, Unauthorized, Worker


def test_tokens_and_scopes(make_server: Callable[..., Server], start_worker: Callable[[Worker], RunningWorker]) -> None:
    server = make_server(tokens=True)
    assert server.submit and server.work and server.admin

    with pytest.raises(Unauthorized) as e:
        Client(server.url).submit("email.send")
    assert e.value.status == 401

    producer = Client(server.url, token=server.submit)
    worker = Worker(server.url, token=server.work)
    worker.register("email.send", lambda payload, ctx: {"to": payload["to"]})
    start_worker(worker)
    task = producer.submit("email.send", {"to": "ada"}, max_attempts=1)
    assert producer.wait(task["id"], timeout=60)["result"] == {"to": "ada"}

    with pytest.raises(Forbidden) as f:
        producer.retry(task["id"])
    assert f.value.status == 403
    assert "admin" in f.value.detail

    # A worker without a token is refused at once, not retried forever.
    refused = Worker(server.url)
    refused.register("email.send", lambda payload, ctx: None)
    with pytest.raises(Unauthorized):
        refused.run(signals=False)
    # A submit token cannot act as a worker.
    weak = Worker(server.url, token=server.submit)
    weak.register("email.send", lambda payload, ctx: None)
    with pytest.raises(Forbidden):
        weak.run(signals=False)
