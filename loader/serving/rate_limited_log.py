"""Warnings about what clients do, at most one line per kind per interval.

A hostile or broken client can make the same mistake thousands of times a second; one log
line each would fill the disk and cost the event loop more than the refusal. Each kind of
warning (a short key such as `"header_too_large"`) is written at most once per `interval`
seconds; the next line written for that kind says how many were left out since.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class RateLimitedLog:
    """`warning(kind, message, *args)`, written at most once per `interval` per kind."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._next_at: dict[str, float] = {}  # kinds are chosen by the code, never the client
        self._left_out: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object) -> bool:
        """Log `message % args` unless `kind` was logged less than `interval` ago; whether
        it was written."""
        now = self._clock()
        with self._lock:
            if now < self._next_at.get(kind, 0.0):
                self._left_out[kind] = self._left_out.get(kind, 0) + 1
                return False
            self._next_at[kind] = now + self._interval
            left_out = self._left_out.pop(kind, 0)
        if left_out:
            message += f" ({left_out} more like it in the last {self._interval:g} s not logged)"
        self._logger.warning(message, *args)
        return True
