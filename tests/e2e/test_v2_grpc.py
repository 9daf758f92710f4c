"""The Open Inference Protocol (KServe v2) over gRPC, against a real daemon, with Triton's
own gRPC client (`tritonclient.grpc`, unchanged, and its generated stubs for what the
client never sends: typed contents): health, metadata, infer with raw data for every
datatype, requested outputs, versions, errors and refusals, 32 concurrent clients,
`async_infer`; and Triton's repository extension through `tritonclient.http`."""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
import yaml
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.daemon_process import DaemonProcess, free_port, wait_until
from tests.e2e.test_v2_rest import identity_arrays
from tests.savedmodels import V2_IDENTITY_DTYPES, ModelBuilder, write_identity_model

pytestmark = pytest.mark.e2e

IDENTITY, LINEAR, SPARE = "identity", "linear", "spare"
RUNTIME = Path(__file__).resolve().parents[2] / "deploy" / "kserve" / "servingruntime.yaml"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, model_builder: ModelBuilder) -> Iterator[DaemonProcess]:
    workdir = tmp_path_factory.mktemp("v2_grpc")
    write_identity_model(workdir / "repo" / IDENTITY / "1")
    linear = workdir / "repo" / LINEAR
    model_builder.publish(linear, 1)  # y = 0.5x + 1
    model_builder.publish(linear, 2)  # y = 0.5x + 2
    model_builder.publish(workdir / "repo" / SPARE, 3)  # y = 0.5x + 3, for load and unload
    d = DaemonProcess(workdir, {
        "server": {"host": "127.0.0.1", "rest_port": 0, "grpc_port": free_port()},
        "models": [
            {"name": IDENTITY, "base_path": str(workdir / "repo" / IDENTITY)},
            {"name": LINEAR, "base_path": str(linear), "version_policy": {"all": {}},
             "batching": {"max_batch_size": 64, "batch_timeout_micros": 2000,
                          "num_batch_threads": 1}},
            {"name": SPARE, "base_path": str(workdir / "repo" / SPARE)},
        ],
    }).start()
    for model, versions in ((LINEAR, {1: "AVAILABLE", 2: "AVAILABLE"}),
                            (IDENTITY, {1: "AVAILABLE"}), (SPARE, {3: "AVAILABLE"})):
        d.wait_for_states(model, versions)
    yield d
    assert d.stop() == 0, d.log()[-3000:]


@pytest.fixture(scope="module")
def client(daemon: DaemonProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(f"127.0.0.1:{daemon.grpc_port}") as opened:
        yield opened


@pytest.fixture(scope="module")
def stub(daemon: DaemonProcess) -> Iterator[Any]:
    """Triton's generated stub, for requests tritonclient's helpers never build."""
    with grpc.insecure_channel(f"127.0.0.1:{daemon.grpc_port}") as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def triton_inputs(arrays: dict[str, np.ndarray]) -> list[triton.InferInput]:
    inputs = []
    for name, array in arrays.items():
        tensor = triton.InferInput(f"in_{name}", list(array.shape), name)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def linear_input(xs: np.ndarray, name: str = "x", datatype: str = "FP32") -> list[triton.InferInput]:
    tensor = triton.InferInput(name, [len(xs), 1], datatype)
    tensor.set_data_from_numpy(xs.reshape(-1, 1))
    return [tensor]


def refused(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as error:
        call()
    return error.value


def counter(daemon: DaemonProcess, name: str, **labels: str) -> float:
    """One Prometheus sample (0 if absent), labels matched as given."""
    text = daemon.client.get("/monitoring/prometheus/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_health_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata.name == "modelwatch"
    assert "binary_tensor_data" in metadata.extensions


def test_model_metadata_and_readiness(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata(IDENTITY, as_json=True)
    assert metadata["name"] == IDENTITY and metadata["versions"] == ["1"]
    assert metadata["platform"] == "tensorflow_savedmodel"
    inputs = {t["name"]: (t["datatype"], t["shape"]) for t in metadata["inputs"]}
    assert inputs == {f"in_{name}": (name, ["-1", "2"]) for name in V2_IDENTITY_DTYPES}
    linear = client.get_model_metadata(LINEAR, "1", as_json=True)
    assert linear["versions"] == ["1", "2"]
    assert client.is_model_ready(LINEAR) and client.is_model_ready(LINEAR, "1")
    assert not client.is_model_ready(LINEAR, "7") and not client.is_model_ready("nope")
    assert not client.is_model_ready(LINEAR, "latest")


def test_every_datatype_round_trips_as_raw_contents(client: triton.InferenceServerClient) -> None:
    arrays = identity_arrays()
    result = client.infer(IDENTITY, triton_inputs(arrays))
    for name, sent in arrays.items():
        answered = result.as_numpy(f"out_{name}")
        assert answered.dtype == sent.dtype and answered.shape == sent.shape, name
        np.testing.assert_array_equal(answered, sent)


def test_only_the_outputs_asked_for_in_their_order_with_the_request_id(
    client: triton.InferenceServerClient,
) -> None:
    arrays = identity_arrays(rows=5, seed=1)
    asked = [triton.InferRequestedOutput(f"out_{n}") for n in ("UINT64", "BYTES", "FP16")]
    result = client.infer(IDENTITY, triton_inputs(arrays), outputs=asked, request_id="r-42")
    answer = result.get_response()
    assert [o.name for o in answer.outputs] == ["out_UINT64", "out_BYTES", "out_FP16"]
    assert (answer.id, answer.model_name, answer.model_version) == ("r-42", IDENTITY, "1")
    assert len(answer.raw_output_contents) == 3
    for name in ("UINT64", "BYTES", "FP16"):
        np.testing.assert_array_equal(result.as_numpy(f"out_{name}"), arrays[name])


def test_a_version_is_served_as_asked(client: triton.InferenceServerClient) -> None:
    xs = np.array([2.0, 4.0], np.float32)
    first = client.infer(LINEAR, linear_input(xs), model_version="1")
    assert first.get_response().model_version == "1"
    np.testing.assert_allclose(first.as_numpy("y").ravel(), 0.5 * xs + 1)
    latest = client.infer(LINEAR, linear_input(xs))
    assert latest.get_response().model_version == "2"
    np.testing.assert_allclose(latest.as_numpy("y").ravel(), 0.5 * xs + 2)


def typed_request(contents: dict[str, list[Any]], datatype: str = "FP32") -> Any:
    request = service_pb2.ModelInferRequest(model_name=LINEAR)
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[2, 1])
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    return request


def test_typed_contents_are_read_and_not_together_with_raw(stub: Any) -> None:
    answer = stub.ModelInfer(typed_request({"fp32_contents": [2.0, 4.0]}), timeout=30)
    assert answer.model_version == "2" and not answer.outputs[0].HasField("contents")
    np.testing.assert_allclose(np.frombuffer(answer.raw_output_contents[0], "<f4"), [3.0, 4.0])

    both = typed_request({"fp32_contents": [2.0, 4.0]})
    both.raw_input_contents.append(np.array([2.0, 4.0], "<f4").tobytes())
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(both, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == (
        "contents field must not be specified when using raw_input_contents for 'x' for model "
        "'linear'"
    )
    with pytest.raises(grpc.RpcError) as error:  # FP32 values in the INT32 field: none in FP32's
        stub.ModelInfer(typed_request({"int_contents": [2, 4]}), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "shape [2,1] needs 2, got 0" in error.value.details()


def test_errors_in_triton_words(client: triton.InferenceServerClient, daemon: DaemonProcess) -> None:
    xs = np.ones(2, np.float32)
    before = counter(daemon, "modelwatch_requests_total", api="infer", transport="grpc",
                     status="NOT_FOUND")
    assert refused(lambda: client.infer("nope", linear_input(xs))).status() == "StatusCode.NOT_FOUND"
    assert refused(lambda: client.infer(LINEAR, linear_input(xs), model_version="7")).status() == (
        "StatusCode.NOT_FOUND")
    assert refused(lambda: client.get_model_metadata("nope")).status() == "StatusCode.NOT_FOUND"
    wide = triton.InferInput("x", [2, 4], "FP32")
    wide.set_data_from_numpy(np.ones((2, 4), np.float32))
    error = refused(lambda: client.infer(LINEAR, [wide]))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message() == (
        "unexpected shape for input 'x' for model 'linear'. Expected [-1,1], got [2,4]"
    )
    error = refused(lambda: client.infer(LINEAR, linear_input(xs.astype(np.float64), datatype="FP64")))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message() == (
        "inference input 'x' data-type is 'FP64', but model 'linear' expects 'FP32'"
    )
    assert counter(daemon, "modelwatch_requests_total", api="infer", transport="grpc",
                   status="NOT_FOUND") == before + 2


def test_inputs_past_the_decoded_limit_are_refused_before_decoding(
    stub: Any, daemon: DaemonProcess
) -> None:
    """Nine bytes claiming 2**30 x 2 floats (8 GiB): refused from the shape, counted."""
    before = counter(daemon, "modelwatch_refused_total", transport="grpc",
                     reason="decoded_tensor_too_large")
    request = service_pb2.ModelInferRequest(model_name=LINEAR, raw_input_contents=[b"\0" * 9])
    request.inputs.add(name="x", datatype="FP32", shape=[2**30, 2])
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "server.max_decoded_tensor_bytes" in error.value.details()
    assert counter(daemon, "modelwatch_refused_total", transport="grpc",
                   reason="decoded_tensor_too_large") == before + 1


def test_more_inputs_than_served_are_refused_before_any_is_read(
    stub: Any, daemon: DaemonProcess
) -> None:
    before = counter(daemon, "modelwatch_refused_total", transport="grpc",
                     reason="too_many_tensors")
    request = service_pb2.ModelInferRequest(model_name=LINEAR)
    for index in range(5000):
        request.inputs.add(name=f"x{index}", datatype="FP32")
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "the request has 5000 inputs; at most 4096 are served"
    assert counter(daemon, "modelwatch_refused_total", transport="grpc",
                   reason="too_many_tensors") == before + 1


def test_32_concurrent_clients_every_row_right(daemon: DaemonProcess) -> None:
    failures: list[str] = []
    start = threading.Barrier(32)

    def v2_client(index: int) -> None:
        with triton.InferenceServerClient(f"127.0.0.1:{daemon.grpc_port}") as own:
            start.wait()
            for round_ in range(8):
                xs = np.arange(3, dtype=np.float32) + 100 * index + 10 * round_
                try:
                    y = own.infer(LINEAR, linear_input(xs), client_timeout=60).as_numpy("y")
                except Exception as error:  # collected for the assertion
                    failures.append(f"client {index}: {error}")
                    continue
                if not np.allclose(y.ravel(), 0.5 * xs + 2):
                    failures.append(f"client {index}: {xs} -> {y.ravel()}")

    threads = [threading.Thread(target=v2_client, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures[:5]


def test_async_infer(client: triton.InferenceServerClient) -> None:
    answers: dict[int, Any] = {}
    done = threading.Condition()

    def callback(index: int, result: Any, error: Any) -> None:
        with done:
            answers[index] = error if error is not None else result
            done.notify_all()

    xs = [np.array([i, i + 1], np.float32) for i in range(8)]
    for i, x in enumerate(xs):
        client.async_infer(LINEAR, linear_input(x), functools.partial(callback, i),
                           request_id=str(i), client_timeout=60)
    with done:
        assert done.wait_for(lambda: len(answers) == len(xs), 60)
    for i, x in enumerate(xs):
        result = answers[i]
        assert not isinstance(result, InferenceServerException), result
        assert result.get_response().id == str(i)
        np.testing.assert_allclose(result.as_numpy("y").ravel(), 0.5 * x + 2)


def test_the_kserve_runtimes_probe_and_metrics_paths_answer(daemon: DaemonProcess) -> None:
    (container,) = yaml.safe_load(RUNTIME.read_text())["spec"]["containers"]
    paths = [container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")]
    paths.append(yaml.safe_load(RUNTIME.read_text())["spec"]["annotations"][
        "prometheus.kserve.io/path"])
    for path in paths:
        assert daemon.client.get(path).status_code == 200, path


# --- the repository extension ----------------------------------------------------------------

@pytest.fixture
def http(daemon: DaemonProcess) -> Iterator[triton_http.InferenceServerClient]:
    url = str(daemon.client.base_url).removeprefix("http://")
    with triton_http.InferenceServerClient(url, network_timeout=120.0) as opened:
        yield opened


def test_the_repository_index_lists_the_configs_models(http: Any) -> None:
    index = http.get_model_repository_index()
    assert {(e["name"], e.get("version"), e["state"]) for e in index} == {
        (IDENTITY, "1", "READY"), (LINEAR, "1", "READY"), (LINEAR, "2", "READY"),
        (SPARE, "3", "READY"),
    }


def test_unload_then_load_through_the_repository_extension(
    http: Any, client: triton.InferenceServerClient
) -> None:
    xs = np.array([2.0], np.float32)
    http.unload_model(SPARE)
    assert not client.is_model_ready(SPARE)
    assert {"name": SPARE, "state": "UNAVAILABLE", "reason": "unloaded"} in (
        http.get_model_repository_index())
    assert refused(lambda: client.infer(SPARE, linear_input(xs))).status() == "StatusCode.NOT_FOUND"
    assert client.is_model_ready(LINEAR)  # the others serve on

    http.load_model(SPARE)  # answers once it serves
    assert client.is_model_ready(SPARE)
    np.testing.assert_allclose(client.infer(SPARE, linear_input(xs)).as_numpy("y").ravel(), [4.0])
    assert (SPARE, "3", "READY") in {
        (e["name"], e.get("version"), e["state"]) for e in http.get_model_repository_index()}


def test_the_repository_extension_refuses_what_it_cannot_do(http: Any) -> None:
    error = refused(lambda: http.load_model("nope"))
    assert error.status() == "404"
    assert re.search("the config has no model 'nope'", error.message())
    error = refused(lambda: http.unload_model("nope"))
    assert error.status() == "404"
    error = refused(lambda: http.load_model(SPARE, config='{"backend": "python"}'))
    assert error.status() == "400" and "'config'" in error.message()
    wait_until(lambda: http.is_model_ready(SPARE), 60, "the spare model still serving")
