"""The bytes that large requests being decoded and run may hold at once, for the whole
process (`server.max_decoding_bytes`), shared by REST and gRPC.

A large request reserves what decoding it will take before it decodes (a TensorProto its
decoded size, from its shapes; a JSON body a multiple of its size) and releases it once
answered. When the budget has no room the request waits a moment for others to finish,
then is refused (RESOURCE_EXHAUSTED: 429, "back off"); one that could never fit is
refused at once. Small requests, decoded on the event loop one at a time, take no part.

A reservation is a lock and two integer operations. Requests that wait queue in order
and are woken by a release, on their own event loop, so waiting costs nothing.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import NamedTuple

from loader.base import ResourceExhausted

# How long a request waits for room before it is refused.
WAIT_SECONDS = 1.0


class BudgetBusy(ResourceExhausted):
    """No room now: other requests hold the budget (429, try again)."""


class BudgetNeverFits(ResourceExhausted):
    """The request needs more than the whole budget (413 over REST)."""


class DecodeBudget:
    """`limit` bytes, reserved and released by requests (thread-safe, any event loop).

    A release hands the room to waiting requests from the front of the queue; once one
    waits, new requests queue behind it (no overtaking by smaller ones).
    """

    def __init__(self, limit: int, wait_seconds: float = WAIT_SECONDS) -> None:
        self.limit = limit
        self._wait = wait_seconds
        self._lock = threading.Lock()
        self._used = 0
        self._waiting: deque[_Waiter] = deque()

    @property
    def used(self) -> int:
        """Bytes reserved now."""
        return self._used

    def try_reserve(self, nbytes: int) -> bool:
        """Reserve `nbytes` if they fit now (and nobody waits before)."""
        with self._lock:
            if self._waiting or self._used + nbytes > self.limit:
                return False
            self._used += nbytes
            return True

    def resize(self, held: int, nbytes: int) -> int:
        """Hold `nbytes` instead of `held` (at most `held`: once the request knows what its
        decoded tensors take); returns what is held now."""
        nbytes = min(held, nbytes)
        self.release(held - nbytes)
        return nbytes

    def release(self, nbytes: int) -> None:
        """Give back what a reservation held; waiting requests that now fit get it."""
        with self._lock:
            self._used -= nbytes
        self._grant_waiting()

    def _grant_waiting(self) -> None:
        with self._lock:
            granted = []
            while self._waiting and self._used + self._waiting[0].nbytes <= self.limit:
                waiter = self._waiting.popleft()
                self._used += waiter.nbytes
                granted.append(waiter)
        for waiter in granted:
            try:
                waiter.loop.call_soon_threadsafe(self._grant, waiter)
            except RuntimeError:  # its loop closed: nobody takes the room
                self.release(waiter.nbytes)

    def _grant(self, waiter: _Waiter) -> None:
        if waiter.future.done():  # it gave up meanwhile: the room goes back
            self.release(waiter.nbytes)
        else:
            waiter.future.set_result(None)

    async def reserve(self, nbytes: int, what: str) -> int:
        """Reserve `nbytes` for `what` ("this request's inputs"), waiting up to
        WAIT_SECONDS for room; returns `nbytes`. Raises `BudgetNeverFits` or `BudgetBusy`."""
        if nbytes > self.limit:
            raise BudgetNeverFits(
                f"{what} would take {nbytes} bytes to decode, more than "
                f"server.max_decoding_bytes ({self.limit})"
            )
        loop = asyncio.get_running_loop()
        waiter = _Waiter(nbytes, loop, loop.create_future())
        with self._lock:
            if not self._waiting and self._used + nbytes <= self.limit:
                self._used += nbytes
                return nbytes
            self._waiting.append(waiter)
        try:
            await asyncio.wait_for(waiter.future, self._wait)
        except TimeoutError:
            self._give_up(waiter)
            raise BudgetBusy(
                f"the server is busy decoding other requests: {what} needs {nbytes} bytes "
                f"of server.max_decoding_bytes ({self.limit}), and {self._used} are taken; "
                "try again"
            ) from None
        except asyncio.CancelledError:
            self._give_up(waiter)
            raise
        return nbytes

    def _give_up(self, waiter: _Waiter) -> None:
        """A waiter stops waiting: out of the queue, or, if the room was granted to it as
        it gave up, the room back (`_grant` does that for a grant still on its way)."""
        with self._lock:
            queued = waiter in self._waiting
            if queued:
                self._waiting.remove(waiter)
        if queued:
            self._grant_waiting()  # those behind it may fit now
        elif waiter.future.done() and not waiter.future.cancelled():
            self.release(waiter.nbytes)


class _Waiter(NamedTuple):
    nbytes: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
