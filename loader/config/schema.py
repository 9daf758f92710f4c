"""config.yaml: its schema, its defaults, and one clear sentence when it is wrong.

JSON is valid YAML, so a JSON file is read the same way. Relative paths are resolved
against the folder of the config file, so a config works from any working directory.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from loader.sources.object_store import store_scheme

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
MIN_MEMORY_LIMIT_BYTES = 64 * 1024 * 1024  # below this, not even the interpreter fits


class ConfigError(Exception):
    """The config cannot be used; the message names the file and the key at fault."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
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
    # -- Operator page streams (issue 21) --
    # Live page streams (/modelwatch/ui/events) open at once; past it 503 with Retry-After,
    # and the page polls its snapshot instead. 0: no live streams, pages always poll.
    max_event_streams: Annotated[int, Field(ge=0, le=1024)] = 32
    # -- REST connections and request heads (loader/serving/rest/http_guard.py) --
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


class S3Config(_Strict):
    endpoint_url: str | None = None
    region: str | None = None


# -- Google Cloud Storage and Azure Blob Storage (issue 25) --
class GcsConfig(_Strict):
    """gs:// paths: Application Default Credentials; STORAGE_EMULATOR_HOST is honoured."""

    project: str | None = None  # the project for requests; ADC's, or none, when unset
    endpoint_url: str | None = None  # e.g. a Private Service Connect endpoint


class AzureConfig(_Strict):
    """az://container/prefix paths: AZURE_STORAGE_CONNECTION_STRING when set, else
    `account_url` with DefaultAzureCredential."""

    account_url: str | None = None  # https://ACCOUNT.blob.core.windows.net


class StorageConfig(_Strict):
    cache_dir: str = ".modelwatch/cache"
    s3: S3Config = S3Config()
    gcs: GcsConfig = GcsConfig()
    azure: AzureConfig = AzureConfig()


class S3EventsConfig(_Strict):
    """S3 -> SQS event notifications, consumed so new versions are seen within a second."""

    sqs_queue_url: Annotated[str, Field(min_length=1)]
    endpoint_url: str | None = None  # defaults to storage.s3.endpoint_url
    wait_time_seconds: Annotated[int, Field(ge=1, le=20)] = 1


class WatchConfig(_Strict):
    poll_interval_seconds: Annotated[float, Field(gt=0)] = 1.0
    settle_seconds: Annotated[float, Field(ge=0)] | None = None
    ready_marker: str | None = None
    debounce_seconds: Annotated[float, Field(ge=0)] = 0.05
    s3_events: S3EventsConfig | None = None

    @field_validator("ready_marker")
    @classmethod
    def _plain_file_name(cls, value: str | None) -> str | None:
        if value is not None and ("/" in value or value in ("", ".", "..")):
            raise ValueError("must be a plain file name inside the version folder")
        return value


class LoadingConfig(_Strict):
    num_load_threads: Annotated[int, Field(ge=1, le=64)] = 2
    max_retries: Annotated[int, Field(ge=0, le=100)] = 2
    retry_backoff_seconds: Annotated[float, Field(ge=0)] = 1.0
    load_timeout_seconds: Annotated[float, Field(gt=0)] | None = 600.0
    # How long the ports stay closed while the initial models have their first load
    # (TF Serving's order); None: as long as it takes, as TF Serving.
    initial_load_timeout_seconds: Annotated[float, Field(ge=0)] | None = 300.0
    # The process's resident memory that loads may not pass (README: "Memory"): bytes,
    # "auto" (a share of the machine's or the cgroup's memory) or None (no limit).
    memory_limit_bytes: int | Literal["auto"] | None = "auto"
    # How long a request for an on-demand model that is not loaded waits for its load
    # before it gets 503 UNAVAILABLE with a Retry-After.
    on_demand_wait_seconds: Annotated[float, Field(ge=0, le=3600)] = 30.0

    @field_validator("memory_limit_bytes", mode="before")
    @classmethod
    def _memory_limit(cls, value: object) -> object:
        if value is None or value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError('must be a number of bytes, "auto" or null')
        if value < MIN_MEMORY_LIMIT_BYTES:
            raise ValueError(f"must be at least {MIN_MEMORY_LIMIT_BYTES} bytes (64 MiB)")
        return value


class TensorFlowConfig(_Strict):
    """TensorFlow's thread pools (TF Serving's --tensorflow_*_parallelism) and its TFLite
    options, read at start.

    0 lets TensorFlow choose (one thread per core in each pool). On a small machine where
    the server's own Python threads need a core, fewer TensorFlow threads can serve more.
    `inter_op_parallelism: -1` runs each model call on the thread that makes it (a batch
    thread, or the request's worker) instead of handing its ops to a pool, as TensorFlow
    does for a negative value; with `intra_op_parallelism: 1` a call then never leaves
    its thread, which suits small models (see docs/benchmarks.md, section 1).
    """

    intra_op_parallelism: Annotated[int, Field(ge=0, le=1024)] = 0
    inter_op_parallelism: Annotated[int, Field(ge=-1, le=1024)] = 0
    # TF Serving's --prefer_tflite_model: serve a version's model.tflite when it has one.
    prefer_tflite_model: bool = False
    # TF Serving's --num_tflite_pools: interpreters per TFLite version; null: one per CPU.
    num_tflite_interpreters: Annotated[int, Field(ge=1, le=1024)] | None = None


class LatestPolicy(_Strict):
    num_versions: Annotated[int, Field(ge=1)] = 1


class AllPolicy(_Strict):
    pass


class SpecificPolicy(_Strict):
    versions: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class VersionPolicy(_Strict):
    """Exactly one of TF Serving's three version policies."""

    latest: LatestPolicy | None = None
    all: AllPolicy | None = None
    specific: SpecificPolicy | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> VersionPolicy:
        chosen = [k for k in ("latest", "all", "specific") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError("give exactly one of latest, all or specific")
        return self


class BatchingConfig(_Strict):
    """TF Serving's BatchingParameters, with BasicBatchScheduler's defaults."""

    max_batch_size: Annotated[int, Field(ge=1)] = 1000
    batch_timeout_micros: Annotated[int, Field(ge=0)] = 0
    max_enqueued_batches: Annotated[int, Field(ge=1)] = 10
    num_batch_threads: Annotated[int, Field(ge=1, le=256)] = Field(
        default_factory=lambda: os.cpu_count() or 1
    )
    allowed_batch_sizes: list[Annotated[int, Field(ge=1)]] = []
    pad_variable_length_inputs: bool = False

    @model_validator(mode="after")
    def _allowed_sizes(self) -> BatchingConfig:
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in itertools.pairwise(sizes)):
                raise ValueError("allowed_batch_sizes must be strictly increasing")
            if sizes[-1] != self.max_batch_size:
                raise ValueError(
                    "the last of allowed_batch_sizes must equal max_batch_size "
                    f"({sizes[-1]} != {self.max_batch_size})"
                )
        return self


class ModelConfig(_Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    base_path: Annotated[str, Field(min_length=1)]
    version_policy: VersionPolicy = VersionPolicy(latest=LatestPolicy())
    version_labels: dict[Annotated[str, Field(pattern=NAME_PATTERN)], Annotated[int, Field(ge=0)]] = {}
    transition: Literal["availability_preserving", "resource_preserving"] = (
        "availability_preserving"
    )
    batching: BatchingConfig | None = None  # off by default, like TF Serving
    # "on_demand": listed and watched, loaded on its first request, evicted when idle and
    # another load needs the room (README: "Memory").
    load: Literal["always", "on_demand"] = "always"

    @property
    def in_store(self) -> bool:
        """Whether the base path is in an object store (s3://, gs://, az://), not local."""
        return store_scheme(self.base_path) is not None


class Config(_Strict):
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    watch: WatchConfig = WatchConfig()
    loading: LoadingConfig = LoadingConfig()
    tensorflow: TensorFlowConfig = TensorFlowConfig()
    models: list[ModelConfig] = []

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        names = [m.name for m in models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {', '.join(duplicates)}")
        return models


def _location(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + part)
    return "".join(parts) or "(top level)"


def _sentence(error: dict) -> str:  # type: ignore[type-arg]
    where = _location(tuple(error["loc"]))
    if error["type"] == "extra_forbidden":
        return f"{where} is not a known key"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message[0].lower()}{message[1:]}"


def parse_config(data: object, origin: str = "config") -> Config:
    """Validate already-parsed YAML/JSON; a problem raises ConfigError naming the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of keys to values")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        sentences = "; ".join(_sentence(e) for e in exc.errors())  # type: ignore[arg-type]
        raise ConfigError(f"{origin}: {sentences}") from None


def resolve_paths(config: Config, folder: Path) -> Config:
    """Make relative local paths absolute against `folder` (the config file's folder)."""

    def local(path: str) -> str:
        return str((folder / Path(path).expanduser()).resolve())

    models = [
        m if m.in_store else m.model_copy(update={"base_path": local(m.base_path)})
        for m in config.models
    ]
    storage = config.storage.model_copy(update={"cache_dir": local(config.storage.cache_dir)})
    server = config.server
    if server.grpc_socket_path is not None:
        server = server.model_copy(update={"grpc_socket_path": local(server.grpc_socket_path)})
    return config.model_copy(update={"models": models, "storage": storage, "server": server})


def load_config(path: str | Path) -> Config:
    """Read, validate and resolve a config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "it is not valid YAML or JSON"
        raise ConfigError(f"{path}: cannot be parsed{where}: {problem}") from None
    return resolve_paths(parse_config(data, str(path)), path.parent.resolve())
