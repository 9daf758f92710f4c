"""A PredictRequest's inputs checked against the signature and sized before decoding:
the fill rule bounded, unknown aliases never decoded, the type checked first."""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tensorflow.core.framework import tensor_pb2, types_pb2

from loader.base import InvalidArgument, SignatureInfo, TensorInfo
from loader.servables.request_tensors import DecodedTooLarge, decode_inputs, plan_inputs


def proto(dtype: int, shape: list[int], **fields: Any) -> tensor_pb2.TensorProto:
    message = tensor_pb2.TensorProto(dtype=dtype, **fields)
    for size in shape:
        message.tensor_shape.dim.add().size = size
    return message


SIGNATURE = SignatureInfo("tensorflow/serving/predict", {
    "x": TensorInfo("x:0", "DT_FLOAT", (-1, 1)), "w": TensorInfo("w:0", "DT_INT64", (-1,)),
})
HUGE = 1 << 40  # elements: allocating a tensor this size would fail (or take the machine)


def test_a_fill_out_past_the_limit_is_refused_from_its_shape_with_its_name() -> None:
    inputs = {"x": proto(types_pb2.DT_FLOAT, [1 << 28, 1], float_val=[1.0])}
    with pytest.raises(DecodedTooLarge) as raised:
        plan_inputs(inputs, SIGNATURE, max_bytes=256 << 20)
    assert raised.value.message == (
        "the request's inputs would take 1073741824 bytes decoded, more than "
        "server.max_decoded_tensor_bytes (268435456); the largest is x, a DT_FLOAT tensor "
        "of shape [268435456,1]"
    )
    # Within the limit TensorFlow's fill rule holds: the last value fills the rest.
    inputs = {"x": proto(types_pb2.DT_FLOAT, [4, 1], float_val=[1.0, 2.0])}
    plan = plan_inputs(inputs, SIGNATURE, max_bytes=16)
    assert plan.nbytes == 16
    assert plan.decode()["x"].tolist() == [[1.0], [2.0], [2.0], [2.0]]


def test_the_limit_holds_for_the_inputs_together() -> None:
    inputs = {
        "x": proto(types_pb2.DT_FLOAT, [6, 1], float_val=[1.0]),
        "w": proto(types_pb2.DT_INT64, [4], int64_val=[1]),
    }
    assert plan_inputs(inputs, SIGNATURE, max_bytes=56).nbytes == 56
    with pytest.raises(DecodedTooLarge, match="56 bytes decoded.*the largest is w"):
        plan_inputs(inputs, SIGNATURE, max_bytes=55)


def test_strings_are_sized_per_element() -> None:
    signature = SignatureInfo("p", {"s": TensorInfo("s:0", "DT_STRING", (-1,))})
    plan = plan_inputs({"s": proto(types_pb2.DT_STRING, [1000], string_val=[b"a"])}, signature)
    assert plan.nbytes == 1000 * 64
    with pytest.raises(DecodedTooLarge):
        plan_inputs({"s": proto(types_pb2.DT_STRING, [HUGE], string_val=[b"a"])}, signature)


def test_inputs_the_signature_lacks_are_never_decoded() -> None:
    # TF Serving's session reads only the signature's inputs; the servable then refuses
    # the extra alias by name (it gets an empty array, not a filled-out gigabyte).
    inputs = {
        "x": proto(types_pb2.DT_FLOAT, [1, 1], float_val=[1.0]),
        "z": proto(types_pb2.DT_FLOAT, [HUGE], float_val=[1.0]),
        "zz": proto(types_pb2.DT_FLOAT, [2], tensor_content=b"bad"),
    }
    arrays = decode_inputs(inputs, SIGNATURE)
    assert arrays["x"].tolist() == [[1.0]]
    assert arrays["z"].size == 0 and arrays["zz"].size == 0


def test_the_type_is_checked_before_the_size_and_before_decoding() -> None:
    inputs = {"x": proto(types_pb2.DT_INT32, [HUGE], int_val=[1])}
    with pytest.raises(InvalidArgument) as raised:
        plan_inputs(inputs, SIGNATURE)
    assert raised.value.message == "Expects arg[1] to be float but int32 is provided"


def test_a_malformed_input_is_named_before_any_is_decoded() -> None:
    inputs = {
        "w": proto(types_pb2.DT_INT64, [2], int64_val=[1, 2, 3]),
        "x": proto(types_pb2.DT_FLOAT, [1, 1], float_val=[1.0]),
    }
    with pytest.raises(InvalidArgument) as raised:
        plan_inputs(inputs, SIGNATURE)
    assert raised.value.message == (
        "tensor parsing error: w: int64_val has 3 values but a tensor of shape [2] holds 2"
    )
