"""Triton's model repository extension over REST (`loader.serving.v2.repository`):
`POST /v2/repository/index`, `POST /v2/repository/models/{m}/load` and `.../unload`.

Their bodies are small JSON objects (`{"ready": true}`, `{"parameters": {...}}`) or empty;
one past MAX_BODY_BYTES is refused (413) unread. Answers and errors are Triton's: the index
as a JSON list, an empty 200 for a load or an unload, `{"error": ...}` otherwise. Counted
in the metrics under the APIs `repository_index`, `repository_load`, `repository_unload`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from loader.base import InvalidArgument, ServingError
from loader.serving.metrics import Metrics
from loader.serving.rest.error_answers import error_answer, too_large
from loader.serving.v2.repository import Repository

MAX_BODY_BYTES = 64 * 1024


class RepositoryRoutes:
    """The extension's three routes over a `Repository`."""

    def __init__(self, repository: Repository, metrics: Metrics) -> None:
        self._repository = repository
        self._metrics = metrics

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v2/repository/index", self._index, methods=["POST"]),
            Route("/v2/repository/models/{model}/load", self._load, methods=["POST"]),
            Route("/v2/repository/models/{model}/unload", self._unload, methods=["POST"]),
        ]

    async def _index(self, request: Request) -> Response:
        async def index(body: dict[str, Any]) -> Response:
            ready = body.get("ready", False)
            if not isinstance(ready, bool):
                raise InvalidArgument("'ready' must be a boolean")
            return Response(orjson.dumps(self._repository.index(ready)),
                            media_type="application/json")

        return await self._answer(request, "repository_index", "", index)

    async def _load(self, request: Request) -> Response:
        model = request.path_params["model"]

        async def load(body: dict[str, Any]) -> Response:
            await run_in_threadpool(self._repository.load, model, _parameters(body))
            return Response(b"", media_type="application/json")

        return await self._answer(request, "repository_load", model, load)

    async def _unload(self, request: Request) -> Response:
        model = request.path_params["model"]

        async def unload(body: dict[str, Any]) -> Response:
            _parameters(body)  # unload_dependents: there are no dependents here
            await run_in_threadpool(self._repository.unload, model)
            return Response(b"", media_type="application/json")

        return await self._answer(request, "repository_unload", model, unload)

    async def _answer(
        self, request: Request, api: str, model: str,
        handle: Callable[[dict[str, Any]], Awaitable[Response]],
    ) -> Response:
        with self._metrics.request("rest", api) as outcome:
            outcome.model = model
            try:
                return await handle(await self._body(request))
            except ServingError as error:
                outcome.code = error.code
                status, body = error_answer(error)
                return Response(body, status, media_type="application/json")

    async def _body(self, request: Request) -> dict[str, Any]:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                self._metrics.refuse("rest", "body_too_large")
                raise too_large(MAX_BODY_BYTES)
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            return {}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise InvalidArgument(f"failed to parse the request JSON: {error}") from None
        if not isinstance(body, dict):
            raise InvalidArgument("the request body must be a JSON object")
        return body


def _parameters(body: dict[str, Any]) -> dict[str, Any]:
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidArgument("'parameters' must be a JSON object")
    return parameters
