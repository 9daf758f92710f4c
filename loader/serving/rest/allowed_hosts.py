"""Which `Host` a REST request may name: the defence against DNS rebinding.

A web page can make a browser send requests to a server on the browser's own machine by
pointing a name it controls at 127.0.0.1; the browser then treats the answers as the page's
own and lets it read them (the model list, the operator page's snapshot, the metrics). The
browser still names the attacker's host in `Host`, so a server bound to loopback answers
only requests that name a loopback host: `localhost`, any 127.x address or `[::1]`, with or
without a port (`server.allowed_hosts` replaces that list, `["*"]` lets any through).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

ANY = "*"
# Valid names are short; longer ones are never cached, so the cache stays small in bytes.
_CACHED_NAME_BYTES = 128
_MAX_CACHED = 256


def is_loopback(name: str) -> bool:
    """Whether a host name (no port, no brackets) is this machine's loopback."""
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(value: bytes) -> str | None:
    """The name in a `Host` header value without its port, lower case; None when the value
    is not a host[:port] (RFC 9110 7.2)."""
    if not value.isascii():
        return None
    text = value.decode("ascii").lower()
    if text.startswith("["):  # an IPv6 literal
        name, bracket, port = text[1:].partition("]")
        if not bracket or (port and not (port.startswith(":") and port[1:].isdigit())):
            return None
    else:
        name, _, port = text.partition(":")
        if port and not port.isdigit():
            return None
    return name or None


class AllowedHosts:
    """The `Host` values a server answers: loopback names, or the names it was given."""

    def __init__(self, names: Iterable[str] | None = None) -> None:
        """`names` None: the loopback names; otherwise exactly these (case-insensitive)."""
        self._names = None if names is None else frozenset(n.lower().strip("[]") for n in names)
        self._allowed: dict[bytes, bool] = {}  # header values seen allowed (values are few)

    def allows(self, value: bytes) -> bool:
        """Whether a request whose `Host` is `value` is answered."""
        if value in self._allowed:
            return True
        name = host_name(value)
        if name is None:
            return False
        allowed = is_loopback(name) if self._names is None else name in self._names
        if allowed and len(value) <= _CACHED_NAME_BYTES:
            if len(self._allowed) >= _MAX_CACHED:  # ports vary: bounded, as clients choose them
                self._allowed.clear()
            self._allowed[value] = True
        return allowed


def allowed_hosts(bound_host: str, configured: list[str] | None) -> AllowedHosts | None:
    """What `server.allowed_hosts` means for a server bound to `bound_host`; None: any."""
    if configured is None:
        return AllowedHosts() if is_loopback(bound_host) else None
    if ANY in configured:
        return None
    return AllowedHosts(configured)
