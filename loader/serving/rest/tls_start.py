"""TLS on a REST connection, started by its protocol once the connection is accepted
(`loader.serving.rest.http_guard`), so that the handshake runs under the server's limits
(`max_connections`, `header_timeout_seconds`) from the accept on, and a failed one is seen.

asyncio's `start_tls` does the TLS, with the certificates in use when the connection opens
(`loader.serving.tls`). The server runs on asyncio's loop then (`loader.serving.rest.server`):
its transport stays paused from `connection_made` until `start_tls` reads, where uvloop's
starts reading once `connection_made` returns and would hand a ClientHello to the parser.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable


class TlsStart:
    """One connection's handshake. The TLS layer can decrypt a request in the same read
    that ends the handshake, before `start_tls` returns the transport to answer on: what
    the protocol receives until then is held (`hold`) and handed on with that transport."""

    def __init__(
        self,
        protocol: asyncio.Protocol,
        transport: asyncio.Transport,
        context: ssl.SSLContext,
        timeout_seconds: float,
        secured: Callable[[asyncio.Transport, list[bytes]], None],
        failed: Callable[[ssl.SSLError], None],
    ) -> None:
        transport.pause_reading()  # asyncio reads nothing before start_tls does
        self._held: list[bytes] | None = []
        self._task = asyncio.get_running_loop().create_task(
            self._start(protocol, transport, context, timeout_seconds, secured, failed)
        )

    def hold(self, data: bytes) -> bool:
        """Whether `data` arrived before the TLS transport did (then it is held)."""
        if self._held is None:
            return False
        self._held.append(bytes(data))
        return True

    async def _start(
        self,
        protocol: asyncio.Protocol,
        transport: asyncio.Transport,
        context: ssl.SSLContext,
        seconds: float,
        secured: Callable[[asyncio.Transport, list[bytes]], None],
        failed: Callable[[ssl.SSLError], None],
    ) -> None:
        lost: OSError | None = None
        try:
            tls = await asyncio.get_running_loop().start_tls(
                transport, protocol, context, server_side=True,
                ssl_handshake_timeout=seconds, ssl_shutdown_timeout=seconds,
            )
        except ssl.SSLError as error:
            failed(error)  # the TLS layer tells the protocol of the connection's loss
            return
        except OSError as error:
            tls, lost = None, error
        if tls is None:
            # Closed during the handshake (by the peer, a limit or the handshake's timeout;
            # `start_tls` then raises, or returns None): asyncio's TLS layer tells the
            # protocol nothing of it, and the server would count the connection forever.
            protocol.connection_lost(lost)
            return
        held, self._held = self._held or [], None
        secured(tls, held)
