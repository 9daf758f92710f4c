"""TF Serving's JSON for predict answers: `{"predictions": ...}` and `{"outputs": ...}`.

Writes what `tensorflow_serving/util/json_tensor.cc` writes for the same tensors: numbers
as JSON numbers, non-finite floats as `NaN`/`Infinity`/`-Infinity`, strings as UTF-8
text or, for outputs whose name ends in "_bytes", as `{"b64": ...}`; error texts are its
own. numpy arrays go to orjson whole, never element by element in Python.

Where this differs on purpose: floats are written by orjson as the shortest text that
reads back to the same float32/float64 (TF Serving writes `%g`, else 9 or 17 digits:
"9e+06" where we write "9000000.0").
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from itertools import chain
from typing import Any

import numpy as np
import orjson

from loader.base import InvalidArgument
from loader.serving.rest.json_values import object_array

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
SLICE_VALUES = 64 * 1024  # a large numeric answer is written this many values at a time


def tensor_to_jsonable(tensor: Any, *, b64: bool = False) -> Any:
    """What orjson (with OPT_SERIALIZE_NUMPY) should write for a tensor, as TF Serving would.

    Numbers stay numpy arrays or scalars; non-finite floats become `NaN`, `Infinity` and
    `-Infinity` tokens; strings become nested lists, each bytes value as UTF-8 text
    (invalid bytes replaced) or, with `b64`, as `{"b64": "..."}`.
    """
    array = np.asarray(tensor)
    kind = array.dtype.kind
    if kind in "OSU":
        return _strings_to_jsonable(array, b64)
    if kind not in "biuf":
        if kind != "V" or not array.dtype.name.startswith(("bfloat", "float")):
            raise InvalidArgument(
                f"Failed to write JSON value for tensor type: {array.dtype.name}"
            )
        array, kind = array.astype(np.float32), "f"  # ml_dtypes' bfloat16, float8...
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if array.ndim == 0:
        scalar = array[()]
        if kind == "f" and not np.isfinite(scalar):
            return orjson.Fragment(_non_finite_token(float(scalar)))
        return scalar
    array = np.ascontiguousarray(array)
    if kind == "f" and not np.isfinite(array).all():
        return _non_finite_fragment(array)
    return array


def _non_finite_token(value: float) -> bytes:
    return b"NaN" if value != value else b"Infinity" if value > 0 else b"-Infinity"


def _non_finite_fragment(array: np.ndarray) -> orjson.Fragment:
    if array.size > SLICE_VALUES:
        return orjson.Fragment(b"".join(_in_slices(array)))
    return orjson.Fragment(_with_tokens(orjson.dumps(array, option=_NUMPY), array))


def _with_tokens(written: bytes, array: np.ndarray) -> bytes:
    """orjson's text of `array` with its nulls (orjson's non-finite floats; a numeric array
    has no other null) written as TF Serving's tokens."""
    non_finite = array[~np.isfinite(array)]
    if not non_finite.size:
        return written
    first = _non_finite_token(float(non_finite[0]))
    if (first == b"NaN" and np.isnan(non_finite).all()) or bool((non_finite == non_finite[0]).all()):
        # One token for all of them (the usual case): one replace, no object per value.
        return written.replace(b"null", first)
    parts = written.split(b"null")
    tokens = [_non_finite_token(v) for v in non_finite.tolist()]
    assert len(parts) == len(tokens) + 1
    pairs = zip(parts, tokens, strict=False)  # parts has one more item than tokens
    return b"".join(chain.from_iterable(pairs)) + parts[-1]


def _strings_to_jsonable(array: np.ndarray, b64: bool) -> Any:
    def text(value: Any) -> Any:
        if type(value) is str:
            value = value.encode("utf-8", "surrogateescape")
        elif type(value) is not bytes:
            raise InvalidArgument(
                f"Failed to write JSON value for tensor type: {type(value).__name__}"
            )
        if b64:
            return {"b64": base64.b64encode(value).decode("ascii")}
        return value.decode("utf-8", "replace")

    values = [text(value) for value in array.ravel().tolist()]
    if array.ndim == 0:
        return values[0]
    return object_array(values).reshape(array.shape).tolist()


def _rows(tensor: np.ndarray, b64: bool) -> list[Any]:
    jsonable = tensor_to_jsonable(tensor, b64=b64)
    if isinstance(jsonable, orjson.Fragment):
        return [tensor_to_jsonable(row) for row in tensor]
    return list(jsonable)


def encode_predict_response(outputs: Mapping[str, Any], row_format: bool) -> bytes:
    """A predict response body: `{"predictions": ...}` (row) or `{"outputs": ...}` (columnar).

    One output is written bare; several as objects keyed by output name (per instance in
    row format, where all outputs must share their first dimension). String outputs whose
    name ends in "_bytes" are written as `{"b64": "..."}`.
    """
    if not outputs:
        raise InvalidArgument("Cannot convert empty tensor map to JSON")
    if len(outputs) == 1:
        fast = _one_numeric_output(outputs, row_format)
        if fast is not None:
            return fast
    tensors = {name: np.asarray(outputs[name]) for name in sorted(outputs)}
    b64 = {name: name.endswith("_bytes") for name in tensors}
    if not row_format:
        if len(tensors) == 1:
            ((name, tensor),) = tensors.items()
            return encode_json({"outputs": tensor_to_jsonable(tensor, b64=b64[name])})
        columns = {name: tensor_to_jsonable(t, b64=b64[name]) for name, t in tensors.items()}
        return encode_json({"outputs": columns})
    batch = 0
    for name, tensor in tensors.items():
        if tensor.ndim == 0:
            raise InvalidArgument(f"Tensor name: {name} has no shape information ")
        size = tensor.shape[0]
        if size < 1:
            raise InvalidArgument(f"Tensor name: {name} has invalid batch size: {size}")
        if batch and size != batch:
            raise InvalidArgument(
                f"Tensor name: {name} has inconsistent batch size: {size} expecting: {batch}"
            )
        batch = size
    if len(tensors) == 1:
        ((name, tensor),) = tensors.items()
        return encode_json({"predictions": tensor_to_jsonable(tensor, b64=b64[name])})
    rows = {name: _rows(tensor, b64[name]) for name, tensor in tensors.items()}
    return encode_json(
        {"predictions": [{name: rows[name][i] for name in rows} for i in range(batch)]}
    )


def _one_numeric_output(outputs: Mapping[str, Any], row_format: bool) -> bytes | None:
    """The answer for the common case, one numeric output (contiguous, native byte order,
    not a scalar, with rows in row format) in one pass of orjson. None for anything else,
    and when a value is not finite: orjson writes those as null, which a numeric array
    never holds otherwise."""
    (tensor,) = outputs.values()
    if (
        type(tensor) is not np.ndarray
        or tensor.dtype.kind not in "biuf"
        or not tensor.dtype.isnative
        or not tensor.flags.c_contiguous
        or tensor.ndim == 0
        or (row_format and tensor.shape[0] < 1)
    ):
        return None
    key = b'{"predictions":' if row_format else b'{"outputs":'
    try:
        if tensor.size > SLICE_VALUES:  # non-finite values included, a slice at a time
            return b"".join((key, *_in_slices(tensor), b"}"))
        body = key + orjson.dumps(tensor, option=_NUMPY) + b"}"
    except orjson.JSONEncodeError:  # a dtype orjson does not write: the long way says why
        return None
    return None if b"null" in body else body


def _in_slices(tensor: np.ndarray) -> list[bytes]:
    """orjson's text for a large array (at least one row) as parts to join, written
    SLICE_VALUES at a time along its first axis, non-finite floats as TF Serving's tokens.

    The interpreter lock is let go between slices: one call for millions of values held
    it, and so every other client, for a third of a second. Each slice's tokens are put in
    as it is written, and the caller joins the parts once: a whole answer's text written
    twice, searched and copied held the lock for over a second on 10M NaN (measured)."""
    rows = max(1, SLICE_VALUES * tensor.shape[0] // tensor.size)
    parts = [b"["]
    for start in range(0, tensor.shape[0], rows):
        part = tensor[start : start + rows]
        text = orjson.dumps(part, option=_NUMPY)[1:-1]
        if part.dtype.kind == "f":
            text = _with_tokens(text, part)
        parts += (text, b",")
    parts[-1] = b"]"
    return parts


def encode_json(document: Any) -> bytes:
    """Serialize a response document that may hold numpy values and orjson Fragments."""
    return orjson.dumps(document, option=_NUMPY)
