"""End to end, as a stranger would try it: routes decided on the path as it arrived
(an escaped `:` or `/` is part of a name, as in TF Serving), versions of ASCII digits
only, a fast-path cache that long names do not grow, and gRPC's transport limits (large
metadata refused, a connection that never speaks closed) with the daemon serving on."""

from __future__ import annotations

import http.client
import shutil
import socket
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from loader.manager.process_memory import resident_bytes
from tests.daemon_process import DaemonProcess, free_port

pytestmark = pytest.mark.e2e

MODEL = "half_plus_two"
VERSION = 123
BODY = {"instances": [[2.0]]}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tfserving_testdata: Path):
    workdir = tmp_path_factory.mktemp("hostile-routes")
    base = workdir / "repo" / MODEL
    shutil.copytree(tfserving_testdata / "saved_model_half_plus_two_cpu", base)
    d = DaemonProcess(workdir, {
        "server": {
            "host": "127.0.0.1", "rest_port": 0, "grpc_port": free_port(),
            "grpc_max_metadata_bytes": 4096, "grpc_handshake_timeout_seconds": 1,
            # The widest request target allowed (and a head to hold it), so that the cache,
            # not the head limits (414 and 431 past 8 and 64 KiB by default), is what long
            # names meet here.
            "max_url_bytes": 1024 * 1024, "max_header_bytes": 2 * 1024 * 1024,
        },
        "models": [{"name": MODEL, "base_path": str(base)}],
    }).start()
    d.wait_for_states(MODEL, {VERSION: "AVAILABLE"})
    yield d
    assert d.stop() == 0, d.log()[-3000:]


def error_of(response: httpx.Response) -> str:
    error = response.json()["error"]
    assert isinstance(error, str)
    return error


def assert_serves(d: DaemonProcess) -> None:
    assert d.answer(MODEL) == 3.0
    with grpc.insecure_channel(f"127.0.0.1:{d.grpc_port}") as channel:
        assert predict(channel).outputs["y"].float_val == [3.0]


def predict(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[2.0]], np.float32)))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response: predict_pb2.PredictResponse = stub.Predict(request, timeout=30, metadata=metadata)
    return response


@pytest.mark.parametrize("escape", ["%3a", "%3A"])
def test_an_escaped_colon_is_no_verb(served, escape):
    # TF Serving matches the raw path: no `:verb`, so a malformed request.
    response = served.client.post(f"/v1/models/{MODEL}{escape}predict", json=BODY)
    assert response.status_code == 400, response.text
    assert error_of(response) == f"Malformed request: POST /v1/models/{MODEL}{escape}predict"


def test_an_escaped_slash_is_part_of_the_model_name(served):
    # TF Serving decodes the name once matched: a model called "half_plus_two/versions/123".
    status = served.client.get(f"/v1/models/{MODEL}%2fversions%2f{VERSION}")
    assert status.status_code == 404, status.text
    assert f"{MODEL}/versions/{VERSION}" in error_of(status)
    answer = served.client.post(f"/v1/models/{MODEL}%2Fversions%2F{VERSION}:predict", json=BODY)
    assert answer.status_code == 404, answer.text
    assert f"{MODEL}/versions/{VERSION}" in error_of(answer)


def test_escaped_names_still_name_their_model(served):
    assert served.client.post("/v1/models/half%5Fplus%5Ftwo:predict", json=BODY).json() == {
        "predictions": [[3.0]]
    }
    status = served.client.get(f"/v1/models/half%5fplus%5ftwo/versions/{VERSION}")
    assert status.status_code == 200, status.text


@pytest.mark.parametrize(("version", "error"), [
    # Arabic-Indic and fullwidth 123: Python's int() reads them, RE2's \d does not.
    ("%D9%A1%D9%A2%D9%A3", "Malformed request"),
    ("%EF%BC%91%EF%BC%92%EF%BC%93", "Malformed request"),
    # Digits, but past int64.
    ("9223372036854775808", "Failed to convert version: "),
    ("9" * 5000, "Failed to convert version: "),
])
def test_a_version_not_of_ascii_digits_or_past_int64_gets_a_clean_400(served, version, error):
    for method, target in (("GET", f"/v1/models/{MODEL}/versions/{version}"),
                           ("GET", f"/v1/models/{MODEL}/versions/{version}/metadata"),
                           ("POST", f"/v1/models/{MODEL}/versions/{version}:predict"),
                           ("POST", f"/v1/models/{MODEL}/versions/{version}:predict?x=1")):
        response = served.client.request(method, target, json=BODY if method == "POST" else None)
        assert response.status_code == 400, (target, response.text)
        assert error_of(response).startswith(error), target
    assert_serves(served)


def predict_long_names(d: DaemonProcess, round_: str, count: int) -> None:
    """`count` predicts, each to a different model name of almost 1 MiB (the target stays
    within server.max_url_bytes; httpx refuses URLs this long)."""
    url = d.client.base_url
    connection = http.client.HTTPConnection(url.host, url.port, timeout=30)
    try:
        for i in range(count):
            name = f"{round_}{i:04d}" + "m" * (1024 * 1024 - 64)
            connection.request("POST", f"/v1/models/{name}:predict", b'{"instances": [[2.0]]}')
            response = connection.getresponse()
            assert response.status == 404, response.read()[:200]
            response.read()
    finally:
        connection.close()


def test_long_model_names_are_not_kept(served):
    """Predicts to 300 different 1 MiB model names kept ~2 MiB each (~600 MiB) in the fast
    path's cache. After a first round, the resident size still moves up and down by up to
    ~130 MiB between rounds (freed in bursts), never by what was sent."""
    predict_long_names(served, "a", 30)
    before = resident_bytes(served.pid)
    predict_long_names(served, "b", 300)
    after = resident_bytes(served.pid)
    assert before is not None and after is not None
    assert after - before < 256 * 1024 * 1024, f"{(after - before) / 2**20:.0f} MiB kept"
    assert_serves(served)


def test_grpc_metadata_over_the_limit_is_refused(served):
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        assert predict(channel, (("x-small", "a" * 1024),)).outputs["y"].float_val == [3.0]
        for size in (6 * 1024, 1024 * 1024):
            with pytest.raises(grpc.RpcError) as refused:
                predict(channel, (("x-large", "a" * size),))
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, size
            assert "metadata size exceeds" in (refused.value.details() or "")
        assert predict(channel).outputs["y"].float_val == [3.0]


def test_a_grpc_connection_that_never_speaks_is_closed(served):
    """grpc's own handshake timeout is 120 s; here server.grpc_handshake_timeout_seconds: 1."""
    with socket.create_connection(("127.0.0.1", served.grpc_port)) as silent:
        silent.settimeout(30)  # a guard well past the 1 s limit, not a measurement
        received = b""
        while chunk := silent.recv(4096):  # the server's SETTINGS, then the close
            received += chunk
        assert received.startswith(b"\x00\x00"), received  # an HTTP/2 frame: grpc answered
    assert_serves(served)
