"""Many models under a memory limit: the first-request latency of an on-demand model, and
the daemon's RSS against `loading.memory_limit_bytes` while it serves more models than fit.

`--models` on-demand models (default 10), each a copy (hard links) of one SavedModel whose
variables are `--floats` float32s (default 12.5 M: 50 MB, y = 0.5 * x + 2). The daemon runs
as a subprocess (tests/daemon_process.py). First, with no limit, one model is loaded and
answered once: the RSS then (TensorFlow, the server's threads, one model) is the start
figure; the daemon is restarted with

    loading.memory_limit_bytes = start figure + (room - 0.4) * one model's files

so `--room` models (default 3) fit and one more does not. Then `--rounds` rounds (default
100): each round sends one predict to every model, in an order shuffled per round (fixed
seed), one at a time. Before each request the status API says whether the model is loaded
(not timed): a request to a model that is not is a *cold* request, which waits for the load
(and for the eviction that makes room). RSS of the daemon from /proc/<pid>/statm every 10 ms
on a thread for the whole run.

Reports: cold and warm latency (p50, p90, p99, max), RSS peak against the limit, the
fraction of samples over it, evictions and loads (from the daemon's metrics).

    .venv/bin/python bench/memory_limit.py [--models 10] [--room 3] [--rounds 100]

Writes bench/results/memory_limit.json.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    daemon_config,
    default_out,
    folder_bytes,
    metric_sum,
    mib,
    percentile,
    prometheus,
    wait_states,
    write_result,
)
from loader.manager.process_memory import resident_bytes  # noqa: E402
from tests.daemon_process import DaemonProcess, ResidentSampler  # noqa: E402  (the repo's daemon harness)
from tests.savedmodels import publish_linked, write_sized_model  # noqa: E402

BODY = {"instances": [[2.0]]}


def start_daemon(work: Path, names: list[str], limit: int | None) -> DaemonProcess:
    models = [{"name": n, "base_path": str(work / "repo" / n), "load": "on_demand"} for n in names]
    config = daemon_config(work, models, poll=1.0)
    config["loading"] = {"memory_limit_bytes": limit, "on_demand_wait_seconds": 120}
    run = work / f"run-{uuid.uuid4().hex[:6]}"
    run.mkdir()
    daemon = DaemonProcess(run, config).start(timeout=180)
    for name in names:
        wait_states(daemon, name, {1: "START"})
    return daemon


def summary(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)

    def ms(p: float) -> float | None:
        value = percentile(ordered, p)
        return None if value is None else round(value * 1000, 2)

    return {"count": len(ordered), "p50_ms": ms(50), "p90_ms": ms(90), "p99_ms": ms(99),
            "max_ms": round(ordered[-1] * 1000, 2) if ordered else None}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model = write_sized_model(work / "model", args.floats)
    files = folder_bytes(model)
    names = [f"m{i:02d}" for i in range(args.models)]
    for name in names:
        publish_linked(model, work / "repo" / name)

    probe = start_daemon(work, names, None)
    if probe.predict(names[0], BODY).status_code != 200:
        raise RuntimeError(f"the probe daemon did not answer:\n{probe.log()[-3000:]}")
    time.sleep(1.0)  # let the daemon settle before the reading
    one_model = resident_bytes(probe.pid) or 0
    probe.stop()
    limit = one_model + int((args.room - 0.4) * files)

    daemon = start_daemon(work, names, limit)
    cold: list[float] = []
    warm: list[float] = []
    failures = 0
    order = random.Random(args.seed)
    try:
        with ResidentSampler(daemon.pid, interval=0.01) as sampler:
            for number in range(args.rounds):
                shuffled = names[:]
                order.shuffle(shuffled)
                for name in shuffled:
                    loaded = daemon.states(name).get(1) == "AVAILABLE"
                    started = time.perf_counter()
                    response = daemon.predict(name, BODY)
                    elapsed = time.perf_counter() - started
                    if response.status_code != 200:
                        failures += 1
                    (warm if loaded else cold).append(elapsed)
                if (number + 1) % 10 == 0:
                    print(f"  round {number + 1}: RSS {mib(sampler.samples[-1])} MiB "
                          f"(limit {mib(limit)})", file=sys.stderr)
        samples = prometheus(daemon)
    finally:
        daemon.stop()
    over = [s for s in sampler.samples if s > limit]
    return {
        "benchmark": "memory_limit",
        "parameters": vars(args),
        "method": "on-demand models, copies of one SavedModel; limit = RSS with one model "
                  "loaded and answered + (room - 0.4) x files; rounds of one predict per model "
                  "in shuffled order, one at a time; cold = the status API said the model was "
                  "not AVAILABLE before the request; RSS from /proc/<pid>/statm every 10 ms",
        "model": {"floats": args.floats, "files_mib": mib(files)},
        "memory": {
            "rss_one_model_mib": mib(one_model), "limit_mib": mib(limit),
            "rss_peak_mib": mib(max(sampler.samples)), "rss_final_mib": mib(sampler.samples[-1]),
            "samples": len(sampler.samples), "samples_over_limit": len(over),
            "peak_over_limit_mib": mib(max(over) - limit) if over else 0.0,
        },
        "requests": {"failed": failures, "cold": summary(cold), "warm": summary(warm)},
        "evictions": metric_sum(samples, "modelwatch_evictions_total"),
        "loads": metric_sum(samples, "modelwatch_loads_total", outcome="ok"),
        "load_refusals": metric_sum(samples, "modelwatch_load_refusals_total"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--room", type=int, default=3, help="models the limit has room for")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--floats", type=int, default=12_500_000, help="float32s per model")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=default_out("memory_limit"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelwatch-memory-limit-") as work:
        write_result(args.out, run(args, Path(work)))


if __name__ == "__main__":
    main()
