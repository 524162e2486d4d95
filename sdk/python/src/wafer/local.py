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
from typing import TYPE_CHECKING, Any, Mapping

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

    def compiled(self, wasm: bytes) -> tuple[str, Any]:
        """``("module" | "component", compiled)``, compiled once per digest."""
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
                return kind, self._compiled[digest]
        wt = self.wasmtime
        try:
            code = wt.Module(self.engine, wasm) if kind == "module" else wt.component.Component(self.engine, wasm)
        except wt.WasmtimeError as e:
            raise _problem(ValidationError, 422, "invalid-module", "Invalid module", str(e).splitlines()[0]) from None
        with self._lock:
            self._compiled[digest] = code
            while len(self._compiled) > COMPILED_KEPT:
                self._compiled.popitem(last=False)
        return kind, code


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
) -> LocalResult:
    """Runs the WASI command at ``path_or_bytes`` on ``input`` (bytes, text, or a value sent
    as JSON) within the limits, and returns its answer (status 200, stdout as the body).

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
    kind, code = rt.compiled(wasm)
    run_env = {"WAFER_METHOD": method.upper(), "WAFER_PATH": path, **(env or {})}
    job = _Run(rt, kind, code, name, _input_bytes(input), run_env, limits)
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

    def __init__(self, rt: _Runtime, kind: str, code: Any, name: str, stdin: bytes, env: Mapping[str, str], limits: Limits) -> None:
        self.rt, self.kind, self.code, self.name = rt, kind, code, name
        self.stdin, self.env, self.limits = stdin, env, limits
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
            store.set_limits(memory_size=self.limits.memory_mb << 20)
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

    def _output_limit(self) -> WaferError:
        cap = self.limits.max_stdout_bytes
        return _problem(FunctionTrapped, 502, "output-limit", "Output limit exceeded", f"the function wrote more than {cap} bytes to stdout", limit=cap)

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
            return _problem(FunctionTimeout, 504, "timeout", "Function timed out", "deadline", limit=round(self.limits.timeout_s * 1000))
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
            )
        cause = _cause(message) or slug
        extra: dict[str, Any] = {"limit": self.limits.fuel} if slug == "fuel-exhausted" else {}
        return _problem(FunctionTrapped, 502, slug, _TRAP_TITLES[slug], f"the function trapped: {cause}", **extra)

    def _memory_refused(self, store: Any, memory: Any) -> bool:
        """Whether the trap followed a memory growth that the limit refused: the guest said
        an allocation failed that would not fit, or its memory is within a page of the limit."""
        limit = self.limits.memory_mb << 20
        size = 0
        if memory is not None:
            try:
                size = memory.data_len(store)
            except Exception:  # pragma: no cover
                size = 0
        if size and size + 65536 > limit:
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
