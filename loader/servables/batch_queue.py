"""Batch scheduling: TF Serving's SharedBatchScheduler, one queue per kind of task.

Tasks of one kind (one *key*) go to their own queue and are only ever batched with each
other. A queue is a line of batches: the last one is *open* and takes new tasks, the
others are *closed* and wait for a thread. A task that does not fit in the open batch
closes it and starts a new one, unless the queue already holds `max_enqueued_batches`
batches, in which case it is turned away. The open batch becomes schedulable when it is
full, when `batch_timeout_micros` has passed since its first task, or at once when the
timeout is 0, so an idle thread takes whatever has queued and a busy server gets big
batches with no added latency. `num_batch_threads` threads serve every queue of one
scheduler round-robin, as TF Serving's shared pool does.

This module knows nothing of tensors: `process(key, tasks)` does the work, and must
answer every task it is given. It holds one `Condition` per scheduler (per model), never
a lock shared with another model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from loader.base import FailedPrecondition, InvalidArgument, ResourceExhausted

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"


class QueueFull(ResourceExhausted):
    """A queue already holds `max_enqueued_batches` batches and the task fits in none.

    TF Serving's scheduler answers UNAVAILABLE (503) here; modelwatch answers
    RESOURCE_EXHAUSTED (429), which says "back off" to clients and load balancers.
    """


class _Queue(Generic[T]):
    """One key's batches: `closed` wait for a thread, `open` takes new tasks."""

    __slots__ = ("closed", "open", "open_rows", "open_since")

    def __init__(self) -> None:
        self.closed: deque[list[T]] = deque()
        self.open: list[T] = []
        self.open_rows = 0
        self.open_since = 0.0

    def close_open(self) -> None:
        self.closed.append(self.open)
        self.open, self.open_rows = [], 0


class BatchScheduler(Generic[K, T]):
    """Forms batches of tasks per key and runs `process(key, tasks)` on its threads.

    Threads start with the first task and are named `modelwatch-batch-<name>-N`. `stop()`
    refuses new tasks and lets the threads run what is queued, then exit; `join()` waits
    for them.
    """

    def __init__(
        self,
        process: Callable[[K, list[T]], None],
        *,
        max_batch_size: int,
        batch_timeout_micros: int,
        max_enqueued_batches: int,
        num_batch_threads: int,
        name: str = "",
    ) -> None:
        self._process = process
        self._max_rows = max_batch_size
        self._timeout = batch_timeout_micros / 1e6
        self._max_batches = max_enqueued_batches
        self._num_threads = num_batch_threads
        self.name = name
        self._cond = threading.Condition()
        self._queues: dict[K, _Queue[T]] = {}
        self._turn = 0  # where the round-robin over queues starts next
        self._queued = 0  # tasks waiting in some batch, not yet taken by a thread
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting in `_cond`
        self._stopped = False

    @property
    def stopped(self) -> bool:
        """True once `stop()` was called: no new task is accepted."""
        return self._stopped

    @property
    def queued(self) -> int:
        """Tasks waiting in a batch that no thread has taken yet."""
        with self._cond:
            return self._queued

    def schedule(self, key: K, task: T, rows: int) -> None:
        """Queue `task` (of `rows` rows) with the others of `key`.

        Raises InvalidArgument when `rows` exceeds max_batch_size, QueueFull when the
        queue has no room left, and FailedPrecondition after `stop()`.
        """
        if rows > self._max_rows:
            raise InvalidArgument(
                f"Task size {rows} is larger than maximum batch size {self._max_rows}"
            )
        with self._cond:
            if self._stopped:
                raise FailedPrecondition(f"batching for {self.name or 'this model'} has stopped")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue()
            # Threads to wake: one per batch this task makes ready (a closed one, a full
            # one) or starts (even when nothing is schedulable yet, a waiting thread must
            # learn the new open batch's deadline). A task that joins an open batch wakes
            # nobody: a thread is already on its way to that batch, or busy and will look
            # again when it is done; waking another one for it would cost a switch of
            # threads and the interpreter lock per request, for a thread finding nothing.
            wake = 0
            if queue.open_rows + rows > self._max_rows:
                # The open batch counts: TF Serving's queue always holds it.
                if len(queue.closed) + 1 >= self._max_batches:
                    raise QueueFull(QUEUE_FULL)
                queue.close_open()
                wake += 1
            if not queue.open:
                queue.open_since = time.monotonic()
                wake += 1
            queue.open.append(task)
            queue.open_rows += rows
            if queue.open_rows >= self._max_rows:
                wake += 1
            self._queued += 1
            if not self._threads:
                self._start_threads()
            if wake and self._idle:
                self._cond.notify(wake)

    def stop(self) -> None:
        """Refuse new tasks; queued ones still run, then the threads exit. Idempotent."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the threads to exit (after `stop()`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _start_threads(self) -> None:
        prefix = f"modelwatch-batch-{self.name}-" if self.name else "modelwatch-batch-"
        for n in range(1, self._num_threads + 1):
            thread = threading.Thread(target=self._work, name=f"{prefix}{n}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    found = self._take(now)
                    if found is not None:
                        break
                    if self._stopped and self._queued == 0:
                        return
                    self._idle += 1
                    try:
                        self._cond.wait(self._until_next_deadline(now))
                    finally:
                        self._idle -= 1
            key, tasks = found
            try:
                self._process(key, tasks)
            except Exception:  # a bug in `process`; the thread must live on for the others
                log.exception("batch of %d tasks for %r failed in %s", len(tasks), key, self.name)

    def _take(self, now: float) -> tuple[K, list[T]] | None:
        """The next schedulable batch, looking at the queues round-robin from `_turn`."""
        keys = list(self._queues)
        for i in range(len(keys)):
            key = keys[(self._turn + i) % len(keys)]
            queue = self._queues[key]
            if (
                not queue.closed
                and queue.open
                and (
                    self._stopped
                    or queue.open_rows >= self._max_rows
                    or now >= queue.open_since + self._timeout
                )
            ):
                queue.close_open()
            if queue.closed:
                self._turn = (self._turn + i + 1) % len(keys)
                tasks = queue.closed.popleft()
                self._queued -= len(tasks)
                return key, tasks
        return None

    def _until_next_deadline(self, now: float) -> float | None:
        """Seconds until some open batch times out; None when no batch is waiting."""
        deadlines = [q.open_since + self._timeout for q in self._queues.values() if q.open]
        return max(0.0, min(deadlines) - now) if deadlines else None
