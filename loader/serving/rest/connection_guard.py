"""What every REST connection of one server shares, for `loader.serving.rest.http_guard`:
the `server.*` limits on connections and request heads, the refusal a parser callback
raises, the counting and rate-limited logging of refusals, and the answers that carry a
refusal (a whole response that closes the connection, or an ASGI app for a stream that is
still sound).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from loader.serving.metrics import Metrics
from loader.serving.rate_limited_log import RateLimitedLog
from loader.serving.rest.allowed_hosts import AllowedHosts
from loader.serving.tls import ServerTls

if TYPE_CHECKING:
    from loader.serving.rest.http_guard import GuardedProtocol

log = logging.getLogger("modelwatch.rest")


@dataclass(frozen=True)
class HttpLimits:
    """The `server.*` limits on a REST connection and its request heads."""

    max_url_bytes: int = 8192
    max_header_bytes: int = 64 * 1024
    max_header_count: int = 100
    header_timeout_seconds: float = 10.0
    max_connections: int = 1024
    allowed_hosts: AllowedHosts | None = None  # None: any Host


class Refusal(Exception):
    """A request refused before the app saw it (raised in a parser callback)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class ConnectionGuard:
    """What every connection of one server shares: its limits, metrics, warning log and TLS."""

    def __init__(
        self, limits: HttpLimits, metrics: Metrics | None = None, tls: ServerTls | None = None
    ) -> None:
        self.limits = limits
        self.tls = tls
        self._metrics = metrics
        self._log = RateLimitedLog(log)
        # Connections that have not sent a byte yet, oldest first: at the cap, the oldest
        # makes room for a newcomer, so silent connections cannot shut clients out.
        self.silent: dict[GuardedProtocol, None] = {}

    def refused(self, reason: str, message: str) -> None:
        """Count a refusal and log it (at most once per interval per reason)."""
        if self._metrics is not None:
            self._metrics.refuse("rest", reason)
        self._log.warning(reason, "REST: %s", message)

    def bug(self, error: BaseException | None) -> None:
        """A parser callback raised something other than a `Refusal` (logged, limited)."""
        self._log.warning("parser_callback_error", "REST: a parser callback raised %r", error)


def refusal_response(status: int, message: str) -> bytes:
    """A whole response that closes the connection."""
    body = orjson.dumps({"error": message})
    return b"%bcontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%b" % (
        STATUS_LINE[status], len(body), body
    )


async def answer_asgi(status: int, body: bytes, scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app giving one JSON answer (a refusal whose stream is still sound)."""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
