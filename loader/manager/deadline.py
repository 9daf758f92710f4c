"""Waiting for a call that may never return, such as a model load that hangs.

Python cannot kill a thread, so the call runs on a thread of its own that the caller
stops waiting for at the deadline; a result that arrives after that is handed to a
`discard` callback (a late-loaded model is unloaded again) instead of being lost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from loader.base import Code, ServingError

T = TypeVar("T")


class _Outcome(Generic[T]):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.abandoned = False
        self.value: T | None = None
        self.error: BaseException | None = None


def call_with_deadline(
    call: Callable[[], T],
    seconds: float | None,
    *,
    what: str,
    discard: Callable[[T], None],
) -> T:
    """`call()`, or DEADLINE_EXCEEDED after `seconds` (None: wait as long as it takes)."""
    if seconds is None:
        return call()
    outcome: _Outcome[T] = _Outcome()

    def run() -> None:
        try:
            value = call()
        except BaseException as error:  # handed to the waiting thread, if it still waits
            outcome.error = error
        else:
            with outcome.lock:
                late = outcome.abandoned
                outcome.value = value
            if late:
                discard(value)
        finally:
            outcome.done.set()

    threading.Thread(target=run, name=f"modelwatch-deadline-{what}", daemon=True).start()
    if not outcome.done.wait(seconds):
        with outcome.lock:
            if not outcome.done.is_set():
                outcome.abandoned = True
                raise ServingError(
                    f"{what} did not finish within {seconds:g} seconds; gave up waiting",
                    Code.DEADLINE_EXCEEDED,
                )
    if outcome.error is not None:
        raise outcome.error
    return outcome.value  # type: ignore[return-value]
