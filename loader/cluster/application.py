"""The Ray Serve application: a watcher deployment and a replica deployment, from one config.

`build({"config": "config.yaml", "replicas": "2"})` is an application builder, so Ray users
can `serve run loader.cluster.application:build config=config.yaml replicas=2` or name it
as `import_path` in a Serve config file. The one module that imports `ray`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from loader.cluster.messages import Orders, Report
from loader.cluster.replica import Replica
from loader.cluster.rollout import Bounds
from loader.cluster.watcher import Watcher
from loader.config.schema import Config, load_config

log = logging.getLogger("modelwatch.cluster")

APP_NAME = "modelwatch"
POLL_SECONDS = 1.0  # a long poll returns after this when nothing changed (a heartbeat)
HOLD_SLACK_SECONDS = 5.0  # a replica holds a request this much longer than the watcher's bound


@serve.deployment(num_replicas=1, max_ongoing_requests=10_000,
                  ray_actor_options={"num_cpus": 0})
class WatcherDeployment:
    """One watcher for the application: sources, policies, rollouts (it loads no model)."""

    def __init__(self, config: Config, bounds: Bounds) -> None:
        self._watcher = Watcher(config, bounds)
        self._watcher.start()

    async def poll(self, report: Report, timeout: float) -> Orders:
        return await self._watcher.poll(report, timeout)

    async def report(self, report: Report) -> None:
        self._watcher.report(report)

    async def replicas(self) -> dict[str, Any]:
        return {"replicas": self._watcher.replicas(), "rollouts": self._watcher.rollouts()}

    def __del__(self) -> None:
        self._watcher.stop()
        self._watcher.join(10)


@serve.deployment(max_ongoing_requests=1_000)
@serve.ingress()
class ReplicaDeployment:
    """One replica: TF Serving's REST API over its own manager, behind the hold gate."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self, config: Config, watcher: DeploymentHandle[Any], bounds: Bounds
    ) -> None:
        context = serve.get_replica_context()
        self._watcher = watcher
        self._replica = Replica(
            config, context.replica_tag, ray.get_runtime_context().get_node_id(),
            hold_limit_seconds=bounds.hold_seconds + HOLD_SLACK_SECONDS,
            replicas=self._replicas,
        )
        self._task = asyncio.get_running_loop().create_task(
            self._replica.run(self._poll, self._report)
        )
        timeout = config.loading.load_timeout_seconds or 600.0
        if not await self._replica.started(timeout):
            log.warning("replica %s: not every routed version loaded within %gs; serving anyway",
                        context.replica_tag, timeout)

    def __serve_build_asgi_app__(self) -> Any:
        return self._replica.app

    async def _poll(self, report: Report) -> Orders:
        orders: Orders = await self._watcher.poll.remote(report, POLL_SECONDS)
        return orders

    async def _report(self, report: Report) -> None:
        await self._watcher.report.remote(report)

    async def _replicas(self) -> Any:
        return await self._watcher.replicas.remote()

    async def __del__(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._replica.stop()


def application(
    config: Config, replicas: int = 2, bounds: Bounds | None = None, num_cpus: float = 1.0
) -> Any:
    """The application graph: the replicas, each given a handle to the one watcher."""
    bounds = bounds or Bounds()
    watcher = WatcherDeployment.bind(config, bounds)  # type: ignore[attr-defined]
    return ReplicaDeployment.options(  # type: ignore[attr-defined]
        num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus}
    ).bind(config, watcher, bounds)


def build(args: dict[str, str]) -> Any:
    """Serve's application builder: `config` (a path), `replicas`, `num_cpus`,
    `hold_seconds`, `retry_seconds`, `replica_timeout_seconds` (strings, as Serve passes)."""
    config = load_config(args["config"])
    defaults = Bounds()
    bounds = Bounds(
        float(args.get("hold_seconds", defaults.hold_seconds)),
        float(args.get("retry_seconds", defaults.retry_seconds)),
        float(args.get("replica_timeout_seconds", defaults.replica_timeout_seconds)),
    )
    return application(config, int(args.get("replicas", 2)), bounds,
                       float(args.get("num_cpus", 1.0)))


def serve_forever(
    config: Config, *, address: str, replicas: int, http_host: str, http_port: int,
    node_ip: str | None, bounds: Bounds, stop: Any,
) -> None:
    """`modelwatch ray`: deploy onto the Ray cluster at `address`, serve until `stop` is
    set (an Event), then delete the application (the cluster keeps running). The caller's
    SIGTERM handler (one that sets `stop`) is put back after `ray.init`, which replaces it."""
    on_sigterm = signal.getsignal(signal.SIGTERM)
    ray.init(address=address, _node_ip_address=node_ip, logging_level=logging.WARNING)
    # ray.init sets a Python handler that exits at once, then its core worker installs a C++
    # failure handler that aborts (`*** SIGTERM received`): either way the application would
    # be left deployed. Kubernetes and systemd stop with SIGTERM, so it must stop as SIGINT.
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        # One HTTP proxy, on the head: several nodes of one machine would fight for the port.
        serve.start(http_options={"host": http_host, "port": http_port},
                    proxy_location="HeadOnly")
        serve.run(application(config, replicas, bounds), name=APP_NAME, route_prefix="/")
        log.info("serving %d replica(s) on http://%s:%d", replicas, http_host, http_port)
        while not stop.wait(0.5):  # with a timeout, as `modelwatch serve` (app/cli.py) says why
            pass
        serve.delete(APP_NAME)
    finally:
        ray.shutdown()
