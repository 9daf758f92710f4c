"""The operator page at `/modelwatch/ui`: a read-only, live view of every model.

The page and its assets (`ui/` beside this module, shipped as package data) load nothing
from elsewhere and run no inline code: a strict Content-Security-Policy allows only this
server's own script, style and icon. The script renders the snapshot of
`loader.serving.operator_view` with `textContent` only (model names and error texts come
from files and users), first from `/modelwatch/ui/snapshot`, then from the server-sent
events of `/modelwatch/ui/events`, one snapshot a second.

Every stream is sent the same snapshot, built once a second for all of them
(`loader.serving.rest.snapshot_feed`). At most `max_streams` are open at once: past that a
stream is refused 503 with Retry-After, and the page polls the snapshot meanwhile. A stream
whose client does not read is closed rather than queued behind (see `_stream`). Streams
end when the server stops (`close`), so a SIGTERM's drain never waits on an open page.
Only GET routes: nothing here can change the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from loader.serving.metrics import Metrics
from loader.serving.operator_view import OperatorView
from loader.serving.rate_limited_log import RateLimitedLog
from loader.serving.rest.snapshot_feed import SnapshotFeed

PATH = "/modelwatch/ui"
STREAM_INTERVAL_SECONDS = 1.0
# The browser reconnects this long after a stream ends (a restart, a network hiccup).
RECONNECT_MILLISECONDS = 2000
# Live streams open at once by default (server.max_event_streams); more are refused 503.
MAX_EVENT_STREAMS = 32
# A refused page polls the snapshot and asks for a stream again after this (app.js too).
STREAM_RETRY_AFTER_SECONDS = 30
# A stream whose client has not read its data down for this long is closed.
STALL_SECONDS = 10.0
# The kernel's send buffer of a stream's socket (Linux doubles it). Autotuned, it grows to
# megabytes, and a client that stops reading would show in the transport's buffer only
# after minutes of snapshots; a stream needs a few KiB a second.
STREAM_SEND_BUFFER_BYTES = 64 * 1024

_ASSETS = {
    "": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
    "/icon.svg": ("icon.svg", "image/svg+xml"),
}

# Only this server's own files; no inline script or style, no frames, no forms.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def encode(document: Any) -> bytes:
    """JSON for the page; a lone surrogate (an undecodable file name quoted in an error)
    is written as an escape instead of failing the whole snapshot."""
    try:
        return orjson.dumps(document)
    except orjson.JSONEncodeError:
        return json.dumps(document).encode()


class _Transport(Protocol):
    """What a stream looks at on its connection (an asyncio or uvloop transport)."""

    def get_write_buffer_size(self) -> int: ...
    def get_write_buffer_limits(self) -> tuple[int, int]: ...
    def is_closing(self) -> bool: ...
    def abort(self) -> None: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


def connection_transport(receive: Receive) -> _Transport | None:
    """The connection's transport, under uvicorn: its ASGI `receive` is a method of the
    request's cycle, which keeps the transport (uvicorn 0.55, httptools and h11 alike;
    Starlette passes `receive` on unwrapped). None elsewhere: streams then still share
    the snapshot and block in `send` when the client does not read (bounded), but a
    stalled one is not closed before the server stops."""
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    needed = (
        "get_write_buffer_size", "get_write_buffer_limits", "is_closing", "abort",
        "get_extra_info",
    )
    return transport if all(hasattr(transport, name) for name in needed) else None


def _behind(transport: _Transport) -> bool:
    """Whether the client has data waiting beyond the transport's low-water mark, the
    mark below which uvicorn's `send` stops waiting for a drain (uvloop 0.23 sets it at
    16 bytes: any byte the kernel has not taken)."""
    return transport.get_write_buffer_size() > transport.get_write_buffer_limits()[0]


class _EventStream(StreamingResponse):
    """A stream that gives its slot back however it ends (its body may never start: a
    client that hangs up at once)."""

    def __init__(self, content: AsyncIterator[bytes], on_end: Callable[[], None], **kwargs: Any):
        super().__init__(content, **kwargs)
        self._on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_end()


class OperatorPage:
    """The page's routes over one view, and the live streams it has open."""

    def __init__(
        self,
        view: OperatorView,
        interval_seconds: float = STREAM_INTERVAL_SECONDS,
        *,
        metrics: Metrics | None = None,
        max_streams: int = MAX_EVENT_STREAMS,
        stall_seconds: float = STALL_SECONDS,
    ) -> None:
        self._view = view
        self._metrics = metrics or Metrics()
        self._stall_seconds = stall_seconds
        self.feed = SnapshotFeed(
            self._snapshot_bytes, interval_seconds=interval_seconds, max_streams=max_streams
        )
        self._warnings = RateLimitedLog(logging.getLogger("modelwatch.rest"))
        ui = resources.files("loader.serving.rest") / "ui"
        self._assets = {
            suffix: (ui.joinpath(name).read_bytes(), media_type)
            for suffix, (name, media_type) in _ASSETS.items()
        }

    def routes(self) -> list[Route]:
        """The page, its assets, the JSON snapshot and the event stream (GET only)."""
        assets = [
            Route(PATH + suffix, self._asset, methods=["GET"]) for suffix in self._assets
        ]
        return [
            *assets,
            Route(PATH + "/snapshot", self._snapshot, methods=["GET"]),
            Route(PATH + "/events", self._events, methods=["GET"]),
        ]

    @property
    def open_streams(self) -> int:
        """Live streams open now."""
        return self.feed.streams

    def close(self) -> None:
        """End every open stream now and refuse new ones (the server is stopping)."""
        self.feed.close()

    async def _asset(self, request: Request) -> Response:
        body, media_type = self._assets[request.url.path[len(PATH):]]
        return Response(body, media_type=media_type, headers=SECURITY_HEADERS)

    async def _snapshot(self, request: Request) -> Response:
        frame = await self.feed.latest()
        return Response(frame.json, media_type="application/json", headers=SECURITY_HEADERS)

    async def _events(self, request: Request) -> Response:
        headers = {**SECURITY_HEADERS, "x-accel-buffering": "no"}  # proxies: pass each event on
        if self.feed.closed:  # the server is stopping: an empty stream, which ends at once
            return Response(b"", media_type="text/event-stream", headers=headers)
        if not self.feed.join():
            self._metrics.refuse("rest", "event_streams")
            self._warnings.warning(
                "event_streams", "refused a live page stream: %d are open "
                "(server.max_event_streams)", self.feed.max_streams,
            )
            # 503, not 429: the cap is the server's capacity, whoever asks.
            return Response(
                encode({"error": f"too many live page streams are open (at most "
                                 f"{self.feed.max_streams}: server.max_event_streams); the "
                                 f"snapshot is at {PATH}/snapshot"}),
                503, media_type="application/json",
                headers={**SECURITY_HEADERS, "retry-after": str(STREAM_RETRY_AFTER_SECONDS)},
            )
        transport = connection_transport(request.receive)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SEND_BUFFER_BYTES)
        return _EventStream(
            self._stream(transport), self.feed.leave, media_type="text/event-stream",
            headers=headers,
        )

    async def _stream(self, transport: _Transport | None) -> AsyncIterator[bytes]:
        """The shared frames, each as soon as it is built. A frame is skipped while the connection's
        write buffer is above its low-water mark (the client is behind: sending would
        only queue, and `send` would wait for the drain), and the connection is aborted
        once that has lasted `stall_seconds`: a client that does not read holds a slot,
        a buffer and a socket for nothing. Abort, not close: a close waits for the
        buffer to drain, which it never does."""
        loop = asyncio.get_running_loop()
        behind_since: float | None = None
        yield b"retry: %d\n\n" % RECONNECT_MILLISECONDS
        sequence = 0
        while (frame := await self.feed.after(sequence)) is not None:
            sequence = frame.sequence
            if transport is not None:
                if transport.is_closing():
                    return
                if _behind(transport):
                    behind_since = loop.time() if behind_since is None else behind_since
                    if loop.time() - behind_since >= self._stall_seconds:
                        self._metrics.refuse("rest", "event_stream_stalled")
                        self._warnings.warning(
                            "event_stream_stalled",
                            "closed a live page stream whose client did not read it for %ss",
                            self._stall_seconds,
                        )
                        transport.abort()
                        return
                    continue
                behind_since = None
            yield frame.event
        # The server is stopping. The stream's last chunk would wait for a client that is
        # behind to read down its buffer, and the server's stop with it: cut it instead.
        if transport is not None and _behind(transport):
            transport.abort()

    def _snapshot_bytes(self) -> bytes:
        return encode(self._view.snapshot())
