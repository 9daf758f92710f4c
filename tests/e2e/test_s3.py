"""End to end on S3: the daemon as a subprocess polling moto's real HTTP server.

Each version v of the test model computes y = 0.5 * x + v, so an answer names the version
that gave it.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.daemon_process import DaemonProcess, wait_until
from tests.s3_storage import CREDENTIALS, bucket_client
from tests.s3_storage import delete_prefix as _delete_prefix
from tests.s3_storage import upload as _upload

pytestmark = pytest.mark.e2e

BUCKET = "models"
upload = partial(_upload, bucket=BUCKET)
delete_prefix = partial(_delete_prefix, bucket=BUCKET)


@pytest.fixture
def s3(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    yield from bucket_client(moto_server, BUCKET, monkeypatch)


def config(tmp_path: Path, endpoint: str, models: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "rest_port": 0, "grpc_port": 0},
        "storage": {"cache_dir": str(tmp_path / "cache"),
                    "s3": {"endpoint_url": endpoint, "region": "us-east-1"}},
        "watch": {"poll_interval_seconds": 0.2},
        "loading": {"max_retries": 0, "retry_backoff_seconds": 0.1},
        "models": models,
    }


@pytest.fixture
def daemon(tmp_path: Path, moto_server: str) -> Iterator:
    started: list[DaemonProcess] = []

    def start(models: list[dict[str, Any]], endpoint: str = moto_server) -> DaemonProcess:
        process = DaemonProcess(tmp_path, config(tmp_path, endpoint, models), env=CREDENTIALS)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        assert process.stop() == 0, process.log()[-4000:]


def y(version: float, x: float = 2.0) -> float:
    return 0.5 * x + version


def cached_versions(tmp_path: Path, model: str) -> set[str]:
    folder = tmp_path / "cache" / model
    return {p.name.split("-")[0] for p in folder.iterdir()} if folder.is_dir() else set()


def test_versions_are_fetched_served_swapped_and_their_cache_removed(tmp_path, s3, daemon, model_builder):
    upload(s3, model_builder.built(1), "repo/m/1")
    d = daemon([{"name": "m", "base_path": f"s3://{BUCKET}/repo/m"}])
    d.wait_for_states("m", {1: "AVAILABLE"})
    assert d.answer("m") == y(1)
    upload(s3, model_builder.built(2), "repo/m/2")
    d.wait_for_states("m", {2: "AVAILABLE", 1: "END"})
    assert d.answer("m") == y(2)
    wait_until(lambda: cached_versions(tmp_path, "m") == {"2"}, 10, "version 1's cache to go")


def test_partial_upload_is_never_served_and_is_loaded_once_complete(tmp_path, s3, daemon, model_builder):
    upload(s3, model_builder.built(1), "repo/m/1")
    d = daemon([
        {"name": "m", "base_path": f"s3://{BUCKET}/repo/m"},
        {"name": "sentinel", "base_path": f"s3://{BUCKET}/repo/sentinel"},
    ])
    d.wait_for_states("m", {1: "AVAILABLE"})
    upload(s3, model_builder.built(2), "repo/m/2", skip="variables.data")
    # The sentinel is uploaded after the partial version, so once it serves, several
    # polls have seen version 2 incomplete.
    upload(s3, model_builder.built(1), "repo/sentinel/1")
    d.wait_for_states("sentinel", {1: "AVAILABLE"})
    assert 2 not in d.states("m")
    assert d.answer("m") == y(1)
    for shard in (model_builder.built(2) / "variables").glob("variables.data-*"):
        s3.upload_file(str(shard), BUCKET, f"repo/m/2/variables/{shard.name}")
    d.wait_for_states("m", {2: "AVAILABLE", 1: "END"})
    assert d.answer("m") == y(2)


def test_corrupt_version_leaves_the_old_one_serving(tmp_path, s3, daemon, model_builder):
    upload(s3, model_builder.built(1), "repo/m/1")
    d = daemon([{"name": "m", "base_path": f"s3://{BUCKET}/repo/m"}])
    d.wait_for_states("m", {1: "AVAILABLE"})
    upload(s3, model_builder.built(2), "repo/m/2")
    s3.put_object(Bucket=BUCKET, Key="repo/m/2/saved_model.pb", Body=b"not a SavedModel")
    d.wait_for_states("m", {2: "END", 1: "AVAILABLE"})
    (status,) = d.client.get("/v1/models/m/versions/2").json()["model_version_status"]
    assert status["status"]["error_message"]
    assert d.answer("m") == y(1)


def test_deleting_the_newest_version_rolls_back(tmp_path, s3, daemon, model_builder):
    upload(s3, model_builder.built(1), "repo/m/1")
    upload(s3, model_builder.built(2), "repo/m/2")
    d = daemon([{"name": "m", "base_path": f"s3://{BUCKET}/repo/m"}])
    d.wait_for_states("m", {2: "AVAILABLE"})
    delete_prefix(s3, "repo/m/2")
    d.wait_for_states("m", {1: "AVAILABLE", 2: "END"})
    assert d.answer("m") == y(1)


def test_policies_labels_and_versions_on_one_repository(tmp_path, s3, daemon, model_builder):
    for version in (1, 2, 3):
        upload(s3, model_builder.built(version), f"repo/m/{version}")
    base = f"s3://{BUCKET}/repo/m"
    d = daemon([
        {"name": "latest2", "base_path": base, "version_policy": {"latest": {"num_versions": 2}}},
        {"name": "all", "base_path": base, "version_policy": {"all": {}},
         "version_labels": {"stable": 1, "canary": 3}},
        {"name": "specific", "base_path": base, "version_policy": {"specific": {"versions": [1, 3]}}},
    ])
    d.wait_for_states("latest2", {2: "AVAILABLE", 3: "AVAILABLE"})
    d.wait_for_states("all", {1: "AVAILABLE", 2: "AVAILABLE", 3: "AVAILABLE"})
    d.wait_for_states("specific", {1: "AVAILABLE", 3: "AVAILABLE"})
    assert 1 not in d.states("latest2") and 2 not in d.states("specific")
    assert d.answer("all/labels/stable") == y(1)
    assert d.answer("all/labels/canary") == y(3)
    assert d.answer("all/versions/2") == y(2)
    assert d.answer("specific") == y(3)


def test_storage_outage_unloads_nothing_and_polling_resumes(tmp_path, s3, daemon, model_builder):
    # A second S3 endpoint that this test can take down and bring back (moto's state is
    # shared within the process, so the bucket outlives its server).
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    upload(s3, model_builder.built(1), "outage/m/1")
    d = daemon([{"name": "m", "base_path": f"s3://{BUCKET}/outage/m"}],
               endpoint=f"http://{host}:{port}")
    d.wait_for_states("m", {1: "AVAILABLE"})
    server.stop()
    wait_until(lambda: "could not list" in d.log().lower(),
               30, "the daemon to notice the outage")
    assert d.states("m") == {1: "AVAILABLE"} and d.answer("m") == y(1)
    upload(s3, model_builder.built(2), "outage/m/2")
    restarted = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    restarted.start()
    try:
        d.wait_for_states("m", {2: "AVAILABLE", 1: "END"})
        assert d.answer("m") == y(2)
    finally:
        d.stop()
        restarted.stop()


def test_s3_events_make_a_new_version_serve_without_waiting_for_the_poll(
    tmp_path, s3, moto_server, model_builder
):
    sqs = boto3.client("sqs", endpoint_url=moto_server, region_name="us-east-1")
    queue = sqs.create_queue(QueueName="model-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]
    })
    upload(s3, model_builder.built(1), "events/m/1")
    settings = config(tmp_path, moto_server, [{"name": "m", "base_path": f"s3://{BUCKET}/events/m"}])
    settings["watch"] = {"poll_interval_seconds": 300, "s3_events": {"sqs_queue_url": queue}}
    d = DaemonProcess(tmp_path, settings, env=CREDENTIALS).start()
    try:
        d.wait_for_states("m", {1: "AVAILABLE"}, timeout=30)  # the first poll runs at start
        upload(s3, model_builder.built(2), "events/m/2")
        d.wait_for_states("m", {2: "AVAILABLE", 1: "END"}, timeout=30)  # next poll: in 5 min
        assert d.answer("m") == y(2)
    finally:
        assert d.stop() == 0
        sqs.delete_queue(QueueUrl=queue)
