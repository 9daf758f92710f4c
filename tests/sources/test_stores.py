"""StoreSource and StoreFetcher on Google Cloud Storage and Azure Blob Storage, against their
emulators (tests/object_stores.py): the S3 source's guarantees, store by store (S3's own are
in test_s3.py and test_s3_fetch.py, against moto)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from loader.app.parts import make_store
from loader.base import Code, ServingError, VersionRef
from loader.config.schema import ConfigError, StorageConfig
from loader.sources.base import ModelLocation
from loader.sources.object_store import ObjectStore, listing_fingerprint
from loader.sources.store_fetch import StoreFetcher
from loader.sources.store_source import StoreSource
from tests.daemon_process import free_port, wait_until
from tests.fakes import FakeClock, Reports
from tests.object_stores import Bucket, azurite, environ, gcs_emulator
from tests.savedmodels import upload_order, write_sharded_model

GRAPH, INDEX, SHARD = "saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001"
COMPLETE = {GRAPH: b"graph", INDEX: b"index", SHARD: b"data", "assets/vocab.txt": b"a\nb\n"}


@pytest.fixture(scope="module", params=["gs", "az"])
def emulator(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict[str, str]]]:
    if request.param == "gs":
        with gcs_emulator() as host:
            yield "gs", {"STORAGE_EMULATOR_HOST": host}
    else:
        with azurite(tmp_path_factory.mktemp("azurite")) as connection:
            yield "az", {"AZURE_STORAGE_CONNECTION_STRING": connection}


@pytest.fixture
def bucket(emulator: tuple[str, dict[str, str]]) -> Iterator[Bucket]:
    scheme, env = emulator
    made = Bucket(scheme, "models", env)
    made.create()
    yield made
    made.remove()


def store_for(scheme: str, env: Mapping[str, str]) -> ObjectStore:
    """The daemon's own store for `scheme`, made as it makes it (from the environment)."""
    with environ(env):
        return make_store(scheme, StorageConfig())


@pytest.fixture
def store(bucket: Bucket) -> ObjectStore:
    return store_for(bucket.scheme, bucket.env)


def dead_store(scheme: str) -> ObjectStore:
    """A store whose endpoint is a port nothing listens on."""
    port = free_port()
    if scheme == "gs":
        return store_for(scheme, {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"})
    from tests.object_stores import azurite_connection_string

    return store_for(scheme, {"AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string(port)})


class Switchable:
    """A store that can be pointed at another one, as an outage does to a real one."""

    def __init__(self, store: ObjectStore) -> None:
        self.current = store
        self.scheme = store.scheme

    def __getattr__(self, name: str) -> Any:
        return getattr(self.current, name)


def source(store: Any, bucket: Bucket, reports: Reports, clock: FakeClock, **kwargs: Any) -> StoreSource:
    return StoreSource([ModelLocation("m", bucket.uri("m"))], reports, store, clock=clock, **kwargs)


def poll(src: StoreSource, clock: FakeClock, times: int = 1) -> None:
    for _ in range(times):
        src.poll_once()
        clock.now += 1.0


# -- listings ------------------------------------------------------------------------------


def test_versions_are_listed_with_a_tag_that_changes_with_the_content(
    bucket: Bucket, store: ObjectStore
) -> None:
    bucket.put("m/1/", COMPLETE)
    bucket.put("m/10/", {GRAPH: b"g"})
    bucket.put("m/x/", {GRAPH: b"g"})
    bucket.put("m/.tmp-3/", {GRAPH: b"g"})
    assert store.list_version_folders("models", "m/") == {1: "m/1/", 10: "m/10/"}
    objects = store.list_version_objects("models", "m/1/")
    assert sorted(o.relpath for o in objects) == sorted(COMPLETE)
    assert all(o.tag and not o.tag.startswith('"') for o in objects)
    assert {o.relpath: o.size for o in objects} == {k: len(v) for k, v in COMPLETE.items()}
    before = listing_fingerprint(objects)
    bucket.put("m/1/", {GRAPH: b"graph"})  # the same bytes, written again: a new generation/ETag
    assert listing_fingerprint(store.list_version_objects("models", "m/1/")) != before
    graph = next(o for o in store.list_version_objects("models", "m/1/") if o.relpath == GRAPH)
    assert store.read_range("models", graph, 1, 3) == b"rap"  # bytes 1 to 3


def test_a_partial_upload_is_reported_only_once_complete(bucket: Bucket, store: ObjectStore) -> None:
    bucket.put("m/1/", {GRAPH: b"g", SHARD: b"d"})
    reports, clock = Reports(), FakeClock()
    src = source(store, bucket, reports, clock)
    poll(src, clock, times=4)
    assert reports.last["m"] == {}
    bucket.put("m/1/", {INDEX: b"i"})
    poll(src, clock)
    assert reports.last["m"] == {}  # complete, but settling: one more matching listing
    poll(src, clock)
    (ref,) = reports.last["m"].values()
    assert ref.uri == bucket.uri("m/1/")
    assert ref.fingerprint == listing_fingerprint(store.list_version_objects("models", "m/1/"))


@pytest.fixture(scope="module")
def sharded_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sharded_model(tmp_path_factory.mktemp("sharded") / "model", 2.0, shards=2)


def test_an_upload_that_starts_with_the_graph_waits_for_its_last_shard(
    bucket: Bucket, store: ObjectStore, sharded_model: Path
) -> None:
    # The graph alone looks complete unless it is read (ranged reads) and found to restore
    # variables.
    model = sharded_model
    reports, clock = Reports(), FakeClock()
    src = source(store, bucket, reports, clock)
    order = upload_order(model)
    for relpath in order[:-1]:
        bucket.put("m/1/", {relpath: (model / relpath).read_bytes()})
        poll(src, clock, times=2)
        assert reports.last["m"] == {}, f"reported with {relpath} the last object there"
    bucket.put("m/1/", {order[-1]: (model / order[-1]).read_bytes()})
    poll(src, clock, times=2)
    assert set(reports.last["m"]) == {1}


def test_a_steady_poll_costs_one_listing_per_model(bucket: Bucket, store: ObjectStore) -> None:
    bucket.put("m/1/", COMPLETE)
    bucket.put("m/2/", COMPLETE)
    reports, clock = Reports(), FakeClock()
    src = source(store, bucket, reports, clock, reverify_every=1000)
    poll(src, clock, times=2)
    assert set(reports.last["m"]) == {1, 2}
    assert src.requests_last_poll == 3  # the folders, then each version settling
    poll(src, clock)
    assert src.requests_last_poll == 1  # settled: the folders only


def test_an_empty_listing_reports_no_versions(bucket: Bucket, store: ObjectStore) -> None:
    # The manager keeps serving the last version through an empty report (e2e tests).
    bucket.put("m/1/", COMPLETE)
    reports, clock = Reports(), FakeClock()
    src = source(store, bucket, reports, clock)
    poll(src, clock, times=2)
    assert set(reports.last["m"]) == {1}
    bucket.delete("m/")
    poll(src, clock)
    assert reports.last["m"] == {}


# -- failures ------------------------------------------------------------------------------


def test_an_outage_reports_nothing_then_recovers(bucket: Bucket, store: ObjectStore) -> None:
    bucket.put("m/1/", COMPLETE)
    reports, clock = Reports(), FakeClock()
    switch = Switchable(store)
    polls: list[bool] = []
    src = source(switch, bucket, reports, clock, reverify_every=1,
                 on_poll=lambda model, seconds, ok: polls.append(ok))
    poll(src, clock, times=2)
    ready = reports.last["m"]
    assert set(ready) == {1}
    calls = len(reports.calls)
    switch.current = dead_store(bucket.scheme)
    poll(src, clock)  # must not raise
    assert len(reports.calls) == calls
    assert src.poll_errors_total == 1 and polls[-1] is False
    switch.current = store
    poll(src, clock)
    assert reports.last["m"] == ready


def test_a_missing_bucket_reports_nothing(bucket: Bucket, store: ObjectStore) -> None:
    reports, clock = Reports(), FakeClock()
    src = StoreSource([ModelLocation("m", f"{bucket.scheme}://nowhere/m")], reports, store,
                      clock=clock)
    poll(src, clock)
    assert reports.calls == [] and src.poll_errors_total == 1


# -- fetching ------------------------------------------------------------------------------


def reported(store: ObjectStore, bucket: Bucket) -> VersionRef:
    fingerprint = listing_fingerprint(store.list_version_objects("models", "m/1/"))
    return VersionRef(bucket.uri("m/1/"), fingerprint)


class Progress:
    """Counts the bytes of a fetch; `on_start` runs once the download is about to begin."""

    def __init__(self, on_start: Any = None) -> None:
        self.total = self.done = 0
        self._on_start = on_start

    def start(self, what: str, total_bytes: int) -> None:
        self.total = total_bytes
        if self._on_start is not None:
            self._on_start()

    def advance(self, nbytes: int) -> None:
        self.done += nbytes


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_fetch_copies_the_version_exactly(bucket: Bucket, store: ObjectStore, tmp_path: Path) -> None:
    files = COMPLETE | {f"assets/part{i}.bin": bytes([i]) * 1000 for i in range(20)}
    bucket.put("m/1/", files)
    progress = Progress()
    ref = reported(store, bucket)
    path = Path(StoreFetcher(store, tmp_path, progress=progress).fetch("m", 1, ref))
    assert path == tmp_path / "m" / f"1-{ref.fingerprint}"
    assert files_under(path) == files
    assert progress.total == progress.done == sum(len(v) for v in files.values())


# A conditional read of a deleted blob may answer 412 rather than 404 (Azurite does): then
# the fetch is retried as "changed", and the next listing finds the version gone.
@pytest.mark.parametrize(
    ("meanwhile", "codes"),
    [("rewrite", {Code.ABORTED}), ("delete", {Code.NOT_FOUND, Code.ABORTED}),
     ("before", {Code.ABORTED})],
)
def test_a_version_changed_or_deleted_meanwhile_is_abandoned(
    bucket: Bucket, store: ObjectStore, tmp_path: Path, meanwhile: str, codes: set[Code]
) -> None:
    bucket.put("m/1/", COMPLETE)
    ref = reported(store, bucket)
    actions = {
        "rewrite": lambda: bucket.put("m/1/", {SHARD: b"a new upload"}),
        "delete": lambda: bucket.delete("m/1/"),
        "before": None,
    }
    if meanwhile == "before":
        bucket.put("m/1/", {SHARD: b"changed before the fetch"})
    fetcher = StoreFetcher(store, tmp_path, max_concurrency=1, progress=Progress(actions[meanwhile]))
    with pytest.raises(ServingError) as caught:
        fetcher.fetch("m", 1, ref)
    assert caught.value.code in codes
    assert bucket.uri("m/1/") in caught.value.message
    assert sorted(p.name for p in tmp_path.glob(".tmp-*")) == []


def test_azure_without_an_account_is_one_clear_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="az:// paths need a storage account"):
        make_store("az", StorageConfig())


def test_the_clusters_watcher_takes_a_store_path_as_the_daemon_does(
    bucket: Bucket, model_builder: Any
) -> None:
    """`modelwatch ray`'s watcher builds its sources as the daemon does: a gs:// or az://
    base path is listed, and its complete version becomes the rollout's target."""
    from loader.cluster.rollout import Bounds
    from loader.cluster.watcher import Watcher
    from loader.config.schema import parse_config

    bucket.upload(model_builder.built(2.0), "w/1")
    config = parse_config({"models": [{"name": "w", "base_path": bucket.uri("w")}],
                           "watch": {"poll_interval_seconds": 0.2}})
    with environ(bucket.env):  # the store's client is made, and reads its settings, here
        watcher = Watcher(config, Bounds(replica_timeout_seconds=0.1))
    watcher.start()
    try:
        wait_until(lambda: watcher.rollouts().get("w", {}).get("target") == [1], 60,
                   "the watcher to list version 1 in the store")
    finally:
        watcher.stop()
        watcher.join(30)
