"""Memory accounting for loads: what a version is expected to take, what is in use, the
limit, and whether a load may start now. Pure: numbers in, decisions out (no clocks, no
/proc, no threads), so it is tested as tables; `process_memory` measures, the manager acts.

**What the limit covers.** `loading.memory_limit_bytes` bounds the whole process's
resident memory (RSS: the interpreter, TensorFlow, the server, and every version), since
that is what the kernel's OOM killer and a cgroup count. A load may start when

    resident now + reserved for loads already running + this load's estimate <= limit

where the estimate is of the *peak* a load adds (restoring variables can briefly hold more
than stays resident). Loads still running are counted at their whole estimate even though
the resident figure already holds part of them: conservative, never over.

**Estimates.** Before a model has loaded once, a version is expected to take
`VERSION_OVERHEAD_BYTES` (a session, its graph and thread pools) plus `DEFAULT_FACTOR`
times the size of its files. After each load measured on its own (no other load or unload
running, so the figures are that load's), the model's *scale* (measured peak over that
prior estimate) is learned, averaged with earlier ones, and applies to its next versions;
a model not measured yet is expected to scale as the others do on average.

**Eviction order.** When a load does not fit, idle on-demand models are unloaded, least
recently used first, until it would fit; a model with requests in flight or loaded
always is never a candidate (the manager hands only idle on-demand models in). While
unloads already under way would free enough, the load waits for them instead of evicting
more; when even evicting every candidate would not make room, the load waits for the loads
and unloads in motion to end, and is refused if there are none.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MIB = 1 << 20
DEFAULT_FACTOR = 2.0  # resident bytes per byte of files (a copy read, a copy restored)
VERSION_OVERHEAD_BYTES = 8 * MIB  # measured: 1-6 MiB for TF Serving's half_plus_two
# A measurement this far from the prior estimate is more likely noise (the allocator
# returned memory mid-load, another thread allocated) than the model: clamp the scale.
MIN_SCALE, MAX_SCALE = 0.25, 8.0
LEARNING_WEIGHT = 0.5  # of the newest measurement against what earlier ones taught


def mib(n: float) -> str:
    """Bytes as MiB for messages, e.g. `mib(3 << 20) == "3.0 MiB"`."""
    return f"{n / MIB:.1f} MiB"


@dataclass(frozen=True)
class Candidate:
    """An idle on-demand model that could be unloaded to make room."""

    model: str
    last_used: float  # when a request last held it (any monotonic order will do)
    resident_bytes: int  # what unloading its versions is expected to free


@dataclass(frozen=True)
class Admit:
    """Start the load."""


@dataclass(frozen=True)
class Evict:
    """Unload these models (least recently used first), then try again."""

    models: tuple[str, ...]
    freed_bytes: int


@dataclass(frozen=True)
class Wait:
    """Unloads under way will make room: try again when one ends."""

    freeing_bytes: int


@dataclass(frozen=True)
class Refuse:
    """No room, and none to be made: the version reports RESOURCE_EXHAUSTED."""

    message: str


Decision = Admit | Evict | Wait | Refuse


def eviction_order(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Least recently used first; equal times by name, so the order is reproducible."""
    return sorted(candidates, key=lambda c: (c.last_used, c.model))


@dataclass(frozen=True)
class Usage:
    """The figures a decision is made from, as the status and metrics report them."""

    limit_bytes: int | None
    resident_bytes: int
    reserved_bytes: int
    freeing_bytes: int = 0


class MemoryBudget:
    """The learned scales per model and the bytes reserved by loads that are running.

    Not thread-safe: the manager calls it under its own lock.
    """

    def __init__(self, limit_bytes: int | None) -> None:
        self.limit_bytes = limit_bytes
        self._scales: dict[str, float] = {}
        self._reserved: dict[tuple[str, int], int] = {}

    # -- estimates -----------------------------------------------------------------

    @staticmethod
    def prior_estimate(files_bytes: int) -> int:
        """What a version of a model never loaded before is expected to add at its peak."""
        return VERSION_OVERHEAD_BYTES + int(DEFAULT_FACTOR * max(0, files_bytes))

    def estimate(self, model: str, files_bytes: int) -> int:
        """The peak bytes a load of a version of `model` with these files should add; a
        model not measured yet takes the mean of the others' scales (1 before any)."""
        scale = self._scales.get(model)
        if scale is None:
            scale = sum(self._scales.values()) / len(self._scales) if self._scales else 1.0
        return int(self.prior_estimate(files_bytes) * scale)

    def learn(self, model: str, files_bytes: int, measured_bytes: int) -> None:
        """A load of `model` measured on its own added `measured_bytes` at its peak."""
        scale = measured_bytes / self.prior_estimate(files_bytes)
        scale = min(MAX_SCALE, max(MIN_SCALE, scale))
        earlier = self._scales.get(model)
        self._scales[model] = (
            scale if earlier is None else LEARNING_WEIGHT * scale + (1 - LEARNING_WEIGHT) * earlier
        )

    def scale(self, model: str) -> float | None:
        """The learned scale of `model`; None before its first measured load."""
        return self._scales.get(model)

    def forget(self, model: str) -> None:
        """`model` left the config: its scale is of no more use."""
        self._scales.pop(model, None)

    # -- reservations --------------------------------------------------------------

    def reserve(self, model: str, version: int, estimate: int) -> None:
        """A load starts: hold its estimate until it ends."""
        self._reserved[(model, version)] = estimate

    def release(self, model: str, version: int) -> None:
        """A load ended (loaded or failed): its bytes now show in the resident figure."""
        self._reserved.pop((model, version), None)

    @property
    def reserved_bytes(self) -> int:
        return sum(self._reserved.values())

    @property
    def loads_running(self) -> int:
        return len(self._reserved)

    # -- the decision --------------------------------------------------------------

    def decide(
        self,
        what: str,
        estimate: int,
        resident_bytes: int,
        *,
        freeing_bytes: int = 0,
        candidates: Sequence[Candidate] = (),
    ) -> Decision:
        """May a load of `what` (e.g. "version 2 of model m") estimated at `estimate` start,
        with `resident_bytes` in use now and `freeing_bytes` being unloaded?"""
        if self.limit_bytes is None:
            return Admit()
        projected = resident_bytes + self.reserved_bytes + estimate
        need = projected - self.limit_bytes
        if need <= 0:
            return Admit()
        if freeing_bytes >= need:
            return Wait(freeing_bytes)
        victims: list[str] = []
        freed = freeing_bytes
        for candidate in eviction_order(candidates):
            if freed >= need:
                break
            victims.append(candidate.model)
            freed += candidate.resident_bytes
        if freed >= need:
            return Evict(tuple(victims), freed - freeing_bytes)
        if self._reserved or freeing_bytes:
            # Loads and unloads in motion change the figures: refuse only once they end
            # (as TF Serving's BasicManager does), so a refusal is never a passing state.
            return Wait(freeing_bytes)
        return Refuse(
            f"Insufficient memory to load servable {what}: it needs an estimated "
            f"{mib(estimate)}, and {mib(resident_bytes)} is resident with "
            f"{mib(self.reserved_bytes)} reserved by loads running, against a limit of "
            f"{mib(self.limit_bytes)} (loading.memory_limit_bytes)"
        )

    def usage(self, resident_bytes: int, freeing_bytes: int = 0) -> Usage:
        return Usage(self.limit_bytes, resident_bytes, self.reserved_bytes, freeing_bytes)
