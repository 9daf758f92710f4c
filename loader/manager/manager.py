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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field

from loader.base import Code, InvalidArgument, NotFound, Unavailable, VersionRef
from loader.manager.handles import Handle, Lease
from loader.manager.harness import Harness, Transition, VersionStatus
from loader.manager.loading import LoadFn, Loading, ReleaseFn
from policies.base import (
    Load,
    Phase,
    SelectionPolicy,
    TransitionPolicy,
    Unload,
    VersionSnapshot,
)

log = logging.getLogger("modelwatch.manager")

# Failures that say "not now" rather than "not this content": a version that failed with
# one is tried again after a pause (doubling, up to RETRY_TRANSIENT_MAX_SECONDS) even if its
# content never changes. A hung load (DEADLINE_EXCEEDED) is not among them: it would hang again.
TRANSIENT_CODES = frozenset({Code.UNAVAILABLE, Code.ABORTED, Code.RESOURCE_EXHAUSTED})
RETRY_TRANSIENT_SECONDS = 5.0
RETRY_TRANSIENT_MAX_SECONDS = 300.0

# Status keeps this many ended versions per model (newest first), so it stays bounded
# however many versions a long-running server has swapped through.
KEPT_ENDED_VERSIONS = 10

@dataclass(frozen=True)
class ModelSpec:
    """How one model is served: its policies and its version labels."""

    name: str
    selection: SelectionPolicy
    transition: TransitionPolicy
    labels: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    """What requests for one model can reach right now; replaced whole, never mutated."""

    handles: Mapping[int, Handle]
    labels: Mapping[str, int]

    @property
    def latest(self) -> int | None:
        return max(self.handles, default=None)


@dataclass
class _Model:
    spec: ModelSpec
    ready: dict[int, VersionRef] | None = None  # None until storage has answered once
    harnesses: dict[int, Harness] = field(default_factory=dict)
    retiring: bool = False
    warned_empty: bool = False
    transient_failures: dict[int, int] = field(default_factory=dict)  # version -> in a row


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
    ) -> None:
        self._loading = Loading(
            load, release, load_retries, retry_backoff_seconds, load_timeout_seconds,
            drain_timeout_seconds,
        )
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._models: dict[str, _Model] = {}
        self._routes: dict[str, Route] = {}
        self._observers: list[Callable[[Transition], None]] = []
        self._stopping = threading.Event()
        self._loaders = ThreadPoolExecutor(num_load_threads, "modelwatch-load")
        self._loads: set[Future[None]] = set()  # running or queued, for stop() to wait on
        self._stop_wait = stop_wait_seconds
        self._unloaders = ThreadPoolExecutor(num_unload_threads, "modelwatch-unload")

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
                    self._models[name] = _Model(spec)
                else:
                    existing.spec, existing.retiring = spec, False
                self._publish(name)
                self._reconcile(name)

    def on_versions(self, model: str, versions: Mapping[int, VersionRef]) -> None:
        """A source's callback: `versions` is the complete set of ready versions."""
        with self._lock:
            state = self._models.get(model)
            if state is None or state.retiring:
                return
            if not versions and self._holds_versions(state):
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
                return Lease(handle, model, wanted)
        raise Unavailable(f"model {model} is changing versions too fast to serve; try again")

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
                if not m.retiring and (m.ready is None or any(
                    h.phase in (Phase.NEW, Phase.LOADING) for h in m.harnesses.values()
                ))
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

    def _holds_versions(self, state: _Model) -> bool:
        return any(
            h.phase in (Phase.NEW, Phase.LOADING, Phase.AVAILABLE)
            for h in state.harnesses.values()
        )

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
                    harness.ref.fingerprint != ref.fingerprint or self._retry_due(state, harness)
                )
            ):
                if harness is not None and harness.phase is Phase.ERROR:
                    self._moved(harness.move(Phase.END))
                state.harnesses[version] = Harness(model, version, ref)
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
                self._moved(harness.move(Phase.LOADING))
                future = self._loaders.submit(self._load_worker, harness)
                self._loads.add(future)
                future.add_done_callback(self._loads.discard)
            elif isinstance(action, Unload) and harness.phase is Phase.AVAILABLE:
                self._moved(harness.move(Phase.UNLOADING))
                self._publish(model)
                self._unloaders.submit(self._unload_worker, harness)
        self._forget_old_ended(state)
        if state.retiring and not self._holds_versions(state) and not any(
            h.phase is Phase.UNLOADING for h in state.harnesses.values()
        ):
            del self._models[model]
            self._routes.pop(model, None)

    @staticmethod
    def _retry_due(state: _Model, harness: Harness) -> bool:
        if harness.error_code not in TRANSIENT_CODES:
            return False
        failures = state.transient_failures.get(harness.version, 1)
        pause = min(RETRY_TRANSIENT_MAX_SECONDS, RETRY_TRANSIENT_SECONDS * 2 ** (failures - 1))
        return bool(harness.seconds_in_phase() >= pause)

    @staticmethod
    def _forget_old_ended(state: _Model) -> None:
        ready = state.ready or {}
        ended = sorted(
            v for v, h in state.harnesses.items()
            if h.phase is Phase.END or (h.phase is Phase.ERROR and v not in ready)
        )
        for version in ended[: max(0, len(ended) - KEPT_ENDED_VERSIONS)]:
            del state.harnesses[version]

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
        servable, code, message = self._loading.load(harness, self._stopping)
        with self._lock:
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

    def _unload_worker(self, harness: Harness) -> None:
        self._unload(harness)
        with self._lock:
            self._reconcile(harness.model)

    def _unload(self, harness: Harness) -> None:
        self._loading.unload(harness)
        with self._lock:
            harness.handle = None
            self._moved(harness.move(Phase.END))
