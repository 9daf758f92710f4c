"""A gRPC reload honours its caller's deadline: the daemon as a subprocess with one gRPC
worker thread, TF Serving's own stubs. A reload naming a model that never loads ends with
DEADLINE_EXCEEDED, its worker is free for the next call, and the reload goes on (the
model is watched and served once a version appears)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
)

from tests.daemon_process import DaemonProcess, free_port, wait_until

TIMEOUT = 60.0


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tfserving_testdata: Path) -> Iterator[
    tuple[DaemonProcess, Path]
]:
    workdir = tmp_path_factory.mktemp("reload-deadline")
    repo = workdir / "repo"
    shutil.copytree(tfserving_testdata / "saved_model_half_plus_two_cpu", repo / "half_plus_two")
    served = DaemonProcess(workdir, {
        # One worker: a reload that kept it would leave no thread for any other call.
        "server": {"host": "127.0.0.1", "rest_port": 0, "grpc_port": free_port(),
                   "grpc_max_threads": 1},
        "watch": {"poll_interval_seconds": 0.2, "settle_seconds": 0.3},
        "models": [{"name": "half_plus_two", "base_path": str(repo / "half_plus_two")}],
    }).start()
    try:
        served.wait_for_states("half_plus_two", {123: "AVAILABLE"})
        yield served, repo
    finally:
        assert served.stop() == 0, served.log()[-4000:]


def reload_request(models: dict[str, Path]) -> model_management_pb2.ReloadConfigRequest:
    request = model_management_pb2.ReloadConfigRequest()
    for name, base_path in models.items():
        entry = request.config.model_config_list.config.add()
        entry.name, entry.base_path, entry.model_platform = name, str(base_path), "tensorflow"
    return request


def status(stub: model_service_pb2_grpc.ModelServiceStub, model: str) -> dict[int, int]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    answer = stub.GetModelStatus(request, timeout=30)
    return {s.version: s.state for s in answer.model_version_status}


def test_a_reload_whose_model_never_loads_ends_at_the_deadline_and_frees_its_worker(
    daemon: tuple[DaemonProcess, Path], tfserving_testdata: Path
) -> None:
    served, repo = daemon
    never = repo / "never"
    never.mkdir()  # no version: the model cannot load until one is published
    request = reload_request({"half_plus_two": repo / "half_plus_two", "never": never})
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        call = stub.HandleReloadConfigRequest.future(request, timeout=1.0)
        with pytest.raises(grpc.RpcError) as ended:
            call.result(TIMEOUT)  # bounded: a hung call fails the test, not the suite
        assert ended.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        # The only worker answers the next call: the reload gave it back at its deadline
        # (before, it waited up to 300 s for `never`, and this call timed out behind it).
        assert status(stub, "half_plus_two") == {
            123: get_model_status_pb2.ModelVersionStatus.AVAILABLE
        }
        # The reload went on: `never` is watched and served once a version appears.
        shutil.copytree(tfserving_testdata / "saved_model_half_plus_two_cpu" / "00000123",
                        never / "1")
        wait_until(
            lambda: served.states("never").get(1) == "AVAILABLE", TIMEOUT, "never/1 to load"
        )
    assert "Traceback" not in served.log()
