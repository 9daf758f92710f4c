"""A replica's side of routing: which versions requests may reach, and the hold barrier.

`RoutedDataPlane` answers only from the versions the watcher routes (a version loaded for
the next flip stays out of reach until the flip), and reports the cluster's view of a
model's versions. Every request, REST (fast path or not) and gRPC alike, takes its version
through it, so the hold is here too: while its `Gate` holds a model, requests for it wait
(at most `limit_seconds`, then 503 / UNAVAILABLE) before any version is chosen; releasing
the hold lets them through to whatever is routed by then. See `rollout.py` for why this
keeps invariant 8.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping

from loader.base import NotFound, Unavailable
from loader.manager.handles import Lease
from loader.manager.harness import VersionStatus
from loader.manager.manager import Manager
from loader.serving.dataplane import DataPlane


class RoutedDataPlane(DataPlane):
    """The data plane, restricted to the routed versions and reporting the cluster's view."""

    def __init__(self, manager: Manager, gate: Gate) -> None:
        super().__init__(manager)
        self._gate = gate
        self._routes: dict[str, frozenset[int]] = {}
        self._cluster: dict[str, tuple[VersionStatus, ...]] = {}

    def route(self, model: str, routed: frozenset[int], status: tuple[VersionStatus, ...]) -> None:
        """From now on, requests for `model` reach `routed` only (one dict store each)."""
        self._cluster[model] = status
        self._routes[model] = routed

    def routed(self, model: str) -> frozenset[int]:
        return self._routes.get(model, frozenset())

    def waits(self, model: str) -> bool:
        return self._gate.holds(model)

    def hold(self, model: str, version: int | None = None, label: str | None = None) -> Lease:
        self._gate.admit(model)
        return self._hold_routed(model, version, label)

    async def hold_async(
        self, model: str, version: int | None = None, label: str | None = None
    ) -> Lease:
        await self._gate.admit_async(model)
        return self._hold_routed(model, version, label)

    def _hold_routed(self, model: str, version: int | None, label: str | None) -> Lease:
        routed = self.routed(model)
        if label is not None:
            version = self._manager.resolve_label(model, label)
        if version is None:
            if not routed:
                raise NotFound(f"Servable not found for request: Latest({model})")
            version = max(routed)
        elif version not in routed:
            raise NotFound(f"Servable not found for request: Specific({model}, {version})")
        return self._manager.acquire(model, version)

    def status(
        self, model: str, version: int | None = None, label: str | None = None
    ) -> list[VersionStatus]:
        """The cluster's view of the routed and incoming versions; this replica's own for
        the versions it has left behind (END, with their errors)."""
        cluster = {s.version: s for s in self._cluster.get(model, ())}
        if label is not None:
            version = self._manager.resolve_label(model, label)
        try:
            local = self._manager.status(model)
        except NotFound:
            local = []
        merged = {s.version: s for s in local if s.version not in cluster} | cluster
        if version is not None:
            if version not in merged:
                raise NotFound(f"Could not find version {version} of model {model}")
            return [merged[version]]
        if not merged:
            raise NotFound(f"Could not find any versions of model {model}")
        return [merged[v] for v in sorted(merged, reverse=True)]


class Gate:
    """The hold barrier: while a model is held, requests for it wait (at most
    `limit_seconds`, then 503) instead of being answered.

    Thread-safe: orders are applied on the replica's control loop while requests wait on
    the REST server's loop, the gRPC server's loop or a worker thread.
    """

    def __init__(self, limit_seconds: float) -> None:
        self._limit = limit_seconds
        self._lock = threading.Lock()
        self._held: dict[str, _Hold] = {}

    def hold(self, model: str, flip: int | None) -> None:
        """Hold new requests for `model` (for a flip, or `None`: until it can serve)."""
        with self._lock:
            held = self._held.get(model)
            if held is None:
                self._held[model] = _Hold(flip)
            else:
                held.flip = flip

    def release(self, model: str) -> None:
        with self._lock:
            held = self._held.pop(model, None)
        if held is not None:
            held.release()

    def held(self) -> Mapping[str, int | None]:
        """The held models and the flip each is held for."""
        return {model: held.flip for model, held in list(self._held.items())}

    def holds(self, model: str) -> bool:
        return model in self._held

    async def admit_async(self, model: str) -> None:
        """Return once `model` is not held; Unavailable after the limit."""
        held = self._held.get(model)
        if held is None:
            return
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._held.get(model) is not held:
                return  # released meanwhile
            held.waiters.append((loop, woken))
        try:
            await asyncio.wait_for(woken, self._limit)
        except TimeoutError:
            raise self._too_long(model) from None

    def admit(self, model: str) -> None:
        """`admit_async` for a worker thread; on an event loop a held model is refused at
        once (503, try again), since waiting there would stall every other request."""
        held = self._held.get(model)
        if held is None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a worker thread: it may wait
            if held.released.wait(self._limit):
                return
        raise self._too_long(model)

    def _too_long(self, model: str) -> Unavailable:
        return Unavailable(
            f"model {model} is switching versions across replicas and this replica has "
            f"not been told to go on within {self._limit:g}s; try again"
        )


class _Hold:
    """One model's hold: its flip and who waits for its release."""

    def __init__(self, flip: int | None) -> None:
        self.flip = flip
        self.released = threading.Event()  # worker threads wait on this
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def release(self) -> None:
        self.released.set()
        for loop, woken in self.waiters:
            try:
                loop.call_soon_threadsafe(_wake, woken)
            except RuntimeError:  # that loop has closed: nobody waits there any more
                pass


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)
