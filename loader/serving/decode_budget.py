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
from collections.abc import Callable
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

    def __init__(
        self, limit: int, wait_seconds: float = WAIT_SECONDS,
        while_used: Callable[[bool], None] | None = None,
    ) -> None:
        """`while_used(True)` is called when the first bytes are reserved, and
        `while_used(False)` when the last are released (the process may run differently
        while large requests decode: loader/servables/runtime.py's `hand_over_sooner`)."""
        self.limit = limit
        self._wait = wait_seconds
        self._while_used = while_used
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
            self._take(nbytes)
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
            was = self._used
            self._used -= nbytes
            granted = self._fitting()  # handed on at once: the budget never idles between
            self._tell(was)
        self._wake(granted)

    def _grant_waiting(self) -> None:
        with self._lock:
            was = self._used
            granted = self._fitting()
            self._tell(was)
        self._wake(granted)

    def _fitting(self) -> list[_Waiter]:
        """The waiters at the front that fit now, their room taken (under the lock)."""
        granted = []
        while self._waiting and self._used + self._waiting[0].nbytes <= self.limit:
            waiter = self._waiting.popleft()
            self._used += waiter.nbytes
            granted.append(waiter)
        return granted

    def _wake(self, granted: list[_Waiter]) -> None:
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
                self._take(nbytes)
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

    def _take(self, nbytes: int) -> None:
        """Add `nbytes` to what is used (under the lock)."""
        was = self._used
        self._used += nbytes
        self._tell(was)

    def _tell(self, was: int) -> None:
        """`while_used` when the budget went from idle to used or back (under the lock)."""
        if self._while_used is not None and (was == 0) != (self._used == 0):
            self._while_used(self._used > 0)

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
