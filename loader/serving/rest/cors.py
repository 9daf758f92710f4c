"""CORS as TF Serving's REST server does it (`http_server.cc`, `http_rest_api_util.cc`).

Only the APIs' paths are concerned: TF Serving's (`/v1/...`, any case) and the Open
Inference Protocol's (`/v2` and under it, case-sensitive as its routes are), so a browser
app may call either; the server's own routes (health, metrics, the operator page) are not,
as in TF Serving, whose Prometheus path gets no CORS headers either.
- With `--rest_api_enable_cors_support` (`server.rest_cors`), every answer on an API path,
  errors included, carries `Access-Control-Allow-Origin: *`, `Access-Control-Allow-Methods:
  POST, GET` and `Access-Control-Allow-Headers: Content-Type`.
- An `OPTIONS` request on an API path (a browser's preflight) is answered whatever the
  flag, with an empty body: 200 when its `Origin` header names an http(s) origin, 400
  otherwise (TF Serving's FAILED_PRECONDITION "Origin header is missing in CORS preflight",
  whose text it does not send). The flag decides only whether the headers come with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from starlette.types import Message, Send

# TF Serving's kHTTPRestApiHandlerPathRegex, and the v2 routes' paths, matched whole
# against the path. (The fast path adds the headers to every prediction it answers, v2
# infer included, so both paths agree.)
API_PATH = re.compile(rb"(?i:/v1/.*)|/v2(?:/.*)?")
_HTTP_ORIGIN = re.compile(rb"https?://")  # searched for in Origin, as TF Serving's RE2

CORS_HEADERS = (
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"POST, GET"),
    (b"access-control-allow-headers", b"Content-Type"),
)
CORS_HEAD = b"".join(b"%b: %b\r\n" % pair for pair in CORS_HEADERS)  # for a raw HTTP head


def preflight_status(headers: Iterable[tuple[bytes, bytes]]) -> int:
    """The status of an OPTIONS request with these (lower-case) headers."""
    for name, value in headers:
        if name == b"origin":
            return 200 if _HTTP_ORIGIN.search(value) else 400
    return 400


async def answer_preflight(headers: Iterable[tuple[bytes, bytes]], send: Send, cors: bool) -> int:
    """Answer an OPTIONS request on an API path (ASGI); returns its status."""
    status = preflight_status(headers)
    head = [(b"content-length", b"0"), *(CORS_HEADERS if cors else ())]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": b""})
    return status


def with_cors_headers(send: Send) -> Send:
    """`send`, adding the CORS headers to the response's head."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *CORS_HEADERS]}
        await send(message)

    return sending
