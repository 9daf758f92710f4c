"""The REST JSON codecs, against TF Serving's json_tensor_test.cc and its README examples.

Cases named `tfs_<Test>` follow the test of that name in TF Serving's
`tensorflow_serving/util/json_tensor_test.cc`; classify/regress (json_examples) and the
parsing layer they share (json_values) are tested here too, mostly through the codecs.
"""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from loader.base import Code, Feature, InvalidArgument, ServingError, SignatureInfo, TensorInfo
from loader.serving.rest import json_predict, json_tensors
from loader.serving.rest.json_examples import (
    decode_examples_request,
    encode_classify_response,
    encode_regress_response,
)
from loader.serving.rest.json_predict import decode_predict_request
from loader.serving.rest.json_responses import encode_predict_response
from loader.serving.rest.json_values import json_value_to_string, parse_body, signature_name_of

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sig(**dtypes: str) -> SignatureInfo:
    """A predict signature whose inputs have the given dtypes (shapes are not checked)."""
    inputs = {name: TensorInfo(f"{name}:0", dtype, None) for name, dtype in dtypes.items()}
    return SignatureInfo("tensorflow/serving/predict", inputs, {})


def decode(body: str | bytes, signature: SignatureInfo) -> json_predict.PredictRequest:
    return decode_predict_request(body.encode() if isinstance(body, str) else body, signature)


def error_of(call: Any, *args: Any) -> str:
    with pytest.raises(InvalidArgument) as info:
        call(*args)
    return info.value.message


def same_json(actual: bytes, expected: str) -> bool:
    """Equal as JSON documents (NaN and Infinity tokens allowed, NaN equal to NaN)."""
    canon = lambda text: json.dumps(json.loads(text), sort_keys=True)  # noqa: E731
    return canon(actual) == canon(expected)


def assert_array(actual: np.ndarray, expected: Any, dtype: Any) -> None:
    expected = np.asarray(expected, dtype=dtype)
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    if actual.dtype.kind == "f":
        np.testing.assert_array_equal(actual, expected)  # NaN matches NaN
    else:
        assert actual.tolist() == expected.tolist()


# --- README: half_plus_two -------------------------------------------------------------

HALF_PLUS_TWO = SignatureInfo(
    "tensorflow/serving/predict",
    {"x": TensorInfo("x:0", "DT_FLOAT", (-1, 1))},
    {"y": TensorInfo("y:0", "DT_FLOAT", (-1, 1))},
)


def test_half_plus_two_row_request_decodes_to_a_1d_float32_batch():
    request = decode('{"instances": [2.0, 3.0, 4.0]}', HALF_PLUS_TWO)
    assert request.signature_name == "serving_default"
    assert request.row_format
    assert_array(request.inputs["x"], [2.0, 3.0, 4.0], np.float32)


def test_half_plus_two_columnar_request():
    request = decode('{"inputs": [2.0, 3.0, 4.0]}', HALF_PLUS_TWO)
    assert not request.row_format
    assert_array(request.inputs["x"], [2.0, 3.0, 4.0], np.float32)


def test_half_plus_two_responses():
    y = np.array([3.0, 3.5, 4.0], dtype=np.float32)
    assert encode_predict_response({"y": y}, row_format=True) == b'{"predictions":[3.0,3.5,4.0]}'
    assert encode_predict_response({"y": y}, row_format=False) == b'{"outputs":[3.0,3.5,4.0]}'


def test_half_plus_two_classify_and_regress_responses():
    assert encode_classify_response([[("", 3.0)]]) == b'{"results":[[["",3.0]]]}'
    assert encode_regress_response([3.0]) == b'{"results":[3.0]}'


def test_parse_once_then_resolve_the_signature():
    doc = parse_body(b'{"signature_name": "predict_images", "instances": [[1, 2]]}')
    assert signature_name_of(doc) == "predict_images"
    assert signature_name_of({"signature_name": ""}) == "serving_default"
    request = decode_predict_request(doc, sig(default="DT_INT32"))
    assert request.signature_name == "predict_images"  # tfs_SingleUnnamedTensorWithSignature
    assert_array(request.inputs["default"], [[1, 2]], np.int32)


# --- requests that decode --------------------------------------------------------------

@pytest.mark.parametrize(
    ("case", "signature", "body", "expected"),
    [
        ("tfs_SingleUnnamedTensor", sig(default="DT_INT32"),
         '{"instances": [[1,2],[3,4],[5,6]]}', {"default": ([[1, 2], [3, 4], [5, 6]], np.int32)}),
        ("tfs_MixedInputForFloatTensor", sig(default="DT_FLOAT"),
         '{"instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}',
         {"default": ([1, 2, 3, 4, 5.003, 0.007, 0], np.float32)}),
        ("tfs_MixedInputForDoubleTensor", sig(default="DT_DOUBLE"),
         '{"instances": [1.0, 2, 3, 4, 0.662, 0, 0.0]}',
         {"default": ([1, 2, 3, 4, 0.662, 0, 0], np.float64)}),
        ("tfs_SingleUnnamedTensorBase64Scalars", sig(default="DT_STRING"),
         '{"instances": [ { "b64" : "aGVsbG8=" }, { "b64": "d29ybGQ=" } ]}',
         {"default": ([b"hello", b"world"], object)}),
        ("tfs_SingleUnnamedTensorBase64Lists", sig(default="DT_STRING"),
         '{"instances": [ [{ "b64" : "aGVsbG8=" }], [{ "b64": "d29ybGQ=" }] ]}',
         {"default": ([[b"hello"], [b"world"]], object)}),
        ("tfs_SingleNamedTensorBase64", sig(default="DT_STRING"),
         '{"instances": [{"default": [ [{ "b64" : "aGVsbG8=" }], [{ "b64": "d29ybGQ=" }] ]}]}',
         {"default": ([[[b"hello"], [b"world"]]], object)}),
        ("tfs_MultipleNamedTensor",
         sig(int_tensor="DT_INT32", str_tensor="DT_STRING", float_tensor="DT_FLOAT",
             dbl_tensor="DT_DOUBLE"),
         """{"instances": [
              {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"],
               "float_tensor": [1.0, NaN], "dbl_tensor": [NaN]},
              {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"],
               "float_tensor": [2.0, Infinity], "dbl_tensor": [2.0]}]}""",
         {"int_tensor": ([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]], np.int32),
          "str_tensor": ([[b"foo", b"bar"], [b"baz", b"bat"]], object),
          "float_tensor": ([[1.0, math.nan], [2.0, math.inf]], np.float32),
          "dbl_tensor": ([[math.nan], [2.0]], np.float64)}),
        ("tfs_SingleUnnamedTensorColumnarFormat", sig(int_tensor="DT_INT32"),
         '{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]]}}',
         {"int_tensor": ([[[1, 2], [3, 4], [5, 6]]], np.int32)}),
        ("tfs_SingleUnnamedTensorColumnarFormat/bare", sig(int_tensor="DT_INT32"),
         '{"inputs": [[[1,2],[3,4],[5,6]]]}',
         {"int_tensor": ([[[1, 2], [3, 4], [5, 6]]], np.int32)}),
        ("tfs_MultipleNamedTensorColumnarFormat",
         sig(int_tensor="DT_INT32", str_tensor="DT_STRING", bin_tensor="DT_STRING"),
         """{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]], "str_tensor": ["foo", "bar"],
                        "bin_tensor": { "b64" : "aGVsbG8=" }}}""",
         {"int_tensor": ([[[1, 2], [3, 4], [5, 6]]], np.int32),
          "str_tensor": ([b"foo", b"bar"], object),
          "bin_tensor": (b"hello", object)}),
        ("columnar scalar", sig(x="DT_FLOAT"), '{"inputs": 2}', {"x": (2.0, np.float32)}),
        ("columnar extra keys are ignored", sig(x="DT_INT64"),
         '{"inputs": {"x": [1], "unused": "z"}}', {"x": ([1], np.int64)}),
        ("empty lists", sig(x="DT_FLOAT"), '{"instances": [[], []]}',
         {"x": (np.zeros((2, 0)), np.float32)}),
        ("bools", sig(x="DT_BOOL"), '{"instances": [[true], [false]]}',
         {"x": ([[True], [False]], np.bool_)}),
        ("uint64 range", sig(x="DT_UINT64"), '{"inputs": [0, 18446744073709551615]}',
         {"x": ([0, 2**64 - 1], np.uint64)}),
        ("int64 range", sig(x="DT_INT64"),
         '{"inputs": [-9223372036854775808, 9223372036854775807]}',
         {"x": ([-(2**63), 2**63 - 1], np.int64)}),
        ("largest exact float ints", sig(x="DT_FLOAT"), '{"inputs": [16777215, -16777215]}',
         {"x": ([16777215, -16777215], np.float32)}),
        ("half", sig(x="DT_HALF"), '{"inputs": [1.5, 65504.0, -Infinity]}',
         {"x": ([1.5, 65504, -math.inf], np.float16)}),
        ("uint16", sig(x="DT_UINT16"), '{"inputs": [0, 65535]}', {"x": ([0, 65535], np.uint16)}),
        ("utf-8 strings", sig(x="DT_STRING"), '{"inputs": ["h\\u00e9", "\\u00e9t\\u00e9"]}',
         {"x": (["hé".encode(), "été".encode()], object)}),
        ("b64 without padding", sig(x="DT_STRING"), '{"inputs": {"b64": "aGVsbG8"}}',
         {"x": (b"hello", object)}),
        ("one input, row objects", sig(x="DT_INT32"), '{"instances": [{"x": 1}, {"x": 2}]}',
         {"x": ([1, 2], np.int32)}),
    ],
)
def test_decode(case, signature, body, expected):
    request = decode(body, signature)
    assert list(request.inputs) == list(signature.inputs)
    for name, (values, dtype) in expected.items():
        if dtype is object:
            assert request.inputs[name].dtype == object
            assert request.inputs[name].tolist() == values
        else:
            assert_array(request.inputs[name], values, dtype)


@pytest.mark.parametrize(
    ("b64", "expected"),
    [  # absl::Base64Unescape: whitespace skipped, padding optional or exact, "." pads too.
        ("aGVsbG8=", b"hello"), ("aGVsbG8", b"hello"), ("aGVs bG8=\n", b"hello"),
        ("aGVsbG8.", b"hello"), ("aGk=", b"hi"), ("aGk", b"hi"), ("", b""),
        ("aGVsbG8==", None), ("aGVs=", None), ("a", None), ("aGk-", None), ("aG_k", None),
    ],
)
def test_b64_rules(b64, expected):
    body = json.dumps({"inputs": {"b64": b64}})
    if expected is None:
        assert error_of(decode, body, sig(s="DT_STRING")) == "Unable to base64 decode"
    else:
        assert decode(body, sig(s="DT_STRING")).inputs["s"].tolist() == expected


def test_deep_objects_in_values_are_quoted_without_recursion():
    value: Any = 1
    for _ in range(900):
        value = {"a": value}
    message = error_of(decode, json.dumps({"inputs": [value]}), FLOAT)
    assert message.startswith('JSON Value: {\n    "a": {\n        "a": {\n')
    assert message.endswith("... Type: Object is not of expected type: float")


def test_invalid_utf8_in_strings_is_kept_byte_for_byte():
    # rapidjson does not validate encoding, so TF Serving passes such bytes through.
    request = decode(b'{"instances": ["a\xff\xfeb"]}', sig(s="DT_STRING"))
    assert request.inputs["s"].tolist() == [b"a\xff\xfeb"]


def test_bfloat16_decodes_to_bfloat16_when_ml_dtypes_is_present():
    request = decode('{"inputs": [1.5, 2]}', sig(x="DT_BFLOAT16"))
    assert request.inputs["x"].dtype.name in ("bfloat16", "float32")
    assert request.inputs["x"].astype(np.float32).tolist() == [1.5, 2.0]


def test_unsupported_dtype_is_unimplemented_like_tf_serving():
    with pytest.raises(ServingError) as info:
        decode('{"inputs": [1]}', sig(x="DT_COMPLEX64"))
    assert info.value.code is Code.UNIMPLEMENTED
    assert info.value.message == "Conversion of JSON Value: 1 to type: complex64"


# --- requests TF Serving rejects, with its messages -------------------------------------

INT = sig(default="DT_INT32")
FLOAT = sig(default="DT_FLOAT")
TWO = sig(int_tensor="DT_INT32", str_tensor="DT_STRING")
E0 = "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "


@pytest.mark.parametrize(
    ("case", "signature", "body", "message"),
    [
        ("tfs_SingleUnnamedTensorErrors/empty", INT, "", "JSON Parse error: The document is empty"),
        ("whitespace", INT, "  ", "JSON Parse error: The document is empty. at offset: 2"),
        ("tfs_SingleUnnamedTensorErrors/signature", INT,
         '{"signature_name": 5, "instances": [[1]]}',
         'JSON Value: {\n    "signature_name": 5,\n    "instances": [\n        [\n            1\n'
         "        ]\n    ]\n} not formatted correctly. 'signature_name' key must be a string "
         "value."),
        ("tfs_SingleUnnamedTensorErrors/both", INT, '{"instances": [1], "inputs": [1]}',
         'JSON Value: {\n    "instances": [\n        1\n    ],\n'
         '    "inputs": [\n        1\n    ]\n}'
         " Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "),
        ("tfs_SingleUnnamedTensorErrors/size", INT, '{"instances": [[1,2],[3,4],[5,6,7]]}',
         "Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: "
         "Expecting tensor size: 2 but got: 3"),
        ("tfs_SingleUnnamedTensorErrors/shape", INT, '{"instances": [[1,2],[3,4],[[5,6]]]}',
         "Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: "
         "Expecting shape [2] but got: [1,2]"),
        ("tfs_SingleUnnamedTensorErrors/scalar-then-list", INT, '{"instances": [1, [1]]}',
         "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
         "Expecting shape [] but got: [1]"),
        ("tfs_SingleUnnamedTensorErrors/type", INT, '{"instances": [[1,2],["a", "b"]]}',
         "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
         'JSON Value: "a" Type: String is not of expected type: int32'),
        ("tfs_SingleUnnamedTensorErrors/double-max", FLOAT,
         '{"instances": [1.7976931348623157e308]}',
         E0 + "Cannot convert JSON value: 1.7976931348623157e+308 to float without loss of "
         "precision."),
        ("tfs_SingleUnnamedTensorErrors/16777217", FLOAT, '{"instances": [16777217]}',
         E0 + "Cannot convert JSON value: 16777217 to float without loss of precision."),
        ("tfs_SingleUnnamedTensorErrors/2^53+1", sig(default="DT_DOUBLE"),
         '{"instances": [9007199254740993]}',
         E0 + "Cannot convert JSON value: 9007199254740993 to double without loss of precision."),
        ("tfs_MultipleNamedTensorErrors/shape", TWO,
         '{"instances": [{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]},'
         ' {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}',
         "Failed to process element: 1 key: int_tensor of 'instances' list. Error: "
         "INVALID_ARGUMENT: Expecting shape [3,2] but got: [1,3,2]"),
        ("tfs_MultipleNamedTensorErrors/size", TWO,
         '{"instances": [{"int_tensor": [[1,2],[3,4],[5,6],[7,8]], "str_tensor": ["foo", "bar"]},'
         ' {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"]}]}',
         "Failed to process element: 1 key: int_tensor of 'instances' list. Error: "
         "INVALID_ARGUMENT: Expecting tensor size: 8 but got: 6"),
        ("tfs_MultipleNamedTensorErrors/object-then-list", TWO,
         '{"instances": [{"int_tensor": [[1,2]], "str_tensor": ["foo"]}, [1, 20, 30]]}',
         "Expecting object but got list at item 1 of input list"),
        ("tfs_MultipleNamedTensorErrors/list-then-object", sig(str_tensor="DT_STRING"),
         '{"instances": [["baz", "bar"], {"str_tensor": ["baz", "bat"]}]}',
         "Expecting value/list but got object at item 1 of input list"),
        ("plain list for several inputs", TWO, '{"instances": [1, 2]}',
         "instances is a plain list, but expecting list of objects as multiple input tensors "
         "required as per tensorinfo_map"),
        ("unknown key", TWO, '{"instances": [{"int_tensor": 1, "other": 2, "str_tensor": "a"}]}',
         "Failed to process element: 0 key: other of 'instances' list. Error: INVALID_ARGUMENT: "
         "JSON object: does not have named input: other"),
        ("missing key", TWO, '{"instances": [{"int_tensor": 1}]}',
         "Failed to process element: 0 of 'instances' list. JSON object: {\n"
         '    "int_tensor": 1\n} keys must be equal to: int_tensor,str_tensor'),
        ("plain value for several inputs", TWO, '{"inputs": [1]}',
         "inputs is a plain value/list, but expecting an object as multiple input tensors "
         "required as per tensorinfo_map"),
        ("missing named input", TWO, '{"inputs": {"int_tensor": 1}}',
         "Missing named input: str_tensor in 'inputs' object."),
        ("neither key", INT, '{"instance": [1]}', "Missing 'inputs' or 'instances' key"),
        ("instances not a list", INT, '{"instances": 1}',
         "JSON Value: {\n    \"instances\": 1\n} Excepting 'instances' to be an list/array"),
        ("no instances", INT, '{"instances": []}',
         "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array"),
        ("not an object", INT, "[1]", "JSON Value: [\n    1\n] Is not object"),
        ("trailing data", INT, '{"inputs": 1} 2',
         "JSON Parse error: The document root must not be followed by other values. at offset: 14"),
        ("number too big", FLOAT, '{"inputs": 1e999}',
         "JSON Parse error: Number too big to be stored in double."),
        ("no signature inputs", SignatureInfo("m"), '{"inputs": 1}',
         "Failed to get input map for signature: DEFAULT"),
        ("columnar errors are not wrapped", FLOAT, '{"inputs": [1, true]}',
         "JSON Value: true Type: True is not of expected type: float"),
        ("float for an int", INT, '{"inputs": [1.0]}',
         "JSON Value: 1.0 Type: Number is not of expected type: int32"),
        ("null for a float", FLOAT, '{"inputs": [null]}',
         "JSON Value: null Type: Null is not of expected type: float"),
        ("number for a string", sig(s="DT_STRING"), '{"inputs": [1]}',
         "JSON Value: 1 Type: Number is not of expected type: string"),
        ("object for a string", sig(s="DT_STRING"), '{"inputs": [{"b64": 1}]}',
         'JSON Value: {\n    "b64": 1\n} not formatted correctly for base64 data'),
        ("bad base64", sig(s="DT_STRING"), '{"inputs": [{"b64": "a"}]}', "Unable to base64 decode"),
        ("b64 for a float", FLOAT, '{"inputs": {"b64": "aGVsbG8="}}',
         'JSON Value: {\n    "b64": "aGVsbG8="\n} Type: Object is not of expected type: float'),
        ("ragged", FLOAT, '{"inputs": [[1, 2], [3]]}',
         "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
        ("too deep", FLOAT, '{"inputs": [[1, 2], [3, [4]]]}',
         "Encountered list at unexpected level: 2 expected < 2"),
        ("too shallow", FLOAT, '{"inputs": [[1, 2], 3]}',
         "JSON Value: 3 found at incorrect level: 2 in the JSON DOM. Expected at level: 2"),
        ("first error in document order", FLOAT, '{"inputs": [["x"], [1, 2]]}',
         'JSON Value: "x" Type: String is not of expected type: float'),
        ("uint32 range", sig(x="DT_UINT32"), '{"inputs": [4294967296]}',
         "JSON Value: 4294967296 Type: Number is not of expected type: uint32"),
        ("int8 range (TF Serving would wrap)", sig(x="DT_INT8"), '{"inputs": [128]}',
         "JSON Value: 128 Type: Number is not of expected type: int8"),
        ("half range", sig(x="DT_HALF"), '{"inputs": [65505.0]}',
         "Cannot convert JSON value: 65505.0 to half without loss of precision."),
        ("float max from a double", FLOAT, '{"inputs": [3.5e38]}',
         "Cannot convert JSON value: 3.5e+38 to float without loss of precision."),
        ("rank above numpy's limit", FLOAT, '{"inputs": ' + "[" * 65 + "1" + "]" * 65 + "}",
         "JSON list nested 65 deep: tensors have at most 64 dimensions"),
    ],
)
def test_decode_errors(case, signature, body, message):
    assert error_of(decode, body, signature) == message


def test_long_values_are_cut_in_messages():
    body = '{"instances": [' + ",".join(["1"] * 2000) + '], "inputs": 1}'
    message = error_of(decode, body, INT)
    assert len(message) < 1200
    assert "...  Not formatted" not in message and "... Not formatted correctly" in message


def test_deep_nesting_is_a_clear_error_not_a_crash():
    for depth in (500, 1000, 1100, 100_000):
        body = '{"inputs": ' + "[" * depth + "]" * depth + "}"
        message = error_of(decode, body, FLOAT)
        assert message.startswith(("JSON Parse error", "JSON list nested"))
    # Deep but legal elsewhere in the document: NaN forces the fallback parser.
    body = '{"inputs": [NaN], "x": ' + "[" * 900 + "]" * 900 + "}"
    try:
        assert np.isnan(decode(body, FLOAT).inputs["default"][0])
    except InvalidArgument as exc:  # Python's parser may run out of stack first
        assert exc.message.startswith("JSON Parse error")


# --- responses ---------------------------------------------------------------------------

INT_2x3x2 = np.array([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]], dtype=np.int32)
STRINGS = np.array([[b"hello", b"world"], [b"tf", b"serving"]], dtype=object)


@pytest.mark.parametrize(
    ("case", "outputs", "row", "expected"),
    [
        ("tfs_FromJsonSingleTensor", {"int_tensor": INT_2x3x2}, True,
         '{"predictions": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]]}'),
        ("tfs_FromJsonSingleTensor/columnar", {"int_tensor": INT_2x3x2}, False,
         '{"outputs": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]]}'),
        ("tfs_FromJsonSingleScalarTensor", {"t": np.arange(1, 6, dtype=np.int32)}, True,
         '{"predictions": [1, 2, 3, 4, 5]}'),
        ("tfs_FromJsonSingleBytesTensor", {"str_tensor_bytes": STRINGS}, True,
         '{"predictions": [[{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],'
         ' [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]]}'),
        ("tfs_FromJsonSingleFloatTensorSixDigitPrecision",
         {"f": np.array([[9000000, 999999, 0.5], [0.0003, 0.00003, 555557.5]], np.float32)},
         True, '{"predictions": [[9e+06, 999999.0, 0.5], [0.0003, 3e-05, 555557.5]]}'),
        ("tfs_FromJsonSingleFloatTensorNonFinite",
         {"f": np.array([[np.nan, np.inf], [3, -np.inf]], np.float32)}, True,
         '{"predictions": [[NaN, Infinity], [3.0, -Infinity]]}'),
        ("strings as text", {"s": np.array([b"caf\xc3\xa9", "x"], dtype=object)}, False,
         '{"outputs": ["caf\\u00e9", "x"]}'),
        ("numeric _bytes output is not base64", {"n_bytes": np.array([1, 2], np.uint8)}, False,
         '{"outputs": [1, 2]}'),
        ("scalar output, columnar", {"s": np.float64(2.5)}, False, '{"outputs": 2.5}'),
        ("bools and non-contiguous", {"b": np.array([[True, False], [False, True]]).T}, False,
         '{"outputs": [[true, false], [false, true]]}'),
        ("half", {"h": np.array([0.5, np.inf], np.float16)}, False,
         '{"outputs": [0.5, Infinity]}'),
        ("big-endian", {"x": np.array([1.5, 2], ">f8")}, False, '{"outputs": [1.5, 2.0]}'),
    ],
)
def test_encode(case, outputs, row, expected):
    assert same_json(encode_predict_response(outputs, row), expected)


def test_tfs_FromJsonMultipleNamedTensors():
    outputs = {
        "int_tensor": INT_2x3x2,
        "str_tensor": np.array([[b"foo", b"bar"], [b"baz", b"bat"]], dtype=object),
        "float_tensor": np.array([[1.0], [2.0]], np.float32),
        "double_scalar_tensor": np.array([8.0, 9.0]),
        "str_tensor_bytes": STRINGS,
    }
    assert same_json(encode_predict_response(outputs, True), """{"predictions": [
        {"double_scalar_tensor": 8.0, "float_tensor": [1.0],
         "int_tensor": [[1, 2], [3, 4], [5, 6]], "str_tensor": ["foo", "bar"],
         "str_tensor_bytes": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]},
        {"double_scalar_tensor": 9.0, "float_tensor": [2.0],
         "int_tensor": [[7, 8], [9, 0], [1, 2]], "str_tensor": ["baz", "bat"],
         "str_tensor_bytes": [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]}]}""")
    assert same_json(encode_predict_response(outputs, False), """{"outputs": {
        "double_scalar_tensor": [8.0, 9.0], "float_tensor": [[1.0], [2.0]],
        "int_tensor": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]],
        "str_tensor": [["foo", "bar"], ["baz", "bat"]],
        "str_tensor_bytes": [[{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
                             [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]]}}""")


def test_multiple_outputs_with_non_finite_rows():
    outputs = {"a": np.array([[np.nan], [1.0]], np.float32), "b": np.array([np.inf, 2.0])}
    assert same_json(
        encode_predict_response(outputs, True),
        '{"predictions": [{"a": [NaN], "b": Infinity}, {"a": [1.0], "b": 2.0}]}',
    )


def test_floats_keep_their_float32_value_and_a_decimal_point():
    out = encode_predict_response({"y": np.array([0.2, 3.0, 1e-7], np.float32)}, False)
    assert out == b'{"outputs":[0.2,3.0,1e-7]}'  # not 0.20000000298023224


@pytest.mark.parametrize(
    ("case", "outputs", "row", "message"),
    [
        ("tfs_FromJsonSingleTensorErrors/empty", {}, True,
         "Cannot convert empty tensor map to JSON"),
        ("tfs_FromJsonSingleTensorErrors/complex", {"tensor": np.ones(2, np.complex64)}, True,
         "Failed to write JSON value for tensor type: complex64"),
        ("tfs_FromJsonSingleTensorErrors/no-shape", {"tensor": np.int32(1)}, True,
         "Tensor name: tensor has no shape information "),
        ("tfs_FromJsonMultipleNamedTensorsErrors",
         {"int_tensor": np.ones((2, 3)), "str_tensor": np.array([[b"a", b"b", b"c"]])}, True,
         "Tensor name: str_tensor has inconsistent batch size: 1 expecting: 2"),
        ("empty batch", {"t": np.ones((0, 3))}, True, "Tensor name: t has invalid batch size: 0"),
    ],
)
def test_encode_errors(case, outputs, row, message):
    assert error_of(encode_predict_response, outputs, row) == message


# --- classify / regress (json_examples) ---------------------------------------------------

def test_tfs_RequestNoContext():
    request = decode_examples_request(b"""{"examples": [
        {"names": [ "foo", "bar" ], "ratings": [ 8.0, 9.0 ], "age": 20},
        {"names": [ "baz" ], "ratings": 6.0}]}""")
    assert request.signature_name == "serving_default"
    assert request.context is None
    assert request.examples == (
        {"names": Feature("bytes_list", [b"foo", b"bar"]),
         "ratings": Feature("float_list", [8.0, 9.0]),
         "age": Feature("int64_list", [20])},
        {"names": Feature("bytes_list", [b"baz"]), "ratings": Feature("float_list", [6.0])},
    )


def test_tfs_RequestWithContextAndSignature():
    request = decode_examples_request(b"""{
        "signature_name": "custom_signture",
        "context": {"query": "pizza", "location": [ "sfo" ]},
        "examples": [
          {"names": [ "foo", "bar" ], "ratings": [ 8.0, 9.0, NaN, Infinity ], "age": 20},
          {"names": [ "baz", { "b64": "aGVsbG8=" } ], "ratings": 6.0,
           "intboolmix": [ 1, true, false ]},
          {"names": "bar", "ratings": -Infinity},
          {"empty": []}]}""")
    assert request.signature_name == "custom_signture"
    assert request.context == {
        "query": Feature("bytes_list", [b"pizza"]), "location": Feature("bytes_list", [b"sfo"])
    }
    first, second, third, fourth = request.examples
    assert first["ratings"].kind == "float_list"
    assert str(first["ratings"].values) == "[8.0, 9.0, nan, inf]"
    assert second["names"] == Feature("bytes_list", [b"baz", b"hello"])
    assert second["intboolmix"] == Feature("int64_list", [1, 1, 0])
    assert third == {"names": Feature("bytes_list", [b"bar"]),
                     "ratings": Feature("float_list", [-math.inf])}
    assert fourth == {"empty": Feature(None, [])}


@pytest.mark.parametrize(
    ("body", "message"),
    [  # tfs_JsonErrors, in order, then a few more.
        ('{"signature_name": [ "hello" ], "examples": [ { "names": [ "foo", "bar" ] } ]}',
         'JSON Value: {\n    "signature_name": [\n        "hello"\n    ],\n    "examples": [\n'
         '        {\n            "names": [\n                "foo",\n                "bar"\n'
         "            ]\n        }\n    ]\n} not formatted correctly. 'signature_name' key must"
         " be a string value."),
        ('{"context": [ { "names": [ "foo", "bar" ] } ]}',
         "Example must be JSON object but got JSON Array"),
        ('{"examples": { "names": [ "foo", "bar" ] }}',
         'JSON Value: {\n    "examples": {\n        "names": [\n            "foo",\n'
         "            \"bar\"\n        ]\n    }\n} Expecting 'examples' value to be an list/array"),
        ('{"examples": [ [ { "names": [ "foo", "bar" ] } ] ]}',
         "Example must be JSON object but got JSON Array"),
        ('{"examples": [ { "names": [ 10, null ] } ]}',
         "Feature: names has element with unexpected JSON type: Null"),
        ('{"examples": [ { "names": [ 10, 10.0 ] } ]}',
         "Unexpected element type in feature: names expecting type: int64"),
        ('{"examples": [ { "names": [ 10, { "test": 10 } ] } ]}',
         "Feature: names has element with unexpected JSON type: Object"),
        ('{"examples": [ { "names": [ [10], 20 ] } ]}',
         "Feature: names has element with unexpected JSON type: Array"),
        ('{"examples": [ { "names": [ 20, 18446744073709551603 ] } ]}',
         "Feature: names has uint64 element. Only int64 is supported."),
        ('{"examples": [ { "names": 1.7976931348623157e308 } ]}',
         "Cannot convert JSON value: 1.7976931348623157e+308 to float without loss of precision."),
        ('{"examples": [ { "x": [ 1, 1e300 ] } ]}',  # the kind check comes first
         "Unexpected element type in feature: x expecting type: int64"),
        ('{"examples": [ { "x": [ "a", 1.0 ] } ]}',
         "Unexpected element type in feature: x expecting type: bytes"),
        ('{"examples": [ { "x": [ 1.0, { "b64": "!" } ] } ]}',
         "Unexpected element type in feature: x expecting type: float"),
        ('{"examples": [ { "x": { "b64": "!" } } ]}', "Unable to base64 decode"),
        ('{"context": {}}',
         "JSON Value: {\n    \"context\": {}\n} When method is classify, key 'examples' is "
         "expected and was not found"),
        ('{"examples": []}',
         "JSON Value: {\n    \"examples\": []\n} 'examples' value is an empty array"),
    ],
)
def test_examples_errors(body, message):
    assert error_of(decode_examples_request, body.encode()) == message


def test_half_plus_two_examples_requests():
    classify = decode_examples_request(
        b'{"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}')
    assert classify.signature_name == "classify_x_to_y"
    assert classify.examples == ({"x": Feature("float_list", [2.0])},)
    regress = decode_examples_request(parse_body(
        b'{"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}, {"x": 2}]}'))
    assert regress.examples == ({"x": Feature("float_list", [1.0])},
                                {"x": Feature("int64_list", [2])})


def test_tfs_JsonFromClassificationResult():
    out = encode_classify_response([
        [("car", 0.2), ("bike", 0.7), ("bus", 0.1)],
        [(b"car", 0.7), (b"bike", 0.1), (b"bus", 0.2)],
    ])
    assert same_json(out, '{"results": [[["car", 0.2], ["bike", 0.7], ["bus", 0.1]],'
                          ' [["car", 0.7], ["bike", 0.1], ["bus", 0.2]]]}')


def test_tfs_JsonFromRegressionResult_and_non_finite():
    assert same_json(encode_regress_response([0.2, 0.9, 1.0]), '{"results": [0.2, 0.9, 1.0]}')
    values = np.array([0.2, np.inf, 1.0, -np.inf, np.nan])
    assert same_json(encode_regress_response(values),
                     '{"results": [0.2, Infinity, 1.0, -Infinity, NaN]}')
    out = encode_classify_response([[("a", float("nan"))]])
    assert same_json(out, '{"results": [[["a", NaN]]]}')


def test_tfs_JsonFromResultErrors():
    assert error_of(encode_classify_response, []) == (
        "Cannot convert empty ClassificationResults to JSON")
    assert error_of(encode_regress_response, []) == "Cannot convert empty RegressionResults to JSON"


# --- properties ----------------------------------------------------------------------------

DTYPES = {
    "DT_FLOAT": np.float32, "DT_DOUBLE": np.float64, "DT_HALF": np.float16,
    "DT_INT8": np.int8, "DT_INT16": np.int16, "DT_INT32": np.int32, "DT_INT64": np.int64,
    "DT_UINT8": np.uint8, "DT_UINT16": np.uint16, "DT_UINT32": np.uint32,
    "DT_UINT64": np.uint64, "DT_BOOL": np.bool_,
}
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3)


def _elements(dtype: Any) -> st.SearchStrategy[Any]:
    if np.dtype(dtype) == np.float32:
        # TF Serving's lossless rule rejects FLT_MAX itself: its shortest decimal reads
        # back as a double just above FLT_MAX, so stay clear of the top of the range.
        top = float(np.float32(1e38))
        return st.floats(width=32, min_value=-top, max_value=top) | st.sampled_from(
            [math.nan, math.inf, -math.inf])
    return hnp.from_dtype(np.dtype(dtype))


@st.composite
def numeric_tensors(draw: Any) -> tuple[str, np.ndarray]:
    name = draw(st.sampled_from(sorted(DTYPES)))
    dtype = DTYPES[name]
    return name, draw(hnp.arrays(dtype, SHAPES, elements=_elements(dtype)))


@SETTINGS
@given(numeric_tensors(), st.booleans())
def test_numeric_tensors_round_trip(tensor, row_format):
    dtype_name, array = tensor
    if row_format and array.ndim == 0:
        array = array.reshape(1)
    body = encode_predict_response({"y": array}, row_format)
    key = "predictions" if row_format else "outputs"
    request = body.replace(key.encode(), b"instances" if row_format else b"inputs", 1)
    decoded = decode(request, sig(x=dtype_name)).inputs["x"]
    assert_array(decoded, array, array.dtype)


@SETTINGS
@given(hnp.arrays(object, SHAPES, elements=st.binary(max_size=8)), st.booleans())
def test_bytes_tensors_round_trip_through_b64(array, row_format):
    if row_format and array.ndim == 0:
        array = array.reshape(1)
    body = encode_predict_response({"y_bytes": array}, row_format)
    key = b"predictions" if row_format else b"outputs"
    request = body.replace(key, b"instances" if row_format else b"inputs", 1)
    assert decode(request, sig(x="DT_STRING")).inputs["x"].tolist() == array.tolist()


@SETTINGS
@given(hnp.arrays(object, SHAPES, elements=st.text(max_size=5)))
def test_text_tensors_round_trip(array):
    array = np.vectorize(str.encode, otypes=[object])(array)
    request = encode_predict_response({"y": array}, False).replace(b"outputs", b"inputs", 1)
    assert decode(request, sig(x="DT_STRING")).inputs["x"].tolist() == array.tolist()


JSON_SCALARS = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=4)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["b64", "x", "y", "a"]), inner, max_size=3)
    | st.builds(lambda text: {"b64": text}, st.sampled_from(["aGVsbG8=", "", "a", "!!"])),
    max_leaves=25,
)
ALL_DTYPES = [*DTYPES, "DT_STRING", "DT_BFLOAT16", "DT_COMPLEX64"]


@st.composite
def tensor_values(draw: Any) -> Any:
    """Nested lists of one scalar kind, often dense, sometimes not."""
    leaf = draw(st.sampled_from([
        st.integers(-300, 300), st.integers(-(2**63), 2**64 - 1), st.floats(width=32),
        st.floats(), st.booleans(), st.text(max_size=3), JSON_VALUES, st.just({"b64": "aGk="}),
    ]))
    shape = draw(st.lists(st.integers(0, 3), max_size=3))
    value = draw(hnp.arrays(object, shape, elements=leaf)).tolist() if shape else draw(leaf)
    if draw(st.booleans()):  # break the structure somewhere
        value = draw(st.lists(st.just(value) | leaf | JSON_VALUES, min_size=1, max_size=3))
    return value


def _floating(dtype: np.dtype) -> bool:
    """Whether the dtype holds NaN (bfloat16, numpy kind "V", does too)."""
    return dtype.kind == "f" or dtype == json_tensors._BFLOAT16


@SETTINGS
@given(tensor_values(), st.sampled_from(ALL_DTYPES))
def test_fast_path_agrees_with_tf_servings_walk(value, dtype_name):
    spec = json_tensors.dtype_spec(dtype_name)
    shape = json_tensors.dense_shape(value)
    fast = json_tensors.fast_tensor(value, shape, spec)
    try:
        exact = json_tensors.build_tensor(json_tensors.exact_leaves(value, shape, spec), shape, spec)
    except ServingError:
        assert fast is None
        return
    if fast is not None:
        assert fast.dtype == exact.dtype and fast.shape == exact.shape
        assert np.array_equal(fast, exact, equal_nan=_floating(fast.dtype))


@SETTINGS
@given(tensor_values(), st.sampled_from(ALL_DTYPES), st.sampled_from(ALL_DTYPES))
def test_row_fast_path_agrees_with_tf_servings_walk(value, first, second):
    specs = {"a": json_tensors.dtype_spec(first), "b": json_tensors.dtype_spec(second)}
    for chosen in ({"a": specs["a"]}, specs):
        instances = value if type(value) is list and value else [value]
        fast = json_predict.fast_instances(instances, chosen)
        try:
            exact = json_predict._exact_instances(instances, chosen)
        except ServingError:
            assert fast is None
            continue
        if fast is not None:
            for name in chosen:
                assert fast[name].shape == exact[name].shape
                nan_ok = _floating(fast[name].dtype)
                assert np.array_equal(fast[name], exact[name], equal_nan=nan_ok)


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(["instances", "inputs", "signature_name", "examples", "context", "x"]),
        JSON_VALUES,
    ),
    st.sampled_from([sig(x="DT_FLOAT"), sig(x="DT_STRING"), sig(a="DT_INT64", b="DT_BOOL")]),
)
def test_any_json_body_decodes_or_is_an_invalid_argument(doc, signature):
    body = json.dumps(doc).encode()
    for call in (lambda: decode(body, signature), lambda: decode_examples_request(body)):
        with contextlib.suppress(InvalidArgument):
            call()


@SETTINGS
@given(st.binary(max_size=40) | st.text(max_size=40).map(str.encode))
def test_any_bytes_parse_or_are_an_invalid_argument(body):
    with contextlib.suppress(InvalidArgument):
        parse_body(body)


@SETTINGS
@given(st.lists(JSON_VALUES, max_size=3) | st.dictionaries(st.text(max_size=3), JSON_VALUES))
def test_quoted_json_values_read_back(value):
    text = json_value_to_string(value)
    if not text.endswith("..."):
        assert json.dumps(json.loads(text)) == json.dumps(value)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([math.nan] * 3, b'{"predictions":[[NaN],[NaN],[NaN]]}'),
        ([math.inf, 1.0, math.inf], b'{"predictions":[[Infinity],[1.0],[Infinity]]}'),
        ([math.nan, -math.inf, 2.0], b'{"predictions":[[NaN],[-Infinity],[2.0]]}'),
    ],
    ids=["all-nan", "one-kind", "mixed"],
)
def test_non_finite_outputs_are_written_as_tf_serving_tokens(
    values: list[float], expected: bytes
) -> None:
    # One kind of non-finite value is one replace over orjson's output (no object per
    # value: 10M NaN took 2.4 GB the other way); mixed kinds are paired value by value.
    array = np.array(values, np.float32).reshape(-1, 1)
    assert encode_predict_response({"y": array}, True) == expected


@pytest.mark.parametrize("shape", [(50, 1), (3, 40), (1, 90), (90,), (20, 2, 3)])
def test_large_answers_written_in_slices_are_orjsons_own_bytes(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...]
) -> None:
    from loader.serving.rest import json_responses

    monkeypatch.setattr(json_responses, "SLICE_VALUES", 7)
    array = np.arange(math.prod(shape), dtype=np.float32).reshape(shape)
    for row_format, key in ((True, "predictions"), (False, "outputs")):
        expected = orjson.dumps({key: array}, option=orjson.OPT_SERIALIZE_NUMPY)
        assert encode_predict_response({"y": array}, row_format) == expected
    array.reshape(-1)[::3] = np.nan
    expected = orjson.dumps({"predictions": array}, option=orjson.OPT_SERIALIZE_NUMPY)
    assert encode_predict_response({"y": array}, True) == expected.replace(b"null", b"NaN")
    # Mixed tokens, some slices with none: each slice gets its own, as the whole array would.
    array.reshape(-1)[1::5], array.reshape(-1)[2::11] = np.inf, -np.inf
    sliced = encode_predict_response({"y": array}, True)
    monkeypatch.setattr(json_responses, "SLICE_VALUES", array.size)
    assert sliced == encode_predict_response({"y": array}, True)
    assert b"Infinity" in sliced and b"-Infinity" in sliced and b"NaN" in sliced
