"""The parts the daemon is built from, shared with `loader.cluster` (whose watcher runs the
sources and whose replicas load versions the same way): a model's policies, the storage that
turns a reported version into a servable, the sources that watch storage, and the TLS of
each port.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loader.base import InvalidArgument, Servable, VersionRef
from loader.config.schema import (
    BatchingConfig,
    Config,
    ConfigError,
    ModelConfig,
    StorageConfig,
    TlsConfig,
)
from loader.config.tfs_proto_files import read_ssl_config, read_version_batching
from loader.manager.manager import Manager, ModelSpec
from loader.manager.memory_guard import MemoryGuard
from loader.manager.process_memory import default_limit_bytes
from loader.serving.metrics import Metrics
from loader.serving.request_log import LogTarget
from loader.serving.tls import Pem, ServerTls, TlsError, read_pem_files
from loader.sources.base import ModelLocation, Source, VersionsCallback
from loader.sources.local import LocalSource
from loader.sources.object_store import ObjectStore, StoreError, store_scheme
from loader.sources.store_fetch import StoreFetcher
from policies.base import SelectionPolicy
from policies.selection import All, Latest, Specific
from policies.transition import TRANSITIONS

log = logging.getLogger("modelwatch.storage")

EVENT_SETTLE_SECONDS = 1.0


def selection_policy(model: ModelConfig) -> SelectionPolicy:
    policy = model.version_policy
    if policy.all is not None:
        return All()
    if policy.specific is not None:
        return Specific.of(policy.specific.versions)
    return Latest(policy.latest.num_versions if policy.latest else 1)


def model_spec(model: ModelConfig) -> ModelSpec:
    return ModelSpec(
        model.name, selection_policy(model), TRANSITIONS[model.transition],
        dict(model.version_labels), on_demand=model.load == "on_demand",
    )


def log_targets(models: Sequence[ModelConfig]) -> dict[str, LogTarget]:
    """Where each model with `request_logging` logs its sampled requests."""
    return {
        m.name: LogTarget(m.request_logging.sampling_rate, m.request_logging.filename_prefix)
        for m in models if m.request_logging is not None
    }


def memory_limit_bytes(config: Config) -> int | None:
    """`loading.memory_limit_bytes`, with "auto" worked out for this machine or cgroup."""
    limit = config.loading.memory_limit_bytes
    return default_limit_bytes() if limit == "auto" else limit


def make_store(scheme: str, storage: StorageConfig) -> ObjectStore:
    """The object store for `scheme` ("s3", "gs", "az"), with the `storage:` settings; each
    provider's library is imported only when a path of its store is configured."""
    if scheme == "s3":
        from loader.sources.s3_client import S3Store, make_s3_client

        return S3Store(make_s3_client(storage.s3.endpoint_url, storage.s3.region))
    try:
        if scheme == "gs":
            from loader.sources.gcs_client import make_gcs_store

            return make_gcs_store(storage.gcs.project, storage.gcs.endpoint_url)
        from loader.sources.azure_client import make_azure_store

        return make_azure_store(storage.azure.account_url)
    except StoreError as error:
        raise ConfigError(str(error)) from None


class Storage:
    """Turns a reported version into a loaded servable, and releases its files after."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self._stores: dict[str, tuple[ObjectStore, StoreFetcher]] = {}
        self._stores_lock = threading.Lock()  # loads run on several threads
        self.batching: dict[str, BatchingConfig | None] = {}

    def store(self, scheme: str) -> ObjectStore:
        """The store for `scheme`, made on first use (see `fetcher`)."""
        return self._store_and_fetcher(scheme)[0]

    def _store_and_fetcher(self, scheme: str) -> tuple[ObjectStore, StoreFetcher]:
        with self._stores_lock:
            if scheme not in self._stores:
                store = make_store(scheme, self._config.storage)
                fetcher = StoreFetcher(store, self._config.storage.cache_dir)
                if not self._stores:  # before any fetch: the stores share the cache folder
                    fetcher.cleanup_stale()  # a crash's leftovers
                self._stores[scheme] = (store, fetcher)
            return self._stores[scheme]

    def load(self, model: str, version: int, ref: VersionRef) -> Servable:
        from loader.servables.formats import load_version
        from loader.servables.warmup import warm_up  # TensorFlow loads on first use

        path = ref.uri
        scheme = store_scheme(ref.uri)
        if scheme is not None:
            path = self._store_and_fetcher(scheme)[1].fetch(model, version, ref)
        options = self._config.tensorflow
        batching = self.batching.get(model)
        if batching is not None and options.per_model_batching_parameters:
            batching = version_batching(path, batching.num_batch_threads)
        servable = load_version(
            path, prefer_tflite_model=options.prefer_tflite_model,
            num_tflite_interpreters=options.num_tflite_interpreters,
            tags=options.saved_model_tags,
        )
        try:
            # On the bare servable, before batching wraps it: warmup is not traffic. Only
            # the configured batch sizes are warmed; without them sizes vary freely.
            warm_up(servable, path, batch_sizes=batching.allowed_batch_sizes if batching else ())
        except BaseException:
            servable.unload()
            raise
        if batching is not None:
            from loader.servables.batching import BatchingServable

            servable = BatchingServable(
                servable, batching, name=f"{model}-{version}",
                on_batch=self._metrics.batch_size.labels(model).observe,
                on_expired=functools.partial(self._metrics.expire, model),
            )
        return servable

    def release(self, model: str, version: int, ref: VersionRef) -> None:
        scheme = store_scheme(ref.uri)
        if scheme is not None and scheme in self._stores:
            self._stores[scheme][1].release(model, version, ref)


def version_batching(path: str, num_batch_threads: int) -> BatchingConfig | None:
    """The batching a version's own batching_params.pbtxt asks for, on the model's
    `num_batch_threads`; None (not batched) without one, as TF Serving's
    --enable_per_model_batching_parameters. A bad file fails the version's load
    (INVALID_ARGUMENT, its status says why)."""
    try:
        found = read_version_batching(Path(path), num_batch_threads)
    except ConfigError as error:
        raise InvalidArgument(str(error)) from None
    if found is None:
        return None
    batching, unused = found
    for what, why in unused:
        log.warning("%s is ignored: %s", what, why)
    return batching


def make_manager(config: Config, storage: Storage, metrics: Metrics) -> Manager:
    """The manager, loading through `storage` with the config's `loading:` settings, its
    moves counted in `metrics`."""
    loading = config.loading
    manager = Manager(
        storage.load,
        release=storage.release,
        num_load_threads=loading.num_load_threads,
        load_retries=loading.max_retries,
        retry_backoff_seconds=loading.retry_backoff_seconds,
        load_timeout_seconds=loading.load_timeout_seconds,
        memory=MemoryGuard(memory_limit_bytes(config)),
    )
    metrics.known_model = manager.has_model
    manager.add_observer(metrics.observe_transition)
    metrics.watch_memory(manager.memory_report)
    return manager


def make_source(
    kind: str,
    models: Sequence[ModelConfig],
    config: Config,
    on_versions: VersionsCallback,
    store: Callable[[str], ObjectStore],
    on_poll: Callable[..., None] | None = None,
) -> Source:
    """The source for every model of one kind ("local", or a store's scheme: "s3", "gs",
    "az"), with S3 events if set."""
    watch = config.watch
    if kind == "local":
        return LocalSource(
            locations(models),
            on_versions,
            poll_interval_seconds=watch.poll_interval_seconds,
            settle_seconds=watch.settle_seconds,
            ready_marker=watch.ready_marker,
            debounce_seconds=watch.debounce_seconds,
            on_poll=on_poll,
        )
    from loader.sources.store_source import StoreSource

    events = watch.s3_events if kind == "s3" else None
    settle = watch.settle_seconds
    if settle is None and events is not None and watch.ready_marker is None:
        # Events trigger listings at once: settle on time, not on the (slower) poll.
        settle = EVENT_SETTLE_SECONDS
    source = StoreSource(
        locations(models),
        on_versions,
        store(kind),
        poll_interval_seconds=watch.poll_interval_seconds,
        settle_seconds=settle,
        ready_marker=watch.ready_marker,
        on_poll=on_poll,
    )
    if events is None:
        return source
    return _WithEvents(source, _event_listener(config, source, settle or 0.0))


def _event_listener(config: Config, source: Any, settle: float) -> Any:
    from loader.sources.s3_client import make_sqs_client
    from loader.sources.s3_events import S3EventListener

    events, s3 = config.watch.s3_events, config.storage.s3
    assert events is not None
    sqs = make_sqs_client(events.endpoint_url or s3.endpoint_url, s3.region)
    return S3EventListener(
        sqs, events.sqs_queue_url, source,
        settle_seconds=settle, wait_time_seconds=events.wait_time_seconds,
    )


class _WithEvents:
    """An S3 source and the event listener that nudges it, started and stopped together."""

    def __init__(self, source: Any, listener: Any) -> None:
        self._source = source
        self._listener = listener

    def set_models(self, models: Sequence[ModelLocation]) -> None:
        self._source.set_models(models)

    def recheck(self, model: str, version: int, fingerprint: str) -> None:
        self._source.recheck(model, version, fingerprint)

    def start(self) -> None:
        self._source.start()
        self._listener.start()

    def stop(self) -> None:
        self._listener.stop()
        self._source.stop()

    def join(self, timeout: float | None = None) -> None:
        self._listener.join(timeout)
        self._source.join(timeout)


def source_kind(model: ModelConfig) -> str:
    return store_scheme(model.base_path) or "local"


def locations(models: Any) -> list[ModelLocation]:
    return [ModelLocation(m.name, m.base_path) for m in models]


@dataclass(frozen=True)
class PortsTls:
    """The certificates each port presents; None: plain text."""

    rest: ServerTls | None = None
    grpc: ServerTls | None = None


def ports_tls(tls: TlsConfig | None, ssl_config_file: Path | None = None) -> PortsTls:
    """`server.tls` secures both ports; TF Serving's `--ssl_config_file` the gRPC port only
    (its REST port stays plain HTTP). The two never meet: TF Serving's flags build their
    config without config.yaml. A set that cannot serve raises `ConfigError` naming it."""
    try:
        if ssl_config_file is not None:
            path = ssl_config_file

            def read_ssl() -> Pem:
                try:
                    return read_ssl_config(path)
                except ConfigError as error:  # a rotation half done: the files' problem
                    raise TlsError(str(error)) from None

            return PortsTls(grpc=ServerTls([path], read_ssl))
        if tls is None:
            return PortsTls()
        files = [Path(tls.cert_file), Path(tls.key_file)]
        ca = None if tls.client_ca_file is None else Path(tls.client_ca_file)
        both = ServerTls(
            files + ([ca] if ca else []),
            lambda: read_pem_files(files[0], files[1], ca, "server.tls"),
        )
        return PortsTls(rest=both, grpc=both)
    except TlsError as error:
        raise ConfigError(str(error)) from None
