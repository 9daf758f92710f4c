"""The rollout's decisions: when routing may move a model to new versions across replicas.

Pure functions of a snapshot (what the policy aspires to, what each live replica reported,
the time), like the transition policies; the watcher applies them, replicas obey.

Why a barrier. Flipping replicas one at a time cannot keep invariant 8 ("no client sees
version N+1 and then N"): replica A flips, a client is answered by N+1 from A, then by N
from B, which has not flipped yet. So a rollout has two phases:

1. LOADING: every live replica loads the target versions beside the routed ones, which
   keep serving. A replica whose load fails holds the rollout here (and says why); the
   routed versions go on serving everywhere, so no mix of versions is ever served.
2. HOLDING, then the flip: the watcher tells every replica to *hold* the model: requests
   for it that arrive from now on wait instead of being answered. Each replica says when it
   holds. Only when every live replica holds (and has the target available) is routing
   flipped to the target, everywhere, and the held requests go on to the target.

No replica answers from N+1 before every replica has stopped starting answers from N, so
a client that has seen N+1 (its request arrived after the flip) sends its next request to
a replica that either holds (and answers it from N+1 once it flips) or has flipped. A
request that began before its replica held may still be answered by N: it overlapped the
flip, so no order between it and the N+1 answers is promised (or observable).

Bounded waits. If not every replica holds within `hold_seconds` (one died, or is slow),
the flip is aborted: the holds are released, N goes on serving, and the next try comes
after `retry_seconds`, by which time a dead replica has stopped heartbeating and left the
live set (see `live`). A replica that dies while loading holds the rollout up only until
its heartbeat times out. Requests never wait longer than the replica's own hold limit.
With no live replica at all nothing flips: replicas that join start at the routed
versions, load the target, and the flip follows.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace


class Stage(enum.Enum):
    """Where a model's rollout is."""

    STEADY = "steady"  # routing serves what the policy aspires to
    LOADING = "loading"  # replicas load the target beside the routed versions
    HOLDING = "holding"  # replicas hold requests; the flip waits for every one of them


@dataclass(frozen=True)
class Bounds:
    """How long a rollout waits."""

    hold_seconds: float = 5.0  # every live replica must hold within this, or the flip aborts
    retry_seconds: float = 5.0  # after an abort, the next flip waits this long
    replica_timeout_seconds: float = 15.0  # a replica not heard from for this long is gone
    # A (re)started watcher decides nothing for this long after its first report: every
    # live replica reports within a heartbeat, so it takes over from all of them at once.
    settle_seconds: float = 2.0


@dataclass(frozen=True)
class ReplicaModel:
    """What one replica reported about one model."""

    available: frozenset[int] = frozenset()
    failed: Mapping[int, str] = field(default_factory=dict)  # version -> its load error
    held: int | None = None  # the flip it holds requests for


@dataclass(frozen=True)
class Rollout:
    """One model's routing across the cluster; replaced whole on every decision."""

    routed: frozenset[int]  # what requests reach, on every replica
    target: frozenset[int]  # what the selection policy aspires to
    stage: Stage = Stage.STEADY
    flip: int = 0  # the id of the latest hold; grows with every one
    since: float = 0.0  # when the current hold began
    not_before: float = 0.0  # no hold before this (after an abort)
    flips: int = 0  # flips done
    aborts: int = 0  # holds given up
    blocked: Mapping[str, str] = field(default_factory=dict)  # replica -> why it holds us up

    @property
    def keep(self) -> frozenset[int]:
        """The versions every replica keeps loaded: the routed ones and the target."""
        return self.routed | self.target

    @property
    def hold(self) -> int | None:
        """The flip replicas must hold requests for, if any."""
        return self.flip if self.stage is Stage.HOLDING else None


def start(target: frozenset[int], reported: Iterable[frozenset[int]], flip: int) -> Rollout:
    """A model's first rollout as this watcher sees it.

    The routed versions are the newest that any replica routes (after a watcher restart
    they survive in the replicas); a fresh cluster routes nothing until its first flip.
    `flip` seeds the hold ids, so ids from an earlier watcher are never reused.
    """
    routed = max(reported, key=lambda versions: max(versions, default=-1), default=frozenset())
    return Rollout(
        routed, target, Stage.STEADY if routed == target else Stage.LOADING, flip=flip
    )


def aim(rollout: Rollout, target: frozenset[int]) -> Rollout:
    """The policy now aspires to `target`: a changed target starts over from LOADING."""
    if target == rollout.target:
        return rollout
    return replace(rollout, target=target, stage=Stage.LOADING, blocked={})


def live(last_seen: Mapping[str, float], now: float, bounds: Bounds) -> frozenset[str]:
    """The replicas heard from within the timeout."""
    return frozenset(
        r for r, seen in last_seen.items() if now - seen < bounds.replica_timeout_seconds
    )


def step(
    rollout: Rollout, replicas: Mapping[str, ReplicaModel], now: float, bounds: Bounds
) -> Rollout:
    """The next decision, given what every *live* replica reported about this model."""
    if rollout.target == rollout.routed:
        return replace(rollout, stage=Stage.STEADY, blocked={})
    if not replicas:  # a flip needs someone to agree to it: wait for replicas to join
        return replace(rollout, stage=Stage.LOADING, blocked={})
    unready = {r: _why_unready(rollout.target, m) for r, m in replicas.items()}
    unready = {r: why for r, why in unready.items() if why}
    if rollout.stage is not Stage.HOLDING:
        if unready or now < rollout.not_before:
            return replace(rollout, stage=Stage.LOADING, blocked=unready)
        return replace(rollout, stage=Stage.HOLDING, flip=rollout.flip + 1, since=now, blocked={})
    waiting = dict(unready)
    for r, m in replicas.items():
        if r not in waiting and m.held != rollout.flip:
            waiting[r] = "does not hold requests yet"
    if not waiting:
        return _flipped(rollout)
    if now - rollout.since >= bounds.hold_seconds:
        return replace(
            rollout, stage=Stage.LOADING, not_before=now + bounds.retry_seconds,
            aborts=rollout.aborts + 1,
            blocked={r: f"{why} after {bounds.hold_seconds:g}s: flip aborted"
                     for r, why in waiting.items()},
        )
    return replace(rollout, blocked=waiting)


def _flipped(rollout: Rollout) -> Rollout:
    return replace(
        rollout, routed=rollout.target, stage=Stage.STEADY, flips=rollout.flips + 1, blocked={}
    )


def _why_unready(target: frozenset[int], model: ReplicaModel) -> str:
    failed = sorted(v for v in target if v in model.failed)
    if failed:
        return f"failed to load version {failed[0]}: {model.failed[failed[0]]}"
    missing = sorted(target - model.available)
    if missing:
        return "loading version " + ", ".join(map(str, missing))
    return ""
