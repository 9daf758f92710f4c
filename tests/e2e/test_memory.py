"""End to end under a memory limit: the daemon as a subprocess, real SavedModels of a chosen
size, real HTTP and gRPC, and the daemon's resident memory read from /proc/<pid>/statm.

The limit is on the process's resident memory (README, "Memory"), so the test first starts
the daemon without one and reads its resident memory with one model loaded and answered
(TensorFlow, the server's threads, the model), then starts it again with a limit that fits
that and one more model, not two.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loader.manager.process_memory import resident_bytes
from tests.daemon_process import DaemonProcess, ResidentSampler, free_port, wait_until
from tests.savedmodels import publish_linked, write_sized_model

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads Linux's /proc"),
]

MIB = 1 << 20
FLOATS = 25_000_000  # 100 MB of variables per model
MODELS = ("a", "b", "c")


@pytest.fixture(scope="module")
def sized_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sized_model(tmp_path_factory.mktemp("sized") / "model", FLOATS)


def config(tmp_path: Path, limit: int | None, wait: float = 60.0, grpc: bool = False) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "rest_port": 0, "grpc_port": free_port() if grpc else 0},
        "watch": {"poll_interval_seconds": 0.2},
        "loading": {"memory_limit_bytes": limit, "on_demand_wait_seconds": wait,
                    "max_retries": 0},
        "models": [
            {"name": m, "base_path": str(tmp_path / "repo" / m), "load": "on_demand"}
            for m in MODELS
        ],
    }


def metric(daemon: DaemonProcess, name: str, **labels: str) -> float:
    assert daemon.client is not None
    text = daemon.client.get("/monitoring/prometheus/metrics").text
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Any]:
    started: list[DaemonProcess] = []

    def start(**kwargs: Any) -> DaemonProcess:
        workdir = tmp_path / f"run{len(started)}"
        workdir.mkdir()
        daemon = DaemonProcess(workdir, config(tmp_path, **kwargs)).start(timeout=120)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        assert daemon.stop() == 0, daemon.log()[-4000:]


def test_a_limit_that_fits_two_of_three_models_serves_all_three_in_turn(
    tmp_path, sized_model, daemons
):
    for m in MODELS:
        publish_linked(sized_model, tmp_path / "repo" / m)
    files = sum(p.stat().st_size for p in sized_model.rglob("*") if p.is_file())

    probe = daemons(limit=None)
    for m in MODELS:
        probe.wait_for_states(m, {1: "START"})
    assert probe.answer("a") == 3.0
    one_model = resident_bytes(probe.pid)
    assert one_model is not None
    assert probe.stop() == 0

    # A second model (about its files' size) fits; a third does not.
    limit = one_model + int(1.6 * files)
    daemon = daemons(limit=limit)
    for m in MODELS:
        daemon.wait_for_states(m, {1: "START"})  # listed, not loaded
    assert metric(daemon, "modelwatch_memory_limit_bytes") == limit

    answers: list[int] = []
    with ResidentSampler(daemon.pid) as rss:
        for _ in range(3):  # a, b, c, a, b, c, ...: every third request loads after an eviction
            for m in MODELS:
                response = daemon.predict(m, {"instances": [[2.0]]})
                answers.append(response.status_code)
                assert response.status_code == 200, response.text
                assert response.json()["predictions"] == [[3.0]]
        evictions = metric(daemon, "modelwatch_evictions_total")

        # A model kept busy is never evicted, and none of its requests fails while the
        # other two take turns in the room left.
        assert daemon.predict("b", {"instances": [[2.0]]}).status_code == 200
        b_evicted = metric(daemon, "modelwatch_evictions_total", model="b")
        busy_codes: list[int] = []
        stop = threading.Event()

        def keep_b_busy() -> None:
            assert daemon.client is not None
            with httpx.Client(base_url=daemon.client.base_url, timeout=60) as client:
                while not stop.is_set():
                    busy_codes.append(
                        client.post("/v1/models/b:predict", json={"instances": [[2.0]]}).status_code
                    )

        busy = threading.Thread(target=keep_b_busy)
        busy.start()
        try:
            wait_until(lambda: len(busy_codes) >= 3, 30, "b to be kept busy")
            for m in ("a", "c", "a", "c"):
                assert daemon.predict(m, {"instances": [[2.0]]}).status_code == 200
        finally:
            stop.set()
            busy.join(30)
    assert answers == [200] * 9
    assert evictions >= 6, daemon.log()[-4000:]  # from the fourth request on, each one evicts
    assert busy_codes and set(busy_codes) == {200}
    assert metric(daemon, "modelwatch_evictions_total", model="b") == b_evicted
    states = {m: daemon.states(m)[1] for m in MODELS}
    assert states["b"] == "AVAILABLE" and sorted(states.values()).count("AVAILABLE") == 2
    assert rss.peak <= limit, f"peak {rss.peak / MIB:.1f} MiB over the limit {limit / MIB:.1f} MiB"
    assert metric(daemon, "modelwatch_memory_resident_bytes") <= limit


def test_a_first_request_past_the_wait_bound_gets_503_with_retry_after_and_the_load_goes_on(
    tmp_path, model_builder, daemons
):
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    for m in MODELS:
        model_builder.publish(tmp_path / "repo" / m, 1)
    daemon = daemons(limit=None, wait=0.0, grpc=True)
    daemon.wait_for_states("a", {1: "START"})
    assert daemon.client is not None
    assert daemon.client.get("/readyz").status_code == 200  # on-demand models are ready to load

    response = daemon.predict("a", {"instances": [[2.0]]})
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] in ("1", "5")
    assert "model a" in response.json()["error"]
    daemon.wait_for_states("a", {1: "AVAILABLE"})  # the refused request still started the load
    assert daemon.answer("a") == 2.0  # version 1: y = 0.5 * x + 1

    with grpc.insecure_channel(f"127.0.0.1:{daemon.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "b"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[2.0]], np.float32)))
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(request, timeout=30)
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        # gRPC's own retry hint, as REST's Retry-After (1 s while loading, 5 s for memory)
        assert dict(raised.value.trailing_metadata())["grpc-retry-pushback-ms"] in ("1000", "5000")
        wait_until(lambda: daemon.states("b").get(1) == "AVAILABLE", 60, "b to load")
        answer = stub.Predict(request, timeout=30)
        assert tf.make_ndarray(answer.outputs["y"]).tolist() == [[2.0]]
