"""What the manager knows of one model: its spec, its versions' harnesses, and its routing.

Plain data, changed only under the manager's lock (the routing table excepted: it is
replaced whole, so requests read it without a lock).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from loader.base import Code, VersionRef
from loader.manager.handles import Handle
from loader.manager.harness import Harness
from policies.base import Phase, SelectionPolicy, TransitionPolicy

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
    """How one model is served: its policies, its version labels, and whether it loads
    only when a request asks for it (`on_demand`; then it may also be evicted)."""

    name: str
    selection: SelectionPolicy
    transition: TransitionPolicy
    labels: Mapping[str, int] = field(default_factory=dict)
    on_demand: bool = False


@dataclass(frozen=True)
class Route:
    """What requests for one model can reach right now; replaced whole, never mutated."""

    handles: Mapping[int, Handle]
    labels: Mapping[str, int]
    # The highest version: found once here, not on every request.
    latest: int | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "latest", max(self.handles, default=None))


@dataclass
class ModelState:
    spec: ModelSpec
    ready: dict[int, VersionRef] | None = None  # None until storage has answered once
    harnesses: dict[int, Harness] = field(default_factory=dict)
    retiring: bool = False
    warned_empty: bool = False
    transient_failures: dict[int, int] = field(default_factory=dict)  # version -> in a row
    demanded: bool = False  # an on-demand model a request asked for (until evicted)

    def holds_versions(self) -> bool:
        return any(
            h.phase in (Phase.NEW, Phase.LOADING, Phase.AVAILABLE) for h in self.harnesses.values()
        )

    def loads_wanted(self) -> bool:
        """Whether loads may start: always, except for an on-demand model not asked for."""
        return self.demanded or not self.spec.on_demand

    def loads_pending(self) -> bool:
        """A version is loading, or is to load and not refused (its status says why)."""
        return any(
            h.phase is Phase.LOADING
            or (h.phase is Phase.NEW and self.loads_wanted() and h.error_code is Code.OK)
            for h in self.harnesses.values()
        )

    def wanted(self, version: int | None, label: str | None) -> Harness | None:
        """The version a request names (or the newest), if it is to load, loading, loaded,
        or being evicted (a request then waits for it to load again)."""
        if label is not None:
            version = self.spec.labels.get(label)
            if version is None:
                return None
        live = {
            v: h for v, h in self.harnesses.items()
            if h.phase in (Phase.NEW, Phase.LOADING, Phase.AVAILABLE, Phase.UNLOADING)
        }
        if version is None:
            version = max(live, default=None)
        return live.get(version) if version is not None else None

    def retry_due(self, harness: Harness) -> bool:
        """Whether a version that failed with a transient code has waited long enough."""
        if harness.error_code not in TRANSIENT_CODES:
            return False
        failures = self.transient_failures.get(harness.version, 1)
        pause = min(RETRY_TRANSIENT_MAX_SECONDS, RETRY_TRANSIENT_SECONDS * 2 ** (failures - 1))
        return bool(harness.seconds_in_phase() >= pause)

    def forget_old_ended(self) -> None:
        ready = self.ready or {}
        ended = sorted(
            v for v, h in self.harnesses.items()
            if h.phase is Phase.END or (h.phase is Phase.ERROR and v not in ready)
        )
        for version in ended[: max(0, len(ended) - KEPT_ENDED_VERSIONS)]:
            del self.harnesses[version]
