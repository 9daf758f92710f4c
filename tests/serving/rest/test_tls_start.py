"""REST over TLS (loader/serving/rest/tls_start.py with http_guard.py) over real sockets on
both paths: every request answered through TLS however early it follows the handshake, a
plain HTTP request and a failed client certificate closed at once and counted, the
handshake under the head's deadline and the connection cap from the accept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import trustme

from loader.serving.rest.connection_guard import HttpLimits
from loader.serving.tls import ServerTls, read_pem_files
from tests.certificates import client_context, write_leaf
from tests.daemon_process import wait_until
from tests.serving.rest.test_fast_path import ANSWER, BODY, PREDICT, Stack, _stack
from tests.serving.rest.test_http_guard import refusals

LIMITS = HttpLimits(header_timeout_seconds=2.0, max_connections=4)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(params=["fast", "asgi"])
def secured(request: pytest.FixtureRequest, tmp_path: Path, ca: trustme.CA) -> Iterator[Stack]:
    cert, key, client_ca = tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt"
    write_leaf(ca.issue_cert("127.0.0.1"), cert, key)
    ca.cert_pem.write_to_path(str(client_ca))
    tls = ServerTls([cert, key, client_ca],
                    lambda: read_pem_files(cert, key, client_ca, "server.tls"))
    yield from _stack(request.param, limits=LIMITS, tls=tls)


def url(stack: Stack, scheme: str = "https") -> str:
    return f"{scheme}://127.0.0.1:{stack.server.port}{PREDICT.decode()}"


def test_each_new_connection_answers_through_tls(secured, ca):
    # A client sends its request with the handshake's last flight, so the server decrypts
    # it before its handshake has returned: it is held and answered through TLS, not in
    # clear text on the raw socket (which the client reads as "wrong version number").
    verify = client_context(ca, ca.issue_cert("client@example.com"))
    for _ in range(20):
        reply = httpx.post(url(secured), content=BODY, verify=verify, timeout=30)
        assert orjson.loads(reply.content) == ANSWER


def test_plain_http_and_a_client_without_a_certificate_are_closed_and_counted(secured, ca):
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(url(secured, "http"), content=BODY, timeout=30)
    with pytest.raises(httpx.TransportError):
        httpx.post(url(secured), content=BODY, verify=client_context(ca), timeout=30)
    # In TLS 1.3 the client may see its refusal before the server has counted it.
    wait_until(lambda: refusals(secured, "tls_handshake") == 2, 10, "two refused handshakes")
    assert refusals(secured, "tls_handshake") == 2


def test_a_silent_connection_is_closed_at_the_head_deadline(secured):
    with secured.connect() as sock:
        assert sock.recv(1) == b""  # closed at header_timeout_seconds, never answered
    assert refusals(secured, "header_timeout") == 1


def test_connections_in_their_handshake_count_toward_the_cap(secured, ca):
    # Four silent connections fill the cap; a client's TLS connection then makes room by
    # closing the oldest of them, as a plain one would.
    silent = [secured.connect() for _ in range(LIMITS.max_connections)]
    try:
        verify = client_context(ca, ca.issue_cert("client@example.com"))
        reply = httpx.post(url(secured), content=BODY, verify=verify, timeout=30)
        assert orjson.loads(reply.content) == ANSWER
        assert silent[0].recv(1) == b""
        assert refusals(secured, "silent_connection_evicted") >= 1
    finally:
        for sock in silent:
            sock.close()
