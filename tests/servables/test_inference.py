"""Classify, regress and multi-inference on TF Serving's own test models (y = 0.5x + 2,
y2 = 0.5x + 3), with TF Serving's answers and error texts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import input_pb2

from loader.base import Code, ServingError, SignatureInfo, TensorInfo
from loader.servables.inference import (
    CLASSIFY_METHOD,
    REGRESS_METHOD,
    Task,
    classify,
    examples_from_features,
    multi_inference,
    regress,
    serialized_examples,
    signature_def_map,
)
from loader.servables.saved_model_proto import read_meta_graph
from loader.servables.savedmodel import SavedModelServable, load_saved_model
from loader.serving.rest.json_examples import decode_examples_request

TF1 = "saved_model_half_plus_two_cpu/00000123"
TF2 = "saved_model_half_plus_two_tf2_cpu/00000123"


@pytest.fixture(scope="module")
def models(tfserving_testdata: Path) -> dict[str, SavedModelServable]:
    loaded = {name: load_saved_model(tfserving_testdata / name) for name in (TF1, TF2)}
    yield loaded
    for servable in loaded.values():
        servable.unload()


@pytest.fixture(params=[TF1, TF2], ids=["tf1-session", "tf2"])
def servable(request: pytest.FixtureRequest, models: dict[str, SavedModelServable]) -> Any:
    return models[request.param]


@pytest.fixture
def tf1(models: dict[str, SavedModelServable]) -> SavedModelServable:
    return models[TF1]


def example(**features: float) -> bytes:
    proto = example_pb2.Example()
    for name, value in features.items():
        proto.features.feature[name].float_list.value.append(value)
    return proto.SerializeToString()


def serving_error(call: Any, *args: Any, **kwargs: Any) -> ServingError:
    with pytest.raises(ServingError) as raised:
        call(*args, **kwargs)
    return raised.value


# ---- answers ----------------------------------------------------------------------


def test_classify_and_regress_answer_like_tf_serving(servable: Any) -> None:
    examples = [example(x=2.0)]
    assert classify(servable, "classify_x_to_y", examples) == [[("", 3.0)]]
    assert regress(servable, "regress_x_to_y", examples) == [3.0]
    assert regress(servable, "regress_x_to_y2", examples) == [4.0]


def test_a_batch_gets_one_answer_per_example(servable: Any) -> None:
    examples = [example(x=x) for x in (2.0, 3.0, 4.0)]
    assert regress(servable, "regress_x_to_y", examples) == [3.0, 3.5, 4.0]
    assert classify(servable, "classify_x_to_y", examples) == [
        [("", 3.0)], [("", 3.5)], [("", 4.0)]
    ]


def test_grpc_context_is_merged_into_every_example_and_the_example_wins(tf1: Any) -> None:
    request_input = input_pb2.Input()
    listed = request_input.example_list_with_context
    listed.context.features.feature["x"].float_list.value.append(10.0)
    listed.examples.add()  # no x of its own: the context's 10 is used
    listed.examples.add().features.feature["x"].float_list.value.append(2.0)
    assert regress(tf1, "regress_x_to_y", serialized_examples(request_input)) == [7.0, 3.0]


def test_grpc_example_list(tf1: Any) -> None:
    request_input = input_pb2.Input()
    request_input.example_list.examples.add().features.feature["x"].float_list.value.append(4.0)
    assert regress(tf1, "regress_x_to_y", serialized_examples(request_input)) == [4.0]
    assert serialized_examples(input_pb2.Input()) == []


def test_rest_examples_and_context_merge_the_same_way(tf1: Any) -> None:
    request = decode_examples_request(
        b'{"signature_name": "regress_x_to_y", "context": {"x": 10.0, "unused": [1, 2]},'
        b' "examples": [{}, {"x": 2.0}, {"x": [4.0], "name": "b"}]}'
    )
    examples = examples_from_features(request.examples, request.context)
    assert regress(tf1, request.signature_name, examples) == [7.0, 3.0, 4.0]
    assert examples_from_features(request.examples[1:2]) == [example(x=2.0)]


def test_rest_features_keep_their_kinds() -> None:
    request = decode_examples_request(
        b'{"examples": [{"f": 1.5, "i": [1, true], "s": "a", "b": {"b64": "AAE="}, "e": []}]}'
    )
    (serialized,) = examples_from_features(request.examples)
    features = example_pb2.Example.FromString(serialized).features.feature
    assert list(features["f"].float_list.value) == [1.5]
    assert list(features["i"].int64_list.value) == [1, 1]
    assert list(features["s"].bytes_list.value) == [b"a"]
    assert list(features["b"].bytes_list.value) == [b"\x00\x01"]
    assert features["e"].WhichOneof("kind") is None


def test_multi_inference_runs_every_task_on_the_same_examples(servable: Any) -> None:
    tasks = [Task("regress_x_to_y", REGRESS_METHOD), Task("classify_x_to_y", CLASSIFY_METHOD),
             Task("regress_x_to_y2", REGRESS_METHOD)]
    assert multi_inference(servable, tasks, [example(x=2.0)]) == [[3.0], [[("", 3.0)]], [4.0]]


def test_the_signature_map_is_the_saved_models_own(tfserving_testdata: Path, tf1: Any) -> None:
    meta_graph = read_meta_graph(tfserving_testdata / TF1)
    built = signature_def_map(tf1)
    assert dict(built.signature_def) == dict(meta_graph.signature_def)
    assert signature_def_map(tf1) is built  # built once per servable


# ---- signatures that do not fit -----------------------------------------------------


def test_an_unknown_signature_is_named(servable: Any) -> None:
    error = serving_error(regress, servable, "nope", [example(x=1.0)])
    assert (error.code, error.message) == (
        Code.INVALID_ARGUMENT, "No signature was found with the name: nope"
    )
    error = serving_error(classify, servable, "", [example(x=1.0)])  # "" is serving_default
    assert error.message.startswith("No classification inputs found in SignatureDef: inputs {")


def test_signatures_qualify_by_their_inputs_and_outputs(tf1: Any) -> None:
    error = serving_error(classify, tf1, "regress_x_to_y", [example(x=1.0)])
    assert error.code is Code.INVALID_ARGUMENT
    assert error.message.startswith(
        'Expected classification signature outputs to contain at least one of "classes" or '
        '"scores". Signature was: inputs {\n  key: "inputs"'
    )
    error = serving_error(regress, tf1, "classify_x_to_y", [example(x=1.0)])
    assert error.message.startswith("No regression outputs found in SignatureDef: inputs {")
    error = serving_error(regress, tf1, "serving_default", [example(x=1.0)])
    assert error.message.startswith("No regression inputs found in SignatureDef: inputs {")


def test_the_method_name_is_checked_only_when_asked(models: Mapping[str, Any]) -> None:
    # TF2 writes every signature as .../predict: TF Serving's default accepts them.
    tf2 = models[TF2]
    assert classify(tf2, "classify_x_to_y", [example(x=2.0)]) == [[("", 3.0)]]
    error = serving_error(
        classify, tf2, "classify_x_to_y", [example(x=2.0)], check_method_name=True
    )
    assert (error.code, error.message) == (
        Code.INVALID_ARGUMENT,
        "Expected classification signature method_name to be tensorflow/serving/classify. "
        "Was: tensorflow/serving/predict",
    )
    error = serving_error(regress, tf2, "regress_x_to_y", [example(x=2.0)], check_method_name=True)
    assert error.message == (
        "Expected regression signature method_name to be tensorflow/serving/regress. "
        "Was: tensorflow/serving/predict"
    )
    assert regress(models[TF1], "regress_x_to_y", [example(x=2.0)], check_method_name=True) == [3.0]


def test_no_examples_is_an_empty_input(tf1: Any) -> None:
    for call, name in ((classify, "classify_x_to_y"), (regress, "regress_x_to_y")):
        error = serving_error(call, tf1, name, [])
        assert (error.code, error.message) == (Code.INVALID_ARGUMENT, "Input is empty.")


def test_examples_the_model_cannot_parse_are_its_error(tf1: Any) -> None:
    error = serving_error(regress, tf1, "regress_x_to_y", [b"not an example"])
    assert error.code is Code.INVALID_ARGUMENT and "Could not parse example input" in error.message


@pytest.mark.parametrize(
    ("tasks", "code", "message"),
    [
        ([Task("regress_x_to_y", REGRESS_METHOD), Task("regress_x_to_y", REGRESS_METHOD)],
         Code.INVALID_ARGUMENT, "Duplicate evaluation of signature: regress_x_to_y"),
        ([Task("nope", REGRESS_METHOD)],
         Code.INVALID_ARGUMENT, "Requested signature not found in model graph: nope"),
        ([Task("serving_default", "tensorflow/serving/predict")],
         Code.UNIMPLEMENTED, "Unsupported signature method_name: tensorflow/serving/predict"),
    ],
    ids=["duplicate", "unknown", "predict"],
)
def test_multi_inference_refusals(
    tf1: Any, tasks: list[Task], code: Code, message: str
) -> None:
    error = serving_error(multi_inference, tf1, tasks, [example(x=1.0)])
    assert (error.code, error.message) == (code, message)


def test_multi_inference_checks_every_task_before_the_input(tf1: Any) -> None:
    error = serving_error(multi_inference, tf1, [Task("regress_x_to_y", REGRESS_METHOD)], [])
    assert error.message == "Input is empty."


# ---- outputs that do not fit (a servable with fixed answers) ------------------------


class FixedServable:
    """A servable whose one signature answers with fixed arrays, to exercise the checks
    TF Serving makes on what a model returns."""

    def __init__(self, method: str, outputs: Mapping[str, np.ndarray]) -> None:
        self.outputs = dict(outputs)
        self.fed: dict[str, Any] = {}
        self._signature = SignatureInfo(
            method,
            {"inputs": TensorInfo("in:0", "DT_STRING", (-1,))},
            {alias: TensorInfo(f"{alias}:0", "DT_FLOAT", None) for alias in outputs},
        )

    @property
    def signatures(self) -> Mapping[str, SignatureInfo]:
        return {"serving_default": self._signature}

    def signature_def_json(self) -> dict[str, Any]:
        return {"signature_def": {}}

    def run(
        self,
        signature_name: str,
        inputs: Mapping[str, Any],
        output_keys: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        self.fed = dict(inputs)
        return {alias: self.outputs[alias] for alias in output_keys or self.outputs}

    def unload(self) -> None:
        pass


def strings(rows: list[list[bytes]]) -> np.ndarray:
    array = np.empty((len(rows), len(rows[0])), object)
    array[:] = rows
    return array


def test_classes_and_scores_pair_up_and_labels_are_text() -> None:
    servable = FixedServable(CLASSIFY_METHOD, {
        "classes": strings([[b"cat", b"\xff"], [b"dog", b"cow"]]),
        "scores": np.array([[0.75, 0.25], [0.5, 0.5]], np.float32),
    })
    two = [example(x=1.0), example(x=2.0)]
    assert classify(servable, "", two) == [
        [("cat", 0.75), ("\ufffd", 0.25)], [("dog", 0.5), ("cow", 0.5)]
    ]
    assert servable.fed["inputs"].dtype == object and list(servable.fed["inputs"]) == two


def test_classes_alone_score_zero() -> None:
    servable = FixedServable(CLASSIFY_METHOD, {"classes": strings([[b"a", b"b"]])})
    assert classify(servable, "", [example(x=1.0)]) == [[("a", 0.0), ("b", 0.0)]]


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ({"scores": np.zeros(1, np.float32)},
         "Expected Tensor shape: [batch_size num_classes] but got [1]"),
        ({"scores": np.zeros((1, 2), np.float64)},
         "Expected scores Tensor of DT_FLOAT. Got: DT_DOUBLE"),
        ({"classes": np.zeros((1, 2), np.int64)},
         "Expected classes Tensor of DT_STRING. Got: DT_INT64"),
        ({"scores": np.zeros((2, 2), np.float32)},
         "Expected scores output batch size of 1. Got: 2"),
        ({"classes": strings([[b"a"]]), "scores": np.zeros((1, 2), np.float32)},
         "Tensors class and score should match in dim_size(1). Got 1 vs. 2"),
    ],
    ids=["scores-rank", "scores-dtype", "classes-dtype", "batch", "widths"],
)
def test_classification_outputs_are_checked(outputs: dict[str, np.ndarray], message: str) -> None:
    error = serving_error(classify, FixedServable(CLASSIFY_METHOD, outputs), "", [example(x=1.0)])
    assert (error.code, error.message) == (Code.INVALID_ARGUMENT, message)


@pytest.mark.parametrize(
    ("output", "answer"),
    [(np.array([1.5], np.float32), [1.5]), (np.array([[1.5]], np.float32), [1.5])],
    ids=["[n]", "[n,1]"],
)
def test_regression_outputs_may_be_flat_or_a_column(
    output: np.ndarray, answer: list[float]
) -> None:
    assert regress(FixedServable(REGRESS_METHOD, {"outputs": output}), "", [example()]) == answer


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (np.zeros((1, 2), np.float32),
         "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got [1,2]"),
        (np.zeros(2, np.float32), "Input batch size did not match output batch size: 1 vs. 2"),
        (np.zeros(1, np.float64), "Expected output Tensor of DT_FLOAT.  Got: DT_DOUBLE"),
    ],
    ids=["shape", "batch", "dtype"],
)
def test_regression_outputs_are_checked(output: np.ndarray, message: str) -> None:
    servable = FixedServable(REGRESS_METHOD, {"outputs": output})
    error = serving_error(regress, servable, "", [example(x=1.0)])
    assert (error.code, error.message) == (Code.INVALID_ARGUMENT, message)


def test_signatures_must_have_one_input_and_one_or_two_outputs() -> None:
    servable = FixedServable(REGRESS_METHOD, {"outputs": np.zeros(1, np.float32),
                                              "extra": np.zeros(1, np.float32)})
    assert serving_error(regress, servable, "", [example()]).message == (
        "Expected one output Tensor."
    )
    three = {alias: np.zeros(1) for alias in "abc"}
    servable = FixedServable(CLASSIFY_METHOD, three)
    assert serving_error(classify, servable, "", [example()]).message == (
        "Expected one or two output Tensors, found 3"
    )
