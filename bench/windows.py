"""One measured window of load against a server: hey (REST) or h2load (gRPC) for D seconds,
with the server's CPU-seconds around it (any snapshot of bench/proc_cpu.py's kind) and,
over gRPC, the calls its modelwatch servers counted and counted not OK (h2load reads no
trailers). Used by bench/peers.py and bench/ray_serve.py."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bench.common import grpc_counts, latency_summary, run_hey
from bench.grpc_load import H2Load, summary_extra
from bench.proc_cpu import ProcStat, window_cpu_s

Snapshot = Callable[[], Mapping[tuple[int, int], ProcStat]]


def measured_window(snapshot: Snapshot, url: str, concurrency: int, duration_s: float, *,
                    body: str = "", frame: bytes | None = None,
                    counted_at: Sequence[str] = ()) -> dict[str, Any]:
    """Load `url` for `duration_s`: with `frame` (a framed gRPC message) through h2load,
    else `body` through hey; `counted_at`: the REST addresses whose gRPC counters to read."""
    counted = grpc_counts(counted_at) if frame is not None and counted_at else None
    before = snapshot()
    if frame is not None:
        result = H2Load(url, frame, concurrency, duration_s).start().wait()
        after = snapshot()
        summary = latency_summary(result.run) | summary_extra(result)
    else:
        run = run_hey(url, body, concurrency, duration_s=duration_s)
        after = snapshot()
        summary = latency_summary(run)
    cpu = window_cpu_s(before, after)
    answered = summary["requests_answered"]
    summary["server_cpu_s"] = round(cpu, 3)
    summary["cpu_s_per_1000"] = round(cpu / answered * 1000, 4) if answered else None
    summary["server_processes"] = len(after)
    if counted is not None:
        total, non_ok = grpc_counts(counted_at)
        summary["grpc_counted"] = int(total - counted[0])
        summary["grpc_non_ok"] = int(non_ok - counted[1])
    return summary
