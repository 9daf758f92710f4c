"""A gRPC Predict's inputs, from TensorProtos to arrays, at a cost bounded by what they
decode to rather than by what arrived.

The fill rule (`tensor_proto`) lets a 46-byte request describe a gigabyte. So the inputs
are checked against the signature and sized from their shapes before any is decoded
(`request_tensors.plan_inputs`): past `max_decoded_bytes` the call is INVALID_ARGUMENT.
Inputs that decode to little are decoded on the event loop (microseconds); larger ones
reserve their size in the process's `DecodeBudget` (RESOURCE_EXHAUSTED when it has no
room) and are decoded on a worker thread, so they never stall the loop, and hold their
reservation until the model has answered. A large answer is measured against the
server's send limit before gRPC sends it (`bounded`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from google.protobuf import message

from loader.base import ResourceExhausted, SignatureInfo
from loader.servables.request_tensors import DecodedTooLarge, InputPlan, plan_inputs
from loader.serving.decode_budget import BudgetBusy, BudgetNeverFits, DecodeBudget
from loader.serving.metrics import Metrics
from loader.serving.rate_limited_log import RateLimitedLog

log = logging.getLogger("modelwatch.grpc")

# Inputs that decode to at most this many bytes are decoded on the event loop.
INLINE_DECODED_BYTES = 64 * 1024
DEFAULT_MAX_DECODED_BYTES = 256 * 1024 * 1024  # server.max_decoded_tensor_bytes
DEFAULT_MAX_DECODING_BYTES = 512 * 1024 * 1024  # server.max_decoding_bytes
Response = TypeVar("Response", bound=message.Message)
T = TypeVar("T")


class PredictInputs:
    """Plans and decodes Predict inputs; refusals are counted in `metrics` (transport grpc)."""

    def __init__(
        self,
        metrics: Metrics,
        budget: DecodeBudget,
        max_decoded_bytes: int,
        max_message_bytes: int | None = None,
    ) -> None:
        self._metrics = metrics
        self._budget = budget
        self._max_decoded_bytes = max_decoded_bytes
        self._max_message_bytes = max_message_bytes
        self._warnings = RateLimitedLog(log)

    def bounded(self, response: Response) -> Response:
        """A large answer, refused when it passes the server's send limit: gRPC would fail
        the call only after the handler returned (a traceback in the log, the call counted
        OK). Blocking: it measures the message (call it on a worker thread)."""
        limit = self._max_message_bytes
        if limit is not None and (size := response.ByteSize()) > limit:
            self._metrics.refuse("grpc", "response_too_large")
            raise ResourceExhausted(
                f"the answer would take {size} bytes, more than the server sends "
                f"(server.max_request_bytes: {limit})"
            )
        return response

    def plan(self, inputs: Mapping[str, Any], signature: SignatureInfo) -> InputPlan:
        """A request's TensorProtos checked against `signature` and sized (nothing
        decoded yet)."""
        try:
            return plan_inputs(inputs, signature, self._max_decoded_bytes)
        except DecodedTooLarge as error:
            self._refuse_too_large(error)
            raise

    def check_decoded(self, nbytes: int) -> None:
        """Refuse inputs sized without a plan (the Open Inference Protocol's) that would
        decode to more than the limit."""
        if nbytes > self._max_decoded_bytes:
            error = DecodedTooLarge(
                f"the request's inputs would take {nbytes} bytes decoded, more than "
                f"server.max_decoded_tensor_bytes ({self._max_decoded_bytes})"
            )
            self._refuse_too_large(error)
            raise error

    def _refuse_too_large(self, error: DecodedTooLarge) -> None:
        self._metrics.refuse("grpc", "decoded_tensor_too_large")
        self._warnings.warning(
            "decoded_tensor_too_large", "refused a gRPC request: %s", error.message
        )

    async def budgeted(self, run: Callable[[DecodeBudget], Awaitable[T]]) -> T:
        """`run(the decode budget)`, which reserves what it decodes; a refusal counted."""
        try:
            return await run(self._budget)
        except (BudgetBusy, BudgetNeverFits):
            self._metrics.refuse("grpc", "decode_budget")
            raise

    async def run(
        self,
        plan: InputPlan,
        run: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """`run(decoded inputs)`, with large inputs decoded off the loop under a reservation
        of their size, held until `run` has answered."""
        if plan.nbytes <= INLINE_DECODED_BYTES:
            return await run(plan.decode())
        try:
            held = await self._budget.reserve(plan.nbytes, "this request's inputs")
        except ResourceExhausted:
            self._metrics.refuse("grpc", "decode_budget")
            raise
        try:
            inputs = await asyncio.get_running_loop().run_in_executor(None, plan.decode)
            return await run(inputs)
        finally:
            self._budget.release(held)
