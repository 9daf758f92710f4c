"""IdleDeadlines: one timer cancelling the tasks that stopped making progress."""

from __future__ import annotations

import asyncio

import pytest

from loader.serving.rest.idle_deadlines import IdleDeadlines


async def _stalled(deadlines: IdleDeadlines, never: asyncio.Event) -> str:
    task = asyncio.current_task()
    assert task is not None
    try:
        deadlines.watch(task, asyncio.get_running_loop())
        await never.wait()
        return "woke"
    except asyncio.CancelledError:
        if not deadlines.expired(task):
            raise
        return "expired"
    finally:
        deadlines.forget(task)


def test_a_task_that_stalls_is_cancelled_after_its_deadline_and_told_so():
    async def main() -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        deadlines = IdleDeadlines(0.2)
        started = loop.time()
        outcome = await asyncio.wait_for(_stalled(deadlines, asyncio.Event()), 10)
        return outcome, loop.time() - started

    outcome, elapsed = asyncio.run(main())
    assert outcome == "expired"
    assert 0.2 <= elapsed < 0.2 + 0.05 + 2  # at most one resolution (0.05 s) late, plus slack


def test_progress_moves_the_deadline_and_a_forgotten_task_is_left_alone():
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        deadlines = IdleDeadlines(1.0)
        task = asyncio.current_task()
        assert task is not None
        seen = []
        for _ in range(6):  # 6 x 0.25 s: longer than the deadline, but never idle that long
            deadlines.watch(task, loop)
            await asyncio.sleep(0.25)
            seen.append("step")
        deadlines.forget(task)
        await asyncio.sleep(1.5)  # past any deadline, and nobody cancels it
        seen.append("after")
        return seen

    assert asyncio.run(main()) == ["step"] * 6 + ["after"]


def test_a_cancellation_that_is_not_the_deadlines_stays_a_cancellation():
    async def main() -> None:
        deadlines = IdleDeadlines(30)
        task = asyncio.create_task(_stalled(deadlines, asyncio.Event()))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not deadlines._deadlines and not deadlines._expired  # nothing left behind

    asyncio.run(main())


def test_one_table_serves_a_second_event_loop():
    # A timer left on a finished loop must not keep the next loop's deadlines from firing.
    deadlines = IdleDeadlines(0.2)

    async def leave_a_timer() -> None:
        task = asyncio.current_task()
        assert task is not None
        deadlines.watch(task, asyncio.get_running_loop())

    asyncio.run(leave_a_timer())
    assert asyncio.run(asyncio.wait_for(_stalled(deadlines, asyncio.Event()), 10)) == "expired"
