"""What one REST predict costs the event loop, without HTTP: CPU per request on its thread.

The REST server's one event loop runs every request's Python (decode, queueing, encode,
metrics) on top of uvicorn's, and at 32 clients it is the part of the server that runs
out first. Requests per second on this shared 2-vCPU machine move by 20% from one minute
to the next; the loop's CPU time per request moves much less, so this is the figure to
compare two versions of the request path by.

In one process: a daemon (`loader.app.daemon.Daemon`, no sockets) serves the throughput
benchmark's MLP with batching (`max_batch_size: 32, batch_timeout_micros: 0,
num_batch_threads: 2`, TensorFlow's pools as `--tensorflow-config`, by default calls kept
on their thread); `RestApi.app`, the ASGI application uvicorn runs, is called directly by
C concurrent clients on a uvloop loop with the benchmark's one-instance body. Per run:
the loop thread's CPU time (`time.thread_time`) and wall time per request, requests per
second, and rows per batch. Every answer is checked to be a 200. With `--apis
predict,infer` the runs alternate between TF Serving's predict and the Open Inference
Protocol's infer (the same row as v2 JSON `data`), and each run of infer is also given
as a ratio to the predict run beside it.

    .venv/bin/python bench/loop_cost.py [--requests 20000] [--runs 5] [--concurrency 32]
        [--apis predict[,infer]] [--tensorflow-config JSON] [--out PATH]

To compare two commits, run it from a worktree of each, alternating. Writes
bench/results/loop_cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import default_out, instances_body, write_mlp, write_result  # noqa: E402

SIZES = (64, 512, 512, 10)
MODEL = "mlp"
BATCHING = {"max_batch_size": 32, "batch_timeout_micros": 0, "num_batch_threads": 2}
INLINE = {"intra_op_parallelism": 1, "inter_op_parallelism": -1}


# Each API's path and the body of one row of `width` floats.
APIS = {
    "predict": (f"/v1/models/{MODEL}:predict", lambda width: instances_body(width).encode()),
    "infer": (f"/v2/models/{MODEL}/infer", lambda width: json.dumps({"inputs": [{
        "name": "x", "datatype": "FP32", "shape": [1, width],
        "data": json.loads(instances_body(width))["instances"][0],
    }]}, separators=(",", ":")).encode()),
}


def drive(app: Any, body: bytes, requests: int, concurrency: int,
          path: str = APIS["predict"][0]) -> dict[str, float]:
    """Send `requests` requests (predicts, or what `path` names) through `app` from
    `concurrency` clients on a new uvloop loop in this thread; the loop's CPU and wall time
    per request."""
    import uvloop

    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    left = requests
    statuses: list[int] = []

    async def client() -> None:
        nonlocal left

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        while left > 0:
            left -= 1
            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                     "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
                     "query_string": b"", "root_path": "", "headers": headers}
            await app(scope, receive, send)

    async def main() -> None:
        await asyncio.gather(*(client() for _ in range(concurrency)))

    cpu, wall = time.thread_time(), time.perf_counter()
    uvloop.run(main())
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    if len(statuses) != requests or set(statuses) != {200}:
        raise SystemExit(f"expected {requests} answers of 200, got {len(statuses)}: "
                         f"{sorted(set(statuses))}")
    return {"loop_cpu_us_per_request": round(cpu / requests * 1e6, 1),
            "wall_us_per_request": round(wall / requests * 1e6, 1),
            "requests_per_s": round(requests / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000, help="requests per run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--apis", default="predict",
                        help=f"which to alternate run by run, of {', '.join(APIS)}")
    parser.add_argument("--tensorflow-config", type=json.loads, default=INLINE,
                        help="the daemon's tensorflow: block, as JSON; '{}' for TF's defaults")
    parser.add_argument("--out", default=default_out("loop_cost"))
    args = parser.parse_args()

    from loader.config.schema import TensorFlowConfig, parse_config
    from loader.servables.quiet_tf import (
        freeze_startup_objects,
        import_tensorflow,
        set_thread_pools,
    )

    pools = TensorFlowConfig(**args.tensorflow_config)
    set_thread_pools(pools.intra_op_parallelism, pools.inter_op_parallelism)
    import_tensorflow()
    from loader.app.daemon import Daemon
    from loader.serving.rest.app import RestApi

    apis = args.apis.split(",")
    bodies = {api: APIS[api][1](SIZES[0]) for api in apis}
    runs = []
    with tempfile.TemporaryDirectory(prefix="modelwatch-bench-") as tmp:
        write_mlp(Path(tmp) / "models" / MODEL / "1", SIZES, seed=0)
        config = parse_config({
            "server": {"host": "127.0.0.1", "rest_port": 0, "grpc_port": 0},
            "storage": {"cache_dir": str(Path(tmp) / "cache")},
            "models": [{"name": MODEL, "base_path": str(Path(tmp) / "models" / MODEL),
                        "batching": BATCHING}],
        })
        daemon = Daemon(config, serve_rest=False)
        freeze_startup_objects()  # as `modelwatch serve` does
        daemon.start()
        try:
            deadline = time.monotonic() + 120
            ready = threading.Event()
            while not daemon.dataplane.readiness().get(MODEL):
                if time.monotonic() > deadline:
                    raise SystemExit("the model did not load in 120 s")
                ready.wait(0.05)
            app = RestApi(daemon.dataplane, daemon.metrics).app
            for api in apis:  # warm-up
                drive(app, bodies[api], 2000, args.concurrency, APIS[api][0])
            for n in range(args.runs):
                for api in apis if n % 2 == 0 else apis[::-1]:  # turned order, run by run
                    count, rows = _histogram(daemon.metrics, MODEL)
                    run: dict[str, Any] = {"api": api, "run": n + 1} | drive(
                        app, bodies[api], args.requests, args.concurrency, APIS[api][0])
                    count2, rows2 = _histogram(daemon.metrics, MODEL)
                    run["rows_per_batch"] = round((rows2 - rows) / max(1, count2 - count), 1)
                    runs.append(run)
                    print(f"  run {n + 1}: {run}", file=sys.stderr)
        finally:
            daemon.stop()
    cpu = {api: [r["loop_cpu_us_per_request"] for r in runs if r["api"] == api]
           for api in apis}
    ratios = None
    if "predict" in apis and "infer" in apis:
        ratios = [round(v2 / tfs, 3) for v2, tfs in zip(cpu["infer"], cpu["predict"], strict=True)]
    write_result(args.out, {
        "benchmark": "loop_cost",
        "parameters": {"requests": args.requests, "runs": args.runs,
                       "concurrency": args.concurrency, "apis": apis, "batching": BATCHING,
                       "tensorflow": pools.model_dump()},
        "method": "RestApi.app called in-process by concurrent ASGI clients on one uvloop "
                  "loop (no sockets, no uvicorn); loop thread CPU by time.thread_time",
        "model": {"sizes": list(SIZES), "dtype": "float32",
                  "body_bytes": {api: len(body) for api, body in bodies.items()}},
        "runs": runs,
        "loop_cpu_us_per_request": {
            api: {"median": statistics.median(v), "min": min(v), "max": max(v)}
            for api, v in cpu.items()
        },
        "infer_over_predict_per_run": ratios,
        "infer_over_predict_median": statistics.median(ratios) if ratios else None,
    })


def _histogram(metrics: Any, model: str) -> tuple[float, float]:
    """(batches run, rows in them) so far, from the daemon's batch-size histogram."""
    count = total = 0.0
    for family in metrics.batch_size.collect():
        for sample in family.samples:
            if sample.labels.get("model") == model:
                if sample.name.endswith("_count"):
                    count = sample.value
                elif sample.name.endswith("_sum"):
                    total = sample.value
    return count, total


if __name__ == "__main__":
    main()
