"""Talking to S3: boto3 clients with modelwatch's timeouts, `s3://` URIs, and the two
listings that the source and the fetcher both make (a model's version prefixes, a version's
objects). The one module that imports boto3.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from loader.sources import versions

# Every way a listing can fail because of storage, network or credentials (not our bugs).
S3_ERRORS = (BotoCoreError, ClientError)

# Generous for one ListObjectsV2 page, short enough that a dead endpoint costs a poll
# seconds (times botocore's 3 attempts), not minutes.
_CONNECT_TIMEOUT_SECONDS = 3.0
_READ_TIMEOUT_SECONDS = 10.0
_MAX_POOL_CONNECTIONS = 32

# Lenient on purpose (legacy buckets may hold capitals and underscores); S3 rejects the rest.
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{2,254}")


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


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split `s3://bucket/some/prefix` into ("bucket", "some/prefix/").

    The prefix ends with "/" unless it is empty (the whole bucket). Raises ValueError for
    anything that is not an s3:// URI with a bucket name.
    """
    scheme = "s3://"
    if not uri.startswith(scheme):
        raise ValueError(f"{uri!r} is not an S3 URI: it should look like s3://bucket/prefix")
    bucket, _, key = uri[len(scheme) :].partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(f"{uri!r} does not name a valid S3 bucket after s3://")
    key = key.strip("/")
    if "//" in key:
        raise ValueError(f"{uri!r} has an empty path segment ('//')")
    return bucket, f"{key}/" if key else ""


@dataclass(frozen=True)
class VersionObject:
    """One object of a version, with its key relative to the version prefix."""

    key: str
    relpath: str
    size: int
    etag: str  # without the surrounding quotes S3 puts around it


class RequestCounter:
    """Counts S3 API calls (one per listing page), for the per-poll metrics."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()  # listings of several models run at once

    def add(self) -> None:
        with self._lock:
            self.count += 1


def _pages(client: Any, counter: RequestCounter | None, **kwargs: str) -> Iterator[Any]:
    for page in client.get_paginator("list_objects_v2").paginate(**kwargs):
        if counter is not None:
            counter.add()
        yield page


def list_version_folders(
    client: Any, bucket: str, model_prefix: str, counter: RequestCounter | None = None
) -> dict[int, str]:
    """The version prefixes directly under `model_prefix`, by version number.

    Children whose name is not a version (hidden, temporary, non-numeric) are left out.
    When two names mean the same number ("1/" and "01/"), the first in S3's (lexical)
    order wins, so the choice is stable from one poll to the next.
    """
    found: dict[int, str] = {}
    for page in _pages(client, counter, Bucket=bucket, Prefix=model_prefix, Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            prefix = common["Prefix"]
            version = versions.parse_version(prefix[len(model_prefix) :].rstrip("/"))
            if version is not None and version not in found:
                found[version] = prefix
    return found


def list_version_objects(
    client: Any, bucket: str, version_prefix: str, counter: RequestCounter | None = None
) -> list[VersionObject]:
    """Every object under `version_prefix` (recursively), except folder markers."""
    objects = []
    for page in _pages(client, counter, Bucket=bucket, Prefix=version_prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith("/") or not key.startswith(version_prefix):
                continue
            etag = str(item.get("ETag", "")).strip('"')
            objects.append(VersionObject(key, key[len(version_prefix) :], item["Size"], etag))
    return objects


def read_object_range(
    client: Any,
    bucket: str,
    obj: VersionObject,
    offset: int,
    length: int,
    counter: RequestCounter | None = None,
) -> bytes:
    """Up to `length` bytes of `obj` from `offset` (one ranged GetObject of that very
    object: If-Match its listed ETag, so a replaced object fails instead of mixing)."""
    if counter is not None:
        counter.add()
    last = min(obj.size, offset + length) - 1
    if last < offset:
        return b""
    response = client.get_object(
        Bucket=bucket, Key=obj.key, Range=f"bytes={offset}-{last}", IfMatch=f'"{obj.etag}"'
    )
    body: bytes = response["Body"].read()
    return body


def listing_fingerprint(objects: Iterable[VersionObject]) -> str:
    """The fingerprint of a version's listing; the source and the fetcher must agree."""
    return versions.fingerprint((o.relpath, o.size, o.etag) for o in objects)
