"""The REST server: uvicorn running an ASGI app on its own thread, on a socket bound here.

Kept apart from `loader.serving.rest.app` (what the app answers) so that the transport's settings
(TCP_NODELAY, uvloop and httptools through uvicorn's defaults, graceful shutdown, the fast
path for a RestApi's prediction routes, the limits on connections and request heads) are in
one place.
"""

from __future__ import annotations

import functools
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

from loader.serving.metrics import Metrics
from loader.serving.rest.connection_guard import ConnectionGuard, HttpLimits
from loader.serving.rest.fast_path import FastPathProtocol
from loader.serving.rest.http_guard import GuardedProtocol
from loader.serving.rest.predictions import PredictionRoutes
from loader.serving.tls import ServerTls


def bind(host: str, port: int) -> socket.socket:
    """A bound socket, listening only once `RestServer.start` runs (TF Serving opens its
    ports after the initial models loaded); port 0 picks a free one (see getsockname)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY on accepted connections only
    # for sockets that say they are TCP, and without it Nagle's algorithm and delayed ACKs
    # hold every keep-alive response for ~40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class RestServer:
    """Runs an ASGI app with uvicorn on its own thread, on an already-bound socket.

    When `app` is a `RestApi`'s and `fast_path` is on, its prediction requests take the
    fast path (`loader.serving.rest.fast_path`); everything else is plain uvicorn. Both are
    held to `limits` (`loader.serving.rest.http_guard`), their refusals counted in `metrics`.
    """

    def __init__(
        self,
        app: Callable[..., Any],
        sock: socket.socket,
        *,
        drain_timeout_seconds: float = 30.0,
        fast_path: bool = True,
        keep_alive_seconds: int = 5,
        limits: HttpLimits | None = None,
        metrics: Metrics | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        self._sock = sock
        routes = getattr(getattr(app, "__self__", None), "predictions", None)
        guard = ConnectionGuard(limits or HttpLimits(), metrics, tls)
        http: Any = functools.partial(GuardedProtocol, guard=guard)
        self.fast_path = fast_path and isinstance(routes, PredictionRoutes)
        if fast_path and isinstance(routes, PredictionRoutes):
            http = functools.partial(FastPathProtocol, routes=routes, guard=guard)
        config = uvicorn.Config(
            app,
            http=http,
            ws="none",  # no WebSocket here: an Upgrade is answered as plain HTTP/1.1
            interface="asgi3",
            proxy_headers=False,  # nothing here reads the client address
            server_header=False,  # as TF Serving, which sends none
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(max(1, drain_timeout_seconds)),
            timeout_keep_alive=keep_alive_seconds,  # an idle connection is closed after this
            # With TLS, asyncio's loop: a connection's TLS starts in its protocol's
            # connection_made (http_guard), where asyncio's transport stays paused until
            # start_tls reads; uvloop starts reading after connection_made returns, so the
            # first bytes of a ClientHello could reach the HTTP parser.
            loop="auto" if tls is None else "asyncio",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="modelwatch-rest", daemon=True)

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def start(self) -> None:
        self._sock.listen(2048)
        self._thread.start()

    def wait_started(self, timeout: float) -> bool:
        """Wait until uvicorn accepts connections (it offers no event, so poll its flag)."""
        deadline = time.monotonic() + timeout
        tick = threading.Event()
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() >= deadline:
                break
            tick.wait(0.01)
        return bool(self._server.started)

    def stop(self) -> None:
        """Stop accepting; requests in flight are answered before the thread ends."""
        self._server.should_exit = True

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()

    def _run(self) -> None:
        self._server.run(sockets=[self._sock])
