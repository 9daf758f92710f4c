"""The memory accounting as tables: estimates, learning, reservations, decisions, eviction order."""

from __future__ import annotations

import pytest

from loader.manager.memory import (
    DEFAULT_FACTOR,
    MAX_SCALE,
    MIB,
    VERSION_OVERHEAD_BYTES,
    Admit,
    Candidate,
    Evict,
    MemoryBudget,
    Refuse,
    Wait,
    eviction_order,
)

LIMIT = 1000 * MIB


def test_a_model_never_loaded_is_estimated_from_its_files():
    budget = MemoryBudget(LIMIT)
    assert budget.estimate("m", 0) == VERSION_OVERHEAD_BYTES
    assert budget.estimate("m", 100 * MIB) == VERSION_OVERHEAD_BYTES + DEFAULT_FACTOR * 100 * MIB
    assert budget.scale("m") is None


def test_a_measured_load_teaches_the_model_scale_and_only_that_model():
    budget = MemoryBudget(LIMIT)
    prior = budget.prior_estimate(100 * MIB)
    budget.learn("m", 100 * MIB, prior // 2)  # it took half of what was expected
    assert budget.scale("m") == pytest.approx(0.5, rel=1e-6)
    assert budget.estimate("m", 100 * MIB) == pytest.approx(prior // 2, rel=1e-6)
    assert budget.estimate("other", 100 * MIB) == pytest.approx(prior // 2, rel=1e-6)  # the mean
    budget.learn("big", 100 * MIB, prior * 2)
    assert budget.estimate("other", 100 * MIB) == pytest.approx(prior * 1.25, rel=1e-6)
    budget.forget("big")
    budget.learn("m", 100 * MIB, prior)  # then exactly as expected: the two are averaged
    assert budget.scale("m") == pytest.approx(0.75, rel=1e-6)
    budget.forget("m")
    assert budget.scale("m") is None


@pytest.mark.parametrize("measured, scale", [(0, 0.25), (10**15, MAX_SCALE)])
def test_an_implausible_measurement_is_clamped(measured, scale):
    budget = MemoryBudget(LIMIT)
    budget.learn("m", MIB, measured)
    assert budget.scale("m") == scale


@pytest.mark.parametrize(
    "resident, reserved, estimate, freeing, candidates, expected",
    [
        # fits
        (500, 0, 400, 0, [], Admit()),
        (500, 0, 500, 0, [], Admit()),  # exactly at the limit
        # loads running count at their whole estimate
        (500, 300, 400, 0, [], Wait(0)),  # ... and are waited for before refusing
        # unloads under way will free enough: wait for them
        (900, 0, 300, 250, [], Wait(250)),
        # evict the least recently used first, only as many as needed
        (900, 0, 300, 0, [("b", 2.0, 150), ("a", 1.0, 150), ("c", 3.0, 150)], Evict(("a", "b"), 300)),
        (900, 0, 200, 0, [("b", 2.0, 150), ("a", 1.0, 150)], Evict(("a",), 150)),
        # unloads under way count towards what eviction must free
        (900, 0, 300, 100, [("a", 1.0, 150), ("b", 2.0, 150)], Evict(("a",), 150)),
        # even evicting every candidate would not make room
        (900, 0, 600, 0, [("a", 1.0, 150), ("b", 2.0, 150)], "refuse"),
        # ... unless unloads in motion may change the figures: wait for them first
        (900, 0, 600, 100, [], Wait(100)),
        (100, 0, 1200, 0, [], "refuse"),
    ],
)
def test_decisions(resident, reserved, estimate, freeing, candidates, expected):
    budget = MemoryBudget(LIMIT)
    if reserved:
        budget.reserve("running", 1, reserved * MIB)
    decision = budget.decide(
        "{name: m version: 2}", estimate * MIB, resident * MIB, freeing_bytes=freeing * MIB,
        candidates=[Candidate(m, t, b * MIB) for m, t, b in candidates],
    )
    if expected == "refuse":
        assert isinstance(decision, Refuse)
        # the numbers are in the message, as the version's status shows it
        assert "{name: m version: 2}" in decision.message
        assert f"{float(estimate):.1f} MiB" in decision.message
        assert f"{float(resident):.1f} MiB is resident" in decision.message
        assert budget.reserved_bytes == 0  # never refused while loads run
        assert "1000.0 MiB" in decision.message and "loading.memory_limit_bytes" in decision.message
    elif isinstance(expected, Evict):
        assert decision == Evict(expected.models, expected.freed_bytes * MIB)
    elif isinstance(expected, Wait):
        assert decision == Wait(expected.freeing_bytes * MIB)
    else:
        assert decision == expected


def test_no_limit_admits_everything():
    assert MemoryBudget(None).decide("x", 10**15, 10**15) == Admit()


def test_reservations_are_held_until_released():
    budget = MemoryBudget(LIMIT)
    budget.reserve("a", 1, 300 * MIB)
    budget.reserve("b", 1, 200 * MIB)
    assert (budget.reserved_bytes, budget.loads_running) == (500 * MIB, 2)
    assert budget.decide("c", 400 * MIB, 200 * MIB) == Wait(0)
    budget.release("a", 1)
    budget.release("a", 1)  # twice is harmless
    assert (budget.reserved_bytes, budget.loads_running) == (200 * MIB, 1)
    assert budget.decide("c", 400 * MIB, 200 * MIB) == Admit()


def test_eviction_order_is_least_recently_used_first_then_by_name():
    order = eviction_order([
        Candidate("c", 5.0, 1), Candidate("b", 1.0, 1), Candidate("a", 5.0, 1),
        Candidate("d", 0.5, 1),
    ])
    assert [c.model for c in order] == ["d", "b", "a", "c"]
