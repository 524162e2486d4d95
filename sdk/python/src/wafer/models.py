"""What the API returns, as small typed records.

Each record keeps the whole JSON object it was read from in ``raw``, so fields a newer
server adds are never lost to an older SDK.
"""

from __future__ import annotations

import json as _json
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = [
    "Response",
    "Module",
    "Version",
    "FunctionInfo",
    "LogEntry",
    "JobInfo",
    "JobList",
    "Key",
    "TERMINAL_STATUSES",
]

#: Job statuses after which nothing changes any more.
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "dead"})


@dataclass(frozen=True)
class Response:
    """What a function answered: its status, headers and body."""

    status: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (invalid bytes replaced)."""
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON (``ValueError`` when it is not)."""
        return _json.loads(self.content)

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status < 300

    def decoded(self) -> Any:
        """The body as a value: parsed JSON when it is JSON, else text, else bytes."""
        try:
            return _json.loads(self.content)
        except ValueError:
            pass
        try:
            return self.content.decode("utf-8")
        except UnicodeDecodeError:
            return self.content


def _int(raw: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = raw.get(key)
    return value if isinstance(value, int) else default


def _str(raw: Mapping[str, Any], key: str, default: str = "") -> str:
    value = raw.get(key)
    return value if isinstance(value, str) else default


@dataclass(frozen=True)
class Module:
    """An uploaded module: its digest (per tenant), size and detected ABI."""

    digest: str
    size: int
    abi: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Module:
        return cls(_str(raw, "digest"), _int(raw, "size"), _str(raw, "abi"), raw)


@dataclass(frozen=True)
class Version:
    """One immutable version of a function and the limits it runs with."""

    function: str
    version: int
    module: str
    abi: str
    timeout_ms: int
    memory_mb: int
    fuel: int
    env_keys: list[str]
    public: bool
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Version:
        return cls(
            function=_str(raw, "function") or _str(raw, "name"),
            version=_int(raw, "version"),
            module=_str(raw, "module"),
            abi=_str(raw, "abi"),
            timeout_ms=_int(raw, "timeout_ms"),
            memory_mb=_int(raw, "memory_mb"),
            fuel=_int(raw, "fuel"),
            env_keys=list(raw.get("env_keys") or []),
            public=bool(raw.get("public", False)),
            raw=raw,
        )


@dataclass(frozen=True)
class FunctionInfo:
    """A function: its name, owner, latest version and aliases."""

    name: str
    tenant: str
    latest_version: int
    aliases: dict[str, int]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FunctionInfo:
        return cls(
            name=_str(raw, "name"),
            tenant=_str(raw, "tenant"),
            latest_version=_int(raw, "latest_version"),
            aliases=dict(raw.get("aliases") or {}),
            raw=raw,
        )


@dataclass(frozen=True)
class LogEntry:
    """One kept invocation: when, which version, its outcome and the tail of its stderr."""

    request_id: str
    version: int
    time: int
    outcome: str
    duration_ms: float
    log: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LogEntry:
        duration = raw.get("duration_ms")
        return cls(
            request_id=_str(raw, "request_id"),
            version=_int(raw, "version"),
            time=_int(raw, "time"),
            outcome=_str(raw, "outcome"),
            duration_ms=float(duration) if isinstance(duration, (int, float)) else 0.0,
            log=_str(raw, "log"),
            raw=raw,
        )


@dataclass(frozen=True)
class JobInfo:
    """A job's record at one moment: status, attempts, where it runs and how it ended."""

    id: str
    function: str
    version: int
    status: str
    attempts: int
    route: str
    error: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def finished(self) -> bool:
        """Whether the job has ended (succeeded, failed, cancelled or dead)."""
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> JobInfo:
        error = raw.get("error")
        return cls(
            id=_str(raw, "id"),
            function=_str(raw, "function"),
            version=_int(raw, "version"),
            status=_str(raw, "status"),
            attempts=_int(raw, "attempts"),
            route=_str(raw, "route"),
            error=error if isinstance(error, dict) else None,
            raw=raw,
        )


class JobList(list[JobInfo]):
    """One page of jobs, newest first; ``next_cursor`` fetches the next (``None``: the last)."""

    next_cursor: str | None

    def __init__(self, jobs: list[JobInfo], next_cursor: str | None) -> None:
        super().__init__(jobs)
        self.next_cursor = next_cursor


@dataclass(frozen=True)
class Key:
    """An API key. ``secret`` is only present in the answer that created it."""

    id: str
    tenant: str
    scopes: list[str]
    secret: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Key:
        secret = raw.get("key")
        return cls(
            id=_str(raw, "id"),
            tenant=_str(raw, "tenant"),
            scopes=list(raw.get("scopes") or []),
            secret=secret if isinstance(secret, str) else None,
            raw=raw,
        )

    def __repr__(self) -> str:
        # The secret is never printed.
        return f"Key(id={self.id!r}, tenant={self.tenant!r}, scopes={self.scopes!r})"
