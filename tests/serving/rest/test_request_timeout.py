"""RequestTimeout: calls expire in the order they started, once each, and a finished call
never does; one timer at a time per event loop."""

from __future__ import annotations

import asyncio

from loader.serving.rest.request_timeout import RequestTimeout


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
