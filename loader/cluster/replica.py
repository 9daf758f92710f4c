"""A replica: its own manager, servables, batching, REST and gRPC servers, loading what it is told.

The replica long-polls the watcher for orders and applies them: the versions to keep
loaded go to its manager (as a source's report would), the routed versions to its data
plane, a hold to its gate. It reports its state on every poll and at once whenever a
version moves or a hold starts, so the watcher hears of a finished load or an ack without
waiting for the next poll. It does not start serving before its routed versions are loaded.

Its REST (the fast path included) and gRPC servers are those `modelwatch serve` runs, with
the same limits, on ports of its own: the balancer sends requests straight to them, so no
request crosses Ray. The hold is applied where every request takes its version
(`RoutedDataPlane`), before the data plane answers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from loader.app.parts import Storage, make_manager
from loader.app.servers import DRAIN_SECONDS, grpc_server, rest_server
from loader.base import Code
from loader.cluster.messages import Endpoint, ModelState, Orders, Report
from loader.cluster.routing import Gate, RoutedDataPlane
from loader.config.schema import Config
from loader.manager.harness import Transition
from loader.manager.manager import ModelSpec
from loader.serving.decode_budget import DecodeBudget
from loader.serving.metrics import Metrics
from policies.selection import All
from policies.transition import availability_preserving

log = logging.getLogger("modelwatch.cluster.replica")

RETRY_SECONDS = 0.5  # after a poll that failed (the watcher restarting, say)
HEARTBEAT_SECONDS = 1.0
REPLICAS_PATH = "/modelwatch/replicas"  # the watcher's table, at the cluster's endpoint


class Replica:
    """One replica's parts; `serve(host)` opens its REST and gRPC ports."""

    def __init__(
        self,
        config: Config,
        replica: str,
        node: str,
        *,
        hold_limit_seconds: float,
        replicas: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        from loader.servables.quiet_tf import (
            import_tensorflow,
            prefer_plain_allocator,
            set_thread_pools,
        )
        from loader.servables.runtime import prepare_runtime

        # What `modelwatch serve` does before TensorFlow's import, in this Ray worker.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        prefer_plain_allocator()
        set_thread_pools(config.tensorflow.intra_op_parallelism,
                         config.tensorflow.inter_op_parallelism)
        import_tensorflow()
        prepare_runtime()  # before any load, as the daemon does
        self.name, self.node = replica, node
        self.metrics = Metrics()
        self._storage = Storage(config, self.metrics)
        self._storage.batching = {m.name: m.batching for m in config.models}
        self.manager = make_manager(config, self._storage, self.metrics)
        self.manager.add_observer(self._moved)
        # The watcher's policies decide; here every version it names is kept, and the
        # old one leaves only once it names the new one alone (after the flip).
        self.manager.set_models(
            [ModelSpec(m.name, All(), availability_preserving, dict(m.version_labels))
             for m in config.models]
        )
        self._models = [m.name for m in config.models]
        self.gate = Gate(hold_limit_seconds)
        self.dataplane = RoutedDataPlane(self.manager, self.gate)
        self._config = config
        self._replicas = replicas
        self._rest: Any = None  # the servers, once `serve` has opened their ports
        self._grpc: Any = None
        self.endpoint: Endpoint | None = None
        self._orders = Orders("", -1)
        self.metrics.registry.register(_RolloutMetrics(lambda: self._orders))
        self._sequence = 0
        self._serving = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None

    def serve(self, host: str) -> Endpoint:
        """Open the REST and gRPC ports on `host` (free ones), built as `modelwatch serve`
        builds them from `server.*`: the REST fast path, batching, metrics, the limits."""
        from starlette.routing import Route

        from loader.servables.runtime import hand_over_sooner

        server = self._config.server.model_copy(update={"host": host})
        budget = DecodeBudget(  # one for REST and gRPC
            server.max_decoding_bytes, while_used=hand_over_sooner
        )
        self._grpc = grpc_server(server, self.dataplane, self.metrics, budget, 0)
        self._grpc.start()
        _, self._rest = rest_server(
            server, self.dataplane, self.metrics, budget, 0,
            routes=[Route(REPLICAS_PATH, self._replicas_table, methods=["GET"])],
        )
        self._rest.start()
        if not self._rest.wait_started(30):
            raise RuntimeError("the replica's REST server did not start")
        self.endpoint = Endpoint(host, self._rest.port, self._grpc.port)
        if self._changed is not None:
            self._changed.set()  # the watcher hears of the endpoint at once
        return self.endpoint

    def stop(self) -> None:
        """Close the ports (requests in flight are answered), then unload."""
        if self._grpc is not None:
            self._grpc.stop(grace_seconds=DRAIN_SECONDS)
        if self._rest is not None:
            self._rest.stop()
            self._rest.join()
        if self._grpc is not None:
            self._grpc.join(DRAIN_SECONDS + 5)
        self.manager.stop()
        self.manager.join()

    async def _replicas_table(self, request: Any) -> Any:
        """GET /modelwatch/replicas: the watcher's table, asked on the control loop."""
        from starlette.responses import JSONResponse

        if self._replicas is None or self._loop is None:
            return JSONResponse({"error": "no watcher to ask"}, 503)
        asked = asyncio.run_coroutine_threadsafe(self._ask_replicas(), self._loop)
        try:
            return JSONResponse(await asyncio.wrap_future(asked))
        except Exception as exc:  # the watcher restarts: say so, as TF Serving's errors do
            return JSONResponse({"error": f"the watcher did not answer: {exc}"}, 503)

    async def _ask_replicas(self) -> Any:
        assert self._replicas is not None
        return await self._replicas()

    # -- orders and reports ----------------------------------------------------------

    def apply(self, orders: Orders) -> None:
        """Do what the watcher says (on the event loop, so requests see it at once)."""
        self._orders = orders
        for model, order in orders.models.items():
            if order.versions:
                self.manager.on_versions(model, order.versions)
            self.dataplane.route(model, order.routed, order.status)
        self._refresh_gate()

    def _refresh_gate(self) -> None:
        """Hold a model while the watcher holds it, or while a routed version of it is not
        loaded here (a replica the cluster moved on without); release it otherwise."""
        for model, order in self._orders.models.items():
            missing = order.routed - self._available(model)
            if order.hold is not None or missing:
                self.gate.hold(model, order.hold)
            else:
                self.gate.release(model)

    def report(self) -> Report:
        self._sequence += 1
        held = self.gate.held()
        models = {}
        for model in self._models:
            try:
                statuses = self.manager.status(model)
            except Exception:  # no version known yet
                statuses = []
            models[model] = ModelState(
                frozenset(s.version for s in statuses if s.state == "AVAILABLE"),
                {s.version: s.error_message for s in statuses if s.error_code is not Code.OK},
                self.dataplane.routed(model),
                held.get(model),
            )
        applied = (self._orders.watcher, self._orders.revision)
        return Report(self.name, self.node, self._sequence, self._serving, models, applied,
                      self.endpoint)

    def ready(self) -> bool:
        """Every model's routed versions are loaded here (or the model has none yet)."""
        if self._orders.revision < 0:
            return False
        for model in self._models:
            order = self._orders.models.get(model)
            if order is None:
                return False  # the watcher has not decided on it yet
            if order.versions and not order.routed:
                return False  # its first flip is still to come
            if order.routed - self._available(model) - self._failed(model):
                return False
        return True

    def _available(self, model: str) -> frozenset[int]:
        try:
            return frozenset(s.version for s in self.manager.status(model)
                             if s.state == "AVAILABLE")
        except Exception:
            return frozenset()

    def _failed(self, model: str) -> frozenset[int]:
        try:
            return frozenset(s.version for s in self.manager.status(model)
                             if s.error_code is not Code.OK)
        except Exception:
            return frozenset()

    # -- the loops -------------------------------------------------------------------

    async def run(
        self,
        poll: Callable[[Report], Awaitable[Orders]],
        send: Callable[[Report], Awaitable[None]],
    ) -> None:
        """Poll for orders and report changes until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        reporter = asyncio.create_task(self._report_changes(send))
        try:
            while True:
                try:
                    orders = await poll(self.report())
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the watcher is restarting, or the network hiccups
                    log.warning("replica %s: polling the watcher failed: %s", self.name, exc)
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
                self.apply(orders)
                self._changed.set()  # a new hold is acked at once, not on the next poll
        finally:
            reporter.cancel()

    async def started(self, timeout: float) -> bool:
        """Wait until the replica can serve its routed versions; False on timeout."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        self._serving = True
        return True

    async def _report_changes(self, send: Callable[[Report], Awaitable[None]]) -> None:
        assert self._changed is not None
        while True:
            try:
                await asyncio.wait_for(self._changed.wait(), HEARTBEAT_SECONDS)
            except TimeoutError:
                pass
            self._changed.clear()
            self._refresh_gate()
            try:
                await send(self.report())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("replica %s: reporting to the watcher failed: %s", self.name, exc)

    def _moved(self, transition: Transition) -> None:
        """A manager observer (any thread): report the move soon."""
        loop, changed = self._loop, self._changed
        if loop is not None and changed is not None:
            try:
                loop.call_soon_threadsafe(changed.set)
            except RuntimeError:  # the loop closed: the replica is going away
                pass


# (key, metric name after modelwatch_rollout_, help) of each rollout gauge.
_ROLLOUT_GAUGES = (
    ("flips", "flips", "Flips of routing to new versions, everywhere at once."),
    ("aborts", "aborts", "Flips aborted because a replica did not hold in time."),
    ("pending", "pending", "1 while new versions wait to be routed."),
    ("blocked", "blocked_replicas", "Replicas a pending rollout waits for."),
)


class _RolloutMetrics:
    """The cluster's rollouts as every replica last heard of them, in its Prometheus
    output: how many flips and aborted flips, whether a flip is pending, who holds it up."""

    def __init__(self, orders: Callable[[], Orders]) -> None:
        self._orders = orders

    def collect(self) -> Iterator[Metric]:
        families = {
            key: GaugeMetricFamily(f"modelwatch_rollout_{name}", help_text, labels=["model"])
            for key, name, help_text in _ROLLOUT_GAUGES
        }
        for model, order in self._orders().models.items():
            families["flips"].add_metric([model], order.flips)
            families["aborts"].add_metric([model], order.aborts)
            families["pending"].add_metric([model], 0 if order.stage == "steady" else 1)
            families["blocked"].add_metric([model], len(order.blocked))
        yield from families.values()
