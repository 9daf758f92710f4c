"""The `:classify` and `:regress` routes' work, once their body has arrived: decode the
examples, run the signature, encode TF Serving's JSON answer, and hand the request to the
request log if it is sampled. A body over 16 KiB first reserves what parsing it whole may
take in the decode budget; the work runs on a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from loader.servables.inference import classify, examples_from_features, regress
from loader.serving.dataplane import DataPlane
from loader.serving.request_log import RequestLog
from loader.serving.rest.json_examples import (
    decode_examples_request,
    encode_classify_response,
    encode_regress_response,
)
from loader.serving.rest.json_values import parse_body
from loader.serving.rest.logged_requests import sample_request

if TYPE_CHECKING:
    from loader.serving.rest.predictions import PredictionRoutes


async def answer_examples(
    routes: PredictionRoutes, api: str, model: str, version: int | None, label: str | None,
    body: bytes, start_timer: Callable[[], float | None],
) -> bytes:
    """The JSON answer of a classify or regress (`api`) of `model` with `body`.
    `start_timer` starts the request timeout and gives its deadline (None: none): called
    before the hop to the worker thread, so parsing the body counts too."""
    held = await routes.reserve_examples(body)
    try:
        return await run_in_threadpool(
            classify_or_regress, routes.dataplane, routes.request_log, api, model, version,
            label, body, start_timer(),
        )
    finally:
        routes.budget.release(held)


def classify_or_regress(
    dataplane: DataPlane, request_log: RequestLog, api: str, model: str,
    version: int | None, label: str | None, body: bytes, deadline: float | None,
) -> bytes:
    """`answer_examples`' blocking part."""
    request = decode_examples_request(parse_body(body))
    examples = examples_from_features(request.examples, request.context)
    with dataplane.hold(model, version, label) as lease:
        dataplane.check_deadline(lease, deadline)
        served = lease.version
        if api == "classify":
            classes = classify(lease.servable, request.signature_name, examples)
            answer = encode_classify_response(classes)
        else:
            values = regress(lease.servable, request.signature_name, examples)
            answer = encode_regress_response(values)
    sampled = sample_request(request_log, model, version, label, len(body))
    if sampled is not None:
        if api == "classify":
            sampled.classify(request, served, classes)
        else:
            sampled.regress(request, served, values)
    return answer
