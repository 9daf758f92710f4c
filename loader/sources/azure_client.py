"""Azure Blob Storage as an object store, through `azure-storage-blob` (and
`azure-identity`): the one module that imports them.

`az://container/prefix` names a container of one storage account. The account and its
credentials come from AZURE_STORAGE_CONNECTION_STRING when it is set (Azurite's too), else
from `storage.azure.account_url` (or the AZURE_STORAGE_ACCOUNT name) with
DefaultAzureCredential: environment, workload or managed identity, the Azure CLI's login.
Blobs are listed with their ETags; reads and downloads send If-Match, so a rewritten blob
fails instead of mixing two uploads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.identity import DefaultAzureCredential
from azure.storage.blob import BlobPrefix, BlobServiceClient, LinearRetry

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

# As S3's: a dead endpoint costs a poll seconds, not the library's default of a minute of
# backed-off retries (15 s, then more).
_CLIENT_OPTIONS: dict[str, Any] = {
    "retry_policy": LinearRetry(backoff=1, random_jitter_range=1, retry_total=2),
    "connection_timeout": 3,
    "read_timeout": 10,
}


def make_azure_store(account_url: str | None) -> AzureStore:
    """A store on a BlobServiceClient: AZURE_STORAGE_CONNECTION_STRING if set, else
    `account_url` (or https://$AZURE_STORAGE_ACCOUNT.blob.core.windows.net) with
    DefaultAzureCredential."""
    connection_string = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if connection_string:
        try:
            service = BlobServiceClient.from_connection_string(
                connection_string, **_CLIENT_OPTIONS
            )
        except ValueError as error:
            raise StoreError(f"AZURE_STORAGE_CONNECTION_STRING cannot be used: {error}") from None
        return AzureStore(service)
    account = os.environ.get("AZURE_STORAGE_ACCOUNT")
    if account_url is None and account:
        account_url = f"https://{account}.blob.core.windows.net"
    if account_url is None:
        raise StoreError(
            "az:// paths need a storage account: set AZURE_STORAGE_CONNECTION_STRING, or "
            "storage.azure.account_url (or AZURE_STORAGE_ACCOUNT) for DefaultAzureCredential"
        )
    return AzureStore(
        BlobServiceClient(account_url, credential=DefaultAzureCredential(), **_CLIENT_OPTIONS)
    )


class AzureStore:
    """Azure Blob Storage as an `ObjectStore` (a bucket is a container)."""

    scheme = "az"

    def __init__(self, service: Any) -> None:
        self.service = service

    def _pages(self, listing: Any, counter: RequestCounter | None) -> Iterator[Any]:
        for page in listing.by_page():
            if counter is not None:
                counter.add()
            yield page

    def list_version_folders(
        self, bucket: str, model_prefix: str, counter: RequestCounter | None = None
    ) -> dict[int, str]:
        """The version prefixes under `model_prefix`, from a delimited blob listing."""
        container = self.service.get_container_client(bucket)
        with _translated():
            listing = container.walk_blobs(name_starts_with=model_prefix, delimiter="/")
            prefixes = [
                item.name
                for page in self._pages(listing, counter)
                for item in page
                if isinstance(item, BlobPrefix)
            ]
        return version_folders(model_prefix, prefixes)

    def list_version_objects(
        self, bucket: str, version_prefix: str, counter: RequestCounter | None = None
    ) -> list[VersionObject]:
        """Every blob under `version_prefix` (recursively), with its ETag."""
        container = self.service.get_container_client(bucket)
        objects = []
        with _translated():
            listing = container.list_blobs(name_starts_with=version_prefix)
            for page in self._pages(listing, counter):
                for blob in page:
                    etag = str(blob.etag).strip('"')
                    obj = version_object(version_prefix, blob.name, blob.size, etag)
                    if obj is not None:
                        objects.append(obj)
        return objects

    def read_range(self, bucket: str, obj: VersionObject, first: int, last: int) -> bytes:
        """One ranged read, If-Match the listed ETag."""
        container = self.service.get_container_client(bucket)
        with _translated():
            data: bytes = container.download_blob(
                obj.key, offset=first, length=last - first + 1, **_if_match(obj)
            ).readall()
        return data

    def download(
        self,
        bucket: str,
        objects: Sequence[tuple[VersionObject, Path]],
        on_bytes: Callable[[int], None] | None,
        max_concurrency: int,
    ) -> None:
        """One download per blob, `max_concurrency` at a time, each If-Match its ETag."""
        container = self.service.get_container_client(bucket)

        def download_one(obj: VersionObject, path: Path) -> None:
            done = 0

            def progress(current: int, total: int | None) -> None:
                nonlocal done
                if on_bytes is not None and current > done:
                    on_bytes(current - done)
                done = max(done, current)

            with _translated(), path.open("wb") as file:
                container.download_blob(
                    obj.key, progress_hook=progress, **_if_match(obj)
                ).readinto(file)

        download_each(objects, download_one, max_concurrency)


def _if_match(obj: VersionObject) -> dict[str, Any]:
    return {"etag": f'"{obj.tag}"', "match_condition": MatchConditions.IfNotModified}


@contextmanager
def _translated() -> Iterator[None]:
    """The library's failures as `StoreError`s."""
    try:
        yield
    except ResourceNotFoundError as error:
        raise ObjectGone(_first_line(error)) from None
    except ResourceModifiedError as error:
        raise ObjectChanged(_first_line(error)) from None
    except AzureError as error:
        raise StoreError(_first_line(error)) from None


def _first_line(error: Exception) -> str:
    # Azure's messages run on with the request's headers and XML body.
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
