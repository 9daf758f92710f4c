"""A PredictRequest's inputs checked against a signature and sized before any of them is
decoded, as TF Serving's session reads them, with one bound of ours.

TF Serving (`saved_model::GetInputValues`) reads only the signature's inputs, in alias
order, and the session then checks each one's type; an input the signature lacks is
never parsed, only named in the error. Here the same, and before anything is allocated,
the bytes all of them decode to (their shapes times their item sizes, `tensor_proto.check`)
must be at most `max_bytes` (server.max_decoded_tensor_bytes): TensorFlow's fill rule (a
field with fewer values than the shape is filled out with its last value) holds for any
request within that bound, and a few bytes can no longer ask for gigabytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from loader.base import InvalidArgument, SignatureInfo
from loader.servables.tensor_proto import (
    MAX_TENSOR_BYTES,
    Sized,
    check,
    decode_checked,
    dtype_name,
    shape_text,
)


class DecodedTooLarge(InvalidArgument):
    """A request's inputs would decode to more than the server allows."""


class InputPlan:
    """A PredictRequest's inputs, checked against the signature and sized, not decoded yet.

    `nbytes` is what `decode()` will allocate (strings: STRING_ITEM_BYTES an element).
    """

    __slots__ = ("nbytes", "tensors", "unknown")

    def __init__(
        self, tensors: list[tuple[str, Any, Sized]], unknown: tuple[str, ...], nbytes: int
    ) -> None:
        self.tensors = tensors  # alias, TensorProto, its size
        self.unknown = unknown  # aliases the signature does not have: never decoded
        self.nbytes = nbytes

    def decode(self) -> dict[str, np.ndarray]:
        """The inputs as arrays. An alias the signature does not have is passed on as an
        empty array, so the servable refuses the request with TF Serving's words for it."""
        arrays: dict[str, np.ndarray] = {}
        for alias, proto, sized in self.tensors:
            try:
                arrays[alias] = decode_checked(proto, sized)
            except InvalidArgument as error:
                raise InvalidArgument(f"tensor parsing error: {alias}: {error.message}") from None
        for alias in self.unknown:
            arrays[alias] = _NOT_DECODED
        return arrays


_NOT_DECODED = np.zeros(0, np.float32)
_NOT_DECODED.flags.writeable = False


def plan_inputs(
    inputs: Mapping[str, Any],
    signature: SignatureInfo,
    max_bytes: int = MAX_TENSOR_BYTES,
) -> InputPlan:
    """A PredictRequest's inputs checked against the signature before any is decoded.

    As TF Serving's session: only the signature's inputs are read (in alias order, with
    "tensor parsing error: x" for a malformed one), and each one's type is checked. Then
    the size all of them decode to, from their shapes, must be at most `max_bytes`
    (`DecodedTooLarge` otherwise): the fill rule cannot make a few bytes into gigabytes.
    """
    aliases = sorted(signature.inputs) if len(signature.inputs) > 1 else list(signature.inputs)
    planned = []
    total = 0
    for alias in aliases:
        proto = inputs.get(alias)
        if proto is None:
            continue
        try:
            sized = check(proto)
        except InvalidArgument as error:
            raise InvalidArgument(f"tensor parsing error: {alias}: {error.message}") from None
        total += sized.nbytes
        planned.append((alias, proto, sized))
    for index, alias in enumerate(aliases):
        expected = signature.inputs[alias].dtype
        if alias in inputs and dtype_name(inputs[alias].dtype) != expected:
            raise InvalidArgument(
                f"Expects arg[{index}] to be {_tf_type(expected)} but "
                f"{_tf_type(dtype_name(inputs[alias].dtype))} is provided"
            )
    if total > max_bytes:
        alias, proto, sized = max(reversed(planned), key=lambda planned: planned[2].nbytes)
        raise DecodedTooLarge(
            f"the request's inputs would take {total} bytes decoded, more than "
            f"server.max_decoded_tensor_bytes ({max_bytes}); the largest is {alias}, a "
            f"{dtype_name(proto.dtype)} tensor of shape {shape_text(sized.shape)}"
        )
    unknown: tuple[str, ...] = ()
    if len(inputs) > len(planned):
        unknown = tuple(alias for alias in inputs if alias not in signature.inputs)
    return InputPlan(planned, unknown, total)


def decode_inputs(
    inputs: Mapping[str, Any],
    signature: SignatureInfo,
    max_bytes: int = MAX_TENSOR_BYTES,
) -> dict[str, np.ndarray]:
    """`plan_inputs(...).decode()`: a PredictRequest's inputs as arrays, checked first."""
    return plan_inputs(inputs, signature, max_bytes).decode()


def _tf_type(dtype: str) -> str:
    return dtype.removeprefix("DT_").lower()  # DT_FLOAT -> float, as DataTypeString says
