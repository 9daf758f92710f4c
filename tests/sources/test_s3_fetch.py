"""StoreFetcher on S3 (S3Store) against moto's in-process S3: exact copies, or a clean error and no leftovers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws

from loader.base import Code, ServingError, VersionRef
from loader.sources import store_fetch
from loader.sources.base import ModelLocation
from loader.sources.object_store import listing_fingerprint
from loader.sources.s3_client import S3Store, make_s3_client
from loader.sources.store_fetch import StoreFetcher
from loader.sources.store_source import StoreSource

BUCKET = "models"
SECRET = "fake-secret-do-not-log"
COMPLETE = {
    "saved_model.pb": b"graph bytes \x00\x01\x02",
    "variables/variables.index": b"index",
    "variables/variables.data-00000-of-00001": bytes(range(256)) * 64,
    "assets/vocab.txt": b"a\nb\nc\n",
}


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        client = make_s3_client(None, "us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def put(client: Any, prefix: str, files: Mapping[str, bytes]) -> None:
    for relpath, body in files.items():
        client.put_object(Bucket=BUCKET, Key=f"{prefix}{relpath}", Body=body)


def ref_for(client: Any, prefix: str) -> VersionRef:
    """The ref a source would report for the version now at `prefix`."""
    fingerprint = listing_fingerprint(S3Store(client).list_version_objects(BUCKET, prefix))
    return VersionRef(f"s3://{BUCKET}/{prefix}", fingerprint)


def files_under(folder: Path) -> dict[str, bytes]:
    files = (path for path in folder.rglob("*") if path.is_file())
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in files}


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.glob(".tmp-*")) if cache.exists() else []


def count_calls(client: Any) -> list[str]:
    calls: list[str] = []

    def record(model: Any, **kwargs: Any) -> None:
        calls.append(model.name)

    client.meta.events.register("before-call.s3", record)
    return calls


def on_first_download(client: Any, action: Any) -> None:
    """Run `action` once, when the first object download starts (from a transfer thread)."""
    done = threading.Lock()

    def hook(**kwargs: Any) -> None:
        if done.acquire(blocking=False):
            action()

    client.meta.events.register("before-call.s3.GetObject", hook)


def test_fetch_copies_the_reported_version_exactly(s3: Any, cache: Path) -> None:
    put(s3, "prefix/m/00000003/", COMPLETE)
    put(s3, "prefix/m/00000003/", {"variables/": b""})  # a folder marker is not a file
    put(s3, "prefix/m/30/", {"saved_model.pb": b"another version"})
    reported: dict[int, VersionRef] = {}
    source = StoreSource(
        [ModelLocation("m", "s3://models/prefix/m")],
        lambda model, versions: reported.update(versions),
        S3Store(s3),
        settle_seconds=0,
    )
    source.poll_once()
    fetcher = StoreFetcher(S3Store(s3), cache, max_concurrency=3)

    path = Path(fetcher.fetch("m", 3, reported[3]))

    assert path == cache / "m" / f"3-{reported[3].fingerprint}"
    assert files_under(path) == COMPLETE
    assert leftovers(cache) == []


def test_many_files_are_fetched(s3: Any, cache: Path) -> None:
    files = {f"assets/part{i:03d}.bin": bytes([i]) * (i * 100) for i in range(60)} | COMPLETE
    put(s3, "m/1/", files)
    path = Path(StoreFetcher(S3Store(s3), cache).fetch("m", 1, ref_for(s3, "m/1/")))
    assert files_under(path) == files


def test_a_cached_version_is_not_downloaded_again(s3: Any, cache: Path) -> None:
    put(s3, "m/1/", COMPLETE)
    ref = ref_for(s3, "m/1/")
    fetcher = StoreFetcher(S3Store(s3), cache)
    first = fetcher.fetch("m", 1, ref)
    calls = count_calls(s3)
    assert fetcher.fetch("m", 1, ref) == first
    assert calls == []


def test_a_changed_fingerprint_is_refused(s3: Any, cache: Path) -> None:
    put(s3, "m/1/", COMPLETE)
    stale = VersionRef("s3://models/m/1/", "0123456789abcdef")
    with pytest.raises(ServingError) as caught:
        StoreFetcher(S3Store(s3), cache).fetch("m", 1, stale)
    assert caught.value.code is Code.ABORTED
    assert "version 1 of model 'm' changed" in caught.value.message
    assert leftovers(cache) == []
    assert not (cache / "m" / "1-0123456789abcdef").exists()


def test_a_version_changed_during_the_download_is_abandoned(s3: Any, cache: Path) -> None:
    put(s3, "m/1/", COMPLETE)
    ref = ref_for(s3, "m/1/")
    on_first_download(s3, lambda: put(s3, "m/1/", {"saved_model.pb": b"rewritten"}))
    with pytest.raises(ServingError) as caught:
        StoreFetcher(S3Store(s3), cache, max_concurrency=1).fetch("m", 1, ref)
    assert caught.value.code is Code.ABORTED
    assert leftovers(cache) == []
    assert not (cache / "m").exists() or list((cache / "m").iterdir()) == []


def test_a_large_object_replaced_during_its_ranged_download_is_abandoned(
    s3: Any, cache: Path
) -> None:
    shard = "variables/variables.data-00000-of-00001"
    big = COMPLETE | {shard: bytes(range(256)) * (36 * 1024)}  # 9 MiB: ranged parts
    put(s3, "m/1/", big)
    ref = ref_for(s3, "m/1/")
    replaced = threading.Lock()

    def replace_on_first_part(params: dict[str, Any], **kwargs: Any) -> None:
        if "Range" in params and replaced.acquire(blocking=False):
            put(s3, "m/1/", {shard: b"a new upload"})

    s3.meta.events.register("before-parameter-build.s3.GetObject", replace_on_first_part)
    # One request at a time: moto cannot overwrite an object while another thread reads it.
    with pytest.raises(ServingError) as caught:
        StoreFetcher(S3Store(s3), cache, max_concurrency=1).fetch("m", 1, ref)
    assert replaced.locked(), "the download was not ranged"
    assert caught.value.code is Code.ABORTED
    assert leftovers(cache) == []


def test_a_version_deleted_during_the_download_is_abandoned(s3: Any, cache: Path) -> None:
    put(s3, "m/1/", COMPLETE)
    ref = ref_for(s3, "m/1/")

    def delete_version() -> None:
        for relpath in COMPLETE:
            s3.delete_object(Bucket=BUCKET, Key=f"m/1/{relpath}")

    on_first_download(s3, delete_version)
    with pytest.raises(ServingError) as caught:
        StoreFetcher(S3Store(s3), cache, max_concurrency=1).fetch("m", 1, ref)
    assert caught.value.code is Code.NOT_FOUND
    assert "deleted" in caught.value.message and "version 1 of model 'm'" in caught.value.message
    assert leftovers(cache) == []


def test_a_version_deleted_before_the_fetch_is_not_found(s3: Any, cache: Path) -> None:
    with pytest.raises(ServingError) as caught:
        StoreFetcher(S3Store(s3), cache).fetch("m", 4, VersionRef("s3://models/m/4/", "0123456789abcdef"))
    assert caught.value.code is Code.NOT_FOUND
    assert leftovers(cache) == []


def test_a_missing_bucket_is_a_clear_error(s3: Any, cache: Path) -> None:
    with pytest.raises(ServingError) as caught:
        StoreFetcher(S3Store(s3), cache).fetch("m", 4, VersionRef("s3://nowhere/m/4/", "0123456789abcdef"))
    assert caught.value.code is Code.NOT_FOUND
    assert "s3://nowhere/m/4/" in caught.value.message


def test_an_incomplete_version_is_refused(s3: Any, cache: Path) -> None:
    put(s3, "m/1/", {"saved_model.pb": b"g", "variables/variables.index": b"i"})
    with pytest.raises(ServingError) as caught:
        StoreFetcher(S3Store(s3), cache).fetch("m", 1, ref_for(s3, "m/1/"))
    assert caught.value.code is Code.FAILED_PRECONDITION
    assert "not complete" in caught.value.message
    assert leftovers(cache) == []


@pytest.mark.parametrize(
    "relpath", ["../../escape", "assets/../../escape", "/absolute", "assets\\..\\x", "./x"]
)
def test_an_unsafe_key_is_refused(s3: Any, cache: Path, relpath: str) -> None:
    put(s3, "m/1/", COMPLETE)
    put(s3, "m/1/", {relpath: b"evil"})
    with pytest.raises(ServingError) as caught:
        StoreFetcher(S3Store(s3), cache).fetch("m", 1, ref_for(s3, "m/1/"))
    assert repr(f"m/1/{relpath}") in caught.value.message
    assert leftovers(cache) == []
    assert not (cache.parent / "escape").exists()


def test_a_key_that_is_both_file_and_folder_is_refused(s3: Any, cache: Path) -> None:
    put(s3, "m/1/", COMPLETE)
    put(s3, "m/1/", {"assets": b"a file where a folder is"})
    with pytest.raises(ServingError, match="not a safe relative path"):
        StoreFetcher(S3Store(s3), cache).fetch("m", 1, ref_for(s3, "m/1/"))


@pytest.mark.parametrize("model", ["../m", ".tmp-m", "a/b", ""])
def test_an_unsafe_model_name_is_refused(s3: Any, cache: Path, model: str) -> None:
    put(s3, "m/1/", COMPLETE)
    with pytest.raises(ServingError) as caught:
        StoreFetcher(S3Store(s3), cache).fetch(model, 1, ref_for(s3, "m/1/"))
    assert caught.value.code is Code.INVALID_ARGUMENT


def test_an_unwritable_cache_is_a_clear_error(s3: Any, tmp_path: Path) -> None:
    put(s3, "m/1/", COMPLETE)
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    cache = blocker / "cache"  # cannot be made, even by root
    with pytest.raises(ServingError) as caught:
        StoreFetcher(S3Store(s3), cache).fetch("m", 1, ref_for(s3, "m/1/"))
    message = caught.value.message
    assert caught.value.code is Code.FAILED_PRECONDITION
    assert f"cache folder {cache}" in message and "Traceback" not in message
    assert SECRET not in message


def test_release_removes_the_cached_copy(s3: Any, cache: Path) -> None:
    put(s3, "m/1/", COMPLETE)
    ref = ref_for(s3, "m/1/")
    fetcher = StoreFetcher(S3Store(s3), cache)
    path = Path(fetcher.fetch("m", 1, ref))
    fetcher.release("m", 1, ref)
    assert not path.exists()
    fetcher.release("m", 1, ref)  # already gone: fine


def test_cleanup_stale_removes_only_temporary_folders(s3: Any, cache: Path) -> None:
    StoreFetcher(S3Store(s3), cache).cleanup_stale()  # no cache folder yet: nothing to do
    stale = cache / ".tmp-m-1-abc123"  # an older release's name: no owner
    (stale / "variables").mkdir(parents=True)
    (stale / "variables" / "variables.index").write_bytes(b"half")
    kept = cache / "m" / "1-0123456789abcdef"
    kept.mkdir(parents=True)
    StoreFetcher(S3Store(s3), cache).cleanup_stale()
    assert not stale.exists()
    assert kept.is_dir()


def test_cleanup_stale_leaves_the_fetches_of_live_processes(s3: Any, cache: Path) -> None:
    # Two replicas of a Ray cluster on one machine share the cache folder: one starting
    # took the other's download from under it ("No such file or directory", the version
    # ERROR, the rollout stuck). Only a gone process's folder of this host is stale.
    s3.put_object(Bucket=BUCKET, Key="models/m/1/saved_model.pb", Body=b"pb")
    ref = ref_for(s3, "models/m/1/")
    fetcher = StoreFetcher(S3Store(s3), cache)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    host, pid = store_fetch._HOST, ended.stdout.strip()
    other_host = "0" * 8 if host != "0" * 8 else "1" * 8
    live = cache / f".tmp-{os.getpid()}-{host}-m-1-abc"  # a fetch running now
    gone = cache / f".tmp-{pid}-{host}-m-1-def"  # its process ended: stale
    elsewhere = cache / f".tmp-{pid}-{other_host}-m-1-ghi"  # another host's: not ours to judge
    for folder in (live, gone, elsewhere):
        folder.mkdir(parents=True)
    StoreFetcher(S3Store(s3), cache).cleanup_stale()  # another process starting
    assert live.is_dir() and elsewhere.is_dir() and not gone.exists()
    assert Path(fetcher.fetch("m", 1, ref)).is_dir()  # its own folder moved into place
    assert sorted(p.name for p in cache.glob(".tmp-*")) == sorted([live.name, elsewhere.name])
