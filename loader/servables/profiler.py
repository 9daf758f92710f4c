"""TensorFlow's profiler server (its `ProfilerService`), started once per process.

TF Serving registers TensorFlow's `ProfilerService` on its own gRPC port, so that
`tf.profiler.experimental.client.trace("host:port", ...)` (or TensorBoard's "capture
profile") traces the server while it serves. TensorFlow's Python package can run that
service only as a server of its own (`tf.profiler.experimental.server.start(port)`), which
listens on every interface and cannot be stopped; `loader.serving.grpc.profiler` forwards
the service's calls from modelwatch's gRPC port to it, byte for byte.
"""

from __future__ import annotations

import socket
import threading

_lock = threading.Lock()
_port: int | None = None


def start_profiler_server() -> int:
    """Start TensorFlow's profiler server (once per process); its port."""
    global _port
    with _lock:
        if _port is None:
            import tensorflow as tf

            with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as probe:
                probe.bind(("", 0))  # TensorFlow binds every interface: find a port free there
                port = int(probe.getsockname()[1])
            tf.profiler.experimental.server.start(port)
            _port = port
        return _port
