"""The operator page over a real manager and a real REST server: what it serves and
with which headers, its JSON and its event stream, how a stream ends, the page when it
is off, and hostile names and error texts in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from loader.base import VersionRef
from loader.manager.manager import Manager, ModelSpec
from loader.serving.dataplane import DataPlane
from loader.serving.metrics import Metrics
from loader.serving.operator_view import OperatorView
from loader.serving.rest.app import RestApi
from loader.serving.rest.operator_page import OperatorPage, encode
from loader.serving.rest.server import RestServer, bind
from policies.selection import All
from policies.transition import availability_preserving
from tests.daemon_process import wait_until
from tests.fakes import FakeLoader, refs

UI = Path(__file__).resolve().parents[3] / "loader" / "serving" / "rest" / "ui"


class Served:
    """A manager, the REST app with (or without) the page, and a client of its server."""

    def __init__(self, manager: Manager, page: bool, interval: float = 0.2, **limits: Any) -> None:
        self.manager = manager
        self.metrics = metrics = Metrics()
        self.page: OperatorPage | None = None
        if page:
            view = OperatorView(DataPlane(manager), metrics)
            manager.add_observer(view.transitions.observe)
            self.page = OperatorPage(view, interval_seconds=interval, metrics=metrics, **limits)
        self.api = RestApi(DataPlane(manager), metrics, operator_page=self.page)
        self.server = RestServer(self.api.app, bind("127.0.0.1", 0), drain_timeout_seconds=30)
        self.server.start()
        assert self.server.wait_started(10)
        self.url = f"http://127.0.0.1:{self.server.port}"
        self.client = httpx.Client(base_url=self.url)

    def stop(self) -> float:
        """Stop as the daemon does; the seconds the server took to end."""
        started = time.monotonic()
        self.client.close()
        self.api.close()
        self.server.stop()
        self.server.join(40)
        return time.monotonic() - started


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    made: list[Served] = []
    managers: list[Manager] = []

    def start(
        page: bool = True, loader: FakeLoader | None = None, limits: dict[str, Any] | None = None,
        **specs: dict[str, int],
    ) -> Served:
        manager = Manager(loader or FakeLoader(), load_retries=0)
        managers.append(manager)
        manager.set_models([
            ModelSpec(name, All(), availability_preserving, labels)
            for name, labels in (specs or {"m": {"stable": 1}}).items()
        ])
        made.append(Served(manager, page, **(limits or {})))
        return made[-1]

    yield start
    for served in made:
        served.stop()
    for manager in managers:
        manager.stop()


def available(manager: Manager, model: str, *versions: int) -> None:
    manager.on_versions(model, refs(*versions))
    assert manager.wait_until(
        lambda: {s.version for s in manager.status(model) if s.state == "AVAILABLE"} == set(versions),
        10,
    )


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._last = tag

    def handle_data(self, data: str) -> None:
        if self.tags and self.tags[-1][0] in ("script", "style") and data.strip():
            self.inline_script = True


def test_the_page_and_its_assets_are_served_with_a_strict_policy(serve):
    served = serve()
    page = served.client.get("/modelwatch/ui")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    parsed = _Tags()
    parsed.feed(page.text)
    assert not parsed.inline_script, "no inline script or style: the policy would block it"
    assert not any(name.startswith("on") for _, attrs in parsed.tags for name in attrs)
    assert not any("style" in attrs for _, attrs in parsed.tags)
    references = [
        attrs.get("src") or attrs.get("href")
        for tag, attrs in parsed.tags if tag in ("script", "link", "img")
    ]
    assert len(references) == 4  # script, stylesheet, icon, and the icon in the header
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for reference in references:
        assert reference and reference.startswith("/modelwatch/ui/"), reference  # this server only
        asset = served.client.get(reference)
        assert asset.status_code == 200, reference
        assert asset.headers["content-type"].startswith(types[Path(reference).suffix])
        assert asset.headers["content-security-policy"] == csp


def test_the_assets_load_nothing_from_elsewhere_and_never_parse_data_as_html():
    texts = {path.name: path.read_text() for path in UI.iterdir()}
    assert set(texts) == {"index.html", "app.js", "app.css", "icon.svg"}
    for name, text in texts.items():
        # The SVG names its XML namespace; that is an identifier, not something fetched.
        fetched = re.findall(r"(?:https?:)?//[\w.-]+\.\w+", text.replace("http://www.w3.org/2000/svg", ""))
        assert not fetched, (name, fetched)
        assert "@import" not in text and "url(" not in text, name
    script = texts["app.js"]
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink


def test_the_snapshot_is_json_of_every_model(serve):
    served = serve(m={"stable": 1})
    available(served.manager, "m", 1, 2)
    response = served.client.get("/modelwatch/ui/snapshot")
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    (model,) = response.json()["models"]
    assert model["name"] == "m" and model["labels"] == {"stable": 1}
    assert [(v["version"], v["state"]) for v in model["versions"]] == [(2, "AVAILABLE"), (1, "AVAILABLE")]


def test_a_lone_surrogate_in_an_error_is_escaped_not_fatal():
    # An undecodable file name reaches Python as a lone surrogate, which strict UTF-8
    # encoders refuse: the snapshot must still go out.
    document = {"error_message": "cannot read /models/m/1/\udcff.pb"}
    assert json.loads(encode(document)) == document


def test_the_page_is_off_when_configured_off(serve):
    served = serve(page=False)
    for path in ("/modelwatch/ui", "/modelwatch/ui/app.js", "/modelwatch/ui/snapshot",
                 "/modelwatch/ui/events"):
        response = served.client.get(path)
        assert response.status_code == 404, path
        assert response.json() == {"error": "the operator page is off (server.operator_page: false)"}
    assert served.client.get("/modelwatch/models").status_code == 200  # the rest is unchanged


def test_the_page_changes_nothing(serve):
    served = serve()
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("/modelwatch/ui", "/modelwatch/ui/snapshot", "/modelwatch/ui/events"):
            assert served.client.request(method, path).status_code in (400, 405), (method, path)


def read_events(url: str, events: list[str], ended: threading.Event) -> None:
    try:
        with httpx.stream("GET", url + "/modelwatch/ui/events", timeout=30) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[len("data: "):])
    finally:
        ended.set()


def test_the_event_stream_sends_snapshots_and_ends_when_the_server_stops(serve):
    served = serve()
    available(served.manager, "m", 1)
    events: list[str] = []
    ended = threading.Event()
    reader = threading.Thread(target=read_events, args=(served.url, events, ended), name="test-sse")
    reader.start()
    wait_until(lambda: len(events) >= 3, 10, "three snapshots on the stream")
    assert [v["version"] for v in json.loads(events[-1])["models"][0]["versions"]] == [1]
    page = served.page
    assert page is not None and page.open_streams == 1
    took = served.stop()  # the daemon's order: close the streams, then stop the server
    assert ended.wait(5)
    reader.join(5)
    assert took < 5, f"the server took {took:.1f}s to stop with a stream open"
    assert page.open_streams == 0


def test_a_stream_asked_for_after_close_ends_at_once(serve):
    served = serve()
    assert served.page is not None
    served.page.close()
    response = served.client.get("/modelwatch/ui/events", timeout=5)
    assert response.status_code == 200 and response.text == ""


def raw_stream(port: int, receive_buffer: int | None = None) -> socket.socket:
    """A GET of the event stream on a raw socket (optionally with a small receive buffer,
    set before connecting so that the window the server sees is small)."""
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /modelwatch/ui/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return sock


def read_frames(sock: socket.socket, count: int) -> list[bytes]:
    """The first `count` snapshots the stream sends (each is one chunk of the response)."""
    data = b""
    while len(frames := re.findall(rb"data: (.*?)\n\n", data)) < count:
        chunk = sock.recv(65536)
        assert chunk, f"the stream ended after {len(frames)} snapshot(s): {data[:300]!r}"
        data += chunk
    return frames[:count]


def test_every_stream_is_sent_the_same_snapshots_built_once_for_all(serve):
    served = serve(limits={"max_streams": 16})
    available(served.manager, "m", 1)
    streams = [raw_stream(served.server.port) for _ in range(8)]
    try:
        seen = [set(read_frames(sock, 3)) for sock in streams]
    finally:
        for sock in streams:
            sock.close()
    # One build a tick for all: the 8 streams were sent the same bytes, so together they
    # saw about as many distinct snapshots as one of them did (a stream that joined a
    # tick or two later saw the next ones). A build per stream would be 24 distinct ones.
    assert len(set.union(*seen)) <= 3 + 2, [len(s) for s in seen]
    assert set.intersection(*seen)
    assert served.page is not None
    wait_until(lambda: served.page.open_streams == 0, 10, "the streams to end")


def refused(served: Served, reason: str) -> float | None:
    return served.metrics.registry.get_sample_value(
        "modelwatch_refused_total", {"transport": "rest", "reason": reason}
    )


def test_streams_past_the_cap_are_refused_with_retry_after(serve):
    served = serve(limits={"max_streams": 2})
    page = served.page
    assert page is not None
    first, second = raw_stream(served.server.port), raw_stream(served.server.port)
    try:
        for sock in (first, second):
            read_frames(sock, 1)
        response = served.client.get("/modelwatch/ui/events", timeout=10)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "30"
        assert response.headers["content-type"] == "application/json"
        assert "server.max_event_streams" in response.json()["error"]
        assert refused(served, "event_streams") == 1.0
        assert served.client.get("/modelwatch/ui/snapshot").status_code == 200  # still there
        first.close()  # a stream that ends gives its slot back
        wait_until(lambda: page.open_streams == 1, 10, "the closed stream's slot to be free")
        third = raw_stream(served.server.port)
        try:
            assert read_frames(third, 1)
        finally:
            third.close()
    finally:
        first.close()
        second.close()


def test_a_stream_whose_client_does_not_read_is_closed(serve):
    loader = FakeLoader()
    loader.failing.add(1)  # its error quotes the fingerprint: a large snapshot
    served = serve(loader=loader, limits={"stall_seconds": 0.5, "interval": 0.05})
    served.manager.on_versions("m", {1: VersionRef("/models/m/1", "x" * 20000)})
    assert served.manager.wait_until(
        lambda: [s.state for s in served.manager.status("m")] == ["END"], 10
    )
    page = served.page
    assert page is not None
    events: list[str] = []
    ended = threading.Event()
    reader = threading.Thread(target=read_events, args=(served.url, events, ended), name="test-sse")
    reader.start()
    stalled = raw_stream(served.server.port, receive_buffer=4096)  # and never read
    try:
        wait_until(lambda: page.open_streams == 2, 10, "both streams open")
        wait_until(lambda: refused(served, "event_stream_stalled") == 1.0, 30,
                   "the stream that is not read to be closed")
        wait_until(lambda: page.open_streams == 1, 10, "its slot to be free")
        # Its connection was cut: reading what is left ends.
        with pytest.raises((ConnectionResetError, AssertionError)):
            read_frames(stalled, 10_000)
        # The stream that reads goes on.
        count = len(events)
        wait_until(lambda: len(events) > count + 2, 10, "more snapshots for the reader")
    finally:
        stalled.close()
        served.stop()
        reader.join(10)
    assert ended.is_set()


def test_a_stream_behind_its_client_ends_at_once_when_the_server_stops(serve):
    loader = FakeLoader()
    loader.failing.add(1)
    served = serve(loader=loader, limits={"stall_seconds": 3600, "interval": 0.05})
    # Snapshots larger than the transport's high-water mark: one written while the client
    # is behind leaves the transport paused, so a last chunk would wait for the drain.
    served.manager.on_versions("m", {1: VersionRef("/models/m/1", "x" * 100_000)})
    page = served.page
    assert page is not None
    stalled = raw_stream(served.server.port, receive_buffer=4096)  # and never read
    try:
        wait_until(lambda: page.open_streams == 1, 10, "the stream open")
        # Behind: its frames are skipped, and the stream is still open.
        wait_until(lambda: page.feed.builds > 20, 30, "snapshots enough to fill the buffers")
        assert page.open_streams == 1
        page.close()  # the daemon's stop, before the server's
        wait_until(lambda: page.open_streams == 0, 10, "the stream to end")
    finally:
        stalled.close()


def test_a_page_refused_a_stream_polls_the_snapshot(serve, browser):
    served = serve(limits={"max_streams": 0}, m={"stable": 1})
    available(served.manager, "m", 1)
    browser.open_operator_page(served.url)  # "live" from a polled snapshot
    shown = browser.wait_for(
        lambda d: d.execute_script("return document.querySelector('article.card')"),
        10, "the model's card",
    )
    assert "stable" in shown.text
    assert refused(served, "event_streams") >= 1.0
    # The refusal itself is all the console may say (the browser reports the 503).
    assert all("/modelwatch/ui/events" in e["message"] for e in browser.console_errors())


HOSTILE_NAME = '<img src=x onerror="window.pwned=1">'
HOSTILE_LABEL = "<b id=injected-label>canary</b>"
HOSTILE_ERROR = "<script>window.pwned=2</script><img src=y onerror=\"window.pwned=3\">&amp;"


def test_hostile_names_and_error_texts_are_shown_as_text(serve, browser):
    loader = FakeLoader()
    loader.failing.add(2)  # its error quotes the version's fingerprint, a hostile text here
    served = serve(loader=loader, **{HOSTILE_NAME: {HOSTILE_LABEL: 1}})
    served.manager.on_versions(HOSTILE_NAME, {
        v: VersionRef(f"/models/{HOSTILE_NAME}/{v}", HOSTILE_ERROR) for v in (1, 2)
    })
    assert served.manager.wait_until(
        lambda: {s.state for s in served.manager.status(HOSTILE_NAME)} == {"AVAILABLE", "END"}, 10
    )
    browser.open_operator_page(served.url)
    shown = browser.wait_for(
        lambda d: d.execute_script(
            "const c = document.querySelector('article.card');"
            "return c && c.querySelector('.error') ? c : null;"
        ),
        10, "the failed version's error on the page",
    )
    text = shown.text
    assert HOSTILE_NAME in text and HOSTILE_LABEL + " → 1" in text and HOSTILE_ERROR in text
    injected = browser.driver.execute_script(
        "return {pwned: window.pwned === undefined ? null : window.pwned,"
        " images: document.querySelectorAll('main img').length,"
        " scripts: document.querySelectorAll('main script').length,"
        " bold: document.querySelectorAll('main b').length,"
        " model: document.querySelector('article.card').dataset.model};"
    )
    assert injected == {"pwned": None, "images": 0, "scripts": 0, "bold": 0, "model": HOSTILE_NAME}
    transitions = browser.driver.find_element("id", "transitions").text
    assert HOSTILE_NAME in transitions and HOSTILE_ERROR in transitions
    assert browser.console_errors() == []


def test_the_wheel_ships_the_page_and_its_assets(tmp_path):
    # Built from a copy of the sources, so the build leaves nothing in the work tree.
    root = UI.parents[3]
    source = tmp_path / "source"
    for name in ("loader", "policies"):
        shutil.copytree(root / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(root / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "-w", str(tmp_path / "dist"), str(source)],
        check=True, capture_output=True, timeout=120,
    )
    (wheel,) = (tmp_path / "dist").glob("modelwatch-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n for n in archive.namelist() if n.startswith("loader/serving/rest/ui/")}
    assert shipped == {f"loader/serving/rest/ui/{p.name}" for p in UI.iterdir()}
