"""Switching from TF Serving with its own flags: what TF Serving's own integration test
(`tensorflow_model_server_test.py`) found, each checked here on the daemon as a subprocess
with TF Serving's models and stubs: gRPC on a Unix socket, ports that open only once the
initial models have loaded, TF Serving's text for a bad --model_config_file, the
profiler service, and --version."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import httpx
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.daemon_process import ROOT, DaemonProcess, free_port, wait_until

pytestmark = pytest.mark.e2e

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def predict_request(model: str = "default") -> predict_pb2.PredictRequest:
    """TF Serving's test request: x = [2.0] (its VerifyPredictRequest)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    return request


def tfs_server(*flags: str, log: Path) -> subprocess.Popen[bytes]:
    """`modelwatch serve` with TF Serving's flags, as its test starts the binary."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "loader", "serve", *flags],
                                cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> int:
    process.terminate()
    return process.wait(60)


def connects(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_grpc_on_a_unix_socket_serves_predict_and_the_socket_is_removed_on_exit(
    tmp_path: Path, tfserving_testdata: Path
):
    sock = tmp_path / "tf-serving.sock"
    d = DaemonProcess(tmp_path, {
        "server": {"rest_port": 0, "grpc_port": free_port(), "grpc_socket_path": str(sock)},
        "models": [{"name": "default",
                    "base_path": str(tfserving_testdata / "saved_model_half_plus_two_cpu")}],
    }).start()
    try:
        with grpc.insecure_channel(f"unix:{sock}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            result = stub.Predict(predict_request(), 20)
        assert list(result.outputs["y"].float_val) == [3.0]
        assert result.model_spec.version.value == 123
    finally:
        assert d.stop() == 0, d.log()[-3000:]
    assert not sock.exists()


@pytest.mark.parametrize(("where", "reason"), [
    ("missing/tf.sock", "is not a folder"),
    ("a_file", "exists and is not a socket"),
])
def test_a_socket_path_that_cannot_be_bound_is_a_clear_error(
    tmp_path: Path, tfserving_testdata: Path, where: str, reason: str
):
    (tmp_path / "a_file").write_text("not a socket")
    result = subprocess.run(
        [sys.executable, "-m", "loader", "serve", f"--port={free_port()}",
         f"--grpc_socket_path={tmp_path / where}", "--model_base_path="
         + str(tfserving_testdata / "saved_model_half_plus_two_cpu")],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert f"cannot listen for gRPC on unix:{tmp_path / where}" in result.stderr
    assert reason in result.stderr
    assert "Traceback" not in result.stderr


def test_a_client_connecting_the_moment_the_ports_open_finds_the_model(
    tmp_path: Path, tfserving_testdata: Path
):
    # Written a moment ago, as TF Serving's test_tf_saved_model_save does before it starts
    # the server: the version is still settling when the daemon first looks.
    base = tmp_path / "default"
    shutil.copytree(tfserving_testdata / "saved_model_half_plus_two_tf2_cpu", base)
    grpc_port, rest_port = free_port(), free_port()
    process = tfs_server(f"--port={grpc_port}", f"--rest_api_port={rest_port}",
                         f"--model_base_path={base}", log=tmp_path / "daemon.log")
    try:
        wait_until(lambda: connects(grpc_port) or process.poll() is not None, 120, "the gRPC port")
        assert process.poll() is None, (tmp_path / "daemon.log").read_text()
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            assert list(stub.Predict(predict_request(), 20).outputs["y"].float_val) == [3.0]
        wait_until(lambda: connects(rest_port), 30, "the REST port")
        status = httpx.get(f"http://127.0.0.1:{rest_port}/v1/models/default", timeout=10).json()
        assert status["model_version_status"][0]["state"] == "AVAILABLE"
    finally:
        assert stop(process) == 0


def test_storage_that_never_answers_holds_the_ports_for_the_bound_only(tmp_path: Path):
    closed = free_port()  # nothing listens here: every listing fails
    d = DaemonProcess(tmp_path, {
        "server": {"rest_port": 0, "grpc_port": 0},
        "storage": {"s3": {"endpoint_url": f"http://127.0.0.1:{closed}", "region": "us-east-1"}},
        "loading": {"initial_load_timeout_seconds": 1},
        "models": [{"name": "m", "base_path": "s3://nowhere/m"}],
    }, env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}).start()
    try:
        assert d.client is not None
        assert d.client.get("/healthz").status_code == 200
        assert d.client.get("/readyz").status_code == 503
        assert "initial_load_timeout_seconds" in d.log()
    finally:
        assert d.stop() == 0, d.log()[-3000:]


def test_a_bad_model_config_file_says_what_tf_serving_says(tmp_path: Path):
    bad = tmp_path / "bad_model_config.txt"
    bad.write_text("improperly formatted file")  # TF Serving's own bad_model_config.txt
    result = subprocess.run(
        [sys.executable, "-m", "loader", "serve", f"--port={free_port()}",
         f"--model_config_file={bad}"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    # The text TF Serving's testBadModelConfig looks for, and the flag at fault.
    assert "--model_config_file: Error parsing text-format tensorflow.serving.ModelServerConfig" \
        in result.stderr
    assert f"Invalid protobuf file: '{bad}'" in result.stderr


def test_the_profiler_traces_through_the_grpc_port(tmp_path: Path, tfserving_testdata: Path):
    from tensorflow.python.profiler import profiler_client

    grpc_port = free_port()
    process = tfs_server(f"--port={grpc_port}", "--host=127.0.0.1", "--model_base_path="
                         + str(tfserving_testdata / "saved_model_half_plus_two_cpu"),
                         log=tmp_path / "daemon.log")
    try:
        wait_until(lambda: connects(grpc_port) or process.poll() is not None, 120, "the gRPC port")
        logdir = tmp_path / "logs"
        logdir.mkdir()
        done = threading.Event()

        def traffic() -> None:  # as TF Serving's test: requests while the trace runs
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                while not done.is_set():
                    stub.Predict(predict_request(), 20)

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            # TF Serving's test_profiler_service_with_valid_trace_request, on our port.
            profiler_client.trace(f"localhost:{grpc_port}", str(logdir), 1000, "", 10)
        finally:
            done.set()
            sender.join(30)
        traces = list(logdir.rglob("*.xplane.pb"))
        assert traces and traces[0].stat().st_size > 0
    finally:
        assert stop(process) == 0, (tmp_path / "daemon.log").read_text()[-3000:]


def test_version_prints_both_versions_and_exits():
    result = subprocess.run([sys.executable, "-m", "loader", "serve", "--version"],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.startswith("TensorFlow ModelServer: modelwatch ")
    assert "TensorFlow Library: " in result.stdout


def test_sigterm_while_the_ports_wait_for_the_first_loads_exits_0(tmp_path: Path):
    closed = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        "server: {rest_port: 0, grpc_port: 0}\n"
        f"storage: {{s3: {{endpoint_url: 'http://127.0.0.1:{closed}', region: us-east-1}}}}\n"
        "loading: {initial_load_timeout_seconds: null}\n"  # wait for ever, as TF Serving
        "models: [{name: m, base_path: 's3://nowhere/m'}]\n"
    )
    log, ports = tmp_path / "daemon.log", tmp_path / "ports.json"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "loader", "serve", "--config", str(config), "--ports-file",
             str(ports)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**ENV, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"},
        )
    try:
        wait_until(lambda: "Could not list the versions" in log.read_text(), 120,
                   "the first listing to fail")
        assert process.poll() is None and not ports.exists()  # waiting, ports closed
    finally:
        assert stop(process) == 0, log.read_text()[-3000:]
    assert not ports.exists()
