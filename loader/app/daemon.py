"""The composition root: builds every part from the config, starts them in order and
stops them in reverse (servers first, so requests in flight are answered by loaded models).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from tensorflow_serving.config import model_server_config_pb2

from loader.app.parts import (
    PortsTls,
    Storage,
    locations,
    log_targets,
    make_manager,
    make_source,
    model_spec,
    ports_tls,
    source_kind,
)
from loader.app.servers import DRAIN_SECONDS, grpc_server, rest_server
from loader.base import Code, InvalidArgument, ServingError
from loader.config.schema import Config, ConfigError, ModelConfig
from loader.config.tfs_model_config import parse_model_server_config
from loader.manager.harness import Transition
from loader.manager.memory import mib
from loader.serving.dataplane import DataPlane
from loader.serving.decode_budget import DecodeBudget
from loader.serving.grpc.profiler import ProfilerForwarder
from loader.serving.grpc.reload_auth import ReloadGuard
from loader.serving.grpc.server import GrpcServer
from loader.serving.metrics import Metrics
from loader.serving.operator_view import OperatorView
from loader.serving.request_log import RequestLog
from loader.serving.rest.app import PROMETHEUS_PATH, RestApi
from loader.serving.rest.operator_page import OperatorPage
from loader.serving.rest.server import RestServer
from loader.serving.rest.v2_repository import RepositoryRoutes
from loader.serving.tls import ServerTls
from loader.serving.v2.repository import Repository
from loader.sources.base import Source
from policies.base import Phase

log = logging.getLogger("modelwatch.daemon")

# A gRPC reload without a deadline waits this long for its new models, then answers.
RELOAD_WAIT_SECONDS = 300.0


def _over_tls(tls: ServerTls | None) -> str:
    if tls is None:
        return ""
    return " over TLS" + (", clients presenting a certificate" if tls.client_verify else "")


class Daemon:
    """Everything modelwatch runs, wired from one config."""

    def __init__(
        self, config: Config, *, serve_rest: bool = True, metrics_path: str | None = PROMETHEUS_PATH,
        tls: PortsTls | None = None,
    ) -> None:
        """`tls`: each port's certificates; None: `server.tls`'s (a certificate that cannot
        serve raises `ConfigError` naming it)."""
        self._tls = tls = ports_tls(config.server.tls) if tls is None else tls  # before all
        self.config = config
        self.metrics = Metrics()
        self._storage = Storage(config, self.metrics)
        self.manager = make_manager(config, self._storage, self.metrics)
        self._sources: dict[str, Source] = {}
        self.manager.add_observer(self._recheck_failed)
        self._reload_lock = threading.Lock()
        self._started = False
        self.dataplane = DataPlane(
            self.manager, on_demand_wait_seconds=config.loading.on_demand_wait_seconds,
            on_expired=self.metrics.expire,
        )
        server = config.server
        from loader.servables.runtime import hand_over_sooner

        budget = DecodeBudget(  # one for REST and gRPC
            server.max_decoding_bytes, while_used=hand_over_sooner
        )
        self.request_log = RequestLog(  # one writer thread for every model's request logs
            self.metrics, file_bytes=server.request_log_file_bytes,
            queue_bytes=server.request_log_queue_bytes,
            saved_model_tags=config.tensorflow.saved_model_tags,
        )
        self.operator_view: OperatorView | None = None
        if serve_rest and server.operator_page:
            self.operator_view = OperatorView(
                self.dataplane, self.metrics,
                base_paths=lambda: {m.name: m.base_path for m in self.config.models},
            )
            self.manager.add_observer(self.operator_view.transitions.observe)
        self.repository = Repository(  # Triton's repository extension, over the config
            self.dataplane, lambda: [m.name for m in self.config.models],
            lambda: self.reload_models(self.config.models), self.manager.wait_until,
            RELOAD_WAIT_SECONDS,
        )
        self.reload_models(config.models)
        self.rest: RestServer | None = None
        self._rest_api: RestApi | None = None
        if serve_rest:  # TF Serving's --rest_api_port=0
            self._rest_api, self.rest = rest_server(
                server, self.dataplane, self.metrics, budget, server.rest_port, tls=tls.rest,
                metrics_path=metrics_path, request_log=self.request_log,
                operator_page=OperatorPage(
                    self.operator_view, metrics=self.metrics,
                    max_streams=server.max_event_streams,
                ) if self.operator_view else None,
                routes=RepositoryRoutes(self.repository, self.metrics).routes(),
            )
        self.grpc: GrpcServer | None = None
        self._profiler: ProfilerForwarder | None = None
        if server.grpc_port:
            token = server.reload_token.get_secret_value() if server.reload_token else None
            guard = ReloadGuard(token or os.environ.get("MODELWATCH_RELOAD_TOKEN"), server.host)
            if server.enable_profiler:
                from loader.servables.profiler import start_profiler_server

                self._profiler = ProfilerForwarder(f"127.0.0.1:{start_profiler_server()}")
            self.grpc = grpc_server(
                server, self.dataplane, self.metrics, budget, server.grpc_port, tls=tls.grpc,
                socket_path=server.grpc_socket_path,
                extra_handlers=[self._profiler] if self._profiler else [],
                reload=self.reload_from_grpc, guard=guard, request_log=self.request_log,
            )

    @property
    def sources(self) -> list[Source]:
        return list(self._sources.values())

    def reload_models(self, models: Sequence[ModelConfig]) -> None:
        """Serve exactly these models from now on: new ones are watched and loaded,
        removed ones unloaded, changed policies and labels applied. Paths must be resolved."""
        with self._reload_lock:
            try:  # first: a folder that cannot be made refuses the reload before it changes a thing
                self.request_log.configure(log_targets(models))
            except OSError as error:
                raise ConfigError(
                    "request_logging.filename_prefix: cannot make its folder "
                    f"({error.strerror or error}: {error.filename})"
                ) from None
            self._storage.batching = {m.name: m.batching for m in models}
            # Models unloaded through the repository extension stay so until loaded again.
            self.repository.retain(m.name for m in models)
            served = [m for m in models if m.name not in self.repository.unloaded]
            # The manager first: it ignores reports for models it no longer serves.
            self.manager.set_models([model_spec(m) for m in served])
            for kind, source in self._sources.items():
                source.set_models(locations(m for m in served if source_kind(m) == kind))
            for kind in {source_kind(m) for m in served} - set(self._sources):
                source = self._make_source(kind, [m for m in served if source_kind(m) == kind])
                self._sources[kind] = source
                if self._started:
                    source.start()
            self.config = self.config.model_copy(update={"models": list(models)})

    def reload_from_grpc(
        self, config: model_server_config_pb2.ModelServerConfig, timeout: float | None = None
    ) -> None:
        """HandleReloadConfigRequest: like TF Serving, answer once the new models settled,
        but wait at most `timeout` seconds (what the caller still waits): past it the
        config stays applied and the models go on loading (DEADLINE_EXCEEDED)."""
        try:
            models = parse_model_server_config(config)
        except ConfigError as error:
            raise InvalidArgument(str(error)) from None
        for m in models:
            if not m.in_store and not Path(m.base_path).is_absolute():
                raise ConfigError(
                    f"Expected model {m.name} to have an absolute path or URI; "
                    f"got base_path()={m.base_path}"
                )
        added = {m.name for m in models} - set(self.manager.models()) - self.repository.unloaded
        try:
            self.reload_models(models)
        except ConfigError as error:  # a request log's folder
            raise InvalidArgument(str(error)) from None

        def settled(name: str) -> bool:
            try:
                statuses = self.dataplane.status(name)
            except ServingError:
                return False
            # ready, or every version ended or refused for memory (its status says why)
            return bool(self.dataplane.readiness().get(name)) or all(
                s.state == "END" or s.error_code is Code.RESOURCE_EXHAUSTED for s in statuses
            )

        wait = RELOAD_WAIT_SECONDS if timeout is None else min(timeout, RELOAD_WAIT_SECONDS)
        if not self.manager.wait_until(lambda: all(settled(n) for n in added), wait) and (
            wait < RELOAD_WAIT_SECONDS
        ):
            loading = sorted(n for n in added if not settled(n))
            raise ServingError(
                f"the call's deadline passed with {len(loading)} model(s) still loading: "
                f"{loading}; the new config is applied", Code.DEADLINE_EXCEEDED,
            )
        failed = sorted(n for n in added if not self.dataplane.readiness().get(n))
        if failed:
            raise ServingError(
                f"{len(failed)} model(s) did not become available: {failed}", Code.UNKNOWN
            )
        log.info("reloaded the config: %d model(s)", len(models))

    def _make_source(self, kind: str, models: list[ModelConfig]) -> Source:
        return make_source(
            kind, models, self.config, self.manager.on_versions, self._storage.store,
            on_poll=self._observe_poll,
        )

    def _recheck_failed(self, moved: Transition) -> None:
        # Storage's part of a failed load: the source looks at that version on every scan
        # until its content changes, so a fixed upload loads within a poll or two.
        if moved.phase is Phase.ERROR:
            for source in list(self._sources.values()):
                source.recheck(moved.model, moved.version, moved.fingerprint)

    def _observe_poll(self, model: str, seconds: float, ok: bool) -> None:
        self.metrics.observe_poll(model, seconds, ok)
        if self.operator_view is not None:
            self.operator_view.polls.observe(model, seconds, ok)

    def start(self, interrupted: threading.Event | None = None) -> None:
        """Load the initial models, then open the ports (TF Serving's order); returns
        early, with the ports closed, if `interrupted` is set meanwhile."""
        from loader.servables.runtime import prepare_runtime

        # `modelwatch serve` has imported TensorFlow (hundreds of MB) by now, so the first
        # load's figures are its own and every decision starts from a resident figure
        # that holds it (cli.import_tensorflow).
        prepare_runtime()  # before any load: see its docstring
        limit = self.manager.memory.limit_bytes
        log.info(
            "memory: %s resident at start, limit %s (loading.memory_limit_bytes)",
            mib(self.manager.memory.resident_bytes()), "none" if limit is None else mib(limit),
        )
        self.request_log.start()
        self.manager.start()
        with self._reload_lock:
            self._started = True
            for source in self._sources.values():
                source.start()
        if not self._await_initial_loads(interrupted or threading.Event()):
            return
        # gRPC first, as TF Serving: once REST answers, gRPC listens too.
        if self.grpc is not None:
            self.grpc.start()
            log.info("serving gRPC on %s:%d%s", self.config.server.host, self.grpc.port,
                     _over_tls(self._tls.grpc))
            if self.grpc.socket_path:
                log.info("serving gRPC on unix:%s", self.grpc.socket_path)
        if self.rest is not None:
            self.rest.start()
            if not self.rest.wait_started(30):
                raise RuntimeError("the REST server did not start")
            log.info(
                "serving REST on %s://%s:%d with %d model(s)", "https" if self._tls.rest else "http",
                self.config.server.host, self.rest.port, len(self.config.models),
            )

    def _await_initial_loads(self, interrupted: threading.Event) -> bool:
        """Wait until every model's storage has answered and its versions have had their
        first load (a failed one counts: its status says why), for at most
        `loading.initial_load_timeout_seconds`; False if `interrupted` first."""
        bound = self.config.loading.initial_load_timeout_seconds
        deadline = None if bound is None else time.monotonic() + bound
        while pending := self.manager.loads_pending():
            if interrupted.is_set():
                return False
            left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if left <= 0:
                log.warning(
                    "opening the ports after %gs (loading.initial_load_timeout_seconds) with "
                    "%d model(s) still waiting for storage or loading: %s; /readyz says "
                    "when they serve", bound, len(pending), ", ".join(pending),
                )
                break
            self.manager.wait_until(lambda: not self.manager.loads_pending(), left)
        return not interrupted.is_set()

    def stop(self) -> None:
        """Stop accepting requests, answer those in flight, then stop everything else."""
        if self.grpc is not None:
            self.grpc.stop(grace_seconds=DRAIN_SECONDS)  # refuses new RPCs now; in-flight ones finish
        if self._rest_api is not None:
            self._rest_api.close()  # an open operator page would hold the drain to its end
        if self.rest is not None:
            self.rest.stop()
            self.rest.join()
        if self.grpc is not None:
            self.grpc.join(DRAIN_SECONDS + 5)
        if self._profiler is not None:
            self._profiler.close()
        self.request_log.stop()  # the servers are done: every sampled request is queued
        self.request_log.join(DRAIN_SECONDS)
        with self._reload_lock:
            sources = list(self._sources.values())
        for source in reversed(sources):
            source.stop()
        for source in reversed(sources):
            source.join(10)
        self.manager.stop()
        self.manager.join()
