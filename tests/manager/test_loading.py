"""One load and one unload, outside the manager: retries, deadlines, releases, draining."""

from __future__ import annotations

import threading

import pytest

from loader.base import Code, NotFound, Unavailable
from loader.manager.handles import Handle
from loader.manager.harness import Harness
from loader.manager.loading import Loading, describe_error
from tests.fakes import FakeLoader, FakeServable, refs


def harness(version: int = 1) -> Harness:
    return Harness("m", version, refs(version)[version])


class _OpError(Exception):
    """Shaped like TensorFlow's OpError: a message and a numeric `error_code`."""

    def __init__(self, message: str, error_code: int) -> None:
        super().__init__(message)
        self.message, self.error_code = message, error_code


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (NotFound("no such version"), (Code.NOT_FOUND, "no such version")),
        (_OpError("graph is broken\nstack trace", 3), (Code.INVALID_ARGUMENT, "graph is broken")),
        (_OpError("odd code", 99), (Code.UNKNOWN, "odd code")),
        (ValueError(""), (Code.UNKNOWN, "ValueError")),
    ],
    ids=["serving-error", "tf-op-error", "unknown-code", "no-message"],
)
def test_describe_error_gives_a_code_and_one_line(
    error: BaseException, expected: tuple[Code, str]
) -> None:
    assert describe_error(error) == expected


def test_a_load_is_tried_retries_plus_one_times_then_releases_its_files() -> None:
    loader = FakeLoader()
    loader.failing.add(1)
    loading = Loading(loader, loader.release, retries=2, backoff_seconds=0.001)
    servable, code, message = loading.load(harness(1), threading.Event())
    assert servable is None and code is Code.UNKNOWN and "corrupt" in message
    assert loader.calls[1] == 3
    assert loader.released == [1]


def test_a_load_that_succeeds_after_a_failure_keeps_its_files() -> None:
    attempts: list[int] = []
    loader = FakeLoader()

    def flaky(model: str, version: int, ref: object) -> FakeServable:
        attempts.append(version)
        if len(attempts) == 1:
            raise Unavailable("storage hiccup")
        return FakeServable(version)

    loading = Loading(flaky, loader.release, retries=1, backoff_seconds=0.001)
    servable, code, _ = loading.load(harness(1), threading.Event())
    assert isinstance(servable, FakeServable) and code is Code.UNAVAILABLE
    assert attempts == [1, 1] and loader.released == []


def test_a_load_that_hangs_is_not_retried_and_keeps_its_files() -> None:
    loader = FakeLoader()
    gate = loader.hold(1)
    loading = Loading(loader, loader.release, retries=3, timeout_seconds=0.05)
    try:
        servable, code, _ = loading.load(harness(1), threading.Event())
    finally:
        gate.set()  # let the abandoned attempt end, so its thread does
    assert servable is None and code is Code.DEADLINE_EXCEEDED
    assert loader.calls[1] == 1 and loader.released == []


def test_a_stopping_server_starts_no_load() -> None:
    loader = FakeLoader()
    stopping = threading.Event()
    stopping.set()
    servable, code, _ = Loading(loader, loader.release).load(harness(1), stopping)
    assert servable is None and code is Code.CANCELLED and loader.calls[1] == 0


def test_an_unload_waits_for_requests_then_unloads_and_releases() -> None:
    loader = FakeLoader()
    servable = FakeServable(1)
    h = harness(1)
    h.handle = Handle(servable)
    assert h.handle.try_acquire()  # a request in flight
    done = threading.Event()

    def unload() -> None:
        Loading(loader, loader.release).unload(h)
        done.set()

    thread = threading.Thread(target=unload)
    thread.start()
    assert not done.wait(0.2) and not servable.unloaded  # still draining
    h.handle.release()
    assert done.wait(5)
    thread.join(5)
    assert servable.unloaded and loader.released == [1]
