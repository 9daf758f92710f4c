"""DecodeBudget: reservations, waiting for room, and the two refusals."""

from __future__ import annotations

import asyncio

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
