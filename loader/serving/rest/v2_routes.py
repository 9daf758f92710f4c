"""The Open Inference Protocol's REST routes besides infer: health, server metadata, model
metadata and model readiness, with Triton's statuses (`src/http_server.cc`).

Health and readiness answer 200 with no body, or 400 (a model: with `{"error": "Model
version not ready"}`); metadata is JSON, an error `{"error": message}` with the status of
its code. Any other path under `/v2` is 404 `{"error": "Not Found"}`, as in Triton (infer,
a POST, is `loader.serving.rest.v2_infer`'s).
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from loader.base import Code, NotFound, ServingError
from loader.serving.dataplane import DataPlane
from loader.serving.metrics import Metrics
from loader.serving.rest.error_answers import error_answer
from loader.serving.v2.inference import (
    EXTENSIONS,
    model_metadata,
    model_ready,
    server_metadata,
    server_ready,
)


def _json(document: object, status: int = 200) -> Response:
    return Response(orjson.dumps(document), status, media_type="application/json")


def _error(error: ServingError) -> Response:
    status, body = error_answer(error)
    return Response(body, status, media_type="application/json")


class V2Routes:
    """The routes; `extensions` are what server metadata lists."""

    def __init__(
        self, dataplane: DataPlane, metrics: Metrics, extensions: Sequence[str] = EXTENSIONS
    ) -> None:
        self._dataplane = dataplane
        self._metrics = metrics
        self._server_metadata = _json(server_metadata(extensions)).body

    def routes(self) -> list[BaseRoute]:
        """Starlette routes, the last one answering any other `/v2` path."""
        return [
            Route("/v2", self._server, methods=["GET"]),
            Route("/v2/health/live", self._live, methods=["GET"]),
            Route("/v2/health/ready", self._ready, methods=["GET"]),
            Route("/v2/models/{model}", self._model, methods=["GET"]),
            Route("/v2/models/{model}/versions/{version:int}", self._model, methods=["GET"]),
            Route("/v2/models/{model}/ready", self._model_ready, methods=["GET"]),
            Route(
                "/v2/models/{model}/versions/{version:int}/ready", self._model_ready,
                methods=["GET"],
            ),
            Route("/v2/{rest:path}", self._not_found, methods=["GET", "POST", "PUT", "DELETE"]),
        ]

    async def _server(self, request: Request) -> Response:
        return Response(self._server_metadata, media_type="application/json")

    async def _live(self, request: Request) -> Response:
        return Response(status_code=200)

    async def _ready(self, request: Request) -> Response:
        return Response(status_code=200 if server_ready(self._dataplane) else 400)

    async def _model(self, request: Request) -> Response:
        model, version = _model_version(request)
        with self._metrics.request("rest", "model_metadata") as outcome:
            outcome.model = model
            try:
                return _json(model_metadata(self._dataplane, model, version))
            except ServingError as error:
                outcome.code = error.code
                return _error(error)

    async def _model_ready(self, request: Request) -> Response:
        model, version = _model_version(request)
        with self._metrics.request("rest", "model_ready") as outcome:
            outcome.model = model
            if model_ready(self._dataplane, model, version):
                return Response(status_code=200)
            outcome.code = Code.UNAVAILABLE
            return _json({"error": "Model version not ready"}, 400)

    async def _not_found(self, request: Request) -> Response:
        return _error(NotFound("Not Found"))


def _model_version(request: Request) -> tuple[str, int | None]:
    version: int | None = request.path_params.get("version")
    return request.path_params["model"], version
