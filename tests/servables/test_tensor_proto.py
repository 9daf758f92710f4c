"""TensorProto <-> numpy: round trips for every dtype, TensorFlow's own converters as the
reference, the fill rule, and malformed protos."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ml_dtypes
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from loader.base import InvalidArgument
from loader.servables.tensor_proto import datatype_of, from_numpy, to_numpy

NUMERIC = [
    np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64,
    np.uint8, np.uint16, np.uint32, np.uint64, np.bool_, np.complex64, np.complex128,
]
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal shape, dtype and values (bit for bit, so NaNs and -0.0 count)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype == object:
        return a.tolist() == b.tolist()
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def proto(dtype: int, shape: list[int], **fields: Any) -> tensor_pb2.TensorProto:
    message = tensor_pb2.TensorProto(dtype=dtype, **fields)
    for size in shape:
        message.tensor_shape.dim.add().size = size
    return message


@pytest.mark.parametrize("dtype", NUMERIC, ids=lambda d: np.dtype(d).name)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_numeric_round_trips_agree_with_tensorflow(dtype: Any, data: st.DataObject) -> None:
    array = data.draw(hnp.arrays(dtype, SHAPES))
    for content in (False, True):
        message = from_numpy(array, tensor_content=content)
        assert bool(message.tensor_content) == (content and array.size > 0)
        assert same(to_numpy(message), array)
        assert same(tf.make_ndarray(message), array)  # TensorFlow reads what we write
    assert same(to_numpy(tf.make_tensor_proto(array)), array)  # and we read what it writes


@settings(max_examples=15, deadline=None)
@given(array=hnp.arrays(np.float32, SHAPES, elements=st.floats(-1e4, 1e4, width=32)))
def test_bfloat16_round_trips(array: np.ndarray) -> None:
    array = array.astype(ml_dtypes.bfloat16)
    for content in (False, True):
        message = from_numpy(array, tensor_content=content)
        assert message.dtype == types_pb2.DT_BFLOAT16
        assert same(to_numpy(message), array)
        assert same(tf.make_ndarray(message), array)


@settings(max_examples=25, deadline=None)
@given(values=st.lists(st.binary(max_size=8), max_size=6))
def test_strings_round_trip_as_bytes(values: list[bytes]) -> None:
    array = np.empty(len(values), object)
    array[:] = values
    message = from_numpy(array.reshape(1, -1))
    assert list(message.string_val) == values
    assert same(to_numpy(message), array.reshape(1, -1))
    assert same(to_numpy(tf.make_tensor_proto(values, dtype=tf.string)), array)


def test_text_is_written_as_utf8_bytes() -> None:
    message = from_numpy(np.array([["é", "b"]]))
    assert message.dtype == types_pb2.DT_STRING and list(message.string_val) == [b"\xc3\xa9", b"b"]
    assert to_numpy(message).tolist() == [[b"\xc3\xa9", b"b"]]


def test_typed_fields_are_the_default_answer_form() -> None:
    message = from_numpy(np.array([[3.0], [3.5]], np.float32))
    assert list(message.float_val) == [3.0, 3.5]
    assert [d.size for d in message.tensor_shape.dim] == [2, 1]
    assert not message.tensor_content


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (proto(types_pb2.DT_FLOAT, [2, 3], float_val=[7.0]), np.full((2, 3), 7.0, np.float32)),
        (proto(types_pb2.DT_INT64, [4], int64_val=[1, 2]), np.array([1, 2, 2, 2], np.int64)),
        (proto(types_pb2.DT_DOUBLE, [2, 2]), np.zeros((2, 2), np.float64)),
        (proto(types_pb2.DT_STRING, [3], string_val=[b"a"]), np.array([b"a"] * 3, object)),
        (proto(types_pb2.DT_BOOL, [2], bool_val=[True]), np.array([True, True])),
        (proto(types_pb2.DT_HALF, [2], half_val=[0x3C00]), np.ones(2, np.float16)),
        (proto(types_pb2.DT_COMPLEX64, [2], scomplex_val=[1, 2]), np.full(2, 1 + 2j, np.complex64)),
        (proto(types_pb2.DT_FLOAT, [], float_val=[1.5]), np.array(1.5, np.float32)),
    ],
    ids=["scalar-fills", "last-value-fills", "empty-is-zeros", "strings-fill", "bool",
         "half-bits", "complex-pairs", "scalar-shape"],
)
def test_typed_fields_follow_tensorflows_fill_rule(
    message: tensor_pb2.TensorProto, expected: np.ndarray
) -> None:
    assert same(to_numpy(message), expected)
    assert same(tf.make_ndarray(message), expected)


def test_where_tensorflows_python_and_cpp_differ_cpp_is_followed() -> None:
    # int8 travels in int_val and C++ casts it down; tf.make_ndarray raises OverflowError.
    message = proto(types_pb2.DT_INT8, [2], int_val=[300, -1])
    assert same(to_numpy(message), np.array([44, -1], np.int8))
    # C++ ignores the values of an empty tensor; tf.make_ndarray raises ValueError.
    message = proto(types_pb2.DT_FLOAT, [0, 3], float_val=[1.0, 2.0])
    assert same(to_numpy(message), np.zeros((0, 3), np.float32))


def test_string_tensor_content_uses_tensorflows_encoding() -> None:
    # Every length as a varint, then the bytes (tensorflow/core/platform/tensor_coding.cc).
    message = proto(types_pb2.DT_STRING, [3], tensor_content=b"\x01\x00\x02a" + b"bc")
    assert to_numpy(message).tolist() == [b"a", b"", b"bc"]


def test_tensor_content_wins_over_typed_fields() -> None:
    values = np.array([1.0, 2.0], np.float32)
    message = proto(types_pb2.DT_FLOAT, [2], tensor_content=values.tobytes(), float_val=[9.0])
    assert same(to_numpy(message), values)


@pytest.mark.parametrize(
    ("message", "complaint"),
    [
        (proto(types_pb2.DT_FLOAT, [2, 2], tensor_content=b"\0" * 12),
         "tensor_content has 12 bytes but a DT_FLOAT tensor of shape [2,2] needs 16"),
        (proto(types_pb2.DT_FLOAT, [2], float_val=[1, 2, 3]),
         "float_val has 3 values but a tensor of shape [2] holds 2"),
        (proto(types_pb2.DT_FLOAT, [-1, 2], float_val=[1]), "shape [-1,2] has a negative"),
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape={"unknown_rank": True}),
         "unknown rank"),
        (proto(types_pb2.DT_INVALID, [1]), "dtype DT_INVALID is not supported"),
        (proto(types_pb2.DT_RESOURCE, [1]), "dtype DT_RESOURCE is not supported"),
        (proto(77, [1]), "dtype DataType(77) is not supported"),
        (proto(types_pb2.DT_COMPLEX64, [1], scomplex_val=[1, 2, 3]), "come in pairs"),
        (proto(types_pb2.DT_STRING, [2], tensor_content=b"\x05ab"),
         "DT_STRING tensor is malformed"),
        (proto(types_pb2.DT_FLOAT, [1] * 65, float_val=[1]), "65 dimensions"),
        (proto(types_pb2.DT_FLOAT, [1 << 20, 1 << 20], float_val=[1]),
         "a DT_FLOAT tensor of shape [1048576,1048576] would take more than 1073741824 "
         "bytes"),
    ],
    ids=["content-size", "too-many-values", "negative-dim", "unknown-rank", "invalid-dtype",
         "resource-dtype", "unknown-dtype", "odd-complex", "bad-string-content", "rank",
         "huge-fill"],
)
def test_malformed_protos_are_invalid_arguments(
    message: tensor_pb2.TensorProto, complaint: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        to_numpy(message)
    assert complaint in raised.value.message


def test_arrays_without_a_tensorflow_type_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="no TensorFlow DataType"):
        datatype_of(np.array(["2020-01-01"], "datetime64[D]"))


def test_big_endian_arrays_are_written_little_endian() -> None:
    array = np.array([1.5, -2.0], ">f4")
    for content in (False, True):
        assert same(to_numpy(from_numpy(array, tensor_content=content)), array.astype("<f4"))


def test_filling_a_response_entry_in_place() -> None:
    from tensorflow_serving.apis import predict_pb2

    response = predict_pb2.PredictResponse()
    from_numpy(np.array([1.0], np.float64), proto=response.outputs["y"])
    assert response.outputs["y"].dtype == types_pb2.DT_DOUBLE
    assert list(response.outputs["y"].double_val) == [1.0]

