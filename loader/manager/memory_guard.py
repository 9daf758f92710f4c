"""The manager's memory guard: estimates a version before its load, decides whether the
load may start (or what to evict first), measures what each load really took, and keeps
the figures the status and metrics report.

Glue between the pure accounting (`memory`), this process's measured memory
(`process_memory`) and the manager's harnesses. Called under the manager's lock; the
reads of /proc it makes there take microseconds.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from loader.base import Code
from loader.manager import process_memory
from loader.manager.harness import Harness
from loader.manager.memory import (
    Admit,
    Candidate,
    Decision,
    Evict,
    MemoryBudget,
    Refuse,
    Usage,
)
from loader.manager.model_state import ModelState
from policies.base import Phase

log = logging.getLogger("modelwatch.manager")


class ProcessMemory(Protocol):
    """Where the figures come from: `process_memory` (a module) in the server."""

    def resident_bytes(self) -> int | None: ...

    def peak_resident_bytes(self) -> int | None: ...

    def reset_peak(self) -> bool: ...


@dataclass(frozen=True)
class LoadProbe:
    """The process's memory when a load began, to tell what the load added."""

    resident_bytes: int | None
    events: int  # loads and unloads begun so far: another one meanwhile spoils the figure
    alone: bool


@dataclass(frozen=True)
class MemoryReport:
    """Everything the metrics say about memory, taken at one moment."""

    usage: Usage
    estimates: Mapping[tuple[str, int], int]  # (model, version) -> bytes, loading or loaded
    evictions: Mapping[str, int]
    refusals: Mapping[str, int]


class MemoryGuard:
    """Admission and eviction under `loading.memory_limit_bytes` (None: no limit)."""

    def __init__(
        self,
        limit_bytes: int | None,
        process: ProcessMemory = process_memory,
    ) -> None:
        self.budget = MemoryBudget(limit_bytes)
        self._process = process
        self._events = 0
        self._unloads_running = 0
        self.evictions: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()

    @property
    def limit_bytes(self) -> int | None:
        return self.budget.limit_bytes

    def resident_bytes(self) -> int:
        return self._process.resident_bytes() or 0

    def estimate(self, harness: Harness) -> int:
        """Record and return the peak a load of this version is expected to add."""
        harness.estimate_bytes = self.budget.estimate(harness.model, harness.ref.size_bytes)
        return harness.estimate_bytes

    def decide(
        self,
        harness: Harness,
        models: Mapping[str, ModelState],
        last_used: Mapping[str, float],
        freed: int = 0,
    ) -> Decision:
        """May the load of `harness` start now? `freed`: bytes to count as already given
        back (a swap's old version, to ask whether the new one fits without it)."""
        estimate = self.estimate(harness)
        if self.budget.limit_bytes is None:
            return Admit()
        return self.budget.decide(
            f"{{name: {harness.model} version: {harness.version}}}",
            estimate,
            self.resident_bytes() - freed,
            freeing_bytes=freeing(models.values()),
            candidates=eviction_candidates(models, last_used, exclude=harness.model),
        )

    def admit(
        self,
        state: ModelState,
        harness: Harness,
        aspired: frozenset[int],
        models: Mapping[str, ModelState],
        last_used: Mapping[str, float],
        start_unload: Callable[[Harness], None],
    ) -> bool:
        """Whether the load of `harness` may start now; if not, make room (evict idle
        on-demand models, or swap resource-preserving), or record the refusal. Loads
        not started are tried again when a load or an unload ends."""
        for _ in range(3):  # a candidate that took a request meanwhile is skipped: again
            decision = self.decide(harness, models, last_used)
            if not isinstance(decision, Evict):
                break
            now = time.monotonic()
            evicted = [
                self._evict(models[name], harness, start_unload, last_used.get(name), now)
                for name in decision.models
            ]
            if any(evicted):  # room is being made: tried again when the unloads end
                break
        if isinstance(decision, Admit):
            return True
        if not isinstance(decision, Refuse):
            return False
        leaving = [
            h for h in state.harnesses.values()
            if h.phase is Phase.AVAILABLE and h.version not in aspired
        ]
        freed = sum(map(charge, leaving))
        if leaving and isinstance(self.decide(harness, models, last_used, freed), Admit | Evict):
            log.warning(
                "model=%s versions %s and %d do not both fit under loading.memory_limit_bytes: "
                "this swap is resource-preserving (the old version unloads first)",
                harness.model, ", ".join(str(h.version) for h in leaving), harness.version,
            )
            for old in leaving:
                start_unload(old)
            return False
        if harness.refuse(Code.RESOURCE_EXHAUSTED, decision.message):
            self.refusals[harness.model] += 1
        return False

    def _evict(
        self, state: ModelState, needed_by: Harness, start_unload: Callable[[Harness], None],
        used: float | None, now: float,
    ) -> bool:
        """Unload an idle on-demand model (it loads again on its next request); False if
        a request took it meanwhile."""
        # Each version closes only if no request holds it; one that took a request
        # meanwhile stays (and the model with it, until a later eviction).
        closed = [
            h for h in state.harnesses.values()
            if h.phase is Phase.AVAILABLE and h.handle is not None and h.handle.close_if_idle()
        ]
        if not closed:
            return False
        state.demanded = False
        self.evictions[state.spec.name] += 1
        log.info(
            "model=%s evicted (the least recently used idle on-demand model, last used %s) "
            "to make room for version %d of model %s", state.spec.name,
            "never" if used is None else f"{now - used:.1f}s ago", needed_by.version,
            needed_by.model,
        )
        for harness in closed:
            start_unload(harness)
        return True

    # -- the life of a load and of an unload -------------------------------------------

    def load_started(self, harness: Harness) -> None:
        """Reserve the version's estimate until `load_ended`."""
        self.budget.reserve(harness.model, harness.version, harness.estimate_bytes)
        self._events += 1

    def measure_from(self) -> LoadProbe:
        """On the load's thread, just before it runs."""
        alone = self.budget.loads_running == 1 and self._unloads_running == 0
        if alone:
            self._process.reset_peak()
        return LoadProbe(self._process.resident_bytes(), self._events, alone)

    def load_ended(self, harness: Harness, probe: LoadProbe, loaded: bool) -> None:
        """Release the reservation; if the load ran on its own, learn what it took."""
        self.budget.release(harness.model, harness.version)
        if not loaded:
            return
        harness.resident_bytes = harness.estimate_bytes
        after, peak = self._process.resident_bytes(), self._process.peak_resident_bytes()
        if not probe.alone or probe.events != self._events or probe.resident_bytes is None:
            return
        if after is not None:
            harness.resident_bytes = max(0, after - probe.resident_bytes)
        if peak is not None:
            self.budget.learn(
                harness.model, harness.ref.size_bytes, max(0, peak - probe.resident_bytes)
            )

    def unload_started(self) -> None:
        self._unloads_running += 1
        self._events += 1

    def unload_ended(self) -> None:
        self._unloads_running -= 1

    def report(self, models: Mapping[str, ModelState]) -> MemoryReport:
        estimates = {
            (h.model, h.version): h.status().memory_bytes
            for state in models.values()
            for h in state.harnesses.values()
            if h.phase in (Phase.NEW, Phase.LOADING, Phase.AVAILABLE, Phase.UNLOADING)
            and h.estimate_bytes
        }
        return MemoryReport(
            self.budget.usage(self.resident_bytes(), freeing(models.values())),
            estimates, dict(self.evictions), dict(self.refusals),
        )


def charge(harness: Harness) -> int:
    """What unloading this version is expected to free."""
    return harness.resident_bytes if harness.resident_bytes is not None else harness.estimate_bytes


def freeing(models: Iterable[ModelState]) -> int:
    """Bytes that unloads under way are about to give back."""
    return sum(
        charge(h) for state in models for h in state.harnesses.values()
        if h.phase is Phase.UNLOADING
    )


def eviction_candidates(
    models: Mapping[str, ModelState], last_used: Mapping[str, float], exclude: str
) -> list[Candidate]:
    """Idle on-demand models: loaded, nothing loading or unloading, no request holding a
    version. Always-loaded models and the model that needs the room are never candidates."""
    found = []
    for name, state in models.items():
        if name == exclude or not state.spec.on_demand:
            continue
        versions = [h for h in state.harnesses.values() if h.phase is not Phase.END]
        available = [h for h in versions if h.phase is Phase.AVAILABLE]
        if not available or any(h.phase in (Phase.LOADING, Phase.UNLOADING) for h in versions):
            continue
        if any(h.handle is None or h.handle.users for h in available):
            continue
        found.append(Candidate(name, last_used.get(name, 0.0), sum(map(charge, available))))
    return found
