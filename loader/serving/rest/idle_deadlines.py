"""Idle deadlines for many tasks of one event loop, for the price of a dict entry each.

`asyncio.timeout` schedules and cancels a timer each time it is used, which on the REST
hot path costs more than parsing the request. A request body needs its deadline only when
the client stalls, so the REST server keeps one table of the tasks reading a body and one
timer that looks at the table every `resolution` seconds while the table is not empty,
cancelling each task whose deadline has passed. A deadline fires up to `resolution` late.
"""

from __future__ import annotations

import asyncio


class IdleDeadlines:
    """Cancels a watched task that goes `seconds` without calling `watch` again.

    All methods are called on the event loop's thread. A task is watched only around
    the awaits that may stall (reading a body); `expired` tells its `except
    CancelledError` whether the cancellation was the deadline's.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.resolution = min(1.0, seconds / 4)
        self._deadlines: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def watch(self, task: asyncio.Task[object], loop: asyncio.AbstractEventLoop) -> None:
        """`task` must make progress within `seconds` from now."""
        self._deadlines[task] = loop.time() + self.seconds
        if self._timer is None or self._timer_loop is not loop:  # a new loop: a new timer
            self._timer_loop = loop
            self._timer = loop.call_later(self.resolution, self._sweep, loop)

    def forget(self, task: asyncio.Task[object]) -> None:
        """`task` no longer waits on anything that may stall."""
        self._deadlines.pop(task, None)
        self._expired.discard(task)

    def expired(self, task: asyncio.Task[object]) -> bool:
        """Whether the deadline cancelled `task` (asked once, from its handler)."""
        if task in self._expired:
            self._expired.discard(task)
            task.uncancel()
            return True
        return False

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._timer_loop:
            return  # a timer of a loop left behind
        now = loop.time()
        for task, deadline in list(self._deadlines.items()):
            if task.get_loop() is not loop:
                continue
            if now >= deadline:
                del self._deadlines[task]
                if not task.done():
                    self._expired.add(task)
                    task.cancel()
        self._timer = (
            loop.call_later(self.resolution, self._sweep, loop) if self._deadlines else None
        )
