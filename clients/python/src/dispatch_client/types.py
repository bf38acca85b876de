"""The shapes of the server's answers, as typed dictionaries.

They are plain ``dict`` objects at run time, decoded from the JSON the server
sent; the types only tell a type checker which keys to expect.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, TypedDict

__all__ = ["Backoff", "Task", "TaskPage", "Worker", "Queue", "Schedule", "Health"]


class Backoff(TypedDict, total=False):
    """Retry delays: ``min(initial_ms * multiplier**(n-1), max_ms)``."""

    initial_ms: int
    max_ms: int
    multiplier: float


class _TaskRequired(TypedDict):
    id: str
    type: str
    queue: str
    payload: Any
    priority: int
    run_at: Optional[str]
    timeout_ms: Optional[int]
    max_attempts: int
    backoff: Backoff
    idempotency_key: Optional[str]
    routing_key: Optional[str]
    strategy: Optional[str]
    labels: Dict[str, str]
    depends_on: List[str]
    state: str
    attempts: int
    result: Any
    error: Optional[str]
    worker_id: Optional[str]
    created_at: str
    started_at: Optional[str]
    finished_at: Optional[str]


class Task(_TaskRequired, total=False):
    """A task as the server shows it. ``state`` is one of ``scheduled``,
    ``queued``, ``running``, ``succeeded``, ``dead``, ``cancelled``."""

    shard_index: int
    shard_total: int
    pinned_worker_id: str


class TaskPage(TypedDict):
    """One page of a listing, newest first; ``next_cursor`` is None on the
    last page."""

    tasks: List[Task]
    next_cursor: Optional[str]


class Worker(TypedDict):
    """A registered worker."""

    id: str
    name: str
    types: List[str]
    labels: Dict[str, str]
    capacity: int
    weight: int
    in_flight: int
    state: str
    last_seen_at: str
    registered_at: str
    completed: int
    failed: int


class Queue(TypedDict):
    """A queue's settings and its task counts by state."""

    name: str
    paused: bool
    weight: int
    max_running: Optional[int]
    rate_per_sec: Optional[float]
    burst: Optional[int]
    max_per_key: Optional[int]
    strategy: Optional[str]
    counts: Dict[str, int]


class Schedule(TypedDict):
    """A cron schedule."""

    name: str
    cron: str
    timezone: str
    task: Dict[str, Any]
    misfire: str
    catch_up_limit: int
    paused: bool
    created_at: str
    next_fire_at: Optional[str]
    last_fire_at: Optional[str]


#: ``GET /healthz``: ``status``, ``role``, ``epoch``, ... (see the server's
#: documentation); kept open since it varies with the server's role.
Health = Dict[str, Any]
