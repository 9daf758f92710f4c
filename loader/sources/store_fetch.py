"""A fetcher that copies a version from an object store (S3, GCS, Azure Blob Storage) into a
local cache folder before it is loaded.

A version is downloaded into a fresh `.tmp-*` folder, checked against the fingerprint the
source reported, and only then renamed into `cache_dir/<model>/<version>-<fingerprint>`,
so a folder with that name is always a complete copy of exactly that listing.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Protocol

from loader.base import (
    Code,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServingError,
    Unavailable,
    VersionRef,
)
from loader.sources import versions
from loader.sources.object_store import (
    ObjectChanged,
    ObjectGone,
    ObjectStore,
    StoreError,
    VersionObject,
    listing_fingerprint,
    parse_store_uri,
)

log = logging.getLogger(__name__)

_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_TMP_PREFIX = ".tmp-"
# A fetch's temporary folder names its process and host (`.tmp-<pid>-<host>-...`): several
# processes may share one cache folder (a Ray cluster's replicas on one machine), and one
# starting must not take the folder of a fetch still running in another.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_OWNER = re.compile(r"\.tmp-([0-9]+)-([0-9a-f]{8})-")


class FetchProgress(Protocol):
    """Told how many bytes a fetch will download, then of every chunk that arrives."""

    def start(self, what: str, total_bytes: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...


class StoreFetcher:
    """Downloads versions from an object store into `cache_dir` with parallel transfers,
    and removes them."""

    def __init__(
        self,
        store: ObjectStore,
        cache_dir: str | Path,
        *,
        max_concurrency: int = 8,
        progress: FetchProgress | None = None,
    ) -> None:
        self._store = store
        self._progress = progress
        self._cache_dir = Path(cache_dir)
        self._concurrency = max_concurrency

    def fetch(self, model: str, version: int, ref: VersionRef) -> str:
        """The local folder holding `ref`'s exact listing, downloading it if needed."""
        final = self._final_folder(model, version, ref)
        if final.is_dir():
            return str(final)
        bucket, prefix = _version_location(ref)
        what = f"version {version} of model {model!r}"
        objects = self._listing(bucket, prefix, ref, what)
        relpaths = _checked_relpaths(objects, what)
        missing = versions.incompleteness(relpaths)
        if missing is not None:
            raise FailedPrecondition(f"{what} at {ref.uri} is not complete: {missing}")
        try:
            temp = Path(
                tempfile.mkdtemp(
                    prefix=f"{_TMP_PREFIX}{os.getpid()}-{_HOST}-{model}-{version}-",
                    dir=self._mkdirs(),
                )
            )
        except OSError as error:
            raise self._cache_error(what, error) from None
        started = time.monotonic()
        try:
            self._download(bucket, objects, relpaths, temp, what, ref.uri)
            # A second listing catches objects added, removed or replaced meanwhile.
            self._listing(bucket, prefix, ref, what)
            path = self._move_into_place(temp, final, what)
            log.info(
                "Fetched %s from %s: %d files, %d bytes in %.1fs",
                what, ref.uri, len(objects), sum(o.size for o in objects),
                time.monotonic() - started,
            )
            return str(path)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise

    def release(self, model: str, version: int, ref: VersionRef) -> None:
        """Remove the cached copy of `ref`, if there is one."""
        folder = self._final_folder(model, version, ref)
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            pass
        except OSError as error:
            log.warning("Could not remove the cached copy %s: %s", folder, error.strerror or error)

    def cleanup_stale(self) -> None:
        """Remove the temporary folders a crashed fetch left in the cache folder (those of
        a process of this host that is gone; another's fetch may still be writing)."""
        if not self._cache_dir.is_dir():
            return
        for temp in self._cache_dir.glob(f"{_TMP_PREFIX}*"):
            if not _abandoned(temp.name):
                continue
            shutil.rmtree(temp, ignore_errors=True)
            if temp.exists():
                log.warning("Could not remove the stale download folder %s", temp)

    def _final_folder(self, model: str, version: int, ref: VersionRef) -> Path:
        if not _SAFE_COMPONENT.fullmatch(model):
            raise InvalidArgument(
                f"model name {model!r} cannot name a cache folder: use letters, digits, "
                "'_', '.' and '-', starting with a letter or digit"
            )
        if not _SAFE_COMPONENT.fullmatch(ref.fingerprint) or version < 0:
            raise ValueError(f"bad version {version} or fingerprint {ref.fingerprint!r}")
        return self._cache_dir / model / f"{version}-{ref.fingerprint}"

    def _mkdirs(self) -> Path:
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        return self._cache_dir

    def _listing(
        self, bucket: str, prefix: str, ref: VersionRef, what: str
    ) -> list[VersionObject]:
        try:
            objects = self._store.list_version_objects(bucket, prefix)
        except StoreError as error:
            raise _storage_error(error, what, ref.uri) from None
        if not objects:
            raise NotFound(f"{what} is no longer at {ref.uri}; it was deleted")
        if listing_fingerprint(objects) != ref.fingerprint:
            raise _changed(what, ref.uri)
        return objects

    def _download(
        self,
        bucket: str,
        objects: Sequence[VersionObject],
        relpaths: Sequence[str],
        temp: Path,
        what: str,
        uri: str,
    ) -> None:
        on_bytes = None
        if self._progress is not None:
            self._progress.start(what, sum(o.size for o in objects))
            on_bytes = self._progress.advance
        try:
            for relpath in relpaths:
                (temp / relpath).parent.mkdir(parents=True, exist_ok=True)
            self._store.download(
                bucket, [(obj, temp / relpath) for obj, relpath in zip(objects, relpaths)],
                on_bytes, self._concurrency,
            )
        except StoreError as error:
            raise _storage_error(error, what, uri) from None
        except OSError as error:
            raise self._cache_error(what, error) from None

    def _move_into_place(self, temp: Path, final: Path, what: str) -> Path:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(temp, final)
        except OSError as error:
            # Another fetch of the same listing got there first: its copy is as good.
            if final.is_dir():
                shutil.rmtree(temp, ignore_errors=True)
                return final
            raise self._cache_error(what, error) from None
        return final

    def _cache_error(self, what: str, error: OSError) -> ServingError:
        reason = error.strerror or str(error)
        message = f"could not store {what} in the cache folder {self._cache_dir}: {reason}"
        if error.errno in _DISK_FULL:
            return ResourceExhausted(message)
        return FailedPrecondition(message)


def _abandoned(name: str) -> bool:
    """Whether the fetch that made the temporary folder `name` is over: its process, of
    this host, is gone (a name without an owner is an older release's, long gone too)."""
    owner = _OWNER.match(name)
    if owner is None:
        return True
    if owner.group(2) != _HOST:
        return False
    try:
        os.kill(int(owner.group(1)), 0)  # signal 0: only whether it exists
    except (ProcessLookupError, OverflowError):  # gone, or no pid a process can have
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _version_location(ref: VersionRef) -> tuple[str, str]:
    _, bucket, prefix = parse_store_uri(ref.uri)
    if not prefix:
        raise ValueError(f"{ref.uri!r} is a whole bucket, not a version folder")
    return bucket, prefix


def _checked_relpaths(objects: Sequence[VersionObject], what: str) -> list[str]:
    """The objects' relative paths, refusing any that could land outside the version folder."""
    relpaths = [obj.relpath for obj in objects]
    folders = {str(parent) for path in relpaths for parent in PurePosixPath(path).parents}
    for obj, relpath in zip(objects, relpaths):
        parts = relpath.split("/")
        unsafe = (
            "\\" in relpath
            or "\0" in relpath
            or any(part in ("", ".", "..") for part in parts)
            or relpath in folders  # a file where another key needs a folder
        )
        if unsafe:
            raise FailedPrecondition(
                f"{what} holds the object {obj.key!r}, whose name is not a safe relative "
                "path, so the version is not fetched"
            )
    return relpaths


def _storage_error(error: StoreError, what: str, uri: str) -> ServingError:
    if isinstance(error, ObjectGone):
        return NotFound(f"{what} was deleted from {uri} while it was being fetched")
    if isinstance(error, ObjectChanged):
        return _changed(what, uri)
    return Unavailable(f"could not fetch {what} from {uri}: {error}")


def _changed(what: str, uri: str) -> ServingError:
    return ServingError(
        f"{what} changed while it was being fetched from {uri}; it will be fetched again",
        Code.ABORTED,
    )
