"""The Ray Serve application: a watcher, the replicas and a balancer, from one config.

`build({"config": "config.yaml", "replicas": "2"})` is an application builder, so Ray users
can `serve run loader.cluster.application:build config=config.yaml replicas=2` or name it
as `import_path` in a Serve config file. The one module that imports `ray`.

Ray carries control only: the watcher's orders and the replicas' reports. Requests go from
the balancer (HAProxy, `balancer.py`, on the head node) straight to each replica's own REST
and gRPC ports; Serve's HTTP proxy is not used (`proxy_location="Disabled"`).
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

from loader.cluster.balancer import STOP_SECONDS, Balancer, Listen
from loader.cluster.messages import Endpoint, Orders, Report
from loader.cluster.replica import Replica
from loader.cluster.rollout import Bounds
from loader.cluster.watcher import Watcher
from loader.config.schema import Config, load_config

log = logging.getLogger("modelwatch.cluster")

APP_NAME = "modelwatch"
POLL_SECONDS = 1.0  # a long poll returns after this when nothing changed (a heartbeat)
HOLD_SLACK_SECONDS = 5.0  # a replica holds a request this much longer than the watcher's bound
RETRY_SECONDS = 0.5  # after a failed call to the watcher (it restarts)
HEAD_NODE = {"node:__internal_head__": 0.001}  # Ray's resource of the head node


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

    async def backends(self, known: dict[str, Endpoint], timeout: float) -> dict[str, Endpoint]:
        return await self._watcher.backends(known, timeout)

    def __del__(self) -> None:
        self._watcher.stop()
        self._watcher.join(10)


@serve.deployment(max_ongoing_requests=1_000)
class ReplicaDeployment:
    """One replica: TF Serving's REST and gRPC APIs on its own ports, over its own manager."""

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
        # On the node's address, which the balancer on another node reaches.
        self._replica.serve(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]

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


@serve.deployment(num_replicas=1, max_ongoing_requests=100,
                  ray_actor_options={"num_cpus": 0, "resources": HEAD_NODE})
class BalancerDeployment:
    """HAProxy at the cluster's endpoint, its backends the watcher's live replicas.

    It is bound to the replica deployment only so that Serve deploys them together; no
    request crosses that handle."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self, listen: Listen, watcher: DeploymentHandle[Any], replicas: DeploymentHandle[Any]
    ) -> None:
        self._watcher = watcher
        self._balancer = Balancer(listen)
        self._task = asyncio.get_running_loop().create_task(self._follow())
        self._balancer.start()

    async def _follow(self) -> None:
        known: dict[str, Endpoint] = {}
        while True:
            try:
                known = await self._watcher.backends.remote(known, POLL_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the watcher restarts: HAProxy keeps its servers
                log.warning("balancer: asking the watcher for replicas failed: %s", exc)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            self._balancer.update(known)

    def check_health(self) -> None:
        """Serve's periodic check: a balancer whose HAProxy has exited is replaced."""
        if not self._balancer.running():
            raise RuntimeError(f"HAProxy has exited: {self._balancer.log()}")

    async def __del__(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._balancer.stop()
        self._balancer.join(STOP_SECONDS)


def application(
    config: Config, replicas: int = 2, bounds: Bounds | None = None, num_cpus: float = 1.0,
    listen: Listen | None = None,
) -> Any:
    """The application graph: the replicas, each given a handle to the one watcher, and
    the balancer in front of them."""
    bounds = bounds or Bounds()
    watcher = WatcherDeployment.bind(config, bounds)  # type: ignore[attr-defined]
    serving = ReplicaDeployment.options(  # type: ignore[attr-defined]
        num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus}
    ).bind(config, watcher, bounds)
    return BalancerDeployment.bind(listen or Listen(), watcher, serving)  # type: ignore[attr-defined]


def build(args: dict[str, str]) -> Any:
    """Serve's application builder: `config` (a path), `replicas`, `num_cpus`,
    `hold_seconds`, `retry_seconds`, `replica_timeout_seconds`, and the endpoint's `host`,
    `rest_port` and `grpc_port` (strings, as Serve passes)."""
    config = load_config(args["config"])
    defaults = Bounds()
    bounds = Bounds(
        float(args.get("hold_seconds", defaults.hold_seconds)),
        float(args.get("retry_seconds", defaults.retry_seconds)),
        float(args.get("replica_timeout_seconds", defaults.replica_timeout_seconds)),
    )
    endpoint = Listen()
    listen = Listen(args.get("host", endpoint.host),
                    int(args.get("rest_port", endpoint.rest_port)),
                    int(args.get("grpc_port", endpoint.grpc_port)))
    return application(config, int(args.get("replicas", 2)), bounds,
                       float(args.get("num_cpus", 1.0)), listen)


def serve_forever(
    config: Config, *, address: str, replicas: int, http_host: str, http_port: int,
    node_ip: str | None, bounds: Bounds, stop: Any, grpc_port: int = 0,
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
        # No Serve proxy: the balancer is the endpoint, requests never cross Ray.
        serve.start(proxy_location="Disabled")
        listen = Listen(http_host, http_port, grpc_port)
        # Deployed without Serve's wait for RUNNING (TensorFlow's import and the first
        # loads: minutes), which would hold off a SIGTERM until it ended; ours checks `stop`.
        serve.run_many([serve.RunTarget(application(config, replicas, bounds, listen=listen),
                                        name=APP_NAME, route_prefix=None)],
                       wait_for_ingress_deployment_creation=False,
                       wait_for_applications_running=False)
        running = False
        while not stop.wait(0.5):  # with a timeout, as `modelwatch serve` (app/cli.py) says why
            if not running and (running := _running()):
                log.info("serving %d replica(s) on http://%s:%d (gRPC port %d)", replicas,
                         http_host, http_port, grpc_port)
        serve.delete(APP_NAME)
    finally:
        ray.shutdown()


def _running() -> bool:
    """Whether the application runs; a failed deployment raises, as `serve.run` does."""
    status = serve.status().applications.get(APP_NAME)
    if status is not None and status.status == "DEPLOY_FAILED":
        raise RuntimeError(f"deploying application {APP_NAME} failed: {status.message}")
    return status is not None and status.status == "RUNNING"
