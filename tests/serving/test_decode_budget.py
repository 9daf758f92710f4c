"""DecodeBudget: reservations, waiting for room, and the two refusals."""

from __future__ import annotations

import asyncio
import threading

import pytest

from loader.serving.decode_budget import BudgetBusy, BudgetNeverFits, DecodeBudget


def test_reservations_fit_within_the_limit_and_come_back() -> None:
    budget = DecodeBudget(100)
    assert budget.try_reserve(60) and not budget.try_reserve(41) and budget.try_reserve(40)
    assert budget.used == 100
    assert budget.resize(60, 10) == 10 and budget.used == 50
    assert budget.resize(10, 99) == 10  # never grows
    budget.release(10)
    budget.release(40)
    assert budget.used == 0


def test_a_reservation_waits_for_room_then_is_refused() -> None:
    budget = DecodeBudget(100, wait_seconds=5)

    async def scenario() -> int:
        assert budget.try_reserve(100)
        waiting = asyncio.ensure_future(budget.reserve(30, "this request"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        budget.release(100)
        return await asyncio.wait_for(waiting, 5)

    assert asyncio.run(scenario()) == 30 and budget.used == 30


def test_a_reservation_that_finds_no_room_in_time_is_busy() -> None:
    budget = DecodeBudget(100, wait_seconds=0.02)
    assert budget.try_reserve(30)
    with pytest.raises(BudgetBusy, match="this request needs 80 bytes.*and 30 are taken"):
        asyncio.run(budget.reserve(80, "this request"))
    assert budget.used == 30


def test_a_reservation_larger_than_the_limit_never_fits() -> None:
    budget = DecodeBudget(100)
    with pytest.raises(BudgetNeverFits, match="this request would take 101 bytes to decode"):
        asyncio.run(budget.reserve(101, "this request"))
    assert budget.used == 0


def test_waiters_are_served_in_order_and_one_giving_up_lets_the_next_in() -> None:
    budget = DecodeBudget(100, wait_seconds=5)

    async def scenario() -> list[str]:
        assert budget.try_reserve(70)
        order: list[str] = []

        async def wait(name: str, nbytes: int) -> None:
            await budget.reserve(nbytes, name)
            order.append(name)

        big = asyncio.ensure_future(wait("big", 60))
        await asyncio.sleep(0.01)
        small = asyncio.ensure_future(wait("small", 20))  # would fit, but queues behind
        await asyncio.sleep(0.05)
        assert order == [] and not budget.try_reserve(1)
        big.cancel()  # the client left: the one behind it is served
        await asyncio.wait_for(small, 5)
        order.append(f"used {budget.used}")
        return order

    assert asyncio.run(scenario()) == ["small", "used 90"]


def test_a_release_on_another_thread_wakes_a_waiter_on_its_loop() -> None:
    budget = DecodeBudget(100, wait_seconds=5)
    assert budget.try_reserve(100)

    async def scenario() -> int:
        waiting = asyncio.ensure_future(budget.reserve(50, "this request"))
        await asyncio.sleep(0.01)
        threading.Timer(0.05, budget.release, (100,)).start()
        return await asyncio.wait_for(waiting, 5)

    assert asyncio.run(scenario()) == 50 and budget.used == 50


def test_while_used_hears_when_the_first_bytes_are_taken_and_the_last_given_back() -> None:
    heard: list[bool] = []
    budget = DecodeBudget(100, wait_seconds=5, while_used=heard.append)
    assert budget.try_reserve(60) and budget.try_reserve(20)
    budget.release(20)
    assert heard == [True]  # still in use: nothing more said
    assert budget.resize(60, 10) == 10
    budget.release(10)
    assert heard == [True, False]

    async def granted_to_a_waiter() -> None:
        assert budget.try_reserve(100)
        waiting = asyncio.ensure_future(budget.reserve(30, "this request"))
        await asyncio.sleep(0.05)
        budget.release(100)  # handed straight to the waiter: the budget never idles
        await asyncio.wait_for(waiting, 5)
        budget.release(30)

    asyncio.run(granted_to_a_waiter())
    assert heard == [True, False, True, False]
