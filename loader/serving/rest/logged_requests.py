"""REST requests chosen for the request log (`loader.serving.request_log`), logged as the
protos a gRPC client would have sent and received: a predict as a `PredictRequest` of its
decoded inputs, a classify or regress as a `ClassificationRequest` or `RegressionRequest`
of its examples. The protos are made on the log's writer thread, from the decoded values
the request holds anyway, so only a sampled request pays for them, and never on the
event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from tensorflow_serving.apis import prediction_log_pb2

from loader.base import DEFAULT_SIGNATURE
from loader.servables.inference import Classes
from loader.serving.prediction_protos import (
    fill_classifications,
    fill_examples_request,
    fill_predict_request,
    fill_predict_response,
    fill_regressions,
    set_spec,
)
from loader.serving.request_log import Fill, LogTarget, RequestLog
from loader.serving.rest.json_examples import ExamplesRequest

# What one example costs in its record beyond its share of the JSON body (an estimate).
EXAMPLE_RECORD_BYTES = 64


class SampledRequest:
    """A REST request the log chose: what its path named, and how large its body was."""

    __slots__ = ("_body_bytes", "_label", "_log", "_model", "_target", "_version")

    def __init__(
        self, log: RequestLog, target: LogTarget, model: str, version: int | None,
        label: str | None, body_bytes: int,
    ) -> None:
        self._log, self._target = log, target
        self._model, self._version, self._label = model, version, label
        self._body_bytes = body_bytes

    def predict(
        self, signature_name: str, served: int, inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
    ) -> None:
        """Log an answered predict: its decoded inputs and the outputs it answered with."""
        model, version, label = self._model, self._version, self._label

        def fill(record: prediction_log_pb2.PredictionLog) -> None:
            logged = record.predict_log
            fill_predict_request(logged.request, model, version, label, signature_name, inputs)
            fill_predict_response(logged.response, model, served, signature_name, outputs)

        size = self._body_bytes + sum(np.asarray(v).nbytes for v in outputs.values())
        self._record(served, signature_name, fill, size)

    def classify(self, request: ExamplesRequest, served: int, results: list[Classes]) -> None:
        """Log an answered classify with its classes."""
        self._examples("classify_log", request, served, len(results),
                       lambda response: fill_classifications(response.result, results))

    def regress(self, request: ExamplesRequest, served: int, values: list[float]) -> None:
        """Log an answered regress with its values."""
        self._examples("regress_log", request, served, len(values),
                       lambda response: fill_regressions(response.result, values))

    def _examples(
        self, kind: str, request: ExamplesRequest, served: int, count: int,
        fill_result: Callable[[Any], None],
    ) -> None:
        model, version, label = self._model, self._version, self._label
        name = request.signature_name

        def fill(record: prediction_log_pb2.PredictionLog) -> None:
            logged = getattr(record, kind)
            fill_examples_request(
                logged.request, model, version, label, name, request.examples, request.context
            )
            set_spec(logged.response.model_spec, model, served, name)
            fill_result(logged.response)

        size = self._body_bytes + EXAMPLE_RECORD_BYTES * (len(request.examples) + count)
        self._record(served, name, fill, size)

    def _record(self, served: int, signature_name: str, fill: Fill, size: int) -> None:
        spec = (self._model, served, signature_name or DEFAULT_SIGNATURE)
        self._log.record(self._model, self._target, spec, fill, size)


def sample_request(
    log: RequestLog, model: str, version: int | None, label: str | None, body_bytes: int
) -> SampledRequest | None:
    """The request, if the log chooses it (its model logs and the draw falls under its
    sampling rate); None mostly."""
    target = log.sample(model)
    if target is None:
        return None
    return SampledRequest(log, target, model, version, label, body_bytes)
