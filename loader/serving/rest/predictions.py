"""The prediction routes (`:predict`, `:classify`, `:regress`): from a request's body to
its answer, shared by both ways a request reaches them (the fast HTTP path of
`loader.serving.rest.fast_path` and the ASGI app of `loader.serving.rest.app`).

A predict of a small body for a batching model runs without a task: the body is parsed
and decoded on the event loop, the request queued for its batch, and the batch's outputs
encoded and handed to `reply` in a callback on the loop. Anything else (classify, regress,
a large body or output, a model without batching) runs as one task, which parses and
encodes the large parts on worker threads. The model never runs on the event loop.

A request is timed from when its model is asked (`request_timeout`): past the timeout it
is answered 504 at once, and its deadline goes with it to the batch queue or the worker
thread, which drop it unrun if it is still waiting then.

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
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from loader.base import Code, DeadlineExceeded, Internal, ResourceExhausted, ServingError
from loader.manager.handles import Lease
from loader.serving.dataplane import DataPlane
from loader.serving.decode_budget import DecodeBudget
from loader.serving.metrics import Metrics, RequestOutcome
from loader.serving.request_log import RequestLog
from loader.serving.rest.cors import CORS_HEAD
from loader.serving.rest.error_answers import error_answer, parse_version
from loader.serving.rest.examples_route import answer_examples
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
from loader.serving.rest.logged_requests import SampledRequest, sample_request
from loader.serving.rest.request_timeout import TIMED_OUT, RequestTimeout

log = logging.getLogger("modelwatch.rest")

# Predict bodies up to this size are decoded, and outputs of up to INLINE_OUTPUT_VALUES
# values encoded, on the event loop (tens of microseconds, cheaper than the hop to a
# thread and back); larger ones on a worker thread.
INLINE_BODY_BYTES = 16 * 1024
INLINE_OUTPUT_VALUES = 4096
DEFAULT_MAX_DECODING_BYTES = 512 * 1024 * 1024  # server.max_decoding_bytes

# Called once per request with the HTTP status, the body of its answer, the seconds of a
# `Retry-After` header (an on-demand model still loading), if any, and, for a body that is
# a JSON head and binary data (the Open Inference Protocol's binary tensor data), the
# head's length (sent as `Inference-Header-Content-Length`; None: the body is all JSON).
Reply = Callable[[int, bytes, "int | None", "int | None"], None]


class PredictionRoutes:
    """What the prediction routes need: the data plane, the metrics, the body limits, the
    process's decode budget, its request log, the request timeout (None: none) and whether
    answers carry CORS headers (`cors_head`, written by the fast path)."""

    def __init__(
        self,
        dataplane: DataPlane,
        metrics: Metrics,
        *,
        max_request_bytes: int,
        body_timeout_seconds: float,
        decode_budget: DecodeBudget | None = None,
        request_log: RequestLog | None = None,
        request_timeout_seconds: float | None = None,
        cors: bool = False,
    ) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self.request_log = request_log or RequestLog(metrics)
        self.max_request_bytes = max_request_bytes
        self.body_timeout_seconds = body_timeout_seconds
        self.budget = decode_budget or DecodeBudget(DEFAULT_MAX_DECODING_BYTES)
        self.timeout = RequestTimeout(request_timeout_seconds)
        self.cors_head = CORS_HEAD if cors else b""
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
        return await self.reserve_bytes(nbytes, f"a JSON body of {len(body)} bytes, {how},")

    async def reserve_bytes(self, nbytes: int, what: str) -> int:
        """Reserve `nbytes` in the decode budget for `what`, a refusal counted; the caller
        releases what this returns."""
        if nbytes <= 0:  # nothing more: never queued behind others for it
            return 0
        try:
            return await self.budget.reserve(nbytes, what)
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

    async def reserve_examples(self, body: bytes) -> int:
        """What a classify or regress body, parsed whole, reserves (0 when it is small)."""
        return await self.reserve_whole(body, 0) if len(body) > INLINE_BODY_BYTES else 0

    def spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _replied(
    status: int, answer: bytes, retry_after: int | None, head_length: int | None
) -> None:
    """A call's `reply` once used or cancelled: the request's bound method dropped, no cycle
    is left between the two, so both go with the connection, not at a cyclic collection."""


class PredictionCall:
    """One prediction request, from its headers to its answer: `run` it with its body, or
    `refuse` it (413, 408) or `cancel` it (the client left) before. `reply` is called
    exactly once, on the event loop, except after `cancel`. Once the model is asked, the
    request is timed (`RequestTimeout`): past its `deadline` it is answered 504."""

    __slots__ = (
        "_outcome", "_reply", "_routes", "_sampled", "api", "deadline", "model", "prepaid",
    )

    def __init__(self, routes: PredictionRoutes, api: str, model: str, reply: Reply) -> None:
        self._routes = routes
        self._reply = reply
        self.api = api
        self.model = model
        self._outcome: RequestOutcome | None = routes.metrics.request("rest", api).__enter__()
        self._outcome.model = model
        self._sampled: SampledRequest | None = None  # chosen for the request log
        self.deadline: float | None = None  # time.monotonic(); None: not timed
        # Bytes of the decode budget the connection holds for the body until it is answered
        # (reserved before the body was read): part of what this request reserves.
        self.prepaid = 0

    def run(self, version_text: str | None, label: str | None, body: bytes) -> None:
        """Answer the request whose path named `version_text` or `label`, with `body`."""
        try:
            version = parse_version(version_text)
            if self.api != "predict":
                self._routes.spawn(self._answer_from(answer_examples(
                    self._routes, self.api, self.model, version, label, body, self._time)))
                return
            self._sampled = sample_request(
                self._routes.request_log, self.model, version, label, len(body))
            if len(body) > INLINE_BODY_BYTES or self._routes.dataplane.waits(self.model):
                # A task: a large body is parsed on a worker thread, and a request that may
                # wait (an on-demand model's load, a cluster's hold) waits off the loop.
                self._routes.spawn(self._answer_from(self._predict_in_task(version, label, body)))
            else:
                self._predict(version, label, body)
        except BaseException as error:
            self._failed(error)

    def body_reservation(self, declared: int) -> tuple[int, str]:
        """What a body of `declared` bytes reserves before it is read, and what for: a
        predict what decoding it in slices takes (so it waits for room only once, before
        its bytes are read), anything else its bytes."""
        if self.api == "predict":
            return declared * SLICED_DECODE_FACTOR, (
                f"a JSON body of {declared} bytes, split and decoded in slices,"
            )
        return declared, f"a body of {declared} bytes, while it is read,"

    def read_head(self, headers: list[tuple[bytes, bytes]]) -> None:
        """The request's headers (lowercased names), for a route that reads any (none here)."""

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
            if self.deadline is not None:
                self._routes.timeout.finish(self)

    def expire(self) -> None:
        """The request timeout passed before the model answered: 504, TF Serving's words."""
        self.refuse(DeadlineExceeded(TIMED_OUT))

    def _time(self) -> float | None:
        """The model is asked now: time the request from here; its deadline."""
        self.deadline = self._routes.timeout.start(self)
        return self.deadline

    def _finish(
        self, status: int, answer: bytes, code: Code = Code.OK, retry_after: int | None = None,
        head_length: int | None = None,
    ) -> None:
        outcome = self._outcome
        if outcome is None:
            return  # cancelled meanwhile
        self._outcome = None
        if self.deadline is not None:
            self._routes.timeout.finish(self)
        outcome.code = code
        outcome.__exit__(None)
        reply, self._reply = self._reply, _replied  # no cycle left with the connection
        reply(status, answer, retry_after, head_length)

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
                    self._logged(name, lease.version, request.inputs, result or {})
                    self._encode(result or {}, request.row_format)

            if dataplane.submit(
                lease, name, request.inputs, outputs_ready, deadline=self._time()
            ):
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
                outputs = await self._routes.dataplane.run_async(
                    lease, name, inputs, deadline=self.deadline
                )
        except BaseException as error:
            self._failed(error)
            return
        self._logged(name, lease.version, inputs, outputs)
        self._encode(outputs, row_format)

    def _logged(
        self, name: str, served: int, inputs: dict[str, Any], outputs: dict[str, Any]
    ) -> None:
        if self._sampled is not None:
            self._sampled.predict(name, served, inputs, outputs)

    def _encode(self, outputs: dict[str, Any], row_format: bool) -> None:
        if self._outcome is None:
            return  # answered meanwhile (timed out) or cancelled: nothing to encode for
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
                held = await routes.reserve(  # none, if reserved before the body was read
                    len(body) * SLICED_DECODE_FACTOR - self.prepaid, body,
                    "split and decoded in slices",
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
                outputs = await dataplane.run_async(
                    lease, name, request.inputs, deadline=self._time()
                )
                self._logged(name, lease.version, request.inputs, outputs)
            if sum(map(np.size, outputs.values())) <= INLINE_OUTPUT_VALUES:
                return encode_predict_response(outputs, request.row_format)
            return await run_in_threadpool(encode_predict_response, outputs, request.row_format)
        finally:
            budget.release(held)
