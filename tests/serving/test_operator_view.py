"""The operator page's data: transitions, storage health, rates and p99 from our own
metrics, queue depth, and the whole snapshot over a real manager."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

from loader.base import Code, VersionRef
from loader.config.schema import BatchingConfig
from loader.manager.manager import Manager, ModelSpec
from loader.servables.batching import BatchingServable
from loader.serving.dataplane import DataPlane
from loader.serving.metrics import Metrics
from loader.serving.operator_view import (
    OperatorView,
    PollHealth,
    RequestRates,
    TransitionLog,
    quantile,
)
from policies.selection import All
from policies.transition import availability_preserving
from tests.fakes import FakeLoader, refs
from tests.servables.test_batching import Caller, RecordingServable, wait_until


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def manager() -> Iterator[Manager]:
    loader = FakeLoader()
    loader.failing.add(3)
    made = Manager(loader, load_retries=0)
    made.set_models([
        ModelSpec("m", All(), availability_preserving, {"stable": 1, "canary": 2}),
        ModelSpec("idle", All(), availability_preserving),
    ])
    yield made
    made.stop()


def settle(manager: Manager, model: str, expected: dict[int, str]) -> None:
    assert manager.wait_until(
        lambda: {s.version: s.state for s in manager.status(model)} == expected, 10
    ), manager.status(model)


# --- transitions ---------------------------------------------------------------------


def test_the_transition_log_keeps_the_latest_moves_newest_first(manager):
    clock = Clock()
    log = TransitionLog(size=4, clock=clock)
    manager.add_observer(log.observe)
    manager.on_versions("m", refs(1))
    settle(manager, "m", {1: "AVAILABLE"})
    assert [(r.version, r.previous, r.state) for r in log.recent()] == [
        (1, "LOADING", "AVAILABLE"), (1, "NEW", "LOADING"),
    ]
    assert all(r.time == 1000.0 and r.error is None for r in log.recent())
    clock.now = 1005.0
    manager.on_versions("m", refs(1, 2, 3))
    settle(manager, "m", {1: "AVAILABLE", 2: "AVAILABLE", 3: "END"})
    recent = log.recent()
    assert len(recent) == 4  # bounded: the oldest moves are gone
    failed = next(r for r in recent if r.state == "ERROR")
    assert failed.version == 3 and failed.previous == "LOADING" and failed.time == 1005.0
    assert "version 3 is corrupt" in (failed.error or "")


# --- storage health ------------------------------------------------------------------


def test_poll_health_counts_failures_in_a_row_and_remembers_the_last_good_listing():
    clock = Clock()
    health = PollHealth(clock)
    assert health.of("m") is None
    health.observe("m", 0.01, True)
    clock.now = 1001.0
    health.observe("m", 0.5, False)
    clock.now = 1002.0
    health.observe("m", 0.6, False)
    record = health.of("m")
    assert record is not None
    assert (record.last_poll, record.last_ok, record.seconds) == (1002.0, 1000.0, 0.6)
    assert (record.failures_in_row, record.failures_total, record.polls_total) == (2, 2, 3)
    clock.now = 1003.0
    health.observe("m", 0.02, True)
    record = health.of("m")
    assert record is not None and record.failures_in_row == 0 and record.failures_total == 2
    assert record.last_ok == 1003.0
    health.observe("other", 0.1, False)
    other = health.of("other")
    assert other is not None and other.last_ok is None and other.failures_in_row == 1


# --- rates and p99 ---------------------------------------------------------------------


INF = float("inf")


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.99, [], None),
        (0.99, [(0.1, 0.0), (INF, 0.0)], None),
        # 9.9 of 10 observations: 99% of the way through the (0.1, 0.2] bucket
        (0.99, [(0.1, 0.0), (0.2, 10.0), (INF, 10.0)], 0.199),
        (0.5, [(0.1, 0.0), (0.2, 10.0), (INF, 10.0)], 0.15),
        # half in the first bucket: interpolated from 0
        (0.25, [(0.1, 5.0), (0.2, 10.0), (INF, 10.0)], 0.05),
        # past the last finite bound, the bound is all that is known (Prometheus does the same)
        (0.99, [(0.1, 1.0), (0.2, 2.0), (INF, 100.0)], 0.2),
    ],
)
def test_quantiles_are_estimated_as_prometheus_does(q, buckets, expected):
    found = quantile(q, buckets)
    assert found == (pytest.approx(expected) if expected is not None else None)


def answer(metrics: Metrics, model: str, count: int, seconds: float, code: Code = Code.OK) -> None:
    for _ in range(count):
        metrics.stats.started("rest")
        metrics.answered(model, "predict", "rest", code, seconds)


def test_rates_and_p99_come_from_the_metrics_over_the_window():
    metrics = Metrics()
    clock = Clock(0.0)
    rates = RequestRates(metrics, window_seconds=30.0, clock=clock)
    answer(metrics, "m", 50, 0.0003)  # before the first sample: not in any window
    assert rates.sample() == {}  # one sample: nothing to compare with yet
    clock.now = 2.0
    answer(metrics, "m", 8, 0.003)
    answer(metrics, "m", 2, 0.003, Code.INVALID_ARGUMENT)
    answer(metrics, "", 10, 0.003)  # unknown model names are not a model
    found = rates.sample()
    assert set(found) == {"m"}
    assert found["m"].requests_per_second == pytest.approx(5.0)
    assert found["m"].errors_per_second == pytest.approx(1.0)
    p99 = found["m"].p99_seconds
    assert p99 is not None and 0.0025 < p99 <= 0.005  # in the 3 ms observations' bucket

    # Once the window has moved past the burst, the model is idle again.
    clock.now = 40.0
    rates.sample()
    clock.now = 75.0
    idle = rates.sample()["m"]
    assert idle.requests_per_second == 0.0 and idle.p99_seconds is None

    # After a long pause (nobody had the page open), old samples are no base for rates.
    clock.now = 200.0
    answer(metrics, "m", 10, 0.003)
    assert rates.sample() == {}
    clock.now = 201.0
    assert rates.sample()["m"].requests_per_second == 0.0


# --- the snapshot ----------------------------------------------------------------------


def test_the_snapshot_shows_models_versions_labels_errors_and_storage(manager):
    metrics = Metrics()
    clock = Clock()
    view = OperatorView(
        DataPlane(manager), metrics, base_paths=lambda: {"m": "/models/m"},
        transitions=TransitionLog(clock=clock), polls=PollHealth(clock), clock=clock,
    )
    manager.add_observer(view.transitions.observe)
    manager.on_versions("m", refs(1, 2, 3))
    settle(manager, "m", {1: "AVAILABLE", 2: "AVAILABLE", 3: "END"})
    view.polls.observe("m", 0.004, True)
    clock.now = 1002.5
    snapshot = view.snapshot()
    json.dumps(snapshot)  # what the page receives is plain JSON
    assert snapshot["time"] == 1002.5 and snapshot["started"] == 1000.0
    idle, m = snapshot["models"]  # by name
    assert (idle["name"], idle["versions"], idle["base_path"], idle["source"]) == (
        "idle", [], None, None,
    )
    assert m["name"] == "m" and m["base_path"] == "/models/m"
    assert m["labels"] == {"stable": 1, "canary": 2}
    assert [(v["version"], v["state"], v["labels"]) for v in m["versions"]] == [
        (3, "END", []), (2, "AVAILABLE", ["canary"]), (1, "AVAILABLE", ["stable"]),
    ]
    assert m["versions"][0]["error_code"] == "UNKNOWN"
    assert "version 3 is corrupt" in m["versions"][0]["error_message"]
    assert all(v["since"] == 1000.0 for v in m["versions"])
    assert m["source"]["failures_in_row"] == 0 and m["source"]["last_poll"] == 1000.0
    assert m["queued"] is None  # the fake does not batch
    assert {(t["version"], t["state"]) for t in snapshot["transitions"]} >= {
        (1, "AVAILABLE"), (2, "AVAILABLE"), (3, "ERROR"),
    }
    assert snapshot["kept_transitions"] == view.transitions.size
    # memory: this process's resident size (a real figure), no limit here, and each
    # version's figure as its status has it
    assert snapshot["memory"]["resident_bytes"] > 1 << 20
    assert snapshot["memory"]["limit_bytes"] is None
    assert [v["memory_bytes"] for v in m["versions"]] == [
        s.memory_bytes for s in manager.status("m")
    ]


def test_the_snapshot_counts_requests_waiting_for_a_batch():
    fake = RecordingServable()
    made: list[BatchingServable] = []

    def load(model: str, version: int, ref: VersionRef) -> BatchingServable:
        made.append(BatchingServable(fake, BatchingConfig(max_batch_size=1, num_batch_threads=1)))
        return made[-1]

    manager = Manager(load, load_retries=0)
    try:
        manager.set_models([ModelSpec("m", All(), availability_preserving)])
        manager.on_versions("m", refs(1))
        settle(manager, "m", {1: "AVAILABLE"})
        view = OperatorView(DataPlane(manager), Metrics())
        assert view.snapshot()["models"][0]["queued"] == 0
        gate = fake.hold_next_call()
        x = np.ones((1, 1), np.float32)
        callers = [Caller(made[0], "echo", x)]
        assert gate.entered.wait(10)
        callers += [Caller(made[0], "echo", x), Caller(made[0], "echo", x)]
        wait_until(lambda: view.snapshot()["models"][0]["queued"] == 2)
        gate.opened.set()
        for caller in callers:
            caller.answer()
        assert view.snapshot()["models"][0]["queued"] == 0
    finally:
        manager.stop()
