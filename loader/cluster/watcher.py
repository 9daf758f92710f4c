"""The watcher: one decision for many replicas.

It runs the sources and each model's selection policy, keeps every replica's latest report,
and applies the rollout's decisions (`rollout.py`) on every report, every storage change and
every tick (timeouts). Replicas long-poll it for their orders; orders are the whole desired
state, so a replica that joins (autoscaling, a restart) gets the current versions at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loader.app.parts import Storage, make_source, selection_policy, source_kind
from loader.base import Code, VersionRef
from loader.cluster.messages import Endpoint, ModelOrder, Orders, Report
from loader.cluster.rollout import Bounds, ReplicaModel, Rollout, aim, live, start, step
from loader.config.schema import Config
from loader.manager.harness import VersionStatus
from loader.serving.metrics import Metrics
from loader.sources.base import Source

log = logging.getLogger("modelwatch.cluster.watcher")

TICK_SECONDS = 0.1
FORGET_AFTER_TIMEOUTS = 20  # a gone replica stays in the status table this many timeouts


@dataclass
class _Replica:
    report: Report
    seen: float  # monotonic time of its latest report


class Watcher:
    """Decides, per model, what every replica keeps loaded and what requests reach."""

    def __init__(self, config: Config, bounds: Bounds | None = None) -> None:
        self._config = config
        self._bounds = bounds or Bounds()
        self._lock = threading.Lock()
        self._policies = {m.name: selection_policy(m) for m in config.models}
        self._ready: dict[str, dict[int, VersionRef]] = {}
        self._refs: dict[str, dict[int, VersionRef]] = {m.name: {} for m in config.models}
        self._rollouts: dict[str, Rollout] = {}
        self._replicas: dict[str, _Replica] = {}
        self._born = time.monotonic()
        self._first_report: float | None = None  # monotonic time of the first replica's report
        self._flip_seed = time.time_ns() // 1_000_000  # hold ids never repeat across restarts
        self._orders = Orders(uuid.uuid4().hex[:12], 0)
        self._backends: dict[str, Endpoint] = {}  # the live, serving replicas' endpoints
        self._wakers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._stopping = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="modelwatch-watcher", daemon=True)
        storage = Storage(config, Metrics())  # only for its stores: the watcher loads nothing
        self._sources: list[Source] = []
        for kind in sorted({source_kind(m) for m in config.models}):
            models = [m for m in config.models if source_kind(m) == kind]
            self._sources.append(make_source(kind, models, config, self.on_versions,
                                             storage.store))

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        for source in self._sources:
            source.start()
        self._ticker.start()

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        for source in self._sources:
            source.stop()

    def join(self, timeout: float | None = None) -> None:
        for source in self._sources:
            source.join(timeout)
        if self._ticker.is_alive():
            self._ticker.join(timeout)

    # -- inputs ----------------------------------------------------------------------

    def on_versions(self, model: str, versions: Mapping[int, VersionRef]) -> None:
        """A source's callback: the complete set of ready versions of `model`."""
        with self._lock:
            if model not in self._policies:
                return
            rollout = self._rollouts.get(model)
            if not versions and rollout is not None and rollout.routed:
                log.warning("storage lists no versions of model %s; keeping the routed ones",
                            model)  # invariant 3: an empty listing unloads nothing
                return
            self._ready[model] = dict(versions)
            self._refs[model].update(versions)
            self._decide()

    def report(self, report: Report) -> None:
        """A replica's state; a report older than one already seen is ignored."""
        with self._lock:
            known = self._replicas.get(report.replica)
            if known is not None and known.report.sequence >= report.sequence:
                known.seen = time.monotonic()
                return
            failed = self._newly_failed(known.report if known else None, report)
            self._replicas[report.replica] = _Replica(report, time.monotonic())
            if self._first_report is None:
                self._first_report = time.monotonic()
            self._decide()
        # A replica's failed load is storage's news too: the sources look at that version on
        # every poll until its content changes, so a fixed upload rolls out within a poll or two.
        for model, version, fingerprint in failed:
            for source in self._sources:
                source.recheck(model, version, fingerprint)

    def _newly_failed(self, before: Report | None, now: Report) -> list[tuple[str, int, str]]:
        """The (model, version, fingerprint) of each load `now` reports failed that `before` did not."""
        found = []
        for model, state in now.models.items():
            earlier = before.models.get(model) if before is not None else None
            for version in state.failed:
                ref = self._refs.get(model, {}).get(version)
                if ref is not None and (earlier is None or version not in earlier.failed):
                    found.append((model, version, ref.fingerprint))
        return found

    async def poll(self, report: Report, timeout: float) -> Orders:
        """Record `report`, then answer with the orders once they differ from those the
        replica applied, or after `timeout` seconds (a heartbeat either way)."""
        self.report(report)
        orders = self._orders
        if (orders.watcher, orders.revision) == report.applied:
            await self._change(timeout)
        return self._orders

    async def backends(self, known: Mapping[str, Endpoint], timeout: float) -> dict[str, Endpoint]:
        """The endpoints of the live replicas that serve (replica -> endpoint), once they
        differ from `known`, or after `timeout` seconds: what the balancer sends to."""
        if self._backends == known:
            await self._change(timeout)
        return dict(self._backends)

    async def _change(self, timeout: float) -> None:
        """Wait until the orders or the backends change, or `timeout` passes."""
        waker = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._wakers.add(waker)
        try:
            await asyncio.wait_for(waker[1].wait(), timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._wakers.discard(waker)

    # -- outputs ---------------------------------------------------------------------

    @property
    def orders(self) -> Orders:
        return self._orders

    def replicas(self) -> list[dict[str, Any]]:
        """Every replica heard from lately, with its state per model (for status)."""
        now = time.monotonic()
        with self._lock:
            alive = live({r: k.seen for r, k in self._replicas.items()}, now, self._bounds)
            return [
                {
                    "replica": r,
                    "node": k.report.node,
                    "live": r in alive,
                    "serving": k.report.serving,
                    "seconds_since_report": round(now - k.seen, 3),
                    "endpoint": _address(k.report.endpoint),
                    "models": {
                        m: {
                            "available": sorted(s.available), "routed": sorted(s.routed),
                            "held": s.held is not None,
                            "failed": {str(v): e for v, e in s.failed.items()},
                        }
                        for m, s in sorted(k.report.models.items())
                    },
                }
                for r, k in sorted(self._replicas.items())
            ]

    def rollouts(self) -> dict[str, dict[str, Any]]:
        """Every model's rollout: routed and target versions, stage, who holds it up."""
        with self._lock:
            return {
                m: {
                    "routed": sorted(r.routed), "target": sorted(r.target),
                    "stage": r.stage.value, "flips": r.flips, "aborts": r.aborts,
                    "blocked": dict(r.blocked),
                }
                for m, r in sorted(self._rollouts.items())
            }

    # -- decisions -------------------------------------------------------------------

    def _tick(self) -> None:
        while not self._stopping.wait(TICK_SECONDS):
            with self._lock:
                self._decide()

    def _decide(self) -> None:
        """Apply the rollout's decisions to every model; publish new orders on a change."""
        now = time.monotonic()
        alive = live({r: k.seen for r, k in self._replicas.items()}, now, self._bounds)
        for name, seen in list(self._replicas.items()):
            if now - seen.seen > FORGET_AFTER_TIMEOUTS * self._bounds.replica_timeout_seconds:
                del self._replicas[name]
        reports = [self._replicas[r].report for r in alive]
        # After a (re)start, hear every live replica before telling anyone anything: a
        # watcher that took over from the first replica alone could route back the version
        # a flip left behind, or drop from the balancer the replicas not heard from yet.
        settled = (self._first_report is not None
                   and now - self._first_report >= self._bounds.settle_seconds)
        backends = {r.replica: r.endpoint for r in reports if r.serving and r.endpoint}
        if settled and backends != self._backends:
            self._backends = backends
            self._wake()
        changed = False
        for model, ready in self._ready.items():
            target = frozenset(self._policies[model](ready.keys()))
            rollout = self._rollouts.get(model)
            if rollout is None:
                waited = now - self._born >= self._bounds.replica_timeout_seconds
                if not settled and not waited:
                    continue
                routed = [r.models[model].routed for r in reports if model in r.models]
                rollout = start(target, routed, self._flip_seed)
            replicas = {
                r.replica: ReplicaModel(s.available, s.failed, s.held)
                for r in reports if (s := r.models.get(model)) is not None
            }
            decided = step(aim(rollout, target), replicas, now, self._bounds)
            if decided != self._rollouts.get(model):
                self._log(model, self._rollouts.get(model), decided)
                self._rollouts[model] = decided
                changed = True
        if changed:
            self._publish()

    def _publish(self) -> None:
        models = {}
        for model, rollout in self._rollouts.items():
            refs = self._refs[model]
            for version in list(refs):  # forget what neither storage nor routing holds
                if version not in rollout.keep and version not in self._ready.get(model, {}):
                    del refs[version]
            models[model] = ModelOrder(
                {v: refs[v] for v in rollout.keep if v in refs}, rollout.routed, rollout.hold,
                _cluster_status(model, rollout), rollout.stage.value, rollout.flips,
                rollout.aborts, dict(rollout.blocked),
            )
        self._orders = Orders(self._orders.watcher, self._orders.revision + 1, models)
        self._wake()

    def _wake(self) -> None:
        for loop, event in self._wakers:
            loop.call_soon_threadsafe(event.set)

    @staticmethod
    def _log(model: str, before: Rollout | None, after: Rollout) -> None:
        if before is None or before.stage is not after.stage or before.routed != after.routed:
            log.info(
                "model %s: %s, routed %s, target %s%s", model, after.stage.value,
                sorted(after.routed), sorted(after.target),
                f" (aborted flips: {after.aborts})" if after.aborts else "",
            )
        for replica, why in after.blocked.items():
            if before is None or before.blocked.get(replica) != why:
                log.info("model %s: replica %s %s", model, replica, why)


def _cluster_status(model: str, rollout: Rollout) -> tuple[VersionStatus, ...]:
    """A version is AVAILABLE when routing serves it; a target not routed yet is LOADING,
    with the first failure that holds it up as its error."""
    failure = next((f"replica {r} {why}" for r, why in sorted(rollout.blocked.items())
                    if why.startswith("failed")), "")
    statuses = []
    for version in sorted(rollout.keep, reverse=True):
        if version in rollout.routed:
            statuses.append(VersionStatus(model, version, "AVAILABLE", Code.OK, ""))
        elif failure:
            statuses.append(VersionStatus(model, version, "LOADING", Code.UNKNOWN, failure))
        else:
            statuses.append(VersionStatus(model, version, "LOADING", Code.OK, ""))
    return tuple(statuses)


def _address(endpoint: Endpoint | None) -> dict[str, str] | None:
    if endpoint is None:
        return None
    return {"rest": f"{endpoint.host}:{endpoint.rest_port}",
            "grpc": f"{endpoint.host}:{endpoint.grpc_port}"}
