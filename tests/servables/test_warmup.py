"""Warmup replay on TF Serving's half_plus_two (TF1, session) and a TF2 model built here,
with TF Serving's limits, codes and error texts."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)

from loader.base import Code, ServingError, SignatureInfo, TensorInfo
from loader.servables.savedmodel import SavedModelServable, load_saved_model
from loader.servables.warmup import (
    MAX_RECORDS,
    WARMUP_FILE,
    PredictionLog,
    _batchable,
    warm_up,
    write_warmup_file,
)

TF1 = "saved_model_half_plus_two_cpu/00000123"
TFRECORD_HINT = ". Please verify your warmup data is in TFRecord format."


# ---- fixtures and helpers -----------------------------------------------------------


class Spy:
    """A real servable that remembers each run's signature and row count."""

    def __init__(self, inner: SavedModelServable, fail_above_rows: int | None = None) -> None:
        self._inner = inner
        self._fail_above = fail_above_rows
        self.runs: list[tuple[str, int]] = []

    @property
    def signatures(self) -> Mapping[str, SignatureInfo]:
        return self._inner.signatures

    def signature_def_json(self) -> dict[str, Any]:
        return self._inner.signature_def_json()

    def run(
        self, name: str, inputs: Mapping[str, Any], output_keys: Sequence[str] | None = None
    ) -> dict[str, Any]:
        rows = len(next(iter(inputs.values())))
        self.runs.append((name, rows))
        if self._fail_above is not None and rows > self._fail_above:
            raise ServingError("out of memory", Code.RESOURCE_EXHAUSTED)
        return self._inner.run(name, inputs, output_keys)

    def unload(self) -> None:
        raise AssertionError("warmup must not unload")


@pytest.fixture(scope="module")
def tf1(tfserving_testdata: Path) -> Iterator[SavedModelServable]:
    servable = load_saved_model(tfserving_testdata / TF1)
    yield servable
    servable.unload()


@pytest.fixture
def spy(tf1: SavedModelServable) -> Spy:
    return Spy(tf1)


@pytest.fixture
def folder(tmp_path: Path, tfserving_testdata: Path) -> Path:
    """A copy of half_plus_two's version folder, to write a warmup file into."""
    return Path(shutil.copytree(tfserving_testdata / TF1, tmp_path / "00000123"))


def predict(x: Any, signature: str = "", **extra: Any) -> PredictionLog:
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = signature
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.asarray(x, np.float32)))
    for alias, value in extra.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def examples(*xs: float) -> Any:
    listed = classification_pb2.ClassificationRequest().input
    for x in xs:
        example = example_pb2.Example()
        example.features.feature["x"].float_list.value.append(x)
        listed.example_list.examples.append(example)
    return listed


def classify_log(signature: str, *xs: float) -> PredictionLog:
    request = classification_pb2.ClassificationRequest(input=examples(*xs))
    request.model_spec.signature_name = signature
    return PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=request))


def regress_log(signature: str, *xs: float) -> PredictionLog:
    request = regression_pb2.RegressionRequest(input=examples(*xs))
    request.model_spec.signature_name = signature
    return PredictionLog(regress_log=prediction_log_pb2.RegressLog(request=request))


def multi_log(*tasks: tuple[str, str, str], xs: Sequence[float] = (1.0,)) -> PredictionLog:
    request = inference_pb2.MultiInferenceRequest(input=examples(*xs))
    for model, signature, method in tasks:
        task = request.tasks.add()
        task.model_spec.name, task.model_spec.signature_name = model, signature
        task.method_name = method
    return PredictionLog(multi_inference_log=prediction_log_pb2.MultiInferenceLog(request=request))


def failure(call: Any, *args: Any, **kwargs: Any) -> ServingError:
    with pytest.raises(ServingError) as caught:
        call(*args, **kwargs)
    return caught.value


# ---- replay -------------------------------------------------------------------------


def test_replays_every_log_type_each_iteration(spy: Spy, folder: Path) -> None:
    write_warmup_file(folder, [
        predict([[1.0], [2.0]]),
        classify_log("classify_x_to_y", 1.0),
        regress_log("regress_x_to_y", 1.0, 2.0, 3.0),
        multi_log(
            ("m", "classify_x_to_y", "tensorflow/serving/classify"),
            ("m", "regress_x_to_y2", "tensorflow/serving/regress"),
        ),
    ])

    report = warm_up(spy, folder, iterations=2)

    assert report.records == 4 and report.batch_sizes == () and report.seconds > 0
    per_record = [  # each record runs `iterations` times before the next is read
        [("serving_default", 2)], [("classify_x_to_y", 1)], [("regress_x_to_y", 3)],
        [("classify_x_to_y", 1), ("regress_x_to_y2", 1)],
    ]
    assert spy.runs == [run for runs in per_record for run in runs * 2]


def test_a_built_model_loads_from_its_copy_and_warms_up(
    model_builder: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    version = model_builder.publish(tmp_path / "linear", 1, intercept=2.0)
    path = write_warmup_file(version, [predict([[1.0]])] * 3)
    assert path == version / WARMUP_FILE
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no staging left
    servable = load_saved_model(version)
    try:
        with caplog.at_level(logging.INFO, logger="loader.servables.warmup"):
            report = warm_up(servable, version, batch_sizes=[8])
    finally:
        servable.unload()
    assert (report.records, report.batch_sizes) == (3, (8,))
    [line] = [r.getMessage() for r in caplog.records if r.name == "loader.servables.warmup"]
    assert f"warmed up {version}: 3 record(s) x 1 iteration(s), batch sizes [8]" in line


def test_a_missing_file_is_fine(spy: Spy, folder: Path) -> None:
    report = warm_up(spy, folder, batch_sizes=[4])  # no inputs to build batches from

    assert (report.records, report.batch_sizes, spy.runs) == (0, (), [])


def test_an_empty_file_replays_nothing(spy: Spy, folder: Path) -> None:
    write_warmup_file(folder, [])

    assert warm_up(spy, folder).records == 0 and spy.runs == []


@pytest.mark.parametrize(
    ("logged", "code", "text"),
    [
        (
            PredictionLog(predict_log=prediction_log_pb2.PredictLog(
                request=predict_pb2.PredictRequest(inputs={
                    "z": tf.make_tensor_proto(np.ones((1, 1), np.float32))
                }),
            )),
            Code.INVALID_ARGUMENT,
            "Signature input alias: x(feed name: x:0) not found in request",
        ),
        (predict([[1.0]], "nope"), Code.FAILED_PRECONDITION,
         'Serving signature key "nope" not found.'),
        (PredictionLog(predict_log=prediction_log_pb2.PredictLog(
            request=predict_pb2.PredictRequest(inputs={"x": tf.make_tensor_proto([[1]])}),
        )), Code.INVALID_ARGUMENT, "Expects arg[0] to be float but int32 is provided"),
        (classify_log("classify_x_to_y"), Code.INVALID_ARGUMENT, "Input is empty."),
        (regress_log("nope", 1.0), Code.INVALID_ARGUMENT,
         "No signature was found with the name: nope"),
        (
            multi_log(("a", "regress_x_to_y", "tensorflow/serving/regress"),
                      ("b", "regress_x_to_y2", "tensorflow/serving/regress")),
            Code.INVALID_ARGUMENT,
            "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
        ),
        (multi_log(("", "regress_x_to_y", "tensorflow/serving/regress")),
         Code.INVALID_ARGUMENT, "Found ModelSpec with an empty model name."),
    ],
    ids=["input-name", "signature", "dtype", "no-examples", "regress-signature",
         "multi-models", "multi-no-model"],
)
def test_a_failing_request_fails_the_warmup(
    spy: Spy, folder: Path, logged: PredictionLog, code: Code, text: str
) -> None:
    write_warmup_file(folder, [predict([[1.0]]), logged, predict([[2.0], [3.0]])])

    error = failure(warm_up, spy, folder)

    assert error.code is code and text in error.message
    assert spy.runs[0] == ("serving_default", 1)
    assert ("serving_default", 2) not in spy.runs  # stopped at the failing record


def test_more_than_1000_records_fail_after_1000_ran(spy: Spy, folder: Path) -> None:
    path = write_warmup_file(folder, [predict([[1.0]])] * (MAX_RECORDS + 1))

    error = failure(warm_up, spy, folder)

    assert error.code is Code.INVALID_ARGUMENT
    assert error.message == f"Number of warmup records exceeds the maximum (1000) at {path}"
    assert len(spy.runs) == 1000


def _file_bytes(folder: Path, logs: Sequence[PredictionLog]) -> bytes:
    return write_warmup_file(folder, logs).read_bytes()


@pytest.mark.parametrize(
    ("damage", "text"),
    [
        (lambda data: data[:-3], "truncated record at "),
        (lambda data: data[:20] + bytes([data[20] ^ 1]) + data[21:], "corrupted record at "),
        # What TF Serving's UnsupportedFileFormat test writes: the log, not a TFRecord.
        (lambda data: predict([[1.0]]).SerializeToString() * 3, "corrupted record at 0"),
    ],
    ids=["truncated", "flipped-bit", "not-tfrecord"],
)
def test_a_corrupt_file_fails_with_data_loss(
    spy: Spy, folder: Path, damage: Any, text: str
) -> None:
    path = folder / WARMUP_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(damage(_file_bytes(folder, [predict([[1.0]]), predict([[2.0]])])))

    error = failure(warm_up, spy, folder)

    assert error.code is Code.DATA_LOSS
    assert text in error.message and error.message.endswith(TFRECORD_HINT)


def test_a_record_that_is_no_prediction_log_fails(spy: Spy, folder: Path) -> None:
    path = folder / WARMUP_FILE
    path.parent.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(b"malformed_record")  # TF Serving's UnparsableRecord test

    error = failure(warm_up, spy, folder)

    assert error.code is Code.INVALID_ARGUMENT
    assert error.message == f"Failed to parse warmup record: b'malformed_record' from {path}"


def test_an_unreadable_file_fails_with_the_readers_code(spy: Spy, folder: Path) -> None:
    (folder / WARMUP_FILE).mkdir(parents=True)

    error = failure(warm_up, spy, folder)

    assert error.code is Code.FAILED_PRECONDITION and "Is a directory" in error.message


@pytest.mark.parametrize(
    ("logged", "number"),
    [
        (PredictionLog(session_run_log=prediction_log_pb2.SessionRunLog()), 5),
        (PredictionLog(predict_streamed_log=prediction_log_pb2.PredictStreamedLog()), 7),
        (PredictionLog(), 0),
    ],
    ids=["session-run", "predict-streamed", "unset"],
)
def test_an_unsupported_log_type_fails(
    spy: Spy, folder: Path, logged: PredictionLog, number: int
) -> None:
    write_warmup_file(folder, [logged])

    error = failure(warm_up, spy, folder)

    assert error.code is Code.UNIMPLEMENTED
    assert error.message == f"Unsupported log_type for warmup: {number}"


def test_iterations_must_be_positive(spy: Spy, folder: Path) -> None:
    with pytest.raises(ValueError, match="iterations must be at least 1"):
        warm_up(spy, folder, iterations=0)


# ---- batch shapes -------------------------------------------------------------------


def test_each_distinct_run_warms_each_batch_size(spy: Spy, folder: Path) -> None:
    write_warmup_file(folder, [
        predict([[1.0], [2.0]]),
        predict([[3.0], [4.0], [5.0]]),  # same dtypes and non-batch dims: warmed once
        regress_log("regress_x_to_y", 1.0),
        predict([[6.0]]),
    ])

    report = warm_up(spy, folder, batch_sizes=[8, 4, 8])

    assert (report.records, report.batch_sizes) == (4, (4, 8))
    assert spy.runs[4:] == [
        ("serving_default", 4), ("regress_x_to_y", 4),
        ("serving_default", 8), ("regress_x_to_y", 8),
    ]


def test_tiled_inputs_give_the_models_answers(tf1: SavedModelServable, folder: Path) -> None:
    answers: list[Any] = []

    class Answers(Spy):
        def run(self, name: str, inputs: Mapping[str, Any], output_keys: Any = None) -> Any:
            result = super().run(name, inputs, output_keys)
            answers.append((inputs["x"].ravel().tolist(), result["y"].ravel().tolist()))
            return result

    write_warmup_file(folder, [predict([[1.0], [2.0], [3.0]])])

    warm_up(Answers(tf1), folder, batch_sizes=[5])

    assert answers[-1] == ([1.0, 2.0, 3.0, 1.0, 2.0], [2.5, 3.0, 3.5, 2.5, 3.0])


def test_a_failing_batch_size_only_warns(
    tf1: SavedModelServable, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_warmup_file(folder, [predict([[1.0]])])
    spy = Spy(tf1, fail_above_rows=4)

    with caplog.at_level(logging.WARNING, logger="loader.servables.warmup"):
        report = warm_up(spy, folder, batch_sizes=[2, 4, 16])

    assert report.batch_sizes == (2, 4)
    assert "warming batch size 16 failed: out of memory" in caplog.text


def _info(shape: tuple[int, ...] | None, dtype: str = "DT_FLOAT") -> TensorInfo:
    return TensorInfo(name="t:0", dtype=dtype, shape=shape)


BATCHED = SignatureInfo(
    "tensorflow/serving/predict", {"x": _info((-1, 1)), "k": _info(None)}, {"y": _info((-1,))}
)


@pytest.mark.parametrize(
    ("signature", "inputs", "keys", "expected"),
    [
        (BATCHED, {"x": np.ones((2, 1)), "k": np.ones(2)}, None, True),
        (BATCHED, {"x": np.ones((2, 1)), "k": np.ones(2)}, ("y",), True),
        (BATCHED, {"x": np.ones((2, 1)), "k": np.ones(3)}, None, False),  # unequal rows
        (BATCHED, {"x": np.ones((0, 1)), "k": np.ones(0)}, None, False),  # no rows
        (BATCHED, {"x": np.ones((2, 1)), "k": np.float32(1)}, None, False),  # a scalar
        (BATCHED, {"x": np.ones((2, 1))}, None, False),  # "k" left to a default
        (BATCHED, {"x": np.ones((2, 1)), "k": np.ones(2)}, ("y", "y"), False),
        (BATCHED, {"x": np.ones((2, 1)), "k": np.ones(2)}, ("z",), False),
        (SignatureInfo("", {"x": _info((2, 1))}, {"y": _info((-1,))}),
         {"x": np.ones((2, 1))}, None, False),  # a fixed first dimension
        (SignatureInfo("", {"x": _info((-1, 1))}, {"y": _info(())}),
         {"x": np.ones((2, 1))}, None, False),  # a scalar output
    ],
)
def test_only_runs_batching_would_batch_are_warmed(
    signature: SignatureInfo, inputs: dict[str, np.ndarray], keys: Any, expected: bool
) -> None:
    assert _batchable(signature, inputs, keys) is expected
