"""v2 requests against a signature: Triton's words for what does not fit, checked before
anything is decoded; answers in the order asked for."""

from __future__ import annotations

import numpy as np
import pytest

from loader.base import InvalidArgument, SignatureInfo, TensorInfo
from loader.serving.v2 import inference
from loader.serving.v2.inference import InferRequest, InputTensor, RequestedOutput

SIGNATURE = SignatureInfo(
    "tensorflow/serving/predict",
    inputs={"x": TensorInfo("x:0", "DT_FLOAT", (-1, 3)), "s": TensorInfo("s:0", "DT_STRING", None)},
    outputs={"y": TensorInfo("y:0", "DT_FLOAT", (-1, 1)), "z": TensorInfo("z:0", "DT_INT64", (-1,))},
)
X = InputTensor("x", "FP32", (2, 3), data=[1, 2, 3, 4, 5, 6])
S = InputTensor("s", "BYTES", (1,), data=["a"])


def request(*inputs: InputTensor, outputs: tuple[RequestedOutput, ...] = ()) -> InferRequest:
    return InferRequest("m", None, inputs, outputs, id="7")


def test_a_request_that_fits_passes_and_decodes() -> None:
    fitting = request(X, S)
    inference.check(fitting, SIGNATURE, "m")
    inputs = inference.decode_inputs(fitting)
    assert inputs["x"].shape == (2, 3) and inputs["s"].tolist() == [b"a"]
    assert inference.output_keys(fitting) is None


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (request(InputTensor("x", "FP32", (2, 4)), S),
         "unexpected shape for input 'x' for model 'm'. Expected [-1,3], got [2,4]"),
        (request(InputTensor("x", "FP32", (6,)), S),
         "unexpected shape for input 'x' for model 'm'. Expected [-1,3], got [6]"),
        (request(InputTensor("x", "FP64", (2, 3)), S),
         "inference input 'x' data-type is 'FP64', but model 'm' expects 'FP32'"),
        (request(X, S, InputTensor("w", "FP32", (1,))),
         "unexpected inference input 'w' for model 'm'"),
        (request(X),
         "expected 2 inputs but got 1 inputs for model 'm'. Got input(s) ['x'], but missing "
         "required input(s) ['s']. Please provide all required input(s)."),
        (request(X, X, S), "input 'x' given more than once for model 'm'"),
        (request(X, S, outputs=(RequestedOutput("q"),)),
         "unexpected inference output 'q' for model 'm'"),
    ],
)
def test_what_does_not_fit_is_named(bad: InferRequest, words: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        inference.check(bad, SIGNATURE, "m")
    assert refused.value.message == words


def test_the_first_input_given_twice_is_named_in_one_pass() -> None:
    many = [InputTensor(f"i{n}", "FP32", (1,), data=[1.0]) for n in range(4096)]
    repeated = request(*many, InputTensor("i7", "FP32", (1,), data=[1.0]), many[3])
    with pytest.raises(InvalidArgument) as refused:
        inference.check(repeated, SIGNATURE, "m")
    assert refused.value.message == "input 'i3' given more than once for model 'm'"


def test_the_signature_is_a_request_parameter() -> None:
    assert request(X).signature_name == ""
    named = InferRequest("m", 2, [X], parameters={"signature_name": "other"})
    assert named.signature_name == "other"
    with pytest.raises(InvalidArgument, match="signature_name"):
        _ = InferRequest("m", 2, [X], parameters={"signature_name": 3}).signature_name


def test_answers_keep_the_order_asked_for_and_the_signature_datatypes() -> None:
    asked = request(X, S, outputs=(RequestedOutput("z"), RequestedOutput("y", True)))
    outputs = {"y": np.ones((2, 1), np.float32), "z": np.arange(2)}
    answered = inference.answer(asked, 4, SIGNATURE, outputs)
    assert (answered.model_name, answered.model_version, answered.id) == ("m", "4", "7")
    assert [(o.name, o.datatype, o.shape) for o in answered.outputs] == [
        ("z", "INT64", (2,)), ("y", "FP32", (2, 1))
    ]
    assert inference.output_keys(asked) == ["z", "y"]


def test_decoded_sizes_are_known_before_decoding() -> None:
    raw = InputTensor("x", "FP32", (2, 3), raw=b"\0" * 24)
    assert inference.decoded_nbytes(request(raw, S)) == 24 + 41


def test_metadata_names_triton_platform_and_extensions() -> None:
    assert inference.PLATFORM == "tensorflow_savedmodel"
    served = inference.server_metadata([*inference.EXTENSIONS, "model_repository"])
    assert served["name"] == "modelwatch" and "binary_tensor_data" in served["extensions"]
    assert "model_repository" in served["extensions"]
