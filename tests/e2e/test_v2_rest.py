"""The Open Inference Protocol (KServe v2) over REST, against a real daemon, with Triton's
own HTTP client (`tritonclient.http`, unchanged): health, metadata, infer with JSON and
binary data for every datatype, requested outputs, versions, errors, concurrent clients
sharing batches with TF Serving's predict, `async_infer`; and raw requests for what a
hostile client can send (clean 400s, never a 5xx)."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tensorflow_serving.apis import prediction_log_pb2
from tritonclient.utils import InferenceServerException

from tests.daemon_process import DaemonProcess, free_port, wait_until
from tests.savedmodels import V2_IDENTITY_DTYPES, ModelBuilder, write_identity_model

pytestmark = pytest.mark.e2e

IDENTITY, LINEAR = "identity", "linear"
HEADER = "inference-header-content-length"
BUDGET = 1 << 20  # server.max_decoding_bytes


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, model_builder: ModelBuilder) -> Iterator[DaemonProcess]:
    workdir = tmp_path_factory.mktemp("v2_rest")
    write_identity_model(workdir / "repo" / IDENTITY / "1")
    linear = workdir / "repo" / LINEAR
    model_builder.publish(linear, 1)  # y = 0.5x + 1
    model_builder.publish(linear, 2)  # y = 0.5x + 2
    d = DaemonProcess(workdir, {
        "server": {"host": "127.0.0.1", "rest_port": 0, "grpc_port": free_port(),
                   "max_decoding_bytes": BUDGET, "max_decoded_tensor_bytes": BUDGET},
        "models": [
            {"name": IDENTITY, "base_path": str(workdir / "repo" / IDENTITY),
             "request_logging": {"sampling_rate": 1.0,
                                 "filename_prefix": str(workdir / "logs" / IDENTITY)}},
            {"name": LINEAR, "base_path": str(linear), "version_policy": {"all": {}},
             "batching": {"max_batch_size": 64, "batch_timeout_micros": 2000,
                          "num_batch_threads": 1}},
        ],
    }).start()
    d.wait_for_states(LINEAR, {1: "AVAILABLE", 2: "AVAILABLE"})
    d.wait_for_states(IDENTITY, {1: "AVAILABLE"})
    yield d
    assert d.stop() == 0, d.log()[-3000:]


@pytest.fixture(scope="module")
def url(daemon: DaemonProcess) -> str:
    assert daemon.client is not None
    return str(daemon.client.base_url).removeprefix("http://")


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(url, network_timeout=60.0) as opened:
        yield opened


def identity_arrays(rows: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for every datatype, with each type's extremes among them."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name in V2_IDENTITY_DTYPES:
        if name == "BYTES":
            values = [b"", "h\xe9llo".encode(), b"x" * 40] * (2 * rows)
            array = np.array(values[: 2 * rows], dtype=object)
        elif name == "BOOL":
            array = rng.integers(0, 2, 2 * rows).astype(bool)
        elif name.startswith("FP"):
            dtype = np.dtype(name.replace("FP", "float"))
            array = rng.standard_normal(2 * rows).astype(dtype)
            array[0] = np.finfo(dtype).max
        else:
            dtype = np.dtype(name.lower())
            info = np.iinfo(dtype)
            array = rng.integers(info.min, info.max, 2 * rows, dtype=dtype, endpoint=True)
            array[:2] = info.min, info.max
        arrays[name] = array.reshape(rows, 2)
    return arrays


def triton_inputs(arrays: dict[str, np.ndarray], binary: bool) -> list[triton.InferInput]:
    inputs = []
    for name, array in arrays.items():
        tensor = triton.InferInput(f"in_{name}", list(array.shape), name)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def same(answered: np.ndarray, sent: np.ndarray) -> None:
    if sent.dtype == object:  # JSON answers BYTES as text
        answered = np.array([v.encode() if isinstance(v, str) else v for v in answered.flat],
                            dtype=object).reshape(answered.shape)
    else:
        assert answered.dtype == sent.dtype
    np.testing.assert_array_equal(answered, sent)


def test_health_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "modelwatch"
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_and_readiness(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata(IDENTITY)
    assert metadata["name"] == IDENTITY and metadata["versions"] == ["1"]
    assert metadata["platform"] == "tensorflow_savedmodel"
    inputs = {t["name"]: (t["datatype"], t["shape"]) for t in metadata["inputs"]}
    assert inputs == {f"in_{name}": (name, [-1, 2]) for name in V2_IDENTITY_DTYPES}
    assert {t["name"] for t in metadata["outputs"]} == {f"out_{n}" for n in V2_IDENTITY_DTYPES}
    linear = client.get_model_metadata(LINEAR, "1")
    assert linear["versions"] == ["1", "2"]
    assert linear["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}]
    assert client.is_model_ready(LINEAR) and client.is_model_ready(LINEAR, "1")
    assert not client.is_model_ready(LINEAR, "7") and not client.is_model_ready("nope")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_every_datatype_round_trips(client: triton.InferenceServerClient, binary: bool) -> None:
    arrays = identity_arrays()
    outputs = [triton.InferRequestedOutput(f"out_{n}", binary_data=binary) for n in arrays]
    result = client.infer(IDENTITY, triton_inputs(arrays, binary), outputs=outputs)
    for name, sent in arrays.items():
        same(result.as_numpy(f"out_{name}"), sent)


def test_binary_inputs_with_outputs_mixed_and_only_those_asked_for(
    client: triton.InferenceServerClient,
) -> None:
    arrays = identity_arrays(rows=5, seed=1)
    asked = [
        triton.InferRequestedOutput("out_BYTES", binary_data=False),
        triton.InferRequestedOutput("out_FP16", binary_data=True),
        triton.InferRequestedOutput("out_UINT64", binary_data=False),
    ]
    result = client.infer(IDENTITY, triton_inputs(arrays, binary=True), outputs=asked,
                          request_id="r-42")
    answer = result.get_response()
    assert [o["name"] for o in answer["outputs"]] == ["out_BYTES", "out_FP16", "out_UINT64"]
    assert answer["id"] == "r-42" and answer["model_name"] == IDENTITY
    assert answer["model_version"] == "1"
    for name in ("BYTES", "FP16", "UINT64"):
        same(result.as_numpy(f"out_{name}"), arrays[name])


def logged_records(folder: Path) -> list[bytes]:
    """The records of the TFRecord files in `folder` (length, its CRC, data, its CRC)."""
    records = []
    for path in sorted(folder.glob("*")):
        data, at = path.read_bytes(), 0
        while at + 12 <= len(data):
            (length,) = struct.unpack_from("<Q", data, at)
            records.append(data[at + 12:at + 12 + length])
            at += 16 + length
    return records


def test_an_infer_is_logged_as_the_predict_it_ran(
    client: triton.InferenceServerClient, daemon: DaemonProcess
) -> None:
    rows = 7  # no other request here sends 7 rows
    client.infer(IDENTITY, triton_inputs(identity_arrays(rows=rows, seed=2), binary=True))
    folder = daemon.workdir / "logs"

    def logged() -> list[prediction_log_pb2.PredictionLog]:
        found = [prediction_log_pb2.PredictionLog.FromString(r) for r in logged_records(folder)]
        return [r for r in found
                if r.predict_log.request.inputs["in_FP32"].tensor_shape.dim[0].size == rows]

    records = wait_until(logged, 60, "the infer in the request log")
    answered = records[-1].predict_log.response
    assert answered.model_spec.name == IDENTITY and answered.model_spec.version.value == 1
    assert set(answered.outputs) == {f"out_{name}" for name in V2_IDENTITY_DTYPES}


def linear_input(xs: np.ndarray, binary: bool = True) -> list[triton.InferInput]:
    tensor = triton.InferInput("x", [len(xs), 1], "FP32")
    tensor.set_data_from_numpy(xs.reshape(-1, 1).astype(np.float32), binary_data=binary)
    return [tensor]


def test_a_version_is_served_as_asked(client: triton.InferenceServerClient) -> None:
    xs = np.array([2.0, 4.0], np.float32)
    first = client.infer(LINEAR, linear_input(xs), model_version="1")
    assert first.get_response()["model_version"] == "1"
    np.testing.assert_allclose(first.as_numpy("y").ravel(), 0.5 * xs + 1)
    latest = client.infer(LINEAR, linear_input(xs, binary=False))
    assert latest.get_response()["model_version"] == "2"
    np.testing.assert_allclose(latest.as_numpy("y").ravel(), 0.5 * xs + 2)


def test_infer_on_the_asgi_path_answers_as_on_the_fast_path(daemon: DaemonProcess) -> None:
    # A query string leaves the fast path: the ASGI app answers, with the same headers.
    body, headers = binary_request([2, 1], 8, np.array([2, 4], np.float32).tobytes())
    head = orjson.dumps({"inputs": orjson.loads(body[: int(headers[HEADER])])["inputs"],
                         "parameters": {"binary_data_output": True}})
    assert daemon.client is not None
    for path in (f"/v2/models/{LINEAR}/infer?via=asgi", f"/v2/models/{LINEAR}/infer"):
        answer = daemon.client.post(path, content=head + body[int(headers[HEADER]):],
                                    headers={HEADER: str(len(head))})
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/octet-stream"
        length = int(answer.headers[HEADER])
        output = orjson.loads(answer.content[:length])["outputs"][0]
        assert output["parameters"] == {"binary_data_size": 8}
        assert np.frombuffer(answer.content[length:], "<f4").tolist() == [3.0, 4.0]


def refused(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as error:
        call()
    return error.value


def test_errors_in_triton_words(client: triton.InferenceServerClient) -> None:
    xs = np.ones(2, np.float32)
    error = refused(lambda: client.infer("nope", linear_input(xs)))
    assert error.status() == "404"
    assert error.message() == "Request for unknown model: 'nope' is not found"
    error = refused(lambda: client.infer(LINEAR, linear_input(xs), model_version="7"))
    assert error.status() == "404"
    assert error.message() == "Request for unknown model: 'linear' version 7 is not found"
    assert refused(lambda: client.get_model_metadata("nope")).status() == "404"
    assert refused(lambda: client.get_model_metadata(LINEAR, "7")).status() == "404"
    wide = triton.InferInput("x", [2, 4], "FP32")
    wide.set_data_from_numpy(np.ones((2, 4), np.float32))
    error = refused(lambda: client.infer(LINEAR, [wide]))
    assert error.status() == "400"
    assert error.message() == (
        "unexpected shape for input 'x' for model 'linear'. Expected [-1,1], got [2,4]"
    )
    double = triton.InferInput("x", [2, 1], "FP64")
    double.set_data_from_numpy(np.ones((2, 1), np.float64))
    error = refused(lambda: client.infer(LINEAR, [double]))
    assert error.status() == "400"
    assert error.message() == (
        "inference input 'x' data-type is 'FP64', but model 'linear' expects 'FP32'"
    )
    unknown = triton.InferInput("w", [2, 1], "FP32")
    unknown.set_data_from_numpy(np.ones((2, 1), np.float32))
    error = refused(lambda: client.infer(LINEAR, [*linear_input(xs), unknown]))
    assert error.message() == "unexpected inference input 'w' for model 'linear'"


def test_32_concurrent_clients_sharing_batches_with_tf_serving(
    url: str, daemon: DaemonProcess
) -> None:
    failures: list[str] = []
    start = threading.Barrier(33)

    def v2_client(index: int) -> None:
        with triton.InferenceServerClient(url, network_timeout=60.0) as own:
            start.wait()
            for round_ in range(8):
                xs = np.arange(3, dtype=np.float32) + 100 * index + 10 * round_
                try:
                    y = own.infer(LINEAR, linear_input(xs, binary=round_ % 2 == 0)).as_numpy("y")
                except Exception as error:  # collected for the assertion
                    failures.append(f"client {index}: {error}")
                    continue
                if not np.allclose(y.ravel(), 0.5 * xs + 2):
                    failures.append(f"client {index}: {xs} -> {y.ravel()}")

    def tfs_client() -> None:
        with httpx.Client(base_url=f"http://{url}", timeout=60.0) as own:
            start.wait()
            for round_ in range(8):
                answer = own.post(f"/v1/models/{LINEAR}:predict",
                                  json={"instances": [[float(round_)]]})
                if answer.json().get("predictions") != [[0.5 * round_ + 2]]:
                    failures.append(f"TF Serving: {answer.text}")

    threads = [threading.Thread(target=v2_client, args=(i,)) for i in range(32)]
    threads.append(threading.Thread(target=tfs_client))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures[:5]
    metrics = daemon.client.get("/monitoring/prometheus/metrics").text
    assert 'api="infer"' in metrics


def test_async_infer(url: str) -> None:
    with triton.InferenceServerClient(url, concurrency=4, network_timeout=60.0) as own:
        xs = [np.array([i, i + 1], np.float32) for i in range(8)]
        pending = [own.async_infer(LINEAR, linear_input(x), request_id=str(i))
                   for i, x in enumerate(xs)]
        for i, (x, request) in enumerate(zip(xs, pending, strict=True)):
            result = request.get_result(timeout=60)
            assert result.get_response()["id"] == str(i)
            np.testing.assert_allclose(result.as_numpy("y").ravel(), 0.5 * x + 2)


# --- hostile requests ------------------------------------------------------------------------

def post_raw(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """One request on its own socket, its status and body (no client that fixes things)."""
    host, port = url.split(":")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nhost: {url}\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n{head}\r\n".encode() + body
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def binary_request(shape: list[int], size: int, data: bytes, datatype: str = "FP32") -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps({"inputs": [{
        "name": "x", "datatype": datatype, "shape": shape,
        "parameters": {"binary_data_size": size},
    }]})
    return head + data, {HEADER: str(len(head))}


@pytest.mark.parametrize(
    ("body_headers", "words"),
    [
        (binary_request([2, 1], 8, b"\0" * 8)[0:1] + ({"inference-header-content-length": "99999"},),
         "inference header size should be in range"),
        (binary_request([2, 1], 8, b"\0" * 8)[0:1] + ({"inference-header-content-length": "-5"},),
         "inference header size should be in range"),
        (binary_request([2, 1], 8, b"\0" * 8)[0:1] + ({"inference-header-content-length": "x"},),
         "Unable to parse Inference-Header-Content-Length"),
        (binary_request([2, 1], 12, b"\0" * 8), "expecting 4 additional bytes"),
        (binary_request([2, 1], 4, b"\0" * 8), "unexpected additional input data"),
        (binary_request([3, 1], 8, b"\0" * 8), "unexpected total byte size 8 for input 'x', expecting 12"),
        (binary_request([2**62, 2**62], 8, b"\0" * 8), "too large to serve"),
        (binary_request([2**40, 1], 8, b"\0" * 8), "unexpected total byte size 8"),
        (binary_request([2**40, 1], 8, b"\0" * 8, "BYTES"), "data-type is 'BYTES'"),
        ((orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2**40, 1],
                                     "data": [1.0, 2.0]}]}), {}), "needs 1099511627776, got 2"),
        ((orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1],
                                     "data": [1.0]}]}), {}), "has an invalid shape [-1,1]"),
        ((b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1]}]}', {}),
         "no field is set"),
        ((b'{"inputs": 3}', {}), "Unable to parse 'inputs'"),
        ((b'{"inputs": [', {}), "JSON Parse error"),
    ],
    ids=["header-past-body", "header-negative", "header-not-a-number", "size-past-tail",
         "tail-left-over", "size-not-the-shape", "shape-overflows", "huge-shape-tiny-data",
         "huge-bytes-shape", "huge-json-shape", "negative-dim", "no-data", "inputs-not-a-list",
         "broken-json"],
)
def test_hostile_requests_get_clean_400s(
    url: str, body_headers: tuple[bytes, dict[str, str]], words: str
) -> None:
    body, headers = body_headers
    status, answer = post_raw(url, f"/v2/models/{LINEAR}/infer", body, headers)
    assert status == 400, answer
    assert words in orjson.loads(answer)["error"]


def test_inputs_past_the_decode_budget_are_refused_and_counted(
    url: str, daemon: DaemonProcess
) -> None:
    def refused() -> float:
        assert daemon.client is not None
        text = daemon.client.get("/monitoring/prometheus/metrics").text
        prefix = 'modelwatch_refused_total{reason="decode_budget",transport="rest"} '
        return sum(float(line[len(prefix):]) for line in text.splitlines()
                   if line.startswith(prefix))

    before = refused()
    rows = BUDGET // 4 + 1
    body, headers = binary_request([rows, 1], 4 * rows, b"\0" * (4 * rows))
    status, answer = post_raw(url, f"/v2/models/{LINEAR}/infer", body, headers)
    assert status == 413, answer
    assert "server.max_decoding_bytes" in orjson.loads(answer)["error"]
    assert refused() == before + 1
