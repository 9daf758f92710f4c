"""TF Serving's request and response protos, made from what a request decoded to and what
the model answered: gRPC answers with them, and the request log turns a REST request into
the same `PredictRequest` (or `ClassificationRequest`, `RegressionRequest`) a gRPC client
would have sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tensorflow_serving.apis import (
    classification_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
)

from loader.base import DEFAULT_SIGNATURE, Features
from loader.servables.inference import Classes, examples_input
from loader.servables.tensor_proto import from_numpy


def set_spec(out: model_pb2.ModelSpec, name: str, version: int, signature_name: str) -> None:
    """TF Serving's MakeModelSpec: an empty signature name is reported as the default."""
    out.name = name
    out.version.value = version
    out.signature_name = signature_name or DEFAULT_SIGNATURE


def set_requested_spec(
    out: model_pb2.ModelSpec, name: str, version: int | None, label: str | None,
    signature_name: str,
) -> None:
    """The model_spec a client sends: the version or label it named, if any."""
    out.name = name
    if version is not None:
        out.version.value = version
    elif label is not None:
        out.version_label = label
    out.signature_name = signature_name


def fill_classifications(
    result: classification_pb2.ClassificationResult, classifications: list[Classes]
) -> None:
    for classes in classifications:
        added = result.classifications.add()
        for label, score in classes:
            added.classes.add(label=label, score=score)


def fill_regressions(result: regression_pb2.RegressionResult, values: list[float]) -> None:
    for value in values:
        result.regressions.add(value=value)


def fill_predict_response(
    out: predict_pb2.PredictResponse, model: str, served: int, signature_name: str,
    outputs: Mapping[str, Any], *, tensor_content: bool = False,
) -> None:
    """A Predict's answer: the served version's spec and every output as a TensorProto."""
    set_spec(out.model_spec, model, served, signature_name)
    for alias, value in outputs.items():
        from_numpy(value, tensor_content=tensor_content, proto=out.outputs[alias])


def fill_predict_request(
    out: predict_pb2.PredictRequest, model: str, version: int | None, label: str | None,
    signature_name: str, inputs: Mapping[str, Any],
) -> None:
    """The PredictRequest a gRPC client sends for these decoded inputs."""
    set_requested_spec(out.model_spec, model, version, label, signature_name)
    for alias, value in inputs.items():
        from_numpy(value, proto=out.inputs[alias])


def fill_examples_request(
    out: classification_pb2.ClassificationRequest | regression_pb2.RegressionRequest,
    model: str, version: int | None, label: str | None, signature_name: str,
    examples: Sequence[Features], context: Features | None,
) -> None:
    """The ClassificationRequest or RegressionRequest a gRPC client sends for REST's
    decoded examples (and context)."""
    set_requested_spec(out.model_spec, model, version, label, signature_name)
    out.input.CopyFrom(examples_input(examples, context))
