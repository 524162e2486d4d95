"""Fixtures: real `wafer serve` processes (the built binary, a free port, a temporary data
directory) with the example and test functions deployed."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest

import wafer

REPO = Path(__file__).resolve().parents[3]
DIST = Path(os.environ.get("WAFER_FUNCTIONS", REPO / "functions" / "dist"))


def wafer_bin() -> Path:
    if os.environ.get("WAFER_BIN"):
        return Path(os.environ["WAFER_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return (target if target.is_absolute() else REPO / target) / "debug" / "wafer"


def function(name: str) -> Path:
    """A built test function, `functions/dist/<name>.wasm`."""
    path = DIST / f"{name}.wasm"
    if not path.exists():
        pytest.fail(f"{path} is missing: run functions/build.sh")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One `wafer serve` process."""

    def __init__(self, tmp: Path, config: str = "", port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = tmp / f"data-{self.port}"
        self.config_path = tmp / f"wafer-{self.port}.toml"
        self.config_path.write_text(config)
        self.log_path = tmp / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        binary = wafer_bin()
        if not binary.exists():
            pytest.fail(f"{binary} is missing: cargo build -p wafer (or set WAFER_BIN)")
        env = {k: v for k, v in os.environ.items() if not k.startswith("WAFER_")}
        env["RUST_LOG"] = "warn"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(binary), "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir), "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"wafer serve exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        else:
            pytest.fail("wafer serve did not become ready in 60 s")
        self.admin_key = (self.data_dir / "admin.key").read_text().strip()
        return self

    def client(self, **kw: object) -> wafer.Client:
        kw.setdefault("api_key", self.admin_key)
        return wafer.Client(self.url, **kw)  # type: ignore[arg-type]

    def in_flight(self, n: int) -> None:
        """Waits until the server reports `n` invocations in flight (10 s at most)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            m = httpx.get(f"{self.url}/metrics", headers={"authorization": f"Bearer {self.admin_key}"}).text
            if f"wafer_invocations_in_flight {n}\n" in m:
                return
            time.sleep(0.01)
        pytest.fail(f"never {n} invocations in flight")

    @contextmanager
    def holding(self, ms: int) -> Iterator[None]:
        """A call of `nap` (deployed already) sleeping `ms` holds one invocation slot of the
        admin's tenant for the block."""
        with self.client(retries=0) as c:
            holder = threading.Thread(target=c.invoke, args=("nap", str(ms)))
            holder.start()
            try:
                self.in_flight(1)
                yield
            finally:
                holder.join()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def deploy_examples(c: wafer.Client) -> None:
    c.deploy("hello", function("hello"), public=True)
    c.deploy("echo", function("echo"))
    c.deploy("stress", function("stress"), public=True)
    c.deploy("inspect", function("inspect"))
    c.deploy("nap", function("nap"), timeout=10)
    c.deploy("spin", function("spin"), timeout=1, fuel=10**12)
    c.deploy("fail", function("fail"))


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server on the embedded defaults with the example functions deployed."""
    s = Server(tmp_path_factory.mktemp("wafer")).start()
    with s.client() as c:
        deploy_examples(c)
    yield s
    s.stop()


@pytest.fixture()
def client(server: Server) -> Iterator[wafer.Client]:
    with server.client() as c:
        yield c


@pytest.fixture()
def make_server(tmp_path: Path) -> Iterator[type[Server]]:
    """Starts servers with a configuration of a test's own; stops them after the test."""
    started: list[Server] = []

    class Own(Server):
        def __init__(self, config: str = "", port: int | None = None) -> None:
            super().__init__(tmp_path, config, port)
            started.append(self)

    yield Own
    for s in started:
        s.stop()


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"
