"""The prediction routes (`:predict`, `:classify`, `:regress`): from a request's body to
its answer, shared by both ways a request reaches them (the fast HTTP path of
`loader.serving.rest.fast_path` and the ASGI app of `loader.serving.rest.app`).

A predict of a small body for a batching model runs without a task: the body is parsed
and decoded on the event loop, the request queued for its batch, and the batch's outputs
encoded and handed to `reply` in a callback on the loop. Anything else (classify, regress,
a large body or output, a model without batching) runs as one task, which parses and
encodes the large parts on worker threads. The model never runs on the event loop.

A large body reserves what parsing and decoding it may take in the process's
`DecodeBudget` before it is parsed, holds the size of its decoded tensors once they are
made, and releases it once answered: past the budget it waits a moment, then gets 429; a
body that could never fit gets 413 at once. What it reserves: SLICED_DECODE_FACTOR times
its size to be split and decoded a slice at a time (`json_slices`: one array of numbers,
the usual large body); a body that must be parsed whole reserves, before it is, what its
values can become as Python objects (`whole_parse_bytes`, from its brackets and commas),
so a few megabytes of `[]` are refused while megabytes of base64 strings are not.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from starlette.concurrency import run_in_threadpool

from loader.base import (
    Code,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    ServingError,
)
from loader.manager.handles import Lease
from loader.servables.inference import classify, examples_from_features, regress
from loader.serving.dataplane import DataPlane
from loader.serving.decode_budget import BudgetNeverFits, DecodeBudget
from loader.serving.metrics import Metrics, RequestOutcome
from loader.serving.rest.json_examples import (
    decode_examples_request,
    encode_classify_response,
    encode_regress_response,
)
from loader.serving.rest.json_predict import decode_predict_request
from loader.serving.rest.json_responses import encode_predict_response
from loader.serving.rest.json_slices import (
    SLICED_DECODE_FACTOR,
    SlicedBody,
    decode_in_slices,
    split_body,
    whole_parse_bytes,
)
from loader.serving.rest.json_values import parse_body, signature_name_of

log = logging.getLogger("modelwatch.rest")

# Predict bodies up to this size are decoded, and outputs of up to INLINE_OUTPUT_VALUES
# values encoded, on the event loop (tens of microseconds, cheaper than the hop to a
# thread and back); larger ones on a worker thread.
INLINE_BODY_BYTES = 16 * 1024
INLINE_OUTPUT_VALUES = 4096
DEFAULT_MAX_DECODING_BYTES = 512 * 1024 * 1024  # server.max_decoding_bytes

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

# Called once per request with the HTTP status, the JSON body of its answer and the
# seconds of a `Retry-After` header (an on-demand model still loading), if any.
Reply = Callable[[int, bytes, "int | None"], None]


class TooLarge(ServingError):
    """The body passes server.max_request_bytes: 413."""

    code = Code.RESOURCE_EXHAUSTED


def too_large(limit: int) -> TooLarge:
    return TooLarge(f"the request body is larger than server.max_request_bytes ({limit} bytes)")


class BodyTimeout(ServingError):
    """The client stopped sending its body: 408, and the connection is closed."""

    code = Code.DEADLINE_EXCEEDED


def body_timeout(seconds: float, size: int) -> BodyTimeout:
    return BodyTimeout(
        f"no part of the request body arrived for {seconds:g} seconds "
        f"(server.body_timeout_seconds); {size} bytes were read"
    )


def error_answer(error: ServingError) -> tuple[int, bytes]:
    """`{"error": message}` and TF Serving's HTTP status for it."""
    if isinstance(error, (TooLarge, BudgetNeverFits)):
        status = 413
    elif isinstance(error, BodyTimeout):
        status = 408
    else:
        status = HTTP_STATUS.get(error.code, 500)
    try:
        return status, orjson.dumps({"error": error.message})
    except orjson.JSONEncodeError:  # a lone surrogate quoted from the client's text
        return status, json.dumps({"error": error.message}).encode()  # escapes it as \udXXX


def parse_version(text: str | None) -> int | None:
    """The version a path names, as TF Serving parses it (None: the latest)."""
    if not text:
        return None
    try:
        version = int(text)
    except ValueError:
        version = -1
    if not 0 <= version < 2**63:
        raise InvalidArgument(f"Failed to convert version: {text} to numeric.")
    return version


class PredictionRoutes:
    """What the prediction routes need: the data plane, the metrics, the body limits and
    the process's decode budget."""

    def __init__(
        self,
        dataplane: DataPlane,
        metrics: Metrics,
        *,
        max_request_bytes: int,
        body_timeout_seconds: float,
        decode_budget: DecodeBudget | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.body_timeout_seconds = body_timeout_seconds
        self.budget = decode_budget or DecodeBudget(DEFAULT_MAX_DECODING_BYTES)
        self._tasks: set[asyncio.Task[None]] = set()  # referenced until done
        self._soon: list[tuple[PredictionCall, str | None, str | None, bytes]] = []

    def run_soon(
        self, call: PredictionCall, version_text: str | None, label: str | None, body: bytes
    ) -> None:
        """`call.run(...)` once the loop has read every connection that is ready, together
        with the others queued meanwhile.

        Between two reads the loop lets go of the interpreter lock, and a batch thread
        woken by the first request queued would take it there and run a batch of one; run
        from one callback, the requests of one turn of the loop join one batch.
        """
        if not self._soon:
            asyncio.get_running_loop().call_soon(self._run_queued)
        self._soon.append((call, version_text, label, body))

    def _run_queued(self) -> None:
        queued, self._soon = self._soon, []
        for call, version_text, label, body in queued:
            call.run(version_text, label, body)

    def call(self, api: str, model: str, reply: Reply) -> PredictionCall:
        """A request of `api` to `model`, counted as in flight from now."""
        return PredictionCall(self, api, model, reply)

    async def reserve(self, nbytes: int, body: bytes, how: str) -> int:
        """Reserve `nbytes` in the decode budget for `body`, decoded `how` ("parsed whole");
        the caller releases what this returns."""
        try:
            return await self.budget.reserve(
                max(0, nbytes), f"a JSON body of {len(body)} bytes, {how},"
            )
        except ResourceExhausted:
            self.metrics.refuse("rest", "decode_budget")
            raise

    async def reserve_whole(self, body: bytes, held: int) -> int:
        """Add to `held` what parsing `body` whole may take beyond it; returns the new total."""
        needed = await run_in_threadpool(whole_parse_bytes, body)
        # The whole need decides whether it could ever fit (413 at once, naming it); when it
        # can, only what `held` lacks is added.
        extra = needed if needed > self.budget.limit else needed - held
        return held + await self.reserve(extra, body, "parsed whole")

    def spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _replied(status: int, answer: bytes, retry_after: int | None) -> None:
    """A call's `reply` once used or cancelled: the request's bound method dropped, no cycle
    is left between the two, so both go with the connection, not at a cyclic collection."""


class PredictionCall:
    """One prediction request, from its headers to its answer: `run` it with its body, or
    `refuse` it (413, 408) or `cancel` it (the client left) before. `reply` is called
    exactly once, on the event loop, except after `cancel`."""

    __slots__ = ("_outcome", "_reply", "_routes", "api", "model")

    def __init__(self, routes: PredictionRoutes, api: str, model: str, reply: Reply) -> None:
        self._routes = routes
        self._reply = reply
        self.api = api
        self.model = model
        self._outcome: RequestOutcome | None = routes.metrics.request("rest", api).__enter__()
        self._outcome.model = model

    def run(self, version_text: str | None, label: str | None, body: bytes) -> None:
        """Answer the request whose path named `version_text` or `label`, with `body`."""
        try:
            version = parse_version(version_text)
            if self.api != "predict":
                self._routes.spawn(self._answer_from(self._examples(version, label, body)))
            elif len(body) > INLINE_BODY_BYTES or self._routes.dataplane.waits(self.model):
                # A task: a large body is parsed on a worker thread, and a request that may
                # wait (an on-demand model's load, a cluster's hold) waits off the loop.
                self._routes.spawn(self._answer_from(self._predict_in_task(version, label, body)))
            else:
                self._predict(version, label, body)
        except BaseException as error:
            self._failed(error)

    def refuse(self, error: ServingError) -> None:
        """Answer with `error` (before or instead of running)."""
        status, answer = error_answer(error)
        self._finish(status, answer, error.code, error.retry_after_seconds)

    def cancel(self) -> None:
        """The client is gone: count the request as cancelled; nothing is answered."""
        if self._outcome is not None:
            self._outcome.code = Code.CANCELLED
            self._outcome.__exit__(None)
            self._outcome = None
            self._reply = _replied

    def _finish(
        self, status: int, answer: bytes, code: Code = Code.OK, retry_after: int | None = None
    ) -> None:
        outcome = self._outcome
        if outcome is None:
            return  # cancelled meanwhile
        self._outcome = None
        outcome.code = code
        outcome.__exit__(None)
        reply, self._reply = self._reply, _replied  # no cycle left with the connection
        reply(status, answer, retry_after)

    def _failed(self, error: BaseException) -> None:
        if isinstance(error, ServingError):
            self.refuse(error)
            return
        if not isinstance(error, Exception):  # cancelled or exiting: nobody to answer
            self.cancel()
            raise error
        # A bug: answer like TF Serving would, and log it whole.
        log.error("%s of model %s failed", self.api, self.model, exc_info=error)
        self.refuse(Internal(f"Internal error: {type(error).__name__}: {error}"))

    def _predict(self, version: int | None, label: str | None, body: bytes) -> None:
        """Parse and decode now, then queue for a batch; or, when the model does not
        batch this request, await its run in a task."""
        document = parse_body(body)
        dataplane = self._routes.dataplane
        lease = dataplane.hold(self.model, version, label)
        try:
            name = signature_name_of(document)
            request = decode_predict_request(document, dataplane.signature(lease, name))

            def outputs_ready(result: dict[str, Any] | None, error: BaseException | None) -> None:
                lease.release()
                if error is not None:
                    self._failed(error)
                else:
                    self._encode(result or {}, request.row_format)

            if dataplane.submit(lease, name, request.inputs, outputs_ready):
                return
        except BaseException:
            lease.release()
            raise
        self._routes.spawn(self._run_unbatched(lease, name, request.inputs, request.row_format))

    async def _run_unbatched(
        self, lease: Lease, name: str, inputs: dict[str, Any], row_format: bool
    ) -> None:
        try:
            with lease:
                outputs = await self._routes.dataplane.run_async(lease, name, inputs)
        except BaseException as error:
            self._failed(error)
            return
        self._encode(outputs, row_format)

    def _encode(self, outputs: dict[str, Any], row_format: bool) -> None:
        if sum(map(np.size, outputs.values())) > INLINE_OUTPUT_VALUES:
            self._routes.spawn(self._answer_from(
                run_in_threadpool(encode_predict_response, outputs, row_format)
            ))
            return
        try:
            answer = encode_predict_response(outputs, row_format)
        except BaseException as error:
            self._failed(error)
            return
        self._finish(200, answer)

    async def _answer_from(self, work: Awaitable[bytes]) -> None:
        try:
            answer = await work
        except BaseException as error:
            self._failed(error)
            return
        self._finish(200, answer)

    async def _predict_in_task(self, version: int | None, label: str | None, body: bytes) -> bytes:
        routes = self._routes
        dataplane, budget = routes.dataplane, routes.budget
        inline, held = len(body) <= INLINE_BODY_BYTES, 0
        try:
            sliced: SlicedBody | None = None
            document: dict[str, Any] | None = None
            if inline:
                document = parse_body(body)
            else:
                held = await routes.reserve(
                    len(body) * SLICED_DECODE_FACTOR, body, "split and decoded in slices"
                )
                sliced = await run_in_threadpool(split_body, body)
                if sliced is None:  # not one array of numbers: parsed whole
                    held = await routes.reserve_whole(body, held)
                    document = await run_in_threadpool(parse_body, body)
            name = sliced.signature_name if sliced else signature_name_of(document or {})
            with await dataplane.hold_async(self.model, version, label) as lease:
                signature = dataplane.signature(lease, name)
                if inline:
                    assert document is not None
                    request = decode_predict_request(document, signature)
                else:
                    found = None
                    if sliced is not None:
                        found = await run_in_threadpool(decode_in_slices, sliced, signature)
                    if found is None:  # anything off in a slice: whole, for TF Serving's error
                        if document is None:
                            held = await routes.reserve_whole(body, held)
                            document = await run_in_threadpool(parse_body, body)
                        found = await run_in_threadpool(decode_predict_request, document, signature)
                    request = found
                    del document, sliced  # the parsed body: freed before the model runs
                    held = budget.resize(held, sum(a.nbytes for a in request.inputs.values()))
                outputs = await dataplane.run_async(lease, name, request.inputs)
            if sum(map(np.size, outputs.values())) <= INLINE_OUTPUT_VALUES:
                return encode_predict_response(outputs, request.row_format)
            return await run_in_threadpool(encode_predict_response, outputs, request.row_format)
        finally:
            budget.release(held)

    async def _examples(self, version: int | None, label: str | None, body: bytes) -> bytes:
        held = 0
        try:
            if len(body) > INLINE_BODY_BYTES:
                held = await self._routes.reserve_whole(body, 0)
            return await run_in_threadpool(self._classify_or_regress, version, label, body)
        finally:
            self._routes.budget.release(held)

    def _classify_or_regress(self, version: int | None, label: str | None, body: bytes) -> bytes:
        request = decode_examples_request(parse_body(body))
        examples = examples_from_features(request.examples, request.context)
        with self._routes.dataplane.hold(self.model, version, label) as lease:
            if self.api == "classify":
                results = classify(lease.servable, request.signature_name, examples)
                return encode_classify_response(results)
            return encode_regress_response(regress(lease.servable, request.signature_name, examples))
