"""Shared fixtures: every test must leave no thread of its own running."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
TFSERVING_TESTDATA = ROOT / "tests" / "testdata" / "tfserving"

# Threads some libraries start once per process and keep by design.
_PROCESS_THREADS = ("ThreadPoolExecutor", "pydevd", "asyncio_", "grpc", "Dummy-")
_PROCESS_THREAD_TARGETS = ("(_poll_wrapper)",)  # grpc.aio's completion-queue poller


def _own_threads() -> set[threading.Thread]:
    return {
        t
        for t in threading.enumerate()
        if t is not threading.main_thread()
        and not t.name.startswith(_PROCESS_THREADS)
        and not t.name.endswith(_PROCESS_THREAD_TARGETS)
    }


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread it started running (after a short grace period)."""
    before = _own_threads()
    yield
    deadline = time.monotonic() + 5.0
    leaked = _own_threads() - before
    while leaked and time.monotonic() < deadline:
        for thread in leaked:
            thread.join(timeout=0.1)
        leaked = {t for t in leaked if t.is_alive()}
    assert not leaked, f"threads left running: {sorted(t.name for t in leaked)}"


@pytest.fixture(scope="session")
def tfserving_testdata() -> Path:
    """TF Serving's own test models, kept in tests/testdata/tfserving (Apache-2.0, see its README)."""
    if not TFSERVING_TESTDATA.is_dir():
        pytest.fail(f"TF Serving's test data is missing at {TFSERVING_TESTDATA}")
    return TFSERVING_TESTDATA


@pytest.fixture(scope="session")
def model_builder(tmp_path_factory: pytest.TempPathFactory):
    """Builds tiny real SavedModels (y = 0.5x + intercept) once per session."""
    from tests.savedmodels import ModelBuilder

    return ModelBuilder(tmp_path_factory.mktemp("built-models"))


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, one per test module; skips with the reason where it
    (or its chromedriver) is not installed."""
    from tests.browser import browser_or_skip

    started = browser_or_skip()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    """moto's real S3 HTTP server on 127.0.0.1, one per test module."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
