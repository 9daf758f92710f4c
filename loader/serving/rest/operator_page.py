"""The operator page at `/modelwatch/ui`: a read-only, live view of every model.

The page and its assets (`ui/` beside this module, shipped as package data) load nothing
from elsewhere and run no inline code: a strict Content-Security-Policy allows only this
server's own script, style and icon. The script renders the snapshot of
`loader.serving.operator_view` with `textContent` only (model names and error texts come
from files and users), first from `/modelwatch/ui/snapshot`, then from the server-sent
events of `/modelwatch/ui/events`, one snapshot a second.

Streams end when the server stops (`close`), so a SIGTERM's drain never waits on an open
page. Only GET routes: nothing here can change the server.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from loader.serving.operator_view import OperatorView

PATH = "/modelwatch/ui"
STREAM_INTERVAL_SECONDS = 1.0
# The browser reconnects this long after a stream ends (a restart, a network hiccup).
RECONNECT_MILLISECONDS = 2000

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


class OperatorPage:
    """The page's routes over one view, and the live streams it has open."""

    def __init__(self, view: OperatorView, interval_seconds: float = STREAM_INTERVAL_SECONDS) -> None:
        self._view = view
        self._interval = interval_seconds
        ui = resources.files("loader.serving.rest") / "ui"
        self._assets = {
            suffix: (ui.joinpath(name).read_bytes(), media_type)
            for suffix, (name, media_type) in _ASSETS.items()
        }
        self._lock = threading.Lock()
        self._closed = False
        self._streams: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

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
        with self._lock:
            return len(self._streams)

    def close(self) -> None:
        """End every open stream now and refuse new ones (the server is stopping)."""
        with self._lock:
            self._closed = True
            streams = list(self._streams)
        for loop, wake in streams:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # that loop has closed: its stream is gone with it
                pass

    async def _asset(self, request: Request) -> Response:
        body, media_type = self._assets[request.url.path[len(PATH):]]
        return Response(body, media_type=media_type, headers=SECURITY_HEADERS)

    async def _snapshot(self, request: Request) -> Response:
        body = await run_in_threadpool(self._snapshot_bytes)
        return Response(body, media_type="application/json", headers=SECURITY_HEADERS)

    async def _events(self, request: Request) -> Response:
        headers = {**SECURITY_HEADERS, "x-accel-buffering": "no"}  # proxies: pass each event on
        return StreamingResponse(self._stream(), media_type="text/event-stream", headers=headers)

    async def _stream(self) -> AsyncIterator[bytes]:
        wake = asyncio.Event()
        entry = (asyncio.get_running_loop(), wake)
        with self._lock:
            if self._closed:
                return
            self._streams.add(entry)
        try:
            yield b"retry: %d\n\n" % RECONNECT_MILLISECONDS
            while not wake.is_set():
                body = await run_in_threadpool(self._snapshot_bytes)
                yield b"event: snapshot\ndata: " + body + b"\n\n"
                try:
                    await asyncio.wait_for(wake.wait(), self._interval)
                except TimeoutError:
                    pass
        finally:
            with self._lock:
                self._streams.discard(entry)

    def _snapshot_bytes(self) -> bytes:
        return encode(self._view.snapshot())
