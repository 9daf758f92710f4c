"""End to end: a version copied one file at a time, graph first (what a slow `aws s3 cp` or
`cp -r` does), is never loaded before its last file; one whose load failed is loaded again
within a few polls once it is fixed. On S3 (moto's real HTTP server) and on a local folder,
with one daemon watching both.

Load attempts are counted with `modelwatch_loads_total` (every load that ended, by outcome)
and each step waits for the daemon's own polls (`modelwatch_source_polls_total`), so the
test runs at the daemon's pace, however slow the machine is.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_process import DaemonProcess, wait_until
from tests.s3_storage import CREDENTIALS, bucket_client, upload
from tests.savedmodels import upload_order, write_sharded_model

pytestmark = pytest.mark.e2e

BUCKET = "uploads"
POLL_SECONDS = 0.5
# Polls between two files of a copy: at least two listings of each partial state, so on a
# listing that settles after one poll interval every partial state would have settled.
POLLS_BETWEEN_FILES = 4
# Polls from the last file (or the fix) to the version's load starting: the listing
# settles on the second poll that sees it; a little slack for a poll in flight.
POLLS_TO_LOAD = 4


@pytest.fixture(scope="module")
def s3(moto_server: str) -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as env:
        yield from bucket_client(moto_server, BUCKET, env)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("repo")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 2 of the graph-first tests: y = 0.5x + 2 with a two-shard checkpoint."""
    return write_sharded_model(tmp_path_factory.mktemp("sharded") / "model", 2.0, shards=2)


# Every test has a model of its own, on the storage the name says, with version 1 serving.
S3_MODELS = ("s3_upload", "s3_fix")
LOCAL_MODELS = ("local_upload", "local_fix")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, s3, repo, moto_server, model_builder) -> Iterator[DaemonProcess]:
    for name in S3_MODELS:
        upload(s3, model_builder.built(1), f"{name}/1", bucket=BUCKET)
    for name in LOCAL_MODELS:
        model_builder.publish(repo / name, 1)
    workdir = tmp_path_factory.mktemp("daemon")
    config = {
        "server": {"host": "127.0.0.1", "rest_port": 0, "grpc_port": 0},
        "storage": {"cache_dir": str(workdir / "cache"),
                    "s3": {"endpoint_url": moto_server, "region": "us-east-1"}},
        "watch": {"poll_interval_seconds": POLL_SECONDS, "settle_seconds": 0.8 * POLL_SECONDS},
        "loading": {"max_retries": 1, "retry_backoff_seconds": 0.1},
        "models": [{"name": n, "base_path": f"s3://{BUCKET}/{n}"} for n in S3_MODELS]
        + [{"name": n, "base_path": str(repo / n)} for n in LOCAL_MODELS],
    }
    process = DaemonProcess(workdir, config, env=CREDENTIALS).start()
    try:
        for name in (*S3_MODELS, *LOCAL_MODELS):
            process.wait_for_states(name, {1: "AVAILABLE"})
        yield process
    finally:
        assert process.stop() == 0, process.log()[-4000:]


def metric(d: DaemonProcess, family: str, **labels: str) -> float:
    assert d.client is not None
    text = d.client.get("/monitoring/prometheus/metrics").text
    for found in text_string_to_metric_families(text):
        if found.name == family:
            for sample in found.samples:
                if sample.name.endswith("_total") and labels.items() <= sample.labels.items():
                    return float(sample.value)
    return 0.0


def polls(d: DaemonProcess, model: str) -> float:
    return metric(d, "modelwatch_source_polls", model=model, outcome="ok")


def loads(d: DaemonProcess, model: str) -> dict[str, float]:
    return {o: metric(d, "modelwatch_loads", model=model, outcome=o) for o in ("ok", "error")}


def wait_polls(d: DaemonProcess, model: str, more: int) -> None:
    start = polls(d, model)
    wait_until(lambda: polls(d, model) >= start + more, 60, f"{more} more polls of {model}")


def polls_until_loading(d: DaemonProcess, model: str, version: int, since: float) -> float:
    """Polls of `model` from `since` until `version` is loading or loaded."""
    wait_until(
        lambda: d.states(model).get(version) in ("LOADING", "AVAILABLE"), 60,
        f"version {version} of {model} to load",
    )
    return polls(d, model) - since


def y(intercept: float, x: float = 2.0) -> float:
    return 0.5 * x + intercept


def copy_graph_first(d: DaemonProcess, model: str, model_dir: Path, put: Any) -> float:
    """Copy `model_dir` one file at a time with `put(relpath)`, graph first, letting the
    daemon poll between files; no load may start before the last one. The polls count then."""
    before = loads(d, model)
    order = upload_order(model_dir)
    assert order[0] == "saved_model.pb" and len(order) >= 5  # graph, ..., index, 2 shards
    for relpath in order:
        put(relpath)
        if relpath == order[-1]:
            break
        wait_polls(d, model, POLLS_BETWEEN_FILES)
        assert loads(d, model) == before, f"a load was tried with {relpath} the last file"
        assert 2 not in d.states(model), f"version 2 appeared with {relpath} the last file"
    return polls(d, model)


def test_an_s3_upload_graph_first_is_loaded_once_after_its_last_object(daemon, s3, sharded):
    def put(relpath: str) -> None:
        s3.upload_file(str(sharded / relpath), BUCKET, f"s3_upload/2/{relpath}")

    last = copy_graph_first(daemon, "s3_upload", sharded, put)
    assert polls_until_loading(daemon, "s3_upload", 2, last) <= POLLS_TO_LOAD
    daemon.wait_for_states("s3_upload", {2: "AVAILABLE", 1: "END"})
    assert daemon.answer("s3_upload") == y(2)
    assert loads(daemon, "s3_upload") == {"ok": 2, "error": 0}  # version 1, then 2 once


def test_a_local_copy_graph_first_is_loaded_once_after_its_last_file(daemon, repo, sharded):
    def put(relpath: str) -> None:
        target = repo / "local_upload" / "2" / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sharded / relpath, target)

    last = copy_graph_first(daemon, "local_upload", sharded, put)
    assert polls_until_loading(daemon, "local_upload", 2, last) <= POLLS_TO_LOAD
    daemon.wait_for_states("local_upload", {2: "AVAILABLE", 1: "END"})
    assert daemon.answer("local_upload") == y(2)
    assert loads(daemon, "local_upload") == {"ok": 2, "error": 0}


def corrupt_then_fix(d: DaemonProcess, model: str, put: Any, good: Path) -> None:
    """Version 2 arrives with a corrupt variables shard and fails to load while version 1
    serves; the shard is replaced by the right one and version 2 loads within a few polls."""
    (shard,) = (good / "variables").glob("variables.data-*")
    relpath = shard.relative_to(good).as_posix()
    put(good, relpath, b"not a checkpoint shard")
    wait_until(lambda: loads(d, model)["error"] >= 1, 60, f"version 2 of {model} to fail")
    (status,) = d.client.get(f"/v1/models/{model}/versions/2").json()["model_version_status"]
    assert status["state"] == "END" and status["status"]["error_message"]
    assert d.answer(model) == y(1)
    # Long settled by now: without the failed load's feedback, S3 would re-list it only
    # at its next re-verification (every 30 polls).
    wait_polls(d, model, POLLS_BETWEEN_FILES)
    fixed = polls(d, model)
    put(good, relpath, None)
    assert polls_until_loading(d, model, 2, fixed) <= POLLS_TO_LOAD
    d.wait_for_states(model, {2: "AVAILABLE", 1: "END"})
    assert d.answer(model) == y(2)
    assert loads(d, model) == {"ok": 2, "error": 1}


def test_an_s3_version_whose_load_failed_is_loaded_once_fixed(daemon, s3, model_builder):
    def put(model: Path, relpath: str | None, shard: bytes | None) -> None:
        if shard is None:  # the fix: the right shard
            s3.upload_file(str(model / str(relpath)), BUCKET, f"s3_fix/2/{relpath}")
            return
        upload(s3, model, "s3_fix/2", bucket=BUCKET, skip="variables.data")
        s3.put_object(Bucket=BUCKET, Key=f"s3_fix/2/{relpath}", Body=shard)

    corrupt_then_fix(daemon, "s3_fix", put, model_builder.built(2))


def test_a_local_version_whose_load_failed_is_loaded_once_fixed(daemon, repo, model_builder):
    def put(model: Path, relpath: str, shard: bytes | None) -> None:
        target = repo / "local_fix" / "2"
        if shard is None:
            shutil.copyfile(model / relpath, target / relpath)
            return
        staging = repo / "local_fix" / ".tmp-2"
        shutil.copytree(model, staging)
        (staging / relpath).write_bytes(shard)
        staging.rename(target)

    corrupt_then_fix(daemon, "local_fix", put, model_builder.built(2))
