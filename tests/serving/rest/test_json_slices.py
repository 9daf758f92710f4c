"""Large predict bodies decoded a slice at a time give exactly what decoding them whole
gives, and every body the slices cannot vouch for is left to the whole-body decoder (so a
bad request still gets TF Serving's error)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from loader.base import InvalidArgument, SignatureInfo, TensorInfo
from loader.serving.rest import json_slices
from loader.serving.rest.json_predict import decode_predict_request
from loader.serving.rest.json_slices import decode_in_slices, split_body
from loader.serving.rest.json_values import parse_body


def signature(dtype: str = "DT_FLOAT", *aliases: str) -> SignatureInfo:
    return SignatureInfo("tensorflow/serving/predict", {
        alias: TensorInfo(f"{alias}:0", dtype, None) for alias in aliases or ("x",)
    })


@pytest.fixture(autouse=True)
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_slices, "SLICE_BYTES", 8)  # many slices even for short bodies


def whole(body: bytes, sig: SignatureInfo):
    return decode_predict_request(parse_body(body), sig)


@pytest.mark.parametrize(
    ("body", "dtype"),
    [
        (b'{"instances": [[1.5], [2], [-3e2], [NaN], [Infinity], [-Infinity]]}', "DT_FLOAT"),
        (b'{"instances": [1, 2.5, 3, 4, 5, 6, 7, 8, 9, 10, 11]}', "DT_DOUBLE"),
        (b'{"instances": [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]}', "DT_INT64"),
        (b'{"instances": [[[1], [2]], [[3], [4]], [[5], [6]]]}', "DT_INT32"),
        (b'{"instances": [true, false, true, true, false, false]}', "DT_BOOL"),
        (b'{"inputs": [[1.5, 2.5], [3.5, 4.5], [5.5, 6.5], [7.5, 8.5]]}', "DT_FLOAT"),
        (b' { "signature_name" : "sig", "instances" : [ [1] , [2] , [3] , [4] ] } ', "DT_FLOAT"),
        (b'{"instances": [[1], [2], [3], [4], [5]], "signature_name": ""}', "DT_FLOAT"),
        (b'{"instances": [[18446744073709551616], [1], [2], [3]]}', "DT_DOUBLE"),
    ],
    ids=["nan-rows", "scalars", "int-rows", "rank-3", "bools", "columnar", "name-first",
         "name-last", "wide-int"],
)
def test_slices_decode_as_the_whole_body_does(body: bytes, dtype: str) -> None:
    sig = signature(dtype)
    sliced = split_body(body)
    assert sliced is not None and len(sliced.commas) >= 2
    got, expected = decode_in_slices(sliced, sig), whole(body, sig)
    assert got is not None
    assert (got.signature_name, got.row_format) == (expected.signature_name, expected.row_format)
    assert got.inputs.keys() == expected.inputs.keys() == {"x"}
    a, b = got.inputs["x"], expected.inputs["x"]
    assert (a.shape, a.dtype) == (b.shape, b.dtype)
    assert np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [["a"], ["b"], ["c"]]}',
        b'{"instances": [{"x": 1}, {"x": 2}, {"x": 3}]}',
        b'{"instances": [[1], [2], [3]], "other": 1}',
        b'{"signature_name": "a", "instances": [[1], [2]], "signature_name": "b"}',
        b'{"instances": [1, 2, 3 4]}',
        b'{"instances": [[1]]]}',
        b'{"instances": [[1], [2]]',
    ],
    ids=["strings", "objects", "other-key", "name-twice", "missing-comma", "unbalanced",
         "unclosed"],
)
def test_bodies_that_are_not_one_array_of_numbers_are_left_whole(body: bytes) -> None:
    sliced = split_body(body)
    assert sliced is None or decode_in_slices(sliced, signature()) is None


@pytest.mark.parametrize(
    ("body", "sig"),
    [
        (b'{"instances": [[1, 2], [3, 4], [5, 6], [7, 8, 9]]}', signature()),
        (b'{"instances": [[1], [2], [3], [4], [5],]}', signature()),
        (b'{"instances": [[1], [2], , [3], [4], [5]]}', signature()),
        (b'{"instances": [[1], [2], [3], [4], [5e999]]}', signature()),
        (b'{"instances": [[1], [2], [3], [4], [1.5]]}', signature("DT_INT32")),
        (b'{"instances": [[1], [2], [3], [4], [16777217]]}', signature()),
        (b'{"instances": [ ]}', signature()),
        (b'{"instances": [[1], [2], [3]]}', signature("DT_FLOAT", "x", "y")),
        (b'{"inputs": [[1], [2], [3], [[4]]]}', signature()),
    ],
    ids=["ragged", "trailing-comma", "empty-value", "too-big", "float-for-int", "lossy",
         "empty", "two-inputs", "ragged-columnar"],
)
def test_a_bad_body_gets_the_whole_body_decoders_error(body: bytes, sig: SignatureInfo) -> None:
    # None sends the body to the whole-body decoder (predictions.py), whose error it gets.
    sliced = split_body(body)
    assert sliced is None or decode_in_slices(sliced, sig) is None
    with pytest.raises(InvalidArgument):
        whole(body, sig)


def test_a_million_rows_of_nan_never_become_a_million_lists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = 1_000_000
    body = b'{"instances": [' + b",".join([b"[NaN]"] * rows) + b"]}"
    monkeypatch.setattr(json_slices, "SLICE_BYTES", 64 * 1024)  # as shipped
    tracemalloc.start()
    try:
        sliced = split_body(body)
        assert sliced is not None
        request = decode_in_slices(sliced, signature())
        assert request is not None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert request.inputs["x"].shape == (rows, 1)
    # The output is 4 MB (float32) from 6 MB of body; whole, the parse took ~125 MB.
    assert peak < 12 * len(body), f"peak {peak >> 20} MiB"
