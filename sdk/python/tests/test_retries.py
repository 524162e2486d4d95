"""Retries against real servers: overloaded ones, and one that is not up yet."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

import wafer
from wafer._core import IDEMPOTENT, REFUSALS, Call
from conftest import Server, function


def test_an_overloaded_server_is_retried_after_its_retry_after(make_server: type[Server]) -> None:
    s = make_server("max_inflight = 1\n").start()
    with s.client() as c:
        c.deploy("nap", function("nap"), timeout=10)
        with s.holding(1500):
            t = time.monotonic()
            # GET is idempotent: 503 overloaded, Retry-After: 1, then again until the slot frees.
            r = c.invoke("nap", method="GET", data="1")
            waited = time.monotonic() - t
        assert r.text == "awake\n"
        assert waited >= 0.9, f"retried after {waited:.2f} s, before the Retry-After of 1 s"
        # Without retries the same call fails at once.
        with s.holding(1500), s.client(retries=0) as once, pytest.raises(wafer.ServiceUnavailable):
            once.invoke("nap", data="1", method="GET")


def test_a_tenant_at_its_limit_is_retried_even_for_a_post(make_server: type[Server]) -> None:
    s = make_server("max_inflight = 4\nmax_inflight_per_tenant = 1\n").start()
    with s.client() as c:
        c.deploy("nap", function("nap"), timeout=10)
        with s.holding(1200):
            # A POST is not idempotent, but a 429 concurrency-limit means it never ran.
            assert c.invoke("nap", "1").text == "awake\n"


def test_retries_give_up_after_their_number(make_server: type[Server]) -> None:
    s = make_server("max_inflight = 1\n").start()
    with s.client(retries=1, max_backoff=0.2) as c:
        c.deploy("nap", function("nap"), timeout=10)
        with s.holding(2500):
            t = time.monotonic()
            with pytest.raises(wafer.ServiceUnavailable):
                c.invoke("nap", "1", method="GET")
            # One retry, its wait cut to max_backoff.
            assert time.monotonic() - t < 2.0


def test_a_server_that_comes_up_late_is_reached_and_submit_is_not_doubled(make_server: type[Server]) -> None:
    first = make_server().start()
    with first.client() as c:
        c.deploy("echo", function("echo"))
        job = c.submit("echo", "before", idempotency_key="late-1")
    first.stop()
    # The same data directory on the same port, started while the client is retrying.
    late = make_server(port=first.port)
    late.data_dir = first.data_dir
    late.config_path = first.config_path
    starter = threading.Timer(0.6, late.start)
    starter.start()
    try:
        with wafer.Client(first.url, first.admin_key, retries=8, backoff=0.1, max_backoff=0.5) as c:
            again = c.submit("echo", "before", idempotency_key="late-1")
            assert again.id == job.id
            assert again.wait().text == "before"
            assert len(c.jobs.list(function="echo")) == 1
    finally:
        starter.join()


def test_connection_errors_are_not_retried_for_calls_that_may_have_run() -> None:
    policy = wafer.RetryPolicy(retries=3)
    post = Call("POST", "/fn/x", retry=REFUSALS)
    get = Call("GET", "/v1/functions", retry=IDEMPOTENT)
    read_error = httpx.ReadError("reset")
    connect_error = httpx.ConnectError("refused")
    assert policy.after_error(post, 0, read_error) is None
    assert policy.after_error(post, 0, connect_error) is not None
    assert policy.after_error(get, 0, read_error) is not None
    assert policy.after_error(get, 3, read_error) is None


class LosingProxy:
    """A TCP proxy in front of a server that, for the first `lose` connections, delivers the
    request and then closes the client's connection without relaying the answer: a response
    lost on the way back."""

    def __init__(self, upstream_port: int, lose: int) -> None:
        self.upstream_port = upstream_port
        self.lose = lose
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.delivered = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _message(sock: socket.socket) -> bytes:
        """One whole HTTP/1.1 message with a Content-Length (head and body may come in
        several reads); b"" when the peer closed before one began."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body

    def _serve(self, conn: socket.socket) -> None:
        up = socket.create_connection(("127.0.0.1", self.upstream_port))
        losing = self.lose > 0
        if losing:
            self.lose -= 1
        conn.settimeout(5)
        up.settimeout(5)
        try:
            while True:
                request = self._message(conn)
                if not request:
                    break
                up.sendall(request)
                answer = self._message(up)  # the server has handled it
                self.delivered += 1
                if losing:
                    break
                conn.sendall(answer)
        except OSError:
            pass
        finally:
            conn.close()
            up.close()

    def close(self) -> None:
        self.listener.close()


def test_a_submit_whose_answer_is_lost_is_retried_without_a_second_job(make_server: type[Server]) -> None:
    s = make_server().start()
    with s.client() as c:
        c.deploy("echo", function("echo"))
    proxy = LosingProxy(s.port, lose=1)
    try:
        with wafer.Client(proxy.url, s.admin_key, retries=3, backoff=0.05) as c:
            job = c.submit("echo", "exactly once")
        assert proxy.delivered == 2, "the first answer was not lost, or no retry was made"
    finally:
        proxy.close()
    with s.client() as c:
        jobs = c.jobs.list(function="echo")
        assert [j.id for j in jobs] == [job.id]
        assert c.job(job.id).wait().text == "exactly once"
