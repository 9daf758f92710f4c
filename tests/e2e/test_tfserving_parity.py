"""TF Serving's published REST behaviour, replayed against modelwatch with TF Serving's own
test models (see tests/testdata/tfserving/README.md for the answers quoted here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.daemon_process import DaemonProcess

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory, tfserving_testdata: Path):
    work = tmp_path_factory.mktemp("parity")
    for name, source in (("default", "saved_model_half_plus_two_cpu"),
                         ("saved_model_half_plus_two_2_versions", "saved_model_half_plus_two_2_versions"),
                         ("tf2", "saved_model_half_plus_two_tf2_cpu")):
        shutil.copytree(tfserving_testdata / source, work / "repo" / name)
    process = DaemonProcess(work, {
        "server": {"host": "127.0.0.1", "rest_port": 0, "grpc_port": 0},
        "models": [
            {"name": "default", "base_path": str(work / "repo" / "default")},
            # Version 123 is the one TF Serving's reference metadata describes.
            {"name": "saved_model_half_plus_two_2_versions",
             "base_path": str(work / "repo" / "saved_model_half_plus_two_2_versions"),
             "version_policy": {"specific": {"versions": [123]}}},
            {"name": "tf2", "base_path": str(work / "repo" / "tf2")},
        ],
    }).start()
    for model in ("default", "saved_model_half_plus_two_2_versions", "tf2"):
        process.wait_for_states(model, {123: "AVAILABLE"})
    yield process
    assert process.stop() == 0


@pytest.mark.parametrize("model", ["default", "tf2"])
def test_predict_row_and_columnar(d, model):
    response = d.client.post(f"/v1/models/{model}:predict", json={"instances": [2.0, 3.0, 4.0]})
    assert response.json() == {"predictions": [3.0, 3.5, 4.0]}
    response = d.client.post(f"/v1/models/{model}:predict", json={"inputs": [2.0, 3.0, 4.0]})
    assert response.json() == {"outputs": [3.0, 3.5, 4.0]}


def test_classify_and_regress(d):
    response = d.client.post("/v1/models/default:classify", json={
        "signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]})
    assert response.json() == {"results": [[["", 3.0]]]}
    response = d.client.post("/v1/models/default:regress", json={
        "signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]})
    assert response.json() == {"results": [3.0]}


def test_status(d):
    assert d.client.get("/v1/models/default").json() == {"model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]}


@pytest.mark.parametrize(
    ("model", "reference"),
    [("default", "half_plus_two_model_metadata.json"),
     ("saved_model_half_plus_two_2_versions", "saved_model_half_plus_two_2_versions_metadata.json")],
)
def test_metadata_equals_tf_servings(d, tfserving_testdata, model, reference):
    expected = json.loads((tfserving_testdata / reference).read_text())
    assert d.client.get(f"/v1/models/{model}/metadata").json() == expected
    assert d.client.get(f"/v1/models/{model}/versions/123/metadata").json() == expected


def test_errors(d):
    response = d.client.post("/v1/models/default:predict", json={"instances": [[2.0]], "signature_name": "nope"})
    assert response.status_code == 400
    assert response.json() == {"error": 'Serving signature name: "nope" not found in signature def'}
    response = d.client.post("/v1/models/default:predict", json={"instances": [["a"]]})
    assert response.status_code == 400 and "error" in response.json()
    response = d.client.post("/v1/models/default:predict", content=b"{not json")
    assert response.status_code == 400 and response.json()["error"].startswith("JSON Parse error")
