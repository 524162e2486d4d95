"""Run a function in this process, without a server, through wasmtime's Python package.

:func:`run` gives a WASI command (a preview-1 module or a preview-2 command component) the
contract the server gives it: the input on stdin, the answer from stdout, stderr kept as the
log, a non-zero exit a 502 ``nonzero-exit``; and the same limits (fuel, wall-clock time,
linear memory, wasm stack, stdout size) ending in the same exceptions with the same slugs as
the server (``fuel-exhausted``, ``timeout``, ``memory-limit``, ``stack-overflow``,
``output-limit``...). So a function can be tested with pytest before it is deployed.

HTTP components (``wasi:http/incoming-handler``) are refused with ``unsupported-abi``: the
package links ``wasi:http`` for the requests a guest makes, but gives Python no way to make
the host-owned ``incoming-request`` and ``response-outparam`` resources that ``handle`` takes,
so there is nothing to call it with. Deploy them, or test them with ``wasmtime serve -Scli``.

Needs ``pip install 'wafer-sdk[local]'`` (the ``wasmtime`` package).
"""

from __future__ import annotations

import hashlib
import json as _json
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from .errors import PROBLEM_BASE, FunctionTimeout, FunctionTrapped, ValidationError, WaferError
from .models import Response

if TYPE_CHECKING:  # pragma: no cover
    import wasmtime

__all__ = ["run", "LocalResult", "Limits"]

#: The server's defaults (``deploy/config/wafer.toml``).
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_FUEL = 10_000_000_000
DEFAULT_MEMORY_MB = 64
DEFAULT_MAX_STDOUT = 8 * 1024 * 1024
MAX_WASM_STACK = 512 * 1024
#: How much of stderr is kept (its tail), like the server's log.
KEPT_STDERR = 64 * 1024
#: The epoch advances this often; deadlines are counted in these ticks.
TICK_S = 0.005
#: How many compiled modules are kept, by digest.
COMPILED_KEPT = 16
#: What one table element counts for against the memory budget, as on the server.
TABLE_ELEMENT_BYTES = 8
#: Elements any one table may hold, as on the server.
MAX_TABLE_ELEMENTS = 100_000
#: How many instances, tables and memories one run may make, as on the server.
MAX_INSTANCES, MAX_TABLES, MAX_MEMORIES = 64, 64, 16
WASM_PAGE = 65536

_MAGIC = b"\0asm"
_MODULE_LAYER = b"\x01\x00\x00\x00"
_COMPONENT_LAYER = b"\x0d\x00\x01\x00"


@dataclass(frozen=True)
class Limits:
    """The limits of one local run; the server's defaults unless given."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    fuel: int = DEFAULT_FUEL
    memory_mb: int = DEFAULT_MEMORY_MB
    max_stdout_bytes: int = DEFAULT_MAX_STDOUT


@dataclass(frozen=True)
class LocalResult(Response):
    """A local run's answer, with what the server keeps in its log."""

    stderr: str = ""
    fuel_used: int = 0
    duration_ms: float = 0.0


def _problem(cls: type[WaferError], status: int, slug: str, title: str, detail: str, **extra: Any) -> WaferError:
    return cls(title, status=status, type=PROBLEM_BASE + slug, detail=detail, extra=extra)


# ---- the memory budget ---------------------------------------------------------------------
#
# The server's limiter counts every memory and table of an instance (a table element as 8
# bytes) against one budget as they grow. wasmtime's Python package has no limiter callback,
# only a bound for each memory and each table alone, so the budget is shared out before the
# run: the binary is read for the memories and tables it defines, and the bounds are the
# largest ones with which all of them, grown to their bounds, still fit in the budget
# together. With one memory and fixed-size tables (what compilers make of a command) that is
# the server's limit exactly; several growable memories get equal shares.


@dataclass(frozen=True)
class _Layout:
    """The memories and tables an instance defines, read from its binary: each memory's
    initial and largest size in bytes, each table's in elements (``None``: no maximum)."""

    memories: tuple[tuple[int, int | None], ...] = ()
    tables: tuple[tuple[int, int | None], ...] = ()
    #: False when the binary holds something the reader does not know (then each memory
    #: and table is only bounded alone, by the whole budget).
    known: bool = True


class _Unreadable(Exception):
    """The reader met something it does not know."""


class _Reader:
    """Just enough of the binary format to find the memories and tables a module or
    component defines; the binary has already been validated by wasmtime."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def byte(self) -> int:
        if self.at >= len(self.data):
            raise _Unreadable("truncated")
        self.at += 1
        return self.data[self.at - 1]

    def uleb(self) -> int:
        value = shift = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value

    def skip(self, n: int) -> None:
        self.at += n

    def reftype(self) -> None:
        if self.byte() in (0x63, 0x64):  # (ref null? heaptype): a signed heap type follows
            self.uleb()

    def limits(self, page: bool) -> tuple[int, int | None]:
        """A memory's (``page``: in bytes) or a table's limits."""
        flags = self.byte()
        low = self.uleb()
        high = self.uleb() if flags & 1 else None
        size = 1 << self.uleb() if page and flags & 8 else WASM_PAGE  # custom page size
        unit = size if page else 1
        return low * unit, None if high is None else high * unit

    def const_expr(self) -> None:
        """Skips a constant expression (a table's initial value)."""
        while True:
            op = self.byte()
            if op == 0x0B:  # end
                return
            if op in (0x41, 0x42, 0x23, 0xD2, 0xD0):  # i32/i64.const, global.get, ref.func, ref.null
                self.uleb()
            elif op == 0x43:
                self.skip(4)
            elif op == 0x44:
                self.skip(8)
            elif op not in (0x6A, 0x6B, 0x6C, 0x7C, 0x7D, 0x7E):  # integer add/sub/mul
                raise _Unreadable(f"opcode {op:#x} in a constant expression")


def _sections(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The ``(id, contents)`` of each section of a module or component."""
    r = _Reader(data)
    r.skip(8)
    while r.at < len(data):
        sid = r.byte()
        size = r.uleb()
        yield sid, data[r.at : r.at + size]
        r.skip(size)


def _module_parts(data: bytes, memories: list[tuple[int, int | None]], tables: list[tuple[int, int | None]]) -> None:
    """Adds the memories and tables a core module defines (imported ones are defined, and
    counted, where they come from)."""
    for sid, body in _sections(data):
        if sid not in (4, 5):
            continue
        r = _Reader(body)
        for _ in range(r.uleb()):
            if sid == 5:
                memories.append(r.limits(page=True))
                continue
            initialised = r.data[r.at] == 0x40  # 0x40 0x00 reftype limits expr
            if initialised:
                r.skip(2)
            r.reftype()
            tables.append(r.limits(page=False))
            if initialised:
                r.const_expr()


def _component_parts(data: bytes, memories: list[tuple[int, int | None]], tables: list[tuple[int, int | None]]) -> None:
    """Adds the memories and tables of a component's core modules, nested components
    included (each module counted once)."""
    for sid, body in _sections(data):
        if sid == 1:
            _module_parts(body, memories, tables)
        elif sid == 4:
            _component_parts(body, memories, tables)


def _layout(kind: str, wasm: bytes) -> _Layout:
    memories: list[tuple[int, int | None]] = []
    tables: list[tuple[int, int | None]] = []
    try:
        (_module_parts if kind == "module" else _component_parts)(wasm, memories, tables)
    except (_Unreadable, IndexError):
        return _Layout(known=False)
    return _Layout(tuple(memories), tuple(tables))


def _largest(low: int, high: int, fits: Callable[[int], bool]) -> int | None:
    """The largest ``n`` in ``[low, high]`` that ``fits`` (which holds up to some point and
    not beyond), or ``None`` when not even ``low`` does."""
    if low > high or not fits(low):
        return None
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


@dataclass(frozen=True)
class _Bounds:
    """What each memory (bytes) and each table (elements) of a run may grow to."""

    memory_bytes: int
    table_elements: int


def _bounds(layout: _Layout, budget: int) -> _Bounds:
    """The bounds with which every memory and table of the instance, each grown as far as
    it may, fit in ``budget`` together. Raises ``memory-limit`` when the instance does not
    fit even at its initial sizes, as the server does at instantiation."""
    if not layout.known:
        return _Bounds(budget, MAX_TABLE_ELEMENTS)
    memories, tables = layout.memories, layout.tables

    def grown(items: tuple[tuple[int, int | None], ...], bound: int) -> int:
        return sum(min(bound, high) if high is not None else bound for _, high in items)

    memory_initial = sum(low for low, _ in memories)
    table_initial = TABLE_ELEMENT_BYTES * sum(low for low, _ in tables)
    if memory_initial + table_initial > budget:
        raise _memory_limit(budget, f"its memories and tables take {memory_initial + table_initial} bytes as it starts")
    # Tables: up to the server's bound for one table, less when the memories would not fit.
    table_bound = _largest(
        max((low for low, _ in tables), default=0),
        MAX_TABLE_ELEMENTS,
        lambda n: memory_initial + TABLE_ELEMENT_BYTES * grown(tables, n) <= budget,
    )
    if table_bound is None:
        raise _memory_limit(budget, "wafer.local cannot share it out between the function's growable tables")
    left = budget - TABLE_ELEMENT_BYTES * grown(tables, table_bound)
    memory_bound = _largest(max((low for low, _ in memories), default=0), left, lambda n: grown(memories, n) <= left)
    if memory_bound is None:
        raise _memory_limit(budget, "wafer.local gives each of the function's growable memories an equal share of it, too small for its largest one")
    return _Bounds(memory_bound, table_bound)


def _memory_limit(budget: int, why: str) -> WaferError:
    return _problem(
        FunctionTrapped,
        502,
        "memory-limit",
        "Memory limit exceeded",
        f"the function does not fit in its {budget >> 20} MiB of memory: {why}",
        limit=budget,
    )


_TRAP_TITLES = {
    "fuel-exhausted": "Fuel exhausted",
    "unreachable": "Unreachable executed",
    "stack-overflow": "Stack overflow",
    "memory-out-of-bounds": "Out-of-bounds memory access",
    "arithmetic": "Arithmetic trap",
    "trap": "Function trapped",
}


class _Runtime:
    """One engine for every run, its epoch ticker, and compiled code by digest."""

    def __init__(self) -> None:
        import wasmtime
        import wasmtime.component

        self.wasmtime = wasmtime
        config = wasmtime.Config()
        config.consume_fuel = True
        config.epoch_interruption = True
        config.max_wasm_stack = MAX_WASM_STACK
        config.wasm_component_model = True
        self.engine = wasmtime.Engine(config)
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        ticker = threading.Thread(target=self._tick, name="wafer-local-epoch", daemon=True)
        ticker.start()

    def _tick(self) -> None:
        while True:
            time.sleep(TICK_S)
            self.engine.increment_epoch()

    def compiled(self, wasm: bytes) -> tuple[str, Any, _Layout]:
        """``("module" | "component", compiled, layout)``, compiled once per digest."""
        if wasm[:4] != _MAGIC or len(wasm) < 8:
            raise _problem(ValidationError, 422, "not-wasm", "Not WebAssembly", "the file does not start with the WebAssembly magic number")
        layer = wasm[4:8]
        if layer not in (_MODULE_LAYER, _COMPONENT_LAYER):
            raise _problem(
                ValidationError, 422, "unsupported-version", "Unsupported WebAssembly version", f"unknown version/layer {layer.hex()}"
            )
        kind = "module" if layer == _MODULE_LAYER else "component"
        digest = hashlib.sha256(wasm).hexdigest()
        with self._lock:
            if digest in self._compiled:
                self._compiled.move_to_end(digest)
                code, layout = self._compiled[digest]
                return kind, code, layout
        wt = self.wasmtime
        try:
            code = wt.Module(self.engine, wasm) if kind == "module" else wt.component.Component(self.engine, wasm)
        except wt.WasmtimeError as e:
            raise _problem(ValidationError, 422, "invalid-module", "Invalid module", str(e).splitlines()[0]) from None
        layout = _layout(kind, wasm)
        with self._lock:
            self._compiled[digest] = (code, layout)
            while len(self._compiled) > COMPILED_KEPT:
                self._compiled.popitem(last=False)
        return kind, code, layout


_runtime: _Runtime | None = None
_runtime_lock = threading.Lock()


def _get_runtime() -> _Runtime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            try:
                _runtime = _Runtime()
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ImportError("wafer.local needs the wasmtime package: pip install 'wafer-sdk[local]'") from e
        return _runtime


class _Capped:
    """A stdout that refuses writes past its cap (the guest sees an I/O error)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[bytes] = []
        self.size = 0
        self.over = False

    def write(self, data: bytes) -> int:
        if self.size + len(data) > self.cap:
            self.over = True
            return -5  # EIO
        self.parts.append(data)
        self.size += len(data)
        return len(data)


class _Tail:
    """Keeps the last ``KEPT_STDERR`` bytes written."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, data: bytes) -> int:
        self.buf += data
        if len(self.buf) > 2 * KEPT_STDERR:
            del self.buf[: len(self.buf) - KEPT_STDERR]
        return len(data)

    def text(self) -> str:
        return bytes(self.buf[-KEPT_STDERR:]).decode("utf-8", errors="replace")


def _input_bytes(input: Any) -> bytes:
    if input is None:
        return b""
    if isinstance(input, (bytes, bytearray, memoryview)):
        return bytes(input)
    if isinstance(input, str):
        return input.encode()
    return _json.dumps(input).encode()


_ALLOC_FAILED = re.compile(r"memory allocation of (\d+) bytes failed")


def run(
    path_or_bytes: str | os.PathLike[str] | bytes,
    input: Any = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    fuel: int = DEFAULT_FUEL,
    memory_mb: int = DEFAULT_MEMORY_MB,
    env: Mapping[str, str] | None = None,
    max_stdout_bytes: int = DEFAULT_MAX_STDOUT,
    method: str = "POST",
    path: str = "/",
    request_env: bool = False,
) -> LocalResult:
    """Runs the WASI command at ``path_or_bytes`` on ``input`` (bytes, text, or a value sent
    as JSON) within the limits, and returns its answer (status 200, stdout as the body).
    ``memory_mb`` bounds all the instance's memories and tables together, as on the server.
    The command's environment is exactly ``env``; with ``request_env`` (a version deployed
    with ``"request_env": true``) it also gets ``method`` and ``path`` in ``WAFER_METHOD``
    and ``WAFER_PATH``.

    Raises what the server would: :class:`wafer.FunctionTrapped` (``fuel-exhausted``,
    ``memory-limit``, ``stack-overflow``, ``output-limit``, ``nonzero-exit`` with
    ``exit_code`` and ``stderr``, ...), :class:`wafer.FunctionTimeout` at ``timeout``
    seconds, even in a host call such as a sleep, and :class:`wafer.ValidationError` for
    what cannot be run (``not-wasm``, ``invalid-module``, ``unsupported-abi``).
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        wasm, name = bytes(path_or_bytes), "function"
    else:
        wasm, name = Path(path_or_bytes).read_bytes(), Path(path_or_bytes).stem
    limits = Limits(float(timeout), int(fuel), int(memory_mb), int(max_stdout_bytes))
    if limits.timeout_s <= 0 or limits.fuel <= 0 or limits.memory_mb <= 0:
        raise _problem(ValidationError, 400, "invalid-limits", "Bad request", "timeout, fuel and memory_mb must be positive")
    rt = _get_runtime()
    kind, code, layout = rt.compiled(wasm)
    bounds = _bounds(layout, limits.memory_mb << 20)
    run_env = dict(env or {})
    if request_env:
        run_env.update({"WAFER_METHOD": method.upper(), "WAFER_PATH": path})
    job = _Run(rt, kind, code, name, _input_bytes(input), run_env, limits, bounds)
    thread = threading.Thread(target=job.run, name=f"wafer-local-{name}", daemon=True)
    started = time.monotonic()
    thread.start()
    # The epoch ends wasm code at the deadline; a guest blocked in a host call (a sleep) is
    # answered at the deadline too and left to end by itself: it traps as soon as it is back
    # in wasm, since its deadline has passed.
    thread.join(limits.timeout_s + 0.05)
    elapsed_ms = (time.monotonic() - started) * 1000
    if thread.is_alive() or job.timed_out:
        raise _problem(
            FunctionTimeout,
            504,
            "timeout",
            "Function timed out",
            f"the function did not finish within its timeout of {round(limits.timeout_s * 1000)} ms",
            limit=round(limits.timeout_s * 1000),
            **job.logged(),
        )
    if job.error is not None:
        raise job.error
    return LocalResult(
        status=200,
        headers={"content-type": "application/octet-stream"},
        content=b"".join(job.stdout.parts),
        stderr=job.stderr.text(),
        fuel_used=job.fuel_used,
        duration_ms=elapsed_ms,
    )


class _Run:
    """One run on its own thread; what it found is read after it ends."""

    def __init__(
        self, rt: _Runtime, kind: str, code: Any, name: str, stdin: bytes, env: Mapping[str, str], limits: Limits, bounds: _Bounds
    ) -> None:
        self.rt, self.kind, self.code, self.name = rt, kind, code, name
        self.stdin, self.env, self.limits, self.bounds = stdin, env, limits, bounds
        self.stdout = _Capped(limits.max_stdout_bytes)
        self.stderr = _Tail()
        self.error: WaferError | None = None
        self.timed_out = False
        self.fuel_used = 0

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # noqa: BLE001 - a failure of ours, not the guest's
            self.error = WaferError("Local run failed", status=500, type=PROBLEM_BASE + "internal", detail=repr(e))

    def _run(self) -> None:
        wt = self.rt.wasmtime
        with tempfile.TemporaryDirectory(prefix="wafer-local-") as tmp:
            stdin_path = os.path.join(tmp, "stdin")
            with open(stdin_path, "wb") as f:
                f.write(self.stdin)
            wasi = wt.WasiConfig()
            wasi.argv = [self.name]
            wasi.env = list(self.env.items())
            wasi.stdin_file = stdin_path
            wasi.stdout_custom = self.stdout.write
            wasi.stderr_custom = self.stderr.write
            store = wt.Store(self.rt.engine)
            # All memories and tables within the budget together (see _bounds).
            store.set_limits(
                memory_size=self.bounds.memory_bytes,
                table_elements=self.bounds.table_elements,
                instances=MAX_INSTANCES,
                tables=MAX_TABLES,
                memories=MAX_MEMORIES,
            )
            store.set_fuel(self.limits.fuel)
            store.set_epoch_deadline(max(1, round(self.limits.timeout_s / TICK_S)))
            store.set_wasi(wasi)
            memory = None
            try:
                if self.kind == "module":
                    linker = wt.Linker(self.rt.engine)
                    linker.define_wasi()
                    instance = linker.instantiate(store, self.code)
                    exports = instance.exports(store)
                    memory = exports.get("memory") if hasattr(exports, "get") else None
                    start = exports["_start"]
                    start(store)
                else:
                    self._run_component(store)
            except wt.ExitTrap as e:
                if e.code != 0:
                    self.error = self._exit(e.code)
            except wt.Trap as e:
                self.error = self._trap(e, store, memory)
            except wt.WasmtimeError as e:
                self.error = self._failure(str(e), store)
            except WaferError as e:
                self.error = e
            finally:
                try:
                    self.fuel_used = self.limits.fuel - store.get_fuel()
                except Exception:  # pragma: no cover - a store that cannot say
                    self.fuel_used = 0
            if self.error is None and self.stdout.over:
                self.error = self._output_limit()

    def _run_component(self, store: Any) -> None:
        wt = self.rt.wasmtime
        exports = self.code.type.exports(self.rt.engine)
        if any(n.startswith("wasi:http/incoming-handler@") for n in exports):
            raise _problem(
                ValidationError,
                422,
                "unsupported-abi",
                "Unsupported ABI",
                "HTTP components cannot run locally: wasmtime's Python package cannot make the "
                "incoming-request and response-outparam resources that wasi:http's handle takes; "
                "deploy the function to a server instead",
            )
        run_name = next((n for n in exports if n.startswith("wasi:cli/run@")), None)
        if run_name is None:
            raise _problem(ValidationError, 422, "unsupported-abi", "Unsupported ABI", "the component exports neither wasi:cli/run nor wasi:http/incoming-handler")
        linker = wt.component.Linker(self.rt.engine)
        linker.add_wasip2()
        instance = linker.instantiate(store, self.code)
        iface = instance.get_export_index(store, run_name)
        func_index = instance.get_export_index(store, "run", iface)
        func = instance.get_func(store, func_index)
        if func is None:
            raise _problem(ValidationError, 422, "unsupported-abi", "Unsupported ABI", f"{run_name} has no run function")
        result = func(store)
        # wasi:cli/run returns result<_, _>: an error is an exit code of 1.
        if getattr(result, "tag", None) == "err":
            raise self._exit(1)

    def _exit(self, code: int) -> WaferError:
        stderr = self.stderr.text()
        if self.stdout.over:
            return self._output_limit()
        tail = stderr[-300:].strip()
        detail = f"the function exited with code {code}" + (f": {tail}" if tail else "")
        return _problem(
            FunctionTrapped, 502, "nonzero-exit", "Function exited with an error", detail, exit_code=code, stderr=stderr[-2048:]
        )

    def logged(self) -> dict[str, Any]:
        """What the guest wrote to stderr before it failed (its tail), as the server adds it
        to a failure's problem: nothing when it wrote nothing."""
        text = self.stderr.text()
        return {"stderr": text[-2048:]} if text else {}

    def _output_limit(self) -> WaferError:
        cap = self.limits.max_stdout_bytes
        return _problem(
            FunctionTrapped,
            502,
            "output-limit",
            "Output limit exceeded",
            f"the function wrote more than {cap} bytes to stdout",
            limit=cap,
            **self.logged(),
        )

    def _trap(self, e: Any, store: Any, memory: Any) -> WaferError:
        wt = self.rt.wasmtime
        code = e.trap_code
        slug = {
            wt.TrapCode.INTERRUPT: "timeout",
            wt.TrapCode.OUT_OF_FUEL: "fuel-exhausted",
            wt.TrapCode.UNREACHABLE: "unreachable",
            wt.TrapCode.STACK_OVERFLOW: "stack-overflow",
            wt.TrapCode.MEMORY_OUT_OF_BOUNDS: "memory-out-of-bounds",
            wt.TrapCode.INTEGER_OVERFLOW: "arithmetic",
            wt.TrapCode.INTEGER_DIVISION_BY_ZERO: "arithmetic",
            wt.TrapCode.BAD_CONVERSION_TO_INTEGER: "arithmetic",
        }.get(code, "trap")
        return self._trapped(slug, str(e), store, memory)

    def _trapped(self, slug: str, message: str, store: Any, memory: Any) -> WaferError:
        """The problem for a trap of kind ``slug``: a limit, when one was hit first."""
        if slug == "timeout":
            self.timed_out = True
            return _problem(
                FunctionTimeout, 504, "timeout", "Function timed out", "deadline", limit=round(self.limits.timeout_s * 1000), **self.logged()
            )
        if self.stdout.over:
            return self._output_limit()
        if self._memory_refused(store, memory):
            return _problem(
                FunctionTrapped,
                502,
                "memory-limit",
                "Memory limit exceeded",
                f"the function asked for more than its {self.limits.memory_mb} MiB of memory",
                limit=self.limits.memory_mb << 20,
                **self.logged(),
            )
        cause = _cause(message) or slug
        extra: dict[str, Any] = {"limit": self.limits.fuel} if slug == "fuel-exhausted" else {}
        extra.update(self.logged())
        return _problem(FunctionTrapped, 502, slug, _TRAP_TITLES[slug], f"the function trapped: {cause}", **extra)

    def _memory_refused(self, store: Any, memory: Any) -> bool:
        """Whether the trap followed a memory growth that the limit refused: the guest said
        an allocation failed that would not fit, or its memory is within a page of its bound."""
        limit = self.bounds.memory_bytes
        size = 0
        if memory is not None:
            try:
                size = memory.data_len(store)
            except Exception:  # pragma: no cover
                size = 0
        if size and size + WASM_PAGE > limit:
            return True
        failed = _ALLOC_FAILED.search(self.stderr.text())
        if failed is None:
            return False
        # A component's memory is not visible from here: the guest's word is all there is.
        return memory is None or size + int(failed.group(1)) > limit

    def _failure(self, message: str, store: Any) -> WaferError | None:
        """A component's failure, which wasmtime's package reports as text only (``None``:
        it exited 0)."""
        exited = _EXIT_STATUS.search(message)
        if exited:
            code = int(exited.group(1))
            return self._exit(code) if code else None
        cause = _cause(message)
        if cause is not None:
            slug = next((s for text, s in _TRAP_MESSAGES if text in cause), "trap")
            return self._trapped(slug, message, store, None)
        first = message.splitlines()[0] if message else "the function failed"
        if "import" in message and ("unknown" in message or "incompatible" in message or "matching" in message):
            return _problem(ValidationError, 422, "unsupported-import", "Unsupported import", first)
        return _problem(FunctionTrapped, 502, "trap", "Function trapped", first)


#: wasmtime's words for each trap, as a component's error carries them.
_TRAP_MESSAGES = (
    ("interrupt", "timeout"),
    ("all fuel consumed", "fuel-exhausted"),
    ("call stack exhausted", "stack-overflow"),
    ("unreachable", "unreachable"),
    ("out of bounds memory access", "memory-out-of-bounds"),
    ("integer overflow", "arithmetic"),
    ("integer divide by zero", "arithmetic"),
    ("invalid conversion to integer", "arithmetic"),
)
_EXIT_STATUS = re.compile(r"[Ee]xited with i32 exit status (\d+)")


def _cause(message: str) -> str | None:
    """The ``wasm trap: ...`` line of a wasmtime error, when it has one."""
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("wasm trap: "):
            return line.removeprefix("wasm trap: ")
    return None
