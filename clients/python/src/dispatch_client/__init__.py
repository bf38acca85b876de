"""Dispatch's Python client and worker library.

- :class:`Client` submits tasks and looks at them: ``submit``,
  ``submit_batch``, ``get``, ``wait``, ``cancel``, ``retry``, ``list``.
- :class:`Worker` runs handlers for task types over the HTTP worker
  protocol: ``@worker.task("type")`` handlers take ``(payload, ctx)``;
  raising :class:`Abort` ends the task ``dead``, :class:`RetryAfter` retries
  it after a delay. :class:`AsyncWorker` does the same with ``async def``
  handlers.
- Errors from the server are :class:`ApiError` subclasses carrying its
  problem+json body; :class:`Unreachable` when no server answered.

.. code-block:: python

    from dispatch_client import Client

    client = Client("http://127.0.0.1:7070")
    task = client.submit("email.send", {"to": "ada@example.com"})
    print(client.wait(task["id"], timeout=30)["state"])
"""

__version__ = "0.1.0"

from .aio import AsyncHandler, AsyncWorker  # noqa: E402
from .client import Client, task_spec  # noqa: E402
from .errors import (  # noqa: E402
    Abort,
    ApiError,
    Conflict,
    DispatchError,
    Forbidden,
    InvalidRequest,
    NotFound,
    RetryAfter,
    ServerError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    Unreachable,
)
from .types import Task, TaskPage  # noqa: E402
from .worker import Handler, TaskContext, Worker  # noqa: E402

__all__ = [
    "Abort",
    "ApiError",
    "AsyncHandler",
    "AsyncWorker",
    "Client",
    "Conflict",
    "DispatchError",
    "Forbidden",
    "Handler",
    "InvalidRequest",
    "NotFound",
    "RetryAfter",
    "ServerError",
    "Task",
    "TaskContext",
    "TaskPage",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "Worker",
    "__version__",
    "task_spec",
]
