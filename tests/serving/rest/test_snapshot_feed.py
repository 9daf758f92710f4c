"""The operator page's shared snapshot: built once per tick for any number of streams,
reused while fresh, built once for callers who ask together, and only while a stream is
open; its cap on streams."""

from __future__ import annotations

import asyncio
import threading

from loader.serving.rest.snapshot_feed import SnapshotFeed


class Counted:
    """A snapshot builder that counts its builds (and can be held, to ask together)."""

    def __init__(self) -> None:
        self.builds = 0
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self) -> bytes:
        self.entered.set()
        assert self.gate.wait(10)
        self.builds += 1
        return b'{"build": %d}' % self.builds


def test_fifty_streams_share_one_build_a_tick() -> None:
    build = Counted()

    async def scenario() -> list[list[bytes]]:
        feed = SnapshotFeed(build, interval_seconds=0.05, max_streams=50)

        async def stream() -> list[bytes]:
            got, sequence = [], 0
            try:
                while len(got) < 3:
                    frame = await feed.after(sequence)
                    assert frame is not None
                    sequence = frame.sequence
                    got.append(frame.event)
                return got
            finally:
                feed.leave()

        assert all(feed.join() for _ in range(50))
        assert not feed.join()  # the cap
        received = await asyncio.gather(*(stream() for _ in range(50)))
        await asyncio.wait_for(feed.finished(), 10)  # none is open: the ticker ends
        assert not feed.ticking
        return received

    received = asyncio.run(scenario())
    assert all(r == received[0] for r in received)  # the same bytes, for every stream
    assert received[0][0].startswith(b"event: snapshot\ndata: {")
    assert build.builds <= 3 + 1  # three ticks (a fourth may have been under way)


def test_the_snapshot_is_reused_while_fresh_and_built_once_for_callers_together() -> None:
    build = Counted()
    now = [100.0]

    async def scenario() -> None:
        feed = SnapshotFeed(build, interval_seconds=1.0, max_streams=1, clock=lambda: now[0])
        assert (await feed.latest()).json == b'{"build": 1}'
        now[0] += 0.9
        assert (await feed.latest()).json == b'{"build": 1}'  # under a second old
        now[0] += 0.2
        build.gate.clear()  # hold the build so that ten callers ask while it runs
        build.entered.clear()
        waiting = [asyncio.ensure_future(feed.latest()) for _ in range(10)]
        assert await asyncio.to_thread(build.entered.wait, 10)  # they all asked first
        build.gate.set()
        frames = await asyncio.gather(*waiting)
        assert {f.json for f in frames} == {b'{"build": 2}'}
        assert not feed.ticking  # no stream was ever open: nothing ticks

    asyncio.run(scenario())
    assert build.builds == 2


def test_every_tick_builds_a_new_snapshot_for_the_streams() -> None:
    # The clock stands still: every frame looks fresh to `latest`, yet each tick of the
    # streams' ticker must build a new one (it once reused the last tick's every other).
    async def scenario() -> int:
        feed = SnapshotFeed(Counted(), interval_seconds=0.02, max_streams=1, clock=lambda: 0.0)
        assert feed.join()
        sequence = 0
        for _ in range(3):
            frame = await asyncio.wait_for(feed.after(sequence), 10)
            assert frame is not None
            sequence = frame.sequence
        feed.leave()
        await asyncio.wait_for(feed.finished(), 10)
        return sequence

    assert asyncio.run(scenario()) == 3


def test_a_closed_feed_ends_its_streams_and_takes_no_more() -> None:
    async def scenario() -> None:
        feed = SnapshotFeed(Counted(), interval_seconds=0.05, max_streams=4)
        assert feed.join()
        first = await feed.after(0)
        assert first is not None
        waiting = asyncio.ensure_future(feed.after(first.sequence + 1000))
        # From another thread, as the daemon's stop does.
        closer = threading.Thread(target=feed.close)
        closer.start()
        assert await asyncio.wait_for(waiting, 10) is None
        closer.join()
        feed.leave()
        assert not feed.join()

    asyncio.run(scenario())
