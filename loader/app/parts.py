"""The parts the daemon is built from, shared with `loader.cluster` (whose watcher runs the
sources and whose replicas load versions the same way): a model's policies, the storage that
turns a reported version into a servable, and the sources that watch storage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from loader.base import Servable, VersionRef
from loader.config.schema import BatchingConfig, Config, ModelConfig, ServerConfig
from loader.manager.manager import Manager, ModelSpec
from loader.manager.memory_guard import MemoryGuard
from loader.manager.process_memory import default_limit_bytes
from loader.serving.metrics import Metrics
from loader.serving.rest.allowed_hosts import allowed_hosts
from loader.serving.rest.http_guard import HttpLimits
from loader.serving.rest.open_files import connection_cap
from loader.sources.base import ModelLocation, Source, VersionsCallback
from loader.sources.local import LocalSource
from policies.base import SelectionPolicy
from policies.selection import All, Latest, Specific
from policies.transition import TRANSITIONS

EVENT_SETTLE_SECONDS = 1.0
# How long a stop lets the requests in flight finish (a pod's grace period must cover it).
DRAIN_SECONDS = 30


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


def memory_limit_bytes(config: Config) -> int | None:
    """`loading.memory_limit_bytes`, with "auto" worked out for this machine or cgroup."""
    limit = config.loading.memory_limit_bytes
    return default_limit_bytes() if limit == "auto" else limit


class Storage:
    """Turns a reported version into a loaded servable, and releases its files after."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self._s3_client: Any = None
        self._s3_fetcher: Any = None
        self.batching: dict[str, BatchingConfig | None] = {}

    def s3_client(self) -> Any:
        """The S3 client, made (and the cache cleaned of a crash's leftovers) on first use."""
        if self._s3_client is None:
            from loader.sources.s3_client import make_s3_client
            from loader.sources.s3_fetch import S3Fetcher

            s3 = self._config.storage.s3
            self._s3_client = make_s3_client(s3.endpoint_url, s3.region)
            self._s3_fetcher = S3Fetcher(self._s3_client, self._config.storage.cache_dir)
            self._s3_fetcher.cleanup_stale()
        return self._s3_client

    def load(self, model: str, version: int, ref: VersionRef) -> Servable:
        from loader.servables.formats import load_version
        from loader.servables.warmup import warm_up  # TensorFlow loads on first use

        path = ref.uri
        if ref.uri.startswith("s3://"):
            self.s3_client()
            path = self._s3_fetcher.fetch(model, version, ref)
        options = self._config.tensorflow
        servable = load_version(
            path, prefer_tflite_model=options.prefer_tflite_model,
            num_tflite_interpreters=options.num_tflite_interpreters,
        )
        batching = self.batching.get(model)
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
            )
        return servable

    def release(self, model: str, version: int, ref: VersionRef) -> None:
        if ref.uri.startswith("s3://") and self._s3_fetcher is not None:
            self._s3_fetcher.release(model, version, ref)


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
    s3_client: Callable[[], Any],
    on_poll: Callable[..., None] | None = None,
) -> Source:
    """The source for every model of one kind ("local" or "s3"), with S3 events if set."""
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
    from loader.sources.s3 import S3Source

    settle = watch.settle_seconds
    if settle is None and watch.s3_events is not None and watch.ready_marker is None:
        # Events trigger listings at once: settle on time, not on the (slower) poll.
        settle = EVENT_SETTLE_SECONDS
    source = S3Source(
        locations(models),
        on_versions,
        s3_client(),
        poll_interval_seconds=watch.poll_interval_seconds,
        settle_seconds=settle,
        ready_marker=watch.ready_marker,
        on_poll=on_poll,
    )
    if watch.s3_events is None:
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
    return "s3" if model.is_s3 else "local"


def locations(models: Any) -> list[ModelLocation]:
    return [ModelLocation(m.name, m.base_path) for m in models]


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
