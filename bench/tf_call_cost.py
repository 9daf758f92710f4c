"""What one model call costs on each of modelwatch's two ways to run a SavedModel.

The model is the throughput benchmark's MLP (64-512-512-10, float32, a TF2 SavedModel).
It is loaded twice through `loader.servables.savedmodel.load_saved_model`: in a TF1 session on its
graph (`backend="session"`, what TF Serving does and modelwatch's default) and through
its restored TF2 signature function (`backend="tf2"`). For each backend and batch size,
`SavedModelServable.run` is called back to back, and per call we record:

- `wall_us`: elapsed time;
- `calling_thread_cpu_us`: CPU time of the calling thread (`time.thread_time`). Python
  code runs on this thread holding the interpreter lock, so this bounds what a call
  takes from every other Python thread of the server (its event loop above all);
- `process_cpu_us`: CPU time of the whole process (TensorFlow's own threads included).

Then `threads_4`: four threads calling at once (8 rows each), calls per second, which
shows how much of a call runs outside the interpreter lock. And `after_idle_<ms>ms`: the
calling thread's CPU for a call made after it slept that long, as a batch thread's call
is (it sleeps while the event loop reads the next requests). On a virtual machine whose
idle vCPUs halt, a thread that slept finds its caches cold; back-to-back calls never do.

TensorFlow starts as the daemon starts it, with oneDNN off; run it with
TF_ENABLE_ONEDNN_OPTS=1 (and another --out) for oneDNN's figures. `--tensorflow-config`
sizes TensorFlow's pools as the daemon's `tensorflow:` block does, e.g.
'{"intra_op_parallelism": 1, "inter_op_parallelism": -1}' for calls that never leave the
calling thread.

    .venv/bin/python bench/tf_call_cost.py [--calls 2000] [--batches 1,8,32]
        [--idle-ms 5] [--tensorflow-config JSON] [--out PATH]

Writes bench/results/tf_call_cost.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import default_out, parse_list, write_mlp, write_result  # noqa: E402

SIZES = (64, 512, 512, 10)


def per_call(servable: Any, rows: int, calls: int) -> dict[str, float]:
    import numpy as np

    inputs = {"x": np.random.default_rng(rows).uniform(-1, 1, (rows, SIZES[0])).astype(np.float32)}
    for _ in range(50):
        servable.run("serving_default", inputs)
    wall, process, thread = time.perf_counter(), time.process_time(), time.thread_time()
    for _ in range(calls):
        servable.run("serving_default", inputs)
    return {
        "wall_us": round((time.perf_counter() - wall) / calls * 1e6, 1),
        "calling_thread_cpu_us": round((time.thread_time() - thread) / calls * 1e6, 1),
        "process_cpu_us": round((time.process_time() - process) / calls * 1e6, 1),
    }


def after_idle(servable: Any, rows: int, calls: int, idle_seconds: float) -> float:
    """The calling thread's CPU per call (us), each call made after sleeping `idle_seconds`."""
    import numpy as np

    inputs = {"x": np.random.default_rng(rows).uniform(-1, 1, (rows, SIZES[0])).astype(np.float32)}
    pause = threading.Event()  # never set: wait() is a plain sleep of the thread
    total = 0.0
    for _ in range(calls):
        pause.wait(idle_seconds)
        started = time.thread_time()
        servable.run("serving_default", inputs)
        total += time.thread_time() - started
    return round(total / calls * 1e6, 1)


def threaded(servable: Any, threads: int, calls: int) -> float:
    import numpy as np

    inputs = {"x": np.ones((8, SIZES[0]), np.float32)}

    def loop() -> None:
        for _ in range(calls):
            servable.run("serving_default", inputs)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return round(threads * calls / (time.perf_counter() - started), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per measurement")
    parser.add_argument("--batches", type=parse_list, default=[1, 8, 32])
    parser.add_argument("--idle-ms", type=float, default=5.0,
                        help="sleep before each call of the after-idle figures; 0 skips them")
    parser.add_argument("--tensorflow-config", type=json.loads, default={},
                        help="the daemon's tensorflow: block, as JSON (thread pools)")
    parser.add_argument("--out", default=default_out("tf_call_cost"))
    args = parser.parse_args()

    from loader.config.schema import TensorFlowConfig
    from loader.servables.quiet_tf import import_tensorflow, set_thread_pools

    pools = TensorFlowConfig(**args.tensorflow_config)
    set_thread_pools(pools.intra_op_parallelism, pools.inter_op_parallelism)
    import_tensorflow()  # with oneDNN off unless TF_ENABLE_ONEDNN_OPTS=1, as the daemon
    from tensorflow.python.util import _pywrap_util_port

    from loader.servables.savedmodel import load_saved_model

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="modelwatch-bench-") as tmp:
        model = write_mlp(Path(tmp) / "mlp", SIZES, seed=0)
        for backend in ("session", "tf2"):
            servable = load_saved_model(model, backend=backend)
            try:
                assert servable.backend == backend
                entry: dict[str, Any] = {}
                for rows in args.batches:
                    entry[f"batch_{rows}"] = per_call(servable, rows, args.calls)
                    if args.idle_ms > 0:
                        idle = f"after_idle_{args.idle_ms:g}ms_calling_thread_cpu_us"
                        entry[f"batch_{rows}"][idle] = after_idle(
                            servable, rows, min(args.calls, 400), args.idle_ms / 1000
                        )
                    print(f"  {backend} batch {rows}: {entry[f'batch_{rows}']}", file=sys.stderr)
                entry["threads_4_batch_8_calls_per_s"] = threaded(servable, 4, args.calls // 4)
                print(f"  {backend} 4 threads: {entry['threads_4_batch_8_calls_per_s']} calls/s",
                      file=sys.stderr)
                results[backend] = entry
            finally:
                servable.unload()
    write_result(args.out, {
        "benchmark": "tf_call_cost",
        "parameters": {"calls": args.calls, "batches": args.batches, "idle_ms": args.idle_ms,
                       "onednn": bool(_pywrap_util_port.IsMklEnabled()),
                       "tensorflow": pools.model_dump()},
        "model": {"layers": list(SIZES), "dtype": "float32"},
        "results": results,
    })


if __name__ == "__main__":
    main()
