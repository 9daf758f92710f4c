"""End to end over gRPC: the daemon as a subprocess, TF Serving's own model and stubs."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from tests.daemon_process import DaemonProcess, free_port, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def served(tmp_path: Path, tfserving_testdata: Path):
    base = tmp_path / "repo" / "half_plus_two"
    shutil.copytree(tfserving_testdata / "saved_model_half_plus_two_cpu", base)
    d = DaemonProcess(tmp_path, {
        "server": {"host": "127.0.0.1", "rest_port": 0, "grpc_port": free_port()},
        "watch": {"poll_interval_seconds": 0.2},
        "models": [{"name": "half_plus_two", "base_path": str(base)}],
    }).start()
    d.wait_for_states("half_plus_two", {123: "AVAILABLE"})
    channel = grpc.insecure_channel(f"127.0.0.1:{d.grpc_port}")
    yield d, channel
    channel.close()
    assert d.stop() == 0, d.log()[-3000:]


def example(x: float) -> tf.train.Example:
    return tf.train.Example(features=tf.train.Features(
        feature={"x": tf.train.Feature(float_list=tf.train.FloatList(value=[x]))}
    ))


def test_predict_classify_regress_status_and_metadata(served):
    d, channel = served
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[2.0], [4.0]], np.float32)))
    response = stub.Predict(request, timeout=30)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [[3.0], [4.0]]
    assert response.model_spec.version.value == 123

    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "half_plus_two"
    classify.model_spec.signature_name = "classify_x_to_y"
    classify.input.example_list.examples.append(example(2.0))
    (classification,) = stub.Classify(classify, timeout=30).result.classifications
    assert [(c.label, c.score) for c in classification.classes] == [("", 3.0)]

    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "half_plus_two"
    regress.model_spec.signature_name = "regress_x_to_y"
    regress.input.example_list.examples.append(example(2.0))
    assert [r.value for r in stub.Regress(regress, timeout=30).result.regressions] == [3.0]

    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = "half_plus_two"
    metadata.metadata_field.append("signature_def")
    answer = stub.GetModelMetadata(metadata, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    answer.metadata["signature_def"].Unpack(signatures)
    assert signatures.signature_def["serving_default"].inputs["x"].name == "x:0"

    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "half_plus_two"
    (version,) = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
        status, timeout=30).model_version_status
    assert (version.version, version.state) == (123, get_model_status_pb2.ModelVersionStatus.AVAILABLE)

    # The same model over REST gives the same answers (one data plane).
    rest = d.client.post("/v1/models/half_plus_two:classify",
                         json={"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]})
    assert rest.json() == {"results": [[["", 3.0]]]}
    rest = d.client.post("/v1/models/half_plus_two:regress",
                         json={"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]})
    assert rest.json() == {"results": [3.0]}

    missing = predict_pb2.PredictRequest()
    missing.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(missing, timeout=30)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_the_daemon_answers_grpc_health_checks(served):
    # What a Kubernetes gRPC probe asks: the server, and one model by name.
    _, channel = served
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "half_plus_two"):
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_reload_config_over_grpc(served, tmp_path, tfserving_testdata):
    d, channel = served
    two = tmp_path / "repo" / "two_versions"
    shutil.copytree(tfserving_testdata / "saved_model_half_plus_two_2_versions", two)
    request = model_management_pb2.ReloadConfigRequest()
    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name, entry.base_path, entry.model_platform = "two", str(two), "tensorflow"
    entry.model_version_policy.all.SetInParent()
    request.config.CopyFrom(config)
    response = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
        request, timeout=120)
    assert response.status.error_code == 0, response.status.error_message
    d.wait_for_states("two", {123: "AVAILABLE", 124: "AVAILABLE"})
    # Not in the new config: unloaded and forgotten.
    wait_until(lambda: d.states("half_plus_two") == {}, 30, "half_plus_two to be removed")


def test_reload_needs_the_token_when_one_is_set(tmp_path, tfserving_testdata):
    base = tmp_path / "repo" / "half_plus_two"
    shutil.copytree(tfserving_testdata / "saved_model_half_plus_two_cpu", base)
    d = DaemonProcess(tmp_path, {
        "server": {"host": "127.0.0.1", "rest_port": 0, "grpc_port": free_port(),
                   "reload_token": "s3cret"},
        "models": [{"name": "half_plus_two", "base_path": str(base)}],
    }).start()
    try:
        d.wait_for_states("half_plus_two", {123: "AVAILABLE"})
        with grpc.insecure_channel(f"127.0.0.1:{d.grpc_port}") as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            request = model_management_pb2.ReloadConfigRequest()
            entry = request.config.model_config_list.config.add()
            entry.name, entry.base_path, entry.model_platform = "half_plus_two", str(base), "tensorflow"
            with pytest.raises(grpc.RpcError) as caught:
                stub.HandleReloadConfigRequest(request, timeout=60)
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
            response = stub.HandleReloadConfigRequest(
                request, timeout=60, metadata=[("authorization", "Bearer s3cret")])
            assert response.status.error_code == 0
        assert "s3cret" not in d.log()
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize("threads", [1, 6])
def test_a_batched_predict_holds_no_thread_so_one_batch_gathers_every_call(
    tmp_path, tfserving_testdata, threads
):
    # A batched Predict waits for its batch on the server's event loop, not on a worker
    # thread (TF Serving's synchronous server holds one per call, so there
    # --grpc_max_threads bounds a batch): 6 concurrent calls fill one batch of 6 at once,
    # long before its 120 s timeout, even with a single worker thread.
    base = tmp_path / "repo" / "half_plus_two"
    shutil.copytree(tfserving_testdata / "saved_model_half_plus_two_cpu", base)
    d = DaemonProcess(tmp_path, {
        "server": {"host": "127.0.0.1", "rest_port": 0, "grpc_port": free_port(),
                   "grpc_max_threads": threads},
        "models": [{"name": "half_plus_two", "base_path": str(base), "batching": {
            "max_batch_size": 6, "batch_timeout_micros": 120_000_000, "num_batch_threads": 1}}],
    }).start()
    try:
        d.wait_for_states("half_plus_two", {123: "AVAILABLE"})
        with grpc.insecure_channel(f"127.0.0.1:{d.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            calls = []
            for n in range(6):
                request = predict_pb2.PredictRequest()
                request.model_spec.name = "half_plus_two"
                request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[float(n)]], np.float32)))
                calls.append(stub.Predict.future(request, timeout=60))
            answers = [tf.make_ndarray(call.result().outputs["y"]).tolist() for call in calls]
        assert answers == [[[n / 2 + 2]] for n in range(6)]
        metrics = d.client.get("/monitoring/prometheus/metrics").text
        count = metrics.split('modelwatch_batch_size_count{model="half_plus_two"} ')[1].split()[0]
        rows = metrics.split('modelwatch_batch_size_sum{model="half_plus_two"} ')[1].split()[0]
        assert (float(count), float(rows)) == (1.0, 6.0)
    finally:
        assert d.stop() == 0
