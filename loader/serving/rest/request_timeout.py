"""REST's request timeout (TF Serving's `--rest_api_timeout_in_ms`, modelwatch's
`server.request_timeout_seconds`): a prediction whose model has not answered within the
timeout of being handed the request is answered 504 with TF Serving's words, those of its
session for a run past `RunOptions.timeout_in_ms`. As in TF Serving, the time counts from
when the model is asked (waiting in a batch queue or for a worker thread included), not
while the body is parsed or an on-demand model loads.

Every call has the same timeout and calls start in time order, so they expire in the
order they started: each event loop keeps its calls in a dict (which keeps insertion
order) and one timer for the first of them. Starting and finishing a call costs a dict
store and a pop, never a timer of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Protocol

log = logging.getLogger("modelwatch.rest")

# TF Serving's words (DirectSession::WaitForNotification), answered with 504.
TIMED_OUT = "Timed out waiting for notification"


class Timed(Protocol):
    """A call that can be timed: `expire()` answers it 504 (on the event loop)."""

    def expire(self) -> None: ...


class _Calls:
    """One event loop's calls in flight, oldest first, and the timer for the oldest."""

    __slots__ = ("deadlines", "loop", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.deadlines: dict[Timed, float] = {}
        self.timer: asyncio.TimerHandle | None = None

    def sweep(self) -> None:
        """Expire the calls whose deadline has passed; wait for the next one."""
        self.timer = None
        now = time.monotonic()
        deadlines = self.deadlines
        while deadlines:
            call, deadline = next(iter(deadlines.items()))
            if deadline > now:
                self.timer = self.loop.call_later(deadline - now, self.sweep)
                return
            del deadlines[call]
            try:
                call.expire()
            except Exception:  # a bug in one answer must not leave the others untimed
                log.exception("answering a request that timed out failed")


class RequestTimeout:
    """Times calls on their event loop; `seconds` None: no timeout (nothing is timed)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Calls] = (
            weakref.WeakKeyDictionary()
        )
        self._last: _Calls | None = None  # the one loop a server has, without a lookup

    def start(self, call: Timed) -> float | None:
        """Time `call` from now (on the event loop); its deadline in `time.monotonic()`
        seconds, or None when there is no timeout."""
        seconds = self.seconds
        if seconds is None:
            return None
        calls = self._calls()
        deadline = time.monotonic() + seconds
        calls.deadlines[call] = deadline
        if calls.timer is None:
            calls.timer = calls.loop.call_later(seconds, calls.sweep)
        return deadline

    def finish(self, call: Timed) -> None:
        """`call` is answered (or gone): stop timing it. On the event loop."""
        last = self._last
        if last is None or last.deadlines.pop(call, None) is None:  # another loop's call
            calls = self._loops.get(asyncio.get_running_loop())
            if calls is not None:
                calls.deadlines.pop(call, None)

    def _calls(self) -> _Calls:
        loop = asyncio.get_running_loop()
        calls = self._last
        if calls is None or calls.loop is not loop:
            calls = self._loops.get(loop)
            if calls is None:
                calls = self._loops[loop] = _Calls(loop)
            self._last = calls
        return calls
