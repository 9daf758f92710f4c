"""The cluster's balancer: a real HAProxy in front of two tiny HTTP servers standing in for
replicas' REST ports (no Ray, no TensorFlow)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import psutil
import pytest

from loader.cluster.balancer import Balancer, Listen, haproxy_binary, haproxy_threads
from loader.cluster.messages import Endpoint
from tests.daemon_process import free_port, wait_until

try:
    haproxy_binary()
except RuntimeError as exc:
    pytest.skip(str(exc), allow_module_level=True)


class Replica(ThreadingHTTPServer):
    """Answers every GET with its name (and /healthz with 200)."""

    def __init__(self, name: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's name
                body = name.encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.name = name
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.server_address[1], 1)

    def close(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    started = [Replica("a"), Replica("b"), Replica("c")]
    yield started
    for replica in started:
        replica.close()


def test_requests_are_balanced_over_the_replicas_it_is_given_and_follow_a_new_set(
    replicas: list[Replica],
) -> None:
    a, b, c = replicas
    balancer = Balancer(Listen("127.0.0.1", free_port(), 0))
    balancer.start()
    try:
        url = f"http://127.0.0.1:{balancer.listen.rest_port}/v1/models/m"
        with httpx.Client() as http:  # one keep-alive connection: balanced per request
            assert http.get(url, timeout=10).status_code == 503  # no replica yet
            balancer.update({"a#1": a.endpoint, "b#1": b.endpoint})

            def answers(expected: set[str]) -> bool:
                return {http.get(url, timeout=10).text for _ in range(8)} == expected

            wait_until(lambda: answers({"a", "b"}), 30, "requests to reach a and b")
            balancer.update({})  # an empty set (a watcher restarting) changes nothing
            assert answers({"a", "b"})
            balancer.update({"b#1": b.endpoint, "c#1": c.endpoint})
            wait_until(lambda: answers({"b", "c"}), 30, "requests to follow the new set")
            c.close()  # dead before any new set says so: HAProxy's checks and retries
            wait_until(lambda: answers({"b"}), 30, "the dead replica to be out of rotation")
        assert balancer.running()
    finally:
        balancer.stop()
        balancer.join(30)
    assert not balancer.running()  # what Serve's health check of the balancer reads


@pytest.mark.parametrize(("setting", "threads"), [(None, 1), ("2", 2)])
def test_haproxy_runs_one_thread_unless_rays_setting_says_otherwise(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, threads: int,
) -> None:
    if setting is None:
        monkeypatch.delenv("RAY_SERVE_HAPROXY_NBTHREAD", raising=False)
    else:
        monkeypatch.setenv("RAY_SERVE_HAPROXY_NBTHREAD", setting)
    balancer = Balancer(Listen("127.0.0.1", free_port(), 0))
    balancer.start()
    try:
        assert balancer.pid is not None
        workers = psutil.Process(balancer.pid).children()
        assert [worker.num_threads() for worker in workers] == [threads]
    finally:
        balancer.stop()
        balancer.join(30)


@pytest.mark.parametrize("setting", ["0", "two"])
def test_a_wrong_thread_setting_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, setting: str,
) -> None:
    monkeypatch.setenv("RAY_SERVE_HAPROXY_NBTHREAD", setting)
    with pytest.raises(RuntimeError, match="RAY_SERVE_HAPROXY_NBTHREAD"):
        haproxy_threads()


def test_a_set_given_while_haproxy_still_reloads_for_the_last_one_is_not_lost(
    replicas: list[Replica],
) -> None:
    a, b, c = replicas
    one = {"a#1": a.endpoint}
    balancer = Balancer(Listen("127.0.0.1", free_port(), 0))
    balancer.start()
    try:
        url = f"http://127.0.0.1:{balancer.listen.rest_port}/v1/models/m"
        with httpx.Client() as http:

            def follows(backends: dict[str, Endpoint], expected: set[str]) -> bool:
                balancer.update(backends)  # as the balancer's deployment does, every second
                return {http.get(url, timeout=10).text for _ in range(8)} == expected

            # Two sets a few milliseconds apart: the second reload is signalled while
            # HAProxy's master is still busy with the first (two replicas starting at once).
            for gap in (0.005, 0.01, 0.015, 0.02):
                wait_until(lambda: follows(one, {"a"}), 30, "requests to reach a alone",
                           interval=0.2)
                balancer.update({**one, "b#1": b.endpoint})
                time.sleep(gap)  # the gap between the sets is the case itself, not a wait
                last = {**one, "c#1": c.endpoint}
                balancer.update(last)
                wait_until(lambda last=last: follows(last, {"a", "c"}), 30,
                           f"requests to reach a and c ({gap * 1000:g} ms after a and b)",
                           interval=0.2)
    finally:
        balancer.stop()
        balancer.join(30)
