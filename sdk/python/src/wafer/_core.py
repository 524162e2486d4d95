"""The client's logic, written once for the sync and the async client.

Every API operation is a generator that yields the HTTP calls it needs (:class:`Call`) and
receives each answer (an ``httpx.Response``), so deploy, submit, wait and execute are written
once; :class:`wafer.Client` and :class:`wafer.AsyncClient` only differ in how they send a call
and how they sleep between retries. The retry policy lives here too.
"""

from __future__ import annotations

import base64
import email.utils
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Generator, Generic, Iterator, Mapping, Sequence, TypeVar, Union
from urllib.parse import quote

import httpx

from .errors import PROBLEM_BASE, FunctionError, WaitTimeout, WaferError, error_from_problem, parse_problem
from .models import FunctionInfo, JobInfo, JobList, Key, LogEntry, Module, Response, Version

T = TypeVar("T")
C = TypeVar("C")

#: An operation: yields calls, receives their answers, returns its result.
Op = Generator["Call", httpx.Response, T]

#: Seconds, or a ``timedelta``.
Duration = Union[float, int, timedelta]

#: Told ``(bytes_sent, bytes_total)`` as an upload goes.
UploadProgress = Callable[[int, int], None]
#: Told each job record read while waiting.
WaitProgress = Callable[[JobInfo], None]

DEFAULT_URL = "http://127.0.0.1:8080"
UPLOAD_CHUNK = 64 * 1024

# Retry classes of a call.
IDEMPOTENT = "idempotent"  # retried on any transport error, 429 and 503
REFUSALS = "refusals"  # retried only when it surely did not run: connect errors, Wafer's refusals


def seconds(d: Duration) -> float:
    """A duration in seconds."""
    return d.total_seconds() if isinstance(d, timedelta) else float(d)


def millis(d: Duration | None) -> int | None:
    """A duration in whole milliseconds, at least 1 (``None`` stays ``None``)."""
    return None if d is None else max(1, round(seconds(d) * 1000))


#: What a sub-path segment keeps as it is (RFC 3986 ``pchar`` less ``%``): readable in the
#: function's path, and none of it can end the path or start a query or fragment.
_PCHAR_SAFE = "@:!$&'()*+,;="


def _escaped(text: str, safe: str, what: str) -> str:
    """``text`` as one path segment, with ``%`` and every character not in ``safe`` or
    unreserved escaped. ``.`` and ``..`` are refused: they are not names but moves up the
    path, which clients and proxies resolve (some proxies even when escaped as ``%2E``)."""
    if text in (".", ".."):
        raise ValueError(f"{what} cannot be {text!r}: it would move up the URL's path")
    return quote(text, safe=safe)


def segment(name: str) -> str:
    """An id (a function's name, a job's or a key's id, an alias) as one URL path segment,
    with everything but unreserved characters and ``@`` escaped, so that it can only name
    itself; an empty one, ``.`` and ``..`` are refused (``ValueError``)."""
    if not name:
        raise ValueError("an empty name or id cannot be put in a URL")
    return _escaped(name, "@", "a name or id")


def sub_path(path: str) -> str:
    """A function's sub-path as it goes after ``/fn/{name}``: ``"/"`` (or ``""``) is the
    function's root, ``/`` separates segments, and each segment is taken as text and escaped
    (``%`` as ``%25``, ``?`` and ``#`` too), so the path can never leave the function's URL
    nor carry a query; segments ``.`` and ``..`` are refused (``ValueError``)."""
    if path in ("", "/"):
        return ""
    parts = path.removeprefix("/").split("/")
    return "/" + "/".join(_escaped(p, _PCHAR_SAFE, "a segment of a function's path") for p in parts)


@dataclass
class Call:
    """One HTTP call an operation needs."""

    method: str
    path: str
    params: dict[str, str] | tuple[tuple[str, str], ...] | None = None
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    retry: str = IDEMPOTENT
    #: Whether any answer >= 400 is an error (API calls), or only Wafer's own problems (the
    #: answers of functions, which may use any status themselves).
    strict: bool = True
    #: Read timeout for this call (long polls), seconds.
    read_timeout: float | None = None
    upload_progress: UploadProgress | None = None


def timeout_for(default: httpx.Timeout, call: Call) -> httpx.Timeout:
    """The client's timeouts, with the call's own read timeout (long polls) when it has one."""
    if call.read_timeout is None:
        return default
    return httpx.Timeout(default.connect or 10.0, read=call.read_timeout, write=default.write, pool=default.pool)


def is_wafer_problem(r: httpx.Response) -> bool:
    """Whether the answer is one of Wafer's own problems, not a function's answer."""
    if not r.headers.get("content-type", "").startswith("application/problem+json"):
        return False
    problem = parse_problem(r.content)
    return problem is not None and str(problem.get("type", "")).startswith(PROBLEM_BASE)


def retry_after(r: httpx.Response) -> float | None:
    """The answer's ``Retry-After`` in seconds (delta-seconds or an HTTP date)."""
    value = r.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def check(call: Call, r: httpx.Response) -> httpx.Response:
    """The answer, or the typed error it stands for."""
    if r.status_code < 400 or not (call.strict or is_wafer_problem(r)):
        return r
    raise error_from_problem(r.status_code, parse_problem(r.content), retry_after(r))


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry.

    Idempotent calls (reads, module uploads, deletes, cancels, submissions with an
    Idempotency-Key) are retried on connection errors, 429 and 503. Other calls (a POST to a
    function, a new version) only when they surely did not run: the connection was never
    made, or Wafer refused them before running (429 ``concurrency-limit``, 503
    ``overloaded``). The wait doubles from ``backoff`` with jitter, up to ``max_backoff``;
    a ``Retry-After`` from the server is honoured (up to ``max_backoff``).
    """

    retries: int = 3
    backoff: float = 0.25
    max_backoff: float = 30.0

    def _backoff(self, attempt: int) -> float:
        base = min(self.max_backoff, self.backoff * (1 << min(attempt, 30)))
        return base / 2 + random.uniform(0, base / 2)

    def after_error(self, call: Call, attempt: int, error: httpx.TransportError) -> float | None:
        """Seconds to wait before trying ``call`` again after ``error``, or ``None``."""
        if attempt >= self.retries:
            return None
        if call.retry == IDEMPOTENT or isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
            return self._backoff(attempt)
        return None

    def after_response(self, call: Call, attempt: int, r: httpx.Response) -> float | None:
        """Seconds to wait before trying ``call`` again after answer ``r``, or ``None``."""
        if attempt >= self.retries or r.status_code not in (429, 503):
            return None
        if call.retry != IDEMPOTENT:
            problem = parse_problem(r.content) if is_wafer_problem(r) else None
            slug = str((problem or {}).get("type", "")).removeprefix(PROBLEM_BASE)
            if slug not in ("overloaded", "concurrency-limit"):
                return None
        asked = retry_after(r)
        if asked is None:
            return self._backoff(attempt)
        return min(self.max_backoff, asked)


def upload_chunks(data: bytes, progress: UploadProgress | None) -> Iterator[bytes]:
    """``data`` in chunks, telling ``progress`` after each."""
    total = len(data)
    if progress:
        progress(0, total)
    for start in range(0, total, UPLOAD_CHUNK):
        chunk = data[start : start + UPLOAD_CHUNK]
        yield chunk
        if progress:
            progress(start + len(chunk), total)


def to_response(r: httpx.Response) -> Response:
    return Response(status=r.status_code, headers=dict(r.headers), content=r.content)


def settings(url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    """The base URL and default headers, from the arguments or ``WAFER_URL``/``WAFER_API_KEY``."""
    base = (url or os.environ.get("WAFER_URL") or DEFAULT_URL).rstrip("/")
    key = api_key if api_key is not None else os.environ.get("WAFER_API_KEY")
    headers = {"user-agent": "wafer-sdk-python/0.1"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    return base, headers


class Namespace(Generic[C]):
    """A group of a client's calls (``client.functions``, ``client.jobs``, ``client.keys``)."""

    def __init__(self, client: C) -> None:
        self._client = client


class JobHandle(Generic[C]):
    """What :class:`wafer.Job` and :class:`wafer.AsyncJob` share: the client, the id and the
    record last read (``last``)."""

    def __init__(self, client: C, job_id: str, info: JobInfo | None = None) -> None:
        self._client = client
        self.id = job_id
        self.last: JobInfo | None = info

    def __repr__(self) -> str:
        status = self.last.status if self.last else "?"
        return f"{type(self).__name__}(id={self.id!r}, status={status!r})"


class FunctionHandle(Generic[C]):
    """What :class:`wafer.Function` and :class:`wafer.AsyncFunction` share: the client and
    the function's name."""

    def __init__(self, client: C, name: str) -> None:
        self._client = client
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


# ---- progress helpers ------------------------------------------------------------------

ProgressArg = Union[bool, None, Callable[..., None]]


class _Bar:
    """A tqdm bar, or nothing when tqdm is not installed."""

    def __init__(self, **kw: Any) -> None:
        try:
            from tqdm import tqdm
        except ImportError:
            self._bar: Any = None
        else:
            self._bar = tqdm(**kw)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def upload_progress(progress: ProgressArg, name: str) -> tuple[UploadProgress | None, Callable[[], None]]:
    """The upload callback for ``progress`` (a callable, or ``True`` for a tqdm bar) and a
    function that closes the bar."""
    if progress is None or progress is False:
        return None, lambda: None
    if callable(progress):
        return progress, lambda: None
    bar = _Bar(unit="B", unit_scale=True, desc=f"upload {name}", leave=False)

    def tell(sent: int, total: int) -> None:
        if bar._bar is not None:
            bar._bar.total = total
            bar._bar.n = sent
            bar._bar.refresh()

    return tell, bar.close


def wait_progress(progress: ProgressArg, job_id: str) -> tuple[WaitProgress | None, Callable[[], None]]:
    """The wait callback for ``progress`` (a callable, or ``True`` for a tqdm bar that shows
    the job's status and the time waited) and a function that closes the bar."""
    if progress is None or progress is False:
        return None, lambda: None
    if callable(progress):
        return progress, lambda: None
    bar = _Bar(desc=f"job {job_id[:12]}", bar_format="{desc}: {postfix} [{elapsed}]", leave=False)

    def tell(info: JobInfo) -> None:
        if bar._bar is not None:
            bar._bar.set_postfix_str(info.status)

    return tell, bar.close


# ---- operations ---------------------------------------------------------------------------


def read_module(path_or_bytes: str | os.PathLike[str] | bytes) -> tuple[bytes, str]:
    """A module's bytes and a name to show for it."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(path_or_bytes), "module"
    p = Path(path_or_bytes)
    return p.read_bytes(), p.name


def upload_op(data: bytes, progress: UploadProgress | None) -> Op[Module]:
    """``PUT /v1/modules``: content-addressed, so safe to retry."""
    r = yield Call(
        "PUT",
        "/v1/modules",
        content=data,
        headers={"content-type": "application/wasm", "content-length": str(len(data))},
        upload_progress=progress,
    )
    return Module.from_json(r.json())


def deploy_op(
    name: str,
    data: bytes,
    spec: dict[str, Any],
    progress: UploadProgress | None,
) -> Op[Version]:
    """Upload the module, then make a version of it (never retried once sent: each PUT of a
    function makes a new version)."""
    module = yield from upload_op(data, progress)
    body = {"module": module.digest, **{k: v for k, v in spec.items() if v is not None}}
    r = yield Call("PUT", f"/v1/functions/{segment(name)}", json=body, retry=REFUSALS)
    created = r.json()
    # The answer names the version; read it whole.
    number = created.get("version")
    return (yield from version_op(name, number))


def version_op(name: str, number: int) -> Op[Version]:
    r = yield Call("GET", f"/v1/functions/{segment(name)}/versions")
    for v in r.json().get("versions", []):
        if v.get("version") == number:
            return Version.from_json(v)
    raise WaferError("version not listed", detail=f"version {number} of {name!r} is not listed")


def deploy_spec(
    timeout: Duration | None,
    memory_mb: int | None,
    fuel: int | None,
    env: Mapping[str, str] | None,
    public: bool | None,
    kind: str | None,
    cache: Mapping[str, Any] | None,
) -> dict[str, Any]:
    return {
        "timeout_ms": millis(timeout),
        "memory_mb": memory_mb,
        "fuel": fuel,
        "env": dict(env) if env is not None else None,
        "public": public,
        "class": kind,
        "cache": dict(cache) if cache is not None else None,
    }


#: A query: a mapping, or pairs when a name repeats.
Params = Union[Mapping[str, str], Sequence[tuple[str, str]]]


def invoke_call(
    name: str,
    data: bytes | str | None,
    json: Any,
    headers: Mapping[str, str] | None,
    path: str,
    method: str,
    params: Params | None = None,
) -> Call:
    """``/fn/{name}{path}?{params}``: a function's answer, whatever its status; Wafer's
    problems raise. ``path`` is escaped segment by segment (:func:`sub_path`), so it stays
    under the function's URL; the query is only ever ``params``."""
    if data is not None and json is not None:
        raise ValueError("pass data or json, not both")
    query = tuple((params.items() if isinstance(params, Mapping) else params) or ())
    method = method.upper()
    return Call(
        method,
        f"/fn/{segment(name)}{sub_path(path)}",
        params=query or None,
        content=data.encode() if isinstance(data, str) else data,
        json=json,
        headers=dict(headers or {}),
        retry=IDEMPOTENT if method in ("GET", "HEAD", "OPTIONS", "PUT", "DELETE") else REFUSALS,
        strict=False,
    )


def invoke_op(call: Call) -> Op[Response]:
    r = yield call
    return to_response(r)


def submit_op(
    name: str,
    input: Any,
    idempotency_key: str | None,
    timeout: Duration | None,
    content_type: str | None,
) -> Op[JobInfo]:
    """``POST /v1/jobs`` with an Idempotency-Key (generated when not given), so a retry after
    a lost answer returns the same job instead of running it twice."""
    body: dict[str, Any] = {"function": name}
    raw, value = split_input(input)
    if raw is not None:
        body["input_base64"] = base64.b64encode(raw).decode()
        if isinstance(input, str) and content_type is None:
            content_type = "text/plain; charset=utf-8"
    elif value is not None:
        body["input"] = value
    if timeout is not None:
        body["timeout_ms"] = millis(timeout)
    if content_type is not None:
        body["content_type"] = content_type
    key = idempotency_key or f"sdk-{uuid.uuid4()}"
    r = yield Call("POST", "/v1/jobs", json=body, headers={"idempotency-key": key})
    return JobInfo.from_json(r.json())


def job_op(job_id: str) -> Op[JobInfo]:
    r = yield Call("GET", f"/v1/jobs/{segment(job_id)}")
    return JobInfo.from_json(r.json())


def wait_op(job_id: str, timeout: Duration | None, progress: WaitProgress | None) -> Op[Response]:
    """Long-polls the job until it ends (or ``timeout`` passes: :class:`WaitTimeout`), then
    reads its result. With ``progress``, polls each second and tells it each record."""
    deadline = None if timeout is None else time.monotonic() + seconds(timeout)
    step = 1.0 if progress else 30.0
    while True:
        left = step if deadline is None else min(step, deadline - time.monotonic())
        wait_ms = max(0, int(left * 1000))
        r = yield Call(
            "GET",
            f"/v1/jobs/{segment(job_id)}",
            params={"wait": f"{wait_ms}ms"},
            read_timeout=left + 30.0,
        )
        info = JobInfo.from_json(r.json())
        if progress:
            progress(info)
        if info.finished:
            break
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeout(
                "Job still running",
                detail=f"job {job_id} is {info.status} after waiting {seconds(timeout or 0):g} s",
                extra={"job": info.raw},
            )
    return (yield from result_op(job_id))


def result_op(job_id: str) -> Op[Response]:
    """``GET /v1/jobs/{id}/result``: what the function returned; a failed job raises the
    problem it ended with, one that has not ended :class:`JobNotFinished`."""
    r = yield Call("GET", f"/v1/jobs/{segment(job_id)}/result", strict=False)
    return to_response(r)


def cancel_op(job_id: str) -> Op[JobInfo]:
    r = yield Call("DELETE", f"/v1/jobs/{segment(job_id)}")
    return JobInfo.from_json(r.json())


def job_logs_op(job_id: str) -> Op[str]:
    r = yield Call("GET", f"/v1/jobs/{segment(job_id)}/logs")
    return r.text


def jobs_list_op(function: str | None, status: str | None, limit: int | None, cursor: str | None) -> Op[JobList]:
    params = {k: str(v) for k, v in (("function", function), ("status", status), ("limit", limit), ("cursor", cursor)) if v is not None}
    r = yield Call("GET", "/v1/jobs", params=params)
    body = r.json()
    return JobList([JobInfo.from_json(j) for j in body.get("jobs", [])], body.get("next_cursor"))


def split_input(input: Any) -> tuple[bytes | None, Any]:
    """A function's input as ``(raw bytes, None)`` for bytes and text, which the function
    gets as they are, or ``(None, value)`` for anything else, which it gets as JSON."""
    if isinstance(input, (bytes, bytearray, memoryview)):
        return bytes(input), None
    if isinstance(input, str):
        return input.encode(), None
    return None, input


def execute_first(name: str, input: Any) -> Call:
    """The synchronous call ``execute`` starts with: a POST of the input (bytes and text as
    they are, anything else as JSON)."""
    raw, value = split_input(input)
    return Call(
        "POST",
        f"/fn/{segment(name)}",
        content=raw,
        json=value,
        headers={"content-type": "text/plain; charset=utf-8"} if isinstance(input, str) else {},
        retry=REFUSALS,
        strict=False,
    )


#: The header the gateway puts on every answer of a run of a function (and a function cannot
#: remove), never on its own answers such as the 202 of a call that became a job.
RUN_HEADER = "x-wafer-version"
JOB_LOCATION = "/v1/jobs/"


def accepted_job(r: httpx.Response) -> JobInfo | None:
    """The job, when ``r`` is Wafer's answer that the call became a job: 202 without
    ``x-wafer-version`` (so no run of the function made it), ``Location: /v1/jobs/{id}``
    and a JSON body that is the job's record, with that ``id``. ``None`` for anything else,
    such as a function that answers 202 itself, whatever headers and body it sends."""
    if r.status_code != 202 or RUN_HEADER in r.headers:
        return None
    location = r.headers.get("location", "")
    job_id = location.removeprefix(JOB_LOCATION)
    if not location.startswith(JOB_LOCATION) or not job_id or job_id != quote(job_id, safe=""):
        return None
    try:
        body = r.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("id") != job_id:
        return None
    return JobInfo.from_json(body)


def execute_op(name: str, input: Any, timeout: Duration | None, progress: WaitProgress | None) -> Op[Any]:
    """Calls the function; when Wafer answers with a job instead (the function's runs outlast
    the inline budget), waits for the job. A function's own 202 is its answer, like any
    other status (see :func:`accepted_job`). Returns the decoded body of a 2xx answer; a
    function's own error status raises :class:`FunctionError`."""
    r = yield execute_first(name, input)
    job = accepted_job(r)
    if job is not None:
        resp = yield from wait_op(job.id, timeout, progress)
    else:
        resp = to_response(r)
    return decoded(resp)


def decoded(resp: Response) -> Any:
    if not resp.ok:
        raise FunctionError(
            "Function answered an error",
            status=resp.status,
            detail=resp.text[:500],
            extra={"body": resp.content},
        )
    return resp.decoded()


def functions_list_op() -> Op[list[FunctionInfo]]:
    r = yield Call("GET", "/v1/functions")
    return [FunctionInfo.from_json(f) for f in r.json().get("functions", [])]


def function_get_op(name: str) -> Op[FunctionInfo]:
    r = yield Call("GET", f"/v1/functions/{segment(name)}")
    return FunctionInfo.from_json(r.json())


def versions_op(name: str) -> Op[list[Version]]:
    r = yield Call("GET", f"/v1/functions/{segment(name)}/versions")
    return [Version.from_json(v) for v in r.json().get("versions", [])]


def rollback_op(name: str, version: int, alias: str) -> Op[FunctionInfo]:
    yield Call("PUT", f"/v1/functions/{segment(name)}/aliases/{segment(alias)}", json={"version": version})
    return (yield from function_get_op(name))


def delete_op(name: str) -> Op[None]:
    yield Call("DELETE", f"/v1/functions/{segment(name)}")


def logs_op(name: str) -> Op[list[LogEntry]]:
    r = yield Call("GET", f"/v1/functions/{segment(name)}/logs")
    return [LogEntry.from_json(e) for e in r.json().get("logs", [])]


def key_create_op(tenant: str, scopes: list[str]) -> Op[Key]:
    r = yield Call("POST", "/v1/keys", json={"tenant": tenant, "scopes": scopes}, retry=REFUSALS)
    return Key.from_json(r.json())


def keys_list_op() -> Op[list[Key]]:
    r = yield Call("GET", "/v1/keys")
    return [Key.from_json(k) for k in r.json().get("keys", [])]


def key_revoke_op(key_id: str) -> Op[None]:
    yield Call("DELETE", f"/v1/keys/{segment(key_id)}")
