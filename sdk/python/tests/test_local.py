"""wafer.local: the example and hostile functions in-process, with the server's limits and
errors."""

from __future__ import annotations

import time

import pytest

import wafer
from conftest import function

local = pytest.importorskip("wafer.local")
pytest.importorskip("wasmtime")


def test_examples_run_with_the_server_s_contract() -> None:
    r = local.run(function("stress"), {"force": 1000, "section": 10})
    assert (r.status, r.json()) == (200, {"stress": 100.0})
    assert local.run(function("echo"), b"\x00bytes\xff").content == b"\x00bytes\xff"
    assert local.run(function("echo-p2"), "a preview-2 command").text == "a preview-2 command"
    assert local.run(function("nap"), "10").text == "awake\n"
    assert local.run(function("stress"), {"force": 1, "section": 4}).fuel_used > 0


def test_a_failing_command_gives_nonzero_exit_with_its_stderr() -> None:
    with pytest.raises(wafer.FunctionTrapped) as e:
        local.run(function("fail"))
    assert (e.value.status, e.value.slug, e.value.exit_code) == (502, "nonzero-exit", 3)
    assert "something went wrong" in (e.value.stderr or "")


@pytest.mark.parametrize("name", ["spin", "spin-p2"])
def test_an_endless_loop_ends_at_its_timeout(name: str) -> None:
    t = time.monotonic()
    with pytest.raises(wafer.FunctionTimeout) as e:
        local.run(function(name), timeout=0.3, fuel=10**15)
    assert (e.value.status, e.value.slug, e.value.extra["limit"]) == (504, "timeout", 300)
    assert time.monotonic() - t < 5


@pytest.mark.parametrize("name", ["spin", "spin-p2"])
def test_an_endless_loop_runs_out_of_fuel(name: str) -> None:
    with pytest.raises(wafer.FunctionTrapped) as e:
        local.run(function(name), fuel=5_000_000, timeout=30)
    assert e.value.slug == "fuel-exhausted"


@pytest.mark.parametrize("name", ["nap", "nap-p2"])
def test_a_sleep_in_a_host_call_still_ends_at_the_deadline(name: str) -> None:
    t = time.monotonic()
    with pytest.raises(wafer.FunctionTimeout):
        local.run(function(name), "20000", timeout=0.3)
    assert time.monotonic() - t < 5, "the caller waited for the whole sleep"


@pytest.mark.parametrize("name", ["hog", "hog-p2"])
def test_a_memory_hog_hits_the_memory_limit(name: str) -> None:
    with pytest.raises(wafer.FunctionTrapped) as e:
        local.run(function(name), memory_mb=16)
    assert (e.value.slug, e.value.extra["limit"]) == ("memory-limit", 16 << 20)


def test_deep_recursion_overflows_the_stack() -> None:
    with pytest.raises(wafer.FunctionTrapped) as e:
        local.run(function("deep"))
    assert (e.value.slug, e.value.title) == ("stack-overflow", "Stack overflow")


def test_an_output_flood_hits_the_output_limit() -> None:
    with pytest.raises(wafer.FunctionTrapped) as e:
        local.run(function("flood"), max_stdout_bytes=1 << 20)
    assert (e.value.slug, e.value.extra["limit"]) == ("output-limit", 1 << 20)


def test_what_cannot_run_is_refused_clearly() -> None:
    with pytest.raises(wafer.ValidationError) as e:
        local.run(b"not wasm at all")
    assert (e.value.status, e.value.slug) == (422, "not-wasm")
    with pytest.raises(wafer.ValidationError) as e:
        local.run(b"\0asm\x01\0\0\0\x05garbage")
    assert e.value.slug == "invalid-module"
    with pytest.raises(wafer.ValidationError) as e:
        local.run(function("hello"))
    assert e.value.slug == "unsupported-abi" and "HTTP components" in (e.value.detail or "")
    with pytest.raises(wafer.ValidationError):
        local.run(function("echo"), timeout=0)


def test_local_and_server_agree(client: wafer.Client) -> None:
    for name, data in [("stress", {"force": 50, "section": 5}), ("echo", "same")]:
        assert local.run(function(name), data).content == client.invoke(name, json=data if isinstance(data, dict) else None, data=data if isinstance(data, str) else None).content
    with pytest.raises(wafer.FunctionTrapped) as here:
        local.run(function("fail"))
    with pytest.raises(wafer.FunctionTrapped) as there:
        client.invoke("fail")
    assert (here.value.slug, here.value.status, here.value.title, here.value.exit_code) == (
        there.value.slug,
        there.value.status,
        there.value.title,
        there.value.exit_code,
    )
