"""A request waiting in a batch queue: its inputs, its deadline, and how its caller hears
the answer (a callback on the batch thread, or a blocked thread woken).

A request whose deadline (`time.monotonic()` seconds) passed while it queued is answered
DEADLINE_EXCEEDED when its batch is taken, before the model runs (`expired`), with TF
Serving's words for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from loader.base import DeadlineExceeded

log = logging.getLogger(__name__)

# TF Serving's words for a task whose timeout passed in the batching queue (batching_session.cc).
QUEUE_TIMEOUT = "Run() timeout exceeded while waiting in batching queue"

Done = Callable[[dict[str, Any] | None, BaseException | None], None]


class BatchRequest:
    """One caller's run, waiting for its slice of a batch; `done` hears the answer once."""

    __slots__ = ("deadline", "done", "finished", "inputs", "rows", "shapes")

    def __init__(
        self, inputs: dict[str, np.ndarray], rows: int, shapes: tuple[Any, ...], done: Done,
        deadline: float | None,
    ) -> None:
        self.inputs = inputs
        self.rows = rows
        self.shapes = shapes  # requests merge only with requests of equal `shapes`
        self.done = done
        self.deadline = deadline  # None: no deadline
        self.finished = False

    def finish(
        self, result: dict[str, Any] | None = None, error: BaseException | None = None
    ) -> None:
        self.finished = True
        try:
            self.done(result, error)
        except Exception:  # the caller's hook (its event loop closed, say): not the batch's
            log.exception("a batched request's completion hook failed")


def expired(requests: Sequence[BatchRequest]) -> int:
    """Answer DEADLINE_EXCEEDED to the requests whose deadline has passed; how many."""
    now, count = time.monotonic(), 0
    for request in requests:
        if request.deadline is not None and request.deadline <= now:
            request.finish(error=DeadlineExceeded(QUEUE_TIMEOUT))
            count += 1
    return count


class Waiter:
    """`done` for a caller that blocks until its request is answered."""

    __slots__ = ("error", "event", "result")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def __call__(self, result: dict[str, Any] | None, error: BaseException | None) -> None:
        self.result, self.error = result, error
        self.event.set()

    def wait(self) -> dict[str, Any]:
        self.event.wait()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result
