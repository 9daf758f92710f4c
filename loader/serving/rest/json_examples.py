"""TF Serving's JSON codec for the REST classify and regress APIs.

Requests carry `tf.Example`s as JSON objects (`{"x": 2.0}`, lists, `{"b64": ...}`); they
are turned into plain feature lists that the serving module writes as `tf.train.Example`
protos, so TensorFlow is not imported here. Behaviour and error texts follow
`tensorflow_serving/util/json_tensor.cc` (FillClassifyRegressRequestFromJson,
MakeJsonFromClassificationResult, MakeJsonFromRegressionResult).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from loader.base import Feature, FeatureKind, Features, InvalidArgument
from loader.serving.rest.json_responses import encode_json, tensor_to_jsonable
from loader.serving.rest.json_values import (
    decode_b64_object,
    format_error,
    is_b64_object,
    json_type_name,
    lossy_decimal_error,
    parse_body,
    signature_name_of,
    utf8,
)

_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64", None: "UNKNOWN"}
_FLOAT_MAX = float(np.finfo(np.float32).max)
_INT64_MAX = 2**63 - 1




@dataclass(frozen=True)
class ExamplesRequest:
    """A decoded classify or regress request."""

    signature_name: str
    examples: tuple[Features, ...]
    context: Features | None  # present: the examples form an ExampleListWithContext


def decode_examples_request(request: Mapping[str, Any] | bytes | str) -> ExamplesRequest:
    """Decode a classify/regress body (parsed by `parse_body`, or raw) into features.

    Raises InvalidArgument with TF Serving's messages, checking in its order: signature
    name, context, then the examples.
    """
    doc = request if isinstance(request, Mapping) else parse_body(request)
    name = signature_name_of(doc)
    context = examples_to_features(doc["context"]) if "context" in doc else None
    if "examples" not in doc:
        raise format_error(
            doc, "When method is classify, key 'examples' is expected and was not found"
        )
    examples = doc["examples"]
    if type(examples) is not list:
        raise format_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise format_error(doc, "'examples' value is an empty array")
    return ExamplesRequest(name, tuple(map(examples_to_features, examples)), context)


def examples_to_features(example: Any) -> Features:
    """One JSON example object as features: ints and booleans become int64_list, other
    numbers float_list, strings and `{"b64": ...}` bytes_list; a scalar is a list of one.
    """
    if type(example) is not dict:
        raise InvalidArgument(
            f"Example must be JSON object but got JSON {json_type_name(example)}"
        )
    features: Features = {}
    for name, content in example.items():
        kind: FeatureKind | None = None
        values: list[Any] = []
        for value in content if type(content) is list else [content]:
            value_kind = _feature_kind(name, value)
            if kind is not None and kind != value_kind:
                raise InvalidArgument(
                    f"Unexpected element type in feature: {name} expecting type: "
                    f"{_KIND_NAMES[kind]}"
                )
            kind = value_kind
            values.append(_feature_value(name, value))
        features[name] = Feature(kind, values)
    return features


def _feature_kind(name: str, value: Any) -> FeatureKind:
    value_type = type(value)
    if value_type is bool or value_type is int:
        return "int64_list"
    if value_type is float:
        return "float_list"
    if value_type is str or is_b64_object(value):
        return "bytes_list"
    raise InvalidArgument(
        f"Feature: {name} has element with unexpected JSON type: {json_type_name(value)}"
    )


def _feature_value(name: str, value: Any) -> Any:
    """TF Serving's AddValueToFeature for one value whose kind has been checked."""
    value_type = type(value)
    if value_type is bool:
        return int(value)
    if value_type is str:
        return utf8(value)
    if value_type is float:
        if math.isfinite(value) and abs(value) > _FLOAT_MAX:
            raise lossy_decimal_error(value, "float")
        return value
    if value_type is int:
        if value > _INT64_MAX:
            raise InvalidArgument(f"Feature: {name} has uint64 element. Only int64 is supported.")
        return value
    return decode_b64_object(value)


def encode_classify_response(
    classifications: Sequence[Sequence[tuple[str | bytes, float]]],
) -> bytes:
    """`{"results": [[[label, score], ...], ...]}`, one list of classes per example."""
    if not classifications:
        raise InvalidArgument("Cannot convert empty ClassificationResults to JSON")
    results = [
        [[_label(label), tensor_to_jsonable(np.float32(score))] for label, score in classes]
        for classes in classifications
    ]
    return encode_json({"results": results})


def _label(label: str | bytes) -> str:
    return label.decode("utf-8", "replace") if isinstance(label, bytes) else label


def encode_regress_response(values: Sequence[float] | np.ndarray) -> bytes:
    """`{"results": [value, ...]}`, one float per example."""
    array = np.asarray(values, dtype=np.float32).reshape(-1)
    if not array.size:
        raise InvalidArgument("Cannot convert empty RegressionResults to JSON")
    return encode_json({"results": tensor_to_jsonable(array)})
