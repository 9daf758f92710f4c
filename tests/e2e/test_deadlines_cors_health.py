"""Deadlines, CORS and the gRPC health service, on `modelwatch serve` started with TF
Serving's flags only, as a TF Serving client sees them: a REST prediction past
--rest_api_timeout_in_ms gets 504 with TF Serving's text, a gRPC call past its own deadline
DEADLINE_EXCEEDED, and neither ever reaches the model once it waited past its deadline in
the batch queue; --rest_api_enable_cors_support's headers (on errors too) and preflight;
--enable_grpc_healthcheck_service's service names.

The model (tests/savedmodels.py: `write_gated_model`) counts its runs and holds a run on a
FIFO until the test opens it, so no assertion depends on how fast anything runs."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.daemon_process import free_port, wait_until
from tests.e2e.test_tfserving_switch import connects, stop, tfs_server
from tests.savedmodels import open_gate, write_gated_model

pytestmark = pytest.mark.e2e

TIMEOUT_MS = 2000  # --rest_api_timeout_in_ms, and the gRPC calls' own deadline
BATCHING = """
max_batch_size { value: 8 }
batch_timeout_micros { value: 0 }
num_batch_threads { value: 1 }
max_enqueued_batches { value: 100 }
"""
CORS = {
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "POST, GET",
    "access-control-allow-headers": "Content-Type",
}


@dataclass
class Server:
    rest: str
    grpc: str
    gate: Path  # a FIFO: a run reading it waits until `open_gate`
    open: Path  # an empty file: a run reading it goes on

    def metrics(self) -> str:
        return httpx.get(f"{self.rest}/monitoring/prometheus/metrics", timeout=30).text

    def predict(self, gate: Path) -> httpx.Response:
        return httpx.post(f"{self.rest}/v1/models/gated:predict", timeout=60,
                          json={"inputs": {"x": [[1.0]], "gate": [str(gate)]}})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("deadlines")
    write_gated_model(work / "gated" / "1")
    (work / "batching.txt").write_text(BATCHING)
    (work / "open").write_bytes(b"")
    os.mkfifo(work / "gate")
    grpc_port, rest_port = free_port(), free_port()
    log = work / "daemon.log"
    process = tfs_server(
        f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--host=127.0.0.1",
        "--model_name=gated", f"--model_base_path={work / 'gated'}",
        "--enable_batching", f"--batching_parameters_file={work / 'batching.txt'}",
        f"--rest_api_timeout_in_ms={TIMEOUT_MS}", "--rest_api_enable_cors_support",
        "--enable_grpc_healthcheck_service", log=log,
    )
    try:
        # The ports open once the model has loaded (TF Serving's order).
        wait_until(lambda: connects(rest_port) or process.poll() is not None, 120,
                   "the REST port to open")
        assert process.poll() is None, log.read_text()
        yield Server(f"http://127.0.0.1:{rest_port}", f"127.0.0.1:{grpc_port}",
                     work / "gate", work / "open")
    finally:
        assert stop(process) == 0, log.read_text()[-4000:]


def grpc_request(gate: Path) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "gated"
    x, path = request.inputs["x"], request.inputs["gate"]
    x.dtype, path.dtype = types_pb2.DT_FLOAT, types_pb2.DT_STRING
    x.float_val.append(1.0)
    x.tensor_shape.dim.add().size = 1
    x.tensor_shape.dim.add().size = 1
    path.string_val.append(str(gate).encode())
    path.tensor_shape.dim.add().size = 1
    return request


def counted(metrics: str, name: str, **labels: str) -> float:
    """The value of the series of `name` with (at least) `labels`; 0 when absent."""
    for line in metrics.splitlines():
        series, _, value = line.rpartition(" ")
        if re.match(rf"{name}\{{", series) and all(f'{k}="{v}"' in series
                                                  for k, v in labels.items()):
            return float(value)
    return 0.0


def test_requests_past_their_deadline_are_answered_so_and_never_reach_the_model(
    server: Server,
) -> None:
    answers: dict[str, httpx.Response] = {}

    def rest(name: str, gate: Path) -> None:
        answers[name] = server.predict(gate)

    # The only batch thread runs a request that waits on the gate: the model is running.
    running = threading.Thread(target=rest, args=("running", server.gate), name="running")
    running.start()
    try:
        wait_until(lambda: counted(server.metrics(), "modelwatch_batch_size_count",
                                   model="gated") == 1, 60, "the first request to run")
        # Two more wait in the batch queue behind it: REST, and gRPC with its own deadline.
        queued = threading.Thread(target=rest, args=("queued", server.open), name="queued")
        queued.start()
        with grpc.insecure_channel(server.grpc) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                stub.Predict(grpc_request(server.open), timeout=TIMEOUT_MS / 1000)
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: len(answers) == 2, 60, "both REST requests to be answered")
        # A run past the timeout, and a request still queued at it: TF Serving's 504.
        for name in ("running", "queued"):
            answer = answers[name]
            assert answer.status_code == 504, (name, answer.text)
            assert answer.json() == {"error": "Timed out waiting for notification"}
            assert {k: answer.headers.get(k) for k in CORS} == CORS  # an error answer too
    finally:
        open_gate(server.gate)  # the first run goes on (and fails: nobody waits for it)
        running.join(60)
        queued.join(60)
    # The two queued requests were dropped when the thread came to them, unrun.
    wait_until(lambda: counted(server.metrics(), "modelwatch_requests_expired_total",
                               model="gated") == 2, 60, "the queued requests to be dropped")
    answer = server.predict(server.open)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"]["runs"] == [2]  # the first request's run, and this one
    assert {k: answer.headers.get(k) for k in CORS} == CORS
    metrics = server.metrics()
    assert counted(metrics, "modelwatch_requests_total", transport="grpc", api="predict",
                   status="DEADLINE_EXCEEDED") == 1
    assert counted(metrics, "modelwatch_requests_total", transport="rest", api="predict",
                   status="DEADLINE_EXCEEDED") == 2


def test_a_preflight_is_answered_with_the_cors_headers(server: Server) -> None:
    answer = httpx.options(f"{server.rest}/v1/models/gated:predict", timeout=30, headers={
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
    })
    assert (answer.status_code, answer.content) == (200, b"")
    assert {k: answer.headers.get(k) for k in CORS} == CORS


@pytest.mark.parametrize("service", ["", "ModelService", "PredictionService"])
def test_the_health_service_answers_tf_servings_names(server: Server, service: str) -> None:
    with grpc.insecure_channel(server.grpc) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=30
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
