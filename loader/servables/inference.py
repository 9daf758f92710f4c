"""Classify, regress and multi-inference over a servable, for any transport.

The signatures take serialized `tf.Example`s, as in TF Serving. Checks, their order and
their messages follow TF Serving's `servables/tensorflow/classifier.cc`, `regressor.cc`,
`multi_inference.cc` and `util.cc`. The examples come from a gRPC `Input`
(`serialized_examples`) or from REST JSON decoded by `loader.serving.rest.json_examples`
(`examples_from_features`); context features are merged into every example the way TF
Serving merges them: the serialized context is prepended to each serialized example, so a
feature named in both takes the example's value (a later map entry wins when parsed).

Method names: TF Serving's model server checks a signature's `method_name` only with
`--enable_signature_method_name_check` (off by default, because TF2 writes every
signature as `tensorflow/serving/predict`); otherwise a signature qualifies by its
inputs and outputs. `check_method_name` is that flag, with the same default.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import json_format, text_format
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, input_pb2

from loader.base import (
    DEFAULT_SIGNATURE,
    Code,
    Features,
    InvalidArgument,
    Servable,
    ServingError,
    SignatureInfo,
)
from loader.servables.tensor_proto import datatype_of, dtype_name

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
INPUTS = "inputs"  # the one input of a classify or regress signature
CLASSES, SCORES, OUTPUTS = "classes", "scores", "outputs"

Classes = list[tuple[str, float]]  # one example's (label, score) pairs
"""One example's classes; a signature without labels gives "", without scores 0.0."""


@dataclass(frozen=True)
class Task:
    """One task of a multi-inference request: a signature and what to do with it."""

    signature_name: str
    method_name: str  # CLASSIFY_METHOD or REGRESS_METHOD


# ---- examples ---------------------------------------------------------------------


def serialized_examples(request_input: input_pb2.Input) -> list[bytes]:
    """The serialized examples of a gRPC `Input`, each prefixed with the context if any."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in request_input.example_list.examples]
    if kind == "example_list_with_context":
        listed = request_input.example_list_with_context
        context = listed.context.SerializeToString()
        return [context + e.SerializeToString() for e in listed.examples]
    return []


def examples_from_features(
    examples: Sequence[Features], context: Features | None = None
) -> list[bytes]:
    """Serialized `tf.Example`s from decoded REST JSON examples (and context)."""
    prefix = _example(context).SerializeToString() if context is not None else b""
    return [prefix + _example(features).SerializeToString() for features in examples]


def examples_input(
    examples: Sequence[Features], context: Features | None = None
) -> input_pb2.Input:
    """The gRPC `Input` that decoded REST JSON examples (and context) stand for."""
    found = input_pb2.Input()
    listed = found.example_list_with_context if context is not None else found.example_list
    listed.examples.extend(_example(features) for features in examples)
    if context is not None:
        found.example_list_with_context.context.CopyFrom(_example(context))
    return found


def _example(features: Features) -> example_pb2.Example:
    example = example_pb2.Example()
    feature_map = example.features.feature
    for name, (kind, values) in features.items():
        try:
            feature = feature_map[name]  # an empty list still names the feature
        except (UnicodeEncodeError, ValueError):  # proto map keys must be valid UTF-8
            raise InvalidArgument(f"feature name {name!r} is not valid UTF-8") from None
        if kind is not None:
            getattr(feature, kind).value.extend(values)
    return example


# ---- signatures -------------------------------------------------------------------

_signature_maps: weakref.WeakKeyDictionary[Any, get_model_metadata_pb2.SignatureDefMap] = (
    weakref.WeakKeyDictionary()
)
_signature_maps_lock = threading.Lock()


def signature_def_map(servable: Servable) -> get_model_metadata_pb2.SignatureDefMap:
    """The servable's SignatureDefs as the proto TF Serving's metadata packs.

    Built once per servable from `signature_def_json()` (which prints every field, so
    the proto comes back whole) and kept while the servable lives; treat it as read-only.
    """
    with _signature_maps_lock:
        found = _signature_maps.get(servable)
    if found is not None:
        return found
    built = json_format.ParseDict(
        servable.signature_def_json(), get_model_metadata_pb2.SignatureDefMap()
    )
    with _signature_maps_lock:
        _signature_maps[servable] = built
    return built


def _debug_string(servable: Servable, name: str) -> str:
    """The SignatureDef in text format, as TF Serving quotes it in errors."""
    found = signature_def_map(servable).signature_def
    return text_format.MessageToString(found[name]) if name in found else ""


def _find(servable: Servable, name: str, missing: str) -> tuple[str, SignatureInfo]:
    name = name or DEFAULT_SIGNATURE
    signature = servable.signatures.get(name)
    if signature is None:
        raise InvalidArgument(f"{missing}{name}")
    return name, signature


def _check_method(signature: SignatureInfo, kind: str, expected: str) -> None:
    """TF Serving's --enable_signature_method_name_check."""
    if signature.method_name != expected:
        raise InvalidArgument(
            f"Expected {kind} signature method_name to be {expected}. "
            f"Was: {signature.method_name}"
        )


def _check_classify(
    servable: Servable, name: str, signature: SignatureInfo, check_method_name: bool
) -> list[str]:
    """TF Serving's PreProcessClassification; the output aliases to fetch."""
    if check_method_name:
        _check_method(signature, "classification", CLASSIFY_METHOD)
    if len(signature.inputs) != 1:
        raise InvalidArgument("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise InvalidArgument(
            f"Expected one or two output Tensors, found {len(signature.outputs)}"
        )
    if INPUTS not in signature.inputs:
        raise InvalidArgument(
            f"No classification inputs found in SignatureDef: {_debug_string(servable, name)}"
        )
    outputs = [alias for alias in (CLASSES, SCORES) if alias in signature.outputs]
    if not outputs:
        raise InvalidArgument(
            'Expected classification signature outputs to contain at least one of "classes" '
            f'or "scores". Signature was: {_debug_string(servable, name)}'
        )
    return outputs


def _check_regress(
    servable: Servable, name: str, signature: SignatureInfo, check_method_name: bool
) -> list[str]:
    """TF Serving's PreProcessRegression; the output aliases to fetch."""
    if check_method_name:
        _check_method(signature, "regression", REGRESS_METHOD)
    if len(signature.inputs) != 1:
        raise InvalidArgument("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise InvalidArgument("Expected one output Tensor.")
    if INPUTS not in signature.inputs:
        raise InvalidArgument(
            f"No regression inputs found in SignatureDef: {_debug_string(servable, name)}"
        )
    if OUTPUTS not in signature.outputs:
        raise InvalidArgument(
            f"No regression outputs found in SignatureDef: {_debug_string(servable, name)}"
        )
    return [OUTPUTS]


def _run(
    servable: Servable, name: str, examples: Sequence[bytes], outputs: list[str]
) -> dict[str, Any]:
    if not examples:
        raise InvalidArgument("Input is empty.")
    batch = np.empty(len(examples), dtype=object)
    batch[:] = list(examples)
    return servable.run(name, {INPUTS: batch}, outputs)


# ---- results ----------------------------------------------------------------------


def _shape_text(array: np.ndarray) -> str:
    return "[" + ",".join(map(str, array.shape)) + "]"


def _classifications(results: Mapping[str, Any], count: int) -> list[Classes]:
    """TF Serving's PostProcessClassificationResult."""
    classes = np.asarray(results[CLASSES]) if CLASSES in results else None
    scores = np.asarray(results[SCORES]) if SCORES in results else None
    for alias, array, dtype in ((CLASSES, classes, "DT_STRING"), (SCORES, scores, "DT_FLOAT")):
        if array is None:
            continue
        if array.ndim != 2:
            raise InvalidArgument(
                f"Expected Tensor shape: [batch_size num_classes] but got {_shape_text(array)}"
            )
        got = dtype_name(datatype_of(array))
        if got != dtype:
            raise InvalidArgument(f"Expected {alias} Tensor of {dtype}. Got: {got}")
        if array.shape[0] != count:
            raise InvalidArgument(
                f"Expected {alias} output batch size of {count}. Got: {array.shape[0]}"
            )
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise InvalidArgument(
            "Tensors class and score should match in dim_size(1). "
            f"Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    reference = classes if classes is not None else scores
    assert reference is not None  # _check_classify fetched at least one of them
    width = reference.shape[1]
    labels = (
        [[_label(v) for v in row] for row in classes.tolist()]
        if classes is not None
        else [[""] * width for _ in range(count)]
    )
    values = scores.tolist() if scores is not None else [[0.0] * width for _ in range(count)]
    return [list(zip(row_labels, row_values)) for row_labels, row_values in zip(labels, values)]


def _label(value: bytes | str) -> str:
    # Class.label is a proto string, which must be UTF-8.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _regressions(results: Mapping[str, Any], count: int) -> list[float]:
    """TF Serving's PostProcessRegressionResult."""
    output = np.asarray(results[OUTPUTS])
    if not (output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1)):
        raise InvalidArgument(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] "
            f"but got {_shape_text(output)}"
        )
    if output.shape[0] != count:
        raise InvalidArgument(
            f"Input batch size did not match output batch size: {count} vs. {output.shape[0]}"
        )
    got = dtype_name(datatype_of(output))
    if got != "DT_FLOAT":
        raise InvalidArgument(f"Expected output Tensor of DT_FLOAT.  Got: {got}")
    return [float(v) for v in output.reshape(-1).tolist()]


# ---- the three operations ---------------------------------------------------------


def classify(
    servable: Servable,
    signature_name: str,
    examples: Sequence[bytes],
    *,
    check_method_name: bool = False,
) -> list[Classes]:
    """Classify serialized examples with a signature ("" is `serving_default`).

    Returns, per example, its (label, score) pairs. Raises `ServingError`s with TF
    Serving's messages for an unsuitable signature, no examples or bad outputs.
    """
    name, signature = _find(servable, signature_name, "No signature was found with the name: ")
    outputs = _check_classify(servable, name, signature, check_method_name)
    return _classifications(_run(servable, name, examples, outputs), len(examples))


def regress(
    servable: Servable,
    signature_name: str,
    examples: Sequence[bytes],
    *,
    check_method_name: bool = False,
) -> list[float]:
    """Regress serialized examples with a signature ("" is `serving_default`): one value
    per example."""
    name, signature = _find(servable, signature_name, "No signature was found with the name: ")
    outputs = _check_regress(servable, name, signature, check_method_name)
    return _regressions(_run(servable, name, examples, outputs), len(examples))


def check_one_model(names: Iterable[str]) -> None:
    """MultiInference's rule: every task names the same, non-empty model."""
    distinct = set(names)
    if "" in distinct:
        raise InvalidArgument("Found ModelSpec with an empty model name.")
    if len(distinct) > 1:
        raise InvalidArgument(
            "All ModelSpecs in a MultiInferenceRequest must access the same model name."
        )


def multi_inference(
    servable: Servable,
    tasks: Sequence[Task],
    examples: Sequence[bytes],
    *,
    check_method_name: bool = False,
) -> list[list[Classes] | list[float]]:
    """Run several classify/regress signatures of one servable on the same examples.

    As in TF Serving, each signature may appear once, and all are checked before any
    runs. Each runs on its own: TF Serving feeds the examples to every signature's input
    in one session run, which gives the same answers.
    """
    checked: list[tuple[str, str, list[str]]] = []
    for task in tasks:
        name = task.signature_name or DEFAULT_SIGNATURE
        if any(name == seen for seen, _, _ in checked):
            raise InvalidArgument(f"Duplicate evaluation of signature: {name}")
        name, signature = _find(
            servable, name, "Requested signature not found in model graph: "
        )
        if task.method_name == CLASSIFY_METHOD:
            outputs = _check_classify(servable, name, signature, check_method_name)
        elif task.method_name == REGRESS_METHOD:
            outputs = _check_regress(servable, name, signature, check_method_name)
        else:
            raise ServingError(
                f"Unsupported signature method_name: {task.method_name}", Code.UNIMPLEMENTED
            )
        checked.append((name, task.method_name, outputs))
    if not examples:
        raise InvalidArgument("Input is empty.")
    answers: list[list[Classes] | list[float]] = []
    for name, method, outputs in checked:
        results = _run(servable, name, examples, outputs)
        if method == CLASSIFY_METHOD:
            answers.append(_classifications(results, len(examples)))
        else:
            answers.append(_regressions(results, len(examples)))
    return answers
