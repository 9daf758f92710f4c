"""TF Serving's REST API (`/v1/models/...`), and the Open Inference Protocol's (`/v2/...`,
`loader.serving.rest.v2_routes` and `v2_infer`), as a thin adapter over the data plane.

Routes are matched with TF Serving's own (case-insensitive) patterns on the path as it
arrived, and the model name and label decoded once matched (`loader.serving.rest.targets`);
errors are `{"error": message}` with TF Serving's mapping from status code to HTTP status.

Prediction requests (`:predict`, `:classify`, `:regress`, v2 `infer`) skip Starlette's routing and
request objects: `loader.serving.rest.predictions` answers them (and, on the fast HTTP path
of `loader.serving.rest.fast_path`, they skip ASGI too); everything else goes through
Starlette.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from loader.base import Code, Internal, InvalidArgument, ServingError
from loader.manager.harness import VersionStatus
from loader.serving.dataplane import DataPlane
from loader.serving.decode_budget import DecodeBudget
from loader.serving.metrics import CONTENT_TYPE, Metrics
from loader.serving.request_log import RequestLog
from loader.serving.rest.cors import API_PATH, answer_preflight, with_cors_headers
from loader.serving.rest.error_answers import body_timeout, error_answer, parse_version, too_large
from loader.serving.rest.idle_deadlines import IdleDeadlines
from loader.serving.rest.operator_page import PATH as OPERATOR_PAGE_PATH
from loader.serving.rest.operator_page import OperatorPage
from loader.serving.rest.predictions import (
    INLINE_BODY_BYTES as INLINE_BODY_BYTES,  # re-exported: where the limits were named first
)
from loader.serving.rest.predictions import (
    INLINE_OUTPUT_VALUES as INLINE_OUTPUT_VALUES,
)
from loader.serving.rest.targets import (
    MODEL_STATUS_API,
    Target,
    decode_part,
    parse_prediction,
    raw_path,
)
from loader.serving.rest.v2_infer import InferenceRoutes
from loader.serving.rest.v2_routes import V2Routes

log = logging.getLogger("modelwatch.rest")

PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's default


def _json(document: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(document), status, media_type="application/json")


class ErrorResponse(Response):
    """An error as Starlette's response; keeps the code for metrics."""

    def __init__(self, error: ServingError) -> None:
        status, body = error_answer(error)
        retry = error.retry_after_seconds
        headers = {"retry-after": str(retry)} if retry is not None else None
        super().__init__(body, status, headers, media_type="application/json")
        self.code = error.code


def _malformed(request: Request) -> InvalidArgument:
    """No route matches: TF Serving's answer, naming the path as it arrived."""
    path = raw_path(request.scope).decode("ascii", "backslashreplace")
    return InvalidArgument(f"Malformed request: {request.method} {path}")


class _Disconnected(Exception):
    """The client hung up before its request body was read."""


def _version_json(status: VersionStatus) -> dict[str, Any]:
    """One version's status as TF Serving writes it (the version is an int64: a string)."""
    return {
        "version": str(status.version),
        "state": status.state,
        "status": {"error_code": status.error_code.name, "error_message": status.error_message},
    }


class RestApi:
    """The REST handlers; `app` is the ASGI application. Predictions are timed out after
    `request_timeout_seconds` (`loader.serving.rest.request_timeout`); `cors` adds TF
    Serving's CORS headers to the answers on its API paths (`loader.serving.rest.cors`).
    """

    def __init__(
        self,
        dataplane: DataPlane,
        metrics: Metrics | None = None,
        *,
        max_request_bytes: int = 64 * 1024 * 1024,
        body_timeout_seconds: float = 30.0,
        metrics_path: str | None = PROMETHEUS_PATH,
        operator_page: OperatorPage | None = None,
        decode_budget: DecodeBudget | None = None,
        request_log: RequestLog | None = None,
        request_timeout_seconds: float | None = None,
        cors: bool = False,
        routes: Sequence[BaseRoute] = (),
    ) -> None:
        """`routes`: the caller's own, matched before TF Serving's (a cluster replica's)."""
        self._dataplane = dataplane
        self._cors = cors
        self._max_request_bytes = max_request_bytes
        self._body_timeout = body_timeout_seconds
        self._body_deadlines = IdleDeadlines(body_timeout_seconds)
        self._metrics = metrics or Metrics()
        self.predictions = InferenceRoutes(
            dataplane, self._metrics, max_request_bytes=max_request_bytes,
            body_timeout_seconds=body_timeout_seconds, decode_budget=decode_budget,
            request_log=request_log,
            request_timeout_seconds=request_timeout_seconds, cors=cors,
        )
        prometheus = [Route(metrics_path, self._prometheus, methods=["GET"])] if metrics_path else []
        self._operator_page = operator_page
        operator_routes = (
            operator_page.routes() if operator_page is not None
            else [Route(OPERATOR_PAGE_PATH + "{rest:path}", self._operator_page_off, methods=["GET"])]
        )
        self._starlette = Starlette(
            routes=[
                *prometheus,
                Route("/healthz", self._healthz, methods=["GET"]),
                Route("/readyz", self._readyz, methods=["GET"]),
                Route("/modelwatch/models", self._models, methods=["GET"]),
                *operator_routes,
                *routes,
                *V2Routes(dataplane, self._metrics).routes(),
                Route("/{path:path}", self._dispatch, methods=["GET", "POST"]),
            ],
            # What no route matches (a path with a newline, a PUT) is malformed, in JSON.
            exception_handlers={404: self._malformed, 405: self._malformed},
        )

    def close(self) -> None:
        """The server is stopping: end the operator page's live streams."""
        if self._operator_page is not None:
            self._operator_page.close()

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI application."""
        if scope["type"] == "http":
            path = raw_path(scope)
            if (self._cors or scope["method"] == "OPTIONS") and API_PATH.fullmatch(path):
                if scope["method"] == "OPTIONS":  # a preflight, with the flag or without
                    with self._metrics.request("rest", "preflight") as outcome:
                        if await answer_preflight(scope["headers"], send, self._cors) != 200:
                            outcome.code = Code.FAILED_PRECONDITION
                    return
                send = with_cors_headers(send)
            if scope["method"] == "POST":
                target = parse_prediction(path)
                if target is not None:
                    await self._prediction(target, receive, scope, send)
                    return
            if b"%" in path:
                # Only the parts of a TF Serving route may be escaped: an escape never
                # names one of the fixed routes (health, metrics, the operator page).
                response = await self._dispatch(Request(scope, receive))
                await response(scope, receive, send)
                return
        await self._starlette(scope, receive, send)

    async def _prediction(self, target: Target, receive: Receive, scope: Scope, send: Send) -> None:
        verb, model, version_text, label = target
        answered: asyncio.Future[tuple[int, bytes, int | None, int | None]] = (
            asyncio.get_running_loop().create_future()
        )

        def reply(status: int, body: bytes, retry_after: int | None, head: int | None) -> None:
            if not answered.done():
                answered.set_result((status, body, retry_after, head))

        call = self.predictions.call(verb, model, reply)
        call.read_head(scope["headers"])
        try:
            body = await self._body(scope, receive)
        except _Disconnected:  # nobody to answer, and no bug
            call.cancel()
            return
        except ServingError as error:
            call.refuse(error)
        except BaseException:
            call.cancel()
            raise
        else:
            call.run(version_text, label, body)
        status, answer, retry_after, head_length = await answered
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(answer)).encode()),
        ]
        if head_length is not None:  # a JSON head, then binary tensor data (v2)
            headers[0] = (b"content-type", b"application/octet-stream")
            headers.append((b"inference-header-content-length", str(head_length).encode()))
        if status == 408:  # what is left of the body would be read as a next request
            headers.append((b"connection", b"close"))
        if retry_after is not None:  # an on-demand model still loading
            headers.append((b"retry-after", str(retry_after).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    async def _malformed(self, request: Request, exc: Exception) -> Response:
        return ErrorResponse(_malformed(request))

    async def _prometheus(self, request: Request) -> Response:
        return Response(self._metrics.exposition(), media_type=CONTENT_TYPE)

    async def _healthz(self, request: Request) -> Response:
        """Liveness: the server answers."""
        return _json({"status": "ok"})

    async def _readyz(self, request: Request) -> Response:
        """Readiness: every configured model has a version available."""
        models = self._dataplane.readiness()
        ready = all(models.values())
        return _json({"ready": ready, "models": models}, 200 if ready else 503)

    async def _models(self, request: Request) -> Response:
        """Every model with its labels and versions (for `modelwatch status`; not TF Serving's)."""
        return _json({
            "models": [
                {"name": name, "labels": labels, "versions": [
                    {**_version_json(s), "memory_bytes": s.memory_bytes} for s in statuses
                ]}
                for name, labels, statuses in self._dataplane.overview()
            ]
        })

    async def _operator_page_off(self, request: Request) -> Response:
        return _json({"error": "the operator page is off (server.operator_page: false)"}, 404)

    async def _dispatch(self, request: Request) -> Response:
        match = (
            MODEL_STATUS_API.fullmatch(raw_path(request.scope)) if request.method == "GET" else None
        )
        api = "unknown" if match is None else "metadata" if match.group(4) else "status"
        model, version_text, label = (
            (None, None, None) if match is None else
            (decode_part(match.group(1) or b""), match.group(2), match.group(3))
        )
        with self._metrics.request("rest", api) as outcome:
            outcome.model = model or ""
            response = await self._answer(request, api, model, version_text, label)
            if isinstance(response, ErrorResponse):
                outcome.code = response.code
            elif response.status_code >= 500:
                outcome.code = Code.INTERNAL
            return response

    async def _answer(
        self, request: Request, api: str, model: str | None, version_text: bytes | None,
        label_text: bytes | None,
    ) -> Response:
        try:
            if model is None:
                raise _malformed(request)
            version = parse_version(version_text.decode() if version_text else None)
            label = decode_part(label_text) if label_text else None
            if not model:
                raise InvalidArgument("Missing model name in request.")
            if api == "metadata":
                return await run_in_threadpool(self._metadata, model, version, label)
            return self._status(model, version, label)
        except ServingError as error:
            return ErrorResponse(error)
        except Exception as exc:  # a bug: answer like TF Serving would, and log it whole
            log.exception("%s %s failed", request.method, request.url.path)
            return ErrorResponse(Internal(f"Internal error: {type(exc).__name__}: {exc}"))

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        """The request body, refused (413) as soon as it is known to be too large, and
        given up (408) when `body_timeout_seconds` pass with no byte of it arriving."""
        limit = self._max_request_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > limit:
                    raise too_large(limit)
                break
        chunks, size = [], 0
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        deadlines = self._body_deadlines
        try:
            while True:
                deadlines.watch(task, loop)
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _Disconnected
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise too_large(limit)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except asyncio.CancelledError:
            if not deadlines.expired(task):
                raise
            raise body_timeout(self._body_timeout, size) from None
        finally:
            deadlines.forget(task)

    def _status(self, model: str, version: int | None, label: str | None) -> Response:
        statuses = self._dataplane.status(model, version, label)
        return _json({"model_version_status": [_version_json(s) for s in statuses]})

    def _metadata(self, model: str, version: int | None, label: str | None) -> Response:
        with self._dataplane.hold(model, version, label) as lease:
            return _json(
                {
                    "model_spec": {
                        "name": model,
                        "signature_name": "",
                        "version": str(lease.version),
                    },
                    "metadata": {"signature_def": self._dataplane.metadata(lease)},
                }
            )
