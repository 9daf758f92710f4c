"""The composition root: builds every part from the config, starts them in order and
stops them in reverse (servers first, so requests in flight are answered by loaded models).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from tensorflow_serving.config import model_server_config_pb2

from loader.app.parts import (
    Storage,
    locations,
    make_manager,
    make_source,
    model_spec,
    source_kind,
)
from loader.base import Code, InvalidArgument, ServingError
from loader.config.schema import Config, ConfigError, ModelConfig
from loader.config.tfs_model_config import parse_model_server_config
from loader.serving.dataplane import DataPlane
from loader.serving.grpc.reload_auth import ReloadGuard
from loader.serving.grpc.server import GrpcServer
from loader.serving.grpc.services import GrpcApi
from loader.serving.metrics import Metrics
from loader.serving.rest.app import PROMETHEUS_PATH, RestApi
from loader.serving.rest.server import RestServer, bind
from loader.sources.base import Source

log = logging.getLogger("modelwatch.daemon")

# How long a stop lets the requests in flight finish (a pod's grace period must cover it).
DRAIN_SECONDS = 30


class Daemon:
    """Everything modelwatch runs, wired from one config."""

    def __init__(
        self, config: Config, *, serve_rest: bool = True, metrics_path: str | None = PROMETHEUS_PATH
    ) -> None:
        self.config = config
        self.metrics = Metrics()
        self._storage = Storage(config, self.metrics)
        self.manager = make_manager(config, self._storage, self.metrics)
        self._sources: dict[str, Source] = {}
        self._reload_lock = threading.Lock()
        self._started = False
        self.reload_models(config.models)
        self.dataplane = DataPlane(self.manager)
        server = config.server
        self.rest: RestServer | None = None
        if serve_rest:  # TF Serving's --rest_api_port=0
            rest_api = RestApi(
                self.dataplane, self.metrics, max_request_bytes=server.max_request_bytes,
                body_timeout_seconds=server.body_timeout_seconds, metrics_path=metrics_path,
            )
            self.rest = RestServer(
                rest_api.app, bind(server.host, server.rest_port), drain_timeout_seconds=DRAIN_SECONDS
            )
        self.grpc: GrpcServer | None = None
        if server.grpc_port:
            token = server.reload_token.get_secret_value() if server.reload_token else None
            guard = ReloadGuard(token or os.environ.get("MODELWATCH_RELOAD_TOKEN"), server.host)
            grpc_api = GrpcApi(
                self.dataplane, reload=self.reload_from_grpc, metrics=self.metrics, guard=guard
            )
            self.grpc = GrpcServer(
                grpc_api, server.host, server.grpc_port, max_message_bytes=server.max_request_bytes,
                max_workers=server.grpc_threads(),
            )

    @property
    def sources(self) -> list[Source]:
        return list(self._sources.values())

    def reload_models(self, models: Sequence[ModelConfig]) -> None:
        """Serve exactly these models from now on: new ones are watched and loaded,
        removed ones unloaded, changed policies and labels applied. Paths must be resolved."""
        with self._reload_lock:
            self._storage.batching = {m.name: m.batching for m in models}
            # The manager first: it ignores reports for models it no longer serves.
            self.manager.set_models([model_spec(m) for m in models])
            for kind, source in self._sources.items():
                source.set_models(locations(m for m in models if source_kind(m) == kind))
            for kind in {source_kind(m) for m in models} - set(self._sources):
                source = self._make_source(kind, [m for m in models if source_kind(m) == kind])
                self._sources[kind] = source
                if self._started:
                    source.start()
            self.config = self.config.model_copy(update={"models": list(models)})

    def reload_from_grpc(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """HandleReloadConfigRequest: like TF Serving, answer once the new models settled."""
        try:
            models = parse_model_server_config(config)
        except ConfigError as error:
            raise InvalidArgument(str(error)) from None
        for m in models:
            if not m.is_s3 and not Path(m.base_path).is_absolute():
                raise ConfigError(
                    f"Expected model {m.name} to have an absolute path or URI; "
                    f"got base_path()={m.base_path}"
                )
        added = {m.name for m in models} - set(self.manager.models())
        self.reload_models(models)

        def settled(name: str) -> bool:
            try:
                statuses = self.dataplane.status(name)
            except ServingError:
                return False
            return any(s.state == "AVAILABLE" for s in statuses) or all(
                s.state == "END" for s in statuses
            )

        self.manager.wait_until(lambda: all(settled(n) for n in added), 300)
        failed = sorted(n for n in added if not self.dataplane.readiness().get(n))
        if failed:
            raise ServingError(
                f"{len(failed)} model(s) did not become available: {failed}", Code.UNKNOWN
            )
        log.info("reloaded the config: %d model(s)", len(models))

    def _make_source(self, kind: str, models: list[ModelConfig]) -> Source:
        return make_source(
            kind, models, self.config, self.manager.on_versions, self._storage.s3_client,
            on_poll=self.metrics.observe_poll,
        )

    def start(self) -> None:
        from loader.servables.runtime import prepare_runtime

        prepare_runtime()  # before any load: see its docstring
        self.manager.start()
        with self._reload_lock:
            self._started = True
            for source in self._sources.values():
                source.start()
        if self.rest is not None:
            self.rest.start()
            if not self.rest.wait_started(30):
                raise RuntimeError("the REST server did not start")
            log.info(
                "serving REST on http://%s:%d with %d model(s)",
                self.config.server.host, self.rest.port, len(self.config.models),
            )
        if self.grpc is not None:
            self.grpc.start()
            log.info("serving gRPC on %s:%d", self.config.server.host, self.grpc.port)

    def stop(self) -> None:
        """Stop accepting requests, answer those in flight, then stop everything else."""
        if self.grpc is not None:
            self.grpc.stop(grace_seconds=DRAIN_SECONDS)  # refuses new RPCs now; in-flight ones finish
        if self.rest is not None:
            self.rest.stop()
            self.rest.join()
        if self.grpc is not None:
            self.grpc.join(DRAIN_SECONDS + 5)
        with self._reload_lock:
            sources = list(self._sources.values())
        for source in reversed(sources):
            source.stop()
        for source in reversed(sources):
            source.join(10)
        self.manager.stop()
        self.manager.join()
