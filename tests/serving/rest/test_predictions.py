"""The prediction routes' decode budget, over both ways a request reaches them (the fast
path and ASGI), with real sockets and a batching fake: large bodies reserve what parsing
them may take, wait for room, and are refused cleanly when there is none."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import orjson
import pytest

from loader.base import VersionRef
from loader.config.schema import BatchingConfig
from loader.manager.manager import Manager, ModelSpec
from loader.servables.batching import BatchingServable
from loader.serving.dataplane import DataPlane
from loader.serving.decode_budget import DecodeBudget
from loader.serving.metrics import Metrics
from loader.serving.rest.app import RestApi
from loader.serving.rest.json_slices import SLICED_DECODE_FACTOR, whole_parse_bytes
from loader.serving.rest.predictions import INLINE_BODY_BYTES
from loader.serving.rest.server import RestServer, bind
from policies.selection import All
from policies.transition import availability_preserving
from tests.daemon_process import wait_until
from tests.fakes import refs
from tests.servables.test_batching import RecordingServable
from tests.serving.rest.test_fast_path import Reader

BUDGET = 1 << 20


@dataclass
class Stack:
    client: httpx.Client
    budget: DecodeBudget
    metrics: Metrics
    port: int


@pytest.fixture(params=["fast", "asgi"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield from _stack(request.param)


@pytest.fixture
def fast_stack() -> Iterator[Stack]:
    yield from _stack("fast")


def _stack(path: str) -> Iterator[Stack]:
    fake = RecordingServable()

    def load(model: str, version: int, ref: VersionRef) -> BatchingServable:
        return BatchingServable(fake, BatchingConfig(num_batch_threads=1), name=model)

    manager = Manager(load, load_retries=0)
    manager.set_models([ModelSpec("m", All(), availability_preserving)])
    manager.on_versions("m", refs(1))
    assert manager.wait_until(lambda: manager.status("m")[0].state == "AVAILABLE", 10)
    metrics, budget = Metrics(), DecodeBudget(BUDGET, wait_seconds=0.05)
    api = RestApi(DataPlane(manager), metrics, max_request_bytes=4 << 20, decode_budget=budget)
    server = RestServer(api.app, bind("127.0.0.1", 0), fast_path=path == "fast")
    server.start()
    assert server.wait_started(10)
    client = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30)
    yield Stack(client, budget, metrics, server.port)
    client.close()
    server.stop()
    server.join(10)
    manager.stop()
    manager.join()


def body(values: int) -> bytes:
    return orjson.dumps({"signature_name": "echo", "instances": [[1.5] * values]})


def named_rows(values: int) -> bytes:
    """Rows of named inputs: objects, which are parsed whole (never in slices)."""
    return orjson.dumps({"signature_name": "echo", "instances": [{"x": 1.5}] * values})


def refused(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value(
        "modelwatch_refused_total", {"transport": "rest", "reason": "decode_budget"}
    )


def test_a_large_body_reserves_while_it_is_decoded_and_gives_it_back(stack: Stack) -> None:
    large = body(5000)
    assert len(large) > INLINE_BODY_BYTES and len(large) * SLICED_DECODE_FACTOR < BUDGET
    answer = stack.client.post("/v1/models/m:predict", content=large)
    assert answer.status_code == 200 and len(answer.json()["predictions"][0]) == 5000
    assert stack.budget.used == 0


def test_an_array_of_numbers_reserves_what_slices_take_not_a_whole_parse(stack: Stack) -> None:
    numbers = body(40_000)  # 160 KB: as Python objects (a whole parse) past the budget
    assert whole_parse_bytes(numbers) > BUDGET > len(numbers) * SLICED_DECODE_FACTOR
    answer = stack.client.post("/v1/models/m:predict", content=numbers)
    assert answer.status_code == 200 and len(answer.json()["predictions"][0]) == 40_000
    assert stack.budget.used == 0 and refused(stack.metrics) is None


def test_a_large_body_waits_for_room_then_gets_429(stack: Stack) -> None:
    assert stack.budget.try_reserve(BUDGET)  # other requests hold all of it
    try:
        answer = stack.client.post("/v1/models/m:predict", content=body(5000))
        assert answer.status_code == 429
        assert answer.json()["error"].startswith("the server is busy decoding other requests")
        answer = stack.client.post("/v1/models/m:regress", content=body(5000))
        assert answer.status_code == 429
        # Small bodies take no part in the budget.
        assert stack.client.post("/v1/models/m:predict", content=body(2)).status_code == 200
    finally:
        stack.budget.release(BUDGET)
    assert refused(stack.metrics) == 2
    assert stack.metrics.registry.get_sample_value("modelwatch_requests_total", {
        "model": "m", "api": "predict", "transport": "rest", "status": "RESOURCE_EXHAUSTED",
    }) == 1
    assert stack.client.post("/v1/models/m:predict", content=body(5000)).status_code == 200


def test_a_body_that_could_never_fit_gets_413_at_once(stack: Stack) -> None:
    huge = named_rows(20_000)
    needed = whole_parse_bytes(huge)
    assert needed > BUDGET
    answer = stack.client.post("/v1/models/m:predict", content=huge)
    assert answer.status_code == 413
    assert answer.json()["error"] == (
        f"a JSON body of {len(huge)} bytes, parsed whole, would take {needed} bytes to "
        f"decode, more than server.max_decoding_bytes ({BUDGET})"
    )
    assert refused(stack.metrics) == 1 and stack.budget.used == 0


def test_a_large_body_reserves_before_it_is_read_and_one_without_room_is_refused_unread(
    fast_stack: Stack,
) -> None:
    # Many connections could each hold a 64 MiB body while it waited for the budget to
    # refuse it: a large body still arriving reserves its declared bytes first, with
    # reading paused, and one with no room is answered before its bytes are read.
    large = body(20_000)
    head = b"POST /v1/models/m:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n"
    small = body(2)
    with socket.create_connection(("127.0.0.1", fast_stack.port), timeout=10) as sock:
        reader = Reader(sock)
        assert fast_stack.budget.try_reserve(BUDGET)  # other requests hold all of it
        try:
            sock.sendall(head % len(large))  # the head alone: no byte of the body yet
            status, _, answer = reader.response()
            assert status == 429, answer
            assert b"a JSON body of %d bytes, split and decoded in slices," % len(large) in answer
        finally:
            fast_stack.budget.release(BUDGET)
        sock.sendall(large + head % len(small) + small)  # dropped as it comes; then the next
        assert reader.response()[0] == 200

        sock.sendall(head % len(large) + large[:1000])  # room now: reserved, then read
        wait_until(lambda: fast_stack.budget.used >= len(large) * SLICED_DECODE_FACTOR, 10,
                   "the body to reserve what decoding it takes")
        sock.sendall(large[1000:])
        assert reader.response()[0] == 200
    assert fast_stack.budget.used == 0
    assert refused(fast_stack.metrics) == 1
