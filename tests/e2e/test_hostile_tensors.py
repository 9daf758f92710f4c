"""Issue 21, findings 4 and 5, against a real daemon: tensors are bounded by what they
decode to, not by what arrived. A few bytes of gRPC that TensorFlow's fill rule makes into
a gigabyte, inputs the signature lacks, and JSON bodies that parse to many times their size
are refused cleanly (status, metric, no traceback), while a steady client is answered and
the daemon's memory stays within a generous bound."""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import grpc
import httpx
import numpy as np
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.daemon_process import DaemonProcess, ResidentSampler, free_port, wait_until

pytestmark = pytest.mark.e2e

MODEL = "half_plus_two"
HEADROOM = 512 << 20  # the daemon's resident memory may grow this much during an attack
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tfserving_testdata: Path) -> Iterator[DaemonProcess]:
    workdir = tmp_path_factory.mktemp("hostile_tensors")
    base = workdir / "repo" / MODEL
    shutil.copytree(tfserving_testdata / "saved_model_half_plus_two_cpu", base)
    d = DaemonProcess(workdir, {  # every tensor limit at its default
        "server": {"host": "127.0.0.1", "rest_port": 0, "grpc_port": free_port()},
        "models": [{"name": MODEL, "base_path": str(base)}],
    }).start()
    d.wait_for_states(MODEL, {123: "AVAILABLE"})
    yield d
    assert d.stop() == 0, d.log()[-3000:]


@pytest.fixture(scope="module")
def stub(daemon: DaemonProcess) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{daemon.grpc_port}") as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


class SteadyClient:
    """Predicts over REST and gRPC in a loop on its own thread while the `with` block runs,
    checking every answer (correctness, not latency)."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self._rest = httpx.Client(base_url=str(daemon.client.base_url), timeout=TIMEOUT)
        self._channel = grpc.insecure_channel(f"127.0.0.1:{daemon.grpc_port}")
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-steady-client")
        self.answered = 0
        self.failures: list[str] = []

    def __enter__(self) -> Self:
        self._thread.start()
        wait_until(lambda: self.answered >= 2 or self.failures, TIMEOUT, "a first answer")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        self._rest.close()
        self._channel.close()

    def _run(self) -> None:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.inputs["x"].dtype = types_pb2.DT_FLOAT
        request.inputs["x"].tensor_shape.dim.add().size = 1
        request.inputs["x"].tensor_shape.dim.add().size = 1
        request.inputs["x"].float_val.append(1.0)
        while not self._stop.is_set():
            try:
                answer = self._rest.post(f"/v1/models/{MODEL}:predict", json={"instances": [[1.0]]})
                if answer.status_code != 200 or answer.json() != {"predictions": [[2.5]]}:
                    self.failures.append(f"REST {answer.status_code}: {answer.text[:200]}")
                y = self._stub.Predict(request, timeout=TIMEOUT).outputs["y"]
                if list(y.float_val) != [2.5]:
                    self.failures.append(f"gRPC answered {y}")
                self.answered += 2
            except Exception as error:  # every failure is the finding
                self.failures.append(repr(error))


def filled_out(rows: int, alias: str = "x", request: predict_pb2.PredictRequest | None = None,
               ) -> predict_pb2.PredictRequest:
    """`float_val: [1.0]` with shape [rows, 1]: TensorFlow's fill rule repeats the value."""
    request = request or predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    tensor = request.inputs[alias]
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.tensor_shape.dim.add().size = rows
    tensor.tensor_shape.dim.add().size = 1
    tensor.float_val.append(1.0)
    return request


def metric(daemon: DaemonProcess, name: str, **labels: str) -> float:
    text = daemon.client.get("/monitoring/prometheus/metrics").text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    found = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def failure(call: Any, request: predict_pb2.PredictRequest) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=TIMEOUT)
    return raised.value.code(), raised.value.details()


def test_a_46_byte_fill_out_is_refused_before_it_is_decoded(daemon, stub) -> None:
    request = filled_out(1 << 28)  # 1 GiB of float32 once filled out
    assert request.ByteSize() == 46
    before = metric(daemon, "modelwatch_requests_total", api="predict", model=MODEL,
                    status="INVALID_ARGUMENT", transport="grpc")
    with SteadyClient(daemon) as steady, ResidentSampler(daemon.pid) as memory:
        start = wait_until(lambda: memory.samples, TIMEOUT, "an RSS sample")[0]
        for _ in range(3):
            assert failure(stub.Predict, request) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "the request's inputs would take 1073741824 bytes decoded, more than "
                "server.max_decoded_tensor_bytes (268435456); the largest is x, a DT_FLOAT "
                "tensor of shape [268435456,1]",
            )
        answered = steady.answered
        wait_until(lambda: steady.answered > answered or steady.failures, TIMEOUT, "answers")
    assert steady.failures == []
    assert memory.peak - start < HEADROOM, f"RSS grew by {(memory.peak - start) >> 20} MiB"
    assert metric(daemon, "modelwatch_requests_total", api="predict", model=MODEL,
                  status="INVALID_ARGUMENT", transport="grpc") == before + 3
    assert metric(daemon, "modelwatch_refused_total", reason="decoded_tensor_too_large",
                  transport="grpc") >= 3
    assert "Traceback" not in daemon.log()
    # Within the limit the fill rule holds, as in TensorFlow.
    y = stub.Predict(filled_out(1 << 16), timeout=TIMEOUT).outputs["y"]
    assert [d.size for d in y.tensor_shape.dim] == [1 << 16, 1] and set(y.float_val) == {2.5}


def test_an_answer_past_grpcs_send_limit_is_refused_and_counted(daemon, stub) -> None:
    # 96 MiB in, within max_decoded_tensor_bytes; 96 MiB out, past the 64 MiB messages.
    before = metric(daemon, "modelwatch_requests_total", api="predict", model=MODEL,
                    status="RESOURCE_EXHAUSTED", transport="grpc")
    code, message = failure(stub.Predict, filled_out(3 << 23))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert message.endswith("more than the server sends (server.max_request_bytes: 67108864)")
    assert metric(daemon, "modelwatch_requests_total", api="predict", model=MODEL,
                  status="RESOURCE_EXHAUSTED", transport="grpc") == before + 1
    assert metric(daemon, "modelwatch_refused_total", reason="response_too_large",
                  transport="grpc") == 1
    assert "Traceback" not in daemon.log()


def test_inputs_the_signature_lacks_are_never_decoded(daemon, stub) -> None:
    request = filled_out(1)
    for n in range(8):  # each would fill out to 256 MiB
        filled_out(1 << 26, f"extra{n}", request)
    with SteadyClient(daemon) as steady, ResidentSampler(daemon.pid) as memory:
        start = wait_until(lambda: memory.samples, TIMEOUT, "an RSS sample")[0]
        code, message = failure(stub.Predict, request)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("input size does not match signature: 9!=1")
    assert "Sent extra: {extra0,extra1,extra2,extra3,extra4,extra5,extra6,extra7}" in message
    assert steady.failures == []
    assert memory.peak - start < HEADROOM, f"RSS grew by {(memory.peak - start) >> 20} MiB"
    assert "Traceback" not in daemon.log()


def test_a_json_body_that_could_never_be_decoded_within_the_budget_gets_413(daemon) -> None:
    # 1.5M rows of named inputs, 17 MiB: objects, which are parsed whole, and whole they
    # would make ~700 MB of Python dicts and floats.
    rows = 1_500_000
    body = b'{"instances": [' + b",".join([b'{"x": [1.5]}'] * rows) + b"]}"
    before = metric(daemon, "modelwatch_refused_total", reason="decode_budget", transport="rest")
    with SteadyClient(daemon) as steady, ResidentSampler(daemon.pid) as memory:
        start = wait_until(lambda: memory.samples, TIMEOUT, "an RSS sample")[0]
        answer = daemon.client.post(f"/v1/models/{MODEL}:predict", content=body)
    assert answer.status_code == 413
    assert answer.json()["error"].startswith(f"a JSON body of {len(body)} bytes, parsed whole, ")
    assert answer.json()["error"].endswith("more than server.max_decoding_bytes (536870912)")
    assert steady.failures == []
    assert memory.peak - start < HEADROOM, f"RSS grew by {(memory.peak - start) >> 20} MiB"
    assert metric(daemon, "modelwatch_refused_total", reason="decode_budget",
                  transport="rest") == before + 1
    assert metric(daemon, "modelwatch_requests_total", api="predict", model=MODEL,
                  status="RESOURCE_EXHAUSTED", transport="rest") >= 1


def test_the_issues_60_mb_of_nan_rows_are_answered_in_slices_within_bounds(daemon) -> None:
    # The issue's body: 10M rows of [NaN] peaked at 4.2 GB whole. One array of numbers is
    # decoded a slice at a time (it reserves 5x its size), so it is answered, in bounds.
    rows = 10_000_000
    body = b'{"instances": [' + b",".join([b"[NaN]"] * rows) + b"]}"
    with SteadyClient(daemon) as steady, ResidentSampler(daemon.pid) as memory:
        start = wait_until(lambda: memory.samples, TIMEOUT, "an RSS sample")[0]
        answer = daemon.client.post(f"/v1/models/{MODEL}:predict", content=body)
    assert answer.status_code == 200, answer.text[:300]
    assert len(answer.json()["predictions"]) == rows
    assert steady.failures == []
    assert memory.peak - start < HEADROOM, f"RSS grew by {(memory.peak - start) >> 20} MiB"


def test_a_large_json_body_within_the_budget_is_answered_whole(daemon) -> None:
    rows = 200_000
    x = np.arange(rows, dtype=np.float32)
    body = b'{"instances": [' + b",".join(b"[%d]" % v for v in range(rows)) + b"]}"
    with SteadyClient(daemon) as steady:
        answer = daemon.client.post(f"/v1/models/{MODEL}:predict", content=body)
    assert answer.status_code == 200
    assert np.array_equal(np.array(answer.json()["predictions"], np.float32)[:, 0], x / 2 + 2)
    assert steady.failures == []


def test_large_json_bodies_decode_a_bounded_number_at_a_time(daemon) -> None:
    # Each 8 MB body of named rows reserves what parsing it whole takes, over half of the
    # 512 MiB budget: one decodes at a time, the others wait for room, then get 429. None
    # costs a steady client its answers.
    body = b'{"instances": [' + b",".join([b'{"x": [1.5]}'] * 700_000) + b"]}"
    before = metric(daemon, "modelwatch_refused_total", reason="decode_budget", transport="rest")
    answers: list[httpx.Response] = []

    def send() -> None:
        with httpx.Client(base_url=str(daemon.client.base_url), timeout=TIMEOUT) as client:
            answers.append(client.post(f"/v1/models/{MODEL}:predict", content=body))

    senders = [threading.Thread(target=send) for _ in range(4)]
    with SteadyClient(daemon) as steady, ResidentSampler(daemon.pid) as memory:
        start = wait_until(lambda: memory.samples, TIMEOUT, "an RSS sample")[0]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(TIMEOUT)
    assert sorted({a.status_code for a in answers}) in ([200], [200, 429])
    for answer in answers:
        if answer.status_code == 429:
            assert answer.json()["error"].startswith("the server is busy decoding")
        else:
            assert len(answer.json()["predictions"]) == 700_000
    refused = sum(a.status_code == 429 for a in answers)
    assert metric(daemon, "modelwatch_refused_total", reason="decode_budget",
                  transport="rest") == before + refused
    assert steady.failures == []
    assert memory.peak - start < HEADROOM, f"RSS grew by {(memory.peak - start) >> 20} MiB"
