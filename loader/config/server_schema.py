"""config.yaml's `server:` section: where the daemon listens, and every size, count and wait
a client controls (its largest section, kept apart; `loader.config.schema` reads the file).
"""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

STRICT = ConfigDict(extra="forbid", frozen=True)  # every section: unknown keys refused, frozen


class TlsConfig(BaseModel):
    """TLS for REST and gRPC (README: "TLS"): PEM files, re-read when they change."""

    model_config = STRICT

    # The server's certificate, then any intermediates.
    cert_file: Annotated[str, Field(min_length=1)]
    # Its private key, unencrypted.
    key_file: Annotated[str, Field(min_length=1)]
    # Clients must present a certificate this CA signed (mutual TLS); None: none is asked.
    client_ca_file: Annotated[str, Field(min_length=1)] | None = None


class ServerConfig(BaseModel):
    model_config = STRICT

    host: str = "127.0.0.1"
    rest_port: Annotated[int, Field(ge=0, le=65535)] = 8501
    grpc_port: Annotated[int, Field(ge=0, le=65535)] = 8500
    max_request_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024
    # A REST body that stops arriving for this long gets 408 and its connection closed.
    body_timeout_seconds: Annotated[float, Field(gt=0)] = 30.0
    # Prediction requests skip ASGI on uvicorn's connections (loader/serving/rest/fast_path.py);
    # false: every request goes through the ASGI app, as before.
    rest_fast_path: bool = True
    # Required by gRPC reloads when set; without it, reloads work on loopback only.
    reload_token: SecretStr | None = None
    # Threads answering the gRPC calls that block (TF Serving's --grpc_max_threads): all
    # but a batched Predict, which waits for its batch on the server's event loop and
    # holds no thread. None: 4 per core (TF Serving's default), at least 16.
    grpc_max_threads: Annotated[int, Field(ge=1, le=4096)] | None = None
    # The read-only operator page at /modelwatch/ui on the REST port (404 when off).
    operator_page: bool = True
    # Also serve gRPC on this Unix domain socket (TF Serving's --grpc_socket_path).
    grpc_socket_path: Annotated[str, Field(min_length=1)] | None = None
    # Passed to the gRPC server as they are (TF Serving's --grpc_channel_arguments).
    grpc_channel_arguments: dict[Annotated[str, Field(min_length=1)], int | str] = {}
    # -- gRPC transport limits (grpc core enforces them; grpc_channel_arguments override) --
    # A call whose metadata (headers) passes this is refused RESOURCE_EXHAUSTED.
    grpc_max_metadata_bytes: Annotated[int, Field(ge=1024, le=2**31 - 1)] = 16 * 1024
    # Calls in flight on one connection; a client's further calls wait for a free stream.
    grpc_max_concurrent_streams: Annotated[int, Field(ge=1, le=2**31 - 1)] = 128
    # A connection that has not finished its HTTP/2 handshake by then is closed.
    grpc_handshake_timeout_seconds: Annotated[float, Field(gt=0, le=86400)] = 10.0
    # A connection with no call in flight for this long is closed (GOAWAY; clients reconnect).
    grpc_idle_connection_timeout_seconds: Annotated[float, Field(gt=0, le=86400)] = 300.0
    # Connections open at once; a further one is closed as soon as it is accepted.
    grpc_max_connections: Annotated[int, Field(ge=1, le=2**31 - 1)] = 512
    # TensorFlow's ProfilerService on the gRPC port (TF Serving's --enable_profiler).
    enable_profiler: bool = False
    # -- deadlines and CORS (issue 23; README: Deadlines, CORS) --
    # A REST prediction not answered this long after its model was asked (a batch queue or
    # a worker thread included) gets 504 (TF Serving's --rest_api_timeout_in_ms); null:
    # none. A gRPC call has its own deadline.
    request_timeout_seconds: Annotated[float, Field(gt=0, le=2147483.647)] | None = 30.0
    # TF Serving's CORS headers on REST answers under /v1/ (--rest_api_enable_cors_support).
    rest_cors: bool = False
    # -- Operator page streams (issue 21) --
    # Live page streams (/modelwatch/ui/events) open at once; past it 503 with Retry-After,
    # and the page polls its snapshot instead. 0: no live streams, pages always poll.
    max_event_streams: Annotated[int, Field(ge=0, le=1024)] = 32
    # -- REST connections and request heads (loader/serving/rest/connection_guard.py) --
    # A request target (URL) longer than this: 414, connection closed.
    max_url_bytes: Annotated[int, Field(ge=256, le=1024 * 1024)] = 8 * 1024
    # A request line and headers (or a chunked body's trailers) larger than this: 431, closed.
    max_header_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 64 * 1024
    # More header fields than this: 431, connection closed.
    max_header_count: Annotated[int, Field(ge=1, le=10_000)] = 100
    # A connection's first request, and each request's head once begun, must arrive within
    # this: 408 and closed (a connection that sent nothing is closed without an answer).
    header_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    # REST connections past this (or past the open-files limit less 256) are closed at once.
    max_connections: Annotated[int, Field(ge=1)] = 1024
    # Host names requests may name (else 421); None: loopback names when `host` is loopback,
    # any otherwise; ["*"]: any.
    allowed_hosts: list[Annotated[str, Field(min_length=1)]] | None = None
    # -- tensor decoding (issue 21; README: the configuration table) --
    # A Predict whose inputs would decode to more than this (sized from their shapes before
    # any is decoded, as TensorFlow's fill rule makes a few bytes any size) is refused, 400.
    max_decoded_tensor_bytes: Annotated[int, Field(ge=1024)] = 256 * 1024 * 1024
    # Bytes that large requests being decoded and run hold at once (a TensorProto its
    # decoded size, a JSON body 5x its size in slices, up to 32x parsed whole); past it a
    # request waits 1 s, then gets 429 (RESOURCE_EXHAUSTED); one that never fits gets 413.
    max_decoding_bytes: Annotated[int, Field(ge=1024 * 1024)] = 512 * 1024 * 1024
    # -- TLS (issue 23; README: "TLS") --
    # Secures REST and gRPC with these files, re-read when they change; None: plain text.
    tls: TlsConfig | None = None
    # -- TF Serving's answer format (issue 23) --
    # gRPC Predict answers carry numbers as raw bytes in tensor_content, not the typed *_val
    # fields (TF Serving's --enable_serialization_as_tensor_content); strings stay in string_val.
    grpc_tensor_content: bool = False
    # -- request logging (issue 23; models[].request_logging) --
    # A request log file is closed, and the next one begun, once it holds this many bytes.
    request_log_file_bytes: Annotated[int, Field(ge=4096)] = 64 * 1024 * 1024
    # Sampled requests waiting to be written hold at most this; past it one is dropped, counted.
    request_log_queue_bytes: Annotated[int, Field(ge=64 * 1024)] = 64 * 1024 * 1024

    @model_validator(mode="after")
    def _socket_needs_grpc(self) -> ServerConfig:
        if self.grpc_socket_path is not None and self.grpc_port == 0:
            raise ValueError("grpc_socket_path needs gRPC on: grpc_port is 0")
        if self.enable_profiler and self.grpc_port == 0:
            raise ValueError("enable_profiler needs gRPC on: grpc_port is 0")
        if self.max_decoded_tensor_bytes > self.max_decoding_bytes:
            raise ValueError(
                "max_decoded_tensor_bytes must be at most max_decoding_bytes, or a request "
                "within the first could never be decoded"
            )
        return self

    def grpc_threads(self) -> int:
        """`grpc_max_threads`, or its default for this machine."""
        if self.grpc_max_threads is not None:
            return self.grpc_max_threads
        try:
            cores = len(os.sched_getaffinity(0))  # the cores this process may use, as TF's count
        except AttributeError:  # no affinity API (macOS)
            cores = os.cpu_count() or 1
        return max(16, 4 * cores)
