"""Who may change the served models at runtime (gRPC HandleReloadConfigRequest).

With a token configured (`server.reload_token`, or the MODELWATCH_RELOAD_TOKEN environment
variable), a reload needs the metadata `authorization: Bearer <token>`. Without one, reloads
are allowed only while the server listens on loopback: a server exposed to a network
without a token cannot be reconfigured by whoever reaches its port.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable

from loader.base import Code, ServingError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ReloadGuard:
    """Checks a reload request's metadata against the configured token."""

    def __init__(self, token: str | None, host: str) -> None:
        self._token = token.encode() if token else None
        self._open = token is None and is_loopback(host)

    def check(self, metadata: Iterable[tuple[str, str | bytes]]) -> None:
        """Return if the caller may reload; raise UNAUTHENTICATED or PERMISSION_DENIED."""
        if self._token is None:
            if self._open:
                return
            raise ServingError(
                "reloading is disabled on a server that listens beyond loopback without a "
                "token: set server.reload_token (or MODELWATCH_RELOAD_TOKEN)",
                Code.PERMISSION_DENIED,
            )
        for key, value in metadata:
            if key.lower() != "authorization":
                continue
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, given = text.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token):
                return
        raise ServingError(
            "a reload needs the metadata 'authorization: Bearer <server.reload_token>'",
            Code.UNAUTHENTICATED,
        )
