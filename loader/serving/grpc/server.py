"""The gRPC server that runs a `GrpcApi`: its `grpc.server`, worker pool and port.

The server is synchronous: model calls block, so each RPC gets a worker thread (named
`modelwatch-grpc...`) from a bounded pool.
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from loader.serving.grpc.services import GrpcApi

_MIB = 1024 * 1024
_server_numbers = itertools.count(1)


class GrpcServer:
    """A gRPC server for a `GrpcApi` on host:port (0 picks a free port; see `port`).

    `start()`, an idempotent `stop(grace_seconds)` (new RPCs are refused at once; those
    in flight get the grace period to finish) and `join(timeout)`, which waits for the
    server and its worker threads to end.
    """

    def __init__(
        self,
        api: GrpcApi,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_workers: int = 16,
        max_message_bytes: int = 64 * _MIB,
    ) -> None:
        self._thread_prefix = f"modelwatch-grpc-{next(_server_numbers)}"
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix=self._thread_prefix)
        self._server = grpc.server(
            self._executor,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                # Without this a second server could bind the same port and share it.
                ("grpc.so_reuseport", 0),
            ],
        )
        api.add_to(self._server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self._port = int(self._server.add_insecure_port(address))
        except RuntimeError as exc:  # grpc says only "Failed to bind"
            self._executor.shutdown(wait=False)
            raise OSError(f"cannot listen for gRPC on {address}: {exc}") from None
        self._lock = threading.Lock()
        self._started = False
        self._stopped: threading.Event | None = None

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> None:
        with self._lock:
            if self._started or self._stopped is not None:
                raise RuntimeError("a GrpcServer starts once")
            self._server.start()
            self._started = True

    def stop(self, grace_seconds: float | None = 30.0) -> None:
        """Refuse new RPCs and give those in flight `grace_seconds`; returns at once."""
        with self._lock:
            if self._stopped is None:
                self._stopped = self._server.stop(grace_seconds)

    def join(self, timeout: float | None = None) -> None:
        """Wait until the server has stopped and its worker threads have ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            stopped, started = self._stopped, self._started
        if stopped is not None:
            if not stopped.wait(timeout):
                return
        elif started and self._server.wait_for_termination(timeout):
            return  # still running after `timeout`
        # Handlers can outlive a cancelled RPC; their threads end when they return.
        self._executor.shutdown(wait=False)
        for thread in threading.enumerate():
            if thread.name.startswith(self._thread_prefix + "_"):
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                thread.join(remaining)
