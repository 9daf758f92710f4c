"""TF Serving's REST API (`/v1/models/...`) as a thin adapter over the data plane.

Routes are matched with TF Serving's own (case-insensitive) patterns; errors are
`{"error": message}` with TF Serving's mapping from status code to HTTP status.

Prediction requests (`:predict`, `:classify`, `:regress`) take a raw ASGI path that skips
Starlette's routing and request objects; everything else goes through Starlette. The
model never runs on the event loop: a batched model's request waits as a future for its
batch, an unbatched one runs on a worker thread. A predict body of up to
INLINE_BODY_BYTES is parsed on the event loop (tens of microseconds, cheaper than the
hop to a thread and back); a larger one, and classify and regress, on a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from loader.base import Code, Internal, InvalidArgument, ServingError
from loader.manager.harness import VersionStatus
from loader.servables.inference import classify, examples_from_features, regress
from loader.serving.dataplane import DataPlane
from loader.serving.metrics import CONTENT_TYPE, Metrics
from loader.serving.rest.idle_deadlines import IdleDeadlines
from loader.serving.rest.json_examples import (
    decode_examples_request,
    encode_classify_response,
    encode_regress_response,
)
from loader.serving.rest.json_predict import decode_predict_request
from loader.serving.rest.json_responses import encode_predict_response
from loader.serving.rest.json_values import parse_body, signature_name_of
from loader.serving.rest.operator_page import PATH as OPERATOR_PAGE_PATH
from loader.serving.rest.operator_page import OperatorPage

log = logging.getLogger("modelwatch.rest")

PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's default

# Predict bodies up to this size are decoded, and outputs of up to INLINE_OUTPUT_VALUES
# values encoded, on the event loop; larger ones on a worker thread.
INLINE_BODY_BYTES = 16 * 1024
INLINE_OUTPUT_VALUES = 4096

_VERSION_OR_LABEL = r"(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
PREDICTION_API = re.compile(
    r"/v1/models/([^/:]+)" + _VERSION_OR_LABEL + r":(classify|regress|predict)", re.IGNORECASE
)
MODEL_STATUS_API = re.compile(
    r"/v1/models(?:/([^/:]+))?" + _VERSION_OR_LABEL + r"(?:/(metadata))?", re.IGNORECASE
)

# TF Serving's mapping (model_servers/http_server.cc: ToHTTPStatusCode).
HTTP_STATUS = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


def _json(document: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(document), status, media_type="application/json")


def error_answer(error: ServingError) -> tuple[int, bytes]:
    """`{"error": message}` and TF Serving's HTTP status for it."""
    if isinstance(error, _TooLarge):
        status = 413
    elif isinstance(error, _BodyTimeout):
        status = 408
    else:
        status = HTTP_STATUS.get(error.code, 500)
    try:
        return status, orjson.dumps({"error": error.message})
    except orjson.JSONEncodeError:  # a lone surrogate quoted from the client's text
        return status, json.dumps({"error": error.message}).encode()  # escapes it as \udXXX


class ErrorResponse(Response):
    """An error as Starlette's response; keeps the code for metrics."""

    def __init__(self, error: ServingError) -> None:
        status, body = error_answer(error)
        retry = error.retry_after_seconds
        headers = {"retry-after": str(retry)} if retry is not None else None
        super().__init__(body, status, headers, media_type="application/json")
        self.code = error.code


class _Disconnected(Exception):
    """The client hung up before its request body was read."""



def _version_json(status: VersionStatus) -> dict[str, Any]:
    """One version's status as TF Serving writes it (the version is an int64: a string)."""
    return {
        "version": str(status.version),
        "state": status.state,
        "status": {"error_code": status.error_code.name, "error_message": status.error_message},
    }


class _TooLarge(ServingError):
    code = Code.RESOURCE_EXHAUSTED


def _too_large(limit: int) -> _TooLarge:
    return _TooLarge(f"the request body is larger than server.max_request_bytes ({limit} bytes)")


class _BodyTimeout(ServingError):
    """The client stopped sending its body: 408, and the connection is closed."""

    code = Code.DEADLINE_EXCEEDED


def _version(text: str | None) -> int | None:
    if not text:
        return None
    try:
        version = int(text)
    except ValueError:
        version = -1
    if not 0 <= version < 2**63:
        raise InvalidArgument(f"Failed to convert version: {text} to numeric.")
    return version


class RestApi:
    """The REST handlers; `app` is the ASGI application."""

    def __init__(
        self,
        dataplane: DataPlane,
        metrics: Metrics | None = None,
        *,
        max_request_bytes: int = 64 * 1024 * 1024,
        body_timeout_seconds: float = 30.0,
        metrics_path: str | None = PROMETHEUS_PATH,
        operator_page: OperatorPage | None = None,
    ) -> None:
        self._dataplane = dataplane
        self._max_request_bytes = max_request_bytes
        self._body_timeout = body_timeout_seconds
        self._body_deadlines = IdleDeadlines(body_timeout_seconds)
        self._metrics = metrics or Metrics()
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
        if scope["type"] == "http" and scope["method"] == "POST":
            match = PREDICTION_API.fullmatch(scope["path"])
            if match is not None:
                await self._prediction(match, receive, scope, send)
                return
        await self._starlette(scope, receive, send)

    async def _prediction(
        self, match: re.Match[str], receive: Receive, scope: Scope, send: Send
    ) -> None:
        model, version_text, label, verb = match.groups()
        api = verb.lower()
        with self._metrics.request("rest", api) as outcome:
            outcome.model = model
            status, retry_after = 200, None
            try:
                version = _version(version_text)
                body = await self._body(scope, receive)
                if api == "predict":
                    answer = await self._predict(model, version, label, body)
                else:
                    answer = await run_in_threadpool(
                        self._classify_or_regress, api, model, version, label, body
                    )
            except _Disconnected:  # nobody to answer, and no bug
                outcome.code = Code.CANCELLED
                return
            except ServingError as error:
                outcome.code, retry_after = error.code, error.retry_after_seconds
                status, answer = error_answer(error)
            except Exception as exc:  # a bug: answer like TF Serving would, and log it whole
                log.exception("%s of model %s failed", api, model)
                internal = Internal(f"Internal error: {type(exc).__name__}: {exc}")
                outcome.code = internal.code
                status, answer = error_answer(internal)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(answer)).encode()),
            ]
            if status == 408:  # what is left of the body would be read as a next request
                headers.append((b"connection", b"close"))
            if retry_after is not None:  # an on-demand model still loading
                headers.append((b"retry-after", str(retry_after).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": answer})

    async def _predict(
        self, model: str, version: int | None, label: str | None, body: bytes
    ) -> bytes:
        inline = len(body) <= INLINE_BODY_BYTES
        document = parse_body(body) if inline else await run_in_threadpool(parse_body, body)
        with await self._dataplane.hold_async(model, version, label) as lease:
            name = signature_name_of(document)
            signature = self._dataplane.signature(lease, name)
            if inline:
                request = decode_predict_request(document, signature)
            else:
                request = await run_in_threadpool(decode_predict_request, document, signature)
            outputs = await self._dataplane.run_async(lease, name, request.inputs)
        if sum(map(np.size, outputs.values())) <= INLINE_OUTPUT_VALUES:
            return encode_predict_response(outputs, request.row_format)
        return await run_in_threadpool(encode_predict_response, outputs, request.row_format)

    async def _malformed(self, request: Request, exc: Exception) -> Response:
        message = f"Malformed request: {request.method} {request.url.path}"
        return ErrorResponse(InvalidArgument(message))

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
        path = request.url.path
        match = MODEL_STATUS_API.fullmatch(path) if request.method == "GET" else None
        api = "unknown" if match is None else "metadata" if match.group(4) else "status"
        with self._metrics.request("rest", api) as outcome:
            outcome.model = match.group(1) or "" if match else ""
            response = await self._answer(request, api, match)
            if isinstance(response, ErrorResponse):
                outcome.code = response.code
            elif response.status_code >= 500:
                outcome.code = Code.INTERNAL
            return response

    async def _answer(self, request: Request, api: str, match: re.Match[str] | None) -> Response:
        try:
            if match is None:
                raise InvalidArgument(f"Malformed request: {request.method} {request.url.path}")
            model, version_text, label = match.group(1), match.group(2), match.group(3)
            version = _version(version_text)
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

    def _classify_or_regress(
        self, verb: str, model: str, version: int | None, label: str | None, body: bytes
    ) -> bytes:
        request = decode_examples_request(parse_body(body))
        examples = examples_from_features(request.examples, request.context)
        with self._dataplane.hold(model, version, label) as lease:
            if verb == "classify":
                results = classify(lease.servable, request.signature_name, examples)
                answer = encode_classify_response(results)
            else:
                answer = encode_regress_response(
                    regress(lease.servable, request.signature_name, examples)
                )
        return answer

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        """The request body, refused (413) as soon as it is known to be too large, and
        given up (408) when `body_timeout_seconds` pass with no byte of it arriving."""
        limit = self._max_request_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > limit:
                    raise _too_large(limit)
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
                    raise _too_large(limit)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except asyncio.CancelledError:
            if not deadlines.expired(task):
                raise
            raise _BodyTimeout(
                f"no part of the request body arrived for {self._body_timeout:g} seconds "
                f"(server.body_timeout_seconds); {size} bytes were read"
            ) from None
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
