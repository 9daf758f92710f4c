"""v2 datatypes: the tables, raw and JSON tensors both ways, and every size checked before
anything is allocated."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from loader.base import InvalidArgument
from loader.serving.v2 import datatypes
from loader.serving.v2.datatypes import DATATYPES

FIXED = sorted(name for name in DATATYPES if name != "BYTES")


def test_signature_dtypes_name_their_v2_datatypes() -> None:
    assert datatypes.from_tf("DT_FLOAT") == "FP32"
    assert datatypes.from_tf("DT_HALF") == "FP16"
    assert datatypes.from_tf("DT_STRING") == "BYTES"
    assert datatypes.from_tf("DT_UINT64") == "UINT64"
    assert datatypes.from_tf("DT_BFLOAT16") == "BF16"
    assert datatypes.from_tf("DT_RESOURCE") == "DT_RESOURCE"  # no v2 name: TensorFlow's
    with pytest.raises(InvalidArgument, match="invalid datatype 'BF16'"):
        datatypes.numpy_dtype("BF16")


@pytest.mark.parametrize("name", FIXED)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_raw_tensors_round_trip_little_endian(name: str, data: Any) -> None:
    dtype = DATATYPES[name]
    array = data.draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0)))
    raw = datatypes.to_raw(array, name)
    assert raw == array.astype(dtype.newbyteorder("<")).tobytes()
    back = datatypes.from_raw(name, array.shape, raw, "input 'x'")
    assert back.dtype == dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert datatypes.of_array(back) == name


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=20), max_size=12))
def test_bytes_tensors_are_length_prefixed_as_triton_writes_them(items: list[bytes]) -> None:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    raw = datatypes.to_raw(array, "BYTES")
    assert raw == b"".join(struct.pack("<I", len(item)) + item for item in items)
    back = datatypes.from_raw("BYTES", (len(items),), raw, "input 'x'")
    assert back.tolist() == items


def test_raw_bytes_must_be_exactly_what_the_shape_needs() -> None:
    raw = np.arange(6, dtype="<f4").tobytes()
    with pytest.raises(InvalidArgument, match="unexpected total byte size 24 for input 'x', "
                       "expecting 28"):
        datatypes.from_raw("FP32", (7,), raw, "input 'x'")
    with pytest.raises(InvalidArgument, match="expecting 20"):
        datatypes.from_raw("FP32", (5,), raw, "input 'x'")
    assert datatypes.from_raw("FP32", (2, 3), raw, "input 'x'").shape == (2, 3)


@pytest.mark.parametrize(
    ("raw", "shape", "words"),
    [
        (struct.pack("<I", 3) + b"abc", (2,), "cannot hold 2 elements"),
        (struct.pack("<I", 9) + b"abc", (1,), "past the tensor's end"),
        (struct.pack("<I", 1) + b"a" + b"\0\0\0", (1,), "unexpected total byte size 8"),
        (struct.pack("<I", 0) + b"\0\0", (2,), "cannot hold 2 elements"),
        (struct.pack("<I", 0) * 2 + b"\0\0", (2,), "unexpected total byte size 10"),
    ],
)
def test_bad_bytes_tensors_are_refused(raw: bytes, shape: tuple[int, ...], words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        datatypes.from_raw("BYTES", shape, raw, "input 'x'")


@pytest.mark.parametrize(
    "shape",
    [(2**62, 2**62), (-1, 3), (2**40, 2**40, 0), tuple([1] * 65)],
)
def test_shapes_are_bounded_before_any_allocation(shape: tuple[int, ...]) -> None:
    # (2**40, 2**40, 0) has no elements, but its partial product is past any tensor served.
    with pytest.raises(InvalidArgument):
        datatypes.from_raw("FP32", shape, b"\0" * 16, "input 'x'")
    with pytest.raises(InvalidArgument):
        datatypes.from_raw("BYTES", shape, b"\0" * 16, "input 'x'")
    with pytest.raises(InvalidArgument):
        datatypes.from_json("INT64", shape, [1, 2], "input 'x'")


def test_a_huge_bytes_shape_with_tiny_data_allocates_nothing() -> None:
    with pytest.raises(InvalidArgument, match="cannot hold"):
        datatypes.from_raw("BYTES", (2**50,), b"\0" * 8, "input 'x'")


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("FP32", [[1, 2.5], [3, 4]], np.array([[1, 2.5], [3, 4]], np.float32)),
        ("FP32", [1, 2.5, 3, 4], np.array([[1, 2.5], [3, 4]], np.float32)),  # flat
        ("INT8", [[-128, 127], [0, 1]], np.array([[-128, 127], [0, 1]], np.int8)),
        ("UINT64", [2**64 - 1, 0, 1, 2], np.array([[2**64 - 1, 0], [1, 2]], np.uint64)),
        ("BOOL", [True, False, False, True], np.array([[1, 0], [0, 1]], np.bool_)),
        ("FP16", [0.5, 1, 2, 65504], np.array([[0.5, 1], [2, 65504]], np.float16)),
    ],
)
def test_json_data_flat_or_nested_reads_row_major(
    name: str, data: Any, expected: np.ndarray
) -> None:
    array = datatypes.from_json(name, (2, 2), data, "input 'x'")
    assert array.dtype == expected.dtype
    np.testing.assert_array_equal(array, expected)
    assert datatypes.to_json(array, name, "output 'y'") == expected.reshape(-1).tolist()


def test_json_bytes_are_text() -> None:
    array = datatypes.from_json("BYTES", (1, 2), ["héllo", ""], "input 'x'")
    assert array.dtype == object and array.tolist() == [["héllo".encode(), b""]]
    assert datatypes.to_json(array, "BYTES", "output 'y'") == ["héllo", ""]
    with pytest.raises(InvalidArgument, match="not UTF-8 text: ask for it as binary data"):
        datatypes.to_json(np.array([b"\xff"], dtype=object), "BYTES", "output 'y'")


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("FP32", [1, 2, 3], "shape \\[2,2\\] needs 4, got 3"),
        ("FP32", [[1, 2], [3, 4], [5]], "needs 4, got 5"),
        ("FP32", [1, 2, "3", 4], "expected FP32 values, got '3'"),
        ("INT32", [1, 2, 3.5, 4], "expected INT32 values, got 3.5"),
        ("INT32", [1, 2, True, 4], "expected INT32 values, got True"),
        ("BOOL", [1, 0, 1, 0], "expected BOOL values, got 1"),
        ("BYTES", ["a", "b", 3, "d"], "expected BYTES values, got 3"),
        ("INT8", [1, 2, 300, 4], "out of range for INT8"),
        ("UINT8", [1, 2, -1, 4], "out of range for UINT8"),
    ],
)
def test_bad_json_data_is_refused(name: str, data: Any, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        datatypes.from_json(name, (2, 2), data, "input 'x'")


def test_deep_json_nesting_is_flattened_without_recursion() -> None:
    data: Any = 1.0
    for _ in range(5000):
        data = [data]
    assert datatypes.from_json("FP64", (1,), data, "input 'x'").tolist() == [1.0]


def test_decoded_sizes_come_from_the_shape() -> None:
    assert datatypes.decoded_nbytes("FP64", (3, 4), 96) == 96
    assert datatypes.decoded_nbytes("BYTES", (2,), 10) == 10 + 2 * datatypes.BYTES_ELEMENT_OVERHEAD
