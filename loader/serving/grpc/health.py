"""gRPC's standard health service (`grpc.health.v1.Health`) on modelwatch's gRPC port, what
Kubernetes' gRPC probes and `grpc_health_probe` ask. TF Serving serves it with
`--enable_grpc_healthcheck_service` (gRPC's default service, with "" and the names
"ModelService" and "PredictionService" set SERVING once its models loaded); here it is
always served, and that flag is accepted.

The status is read when asked, from the same readiness as REST's `/readyz`: the service
"" (the server) and TF Serving's two services (the names TF Serving registers, and their
full names) are SERVING while every configured model has a version available, a model's
name is SERVING while that model has one, anything else is NOT_FOUND (`Check`) or
SERVICE_UNKNOWN (`Watch`), as the health protocol says. (TF Serving's stay SERVING once
set; its ports, like these, open only once the initial models loaded.) Once the server
drains for its stop, everything is NOT_SERVING. Health calls are not counted in the
request metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loader.serving.dataplane import DataPlane

Status = health_pb2.HealthCheckResponse.ServingStatus
SERVER_WIDE = frozenset({
    "", "PredictionService", "ModelService",  # TF Serving's names (server.cc)
    "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService",
})
WATCH_SECONDS = 0.5  # how often a Watch looks again for a change to send


class HealthService(health_pb2_grpc.HealthServicer):
    """`Check` and `Watch` over a data plane's readiness."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane
        self._draining = False

    def drain(self) -> None:
        """NOT_SERVING from now on: the server is stopping."""
        self._draining = True

    def status(self, service: str) -> int:
        """The health status of `service` now (SERVICE_UNKNOWN for a name we do not serve)."""
        ready = self._dataplane.readiness()
        if service in SERVER_WIDE:
            serving = bool(ready) and all(ready.values())
        elif service in ready:
            serving = ready[service]
        else:
            return int(Status.SERVICE_UNKNOWN)
        return int(Status.SERVING if serving and not self._draining else Status.NOT_SERVING)

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = self.status(request.service)
        if status == Status.SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """The status now, then each change, until the client leaves; a draining server
        sends NOT_SERVING and ends the stream (so a watcher never holds its stop up)."""
        sent = None
        while True:
            # Read before the status, so that a drain arriving while a message is sent is
            # either in this status (then the stream ends) or seen on the next turn: never
            # an end without NOT_SERVING.
            draining = self._draining
            status = self.status(request.service)
            if status != sent:
                yield health_pb2.HealthCheckResponse(status=status)
                sent = status
            if draining:
                return
            await asyncio.sleep(WATCH_SECONDS)

    def add_to(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self, server)
