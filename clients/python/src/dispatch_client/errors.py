"""The exceptions of the client and of the worker.

Two families:

- :class:`DispatchError` and its subclasses: a call to the server failed.
  :class:`Unreachable` when no server answered; :class:`ApiError` (one
  subclass per kind of refusal) when a server answered with an error status,
  carrying its ``application/problem+json`` body.
- :class:`Abort` and :class:`RetryAfter`: raised by a task handler to say
  what happens to the task next.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Type

__all__ = [
    "Abort",
    "ApiError",
    "Conflict",
    "DispatchError",
    "Forbidden",
    "InvalidRequest",
    "NotFound",
    "RetryAfter",
    "ServerError",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
]


class DispatchError(Exception):
    """A call to the Dispatch server failed."""


class Unreachable(DispatchError, ConnectionError):
    """No server could be reached, or one broke off before answering.

    ``url`` is the last server tried, ``cause`` the network error.
    """

    def __init__(self, url: str, cause: BaseException) -> None:
        super().__init__(f"cannot reach the server at {url}: {cause}")
        self.url = url
        self.cause = cause


class ApiError(DispatchError):
    """The server answered with an error status.

    ``problem`` is the whole problem+json body; ``status``, ``title``,
    ``detail`` and ``field`` (the input at fault, such as ``priority`` or
    ``tasks[3].type``, when one is) are read from it. ``retry_after`` is the
    server's ``Retry-After`` in seconds, when it sent one.
    """

    def __init__(self, problem: Mapping[str, Any], retry_after: Optional[float] = None) -> None:
        self.problem: Dict[str, Any] = dict(problem)
        status = problem.get("status")
        self.status: int = status if isinstance(status, int) else 0
        self.type: str = str(problem.get("type") or "about:blank")
        self.title: str = str(problem.get("title") or "")
        self.detail: str = str(problem.get("detail") or self.title)
        field = problem.get("field")
        self.field: Optional[str] = field if isinstance(field, str) else None
        self.retry_after = retry_after
        message = f"{self.status} {self.title}: {self.detail}" if self.title else f"{self.status}: {self.detail}"
        if self.field:
            message += f" (field {self.field})"
        super().__init__(message)

    @staticmethod
    def from_problem(problem: Mapping[str, Any], retry_after: Optional[float] = None) -> ApiError:
        """The subclass of :class:`ApiError` for the problem's status."""
        status = problem.get("status")
        cls = _BY_STATUS.get(status if isinstance(status, int) else 0)
        if cls is None:
            cls = ServerError if isinstance(status, int) and status >= 500 else ApiError
        return cls(problem, retry_after)


class InvalidRequest(ApiError):
    """400, 413, 415 or 422: the request was malformed, too large or
    invalid; ``field`` names the input at fault."""


class Unauthorized(ApiError):
    """401: no token, or one the server does not know."""


class Forbidden(ApiError):
    """403: the token lacks the scope, or the worker belongs to another
    token."""


class NotFound(ApiError):
    """404: no such task, schedule or worker (a worker's lost lease)."""


class Conflict(ApiError):
    """409: the task already ended, is no longer leased to the worker, or an
    idempotency key was reused with another request."""


class TooManyRequests(ApiError):
    """429: over a limit; ``retry_after`` says when to come back."""


class ServerError(ApiError):
    """5xx: the server could not serve the request."""


class Unavailable(ServerError):
    """503: the store is failing, or a replica that does not lead could not
    forward the request. Retried on the next server given, then raised."""


_BY_STATUS: Dict[int, Type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    415: InvalidRequest,
    422: InvalidRequest,
    429: TooManyRequests,
    503: Unavailable,
}


class Abort(Exception):
    """Raised by a task handler: the attempt failed and the task is not
    retried; it is ``dead`` at once with this message as its error."""

    def __init__(self, message: str = "aborted") -> None:
        super().__init__(message)


#: The longest delay the server takes for a retry (seven days).
MAX_RETRY_AFTER_MS = 7 * 86_400_000


class RetryAfter(Exception):
    """Raised by a task handler: the attempt failed; retry the task after
    ``ms`` milliseconds instead of its backoff (when it has attempts left).
    """

    def __init__(self, ms: int, message: str = "") -> None:
        if isinstance(ms, bool) or not isinstance(ms, int) or not 0 <= ms <= MAX_RETRY_AFTER_MS:
            raise ValueError(f"RetryAfter takes 0 to {MAX_RETRY_AFTER_MS} ms, not {ms!r}")
        super().__init__(message or f"retry after {ms} ms")
        self.ms = ms
