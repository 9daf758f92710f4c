"""CPU per request of the REST server under load, A/B between its two request paths.

Wall-clock requests per second on a shared 2-core machine move 20% between minutes; the
server's own CPU-seconds per answered request move far less, so this is the figure to
compare two versions of the request path by. For each round and path: a daemon serving
the MLP of `bench/throughput.py` with batching, a warm-up, then `hey -c C -z Ns`, reading
`/proc/<pid>/task/*/stat` before and after. The paths alternate (A B, A B, ...) so that
the machine's slow spells hit both. The busiest thread is the event loop. `fast` is
`server.rest_fast_path: true` (the default), `asgi` is false: every request through ASGI.

    .venv/bin/python bench/rest_cpu.py [--paths fast,asgi] [--rounds 4] [--duration 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    daemon_config,
    daemon_pid,
    default_out,
    instances_body,
    metric_sum,
    prometheus,
    run_hey,
    write_mlp,
    write_result,
)
from bench.throughput import DEFAULT_BATCHING, DEFAULT_TENSORFLOW, MODEL, SIZES
from tests.daemon_process import DaemonProcess

TICK = os.sysconf("SC_CLK_TCK")
PATHS = {"fast": True, "asgi": False}  # server.rest_fast_path


def thread_cpu(pid: int) -> dict[int, tuple[str, float, float]]:
    """Each thread's name, CPU-seconds (user + system) and system CPU-seconds so far."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            name = (task / "comm").read_text().strip()
        except OSError:
            continue  # the thread ended meanwhile
        fields = stat[stat.rindex(")") + 2:].split()
        threads[int(task.name)] = (
            name, (int(fields[11]) + int(fields[12])) / TICK, int(fields[12]) / TICK
        )
    return threads


def one_run(work: Path, model: Path, path: str, args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix=f"{path}-", dir=work))
    entry = {"name": MODEL, "base_path": str(model.parent), "batching": DEFAULT_BATCHING}
    config = daemon_config(folder, [entry])
    config["tensorflow"] = DEFAULT_TENSORFLOW
    config["server"]["rest_fast_path"] = PATHS[path]
    daemon = DaemonProcess(folder, config).start()
    try:
        daemon.wait_for_states(MODEL, {1: "AVAILABLE"})
        assert daemon.client is not None
        url = f"{daemon.client.base_url}/v1/models/{MODEL}:predict"
        body = instances_body(SIZES[0])
        run_hey(url, body, args.concurrency, duration_s=args.warmup)
        pid = daemon_pid(daemon.config_path)
        samples_before = prometheus(daemon)
        before = thread_cpu(pid)
        run = run_hey(url, body, args.concurrency, duration_s=args.duration)
        after = thread_cpu(pid)
        samples_after = prometheus(daemon)
    finally:
        daemon.stop()
    answered = sum(1 for row in run.rows if row.status == 200)
    spent = {tid: after[tid][1] - before.get(tid, ("", 0.0, 0.0))[1] for tid in after}
    loop_tid = max(spent, key=lambda tid: spent[tid])
    loop_system = after[loop_tid][2] - before.get(loop_tid, ("", 0.0, 0.0))[2]
    total = sum(spent.values())
    batches, rows = (
        metric_sum(samples_after, name, model=MODEL) - metric_sum(samples_before, name, model=MODEL)
        for name in ("modelwatch_batch_size_count", "modelwatch_batch_size_sum")
    )
    return {
        "path": path,
        "answered": answered,
        "non_200": len(run.rows) - answered,
        "req_per_s": round(answered / args.duration),
        "mean_batch_rows": round(rows / batches, 1) if batches else None,
        "server_cpu_us_per_request": round(total / answered * 1e6, 1),
        "event_loop_cpu_us_per_request": round(spent[loop_tid] / answered * 1e6, 1),
        "event_loop_system_cpu_us_per_request": round(loop_system / answered * 1e6, 1),
        "other_threads_cpu_us_per_request": round((total - spent[loop_tid]) / answered * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", default="fast,asgi",
                        help="which request paths to alternate: fast, asgi")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", default=default_out("rest_cpu"))
    args = parser.parse_args()
    paths = args.paths.split(",")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rest-cpu-") as tmp:
        work = Path(tmp)
        model = write_mlp(work / "models" / MODEL / "1", SIZES)
        for round_ in range(args.rounds):
            for path in paths:
                run = one_run(work, model, path, args) | {"round": round_ + 1}
                print(run, file=sys.stderr)
                runs.append(run)
    medians = {
        path: {
            key: statistics.median(r[key] for r in runs if r["path"] == path)
            for key in ("req_per_s", "server_cpu_us_per_request", "event_loop_cpu_us_per_request")
        }
        for path in paths
    }
    write_result(args.out, {
        "benchmark": "rest_cpu",
        "method": (
            f"daemon serving an MLP {'-'.join(map(str, SIZES))} with batching {DEFAULT_BATCHING} "
            f"and tensorflow {DEFAULT_TENSORFLOW}; per path and round a fresh daemon, "
            f"{args.warmup:g} s warm-up, then hey -c {args.concurrency} -z {args.duration:g}s "
            "on the same machine; CPU from /proc/<pid>/task/*/stat over the hey run divided by "
            "the 200 answers; the busiest thread is the event loop; paths alternate"
        ),
        "runs": runs,
        "medians": medians,
    })


if __name__ == "__main__":
    main()
