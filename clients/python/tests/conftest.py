"""A real ``dispatch server`` for each test, on a free loopback port.

The binary is ``$DISPATCH_BIN``, else ``target/debug/dispatch`` of the
repository (``cargo build -p dispatch-cli`` makes it). With
``DISPATCH_TEST_TOKENS=1`` every server requires tokens and the fixtures
hand out an admin token to the clients and a work token to the workers, so
the whole suite runs with tokens on; the tests of ``test_tokens.py`` do so
always.
"""

from __future__ import annotations

import collections
import os
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional

import pytest

from dispatch_client import Client, Worker

REPO = Path(__file__).resolve().parents[3]
START_TIMEOUT = 20.0


def binary() -> str:
    path = os.environ.get("DISPATCH_BIN") or str(REPO / "target" / "debug" / "dispatch")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no dispatch binary at {path}: run `cargo build -p dispatch-cli` or set DISPATCH_BIN")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_token(tokens: Path, scope: str, name: str) -> str:
    out = subprocess.run(
        [binary(), "token", "create", "--scope", scope, "--name", name, "--tokens", str(tokens)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


class Server:
    """A ``dispatch server`` child process; ``stop()`` kills and reaps it."""

    def __init__(self, args: List[str], tokens: bool, folder: Path) -> None:
        self.folder = folder
        self.args = args
        self.admin: Optional[str] = None
        self.submit: Optional[str] = None
        self.work: Optional[str] = None
        self.tokens_file: Optional[Path] = None
        if tokens:
            self.tokens_file = folder / "tokens"
            self.admin = create_token(self.tokens_file, "admin", "admin")
            self.submit = create_token(self.tokens_file, "submit", "producer")
            self.work = create_token(self.tokens_file, "work", "workers")
        self.log: Deque[str] = collections.deque(maxlen=300)
        self.proc: Optional[subprocess.Popen[str]] = None
        self.port = 0
        self.url = ""
        self.start()

    def start(self, port: Optional[int] = None) -> None:
        for _ in range(5):
            self.port = port or free_port()
            cmd = [binary(), "server", "--listen", f"127.0.0.1:{self.port}", *self.args]
            if not any(a in ("--data", "--store") for a in self.args):
                cmd += ["--data", str(self.folder / "data")]
            if self.tokens_file is not None:
                cmd += ["--tokens", str(self.tokens_file)]
            listening = threading.Event()
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL
            )
            threading.Thread(target=self._drain, args=(self.proc, listening), daemon=True).start()
            self.url = f"http://127.0.0.1:{self.port}"
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self.proc.poll() is None:
                if listening.wait(0.05):
                    return
            self.proc.kill()
            self.proc.wait()
            if port is not None or not any("in use" in line for line in self.log):
                break
        raise RuntimeError("dispatch server did not start:\n" + "\n".join(self.log))

    def _drain(self, proc: "subprocess.Popen[str]", listening: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.log.append(line.rstrip())
            if "listening on" in line:
                listening.set()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self) -> None:
        """Stops it as SIGTERM does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def make_server() -> Iterator[Callable[..., Server]]:
    """Starts servers (``make_server(args, tokens=...)``); every one is
    killed at the end of the test."""
    started: List[Server] = []
    folders: List[tempfile.TemporaryDirectory[str]] = []

    def make(args: Optional[List[str]] = None, tokens: Optional[bool] = None) -> Server:
        if tokens is None:
            tokens = os.environ.get("DISPATCH_TEST_TOKENS") == "1"
        folder = tempfile.TemporaryDirectory(prefix="dispatch-py-")
        folders.append(folder)
        server = Server(args or [], tokens, Path(folder.name))
        started.append(server)
        return server

    yield make
    for s in started:
        s.stop()
    for f in folders:
        f.cleanup()


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    return make_server()


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    c = Client(server.url, token=server.admin)
    yield c
    c.close()


class RunningWorker:
    """A :class:`Worker` running in a thread of the test."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run(signals=False)
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def stop(self, timeout: float = 60.0) -> None:
        self.worker.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the worker did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def start_worker() -> Iterator[Callable[[Worker], RunningWorker]]:
    """Runs workers in threads; each is stopped at the end of the test."""
    running: List[RunningWorker] = []

    def start(worker: Worker) -> RunningWorker:
        r = RunningWorker(worker)
        running.append(r)
        return r

    yield start
    for r in running:
        r.worker.stop()
        r.worker.stop()
        r.thread.join(30)


def wait_for(what: Callable[[], Any], timeout: float = 30.0, message: str = "condition") -> Any:
    """Polls ``what`` until it is truthy; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {message}")
        time.sleep(0.05)


def worker_kwargs(server: Server) -> Dict[str, Any]:
    return {"token": server.work} if server.work else {}
