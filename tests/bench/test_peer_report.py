"""Interleaved rounds to medians, spreads and ratios, and the docs table
(bench/peer_report.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.peer_report import TABLE_END, TABLE_START, aggregate, render, table


def window(rps: float, cpu: float, non_200: int = 0) -> dict[str, Any]:
    return {"throughput_rps": rps, "cpu_s_per_1000": cpu, "non_200": non_200,
            "p50_ms": 1000 / rps, "p99_ms": 3000 / rps, "requests_answered": int(rps)}


def run(number: int, **by_c: tuple[float, float]) -> dict[str, Any]:
    return {"round": number, "start_s": 1.0,
            "answer_check": {"equal": True, "max_abs_difference": 1e-7},
            "by_concurrency": {c[1:]: window(*v) for c, v in by_c.items()}}


def test_aggregate_gives_medians_spreads_cpu_errors_and_ratios_over_flask() -> None:
    rounds = {
        "flask": [run(1, c1=(500, 1.4), c32=(1000, 1.2)), run(2, c32=(1200, 1.0)),
                  run(3, c32=(1100, 1.1))],
        "litserve": [run(1, c1=(200, 3.0), c32=(1300, 3.5)),
                     {"round": 2, "error": "RuntimeError: litserve exited with 1"},
                     run(3, c32=(1250, 3.0, 2))],
        "bentoml": [{"round": n, "error": "RuntimeError: no"} for n in (1, 2, 3)],
    }
    rounds["litserve"][2]["answer_check"] = {"equal": False, "max_abs_difference": 0.5}
    found = aggregate(rounds, [1, 32])
    flask = found["results"]["flask"]["by_concurrency"]["32"]
    assert flask["throughput_rps"] == 1100 and flask["spread_throughput_rps"] == [1000, 1200]
    assert flask["median_cpu_s_per_1000"] == 1.1 and flask["rounds_cpu_s_per_1000"] == [1.2, 1.0, 1.1]
    lit = found["results"]["litserve"]
    assert lit["answers_equal"] is False and lit["max_abs_difference"] == 0.5
    assert lit["errors"] == [{"round": 2, "error": "RuntimeError: litserve exited with 1"}]
    assert lit["by_concurrency"]["32"]["non_200_all_rounds"] == 2
    assert lit["by_concurrency"]["32"]["median_cpu_s_per_1000"] == 3.25
    ratio = found["ratios_over_flask"]["litserve"]["c32"]
    assert ratio["throughput"]["per_round"] == [1.3, round(1250 / 1100, 2)]
    assert ratio["cpu_per_request"]["per_round"] == [round(3.5 / 1.2, 2), round(3.0 / 1.1, 2)]
    assert found["results"]["bentoml"]["error"] == "RuntimeError: no"
    assert "bentoml" not in found["ratios_over_flask"]
    assert found["rounds"] == rounds


def document() -> dict[str, Any]:
    rounds = {"flask": [run(1, c1=(500, 1.4), c32=(1000, 1.2))],
              "modelwatch_rest": [run(1, c1=(1500, 0.4), c32=(8000, 0.2))],
              "ray_serve": [{"round": 1, "error": "RuntimeError: ray_serve did not answer\nlog"}]}
    rounds["modelwatch_rest"][0]["answer_check"]["equal"] = False
    return {"date": "2026-12-06 21:00:00 UTC", "machine": {"git_commit": "abc1234"},
            "parameters": {"concurrency": [1, 32], "rounds": 1, "duration_s": 5.0},
            "peers": {"flask": {"label": "Flask"}, "modelwatch_rest": {"label": "modelwatch"}},
            "not_run": {"pytriton": "could not be installed: no wheel\nmore"},
            **aggregate(rounds, [1, 32])}


def test_the_table_has_a_row_per_peer_and_says_why_a_peer_has_no_numbers() -> None:
    lines = table(document()).splitlines()
    assert lines[0].startswith("| server | answers equal | c=1 req/s")
    flask, ours, ray, triton = lines[2:]
    assert flask.startswith("| Flask | yes | 500 (2.0 / 6.0) | 1,000 (1.0 / 3.0) | 1.200")
    assert flask.endswith("| 0 | baseline |")
    assert "| **NO** |" in ours and ours.endswith("| 8.00x |")
    assert "did not run: RuntimeError: ray_serve did not answer |" in ray
    assert "not run: could not be installed: no wheel |" in triton
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_render_replaces_only_the_text_between_the_markers(tmp_path: Path) -> None:
    import json

    result = tmp_path / "results" / "peers.json"
    result.parent.mkdir()
    result.write_text(json.dumps(document()))
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# B\n\nbefore\n{TABLE_START}\npending the run\n{TABLE_END}\nafter\n")
    render(result, docs, "img/peers.svg")
    page = docs.read_text()
    assert page.startswith("# B\n\nbefore\n" + TABLE_START + "\n`bench/results/peers.json`")
    assert "pending the run" not in page and page.endswith(TABLE_END + "\nafter\n")
    assert "](img/peers.svg)\n" + TABLE_END in page
    render(result, docs, "img/peers.svg")
    assert docs.read_text() == page
