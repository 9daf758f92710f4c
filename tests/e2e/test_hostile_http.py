"""Hostile HTTP against a real daemon, on both REST paths (the fast path and plain uvicorn):
request smuggling through Upgrade, huge heads, silent connections and a flood of them under
a low open-files limit, malformed requests, and a Host that is not the server's (DNS
rebinding). Issue 21's findings, as its snippets describe them.

The daemon runs with RLIMIT_NOFILE at 256 (soft and hard), server.max_connections 40 and
server.header_timeout_seconds 2, serving model m (y = 0.5 x + version) from a local folder.
"""

from __future__ import annotations

import resource
import select
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import orjson
import pytest

from tests.daemon_process import DaemonProcess, ResidentSampler, wait_until
from tests.serving.rest.test_fast_path import Reader

pytestmark = pytest.mark.e2e

OPEN_FILES = 256
MAX_CONNECTIONS = 40
HEADER_TIMEOUT = 2.0
PREDICT_BODY = b'{"instances": [[2.0]]}'


@dataclass
class Served:
    daemon: DaemonProcess
    port: int
    base: Path
    model_builder: object

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def refusals(self, reason: str) -> float:
        assert self.daemon.client is not None
        text = self.daemon.client.get("/monitoring/prometheus/metrics").text
        prefix = f'modelwatch_refused_total{{reason="{reason}",transport="rest"}} '
        for line in text.splitlines():
            if line.startswith(prefix):
                return float(line[len(prefix):])
        return 0.0


def _low_open_files_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


@pytest.fixture(scope="module", params=["fast", "plain"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           model_builder) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp(f"hostile-{request.param}")
    base = tmp / "repo" / "m"
    model_builder.publish(base, 1)
    config = {
        "server": {
            "host": "127.0.0.1", "rest_port": 0, "grpc_port": 0,
            "rest_fast_path": request.param == "fast",
            "max_connections": MAX_CONNECTIONS, "header_timeout_seconds": HEADER_TIMEOUT,
        },
        "storage": {"cache_dir": str(tmp / "cache")},
        "watch": {"poll_interval_seconds": 0.2, "settle_seconds": 0.3},
        "loading": {"max_retries": 0, "retry_backoff_seconds": 0.1},
        "models": [{"name": "m", "base_path": str(base)}],
    }
    daemon = DaemonProcess(tmp, config, preexec_fn=_low_open_files_limit).start()
    try:
        daemon.wait_for_states("m", {1: "AVAILABLE"})
        assert daemon.client is not None
        yield Served(daemon, daemon.client.base_url.port or 0, base, model_builder)
    finally:
        assert daemon.stop() == 0, daemon.log()[-4000:]


def predict(host: bytes = b"127.0.0.1") -> bytes:
    return (b"POST /v1/models/m:predict HTTP/1.1\r\nHost: %b\r\nContent-Length: %d\r\n\r\n%b"
            % (host, len(PREDICT_BODY), PREDICT_BODY))


def send_quietly(sock: socket.socket, data: bytes) -> bool:
    """Whether the server still took `data` (it may have closed the connection)."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def test_the_body_of_an_upgrade_request_is_never_answered_as_a_request(served):
    # The snippet: a 400, then a 200 for the smuggled GET.
    with served.connect() as s:
        inner = b"GET /v1/models/m HTTP/1.1\r\nHost: x\r\n\r\n"
        s.sendall(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Connection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: %d\r\n\r\n" % len(inner))
        reader = Reader(s)
        status, headers, body = reader.response()
        send_quietly(s, inner)
        assert (status, headers[b"connection"]) == (400, b"close")
        assert "switch protocols" in orjson.loads(body)["error"]
        assert reader.closed()  # no second answer


def test_a_64_mib_header_is_refused_once_past_the_limit_and_costs_no_memory(served):
    # One header sent 1 MiB at a time stalled the loop ~10 s and grew the daemon by
    # hundreds of MiB (httptools joins its pieces by concatenation).
    piece = b"a" * (1 << 20)
    with ResidentSampler(served.daemon.pid, interval=0.02) as rss, served.connect() as s:
        s.sendall(b"GET /v1/models/m HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        sent = 0
        while sent < 64 and send_quietly(s, piece):
            sent += 1
        send_quietly(s, b"\r\n\r\n")
        status, headers, body = Reader(s).response()
    assert (status, headers[b"connection"]) == (431, b"close")
    assert "server.max_header_bytes (65536 bytes)" in orjson.loads(body)["error"]
    assert rss.peak - rss.samples[0] < 32 << 20, (rss.samples[0], rss.peak)
    assert served.daemon.answer("m") == 2.0  # 0.5 * 2 + version 1


class Flood:
    """Keeps `count` connections that never send a byte open against a port, opening a new
    one for each the server closes, on a thread."""

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.open: list[socket.socket] = []
        self.closed_by_server = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-flood")

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            while len(self.open) < self.count and not self._stop.is_set():
                try:
                    self.open.append(socket.create_connection(("127.0.0.1", self.port), 5))
                except OSError:
                    break
            self._drop_closed(0.05)

    def _drop_closed(self, wait: float) -> None:
        readable, _, _ = select.select(self.open, [], [], wait) if self.open else ([], [], [])
        for sock in readable:
            try:
                gone = sock.recv(1) == b""
            except OSError:
                gone = True
            if gone:
                self.closed_by_server += 1
                self.open.remove(sock)
                sock.close()

    def all_closed_by_server(self) -> bool:
        """(Once stopped) whether the server closed every connection left open."""
        self._drop_closed(0.1)
        return not self.open


def test_silent_connections_are_closed_and_never_starve_the_source_or_a_steady_client(served):
    # 3,000 silent connections stayed open for minutes; under a low open-files limit
    # predicts failed and the local source could not list its folder.
    with served.connect() as steady:
        reader = Reader(steady)

        def steady_predicts() -> float:
            steady.sendall(predict())
            status, _, body = reader.response()
            assert status == 200, body
            return float(orjson.loads(body)["predictions"][0][0])

        assert steady_predicts() == 2.0
        with Flood(served.port, 2 * OPEN_FILES) as flood:
            wait_until(lambda: flood.closed_by_server > OPEN_FILES, 60,
                       "connections past the cap to be closed")
            assert steady_predicts() == 2.0
            served.model_builder.publish(served.base, 2)  # type: ignore[attr-defined]
            # version 2 answers: the source listed it and the load opened its files
            wait_until(lambda: steady_predicts() == 3.0, 60, "version 2 to be served")
        wait_until(flood.all_closed_by_server, 10 * HEADER_TIMEOUT,
                   "the silent connections to be closed after server.header_timeout_seconds")
        assert steady_predicts() == 3.0
    assert served.refusals("silent_connection_evicted") > 0  # the flood made room for others
    assert served.refusals("header_timeout") > 0
    assert "Too many open files" not in served.daemon.log()


def test_malformed_requests_get_400_and_one_log_line(served):
    for _ in range(100):
        with served.connect() as s:
            s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            status, _, body = Reader(s).response()
            assert status == 400 and "Invalid HTTP request" in orjson.loads(body)["error"]
    assert served.refusals("malformed") == 100
    assert served.daemon.log().count("Invalid HTTP request") <= 1


def test_a_host_that_is_not_the_loopback_servers_gets_421(served):
    # DNS rebinding: a page on evil.example whose name now points at 127.0.0.1 reads the
    # loopback server's answers unless the server checks the Host it is asked for.
    with served.connect() as s:
        reader = Reader(s)
        s.sendall(predict(b"evil.example:%d" % served.port))
        status, _, body = reader.response()
        assert status == 421
        assert orjson.loads(body) == {
            "error": f"Host 'evil.example:{served.port}' is not served here (server.allowed_hosts)"
        }
        for host in (b"localhost:%d" % served.port, b"127.0.0.1", b"[::1]:%d" % served.port):
            s.sendall(predict(host))
            assert reader.response()[0] == 200, host
    assert served.refusals("host_not_allowed") == 1
