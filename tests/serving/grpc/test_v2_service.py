"""The gRPC adapter's own part of the Open Inference Protocol: protos to the core's
requests (raw or typed contents, parameters, versions) and answers to protos."""

from __future__ import annotations

import numpy as np
import pytest

from loader.base import InvalidArgument, NotFound
from loader.serving.grpc import open_inference_grpc_pb2 as pb
from loader.serving.grpc.v2_service import infer_request, infer_response, version_number
from loader.serving.v2.inference import InferAnswer, OutputTensor


def request(**fields: object) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="m", **fields)


def test_raw_contents_typed_contents_and_parameters_become_the_cores_request() -> None:
    raw = request(model_version="3", id="r", raw_input_contents=[b"\1\0", b"\0\0\0\0"])
    raw.inputs.add(name="a", datatype="INT16", shape=[1])
    raw.inputs.add(name="b", datatype="FP32", shape=[1, 1])
    raw.parameters["signature_name"].string_param = "other"
    raw.outputs.add(name="y")
    asked = infer_request(raw, lambda nbytes: None)
    assert (asked.model, asked.version, asked.id, asked.signature_name) == ("m", 3, "r", "other")
    assert [(t.name, t.shape, bytes(t.raw or b"")) for t in asked.inputs] == [
        ("a", (1,), b"\1\0"), ("b", (1, 1), b"\0\0\0\0")]
    assert [o.name for o in asked.outputs] == ["y"]

    typed = request()
    typed.inputs.add(name="a", datatype="UINT8", shape=[2]).contents.uint_contents.extend([1, 2])
    typed.inputs.add(name="s", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"x")
    asked = infer_request(typed, lambda nbytes: None)
    (a, s) = asked.inputs
    assert (a.data, a.raw, s.data, s.raw) == (None, b"\1\2", [b"x"], None)
    assert asked.version is None and asked.id is None


@pytest.mark.parametrize(
    ("fields", "datatype", "words"),
    [
        ({"raw_input_contents": [b"", b""]}, "FP32",
         "expected 1 raw_input_contents, one for each input, for model 'm', got 2"),
        ({}, "FP16", "input 'x' is FP16, which has no typed contents: send it in "
                     "raw_input_contents (model 'm')"),
    ],
)
def test_what_the_adapter_refuses(fields: dict[str, object], datatype: str, words: str) -> None:
    bad = request(**fields)
    bad.inputs.add(name="x", datatype=datatype, shape=[1])
    with pytest.raises(InvalidArgument) as refused:
        infer_request(bad, lambda nbytes: None)
    assert refused.value.message == words


def test_typed_contents_are_sized_from_the_shape_before_conversion_and_range_checked() -> None:
    packed = request()  # 10**6 INT64 zeros: about a megabyte on the wire, 8 MB as an array
    packed.inputs.add(name="x", datatype="INT64", shape=[10**6]).contents.int64_contents.extend(
        [0] * 10**6)
    seen: list[int] = []

    def limit(nbytes: int) -> None:
        seen.append(nbytes)
        raise InvalidArgument("too large")

    with pytest.raises(InvalidArgument, match="too large"):
        infer_request(packed, limit)
    assert seen == [8 * 10**6]
    wrong_count = request()
    wrong_count.inputs.add(name="x", datatype="FP32", shape=[3]).contents.fp32_contents.append(1)
    with pytest.raises(InvalidArgument, match=r"shape \[3\] needs 3, got 1"):
        infer_request(wrong_count, lambda nbytes: None)
    wide = request()
    wide.inputs.add(name="x", datatype="INT8", shape=[2]).contents.int_contents.extend([1, 300])
    with pytest.raises(InvalidArgument, match="out of range for INT8"):
        infer_request(wide, lambda nbytes: None)


def test_a_version_that_is_no_number_names_none() -> None:
    assert version_number("m", "") is None and version_number("m", "12") == 12
    for text in ("latest", "-1", "1.0"):
        with pytest.raises(NotFound, match=f"'m' version {text} is not found"):
            version_number("m", text)


def test_answers_go_out_as_raw_contents_in_order() -> None:
    answer = InferAnswer("m", "2", "r", [
        OutputTensor("s", "BYTES", (2,), np.array([b"ab", b""], dtype=object)),
        OutputTensor("y", "FP32", (1, 2), np.array([[1.0, 2.0]], np.float32)),
    ])
    response = infer_response(answer)
    assert (response.model_name, response.model_version, response.id) == ("m", "2", "r")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("s", "BYTES", [2]), ("y", "FP32", [1, 2])]
    assert response.raw_output_contents[0] == b"\2\0\0\0ab\0\0\0\0"
    assert np.frombuffer(response.raw_output_contents[1], "<f4").tolist() == [1.0, 2.0]
