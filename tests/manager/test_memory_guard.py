"""The manager under a memory limit: refusals and their retry, eviction of idle on-demand
models in LRU order, swaps that fall back to resource-preserving, learning from loads.

The process is a fake whose resident memory is a baseline plus what its loaded fake
servables hold (a real process's figures would move with everything else in the test run);
the manager, its guard and its threads are the real ones.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from loader.base import Code, NotFound, SignatureInfo, VersionRef
from loader.manager.manager import Manager, ModelSpec
from loader.manager.memory import MIB, mib
from loader.manager.memory_guard import MemoryGuard
from policies.selection import Latest
from policies.transition import availability_preserving

WAIT = 10.0
BASELINE = 300 * MIB
FILES = 100 * MIB  # each version's files; the prior estimate is 16 + 2 * 100 = 208 MiB
TAKES = 200 * MIB  # what a load really keeps resident
PEAK = 220 * MIB  # and what it briefly holds while loading


class FakeProcess:
    """Resident memory = baseline + the loaded servables; a load peaks above what it keeps."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: dict[tuple[str, int], int] = {}
        self.peak = BASELINE

    def resident_bytes(self) -> int | None:
        with self.lock:
            return BASELINE + sum(self.held.values())

    def peak_resident_bytes(self) -> int | None:
        return self.peak

    def reset_peak(self) -> bool:
        self.peak = self.resident_bytes() or 0
        return True


class SizedServable:
    def __init__(self, process: FakeProcess, key: tuple[str, int]) -> None:
        self._process, self.key = process, key
        self.unloaded = False

    @property
    def signatures(self) -> Mapping[str, SignatureInfo]:
        return {}

    def signature_def_json(self) -> dict[str, Any]:
        return {}

    def run(self, name: str, inputs: Mapping[str, Any], keys: Sequence[str] | None = None) -> Any:
        assert not self.unloaded
        return {"version": self.key[1]}

    def unload(self) -> None:
        self.unloaded = True
        with self._process.lock:
            del self._process.held[self.key]


class SizedLoader:
    def __init__(self, process: FakeProcess) -> None:
        self.process = process
        self.calls: list[tuple[str, int]] = []

    def __call__(self, model: str, version: int, ref: VersionRef) -> SizedServable:
        self.calls.append((model, version))
        with self.process.lock:
            self.process.peak = max(
                self.process.peak, BASELINE + sum(self.process.held.values()) + PEAK
            )
            self.process.held[(model, version)] = TAKES
        return SizedServable(self.process, (model, version))


def refs(*versions: int) -> dict[int, VersionRef]:
    return {v: VersionRef(f"/m/{v}", f"f{v}", FILES) for v in versions}


@pytest.fixture
def process() -> FakeProcess:
    return FakeProcess()


def make_manager(process: FakeProcess, limit: int | None, threads: int = 1) -> Manager:
    return Manager(
        SizedLoader(process), num_load_threads=threads, load_retries=0,
        memory=MemoryGuard(limit, process),
    )


@pytest.fixture
def room_for_two(process: FakeProcess) -> Iterator[Manager]:
    # 300 baseline + 2 * 200 resident = 700; a third load's 208 estimate does not fit in 800.
    manager = make_manager(process, 800 * MIB)
    yield manager
    manager.stop()


def spec(name: str, on_demand: bool = False, transition: Any = availability_preserving) -> ModelSpec:
    return ModelSpec(name, Latest(1), transition, {}, on_demand=on_demand)


def states(manager: Manager, model: str) -> dict[int, str]:
    try:
        return {s.version: s.state for s in manager.status(model)}
    except NotFound:
        return {}


def wait_states(manager: Manager, model: str, expected: dict[int, str]) -> None:
    ok = manager.wait_until(lambda: states(manager, model) == expected, WAIT)
    assert ok, f"{model}: {states(manager, model)} never became {expected}"


def serve_on_demand(manager: Manager, model: str) -> None:
    """What the data plane does for a request: ask for the model, wait for it, use it."""
    manager.demand(model)
    wait_states(manager, model, {1: "AVAILABLE"})
    with manager.acquire(model):
        pass


def test_a_load_that_would_pass_the_limit_waits_in_start_with_the_numbers_and_the_rest_serves(
    room_for_two,
):
    manager = room_for_two
    manager.set_models([spec("a"), spec("b"), spec("c")])
    for name in ("a", "b", "c"):
        manager.on_versions(name, refs(1))
    assert manager.wait_until(
        lambda: sorted(states(manager, m)[1] for m in "abc") == ["AVAILABLE", "AVAILABLE", "START"],
        WAIT,
    )
    refused = next(
        s for m in "abc" for s in manager.status(m) if s.state == "START"
    )
    assert refused.error_code is Code.RESOURCE_EXHAUSTED
    assert "Insufficient memory to load servable" in refused.error_message
    # the other models' loads taught the estimate: they peaked at PEAK
    assert refused.memory_bytes == pytest.approx(PEAK, rel=1e-3)
    assert f"needs an estimated {mib(refused.memory_bytes)}" in refused.error_message
    assert "700.0 MiB is resident" in refused.error_message
    assert "800.0 MiB" in refused.error_message
    assert manager.loads_pending() == []  # a refusal is a first load done: the ports may open
    report = manager.memory_report()
    assert report.refusals == {refused.model: 1}
    assert report.usage.resident_bytes == 700 * MIB and report.usage.limit_bytes == 800 * MIB
    # Memory frees (one model leaves the config): the refused version loads, no poll needed.
    others = [m for m in "abc" if m != refused.model]
    manager.set_models([spec(others[0]), spec(refused.model)])
    wait_states(manager, refused.model, {1: "AVAILABLE"})
    assert manager.status(refused.model)[0].error_code is Code.OK


def test_on_demand_models_load_on_demand_and_the_least_recently_used_idle_one_is_evicted(
    room_for_two, process,
):
    manager = room_for_two
    manager.set_models([spec(m, on_demand=True) for m in "abc"])
    for name in "abc":
        manager.on_versions(name, refs(1))
    for name in "abc":
        wait_states(manager, name, {1: "START"})  # listed, tracked, not loaded
        assert manager.status(name)[0].memory_bytes == 208 * MIB  # and estimated
    assert manager.loads_pending() == []
    assert manager.memory_report().estimates == {(m, 1): 208 * MIB for m in "abc"}
    serve_on_demand(manager, "a")
    serve_on_demand(manager, "b")
    with manager.acquire("a"):  # a is now the more recently used
        pass
    serve_on_demand(manager, "c")  # needs room: b goes
    wait_states(manager, "b", {1: "START"})
    assert states(manager, "a") == {1: "AVAILABLE"}
    assert manager.memory_report().evictions == {"b": 1}
    assert process.resident_bytes() <= 800 * MIB


def test_eviction_never_takes_a_model_with_a_request_in_flight(room_for_two):
    manager = room_for_two
    manager.set_models([spec(m, on_demand=True) for m in "abc"])
    for name in "abc":
        manager.on_versions(name, refs(1))
    serve_on_demand(manager, "a")
    serve_on_demand(manager, "b")
    with manager.acquire("a") as lease:  # a is the least recently used... and busy
        with manager.acquire("b"):
            pass
        manager.acquire("a").__exit__(None, None, None)
        serve_on_demand(manager, "c")
        wait_states(manager, "b", {1: "START"})
        assert states(manager, "a") == {1: "AVAILABLE"}
        assert lease.servable.run("serving_default", {}) == {"version": 1}
    assert manager.memory_report().evictions == {"b": 1}


def test_always_loaded_models_are_never_evicted_and_a_busy_cache_refuses(room_for_two):
    manager = room_for_two
    manager.set_models([spec("pinned"), spec("a", on_demand=True), spec("b", on_demand=True)])
    for name in ("pinned", "a", "b"):
        manager.on_versions(name, refs(1))
    wait_states(manager, "pinned", {1: "AVAILABLE"})
    serve_on_demand(manager, "a")
    with manager.acquire("a"):  # the only candidate is busy: no room to be made
        manager.demand("b")
        assert manager.wait_until(
            lambda: manager.status("b")[0].error_code is Code.RESOURCE_EXHAUSTED, WAIT
        )
        assert states(manager, "pinned") == {1: "AVAILABLE"}
        assert states(manager, "a") == {1: "AVAILABLE"}
    # a is idle again: the next ask (a request's recheck) evicts it
    manager.demand("b")
    wait_states(manager, "b", {1: "AVAILABLE"})
    assert states(manager, "pinned") == {1: "AVAILABLE"}
    assert manager.memory_report().evictions == {"a": 1}


def test_a_swap_whose_two_copies_do_not_fit_is_resource_preserving_and_logged(process, caplog):
    manager = make_manager(process, 600 * MIB)  # 300 + 200 + 208 > 600: one copy at a time
    try:
        manager.set_models([spec("m")])
        manager.on_versions("m", refs(1))
        wait_states(manager, "m", {1: "AVAILABLE"})
        with caplog.at_level(logging.WARNING, "modelwatch.manager"):
            manager.on_versions("m", refs(1, 2))
            wait_states(manager, "m", {1: "END", 2: "AVAILABLE"})
        assert "do not both fit under loading.memory_limit_bytes" in caplog.text
        assert "resource-preserving" in caplog.text
        assert process.peak <= 600 * MIB
    finally:
        manager.stop()


def test_a_swap_that_cannot_fit_even_alone_keeps_the_old_version_serving(process):
    manager = make_manager(process, 600 * MIB)
    try:
        manager.set_models([spec("m")])
        manager.on_versions("m", refs(1))
        wait_states(manager, "m", {1: "AVAILABLE"})
        huge = {**refs(1), 2: VersionRef("/m/2", "f2", 1000 * MIB)}
        manager.on_versions("m", huge)
        assert manager.wait_until(
            lambda: manager.status("m", 2)[0].error_code is Code.RESOURCE_EXHAUSTED, WAIT
        )
        assert states(manager, "m") == {1: "AVAILABLE", 2: "START"}
        with manager.acquire("m") as lease:
            assert lease.version == 1
    finally:
        manager.stop()


def test_a_load_measured_on_its_own_teaches_the_next_estimate(room_for_two):
    manager = room_for_two
    manager.set_models([spec("m")])
    manager.on_versions("m", refs(1))
    wait_states(manager, "m", {1: "AVAILABLE"})
    status = manager.status("m", 1)[0]
    assert status.memory_bytes == TAKES  # measured resident, not the estimate
    assert manager.memory.budget.scale("m") == pytest.approx(PEAK / (208 * MIB), rel=1e-3)
    manager.on_versions("m", refs(1, 2))
    wait_states(manager, "m", {1: "END", 2: "AVAILABLE"})
    assert manager.memory_report().estimates == {("m", 2): TAKES}


def test_without_a_limit_nothing_is_refused_or_evicted(process):
    manager = make_manager(process, None, threads=2)
    try:
        manager.set_models([spec(m) for m in "abcde"])
        for name in "abcde":
            manager.on_versions(name, refs(1))
        for name in "abcde":
            wait_states(manager, name, {1: "AVAILABLE"})
        report = manager.memory_report()
        assert report.usage.limit_bytes is None and not report.evictions and not report.refusals
    finally:
        manager.stop()


def test_concurrent_demands_share_one_load(room_for_two):
    manager = room_for_two
    loader = manager._loading.load_fn
    manager.set_models([spec("a", on_demand=True)])
    manager.on_versions("a", refs(1))
    wait_states(manager, "a", {1: "START"})
    threads = [threading.Thread(target=manager.demand, args=("a",)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_states(manager, "a", {1: "AVAILABLE"})
    assert loader.calls == [("a", 1)]
