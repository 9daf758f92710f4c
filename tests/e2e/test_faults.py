"""The fault matrix, end to end: the daemon as a subprocess against storage that fails.

S3 faults moto cannot make (throttling, 5xx, a download that stalls) come from `S3Proxy`, a
loopback HTTP proxy in front of moto's server. The outage of the endpoint itself is covered
in tests/e2e/test_s3.py, and the local corrupt version in tests/e2e/test_local.py. Each version v of the
test model computes y = 0.5 * x + v, so an answer names the version that gave it.
"""

from __future__ import annotations

import http.client
import shutil
import signal
import threading
import urllib.parse
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_process import DaemonProcess, wait_until
from tests.s3_storage import CREDENTIALS, bucket_client
from tests.s3_storage import delete_prefix as _delete_prefix
from tests.s3_storage import upload as _upload

pytestmark = pytest.mark.e2e

BUCKET = "faults"
# How long a daemon may take to exit after SIGTERM when a download has stalled: well
# inside Kubernetes' default 30 s grace period, after which it is SIGKILLed. (Before the
# fix it took about 200 s: botocore's 10 s read timeout, times its retries and s3transfer's.)
SIGTERM_GRACE_SECONDS = 10.0
upload = partial(_upload, bucket=BUCKET)
delete_prefix = partial(_delete_prefix, bucket=BUCKET)


# --- a proxy that makes S3 misbehave ----------------------------------------------------

class S3Proxy:
    """Relays S3 requests to moto's server, except those a test asks it to spoil.

    `fail_lists`: every ListObjectsV2 is answered 503 SlowDown or 500 InternalError (in
    turn), as S3 answers when throttling or unwell. `fail_gets`: the same for downloads of
    keys containing that text. `hold(text)`: downloads of keys containing `text` wait until
    `release()`, like a transfer that stalls.
    """

    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.fail_lists = False
        self.fail_gets: str | None = None
        self.failed = 0
        self._held: str | None = None
        self._holding = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        handler = type("Handler", (_ProxyHandler,), {"proxy": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = False  # server_close() joins every request thread
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-proxy")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> S3Proxy:
        self._thread.start()
        return self

    def hold(self, text: str) -> None:
        """Make downloads of keys containing `text` wait until `release()`."""
        self._released.clear()
        self._holding.clear()
        self._held = text

    def wait_holding(self, what: str) -> None:
        """Wait until a download is being held."""
        wait_until(self._holding.is_set, 60, what)

    def release(self) -> None:
        self._held = None
        self._released.set()

    def held(self, key: str) -> bool:
        """Whether a download of `key` has to wait; if so, wait (at most a minute)."""
        if self._held is None or self._held not in key:
            return False
        self._holding.set()
        self._released.wait(60)
        return True

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def count_failure(self) -> int:
        with self._lock:
            self.failed += 1
            return self.failed


class _ProxyHandler(BaseHTTPRequestHandler):
    proxy: S3Proxy  # set on the subclass each S3Proxy makes

    def do_GET(self) -> None:
        proxy = self.proxy
        key = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        listing = "list-type=2" in self.path
        if (proxy.fail_lists if listing else bool(proxy.fail_gets and proxy.fail_gets in key)):
            self._fail()
            return
        if not listing:
            proxy.held(key)
        self._relay()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the daemon's log tells the story."""

    def _fail(self) -> None:
        number = self.proxy.count_failure()
        code, status = ("SlowDown", 503) if number % 2 else ("InternalError", 500)
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>spoiled by the test proxy</Message>"
            f"<RequestId>proxy-{number}</RequestId></Error>"
        ).encode()
        self._answer(status, [("Content-Type", "application/xml")], body)

    def _relay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection(*self.proxy.upstream, timeout=30)
        try:
            upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
            response = upstream.getresponse()
            data = response.read()
            headers = [
                (k, v) for k, v in response.getheaders()
                if k.lower() not in ("server", "date", "connection", "transfer-encoding",
                                     "content-length")
            ]
            if self.command == "HEAD":
                headers.append(("Content-Length", response.getheader("Content-Length", "0")))
            self._answer(response.status, headers, data)
        finally:
            upstream.close()

    def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        try:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.end_headers()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon went away (a test killed it); nobody is waiting


# --- fixtures and helpers ---------------------------------------------------------------

@pytest.fixture
def s3(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    yield from bucket_client(moto_server, BUCKET, monkeypatch)


@pytest.fixture
def proxy(moto_server: str) -> Iterator[S3Proxy]:
    started = S3Proxy(moto_server).start()
    yield started
    started.stop()


def config(tmp_path: Path, models: list[dict[str, Any]], endpoint: str | None = None,
           cache_dir: Path | None = None, *, ports_during_loads: bool = False) -> dict[str, Any]:
    """`ports_during_loads`: open the ports at once, without waiting for the first loads
    (for tests that stop a daemon while its first fetch is held)."""
    loading: dict[str, Any] = {"max_retries": 0, "retry_backoff_seconds": 0.1}
    if ports_during_loads:
        loading["initial_load_timeout_seconds"] = 0
    return {
        "server": {"host": "127.0.0.1", "rest_port": 0, "grpc_port": 0},
        "storage": {"cache_dir": str(cache_dir or tmp_path / "cache"),
                    "s3": {"endpoint_url": endpoint, "region": "us-east-1"}},
        "watch": {"poll_interval_seconds": 0.2, "settle_seconds": 0.3},
        "loading": loading,
        "models": models,
    }


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator:
    """Starts daemons that must stop with exit code 0 at the end of the test."""
    started: list[DaemonProcess] = []

    def start(models: list[dict[str, Any]], endpoint: str | None = None,
              cache_dir: Path | None = None) -> DaemonProcess:
        process = DaemonProcess(
            tmp_path, config(tmp_path, models, endpoint, cache_dir), env=CREDENTIALS
        )
        started.append(process)
        return process.start()

    yield start
    for process in started:
        assert process.stop() == 0, process.log()[-4000:]


def y(version: float, x: float = 2.0) -> float:
    return 0.5 * x + version


def status_of(d: DaemonProcess, model: str, version: int) -> dict[str, Any]:
    response = d.client.get(f"/v1/models/{model}/versions/{version}")
    assert response.status_code == 200, response.text
    (status,) = response.json()["model_version_status"]
    return status


def temporary_folders(cache: Path) -> list[Path]:
    return sorted(cache.glob(".tmp-*")) if cache.is_dir() else []


def cache_folders(cache: Path, model: str) -> list[str]:
    """The names of the cached copies of `model`'s versions: "<version>-<fingerprint>"."""
    folder = cache / model
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def cached_versions(cache: Path, model: str) -> set[str]:
    return {name.split("-")[0] for name in cache_folders(cache, model)}


# --- 1. throttling and 5xx --------------------------------------------------------------

def test_throttled_listings_unload_nothing_and_the_new_version_follows(
    tmp_path, s3, proxy, daemon, model_builder
):
    upload(s3, model_builder.built(1), "throttle/m/1")
    d = daemon([{"name": "m", "base_path": f"s3://{BUCKET}/throttle/m"}], endpoint=proxy.url)
    d.wait_for_states("m", {1: "AVAILABLE"})
    proxy.fail_lists = True
    upload(s3, model_builder.built(2), "throttle/m/2")
    # A whole poll fails (botocore makes 3 attempts), and the daemon says so.
    wait_until(lambda: proxy.failed >= 3 and "could not list the versions" in d.log().lower(),
               60, "a poll to fail with 503 SlowDown / 500 InternalError")
    assert d.states("m") == {1: "AVAILABLE"}
    assert d.answer("m") == y(1)
    proxy.fail_lists = False
    d.wait_for_states("m", {2: "AVAILABLE", 1: "END"})
    assert d.answer("m") == y(2)
    assert "works again" in d.log()
    assert "Traceback" not in d.log()


def test_a_fetch_spoiled_by_5xx_is_fetched_again_once_s3_answers(
    tmp_path, s3, proxy, daemon, model_builder
):
    upload(s3, model_builder.built(1), "getfail/m/1")
    d = daemon([{"name": "m", "base_path": f"s3://{BUCKET}/getfail/m"}], endpoint=proxy.url)
    d.wait_for_states("m", {1: "AVAILABLE"})
    proxy.fail_gets = "getfail/m/2/"
    upload(s3, model_builder.built(2), "getfail/m/2")
    d.wait_for_states("m", {2: "END", 1: "AVAILABLE"})
    assert status_of(d, "m", 2)["status"]["error_code"] == "UNAVAILABLE"
    assert d.answer("m") == y(1)
    proxy.fail_gets = None  # S3 is well again; nothing about version 2 changed
    d.wait_for_states("m", {2: "AVAILABLE", 1: "END"}, timeout=10)
    assert d.answer("m") == y(2)


# --- 2 and 5. a version deleted during its fetch; a corrupt version, fixed -----------------

def test_versions_that_fail_to_fetch_or_load_never_displace_the_serving_one(
    tmp_path, s3, proxy, daemon, model_builder
):
    cache = tmp_path / "cache"
    upload(s3, model_builder.built(1), "failing/m/1")
    d = daemon([{"name": "m", "base_path": f"s3://{BUCKET}/failing/m"}], endpoint=proxy.url)
    d.wait_for_states("m", {1: "AVAILABLE"})

    # Version 2 is deleted while its fetch is under way (its data shard held back).
    proxy.hold("failing/m/2/variables/variables.data")
    upload(s3, model_builder.built(2), "failing/m/2")
    proxy.wait_holding("the fetch of version 2 to be under way")
    assert temporary_folders(cache), "the fetch should be writing into a .tmp- folder"
    assert d.states("m") == {2: "LOADING", 1: "AVAILABLE"}
    delete_prefix(s3, "failing/m/2")
    proxy.release()
    d.wait_for_states("m", {2: "END", 1: "AVAILABLE"})
    status = status_of(d, "m", 2)["status"]
    assert status["error_code"] in ("NOT_FOUND", "ABORTED") and status["error_message"]
    assert temporary_folders(cache) == []
    assert cached_versions(cache, "m") == {"1"}
    assert d.answer("m") == y(1)
    assert d.predict("m/versions/2", {"instances": [[2.0]]}).status_code == 404

    # Version 3 is corrupt: it fails to load, then loads once the good file is uploaded
    # again (which changes the listing's ETag).
    upload(s3, model_builder.built(3), "failing/m/3")
    s3.put_object(Bucket=BUCKET, Key="failing/m/3/saved_model.pb", Body=b"not a SavedModel")
    d.wait_for_states("m", {3: "END", 1: "AVAILABLE"})
    status = status_of(d, "m", 3)["status"]
    assert status["error_code"] != "OK" and status["error_message"]
    assert d.answer("m") == y(1)
    s3.upload_file(str(model_builder.built(3) / "saved_model.pb"), BUCKET,
                   "failing/m/3/saved_model.pb")
    d.wait_for_states("m", {3: "AVAILABLE", 1: "END"})
    assert d.answer("m") == y(3)
    assert status_of(d, "m", 3)["status"] == {"error_code": "OK", "error_message": ""}


# --- 3. an unwritable cache folder ----------------------------------------------------------

def test_an_unusable_cache_folder_is_a_clear_error_and_local_models_still_serve(
    tmp_path, s3, moto_server, daemon, model_builder
):
    # Tests run as root, so a chmod would not bite: put the cache folder under a file.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder's parent should be")
    cache = blocker / "cache"
    upload(s3, model_builder.built(1), "nocache/m/1")
    model_builder.publish(tmp_path / "repo" / "local", 1)
    d = daemon([
        {"name": "remote", "base_path": f"s3://{BUCKET}/nocache/m"},
        {"name": "local", "base_path": str(tmp_path / "repo" / "local")},
    ], endpoint=moto_server, cache_dir=cache)
    d.wait_for_states("local", {1: "AVAILABLE"})
    d.wait_for_states("remote", {1: "END"})
    status = status_of(d, "remote", 1)["status"]
    assert status["error_code"] == "FAILED_PRECONDITION"
    assert f"in the cache folder {cache.resolve()}" in status["error_message"]
    assert "Not a directory" in status["error_message"]
    assert d.answer("local") == y(1)
    assert d.predict("remote", {"instances": [[2.0]]}).status_code == 404
    assert d.client.get("/readyz").json()["models"] == {"local": True, "remote": False}


# --- 4 and 6. kill -9 during a fetch, a restart, then SIGTERM during a fetch --------------

def test_a_restart_after_kill_9_cleans_up_and_sigterm_during_a_fetch_exits_0(
    tmp_path, s3, proxy, daemon, model_builder
):
    cache = tmp_path / "cache"
    models = [{"name": "m", "base_path": f"s3://{BUCKET}/killed/m"}]
    upload(s3, model_builder.built(1), "killed/m/1")
    proxy.hold("killed/m/1/variables/variables.data")
    crashed = DaemonProcess(
        tmp_path, config(tmp_path, models, proxy.url, ports_during_loads=True), env=CREDENTIALS
    )
    try:
        crashed.start()
        proxy.wait_holding("the fetch of version 1 to be under way")
        stale = temporary_folders(cache)
        assert stale
        crashed.signal(signal.SIGKILL)
    finally:
        assert crashed.stop() == -signal.SIGKILL
    assert all(folder.is_dir() for folder in stale), "kill -9 leaves the download behind"
    upload(s3, model_builder.built(2), "killed/m/2")
    proxy.release()

    # The restart removes the crash's download and serves the latest version.
    d = daemon(models, endpoint=proxy.url)
    d.wait_for_states("m", {2: "AVAILABLE"})
    assert not any(folder.exists() for folder in stale)
    assert temporary_folders(cache) == []
    assert d.answer("m") == y(2)
    assert 1 not in d.states("m")
    assert cached_versions(cache, "m") == {"2"}

    # SIGTERM while version 3 is being fetched (so loading): once the fetch returns, the
    # daemon exits 0 without a traceback.
    proxy.hold("killed/m/3/variables/variables.data")
    upload(s3, model_builder.built(3), "killed/m/3")
    proxy.wait_holding("the fetch of version 3 to be under way")
    assert d.states("m") == {3: "LOADING", 2: "AVAILABLE"}
    d.signal(signal.SIGTERM)
    wait_until(lambda: "stopping:" in d.log(), 30, "the daemon to start stopping")
    proxy.release()
    assert d.stop() == 0, d.log()[-4000:]
    assert "modelwatch: stopped" in d.log()
    assert "Traceback" not in d.log()


# --- 5b. the cache after a failed load ---------------------------------------------------

def test_a_version_that_fails_to_load_leaves_no_copy_in_the_cache(
    tmp_path, s3, moto_server, daemon, model_builder
):
    cache = tmp_path / "cache"
    upload(s3, model_builder.built(1), "leak/m/1")
    s3.put_object(Bucket=BUCKET, Key="leak/m/1/saved_model.pb", Body=b"not a SavedModel")
    d = daemon([{"name": "m", "base_path": f"s3://{BUCKET}/leak/m"}], endpoint=moto_server)
    d.wait_for_states("m", {1: "END"})
    assert status_of(d, "m", 1)["status"]["error_message"]
    wait_until(lambda: cache_folders(cache, "m") == [], 5, "the failed version's copy to go")


# --- 6b. SIGTERM while a download stalls --------------------------------------------------

def test_sigterm_during_a_stalled_fetch_exits_within_the_grace_period(
    tmp_path, s3, proxy, model_builder
):
    upload(s3, model_builder.built(1), "stalled/m/1")
    proxy.hold("stalled/m/1/variables/variables.data")
    d = DaemonProcess(tmp_path, config(
        tmp_path, [{"name": "m", "base_path": f"s3://{BUCKET}/stalled/m"}], proxy.url,
        ports_during_loads=True,
    ), env=CREDENTIALS)
    try:
        d.start()
        proxy.wait_holding("the fetch of version 1 to be under way")
        code = d.stop(timeout=SIGTERM_GRACE_SECONDS)  # kills and fails if it does not exit
    finally:
        d.stop()
    assert code == 0 and "Traceback" not in d.log()


# --- 7. a local model folder deleted while serving, then recreated -------------------------

def test_a_deleted_local_model_folder_unloads_nothing_and_its_recreation_is_served(
    tmp_path, daemon, model_builder
):
    base = tmp_path / "repo" / "m"
    model_builder.publish(base, 1)
    d = daemon([{"name": "m", "base_path": str(base)}])
    d.wait_for_states("m", {1: "AVAILABLE"})
    shutil.rmtree(base)
    wait_until(lambda: "cannot list model m" in d.log(), 30, "the daemon to notice")
    assert d.states("m") == {1: "AVAILABLE"}
    assert d.answer("m") == y(1)
    base.mkdir()  # back, but empty: an empty listing unloads nothing either
    wait_until(lambda: "can be listed again" in d.log(), 30, "the folder to be listed again")
    wait_until(lambda: "storage lists no versions of model m" in d.log(), 30, "the empty listing")
    assert d.states("m") == {1: "AVAILABLE"}
    assert d.answer("m") == y(1)
    model_builder.publish(base, 2)
    d.wait_for_states("m", {2: "AVAILABLE", 1: "END"})
    assert d.answer("m") == y(2)
    # SIGTERM right after a publish, while its load may be running, still exits cleanly.
    model_builder.publish(base, 3)
    assert d.stop() == 0
    assert "Traceback" not in d.log() and "modelwatch: stopped" in d.log()


# --- 8. a load that hangs ---------------------------------------------------------------------

def test_a_load_that_hangs_times_out_and_the_old_version_keeps_serving(tmp_path, model_builder):
    import os

    base = tmp_path / "repo" / "m"
    model_builder.publish(base, 1)
    # Version 2's variables index is a named pipe with no writer: TensorFlow's open() of it
    # blocks for good, as a load stuck on a dead network mount would.
    staged = tmp_path / "staging" / "2"
    shutil.copytree(model_builder.built(2), staged)
    (staged / "variables" / "variables.index").unlink()
    os.mkfifo(staged / "variables" / "variables.index")
    settings = config(tmp_path, [{"name": "m", "base_path": str(base)}])
    settings["loading"]["load_timeout_seconds"] = 2
    d = DaemonProcess(tmp_path, settings).start()
    try:
        d.wait_for_states("m", {1: "AVAILABLE"})
        staged.rename(base / "2")
        d.wait_for_states("m", {2: "END", 1: "AVAILABLE"})
        (status,) = d.client.get("/v1/models/m/versions/2").json()["model_version_status"]
        assert status["status"]["error_code"] == "DEADLINE_EXCEEDED", status
        assert "did not finish within 2 seconds" in status["status"]["error_message"]
        assert d.answer("m") == 0.5 * 2.0 + 1
        code = d.stop(timeout=SIGTERM_GRACE_SECONDS)  # the hung load does not hold the exit
    finally:
        d.stop()
    assert code == 0
