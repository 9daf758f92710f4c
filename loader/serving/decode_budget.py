"""The bytes that large requests being decoded and run may hold at once, for the whole
process (`server.max_decoding_bytes`), shared by REST and gRPC.

A large request reserves what decoding it will take before it decodes (a TensorProto its
decoded size, from its shapes; a JSON body a multiple of its size) and releases it once
answered. When the budget has no room the request waits a moment for others to finish,
then is refused (RESOURCE_EXHAUSTED: 429, "back off"); one that could never fit is
refused at once. Small requests, decoded on the event loop one at a time, take no part.

A reservation is a lock and two integer operations; a waiting request polls, which costs
nothing while the budget has room.
"""

from __future__ import annotations

import asyncio
import threading

from loader.base import ResourceExhausted

# How long a request waits for room before it is refused, and how often it looks.
WAIT_SECONDS = 1.0
_POLL_SECONDS = 0.01


class BudgetBusy(ResourceExhausted):
    """No room now: other requests hold the budget (429, try again)."""


class BudgetNeverFits(ResourceExhausted):
    """The request needs more than the whole budget (413 over REST)."""


class DecodeBudget:
    """`limit` bytes, reserved and released by requests (thread-safe, any event loop)."""

    def __init__(self, limit: int, wait_seconds: float = WAIT_SECONDS) -> None:
        self.limit = limit
        self._wait = wait_seconds
        self._lock = threading.Lock()
        self._used = 0

    @property
    def used(self) -> int:
        """Bytes reserved now."""
        return self._used

    def try_reserve(self, nbytes: int) -> bool:
        """Reserve `nbytes` if they fit now."""
        with self._lock:
            if self._used + nbytes > self.limit:
                return False
            self._used += nbytes
            return True

    def resize(self, held: int, nbytes: int) -> int:
        """Hold `nbytes` instead of `held` (at most `held`: once the request knows what its
        decoded tensors take); returns what is held now."""
        nbytes = min(held, nbytes)
        with self._lock:
            self._used -= held - nbytes
        return nbytes

    def release(self, nbytes: int) -> None:
        """Give back what a reservation held."""
        with self._lock:
            self._used -= nbytes

    async def reserve(self, nbytes: int, what: str) -> int:
        """Reserve `nbytes` for `what` ("this request's inputs"), waiting up to
        WAIT_SECONDS for room; returns `nbytes`. Raises `BudgetNeverFits` or `BudgetBusy`."""
        if nbytes > self.limit:
            raise BudgetNeverFits(
                f"{what} would take {nbytes} bytes to decode, more than "
                f"server.max_decoding_bytes ({self.limit})"
            )
        if self.try_reserve(nbytes):
            return nbytes
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        while loop.time() < deadline:
            await asyncio.sleep(_POLL_SECONDS)
            if self.try_reserve(nbytes):
                return nbytes
        raise BudgetBusy(
            f"the server is busy decoding other requests: {what} needs {nbytes} bytes of "
            f"server.max_decoding_bytes ({self.limit}), and {self._used} are taken; "
            "try again"
        )
