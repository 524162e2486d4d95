"""Typed errors built from the server's RFC 9457 problem documents.

Every problem Wafer answers has a stable ``type`` of ``https://wafer.dev/problems/<slug>``;
:func:`error_from_problem` turns one into the exception class that names its kind, so callers
catch ``wafer.NotFound`` or ``wafer.FunctionTrapped`` instead of switching on status codes.
The local runner (:mod:`wafer.local`) raises the same classes for the same failures.
"""

from __future__ import annotations

import json as _json
from typing import Any, Mapping

PROBLEM_BASE = "https://wafer.dev/problems/"

__all__ = [
    "PROBLEM_BASE",
    "WaferError",
    "ConnectionFailed",
    "ValidationError",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "JobNotFinished",
    "JobCancelled",
    "RequestTimeout",
    "PayloadTooLarge",
    "RateLimited",
    "FunctionTrapped",
    "FunctionTimeout",
    "ServiceUnavailable",
    "ServerError",
    "FunctionError",
    "WaitTimeout",
    "error_from_problem",
]


class WaferError(Exception):
    """A problem reported by Wafer (or by the local runner), with the problem's fields.

    ``type``, ``title``, ``status``, ``detail`` and ``instance`` are the RFC 9457 members;
    ``slug`` is the last part of ``type`` (``"fuel-exhausted"``); ``extra`` holds the
    extension members (``limit``, ``exit_code``, ``stderr``, ``retry_after``, ...).
    """

    def __init__(
        self,
        title: str,
        *,
        status: int | None = None,
        type: str | None = None,
        detail: str | None = None,
        instance: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.type = type or "about:blank"
        self.title = title
        self.status = status
        self.detail = detail
        self.instance = instance
        self.extra: dict[str, Any] = dict(extra or {})
        super().__init__(self._message())

    @property
    def slug(self) -> str:
        """The problem's stable name: ``type`` without ``https://wafer.dev/problems/``."""
        return self.type.removeprefix(PROBLEM_BASE)

    def _message(self) -> str:
        head = f"{self.status} {self.title}" if self.status else self.title
        return f"{head}: {self.detail}" if self.detail else head

    def __repr__(self) -> str:
        return f"{type(self).__name__}(slug={self.slug!r}, status={self.status!r}, detail={self.detail!r})"


class ConnectionFailed(WaferError):
    """The server could not be reached (after the retries the call allowed)."""


class ValidationError(WaferError):
    """The request was refused as malformed or invalid (400 or 422)."""


class Unauthorized(WaferError):
    """No API key, or one the server does not know (401)."""


class Forbidden(WaferError):
    """The API key lacks the scope the call needs (403)."""


class NotFound(WaferError):
    """No such function, version, job or key for this tenant (404)."""


class Conflict(WaferError):
    """The resource is not in a state that allows the call (409)."""


class JobNotFinished(Conflict):
    """The job's result was asked for before the job ended (409 ``job-not-finished``)."""


class JobCancelled(Conflict):
    """The job was cancelled, so it has no result (409 ``job-cancelled``)."""


class RequestTimeout(WaferError):
    """The request body arrived too slowly (408)."""


class PayloadTooLarge(WaferError):
    """A module, request body or job input is over its limit (413)."""


class _RetryAfter(WaferError):
    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked to wait before trying again, when it said."""
        value = self.extra.get("retry_after")
        return float(value) if isinstance(value, (int, float)) else None


class RateLimited(_RetryAfter):
    """The caller's tenant is at its own concurrency limit (429); see ``retry_after``."""


class ServiceUnavailable(_RetryAfter):
    """The server is at capacity or a backend is down (503); see ``retry_after``."""


class FunctionTrapped(WaferError):
    """The function failed while running (502): it trapped (``fuel-exhausted``,
    ``stack-overflow``, ``unreachable``...), hit a limit (``memory-limit``, ``output-limit``)
    or exited non-zero (``nonzero-exit``, with ``exit_code`` and ``stderr``)."""

    @property
    def exit_code(self) -> int | None:
        """The exit code of a command that exited non-zero."""
        code = self.extra.get("exit_code")
        return code if isinstance(code, int) else None

    @property
    def stderr(self) -> str | None:
        """The tail of what the function wrote to stderr, when the caller may see it."""
        err = self.extra.get("stderr")
        return err if isinstance(err, str) else None


class FunctionTimeout(WaferError):
    """The function did not finish within its wall-clock limit (504 ``timeout``)."""


class ServerError(WaferError):
    """Wafer failed on its side (500); the detail is in the server's log."""


class FunctionError(WaferError):
    """The function itself answered an error status (``status``; the body is in
    ``extra["body"]``). Raised by ``execute``, which returns only successful results."""


class WaitTimeout(WaferError, TimeoutError):
    """A job did not end within the time ``wait`` was given; the job goes on running."""


_BY_STATUS: dict[int, type[WaferError]] = {
    400: ValidationError,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    408: RequestTimeout,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationError,
    429: RateLimited,
    500: ServerError,
    502: FunctionTrapped,
    503: ServiceUnavailable,
    504: FunctionTimeout,
}

_BY_SLUG: dict[str, type[WaferError]] = {
    "job-not-finished": JobNotFinished,
    "job-cancelled": JobCancelled,
}

_MEMBERS = ("type", "title", "status", "detail", "instance")


def error_from_problem(status: int, problem: Mapping[str, Any] | None, retry_after: float | None = None) -> WaferError:
    """The exception for a problem document answered with HTTP ``status``.

    ``problem`` may be ``None`` (an answer that was not problem+json); ``retry_after`` is the
    ``Retry-After`` header in seconds, kept when the body does not say it.
    """
    p = dict(problem or {})
    slug = str(p.get("type", "")).removeprefix(PROBLEM_BASE)
    cls = _BY_SLUG.get(slug) or _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else WaferError
    extra = {k: v for k, v in p.items() if k not in _MEMBERS}
    if retry_after is not None:
        extra.setdefault("retry_after", retry_after)
    detail = p.get("detail")
    instance = p.get("instance")
    return cls(
        str(p.get("title") or f"HTTP {status}"),
        status=status,
        type=str(p["type"]) if "type" in p else None,
        detail=str(detail) if detail is not None else None,
        instance=str(instance) if instance is not None else None,
        extra=extra,
    )


def parse_problem(body: bytes) -> dict[str, Any] | None:
    """The problem document in ``body``, or ``None`` when it is not a JSON object."""
    try:
        value = _json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
