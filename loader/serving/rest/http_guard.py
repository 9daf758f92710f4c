"""uvicorn's HTTP/1.1 protocol with limits on what a client controls before a request reaches
the app: both REST paths (plain uvicorn, and the fast path built on this) use it.

- The request target and the head (request line and headers; also a chunk's size line and
  a chunked body's trailers) are counted as they arrive and refused past their limits (414,
  431) before they are accumulated: httptools gathers a header split over many reads by
  concatenation, so without a bound one 64 MiB header cost the loop ~10 s.
- A connection's first request, and each request's head once begun, must arrive within
  `header_timeout_seconds` (slowloris); a connection that never sends a byte is closed then.
- Connections past `max_connections` are closed at once, as nginx does past
  `worker_connections`, so that clients cannot take the descriptors the model sources need;
  but first the oldest connection that has not sent a byte is closed to make room, so a
  flood of silent connections holds no slot a speaking client needs.
- A request that asks to switch protocols (`Connection: Upgrade`) and has a body is refused
  (400) and its connection closed: httptools then skips the body and would read it as the
  next request (httptools #124, uvicorn #2722). One without a body is answered as plain
  HTTP/1.1, the `Upgrade` ignored, as RFC 9110 7.8 allows and as TF Serving (libevent) and
  nginx do; modelwatch speaks no other protocol on this port.
- A large body is read one read (up to 256 KiB) per round of the event loop, so the other
  connections are served between its reads.
- A `Host` that is not allowed (`loader.serving.rest.allowed_hosts`) gets 421.
- TLS (`loader.serving.rest.tls_start`) runs under the limits above from the accept; a
  failed handshake (say, a plain HTTP request) closes the connection at once, counted.
- Every refusal is counted (`modelwatch_refused_total{transport="rest"}`) and logged at most
  once per interval per reason; malformed requests too (uvicorn logs each one).

Refusals that leave the stream unreadable are answered `{"error": ...}` with the connection
closed; when a response is still being written the connection is closed after it instead.
The Host refusal keeps the connection: uvicorn reads the body past it as usual.

This leans on uvicorn's protocol internals (uvicorn 0.55, httptools 0.9: `parser`, `cycle`,
`headers`, `url`, the parser callbacks); tests/serving/rest/test_http_guard.py drives each
behaviour over real sockets on both paths.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from loader.serving.rest.connection_guard import (
    ConnectionGuard,
    Refusal,
    answer_asgi,
    refusal_response,
)
from loader.serving.rest.tls_start import TlsStart

_MALFORMED = "Invalid HTTP request received."
_PACED_READ_BYTES = 64 * 1024  # a read this large, inside a body: the next waits a round


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's protocol with the limits above. Built by uvicorn for each connection;
    `guard` is bound with functools.partial."""

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard
        limits = guard.limits
        self._max_url = limits.max_url_bytes
        self._max_head = limits.max_header_bytes
        self._max_fields = limits.max_header_count
        self._hosts = limits.allowed_hosts
        self._in_head = True  # bytes read now belong to a head (or chunk framing, trailers)
        self._head_bytes = 0
        self._head_seq = 0  # heads begun: tells a head still arriving from the next one
        self._fields = 0
        self._host: bytes | None = None
        self._head_begun = False  # a byte of the head in progress arrived
        self._head_started: float | None = None  # its deadline counts from here
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_open = False  # the body (or trailers) of self.cycle's request is arriving
        self._stopped = False  # refused: read nothing more
        self._silent = False  # in guard.silent: open, and no byte received yet
        self._paced = False  # reading waits for the loop's next round (a large body)
        self._tls: TlsStart | None = None  # the handshake, with guard.tls

    # -- the connection ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        silent = self.guard.silent
        if len(self.connections) > self.guard.limits.max_connections:
            if silent:  # the oldest connection that never spoke makes room
                oldest = next(iter(silent))
                del silent[oldest]
                oldest._stopped = True
                self.guard.refused(
                    "silent_connection_evicted",
                    f"a connection that had sent nothing was closed for a new one: "
                    f"server.max_connections ({self.guard.limits.max_connections}) are open",
                )
                oldest.transport.close()
            else:
                self._stopped = True
                self.guard.refused(
                    "too_many_connections",
                    f"a connection was closed: server.max_connections "
                    f"({self.guard.limits.max_connections}) are open",
                )
                transport.close()
                return
        silent[self] = None
        self._silent = True
        self._head_started = self.loop.time()  # the first request's deadline counts from here
        self._head_timer = self.loop.call_at(
            self._head_started + self.guard.limits.header_timeout_seconds, self._check_head
        )
        if self.guard.tls is not None:
            self._tls = TlsStart(
                self, transport, self.guard.tls.current().context,
                self.guard.limits.header_timeout_seconds, self._secured, self._handshake_failed,
            )

    def _secured(self, transport: asyncio.Transport, held: list[bytes]) -> None:
        if self._stopped:  # closed by a limit during the handshake
            transport.close()
            return
        HttpToolsProtocol.connection_made(self, transport)  # reads and writes through TLS now
        for data in held:
            self.data_received(data)

    def _handshake_failed(self, error: ssl.SSLError) -> None:
        if not self._stopped:
            self._stopped = True
            self.guard.refused("tls_handshake", f"a TLS handshake failed: {error.reason}")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._silent:
            self._silent = False
            self.guard.silent.pop(self, None)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _check_head(self) -> None:
        """The deadline timer: one per connection, re-armed while the connection lives."""
        seconds = self.guard.limits.header_timeout_seconds
        now = self.loop.time()
        started = self._head_started
        if self._stopped or self.transport.is_closing():
            self._head_timer = None
            return
        if started is not None and now >= started + seconds:
            self._head_timer = None
            self._refuse(Refusal(
                408, "header_timeout",
                f"The request's headers did not arrive within server.header_timeout_seconds "
                f"({seconds:g} s)",
            ), answer=self._head_begun)
            return
        at = now + seconds if started is None else started + seconds
        self._head_timer = self.loop.call_at(at, self._check_head)

    # -- reading -----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._tls is not None and self._tls.hold(data):
            return
        if self._silent:  # it spoke: no longer the first to make room
            self._silent = False
            self.guard.silent.pop(self, None)
        self._unset_keepalive_if_required()
        left: bytes | memoryview = data
        while left and not self._stopped:
            if self._in_head:
                self._head_bytes += len(left)
                over = self._head_bytes - self._max_head
                if over > 0:
                    left = self._feed_up_to_head_limit(left, over)
                    continue
            left = self._feed(left)
        if self._body_open and len(data) >= _PACED_READ_BYTES and not self._paced:
            # A large body arriving: its next read waits for the loop to go round once, so
            # the other connections are served between its reads. Left alone, libuv reads
            # a socket up to 32 times in a row while data is there (8 MiB, tens of
            # milliseconds): two 60 MB bodies held every other client for ~300 ms.
            self._paced = True
            self.transport.pause_reading()
            delay = self.drain_seconds()
            if delay:
                self.loop.call_later(delay, self._read_on)
            else:
                self.loop.call_soon(self._read_on)

    def drain_seconds(self) -> float:
        """How long a large read waits before the next one (0: the loop's next round)."""
        return 0.0

    def _read_on(self) -> None:
        self._paced = False
        if not (self._stopped or self.flow.read_paused or self.transport.is_closing()):
            self.transport.resume_reading()

    def _feed(self, data: bytes | memoryview) -> bytes | memoryview:
        """Parse `data`; what is left of it after a request that asked to switch protocols."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # Answered as plain HTTP/1.1 (it had no body): what follows is the next request.
            return memoryview(data)[int(upgrade.args[0]):]
        except httptools.HttpParserCallbackError as error:
            refusal = error.__context__
            if not isinstance(refusal, Refusal):  # a bug of ours: answered as uvicorn does
                self.guard.bug(refusal)
                refusal = Refusal(400, "malformed", _MALFORMED)
            self._refuse(refusal)
        except httptools.HttpParserError:
            self._refuse(Refusal(400, "malformed", _MALFORMED))
        return b""

    def _feed_up_to_head_limit(self, data: bytes | memoryview, over: int) -> bytes | memoryview:
        """Only `len(data) - over` more bytes fit the head in progress: parse those, and the
        rest only if the head ended within them."""
        view = memoryview(data)
        fits = len(data) - over
        seq = self._head_seq
        left = self._feed(view[:fits]) if fits > 0 else view[:0]
        if self._stopped:
            return b""
        if self._in_head and self._head_seq == seq:
            self._refuse(Refusal(
                431, "header_too_large",
                f"The request's headers are larger than server.max_header_bytes "
                f"({self._max_head} bytes)",
            ))
            return b""
        return view[fits - len(left):]

    # -- parser callbacks (uvicorn's, with counting) -------------------------------------

    def on_message_begin(self) -> None:
        self._begin_head()
        super().on_message_begin()

    def _begin_head(self) -> None:
        # The read in which a head begins is not counted (at most one read, 256 KiB).
        self._in_head = True
        self._head_bytes = 0
        self._head_seq += 1
        self._head_begun = True
        self._fields = 0
        self._host = None
        if self._head_started is None:
            self._head_started = self.loop.time()

    def on_url(self, url: bytes) -> None:
        url = self.url + url
        if len(url) > self._max_url:
            raise Refusal(
                414, "url_too_long",
                f"The request target is longer than server.max_url_bytes ({self._max_url} bytes)",
            )
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > self._max_fields:
            raise Refusal(
                431, "too_many_headers",
                f"The request has more than server.max_header_count ({self._max_fields}) headers",
            )
        name = name.lower()
        value = value.rstrip(b" \t")  # uvicorn's: RFC 9110 5.5 leaves trailing spaces out
        if name == b"host":
            self._host = value if self._host is None else b"/"  # two: never allowed
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_chunk_header(self) -> None:
        # A chunk's size line, or the trailers after the last one: counted as a head.
        self._in_head = True
        self._head_seq += 1
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._end_head()
        self._headers_complete_asgi()

    def _end_head(self) -> None:
        """The head arrived whole: its counting and deadline end; raises a `Refusal` for a
        request whose framing httptools would get wrong."""
        self._in_head = False
        self._head_begun = False
        self._head_started = None
        if self.parser.should_upgrade() and self._declares_body():
            raise Refusal(
                400, "upgrade_with_body",
                "A request asking to switch protocols (Connection: Upgrade) may not have a body",
            )
        self._body_open = True

    def _declares_body(self) -> bool:
        for name, value in self.headers:
            if name == b"transfer-encoding" or (name == b"content-length" and value.strip(b"0")):
                return True
        return False

    def misdirected(self) -> bool:
        """Whether this request's `Host` is not one the server answers."""
        hosts = self._hosts
        if hosts is None:
            return False
        host = self._host
        if host is None:  # HTTP/1.1 requires one (RFC 9112 3.2); HTTP/1.0 may omit it
            return self.parser.get_http_version() != "1.0"
        return not hosts.allows(host)

    def _headers_complete_asgi(self) -> None:
        """uvicorn's `on_headers_complete`, or a 421 for a `Host` not allowed."""
        if not self.misdirected():
            super().on_headers_complete()
            return
        shown = (self._host or b"").decode("latin-1")[:100]
        message = f"Host {shown!r} is not served here (server.allowed_hosts)"
        self.guard.refused("host_not_allowed", message)
        app, self.app = self.app, functools.partial(
            answer_asgi, 421, orjson.dumps({"error": message})
        )
        try:  # uvicorn reads and drops the body after the answer, as for any request
            super().on_headers_complete()
        finally:
            self.app = app

    def on_body(self, body: bytes) -> None:
        self._in_head = False
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_open = self._in_head = False
        super().on_message_complete()

    # -- refusing ------------------------------------------------------------------------

    def _refuse(self, refusal: Refusal, answer: bool = True) -> None:
        """Count it, answer it and close. While the response to an earlier request is being
        written, close after it instead (answering now would put this answer first); when
        the request refused was answered already (its body was being dropped), or is queued
        behind another's answer (its body or trailers broke the limits), just close."""
        self._stopped = True
        self.guard.refused(refusal.reason, refusal.message)
        cycle = self.cycle
        if cycle is not None:
            if not self._body_open:
                if not cycle.response_complete:
                    cycle.keep_alive = False
                    self.transport.pause_reading()
                    return
            elif cycle.response_complete or self.pipeline:  # or an earlier one is in flight
                answer = False
        if answer and not self.transport.is_closing():
            self.transport.write(refusal_response(refusal.status, refusal.message))
        self.transport.close()
