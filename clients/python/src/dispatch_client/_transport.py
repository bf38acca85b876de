"""HTTP/1.1 with keep-alive to one server or to the replicas of one cluster.

The client and the worker send every request through a :class:`Transport`.
It knows several base URLs and keeps using the one that answered last.

- A request that could not be sent (connection refused, no route, a TLS
  handshake that failed) cannot have been acted on: it goes to the next URL
  at once.
- A ``503`` (a standby that cannot forward, a leader whose store fails, a
  replica taking over) or a ``429`` is the server asking to come back: the
  request goes to the next URL, and once every URL was tried the transport
  waits (100 ms doubling up to 5 s, at least the ``Retry-After``) and goes
  round again, until ``retry_for`` seconds have passed.
- A request that was sent but not answered (a timeout, a reset) may have
  been acted on: it is sent again only when the caller says it is
  idempotent; the next request goes to the next URL either way, so that a
  frozen replica is left behind.
"""

from __future__ import annotations

import json
import select
import socket
import ssl
import threading
import time
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

from . import __version__
from .errors import ApiError, Unreachable

#: Longest wait between two rounds of the server list.
MAX_BACKOFF = 5.0
#: First wait between two rounds.
FIRST_BACKOFF = 0.1
#: How long a connection may take to open (TCP and TLS).
CONNECT_TIMEOUT = 5.0


def parse_urls(url: Union[str, Sequence[str]]) -> List[str]:
    """The base URLs in ``url``: one, comma-separated ones, or a list."""
    parts = url.split(",") if isinstance(url, str) else [p for u in url for p in u.split(",")]
    bases = [p.strip().rstrip("/") for p in parts if p.strip()]
    if not bases:
        raise ValueError("no server URL given")
    for b in bases:
        split = urlsplit(b)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"invalid server URL {b!r}: give http://HOST:PORT or https://HOST:PORT")
        if split.query or split.fragment:
            raise ValueError(f"invalid server URL {b!r}: no query or fragment")
    return bases


class _NotSent(Exception):
    """The request never reached the server."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _NoAnswer(Exception):
    """The request was sent, but no complete answer came back."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Abortable:
    """A handle on a request in flight, to break it off from another thread
    (a worker's long poll when the worker stops)."""

    def __init__(self) -> None:
        # Re-entrant: a signal handler may abort while its own thread holds it.
        self._lock = threading.RLock()
        self._conn: Optional[HTTPConnection] = None
        self.aborted = False

    def _attach(self, conn: Optional[HTTPConnection]) -> None:
        with self._lock:
            self._conn = conn
            if conn is not None and self.aborted:
                _shutdown(conn)

    def abort(self) -> None:
        """Breaks off the request: it fails as not answered."""
        with self._lock:
            self.aborted = True
            if self._conn is not None:
                _shutdown(self._conn)


def _shutdown(conn: HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _is_dropped(conn: HTTPConnection) -> bool:
    """Whether an idle kept-alive connection was closed by the server (it
    is readable: an end of file, or bytes nobody asked for)."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class Transport:
    """Sends JSON requests to the first server of ``bases`` that serves
    them. Safe to share between threads."""

    def __init__(
        self,
        url: Union[str, Sequence[str]],
        token: Optional[str] = None,
        ca: Optional[str] = None,
        timeout: float = 30.0,
        retry_for: float = 10.0,
    ) -> None:
        self.bases = parse_urls(url)
        self._split = [urlsplit(b) for b in self.bases]
        self.token = token or None
        self.timeout = timeout
        self.retry_for = retry_for
        self._current = 0
        self._lock = threading.Lock()
        self._idle: Dict[int, List[HTTPConnection]] = {}
        self._ssl: Optional[ssl.SSLContext] = None
        if any(s.scheme == "https" for s in self._split) or ca:
            context = ssl.create_default_context()
            if ca:
                context.load_verify_locations(cafile=ca)
            self._ssl = context

    @property
    def base_url(self) -> str:
        """The server in use: the one that answered last."""
        return self.bases[self._current % len(self.bases)]

    def close(self) -> None:
        """Closes every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for c in conns:
                c.close()

    def _advance(self, index: int) -> None:
        with self._lock:
            if self._current == index:
                self._current = (index + 1) % len(self.bases)

    def _connection(self, index: int) -> Tuple[HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(index, [])
            while idle:
                kept = idle.pop()
                if not _is_dropped(kept):
                    return kept, True
                kept.close()
        split = self._split[index]
        host = split.hostname or ""
        conn: HTTPConnection
        if split.scheme == "https":
            conn = HTTPSConnection(host, split.port or 443, timeout=CONNECT_TIMEOUT, context=self._ssl)
        else:
            conn = HTTPConnection(host, split.port or 80, timeout=CONNECT_TIMEOUT)
        return conn, False

    def _release(self, index: int, conn: HTTPConnection) -> None:
        with self._lock:
            self._idle.setdefault(index, []).append(conn)

    def _send_once(
        self,
        index: int,
        method: str,
        path: str,
        body: Optional[bytes],
        headers: Mapping[str, str],
        timeout: float,
        abort: Optional[Abortable],
    ) -> Tuple[int, Mapping[str, str], bytes]:
        conn, reused = self._connection(index)
        if not reused:
            try:
                conn.connect()
            except (OSError, HTTPException) as e:
                conn.close()
                raise _NotSent(e) from e
        if abort is not None:
            abort._attach(conn)
        try:
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            conn.request(method, self._split[index].path + path, body=body, headers=dict(headers))
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, HTTPException) as e:
            conn.close()
            raise _NoAnswer(e) from e
        finally:
            if abort is not None:
                abort._attach(None)
        if resp.will_close or (abort is not None and abort.aborted):
            conn.close()
        else:
            self._release(index, conn)
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: Optional[float] = None,
        idempotent: bool = False,
        retry_for: Optional[float] = None,
        headers: Optional[Mapping[str, str]] = None,
        abort: Optional[Abortable] = None,
    ) -> Tuple[int, Any]:
        """Sends one request; answers the status and the decoded JSON body
        (None when empty). Raises :class:`ApiError` for an error status and
        :class:`Unreachable` when no server answered."""
        data = None
        sent_headers = {
            "accept": "application/json",
            "user-agent": f"dispatch-client-python/{__version__}",
        }
        if body is not None:
            data = json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
            sent_headers["content-type"] = "application/json"
        if self.token:
            sent_headers["authorization"] = f"Bearer {self.token}"
        if headers:
            sent_headers.update(headers)
        timeout = self.timeout if timeout is None else timeout
        give_up = time.monotonic() + (self.retry_for if retry_for is None else retry_for)
        n = len(self.bases)
        backoff = FIRST_BACKOFF
        failed_in_round = 0
        while True:
            index = self._current % n
            url = self.bases[index]
            wait_at_least = 0.0
            try:
                status, resp_headers, raw = self._send_once(
                    index, method, path, data, sent_headers, timeout, abort
                )
            except _NotSent as e:
                last: Exception = Unreachable(url, e.cause)
                self._advance(index)
            except _NoAnswer as e:
                last = Unreachable(url, e.cause)
                self._advance(index)
                if not idempotent or (abort is not None and abort.aborted):
                    raise last from e.cause
            else:
                if 200 <= status < 300:
                    with self._lock:
                        self._current = index
                    return status, _decode(raw, url)
                error = ApiError.from_problem(_problem(status, raw), _retry_after(resp_headers))
                if status == 503:
                    self._advance(index)
                    last = error
                elif status == 429:
                    # The same limit holds on every replica: wait before
                    # asking again.
                    last = error
                    failed_in_round = n - 1
                elif status in (502, 504) and idempotent:
                    self._advance(index)
                    last = error
                else:
                    raise error
                wait_at_least = error.retry_after or 0.0
            if abort is not None and abort.aborted:
                raise last
            # Every URL is tried once before the first wait, whatever
            # `retry_for`.
            failed_in_round += 1
            if failed_in_round < n:
                continue
            failed_in_round = 0
            left = give_up - time.monotonic()
            if left <= 0:
                raise last
            time.sleep(min(max(backoff, wait_at_least), left))
            backoff = min(backoff * 2, MAX_BACKOFF)


def _decode(raw: bytes, url: str) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError as e:
        raise Unreachable(url, ValueError(f"the answer is not JSON: {e}")) from e


def _problem(status: int, raw: bytes) -> Dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        body.setdefault("status", status)
        return body
    text = raw.decode("utf-8", "replace").strip()
    return {"type": "about:blank", "title": "", "status": status, "detail": text or f"HTTP {status}"}


def _retry_after(headers: Mapping[str, str]) -> Optional[float]:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
