"""Every error type, each from a real server answer (or a refused connection), carrying the
problem's fields."""

from __future__ import annotations

import pytest

import wafer
from conftest import Server, free_port, function


def test_not_found_carries_the_problem_fields(client: wafer.Client) -> None:
    with pytest.raises(wafer.NotFound) as e:
        client.invoke("no-such-function")
    err = e.value
    assert isinstance(err, wafer.WaferError)
    assert (err.status, err.slug, err.type) == (404, "function-not-found", "https://wafer.dev/problems/function-not-found")
    assert err.title == "Function not found" and "no-such-function" in (err.detail or "")
    assert err.instance  # the request id
    with pytest.raises(wafer.NotFound):
        client.job("0" * 26).status()
    with pytest.raises(wafer.NotFound):
        client.invoke("echo@99")


def test_unauthorized_and_forbidden(server: Server, client: wafer.Client) -> None:
    with wafer.Client(server.url, "wfr_not-a-key") as bad, pytest.raises(wafer.Unauthorized) as e:
        bad.functions.list()
    assert e.value.status == 401 and e.value.slug == "unauthorized"
    reader = client.keys.create("readers", ["read"])
    with wafer.Client(server.url, reader.secret) as r, pytest.raises(wafer.Forbidden) as e2:
        r.deploy("nope", function("echo"))
    assert e2.value.status == 403 and e2.value.slug == "forbidden"


def test_validation_errors_for_bad_modules_names_and_bodies(client: wafer.Client) -> None:
    with pytest.raises(wafer.ValidationError) as e:
        client.deploy("junk", b"this is not wasm")
    assert (e.value.status, e.value.slug) == (422, "not-wasm")
    with pytest.raises(wafer.ValidationError) as e:
        client.deploy("Bad Name!", function("echo"))
    assert (e.value.status, e.value.slug) == (400, "invalid-name")
    with pytest.raises(wafer.ValidationError) as e:
        client.deploy("limits", function("echo"), memory_mb=1 << 20)
    assert e.value.status in (400, 422)


def test_payload_too_large(make_server: type[Server]) -> None:
    s = make_server("max_module_bytes = 1000\nmax_request_bytes = 1000\n").start()
    with s.client() as c:
        with pytest.raises(wafer.PayloadTooLarge) as e:
            c.deploy("big", function("echo"))
        assert e.value.status == 413 and e.value.slug == "module-too-large"
        with pytest.raises(wafer.PayloadTooLarge):
            c.submit("anything", "x" * 5000)


def test_function_trapped_and_timeout(client: wafer.Client) -> None:
    with pytest.raises(wafer.FunctionTrapped) as e:
        client.invoke("fail")
    assert (e.value.status, e.value.slug, e.value.exit_code) == (502, "nonzero-exit", 3)
    assert "something went wrong" in (e.value.stderr or "")
    # A minute to run, so that only the fuel can end it however slow the processor.
    client.deploy("starved", function("spin"), fuel=1_000_000, timeout=60)
    with pytest.raises(wafer.FunctionTrapped) as e:
        client.invoke("starved")
    assert e.value.slug == "fuel-exhausted"
    with pytest.raises(wafer.FunctionTimeout) as t:
        client.invoke("spin")
    assert (t.value.status, t.value.slug, t.value.extra["limit"]) == (504, "timeout", 1000)
    # A job that failed raises its problem from wait and result.
    job = client.submit("fail")
    with pytest.raises(wafer.FunctionTrapped) as e:
        job.wait()
    assert e.value.slug == "nonzero-exit"


def test_rate_limited_and_service_unavailable_carry_retry_after(make_server: type[Server]) -> None:
    s = make_server("max_inflight = 4\nmax_inflight_per_tenant = 1\n").start()
    with s.client(retries=0) as c:
        c.deploy("nap", function("nap"), timeout=10)
        with s.holding(1500), pytest.raises(wafer.RateLimited) as e:
            c.invoke("nap", "1")
        assert (e.value.status, e.value.slug, e.value.retry_after) == (429, "concurrency-limit", 1.0)
    g = make_server("max_inflight = 1\n").start()
    with g.client(retries=0) as c:
        c.deploy("nap", function("nap"), timeout=10)
        with g.holding(1500), pytest.raises(wafer.ServiceUnavailable) as u:
            c.invoke("nap", "1")
        assert (u.value.status, u.value.slug, u.value.retry_after) == (503, "overloaded", 1.0)


def test_connection_failed_when_nothing_listens() -> None:
    with wafer.Client(f"http://127.0.0.1:{free_port()}", "k", retries=1, backoff=0.01) as c:
        with pytest.raises(wafer.ConnectionFailed) as e:
            c.functions.list()
    assert isinstance(e.value, wafer.WaferError) and e.value.status is None


def test_every_error_type_is_a_wafer_error() -> None:
    for name in wafer.__all__:
        obj = getattr(wafer, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, wafer.WaferError), name


def test_problems_map_by_slug_then_status_and_keep_every_member() -> None:
    from wafer.errors import error_from_problem

    cases = {
        (400, "invalid-name"): wafer.ValidationError,
        (408, "body-timeout"): wafer.RequestTimeout,
        (409, "job-not-finished"): wafer.JobNotFinished,
        (409, "job-cancelled"): wafer.JobCancelled,
        (409, "other-conflict"): wafer.Conflict,
        (500, "internal"): wafer.ServerError,
        (507, "unknown"): wafer.ServerError,
        (418, "teapot"): wafer.WaferError,
    }
    for (status, slug), cls in cases.items():
        e = error_from_problem(status, {"type": f"https://wafer.dev/problems/{slug}", "title": "T", "status": status, "limit": 7})
        assert type(e) is cls, (status, slug)
        assert (e.status, e.slug, e.title, e.extra) == (status, slug, "T", {"limit": 7})
    # Not a problem document at all: still typed by status, with the header's Retry-After.
    e = error_from_problem(503, None, retry_after=2.0)
    assert isinstance(e, wafer.ServiceUnavailable) and e.retry_after == 2.0 and e.title == "HTTP 503"
