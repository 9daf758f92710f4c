"""The Open Inference Protocol's infer over REST (`POST /v2/models/<m>[/versions/<v>]/infer`),
taken as a TF Serving predict is: on the fast HTTP path (or the ASGI app, for a target the
fast path leaves to it), with the same body limits, request timeout and decode budget, and
through the same `DataPlane`, so v2 requests and TF Serving requests share batches.

A small body for a model that batches runs without a task: parsed, checked and decoded
on the event loop, queued for its batch, and its answer encoded in the batch's callback.
Anything else runs as one task: a large JSON head reserves what parsing it may take before
it is parsed on a worker thread (as a large TF Serving body does), and inputs that decode
to more than `SMALL_DECODE_BYTES` reserve that too (raw fixed-size inputs are views of the
body: what they reserve is an upper bound).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from loader.base import NotFound, SignatureInfo
from loader.manager.handles import Lease
from loader.serving.rest.error_answers import parse_version
from loader.serving.rest.logged_requests import sample_request
from loader.serving.rest.predictions import (
    INLINE_BODY_BYTES,
    INLINE_OUTPUT_VALUES,
    PredictionCall,
    PredictionRoutes,
    Reply,
)
from loader.serving.rest.v2_json import (
    HEADER_LENGTH,
    encode_answer,
    header_length,
    parse_request,
    split,
)
from loader.serving.v2.inference import (
    SMALL_DECODE_BYTES,
    InferAnswer,
    InferRequest,
    TooMany,
    answer,
    check_sizes,
    decoded_nbytes,
    infer,
    not_found,
    output_keys,
    prepare,
)

API = "infer"  # the metrics' api label of a v2 infer


class InferenceRoutes(PredictionRoutes):
    """TF Serving's prediction routes and the Open Inference Protocol's infer."""

    def call(self, api: str, model: str, reply: Reply) -> PredictionCall:
        if api == API:
            return InferCall(self, api, model, reply)
        return super().call(api, model, reply)


class InferCall(PredictionCall):
    """One v2 infer request, from its headers to its answer (see `PredictionCall`)."""

    __slots__ = ("_header",)

    def __init__(self, routes: PredictionRoutes, api: str, model: str, reply: Reply) -> None:
        super().__init__(routes, api, model, reply)
        self._header: bytes | None = None  # Inference-Header-Content-Length, as sent

    def read_head(self, headers: list[tuple[bytes, bytes]]) -> None:
        for name, value in headers:
            if name == HEADER_LENGTH:
                self._header = value
                return

    def run(self, version_text: str | None, label: str | None, body: bytes) -> None:
        """Answer the infer request for the version `version_text` names, with `body`."""
        try:
            version = parse_version(version_text)
            self._sampled = sample_request(
                self._routes.request_log, self.model, version, None, len(body))
            head, tail = split(body, header_length(self._header, len(body)))
            if len(body) > INLINE_BODY_BYTES or self._routes.dataplane.waits(self.model):
                self._routes.spawn(self._answer_task(self._parse_in_task(version, head, tail)))
            else:
                # What a small body decodes to is bounded by a small multiple of its size
                # (raw inputs are exactly their bytes, JSON data exactly its values).
                self._infer(parse_request(self.model, version, head, tail))
        except BaseException as error:
            self._failed(error)

    def _infer(self, request: InferRequest) -> None:
        """Check and decode now, then queue for a batch; or, when the model does not batch
        this request, await its run in a task."""
        dataplane = self._routes.dataplane
        try:
            lease = dataplane.hold(self.model, request.version)
        except NotFound:
            raise not_found(self.model, request.version) from None
        try:
            name, signature, inputs = prepare(dataplane, lease, request)

            def outputs_ready(result: dict[str, Any] | None, error: BaseException | None) -> None:
                lease.release()
                if error is not None:
                    self._failed(error)
                else:
                    self._logged(name, lease.version, inputs, result or {})
                    self._answer_outputs(request, lease.version, signature, result or {})

            if dataplane.submit(
                lease, name, inputs, outputs_ready, output_keys(request), deadline=self._time()
            ):
                return
        except BaseException:
            lease.release()
            raise
        self._routes.spawn(self._run_alone(lease, request, name, signature, inputs))

    async def _run_alone(
        self, lease: Lease, request: InferRequest, name: str, signature: SignatureInfo,
        inputs: dict[str, np.ndarray],
    ) -> None:
        try:
            with lease:
                outputs = await self._routes.dataplane.run_async(
                    lease, name, inputs, output_keys(request), deadline=self.deadline
                )
        except BaseException as error:
            self._failed(error)
            return
        self._logged(name, lease.version, inputs, outputs)
        self._answer_outputs(request, lease.version, signature, outputs)

    def _answer_outputs(
        self, request: InferRequest, version: int, signature: SignatureInfo,
        outputs: dict[str, Any],
    ) -> None:
        if self._outcome is None:
            return  # answered meanwhile (timed out) or cancelled: nothing to encode for
        answered = answer(request, version, signature, outputs)
        if _values(answered) > INLINE_OUTPUT_VALUES:
            self._routes.spawn(self._answer_task(
                run_in_threadpool(encode_answer, answered, request)
            ))
            return
        try:
            body, head_length = encode_answer(answered, request)
        except BaseException as error:
            self._failed(error)
            return
        self._finish(200, body, head_length=head_length)

    async def _answer_task(self, work: Awaitable[tuple[bytes, int | None]]) -> None:
        try:
            body, head_length = await work
        except BaseException as error:
            self._failed(error)
            return
        self._finish(200, body, head_length=head_length)

    async def _parse_in_task(
        self, version: int | None, head: bytes, tail: memoryview
    ) -> tuple[bytes, int | None]:
        routes = self._routes
        held = 0
        if len(head) > INLINE_BODY_BYTES:
            held = await routes.reserve_whole(head, 0)
        try:
            request = (
                await run_in_threadpool(parse_request, self.model, version, head, tail)
                if held else parse_request(self.model, version, head, tail)
            )
        except BaseException:
            routes.budget.release(held)
            raise
        return await self._infer_in_task(request, held)

    async def _infer_in_task(
        self, request: InferRequest, held: int
    ) -> tuple[bytes, int | None]:
        """Run `request` (holding `held` bytes of the decode budget, released here)."""
        routes = self._routes
        try:
            need = decoded_nbytes(request)
            if need > SMALL_DECODE_BYTES and need > held:
                check_sizes(request)
                held += await routes.reserve_bytes(need - held, "this request's tensors")
            answered = await infer(routes.dataplane, request, deadline=self._time,
                                   observe=self._logged if self._sampled else None)
        finally:
            routes.budget.release(held)
        if _values(answered) <= INLINE_OUTPUT_VALUES:
            return encode_answer(answered, request)
        return await run_in_threadpool(encode_answer, answered, request)

    def _failed(self, error: BaseException) -> None:
        if isinstance(error, TooMany):
            self._routes.metrics.refuse("rest", "too_many_tensors")
        super()._failed(error)


def _values(answered: InferAnswer) -> int:
    """How many values the answer's outputs hold."""
    outputs = answered.outputs
    if len(outputs) == 1:  # the usual answer, without a generator
        return int(outputs[0].array.size)
    return sum(output.array.size for output in outputs)
