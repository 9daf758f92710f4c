"""S3 as an object store: boto3 clients with modelwatch's timeouts, the two listings the
source and the fetcher both make (a model's version prefixes, a version's objects), ranged
reads, and parallel downloads with s3transfer. The one module that imports boto3.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.exceptions import RetriesExceededError, S3DownloadFailedError
from s3transfer.futures import TransferFuture
from s3transfer.manager import TransferConfig, TransferManager
from s3transfer.subscribers import BaseSubscriber

from loader.sources.object_store import (
    ObjectChanged,
    ObjectGone,
    RequestCounter,
    StoreError,
    VersionObject,
    version_folders,
    version_object,
)

# Generous for one ListObjectsV2 page, short enough that a dead endpoint costs a poll
# seconds (times botocore's 3 attempts), not minutes.
_CONNECT_TIMEOUT_SECONDS = 3.0
_READ_TIMEOUT_SECONDS = 10.0
_MAX_POOL_CONNECTIONS = 32

_GONE = {"NoSuchKey", "NoSuchBucket", "404"}
_CHANGED = {"PreconditionFailed", "412"}


def make_s3_client(endpoint_url: str | None, region: str | None) -> Any:
    """A boto3 S3 client using the standard AWS credential chain and short timeouts."""
    config = Config(
        retries={"mode": "standard", "max_attempts": 3},
        # One client serves the source and every fetch (each with parallel transfers).
        max_pool_connections=_MAX_POOL_CONNECTIONS,
        connect_timeout=_CONNECT_TIMEOUT_SECONDS,
        read_timeout=_READ_TIMEOUT_SECONDS,
    )
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def make_sqs_client(endpoint_url: str | None, region: str | None) -> Any:
    """A boto3 SQS client (for S3 event notifications), on the standard credential chain."""
    return boto3.client("sqs", endpoint_url=endpoint_url, region_name=region)


class S3Store:
    """S3 (or an S3-compatible service) as an `ObjectStore`, through one boto3 client."""

    scheme = "s3"

    def __init__(self, client: Any) -> None:
        self.client = client

    def _pages(self, counter: RequestCounter | None, **kwargs: str) -> Iterator[Any]:
        with _translated():
            for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
                if counter is not None:
                    counter.add()
                yield page

    def list_version_folders(
        self, bucket: str, model_prefix: str, counter: RequestCounter | None = None
    ) -> dict[int, str]:
        """The version prefixes under `model_prefix`, from delimited ListObjectsV2 pages."""
        pages = self._pages(counter, Bucket=bucket, Prefix=model_prefix, Delimiter="/")
        return version_folders(
            model_prefix, (c["Prefix"] for page in pages for c in page.get("CommonPrefixes", []))
        )

    def list_version_objects(
        self, bucket: str, version_prefix: str, counter: RequestCounter | None = None
    ) -> list[VersionObject]:
        """Every object under `version_prefix` (recursively), except folder markers."""
        objects = []
        for page in self._pages(counter, Bucket=bucket, Prefix=version_prefix):
            for item in page.get("Contents", []):
                etag = str(item.get("ETag", "")).strip('"')
                obj = version_object(version_prefix, item["Key"], item["Size"], etag)
                if obj is not None:
                    objects.append(obj)
        return objects

    def read_range(self, bucket: str, obj: VersionObject, first: int, last: int) -> bytes:
        """One ranged GetObject of that very object: If-Match its listed ETag, so a
        replaced object fails instead of mixing."""
        with _translated():
            response = self.client.get_object(
                Bucket=bucket, Key=obj.key, Range=f"bytes={first}-{last}", IfMatch=f'"{obj.tag}"'
            )
            body: bytes = response["Body"].read()
        return body

    def download(
        self,
        bucket: str,
        objects: Sequence[tuple[VersionObject, Path]],
        on_bytes: Callable[[int], None] | None,
        max_concurrency: int,
    ) -> None:
        """Parallel transfers with s3transfer (large objects in ranged parts)."""
        extra: list[BaseSubscriber] = [] if on_bytes is None else [_Progress(on_bytes)]
        config = TransferConfig(max_request_concurrency=max_concurrency)
        with _translated(), TransferManager(self.client, config) as transfers:
            futures = [
                transfers.download(
                    bucket, obj.key, str(path), subscribers=[_ListedObject(obj), *extra]
                )
                for obj, path in objects
            ]
            for future in futures:
                future.result()


@contextmanager
def _translated() -> Iterator[None]:
    """botocore's and s3transfer's failures as `StoreError`s."""
    try:
        yield
    except RetriesExceededError as error:
        raise _store_error(error.last_exception) from None
    except S3DownloadFailedError:
        # s3transfer's word for "If-Match failed": the object was replaced meanwhile.
        raise ObjectChanged("an object was replaced while it was being fetched") from None
    except (BotoCoreError, ClientError) as error:
        raise _store_error(error) from None


def _store_error(error: Exception) -> StoreError:
    code = error.response.get("Error", {}).get("Code") if isinstance(error, ClientError) else None
    if code in _GONE:
        return ObjectGone(str(error))
    if code in _CHANGED:
        return ObjectChanged(str(error))
    return StoreError(str(error))


class _ListedObject(BaseSubscriber):
    """Hands s3transfer the size and ETag we listed, so it skips a HeadObject per object.

    With the ETag, the ranged downloads of a large object send If-Match, so its parts
    cannot come from two different uploads; the listing after the download catches the
    small objects that were replaced.
    """

    def __init__(self, obj: VersionObject) -> None:
        self._obj = obj

    def on_queued(self, future: TransferFuture, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self._obj.size)
        future.meta.provide_object_etag(f'"{self._obj.tag}"')


class _Progress(BaseSubscriber):
    def __init__(self, on_bytes: Callable[[int], None]) -> None:
        self._on_bytes = on_bytes

    def on_progress(self, future: TransferFuture, bytes_transferred: int, **kwargs: Any) -> None:
        self._on_bytes(bytes_transferred)
