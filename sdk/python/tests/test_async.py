"""The async client: the same calls, awaited, and many at once."""

from __future__ import annotations

import anyio
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


async def test_async_retries_an_overloaded_server(make_server: type[Server]) -> None:
    s = make_server("max_inflight = 1\n").start()
    async with wafer.AsyncClient(s.url, s.admin_key) as c:
        await c.deploy("nap", function("nap"), timeout=10)
        async with anyio.create_task_group() as tg:
            tg.start_soon(c.invoke, "nap", "1200")
            await anyio.sleep(0.3)
            r = await c.invoke("nap", "1", method="GET")
        assert r.text == "awake\n"


async def test_url_and_key_come_from_the_environment(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAFER_URL", server.url)
    monkeypatch.setenv("WAFER_API_KEY", server.admin_key)
    async with wafer.AsyncClient() as c:
        assert c.url == server.url
        assert "echo" in [f.name for f in await c.functions.list()]
