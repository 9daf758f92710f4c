"""The gRPC server that runs a `GrpcApi`: its `grpc.aio` server on an event loop of its
own, its worker pool, TCP port and, optionally, a Unix domain socket (TF Serving's
`--grpc_socket_path`).

Predict runs on the event loop: a batched Predict is decoded there and waits for its
batch as a callback, holding no thread, so one batch gathers every call in flight. The
calls that block (Classify, Regress, MultiInference, metadata, status, reload, a large
Predict or one of a model without batching) run on a bounded pool of worker threads
(named `modelwatch-grpc...`).

With a `ServerTls`, the port and the socket both speak TLS (as TF Serving's
`--ssl_config_file` secures both), through grpcio's dynamic credentials: each new connection
gets the certificates in use then, so rotated files serve without a restart.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc

try:
    import uvloop

    new_event_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
except ImportError:  # no uvloop on Windows
    new_event_loop = asyncio.new_event_loop

from loader.serving.grpc.services import GrpcApi
from loader.serving.tls import Certificates, ServerTls

_MIB = 1024 * 1024
_server_numbers = itertools.count(1)
_REFUSE_SECONDS = 10.0  # how long stop() waits for the server to refuse new calls
_DRAIN_POLL_SECONDS = 0.02


ChannelArgument = tuple[str, int | str]


@dataclass(frozen=True)
class GrpcLimits:
    """What one client may hold of the gRPC transport (the server.grpc_* keys), as grpc
    core's own channel arguments: it refuses or closes what passes them before any of our
    code runs. Defaults: the config's."""

    max_metadata_bytes: int = 16 * 1024
    max_concurrent_streams: int = 128
    handshake_timeout_seconds: float = 10.0
    idle_connection_timeout_seconds: float = 300.0
    max_connections: int = 512

    def channel_arguments(self) -> dict[str, int | str]:
        return {
            # Soft and hard limit alike: past the soft one alone grpc core refuses calls
            # at random, up to the hard one (16 KiB unless set).
            "grpc.max_metadata_size": self.max_metadata_bytes,
            "grpc.absolute_max_metadata_size": self.max_metadata_bytes,
            "grpc.max_concurrent_streams": self.max_concurrent_streams,
            # Also bounds a connection that never sends the HTTP/2 preface and SETTINGS.
            "grpc.server_handshake_timeout_ms": _millis(self.handshake_timeout_seconds),
            "grpc.max_connection_idle_ms": _millis(self.idle_connection_timeout_seconds),
            # grpc core's own defaults, said here: a client pinging more often than every 5
            # minutes without calls gets GOAWAY after 2 strikes.
            "grpc.http2.min_ping_interval_without_data_ms": 300_000,
            "grpc.http2.max_ping_strikes": 2,
            # Known to recent grpc cores (written against 1.85); older ones ignore it.
            "grpc.max_allowed_incoming_connections": self.max_connections,
        }


def _millis(seconds: float) -> int:
    return max(1, min(2**31 - 1, round(seconds * 1000)))


class GrpcServer:
    """A gRPC server for a `GrpcApi` on host:port (0 picks a free port; see `port`) and,
    given `socket_path`, on that Unix domain socket as well, with the same services.

    Nothing listens before `start()` (TF Serving opens its ports once the initial models
    have loaded): the constructor checks that the port and the socket path are free (port
    0 picks a free port then; see `port`), and `start()` binds them. `start()`, an
    idempotent `stop(grace_seconds)` (new RPCs are answered UNAVAILABLE at once, those in
    flight get the grace period to finish, then the ports close; `None`: cancel them and
    close now) and `join(timeout)`, which waits for the server and its worker threads to
    end, then removes the socket file it made. `channel_arguments` are
    passed to gRPC as they are (TF Serving's `--grpc_channel_arguments`): they win over
    `limits`, and the message size and port sharing win over them.
    """

    def __init__(
        self,
        api: GrpcApi,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_workers: int = 16,
        max_message_bytes: int = 64 * _MIB,
        socket_path: str | None = None,
        channel_arguments: Sequence[ChannelArgument] = (),
        limits: GrpcLimits = GrpcLimits(),
        extra_handlers: Sequence[grpc.GenericRpcHandler] = (),
        tls: ServerTls | None = None,
    ) -> None:
        ours: dict[str, int | str] = {
            "grpc.max_receive_message_length": max_message_bytes,
            "grpc.max_send_message_length": max_message_bytes,
            # Without this a second server could bind the same port and share it.
            "grpc.so_reuseport": 0,
        }
        self._host = host
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self._port = _free_port(host, port)
            if socket_path is not None:
                address = f"unix:{socket_path}"
                _check_socket_path(Path(socket_path))
        except OSError as exc:
            raise OSError(f"cannot listen for gRPC on {address}: {exc.strerror or exc}") from None
        self._socket_path = None if socket_path is None else Path(socket_path)
        self._socket: tuple[Path, int, int] | None = None  # path, device, inode once bound
        self._thread_prefix = f"modelwatch-grpc-{next(_server_numbers)}"
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix=self._thread_prefix)
        self._api = api
        self._handlers = list(extra_handlers)
        self._tls = tls
        self._options = list(
            {**limits.channel_arguments(), **dict(channel_arguments), **ours}.items()
        )
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None  # runs the event loop
        self._stop_asked = False
        self._stop_wanted: asyncio.Future[float | None]  # on the loop, once serving
        self._refusing = threading.Event()  # the stop has begun: new calls are refused

    @property
    def port(self) -> int:
        return self._port

    @property
    def socket_path(self) -> str | None:
        """The Unix domain socket served too, if any."""
        return None if self._socket_path is None else str(self._socket_path)

    def start(self) -> None:
        """Bind the port (and the socket) and serve; OSError if one is taken meanwhile."""
        with self._lock:
            if self._thread is not None or self._stop_asked:
                raise RuntimeError("a GrpcServer starts once")
            started: Future[None] = Future()
            self._thread = threading.Thread(
                target=self._run, args=(started,), name=f"{self._thread_prefix}-loop", daemon=True
            )
            self._thread.start()
            try:
                started.result()
            except BaseException:
                self._thread.join()
                raise

    def _run(self, started: Future[None]) -> None:
        """The event loop's thread: serve until the server has stopped."""
        loop = new_event_loop()
        loop.set_default_executor(self._executor)  # run_in_executor(None, ...) uses the pool
        asyncio.set_event_loop(loop)  # grpc.aio asks for the thread's loop
        try:
            loop.run_until_complete(self._serve(started))
            # What the server leaves behind (callbacks of cancelled calls) ends here.
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        except BaseException as error:  # a bug: whoever waits in start() hears of it
            if not started.done():
                started.set_exception(error)
            raise
        finally:
            loop.close()

    async def _serve(self, started: Future[None]) -> None:
        server = grpc.aio.server(
            migration_thread_pool=self._executor, handlers=self._handlers, options=self._options
        )
        self._api.add_to(server)
        host = f"[{self._host}]" if ":" in self._host else self._host
        address = f"{host}:{self._port}"
        tls = self._tls

        def add_port(where: str) -> None:
            if tls is None:
                server.add_insecure_port(where)
            else:
                server.add_secure_port(where, _credentials(tls))

        try:
            add_port(address)
            if self._socket_path is not None:
                address = f"unix:{self._socket_path}"
                _check_socket_path(self._socket_path)
                add_port(address)  # replaces a stale socket file
                made = self._socket_path.lstat()
                self._socket = (self._socket_path, made.st_dev, made.st_ino)
        except (RuntimeError, OSError) as exc:  # grpc says only "Failed to bind"
            started.set_exception(OSError(f"cannot listen for gRPC on {address}: {exc}"))
            self._remove_socket()
            return
        self._stop_wanted = asyncio.get_running_loop().create_future()
        await server.start()
        started.set_result(None)
        grace: float | None = await self._stop_wanted
        if grace is not None:
            # New calls are answered UNAVAILABLE from now on while the port stays open, so
            # a client hears "go elsewhere" instead of racing the listener's close.
            self._api.drain()
            self._refusing.set()
            deadline = time.monotonic() + grace
            while self._api.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(_DRAIN_POLL_SECONDS)
            grace = max(0.0, deadline - time.monotonic())
        stopping = asyncio.ensure_future(server.stop(grace))
        await asyncio.sleep(0)  # its first step closes the listener and cancels (grace None)
        self._refusing.set()
        await stopping

    def stop(self, grace_seconds: float | None = 30.0) -> None:
        """Refuse new RPCs and give those in flight `grace_seconds`; returns once new RPCs
        are refused."""
        with self._lock:
            if self._stop_asked:
                return
            self._stop_asked = True
            serving = self._thread is not None and self._thread.is_alive()
        if serving:
            wanted = self._stop_wanted
            wanted.get_loop().call_soon_threadsafe(wanted.set_result, grace_seconds)
            self._refusing.wait(_REFUSE_SECONDS)

    def join(self, timeout: float | None = None) -> None:
        """Wait until the server has stopped and its worker threads have ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return  # still running after `timeout`
        self._remove_socket()
        # Handlers can outlive a cancelled RPC; their threads end when they return.
        self._executor.shutdown(wait=False)
        for thread in threading.enumerate():
            if thread.name.startswith(self._thread_prefix + "_"):
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                thread.join(remaining)

    def _remove_socket(self) -> None:
        """Remove the socket file, unless something else has taken its path since."""
        with self._lock:
            bound, self._socket = self._socket, None
        if bound is None:
            return
        path, device, inode = bound
        try:
            now = path.lstat()
            if (now.st_dev, now.st_ino) == (device, inode):
                path.unlink()
        except FileNotFoundError:
            pass


def _credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """grpcio's TLS, asking `tls` for the certificates at each new connection (TF Serving's
    SslServerCredentials read them once); clients must present a certificate signed by the
    client CA when there is one (`client_verify`)."""
    served = tls.current()

    def configuration(certificates: Certificates) -> grpc.ServerCertificateConfiguration:
        pem = certificates.pem
        return grpc.ssl_server_certificate_configuration(
            [(pem.key, pem.chain)], root_certificates=pem.client_ca
        )

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        nonlocal served
        now = tls.current()
        if now is served:
            return None  # grpc keeps the configuration in use
        served = now
        return configuration(now)

    return grpc.dynamic_ssl_server_credentials(
        configuration(served), fetch, require_client_authentication=tls.client_verify
    )


def _free_port(host: str, port: int) -> int:
    """`port`, or a free one for 0, after checking that it can be bound now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
        probe.bind((host, port))
        return int(probe.getsockname()[1])


def _check_socket_path(path: Path) -> None:
    """Refuse a socket path that cannot be bound, with the reason."""
    if not path.parent.is_dir():
        raise OSError(f"{path.parent} is not a folder")
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise OSError(f"{path} exists and is not a socket")
        # A socket file is replaced, live or stale, as gRPC (and so TF Serving) does; the
        # one replaced is left alone on exit (see `_remove_socket`).
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise OSError(f"no permission to create a socket in {path.parent}")

