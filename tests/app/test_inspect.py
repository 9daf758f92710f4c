"""`modelwatch inspect` and `modelwatch run`, on TF Serving's own models, locally, on S3 and
on GCS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pytest
from moto import mock_aws

from loader.app import inspect
from loader.base import InvalidArgument

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def half_plus_two(tfserving_testdata: Path) -> Path:
    return tfserving_testdata / "saved_model_half_plus_two_cpu" / "00000123"


def test_show_text_is_saved_model_clis(half_plus_two):
    text = inspect.show_text(half_plus_two)
    assert text.startswith("MetaGraphDef with tag-set: 'serve' contains the following SignatureDefs:")
    assert (
        "signature_def['serving_default']:\n"
        "  The given SavedModel SignatureDef contains the following input(s):\n"
        "    inputs['x'] tensor_info:\n"
        "        dtype: DT_FLOAT\n"
        "        shape: (-1, 1)\n"
        "        name: x:0\n"
        "  The given SavedModel SignatureDef contains the following output(s):\n"
        "    outputs['y'] tensor_info:\n"
        "        dtype: DT_FLOAT\n"
        "        shape: (-1, 1)\n"
        "        name: y:0\n"
        "  Method name is: tensorflow/serving/predict"
    ) in text
    assert "shape: unknown_rank" in text  # the classify signature's serialized examples


def test_describe_matches_tf_servings_metadata(half_plus_two, tfserving_testdata):
    reference = json.loads((tfserving_testdata / "half_plus_two_model_metadata.json").read_text())
    (meta_graph,) = inspect.describe(half_plus_two)["meta_graphs"]
    assert meta_graph["tags"] == ["serve"]
    assert meta_graph["signature_def"] == reference["metadata"]["signature_def"]["signature_def"]


def test_inputs_from_expressions_and_files(tmp_path):
    np.save(tmp_path / "a.npy", np.array([[5.0]]))
    np.savez(tmp_path / "b.npz", first=np.array([1]), second=np.array([2]))
    values = inspect.parse_inputs(
        "x=[[1.0], [-2.0]]; y=np.ones((2, 1), dtype=np.float32)",
        f"a={tmp_path / 'a.npy'};b={tmp_path / 'b.npz'}[second];c={tmp_path / 'b.npz'}",
    )
    assert values["x"].tolist() == [[1.0], [-2.0]]
    assert values["y"].dtype == np.float32 and values["y"].shape == (2, 1)
    assert values["a"].tolist() == [[5.0]]
    assert values["b"].tolist() == [2] and values["c"].tolist() == [1]


@pytest.mark.parametrize(
    "expr",
    ["x=__import__('os').system('true')", "x=open('/etc/passwd')", "x=np.load('f')", "x=[1]+[2]", "x"],
)
def test_unsafe_or_malformed_expressions_are_refused(expr):
    with pytest.raises(InvalidArgument):
        inspect.parse_inputs(expr, None)


@pytest.mark.parametrize("version", ["half_plus_two", "tflite_version"])
def test_run_command(version, tmp_path, request):
    folder = request.getfixturevalue(version)  # a SavedModel, or a folder with model.tflite only
    result = subprocess.run(
        [sys.executable, "-m", "loader", "run", str(folder),
         "--input_exprs", "x=[[2.0], [4.0]]", "--outdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Result for output key y:\n[[3.]\n [4.]]" in result.stdout
    assert np.load(tmp_path / "y.npy").tolist() == [[3.0], [4.0]]


def test_inspect_an_s3_version(half_plus_two, tfserving_testdata, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="inspect")
        for path in half_plus_two.rglob("*"):
            if path.is_file():
                s3.upload_file(str(path), "inspect", f"m/123/{path.relative_to(half_plus_two).as_posix()}")
        with inspect.local_version("s3://inspect/m/123", region="us-east-1") as folder:
            described = inspect.describe(folder)
        assert not folder.exists()  # the temporary copy is gone
    reference = json.loads((tfserving_testdata / "half_plus_two_model_metadata.json").read_text())
    assert described["meta_graphs"][0]["signature_def"] == (
        reference["metadata"]["signature_def"]["signature_def"]
    )


def test_run_a_gcs_version_with_a_progress_bar(half_plus_two, monkeypatch, capsys):
    from tests.object_stores import Bucket, gcs_emulator

    with gcs_emulator() as host:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", host)
        bucket = Bucket("gs", "inspect", {"STORAGE_EMULATOR_HOST": host})
        bucket.create()
        bucket.upload(half_plus_two, "m/123")
        with inspect.local_version("gs://inspect/m/123") as folder:
            outputs = inspect.run(folder, "serving_default", {"x": np.array([[2.0]])}, ["serve"])
        assert not folder.exists()  # the temporary copy is gone
    assert outputs["y"].tolist() == [[3.0]]
    assert "fetching" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tflite_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.savedmodels import publish_tflite, tflite_half_plus

    return publish_tflite(tmp_path_factory.mktemp("tflite"), 1, tflite_half_plus(2.0))


def test_inspect_a_tflite_version(tflite_version):
    text = inspect.show_text(tflite_version)
    assert text.startswith("TFLite model model.tflite contains the following SignatureDefs:")
    assert (
        "signature_def['serving_default']:\n"
        "  The given TFLite SignatureDef contains the following input(s):\n"
        "    inputs['x'] tensor_info:\n"
        "        dtype: DT_FLOAT\n"
        "        shape: (-1, 1)\n"
        "        name: serving_default_x:0\n"
    ) in text
    described = inspect.describe(tflite_version)
    assert "meta_graphs" not in described
    assert described["tflite"]["signature_def"]["serving_default"]["method_name"] == (
        "tensorflow/serving/predict"
    )


def test_run_picks_the_tflite_model_beside_a_savedmodel_only_when_asked(half_plus_two, tmp_path):
    import shutil

    from tests.savedmodels import tflite_half_plus

    both = tmp_path / "1"
    shutil.copytree(half_plus_two, both)
    (both / "model.tflite").write_bytes(tflite_half_plus(7.0))  # y = 0.5x + 7
    x = {"x": np.array([[2.0]], np.float32)}
    assert inspect.run(both, "serving_default", x, ["serve"])["y"].tolist() == [[3.0]]
    assert inspect.run(both, "serving_default", x, ["serve"], prefer_tflite_model=True)[
        "y"].tolist() == [[8.0]]
    assert set(inspect.describe(both)) == {"path", "meta_graphs", "tflite"}
