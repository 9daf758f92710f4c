"""End to end on a local folder: the daemon as a subprocess, real SavedModels, real HTTP.

Each version v of the test model computes y = 0.5 * x + v, so an answer names the version
that gave it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.daemon_process import DaemonProcess, wait_until

pytestmark = pytest.mark.e2e


def config(tmp_path: Path, models: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "rest_port": 0, "grpc_port": 0},
        "storage": {"cache_dir": str(tmp_path / "cache")},
        "watch": {"poll_interval_seconds": 0.2, "settle_seconds": 0.3},
        "loading": {"max_retries": 0, "retry_backoff_seconds": 0.1},
        "models": models,
    }


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator:
    started: list[DaemonProcess] = []

    def start(models: list[dict[str, Any]]) -> DaemonProcess:
        process = DaemonProcess(tmp_path, config(tmp_path, models))
        started.append(process)
        return process.start()

    yield start
    for process in started:
        assert process.stop() == 0, process.log()[-4000:]
        # An orderly stop leaves no thread behind to warn about (idle pool workers that
        # were still exiting once made every stop say "exiting past ... thread(s)").
        assert "exiting past" not in process.log(), process.log()[-4000:]


def y(version: float, x: float = 2.0) -> float:
    return 0.5 * x + version


def test_new_version_is_detected_served_and_replaces_the_old(tmp_path, daemon, model_builder):
    base = tmp_path / "repo" / "m"
    model_builder.publish(base, 1)
    d = daemon([{"name": "m", "base_path": str(base)}])
    d.wait_for_states("m", {1: "AVAILABLE"})
    assert d.answer("m") == y(1)
    model_builder.publish(base, 2)
    d.wait_for_states("m", {2: "AVAILABLE", 1: "END"})
    assert d.answer("m") == y(2)
    assert d.answer("m/versions/2") == y(2)
    response = d.predict("m/versions/1", {"instances": [[2.0]]})
    assert response.status_code == 404
    assert response.json() == {"error": "Servable not found for request: Specific(m, 1)"}


def test_with_the_rest_fast_path_off_the_daemon_serves_and_swaps_alike(tmp_path, model_builder):
    base = tmp_path / "repo" / "m"
    model_builder.publish(base, 1)
    settings = config(tmp_path, [{"name": "m", "base_path": str(base)}])
    settings["server"]["rest_fast_path"] = False
    d = DaemonProcess(tmp_path, settings).start()
    try:
        d.wait_for_states("m", {1: "AVAILABLE"})
        assert d.answer("m") == y(1)
        model_builder.publish(base, 2)
        d.wait_for_states("m", {2: "AVAILABLE", 1: "END"})
        assert d.answer("m") == y(2)
        assert d.predict("m/versions/1", {"instances": [[2.0]]}).status_code == 404
        assert d.client is not None
        metrics = d.client.get("/monitoring/prometheus/metrics").text
        assert 'api="predict",model="m",status="OK",transport="rest"} 2.0' in metrics
    finally:
        assert d.stop() == 0, d.log()[-4000:]


def test_partial_upload_is_never_served_and_is_loaded_once_complete(tmp_path, daemon, model_builder):
    base = tmp_path / "repo" / "m"
    sentinel = tmp_path / "repo" / "sentinel"
    model_builder.publish(base, 1)
    d = daemon([
        {"name": "m", "base_path": str(base)},
        {"name": "sentinel", "base_path": str(sentinel)},
    ])
    d.wait_for_states("m", {1: "AVAILABLE"})
    # Write version 2 in place, the way a slow copy would: the graph and the variables
    # index are there, the data shard is not yet.
    complete = model_builder.built(2)
    partial = base / "2"
    shutil.copytree(complete, partial, ignore=shutil.ignore_patterns("variables.data-*"))
    # A model published after the partial write is loaded only after several full rescans
    # of the repository, so by then version 2 has been seen (and refused) repeatedly.
    model_builder.publish(sentinel, 1)
    d.wait_for_states("sentinel", {1: "AVAILABLE"})
    assert 2 not in d.states("m")
    assert d.answer("m") == y(1)
    for shard in (complete / "variables").glob("variables.data-*"):
        shutil.copy2(shard, partial / "variables" / shard.name)
    d.wait_for_states("m", {2: "AVAILABLE", 1: "END"})
    assert d.answer("m") == y(2)


def test_corrupt_version_leaves_the_old_one_serving_until_it_is_fixed(tmp_path, daemon, model_builder):
    base = tmp_path / "repo" / "m"
    model_builder.publish(base, 1)
    d = daemon([{"name": "m", "base_path": str(base)}])
    d.wait_for_states("m", {1: "AVAILABLE"})
    broken = model_builder.publish(base, 2)
    (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    d.wait_for_states("m", {2: "END", 1: "AVAILABLE"})
    (status,) = d.client.get("/v1/models/m/versions/2").json()["model_version_status"]
    assert status["status"]["error_code"] != "OK" and status["status"]["error_message"]
    assert d.answer("m") == y(1)
    # The broken version is tried again when its content changes.
    shutil.copy2(model_builder.built(2) / "saved_model.pb", broken / "saved_model.pb")
    d.wait_for_states("m", {2: "AVAILABLE", 1: "END"})
    assert d.answer("m") == y(2)


def test_deleting_the_newest_version_rolls_back_and_an_empty_folder_unloads_nothing(
    tmp_path, daemon, model_builder
):
    base = tmp_path / "repo" / "m"
    model_builder.publish(base, 1)
    model_builder.publish(base, 2)
    d = daemon([{"name": "m", "base_path": str(base)}])
    d.wait_for_states("m", {2: "AVAILABLE"})
    shutil.rmtree(base / "2")
    d.wait_for_states("m", {1: "AVAILABLE", 2: "END"})
    assert d.answer("m") == y(1)
    shutil.rmtree(base / "1")
    # Storage now lists nothing; a new model proves rescans went by, and 1 still serves.
    model_builder.publish(tmp_path / "repo" / "m" / ".." / "later", 1)
    assert d.states("m") == {1: "AVAILABLE", 2: "END"}
    assert d.answer("m") == y(1)


def test_three_policies_on_one_repository(tmp_path, daemon, model_builder):
    base = tmp_path / "repo" / "m"
    for version in (1, 2, 3):
        model_builder.publish(base, version)
    d = daemon([
        {"name": "latest2", "base_path": str(base), "version_policy": {"latest": {"num_versions": 2}}},
        {"name": "all", "base_path": str(base), "version_policy": {"all": {}}},
        {"name": "specific", "base_path": str(base),
         "version_policy": {"specific": {"versions": [1, 3]}}},
    ])
    d.wait_for_states("latest2", {2: "AVAILABLE", 3: "AVAILABLE"})
    d.wait_for_states("all", {1: "AVAILABLE", 2: "AVAILABLE", 3: "AVAILABLE"})
    d.wait_for_states("specific", {1: "AVAILABLE", 3: "AVAILABLE"})
    assert 1 not in d.states("latest2") and 2 not in d.states("specific")
    for model, versions in (("latest2", (2, 3)), ("all", (1, 2, 3)), ("specific", (1, 3))):
        for version in versions:
            assert d.answer(f"{model}/versions/{version}") == y(version)
        assert d.answer(model) == y(3)


def test_labels_and_explicit_versions_are_routed(tmp_path, daemon, model_builder):
    base = tmp_path / "repo" / "m"
    for version in (1, 2):
        model_builder.publish(base, version)
    d = daemon([{
        "name": "m", "base_path": str(base), "version_policy": {"all": {}},
        "version_labels": {"stable": 1, "canary": 2},
    }])
    d.wait_for_states("m", {1: "AVAILABLE", 2: "AVAILABLE"})
    assert d.answer("m/labels/stable") == y(1)
    assert d.answer("m/labels/canary") == y(2)
    assert d.answer("m/versions/1") == y(1)
    assert d.answer("m") == y(2)
    response = d.predict("m/labels/beta", {"instances": [[2.0]]})
    assert response.status_code == 400
    assert response.json() == {"error": "Unrecognized servable version label: beta"}
    (status,) = d.client.get("/v1/models/m/labels/stable").json()["model_version_status"]
    assert status == {"version": "1", "state": "AVAILABLE",
                      "status": {"error_code": "OK", "error_message": ""}}
    assert d.predict("nope", {"instances": [[2.0]]}).status_code == 404
    status = subprocess.run(
        [sys.executable, "-m", "loader", "status", "--url", str(d.client.base_url)],
        capture_output=True, text=True, timeout=60,
    )
    assert status.returncode == 0, status.stderr
    lines = [line.split() for line in status.stdout.splitlines()]
    assert lines == [["MODEL", "VERSION", "STATE", "LABELS", "ERROR"],
                     ["m", "2", "AVAILABLE", "canary"], ["m", "1", "AVAILABLE", "stable"]]


def test_sigterm_answers_the_request_in_flight_and_exits_0(tmp_path, model_builder):
    from tests.savedmodels import write_slow_model

    write_slow_model(tmp_path / "repo" / "slow" / "1")
    d = DaemonProcess(tmp_path, config(tmp_path, [
        {"name": "slow", "base_path": str(tmp_path / "repo" / "slow")}
    ])).start()
    try:
        d.wait_for_states("slow", {1: "AVAILABLE"})
        answers: list[httpx.Response | Exception] = []

        def slow_request() -> None:
            try:
                with httpx.Client(base_url=str(d.client.base_url), timeout=60) as client:
                    answers.append(client.post(
                        "/v1/models/slow:predict",
                        json={"inputs": {"x": [[1.5]], "n": 400_000}},  # a few seconds
                    ))
            except Exception as exc:  # any failure is what this test looks for
                answers.append(exc)

        request = threading.Thread(target=slow_request, name="slow-request")
        request.start()
        wait_until(
            lambda: 'modelwatch_requests_in_flight{transport="rest"} 1.0'
            in d.client.get("/monitoring/prometheus/metrics").text,
            30, "the slow request to be in flight",
        )
        assert d.stop() == 0, d.log()[-4000:]
        request.join(60)
        (answer,) = answers
        assert isinstance(answer, httpx.Response), answer
        assert answer.status_code == 200 and answer.json() == {"outputs": [[1.5]]}
    finally:
        d.stop()


def test_config_edits_are_applied_without_a_restart(tmp_path, daemon, model_builder):
    for name in ("a", "b"):
        model_builder.publish(tmp_path / "repo" / name, 1)
    d = daemon([{"name": "a", "base_path": str(tmp_path / "repo" / "a")}])
    d.wait_for_states("a", {1: "AVAILABLE"})
    edited = config(tmp_path, [{"name": "b", "base_path": str(tmp_path / "repo" / "b"),
                                "version_labels": {"stable": 1}}])
    d.config_path.write_text(yaml.safe_dump(edited))
    d.wait_for_states("b", {1: "AVAILABLE"})
    assert d.answer("b/labels/stable") == y(1)
    wait_until(lambda: d.states("a") == {}, 30, "model a to be removed")
    assert d.predict("a", {"instances": [[2.0]]}).status_code == 404
    # A config that does not validate leaves the running one in place, and says why.
    d.config_path.write_text("models: [{name: b}]\n")
    wait_until(lambda: "config not reloaded" in d.log(), 30, "the bad config to be refused")
    assert "models[0].base_path: field required" in d.log()
    assert d.answer("b") == y(1)
    # SIGHUP reloads too (here the file is unchanged, so nothing changes).
    d.config_path.write_text(yaml.safe_dump(edited))
    wait_until(lambda: d.log().count("config checked: unchanged") >= 1, 30, "the fixed config")
    d.signal(signal.SIGHUP)
    wait_until(lambda: "config reload: SIGHUP" in d.log(), 30, "SIGHUP to reload")
    assert d.answer("b") == y(1)


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(tmp_path, daemon, model_builder):
    base = tmp_path / "repo" / "m"
    model_builder.publish(base, 1)
    d = daemon([{
        "name": "m", "base_path": str(base),
        # A long window, so the 8 requests sent together surely meet in one queue.
        "batching": {"max_batch_size": 8, "batch_timeout_micros": 500_000, "num_batch_threads": 1},
    }])
    d.wait_for_states("m", {1: "AVAILABLE"})
    start = threading.Barrier(8)
    answers: dict[int, float] = {}

    def client(i: int) -> None:
        with httpx.Client(base_url=str(d.client.base_url), timeout=30) as http:
            start.wait(10)
            response = http.post("/v1/models/m:predict", json={"instances": [[float(i)]]})
            answers[i] = response.json()["predictions"][0][0]

    threads = [threading.Thread(target=client, args=(i,), name=f"client-{i}") for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == {i: y(1, x=float(i)) for i in range(8)}
    metrics = d.client.get("/monitoring/prometheus/metrics").text
    batches = float(metrics.split('modelwatch_batch_size_count{model="m"} ')[1].split()[0])
    rows = float(metrics.split('modelwatch_batch_size_sum{model="m"} ')[1].split()[0])
    assert rows == 8 and batches < 8


def test_warmup_runs_before_available_and_a_failing_warmup_keeps_the_old_version(
    tmp_path, daemon, model_builder
):
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from loader.servables.warmup import write_warmup_file

    def log_for(input_name: str) -> prediction_log_pb2.PredictionLog:
        request = predict_pb2.PredictRequest()
        request.inputs[input_name].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], np.float32)))
        return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))

    base = tmp_path / "repo" / "m"
    write_warmup_file(model_builder.publish(base, 1), [log_for("x")] * 3)
    d = daemon([{"name": "m", "base_path": str(base)}])
    d.wait_for_states("m", {1: "AVAILABLE"})
    assert "3 record(s)" in d.log()
    # Version 2's warmup request names an input the model does not have: the load fails.
    staged = tmp_path / "staging" / "2"
    shutil.copytree(model_builder.built(2), staged)
    write_warmup_file(staged, [log_for("nope")])
    staged.rename(base / "2")
    d.wait_for_states("m", {2: "END", 1: "AVAILABLE"})
    (status,) = d.client.get("/v1/models/m/versions/2").json()["model_version_status"]
    assert "nope" in status["status"]["error_message"]
    assert d.answer("m") == y(1)
