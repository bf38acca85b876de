"""The worker: runs task handlers for the scheduler over the HTTP worker
protocol (docs/workers.md in the Dispatch repository).

Three kinds of threads work together:

- the **poll loop** (the thread that called :meth:`Worker.run`) registers,
  then polls: it reports finished tasks in the poll, asks for as many tasks
  as it has free slots (``max``), names the tasks it runs (``running``),
  holds a long poll while it has a free slot, and polls with ``max: 0`` every
  ``heartbeat_ms`` while every slot is busy (the poll is the heartbeat);
  once every task a long poll's answer handed over is in the running set,
  it acknowledges that answer (``last_handout``, its ``handout``) in every
  later request, so that the scheduler gives back at once a task whose
  answer never arrived;
- the **reporter** sends what finishes while a long poll is open, at once,
  in a report-only poll (``max: 0``), and ends the attempts that ran past
  their deadline;
- one **thread per task** runs its handler.

Python cannot stop a thread. An attempt that the scheduler cancelled, or
that ran past its ``timeout_ms``, is ended for the scheduler at once: its
``ctx.cancelled`` is set, it is reported failed (or not at all, when the
scheduler ended it), its slot is given to the next task, and whatever its
handler returns later is dropped. A handler that may run long should check
``ctx.cancelled`` (or wait with ``ctx.wait``) and return.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import traceback
from types import FrameType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

from ._transport import FIRST_BACKOFF, MAX_BACKOFF, Abortable, Transport
from .errors import (
    Abort,
    ApiError,
    DispatchError,
    Forbidden,
    InvalidRequest,
    NotFound,
    RetryAfter,
    Unauthorized,
)

__all__ = ["Handler", "TaskContext", "Worker"]

log = logging.getLogger("dispatch_client.worker")

#: A task handler: called with the task's payload and its context; what it
#: returns (any JSON value) is the task's result.
Handler = Callable[[Any, "TaskContext"], Any]
H = TypeVar("H", bound=Handler)

#: Longest a long poll is held (the server holds it at most half the lease).
DEFAULT_POLL_WAIT = 20.0
#: What a poll may take beyond what the server holds it.
_READ_MARGIN = 30.0
#: Longest error text the server keeps.
_MAX_ERROR = 16 * 1024


class TaskContext:
    """What a handler knows about the attempt it runs.

    ``id``, ``type``, ``queue``, ``priority``; ``attempt`` (from 1) of
    ``max_attempts``; ``timeout`` (seconds, None without ``timeout_ms``) and
    ``deadline`` (a :func:`time.monotonic` instant, None without a timeout);
    ``shard_index`` and ``shard_total`` for a shard; ``worker_id``.
    ``cancelled`` turns true when the attempt should stop: the task was
    cancelled, ran past its timeout, the worker lost its lease, or a
    stopping worker ran out of grace.
    """

    def __init__(self, task: Mapping[str, Any], worker_id: str) -> None:
        self.id: str = str(task["id"])
        self.type: str = str(task["type"])
        self.queue: str = str(task.get("queue", "default"))
        self.priority: int = int(task.get("priority", 0))
        self.attempt: int = int(task.get("attempt", 1))
        self.max_attempts: int = int(task.get("max_attempts", 1))
        timeout_ms = task.get("timeout_ms")
        self.timeout: Optional[float] = timeout_ms / 1000 if isinstance(timeout_ms, int) else None
        self.started: float = time.monotonic()
        self.deadline: Optional[float] = self.started + self.timeout if self.timeout is not None else None
        shard_index = task.get("shard_index")
        shard_total = task.get("shard_total")
        self.shard_index: Optional[int] = shard_index if isinstance(shard_index, int) else None
        self.shard_total: Optional[int] = shard_total if isinstance(shard_total, int) else None
        self.worker_id = worker_id
        self._cancel = threading.Event()
        self._on_stop: List[Callable[[], None]] = []
        self.reason: Optional[str] = None

    @property
    def cancelled(self) -> bool:
        """Whether the attempt should stop now (its result will be dropped)."""
        return self._cancel.is_set()

    def wait(self, seconds: Optional[float] = None) -> bool:
        """Sleeps up to ``seconds`` (forever with None) or until the attempt
        is cancelled; answers whether it was cancelled."""
        return self._cancel.wait(seconds)

    def remaining(self) -> Optional[float]:
        """Seconds left before the timeout (never below 0), None without
        one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def _stop(self, reason: str) -> None:
        if not self._cancel.is_set():
            self.reason = reason
            self._cancel.set()
            for hook in self._on_stop:
                hook()

    def __repr__(self) -> str:
        return f"TaskContext(id={self.id!r}, type={self.type!r}, attempt={self.attempt}/{self.max_attempts})"


class _Attempt:
    """One task in hand: its context, its payload and its handler."""

    def __init__(self, task: Mapping[str, Any], handler: Optional[Handler], worker_id: str) -> None:
        self.ctx = TaskContext(task, worker_id)
        self.payload = task.get("payload")
        self.handler = handler


def _error_text(e: BaseException) -> str:
    text = str(e)
    name = type(e).__name__
    text = f"{name}: {text}" if text else name
    return text[:_MAX_ERROR]


def _outcome(att: _Attempt, run: Callable[[], Any]) -> Dict[str, Any]:
    """Runs a handler and turns what it did into a report."""
    try:
        result = run()
        json.dumps(result, allow_nan=False)
        return {"task_id": att.ctx.id, "result": result}
    except Abort as e:
        return {"task_id": att.ctx.id, "error": str(e)[:_MAX_ERROR], "abort": True}
    except RetryAfter as e:
        return {"task_id": att.ctx.id, "error": str(e)[:_MAX_ERROR], "retry_after_ms": e.ms}
    except (TypeError, ValueError, RecursionError) as e:
        # Raised by the handler, or by json.dumps for a result that is not JSON.
        log.warning("task %s (%s) failed: %s", att.ctx.id, att.ctx.type, _error_text(e), exc_info=True)
        return {"task_id": att.ctx.id, "error": _error_text(e)}
    except BaseException as e:  # noqa: BLE001 - a handler's failure is the task's, never the worker's
        log.warning("task %s (%s) failed: %s", att.ctx.id, att.ctx.type, _error_text(e), exc_info=True)
        return {"task_id": att.ctx.id, "error": _error_text(e)}


def _delay(backoff: float, e: DispatchError) -> float:
    """The wait before trying again: the backoff, or the server's
    ``Retry-After`` when longer (at most a minute)."""
    if isinstance(e, ApiError) and e.retry_after:
        return max(backoff, min(e.retry_after, 60.0))
    return backoff


class Worker:
    """Runs handlers for task types, ``concurrency`` tasks at once.

    ``url`` is one server, several comma-separated, or a list (the replicas
    of one cluster: the worker moves to the next when one cannot be reached
    or answers 503). ``name`` is shown by ``dispatch workers`` (default:
    host name and process id); ``labels`` are matched against the tasks'
    ``labels``; ``token`` needs the ``work`` scope; ``ca`` is a PEM file of
    a certificate authority for ``https://``. ``poll_wait`` bounds a long
    poll in seconds; ``grace`` is how long :meth:`run` lets the running
    tasks finish once stopping.

    Register handlers with :meth:`task` (a decorator) or :meth:`register`,
    then :meth:`run`.
    """

    def __init__(
        self,
        url: Union[str, Sequence[str]] = "http://127.0.0.1:7070",
        *,
        name: Optional[str] = None,
        concurrency: int = 1,
        labels: Optional[Mapping[str, str]] = None,
        token: Optional[str] = None,
        ca: Optional[str] = None,
        poll_wait: float = DEFAULT_POLL_WAIT,
        grace: float = 30.0,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= 10_000:
            raise ValueError(f"concurrency must be 1 to 10000, not {concurrency!r}")
        self._http = Transport(url, token=token, ca=ca, retry_for=0.0)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.concurrency = concurrency
        self.labels = dict(labels or {})
        self.poll_wait = max(0.0, poll_wait)
        self.grace = max(0.0, grace)
        self.handlers: Dict[str, Handler] = {}
        self.id: Optional[str] = None
        self._cond = threading.Condition()
        self._running: Dict[str, _Attempt] = {}
        self._outbox: List[Dict[str, Any]] = []
        # Reports sent and not answered yet, by request: their tasks are
        # still named in `running` by every other request, or a concurrent
        # one acknowledging their answer would have them given back.
        self._in_flight: Dict[int, List[str]] = {}
        self._flights = 0
        # The handout of the last long poll's answer whose tasks are all in
        # `_running` (read with it, under the lock).
        self._last_handout: Optional[str] = None
        self._long_poll: Optional[Abortable] = None
        self._reporting = False
        self._stopping = False
        self._stop_at = 0.0
        self._hurry = False
        self._session_over = False
        self._lease_lost = False

    # Setting up

    def task(self, type: str) -> Callable[[H], H]:
        """Decorator: the function handles tasks of ``type``.

        .. code-block:: python

            @worker.task("email.send")
            def send(payload, ctx):
                return {"sent_to": payload["to"]}
        """

        def decorate(handler: H) -> H:
            self.register(type, handler)
            return handler

        return decorate

    def register(self, type: str, handler: Handler) -> None:
        """Handles tasks of ``type`` with ``handler(payload, ctx)``."""
        if not callable(handler):
            raise TypeError(f"the handler of {type!r} is not callable")
        self.handlers[type] = handler

    # Stopping

    def stop(self) -> None:
        """Stops taking tasks; :meth:`run` returns once the running ones
        finished (at most ``grace`` seconds) and the worker left. A second
        call stops the running ones at once. Safe from any thread and from a
        handler."""
        with self._cond:
            if self._stopping:
                self._hurry = True
            else:
                self._stopping = True
                self._stop_at = time.monotonic()
            poll = self._long_poll
            self._cond.notify_all()
        if poll is not None:
            # Nothing handed over in the answer is lost: leaving requeues it.
            poll.abort()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called (or a signal came)."""
        return self._stopping

    # Running

    def run(self, *, signals: bool = True) -> None:
        """Runs until :meth:`stop`, SIGTERM or SIGINT (when called from the
        main thread with ``signals``), then lets the running tasks finish
        (at most ``grace`` seconds; a second signal ends them at once) and
        leaves the scheduler.

        Raises :class:`ApiError` when the server refuses the worker (a bad
        token, an invalid type), never for network errors: those are
        retried with backoff.
        """
        if not self.handlers:
            raise ValueError("no handler registered: use @worker.task(TYPE) first")
        previous: Dict[signal.Signals, Any] = {}
        if signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            self._run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        log.info("signal %d: stopping", signum)
        self.stop()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
            reply = self._register()
            if reply is None:
                return
            self.id = str(reply["id"])
            lease = max(1, int(reply.get("lease_ms", 10_000))) / 1000
            heartbeat = max(1, int(reply.get("heartbeat_ms", 3_000))) / 1000
            log.info("registered as worker %s for %s", self.id, sorted(self.handlers))
            with self._cond:
                self._session_over = False
                self._lease_lost = False
                self._in_flight.clear()
                self._last_handout = None
            reporter = threading.Thread(target=self._reporter, name="dispatch-reporter", daemon=True)
            reporter.start()
            try:
                lost = self._session(self.id, lease, heartbeat)
            finally:
                with self._cond:
                    self._session_over = True
                    self._cond.notify_all()
                reporter.join()
            if not lost:
                self._leave(self.id)
                return
            log.warning("worker %s lost its lease; registering again", self.id)

    def _register(self) -> Optional[Dict[str, Any]]:
        body = {
            "name": self.name,
            "types": sorted(self.handlers),
            "labels": self.labels,
            "capacity": self.concurrency,
        }
        backoff = FIRST_BACKOFF
        while True:
            try:
                _, reply = self._http.request("POST", "/v1/workers", body, idempotent=True)
                return dict(reply)
            except DispatchError as e:
                if isinstance(e, ApiError) and 400 <= e.status < 500 and e.status != 429:
                    raise
                delay = _delay(backoff, e)
                log.warning("cannot register (%s); retrying in %.1f s", e, delay)
            if self._sleep(delay):
                return None
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _sleep(self, seconds: float) -> bool:
        """Waits ``seconds`` unless the worker stops; answers whether it
        stops."""
        end = time.monotonic() + seconds
        with self._cond:
            while not self._stopping:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _leave(self, worker_id: str) -> None:
        try:
            self._http.request("DELETE", f"/v1/workers/{worker_id}", idempotent=True, retry_for=5.0)
            log.info("worker %s left", worker_id)
        except NotFound:
            pass
        except DispatchError as e:
            log.warning("could not leave cleanly (%s); the lease will expire", e)

    def _session(self, worker_id: str, lease: float, heartbeat: float) -> bool:
        """Polls until the worker stops (False) or loses its lease (True)."""
        wait = min(self.poll_wait, lease / 2)
        backoff = FIRST_BACKOFF
        last_contact = 0.0
        while True:
            with self._cond:
                while True:
                    self._expire()
                    if self._lease_lost:
                        self._drop_all("the worker lost its lease")
                        return True
                    stopping = self._stopping
                    if stopping and (self._hurry or time.monotonic() >= self._stop_at + self.grace):
                        # Leaving requeues them, the attempt not counted.
                        self._drop_all("the worker stopped before the task finished", keep_reports=True)
                    if stopping and not self._running and not self._outbox:
                        return False
                    free = 0 if stopping else self.concurrency - len(self._running)
                    due = last_contact + heartbeat - time.monotonic()
                    if self._reporting:
                        # Its report frees slots on the server: the next poll
                        # would find none free before it lands.
                        self._cond.wait(self._tick(due))
                        continue
                    if free > 0 or self._outbox or due <= 0:
                        break
                    self._cond.wait(self._tick(due))
                flight, results, held = self._take()
                hold = wait if free > 0 else 0.0
                handle = Abortable() if hold > 0 else None
                self._long_poll = handle
            body: Dict[str, Any] = {"max": free, "wait_ms": int(hold * 1000), **held}
            if results:
                body["results"] = results
            sent_at = time.monotonic()
            try:
                _, reply = self._http.request(
                    "POST",
                    f"/v1/workers/{worker_id}/poll",
                    body,
                    timeout=hold + _READ_MARGIN,
                    idempotent=True,
                    abort=handle,
                )
            except NotFound:
                with self._cond:
                    self._long_poll = None
                    self._landed(flight)
                    self._lease_lost = True
                continue
            except (Unauthorized, Forbidden):
                with self._cond:
                    self._long_poll = None
                    self._landed(flight)
                    self._drop_all("the server refused the worker")
                raise
            except InvalidRequest as e:
                with self._cond:
                    self._long_poll = None
                if not results:
                    with self._cond:
                        self._landed(flight)
                    raise
                log.warning("the server refused a report (%s); reporting one at a time", e)
                self._report_singly(worker_id, results)
                with self._cond:
                    self._landed(flight)
                continue
            except DispatchError as e:
                with self._cond:
                    self._long_poll = None
                    self._landed(flight, results)
                    aborted = handle is not None and handle.aborted
                if not aborted:
                    delay = _delay(backoff, e)
                    log.warning("poll failed (%s); retrying in %.1f s", e, delay)
                    self._sleep(delay)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            with self._cond:
                self._long_poll = None
                self._landed(flight)
            backoff = FIRST_BACKOFF
            last_contact = time.monotonic()
            self._answer(reply)
            self._cancel(reply.get("cancel", []))
            tasks = reply.get("tasks", [])
            handout = reply.get("handout") if free > 0 else None
            self._start(worker_id, tasks, handout if isinstance(handout, str) else None)
            if hold > 0 and not tasks and not reply.get("cancel") and last_contact - sent_at < hold / 4:
                # Answered early with nothing (the server counts a slot
                # busy that is free here): do not spin.
                self._sleep_unless_done(min(1.0, hold))

    def _take(self) -> Tuple[int, List[Dict[str, Any]], Dict[str, Any]]:
        """Takes the reports not sent yet for a request (called with the
        lock): answers the request's number for :meth:`_landed`, its
        results, and its ``running`` (the tasks running and those whose
        report another request carries, unanswered) with ``last_handout``,
        read together."""
        results, self._outbox = self._outbox, []
        self._flights += 1
        flight = self._flights
        sent = {r["task_id"] for r in results}
        self._in_flight[flight] = list(sent)
        running = list(self._running)
        named = set(running) | sent
        for ids in self._in_flight.values():
            for task_id in ids:
                if task_id not in named:
                    named.add(task_id)
                    running.append(task_id)
        held: Dict[str, Any] = {"running": running}
        if self._last_handout is not None:
            held["last_handout"] = self._last_handout
        return flight, results, held

    def _landed(self, flight: int, unsent: Optional[List[Dict[str, Any]]] = None) -> None:
        """A request is over (called with the lock): its reports were
        answered, or, ``unsent``, are to be sent again (and named till
        then)."""
        self._in_flight.pop(flight, None)
        if unsent:
            self._outbox[:0] = unsent

    def _tick(self, due: float) -> float:
        """How long the poll loop may sleep: until the next heartbeat or
        deadline, and at most a second."""
        limit = min(1.0, max(0.01, due))
        for att in self._running.values():
            if att.ctx.deadline is not None:
                limit = min(limit, max(0.01, att.ctx.deadline - time.monotonic()))
        return limit

    def _sleep_unless_done(self, seconds: float) -> None:
        """Waits ``seconds``, or until a task finishes or the worker stops."""
        with self._cond:
            if not self._outbox and not self._stopping:
                self._cond.wait(seconds)

    def _expire(self) -> None:
        """Ends the attempts past their deadline (called with the lock)."""
        now = time.monotonic()
        for task_id, att in list(self._running.items()):
            if att.ctx.deadline is not None and now >= att.ctx.deadline:
                del self._running[task_id]
                att.ctx._stop("timeout")
                ms = int(round((att.ctx.timeout or 0) * 1000))
                log.warning("task %s ran past its timeout_ms (%d); its result will be dropped", task_id, ms)
                self._outbox.append({"task_id": task_id, "error": f"timeout after {ms} ms (the task's timeout_ms)"})
                self._cond.notify_all()

    def _drop_all(self, reason: str, keep_reports: bool = False) -> None:
        """Ends every running attempt without a report (called with the
        lock): the scheduler requeues them. The reports not sent yet are
        dropped too unless ``keep_reports``."""
        for att in self._running.values():
            att.ctx._stop(reason)
        if self._running:
            log.warning("%s: %d running task(s) abandoned", reason, len(self._running))
        self._running.clear()
        if not keep_reports:
            self._outbox.clear()
            self._in_flight.clear()

    def _answer(self, reply: Mapping[str, Any]) -> None:
        for status in reply.get("results", []):
            if status.get("status") == 409:
                log.info("report of task %s refused: %s", status.get("task_id"), status.get("detail"))
            elif status.get("status") != 200:
                log.warning("report of task %s refused: %s", status.get("task_id"), status)

    def _cancel(self, ids: List[str]) -> None:
        """Stops the tasks the scheduler cancelled and reports them (the
        report, answered 409, ends the notices)."""
        with self._cond:
            for task_id in ids:
                att = self._running.pop(task_id, None)
                if att is not None:
                    att.ctx._stop("cancelled")
                    log.info("task %s cancelled by the scheduler", task_id)
                    self._outbox.append({"task_id": task_id, "error": "stopped: cancelled by the scheduler"})
                elif not any(r["task_id"] == task_id for r in self._outbox):
                    # Ended here already and reported: say so again.
                    self._outbox.append({"task_id": task_id, "error": "stopped: cancelled by the scheduler"})
            self._cond.notify_all()

    def _start(self, worker_id: str, tasks: List[Mapping[str, Any]], handout: Optional[str] = None) -> None:
        """Starts the tasks of a poll's answer; once every one is in the
        running set, its ``handout`` is the one acknowledged."""
        every = True
        for task in tasks:
            att = _Attempt(task, self.handlers.get(str(task.get("type"))), worker_id)
            with self._cond:
                if self._stopping:
                    # Leaving requeues it, the attempt not counted.
                    every = False
                    continue
                self._running[att.ctx.id] = att
            self._launch(att)
        if tasks and handout is not None and every:
            with self._cond:
                self._last_handout = handout

    def _launch(self, att: _Attempt) -> None:
        """Runs an attempt's handler, which reports through
        :meth:`_finish`."""
        thread = threading.Thread(target=self._execute, args=(att,), name=f"dispatch-task-{att.ctx.id}", daemon=True)
        thread.start()

    def _execute(self, att: _Attempt) -> None:
        handler = att.handler
        if handler is None:
            report: Dict[str, Any] = {
                "task_id": att.ctx.id,
                "error": f"no handler for type {att.ctx.type} in worker {self.name}",
            }
        else:
            report = _outcome(att, lambda: handler(att.payload, att.ctx))
        self._finish(att, report)

    def _finish(self, att: _Attempt, report: Dict[str, Any]) -> None:
        with self._cond:
            if self._running.get(att.ctx.id) is not att:
                log.info("task %s finished after it was ended (%s); result dropped", att.ctx.id, att.ctx.reason)
                return
            del self._running[att.ctx.id]
            self._outbox.append(report)
            self._cond.notify_all()

    def _reporter(self) -> None:
        """Sends what finishes while a long poll is open, and ends the
        attempts past their deadline."""
        backoff = FIRST_BACKOFF
        while True:
            with self._cond:
                while True:
                    if self._session_over:
                        return
                    self._expire()
                    if self._outbox and self._long_poll is not None and not self._lease_lost:
                        break
                    self._cond.wait(self._tick(1.0))
                flight, results, held = self._take()
                worker_id = self.id
                self._reporting = True
            body = {"max": 0, "results": results, **held}
            try:
                _, reply = self._http.request("POST", f"/v1/workers/{worker_id}/poll", body, idempotent=True)
            except NotFound:
                with self._cond:
                    self._reporting = False
                    self._landed(flight)
                    self._lease_lost = True
                    self._cond.notify_all()
                continue
            except InvalidRequest:
                with self._cond:
                    self._reporting = False
                    self._cond.notify_all()
                assert worker_id is not None
                self._report_singly(worker_id, results)
                with self._cond:
                    self._landed(flight)
                continue
            except DispatchError as e:
                with self._cond:
                    self._reporting = False
                    self._landed(flight, results)
                    self._cond.notify_all()
                log.warning("report failed (%s); the next poll carries it", e)
                time.sleep(_delay(backoff, e))
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = FIRST_BACKOFF
            with self._cond:
                self._reporting = False
                self._landed(flight)
                self._cond.notify_all()
            self._answer(reply)
            self._cancel(reply.get("cancel", []))

    def _report_singly(self, worker_id: str, results: List[Dict[str, Any]]) -> None:
        """Reports each result alone; one the server refuses is reported as
        a failure naming why, and dropped if that is refused too."""
        for r in results:
            tries = [r, {"task_id": r["task_id"], "error": None}]
            for attempt in tries:
                try:
                    body = {"max": 0, "results": [attempt]}
                    _, reply = self._http.request(
                        "POST", f"/v1/workers/{worker_id}/poll", body, idempotent=True, retry_for=10.0
                    )
                    self._answer(reply)
                    break
                except InvalidRequest as e:
                    log.warning("the server refused the report of task %s: %s", r["task_id"], e)
                    tries[1]["error"] = f"the server refused the report: {e.detail}"[:_MAX_ERROR]
                except NotFound:
                    with self._cond:
                        self._lease_lost = True
                    return
                except DispatchError as e:
                    with self._cond:
                        self._outbox.append(r)
                    log.warning("report failed (%s); the next poll carries it", e)
                    break
