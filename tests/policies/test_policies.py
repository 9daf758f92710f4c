"""Selection and transition policies, as tables of snapshots and expected results."""

from __future__ import annotations

import pytest

from policies.base import Load, Phase, Unload, VersionSnapshot
from policies.selection import All, Latest, Specific
from policies.transition import availability_preserving, resource_preserving

N, L, A, U, E = Phase.NEW, Phase.LOADING, Phase.AVAILABLE, Phase.UNLOADING, Phase.ERROR


@pytest.mark.parametrize(
    ("policy", "ready", "aspired"),
    [
        (Latest(1), [], set()),
        (Latest(1), [1], {1}),
        (Latest(1), [1, 3, 2], {3}),
        (Latest(2), [1, 3, 2], {3, 2}),
        (Latest(5), [1, 2], {1, 2}),
        (Latest(1), [9, 10], {10}),  # numeric order, not string order
        (All(), [], set()),
        (All(), [4, 1, 7], {1, 4, 7}),
        (Specific.of([1, 3]), [1, 2, 3], {1, 3}),
        (Specific.of([1, 3]), [2, 3], {3}),
        (Specific.of([5]), [1, 2], set()),
    ],
)
def test_selection(policy, ready, aspired):
    assert policy(ready) == aspired


def snap(*rows: tuple[int, Phase, bool]) -> list[VersionSnapshot]:
    return [VersionSnapshot(v, p, a) for v, p, a in rows]


@pytest.mark.parametrize(
    ("versions", "expected"),
    [
        # First version: load it.
        (snap((1, N, True)), (Load(1),)),
        # New version arrives: load it, keep the old one serving meanwhile.
        (snap((1, A, False), (2, N, True)), (Load(2),)),
        (snap((1, A, False), (2, L, True)), ()),
        # New version is available: now the old one leaves.
        (snap((1, A, False), (2, A, True)), (Unload(1),)),
        # New version failed: the old one keeps serving (invariant 2).
        (snap((1, A, False), (2, E, True)), ()),
        # Rollback after the newest was deleted: load the older one before unloading.
        (snap((1, N, True), (2, A, False)), (Load(1),)),
        (snap((1, A, True), (2, A, False)), (Unload(2),)),
        # Several unaspired and none aspired available: keep the highest serving.
        (snap((1, A, False), (2, A, False), (3, L, True)), (Unload(1),)),
        # Everything aspired: nothing to unload, load what is new.
        (snap((1, A, True), (2, N, True), (3, N, True)), (Load(2), Load(3))),
        (snap((1, A, True), (2, U, False)), ()),
    ],
)
def test_availability_preserving(versions, expected):
    assert availability_preserving(versions) == expected


@pytest.mark.parametrize(
    ("versions", "expected"),
    [
        (snap((1, N, True)), (Load(1),)),
        # Unload first, before loading the new version.
        (snap((1, A, False), (2, N, True)), (Unload(1),)),
        # Wait while memory is being freed.
        (snap((1, U, False), (2, N, True)), ()),
        (snap((1, L, False), (2, N, True)), ()),
        (snap((1, E, False), (2, N, True)), (Load(2),)),
        (snap((2, N, True)), (Load(2),)),
        (snap((1, A, True), (2, N, True)), (Load(2),)),
    ],
)
def test_resource_preserving(versions, expected):
    assert resource_preserving(versions) == expected


def test_phase_state_names_follow_tf_serving():
    assert [p.state_name for p in Phase] == [
        "START", "LOADING", "AVAILABLE", "UNLOADING", "END", "END"
    ]
