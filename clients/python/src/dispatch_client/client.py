"""The client: submit tasks, look at them, wait for them, cancel and retry.

Every method is one call to the REST API (``wait`` and ``iter_tasks`` a few)
and answers the server's JSON as plain dictionaries (typed in
:mod:`dispatch_client.types`). A refusal raises the :class:`ApiError`
subclass for its status, carrying the problem+json body.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union, cast
from urllib.parse import quote, urlencode

from ._transport import Transport
from .types import Backoff, Health, Queue, Schedule, Task, TaskPage, Worker

__all__ = ["Client", "task_spec"]

TaskId = Union[str, int]
Seconds = Union[float, int, timedelta]

#: Longest a single read of ``GET /v1/tasks/{id}?wait_ms=`` is held.
_WAIT_CHUNK_MS = 60_000
#: What a read may take beyond what the server holds it.
_READ_MARGIN = 30.0


def _ms(value: Seconds) -> int:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    return int(round(seconds * 1000))


def _rfc3339(value: Union[str, datetime]) -> str:
    if isinstance(value, str):
        return value
    # A naive datetime is local time, as everywhere in Python.
    utc = value.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _id(value: TaskId) -> str:
    return quote(str(value), safe="")


def task_spec(type: str, payload: Any = None, **fields: Any) -> Dict[str, Any]:
    """A task submission as the HTTP API takes it (``POST /v1/tasks``, one
    element of ``POST /v1/tasks/batch``), from the names
    :meth:`Client.submit` takes.

    ``delay`` (seconds, or a ``timedelta``) becomes ``delay_ms``; a
    ``datetime`` ``run_at`` becomes RFC 3339; ``depends_on`` ids become
    strings; fields that are None are left out; any other field is sent as
    given, so the server names a misspelt one (400).
    """
    spec: Dict[str, Any] = {"type": type}
    if payload is not None:
        spec["payload"] = payload
    for name, value in fields.items():
        if value is None:
            continue
        if name == "delay":
            if fields.get("delay_ms") is not None:
                raise TypeError("give delay or delay_ms, not both")
            spec["delay_ms"] = _ms(value)
        elif name == "run_at":
            spec["run_at"] = _rfc3339(value)
        elif name == "depends_on":
            spec["depends_on"] = [str(d) for d in value]
        else:
            spec[name] = value
    return spec


class Client:
    """A connection to a Dispatch server, or to the replicas of one.

    ``url`` is one base URL (``http://127.0.0.1:7070``), several
    comma-separated, or a list: a request that cannot reach one server, or
    that a standby answers 503, goes to the next (see the README's
    *Failover*). ``token`` is sent as ``Authorization: Bearer`` (a server
    started with ``--tokens`` needs one); ``ca`` is a PEM file of a
    certificate authority trusted for ``https://`` besides the system's.

    ``timeout`` bounds each request in seconds; ``retry_for`` is how long a
    request is retried while the servers are unreachable or answer 503 or
    429 (requests that may have been acted on are sent again only when that
    is safe: reads, and submissions with an ``idempotency_key``).

    Safe to share between threads; ``close()`` (or ``with``) closes the
    kept-alive connections.
    """

    def __init__(
        self,
        url: Union[str, Sequence[str]] = "http://127.0.0.1:7070",
        token: Optional[str] = None,
        ca: Optional[str] = None,
        *,
        timeout: float = 30.0,
        retry_for: float = 10.0,
    ) -> None:
        self._http = Transport(url, token=token, ca=ca, timeout=timeout, retry_for=retry_for)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the kept-alive connections."""
        self._http.close()

    @property
    def base_url(self) -> str:
        """The server in use: the one that answered last."""
        return self._http.base_url

    def _get(self, path: str, timeout: Optional[float] = None) -> Any:
        return self._http.request("GET", path, timeout=timeout, idempotent=True)[1]

    def _post(self, path: str, body: Any = None, idempotent: bool = False) -> Any:
        return self._http.request("POST", path, body, idempotent=idempotent)[1]

    # Tasks

    def submit(
        self,
        type: str,
        payload: Any = None,
        *,
        queue: Optional[str] = None,
        priority: Optional[int] = None,
        run_at: Union[str, datetime, None] = None,
        delay: Optional[Seconds] = None,
        delay_ms: Optional[int] = None,
        timeout_ms: Optional[int] = None,
        max_attempts: Optional[int] = None,
        backoff: Optional[Backoff] = None,
        idempotency_key: Optional[str] = None,
        routing_key: Optional[str] = None,
        strategy: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        depends_on: Optional[Iterable[TaskId]] = None,
        shards: Optional[int] = None,
    ) -> Task:
        """Submits one task and answers it as stored (``state`` is
        ``queued``, or ``scheduled`` when it waits for a time or parents).

        ``payload`` is any JSON value. ``priority`` -100..=100 (higher
        first); ``run_at`` (RFC 3339 text or a ``datetime``) or ``delay``
        (seconds or a ``timedelta``; or ``delay_ms``) keeps it scheduled
        until then; ``timeout_ms`` limits each attempt; ``max_attempts``
        (default 3) and ``backoff`` (``initial_ms``, ``max_ms``,
        ``multiplier``) shape the retries; ``idempotency_key`` makes a
        second identical submission answer the first task (a different one
        raises :class:`Conflict`); ``labels`` restricts it to workers
        carrying them; ``depends_on`` waits for those tasks to succeed;
        ``strategy`` (``round_robin``, ``consistent_hash`` with
        ``routing_key``, ``broadcast``, ``sharding`` with ``shards``, ...)
        picks the worker.
        """
        spec = task_spec(
            type,
            payload,
            queue=queue,
            priority=priority,
            run_at=run_at,
            delay=delay,
            delay_ms=delay_ms,
            timeout_ms=timeout_ms,
            max_attempts=max_attempts,
            backoff=backoff,
            idempotency_key=idempotency_key,
            routing_key=routing_key,
            strategy=strategy,
            labels=dict(labels) if labels is not None else None,
            depends_on=depends_on,
            shards=shards,
        )
        return cast(Task, self._post("/v1/tasks", spec, idempotent=idempotency_key is not None))

    def submit_batch(self, tasks: Iterable[Mapping[str, Any]]) -> List[Task]:
        """Submits several tasks at once, all or none (at most 10,000).

        Each element is a dictionary with ``type``, ``payload`` and any
        field :meth:`submit` takes, by the same names
        (``{"type": "email.send", "payload": {...}, "delay": 30}``).
        A refusal names the element at fault (``tasks[3].priority``).
        """
        specs = []
        for t in tasks:
            fields = dict(t)
            kind = fields.pop("type", None)
            payload = fields.pop("payload", None)
            specs.append(task_spec(cast(str, kind), payload, **fields))
        if not specs:
            return []
        safe = all(s.get("idempotency_key") is not None for s in specs)
        reply = self._post("/v1/tasks/batch", {"tasks": specs}, idempotent=safe)
        return cast(List[Task], reply["tasks"])

    def get(self, id: TaskId) -> Task:
        """One task; :class:`NotFound` when there is none."""
        return cast(Task, self._get(f"/v1/tasks/{_id(id)}"))

    def wait(self, id: TaskId, timeout: Seconds = 60.0) -> Task:
        """Waits until the task has ended (``succeeded``, ``dead`` or
        ``cancelled``) or ``timeout`` seconds pass, and answers it as last
        seen: check its ``state``. The server holds each request until the
        task ends, so no time is spent polling."""
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
        deadline = time.monotonic() + max(0.0, seconds)
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            wait_ms = max(0, min(left_ms, _WAIT_CHUNK_MS))
            task = cast(
                Task,
                self._get(
                    f"/v1/tasks/{_id(id)}?wait_ms={wait_ms}",
                    timeout=wait_ms / 1000 + _READ_MARGIN,
                ),
            )
            if task["state"] in ("succeeded", "dead", "cancelled") or wait_ms == 0:
                return task

    def cancel(self, id: TaskId) -> Task:
        """Cancels a scheduled, queued or running task (a running one's
        worker is told to stop); :class:`Conflict` when it already ended."""
        return cast(Task, self._post(f"/v1/tasks/{_id(id)}/cancel"))

    def retry(self, id: TaskId) -> Task:
        """Requeues a ``dead`` task with a fresh set of attempts (admin
        scope); :class:`Conflict` when it is not dead."""
        return cast(Task, self._post(f"/v1/tasks/{_id(id)}/retry"))

    def list(
        self,
        state: Optional[str] = None,
        type: Optional[str] = None,
        queue: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> TaskPage:
        """One page of tasks, newest first, matching every filter given.
        ``limit`` 1..=1000 (default 100); pass the page's ``next_cursor`` as
        ``cursor`` for the next page (None after the last)."""
        query = {
            k: str(v)
            for k, v in (("state", state), ("type", type), ("queue", queue), ("limit", limit), ("cursor", cursor))
            if v is not None
        }
        path = "/v1/tasks" + (f"?{urlencode(query)}" if query else "")
        return cast(TaskPage, self._get(path))

    def iter_tasks(
        self,
        state: Optional[str] = None,
        type: Optional[str] = None,
        queue: Optional[str] = None,
        page_size: int = 100,
    ) -> Iterator[Task]:
        """Every task matching the filters, newest first, fetched a page at
        a time."""
        cursor: Optional[str] = None
        while True:
            page = self.list(state=state, type=type, queue=queue, limit=page_size, cursor=cursor)
            yield from page["tasks"]
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def cancel_matching(
        self, state: Optional[str] = None, type: Optional[str] = None, queue: Optional[str] = None
    ) -> int:
        """Cancels every live task matching the filters (at least one;
        admin scope); answers how many were cancelled."""
        body = {k: v for k, v in (("state", state), ("type", type), ("queue", queue)) if v is not None}
        return int(self._post("/v1/tasks/cancel", body)["count"])

    def retry_matching(
        self, state: Optional[str] = "dead", type: Optional[str] = None, queue: Optional[str] = None
    ) -> int:
        """Requeues every dead task matching the filters (admin scope);
        answers how many were requeued."""
        body = {k: v for k, v in (("state", state), ("type", type), ("queue", queue)) if v is not None}
        return int(self._post("/v1/tasks/retry", body)["count"])

    # Workers, queues, schedules, health

    def workers(self) -> List[Worker]:
        """The registered workers."""
        return cast(List[Worker], self._get("/v1/workers")["workers"])

    def remove_worker(self, id: str) -> None:
        """Removes a registered worker (admin scope, or the worker's own
        token): its running tasks are requeued, and its next poll finds its
        lease lost."""
        self._http.request("DELETE", f"/v1/workers/{_id(id)}", idempotent=True)

    def queues(self) -> List[Queue]:
        """Every queue with its settings and counts."""
        return cast(List[Queue], self._get("/v1/queues")["queues"])

    def pause_queue(self, name: str) -> Queue:
        """Stops handing out the queue's tasks (admin scope)."""
        return cast(Queue, self._post(f"/v1/queues/{_id(name)}/pause", idempotent=True))

    def resume_queue(self, name: str) -> Queue:
        """Hands out the queue's tasks again (admin scope)."""
        return cast(Queue, self._post(f"/v1/queues/{_id(name)}/resume", idempotent=True))

    def create_schedule(
        self,
        name: str,
        cron: str,
        task: Mapping[str, Any],
        *,
        timezone: Optional[str] = None,
        misfire: Optional[str] = None,
        catch_up_limit: Optional[int] = None,
        paused: Optional[bool] = None,
    ) -> Schedule:
        """Creates a cron schedule (admin scope) firing ``task`` (a
        dictionary as :meth:`submit_batch` takes); :class:`Conflict` when
        the name exists."""
        fields = dict(task)
        kind = fields.pop("type", None)
        payload = fields.pop("payload", None)
        body: Dict[str, Any] = {"name": name, "cron": cron, "task": task_spec(cast(str, kind), payload, **fields)}
        for k, v in (("timezone", timezone), ("misfire", misfire), ("catch_up_limit", catch_up_limit), ("paused", paused)):
            if v is not None:
                body[k] = v
        return cast(Schedule, self._post("/v1/schedules", body))

    def schedules(self) -> List[Schedule]:
        """Every schedule, by name."""
        return cast(List[Schedule], self._get("/v1/schedules")["schedules"])

    def schedule(self, name: str) -> Schedule:
        """One schedule; :class:`NotFound` when unknown."""
        return cast(Schedule, self._get(f"/v1/schedules/{_id(name)}"))

    def delete_schedule(self, name: str) -> None:
        """Deletes a schedule (admin scope); :class:`NotFound` when unknown."""
        self._http.request("DELETE", f"/v1/schedules/{_id(name)}")

    def health(self) -> Health:
        """``GET /healthz`` of the server in use (no token needed)."""
        return cast(Health, self._get("/healthz"))
