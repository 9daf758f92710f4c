"""The REST server's limits on connections and request heads
(loader/serving/rest/http_guard.py), over real sockets on both paths (`fast` and plain
uvicorn, `asgi`): request smuggling through Upgrade, request target and head sizes, header
deadlines, the connection cap, malformed requests and the Host check.
"""

from __future__ import annotations

import logging
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator

import orjson
import pytest

from loader.serving.rest.allowed_hosts import AllowedHosts, allowed_hosts, host_name
from loader.serving.rest.connection_guard import HttpLimits
from loader.serving.rest.http_guard import GuardedProtocol
from tests.daemon_process import ROOT
from tests.serving.rest.test_fast_path import ANSWER, BODY, PREDICT, Reader, Stack, _stack

LIMITS = HttpLimits(
    max_url_bytes=1024, max_header_bytes=8192, max_header_count=20,
    header_timeout_seconds=30.0, max_connections=64, allowed_hosts=AllowedHosts(),
)
STATUS = b"GET /v1/models/m HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.fixture(params=["fast", "asgi"])
def guarded(request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield from _stack(request.param, limits=LIMITS)


def post(body: bytes = BODY, *headers: bytes, host: bytes = b"127.0.0.1",
         target: bytes = PREDICT) -> bytes:
    head = [b"POST " + target + b" HTTP/1.1", b"Host: " + host, *headers]
    if not any(h.lower().startswith(b"transfer-encoding") for h in headers):
        head.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def refusals(stack: Stack, reason: str) -> float:
    prefix = f'modelwatch_refused_total{{reason="{reason}",transport="rest"}} '
    for line in stack.metrics.exposition().decode().splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0


def refused_and_closed(sock: socket.socket, status: int) -> str:
    """The refusal's error text, once the server answered `status` and closed."""
    reader = Reader(sock)
    answer_status, headers, body = reader.response()
    assert (answer_status, headers[b"connection"]) == (status, b"close"), body
    assert headers[b"content-type"] == b"application/json"
    assert reader.closed()
    return str(orjson.loads(body)["error"])


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send what the server may already have stopped reading."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


# -- large bodies ------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["fast", "asgi"])
def test_a_large_body_is_read_a_read_per_loop_round(path, monkeypatch):
    # libuv reads a socket up to 32 times in a row while data is there, so a large body
    # took the loop for 8 MiB at a time and every other client waited (issue 21, attack
    # 5). Which round of the loop each read inside a body came in: one large read a round.
    rounds, reads, ticking = [0], [], [True]
    original = GuardedProtocol.data_received

    def spy(self: GuardedProtocol, data: bytes) -> None:
        if not rounds[0]:
            def tick() -> None:
                rounds[0] += 1
                if ticking[0]:
                    self.loop.call_soon(tick)
            tick()
        if self._body_open:
            reads.append((rounds[0], len(data)))
        original(self, data)

    monkeypatch.setattr(GuardedProtocol, "data_received", spy)
    body = b"[" * (8 << 20)
    for stack in _stack(path, limits=LIMITS, max_request_bytes=16 << 20):
        with stack.connect() as sock:
            sock.sendall(post(body))
            status, _, _ = Reader(sock).response()
        ticking[0] = False
    assert status == 400  # read whole, and refused for what it says
    large = [round_ for round_, size in reads if size >= 64 * 1024]
    assert len(large) > 8, reads
    assert len(set(large)) == len(large), f"several large reads in one round: {reads}"


# -- request smuggling through Upgrade ------------------------------------------------------

def test_an_upgrade_request_with_a_body_is_refused_and_its_body_never_read_as_a_request(guarded):
    # The snippet: httptools skips the body of an Upgrade request, so the body sent
    # after it was answered as a second request (a 400, then a 200 for the smuggled GET).
    with guarded.connect() as sock:
        sock.sendall(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Connection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: %d\r\n\r\n"
                     % len(STATUS))
        reader = Reader(sock)
        status, headers, body = reader.response()
        send_quietly(sock, STATUS)
        assert (status, headers[b"connection"]) == (400, b"close")
        assert "switch protocols" in orjson.loads(body)["error"]
        assert reader.closed()  # and no second answer
    assert refusals(guarded, "upgrade_with_body") == 1


def test_an_upgrade_request_without_a_body_is_answered_as_http_1_1_and_the_next_one_too(guarded):
    with guarded.connect() as sock:
        sock.settimeout(10)
        sock.sendall(b"GET /v1/models/m HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\n\r\n" + post())
        reader = Reader(sock)
        assert reader.response()[0] == 200
        status, _, body = reader.response()  # uvicorn dropped what followed the Upgrade
    assert (status, orjson.loads(body)) == (200, ANSWER)


# -- the request target and the head --------------------------------------------------------

def test_a_target_past_the_limit_gets_414_and_the_connection_closed(guarded):
    with guarded.connect() as sock:
        sock.sendall(b"GET /v1/models/" + b"m" * 600)
        send_quietly(sock, b"m" * 600 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert "server.max_url_bytes (1024 bytes)" in refused_and_closed(sock, 414)
    assert refusals(guarded, "url_too_long") == 1


def test_a_refusal_behind_a_request_in_flight_closes_the_connection_after_its_answer(guarded):
    with guarded.connect() as sock:
        sock.sendall(post() + b"GET /" + b"x" * 2000 + b" HTTP/1.1\r\n\r\n")
        reader = Reader(sock)
        status, headers, body = reader.response()  # the answers keep their order
        assert (status, orjson.loads(body), headers[b"connection"]) == (200, ANSWER, b"close")
        assert reader.closed()
    assert refusals(guarded, "url_too_long") == 1


def test_a_head_past_the_limit_gets_431_before_the_rest_of_it_is_read(guarded):
    # One header arriving in pieces: refused once the head passes the limit, not when
    # (if ever) it ends.
    with guarded.connect() as sock:
        sock.sendall(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        for _ in range(8):
            send_quietly(sock, b"a" * 2048)
        assert "server.max_header_bytes (8192 bytes)" in refused_and_closed(sock, 431)
    assert refusals(guarded, "header_too_large") == 1


def test_a_head_just_under_the_limit_with_its_body_in_the_same_read_is_answered(guarded):
    near = b"X-Near: " + b"a" * (LIMITS.max_header_bytes - 200)
    with guarded.connect() as sock:
        reader = Reader(sock)
        for _ in range(2):
            sock.sendall(post(BODY + b" " * 3000, near))
            status, _, body = reader.response()
            assert (status, orjson.loads(body)) == (200, ANSWER)


def test_too_many_headers_get_431(guarded):
    headers = [b"X-%d: y" % i for i in range(LIMITS.max_header_count)]
    with guarded.connect() as sock:
        sock.sendall(post(BODY, *headers))
        assert "server.max_header_count (20)" in refused_and_closed(sock, 431)
    assert refusals(guarded, "too_many_headers") == 1


def test_trailers_past_the_limit_get_431(guarded):
    chunked = b"%x\r\n%b\r\n0\r\nX-Trailer: " % (len(BODY), BODY)
    with guarded.connect() as sock:
        sock.sendall(post(chunked, b"Transfer-Encoding: chunked"))
        for _ in range(8):
            send_quietly(sock, b"a" * 2048)
        assert refused_and_closed(sock, 431)


# -- deadlines and the connection cap -------------------------------------------------------

@pytest.mark.parametrize("path", ["fast", "asgi"])
def test_heads_that_do_not_arrive_in_time_are_refused_and_busy_connections_are_not(path):
    limits = HttpLimits(header_timeout_seconds=0.5)
    for stack in _stack(path, limits=limits):
        with stack.connect() as silent, stack.connect() as slow, stack.connect() as busy:
            slow.sendall(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\n")
            busy_reader = Reader(busy)
            for _ in range(30):  # longer than the deadline, each head on time
                busy.sendall(post(BODY))
                assert busy_reader.response()[0] == 200
            # the next head begins, and stalls
            busy.sendall(b"POST /v1/models/m:predict HTTP/1.1\r\n")
            assert Reader(silent).closed()  # nothing to answer: closed
            assert "server.header_timeout_seconds (0.5 s)" in refused_and_closed(slow, 408)
            assert refused_and_closed(busy, 408)
        assert refusals(stack, "header_timeout") == 3


@pytest.mark.parametrize("path", ["fast", "asgi"])
def test_connections_past_the_cap_are_closed_at_once_and_open_ones_serve_on(path):
    for stack in _stack(path, limits=HttpLimits(max_connections=3)):
        with stack.connect() as first, stack.connect() as second, stack.connect() as third:
            readers = [Reader(s) for s in (first, second, third)]
            for sock, reader in zip((first, second, third), readers, strict=True):
                sock.sendall(post())
                assert reader.response()[0] == 200
            for _ in range(5):
                with stack.connect() as over:
                    assert Reader(over).closed()
            first.sendall(post())
            assert readers[0].response()[0] == 200
        assert refusals(stack, "too_many_connections") == 5


@pytest.mark.parametrize("path", ["fast", "asgi"])
def test_at_the_cap_the_oldest_silent_connection_makes_room_for_a_new_one(path):
    for stack in _stack(path, limits=HttpLimits(max_connections=3)):
        with stack.connect() as talker, stack.connect() as silent, stack.connect() as quiet:
            talker_reader = Reader(talker)
            talker.sendall(post())
            assert talker_reader.response()[0] == 200
            with stack.connect() as newcomer:  # past the cap: `silent` makes room
                newcomer_reader = Reader(newcomer)
                newcomer.sendall(post())
                assert newcomer_reader.response()[0] == 200
                assert Reader(silent).closed()
            quiet.sendall(post())  # not the oldest silent one: kept
            assert Reader(quiet).response()[0] == 200
            talker.sendall(post())  # it had spoken: never evicted
            assert talker_reader.response()[0] == 200
        assert refusals(stack, "silent_connection_evicted") == 1


# -- malformed requests ---------------------------------------------------------------------

class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_malformed_requests_get_400_are_counted_and_logged_once(guarded):
    lines = _Lines()
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "modelwatch.rest")]
    for logger in loggers:
        logger.addHandler(lines)
    try:
        for _ in range(30):
            with guarded.connect() as sock:
                sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
                assert "Invalid HTTP request" in refused_and_closed(sock, 400)
    finally:
        for logger in loggers:
            logger.removeHandler(lines)
    assert refusals(guarded, "malformed") == 30
    assert len(lines.lines) == 1, lines.lines


# -- the Host check -------------------------------------------------------------------------

def test_a_host_not_allowed_gets_421_and_the_connection_serves_on(guarded):
    refused = [b"evil.example", b"evil.example:80", b"127.0.0.1.evil.example", b"[::2]",
               b"localhost.evil.example", b"127.0.0.1:80x", b""]
    allowed = [b"localhost", b"LOCALHOST:8501", b"127.0.0.1:1", b"127.9.9.9", b"[::1]:8501"]
    with guarded.connect() as sock:
        reader = Reader(sock)
        for host in refused + allowed:
            sock.sendall(post(host=host))
            status, _, body = reader.response()
            if host in refused:
                assert status == 421, host
                assert "is not served here (server.allowed_hosts)" in orjson.loads(body)["error"]
            else:
                assert (status, orjson.loads(body)) == (200, ANSWER), host
        sock.sendall(b"GET /v1/models/m HTTP/1.1\r\n\r\n")  # HTTP/1.1 requires a Host
        assert reader.response()[0] == 421
    with guarded.connect() as sock:
        sock.sendall(b"GET /v1/models/m HTTP/1.0\r\n\r\n")  # HTTP/1.0 need not name one
        assert Reader(sock).response()[0] == 200
    assert refusals(guarded, "host_not_allowed") == len(refused) + 1


def test_host_names_and_the_default_list():
    assert host_name(b"[::1]:8501") == "::1"
    assert host_name(b"Example.COM:80") == "example.com"
    assert host_name(b"a:b:c") is None and host_name(b"h\xc3\xa9") is None
    assert allowed_hosts("0.0.0.0", None) is None  # not loopback: any Host
    assert allowed_hosts("127.0.0.1", ["*"]) is None
    loopback = allowed_hosts("::1", None)
    assert loopback is not None and loopback.allows(b"127.0.0.1:80")
    assert not loopback.allows(b"models.internal")
    named = allowed_hosts("127.0.0.1", ["models.internal"])
    assert named is not None and named.allows(b"Models.Internal:8501")
    assert not named.allows(b"localhost")


@pytest.mark.parametrize(("soft", "hard", "expected"), [
    (256, 1024, "768 1024"),  # raised to the hard limit, 256 kept for the rest
    (256, 256, "128 256"),  # cannot be raised: half kept
])
def test_the_open_files_limit_is_raised_and_descriptors_kept_for_the_sources(soft, hard, expected):
    code = ("import resource; from loader.serving.rest.open_files import connection_cap; "
            "print(connection_cap(5000), resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )
    assert done.stdout.split("\n")[0] == expected, done.stderr
