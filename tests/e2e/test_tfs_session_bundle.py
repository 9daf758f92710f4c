"""`modelwatch serve` with TF Serving's session bundle flags, as TF Serving's clients see it:
a tag set other than `serve` (on the TF1 session path), each version's batching_params.pbtxt,
and gRPC answers in tensor_content: one daemon for the module; and one more for
--platform_config_file, which replaces those flags."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.config.test_tfs_flags import Server
from tests.daemon_process import free_port, wait_until
from tests.savedmodels import write_tf1_model_without_variables

pytestmark = pytest.mark.e2e

TAGS = ("serve", "custom")
BATCHING_PARAMS = {"small": "max_batch_size { value: 2 }", "large": "max_batch_size { value: 8 }",
                   "oversized": "max_batch_size { value: 1000000 }"}
MODELS = ("small", "large", "unbatched", "serve_only", "oversized", "swap")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, httpx.Client, int, Path]]:
    root = tmp_path_factory.mktemp("bundle")
    for name in MODELS:
        version = write_tf1_model_without_variables(
            root / name / "1", ("serve",) if name == "serve_only" else TAGS
        )
        if name in BATCHING_PARAMS:
            (version / "batching_params.pbtxt").write_text(BATCHING_PARAMS[name])
    models = root / "models.config"
    models.write_text("model_config_list { " + " ".join(
        f'config {{ name: "{name}" base_path: "{root / name}" }}' for name in MODELS) + " }")
    session = root / "session.config"
    session.write_text("intra_op_parallelism_threads: 1 inter_op_parallelism_threads: 1")
    grpc_port, rest_port = free_port(), free_port()
    server = Server(root, [
        "--host=127.0.0.1", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
        f"--model_config_file={models}", "--saved_model_tags=serve,custom",
        "--enable_batching", "--enable_per_model_batching_parameters",
        "--enable_serialization_as_tensor_content", f"--tensorflow_session_config_file={session}",
        "--max_num_load_retries=0",
    ])
    client = httpx.Client(base_url=f"http://127.0.0.1:{rest_port}", timeout=30)
    try:
        for name in ("small", "large", "unbatched", "swap"):
            server.wait_available(client, name, timeout=120)
        yield server, client, grpc_port, root
    finally:
        client.close()
        assert server.stop() == 0, server.log()


def rows(n: int) -> dict[str, Any]:
    return {"instances": [[float(i)] for i in range(n)]}


def failed_status(client: httpx.Client, model: str, version: int) -> dict[str, Any]:
    """The status of a version whose load failed, once it says so."""
    def failed() -> Any:
        for status in client.get(f"/v1/models/{model}").json()["model_version_status"]:
            if status["version"] == str(version) and status["status"]["error_code"] != "OK":
                return status
        return None

    return wait_until(failed, 60, f"version {version} of {model} to fail")


def test_a_custom_tag_set_is_served_on_the_tf1_path(daemon):
    _, client, _, _ = daemon
    response = client.post("/v1/models/unbatched:predict", json=rows(3))
    assert response.json() == {"predictions": [[0.0], [2.0], [4.0]]}, response.text


def test_a_model_without_the_tag_set_fails_to_load_saying_why(daemon):
    _, client, _, root = daemon
    status = failed_status(client, "serve_only", 1)
    assert status["state"] == "END"
    assert status["status"]["error_code"] == "NOT_FOUND"
    assert status["status"]["error_message"] == (
        f"SavedModel at {root}/serve_only/1 has no MetaGraphDef with tags ['custom', 'serve']; "
        "available tag sets: [['serve']]"
    )


def test_a_new_version_without_the_tag_set_leaves_the_old_one_serving(daemon, tmp_path):
    _, client, _, root = daemon
    staged = write_tf1_model_without_variables(tmp_path / "v2", ("serve",))
    os.rename(staged, root / "swap" / "2")
    status = failed_status(client, "swap", 2)
    assert "has no MetaGraphDef with tags ['custom', 'serve']" in status["status"]["error_message"]
    response = client.post("/v1/models/swap:predict", json=rows(2))
    assert response.json() == {"predictions": [[0.0], [2.0]]}, response.text
    states = {s["version"]: s["state"] for s in client.get("/v1/models/swap").json()["model_version_status"]}
    assert states["1"] == "AVAILABLE"


def test_each_version_batches_with_its_own_batching_params(daemon):
    _, client, _, _ = daemon
    for model, fits, too_many in (("small", 2, 3), ("large", 8, 9)):
        assert client.post(f"/v1/models/{model}:predict", json=rows(fits)).status_code == 200
        refused = client.post(f"/v1/models/{model}:predict", json=rows(too_many))
        assert refused.status_code == 400
        assert refused.json() == {
            "error": f"Task size {too_many} is larger than maximum batch size {fits}"
        }
    # Without a batching_params.pbtxt a version is not batched (TF Serving's rule).
    assert client.post("/v1/models/unbatched:predict", json=rows(20)).status_code == 200
    metrics = client.get("/monitoring/prometheus/metrics").text
    assert 'modelwatch_batch_size_count{model="small"}' in metrics
    assert 'modelwatch_batch_size_count{model="large"}' in metrics
    assert 'modelwatch_batch_size_count{model="unbatched"}' not in metrics


def test_a_batching_params_file_past_the_limits_fails_the_load_naming_it(daemon):
    _, client, _, root = daemon
    status = failed_status(client, "oversized", 1)
    assert status["status"] == {
        "error_code": "INVALID_ARGUMENT",
        "error_message": f"{root}/oversized/1/batching_params.pbtxt: max_batch_size 1000000 is "
                         "over 65536 (modelwatch's limits for this file)",
    }


@pytest.mark.parametrize("model", ["large", "unbatched"])
def test_grpc_answers_carry_tensor_content(daemon, model):
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    _, _, grpc_port, _ = daemon
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0], [2.5]], np.float32)))
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        answer = stub.Predict(request, timeout=30).outputs["y"]
    assert answer.tensor_content and not answer.float_val
    np.testing.assert_array_equal(tf.make_ndarray(answer), np.array([[2.0], [5.0]], np.float32))


def test_a_platform_config_file_sets_the_tag_set_and_batching(tmp_path):
    """--platform_config_file in place of the flags: its tensorflow platform's tag set and
    batching parameters, with the thread counts of its session config."""
    write_tf1_model_without_variables(tmp_path / "m" / "1", TAGS)
    platform = tmp_path / "platform.config"
    platform.write_text(
        'platform_configs { key: "tensorflow" value { source_adapter_config { '
        "[type.googleapis.com/tensorflow.serving.SavedModelBundleSourceAdapterConfig] { "
        'legacy_config { saved_model_tags: "serve" saved_model_tags: "custom" '
        "session_config { intra_op_parallelism_threads: 1 inter_op_parallelism_threads: 1 } "
        "batching_parameters { max_batch_size { value: 2 } } } } } } }"
    )
    rest_port = free_port()
    server = Server(tmp_path, ["--host=127.0.0.1", "--port=0", f"--rest_api_port={rest_port}",
                               "--model_name=m", f"--model_base_path={tmp_path / 'm'}",
                               f"--platform_config_file={platform}"])
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{rest_port}", timeout=30) as client:
            server.wait_available(client, "m", timeout=120)
            response = client.post("/v1/models/m:predict", json=rows(2))
            assert response.json() == {"predictions": [[0.0], [2.0]]}, response.text
            refused = client.post("/v1/models/m:predict", json=rows(3))
            assert refused.json() == {"error": "Task size 3 is larger than maximum batch size 2"}
    finally:
        assert server.stop() == 0, server.log()
