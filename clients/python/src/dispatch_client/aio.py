"""The asyncio flavour of the worker: ``async def`` handlers.

:class:`AsyncWorker` speaks the protocol exactly as :class:`Worker` does,
from a thread of its own, and runs each task's handler as a coroutine on the
event loop that awaits :meth:`AsyncWorker.run`. A timeout, a cancellation,
a lost lease or the end of a stop's grace cancels the coroutine
(``asyncio.CancelledError`` is raised where it awaits), so here a handler
really stops.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import signal
import threading
from typing import Any, Awaitable, Callable, List, Optional

from .worker import TaskContext, Worker, _Attempt, _outcome

__all__ = ["AsyncHandler", "AsyncWorker"]

#: An async task handler: awaited with the task's payload and its context.
AsyncHandler = Callable[[Any, TaskContext], Awaitable[Any]]


def _raise(e: BaseException) -> Any:
    raise e


class AsyncWorker(Worker):
    """A :class:`Worker` whose handlers are coroutine functions.

    .. code-block:: python

        worker = AsyncWorker("http://127.0.0.1:7070", concurrency=100)

        @worker.task("page.fetch")
        async def fetch(payload, ctx):
            ...

        asyncio.run(worker.run())
    """

    _loop: Optional[asyncio.AbstractEventLoop] = None

    def register(self, type: str, handler: Any) -> None:
        """Handles tasks of ``type`` with ``await handler(payload, ctx)``."""
        if not inspect.iscoroutinefunction(handler):
            raise TypeError(f"the handler of {type!r} must be an async def function")
        super().register(type, handler)

    async def run(self, *, signals: bool = True) -> None:  # type: ignore[override]
        """Runs until :meth:`stop`, SIGTERM or SIGINT (with ``signals``, on
        the main thread's loop), then lets the running tasks finish (at most
        ``grace`` seconds) and leaves. Cancelling the task that awaits it
        stops the worker without grace."""
        if not self.handlers:
            raise ValueError("no handler registered: use @worker.task(TYPE) first")
        loop = asyncio.get_running_loop()
        self._loop = loop
        installed: List[signal.Signals] = []
        if signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self.stop)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError):
                    pass
        protocol = loop.run_in_executor(None, self._run)
        try:
            await asyncio.shield(protocol)
        except asyncio.CancelledError:
            self.stop()
            self.stop()
            await protocol
            raise
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _launch(self, att: _Attempt) -> None:
        loop = self._loop
        assert loop is not None
        future: concurrent.futures.Future[None] = asyncio.run_coroutine_threadsafe(self._execute_async(att), loop)

        def cancel() -> None:
            future.cancel()

        att.ctx._on_stop.append(cancel)
        if att.ctx.cancelled:
            future.cancel()

    async def _execute_async(self, att: _Attempt) -> None:
        handler = att.handler
        if handler is None:
            self._execute(att)
            return
        try:
            result = await handler(att.payload, att.ctx)
        except asyncio.CancelledError:
            if att.ctx.cancelled:
                # Ended for the scheduler already: nothing to report.
                return
            raise
        except BaseException as e:  # noqa: BLE001 - a handler's failure is the task's
            error = e
            report = _outcome(att, lambda: _raise(error))
        else:
            report = _outcome(att, lambda: result)
        self._finish(att, report)
