"""The watcher's side of a failed load: a replica that reports one makes the sources look
at that version on every poll (issue 21), once per failure, with the failed content's
fingerprint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from loader.base import VersionRef
from loader.cluster.messages import Endpoint, ModelState, Report
from loader.cluster.rollout import Bounds
from loader.cluster.watcher import Watcher
from loader.config.schema import parse_config
from loader.sources.base import ModelLocation
from tests.daemon_process import wait_until


class RecordingSource:
    """A source that reports nothing and records what it is asked to re-check."""

    def __init__(self) -> None:
        self.rechecks: list[tuple[str, int, str]] = []

    def recheck(self, model: str, version: int, fingerprint: str) -> None:
        self.rechecks.append((model, version, fingerprint))

    def set_models(self, models: Sequence[ModelLocation]) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def join(self, timeout: float | None = None) -> None: ...


def report(sequence: int, failed: dict[int, str]) -> Report:
    state = ModelState(available=frozenset({1}), failed=failed, routed=frozenset({1}), held=None)
    return Report("replica-a", "node", sequence, True, {"m": state})


def test_a_replicas_failed_load_makes_the_sources_recheck_that_version_once(tmp_path: Path) -> None:
    config = parse_config({"models": [{"name": "m", "base_path": str(tmp_path / "m")}]})
    watcher = Watcher(config)
    source = RecordingSource()
    watcher._sources = [source]  # the watcher's own sources are never started here
    watcher.on_versions("m", {
        1: VersionRef(str(tmp_path / "m/1"), "fp-1"),
        2: VersionRef(str(tmp_path / "m/2"), "fp-2"),
    })
    watcher.report(report(1, {}))
    assert source.rechecks == []
    watcher.report(report(2, {2: "not a valid checkpoint"}))
    assert source.rechecks == [("m", 2, "fp-2")]
    watcher.report(report(3, {2: "not a valid checkpoint"}))  # the same failure, reported again
    watcher.report(report(2, {}))  # an old report is ignored
    assert source.rechecks == [("m", 2, "fp-2")]


def test_the_balancers_backends_are_the_live_serving_replicas_and_a_change_wakes_its_poll(
    tmp_path: Path,
) -> None:
    import asyncio

    config = parse_config({"models": [{"name": "m", "base_path": str(tmp_path / "m")}]})
    watcher = Watcher(config, Bounds(settle_seconds=0))
    a, b = Endpoint("10.0.0.1", 1, 2), Endpoint("10.0.0.2", 3, 4)
    state = ModelState(available=frozenset({1}), failed={}, routed=frozenset({1}), held=None)

    async def scenario() -> None:
        watcher.report(Report("a", "node", 1, True, {"m": state}, endpoint=a))
        watcher.report(Report("b", "node", 1, False, {"m": state}, endpoint=b))  # not serving
        assert await watcher.backends({}, 5) == {"a": a}
        waiting = asyncio.create_task(watcher.backends({"a": a}, 30))
        await asyncio.sleep(0.1)
        assert not waiting.done()  # nothing changed: a long poll
        watcher.report(Report("b", "node", 2, True, {"m": state}, endpoint=b))
        assert await asyncio.wait_for(waiting, 10) == {"a": a, "b": b}

    asyncio.run(scenario())


def test_a_restarted_watcher_hears_every_replica_before_it_decides_so_a_flip_cut_short_goes_forward(
    tmp_path: Path,
) -> None:
    """The watcher died mid-flip: replica a still holds version 1, b has flipped to 2 and
    answered from it. Its successor must not take over from a alone (and route 1 again, on
    b too): it waits for every replica's report, then routes 2 everywhere."""
    import asyncio

    config = parse_config({"models": [{"name": "m", "base_path": str(tmp_path / "m")}]})
    watcher = Watcher(config, Bounds(settle_seconds=0.5))
    watcher._sources = []  # storage's listing is given below
    watcher.on_versions("m", {v: VersionRef(str(tmp_path / f"m/{v}"), f"fp-{v}") for v in (1, 2)})
    both = frozenset({1, 2})
    a, b = Endpoint("10.0.0.1", 1, 2), Endpoint("10.0.0.2", 3, 4)
    watcher.report(Report("a", "node", 1, True, {"m": ModelState(both, {}, frozenset({1}), 7)},
                          ("old-watcher", 9), a))
    assert watcher.orders.models == {}, "decided on one replica's word"
    assert asyncio.run(watcher.backends({}, 0.1)) == {}
    watcher.report(Report("b", "node", 1, True, {"m": ModelState(both, {}, frozenset({2}), None)},
                          ("old-watcher", 10), b))
    watcher.start()
    try:
        wait_until(lambda: "m" in watcher.orders.models, 30, "the watcher's first orders")
        order = watcher.orders.models["m"]
        assert (order.routed, order.hold) == (frozenset({2}), None)
        assert asyncio.run(watcher.backends({}, 5)) == {"a": a, "b": b}
    finally:
        watcher.stop()
        watcher.join(10)
