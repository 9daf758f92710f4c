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
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from loader.config.server_schema import STRICT
from loader.config.server_schema import ServerConfig as ServerConfig  # re-exported
from loader.config.server_schema import TlsConfig as TlsConfig  # re-exported
from loader.sources.object_store import store_scheme

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
MIN_MEMORY_LIMIT_BYTES = 64 * 1024 * 1024  # below this, not even the interpreter fits


class ConfigError(Exception):
    """The config cannot be used; the message names the file and the key at fault."""


class _Strict(BaseModel):
    model_config = STRICT


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
    # -- TF Serving's SessionBundleConfig (issue 23) --
    # The tag set of the MetaGraph loaded from each SavedModel (TF Serving's --saved_model_tags).
    saved_model_tags: Annotated[
        tuple[Annotated[str, Field(min_length=1, max_length=256)], ...],
        Field(min_length=1, max_length=64),
    ] = ("serve",)
    # For models with batching: each version's batching_params.pbtxt replaces the model's
    # parameters, and a version without one is not batched (--enable_per_model_batching_parameters).
    per_model_batching_parameters: bool = False


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


class RequestLoggingConfig(_Strict):
    """TF Serving's `logging_config`: a sample of a model's requests, each written as a
    `PredictionLog` to TFRecord files named `<filename_prefix>-...`."""

    # The share of requests logged (TF Serving's sampling_config.sampling_rate).
    sampling_rate: Annotated[float, Field(ge=0, le=1)]
    # TF Serving's log_collector_config.type: "file" is the collector there is.
    type: str = "file"
    # Where the files go (log_collector_config.filename_prefix).
    filename_prefix: Annotated[str, Field(min_length=1)]

    @field_validator("type")
    @classmethod
    def _known_collector(cls, value: str) -> str:
        if value != "file":
            raise ValueError(f"Cannot find LogCollector::Factory for type: {value}")
        return value


class ModelConfig(_Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    base_path: Annotated[str, Field(min_length=1)]
    version_policy: VersionPolicy = VersionPolicy(latest=LatestPolicy())
    request_logging: RequestLoggingConfig | None = None  # off by default, like TF Serving
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
    models = [with_log_folder(m, folder) for m in models]
    storage = config.storage.model_copy(update={"cache_dir": local(config.storage.cache_dir)})
    server = config.server
    if server.grpc_socket_path is not None:
        server = server.model_copy(update={"grpc_socket_path": local(server.grpc_socket_path)})
    if server.tls is not None:
        tls = server.tls
        server = server.model_copy(update={"tls": tls.model_copy(update={
            "cert_file": local(tls.cert_file), "key_file": local(tls.key_file),
            "client_ca_file": tls.client_ca_file and local(tls.client_ca_file),
        })})
    return config.model_copy(update={"models": models, "storage": storage, "server": server})


def with_log_folder(model: ModelConfig, folder: Path) -> ModelConfig:
    """`model` with a relative request-log filename prefix made absolute against `folder`
    (kept as written otherwise: a trailing "/" names a folder)."""
    logging = model.request_logging
    if logging is None:
        return model
    prefix = os.path.join(folder, os.path.expanduser(logging.filename_prefix))
    return model.model_copy(
        update={"request_logging": logging.model_copy(update={"filename_prefix": prefix})}
    )


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
