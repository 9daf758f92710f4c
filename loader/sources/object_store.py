"""What the source and the fetcher need of an object store (S3, Google Cloud Storage, Azure
Blob Storage), so the rules on top (settling, completeness, cache, outages) are written once.

A store is a small adapter over its provider's client library, in a module of its own
(`s3_client`, `gcs_client`, `azure_client`): it lists a model's version folders and a
version's objects, reads a byte range, and downloads objects. Each object is listed with a
content tag (S3 and Azure ETags, GCS generations) that changes whenever the object is
rewritten, so the listing's fingerprint changes too.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from loader.sources import versions

# The URI schemes of the stores, as TF Serving (s3://, gs://) and fsspec (az://) spell them.
SCHEMES = ("s3", "gs", "az")

# Lenient on purpose (legacy S3 buckets may hold capitals and underscores); stores reject
# the rest with their own words.
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{2,254}")


class StoreError(Exception):
    """Storage, the network or credentials failed (not a bug of ours); says why in words."""


class ObjectGone(StoreError):
    """What was listed is no longer there (an object, its bucket or container, deleted)."""


class ObjectChanged(StoreError):
    """An object was rewritten since it was listed (its content tag no longer matches)."""


@dataclass(frozen=True)
class VersionObject:
    """One object of a version, with its key relative to the version prefix.

    `tag` identifies the content: the ETag without its quotes (S3, Azure), the generation
    (GCS).
    """

    key: str
    relpath: str
    size: int
    tag: str


class RequestCounter:
    """Counts store API calls (one per listing page or read), for the per-poll metrics."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()  # listings of several models run at once

    def add(self) -> None:
        with self._lock:
            self.count += 1


class ObjectStore(Protocol):
    """One store's listings, reads and downloads.

    A method that fails because of storage, network or credentials raises `StoreError`
    (`ObjectGone` or `ObjectChanged` when that is what happened); anything else is a bug.
    """

    scheme: str

    def list_version_folders(
        self, bucket: str, model_prefix: str, counter: RequestCounter | None = None
    ) -> dict[int, str]:
        """The version prefixes directly under `model_prefix` ("a/m/1/"), by version
        number (see `version_folders`)."""

    def list_version_objects(
        self, bucket: str, version_prefix: str, counter: RequestCounter | None = None
    ) -> list[VersionObject]:
        """Every object under `version_prefix` (recursively), except folder markers."""

    def read_range(self, bucket: str, obj: VersionObject, first: int, last: int) -> bytes:
        """Bytes `first` to `last` (inclusive, within the object) of exactly the listed
        content, in one request."""

    def download(
        self,
        bucket: str,
        objects: Sequence[tuple[VersionObject, Path]],
        on_bytes: Callable[[int], None] | None,
        max_concurrency: int,
    ) -> None:
        """Download each object to its path (folders exist), several at once, telling
        `on_bytes` of every chunk that arrives."""


def parse_store_uri(uri: str) -> tuple[str, str, str]:
    """Split `gs://bucket/some/prefix` into ("gs", "bucket", "some/prefix/").

    The prefix ends with "/" unless it is empty (the whole bucket or container). Raises
    ValueError for anything that is not a store URI (`SCHEMES`) with a bucket name.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError(
            f"{uri!r} is not a storage URI: it should look like s3://bucket/prefix, "
            "gs://bucket/prefix or az://container/prefix"
        )
    bucket, _, key = rest.partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(f"{uri!r} does not name a valid bucket after {scheme}://")
    key = key.strip("/")
    if "//" in key:
        raise ValueError(f"{uri!r} has an empty path segment ('//')")
    return scheme, bucket, f"{key}/" if key else ""


def store_scheme(path: str) -> str | None:
    """The store scheme of `path` ("s3", "gs", "az"), or None for a local path."""
    scheme, sep, _ = path.partition("://")
    return scheme if sep and scheme in SCHEMES else None


def version_folders(model_prefix: str, prefixes: Iterable[str]) -> dict[int, str]:
    """The version folders among the child `prefixes` of `model_prefix`, in listing order.

    Children whose name is not a version (hidden, temporary, non-numeric) are left out.
    When two names mean the same number ("1/" and "01/"), the first in the store's
    (lexical) order wins, so the choice is stable from one poll to the next.
    """
    found: dict[int, str] = {}
    for prefix in prefixes:
        version = versions.parse_version(prefix[len(model_prefix) :].rstrip("/"))
        if version is not None and version not in found:
            found[version] = prefix
    return found


def version_object(version_prefix: str, key: str, size: int, tag: str) -> VersionObject | None:
    """The listed object `key` as a VersionObject, or None for a folder marker."""
    if key.endswith("/") or not key.startswith(version_prefix):
        return None
    return VersionObject(key, key[len(version_prefix) :], size, tag)


def listing_fingerprint(objects: Iterable[VersionObject]) -> str:
    """The fingerprint of a version's listing; the source and the fetcher must agree."""
    return versions.fingerprint((o.relpath, o.size, o.tag) for o in objects)


def download_each(
    objects: Sequence[tuple[VersionObject, Path]],
    download_one: Callable[[VersionObject, Path], None],
    max_concurrency: int,
) -> None:
    """Run `download_one` for every object, `max_concurrency` at a time; the first error
    raises once the downloads already started have finished."""
    pool = ThreadPoolExecutor(max(1, min(max_concurrency, len(objects))), "store-fetch")
    try:
        futures = [pool.submit(download_one, obj, path) for obj, path in objects]
        for future in futures:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
