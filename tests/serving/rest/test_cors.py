"""CORS as TF Serving's http_server.cc does it, over real sockets on both REST paths (the
fast path and plain uvicorn with ASGI): the three headers on every answer under /v1/
(errors included) when on, none elsewhere, and the OPTIONS preflight with or without it.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from tests.serving.rest.test_fast_path import ANSWER, BODY, LIMIT, PREDICT, Reader, Stack, _stack

CORS = {
    b"access-control-allow-origin": b"*",
    b"access-control-allow-methods": b"POST, GET",
    b"access-control-allow-headers": b"Content-Type",
}


@pytest.fixture(params=["fast", "asgi"])
def with_cors(request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield from _stack(request.param, cors=True)


@pytest.fixture(params=["fast", "asgi"])
def without_cors(request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield from _stack(request.param)


def exchange(stack: Stack, method: bytes, target: bytes, body: bytes = b"",
             *headers: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    head = [method + b" " + target + b" HTTP/1.1", b"Host: x", *headers,
            b"Content-Length: %d" % len(body)]
    with stack.connect() as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        return Reader(sock).response()


def cors_of(headers: dict[bytes, bytes]) -> dict[bytes, bytes]:
    return {name: value for name, value in headers.items() if name.startswith(b"access-control-")}


@pytest.mark.parametrize(("method", "target", "body", "status"), [
    (b"POST", PREDICT, BODY, 200),
    (b"POST", b"/v1/models/nope:predict", BODY, 404),
    (b"POST", PREDICT, b"x" * (LIMIT + 1), 413),
    (b"POST", PREDICT, b"{", 400),
    (b"GET", b"/v1/models/m", b"", 200),
    (b"GET", b"/V1/models/m/metadata", b"", 200),  # TF Serving's paths are any case
    (b"PUT", b"/v1/models/m", b"", 400),  # TF Serving's "Malformed request"
    (b"GET", b"/v2/models/nope", b"", 404),  # the Open Inference Protocol's, as TF Serving's
    (b"GET", b"/v2", b"", 200),
    (b"POST", b"/v2/models/nope/infer", b'{"inputs": []}', 404),
    (b"POST", b"/v2/models/m/infer", b"{", 400),
])
def test_every_answer_under_an_api_has_the_cors_headers(
    with_cors: Stack, method: bytes, target: bytes, body: bytes, status: int
) -> None:
    got, headers, answer = exchange(with_cors, method, target, body)
    assert got == status, answer
    assert cors_of(headers) == CORS
    assert headers[b"content-type"] == b"application/json"
    if status == 200 and target == PREDICT:
        assert orjson.loads(answer) == ANSWER


@pytest.mark.parametrize("target", [b"/healthz", b"/readyz", b"/monitoring/prometheus/metrics"])
def test_the_servers_own_routes_have_none(with_cors: Stack, target: bytes) -> None:
    status, headers, _ = exchange(with_cors, b"GET", target)
    assert status == 200 and cors_of(headers) == {}


def test_without_the_flag_no_answer_has_them(without_cors: Stack) -> None:
    for method, target, body in [(b"POST", PREDICT, BODY), (b"GET", b"/v1/models/m", b""),
                                 (b"POST", b"/v1/models/nope:predict", BODY)]:
        _, headers, _ = exchange(without_cors, method, target, body)
        assert cors_of(headers) == {}
    # A preflight is answered all the same (TF Serving answers it whatever the flag).
    for origin, status in ((b"Origin: https://app.example.com", 200), (b"X: y", 400)):
        got, headers, body = exchange(without_cors, b"OPTIONS", PREDICT, b"", origin)
        assert (got, body, cors_of(headers)) == (status, b"", {})


@pytest.mark.parametrize(("origin", "status"), [
    (b"Origin: https://app.example.com", 200),
    (b"Origin: http://localhost:3000", 200),
    (b"Origin: null", 400),  # TF Serving: "Origin header is missing in CORS preflight"
    (None, 400),
])
def test_a_preflight_is_answered_by_its_origin_with_an_empty_body(
    with_cors: Stack, origin: bytes | None, status: int
) -> None:
    headers = (origin, b"Access-Control-Request-Method: POST") if origin else ()
    got, answered, body = exchange(with_cors, b"OPTIONS", PREDICT, b"", *headers)
    assert (got, body, cors_of(answered)) == (status, b"", CORS)
    assert with_cors.fake.calls == []


def test_a_preflight_under_v2_is_one(with_cors: Stack) -> None:
    got, answered, body = exchange(with_cors, b"OPTIONS", b"/v2/models/m/infer", b"",
                                   b"Origin: https://app.example.com")
    assert (got, body, cors_of(answered)) == (200, b"", CORS)


def test_a_preflight_elsewhere_is_not_one(with_cors: Stack) -> None:
    status, headers, body = exchange(with_cors, b"OPTIONS", b"/healthz", b"",
                                     b"Origin: https://app.example.com")
    assert status == 400 and cors_of(headers) == {}
    assert orjson.loads(body) == {"error": "Malformed request: OPTIONS /healthz"}
