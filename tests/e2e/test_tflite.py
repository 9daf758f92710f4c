"""End to end: TFLite versions served by the daemon as TF Serving serves them with
--prefer_tflite_model, over REST and gRPC, batched, hot-swapped, and started with TF
Serving's own flags. The models mirror TF Serving's `saved_model_half_plus_two_tflite`
(no signature) and `..._with_sigdef` (its stored SignatureDefs), converted here."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.daemon_process import ROOT, DaemonProcess, free_port, wait_until
from tests.savedmodels import publish_tflite, tflite_half_plus

pytestmark = pytest.mark.e2e

MODELS = {"default": "plain", "with_sigdef": "tfs_sigdef", "batched": "signatures",
          "swapped": "signatures"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("tflite")
    for name, kind in MODELS.items():
        publish_tflite(work / "repo" / name, 1 if kind == "signatures" else 123,
                       tflite_half_plus(2.0, kind))
    batching = {"max_batch_size": 8, "batch_timeout_micros": 20_000, "num_batch_threads": 1}
    d = DaemonProcess(work, {
        "server": {"host": "127.0.0.1", "rest_port": 0, "grpc_port": free_port()},
        "watch": {"poll_interval_seconds": 0.2},
        "tensorflow": {"prefer_tflite_model": True, "num_tflite_interpreters": 2},
        "models": [
            {"name": name, "base_path": str(work / "repo" / name),
             **({"batching": batching} if name == "batched" else {})}
            for name in MODELS
        ],
    }).start()
    for name, kind in MODELS.items():
        d.wait_for_states(name, {1 if kind == "signatures" else 123: "AVAILABLE"})
    channel = grpc.insecure_channel(f"127.0.0.1:{d.grpc_port}")
    yield d, channel, work
    channel.close()
    assert d.stop() == 0, d.log()[-3000:]


def verify_predict_request(channel: grpc.Channel, model: str, specify_output: bool) -> None:
    """TF Serving's VerifyPredictRequest (tensorflow_model_server_test_base.py), as its
    testPredictOnTfLite and testPredictWithSignatureDefOnTfLite send it."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "serving_default"
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    if specify_output:
        request.output_filter.append("y")
    result = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 5.0)
    assert "y" in result.outputs
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(result.outputs["y"].float_val) == [3.0]
    assert result.model_spec.name == model
    assert result.model_spec.signature_name == "serving_default"
    assert result.model_spec.version.value == 123


@pytest.mark.parametrize("model", ["default", "with_sigdef"])
@pytest.mark.parametrize("specify_output", [False, True])
def test_tf_servings_tflite_predict_tests_over_grpc(served, model, specify_output):
    _, channel, _ = served
    verify_predict_request(channel, model, specify_output)


@pytest.mark.parametrize("model", ["default", "with_sigdef"])
def test_rest_predict_status_and_metadata(served, model):
    d, channel, _ = served
    assert d.predict(model, {"instances": [1.0, 2.0, 3.0]}).json() == {"predictions": [2.5, 3.0, 3.5]}
    assert d.predict(model, {"inputs": {"x": [[2.0]]}}).json() == {"outputs": [[3.0]]}
    assert d.client.get(f"/v1/models/{model}").json() == {"model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]}
    input_name = {"default": "x", "with_sigdef": "tflite_input"}[model]
    shape = {"dim": [{"size": "1", "name": ""}] * 2, "unknown_rank": False}
    expected_signature = {
        "inputs": {"x": {"name": input_name, "dtype": "DT_FLOAT", "tensor_shape": shape}},
        "outputs": {"y": {"name": "y", "dtype": "DT_FLOAT", "tensor_shape": shape}},
        "method_name": "tensorflow/serving/predict",
        "defaults": {},
    }
    rest = d.client.get(f"/v1/models/{model}/metadata").json()
    assert rest == {
        "model_spec": {"name": model, "signature_name": "", "version": "123"},
        "metadata": {"signature_def": {"signature_def": {"serving_default": expected_signature}}},
    }

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = model
    request.metadata_field.append("signature_def")
    answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, 30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    answer.metadata["signature_def"].Unpack(signatures)
    assert answer.model_spec.version.value == 123
    assert json_format.MessageToDict(
        signatures, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    ) == rest["metadata"]["signature_def"]


def test_rest_and_grpc_requests_are_batched_together(served):
    d, channel, _ = served
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    answers: dict[tuple[str, int], Any] = {}

    def over_rest(n: int) -> None:
        with httpx.Client(base_url=str(d.client.base_url), timeout=30) as client:
            answer = client.post("/v1/models/batched:predict", json={"instances": [[float(n)]]})
            answers["rest", n] = answer.json()["predictions"]

    def over_grpc(n: int) -> None:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "batched"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[n], [n]], np.float32)))
        answers["grpc", n] = tf.make_ndarray(stub.Predict(request, 30).outputs["y"]).tolist()

    threads = [threading.Thread(target=f, args=(n,)) for n in range(6) for f in (over_rest, over_grpc)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert answers == {
        **{("rest", n): [[0.5 * n + 2]] for n in range(6)},
        **{("grpc", n): [[0.5 * n + 2]] * 2 for n in range(6)},
    }
    metrics = d.client.get("/monitoring/prometheus/metrics").text
    assert 'modelwatch_batch_size_count{model="batched"}' in metrics


def test_a_newer_tflite_version_is_swapped_in_without_a_failed_request(served):
    d, _, work = served
    seen: list[float] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=str(d.client.base_url), timeout=30) as http:
            while not stop.is_set():
                response = http.post("/v1/models/swapped:predict", json={"instances": [[2.0]]})
                if response.status_code != 200:
                    failures.append(response.text)
                else:
                    seen.append(response.json()["predictions"][0][0])

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_until(lambda: len(seen) >= 5, 30, "answers from version 1")
        publish_tflite(work / "repo" / "swapped", 2, tflite_half_plus(3.0))
        d.wait_for_states("swapped", {2: "AVAILABLE", 1: "END"})
        count = len(seen)
        wait_until(lambda: len(seen) >= count + 5, 30, "answers after the swap")
    finally:
        stop.set()
        thread.join(30)
    assert failures == []
    assert set(seen) == {3.0, 4.0}
    first_new = seen.index(4.0)
    assert set(seen[first_new:]) == {4.0}  # once version 2 answers, version 1 never does


@pytest.mark.parametrize("prefer", [True, False])
def test_tf_servings_flags_serve_a_tflite_model(tmp_path: Path, prefer: bool):
    base = tmp_path / "default"
    publish_tflite(base, 123, tflite_half_plus(2.0, "plain"))
    grpc_port, rest_port = free_port(), free_port()
    log_path = tmp_path / "daemon.log"
    argv = ["--host", "127.0.0.1", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
            "--model_name=default", f"--model_base_path={base}"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "loader", "serve", *argv,
             *(["--prefer_tflite_model=true"] if prefer else [])],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{rest_port}", timeout=30) as client:
            def settled() -> Any:
                assert process.poll() is None, log_path.read_text()[-3000:]
                try:
                    statuses = client.get("/v1/models/default").json()["model_version_status"]
                except (httpx.TransportError, KeyError):
                    return None
                return statuses if statuses[0]["state"] in ("AVAILABLE", "END") else None

            (status,) = wait_until(settled, 90, "version 123 to load or fail")
        if prefer:
            assert status["state"] == "AVAILABLE"
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                verify_predict_request(channel, "default", specify_output=False)
        else:
            # As in TF Serving, without the flag the folder has no SavedModel to load.
            assert status["state"] == "END"
            assert "set tensorflow.prefer_tflite_model (TF Serving's --prefer_tflite_model)" in (
                status["status"]["error_message"]
            )
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log_path.read_text()[-3000:]
