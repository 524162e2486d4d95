"""wafer.local: the example and hostile functions in-process, with the server's limits and
errors."""

from __future__ import annotations

import time

import pytest

import wafer
from conftest import function

local = pytest.importorskip("wafer.local")
wasmtime = pytest.importorskip("wasmtime")

# Each limit test gives the other limits room to spare, so that only the limit it names can
# end the run, however fast or slow the processor: fuel enough for days, a timeout of a minute.
NO_FUEL_LIMIT = 10**15
NO_TIMEOUT = 60.0


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


def test_a_command_s_environment_is_exactly_the_configured_one() -> None:
    r = local.run(function("escape"), env={"GRANTED": "yes"})
    assert r.json()["env"] == {"GRANTED": "yes"}
    r = local.run(function("escape"), env={"GRANTED": "yes"}, request_env=True, method="get", path="/p?q=1")
    assert r.json()["env"] == {"GRANTED": "yes", "WAFER_METHOD": "GET", "WAFER_PATH": "/p?q=1"}


def test_a_panic_s_message_is_kept_with_its_trap() -> None:
    with pytest.raises(wafer.FunctionTrapped) as e:
        local.run(function("fail"), b"panic")
    assert e.value.slug == "unreachable"
    assert "a deliberate panic" in (e.value.stderr or "")


@pytest.mark.parametrize("name", ["spin", "spin-p2"])
def test_an_endless_loop_ends_at_its_timeout(name: str) -> None:
    t = time.monotonic()
    with pytest.raises(wafer.FunctionTimeout) as e:
        local.run(function(name), timeout=0.3, fuel=NO_FUEL_LIMIT)
    assert (e.value.status, e.value.slug, e.value.extra["limit"]) == (504, "timeout", 300)
    assert time.monotonic() - t < 5


@pytest.mark.parametrize("name", ["spin", "spin-p2"])
def test_an_endless_loop_runs_out_of_fuel(name: str) -> None:
    with pytest.raises(wafer.FunctionTrapped) as e:
        local.run(function(name), fuel=5_000_000, timeout=NO_TIMEOUT)
    assert e.value.slug == "fuel-exhausted"


@pytest.mark.parametrize("name", ["nap", "nap-p2"])
def test_a_sleep_in_a_host_call_still_ends_at_the_deadline(name: str) -> None:
    t = time.monotonic()
    with pytest.raises(wafer.FunctionTimeout):
        local.run(function(name), "20000", timeout=0.3, fuel=NO_FUEL_LIMIT)
    assert time.monotonic() - t < 5, "the caller waited for the whole sleep"


@pytest.mark.parametrize("name", ["hog", "hog-p2"])
def test_a_memory_hog_hits_the_memory_limit(name: str) -> None:
    with pytest.raises(wafer.FunctionTrapped) as e:
        local.run(function(name), memory_mb=16, timeout=NO_TIMEOUT, fuel=NO_FUEL_LIMIT)
    assert (e.value.slug, e.value.extra["limit"]) == ("memory-limit", 16 << 20)


# A command that grows its table (of at most `table` elements) to its maximum, then its
# memories a page at a time, in turn, `rounds` times; a refused growth is a trap.
GROWER = """
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory $a (export "memory") 1)
  {second}
  (table $t 0 {table} funcref)
  (func (export "_start")
    (local $i i32)
    (if (i32.eq (table.grow $t (ref.null func) (i32.const {table})) (i32.const -1)) (then unreachable))
    (loop $more
      (if (i32.eq (memory.grow $a (i32.const 1)) (i32.const -1)) (then unreachable))
      {grow_second}
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $i) (i32.const {rounds}))))))
"""


def grower(*, two: bool, table: int, rounds: int) -> bytes:
    return bytes(
        wasmtime.wat2wasm(
            GROWER.format(
                second="(memory $b 1)" if two else "",
                grow_second="(if (i32.eq (memory.grow $b (i32.const 1)) (i32.const -1)) (then unreachable))" if two else "",
                table=table,
                rounds=rounds,
            )
        )
    )


def test_memories_share_one_budget() -> None:
    # Two memories of 25 pages each: 3.1 MiB together, within 2 MiB each alone.
    with pytest.raises(wafer.FunctionTrapped) as e:
        local.run(grower(two=True, table=0, rounds=24), memory_mb=2, timeout=NO_TIMEOUT, fuel=NO_FUEL_LIMIT)
    assert (e.value.slug, e.value.extra["limit"]) == ("memory-limit", 2 << 20)
    # 15 pages each fit.
    assert local.run(grower(two=True, table=0, rounds=14), memory_mb=2).status == 200


def test_tables_count_against_the_memory_budget() -> None:
    # 100,000 table elements count as 800,000 bytes, like on the server: 30 pages of
    # memory no longer fit in 2 MiB beside them, though they would alone.
    assert local.run(grower(two=False, table=0, rounds=29), memory_mb=2).status == 200
    with pytest.raises(wafer.FunctionTrapped) as e:
        local.run(grower(two=False, table=100_000, rounds=29), memory_mb=2, timeout=NO_TIMEOUT, fuel=NO_FUEL_LIMIT)
    assert (e.value.slug, e.value.extra["limit"]) == ("memory-limit", 2 << 20)
    # What does not fit even as it starts is refused before it runs, as on the server.
    with pytest.raises(wafer.FunctionTrapped) as e:
        local.run(bytes(wasmtime.wat2wasm("(module (memory 17) (func (export \"_start\")))")), memory_mb=1)
    assert e.value.slug == "memory-limit"


def test_deep_recursion_overflows_the_stack() -> None:
    with pytest.raises(wafer.FunctionTrapped) as e:
        local.run(function("deep"), timeout=NO_TIMEOUT, fuel=NO_FUEL_LIMIT)
    assert (e.value.slug, e.value.title) == ("stack-overflow", "Stack overflow")


def test_an_output_flood_hits_the_output_limit() -> None:
    with pytest.raises(wafer.FunctionTrapped) as e:
        local.run(function("flood"), max_stdout_bytes=1 << 20, timeout=NO_TIMEOUT, fuel=NO_FUEL_LIMIT)
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
