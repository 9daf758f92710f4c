"""Interleaved rounds to the median round and ratios (bench/rounds.py)."""

from __future__ import annotations

from bench.rounds import median_round, ratios_over
from tests.bench.test_peer_report import run


def test_the_median_round_is_the_lower_median_among_the_rounds_that_measured_it() -> None:
    runs = [run(1, c1=(100, 1.0), c32=(400, 0.5)), run(2, c1=(300, 0.9), c32=(100, 0.7)),
            run(3, c32=(300, 0.6)), run(4, c32=(200, 0.4))]
    merged = median_round(runs)["by_concurrency"]
    assert merged["32"]["throughput_rps"] == 200  # of 100, 200, 300, 400: the lower median
    assert merged["32"]["rounds_throughput_rps"] == [400, 100, 300, 200]
    assert merged["1"]["throughput_rps"] == 100 and merged["1"]["rounds_throughput_rps"] == [100, 300]


def test_ratios_pair_rounds_by_number_when_a_round_failed() -> None:
    ours = [run(1, c32=(400, 0.5)), run(3, c32=(900, 0.3))]  # round 2 failed
    theirs = [run(1, c32=(100, 2.0)), run(2, c32=(150, 2.0)), run(3, c32=(300, 1.5))]
    found = ratios_over(ours, theirs, "32")
    assert found == {"per_round": [4.0, 3.0], "of_medians": round(400 / 150, 2)}
    assert ratios_over(ours, theirs, "8") is None
