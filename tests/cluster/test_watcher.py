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
