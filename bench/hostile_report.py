"""bench/hostile.py's figures: the steady client's requests summed up per window, each
attack judged against the targets of issue 21, and the docs table.

A steady request is `(scheduled, latency_s, failure)`: when the client meant to send it
(seconds, its own clock), how long from then until its answer (so time spent waiting
behind a stalled request counts, as wrk2 counts it), and None or what went wrong.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bench.common import percentile, replace_between

TARGETS = {"p99_ms": 250.0, "failures": 0, "rss_delta_mib": 512.0}
TABLE_START, TABLE_END = "<!-- hostile-table:start -->", "<!-- hostile-table:end -->"

Request = tuple[float, float, "str | None"]


def summarize(requests: Iterable[Request], window: tuple[float, float]) -> dict[str, Any]:
    """The requests scheduled inside `window`: count, failures by kind, and p50/p99/max
    latency (ms, nearest rank) over all of them, failed ones included."""
    inside = [r for r in requests if window[0] <= r[0] < window[1]]
    latencies = sorted(r[1] for r in inside)
    failures = Counter(r[2] for r in inside if r[2] is not None)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 1)

    return {"requests": len(inside), "failures": sum(failures.values()),
            "failures_by_kind": dict(sorted(failures.items())),
            "p50_ms": ms(percentile(latencies, 50)), "p99_ms": ms(percentile(latencies, 99)),
            "max_ms": ms(latencies[-1] if latencies else None)}


def verdict(row: Mapping[str, Any], targets: Mapping[str, float] = TARGETS) -> list[str]:
    """What an attack's window missed of the targets (empty: it met them all)."""
    misses = []
    for transport in ("rest", "grpc"):
        steady = row["attack"][transport]
        if steady["requests"] == 0:
            misses.append(f"{transport}: no request measured")
        elif steady["p99_ms"] > targets["p99_ms"]:
            misses.append(f"{transport} p99 {steady['p99_ms']:g} ms > {targets['p99_ms']:g}")
        if steady["failures"] > targets["failures"]:
            misses.append(f"{transport}: {steady['failures']} failed")
    delta = row.get("rss_delta_mib")
    if delta is None:
        misses.append("no RSS reading")
    elif delta > targets["rss_delta_mib"]:
        misses.append(f"RSS +{delta:g} MiB > {targets['rss_delta_mib']:g}")
    if row.get("attacker", {}).get("smuggled_answers"):
        misses.append(f"{row['attacker']['smuggled_answers']} smuggled answers")
    if not row.get("alive_after", False):
        misses.append("the daemon did not answer afterwards")
    return misses


# ---- the docs table -------------------------------------------------------------------


def _ms(steady: Mapping[str, Any]) -> str:
    def one(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}"

    return f"{one(steady['p50_ms'])} / {one(steady['p99_ms'])}"


def _cell(text: str, limit: int = 110) -> str:
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def table(document: Mapping[str, Any]) -> str:
    """One row per attack (the first, attack 0, is the run with no attack)."""
    head = ["attack", "REST p50 / p99 ms", "gRPC p50 / p99 ms", "failures REST / gRPC",
            "RSS before -> peak (MiB)", "what the attacker saw", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in document["attacks"]:
        label = f"{row['number']}. {row['name'].split(':')[0]}"
        if "error" in row:
            lines.append(f"| {label} | did not run: {_cell(row['error'].splitlines()[-1])} |"
                         + " |" * (len(head) - 2))
            continue
        rest, grpc = row["attack"]["rest"], row["attack"]["grpc"]
        rss = f"{row['rss_before_mib']:,.0f} -> {row['rss_peak_mib']:,.0f} " \
              f"({row['rss_delta_mib']:+,.0f})"
        misses = row["verdict"]
        judged = "meets the targets" if not misses else "**misses**: " + "; ".join(misses)
        lines.append("| " + " | ".join([label, _ms(rest), _ms(grpc),
                                         f"{rest['failures']} / {grpc['failures']}", rss,
                                         _cell(str(row["attacker"].get("saw", "-"))),
                                         _cell(judged, 160)]) + " |")
    return "\n".join(lines)


def render(result_path: Path, docs: Path) -> str:
    """Print the table and put it between the markers in `docs`."""
    document = json.loads(result_path.read_text())
    parameters = document["parameters"]
    shown = (f"bench/results/{result_path.name}" if result_path.parent.name == "results"
             else str(result_path))
    text = (f"`{shown}`, {document['date']}, commit {document['machine'].get('git_commit')}, "
            f"steady {parameters['rate']:g} req/s on each transport, baseline "
            f"{parameters['baseline_s']:g} s, attack window up to {parameters['duration_s']:g} s "
            f"+ {parameters['tail_s']:g} s after the attacker ends; targets: p99 <= "
            f"{TARGETS['p99_ms']:g} ms, no failures, RSS <= +{TARGETS['rss_delta_mib']:g} MiB"
            + (f" ({parameters['note']})" if parameters.get("note") else "") + ":"
            "\n\n" + table(document))
    print(text)
    replace_between(docs, TABLE_START, TABLE_END, text)
    return text
