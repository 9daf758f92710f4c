"""GrpcServer's transport: nothing listens before start, the Unix socket beside the TCP
port, its file removed on exit, and a socket path that cannot be bound refused."""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import pytest

from loader.serving.grpc.server import GrpcLimits, GrpcServer
from tests.daemon_process import wait_until


class NoServices:
    """An API with no services: these tests are about the transport, not the calls."""

    in_flight = 0

    def add_to(self, server: grpc.aio.Server) -> None:
        pass

    def drain(self) -> None:
        pass


def connects(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def unimplemented(target: str) -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        with pytest.raises(grpc.RpcError) as error:
            call(b"", timeout=10)
    return error.value.code()


def test_nothing_listens_before_start_and_both_addresses_serve_after(tmp_path: Path):
    path = tmp_path / "grpc.sock"
    server = GrpcServer(NoServices(), port=0, socket_path=str(path))  # type: ignore[arg-type]
    try:
        assert not connects(server.port)
        assert not path.exists()
        server.start()
        assert path.is_socket()
        for target in (f"127.0.0.1:{server.port}", f"unix:{path}"):
            assert unimplemented(target) is grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(0)
        server.join(10)
    assert not path.exists()


def test_a_live_socket_file_is_taken_over_as_grpc_and_tf_serving_do(tmp_path: Path):
    path = tmp_path / "grpc.sock"
    first = GrpcServer(NoServices(), socket_path=str(path))  # type: ignore[arg-type]
    second = GrpcServer(NoServices(), socket_path=str(path))  # type: ignore[arg-type]
    try:
        first.start()
        before = path.lstat().st_ino
        second.start()  # gRPC replaces the file; the newest server answers on the path
        assert path.lstat().st_ino != before
        assert unimplemented(f"unix:{path}") is grpc.StatusCode.UNIMPLEMENTED
    finally:
        for server in (first, second):
            server.stop(0)
            server.join(10)


@pytest.mark.parametrize(("where", "reason"), [
    ("missing/grpc.sock", "is not a folder"),
    ("a_file", "exists and is not a socket"),
])
def test_a_socket_path_that_cannot_be_bound_is_refused(tmp_path: Path, where: str, reason: str):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError, match=reason) as error:
        GrpcServer(NoServices(), socket_path=str(tmp_path / where))  # type: ignore[arg-type]
    assert f"cannot listen for gRPC on unix:{tmp_path / where}" in str(error.value)


def test_a_taken_port_is_refused_before_anything_starts():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="cannot listen for gRPC on 127.0.0.1:"):
            GrpcServer(NoServices(), port=taken.getsockname()[1])  # type: ignore[arg-type]


def test_channel_arguments_reach_the_server():
    server = GrpcServer(  # type: ignore[arg-type]
        NoServices(), channel_arguments=[("grpc.max_connection_age_ms", 2000),
                                         ("grpc.lb_policy_name", "grpclb")],
    )
    try:
        server.start()
        assert unimplemented(f"127.0.0.1:{server.port}") is grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(0)
        server.join(10)


def refused_for_metadata(port: int, size: int) -> grpc.StatusCode:
    """The status of a call carrying `size` bytes of metadata (UNIMPLEMENTED: it passed)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        with pytest.raises(grpc.RpcError) as error:
            call(b"", timeout=10, metadata=(("x-filler", "a" * size),))
    return error.value.code()


def test_limits_refuse_large_metadata_and_channel_arguments_override_them():
    limited = GrpcServer(NoServices(), limits=GrpcLimits(max_metadata_bytes=4096))  # type: ignore[arg-type]
    widened = GrpcServer(  # type: ignore[arg-type]
        NoServices(), limits=GrpcLimits(max_metadata_bytes=4096),
        channel_arguments=[("grpc.max_metadata_size", 65536),
                           ("grpc.absolute_max_metadata_size", 65536)],
    )
    try:
        for server in (limited, widened):
            server.start()
        assert refused_for_metadata(limited.port, 1024) is grpc.StatusCode.UNIMPLEMENTED
        for size in (6 * 1024, 1024 * 1024):
            assert refused_for_metadata(limited.port, size) is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused_for_metadata(widened.port, 6 * 1024) is grpc.StatusCode.UNIMPLEMENTED
    finally:
        for server in (limited, widened):
            server.stop(0)
            server.join(10)


def read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(30)  # a guard far past the limits under test, not a measurement
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


def test_a_connection_that_never_speaks_is_closed_after_the_handshake_timeout():
    server = GrpcServer(  # type: ignore[arg-type]
        NoServices(), limits=GrpcLimits(handshake_timeout_seconds=0.5)
    )
    try:
        server.start()
        with socket.create_connection(("127.0.0.1", server.port)) as silent:
            assert read_until_closed(silent).startswith(b"\x00\x00")  # SETTINGS, then the close
        assert unimplemented(f"127.0.0.1:{server.port}") is grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(0)
        server.join(10)


def test_connections_past_the_cap_are_closed_at_once():
    server = GrpcServer(NoServices(), limits=GrpcLimits(max_connections=2))  # type: ignore[arg-type]
    try:
        server.start()
        with socket.create_connection(("127.0.0.1", server.port)) as first, \
                socket.create_connection(("127.0.0.1", server.port)) as second, \
                socket.create_connection(("127.0.0.1", server.port)) as third:
            for admitted in (first, second):
                admitted.settimeout(30)
                assert admitted.recv(9)[3:4] == b"\x04"  # the server's SETTINGS frame
            assert read_until_closed(third) == b""
    finally:
        server.stop(0)
        server.join(10)


def test_an_idle_connection_is_closed_and_the_client_reconnects():
    server = GrpcServer(  # type: ignore[arg-type]
        NoServices(), limits=GrpcLimits(idle_connection_timeout_seconds=0.5)
    )
    states: list[grpc.ChannelConnectivity] = []
    try:
        server.start()
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            channel.subscribe(states.append)
            call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
            with pytest.raises(grpc.RpcError):
                call(b"", timeout=10)
            wait_until(lambda: grpc.ChannelConnectivity.READY in states, 30, "a connection")
            ready = states.index(grpc.ChannelConnectivity.READY)
            # GOAWAY after the idle time: the channel leaves READY without being closed here.
            wait_until(lambda: grpc.ChannelConnectivity.IDLE in states[ready:], 30, "the idle close")
            with pytest.raises(grpc.RpcError) as again:
                call(b"", timeout=10)
            assert again.value.code() is grpc.StatusCode.UNIMPLEMENTED  # a new connection
            channel.unsubscribe(states.append)
    finally:
        server.stop(0)
        server.join(10)


def advertised_settings(port: int) -> dict[int, int]:
    """The HTTP/2 SETTINGS the server sends first on a new connection."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(30)
        head = b""
        while len(head) < 9:
            head += sock.recv(9 - len(head))
        length, kind = int.from_bytes(head[:3], "big"), head[3]
        assert kind == 4, head  # SETTINGS
        payload = b""
        while len(payload) < length:
            payload += sock.recv(length - len(payload))
    return {int.from_bytes(payload[i:i + 2], "big"): int.from_bytes(payload[i + 2:i + 6], "big")
            for i in range(0, length, 6)}


def test_streams_and_header_size_are_advertised_to_clients():
    """HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS (3) and SETTINGS_MAX_HEADER_LIST_SIZE (6)."""
    default = GrpcServer(NoServices())  # type: ignore[arg-type]
    tight = GrpcServer(  # type: ignore[arg-type]
        NoServices(), limits=GrpcLimits(max_concurrent_streams=2, max_metadata_bytes=4096)
    )
    try:
        for server in (default, tight):
            server.start()
        settings = advertised_settings(default.port)
        assert (settings[3], settings[6]) == (128, 16384)
        settings = advertised_settings(tight.port)
        assert (settings[3], settings[6]) == (2, 4096)
    finally:
        for server in (default, tight):
            server.stop(0)
            server.join(10)
