"""BatchScheduler: when batches close, how threads share queues, and how it stops."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from loader.base import FailedPrecondition, InvalidArgument
from loader.servables.batch_queue import QUEUE_FULL, BatchScheduler, QueueFull


class Recorder:
    """A process callback that records batches; it can hold the first one."""

    def __init__(self, hold_first: bool = False) -> None:
        self.batches: list[tuple[str, list[str]]] = []
        self.entered = threading.Event()
        self.opened = threading.Event()
        self._cond = threading.Condition()
        if not hold_first:
            self.opened.set()

    def __call__(self, key: str, tasks: list[str]) -> None:
        self.entered.set()
        assert self.opened.wait(10)
        with self._cond:
            self.batches.append((key, tasks))
            self._cond.notify_all()

    def wait_for(self, count: int) -> list[tuple[str, list[str]]]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.batches) >= count, 10)
            return list(self.batches)


@pytest.fixture
def make() -> Iterator:
    made: list[BatchScheduler] = []

    def build(process: Recorder, **options: int) -> BatchScheduler[str, str]:
        defaults = {
            "max_batch_size": 3, "batch_timeout_micros": 0, "max_enqueued_batches": 10, "num_batch_threads": 1
        }
        scheduler: BatchScheduler[str, str] = BatchScheduler(
            process, **{**defaults, **options}, name="q"
        )
        made.append(scheduler)
        return scheduler

    yield build
    for scheduler in made:
        scheduler.stop()
        scheduler.join(10)


def test_with_a_timeout_a_batch_closes_when_full(make) -> None:
    recorder = Recorder()
    scheduler = make(recorder, batch_timeout_micros=60_000_000)
    for task in "abc":
        scheduler.schedule("k", task, 1)
    assert recorder.wait_for(1) == [("k", ["a", "b", "c"])]


def test_with_a_timeout_a_partial_batch_runs_once_the_timeout_passes(make) -> None:
    recorder = Recorder()
    scheduler = make(recorder, batch_timeout_micros=1000)
    scheduler.schedule("k", "a", 1)
    assert recorder.wait_for(1) == [("k", ["a"])]


def test_stop_runs_a_partial_batch_still_waiting_for_its_timeout(make) -> None:
    recorder = Recorder()
    scheduler = make(recorder, batch_timeout_micros=60_000_000)
    scheduler.schedule("k", "a", 1)
    scheduler.schedule("k", "b", 1)
    scheduler.stop()
    scheduler.join(10)
    assert recorder.batches == [("k", ["a", "b"])]
    with pytest.raises(FailedPrecondition, match="batching for q has stopped"):
        scheduler.schedule("k", "c", 1)


def test_a_task_that_does_not_fit_starts_a_new_batch(make) -> None:
    recorder = Recorder(hold_first=True)
    scheduler = make(recorder)
    scheduler.schedule("k", "held", 1)
    assert recorder.entered.wait(10)
    for task, rows in [("a", 2), ("b", 2), ("c", 1)]:
        scheduler.schedule("k", task, rows)
    assert scheduler.queued == 3
    recorder.opened.set()
    assert recorder.wait_for(3) == [("k", ["held"]), ("k", ["a"]), ("k", ["b", "c"])]


def test_queues_are_served_round_robin(make) -> None:
    recorder = Recorder(hold_first=True)
    scheduler = make(recorder, max_batch_size=1)
    scheduler.schedule("hold", "held", 1)
    assert recorder.entered.wait(10)
    for key, task in [("a", "a1"), ("a", "a2"), ("b", "b1")]:
        scheduler.schedule(key, task, 1)
    recorder.opened.set()
    assert [tasks[0] for _, tasks in recorder.wait_for(4)] == ["held", "a1", "b1", "a2"]


def test_limits_use_tf_servings_messages(make) -> None:
    recorder = Recorder(hold_first=True)
    scheduler = make(recorder, max_batch_size=2, max_enqueued_batches=1)
    with pytest.raises(InvalidArgument, match="^Task size 3 is larger than maximum batch size 2$"):
        scheduler.schedule("k", "big", 3)
    scheduler.schedule("k", "held", 1)
    assert recorder.entered.wait(10)
    scheduler.schedule("k", "a", 2)  # fills the only batch the queue may hold
    with pytest.raises(QueueFull, match=f"^{QUEUE_FULL}$"):
        scheduler.schedule("k", "b", 1)
    recorder.opened.set()
    assert recorder.wait_for(2) == [("k", ["held"]), ("k", ["a"])]


def test_threads_start_with_the_first_task_and_survive_a_failing_batch(make) -> None:
    calls: list[str] = []
    done = threading.Event()

    def process(key: str, tasks: list[str]) -> None:
        calls.extend(tasks)
        if tasks == ["boom"]:
            raise RuntimeError("a bug")
        done.set()

    scheduler = make(process, num_batch_threads=1)
    assert not [t for t in threading.enumerate() if t.name.startswith("modelwatch-batch-q-")]
    scheduler.schedule("k", "boom", 1)
    scheduler.schedule("k2", "after", 1)
    assert done.wait(10)
    assert calls == ["boom", "after"]
