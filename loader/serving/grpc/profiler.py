"""`tensorflow.ProfilerService` on modelwatch's gRPC port, as TF Serving serves it.

Its calls are forwarded as raw bytes to TensorFlow's own profiler server
(`loader.servables.profiler`) on loopback: no message is parsed or rebuilt here, so
whatever TensorFlow's service answers is what the client gets.
"""

from __future__ import annotations

from typing import Any

import grpc

SERVICE = "tensorflow.ProfilerService"


class ProfilerForwarder(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc is untyped
    """A generic handler for `/tensorflow.ProfilerService/*` (every method is unary),
    forwarding each call to `target` ("127.0.0.1:port"). `close()` ends its channel."""

    def __init__(self, target: str) -> None:
        self._channel = grpc.insecure_channel(target)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = str(getattr(handler_call_details, "method", ""))
        if not method.startswith(f"/{SERVICE}/"):
            return None
        # No serializers: the request and the response stay bytes on both legs.
        call = self._channel.unary_unary(method)

        def forward(request: bytes, context: grpc.ServicerContext) -> Any:
            try:
                return call(request, timeout=context.time_remaining())
            except grpc.RpcError as error:
                context.abort(error.code(), error.details() or "")

        return grpc.unary_unary_rpc_method_handler(forward)

    def close(self) -> None:
        self._channel.close()
