"""The operator page end to end: the daemon as a subprocess, Debian's Chromium headless.

The page must load with no console error, show the models' versions, and follow what
happens without being reloaded: a version published, a corrupt one failing (its error
text appears). A stop must not wait on an open page's event stream.

`MODELWATCH_SCREENSHOT=docs/img/operator_page.png` also saves the browser's screenshot
there (the README's picture).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser import Browser
from tests.daemon_process import DaemonProcess, wait_until
from tests.e2e.test_local import config  # the same daemon settings as the other local tests
from tests.serving.rest.test_operator_page import raw_stream, read_frames

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent.parent

# The model's card as the page shows it: versions and the figures above them.
_CARD = """
const card = [...document.querySelectorAll("article.card")]
  .find((c) => c.dataset.model === arguments[0]);
if (!card) return null;
return {
  versions: [...card.querySelectorAll("table.versions tbody tr[data-version]")].map((r) => ({
    version: Number(r.dataset.version), state: r.dataset.state,
    labels: [...r.querySelectorAll(".chip")].map((c) => c.textContent),
    error: r.querySelector(".error") ? r.querySelector(".error").textContent : "",
  })),
  stats: Object.fromEntries([...card.querySelectorAll(".stat")].map(
    (s) => [s.querySelector(".label").textContent, s.querySelector(".value").textContent])),
  text: card.textContent,
};
"""

_TRANSITIONS = """
return [...document.querySelectorAll("#transitions tr[data-model]")].map((r) => ({
  model: r.dataset.model, version: Number(r.dataset.version), state: r.dataset.state,
  text: r.textContent,
}));
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory, model_builder) -> Iterator[tuple[DaemonProcess, Path]]:
    """One daemon for the page tests: the demo model (versions 1 and 2, labelled) and
    `live`, a batching model that the tests publish to."""
    workdir = tmp_path_factory.mktemp("operator-page")
    repo = workdir / "repo"
    model_builder.publish(repo / "half_plus_two", 1, intercept=2.0)
    model_builder.publish(repo / "half_plus_two", 2, intercept=3.0)
    model_builder.publish(repo / "live", 1)
    daemon = DaemonProcess(workdir, config(workdir, [
        {"name": "half_plus_two", "base_path": str(repo / "half_plus_two"),
         "version_policy": {"all": {}}, "version_labels": {"stable": 1, "canary": 2}},
        {"name": "live", "base_path": str(repo / "live"),
         "batching": {"max_batch_size": 8, "num_batch_threads": 1}},
    ])).start()
    try:
        daemon.wait_for_states("half_plus_two", {1: "AVAILABLE", 2: "AVAILABLE"})
        daemon.wait_for_states("live", {1: "AVAILABLE"})
        yield daemon, repo
    finally:
        assert daemon.stop() == 0, daemon.log()[-4000:]


def open_page(browser: Browser, daemon: DaemonProcess) -> None:
    assert daemon.client is not None
    browser.open_operator_page(str(daemon.client.base_url))


def card(browser: Browser, model: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = browser.driver.execute_script(_CARD, model)
    return found


def states(browser: Browser, model: str) -> dict[int, str]:
    found = card(browser, model)
    return {v["version"]: v["state"] for v in found["versions"]} if found else {}


def test_the_page_loads_cleanly_and_shows_the_demo_models_versions(served, browser):
    daemon, _ = served
    open_page(browser, daemon)
    demo = browser.wait_for(
        lambda _: (c := card(browser, "half_plus_two")) and len(c["versions"]) == 2 and c,
        10, "the demo model's two versions",
    )
    assert [(v["version"], v["state"], v["labels"]) for v in demo["versions"]] == [
        (2, "AVAILABLE", ["canary"]), (1, "AVAILABLE", ["stable"]),
    ]
    assert str(served[1] / "half_plus_two") in demo["text"]
    assert demo["stats"]["Serving"] == "2"
    assert demo["stats"]["Queue"] == "off"
    assert card(browser, "live")["stats"]["Queue"] == "0"
    loaded = browser.driver.execute_script(_TRANSITIONS)
    assert {(t["model"], t["version"], t["state"]) for t in loaded} >= {
        ("half_plus_two", 1, "AVAILABLE"), ("half_plus_two", 2, "AVAILABLE"), ("live", 1, "AVAILABLE"),
    }
    assert browser.driver.title == "modelwatch"
    assert browser.console_errors() == []


def test_the_page_follows_a_new_version_and_a_corrupt_one_by_itself(served, browser, model_builder):
    daemon, repo = served
    open_page(browser, daemon)
    browser.wait_for(lambda _: states(browser, "live").get(1) == "AVAILABLE", 10, "live 1 shown")
    # A mark on this very document: it is still there only if the page never reloaded.
    browser.driver.execute_script("window.modelwatchTestMark = 'same page';")

    model_builder.publish(repo / "live", 2)
    browser.wait_for(
        lambda _: states(browser, "live") == {2: "AVAILABLE", 1: "END"}, 60,
        "the page to show live 2 AVAILABLE and 1 END",
    )
    assert any(
        t["model"] == "live" and t["version"] == 2 and t["state"] == "AVAILABLE"
        and "LOADING" in t["text"]
        for t in browser.driver.execute_script(_TRANSITIONS)
    )

    broken = model_builder.publish(repo / "live", 3)
    (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    failed = browser.wait_for(
        lambda _: next(
            (v for v in (card(browser, "live") or {"versions": []})["versions"]
             if v["version"] == 3 and v["error"]), None,
        ),
        60, "the page to show live 3's error",
    )
    assert failed["state"] == "END"
    assert "DATA_LOSS" in failed["error"] and "cannot parse the SavedModel" in failed["error"]
    assert str(broken) in failed["error"]
    assert states(browser, "live")[2] == "AVAILABLE"  # the old version keeps serving
    assert any(
        t["model"] == "live" and t["version"] == 3 and "cannot parse the SavedModel" in t["text"]
        for t in browser.driver.execute_script(_TRANSITIONS)
    )
    assert browser.driver.execute_script("return window.modelwatchTestMark") == "same page"

    # Traffic shows up as rates and p99 within a tick or two, still without a reload.
    for _ in range(40):
        assert daemon.answer("half_plus_two/labels/canary") == 4.0
        assert daemon.answer("live") == 3.0
    browser.wait_for(
        lambda _: card(browser, "live")["stats"]["p99"] != "—"
        and card(browser, "half_plus_two")["stats"]["Requests/s"] not in ("—", "0.0"),
        15, "request rates and p99 on the page",
    )
    assert browser.driver.execute_script("return window.modelwatchTestMark") == "same page"
    assert browser.console_errors() == []
    save_screenshot(browser)


def save_screenshot(browser: Browser) -> None:
    """Check the screenshot is a picture, and keep it where MODELWATCH_SCREENSHOT says."""
    png = browser.driver.get_screenshot_as_png()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    target = os.environ.get("MODELWATCH_SCREENSHOT")
    if target:
        path = Path(target) if Path(target).is_absolute() else ROOT / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)


def test_a_stop_ends_open_event_streams_instead_of_waiting_for_them(tmp_path, model_builder):
    model_builder.publish(tmp_path / "repo" / "m", 1)
    daemon = DaemonProcess(
        tmp_path, config(tmp_path, [{"name": "m", "base_path": str(tmp_path / "repo" / "m")}])
    ).start()
    try:
        daemon.wait_for_states("m", {1: "AVAILABLE"})
        assert daemon.client is not None
        url = f"{daemon.client.base_url}/modelwatch/ui/events"
        events: list[bytes] = []
        ended = threading.Event()

        def watch() -> None:
            try:
                with httpx.stream("GET", url, timeout=60) as response:
                    for line in response.iter_lines():
                        if line.startswith("event: "):
                            events.append(line.encode())
            except httpx.HTTPError:
                pass  # a cut connection is an end too; the exit time below is the point
            ended.set()

        watcher = threading.Thread(target=watch, name="test-event-stream")
        watcher.start()
        wait_until(lambda: len(events) >= 2, 10, "two snapshots on the stream")
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert ended.wait(10), "the stream stayed open after SIGTERM"
        code = daemon.stop(timeout=20)
        took = time.monotonic() - started
        watcher.join(5)
        assert code == 0, daemon.log()[-4000:]
        assert took < 10, f"the daemon took {took:.1f}s to stop with a page open"
    finally:
        daemon.stop()


def test_streams_past_the_cap_are_refused_and_all_share_one_snapshot(tmp_path, model_builder):
    model_builder.publish(tmp_path / "repo" / "m", 1)
    settings = config(tmp_path, [{"name": "m", "base_path": str(tmp_path / "repo" / "m")}])
    settings["server"]["max_event_streams"] = 3
    daemon = DaemonProcess(tmp_path, settings).start()
    streams: list[socket.socket] = []
    try:
        daemon.wait_for_states("m", {1: "AVAILABLE"})
        assert daemon.client is not None
        port = daemon.client.base_url.port
        assert port is not None
        streams.extend(raw_stream(port) for _ in range(3))
        seen = [set(read_frames(sock, 2)) for sock in streams]
        assert set.intersection(*seen), "the streams were sent different snapshots"
        refused = daemon.client.get("/modelwatch/ui/events")
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "30"
        assert "server.max_event_streams" in refused.json()["error"]
        metrics = daemon.client.get("/monitoring/prometheus/metrics").text
        assert 'modelwatch_refused_total{reason="event_streams",transport="rest"} 1.0' in metrics
        assert daemon.client.get("/modelwatch/ui/snapshot").status_code == 200
        # A stop ends every open stream at once.
        daemon.signal(signal.SIGTERM)
        for sock in streams:
            with pytest.raises(AssertionError, match="the stream ended"):
                read_frames(sock, 1_000)
        assert daemon.stop(timeout=20) == 0, daemon.log()[-4000:]
    finally:
        for sock in streams:
            sock.close()
        daemon.stop()


def test_the_page_is_off_when_the_config_says_so(tmp_path, model_builder):
    model_builder.publish(tmp_path / "repo" / "m", 1)
    settings = config(tmp_path, [{"name": "m", "base_path": str(tmp_path / "repo" / "m")}])
    settings["server"]["operator_page"] = False
    daemon = DaemonProcess(tmp_path, settings).start()
    try:
        assert daemon.client is not None
        for path in ("/modelwatch/ui", "/modelwatch/ui/events"):
            response = daemon.client.get(path)
            assert response.status_code == 404, path
            assert "server.operator_page" in response.json()["error"]
        assert daemon.client.get("/modelwatch/models").status_code == 200
    finally:
        assert daemon.stop() == 0, daemon.log()[-4000:]
