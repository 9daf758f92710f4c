"""Google Cloud Storage as an object store, through `google-cloud-storage`: the one module
that imports it.

Credentials are Google's Application Default Credentials; when STORAGE_EMULATOR_HOST is
set, the library talks to that emulator anonymously (its own rule, kept as it is). Objects
are listed with their generation, which changes on every rewrite, so the listing's
fingerprint does; reads and downloads ask for that generation (if_generation_match), so a
rewritten object fails instead of mixing two uploads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from google.api_core import exceptions as api_errors
from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
from google.cloud.storage.retry import DEFAULT_RETRY

from loader.sources.object_store import (
    ObjectChanged,
    ObjectGone,
    RequestCounter,
    StoreError,
    VersionObject,
    download_each,
    version_folders,
    version_object,
)

# As S3's: a dead endpoint costs a poll seconds, not the library's default two minutes of
# retries (the retry's timeout is when no new attempt starts, not a limit on a download).
_TIMEOUT = (3.0, 10.0)  # connect, read
_RETRY = DEFAULT_RETRY.with_timeout(5.0)


def make_gcs_store(project: str | None, endpoint_url: str | None) -> GcsStore:
    """A store on a `storage.Client` with Application Default Credentials (or the emulator
    at STORAGE_EMULATOR_HOST); `endpoint_url` replaces Google's endpoint."""
    # The library otherwise fetches each bucket's metadata on background threads of its
    # own, only to label trace spans: a request per bucket that no poll accounts for, and
    # threads nothing owns (still retrying through an outage). Its own switch turns it off.
    os.environ.setdefault("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", "true")
    options = {"api_endpoint": endpoint_url} if endpoint_url else None
    try:
        return GcsStore(storage.Client(project=project, client_options=options))
    except DefaultCredentialsError as error:
        raise StoreError(
            f"gs:// paths need Google Application Default Credentials, and none were found: "
            f"{error}"
        ) from None


class GcsStore:
    """Google Cloud Storage as an `ObjectStore`."""

    scheme = "gs"

    def __init__(self, client: Any) -> None:
        self.client = client

    def _pages(self, counter: RequestCounter | None, bucket: str, **kwargs: str) -> Iterator[Any]:
        blobs = self.client.list_blobs(bucket, timeout=_TIMEOUT, retry=_RETRY, **kwargs)
        for page in blobs.pages:
            if counter is not None:
                counter.add()
            yield page

    def list_version_folders(
        self, bucket: str, model_prefix: str, counter: RequestCounter | None = None
    ) -> dict[int, str]:
        """The version prefixes under `model_prefix`, from delimited object listings."""
        with _translated():
            prefixes = [
                prefix
                for page in self._pages(counter, bucket, prefix=model_prefix, delimiter="/")
                for prefix in sorted(page.prefixes)
            ]
        return version_folders(model_prefix, prefixes)

    def list_version_objects(
        self, bucket: str, version_prefix: str, counter: RequestCounter | None = None
    ) -> list[VersionObject]:
        """Every object under `version_prefix` (recursively), with its generation."""
        objects = []
        with _translated():
            for page in self._pages(counter, bucket, prefix=version_prefix):
                for blob in page:
                    obj = version_object(
                        version_prefix, blob.name, blob.size or 0, str(blob.generation)
                    )
                    if obj is not None:
                        objects.append(obj)
        return objects

    def read_range(self, bucket: str, obj: VersionObject, first: int, last: int) -> bytes:
        """One ranged read of the listed generation."""
        with _translated():
            data: bytes = self.client.bucket(bucket).blob(obj.key).download_as_bytes(
                start=first, end=last, if_generation_match=int(obj.tag),
                timeout=_TIMEOUT, retry=_RETRY,
            )
        return data

    def download(
        self,
        bucket: str,
        objects: Sequence[tuple[VersionObject, Path]],
        on_bytes: Callable[[int], None] | None,
        max_concurrency: int,
    ) -> None:
        """One download per object, `max_concurrency` at a time; the progress advances by
        whole objects (the library reports no chunks)."""
        handle = self.client.bucket(bucket)

        def download_one(obj: VersionObject, path: Path) -> None:
            with _translated():
                handle.blob(obj.key).download_to_filename(
                    str(path), if_generation_match=int(obj.tag), timeout=_TIMEOUT, retry=_RETRY
                )
            if on_bytes is not None:
                on_bytes(obj.size)

        download_each(objects, download_one, max_concurrency)


@contextmanager
def _translated() -> Iterator[None]:
    """The library's failures as `StoreError`s."""
    try:
        yield
    except api_errors.NotFound as error:
        raise ObjectGone(error.message) from None
    except api_errors.PreconditionFailed as error:
        raise ObjectChanged(error.message) from None
    except DataCorruption as error:  # the bytes did not match the object's hash: rewritten
        raise ObjectChanged(str(error)) from None
    except (api_errors.GoogleAPIError, GoogleAuthError, InvalidResponse,
            requests.RequestException) as error:
        raise StoreError(str(error) or type(error).__name__) from None
