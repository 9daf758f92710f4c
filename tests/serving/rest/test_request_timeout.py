"""RequestTimeout: calls expire in the order they started, once each, and a finished call
never does; one timer at a time per event loop. And the timeout on both REST paths, over
real sockets: 504 with TF Serving's text, for a run under way and for one still queued."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import orjson
import pytest

from loader.serving.rest.request_timeout import RequestTimeout
from tests.servables.test_batching import wait_until
from tests.serving.rest.test_fast_path import (
    ANSWER,
    BODY,
    PREDICT,
    Reader,
    Stack,
    _stack,
    request,
)


class Call:
    def __init__(self, name: str, expired: list[str]) -> None:
        self.name, self._expired = name, expired

    def expire(self) -> None:
        self._expired.append(self.name)


async def until(condition: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.005)


def test_calls_expire_in_order_and_a_finished_one_never() -> None:
    expired: list[str] = []
    timeout = RequestTimeout(0.05)

    async def main() -> None:
        first, second, third = (Call(n, expired) for n in ("first", "second", "third"))
        assert timeout.start(first) is not None
        timeout.start(second)
        timeout.finish(second)  # answered in time
        await until(lambda: expired == ["first"])
        timeout.start(third)  # after the timer fired: it arms a new one
        await until(lambda: expired == ["first", "third"])
        timeout.finish(first)  # answered after it expired: nothing happens

    asyncio.run(main())
    assert expired == ["first", "third"]


def test_without_a_timeout_nothing_is_timed() -> None:
    timeout = RequestTimeout(None)

    async def main() -> None:
        call = Call("c", [])
        assert timeout.start(call) is None
        timeout.finish(call)

    asyncio.run(main())


@pytest.fixture(params=["fast", "asgi"])
def timed(request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield from _stack(request.param, request_timeout_seconds=0.2)


def test_both_paths_answer_504_to_a_run_past_the_timeout_and_to_one_queued_behind_it(
    timed: Stack,
) -> None:
    gate = timed.fake.hold_next_call()  # the only batch thread's run waits at the gate
    with timed.connect() as running, timed.connect() as queued:
        try:
            running.sendall(request(PREDICT, BODY))
            assert gate.entered.wait(10)
            queued.sendall(request(PREDICT, BODY))
            for sock in (running, queued):
                status, _, body = Reader(sock).response()
                assert (status, orjson.loads(body)) == (
                    504, {"error": "Timed out waiting for notification"}
                )
        finally:
            gate.open()
    # The queued request was dropped when the thread came to it: the model ran once.
    wait_until(lambda: timed.servable.queued == 0)
    assert len(timed.fake.calls) == 1
    with timed.connect() as sock:  # and the server answers on
        sock.sendall(request(PREDICT, BODY))
        status, _, body = Reader(sock).response()
        assert (status, orjson.loads(body)) == (200, ANSWER)
    assert len(timed.fake.calls) == 2
