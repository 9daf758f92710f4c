"""DataPlane.run_async: how batched answers come back from batch threads to the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import anyio.to_thread
import pytest

from loader.base import Code, DeadlineExceeded, SignatureInfo
from loader.manager.handles import Handle, Lease
from loader.manager.manager import Manager
from loader.serving.dataplane import DataPlane
from tests.fakes import FakeLoader


class HeldAnswers:
    """A batching-like servable: `submit` keeps each request's hook; the test answers them."""

    signatures: Mapping[str, SignatureInfo] = {"serving_default": SignatureInfo("predict")}

    def __init__(self) -> None:
        self.hooks: list[tuple[Any, Any]] = []
        self.submitted = threading.Event()
        self.expected = 0

    def submit(
        self, signature_name: str, inputs: Mapping[str, Any], output_keys: Sequence[str] | None,
        done: Any, deadline: float | None = None,
    ) -> bool:
        self.hooks.append((inputs["x"], done))
        if len(self.hooks) == self.expected:
            self.submitted.set()
        return True

    def run(self, *args: Any) -> dict[str, Any]:  # pragma: no cover - never unbatched here
        raise AssertionError("run_async must use submit")

    def signature_def_json(self) -> dict[str, Any]:
        return {}

    def unload(self) -> None:
        pass

    def answer_all(self) -> None:
        """Answer every request in a row, as a batch thread does after its batch ran."""
        for x, done in self.hooks:
            if x < 0:
                done(None, ValueError(f"bad input {x}"))
            else:
                done({"y": x * 10}, None)


class CountingLoop(asyncio.SelectorEventLoop):
    """Counts the callbacks other threads hand to the loop."""

    def __init__(self) -> None:
        super().__init__()
        self.threadsafe_calls = 0

    def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> Any:
        self.threadsafe_calls += 1
        return super().call_soon_threadsafe(*args, **kwargs)


@pytest.fixture
def dataplane():
    manager = Manager(FakeLoader())
    yield DataPlane(manager)
    manager.stop()


def test_a_batch_of_answers_reaches_the_loop_as_one_callback(dataplane) -> None:
    servable = HeldAnswers()
    servable.expected = 20
    lease = Lease(Handle(servable), "m", 1)
    loop = CountingLoop()

    async def main() -> list[Any]:
        runs = [
            asyncio.ensure_future(dataplane.run_async(lease, "", {"x": x}))
            for x in [*range(19), -1]
        ]
        while not servable.submitted.is_set():
            await asyncio.sleep(0)
        # The batch thread answers all 20 while the loop is busy (blocked here), as it is
        # when a batch ends while the loop reads requests.
        batch = threading.Thread(target=servable.answer_all)
        batch.start()
        batch.join()
        return await asyncio.gather(*runs, return_exceptions=True)

    try:
        results = loop.run_until_complete(main())
    finally:
        loop.close()
    assert results[:19] == [{"y": x * 10} for x in range(19)]
    assert isinstance(results[19], ValueError) and str(results[19]) == "bad input -1"
    assert loop.threadsafe_calls == 1


def test_answers_after_the_loop_closed_are_dropped_without_an_error(dataplane) -> None:
    servable = HeldAnswers()
    servable.expected = 2
    lease = Lease(Handle(servable), "m", 1)
    loop = asyncio.new_event_loop()

    async def submit_and_leave() -> None:
        for x in (1, 2):  # left behind on purpose: the loop closes under them
            asyncio.ensure_future(dataplane.run_async(lease, "", {"x": x}))  # noqa: RUF006
        while not servable.submitted.is_set():
            await asyncio.sleep(0)

    loop.run_until_complete(submit_and_leave())
    loop.close()
    errors: list[BaseException] = []

    def batch_thread() -> None:
        try:
            servable.answer_all()
        except BaseException as exc:  # what a batch thread would have to log
            errors.append(exc)

    thread = threading.Thread(target=batch_thread)
    thread.start()
    thread.join()
    assert errors == []


def test_answers_keep_coming_after_a_delivery(dataplane) -> None:
    """Posts after a delivery schedule the next one: no answer waits for a later batch."""
    servable = HeldAnswers()
    lease = Lease(Handle(servable), "m", 1)

    async def main() -> None:
        for round_ in range(3):
            servable.hooks.clear()
            servable.submitted.clear()
            servable.expected = 4
            runs = [
                asyncio.ensure_future(dataplane.run_async(lease, "", {"x": round_ * 4 + i}))
                for i in range(4)
            ]
            while not servable.submitted.is_set():
                await asyncio.sleep(0)
            threading.Thread(target=servable.answer_all).start()
            results = await asyncio.wait_for(asyncio.gather(*runs), timeout=10)
            assert results == [{"y": (round_ * 4 + i) * 10} for i in range(4)]

    asyncio.run(main())


# -- on-demand models: the first request loads, waits up to a bound, then 503 -----------


def on_demand_plane(loader: FakeLoader, wait: float) -> tuple[Manager, DataPlane]:
    from loader.manager.manager import ModelSpec
    from policies.selection import Latest
    from policies.transition import availability_preserving
    from tests.fakes import refs

    manager = Manager(loader, load_retries=0)
    manager.set_models([
        ModelSpec("lazy", Latest(1), availability_preserving, {"stable": 1}, on_demand=True),
        ModelSpec("eager", Latest(1), availability_preserving),
    ])
    manager.on_versions("lazy", refs(1))
    manager.on_versions("eager", refs(1))
    return manager, DataPlane(manager, on_demand_wait_seconds=wait)


def test_the_first_request_for_an_on_demand_model_loads_it_and_concurrent_ones_share_the_load():
    loader = FakeLoader()
    manager, plane = on_demand_plane(loader, wait=10)
    try:
        assert manager.wait_until(lambda: plane.readiness() == {"eager": True, "lazy": True}, 10)
        assert [s.state for s in plane.status("lazy")] == ["START"]
        gate = loader.hold(1)
        served: list[int] = []

        def request() -> None:
            with plane.hold("lazy") as lease:
                served.append(lease.servable.run("serving_default", {})["version"])

        threads = [threading.Thread(target=request) for _ in range(6)]
        for thread in threads:
            thread.start()
        assert manager.wait_until(lambda: plane.status("lazy")[0].state == "LOADING", 10)
        gate.set()
        for thread in threads:
            thread.join(10)
        assert served == [1] * 6
        assert loader.calls[1] == 2  # one load for "eager", one for all six "lazy" requests
        with plane.hold("lazy", label="stable") as lease:
            assert lease.version == 1
    finally:
        manager.stop()


def test_a_request_that_outwaits_the_bound_gets_unavailable_with_a_retry_hint():
    from loader.base import NotFound, Unavailable

    loader = FakeLoader()
    manager, plane = on_demand_plane(loader, wait=0.2)
    gate = loader.hold(1)
    try:
        with pytest.raises(Unavailable) as raised:
            plane.hold("lazy")
        assert raised.value.retry_after_seconds == 1
        assert "version 1 of model lazy is loading on demand" in raised.value.message
        with pytest.raises(NotFound):  # a version that is not there is not waited for
            plane.hold("lazy", version=7)
        gate.set()
        assert manager.wait_until(lambda: plane.status("lazy")[0].state == "AVAILABLE", 10)
        with plane.hold("lazy") as lease:
            assert lease.version == 1
        # the operator view's look never loads anything
        with pytest.raises(NotFound):
            plane.hold_loaded("lazy", 7)
    finally:
        gate.set()
        manager.stop()


def test_hold_async_waits_for_an_on_demand_load_off_the_event_loop():
    loader = FakeLoader()
    manager, plane = on_demand_plane(loader, wait=10)
    gate = loader.hold(1)

    async def main() -> int:
        waiting = asyncio.ensure_future(plane.hold_async("lazy"))
        ticks = 0
        while not waiting.done():  # the loop keeps turning while the request waits
            ticks += 1
            if ticks == 5:
                gate.set()
            await asyncio.sleep(0.01)
        with waiting.result() as lease:
            assert lease.version == 1
        return ticks

    try:
        assert asyncio.run(main()) >= 5
    finally:
        gate.set()
        manager.stop()


class HeldRuns:
    """A servable that does not batch: `run` records each call, and holds the one whose x
    is "hold" until `release` is set."""

    signatures: Mapping[str, SignatureInfo] = {"serving_default": SignatureInfo("predict")}

    def __init__(self) -> None:
        self.ran: list[Any] = []
        self.holding = threading.Event()
        self.release = threading.Event()

    def run(
        self, signature_name: str, inputs: Mapping[str, Any],
        output_keys: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        self.ran.append(inputs["x"])
        if inputs["x"] == "hold":
            self.holding.set()
            assert self.release.wait(10)
        return {"y": inputs["x"]}

    def signature_def_json(self) -> dict[str, Any]:
        return {}

    def unload(self) -> None:
        pass


def test_a_run_whose_deadline_passed_waiting_for_a_worker_thread_never_reaches_the_model() -> None:
    expired: list[str] = []
    manager = Manager(FakeLoader())
    dataplane = DataPlane(manager, on_expired=expired.append)
    servable = HeldRuns()
    lease = Lease(Handle(servable), "m", 1)

    async def main() -> list[Any]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 1  # one worker thread
        holder = asyncio.ensure_future(dataplane.run_async(lease, "", {"x": "hold"}))
        while not servable.holding.is_set():
            await asyncio.sleep(0.001)
        soon = time.monotonic() + 0.05
        waiting = [
            asyncio.ensure_future(dataplane.run_async(lease, "", {"x": "late"}, deadline=soon)),
            asyncio.ensure_future(dataplane.run_async(
                lease, "", {"x": "in time"}, deadline=time.monotonic() + 3600
            )),
        ]
        while time.monotonic() <= soon:  # it passes while the only thread is held
            await asyncio.sleep(0.01)
        servable.release.set()
        return await asyncio.gather(holder, *waiting, return_exceptions=True)

    try:
        held, late, in_time = asyncio.run(main())
    finally:
        manager.stop()
    assert held == {"y": "hold"} and in_time == {"y": "in time"}
    assert isinstance(late, DeadlineExceeded) and late.code is Code.DEADLINE_EXCEEDED
    assert late.message == "Run() timeout exceeded while waiting for a worker thread"
    assert servable.ran == ["hold", "in time"]
    assert expired == ["m"]
