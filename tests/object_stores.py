"""Emulated Google Cloud Storage and Azure Blob Storage for the tests, started by the tests
themselves as moto is for S3: gcp-storage-emulator (PyPI) in this process, Azurite (npm,
installed into .node/ by `make test`) as a subprocess; both on 127.0.0.1 ephemeral ports,
in memory. A `Bucket` is one bucket or container with the few calls the tests make.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_process import ROOT, free_port, wait_until

AZURITE = ROOT / ".node" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account (public, in Microsoft's documentation).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@contextmanager
def gcs_emulator(port: int | None = None, data_dir: Path | None = None) -> Iterator[str]:
    """gcp-storage-emulator in this process; yields its STORAGE_EMULATOR_HOST. In memory,
    or kept in `data_dir`, where an emulator started again on the same port finds it."""
    from gcp_storage_emulator.server import create_server

    port = port or free_port()
    server = create_server(
        "127.0.0.1", port, in_memory=data_dir is None,
        data_dir=None if data_dir is None else str(data_dir),
    )
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@contextmanager
def azurite(workdir: Path, port: int = 0, *, on_disk: bool = False) -> Iterator[str]:
    """Azurite's blob service as a subprocess; yields its connection string. In memory, or
    kept in `workdir` (`on_disk`), where an Azurite started again on the same port finds
    it. Skips the test when Azurite is not installed."""
    if not AZURITE.exists():
        pytest.skip(f"Azurite is not installed at {AZURITE} (`make azurite` installs it "
                    "from npm; it needs node and npm)")
    log = workdir / "azurite.log"
    keep = ["--location", str(workdir)] if on_disk else [
        "--inMemoryPersistence", "--extentMemoryLimit", "256"]
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), *keep,
             "--silent", "--skipApiVersionCheck", "--disableTelemetry"],
            cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        found: list[str] = []

        def listening() -> bool:
            match = re.search(r"listens on http://127\.0\.0\.1:(\d+)", log.read_text())
            if match:
                found.append(match.group(1))
            assert process.poll() is None, f"Azurite exited: {log.read_text()}"
            return bool(match)

        wait_until(listening, 60, "Azurite to listen")
        yield azurite_connection_string(int(found[0]))
    finally:
        process.terminate()
        process.wait(timeout=30)


def azurite_connection_string(port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )


class Bucket:
    """One emulated bucket (GCS) or container (Azure) named `name`, holding test objects.

    `env` is what a process needs to reach it (STORAGE_EMULATOR_HOST or
    AZURE_STORAGE_CONNECTION_STRING); `uri(path)` is its `gs://` or `az://` URI.
    """

    def __init__(self, scheme: str, name: str, env: Mapping[str, str]) -> None:
        self.scheme = scheme
        self.name = name
        self.env = dict(env)
        self._client: Any = None

    def uri(self, path: str) -> str:
        return f"{self.scheme}://{self.name}/{path}"

    def create(self) -> None:
        if self.scheme == "gs":
            from google.cloud import storage

            with environ(self.env):  # the library's own emulator rule: anonymous, no project
                client = storage.Client()
            self._client = client.create_bucket(self.name)
        else:
            from azure.storage.blob import BlobServiceClient

            service = BlobServiceClient.from_connection_string(
                self.env["AZURE_STORAGE_CONNECTION_STRING"]
            )
            self._client = service.create_container(self.name)

    def remove(self) -> None:
        if self.scheme == "gs":
            self._client.delete(force=True)
        else:
            self._client.delete_container()

    def put(self, prefix: str, files: Mapping[str, bytes]) -> None:
        for relpath, body in files.items():
            if self.scheme == "gs":
                self._client.blob(f"{prefix}{relpath}").upload_from_string(body)
            else:
                self._client.upload_blob(f"{prefix}{relpath}", body, overwrite=True)

    def upload(self, folder: Path, prefix: str, *, skip: str | None = None) -> None:
        """Every file of `folder` under `prefix/`, except those whose name has `skip`."""
        files = sorted(
            p for p in folder.rglob("*") if p.is_file() and (skip is None or skip not in p.name)
        )
        self.put(f"{prefix}/", {p.relative_to(folder).as_posix(): p.read_bytes() for p in files})

    def delete(self, prefix: str, relpaths: list[str] | None = None) -> None:
        """The given objects under `prefix`, or all of them."""
        if relpaths is None:
            if self.scheme == "gs":
                keys = [b.name for b in self._client.list_blobs(prefix=prefix)]
            else:
                keys = list(self._client.list_blob_names(name_starts_with=prefix))
        else:
            keys = [f"{prefix}{relpath}" for relpath in relpaths]
        for key in keys:
            if self.scheme == "gs":
                self._client.blob(key).delete()
            else:
                self._client.delete_blob(key)


@contextmanager
def environ(values: Mapping[str, str]) -> Iterator[None]:
    """`values` set in os.environ for the block (the store clients read them there)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
