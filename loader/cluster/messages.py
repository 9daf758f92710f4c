"""What the watcher and the replicas tell each other (pickled by Ray between processes).

Orders go from the watcher to replicas and are *levels*, not edges: each one is the whole
desired state, so a replica that missed some simply applies the latest. Reports go the
other way and carry a sequence number, so a late one never overwrites a newer one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from loader.base import VersionRef
from loader.manager.harness import VersionStatus


@dataclass(frozen=True)
class ModelOrder:
    """What every replica does with one model."""

    versions: Mapping[int, VersionRef]  # keep these loaded (routed and target)
    routed: frozenset[int]  # answer requests from these only
    hold: int | None  # hold new requests for this flip, and say so
    status: tuple[VersionStatus, ...]  # the cluster's view, for GET /v1/models/{m}
    stage: str = "steady"  # the rollout's, for metrics and status
    flips: int = 0
    aborts: int = 0
    blocked: Mapping[str, str] = field(default_factory=dict)  # replica -> why it waits


@dataclass(frozen=True)
class Orders:
    """The watcher's whole desired state for replicas."""

    watcher: str  # this watcher's id: a restarted watcher starts its revisions over
    revision: int
    models: Mapping[str, ModelOrder] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelState:
    """What one replica has of one model."""

    available: frozenset[int]
    failed: Mapping[int, str]  # version -> why its load failed
    routed: frozenset[int]
    held: int | None


@dataclass(frozen=True)
class Endpoint:
    """Where a replica's own data plane listens (the balancer sends requests there)."""

    host: str
    rest_port: int
    grpc_port: int


@dataclass(frozen=True)
class Report:
    """One replica's state, sent on every poll and whenever it changes."""

    replica: str
    node: str
    sequence: int
    serving: bool  # it has started (its first versions loaded)
    models: Mapping[str, ModelState]
    applied: tuple[str, int] = ("", -1)  # the watcher id and revision of the orders applied
    endpoint: Endpoint | None = None  # once its ports are open
