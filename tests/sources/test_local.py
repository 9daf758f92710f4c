"""The local source with real folders and real watchdog events."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from loader.base import VersionRef
from loader.sources.base import ModelLocation
from loader.sources.local import LocalSource
from tests.savedmodels import upload_order, write_sharded_model

WAIT = 10.0


class Reports:
    """Records what a source reports and lets a test wait for a condition on it."""

    def __init__(self) -> None:
        self.latest: dict[str, dict[int, VersionRef]] = {}
        self.history: list[tuple[str, set[int]]] = []
        self.count = 0
        self._cond = threading.Condition()

    def __call__(self, model: str, versions: Mapping[int, VersionRef]) -> None:
        with self._cond:
            self.latest[model] = dict(versions)
            self.history.append((model, set(versions)))
            self.count += 1
            self._cond.notify_all()

    def versions(self, model: str = "m") -> set[int] | None:
        with self._cond:
            found = self.latest.get(model)
            return None if found is None else set(found)

    def wait_for(self, expected: set[int], model: str = "m") -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: self.versions(model) == expected, WAIT)
        assert ok, f"reported {self.versions(model)}, expected {expected}"


def write_version(folder: Path, *, variables: bool = True, shards: int = 1) -> None:
    (folder / "variables").mkdir(parents=True, exist_ok=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    if variables:
        (folder / "variables" / "variables.index").write_bytes(b"index")
        for i in range(shards):
            (folder / "variables" / f"variables.data-{i:05d}-of-{shards:05d}").write_bytes(b"d")


def publish(base: Path, version: int) -> None:
    """The atomic-publish pattern: write beside the target, then rename into place."""
    tmp = base / f".tmp-{version}"
    write_version(tmp)
    os.rename(tmp, base / str(version))


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "m"
    path.mkdir()
    return path


@pytest.fixture
def source_factory(reports: Reports) -> Iterator:
    sources: list[LocalSource] = []

    def make(base: Path, **kwargs) -> LocalSource:
        kwargs.setdefault("poll_interval_seconds", 0.2)
        source = LocalSource([ModelLocation("m", str(base))], reports, **kwargs)
        source.start()
        sources.append(source)
        return source

    yield make
    for source in sources:
        source.stop()
        source.join(WAIT)


def test_renamed_version_is_ready_without_waiting_to_settle(base, reports, source_factory):
    source_factory(base, settle_seconds=60, poll_interval_seconds=60)
    reports.wait_for(set())
    publish(base, 1)
    reports.wait_for({1})  # well before the 60 s settle period and the 60 s rescan
    assert reports.latest["m"][1].uri == str(base / "1")
    # the files' total size, what memory estimates start from
    files = [f for f in (base / "1").rglob("*") if f.is_file()]
    assert reports.latest["m"][1].size_bytes == sum(f.stat().st_size for f in files) > 0


def test_version_written_in_place_waits_until_complete_and_settled(base, reports, source_factory):
    source_factory(base, settle_seconds=0.3)
    reports.wait_for(set())
    folder = base / "1"
    write_version(folder, variables=False)
    (folder / "variables" / "variables.index").write_bytes(b"index")  # shards missing
    write_version(folder, shards=2)
    os.remove(folder / "variables" / "variables.data-00001-of-00002")
    count = reports.count
    # Several scans happen while it is incomplete, and none reports it.
    with reports._cond:
        assert reports._cond.wait_for(lambda: reports.count >= count + 2, WAIT)
    assert reports.versions() == set()
    (folder / "variables" / "variables.data-00001-of-00002").write_bytes(b"d")
    reports.wait_for({1})


class Scans:
    """An `on_poll` hook that counts the source's scans and lets a test wait for more."""

    def __init__(self) -> None:
        self.count = 0
        self._cond = threading.Condition()

    def __call__(self, model: str, seconds: float, ok: bool) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait_for_more(self, scans: int = 2) -> None:
        with self._cond:
            target = self.count + scans
            assert self._cond.wait_for(lambda: self.count >= target, WAIT), "no scans"


class StoppedClock:
    """A settle clock that moves only when the test says."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def sharded_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sharded_model(tmp_path_factory.mktemp("sharded") / "model", 2.0, shards=2)


def test_a_copy_that_starts_with_the_graph_is_reported_only_with_its_last_shard(
    base, reports, source_factory, sharded_model
):
    # No settle period: every scan of a complete-looking version reports it, so only the
    # files themselves (the graph restores variables, the index names shards) hold it back.
    scans = Scans()
    source_factory(base, settle_seconds=0, poll_interval_seconds=0.1, on_poll=scans)
    reports.wait_for(set())
    order = upload_order(sharded_model)
    for relpath in order:
        target = base / "1" / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sharded_model / relpath, target)
        if relpath != order[-1]:
            scans.wait_for_more()
            assert reports.versions() == set(), f"reported with {relpath} the last file there"
    reports.wait_for({1})


def test_a_file_still_growing_keeps_its_version_from_settling(
    base, reports, source_factory, sharded_model
):
    scans, clock = Scans(), StoppedClock()
    source_factory(base, settle_seconds=60, poll_interval_seconds=0.1, on_poll=scans, clock=clock)
    order = upload_order(sharded_model)
    for relpath in order[:-1]:
        (base / "1" / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sharded_model / relpath, base / "1" / relpath)
    last = (sharded_model / order[-1]).read_bytes()
    with open(base / "1" / order[-1], "wb") as shard:
        for start in range(0, len(last), len(last) // 4 + 1):
            shard.write(last[start : start + len(last) // 4 + 1])
            shard.flush()
            scans.wait_for_more()
            clock.now += 40  # less than the settle period since the last change
            assert not reports.versions()  # complete-looking, but never settled
    scans.wait_for_more()
    clock.now += 60  # the file has stopped changing for a whole settle period
    reports.wait_for({1})


def test_a_version_already_quiet_for_the_settle_period_is_ready_on_the_first_scan(
    base, reports, source_factory
):
    # Written in place (no rename), then left alone longer than the settle period before
    # the source starts: nothing in it changed for that long (ctime), so the very first
    # scan reports it instead of a wake-up one settle period later.
    folder = base / "1"
    write_version(folder)
    paths = [folder, *folder.rglob("*")]
    newest = max(os.stat(path).st_ctime_ns for path in paths) / 1e9
    tick = threading.Event()
    deadline = time.monotonic() + WAIT
    while time.time() - newest < 0.35:
        assert time.monotonic() < deadline
        tick.wait(0.01)
    source_factory(base, settle_seconds=0.3, poll_interval_seconds=60)
    assert reports.history[0] == ("m", {1})


def test_a_version_changed_within_the_settle_period_waits_for_it(base, reports, source_factory):
    folder = base / "1"
    write_version(folder)
    source_factory(base, settle_seconds=5, poll_interval_seconds=60)
    # Its files changed a moment ago: nothing is ready, and the source gives no answer
    # yet rather than "no versions" (the daemon keeps its ports closed until it answers).
    assert reports.history == []


def test_an_empty_scan_is_reported_when_nothing_is_settling(base, reports, source_factory):
    write_version(base / "1", variables=True)
    (base / "1" / "variables" / "variables.index").unlink()  # incomplete: not settling
    source_factory(base, settle_seconds=5, poll_interval_seconds=60)
    assert reports.history[0] == ("m", set())


def test_other_names_are_ignored_and_deletion_is_reported(base, reports, source_factory):
    for name in ("latest", ".hidden", "3.tmp", "-1", "00000123"):
        write_version(base / name)
    (base / "7").write_text("a file, not a folder")
    source_factory(base, settle_seconds=0)
    reports.wait_for({123})
    publish(base, 124)
    reports.wait_for({123, 124})
    (base / "124" / "saved_model.pb").unlink()
    reports.wait_for({123})


def test_ready_marker_is_required_when_configured(base, reports, source_factory):
    source_factory(base, ready_marker="_READY")
    publish(base, 1)
    reports.wait_for(set())
    (base / "1" / "_READY").write_text("")
    reports.wait_for({1})


def test_missing_folder_reports_no_versions_until_it_appears(tmp_path, reports, source_factory):
    base = tmp_path / "later" / "m"
    source = source_factory(base, settle_seconds=0)
    source.rescan()
    # No folder is an answer (no versions), unlike a listing that fails: the daemon need
    # not keep its ports closed for it, and the manager unloads nothing on an empty report.
    assert reports.versions() == set()
    base.mkdir(parents=True)
    publish(base, 5)
    reports.wait_for({5})


def test_replaced_model_folder_is_watched_again(tmp_path, base, reports, source_factory):
    source_factory(base, settle_seconds=0, poll_interval_seconds=0.2)
    publish(base, 1)
    reports.wait_for({1})
    old = tmp_path / "old"
    os.rename(base, old)
    base.mkdir()
    publish(base, 2)
    reports.wait_for({2})


def test_set_models_switches_what_is_watched(tmp_path, base, reports, source_factory):
    source = source_factory(base, settle_seconds=0)
    other = tmp_path / "other"
    other.mkdir()
    publish(other, 9)
    source.set_models([ModelLocation("o", str(other))])
    reports.wait_for({9}, model="o")
    publish(base, 1)
    source.rescan()
    assert reports.versions() in (None, set())


def test_a_pending_settle_wake_up_never_delays_an_event_scan():
    # The bug this guards: a scan that saw a version unsettled asked to wake up in 1 s,
    # and the rename event that followed had its 50 ms scan pushed back to that second.
    from loader.sources.local import _Debouncer

    scanned = threading.Event()
    debouncer = _Debouncer(lambda model: scanned.set())
    debouncer.start()
    try:
        debouncer.wake_up("m", 60.0)
        debouncer.request("m", 0.01)
        assert scanned.wait(10), "the event's scan waited for the settle wake-up"
    finally:
        debouncer.stop()
        debouncer.join(10)


def test_events_in_a_burst_push_their_scan_back_and_wake_ups_keep_the_earliest():
    from loader.sources.local import _Debouncer

    debouncer = _Debouncer(lambda model: None)  # not started: inspect the schedule only
    debouncer.request("m", 0.0)
    debouncer.request("m", 30.0)
    debouncer.wake_up("w", 30.0)
    debouncer.wake_up("w", 0.0)
    due = debouncer._due()
    assert due["m"] > due["w"] + 20  # the burst moved m's scan later; w kept its earliest
