"""Request logging as a TF Serving user sets it up: `logging_config` in `--model_config_file`,
requests of every kind over REST and gRPC, SIGTERM, then the `PredictionLog` files read
back with `tf.data.TFRecordDataset`; an unknown collector type refused at start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tests.daemon_process import ROOT, free_port, wait_until
from tests.e2e.test_tfserving_switch import ENV, connects, predict_request, stop, tfs_server

pytestmark = pytest.mark.e2e


def model_entry(name: str, base: Path, rate: float, prefix: Path, kind: str = "file") -> str:
    return f"""config {{
      name: "{name}" base_path: "{base}" model_platform: "tensorflow"
      logging_config {{
        sampling_config {{ sampling_rate: {rate} }}
        log_collector_config {{ type: "{kind}" filename_prefix: "{prefix}" }}
      }}
    }}"""


def read_logs(prefix: Path) -> list[prediction_log_pb2.PredictionLog]:
    files = sorted(str(p) for p in prefix.parent.glob(prefix.name + "-*"))
    return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(files)]


def example(x: float) -> tf.train.Example:
    return tf.train.Example(features=tf.train.Features(
        feature={"x": tf.train.Feature(float_list=tf.train.FloatList(value=[x]))}))


def floats(proto: object) -> list[float]:
    return tf.make_ndarray(proto).ravel().tolist()


def test_every_kind_of_request_is_logged_over_rest_and_grpc_and_on_disk_after_sigterm(
    tmp_path: Path, tfserving_testdata: Path
):
    base = tfserving_testdata / "saved_model_half_plus_two_cpu"
    logs = tmp_path / "logs"
    config = tmp_path / "models.config"
    config.write_text("model_config_list { " + model_entry("default", base, 1.0, logs / "default")
                      + model_entry("quiet", base, 0.0, logs / "quiet") + " }")
    grpc_port, rest_port = free_port(), free_port()
    process = tfs_server(f"--port={grpc_port}", f"--rest_api_port={rest_port}",
                         f"--model_config_file={config}", "--host=127.0.0.1",
                         log=tmp_path / "daemon.log")
    try:
        wait_until(lambda: connects(rest_port) or process.poll() is not None, 120, "the REST port")
        assert process.poll() is None, (tmp_path / "daemon.log").read_text()
        rest = httpx.Client(base_url=f"http://127.0.0.1:{rest_port}", timeout=30)
        answered = rest.post("/v1/models/default:predict", json={"instances": [2.0, 3.0]})
        assert answered.json() == {"predictions": [3.0, 3.5]}
        large = [float(i) for i in range(5000)]  # over 16 KiB: decoded on a worker thread
        assert rest.post("/v1/models/default/versions/123:predict",
                         json={"inputs": {"x": large}}).status_code == 200
        assert rest.post("/v1/models/default:classify", json={
            "signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}).status_code == 200
        assert rest.post("/v1/models/default:regress", json={
            "signature_name": "regress_x_to_y", "context": {"x": 4.0},
            "examples": [{}]}).json() == {"results": [4.0]}
        assert rest.post("/v1/models/quiet:predict", json={"instances": [1.0]}).status_code == 200
        rest.close()

        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            sent_predict = predict_request("default")
            stub.Predict(sent_predict, 30)
            sent_classify = classification_pb2.ClassificationRequest()
            sent_classify.model_spec.name = "default"
            sent_classify.model_spec.signature_name = "classify_x_to_y"
            sent_classify.input.example_list.examples.append(example(2.0))
            stub.Classify(sent_classify, 30)
            sent_regress = regression_pb2.RegressionRequest()
            sent_regress.model_spec.name = "default"
            sent_regress.model_spec.signature_name = "regress_x_to_y"
            sent_regress.input.example_list.examples.append(example(6.0))
            stub.Regress(sent_regress, 30)
            sent_multi = inference_pb2.MultiInferenceRequest()
            for signature, method in (("classify_x_to_y", "tensorflow/serving/classify"),
                                      ("regress_x_to_y", "tensorflow/serving/regress")):
                task = sent_multi.tasks.add(method_name=method)
                task.model_spec.name, task.model_spec.signature_name = "default", signature
            sent_multi.input.example_list.examples.append(example(8.0))
            stub.MultiInference(sent_multi, 30)
    finally:
        assert stop(process) == 0, (tmp_path / "daemon.log").read_text()[-3000:]

    # Written before the process exited: nothing waited for after SIGTERM.
    assert not list(logs.glob("quiet-*")), "a sampling rate of 0 logs nothing"
    records = read_logs(logs / "default")
    kinds = [r.WhichOneof("log_type") for r in records]
    assert sorted(kinds) == sorted(["predict_log"] * 3 + ["classify_log"] * 2
                                   + ["regress_log"] * 2 + ["multi_inference_log"])
    for record in records:
        metadata = record.log_metadata
        assert (metadata.model_spec.name, metadata.model_spec.version.value) == ("default", 123)
        assert metadata.sampling_config.sampling_rate == 1.0
        assert list(metadata.saved_model_tags) == ["serve"]

    predicts = [r.predict_log for r in records if r.HasField("predict_log")]
    by_x = {len(p.request.inputs["x"].float_val): p for p in predicts}
    # REST, as the PredictRequest a gRPC client sends: the decoded inputs, the outputs.
    small = by_x[2]
    assert small.request.model_spec.name == "default"
    assert not small.request.model_spec.HasField("version")
    assert floats(small.request.inputs["x"]) == [2.0, 3.0]
    assert floats(small.response.outputs["y"]) == [3.0, 3.5]
    assert small.response.model_spec.signature_name == "serving_default"
    big = by_x[5000]
    assert big.request.model_spec.version.value == 123  # the version its path named
    assert np.allclose(floats(big.response.outputs["y"]), np.array(large) / 2 + 2)
    assert by_x[1].request == sent_predict  # gRPC: the very request sent
    assert floats(by_x[1].response.outputs["y"]) == [3.0]

    classifies = [r.classify_log for r in records if r.HasField("classify_log")]
    # REST's example is logged as the very ClassificationRequest gRPC sent for it.
    assert [c.request for c in classifies] == [sent_classify, sent_classify]
    for logged in classifies:
        (classes,) = logged.response.result.classifications
        assert [(c.label, c.score) for c in classes.classes] == [("", 3.0)]

    regresses = {r.regress_log.response.result.regressions[0].value: r.regress_log
                 for r in records if r.HasField("regress_log")}
    assert regresses[5.0].request == sent_regress
    with_context = regresses[4.0].request.input.example_list_with_context
    assert with_context.context == example(4.0) and len(with_context.examples) == 1

    (multi,) = [r.multi_inference_log for r in records if r.HasField("multi_inference_log")]
    assert multi.request == sent_multi
    assert [r.WhichOneof("result") for r in multi.response.results] == [
        "classification_result", "regression_result"]


def test_an_unknown_collector_type_is_refused_at_start_with_tf_servings_words(
    tmp_path: Path, tfserving_testdata: Path
):
    config = tmp_path / "models.config"
    config.write_text("model_config_list { " + model_entry(
        "default", tfserving_testdata / "saved_model_half_plus_two_cpu", 1.0,
        tmp_path / "logs" / "default", kind="kafka") + " }")
    result = subprocess.run(
        [sys.executable, "-m", "loader", "serve", f"--port={free_port()}",
         f"--model_config_file={config}"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Cannot find LogCollector::Factory for type: kafka" in result.stderr
    assert "Traceback" not in result.stderr
