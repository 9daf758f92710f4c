"""bench/peers.py's rounds turned into its result and its docs table.

`aggregate` takes every round of every peer and gives, per peer and concurrency, the
median round (by answers/s; bench/rounds.py), every round's answers/s and
CPU per 1,000 requests, their spread, the median CPU, the non-200 total, and the ratios
over the Flask baseline per round and of the medians. `render` writes the markdown table
into docs/benchmarks.md between its two markers, so the table always comes from the json.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.common import replace_between
from bench.rounds import median_round, ratios_over

BASELINE = "flask"
TABLE_START, TABLE_END = "<!-- peers-table:start -->", "<!-- peers-table:end -->"

METHOD = (
    "peers run one after the other, in interleaved rounds (every peer once per round, in "
    "the same order); per peer and round: start it (own process session, 127.0.0.1, "
    "ephemeral ports), check its answer to one fixed instance against the model called "
    "in-process (max |difference| <= 1e-5), a discarded warm-up at the highest concurrency, "
    "then one window per concurrency: hey -c C -z D (REST) or h2load -c C -m 1 -D D (gRPC, "
    "one framed PredictRequest replayed; gRPC status from modelwatch's own counter since "
    "h2load sees only HTTP status); p50/p99 nearest-rank over the 200 answers; answers/s; "
    "server CPU-seconds = utime+stime+cutime+cstime summed over every process below the "
    "bench (the server's whole tree, orphans re-parented to the bench as child subreaper) "
    "from /proc, after minus before the window, per 1,000 answered requests; the highest "
    "concurrency in every round, the others in the first low_rounds rounds; per peer and "
    "concurrency the round with the median answers/s, every round kept, spread = min..max, "
    "CPU = median over rounds; ratios over flask per round (same round number) and of the "
    "medians. The load generator runs on the same 2 cores and its CPU is not counted."
)


def modelwatch_configuration(blocks: Mapping[str, Any], grpc: bool) -> str:
    batching = blocks.get("model", {}).get("batching", {})
    tensorflow = blocks.get("daemon", {}).get("tensorflow", {})
    parts = [", ".join(f"{k} {v}" for k, v in batching.items()) or "no batching",
             "tensorflow " + ", ".join(f"{k} {v}" for k, v in tensorflow.items())]
    parts.append("gRPC PredictionService/Predict" if grpc else "REST row format")
    return "; ".join(parts)


def _peer_result(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    measured = [run for run in runs if run.get("by_concurrency")]
    errors = [{"round": run["round"], "error": run["error"]} for run in runs if run.get("error")]
    checks = [run["answer_check"] for run in runs if "answer_check" in run]
    result: dict[str, Any] = {
        "rounds_run": len(runs),
        "errors": errors,
        "answers_equal": all(c["equal"] for c in checks) if checks else None,
        "max_abs_difference": max((c["max_abs_difference"] for c in checks
                                   if c["max_abs_difference"] is not None), default=None),
        "start_s": [run["start_s"] for run in runs if "start_s" in run],
    }
    if not measured:
        result["error"] = errors[0]["error"] if errors else "no round measured"
        return result
    merged = median_round(measured)["by_concurrency"]
    for c, chosen in merged.items():
        in_rounds = [run["by_concurrency"][c] for run in measured if c in run["by_concurrency"]]
        rps = [s["throughput_rps"] for s in in_rounds if s.get("throughput_rps") is not None]
        cpu = [s["cpu_s_per_1000"] for s in in_rounds if s.get("cpu_s_per_1000") is not None]
        chosen["spread_throughput_rps"] = [min(rps), max(rps)] if rps else None
        chosen["rounds_cpu_s_per_1000"] = cpu
        chosen["median_cpu_s_per_1000"] = round(statistics.median(cpu), 4) if cpu else None
        chosen["spread_cpu_s_per_1000"] = [min(cpu), max(cpu)] if cpu else None
        chosen["non_200_all_rounds"] = sum(s.get("non_200", 0) for s in in_rounds)
    result["by_concurrency"] = merged
    return result


def aggregate(rounds: Mapping[str, Sequence[Mapping[str, Any]]], concurrency: Sequence[int]
              ) -> dict[str, Any]:
    """The json's `results`, `ratios_over_flask` and `rounds` from every peer's rounds."""
    results = {name: _peer_result(runs) for name, runs in rounds.items()}
    ratios: dict[str, Any] = {}
    baseline = [run for run in rounds.get(BASELINE, ()) if run.get("by_concurrency")]
    for name, runs in rounds.items():
        measured = [run for run in runs if run.get("by_concurrency")]
        if name == BASELINE or not baseline or not measured:
            continue
        ratios[name] = {
            f"c{c}": {"throughput": ratios_over(measured, baseline, str(c)),
                      "cpu_per_request": ratios_over(measured, baseline, str(c),
                                                     key="cpu_s_per_1000")}
            for c in concurrency
        }
    return {"results": results, "ratios_over_flask": ratios, "rounds": dict(rounds)}


# ---- the docs table -------------------------------------------------------------------


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(document: Mapping[str, Any]) -> str:
    """The markdown table (and the peers that did not run, with the reason)."""
    levels = [str(c) for c in document["parameters"]["concurrency"]]
    top = levels[-1]
    head = ["server", "answers equal"]
    for c in levels:
        head.append(f"c={c} req/s (p50 / p99 ms)")
    head += [f"CPU-s per 1k req, c={top} (spread)", "non-200", f"c={top} vs Flask"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    peers = document.get("peers", {})
    for name, result in document["results"].items():
        label = peers.get(name, {}).get("label", name)
        if "by_concurrency" not in result:
            first = str(result.get("error", "")).splitlines()[0][:120] if result.get("error") else ""
            lines.append(f"| {label} | - | did not run: {first} |" + " |" * (len(head) - 3))
            continue
        equal = {True: "yes", False: "**NO**", None: "-"}[result["answers_equal"]]
        row = [label, equal]
        by_c = result["by_concurrency"]
        for c in levels:
            s = by_c.get(c)
            row.append("-" if s is None else f"{_number(s['throughput_rps'])} "
                       f"({_number(s['p50_ms'], 1)} / {_number(s['p99_ms'], 1)})")
        s = by_c.get(top, {})
        spread = s.get("spread_cpu_s_per_1000") or [None, None]
        row.append(f"{_number(s.get('median_cpu_s_per_1000'), 3)} "
                   f"({_number(spread[0], 3)}..{_number(spread[1], 3)})")
        row.append(str(sum(v.get("non_200_all_rounds", 0) for v in by_c.values())))
        ratio = document.get("ratios_over_flask", {}).get(name, {}).get(f"c{top}", {})
        throughput = (ratio or {}).get("throughput") or {}
        row.append("baseline" if name == BASELINE else
                   f"{_number(throughput.get('of_medians'), 2)}x" if throughput else "-")
        lines.append("| " + " | ".join(row) + " |")
    for name, reason in document.get("not_run", {}).items():
        label = peers.get(name, {}).get("label", name)
        first = reason.strip().splitlines()[0][:160]
        lines.append(f"| {label} | - | not run: {first} |" + " |" * (len(head) - 3))
    return "\n".join(lines)


def render(result_path: Path, docs: Path, image: str | None = None) -> str:
    """Print the table and put it (and the figure `image`, a path relative to `docs`)
    between the markers in `docs`."""
    document = json.loads(result_path.read_text())
    shown = (f"bench/results/{result_path.name}" if result_path.parent.name == "results"
             else str(result_path))
    text = (f"`{shown}`, {document['date']}, commit "
            f"{document['machine'].get('git_commit')}, {document['parameters']['rounds']} "
            f"rounds of {document['parameters']['duration_s']:g} s windows:\n\n"
            + table(document))
    if image:
        text += f"\n\n![answers/s and server CPU per request, each server]({image})"
    print(text)
    replace_between(docs, TABLE_START, TABLE_END, text)
    return text
