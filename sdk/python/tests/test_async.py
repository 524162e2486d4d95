"""The async client: the same calls, awaited, and many at once."""

from __future__ import annotations

import anyio
import httpx
import pytest

import wafer
from conftest import Server, function

pytestmark = pytest.mark.anyio


async def test_deploy_invoke_submit_and_execute(server: Server) -> None:
    async with wafer.AsyncClient(server.url, server.admin_key) as c:
        v = await c.deploy("async-echo", function("echo"), timeout=3)
        assert v.timeout_ms == 3000
        r = await c.invoke("async-echo", b"async")
        assert (r.status, r.text) == (200, "async")
        job = await c.submit("stress", {"force": 1000, "section": 10})
        assert isinstance(job, wafer.AsyncJob)
        assert (await job.wait()).json() == {"stress": 100.0}
        assert await job.status() == "succeeded"
        assert (await job.result()).json() == {"stress": 100.0}
        assert (await job.info()).attempts == 1
        assert await job.logs() == ""
        fn = c.function("stress")
        assert await fn.execute({"force": 1000, "section": 10}) == {"stress": 100.0}
        later = await fn.execute_async({"force": 9, "section": 3})
        assert (await later.wait()).json() == {"stress": 3.0}


async def test_management_calls(server: Server) -> None:
    async with wafer.AsyncClient(server.url, server.admin_key) as c:
        v1 = await c.deploy("async-rolled", function("echo"))
        await c.deploy("async-rolled", function("stress"))
        assert len(await c.functions.versions("async-rolled")) == 2
        info = await c.functions.rollback("async-rolled", v1.version)
        assert info.aliases["latest"] == v1.version
        assert (await c.functions.get("async-rolled")).latest_version == v1.version + 1
        assert "async-rolled" in [f.name for f in await c.functions.list()]
        await c.invoke("async-rolled", b"x")
        assert (await c.functions.logs("async-rolled")) is not None
        await c.functions.delete("async-rolled")
        with pytest.raises(wafer.NotFound):
            await c.functions.get("async-rolled")
        key = await c.keys.create("async-team", ["read"])
        assert key.id in [k.id for k in await c.keys.list()]
        await c.keys.revoke(key.id)
        job = await c.submit("nap", "20000")
        assert (await job.cancel()).status == "cancelled"
        with pytest.raises(wafer.JobCancelled):
            await job.result()
        page = await c.jobs.list(function="nap", limit=1)
        assert page[0].id == job.id
        assert (await c.jobs.get(job.id)).last.status == "cancelled"  # type: ignore[union-attr]


async def test_errors_are_the_same_types(server: Server) -> None:
    async with wafer.AsyncClient(server.url, server.admin_key) as c:
        with pytest.raises(wafer.NotFound):
            await c.invoke("nothing-here")
        with pytest.raises(wafer.FunctionTrapped) as e:
            await c.invoke("fail")
        assert e.value.exit_code == 3
        with pytest.raises(wafer.FunctionTimeout):
            await c.invoke("spin")
        with pytest.raises(wafer.WaitTimeout):
            await (await c.submit("nap", "1500")).wait(timeout=0.2)
    async with wafer.AsyncClient(server.url, "wfr_wrong") as bad:
        with pytest.raises(wafer.Unauthorized):
            await bad.functions.list()


async def test_many_calls_at_once_share_one_client(server: Server) -> None:
    results: dict[int, str] = {}
    async with wafer.AsyncClient(server.url, server.admin_key) as c:

        async def one(i: int) -> None:
            results[i] = (await c.invoke("echo", f"call {i}")).text

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, i)
    assert results == {i: f"call {i}" for i in range(40)}


class Recording(httpx.AsyncBaseTransport):
    """A transport that keeps the status of each answer to a call of a function."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.statuses: list[tuple[str, int]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        r = await self.inner.handle_async_request(request)
        if request.url.path.startswith("/fn/"):
            self.statuses.append((request.method, r.status_code))
        return r

    async def aclose(self) -> None:
        await self.inner.aclose()


async def in_flight(s: Server, n: int) -> None:
    """Waits until `s` reports `n` invocations in flight (10 s at most), without blocking the
    event loop that sends them."""
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {s.admin_key}"}) as h:
        with anyio.fail_after(10):
            while f"wafer_invocations_in_flight {n}\n" not in (await h.get(f"{s.url}/metrics")).text:
                await anyio.sleep(0.01)


async def test_async_retries_an_overloaded_server(make_server: type[Server]) -> None:
    s = make_server("max_inflight = 1\n").start()
    transport = Recording()
    async with wafer.AsyncClient(s.url, s.admin_key, transport=transport) as c:
        await c.deploy("nap", function("nap"), timeout=10)
        async with anyio.create_task_group() as tg:
            tg.start_soon(c.invoke, "nap", "1200")
            await in_flight(s, 1)  # the one slot is taken
            r = await c.invoke("nap", "1", method="GET")
        assert r.text == "awake\n"
    # The GET was refused while the slot was taken, then retried until it ran.
    gets = [status for method, status in transport.statuses if method == "GET"]
    assert gets[0] == 503 and gets[-1] == 200, gets


async def test_a_function_s_own_202_is_its_answer() -> None:
    own = {"id": "01JOBOFTHEFUNCTION000000000", "status": "queued"}
    followed: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/fn/"):
            return httpx.Response(202, headers={"location": f"/v1/jobs/{own['id']}", "x-wafer-version": "3"}, json=own)
        followed.append(request.url.path)
        return httpx.Response(404)

    async with wafer.AsyncClient("http://wafer.test", "k", transport=httpx.MockTransport(server)) as c:
        assert await c.function("accepts").execute({"x": 1}) == own
    assert followed == []


async def test_invoke_s_path_cannot_leave_the_function(server: Server) -> None:
    async with wafer.AsyncClient(server.url, server.admin_key) as c:
        with pytest.raises(ValueError):
            await c.invoke("inspect", path="../../v1/keys", method="GET")
        r = await c.invoke("inspect", path="%2e%2e/v1/keys?x#y", method="GET")
        assert r.json()["path"] == "/%252e%252e/v1/keys%3Fx%23y"


async def test_url_and_key_come_from_the_environment(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAFER_URL", server.url)
    monkeypatch.setenv("WAFER_API_KEY", server.admin_key)
    async with wafer.AsyncClient() as c:
        assert c.url == server.url
        assert "echo" in [f.name for f in await c.functions.list()]
