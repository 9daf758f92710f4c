"""The fast HTTP path (loader/serving/rest/fast_path.py) over real sockets: framing,
keep-alive, pipelining, partial reads, limits, timeouts, drain; each connection-level test
runs on both paths (`fast` and plain uvicorn with ASGI, `asgi`), which must answer alike.
"""

from __future__ import annotations

import gc
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import pytest

from loader.base import VersionRef
from loader.config.schema import BatchingConfig
from loader.manager.manager import Manager, ModelSpec
from loader.servables.batching import BatchingServable
from loader.serving.dataplane import DataPlane
from loader.serving.metrics import Metrics
from loader.serving.rest.app import RestApi
from loader.serving.rest.connection_guard import HttpLimits
from loader.serving.rest.server import RestServer, bind
from loader.serving.tls import ServerTls
from policies.selection import All
from policies.transition import availability_preserving
from tests.daemon_process import wait_until as poll_until
from tests.fakes import refs
from tests.servables.test_batching import RecordingServable, wait_until

LIMIT = 4096
PREDICT = b"/v1/models/m:predict"
BODY = b'{"signature_name": "double", "instances": [[1.5]]}'
ANSWER = {"predictions": [{"y": [3.0], "z": [2.5]}]}


@dataclass
class Stack:
    server: RestServer
    fake: RecordingServable
    servable: BatchingServable
    metrics: Metrics

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.server.port), timeout=30)


def _stack(
    path: str, keep_alive_seconds: int = 5, limits: HttpLimits | None = None,
    tls: ServerTls | None = None, max_request_bytes: int = LIMIT, **api_options: float,
) -> Iterator[Stack]:
    fake = RecordingServable()
    servables: list[BatchingServable] = []

    def load(model: str, version: int, ref: VersionRef) -> BatchingServable:
        params = BatchingConfig(max_batch_size=64, num_batch_threads=1)
        servables.append(BatchingServable(fake, params, name=model))
        return servables[-1]

    manager = Manager(load, load_retries=0)
    manager.set_models([ModelSpec("m", All(), availability_preserving, {"stable": 1})])
    manager.on_versions("m", refs(1))
    assert manager.wait_until(lambda: manager.status("m")[0].state == "AVAILABLE", 10)
    metrics = Metrics()
    api = RestApi(DataPlane(manager), metrics, max_request_bytes=max_request_bytes, **api_options)
    server = RestServer(api.app, bind("127.0.0.1", 0), fast_path=path == "fast",
                        keep_alive_seconds=keep_alive_seconds, limits=limits, metrics=metrics,
                        tls=tls)
    assert server.fast_path == (path == "fast")
    server.start()
    assert server.wait_started(10)
    yield Stack(server, fake, servables[0], metrics)
    server.stop()
    server.join(10)
    manager.stop()
    manager.join()


@pytest.fixture(params=["fast", "asgi"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield from _stack(request.param)


def request(target: bytes, body: bytes, *headers: bytes, version: bytes = b"1.1") -> bytes:
    head = [b"POST " + target + b" HTTP/" + version, b"Host: x", *headers]
    if not any(h.lower().startswith(b"transfer-encoding") for h in headers):
        head.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class Reader:
    """Reads whole HTTP/1.1 responses (content-length framed) off a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def response(self) -> tuple[int, dict[bytes, bytes], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0"))
        while len(self.buffer) < length:
            self._more()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body

    def closed(self) -> bool:
        """True once the server closed the connection (and sent nothing more)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"the server closed the connection; got {self.buffer[:300]!r}"
        self.buffer += chunk


def nothing_answered_yet(sock: socket.socket, seconds: float = 0.1) -> bool:
    readable, _, _ = select.select([sock], [], [], seconds)
    return not readable


def test_keep_alive_answers_many_requests_on_one_connection(stack):
    with stack.connect() as sock:
        reader = Reader(sock)
        for _ in range(5):
            sock.sendall(request(PREDICT, BODY))
            status, headers, body = reader.response()
            assert (status, orjson.loads(body)) == (200, ANSWER)
            assert headers[b"content-type"] == b"application/json"
            assert b"connection" not in headers


def test_pipelined_requests_are_answered_in_order(stack):
    other = b'{"signature_name": "echo", "instances": [[7.0]]}'
    with stack.connect() as sock:
        reader = Reader(sock)
        sock.sendall(
            request(PREDICT, BODY)
            + b"GET /v1/models/m HTTP/1.1\r\nHost: x\r\n\r\n"
            + request(b"/v1/models/m/labels/stable:predict", other)
            + request(b"/v1/models/nope:predict", BODY)
            + request(PREDICT, BODY)
        )
        answers = [reader.response() for _ in range(5)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 404, 200]
    assert orjson.loads(answers[0][2]) == ANSWER
    assert orjson.loads(answers[1][2])["model_version_status"][0]["version"] == "1"
    assert orjson.loads(answers[2][2]) == {"predictions": [[7.0]]}  # one output: no name
    assert "nope" in orjson.loads(answers[3][2])["error"]
    assert orjson.loads(answers[4][2]) == ANSWER


@pytest.mark.parametrize("path", ["fast", "asgi"])
def test_an_idle_connection_is_closed_after_the_keep_alive_timeout_and_a_busy_one_is_not(path):
    for stack in _stack(path, keep_alive_seconds=1):
        with stack.connect() as idle:
            idle.sendall(request(PREDICT, BODY))
            idle_reader = Reader(idle)
            assert idle_reader.response()[0] == 200
            went_idle = time.monotonic()
            assert idle_reader.closed()  # blocks until the server closes it
            assert 0.9 < time.monotonic() - went_idle < 3.0
        with stack.connect() as busy:
            reader = Reader(busy)
            started = time.monotonic()
            while time.monotonic() < started + 2.5:  # busy for longer than the timeout
                busy.sendall(request(PREDICT, BODY))
                assert reader.response()[0] == 200


def test_a_client_that_pipelines_without_reading_is_held_back_then_answered_in_order(stack):
    # 10,000 requests of ~3 kB, each answered with ~3 kB, sent by a client that reads
    # nothing until its sending stalls: the server must stop reading requests once its
    # writes back up (instead of buffering every answer), then answer all of them in order.
    count = 10_000

    def body(i: int) -> bytes:
        return b'{"signature_name": "echo", "instances": [[%b]]}' % b",".join([b"%d.5" % i] * 400)

    data = b"".join(request(PREDICT, body(i)) for i in range(count))
    sent = [0]
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        sock.settimeout(60)
        sock.connect(("127.0.0.1", stack.server.port))

        def send() -> None:
            while sent[0] < len(data):
                sent[0] += sock.send(data[sent[0]:sent[0] + 65536])

        sender = threading.Thread(target=send)
        sender.start()
        seen = [-1]

        def stalled() -> bool:
            before, seen[0] = seen[0], sent[0]
            return before == seen[0] or not sender.is_alive()

        # No progress over a fifth of a second (the sender is blocked), or done.
        poll_until(stalled, 30, "the sender to stall or finish", interval=0.2)
        assert sent[0] < len(data), "the server read every request without its answers being read"
        reader = Reader(sock)
        for i in range(count):
            status, _, answer = reader.response()
            assert status == 200, answer[:200]
            assert orjson.loads(answer)["predictions"][0][:2] == [i + 0.5, i + 0.5]
        sender.join(30)


def test_a_request_in_pieces_is_answered_once_whole(stack):
    whole = request(PREDICT, BODY)
    pieces = [whole[:7], whole[7:30], whole[30:-10], whole[-10:-1], whole[-1:]]
    with stack.connect() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces[:-1]:
            sock.sendall(piece)
            assert nothing_answered_yet(sock)
        sock.sendall(pieces[-1])
        status, _, body = Reader(sock).response()
    assert (status, orjson.loads(body)) == (200, ANSWER)


def test_a_chunked_body_is_read_whole(stack):
    chunked = b"".join(b"%x\r\n%b\r\n" % (len(BODY[i:i + 9]), BODY[i:i + 9])
                       for i in range(0, len(BODY), 9)) + b"0\r\n\r\n"
    with stack.connect() as sock:
        sock.sendall(request(PREDICT, chunked, b"Transfer-Encoding: chunked"))
        status, _, body = Reader(sock).response()
    assert (status, orjson.loads(body)) == (200, ANSWER)


def test_http_1_0_is_answered_and_the_connection_closed(stack):
    with stack.connect() as sock:
        sock.sendall(request(PREDICT, BODY, version=b"1.0"))
        reader = Reader(sock)
        status, headers, body = reader.response()
        assert (status, orjson.loads(body)) == (200, ANSWER)
        assert headers[b"connection"] == b"close"
        assert reader.closed()


def test_connection_close_from_the_client_is_honoured(stack):
    with stack.connect() as sock:
        sock.sendall(request(PREDICT, BODY, b"Connection: close"))
        reader = Reader(sock)
        assert reader.response()[0] == 200
        assert reader.closed()


def test_expect_100_continue_gets_a_100_before_the_body_is_sent(stack):
    with stack.connect() as sock:
        head, _, body = request(PREDICT, BODY, b"Expect: 100-continue").partition(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")
        reader = Reader(sock)
        assert reader.response()[0] == 100
        sock.sendall(body)
        status, _, answer = reader.response()
    assert (status, orjson.loads(answer)) == (200, ANSWER)


def test_a_declared_length_over_the_limit_is_refused_before_the_body(stack):
    with stack.connect() as sock:
        sock.sendall(
            b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % (LIMIT + 1)
        )
        status, _, body = Reader(sock).response()
    assert status == 413
    assert f"server.max_request_bytes ({LIMIT} bytes)" in orjson.loads(body)["error"]


def test_a_chunked_body_over_the_limit_is_refused_and_the_connection_serves_on(stack):
    chunk = b"%x\r\n%b\r\n" % (1000, b" " * 1000)
    with stack.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request(PREDICT, chunk * 5 + b"0\r\n\r\n", b"Transfer-Encoding: chunked"))
        assert reader.response()[0] == 413
        sock.sendall(request(PREDICT, BODY))
        assert reader.response()[0] == 200
    text = stack.metrics.exposition().decode()
    assert 'api="predict",model="m",status="RESOURCE_EXHAUSTED",transport="rest"} 1.0' in text


@pytest.mark.parametrize("path", ["fast", "asgi"])
def test_a_stalled_body_gets_408_and_the_connection_closed(path):
    for stack in _stack(path, body_timeout_seconds=0.3):
        with stack.connect() as sock:
            sock.sendall(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 100\r\n\r\n" + BODY[:12])
            reader = Reader(sock)
            status, headers, body = reader.response()
            assert status == 408 and headers[b"connection"] == b"close"
            assert "12 bytes were read" in orjson.loads(body)["error"]
            assert reader.closed()


def test_malformed_requests_get_400_and_the_server_serves_on(stack):
    for garbage in (b"POST /v1/models/m:predict HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                    b"NOT HTTP AT ALL\r\n\r\n",
                    b"POST /v1/models/m:predict HTTP/1.1\r\nContent-Length: 5\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"):
        with stack.connect() as sock:
            sock.sendall(garbage)
            assert Reader(sock).response()[0] == 400
    with stack.connect() as sock:
        sock.sendall(request(PREDICT, BODY))
        assert Reader(sock).response()[0] == 200


def test_targets_the_fast_path_leaves_to_asgi_are_answered_alike(stack):
    targets = [b"/v1/models/m:predict?x=1", b"/v1/models/%6d:predict",
               b"/V1/MODELS/m/versions/1:PREDICT", b"/v1/models/m/versions/x:predict",
               b"/v1/models/m/labels/nope:predict", b"/v1/models/m:explain"]
    with stack.connect() as sock:
        reader = Reader(sock)
        statuses = []
        for target in targets:
            sock.sendall(request(target, BODY))
            statuses.append(reader.response()[0])
    assert statuses == [200, 200, 200, 400, 400, 400]


def test_client_gone_mid_body_is_cancelled_and_not_in_flight(stack):
    with stack.connect() as sock:
        sock.sendall(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 100\r\n\r\n" + BODY[:12])
    text = lambda: stack.metrics.exposition().decode()  # noqa: E731
    wait_until(lambda: 'status="CANCELLED",transport="rest"} 1.0' in text())
    assert 'modelwatch_requests_in_flight{transport="rest"} 0.0' in text()


def _refuses_connections(stack: Stack) -> bool:
    try:
        stack.connect().close()
    except OSError:
        return True
    return False


def test_requests_in_flight_are_answered_on_stop_and_idle_connections_closed(stack):
    with stack.connect() as busy, stack.connect() as queued, stack.connect() as idle:
        idle_reader = Reader(idle)
        idle.sendall(request(PREDICT, BODY))
        assert idle_reader.response()[0] == 200
        gate = stack.fake.hold_next_call()
        busy.sendall(request(PREDICT, BODY))
        assert gate.entered.wait(10)
        queued.sendall(request(PREDICT, b'{"signature_name": "echo", "instances": [[1.0]]}'))
        wait_until(lambda: stack.servable.queued == 1)  # it waits for the next batch
        stack.server.stop()
        wait_until(lambda: _refuses_connections(stack))  # the drain has begun
        assert idle_reader.closed()
        gate.open()
        for sock in (busy, queued):
            status, headers, _ = Reader(sock).response()
            assert status == 200 and headers[b"connection"] == b"close"
        stack.server.join(10)


def test_an_answered_request_leaves_no_reference_cycle_behind(stack):
    # A request and its call referred to each other until the cyclic collector ran, so what
    # they held (a long model name) outlived them by a collection.
    gc.collect()
    gc.disable()
    try:
        with stack.connect() as sock:
            reader = Reader(sock)
            for _ in range(20):
                sock.sendall(request(PREDICT, BODY))
                assert reader.response()[0] == 200
        left = gc.collect()
    finally:
        gc.enable()
    assert left < 20, f"{left} objects only the cyclic collector could free"
