"""Interleaved rounds (A B C, A B C, ...) reduced to figures: per concurrency the round with
the median value, every round's value beside it, and one server over another per round
(same round number) and of the medians. Used by bench/throughput.py and bench/peers.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def median_round(runs: Sequence[Mapping[str, Any]], key: str = "throughput_rps") -> dict[str, Any]:
    """One server's result over interleaved rounds: per concurrency, the round with the
    median `key` (the lower median for an even count) among the rounds that measured that
    concurrency, with every round's value beside it (`rounds_<key>`)."""
    if len(runs) == 1 or "by_concurrency" not in runs[0]:
        return dict(runs[0])
    merged = dict(runs[0])
    merged["by_concurrency"] = {}
    levels = list(dict.fromkeys(c for run in runs for c in run.get("by_concurrency", {})))
    for c in levels:
        measured = [run["by_concurrency"][c] for run in runs if c in run.get("by_concurrency", {})]
        ranked = sorted(measured, key=lambda summary: summary.get(key) or 0.0)
        chosen = dict(ranked[(len(ranked) - 1) // 2])
        chosen[f"rounds_{key}"] = [summary.get(key) for summary in measured]
        merged["by_concurrency"][c] = chosen
    return merged


def paired_rounds(ours: Sequence[Mapping[str, Any]], theirs: Sequence[Mapping[str, Any]]
                  ) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """The rounds both servers ran: by their `round` numbers when they carry them (a
    server may have failed in a round), else position by position."""
    if all("round" in run for run in (*ours, *theirs)):
        by_number = {run["round"]: run for run in theirs}
        return [(run, by_number[run["round"]]) for run in ours if run["round"] in by_number]
    return list(zip(ours, theirs, strict=True))


def ratios_over(ours: Sequence[Mapping[str, Any]], theirs: Sequence[Mapping[str, Any]],
                concurrency: str, key: str = "throughput_rps") -> dict[str, Any] | None:
    """`key` of ours over theirs at one concurrency: per paired round, and of the medians;
    None when no round measured both."""
    per_round = []
    for a, b in paired_rounds(ours, theirs):
        x = a.get("by_concurrency", {}).get(concurrency, {}).get(key)
        y = b.get("by_concurrency", {}).get(concurrency, {}).get(key)
        if x is not None and y:
            per_round.append(round(x / y, 2))
    if not per_round:
        return None
    x = median_round(ours, key)["by_concurrency"][concurrency][key]
    y = median_round(theirs, key)["by_concurrency"][concurrency][key]
    return {"per_round": per_round, "of_medians": round(x / y, 2) if x is not None and y else None}
