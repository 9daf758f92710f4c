"""The rollout's decisions, as tables of snapshots and the decision each must give."""

from __future__ import annotations

from dataclasses import replace

import pytest

from loader.cluster.rollout import (
    Bounds,
    ReplicaModel,
    Rollout,
    Stage,
    aim,
    live,
    start,
    step,
)

BOUNDS = Bounds(hold_seconds=5.0, retry_seconds=3.0, replica_timeout_seconds=15.0)
V1, V2, V12 = frozenset({1}), frozenset({2}), frozenset({1, 2})


def has(*versions: int, held: int | None = None, failed: dict[int, str] | None = None) -> ReplicaModel:
    return ReplicaModel(frozenset(versions), failed or {}, held)


LOADING = Rollout(V1, V2, Stage.LOADING, flip=10)
HOLDING = Rollout(V1, V2, Stage.HOLDING, flip=11, since=100.0)


@pytest.mark.parametrize(
    ("rollout", "replicas", "now", "stage", "routed", "flip", "blocked"),
    [
        # Steady: nothing to do, whatever the replicas say.
        (Rollout(V1, V1), {"a": has(1), "b": has()}, 0, Stage.STEADY, V1, 0, {}),
        # Loading: one replica still loads -> wait, and say who.
        (LOADING, {"a": has(1, 2), "b": has(1)}, 100, Stage.LOADING, V1, 10,
         {"b": "loading version 2"}),
        # Loading: one replica failed -> hold the rollout, N serves, the failure is reported.
        (LOADING, {"a": has(1, 2), "b": has(1, failed={2: "bad graph"})}, 100, Stage.LOADING,
         V1, 10, {"b": "failed to load version 2: bad graph"}),
        # Loading: all have the target -> ask every replica to hold (a new flip id).
        (LOADING, {"a": has(1, 2), "b": has(1, 2)}, 100, Stage.HOLDING, V1, 11, {}),
        # Loading, all ready, but inside the pause after an abort -> not yet.
        (replace(LOADING, not_before=101.0), {"a": has(1, 2)}, 100, Stage.LOADING, V1, 10, {}),
        # Loading with no live replica: nobody can agree to a flip -> wait.
        (LOADING, {}, 100, Stage.LOADING, V1, 10, {}),
        # Holding: all hold the current flip -> flip routing to the target.
        (HOLDING, {"a": has(1, 2, held=11), "b": has(1, 2, held=11)}, 101, Stage.STEADY, V2, 11,
         {}),
        # Holding: one holds an older flip (stale) -> not yet.
        (HOLDING, {"a": has(1, 2, held=11), "b": has(1, 2, held=10)}, 101, Stage.HOLDING, V1,
         11, {"b": "does not hold requests yet"}),
        # Holding: a replica joined and lacks the target -> not yet, though it holds.
        (HOLDING, {"a": has(1, 2, held=11), "c": has(held=11)}, 101, Stage.HOLDING, V1, 11,
         {"c": "loading version 2"}),
        # Holding: the bound passed without every ack -> abort, N keeps serving.
        (HOLDING, {"a": has(1, 2, held=11), "b": has(1, 2)}, 105, Stage.LOADING, V1, 11,
         {"b": "does not hold requests yet after 5s: flip aborted"}),
        # Holding: the replica that did not ack is gone (not in the live set) -> flip.
        (HOLDING, {"a": has(1, 2, held=11)}, 102, Stage.STEADY, V2, 11, {}),
    ],
)
def test_step(
    rollout: Rollout, replicas: dict[str, ReplicaModel], now: float, stage: Stage,
    routed: frozenset[int], flip: int, blocked: dict[str, str],
) -> None:
    decided = step(rollout, replicas, now, BOUNDS)
    assert (decided.stage, decided.routed, decided.flip, dict(decided.blocked)) == (
        stage, routed, flip, blocked
    )
    assert decided.target == rollout.target  # a decision never changes what is aspired to
    assert decided.hold == (decided.flip if stage is Stage.HOLDING else None)


def test_a_whole_rollout_flips_once_and_keeps_both_versions_loaded_until_then() -> None:
    rollout = aim(Rollout(V1, V1), V2)
    assert (rollout.stage, rollout.keep) == (Stage.LOADING, V12)
    rollout = step(rollout, {"a": has(1, 2), "b": has(1, 2)}, 10, BOUNDS)
    assert (rollout.stage, rollout.hold, rollout.routed) == (Stage.HOLDING, 1, V1)
    rollout = step(rollout, {"a": has(1, 2, held=1), "b": has(1, 2, held=1)}, 11, BOUNDS)
    assert (rollout.stage, rollout.routed, rollout.keep, rollout.flips) == (Stage.STEADY, V2, V2, 1)


def test_an_aborted_flip_waits_out_the_pause_then_tries_again_with_a_new_id() -> None:
    holding = step(LOADING, {"a": has(1, 2), "b": has(1, 2)}, 100, BOUNDS)
    aborted = step(holding, {"a": has(1, 2, held=11), "b": has(1, 2)}, 105, BOUNDS)
    assert (aborted.stage, aborted.aborts, aborted.hold, aborted.not_before) == (
        Stage.LOADING, 1, None, 108.0
    )
    ready = {"a": has(1, 2), "b": has(1, 2)}
    assert step(aborted, ready, 107, BOUNDS).stage is Stage.LOADING
    again = step(aborted, ready, 108, BOUNDS)
    assert (again.stage, again.hold) == (Stage.HOLDING, 12)


def test_a_new_target_mid_hold_releases_the_hold_and_loads_again() -> None:
    moved = aim(HOLDING, frozenset({3}))
    assert (moved.stage, moved.hold, moved.keep) == (Stage.LOADING, None, frozenset({1, 3}))
    assert aim(HOLDING, V2) is HOLDING  # the same target changes nothing


@pytest.mark.parametrize(
    ("reported", "routed", "stage"),
    [
        ([], frozenset(), Stage.LOADING),  # a fresh cluster routes nothing yet
        ([V1, frozenset()], V1, Stage.LOADING),  # a replica that just joined routes nothing
        ([V1, V2], V2, Stage.STEADY),  # died mid-flip: the flipped replicas win
    ],
)
def test_start_takes_the_newest_routing_any_replica_has(
    reported: list[frozenset[int]], routed: frozenset[int], stage: Stage
) -> None:
    rollout = start(V2, reported, flip=1_000)
    assert (rollout.routed, rollout.stage, rollout.flip) == (routed, stage, 1_000)


def test_live_drops_replicas_not_heard_from_within_the_timeout() -> None:
    seen = {"a": 100.0, "b": 85.5, "c": 85.0}
    assert live(seen, 100.0, BOUNDS) == {"a", "b"}
