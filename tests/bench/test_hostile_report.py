"""The hostile benchmark's pure parts: steady requests to figures, the verdict against
issue 21's targets, the docs table (bench/hostile_report.py), and what the attacks parse
and build (bench/hostile_attacks.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.hostile_attacks import nan_rows_body, status_codes
from bench.hostile_report import TABLE_END, TABLE_START, render, summarize, table, verdict


def test_summarize_counts_only_requests_due_inside_the_window_failed_ones_included() -> None:
    requests = [(0.5, 9.0, None)]  # due before the window: left out
    requests += [(1.0 + i / 100, 0.002, None) for i in range(97)]
    requests += [(2.0, 5.0, "timeout"), (2.1, 0.004, "HTTP 503"), (2.2, 0.003, "timeout")]
    requests += [(3.0, 7.0, None)]  # due at the window's end: left out
    found = summarize(requests, (1.0, 3.0))
    assert found["requests"] == 100 and found["failures"] == 3
    assert found["failures_by_kind"] == {"HTTP 503": 1, "timeout": 2}
    assert found["p50_ms"] == 2.0
    assert found["p99_ms"] == 4.0  # nearest rank: the 99th of 100, below the 5 s timeout
    assert found["max_ms"] == 5000.0


def test_summarize_of_an_empty_window_has_no_percentiles() -> None:
    assert summarize([], (0.0, 1.0)) == {"requests": 0, "failures": 0, "failures_by_kind": {},
                                         "p50_ms": None, "p99_ms": None, "max_ms": None}


def steady(p99: float, failures: int = 0, requests: int = 500) -> dict[str, Any]:
    return {"requests": requests, "failures": failures, "failures_by_kind": {},
            "p50_ms": 2.0, "p99_ms": p99, "max_ms": p99}


def row(number: int = 1, rest: float = 5.0, grpc: float = 5.0, delta: float = 10.0,
        **extra: Any) -> dict[str, Any]:
    found = {"number": number, "name": "smuggling: more words", "alive_after": True,
             "attack": {"rest": steady(rest), "grpc": steady(grpc)},
             "rss_before_mib": 620.0, "rss_peak_mib": 620.0 + delta, "rss_delta_mib": delta,
             "attacker": {"saw": "20 tries | 0 smuggled"}, **extra}
    found["verdict"] = verdict(found)
    return found


def test_an_attack_that_costs_nothing_meets_the_targets() -> None:
    assert verdict(row(rest=250.0, grpc=3.0, delta=512.0)) == []


def test_each_target_missed_is_named() -> None:
    bad = row(rest=250.1, delta=512.1, alive_after=False)
    bad["attack"]["grpc"] = steady(3.0, failures=2)
    bad["attacker"]["smuggled_answers"] = 4
    assert verdict(bad) == ["rest p99 250.1 ms > 250", "grpc: 2 failed", "RSS +512.1 MiB > 512",
                            "4 smuggled answers", "the daemon did not answer afterwards"]
    assert verdict(row() | {"rss_delta_mib": None}) == ["no RSS reading"]
    empty = row()
    empty["attack"]["rest"] = steady(0.0, requests=0)
    assert verdict(empty) == ["rest: no request measured"]


def document() -> dict[str, Any]:
    missed = row(number=5, rest=7800.0, delta=4200.0)
    missed["name"] = "JSON amplification: 60 MB bodies"
    return {"date": "2026-12-07 15:30:00 UTC", "machine": {"git_commit": "6b1ff18"},
            "parameters": {"rate": 50.0, "baseline_s": 10.0, "duration_s": 20.0,
                           "tail_s": 3.0},
            "attacks": [row(number=0), missed,
                        {"number": 4, "name": "gRPC fill-out: x", "error": "Trace\nOSError: no"}]}


def test_the_table_has_a_row_per_attack_with_its_verdict() -> None:
    lines = table(document()).splitlines()
    assert lines[0].startswith("| attack | REST p50 / p99 ms | gRPC p50 / p99 ms |")
    none, json_attack, failed = lines[2:]
    assert none.startswith("| 0. smuggling | 2.0 / 5.0 | 2.0 / 5.0 | 0 / 0 | 620 -> 630 (+10) |")
    assert "| 20 tries / 0 smuggled |" in none and none.endswith("| meets the targets |")
    assert "| 2.0 / 7,800.0 |" in json_attack and "620 -> 4,820 (+4,200)" in json_attack
    assert "**misses**: rest p99 7800 ms > 250; RSS +4200 MiB > 512" in json_attack
    assert failed.startswith("| 4. gRPC fill-out | did not run: OSError: no |")
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_render_replaces_only_the_text_between_the_markers(tmp_path: Path) -> None:
    result = tmp_path / "results" / "hostile.json"
    result.parent.mkdir()
    result.write_text(json.dumps(document()))
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# B\n\nbefore\n{TABLE_START}\nold table\n{TABLE_END}\nafter\n")
    text = render(result, docs)
    page = docs.read_text()
    assert "old table" not in page and page.startswith("# B\n\nbefore\n")
    assert page.endswith(f"{TABLE_END}\nafter\n") and text in page
    assert text.startswith("`bench/results/hostile.json`, 2026-12-07 15:30:00 UTC, commit 6b1ff18")


def test_status_codes_finds_a_response_right_after_the_last_ones_body() -> None:
    data = (b'HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n{"error": 1}'
            b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}')
    assert status_codes(data) == [400, 200]
    assert status_codes(b"") == []


def test_the_nan_body_is_ten_million_rows_of_six_bytes() -> None:
    body = nan_rows_body(3)
    assert body == b'{"instances":[[NaN],[NaN],[NaN]]}'
    assert len(nan_rows_body()) == len(b'{"instances":[]}') + 6 * 10_000_000 - 1
