"""One snapshot a second for every live stream of the operator page, and a cap on streams.

Each stream used to build its own snapshot every second: 300 open streams took most of a
core and slowed every other client. Here one ticker builds the snapshot (on a worker
thread), encodes it once, and hands the same bytes to every stream; it runs only while a
stream is open. A GET of the snapshot reuses the latest if it is under `interval` old, and
builds are shared: whoever asks while one is under way waits for that one.

Everything but `close` runs on the REST server's event loop, so the counts need no lock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

log = logging.getLogger("modelwatch.rest")


@dataclass(frozen=True)
class Frame:
    """One built snapshot: its JSON, the same as a server-sent event, and its number."""

    json: bytes
    event: bytes
    sequence: int


class SnapshotFeed:
    """Builds the snapshot once per `interval_seconds` while streams are open, and lets at
    most `max_streams` of them be open at once."""

    def __init__(
        self,
        build: Callable[[], bytes],
        *,
        interval_seconds: float,
        max_streams: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._build = build
        self.interval = interval_seconds
        self.max_streams = max_streams
        self._clock = clock
        self.builds = 0  # snapshots built so far (the test's and the curious operator's)
        self.streams = 0  # streams open now
        self._frame: Frame | None = None
        self._built_at = -math.inf
        self._building: asyncio.Future[Frame] | None = None
        self._published: asyncio.Event | None = None  # set, and replaced, at each new frame
        self._ticker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    @property
    def ticking(self) -> bool:
        """Whether snapshots are being built every tick (while a stream is open)."""
        return self._ticker is not None and not self._ticker.done()

    async def finished(self) -> None:
        """Wait for the ticker to end (it does after the last stream left)."""
        if self._ticker is not None:
            await asyncio.wait([self._ticker])

    async def latest(self) -> Frame:
        """The latest frame if it is under `interval` old, else a new one."""
        if self._frame is not None and self._clock() - self._built_at < self.interval:
            return self._frame
        return await self._fresh()

    async def _fresh(self) -> Frame:
        """A new frame: the build under way if there is one, else a new build."""
        if self._building is None:
            self._building = asyncio.ensure_future(self._make())
        # Shielded: a client that hangs up must not cancel the build others wait for.
        return await asyncio.shield(self._building)

    def join(self) -> bool:
        """Count one more open stream, starting the ticker for the first; False when the
        cap is reached or the feed is closed (the stream must not start)."""
        if self.closed or self.streams >= self.max_streams:
            return False
        self.streams += 1
        if self._ticker is None or self._ticker.done():
            self._loop = asyncio.get_running_loop()
            self._ticker = self._loop.create_task(self._tick(), name="modelwatch-snapshot-feed")
        return True

    def leave(self) -> None:
        """One stream ended (the ticker stops by itself once none is left)."""
        self.streams -= 1

    async def after(self, sequence: int) -> Frame | None:
        """The first frame newer than `sequence` (0: any), waiting for it; None once the
        feed is closed."""
        while not self.closed:
            frame = self._frame
            if frame is not None and frame.sequence > sequence:
                return frame
            await self._published_event().wait()
        return None

    def close(self) -> None:
        """The server is stopping: wake every stream to end, refuse new ones (any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self.closed = True
            return
        try:
            loop.call_soon_threadsafe(self._shut)
        except RuntimeError:  # the loop closed meanwhile: its streams are gone with it
            self.closed = True

    def _shut(self) -> None:
        self.closed = True
        self._publish()
        if self._ticker is not None:
            self._ticker.cancel()

    async def _tick(self) -> None:
        while self.streams > 0 and not self.closed:
            started = self._clock()
            try:
                await self._fresh()  # not `latest`: the last tick's frame is always fresh
            except Exception:  # a bug in the view: say so, keep the streams on the last frame
                log.exception("the operator page's snapshot failed")
            await asyncio.sleep(max(0.0, started + self.interval - self._clock()))

    async def _make(self) -> Frame:
        try:
            body = await run_in_threadpool(self._build)
            self.builds += 1
            sequence = self._frame.sequence + 1 if self._frame is not None else 1
            self._frame = Frame(body, b"event: snapshot\ndata: " + body + b"\n\n", sequence)
            self._built_at = self._clock()
            self._publish()
            return self._frame
        finally:
            self._building = None

    def _published_event(self) -> asyncio.Event:
        if self._published is None:
            self._published = asyncio.Event()
        return self._published

    def _publish(self) -> None:
        event, self._published = self._published, None
        if event is not None:
            event.set()
