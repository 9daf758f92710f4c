"""The REST adapter over a real manager with fake servables: routing, errors, metrics,
health and readiness (the TF SavedModel paths are covered end to end)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest

from loader.base import VersionRef
from loader.config.schema import BatchingConfig
from loader.manager.manager import Manager, ModelSpec
from loader.servables.batching import BatchingServable
from loader.serving.dataplane import DataPlane
from loader.serving.metrics import Metrics
from loader.serving.rest.app import RestApi
from loader.serving.rest.server import RestServer, bind
from policies.selection import All
from policies.transition import availability_preserving
from tests.fakes import FakeLoader, refs
from tests.servables.test_batching import RecordingServable, wait_until


@pytest.fixture
def stack() -> Iterator[tuple[Manager, httpx.Client, Metrics]]:
    manager = Manager(FakeLoader(), load_retries=0)
    metrics = Metrics()
    metrics.known_model = manager.has_model  # as the daemon wires it
    manager.add_observer(metrics.observe_transition)
    manager.set_models([
        ModelSpec("m", All(), availability_preserving, {"stable": 1}),
        ModelSpec("empty", All(), availability_preserving),
    ])
    api = RestApi(DataPlane(manager), metrics, max_request_bytes=4096)
    server = RestServer(api.app, bind("127.0.0.1", 0))
    server.start()
    assert server.wait_started(10)
    client = httpx.Client(base_url=f"http://127.0.0.1:{server.port}")
    yield manager, client, metrics
    client.close()
    server.stop()
    server.join(10)
    manager.stop()


def load(manager: Manager, *versions: int) -> None:
    manager.on_versions("m", refs(*versions))
    assert manager.wait_until(
        lambda: {s.version for s in manager.status("m") if s.state == "AVAILABLE"} == set(versions),
        10,
    )


def test_status_routes_are_tf_servings_and_case_insensitive(stack):
    manager, client, _ = stack
    load(manager, 1, 2)
    body = client.get("/v1/models/m").json()
    assert [s["version"] for s in body["model_version_status"]] == ["2", "1"]
    assert client.get("/V1/Models/m/Versions/1").json()["model_version_status"][0]["version"] == "1"
    assert client.get("/v1/models/m/labels/stable").json()["model_version_status"][0]["version"] == "1"
    # The parts are decoded once matched, as TF Serving does.
    assert client.get("/v1/models/%6D/labels/st%61ble").json()["model_version_status"][0]["version"] == "1"


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [
        ("GET", "/v1/models/nope", 404, "Could not find any versions of model nope"),
        ("GET", "/v1/models/m/versions/9", 404, "Could not find version 9 of model m"),
        ("GET", "/v1/models/m/labels/beta", 400, "Unrecognized servable version label: beta"),
        ("GET", "/v1/models", 400, "Missing model name in request."),
        ("GET", "/v3/models/m", 400, "Malformed request: GET /v3/models/m"),
        ("GET", "/v2/models/m/nothing", 404, "Not Found"),  # the Open Inference Protocol's, as Triton
        ("POST", "/v1/models/m", 400, "Malformed request: POST /v1/models/m"),
        ("GET", "/v1/models/m:predict", 400, "Malformed request: GET /v1/models/m:predict"),
        ("POST", "/v1/models/m/versions/99999999999999999999:predict", 400,
         "Failed to convert version: 99999999999999999999 to numeric."),
        ("POST", "/v1/models/nope:predict", 404, "Servable not found for request: Latest(nope)"),
        ("POST", "/v1/models/m/versions/7:predict", 404, "Servable not found for request: Specific(m, 7)"),
        # Routed on the path as it arrived, then the name decoded (TF Serving's order): an
        # escaped ":" is no verb, an escaped "/" no separator.
        ("POST", "/v1/models/m%3apredict", 400, "Malformed request: POST /v1/models/m%3apredict"),
        ("GET", "/v1/models/m%2Fversions%2F1", 404, "Could not find any versions of model m/versions/1"),
        ("POST", "/v1/models/m%2fversions%2f1:predict", 404,
         "Servable not found for request: Latest(m/versions/1)"),
        ("GET", "/v1/models/m%2Fmetadata", 404, "Could not find any versions of model m/metadata"),
        ("GET", "/%68ealthz", 400, "Malformed request: GET /%68ealthz"),
        # Versions are ASCII digits: not Arabic-Indic or fullwidth ones (Python's int() reads them).
        ("GET", "/v1/models/m/versions/%D9%A1", 400, "Malformed request: GET /v1/models/m/versions/%D9%A1"),
        ("POST", "/v1/models/m/versions/%EF%BC%91:predict", 400,
         "Malformed request: POST /v1/models/m/versions/%EF%BC%91:predict"),
        ("GET", "/v1/models/m/versions/" + "9" * 5000, 400,
         "Failed to convert version: " + "9" * 5000 + " to numeric."),
    ],
)
def test_errors_are_tf_servings(stack, method, path, status, error):
    manager, client, _ = stack
    load(manager, 1)
    response = client.request(method, path, content=b'{"instances": [1]}')
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": error}


def test_metrics_count_requests_and_versions(stack):
    manager, client, _ = stack
    load(manager, 1)
    load(manager, 1, 2)
    client.get("/v1/models/m")
    client.get("/v1/models/nope")
    text = client.get("/monitoring/prometheus/metrics").text
    assert 'modelwatch_requests_total{api="status",model="m",status="OK",transport="rest"} 1.0' in text
    # A name no model has is counted under "": clients cannot grow the label set.
    assert 'modelwatch_requests_total{api="status",model="",status="NOT_FOUND",transport="rest"} 1.0' in text
    assert 'model="nope"' not in text
    assert 'modelwatch_versions_available{model="m"} 2.0' in text
    assert 'modelwatch_loads_total{model="m",outcome="ok"} 2.0' in text
    assert 'modelwatch_swaps_total{model="m"} 1.0' in text


def test_health_and_readiness(stack):
    manager, client, _ = stack
    assert client.get("/healthz").json() == {"status": "ok"}
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"ready": False, "models": {"empty": False, "m": False}}
    load(manager, 1)
    manager.on_versions("empty", refs(3))
    assert manager.wait_until(lambda: all(DataPlane(manager).readiness().values()), 10)
    assert client.get("/readyz").status_code == 200


def test_a_body_over_the_limit_is_refused_with_413(stack):
    manager, client, _ = stack
    load(manager, 1)
    big = b'{"instances": [' + b"1.0," * 2000 + b"1.0]}"
    response = client.post("/v1/models/m:predict", content=big)
    assert response.status_code == 413
    assert "server.max_request_bytes (4096 bytes)" in response.json()["error"]

    def chunks():  # no Content-Length: the limit holds while the body streams in
        for _ in range(10):
            yield b" " * 1000

    response = client.post("/v1/models/m:predict", content=chunks())
    assert response.status_code == 413
    metrics = client.get("/monitoring/prometheus/metrics").text
    assert 'api="predict",model="m",status="RESOURCE_EXHAUSTED",transport="rest"} 2.0' in metrics


def test_a_body_that_stops_arriving_gets_408_and_its_connection_closed():
    manager = Manager(FakeLoader(), load_retries=0)
    metrics = Metrics()
    api = RestApi(DataPlane(manager), metrics, body_timeout_seconds=0.2)
    server = RestServer(api.app, bind("127.0.0.1", 0))
    server.start()
    assert server.wait_started(10)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
            conn.sendall(
                b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 100\r\n\r\n{\"instances\""  # 12 of the 100 bytes
            )
            answer = b""
            while chunk := conn.recv(4096):  # until the server closes the connection
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ")
        assert b"connection: close" in head.lower()
        error = orjson.loads(body)["error"]
        assert "server.body_timeout_seconds" in error and "12 bytes were read" in error
        text = metrics.exposition().decode()
        assert 'api="predict",model="m",status="DEADLINE_EXCEEDED",transport="rest"} 1.0' in text
    finally:
        server.stop()
        server.join(10)
        manager.stop()


def test_accepted_connections_have_tcp_nodelay(stack):
    # Without TCP_NODELAY every keep-alive response waited ~40 ms for a delayed ACK.
    _, client, _ = stack
    port = int(str(client.base_url).rsplit(":", 1)[1].rstrip("/"))
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" in conn.recv(4096)
        assert _server_side_nodelay(conn.getsockname()) == [1]


def _server_side_nodelay(client_address: tuple[str, int]) -> list[int]:
    """TCP_NODELAY of this process's sockets connected to `client_address`, found through
    /proc so it works whatever owns them (asyncio's sockets or uvloop's handles)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:  # not a socket
            continue
        with sock:
            try:
                if sock.type == socket.SOCK_STREAM and sock.getpeername() == client_address:
                    found.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            except OSError:
                continue
    return found


# ---- a batched model over REST -----------------------------------------------------


@pytest.fixture
def batched() -> Iterator[tuple[RecordingServable, BatchingServable, httpx.Client]]:
    """A real manager serving one batched version of a recording fake (signatures
    `double`, `echo`, ...: see tests/servables/test_batching.py) over a real REST server."""
    fake = RecordingServable()
    servables: list[BatchingServable] = []

    def load(model: str, version: int, ref: VersionRef) -> BatchingServable:
        params = BatchingConfig(max_batch_size=8192, max_enqueued_batches=4, num_batch_threads=1)
        servables.append(BatchingServable(fake, params, name=model))
        return servables[-1]

    manager = Manager(load, load_retries=0)
    manager.set_models([ModelSpec("m", All(), availability_preserving)])
    manager.on_versions("m", refs(1))
    assert manager.wait_until(lambda: manager.status("m")[0].state == "AVAILABLE", 10)
    server = RestServer(RestApi(DataPlane(manager), Metrics()).app, bind("127.0.0.1", 0))
    server.start()
    assert server.wait_started(10)
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{server.port}", timeout=30,
        limits=httpx.Limits(max_connections=200),
    )
    yield fake, servables[0], client
    client.close()
    server.stop()
    server.join(10)
    manager.stop()


def _predict(client: httpx.Client, signature: str, instances: list) -> httpx.Response:
    return client.post(
        "/v1/models/m:predict", json={"signature_name": signature, "instances": instances}
    )


def _hold_the_batch_thread(
    pool: ThreadPoolExecutor, client: httpx.Client, fake: RecordingServable
) -> tuple[Any, Future[httpx.Response]]:
    """Send one request and keep the only batch thread inside it until the gate opens."""
    gate = fake.hold_next_call()
    first = pool.submit(_predict, client, "double", [[0.5]])
    assert gate.entered.wait(10)
    return gate, first


def test_waiting_requests_of_a_batched_model_hold_no_worker_thread(batched):
    # 100 requests wait for one batch at once, more than the 40 worker threads: a design
    # that parks a thread per waiting request would queue at most 40 of them.
    fake, servable, client = batched
    with ThreadPoolExecutor(101) as pool:
        gate, first = _hold_the_batch_thread(pool, client, fake)
        waiting = [pool.submit(_predict, client, "double", [[float(i)]]) for i in range(100)]
        wait_until(lambda: servable.queued == 100, timeout=30)
        gate.open()
        assert first.result().json() == {"predictions": [{"y": [1.0], "z": [1.5]}]}
        for i, future in enumerate(waiting):
            response = future.result()
            assert response.status_code == 200, response.text
            assert response.json() == {"predictions": [{"y": [2.0 * i], "z": [i + 1.0]}]}
    assert [shape for _, shape, _ in fake.calls] == [(1, 1), (100, 1)]


def test_large_bodies_and_answers_are_decoded_and_encoded_off_the_event_loop(batched):
    # 6,000 rows: a body well over INLINE_BODY_BYTES and an answer over
    # INLINE_OUTPUT_VALUES, so both take the worker-thread path; the answer is the same.
    from loader.serving.rest.app import INLINE_BODY_BYTES, INLINE_OUTPUT_VALUES

    fake, _, client = batched
    instances = [[float(i) + 0.25] for i in range(6000)]
    body = {"signature_name": "echo", "instances": instances}
    assert len(orjson.dumps(body)) > INLINE_BODY_BYTES and len(instances) > INLINE_OUTPUT_VALUES
    response = _predict(client, "echo", instances)
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": instances}
    small = _predict(client, "echo", [[1.5], [2.5]])
    assert small.json() == {"predictions": [[1.5], [2.5]]}
    assert [shape for _, shape, _ in fake.calls] == [(6000, 1), (2, 1)]


def test_a_batched_requests_bad_input_is_its_own_400(batched):
    fake, _, client = batched
    with ThreadPoolExecutor(3) as pool:
        gate, first = _hold_the_batch_thread(pool, client, fake)
        good = pool.submit(_predict, client, "double", [[3.0]])
        bad = pool.submit(_predict, client, "double", [[-1.0]])
        gate.open()
        assert first.result().status_code == 200
        assert good.result().json() == {"predictions": [{"y": [6.0], "z": [4.0]}]}
        assert bad.result().status_code == 400
        assert "must not be negative" in bad.result().json()["error"]
