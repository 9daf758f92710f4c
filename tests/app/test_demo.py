"""The demo models: written with TF2, loaded back through the servable loader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loader.app.demo import DEMO_MODEL, prepare_demo_repository, write_linear_model
from loader.servables.savedmodel import load_saved_model


@pytest.fixture(scope="module")
def demo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo repository, written once for the module."""
    return prepare_demo_repository(tmp_path_factory.mktemp("models"))


@pytest.mark.parametrize(("version", "intercept"), [(1, 2.0), (2, 3.0)])
def test_demo_versions_compute_half_x_plus_their_intercept(
    demo_repository: Path, version: int, intercept: float
) -> None:
    servable = load_saved_model(demo_repository / str(version))
    try:
        assert servable.backend == "session"
        column = servable.run("serving_default", {"x": np.array([[2.0], [4.0]], np.float32)})
        np.testing.assert_allclose(column["y"], [[1.0 + intercept], [2.0 + intercept]])
        flat = servable.run("serving_default", {"x": np.array([2.0, 4.0], np.float32)})
        assert flat["y"].shape == (2,)
        np.testing.assert_allclose(flat["y"], [1.0 + intercept, 2.0 + intercept])
    finally:
        servable.unload()


def test_demo_model_has_variables_and_the_predict_signature(demo_repository: Path) -> None:
    version = demo_repository / "1"
    assert any((version / "variables").glob("variables.data-*"))
    servable = load_saved_model(version)
    try:
        predict = servable.signatures["serving_default"]
        assert predict.method_name == "tensorflow/serving/predict"
        assert predict.inputs["x"].dtype == "DT_FLOAT"
        assert predict.inputs["x"].shape == (-1, 1)
        assert set(predict.outputs) == {"y"}
    finally:
        servable.unload()


def test_prepare_demo_repository_is_idempotent(demo_repository: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in demo_repository.rglob("*")}
    assert prepare_demo_repository(demo_repository.parent) == demo_repository
    assert {p: p.stat().st_mtime_ns for p in demo_repository.rglob("*")} == before
    assert demo_repository.name == DEMO_MODEL
    assert sorted(p.name for p in demo_repository.iterdir()) == ["1", "2"]


def test_prepare_demo_repository_fills_in_a_missing_version(tmp_path: Path) -> None:
    write_linear_model(tmp_path / DEMO_MODEL / "2", intercept=3.0)
    base = prepare_demo_repository(tmp_path)
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]


def test_write_linear_model_refuses_to_overwrite_and_leaves_no_staging_folder(
    tmp_path: Path,
) -> None:
    target = tmp_path / "7"
    write_linear_model(target, slope=2.0, intercept=1.0)
    with pytest.raises(FileExistsError):
        write_linear_model(target)
    assert [p.name for p in tmp_path.iterdir()] == ["7"]
    servable = load_saved_model(target)
    try:
        np.testing.assert_allclose(servable.run("serving_default", {"x": [[3.0]]})["y"], [[7.0]])
    finally:
        servable.unload()


def test_preparing_a_ready_repository_imports_no_tensorflow(demo_repository: Path) -> None:
    """A second `make serve` pays for one TensorFlow import (the daemon's), not two."""
    probe = (
        "import sys; from loader.app.cli import main; code = main(['prepare-demo', sys.argv[1]]);"
        " print('tensorflow' in sys.modules); sys.exit(code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(demo_repository.parent)],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert done.stdout.splitlines()[-1] == "False", done.stdout
