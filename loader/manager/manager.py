"""The manager: from the versions storage has ready to the versions that serve requests.

Sources report each model's ready versions; the model's selection policy turns them into
aspired versions; its transition policy says which loads and unloads may start; loads and
unloads run on worker threads. Requests read an immutable routing table that is swapped
atomically, and hold a ref-counted handle, so an unload waits for the requests using that
version and never blocks a request on a lock that a load or a swap holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait

from loader.base import InvalidArgument, NotFound, Unavailable, VersionRef
from loader.manager.handles import Handle, Lease
from loader.manager.harness import Harness, Transition, VersionStatus
from loader.manager.loading import LoadFn, Loading, ReleaseFn
from loader.manager.memory_guard import MemoryGuard, MemoryReport
from loader.manager.model_state import TRANSIENT_CODES, ModelSpec, ModelState, Route
from policies.base import Load, Phase, Unload, VersionSnapshot

__all__ = ["Manager", "ModelSpec", "Route"]

log = logging.getLogger("modelwatch.manager")


class Manager:
    """Loads, serves and unloads model versions as storage and policies ask."""

    def __init__(
        self,
        load: LoadFn,
        *,
        release: ReleaseFn | None = None,
        num_load_threads: int = 2,
        num_unload_threads: int = 2,
        load_retries: int = 2,
        retry_backoff_seconds: float = 1.0,
        drain_timeout_seconds: float | None = None,
        load_timeout_seconds: float | None = None,
        stop_wait_seconds: float = 2.0,
        memory: MemoryGuard | None = None,
    ) -> None:
        self._loading = Loading(
            load, release, load_retries, retry_backoff_seconds, load_timeout_seconds,
            drain_timeout_seconds,
        )
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._models: dict[str, ModelState] = {}
        self._routes: dict[str, Route] = {}
        self._observers: list[Callable[[Transition], None]] = []
        self._stopping = threading.Event()
        self._loaders = ThreadPoolExecutor(num_load_threads, "modelwatch-load")
        self._loads: set[Future[None]] = set()  # running or queued, for stop() to wait on
        self._stop_wait = stop_wait_seconds
        self._unloaders = ThreadPoolExecutor(num_unload_threads, "modelwatch-unload")
        self.memory = memory or MemoryGuard(None)
        self._last_used: dict[str, float] = {}  # model -> when a request last held it

    # -- configuration and storage -------------------------------------------------

    def add_observer(self, observer: Callable[[Transition], None]) -> None:
        """Call `observer` (quickly, under the manager's lock) on every version move."""
        self._observers.append(observer)

    def set_models(self, specs: Sequence[ModelSpec]) -> None:
        """Serve exactly these models: add new ones, update changed ones, retire the rest."""
        with self._lock:
            wanted = {spec.name: spec for spec in specs}
            for name, model in list(self._models.items()):
                if name not in wanted:
                    model.retiring = True
                    self._reconcile(name)
            for name, spec in wanted.items():
                existing = self._models.get(name)
                if existing is None:
                    self._models[name] = ModelState(spec)
                else:
                    existing.spec, existing.retiring = spec, False
                    # Made on-demand while loaded: it stays loaded until evicted.
                    existing.demanded = existing.demanded or any(
                        h.phase is Phase.AVAILABLE for h in existing.harnesses.values()
                    )
                self._publish(name)
                self._reconcile(name)

    def on_versions(self, model: str, versions: Mapping[int, VersionRef]) -> None:
        """A source's callback: `versions` is the complete set of ready versions."""
        with self._lock:
            state = self._models.get(model)
            if state is None or state.retiring:
                return
            if not versions and state.holds_versions():
                # An empty listing is more often an outage or a mistake than an intent
                # to stop serving: keep what serves (invariant 3).
                if not state.warned_empty:
                    log.warning(
                        "storage lists no versions of model %s; keeping the loaded ones", model
                    )
                    state.warned_empty = True
                return
            state.warned_empty = False
            state.ready = dict(versions)
            self._reconcile(model)
            self._changed.notify_all()  # storage answered: `loads_pending` may have changed

    # -- requests ------------------------------------------------------------------

    def acquire(self, model: str, version: int | None = None, label: str | None = None) -> Lease:
        """Hold a version for one request: the one named, the labelled one, or the latest."""
        for _ in range(8):  # a version can close between the lookup and the hold; look again
            route = self._routes.get(model)
            if route is None:
                raise NotFound(f"Servable not found for request: Latest({model})")
            wanted = version
            if label is not None:
                wanted = route.labels.get(label)
                if wanted is None:
                    raise InvalidArgument(f"Unrecognized servable version label: {label}")
            if wanted is None:
                wanted = route.latest
                if wanted is None:
                    raise NotFound(f"Servable not found for request: Latest({model})")
            handle = route.handles.get(wanted)
            if handle is None:
                raise NotFound(f"Servable not found for request: Specific({model}, {wanted})")
            if handle.try_acquire():
                self._last_used[model] = time.monotonic()  # eviction order (LRU)
                return Lease(handle, model, wanted)
        raise Unavailable(f"model {model} is changing versions too fast to serve; try again")

    def is_on_demand(self, model: str) -> bool:
        """Whether `model` loads on its first request (lock-free: for the request path)."""
        state = self._models.get(model)
        return state is not None and state.spec.on_demand

    def demand(
        self, model: str, version: int | None = None, label: str | None = None
    ) -> VersionStatus | None:
        """A request wants this on-demand model: load it (if memory allows; once, however
        many requests ask). The wanted version's status, or None if there is nothing to
        wait for (no such version, or its load failed)."""
        with self._lock:
            state = self._models.get(model)
            if state is None or not state.spec.on_demand or state.retiring:
                return None
            state.demanded = True
            self._reconcile(model)  # also decides again for a load waiting for memory
            return self.wanted_status(model, version, label)

    def wanted_status(
        self, model: str, version: int | None = None, label: str | None = None
    ) -> VersionStatus | None:
        """The status of the version a request names (or of the newest one that is not
        ended), if it is loading, loaded or to be loaded."""
        with self._lock:
            state = self._models.get(model)
            harness = state.wanted(version, label) if state is not None else None
            return harness.status() if harness is not None else None

    def memory_report(self) -> MemoryReport:
        """Memory in use, the limit, each version's figure, evictions and refusals."""
        with self._lock:
            return self.memory.report(self._models)

    def status(self, model: str, version: int | None = None) -> list[VersionStatus]:
        """Every known version of `model` (or just `version`), newest first."""
        with self._lock:
            state = self._models.get(model)
            harnesses = state.harnesses if state is not None else {}
            if version is not None:
                if version not in harnesses:
                    raise NotFound(f"Could not find version {version} of model {model}")
                return [harnesses[version].status()]
            if not harnesses:
                raise NotFound(f"Could not find any versions of model {model}")
            return [harnesses[v].status() for v in sorted(harnesses, reverse=True)]

    def resolve_label(self, model: str, label: str) -> int:
        """The version a label points at (whether or not it is loaded)."""
        with self._lock:
            state = self._models.get(model)
            if state is None:
                raise NotFound(f"Could not find any versions of model {model}")
            if label not in state.spec.labels:
                raise InvalidArgument(f"Unrecognized servable version label: {label}")
            return state.spec.labels[label]

    def labels(self, model: str) -> dict[str, int]:
        """The version labels configured for `model`."""
        with self._lock:
            state = self._models.get(model)
            return dict(state.spec.labels) if state is not None else {}

    def has_model(self, model: str) -> bool:
        """Whether `model` is configured (lock-free: for the request path)."""
        return model in self._models

    def models(self) -> list[str]:
        with self._lock:
            return sorted(name for name, m in self._models.items() if not m.retiring)

    def loads_pending(self) -> list[str]:
        """Models whose storage has not answered yet, or with a version waiting to load
        or loading (one whose load failed is done: its status says why)."""
        with self._lock:
            return sorted(
                name for name, m in self._models.items()
                if not m.retiring and (m.ready is None or m.loads_pending())
            )

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until `predicate()` holds after some version moved; False on timeout."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Nothing to start: worker threads are created as loads are asked for."""

    def stop(self) -> None:
        """Stop taking work, let running loads and unloads end, then unload everything."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        # A load can be stuck in a download or a hung graph: wait a while, not forever.
        self._loaders.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            running = list(self._loads)
        _, still_running = futures_wait(running, timeout=self._stop_wait)
        if still_running:
            log.warning(
                "stopping without waiting for %d load(s) still running after %ss",
                len(still_running), self._stop_wait,
            )
        self._unloaders.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            names = list(self._models)
            self._routes.clear()
        for name in names:
            for harness in list(self._models[name].harnesses.values()):
                if harness.phase is Phase.AVAILABLE:
                    with self._lock:
                        self._moved(harness.move(Phase.UNLOADING))
                    self._unload(harness)

    def join(self, timeout: float | None = None) -> None:
        """`stop` already waits for the workers; kept for the lifecycle contract."""

    # -- the policy loop -----------------------------------------------------------

    def _reconcile(self, model: str) -> None:
        """Apply the model's policies to its versions and start what they ask for."""
        state = self._models.get(model)
        if state is None or self._stopping.is_set():
            return
        ready = {} if state.retiring else state.ready
        if ready is None:
            return
        aspired = state.spec.selection(ready.keys())
        for version in aspired:
            harness = state.harnesses.get(version)
            ref = ready[version]
            if harness is None or harness.phase is Phase.END or (
                harness.phase is Phase.ERROR and (
                    harness.ref.fingerprint != ref.fingerprint or state.retry_due(harness)
                )
            ):
                if harness is not None and harness.phase is Phase.ERROR:
                    self._moved(harness.move(Phase.END))
                state.harnesses[version] = Harness(model, version, ref)
                self.memory.estimate(state.harnesses[version])  # shown before any load
        for harness in state.harnesses.values():
            if harness.phase is Phase.NEW and harness.version not in aspired:
                self._moved(harness.move(Phase.END))
        snapshots = [
            VersionSnapshot(h.version, h.phase, h.version in aspired)
            for h in state.harnesses.values()
            if h.phase is not Phase.END
        ]
        actions = state.spec.transition(snapshots)
        if state.retiring:  # leaving models give up everything, not just the unaspired
            actions = tuple(
                Unload(s.version) for s in snapshots if s.phase is Phase.AVAILABLE
            )
        for action in actions:
            harness = state.harnesses[action.version]
            if isinstance(action, Load) and harness.phase is Phase.NEW:
                if state.loads_wanted() and self.memory.admit(
                    state, harness, aspired, self._models, self._last_used, self._start_unload
                ):
                    self._moved(harness.move(Phase.LOADING))
                    self.memory.load_started(harness)
                    future = self._loaders.submit(self._load_worker, harness)
                    self._loads.add(future)
                    future.add_done_callback(self._loads.discard)
            elif isinstance(action, Unload) and harness.phase is Phase.AVAILABLE:
                self._start_unload(harness)
        state.forget_old_ended()
        if state.retiring and not state.holds_versions() and not any(
            h.phase is Phase.UNLOADING for h in state.harnesses.values()
        ):
            del self._models[model]
            self._routes.pop(model, None)
            self._last_used.pop(model, None)
            self.memory.budget.forget(model)

    def _start_unload(self, harness: Harness) -> None:
        self._moved(harness.move(Phase.UNLOADING))
        self._publish(harness.model)
        self._unloaders.submit(self._unload_worker, harness)

    def _retry_waiting(self) -> None:
        """Memory was freed (a load or an unload ended): try the loads that wait for it."""
        for name, state in list(self._models.items()):
            if state.loads_wanted() and any(
                h.phase is Phase.NEW for h in state.harnesses.values()
            ):
                self._reconcile(name)

    def _publish(self, model: str) -> None:
        """Swap in a new routing table for `model` (atomic: one dict assignment)."""
        state = self._models[model]
        handles = {
            h.version: h.handle
            for h in state.harnesses.values()
            if h.phase is Phase.AVAILABLE and h.handle is not None
        }
        self._routes[model] = Route(handles, dict(state.spec.labels))

    def _moved(self, transition: Transition) -> None:
        for observer in self._observers:
            observer(transition)
        self._changed.notify_all()

    def _load_worker(self, harness: Harness) -> None:
        with self._lock:
            probe = self.memory.measure_from()
        servable, code, message = self._loading.load(harness, self._stopping)
        with self._lock:
            self.memory.load_ended(harness, probe, servable is not None)
            state = self._models.get(harness.model)
            failures = state.transient_failures if state is not None else {}
            if servable is not None:
                failures.pop(harness.version, None)
                harness.handle = Handle(servable)
                self._moved(harness.move(Phase.AVAILABLE))
                if not self._stopping.is_set():
                    self._publish(harness.model)
            else:
                if code in TRANSIENT_CODES:
                    failures[harness.version] = failures.get(harness.version, 0) + 1
                self._moved(harness.move(Phase.ERROR, code, message))
            self._reconcile(harness.model)
            self._retry_waiting()

    def _unload_worker(self, harness: Harness) -> None:
        self._unload(harness)
        with self._lock:
            self._reconcile(harness.model)
            self._retry_waiting()

    def _unload(self, harness: Harness) -> None:
        with self._lock:
            self.memory.unload_started()
        self._loading.unload(harness)
        with self._lock:
            self.memory.unload_ended()
            harness.handle = None
            self._moved(harness.move(Phase.END))
