"""TF Serving's JSON <-> tensor codec for the REST predict API.

Behaves like `tensorflow_serving/util/json_tensor.cc`: the same accepted requests, the same
tensors out of them and the same error texts (quoted from it below). A request body is
parsed once (`parse_body`), its signature name read (`signature_name_of`) so the caller
can resolve the signature (both in `json_values`), then its tensors decoded
(`decode_predict_request`).

Decoding takes a fast path (flatten level by level, check leaf types as sets, convert
with numpy) and falls back, only when that path sees anything wrong, to a step-by-step
emulation of TF Serving's walk, so a bad request gets exactly the first error TF Serving
would report. Neither path recurses, so deep nesting cannot overflow the stack.

Responses are written by `loader.json_responses`.

Where this differs on purpose: DT_HALF, DT_BFLOAT16 (numpy has no bfloat16: `ml_dtypes`
when present, else float32) and DT_UINT16 are accepted (TF Serving answers
Unimplemented); values out of range for int8/int16/uint8/uint16 are rejected instead of
wrapped; floats are written by orjson as the shortest text that reads back to the same
float32/float64 (TF Serving writes `%g`, else 9 or 17 digits: "9e+06" where we write
"9000000.0").
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any, NamedTuple

import numpy as np

from loader.base import SignatureInfo
from loader.errors import Code, InvalidArgument, ServingError
from loader.json_values import (
    decode_b64_object,
    format_error,
    is_b64_object,
    json_type_name,
    json_value_to_string,
    lossy_decimal_error,
    object_array,
    parse_body,
    signature_name_of,
    utf8,
)

try:  # ml_dtypes ships with TensorFlow; without it bfloat16 inputs decode to float32.
    _BFLOAT16: np.dtype[Any] = np.dtype(importlib.import_module("ml_dtypes").bfloat16)
except ImportError:  # pragma: no cover - depends on the environment
    _BFLOAT16 = np.dtype(np.float32)

_MAX_RANK = 64  # numpy's limit; TensorFlow's own is 254

# _fast_floats' sum of squares overflows for values beyond ~1e154; that only sends them
# the long way, which checks each value.
warnings.filterwarnings(
    "ignore", "overflow encountered in matmul", RuntimeWarning, module=__name__
)


class PredictRequest(NamedTuple):
    """A decoded predict request: which signature, which format, and its input tensors."""

    signature_name: str
    row_format: bool  # "instances" (answer with "predictions") rather than "inputs"
    inputs: dict[str, np.ndarray]


# --- dtypes --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _DType:
    """How JSON values convert to one TensorFlow dtype."""

    tf_name: str  # DataTypeString(): "float", "int32"...
    numpy: np.dtype[Any]
    kind: str  # "float", "int", "bool", "string", or "" when TF Serving cannot convert
    max_int: int = 0  # floats: the largest integer held exactly (IsLosslessDecimal)
    max_value: float = 0.0  # floats: the largest finite value
    low: int = 0  # ints: the range
    high: int = 0


def _float(name: str, dtype: Any, digits: int, max_value: float) -> _DType:
    return _DType(name, np.dtype(dtype), "float", 2**digits - 1, max_value)


def _int(name: str, dtype: Any) -> _DType:
    info = np.iinfo(dtype)
    return _DType(name, np.dtype(dtype), "int", low=int(info.min), high=int(info.max))


_DTYPES = {
    "DT_FLOAT": _float("float", np.float32, 24, float(np.finfo(np.float32).max)),
    "DT_DOUBLE": _float("double", np.float64, 53, float(np.finfo(np.float64).max)),
    "DT_HALF": _float("half", np.float16, 11, 65504.0),
    "DT_BFLOAT16": _float("bfloat16", _BFLOAT16, 8, 3.3895313892515355e38),
    **{f"DT_{n.upper()}": _int(n, n) for n in ("int8", "int16", "int32", "int64")},
    **{f"DT_{n.upper()}": _int(n, n) for n in ("uint8", "uint16", "uint32", "uint64")},
    "DT_BOOL": _DType("bool", np.dtype(np.bool_), "bool"),
    "DT_STRING": _DType("string", np.dtype(object), "string"),
}


def _dtype(name: str) -> _DType:
    spec = _DTYPES.get(name)
    if spec is None:
        tf_name = name[3:].lower() if name.startswith("DT_") else name
        spec = _DType(tf_name, np.dtype(object), "")
    return spec


# --- one JSON value -> one tensor ------------------------------------------------------------

def _dense_shape(value: Any) -> list[int]:
    """TF Serving's GetDenseTensorShape: the sizes met going down the first elements."""
    shape: list[int] = []
    while type(value) is list:
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _check_rank(shape: list[int]) -> None:
    if len(shape) > _MAX_RANK:
        raise InvalidArgument(
            f"JSON list nested {len(shape)} deep: tensors have at most {_MAX_RANK} dimensions"
        )


def _decode_value(value: Any, spec: _DType) -> np.ndarray:
    """Convert one JSON value (a scalar or nested lists) into a tensor of `spec`'s dtype."""
    shape = _dense_shape(value)
    _check_rank(shape)
    array = _fast_tensor(value, shape, spec)
    if array is None:
        array = _build(_exact_leaves(value, shape, spec), shape, spec)
    return array


def _fast_tensor(value: Any, shape: list[int], spec: _DType) -> np.ndarray | None:
    """The tensor, or None when anything is off (the exact walk then reports it)."""
    leaves = value if shape else [value]
    for size in shape[1:]:
        if set(map(type, leaves)) != {list} or set(map(len, leaves)) != {size}:
            return None
        leaves = list(chain.from_iterable(leaves))
    types = set(map(type, leaves))
    if shape and list in types:
        return None
    if spec.kind == "float":
        array = _fast_floats(leaves, types, spec)
    elif spec.kind == "int" and types <= {int}:
        try:
            array = np.array(leaves, dtype=spec.numpy)
        except OverflowError:
            return None
    elif spec.kind == "bool" and types <= {bool}:
        array = np.array(leaves, dtype=np.bool_)
    elif spec.kind == "string" and types <= {str, dict}:
        try:
            strings = [utf8(v) if type(v) is str else decode_b64_object(v) for v in leaves]
        except InvalidArgument:
            return None
        array = object_array(strings)
    else:
        return None
    return None if array is None else array.reshape(shape)


def _fast_floats(leaves: list[Any], types: set[type], spec: _DType) -> np.ndarray | None:
    if not types <= {int, float}:
        return None
    doubles = np.array(leaves, dtype=np.float64)
    # The common case in one dot product: a sum of squares below limit**2 means every
    # value is finite, in range and, if some are integers, small enough to be exact (each
    # square is at most the sum, and rounding never takes a square above limit**2 below
    # it). NaN, infinities, overflowing squares and values at the limit take the long way.
    limit = spec.max_int if int in types else spec.max_value
    if not doubles.size or float(doubles @ doubles) < limit * limit:
        return doubles.astype(spec.numpy)
    with np.errstate(invalid="ignore"):
        magnitude = np.abs(doubles)
        if ((magnitude > spec.max_value) & np.isfinite(doubles)).any():
            return None
        if int in types:
            big = np.flatnonzero(magnitude > spec.max_int)
            if any(type(leaves[i]) is int for i in big.tolist()):
                return None
    return doubles.astype(spec.numpy)


def _build(leaves: list[Any], shape: list[int], spec: _DType) -> np.ndarray:
    if spec.numpy == np.dtype(object):
        return object_array(leaves).reshape(shape)
    return np.array(leaves, dtype=spec.numpy).reshape(shape)


def _exact_leaves(value: Any, shape: list[int], spec: _DType) -> list[Any]:
    """TF Serving's FillTensorProto, step for step: the converted leaves, or its first error."""
    rank = len(shape)
    leaves: list[Any] = []
    stack = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if type(item) is not list:
            if level != rank:
                raise InvalidArgument(
                    f"JSON Value: {json_value_to_string(item)} found at incorrect level: "
                    f"{level + 1} in the JSON DOM. Expected at level: {rank}"
                )
            leaves.append(_convert_leaf(item, spec))
            continue
        if level >= rank:
            raise InvalidArgument(
                f"Encountered list at unexpected level: {level} expected < {rank}"
            )
        if len(item) != shape[level]:
            raise InvalidArgument(
                f"Encountered list at unexpected size: {len(item)} at level: {level} "
                f"expected size: {shape[level]}"
            )
        stack.extend((child, level + 1) for child in reversed(item))
    return leaves


def _convert_leaf(value: Any, spec: _DType) -> Any:
    """TF Serving's AddValueToTensor for one value (b64 objects for strings included)."""
    kind, value_type = spec.kind, type(value)
    if value_type is dict:
        if kind == "string":
            return decode_b64_object(value)
        raise _type_error(value, spec.tf_name)
    if kind == "float":
        if value_type is int:
            if abs(value) > spec.max_int:
                raise lossy_decimal_error(value, spec.tf_name)
            return value
        if value_type is float:
            if math.isfinite(value) and abs(value) > spec.max_value:
                raise lossy_decimal_error(value, spec.tf_name)
            return value
    elif kind == "int":
        if value_type is int and spec.low <= value <= spec.high:
            return value
    elif kind == "bool":
        if value_type is bool:
            return value
    elif kind == "string":
        if value_type is str:
            return utf8(value)
    else:
        raise ServingError(
            f"Conversion of JSON Value: {json_value_to_string(value)} to type: {spec.tf_name}",
            Code.UNIMPLEMENTED,
        )
    raise _type_error(value, spec.tf_name)


def _type_error(value: Any, type_name: str) -> InvalidArgument:
    return InvalidArgument(
        f"JSON Value: {json_value_to_string(value)} Type: {json_type_name(value)} "
        f"is not of expected type: {type_name}"
    )


# --- predict requests ----------------------------------------------------------------------

def decode_predict_request(
    request: Mapping[str, Any] | bytes | str, signature: SignatureInfo
) -> PredictRequest:
    """Decode a predict request (a body from `parse_body`, or raw bytes) for `signature`.

    Row format `{"instances": [...]}` batches the instances along a new first dimension;
    columnar `{"inputs": ...}` gives each tensor as is. Raises InvalidArgument with TF
    Serving's messages.
    """
    doc = request if isinstance(request, Mapping) else parse_body(request)
    name = signature_name_of(doc)
    if not signature.inputs:
        raise InvalidArgument(
            f"Failed to get input map for signature: {doc.get('signature_name') or 'DEFAULT'}"
        )
    specs = {alias: _dtype(info.dtype) for alias, info in signature.inputs.items()}
    if "instances" in doc:
        if "inputs" in doc:
            raise format_error(
                doc, "Not formatted correctly expecting only one of 'inputs' or 'instances' "
                "keys to exist "
            )
        instances = doc["instances"]
        if type(instances) is not list:
            raise format_error(doc, "Excepting 'instances' to be an list/array")
        if not instances:
            raise format_error(doc, "No values in 'instances' array")
        inputs = _fast_instances(instances, specs)
        if inputs is None:
            inputs = _exact_instances(instances, specs)
        if len(inputs) > 1:  # in the signature's order
            inputs = {alias: inputs[alias] for alias in specs}
        return PredictRequest(name, True, inputs)
    if "inputs" in doc:
        return PredictRequest(name, False, _decode_inputs(doc["inputs"], specs))
    raise InvalidArgument("Missing 'inputs' or 'instances' key")


def _decode_inputs(value: Any, specs: Mapping[str, _DType]) -> dict[str, np.ndarray]:
    """TF Serving's FillTensorMapFromInputsMap (extra keys in the object are ignored)."""
    if type(value) is not dict or is_b64_object(value):
        if len(specs) > 1:
            raise InvalidArgument(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        ((alias, spec),) = specs.items()
        return {alias: _decode_value(value, spec)}
    for alias in sorted(specs):
        if alias not in value:
            raise InvalidArgument(f"Missing named input: {alias} in 'inputs' object.")
    return {alias: _decode_value(value[alias], spec) for alias, spec in specs.items()}


def _is_element_object(value: Any) -> bool:
    return type(value) is dict and not is_b64_object(value)


def _fast_instances(
    instances: list[Any], specs: Mapping[str, _DType]
) -> dict[str, np.ndarray] | None:
    """All instances batched at once, or None to let the exact walk decide."""
    columns: dict[str, list[Any]]
    if _is_element_object(instances[0]):
        if specs.keys() == {"b64"} or set(map(type, instances)) != {dict}:
            return None
        if any(instance.keys() != specs.keys() for instance in instances):
            return None
        columns = {alias: [instance[alias] for instance in instances] for alias in specs}
    elif len(specs) == 1:
        ((alias, spec),) = specs.items()
        if spec.kind == "float":
            array = _fast_float_rows(instances, spec)
            if array is not None:
                return {alias: array}
        columns = {alias: instances}
    else:
        return None
    result = {}
    for alias, column in columns.items():
        shape = _dense_shape(column)
        if len(shape) > _MAX_RANK:
            return None
        array = _fast_tensor(column, shape, specs[alias])
        if array is None:
            return None
        result[alias] = array
    return result


def _fast_float_rows(instances: list[Any], spec: _DType) -> np.ndarray | None:
    """The most common request, one float input sent as rows of numbers (or as numbers),
    in fewer steps than `_fast_tensor`; None for anything else."""
    if type(instances[0]) is list:
        width = len(instances[0])
        if not width or set(map(type, instances)) != {list} or set(map(len, instances)) != {width}:
            return None
        leaves = list(chain.from_iterable(instances))
        shape: tuple[int, ...] = (len(instances), width)
    else:
        leaves, shape = instances, (len(instances),)
    array = _fast_floats(leaves, set(map(type, leaves)), spec)
    return None if array is None else array.reshape(shape)


def _exact_instances(
    instances: list[Any], specs: Mapping[str, _DType]
) -> dict[str, np.ndarray]:
    """TF Serving's FillTensorMapFromInstancesList, instance by instance, key by key."""
    names = sorted(specs)
    first = instances[0]
    # TF Serving would go on with a b64 object first and several inputs; we stop here.
    if len(names) > 1 and not _is_element_object(first):
        raise InvalidArgument(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    objects = _is_element_object(first)
    leaves: dict[str, list[Any]] = {}
    shapes: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}

    def add_item(item: Any, alias: str) -> None:
        if alias not in specs:
            raise InvalidArgument(f"JSON object: does not have named input: {alias}")
        shape = _dense_shape(item)
        _check_rank([len(instances), *shape])
        values = _exact_leaves(item, shape, specs[alias])
        if alias not in shapes:
            shapes[alias], sizes[alias], leaves[alias] = shape, len(values), values
            return
        if sizes[alias] != len(values):
            raise InvalidArgument(
                f"Expecting tensor size: {sizes[alias]} but got: {len(values)}"
            )
        if shapes[alias] != shape:
            raise InvalidArgument(
                f"Expecting shape {_shape_text(shapes[alias])} but got: {_shape_text(shape)}"
            )
        leaves[alias].extend(values)

    for index, instance in enumerate(instances):
        if objects:
            if not _is_element_object(instance):
                raise InvalidArgument(
                    f"Expecting object but got list at item {index} of input list"
                )
            for alias, item in instance.items():
                _wrapped(add_item, item, alias, f"{index} key: {alias}")
            if instance.keys() != specs.keys():
                raise InvalidArgument(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{json_value_to_string(instance)} keys must be equal to: {','.join(names)}"
                )
        else:
            if _is_element_object(instance):
                raise InvalidArgument(
                    f"Expecting value/list but got object at item {index} of input list"
                )
            _wrapped(add_item, instance, names[0], str(index))
    return {
        alias: _build(leaves[alias], [len(instances), *shapes[alias]], specs[alias])
        for alias in names
    }


def _wrapped(add_item: Callable[[Any, str], None], item: Any, alias: str, where: str) -> None:
    try:
        add_item(item, alias)
    except ServingError as exc:
        raise InvalidArgument(
            f"Failed to process element: {where} of 'instances' list. "
            f"Error: {exc.code.name}: {exc.message}"
        ) from None


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"
