"""v2 REST bodies: the JSON head and binary tail of a request, and an answer's, as Triton
reads and writes them."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from loader.base import InvalidArgument
from loader.serving.rest.v2_json import encode_answer, header_length, parse_request, split
from loader.serving.v2.inference import (
    MAX_TENSORS,
    InferAnswer,
    InferRequest,
    OutputTensor,
    RequestedOutput,
    TooMany,
)


@pytest.mark.parametrize(("value", "size", "expected"), [
    (None, 10, None), (b"0", 10, 0), (b"10", 10, 10), (b" 4", 10, 4),
])
def test_the_header_length_is_within_the_body(value, size, expected):
    assert header_length(value, size) == expected


@pytest.mark.parametrize(("value", "words"), [
    (b"11", "inference header size should be in range (0, 10), got: 11"),
    (b"-1", "inference header size should be in range (0, 10), got: -1"),
    (b"1e3", "Unable to parse Inference-Header-Content-Length, got: 1e3"),
    (b"\xd9\xa1", "Unable to parse Inference-Header-Content-Length"),
    (b"", "Unable to parse Inference-Header-Content-Length"),
])
def test_a_bad_header_length_is_refused(value, words):
    with pytest.raises(InvalidArgument, match=words.replace("(", r"\(").replace(")", r"\)")):
        header_length(value, 10)


def test_raw_inputs_are_views_of_the_tail_in_input_order():
    head = orjson.dumps({"id": "q", "inputs": [
        {"name": "a", "datatype": "INT32", "shape": [2], "parameters": {"binary_data_size": 8}},
        {"name": "b", "datatype": "FP32", "shape": [1], "data": [1.5]},
        {"name": "c", "datatype": "UINT8", "shape": [3], "parameters": {"binary_data_size": 3}},
    ], "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
        "parameters": {"binary_data_output": False, "signature_name": "s"}})
    body = head + np.array([7, -7], "<i4").tobytes() + b"\x01\x02\x03"
    request = parse_request("m", 3, *split(body, len(head)))
    a, b, c = request.inputs
    assert bytes(a.raw or b"") == np.array([7, -7], "<i4").tobytes() and a.shape == (2,)
    assert b.data == [1.5] and b.raw is None
    assert bytes(c.raw or b"") == b"\x01\x02\x03"
    assert [(o.name, o.binary_data) for o in request.outputs] == [("y", True), ("z", None)]
    assert (request.id, request.version, request.signature_name) == ("q", 3, "s")


@pytest.mark.parametrize(("document", "words"), [
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}] * 4097},
     "the request has 4097 inputs; at most 4096 are served"),
    ({"inputs": [], "outputs": [{"name": "y"}] * 4097},
     "the request has 4097 requested outputs; at most 4096 are served"),
])
def test_the_inputs_and_outputs_a_body_names_are_bounded(document, words):
    with pytest.raises(TooMany) as refused:
        parse_request("m", None, orjson.dumps(document), memoryview(b""))
    assert refused.value.message == words


def test_the_most_a_body_may_name_is_served():
    head = orjson.dumps({"inputs": [{"name": f"x{i}", "datatype": "FP32", "shape": [1],
                                     "data": [1.0]} for i in range(MAX_TENSORS)]})
    assert len(parse_request("m", None, head, memoryview(b"")).inputs) == MAX_TENSORS


def answered(*arrays: np.ndarray) -> InferAnswer:
    tensors = [OutputTensor(f"o{i}", dt, a.shape, a)
               for i, (a, dt) in enumerate(zip(arrays, ("FP32", "BYTES", "INT64"), strict=False))]
    return InferAnswer("m", "4", None, tensors)


def test_an_answer_is_json_unless_binary_is_asked_for():
    answer = answered(np.array([[1.5, 2.0]], np.float32))
    body, length = encode_answer(answer, InferRequest("m", None, []))
    assert length is None
    assert orjson.loads(body) == {"model_name": "m", "model_version": "4", "outputs": [
        {"name": "o0", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.0]}]}


def test_binary_outputs_follow_the_head_in_order():
    answer = answered(np.array([1.5], np.float32), np.array([b"ab", b""], object),
                      np.array([3], np.int64))
    request = InferRequest("m", None, [], [RequestedOutput("o2", False)],
                           parameters={"binary_data_output": True})
    body, length = encode_answer(answer, request)
    assert length is not None
    head = orjson.loads(body[:length])
    assert [o.get("parameters") for o in head["outputs"]] == [
        {"binary_data_size": 4}, {"binary_data_size": 10}, None]
    assert head["outputs"][2]["data"] == [3]
    assert body[length:] == np.float32(1.5).tobytes() + b"\x02\0\0\0ab\0\0\0\0"


def test_an_empty_binary_output_sends_no_binary_part_as_in_triton():
    answer = answered(np.zeros((0, 2), np.float32))
    body, length = encode_answer(answer, InferRequest(
        "m", None, [], parameters={"binary_data_output": True}))
    assert length is None
    assert orjson.loads(body)["outputs"][0]["parameters"] == {"binary_data_size": 0}
