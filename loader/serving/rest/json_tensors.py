"""One JSON value -> one tensor of a signature input's dtype, as TF Serving decodes it.

Behaves like `tensorflow_serving/util/json_tensor.cc`: the same accepted values, the same
tensors out of them and the same error texts (quoted from it below). The request around
the values (row or columnar format) is `json_predict`'s.

Decoding takes a fast path (flatten level by level, check leaf types as sets, convert
with numpy) and falls back, only when that path sees anything wrong, to a step-by-step
emulation of TF Serving's walk, so a bad request gets exactly the first error TF Serving
would report. Neither path recurses, so deep nesting cannot overflow the stack.

Responses are written by `loader.serving.rest.json_responses`.

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
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from loader.base import Code, InvalidArgument, ServingError
from loader.serving.rest.json_values import (
    decode_b64_object,
    json_type_name,
    json_value_to_string,
    lossy_decimal_error,
    object_array,
    utf8,
)

try:  # ml_dtypes ships with TensorFlow; without it bfloat16 inputs decode to float32.
    _BFLOAT16: np.dtype[Any] = np.dtype(importlib.import_module("ml_dtypes").bfloat16)
except ImportError:  # pragma: no cover - depends on the environment
    _BFLOAT16 = np.dtype(np.float32)

MAX_RANK = 64  # numpy's limit; TensorFlow's own is 254

# --- dtypes --------------------------------------------------------------------------------

@dataclass(frozen=True)
class DType:
    """How JSON values convert to one TensorFlow dtype."""

    tf_name: str  # DataTypeString(): "float", "int32"...
    numpy: np.dtype[Any]
    kind: str  # "float", "int", "bool", "string", or "" when TF Serving cannot convert
    max_int: int = 0  # floats: the largest integer held exactly (IsLosslessDecimal)
    max_value: float = 0.0  # floats: the largest finite value
    low: int = 0  # ints: the range
    high: int = 0


def _float(name: str, dtype: Any, digits: int, max_value: float) -> DType:
    return DType(name, np.dtype(dtype), "float", 2**digits - 1, max_value)


def _int(name: str, dtype: Any) -> DType:
    info = np.iinfo(dtype)
    return DType(name, np.dtype(dtype), "int", low=int(info.min), high=int(info.max))


_DTYPES = {
    "DT_FLOAT": _float("float", np.float32, 24, float(np.finfo(np.float32).max)),
    "DT_DOUBLE": _float("double", np.float64, 53, float(np.finfo(np.float64).max)),
    "DT_HALF": _float("half", np.float16, 11, 65504.0),
    "DT_BFLOAT16": _float("bfloat16", _BFLOAT16, 8, 3.3895313892515355e38),
    **{f"DT_{n.upper()}": _int(n, n) for n in ("int8", "int16", "int32", "int64")},
    **{f"DT_{n.upper()}": _int(n, n) for n in ("uint8", "uint16", "uint32", "uint64")},
    "DT_BOOL": DType("bool", np.dtype(np.bool_), "bool"),
    "DT_STRING": DType("string", np.dtype(object), "string"),
}


def dtype_spec(name: str) -> DType:
    spec = _DTYPES.get(name)
    if spec is None:
        tf_name = name[3:].lower() if name.startswith("DT_") else name
        spec = DType(tf_name, np.dtype(object), "")
    return spec


# --- one JSON value -> one tensor ------------------------------------------------------------

def dense_shape(value: Any) -> list[int]:
    """TF Serving's GetDenseTensorShape: the sizes met going down the first elements."""
    shape: list[int] = []
    while type(value) is list:
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def check_rank(shape: list[int]) -> None:
    if len(shape) > MAX_RANK:
        raise InvalidArgument(
            f"JSON list nested {len(shape)} deep: tensors have at most {MAX_RANK} dimensions"
        )


def decode_value(value: Any, spec: DType) -> np.ndarray:
    """Convert one JSON value (a scalar or nested lists) into a tensor of `spec`'s dtype."""
    shape = dense_shape(value)
    check_rank(shape)
    array = fast_tensor(value, shape, spec)
    if array is None:
        array = build_tensor(exact_leaves(value, shape, spec), shape, spec)
    return array


def fast_tensor(value: Any, shape: list[int], spec: DType) -> np.ndarray | None:
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
        array = fast_floats(leaves, types, spec)
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


def fast_floats(leaves: list[Any], types: set[type], spec: DType) -> np.ndarray | None:
    if not types <= {int, float}:
        return None
    doubles = np.array(leaves, dtype=np.float64)
    # The common case in one dot product: a sum of squares below limit**2 means every
    # value is finite, in range and, if some are integers, small enough to be exact (each
    # square is at most the sum, and rounding never takes a square above limit**2 below
    # it). NaN, infinities, overflowing squares (beyond ~1e154) and values at the limit
    # take the long way. `vdot` (BLAS) neither warns on overflow, as matmul does, nor
    # costs matmul's ufunc dispatch.
    limit = spec.max_int if int in types else spec.max_value
    if not doubles.size or np.vdot(doubles, doubles) < limit * limit:
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


def build_tensor(leaves: list[Any], shape: list[int], spec: DType) -> np.ndarray:
    if spec.numpy == np.dtype(object):
        return object_array(leaves).reshape(shape)
    return np.array(leaves, dtype=spec.numpy).reshape(shape)


def exact_leaves(value: Any, shape: list[int], spec: DType) -> list[Any]:
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


def _convert_leaf(value: Any, spec: DType) -> Any:
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
