"""StoreSource on S3 (S3Store) against moto's in-process S3: what is reported, when, and at what cost."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from moto import mock_aws

from loader.base import VersionRef
from loader.sources.base import ModelLocation
from loader.sources.object_store import listing_fingerprint
from loader.sources.s3_client import S3Store, make_s3_client
from loader.sources.store_source import StoreSource, reverify_due
from tests.fakes import FakeClock, Reports
from tests.savedmodels import upload_order, write_sharded_model, write_tf1_model_without_variables

BUCKET = "models"
SECRET = "fake-secret-do-not-log"
COMPLETE = {
    "saved_model.pb": b"graph",
    "variables/variables.index": b"index",
    "variables/variables.data-00000-of-00001": b"data",
}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials, so nothing can ever reach real AWS with real ones."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def s3(aws_env: None) -> Iterator[Any]:
    with mock_aws():
        client = make_s3_client(None, "us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def put(client: Any, prefix: str, files: Mapping[str, bytes]) -> None:
    for relpath, body in files.items():
        client.put_object(Bucket=BUCKET, Key=f"{prefix}{relpath}", Body=body)


def delete(client: Any, prefix: str, relpaths: list[str]) -> None:
    for relpath in relpaths:
        client.delete_object(Bucket=BUCKET, Key=f"{prefix}{relpath}")


def source(
    client: Any, reports: Reports, clock: FakeClock, *models: tuple[str, str], **kwargs: Any
) -> StoreSource:
    locations = [ModelLocation(name, path) for name, path in models]
    return StoreSource(locations, reports, S3Store(client), clock=clock, **kwargs)


def poll(src: StoreSource, clock: FakeClock, times: int = 1, step: float = 1.0) -> None:
    for _ in range(times):
        src.poll_once()
        clock.now += step


# -- pure pieces ---------------------------------------------------------------------------


def test_a_model_outside_s3_is_a_programming_error(s3: Any) -> None:
    with pytest.raises(ValueError, match="not a storage URI"):
        source(s3, Reports(), FakeClock(), ("m", "/models/m"))
    with pytest.raises(ValueError, match="not a s3:// path"):
        source(s3, Reports(), FakeClock(), ("m", "gs://models/m"))


def test_each_settled_version_is_reverified_once_every_n_polls() -> None:
    every = 7
    for version in range(20):
        due = [p for p in range(100, 100 + every) if reverify_due(p, "m", version, every)]
        assert len(due) == 1
    offsets = {next(p for p in range(every) if reverify_due(p, "m", v, every)) for v in range(20)}
    assert len(offsets) > 1, "re-verification of many versions should be spread out"


def test_listing_skips_folder_markers_and_other_versions(s3: Any) -> None:
    put(s3, "m/1/", {"": b"", "variables/": b"", **COMPLETE})
    put(s3, "m/10/", COMPLETE)
    objects = S3Store(s3).list_version_objects(BUCKET, "m/1/")
    assert sorted(o.relpath for o in objects) == sorted(COMPLETE)
    assert all(o.key.startswith("m/1/") and not o.tag.startswith('"') for o in objects)
    assert S3Store(s3).list_version_folders(BUCKET, "m/") == {1: "m/1/", 10: "m/10/"}


# -- what is reported ----------------------------------------------------------------------


def test_only_version_folders_are_reported(s3: Any) -> None:
    for folder in ["1", "00000123", "abc", ".hidden", "5.tmp", ".tmp-7", "-3", "1e3", "v2"]:
        put(s3, f"prefix/m/{folder}/", COMPLETE)
    put(s3, "prefix/m/", {"README": b"not a version"})
    reports, clock = Reports(), FakeClock()
    src = source(s3, reports, clock, ("m", "s3://models/prefix/m"))
    poll(src, clock, times=2)
    assert set(reports.last["m"]) == {1, 123}
    ref = reports.last["m"][123]
    assert ref.uri == "s3://models/prefix/m/00000123/"
    listing = S3Store(s3).list_version_objects(BUCKET, "prefix/m/00000123/")
    assert ref.fingerprint == listing_fingerprint(listing)


def test_an_empty_prefix_reports_no_versions(s3: Any) -> None:
    reports, clock = Reports(), FakeClock()
    src = source(s3, reports, clock, ("m", "s3://models/nothing/here/"))
    poll(src, clock)
    assert reports.calls == [("m", {})]


GRAPH, INDEX = "saved_model.pb", "variables/variables.index"
ONE_SHARD = {GRAPH, INDEX, "variables/variables.data-00000-of-00001"}
TWO_SHARDS = {
    GRAPH,
    INDEX,
    "variables/variables.data-00000-of-00002",
    "variables/variables.data-00001-of-00002",
}
# (what is there so far, what is there once the upload is complete)
PARTIAL = {
    "index missing": ({GRAPH, "variables/variables.data-00000-of-00001"}, ONE_SHARD),
    "graph missing": ({INDEX, "variables/variables.data-00000-of-00001"}, ONE_SHARD),
    "shard missing": ({GRAPH, INDEX, "variables/variables.data-00000-of-00002"}, TWO_SHARDS),
    "shard counts disagree": (
        {
            GRAPH,
            INDEX,
            "variables/variables.data-00000-of-00002",
            "variables/variables.data-00001-of-00003",
        },
        TWO_SHARDS,
    ),
}


@pytest.mark.parametrize("case", PARTIAL)
def test_a_partial_upload_is_reported_only_once_complete(s3: Any, case: str) -> None:
    partial, complete = PARTIAL[case]
    put(s3, "m/1/", dict.fromkeys(partial, b"x"))
    reports, clock = Reports(), FakeClock()
    src = source(s3, reports, clock, ("m", "s3://models/m"))
    poll(src, clock, times=5)
    assert reports.last["m"] == {}
    assert all(versions == {} for _, versions in reports.calls)

    delete(s3, "m/1/", sorted(partial - complete))
    put(s3, "m/1/", dict.fromkeys(complete - partial, b"x"))
    poll(src, clock, times=2)
    assert set(reports.last["m"]) == {1}


@pytest.fixture(scope="module")
def sharded_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sharded_model(tmp_path_factory.mktemp("sharded") / "model", 2.0, shards=2)


def test_an_upload_that_starts_with_the_graph_is_reported_only_with_its_last_shard(
    s3: Any, sharded_model: Path
) -> None:
    # A slow copy, graph first: each partial listing stays the same for several polls
    # (as while a large shard uploads), long enough to settle, yet none of it is reported.
    reports, clock = Reports(), FakeClock()
    src = source(s3, reports, clock, ("m", "s3://models/m"))
    order = upload_order(sharded_model)
    assert order[0] == "saved_model.pb" and order[-2:] == [
        "variables/variables.data-00000-of-00002", "variables/variables.data-00001-of-00002"
    ]
    for relpath in order[:-1]:
        put(s3, "m/1/", {relpath: (sharded_model / relpath).read_bytes()})
        poll(src, clock, times=3)
        assert reports.last["m"] == {}, f"reported with {relpath} the last object there"
    put(s3, "m/1/", {order[-1]: (sharded_model / order[-1]).read_bytes()})
    poll(src, clock, times=2)
    assert set(reports.last["m"]) == {1}


def test_a_graph_without_variables_is_reported_alone(s3: Any, tmp_path: Path) -> None:
    model = write_tf1_model_without_variables(tmp_path / "model")
    put(s3, "m/1/", {"saved_model.pb": (model / "saved_model.pb").read_bytes()})
    reports, clock = Reports(), FakeClock()
    src = source(s3, reports, clock, ("m", "s3://models/m"))
    poll(src, clock, times=2)
    assert set(reports.last["m"]) == {1}


def test_a_version_whose_load_failed_is_listed_every_poll_until_its_content_changes(
    s3: Any,
) -> None:
    put(s3, "m/1/", COMPLETE)
    reports, clock = Reports(), FakeClock()
    src = source(s3, reports, clock, ("m", "s3://models/m"), reverify_every=10**9)
    poll(src, clock, times=3)
    failed = reports.last["m"][1]
    assert src.requests_last_poll == 1  # settled: not listed
    src.recheck("m", 1, failed.fingerprint)  # the manager could not load it
    for _ in range(3):
        poll(src, clock)
        assert src.requests_last_poll == 2  # the model's folders, and version 1's objects
    assert reports.last["m"][1] == failed
    put(s3, "m/1/", {"variables/variables.data-00000-of-00001": b"fixed"})
    poll(src, clock, times=2)
    fixed = reports.last["m"][1]
    assert fixed.fingerprint == listing_fingerprint(S3Store(s3).list_version_objects(BUCKET, "m/1/"))
    poll(src, clock)
    assert src.requests_last_poll == 1  # new content, settled: back to costing nothing


def test_a_recheck_of_content_already_replaced_costs_one_listing(s3: Any) -> None:
    put(s3, "m/1/", COMPLETE)
    reports, clock = Reports(), FakeClock()
    src = source(s3, reports, clock, ("m", "s3://models/m"), reverify_every=10**9)
    poll(src, clock, times=3)
    src.recheck("m", 1, "0123456789abcdef")  # a failure reported after the content moved on
    poll(src, clock)
    assert src.requests_last_poll == 2
    poll(src, clock)
    assert src.requests_last_poll == 1


def test_a_version_is_ready_only_after_its_listing_settles(s3: Any) -> None:
    put(s3, "m/1/", COMPLETE)
    reports, clock = Reports(), FakeClock()
    src = source(s3, reports, clock, ("m", "s3://models/m"), settle_seconds=5.0)
    src.poll_once()  # t=0: first seen
    clock.now = 3.0
    put(s3, "m/1/", {"assets/vocab.txt": b"late file"})
    src.poll_once()  # t=3: changed, the settle clock restarts
    clock.now = 7.9
    src.poll_once()
    assert "m" not in reports.last  # complete but settling: no answer yet
    clock.now = 8.0
    src.poll_once()
    objects = S3Store(s3).list_version_objects(BUCKET, "m/1/")
    expected = listing_fingerprint(objects)
    size = sum(o.size for o in objects)  # what memory estimates start from
    assert size == sum(map(len, COMPLETE.values())) + len(b"late file")
    assert reports.last["m"] == {1: VersionRef("s3://models/m/1/", expected, size)}


def test_by_default_two_polls_with_the_same_listing_settle_a_version(s3: Any) -> None:
    put(s3, "m/1/", COMPLETE)
    reports, clock = Reports(), FakeClock()
    src = source(s3, reports, clock, ("m", "s3://models/m"), poll_interval_seconds=2.0)
    poll(src, clock, step=2.0)
    assert "m" not in reports.last  # complete but settling: no answer yet
    poll(src, clock, step=2.0)
    assert set(reports.last["m"]) == {1}


def test_a_version_whose_objects_look_long_written_still_waits_for_a_second_listing(
    s3: Any,
) -> None:
    # LastModified is when an upload began: a large variables file that finished a moment
    # ago carries an old one, and an asset after it may still be on its way. So however old
    # the objects look by the store's clock, one listing never settles a version.
    put(s3, "m/1/", COMPLETE)
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="m/1/")["Contents"]
    written = max(item["LastModified"].timestamp() for item in listed)
    tick, deadline = threading.Event(), time.monotonic() + 30
    while time.time() - written < 2.5:  # past the settle period and LastModified's 1 s grain
        assert time.monotonic() < deadline
        tick.wait(0.05)
    reports, clock = Reports(), FakeClock()
    src = source(s3, reports, clock, ("m", "s3://models/m"), settle_seconds=1.0)
    src.poll_once()
    assert "m" not in reports.last  # complete but settling: no answer yet
    clock.now += 1.0
    src.poll_once()
    assert set(reports.last["m"]) == {1}


def test_a_ready_marker_makes_a_version_ready_at_once(s3: Any) -> None:
    put(s3, "m/1/", COMPLETE)
    reports, clock = Reports(), FakeClock()
    src = source(s3, reports, clock, ("m", "s3://models/m"), ready_marker="READY")
    poll(src, clock, times=4)
    assert reports.last["m"] == {}
    put(s3, "m/1/", {"READY": b""})
    poll(src, clock)
    assert set(reports.last["m"]) == {1}


def test_settled_versions_cost_no_requests(s3: Any) -> None:
    files = {f"assets/file{i:02d}.txt": b"x" for i in range(47)} | COMPLETE
    for model in ("a", "b"):
        for version in (1, 2, 3):
            put(s3, f"{model}/{version}/", files)
    reports, clock = Reports(), FakeClock()
    src = source(
        s3, reports, clock, ("a", "s3://models/a"), ("b", "s3://models/b"), reverify_every=10**9
    )
    poll(src, clock)
    assert src.requests_last_poll == 2 * (1 + 3)
    poll(src, clock)
    assert {m: set(v) for m, v in reports.last.items()} == {"a": {1, 2, 3}, "b": {1, 2, 3}}
    for _ in range(5):
        poll(src, clock)
        assert src.requests_last_poll == 2  # one delimited listing per model
    assert src.poll_errors_total == 0
    assert src.last_poll_seconds > 0


def test_reverification_notices_changed_content(s3: Any) -> None:
    put(s3, "m/1/", COMPLETE)
    reports, clock = Reports(), FakeClock()
    src = source(s3, reports, clock, ("m", "s3://models/m"), reverify_every=3)
    poll(src, clock, times=2)
    old = reports.last["m"][1]
    requests = []
    for _ in range(3):
        poll(src, clock)
        requests.append(src.requests_last_poll)
    assert sorted(requests) == [1, 1, 2], "a settled version is re-listed once in 3 polls"

    put(s3, "m/1/", {"saved_model.pb": b"a new graph"})
    seen = []
    for _ in range(3 + 2):
        poll(src, clock)
        seen.append(reports.last["m"][1])  # never missing while the change settles
    assert seen[0] == old
    assert seen[-1].fingerprint != old.fingerprint
    assert seen[-1].fingerprint == listing_fingerprint(S3Store(s3).list_version_objects(BUCKET, "m/1/"))


def test_a_deleted_version_is_no_longer_reported(s3: Any) -> None:
    put(s3, "m/1/", COMPLETE)
    put(s3, "m/2/", COMPLETE)
    reports, clock = Reports(), FakeClock()
    src = source(s3, reports, clock, ("m", "s3://models/m"))
    poll(src, clock, times=2)
    assert set(reports.last["m"]) == {1, 2}
    delete(s3, "m/2/", list(COMPLETE))
    poll(src, clock)
    assert set(reports.last["m"]) == {1}


# -- failures ------------------------------------------------------------------------------


def test_a_missing_bucket_reports_nothing_then_recovers(
    s3: Any, caplog: pytest.LogCaptureFixture
) -> None:
    put(s3, "good/1/", COMPLETE)
    reports, clock = Reports(), FakeClock()
    polls: list[tuple[str, bool]] = []
    src = source(
        s3,
        reports,
        clock,
        ("lost", "s3://missing-bucket/lost"),
        ("good", "s3://models/good"),
        on_poll=lambda model, seconds, ok: polls.append((model, ok)),
    )
    with caplog.at_level(logging.INFO, logger="loader.sources.store_source"):
        poll(src, clock, times=3)
    assert "lost" not in reports.last
    assert set(reports.last["good"]) == {1}
    assert src.poll_errors_total == 3
    assert sorted(polls[:2]) == [("good", True), ("lost", False)]  # listed side by side
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "'lost'" in message and "missing-bucket" in message and "NoSuchBucket" in message
    assert SECRET not in caplog.text

    caplog.clear()
    s3.create_bucket(Bucket="missing-bucket")
    with caplog.at_level(logging.INFO, logger="loader.sources.store_source"):
        poll(src, clock, times=2)
    assert reports.last["lost"] == {}
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1 and "works again" in infos[0].getMessage()


def test_an_outage_keeps_quiet_and_keeps_nothing_from_being_reported(s3: Any) -> None:
    put(s3, "m/1/", COMPLETE)
    reports, clock = Reports(), FakeClock()
    src = source(s3, reports, clock, ("m", "s3://models/m"))
    poll(src, clock, times=2)
    assert set(reports.last["m"]) == {1}
    calls = len(reports.calls)

    def unreachable(**kwargs: Any) -> None:
        raise EndpointConnectionError(endpoint_url="https://s3.example.invalid")

    s3.meta.events.register("before-call.s3.ListObjectsV2", unreachable)
    poll(src, clock, times=3)  # must not raise
    assert len(reports.calls) == calls
    s3.meta.events.unregister("before-call.s3.ListObjectsV2", unreachable)
    poll(src, clock)
    assert set(reports.last["m"]) == {1}


def test_a_failed_version_listing_keeps_what_was_known(s3: Any) -> None:
    put(s3, "m/1/", COMPLETE)
    reports, clock = Reports(), FakeClock()
    src = source(s3, reports, clock, ("m", "s3://models/m"), reverify_every=1)
    poll(src, clock, times=2)
    ready = reports.last["m"][1]
    put(s3, "m/2/", COMPLETE)

    def throttled(params: dict[str, Any], **kwargs: Any) -> None:
        if "Delimiter" not in params:
            raise EndpointConnectionError(endpoint_url="https://s3.example.invalid")

    s3.meta.events.register("before-call.s3.ListObjectsV2", throttled)
    poll(src, clock, times=3)
    assert reports.last["m"] == {1: ready}  # 1 kept as it was; 2 never listed, so left out
    s3.meta.events.unregister("before-call.s3.ListObjectsV2", throttled)
    poll(src, clock, times=2)
    assert reports.last["m"] == {1: ready, 2: reports.last["m"][2]}


def test_a_dead_endpoint_reports_nothing_and_does_not_raise(aws_env: None) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_s3_client(f"http://127.0.0.1:{port}", "us-east-1")
    reports, clock = Reports(), FakeClock()
    src = source(client, reports, clock, ("m", "s3://models/m"))
    src.poll_once()
    assert reports.calls == []
    assert src.poll_errors_total == 1


# -- lifecycle -----------------------------------------------------------------------------


def test_set_models_replaces_the_watched_models(s3: Any) -> None:
    put(s3, "a/1/", COMPLETE)
    put(s3, "b/7/", COMPLETE)
    reports, clock = Reports(), FakeClock()
    src = source(s3, reports, clock, ("a", "s3://models/a"))
    poll(src, clock, times=2)
    src.set_models([ModelLocation("b", "s3://models/b")])
    reports.calls.clear()
    poll(src, clock, times=2)
    assert {model for model, _ in reports.calls} == {"b"}
    assert set(reports.last["b"]) == {7}
    with pytest.raises(ValueError, match="twice"):
        src.set_models([ModelLocation("b", "s3://models/b"), ModelLocation("b", "s3://x/b")])


def test_start_polls_in_the_background_until_stopped(s3: Any) -> None:
    put(s3, "m/1/", COMPLETE)
    ready = threading.Event()

    def callback(model: str, versions: Mapping[int, VersionRef]) -> None:
        if versions:
            ready.set()

    src = StoreSource(
        [ModelLocation("m", "s3://models/m")], callback, S3Store(s3), poll_interval_seconds=0.05
    )
    src.start()
    try:
        assert ready.wait(timeout=10), "the version was never reported"
        with pytest.raises(RuntimeError):
            src.start()
    finally:
        src.stop()
        src.stop()  # idempotent
        src.join(timeout=5)
    ready.clear()
    src.poll_once()  # a stopped source reports nothing more
    assert not ready.is_set()


def test_stop_and_join_without_start(s3: Any) -> None:
    src = StoreSource([], Reports(), S3Store(s3))
    src.stop()
    src.join(timeout=1)
