"""Loading and running SavedModels, checked against TF Serving's own test models."""

from __future__ import annotations

import gc
import json
import shutil
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loader.base import Code, ServingError, TensorInfo
from loader.servables.saved_model_proto import is_tf2_saved_model, read_signatures
from loader.servables.savedmodel import SavedModelServable, load_saved_model

TF1 = "saved_model_half_plus_two_cpu/00000123"
TF2 = "saved_model_half_plus_two_tf2_cpu/00000123"
TWO_VERSIONS = "saved_model_half_plus_two_2_versions/00000123"
# The TF2 model again, run through its restored TF2 functions (backend "tf2") instead of
# the session every model takes by default: both paths must answer alike.
TF2_FUNCTIONS = "tf2-functions"
MODELS = (TF1, TF2, TWO_VERSIONS, TF2_FUNCTIONS)


def example(x: float) -> bytes:
    """A serialized tf.train.Example with one float feature `x`."""
    import tensorflow as tf

    feature = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=[x]))}
    return bytes(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


@pytest.fixture(scope="module")
def servables(tfserving_testdata: Path) -> Iterator[dict[str, SavedModelServable]]:
    """Each reference model loaded once for the module."""
    loaded = {
        name: load_saved_model(tfserving_testdata / name)
        for name in MODELS
        if name != TF2_FUNCTIONS
    }
    loaded[TF2_FUNCTIONS] = load_saved_model(tfserving_testdata / TF2, backend="tf2")
    yield loaded
    for servable in loaded.values():
        servable.unload()


@pytest.fixture(params=MODELS)
def servable(
    request: pytest.FixtureRequest, servables: dict[str, SavedModelServable]
) -> SavedModelServable:
    return servables[request.param]


def test_every_model_takes_the_session_path_as_in_tf_serving(
    servables: dict[str, SavedModelServable], tfserving_testdata: Path
) -> None:
    assert servables[TF1].backend == "session"
    assert servables[TWO_VERSIONS].backend == "session"
    assert servables[TF2].backend == "session"
    assert servables[TF2_FUNCTIONS].backend == "tf2"
    assert not is_tf2_saved_model(tfserving_testdata / TF1)
    assert is_tf2_saved_model(tfserving_testdata / TF2)


def test_serving_default_computes_half_plus_two(servable: SavedModelServable) -> None:
    result = servable.run("serving_default", {"x": np.array([[2.0], [3.0], [4.0]], np.float32)})
    assert list(result) == ["y"]
    np.testing.assert_allclose(result["y"], [[3.0], [3.5], [4.0]])


def test_a_1d_batch_fed_to_a_column_input_keeps_its_shape(servable: SavedModelServable) -> None:
    # TF Serving answers {"instances": [2.0, 3.0, 4.0]} with [3.0, 3.5, 4.0].
    result = servable.run("serving_default", {"x": np.array([2.0, 3.0, 4.0], np.float32)})
    assert result["y"].shape == (3,)
    np.testing.assert_allclose(result["y"], [3.0, 3.5, 4.0])


@pytest.mark.parametrize(
    ("signature", "output", "expected"),
    [
        ("regress_x_to_y", "outputs", 3.0),
        ("regress_x_to_y2", "outputs", 4.0),
        ("classify_x_to_y", "scores", 3.0),
    ],
)
def test_classify_and_regress_signatures_take_serialized_examples(
    servable: SavedModelServable, signature: str, output: str, expected: float
) -> None:
    result = servable.run(signature, {"inputs": np.array([example(2.0)], dtype=object)})
    np.testing.assert_allclose(result[output], [[expected]])


def test_string_inputs_may_arrive_as_bytes_arrays(servables: dict[str, SavedModelServable]) -> None:
    result = servables[TF1].run("regress_x_to_y", {"inputs": [example(4.0)]})
    np.testing.assert_allclose(result["outputs"], [[4.0]])


@pytest.mark.parametrize(
    ("model", "reference"),
    [
        (TF1, "half_plus_two_model_metadata.json"),
        (TWO_VERSIONS, "saved_model_half_plus_two_2_versions_metadata.json"),
    ],
)
def test_signature_def_json_equals_tf_serving_metadata(
    servables: dict[str, SavedModelServable], tfserving_testdata: Path, model: str, reference: str
) -> None:
    expected = json.loads((tfserving_testdata / reference).read_text())["metadata"]["signature_def"]
    assert servables[model].signature_def_json() == expected


def test_signatures_describe_the_signature_defs(servables: dict[str, SavedModelServable]) -> None:
    signatures = servables[TF1].signatures
    assert set(signatures) == {
        "serving_default",
        "classify_x_to_y",
        "regress_x_to_y",
        "regress_x_to_y2",
        "regress_x2_to_y3",
    }
    predict = signatures["serving_default"]
    assert predict.method_name == "tensorflow/serving/predict"
    assert predict.inputs == {"x": TensorInfo(name="x:0", dtype="DT_FLOAT", shape=(-1, 1))}
    assert predict.outputs == {"y": TensorInfo(name="y:0", dtype="DT_FLOAT", shape=(-1, 1))}
    classify = signatures["classify_x_to_y"]
    assert classify.inputs["inputs"] == TensorInfo(
        name="tf_example:0", dtype="DT_STRING", shape=None
    )


def test_read_signatures_matches_the_loaded_model(
    servables: dict[str, SavedModelServable], tfserving_testdata: Path
) -> None:
    assert read_signatures(tfserving_testdata / TF2) == servables[TF2].signatures


def test_output_keys_select_outputs(servables: dict[str, SavedModelServable]) -> None:
    result = servables[TF1].run(
        "serving_default", {"x": np.array([[2.0]], np.float32)}, output_keys=["y"]
    )
    assert list(result) == ["y"]


def test_a_missing_input_falls_back_to_the_signature_default(
    servables: dict[str, SavedModelServable],
) -> None:
    # The TF2 model's serving_default carries a default of [0.0] for x.
    np.testing.assert_allclose(servables[TF2].run("serving_default", {})["y"], [2.0])


def error_of(servable: SavedModelServable, *args: object, **kwargs: object) -> ServingError:
    with pytest.raises(ServingError) as caught:
        servable.run(*args, **kwargs)  # type: ignore[arg-type]
    return caught.value


def test_an_unknown_signature_is_an_invalid_argument(servable: SavedModelServable) -> None:
    error = error_of(servable, "foo", {"x": np.array([[1.0]], np.float32)})
    assert error.code is Code.INVALID_ARGUMENT
    assert error.message == 'Serving signature name: "foo" not found in signature def'


def test_a_missing_input_is_named(servables: dict[str, SavedModelServable]) -> None:
    error = error_of(servables[TF1], "serving_default", {})
    assert error.code is Code.INVALID_ARGUMENT
    assert "Missing but required: {x}" in error.message


def test_an_unknown_input_is_named(servables: dict[str, SavedModelServable]) -> None:
    error = error_of(servables[TF1], "serving_default", {"z": np.array([[1.0]], np.float32)})
    assert error.code is Code.INVALID_ARGUMENT
    assert "Signature input alias: x(feed name: x:0) not found in request" in error.message
    assert "{z}" in error.message

    extra = {"x": np.array([[1.0]], np.float32), "z": np.array([[1.0]], np.float32)}
    error = error_of(servables[TF1], "serving_default", extra)
    assert error.code is Code.INVALID_ARGUMENT
    assert "Sent extra: {z}" in error.message


def test_an_unknown_input_is_named_when_the_signature_has_defaults(
    servables: dict[str, SavedModelServable],
) -> None:
    error = error_of(servables[TF2], "serving_default", {"z": np.array([1.0], np.float32)})
    assert error.code is Code.INVALID_ARGUMENT
    assert error.message.startswith("Inputs contains invalid name") and "z" in error.message


def test_an_unknown_output_key_is_named(servable: SavedModelServable) -> None:
    error = error_of(
        servable, "serving_default", {"x": np.array([[1.0]], np.float32)}, output_keys=["nope"]
    )
    assert error.code is Code.INVALID_ARGUMENT
    assert error.message.startswith("output tensor alias not found in signature: nope")


def test_a_bad_value_is_an_invalid_argument_with_tensorflows_message(
    servable: SavedModelServable,
) -> None:
    error = error_of(
        servable, "regress_x_to_y", {"inputs": np.array([b"not an example"], dtype=object)}
    )
    assert error.code is Code.INVALID_ARGUMENT
    assert "Could not parse example input" in error.message


def test_a_value_of_the_wrong_type_is_an_invalid_argument(
    servables: dict[str, SavedModelServable],
) -> None:
    error = error_of(servables[TF1], "serving_default", {"x": np.array([["a"]])})
    assert error.code is Code.INVALID_ARGUMENT
    assert "x" in error.message


def test_concurrent_runs_get_their_own_answers(servable: SavedModelServable) -> None:
    failures: list[str] = []

    def client(offset: int) -> None:
        for i in range(25):
            x = np.array([[offset], [i]], np.float32)
            y = servable.run("serving_default", {"x": x})["y"]
            if not np.allclose(y, 0.5 * x + 2.0):
                failures.append(f"x={x.ravel()} gave {y.ravel()}")

    threads = [threading.Thread(target=client, args=(n,), name=f"client-{n}") for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []


def test_run_after_unload_raises_and_unload_is_idempotent(tfserving_testdata: Path) -> None:
    servable = load_saved_model(tfserving_testdata / TF1)
    servable.unload()
    servable.unload()
    with pytest.raises(ServingError, match="unloaded") as caught:
        servable.run("serving_default", {"x": np.array([[1.0]], np.float32)})
    assert caught.value.code is Code.FAILED_PRECONDITION


def test_loading_and_unloading_releases_the_model(tfserving_testdata: Path) -> None:
    counts = []
    for round_ in range(30):
        # Alternate the two paths so both are checked.
        servable = load_saved_model(tfserving_testdata / (TF1 if round_ % 2 else TF2))
        servable.run("serving_default", {"x": np.array([[1.0]], np.float32)})
        assert servable._runner is not None
        runner = weakref.ref(servable._runner)
        servable.unload()
        assert runner() is None, f"round {round_}: the {servable.backend} runner outlived unload"
        if round_ in (5, 29):
            gc.collect()
            counts.append(len(gc.get_objects()))
    # A servable left behind holds about a thousand objects or more.
    assert counts[1] - counts[0] < 500, counts


@pytest.fixture
def model_copy(tfserving_testdata: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "1"
    shutil.copytree(tfserving_testdata / TF2, folder)
    return folder


def test_a_truncated_saved_model_is_a_clear_error(model_copy: Path) -> None:
    pb = model_copy / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[:1000])
    with pytest.raises(ServingError) as caught:
        load_saved_model(model_copy)
    assert caught.value.code is Code.DATA_LOSS
    assert str(model_copy) in caught.value.message


def test_a_missing_saved_model_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ServingError) as caught:
        load_saved_model(tmp_path)
    assert caught.value.code is Code.NOT_FOUND
    assert str(tmp_path) in caught.value.message


def test_unknown_tags_list_the_available_tag_sets(model_copy: Path) -> None:
    with pytest.raises(ServingError) as caught:
        load_saved_model(model_copy, tags=("serve", "gpu"))
    assert caught.value.code is Code.NOT_FOUND
    assert "['serve']" in caught.value.message


def test_missing_variables_are_a_load_error(model_copy: Path) -> None:
    shutil.rmtree(model_copy / "variables")
    with pytest.raises(ServingError, match=str(model_copy)):
        load_saved_model(model_copy, backend="session")


def _break_session_restore(saved_model: Any) -> None:
    # Only the session restores variables through the saver; TF2 reads the object graph.
    saved_model.meta_graphs[0].saver_def.restore_op_name = "no_such_restore_op"


def _break_tf2_function(saved_model: Any) -> None:
    # Point a signature's function at one the library lacks: only the TF2 loader reads it.
    nodes = saved_model.meta_graphs[0].object_graph_def.nodes
    bare = next(n for n in nodes if n.WhichOneof("kind") == "bare_concrete_function")
    bare.bare_concrete_function.concrete_function_name = "__inference_missing_1"


@pytest.mark.parametrize(
    ("damage", "runs_on", "refused_by"),
    [(_break_session_restore, "tf2", "session"), (_break_tf2_function, "session", "tf2")],
    ids=["session-cannot-restore", "tf2-cannot-restore"],
)
def test_a_model_one_runner_cannot_load_runs_on_the_other(
    model_copy: Path, damage: Any, runs_on: str, refused_by: str
) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    pb = model_copy / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    damage(saved_model)
    pb.write_bytes(saved_model.SerializeToString())

    servable = load_saved_model(model_copy)
    try:
        assert servable.backend == runs_on
        result = servable.run("serving_default", {"x": np.array([2.0, 3.0], np.float32)})
        np.testing.assert_allclose(result["y"], [3.0, 3.5])
    finally:
        servable.unload()
    with pytest.raises(ServingError, match=str(model_copy)):
        load_saved_model(model_copy, backend=refused_by)


def test_the_init_op_signature_is_listed_but_cannot_be_run(
    servables: dict[str, SavedModelServable],
) -> None:
    assert "__saved_model_init_op" in servables[TF2].signature_def_json()["signature_def"]
    error = error_of(servables[TF2], "__saved_model_init_op", {})
    assert error.code is Code.INVALID_ARGUMENT


def test_a_session_load_logs_no_deprecation_warning(tfserving_testdata: Path) -> None:
    # tf.compat.v1.saved_model.loader.load warns "Use `tf.saved_model.load` instead" at
    # its first call, which read as advice to operators at every start. A fresh process,
    # since TensorFlow warns once per process.
    import subprocess
    import sys

    from tests.daemon_process import ROOT

    model = tfserving_testdata / TF2
    code = (
        "import logging\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from loader.servables.savedmodel import load_saved_model\n"
        f"servable = load_saved_model({str(model)!r})\n"
        "print(servable.backend)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "session"
    assert "deprecated" not in run.stderr


def _write_vocabulary_model(folder: Path) -> None:
    """A TF2 model whose lookup table is initialised from an asset file at load time."""
    import tensorflow as tf

    folder.parent.mkdir(parents=True, exist_ok=True)
    vocabulary = folder.parent / "words.txt"
    vocabulary.write_text("apple\nbanana\ncherry\n")

    class Lookup(tf.Module):
        def __init__(self) -> None:
            init = tf.lookup.TextFileInitializer(
                str(vocabulary), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
            )
            self.table = tf.lookup.StaticHashTable(init, default_value=-1)
            self.scale = tf.Variable(10, dtype=tf.int64)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, words: Any) -> dict[str, Any]:
            return {"ids": self.table.lookup(words) * self.scale}

    module = Lookup()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    vocabulary.unlink()  # from now on only the copy in assets/ exists


@pytest.mark.parametrize("backend", ["auto", "tf2"])
def test_a_tf2_model_with_an_asset_table_answers_alike_on_both_runners(
    tmp_path: Path, backend: str
) -> None:
    # The session runs the model's init op with the asset's path, as TF Serving does.
    folder = tmp_path / "m" / "1"
    _write_vocabulary_model(folder)
    servable = load_saved_model(folder, backend=backend)  # type: ignore[arg-type]
    try:
        assert servable.backend == ("session" if backend == "auto" else "tf2")
        words = np.array([b"banana", b"durian", b"cherry"], dtype=object)
        result = servable.run("serving_default", {"words": words})
        assert result["ids"].tolist() == [10, -10, 20]
    finally:
        servable.unload()


def _write_three_outputs_model(folder: Path) -> None:
    """x -> a = x + 1, b = x + 2, c = x + 3."""
    import tensorflow as tf

    class Three(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32)])
        def serve(self, x: Any) -> dict[str, Any]:
            return {"a": x + 1.0, "b": x + 2.0, "c": x + 3.0}

    module = Three()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})


def test_session_callables_are_kept_per_set_of_outputs_and_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients choose the outputs and their order (gRPC's output_filter): the order makes
    no other callable, and past MAX_CALLABLES the all-outputs one answers."""
    import itertools

    from loader.servables import savedmodel

    _write_three_outputs_model(tmp_path / "three")
    servable = load_saved_model(tmp_path / "three", backend="session")
    runner: Any = servable._runner
    x = np.array([[1.0]], np.float32)
    try:
        choices = [list(p) for n in (1, 2, 3) for p in itertools.permutations("abc", n)]
        assert len(choices) == 15
        for keys in choices:
            outputs = servable.run("serving_default", {"x": x}, output_keys=keys)
            assert {k: v.tolist() for k, v in outputs.items()} == {
                k: [[1.0 + "abc".index(k) + 1]] for k in keys
            }
        assert len(runner._callables) == 7  # the sets of outputs, not their orders
        monkeypatch.setattr(savedmodel, "MAX_CALLABLES", 1)
        runner._callables.clear()
        for keys in (["a"], ["b"], ["c", "a"]):
            outputs = servable.run("serving_default", {"x": x}, output_keys=keys)
            assert sorted(outputs) == sorted(keys)
        assert len(runner._callables) == 2  # ["a"]'s, then the all-outputs one for the rest
    finally:
        servable.unload()
