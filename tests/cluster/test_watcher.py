"""The watcher's side of a failed load: a replica that reports one makes the sources look
at that version on every poll (issue 21), once per failure, with the failed content's
fingerprint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from loader.base import VersionRef
from loader.cluster.messages import ModelState, Report
from loader.cluster.watcher import Watcher
from loader.config.schema import parse_config
from loader.sources.base import ModelLocation


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

    from loader.cluster.messages import Endpoint

    config = parse_config({"models": [{"name": "m", "base_path": str(tmp_path / "m")}]})
    watcher = Watcher(config)
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
