"""The REST and gRPC servers of `modelwatch serve` and of a cluster replica, built by one
function each from `server.*`, so that the two cannot drift apart: limits, timeouts, CORS,
the REST fast path, gRPC's threads, channel arguments and tensor_content.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from loader.config.schema import ServerConfig
from loader.serving.decode_budget import DecodeBudget
from loader.serving.metrics import Metrics
from loader.serving.rest.allowed_hosts import allowed_hosts
from loader.serving.rest.connection_guard import HttpLimits
from loader.serving.rest.open_files import connection_cap
from loader.serving.tls import ServerTls

if TYPE_CHECKING:  # grpc and starlette load only where a server is built (not the watcher)
    from loader.serving.dataplane import DataPlane
    from loader.serving.grpc.server import GrpcServer
    from loader.serving.rest.app import RestApi
    from loader.serving.rest.server import RestServer

# How long a stop lets the requests in flight finish (a pod's grace period must cover it).
DRAIN_SECONDS = 30


def http_limits(server: ServerConfig) -> HttpLimits:
    """The REST server's limits on connections and request heads, from `server.*`."""
    return HttpLimits(
        max_url_bytes=server.max_url_bytes,
        max_header_bytes=server.max_header_bytes,
        max_header_count=server.max_header_count,
        header_timeout_seconds=server.header_timeout_seconds,
        max_connections=connection_cap(server.max_connections),
        allowed_hosts=allowed_hosts(server.host, server.allowed_hosts),
    )


def grpc_limits(server: ServerConfig) -> Any:
    """The gRPC server's limits on connections and streams, from `server.grpc_*`."""
    from loader.serving.grpc.server import GrpcLimits  # grpc: only where a server is built

    return GrpcLimits(
        server.grpc_max_metadata_bytes, server.grpc_max_concurrent_streams,
        server.grpc_handshake_timeout_seconds, server.grpc_idle_connection_timeout_seconds,
        server.grpc_max_connections,
    )


def rest_server(
    server: ServerConfig, dataplane: DataPlane, metrics: Metrics, budget: DecodeBudget,
    port: int, *, tls: ServerTls | None = None, **api: Any,
) -> tuple[RestApi, RestServer]:
    """TF Serving's REST API on `server.host`:`port` (0: a free one); `api`: the caller's
    own `RestApi` keywords (its routes, metrics path, operator page, request log)."""
    from loader.serving.rest.app import RestApi
    from loader.serving.rest.server import RestServer, bind

    rest = RestApi(
        dataplane, metrics, max_request_bytes=server.max_request_bytes,
        body_timeout_seconds=server.body_timeout_seconds, decode_budget=budget,
        request_timeout_seconds=server.request_timeout_seconds, cors=server.rest_cors, **api,
    )
    return rest, RestServer(
        rest.app, bind(server.host, port), drain_timeout_seconds=DRAIN_SECONDS,
        fast_path=server.rest_fast_path, limits=http_limits(server), metrics=metrics, tls=tls,
    )


def grpc_server(
    server: ServerConfig, dataplane: DataPlane, metrics: Metrics, budget: DecodeBudget,
    port: int, *, tls: ServerTls | None = None, socket_path: str | None = None,
    extra_handlers: Sequence[Any] = (), **api: Any,
) -> GrpcServer:
    """TF Serving's gRPC services on `server.host`:`port` (0: a free one); `api`: the
    caller's own `GrpcApi` keywords (reload, its guard, request log)."""
    from loader.serving.grpc.server import GrpcServer
    from loader.serving.grpc.services import GrpcApi

    services = GrpcApi(
        dataplane, metrics=metrics, decode_budget=budget,
        max_decoded_bytes=server.max_decoded_tensor_bytes,
        max_message_bytes=server.max_request_bytes, tensor_content=server.grpc_tensor_content,
        **api,
    )
    return GrpcServer(
        services, server.host, port, max_message_bytes=server.max_request_bytes,
        max_workers=server.grpc_threads(), socket_path=socket_path,
        channel_arguments=list(server.grpc_channel_arguments.items()),
        limits=grpc_limits(server), extra_handlers=extra_handlers, tls=tls,
    )
