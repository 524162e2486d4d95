"""The asynchronous client: :class:`AsyncClient`, with :class:`AsyncJob` and :class:`AsyncFunction`
handles. The same operations as :class:`wafer.Client`, awaited."""

from __future__ import annotations

import builtins
import os
from typing import Any, AsyncIterator, Mapping, TypeVar

import anyio
import httpx

from . import _core as core
from ._core import Call, Duration, Op, ProgressArg, RetryPolicy
from .errors import ConnectionFailed
from .models import FunctionInfo, JobInfo, JobList, Key, LogEntry, Module, Response, Version

T = TypeVar("T")

__all__ = ["AsyncClient", "AsyncJob", "AsyncFunction"]


class AsyncClient:
    """A connection to a Wafer server.

    ``url`` and ``api_key`` default to ``WAFER_URL`` (else ``http://127.0.0.1:8080``) and
    ``WAFER_API_KEY``. ``retries`` bounds how often a call is tried again (see
    :class:`wafer.RetryPolicy` for which calls and answers); ``timeout`` is httpx's, with a
    read timeout long enough for a function's longest run. Use as a context manager, or call
    :meth:`aclose`.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = httpx.Timeout(330.0, connect=10.0),
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url, headers = core.settings(url, api_key)
        self._timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=self._timeout, transport=transport)
        self.retry = RetryPolicy(retries, backoff, max_backoff)
        self.functions = AsyncFunctions(self)
        self.jobs = AsyncJobs(self)
        self.keys = AsyncKeys(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()

    async def _send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            content = _chunks(call.content, call.upload_progress) if call.content is not None and call.upload_progress else call.content
            try:
                r = await self._http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    json=call.json if call.content is None else None,
                    content=content,
                    headers=call.headers,
                    timeout=core.timeout_for(self._timeout, call),
                )
            except httpx.TransportError as e:
                delay = self.retry.after_error(call, attempt, e)
                if delay is None:
                    raise ConnectionFailed("Connection failed", detail=f"{call.method} {self.url}{call.path}: {e!r}") from e
            else:
                delay = self.retry.after_response(call, attempt, r)
                if delay is None:
                    return core.check(call, r)
            attempt += 1
            await anyio.sleep(delay)

    async def _run(self, op: Op[T]) -> T:
        try:
            call = next(op)
            while True:
                call = op.send(await self._send(call))
        except StopIteration as done:
            result: T = done.value
            return result

    async def upload(self, path_or_bytes: str | os.PathLike[str] | bytes, *, progress: ProgressArg = None) -> Module:
        """Uploads a module (validated and compiled once by the server) without deploying it."""
        data, label = core.read_module(path_or_bytes)
        tell, close = core.upload_progress(progress, label)
        try:
            return await self._run(core.upload_op(data, tell))
        finally:
            close()

    async def deploy(
        self,
        name: str,
        path_or_bytes: str | os.PathLike[str] | bytes,
        *,
        timeout: Duration | None = None,
        memory_mb: int | None = None,
        fuel: int | None = None,
        env: Mapping[str, str] | None = None,
        public: bool | None = None,
        kind: str | None = None,
        cache: Mapping[str, Any] | None = None,
        progress: ProgressArg = None,
    ) -> Version:
        """Uploads the module and makes it a new version of ``name``, which ``latest`` moves
        to. ``timeout`` is seconds (or a ``timedelta``); ``kind`` is the class, ``"short"`` or
        ``"long"``; unset limits take the server's defaults. ``progress``: a callback told
        ``(sent, total)`` bytes, or ``True`` for a tqdm bar."""
        data, label = core.read_module(path_or_bytes)
        tell, close = core.upload_progress(progress, label)
        spec = core.deploy_spec(timeout, memory_mb, fuel, env, public, kind, cache)
        try:
            return await self._run(core.deploy_op(name, data, spec, tell))
        finally:
            close()

    async def invoke(
        self,
        name: str,
        data: bytes | str | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        path: str = "/",
        method: str = "POST",
        params: core.Params | None = None,
    ) -> Response:
        """Calls ``name`` (or ``name@version``/``name@alias``) and returns its answer, whatever
        its status. Wafer's own problems (the function trapped, timed out, was not found...)
        raise the matching :class:`wafer.WaferError`.

        ``path`` is the path under the function, taken as text: each ``/``-separated segment
        is escaped (``?``, ``#`` and ``%`` too), so it reaches the function as written and can
        never address anything but the function; ``.`` and ``..`` segments raise
        ``ValueError``. The query is ``params`` (a mapping, or pairs)."""
        return await self._run(core.invoke_op(core.invoke_call(name, data, json, headers, path, method, params)))

    async def submit(
        self,
        name: str,
        input: Any = None,
        *,
        idempotency_key: str | None = None,
        timeout: Duration | None = None,
        content_type: str | None = None,
    ) -> AsyncJob:
        """Queues a job running ``name`` on ``input`` (bytes and text as they are, anything
        else as JSON). It is sent with an
        Idempotency-Key (``idempotency_key``, else a generated one), so retrying it never
        makes a second job."""
        info = await self._run(core.submit_op(name, input, idempotency_key, timeout, content_type))
        return AsyncJob(self, info.id, info)

    def job(self, job_id: str) -> AsyncJob:
        """A handle on an existing job."""
        return AsyncJob(self, job_id)

    def function(self, name: str) -> AsyncFunction:
        """A handle on a function, for ``execute`` and ``execute_async``."""
        return AsyncFunction(self, name)


async def _chunks(data: bytes, progress: core.UploadProgress | None) -> AsyncIterator[bytes]:
    for chunk in core.upload_chunks(data, progress):
        yield chunk


class AsyncJob(core.JobHandle["AsyncClient"]):
    """A submitted job. ``id`` names it; the methods ask the server each time."""

    async def info(self) -> JobInfo:
        """The job's record now."""
        self.last = await self._client._run(core.job_op(self.id))
        return self.last

    async def status(self) -> str:
        """The job's status now: ``queued``, ``running``, ``succeeded``, ``failed``,
        ``cancelled`` or ``dead``."""
        return (await self.info()).status

    async def wait(self, timeout: Duration | None = None, *, progress: ProgressArg = None) -> Response:
        """Waits until the job ends (at most ``timeout``: then :class:`wafer.WaitTimeout`) and
        returns its result; a failed job raises the problem it ended with. ``progress``: a
        callback told each :class:`JobInfo` read, or ``True`` for a tqdm bar."""
        tell, close = core.wait_progress(progress, self.id)
        try:
            return await self._client._run(core.wait_op(self.id, timeout, tell))
        finally:
            close()

    async def result(self) -> Response:
        """What the function returned; :class:`wafer.JobNotFinished` while it runs."""
        return await self._client._run(core.result_op(self.id))

    async def cancel(self) -> JobInfo:
        """Cancels the job (a running guest is interrupted); cancelling an ended job is a
        :class:`wafer.Conflict`."""
        self.last = await self._client._run(core.cancel_op(self.id))
        return self.last

    async def logs(self) -> str:
        """What the job wrote to stderr."""
        return await self._client._run(core.job_logs_op(self.id))


class AsyncFunction(core.FunctionHandle["AsyncClient"]):
    """A function by name: run it like a task (``execute``) or as a job (``execute_async``)."""

    async def execute(self, input: Any = None, *, timeout: Duration | None = None, progress: ProgressArg = None) -> Any:
        """Runs the function on ``input`` (bytes and text as they are, anything else as JSON)
        and returns the decoded result, blocking until
        it is there: when Wafer runs the call as a job (the function is long), waits for
        the job. A function's own error answer raises :class:`wafer.FunctionError`."""
        tell, close = core.wait_progress(progress, self.name)
        try:
            return await self._client._run(core.execute_op(self.name, input, timeout, tell))
        finally:
            close()

    async def execute_async(self, input: Any = None, *, idempotency_key: str | None = None, timeout: Duration | None = None) -> AsyncJob:
        """Submits the function on ``input`` as a job and returns the :class:`AsyncJob` at once."""
        return await self._client.submit(self.name, input, idempotency_key=idempotency_key, timeout=timeout)

    async def invoke(self, data: bytes | str | None = None, **kw: Any) -> Response:
        """:meth:`AsyncClient.invoke` of this function."""
        return await self._client.invoke(self.name, data, **kw)

    async def info(self) -> FunctionInfo:
        """The function's record."""
        return await self._client.functions.get(self.name)


class AsyncFunctions(core.Namespace["AsyncClient"]):
    """``client.functions``: read and manage deployed functions."""

    async def list(self) -> builtins.list[FunctionInfo]:
        """The tenant's functions."""
        return await self._client._run(core.functions_list_op())

    async def get(self, name: str) -> FunctionInfo:
        return await self._client._run(core.function_get_op(name))

    async def versions(self, name: str) -> builtins.list[Version]:
        return await self._client._run(core.versions_op(name))

    async def rollback(self, name: str, version: int, *, alias: str = "latest") -> FunctionInfo:
        """Points ``alias`` (``latest`` by default: a rollback) at ``version``."""
        return await self._client._run(core.rollback_op(name, version, alias))

    async def delete(self, name: str) -> None:
        """Deletes the function with all its versions."""
        await self._client._run(core.delete_op(name))

    async def logs(self, name: str) -> builtins.list[LogEntry]:
        """The last invocations, each with the tail of what it wrote to stderr."""
        return await self._client._run(core.logs_op(name))


class AsyncJobs(core.Namespace["AsyncClient"]):
    """``client.jobs``: list jobs, or get a handle on one."""

    async def list(
        self,
        *,
        function: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobList:
        """One page of the tenant's jobs, newest first (``next_cursor`` for the next)."""
        return await self._client._run(core.jobs_list_op(function, status, limit, cursor))

    async def get(self, job_id: str) -> AsyncJob:
        return AsyncJob(self._client, job_id, await self._client._run(core.job_op(job_id)))


class AsyncKeys(core.Namespace["AsyncClient"]):
    """``client.keys``: API keys (an admin key's calls)."""

    async def create(self, tenant: str, scopes: builtins.list[str] | None = None) -> Key:
        """A new key for ``tenant``; its ``secret`` is shown only in this answer."""
        return await self._client._run(core.key_create_op(tenant, scopes or ["deploy", "invoke", "read"]))

    async def list(self) -> builtins.list[Key]:
        return await self._client._run(core.keys_list_op())

    async def revoke(self, key_id: str) -> None:
        await self._client._run(core.key_revoke_op(key_id))
