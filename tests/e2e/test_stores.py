"""End to end on Google Cloud Storage and Azure Blob Storage: `modelwatch serve` with TF
Serving's own flags (`--model_base_path=gs://...`, `az://...`) as a subprocess, against the
emulators (tests/object_stores.py), through a swap, a corrupt version, an empty listing and
an outage.

Each version v of the test model computes y = 0.5 * x + v, so an answer names the version
that gave it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from tests.daemon_process import ROOT, free_port, wait_until
from tests.object_stores import Bucket, azurite, gcs_emulator

pytestmark = pytest.mark.e2e


def emulator(scheme: str, port: int, workdir: Path) -> AbstractContextManager[str]:
    """The store's emulator on `port`, keeping its objects in `workdir` across restarts."""
    if scheme == "gs":
        return gcs_emulator(port, workdir)
    return azurite(workdir, port, on_disk=True)


def env_for(scheme: str, endpoint: str) -> dict[str, str]:
    key = "STORAGE_EMULATOR_HOST" if scheme == "gs" else "AZURE_STORAGE_CONNECTION_STRING"
    return {key: endpoint}


class TfsDaemon:
    """`modelwatch serve` with TF Serving's flags, run in `workdir` (its cache goes there)."""

    def __init__(self, workdir: Path, env: dict[str, str], *flags: str) -> None:
        self.log_path = workdir / "daemon.log"
        ports = workdir / "ports.json"
        self.rest = free_port()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "loader", "serve", f"--port={free_port()}",
                 f"--rest_api_port={self.rest}", f"--ports-file={ports}", *flags],
                cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT), **env},
            )
        wait_until(lambda: ports.exists() or self.process.poll() is not None, 120, "the ports")
        assert self.process.poll() is None, self.log()
        assert json.loads(ports.read_text())["rest_port"] == self.rest
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.rest}", timeout=30.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def states(self) -> dict[int, str]:
        response = self.client.get("/v1/models/m")
        response.raise_for_status()
        return {int(s["version"]): s["state"] for s in response.json()["model_version_status"]}

    def wait_for_states(self, expected: dict[int, str], timeout: float = 90) -> None:
        try:
            wait_until(lambda: all(self.states().get(v) == s for v, s in expected.items()),
                       timeout, f"states {expected}")
        except AssertionError as error:
            raise AssertionError(f"{error}; now {self.states()}\n{self.log()[-4000:]}") from None

    def answer(self, x: float = 2.0) -> float:
        response = self.client.post("/v1/models/m:predict", json={"instances": [[x]]})
        assert response.status_code == 200, response.text
        return float(response.json()["predictions"][0][0])

    def stop(self) -> int:
        self.client.close()
        self.process.terminate()
        return self.process.wait(60)


def y(version: float, x: float = 2.0) -> float:
    return 0.5 * x + version


def cached_versions(workdir: Path) -> set[str]:
    folder = workdir / ".modelwatch" / "cache" / "m"
    return {p.name.split("-")[0] for p in folder.iterdir()} if folder.is_dir() else set()


@pytest.fixture(params=["gs", "az"])
def scheme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "store").mkdir()
    (tmp_path / "daemon").mkdir()
    yield tmp_path


def test_served_swapped_and_kept_through_a_corrupt_version_an_empty_listing_and_an_outage(
    scheme: str, workdir: Path, model_builder
) -> None:
    port = free_port()
    stopped = False
    outage = emulator(scheme, port, workdir / "store")
    endpoint = outage.__enter__()
    try:
        bucket = Bucket(scheme, "models", env_for(scheme, endpoint))
        bucket.create()
        bucket.upload(model_builder.built(1), "m/1")
        d = TfsDaemon(workdir / "daemon", bucket.env, "--model_name=m",
                      f"--model_base_path={bucket.uri('m')}", "--file_system_poll_wait_seconds=1",
                      "--max_num_load_retries=0")
        try:
            d.wait_for_states({1: "AVAILABLE"})
            assert d.answer() == y(1)

            bucket.upload(model_builder.built(2), "m/2")  # a swap
            d.wait_for_states({2: "AVAILABLE", 1: "END"})
            assert d.answer() == y(2)
            wait_until(lambda: cached_versions(workdir / "daemon") == {"2"}, 30,
                       "version 1's cache to go")

            bucket.upload(model_builder.built(3), "m/3", skip="saved_model.pb")
            bucket.put("m/3/", {"saved_model.pb": b"not a SavedModel"})  # a corrupt version
            d.wait_for_states({3: "END", 2: "AVAILABLE"})
            assert d.answer() == y(2)

            bucket.delete("m/")  # an empty listing unloads nothing
            wait_until(lambda: "storage lists no versions of model m" in d.log(), 30,
                       "the empty listing")
            assert d.states()[2] == "AVAILABLE" and d.answer() == y(2)

            outage.__exit__(None, None, None)  # the store goes away, and comes back
            stopped = True
            wait_until(lambda: "could not list" in d.log().lower(), 60, "the outage")
            assert d.states()[2] == "AVAILABLE" and d.answer() == y(2)
            outage = emulator(scheme, port, workdir / "store")
            outage.__enter__()
            stopped = False
            bucket.upload(model_builder.built(3), "m/3")  # fixed: its new content loads
            d.wait_for_states({3: "AVAILABLE", 2: "END"})
            assert d.answer() == y(3)
            assert "works again" in d.log()
            assert "Request URL" not in d.log()  # no line per storage request
        finally:
            assert d.stop() == 0, d.log()[-4000:]
    finally:
        if not stopped:
            outage.__exit__(None, None, None)
