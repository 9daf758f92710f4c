"""How many REST connections the process's open-files limit leaves room for.

Every connection takes a descriptor, and so do the model sources (listing and watching
folders), loads (opening a version's files), gRPC and the logs: a process out of them fails
wherever it opens the next one ("Too many open files" stopped a local source from seeing
new versions). So the REST server's connection cap leaves a reserve.
"""

from __future__ import annotations

import logging

log = logging.getLogger("modelwatch.rest")

RESERVED_DESCRIPTORS = 256


def connection_cap(max_connections: int) -> int:
    """How many REST connections may be open: `max_connections`, or fewer when the open-files
    limit leaves no more room past `RESERVED_DESCRIPTORS`. Raises the soft limit to the hard
    one first (Linux keeps the soft one at 1,024 for select()'s sake: asyncio and gRPC use
    epoll, and watchdog selects on its own descriptor, opened when a source starts)."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = max_connections + RESERVED_DESCRIPTORS
        target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # macOS caps it below the hard limit
            pass
    room = max(1, soft - min(RESERVED_DESCRIPTORS, soft // 2))
    if room < max_connections:
        log.warning(
            "server.max_connections is %d, but the open-files limit (%d) leaves room for %d "
            "REST connections", max_connections, soft, room,
        )
        return room
    return max_connections
