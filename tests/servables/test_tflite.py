"""TFLite models served as TF Serving serves them with --prefer_tflite_model: signatures,
predict, the interpreter pool under concurrent calls, and loads that fail."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from loader.base import Code, ServingError
from loader.config.schema import BatchingConfig
from loader.servables.batching import BatchingServable
from loader.servables.formats import load_version
from loader.servables.savedmodel import SavedModelServable
from loader.servables.tflite import TfLiteServable, load_tflite_model
from loader.servables.warmup import write_warmup_file
from tests.savedmodels import publish_tflite, tflite_half_plus

KINDS = ("signatures", "plain", "tfs_sigdef")


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    """y = 0.5x + 2 converted once per kind of signature (see `tflite_half_plus`)."""
    return {kind: tflite_half_plus(2.0, kind) for kind in KINDS}


@pytest.fixture(params=KINDS)
def servable(
    request: pytest.FixtureRequest, models: dict[str, bytes], tmp_path: Path
) -> Iterator[TfLiteServable]:
    loaded = load_tflite_model(publish_tflite(tmp_path / "m", 1, models[request.param]))
    yield loaded
    loaded.unload()


def one_signature(servable: TfLiteServable) -> dict[str, object]:
    signatures = servable.signature_def_json()["signature_def"]
    assert list(signatures) == ["serving_default"]
    signature: dict[str, object] = signatures["serving_default"]
    return signature


def test_the_model_s_own_signature_runs_by_its_runner_with_its_shape_signature(
    models: dict[str, bytes], tmp_path: Path
) -> None:
    servable = load_tflite_model(publish_tflite(tmp_path, 1, models["signatures"]))
    signature = one_signature(servable)
    assert signature["method_name"] == "tensorflow/serving/predict"
    x = signature["inputs"]["x"]  # type: ignore[index]
    assert (x["name"], x["dtype"]) == ("serving_default_x:0", "DT_FLOAT")
    assert [d["size"] for d in x["tensor_shape"]["dim"]] == ["-1", "1"]
    assert list(signature["outputs"]) == ["y"]  # type: ignore[call-overload]
    info = servable.signatures["serving_default"]
    assert info.inputs["x"].shape == (-1, 1) and info.outputs["y"].dtype == "DT_FLOAT"
    servable.unload()


def test_a_model_without_signatures_gets_tf_servings_generated_one(
    models: dict[str, bytes], tmp_path: Path
) -> None:
    # TF Serving's TfLiteSession BasicTest, for its saved_model_half_plus_two_tflite.
    servable = load_tflite_model(publish_tflite(tmp_path, 1, models["plain"]))
    signature = one_signature(servable)
    for kind, alias in (("inputs", "x"), ("outputs", "y")):
        tensor = signature[kind][alias]  # type: ignore[index]
        assert tensor == {
            "name": alias, "dtype": "DT_FLOAT",
            "tensor_shape": {"dim": [{"size": "1", "name": ""}] * 2, "unknown_rank": False},
        }
    assert signature["method_name"] == "tensorflow/serving/predict"
    servable.unload()


def test_tf_servings_stored_signature_defs_win_and_legacy_tensor_names_are_matched(
    models: dict[str, bytes], tmp_path: Path
) -> None:
    # TF Serving's ModelFromLegacyConverterWithSigdef: the SignatureDef names
    # "tflite_input:0", the converter wrote "tflite_input"; the metadata shows the latter.
    servable = load_tflite_model(publish_tflite(tmp_path, 1, models["tfs_sigdef"]))
    signature = one_signature(servable)
    assert signature["inputs"]["x"]["name"] == "tflite_input"  # type: ignore[index]
    assert signature["outputs"]["y"]["name"] == "y"  # type: ignore[index]
    assert servable.run("serving_default", {"x": [[2.0]]})["y"].tolist() == [[3.0]]
    servable.unload()


def test_predict_with_any_batch_size_and_rank_as_tf_serving(servable: TfLiteServable) -> None:
    assert servable.run("serving_default", {"x": [[2.0]]})["y"].tolist() == [[3.0]]
    # TF Serving's BasicTest: a 1-D batch of 3 runs on a [1, 1] (or [-1, 1]) input.
    assert servable.run("serving_default", {"x": [1.0, 2.0, 3.0]})["y"].tolist() == [2.5, 3.0, 3.5]
    rows = servable.run("serving_default", {"x": np.arange(64, dtype=np.float32).reshape(64, 1)}, ["y"])
    assert rows["y"].shape == (64, 1) and rows["y"][63, 0] == pytest.approx(33.5)
    assert servable.run("serving_default", {"x": [[4.0]]})["y"].tolist() == [[4.0]]


@pytest.mark.parametrize(
    ("signature", "inputs", "keys", "message"),
    [
        ("classify", {"x": [[1.0]]}, None,
         'Serving signature name: "classify" not found in signature def'),
        ("serving_default", {"z": [[1.0]]}, None, r"Signature input alias: x\(feed name: [\w:]+\) not found"),
        ("serving_default", {}, None, "input size does not match signature: 0!=1"),
        ("serving_default", {"x": [["a"]]}, None, "input x cannot be converted to DT_FLOAT"),
        ("serving_default", {"x": [[1.0]]}, ["z"], "output tensor alias not found in signature: z"),
    ],
)
def test_bad_requests_get_tf_servings_answers(
    servable: TfLiteServable, signature: str, inputs: dict[str, object],
    keys: list[str] | None, message: str,
) -> None:
    with pytest.raises(ServingError, match=message) as caught:
        servable.run(signature, inputs, keys)
    assert caught.value.code == Code.INVALID_ARGUMENT


def test_inputs_the_model_cannot_take_fail_and_the_next_call_still_runs(tmp_path: Path) -> None:
    import tensorflow as tf

    class Sum(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": tf.matmul(x, tf.ones([2, 1]))}

    module = Sum()
    model = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module
    ).convert()
    servable = load_tflite_model(publish_tflite(tmp_path, 1, model), num_interpreters=1)
    with pytest.raises(ServingError, match="cannot run signature serving_default") as caught:
        servable.run("serving_default", {"x": [[1.0, 2.0, 3.0]]})
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert servable.run("serving_default", {"x": [[1.0, 2.0]]})["y"].tolist() == [[3.0]]
    servable.unload()


def test_concurrent_calls_of_every_batch_size_each_get_their_own_answer(
    servable: TfLiteServable,
) -> None:
    # Two interpreters for eight threads: calls wait for one, and each resizes it to its
    # own batch; any sharing of an interpreter mid-run would mix answers up.
    servable.unload()
    path = servable.path
    pooled = load_tflite_model(path, num_interpreters=2)
    failures: list[str] = []
    start = threading.Barrier(8)

    def client(n: int) -> None:
        start.wait()
        for i in range(40):
            rows = 1 + (n + i) % 7
            x = np.full((rows, 1), float(n * 100 + i), np.float32)
            y = pooled.run("serving_default", {"x": x})["y"]
            if y.shape != (rows, 1) or not np.allclose(y, 0.5 * x + 2.0):
                failures.append(f"thread {n} call {i}: {y.tolist()} for {x.tolist()}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert pooled._pool is not None and pooled._pool._alive <= 2
    pooled.unload()


def test_batched_requests_run_as_one_call_and_split_back(
    models: dict[str, bytes], tmp_path: Path
) -> None:
    inner = load_tflite_model(publish_tflite(tmp_path, 1, models["signatures"]))
    sizes: list[int] = []
    batching = BatchingServable(
        inner, BatchingConfig(max_batch_size=8, batch_timeout_micros=100_000, num_batch_threads=1),
        name="tflite", on_batch=sizes.append,
    )
    answers: dict[int, list[list[float]]] = {}
    threads = [
        threading.Thread(target=lambda n=n: answers.__setitem__(
            n, batching.run("serving_default", {"x": [[float(n)]]})["y"].tolist()))
        for n in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers == {n: [[0.5 * n + 2.0]] for n in range(4)}
    assert sum(sizes) == 4 and max(sizes) > 1
    batching.unload()


def test_unload_is_idempotent_and_a_later_run_is_refused(servable: TfLiteServable) -> None:
    servable.unload()
    servable.unload()
    with pytest.raises(ServingError, match="has been unloaded") as caught:
        servable.run("serving_default", {"x": [[1.0]]})
    assert caught.value.code == Code.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("content", "code"),
    [(b"not a flatbuffer at all", Code.INVALID_ARGUMENT), (b"", Code.INVALID_ARGUMENT)],
)
def test_a_corrupt_model_fails_its_load_naming_the_folder(
    tmp_path: Path, content: bytes, code: Code
) -> None:
    folder = publish_tflite(tmp_path, 1, content)
    with pytest.raises(ServingError, match=f"cannot load the TFLite model at {folder}") as caught:
        load_tflite_model(folder)
    assert caught.value.code == code


def test_a_truncated_model_fails_its_load(models: dict[str, bytes], tmp_path: Path) -> None:
    folder = publish_tflite(tmp_path, 1, models["signatures"][: len(models["signatures"]) // 2])
    with pytest.raises(ServingError, match="cannot load the TFLite model"):
        load_tflite_model(folder)


def test_the_format_is_chosen_as_tf_servings_bundle_factory_does(
    models: dict[str, bytes], tmp_path: Path, model_builder: object
) -> None:
    tflite_only = publish_tflite(tmp_path / "lite", 1, models["signatures"])
    with pytest.raises(ServingError, match="set tensorflow.prefer_tflite_model") as caught:
        load_version(tflite_only)
    assert caught.value.code == Code.NOT_FOUND
    loaded = load_version(tflite_only, prefer_tflite_model=True)
    assert isinstance(loaded, TfLiteServable)
    loaded.unload()
    both = model_builder.publish(tmp_path / "both", 1, intercept=7.0)  # type: ignore[attr-defined]
    (both / "model.tflite").write_bytes(models["signatures"])  # intercept 2 in the TFLite file
    for prefer, kind, y in ((False, SavedModelServable, 7.5), (True, TfLiteServable, 2.5)):
        loaded = load_version(both, prefer_tflite_model=prefer)
        assert isinstance(loaded, kind)
        assert loaded.run("serving_default", {"x": [[1.0]]})["y"].tolist() == [[y]]
        loaded.unload()


def test_warmup_requests_replay_against_a_tflite_model(
    models: dict[str, bytes], tmp_path: Path
) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from loader.servables.warmup import warm_up

    folder = publish_tflite(tmp_path, 1, models["plain"])
    request = predict_pb2.PredictRequest(inputs={"x": tf.make_tensor_proto([[1.0]], tf.float32)})
    write_warmup_file(folder, [prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request))])
    servable = load_tflite_model(folder)
    assert warm_up(servable, folder).records == 1
    servable.unload()
