"""The README's examples run as written, and a worker process stops
gracefully on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable, List

from conftest import Server, wait_for
from dispatch_client import Client

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> List[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def run_python(code: str, server: Server) -> "subprocess.Popen[str]":
    code = code.replace("http://127.0.0.1:7070", server.url)
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_the_readme_worker_and_client_run_as_written(make_server: Callable[..., Server]) -> None:
    server = make_server(tokens=False)
    worker_code, client_code = python_blocks()[:2]
    assert len(worker_code.strip().splitlines()) <= 10
    assert len(client_code.strip().splitlines()) <= 5
    worker = run_python(worker_code, server)
    try:
        client = run_python(client_code, server)
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, err
        assert out.strip() == "{'sent_to': 'ada@example.com', 'attempt': 1}"
        tasks = Client(server.url).list()["tasks"]
        assert [t["state"] for t in tasks] == ["succeeded"]
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert Client(server.url).workers() == []


def test_sigterm_lets_the_running_task_finish(make_server: Callable[..., Server]) -> None:
    server = make_server(tokens=False)
    code = textwrap.dedent(
        f"""
        import sys, time
        from dispatch_client import Worker
        worker = Worker({server.url!r})

        @worker.task("slow")
        def slow(payload, ctx):
            print("started", flush=True)
            time.sleep(1.5)
            return "done"

        worker.run()
        print("left", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = Client(server.url)
        task = client.submit("slow")
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.strip() == "left"
    done = client.get(task["id"])
    assert done["state"] == "succeeded" and done["result"] == "done"
    assert wait_for(lambda: client.workers() == [], message="the worker to leave")


def test_the_readme_asyncio_worker_runs_as_written(make_server: Callable[..., Server]) -> None:
    server = make_server(tokens=False)
    (code,) = [b for b in python_blocks() if "AsyncWorker" in b]
    worker = run_python(code, server)
    try:
        client = Client(server.url)
        task = client.submit("page.fetch", {"url": "https://example.com/"})
        done = client.wait(task["id"], timeout=60)
        assert done["state"] == "succeeded" and done["result"] == {"url": "https://example.com/"}
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert Client(server.url).workers() == []
