"""Throughput and latency of REST predict, one instance per request.

The model is an MLP (64-512-512-10, float32, random weights from a fixed seed) written
here as a TF2 SavedModel (`serving_default`: x float32 [None, 64] -> y [None, 10]). It is
served, one after the other in the same run, by:

- `modelwatch`: the daemon as a subprocess (tests/daemon_process.py), no batching;
- `modelwatch_batching`: the same with the model's `batching:` block (--batching-config);
- `flask_gunicorn`: the naive baseline in bench/baselines/flask_app.py under gunicorn,
  2 workers x 8 threads (gthread), calling the model once per request;

and called in-process (`in_process`): the model loaded as the daemon loads it (a TF1
session, as TF Serving runs every model) and called back to back with full batches, the
ceiling in instances/s (and with batches of 1, the per-call floor). The Flask baseline
calls the model the way most hand-written servers do, through `tf.saved_model.load`'s
signature function, which costs ~7x more Python per call (bench/tf_call_cost.py).

For each server and concurrency C, hey sends the same one-instance request for D seconds
(`hey -m POST -T application/json -d '{"instances": [[...]]}' -c C -z Ds -o csv`) after a
discarded warm-up; p50 and p99 are exact (nearest rank) over hey's per-request rows of 200
answers, throughput is 200 answers per second, and non-200 answers are failures. hey's CSV
leaves out requests that got no answer at all; for modelwatch the server's own request
counter (Prometheus) is recorded beside hey's count to expose them. hey runs on the same
machine, so it takes CPU from the server.

    .venv/bin/python bench/throughput.py [--duration 30] [--concurrency 1,8,32]
        [--variants modelwatch,modelwatch_batching,flask_gunicorn,in_process] [--repeat N]
        [--tensorflow-config '{}']

Both modelwatch daemons run with the `tensorflow:` block an operator would give a small
model on 2 cores, `{"intra_op_parallelism": 1, "inter_op_parallelism": -1}`: each batch
runs on the batch thread that took it, with no hand-off to TensorFlow's pools
(`--tensorflow-config '{}'` keeps TensorFlow's defaults, one pool thread per core). The
Flask baseline keeps TensorFlow's defaults, the naive design's; with the same settings it
was no faster (docs/benchmarks.md, section 1).

With `--repeat N` the servers run N rounds, interleaved (A B C, A B C, ...), so a slow
spell of the shared machine hits every server alike; each server's figures are then the
round with its median throughput, every round's throughput is kept, and `ratios` gives
batching over the Flask baseline per round and for the medians.

Writes bench/results/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    daemon_config,
    default_out,
    ensure_hey,
    folder_bytes,
    hey_version,
    instances_body,
    latency_summary,
    metric_sum,
    parse_list,
    prometheus,
    run_hey,
    write_mlp,
    write_result,
)
from bench.rounds import median_round, ratios_over  # noqa: E402
from tests.daemon_process import DaemonProcess, free_port  # noqa: E402  (the repo's daemon harness)

SIZES = (64, 512, 512, 10)
VARIANTS = ("modelwatch", "modelwatch_batching", "flask_gunicorn", "in_process")
DEFAULT_BATCHING = {"max_batch_size": 32, "batch_timeout_micros": 0, "num_batch_threads": 2}
DEFAULT_TENSORFLOW = {"intra_op_parallelism": 1, "inter_op_parallelism": -1}
MODEL = "mlp"


def measure(url: str, body: str, args: argparse.Namespace, daemon: DaemonProcess | None = None
            ) -> dict[str, Any]:
    """A warm-up, then one hey run per concurrency."""
    run_hey(url, body, max(args.concurrency), duration_s=args.warmup)
    results: dict[str, Any] = {}
    for concurrency in args.concurrency:
        before = prometheus(daemon) if daemon else None
        summary = latency_summary(run_hey(url, body, concurrency, duration_s=args.duration))
        if daemon is not None and before is not None:
            after = prometheus(daemon)
            name = "modelwatch_requests_total"
            summary["server_counted_requests"] = int(
                metric_sum(after, name, model=MODEL, api="predict")
                - metric_sum(before, name, model=MODEL, api="predict")
            )
        results[str(concurrency)] = summary
        print(f"  c={concurrency}: {summary['throughput_rps']} rps, p50 {summary['p50_ms']} ms, "
              f"p99 {summary['p99_ms']} ms, non-200 {summary['non_200']}", file=sys.stderr)
    return results


def check_answer(url: str, body: str, expected: list[float]) -> None:
    """One request, compared with the in-process answer, so every server runs the model."""
    import httpx
    import numpy as np

    response = httpx.post(url, content=body, headers={"Content-Type": "application/json"},
                          timeout=30)
    response.raise_for_status()
    got = response.json()["predictions"][0]
    if not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
        raise RuntimeError(f"{url} answered {got[:3]}..., expected {expected[:3]}...")


def bench_modelwatch(work: Path, model: Path, body: str, expected: list[float],
                     args: argparse.Namespace, batching: dict[str, Any] | None) -> dict[str, Any]:
    base = work / "models" / MODEL
    if not base.exists():
        shutil.copytree(model, base / "1")
    folder = work / ("modelwatch_batching" if batching else "modelwatch")
    folder.mkdir()
    entry: dict[str, Any] = {"name": MODEL, "base_path": str(base)}
    if batching:
        entry["batching"] = batching
    config = daemon_config(folder, [entry])
    if args.tensorflow_config:
        config["tensorflow"] = args.tensorflow_config
    d = DaemonProcess(folder, config).start()
    try:
        d.wait_for_states(MODEL, {1: "AVAILABLE"})
        url = f"{d.client.base_url}/v1/models/{MODEL}:predict"
        check_answer(url, body, expected)
        return {"config": entry | {"base_path": "<temporary>"},
                "by_concurrency": measure(url, body, args, d)}
    finally:
        d.stop()


def bench_flask(work: Path, model: Path, body: str, expected: list[float],
                args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--workers", "2", "--worker-class", "gthread",
               "--threads", "8", "--bind", f"127.0.0.1:{port}", "--timeout", "120",
               "--chdir", str(ROOT / "bench" / "baselines"), "flask_app:create_app()"]
    log = open(work / "gunicorn.log", "ab")
    server = subprocess.Popen(command, env={**os.environ, "MODEL_DIR": str(model)},
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                log_text = (work / "gunicorn.log").read_text()
                raise RuntimeError(f"gunicorn exited:\n{log_text[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not answer within 120 s")
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/v1/models/{MODEL}:predict"
        check_answer(url, body, expected)
        return {"command": " ".join(command[1:]).replace(str(ROOT) + "/", ""),
                "by_concurrency": measure(url, body, args)}
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def bench_in_process(model: Path, batches: list[int], seconds: float) -> dict[str, Any]:
    """The model loaded as the daemon loads it (`load_saved_model`: a session) and called
    back to back on a full batch, for `seconds` each."""
    import numpy as np

    from loader.servables.quiet_tf import import_tensorflow

    import_tensorflow()
    from loader.servables.savedmodel import load_saved_model

    servable = load_saved_model(model)
    rng = np.random.default_rng(2)
    results: dict[str, Any] = {"backend": servable.backend}
    for batch in batches:
        x = {"x": rng.uniform(-1, 1, (batch, SIZES[0])).astype(np.float32)}
        for _ in range(20):
            servable.run("serving_default", x)
        calls, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            servable.run("serving_default", x)
            calls += 1
        results[f"batch_{batch}"] = {
            "calls_per_s": round(calls / elapsed, 1),
            "instances_per_s": round(calls * batch / elapsed, 1),
            "ms_per_call": round(elapsed / calls * 1000, 3),
        }
        print(f"  batch {batch}: {results[f'batch_{batch}']}", file=sys.stderr)
    return results


def run_variant(variant: str, work: Path, model: Path, body: str, expected: list[float],
                args: argparse.Namespace) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    if variant == "modelwatch":
        return bench_modelwatch(work, model, body, expected, args, None)
    if variant == "modelwatch_batching":
        return bench_modelwatch(work, model, body, expected, args, args.batching_config)
    if variant == "flask_gunicorn":
        return bench_flask(work, model, body, expected, args)
    return bench_in_process(model, args.ceiling_batches, args.ceiling_seconds)


def ratios(rounds: dict[str, list[dict[str, Any]]], concurrency: list[int]) -> dict[str, Any]:
    """modelwatch with batching over the Flask baseline: per round, and of the medians."""
    ours, theirs = rounds.get("modelwatch_batching"), rounds.get("flask_gunicorn")
    if not ours or not theirs:
        return {}
    found: dict[str, Any] = {}
    for c in map(str, concurrency):
        found[f"batching_over_flask_c{c}"] = ratios_over(ours, theirs, c)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per hey run")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of discarded load")
    parser.add_argument("--concurrency", type=parse_list, default=[1, 8, 32])
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--batching-config", type=json.loads, default=DEFAULT_BATCHING,
                        help="the model's batching: block for modelwatch_batching, as JSON")
    parser.add_argument("--tensorflow-config", type=json.loads, default=DEFAULT_TENSORFLOW,
                        help="the daemons' tensorflow: block, as JSON (thread pools); "
                             "'{}' for TensorFlow's defaults")
    parser.add_argument("--ceiling-batches", type=parse_list, default=[1, 32],
                        help="in-process batch sizes")
    parser.add_argument("--ceiling-seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds of the servers")
    parser.add_argument("--out", default=default_out("throughput"))
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    ensure_hey()

    body = instances_body(SIZES[0])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = write_mlp(work / "mlp", SIZES, seed=0)
        import numpy as np
        import tensorflow as tf

        x = np.asarray(json.loads(body)["instances"], np.float32)
        expected = tf.saved_model.load(str(model)).signatures["serving_default"](
            x=tf.constant(x))["y"].numpy()[0].tolist()
        rounds: dict[str, list[dict[str, Any]]] = {}
        for round_number in range(1, args.repeat + 1):
            for variant in variants:
                if variant == "in_process" and round_number > 1:
                    continue  # no server, no shared-machine noise worth repeating
                print(f"{variant} (round {round_number} of {args.repeat}):", file=sys.stderr)
                rounds.setdefault(variant, []).append(
                    run_variant(variant, work / f"round-{round_number}", model, body,
                                expected, args))
        results = {variant: median_round(runs) for variant, runs in rounds.items()}
        model_bytes = folder_bytes(model)
    write_result(args.out, {
        "benchmark": "throughput",
        "parameters": {"duration_s": args.duration, "warmup_s": args.warmup,
                       "concurrency": args.concurrency, "variants": variants,
                       "daemon_tensorflow": args.tensorflow_config},
        "method": "servers run one after the other in one invocation; per server a discarded "
                  "warm-up at the highest concurrency, then hey -z per concurrency with one "
                  "instance per request; p50/p99 nearest-rank over 200 answers from hey's CSV "
                  "rows; throughput = 200 answers / (last answer's end - hey start); "
                  "in_process = load_saved_model (a session) called back to back on one "
                  "full batch",
        "model": {"sizes": list(SIZES), "dtype": "float32", "seed": 0, "bytes": model_bytes},
        "hey": {"version": hey_version(), "body_bytes": len(body)},
        "results": results,
        "ratios": ratios(rounds, args.concurrency),
    })


if __name__ == "__main__":
    main()
