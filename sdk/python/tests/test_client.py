"""The synchronous client against a real server: every call."""

from __future__ import annotations

import contextlib
import io
import time

import httpx

import pytest

import wafer
from conftest import Server, function


def test_deploy_returns_the_new_version_with_its_limits(client: wafer.Client) -> None:
    v = client.deploy("limits", function("echo"), timeout=2.5, memory_mb=32, fuel=12345678, env={"MODE": "test"})
    assert (v.function, v.abi, v.timeout_ms, v.memory_mb, v.fuel) == ("limits", "command", 2500, 32, 12345678)
    assert v.env_keys == ["MODE"] and v.public is False
    again = client.deploy("limits", function("echo").read_bytes())
    assert again.version == v.version + 1
    assert client.functions.get("limits").latest_version == again.version


def test_invoke_returns_the_function_s_answer(client: wafer.Client) -> None:
    r = client.invoke("echo", b"round trip")
    assert (r.status, r.content, r.text, r.ok) == (200, b"round trip", "round trip", True)
    assert r.headers["x-wafer-version"]
    r = client.invoke("stress", json={"force": 1000, "section": 10})
    assert r.json() == {"stress": 100.0}
    r = client.invoke("hello", params={"name": "sdk"}, method="GET")
    assert r.text == "Hello, sdk!\n"
    r = client.invoke("inspect", data="abc", headers={"x-custom": "1"}, path="/sub/path", params=[("q", "2"), ("q", "3")], method="PUT")
    seen = r.json()
    assert r.status == 201
    assert (seen["method"], seen["path"], seen["headers"]["x-custom"], seen["body_len"]) == ("PUT", "/sub/path?q=2&q=3", "1", 3)
    # A function's own error answer is returned, not raised.
    r = client.invoke("inspect", params={"status": "418"}, method="GET")
    assert r.status == 418 and not r.ok


def test_invoke_s_path_cannot_leave_the_function(client: wafer.Client) -> None:
    # Dot segments would be resolved by httpx (or a proxy) to another API route, called
    # with the caller's key: refused before anything is sent.
    for path in ["../../v1/keys", "/a/../../../v1/keys", "./x", "/a/..", ".."]:
        with pytest.raises(ValueError):
            client.invoke("inspect", path=path, method="GET")
    # Everything else is text, escaped segment by segment: it reaches the function as one
    # path under it, with no query but the params.
    r = client.invoke("inspect", path="%2e%2e/%2E%2E/v1/keys?x=1#frag", params={"q": "a&b"}, method="GET")
    assert r.headers.get("x-inspected") == "yes"
    assert r.json()["path"] == "/%252e%252e/%252E%252E/v1/keys%3Fx=1%23frag?q=a%26b"
    r = client.invoke("inspect", path="/files/a b/ü:1/", method="GET")
    assert r.json()["path"] == "/files/a%20b/%C3%BC:1/"


def test_names_and_ids_in_urls_name_only_themselves(client: wafer.Client) -> None:
    for bad in ["..", ".", ""]:
        with pytest.raises(ValueError):
            client.job(bad).status()
        with pytest.raises(ValueError):
            client.keys.revoke(bad)
        with pytest.raises(ValueError):
            client.functions.get(bad)
        with pytest.raises(ValueError):
            client.invoke(bad)
        with pytest.raises(ValueError):
            client.functions.rollback("echo", 1, alias=bad)
    # A slash, a query or a fragment in an id stays in its one segment.
    with pytest.raises(wafer.NotFound):
        client.job("../keys").status()
    with pytest.raises(wafer.WaferError) as e:
        client.invoke("echo/../../v1/keys?x#y")
    assert e.value.status in (400, 404)
    assert client.function("echo@latest").execute("via alias") == "via alias"


def test_invoke_refuses_data_and_json_together(client: wafer.Client) -> None:
    with pytest.raises(ValueError):
        client.invoke("echo", data=b"x", json={"x": 1})


def test_versions_rollback_and_delete(client: wafer.Client) -> None:
    v1 = client.deploy("rolled", function("echo"))
    v2 = client.deploy("rolled", function("stress"))
    assert sorted(v.version for v in client.functions.versions("rolled")) == [v1.version, v2.version]
    assert client.invoke("rolled", json={"force": 10, "section": 5}).json() == {"stress": 2.0}
    info = client.functions.rollback("rolled", v1.version)
    assert info.aliases["latest"] == v1.version
    assert client.invoke("rolled", b"echoed").text == "echoed"
    assert client.invoke(f"rolled@{v2.version}", json={"force": 10, "section": 5}).json() == {"stress": 2.0}
    assert "rolled" in [f.name for f in client.functions.list()]
    client.functions.delete("rolled")
    assert "rolled" not in [f.name for f in client.functions.list()]
    with pytest.raises(wafer.NotFound):
        client.functions.get("rolled")


def test_function_logs_keep_what_invocations_wrote(client: wafer.Client) -> None:
    with pytest.raises(wafer.FunctionTrapped):
        client.invoke("fail")
    logs = client.functions.logs("fail")
    assert logs and logs[0].outcome == "nonzero-exit"
    assert "something went wrong" in logs[0].log


def test_submit_wait_result_status_and_logs(client: wafer.Client) -> None:
    job = client.submit("stress", {"force": 1000, "section": 10})
    assert job.id and job.last is not None and job.last.status in ("queued", "running", "succeeded")
    assert job.wait().json() == {"stress": 100.0}
    assert job.wait().json() == {"stress": 100.0}
    assert job.status() == "succeeded"
    assert job.result().json() == {"stress": 100.0}
    info = job.info()
    assert (info.function, info.status, info.attempts, info.finished) == ("stress", "succeeded", 1, True)
    assert job.logs() == ""
    assert client.job(job.id).result().json() == {"stress": 100.0}
    assert client.jobs.get(job.id).last.status == "succeeded"  # type: ignore[union-attr]


def test_a_submitted_binary_input_reaches_the_function(client: wafer.Client) -> None:
    data = bytes(range(256))
    assert client.submit("echo", data).wait().content == data


def test_the_same_idempotency_key_gives_the_same_job(client: wafer.Client) -> None:
    a = client.submit("echo", "once", idempotency_key="order-1")
    b = client.submit("echo", "once", idempotency_key="order-1")
    assert a.id == b.id
    c = client.submit("echo", "once")
    assert c.id != a.id
    with pytest.raises(wafer.ValidationError) as e:
        client.submit("echo", "another body", idempotency_key="order-1")
    assert e.value.status == 422


def test_cancel_stops_a_running_job_and_its_result_says_so(client: wafer.Client) -> None:
    job = client.submit("nap", "20000")
    deadline = time.monotonic() + 30
    while job.status() == "queued" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert job.last is not None and job.last.status == "running", "the job never started"
    info = job.cancel()
    assert info.status == "cancelled"
    with pytest.raises(wafer.JobCancelled) as e:
        job.result()
    assert isinstance(e.value, wafer.Conflict) and e.value.status == 409
    with pytest.raises(wafer.Conflict):
        job.cancel()


def test_jobs_list_pages_newest_first(client: wafer.Client) -> None:
    ids = [client.submit("echo", f"page {i}").id for i in range(3)]
    page = client.jobs.list(function="echo", limit=2)
    assert len(page) == 2 and page.next_cursor
    assert [j.id for j in page] == ids[::-1][:2]
    rest = client.jobs.list(function="echo", limit=2, cursor=page.next_cursor)
    assert rest[0].id == ids[0]


def test_execute_blocks_and_decodes_and_execute_async_returns_the_job(client: wafer.Client) -> None:
    fn = client.function("stress")
    assert fn.execute({"force": 1000, "section": 10}) == {"stress": 100.0}
    job = fn.execute_async({"force": 1000, "section": 10})
    assert isinstance(job, wafer.Job)
    assert job.wait().json() == {"stress": 100.0}
    assert client.function("echo").execute("text back") == "text back"
    assert client.function("inspect").execute({"status": 200})["method"] == "POST"
    with pytest.raises(wafer.FunctionError) as e:
        client.function("inspect").execute({"status": 500})
    assert e.value.status == 500 and '"method":"POST"' in (e.value.detail or "")


def test_execute_follows_the_job_when_the_server_answers_with_one(make_server: type[Server]) -> None:
    s = make_server("[jobs]\ninline_budget_ms = 50\n").start()
    with s.client() as c:
        c.deploy("nap", function("nap"), timeout=10)
        assert c.invoke("nap", "300").text == "awake\n"  # a first run, so the server knows it is long
        seen: list[str] = []
        r = c.invoke("nap", "200")
        assert r.status == 202 and r.headers["location"].startswith("/v1/jobs/")
        assert c.function("nap").execute(300, progress=lambda info: seen.append(info.status)) == "awake\n"
        assert seen[-1] == "succeeded"


def test_execute_returns_a_function_s_own_202_and_follows_only_wafer_s(client: wafer.Client) -> None:
    # A function that answers 202 itself, with what a job answer has (a Location under
    # /v1/jobs/ and a body with that id): its answer, not a job to follow.
    own = {"id": "01JOBOFTHEFUNCTION000000000", "status": "queued"}
    followed: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/fn/"):
            return httpx.Response(202, headers={"location": f"/v1/jobs/{own['id']}", "x-wafer-version": "3"}, json=own)
        followed.append(request.url.path)
        return httpx.Response(404)

    with wafer.Client("http://wafer.test", "k", transport=httpx.MockTransport(server)) as c:
        assert c.function("accepts").execute({"x": 1}) == own
    assert followed == []
    # The same on a real server: inspect answering 202 is returned as it is.
    assert client.function("inspect").execute({"status": 202})["method"] == "POST"


def test_progress_is_told_while_uploading_and_waiting(client: wafer.Client) -> None:
    told: list[tuple[int, int]] = []
    size = function("stress").stat().st_size
    client.deploy("progress", function("stress"), progress=lambda sent, total: told.append((sent, total)))
    assert told[0] == (0, size) and told[-1] == (size, size)
    assert [s for s, _ in told] == sorted(s for s, _ in told)
    job = client.submit("nap", "1500")
    statuses: list[str] = []
    job.wait(progress=lambda info: statuses.append(info.status))
    assert len(statuses) >= 2 and statuses[-1] == "succeeded"
    assert any(s in ("queued", "running") for s in statuses[:-1])


def test_progress_true_draws_a_tqdm_bar(client: wafer.Client) -> None:
    pytest.importorskip("tqdm")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        client.deploy("bar", function("stress"), progress=True)
        client.submit("nap", "1200").wait(progress=True)
    out = err.getvalue()
    assert "upload stress.wasm" in out
    assert "job " in out and "running" in out


def test_wait_gives_up_at_its_timeout_and_the_job_goes_on(client: wafer.Client) -> None:
    job = client.submit("nap", "1500")
    with pytest.raises(wafer.WaitTimeout) as e:
        job.wait(timeout=0.2)
    assert isinstance(e.value, TimeoutError)
    with pytest.raises(wafer.JobNotFinished):
        job.result()
    assert job.wait(timeout=30).text == "awake\n"


def test_keys_create_a_tenant_key_that_sees_only_its_own(server: Server, client: wafer.Client) -> None:
    key = client.keys.create("team-b", ["deploy", "invoke", "read"])
    assert key.secret and key.tenant == "team-b" and key.secret not in repr(key)
    assert key.id in [k.id for k in client.keys.list()]
    with wafer.Client(server.url, key.secret) as b:
        assert b.functions.list() == []
        with pytest.raises(wafer.NotFound):
            b.invoke("echo", b"not yours")
        b.deploy("mine", function("echo"))
        assert b.invoke("mine", b"b's").text == "b's"
    client.keys.revoke(key.id)
    with wafer.Client(server.url, key.secret) as b, pytest.raises(wafer.Unauthorized):
        b.functions.list()


def test_url_and_key_come_from_the_environment(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAFER_URL", server.url)
    monkeypatch.setenv("WAFER_API_KEY", server.admin_key)
    with wafer.Client() as c:
        assert c.url == server.url
        assert "echo" in [f.name for f in c.functions.list()]


def test_upload_alone_and_the_function_handle(client: wafer.Client) -> None:
    m = client.upload(function("echo"))
    assert m.digest.startswith("sha256:") and m.size == function("echo").stat().st_size and m.abi == "command"
    again = client.upload(function("echo").read_bytes())
    assert again.digest == m.digest
    fn = client.function("echo")
    assert fn.invoke(b"via handle").text == "via handle"
    assert fn.info().name == "echo" and repr(fn) == "Function('echo')"
