"""The manager's swap logic, with a fake loader and real threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from loader.base import Code, InvalidArgument, NotFound
from loader.manager.manager import Manager, ModelSpec
from policies.selection import All, Latest, Specific
from policies.transition import availability_preserving, resource_preserving
from tests.daemon_process import wait_until
from tests.fakes import FakeLoader, refs

WAIT = 10.0


@pytest.fixture
def loader() -> FakeLoader:
    return FakeLoader()


@pytest.fixture
def manager(loader: FakeLoader) -> Iterator[Manager]:
    m = Manager(loader, release=loader.release, load_retries=1, retry_backoff_seconds=0.01)
    yield m
    m.stop()


def spec(selection=None, transition=availability_preserving, labels=None) -> ModelSpec:
    return ModelSpec("m", selection or Latest(1), transition, labels or {})


def states(manager: Manager) -> dict[int, str]:
    try:
        return {s.version: s.state for s in manager.status("m")}
    except NotFound:
        return {}


def wait_states(manager: Manager, expected: dict[int, str]) -> None:
    ok = manager.wait_until(lambda: states(manager) == expected, WAIT)
    assert ok, f"states {states(manager)} never became {expected}"


def served(manager: Manager, **kwargs) -> int:
    with manager.acquire("m", **kwargs) as lease:
        return lease.servable.run("serving_default", {})["version"]


def test_first_version_is_loaded_and_served(manager):
    manager.set_models([spec()])
    manager.on_versions("m", refs(1))
    wait_states(manager, {1: "AVAILABLE"})
    assert served(manager) == 1


def test_new_version_is_available_before_the_old_one_leaves(manager, loader):
    manager.set_models([spec()])
    manager.on_versions("m", refs(1))
    wait_states(manager, {1: "AVAILABLE"})
    gate = loader.hold(2)
    manager.on_versions("m", refs(1, 2))
    wait_states(manager, {1: "AVAILABLE", 2: "LOADING"})
    assert served(manager) == 1  # the old version answers while the new one loads
    gate.set()
    wait_states(manager, {1: "END", 2: "AVAILABLE"})
    assert served(manager) == 2
    assert loader.loaded[1].unloaded and loader.released == [1]


def test_unload_waits_for_requests_holding_the_version(manager, loader):
    manager.set_models([spec()])
    manager.on_versions("m", refs(1))
    wait_states(manager, {1: "AVAILABLE"})
    lease = manager.acquire("m")
    manager.on_versions("m", refs(1, 2))
    wait_states(manager, {1: "UNLOADING", 2: "AVAILABLE"})
    assert served(manager) == 2  # new requests go to the new version at once
    assert not loader.loaded[1].unloaded  # the old one stays until its request is done
    assert lease.servable.run("serving_default", {})["version"] == 1
    lease.__exit__(None, None, None)
    wait_states(manager, {1: "END", 2: "AVAILABLE"})
    assert loader.loaded[1].unloaded


def test_failed_load_never_displaces_the_serving_version(manager, loader):
    manager.set_models([spec()])
    manager.on_versions("m", refs(1))
    wait_states(manager, {1: "AVAILABLE"})
    loader.failing.add(2)
    manager.on_versions("m", refs(1, 2))
    wait_states(manager, {1: "AVAILABLE", 2: "END"})
    assert served(manager) == 1
    (status,) = manager.status("m", 2)
    assert status.error_code is Code.UNKNOWN and "version 2 is corrupt" in status.error_message
    assert loader.calls[2] == 2  # one try and one retry


def test_failed_version_is_tried_again_when_its_content_changes(manager, loader):
    manager.set_models([spec()])
    loader.failing.add(2)
    manager.on_versions("m", refs(1, 2))
    wait_states(manager, {2: "END"})
    manager.on_versions("m", refs(1, 2))  # same content: not tried again
    assert loader.calls[2] == 2
    loader.failing.clear()
    manager.on_versions("m", refs(1, 2, fingerprint="g"))
    wait_states(manager, {2: "AVAILABLE"})
    assert served(manager) == 2


def test_failed_first_load_of_newest_falls_back_to_nothing_else_loaded(manager, loader):
    # With nothing serving and the only aspired version broken, nothing is served and
    # the status says why.
    manager.set_models([spec()])
    loader.failing.add(1)
    manager.on_versions("m", refs(1))
    wait_states(manager, {1: "END"})
    with pytest.raises(NotFound, match=r"Servable not found for request: Latest\(m\)"):
        manager.acquire("m")


def test_empty_listing_keeps_the_serving_version(manager, loader):
    manager.set_models([spec()])
    manager.on_versions("m", refs(1))
    wait_states(manager, {1: "AVAILABLE"})
    manager.on_versions("m", {})
    assert states(manager) == {1: "AVAILABLE"} and served(manager) == 1
    manager.on_versions("m", refs(2))
    wait_states(manager, {1: "END", 2: "AVAILABLE"})


def test_deleting_the_newest_version_rolls_back(manager):
    manager.set_models([spec()])
    manager.on_versions("m", refs(1, 2))
    wait_states(manager, {2: "AVAILABLE"})
    manager.on_versions("m", refs(1))
    wait_states(manager, {1: "AVAILABLE", 2: "END"})
    assert served(manager) == 1


def test_resource_preserving_unloads_before_loading(manager, loader):
    manager.set_models([spec(transition=resource_preserving)])
    manager.on_versions("m", refs(1))
    wait_states(manager, {1: "AVAILABLE"})
    seen: list[tuple[int, str]] = []
    manager.add_observer(lambda t: seen.append((t.version, t.phase.name)))
    manager.on_versions("m", refs(1, 2))
    wait_states(manager, {1: "END", 2: "AVAILABLE"})
    assert seen.index((1, "END")) < seen.index((2, "LOADING"))


def test_policies_on_one_repository(manager):
    manager.set_models([spec(selection=All())])
    manager.on_versions("m", refs(1, 2, 3))
    wait_states(manager, {1: "AVAILABLE", 2: "AVAILABLE", 3: "AVAILABLE"})
    manager.set_models([spec(selection=Specific.of([1, 3]))])
    wait_states(manager, {1: "AVAILABLE", 2: "END", 3: "AVAILABLE"})
    manager.set_models([spec(selection=Latest(1))])
    wait_states(manager, {1: "END", 2: "END", 3: "AVAILABLE"})


def test_labels_and_explicit_versions_are_routed(manager):
    manager.set_models([spec(selection=All(), labels={"stable": 1, "canary": 2})])
    manager.on_versions("m", refs(1, 2))
    wait_states(manager, {1: "AVAILABLE", 2: "AVAILABLE"})
    assert served(manager) == 2
    assert served(manager, version=1) == 1
    assert served(manager, label="stable") == 1
    assert served(manager, label="canary") == 2
    with pytest.raises(InvalidArgument, match="Unrecognized servable version label: beta"):
        manager.acquire("m", label="beta")
    with pytest.raises(NotFound, match=r"Specific\(m, 7\)"):
        manager.acquire("m", version=7)
    with pytest.raises(NotFound, match=r"Latest\(other\)"):
        manager.acquire("other")


def test_removed_model_is_unloaded(manager, loader):
    manager.set_models([spec()])
    manager.on_versions("m", refs(1))
    wait_states(manager, {1: "AVAILABLE"})
    manager.set_models([])
    assert manager.wait_until(lambda: "m" not in manager.models() and states(manager) == {}, WAIT)
    assert loader.loaded[1].unloaded
    with pytest.raises(NotFound):
        manager.acquire("m")


def test_requests_during_many_swaps_always_get_an_answer_and_never_go_back(manager):
    # Invariant 4: while versions are only added, a client never sees an older version.
    manager.set_models([spec()])
    manager.on_versions("m", refs(1))
    wait_states(manager, {1: "AVAILABLE"})
    stop = threading.Event()
    failures: list[str] = []

    def client() -> None:
        newest = 0
        while not stop.is_set():
            try:
                version = served(manager)
            except Exception as exc:  # any failure is a dropped request
                failures.append(repr(exc))
                continue
            if version < newest:
                failures.append(f"went back from {newest} to {version}")
            newest = version

    clients = [threading.Thread(target=client, name=f"client-{i}") for i in range(4)]
    for t in clients:
        t.start()
    for v in range(2, 12):
        manager.on_versions("m", refs(*range(1, v + 1)))
        wait_states(manager, {**dict.fromkeys(range(1, v), "END"), v: "AVAILABLE"})
    stop.set()
    for t in clients:
        t.join(WAIT)
    assert failures == []


def test_stop_unloads_everything(loader):
    m = Manager(loader)
    m.set_models([spec()])
    m.on_versions("m", refs(1))
    assert m.wait_until(lambda: states(m) == {1: "AVAILABLE"}, WAIT)
    m.stop()
    m.stop()  # idempotent
    assert loader.loaded[1].unloaded


def test_a_load_that_hangs_times_out_and_a_late_result_is_unloaded(loader):
    m = Manager(loader, load_retries=2, retry_backoff_seconds=0.01, load_timeout_seconds=0.2)
    try:
        m.set_models([spec()])
        m.on_versions("m", refs(1))
        assert m.wait_until(lambda: states(m) == {1: "AVAILABLE"}, WAIT)
        gate = loader.hold(2)
        m.on_versions("m", refs(1, 2))
        assert m.wait_until(lambda: states(m) == {1: "AVAILABLE", 2: "END"}, WAIT)
        (status,) = m.status("m", 2)
        assert status.error_code is Code.DEADLINE_EXCEEDED
        assert "did not finish within 0.2 seconds" in status.error_message
        assert loader.calls[2] == 1  # not retried: it would hang again
        assert served(m) == 1
        gate.set()  # the hung load finally returns: its model must not stay loaded
        wait_until(lambda: 2 in loader.loaded and loader.loaded[2].unloaded, WAIT, "the late unload")
    finally:
        m.stop()


def test_status_keeps_a_bounded_history_of_ended_versions(manager):
    from loader.manager.model_state import KEPT_ENDED_VERSIONS

    manager.set_models([spec()])
    last = KEPT_ENDED_VERSIONS + 6
    for v in range(1, last + 1):
        manager.on_versions("m", refs(v))
        wait_states(manager, {**dict.fromkeys(range(max(1, v - KEPT_ENDED_VERSIONS), v), "END"),
                              v: "AVAILABLE"})
    kept = states(manager)
    assert kept[last] == "AVAILABLE"
    assert sorted(kept) == list(range(last - KEPT_ENDED_VERSIONS, last + 1))


def test_a_transient_failure_is_retried_without_new_content(loader, monkeypatch):
    import loader.manager.model_state as manager_module
    from loader.base import Unavailable

    monkeypatch.setattr(manager_module, "RETRY_TRANSIENT_SECONDS", 0.05)
    outage = {"on": True}

    def flaky(model, version, ref):  # the load function the daemon passes: storage failing a while
        if outage["on"]:
            loader.calls[version] += 1
            raise Unavailable("S3 answered 503 SlowDown")
        return loader(model, version, ref)

    m = Manager(flaky, release=loader.release, load_retries=0)
    try:
        m.set_models([spec()])
        m.on_versions("m", refs(1))
        assert m.wait_until(lambda: states(m) == {1: "END"}, WAIT)
        assert loader.released == [1]  # a failed load leaves nothing in the cache
        m.on_versions("m", refs(1))  # the next poll, same content
        wait_until(lambda: (m.on_versions("m", refs(1)) or loader.calls[1] >= 2), WAIT, "a retry")
        outage["on"] = False
        wait_until(lambda: (m.on_versions("m", refs(1)) or states(m) == {1: "AVAILABLE"}),
                   WAIT, "the retry after the outage to load")
    finally:
        m.stop()


def test_a_permanent_failure_waits_for_new_content(loader):
    m = Manager(loader, load_retries=0)
    try:
        m.set_models([spec()])
        loader.failing.add(1)
        m.on_versions("m", refs(1))
        assert m.wait_until(lambda: states(m) == {1: "END"}, WAIT)
        for _ in range(20):
            m.on_versions("m", refs(1))
        assert loader.calls[1] == 1
    finally:
        m.stop()


def test_loads_pending_until_storage_answered_and_the_first_loads_ended(manager, loader):
    manager.set_models([spec(), ModelSpec("empty", Latest(1), availability_preserving),
                        ModelSpec("broken", Latest(1), availability_preserving)])
    assert manager.loads_pending() == ["broken", "empty", "m"]  # storage has not answered
    gate = loader.hold(1)
    manager.on_versions("m", refs(1))
    manager.on_versions("empty", {})  # answered, with nothing to load
    loader.failing.add(7)
    manager.on_versions("broken", refs(7))
    assert manager.wait_until(lambda: manager.loads_pending() == ["m"], WAIT)  # 1 is loading
    gate.set()
    assert manager.wait_until(lambda: manager.loads_pending() == [], WAIT)
    assert states(manager) == {1: "AVAILABLE"}
    (status,) = manager.status("broken")  # a failed load is done: its status says why
    assert "version 7 is corrupt" in status.error_message
