"""Ray Serve: REST predict throughput with 1 and 2 replicas, and rollout time.

A real local Ray cluster (a head and a second node, `ray start` on this machine, one CPU
each; tests/cluster/ray_cluster.py; a fresh one per replica count) runs `modelwatch ray` with the MLP of
bench/throughput.py (64-512-512-10) served from moto's S3 server. For each replica count,
hey sends the same one-instance predict through Serve's HTTP proxy for D seconds per
concurrency after a discarded warm-up (exact p50/p99 over hey's rows, as throughput.py).
Then, with 2 replicas, version N+1 is uploaded and the time from the upload's last object
to the flip (the watcher's rollout routing N+1, read from /modelwatch/replicas every
50 ms) is recorded, --rollouts times. Everything (Ray, the replicas, hey, moto) shares this
machine's cores, so figures are for comparing, not for capacity planning.

    .venv/bin/python bench/ray_serve.py [--duration 30] [--concurrency 1,8,32]
        [--replicas 1,2] [--rollouts 3]

Writes bench/results/ray_serve.json.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    default_out,
    ensure_hey,
    hey_version,
    instances_body,
    latency_summary,
    parse_list,
    run_hey,
    write_mlp,
    write_result,
)
from tests.cluster.ray_cluster import Deployment, LocalRayCluster  # noqa: E402
from tests.daemon_process import wait_until  # noqa: E402
from tests.s3_storage import CREDENTIALS, upload  # noqa: E402

SIZES = (64, 512, 512, 10)
MODEL, BUCKET = "mlp", "models"


def serving_replicas(deployment: Deployment) -> int:
    try:
        table = deployment.replicas()["replicas"]
    except Exception:
        return 0
    return sum(1 for r in table if r["live"] and r["serving"])


def routed(deployment: Deployment) -> list[int]:
    rollout = deployment.replicas()["rollouts"].get(MODEL, {})
    return list(rollout.get("routed", []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per hey run")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of discarded load")
    parser.add_argument("--concurrency", type=parse_list, default=[1, 8, 32])
    parser.add_argument("--replicas", type=parse_list, default=[1, 2])
    parser.add_argument("--rollouts", type=int, default=3, help="rollouts timed with 2 replicas")
    parser.add_argument("--out", default=default_out("ray_serve"))
    args = parser.parse_args()
    ensure_hey()
    os.environ.update(CREDENTIALS)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto: one line per S3 call
    import boto3
    from moto.server import ThreadedMotoServer

    body = instances_body(SIZES[0])
    result: dict[str, Any] = {"benchmark": "ray_serve", "model": "mlp " + "-".join(map(str, SIZES)),
                              "hey": hey_version(), "duration_s": args.duration,
                              "throughput": {}, "rollout_seconds": []}
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        work = Path(tmp)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        model = write_mlp(work / "model", SIZES, seed=0)
        upload(s3, model, f"repo/{MODEL}/1", bucket=BUCKET)
        config = {
            "storage": {"cache_dir": str(work / "cache"),
                        "s3": {"endpoint_url": endpoint, "region": "us-east-1"}},
            "watch": {"poll_interval_seconds": 0.5},
            "tensorflow": {"intra_op_parallelism": 1, "inter_op_parallelism": -1},
            "models": [{"name": MODEL, "base_path": f"s3://{BUCKET}/repo/{MODEL}"}],
        }
        version = 1
        clusters: list[LocalRayCluster] = []
        try:
            for replicas in args.replicas:
                # A fresh cluster (and folder) per replica count: nothing carries over.
                run_dir = work / f"replicas-{replicas}"
                run_dir.mkdir()
                cluster = LocalRayCluster(run_dir, head_cpus=1, node_cpus=1, env=CREDENTIALS)
                clusters.append(cluster.start())
                deployment = Deployment(run_dir, cluster, CREDENTIALS, config, replicas=replicas)
                try:
                    wait_until(lambda d=deployment, n=replicas: serving_replicas(d) == n, 600,
                               f"{replicas} serving replica(s)", interval=0.5)
                    url = f"{deployment.url}/v1/models/{MODEL}:predict"
                    run_hey(url, body, max(args.concurrency), duration_s=args.warmup)
                    runs = {}
                    for concurrency in args.concurrency:
                        summary = latency_summary(
                            run_hey(url, body, concurrency, duration_s=args.duration))
                        runs[str(concurrency)] = summary
                        print(f"  replicas={replicas} c={concurrency}: "
                              f"{summary['throughput_rps']} rps, p99 {summary['p99_ms']} ms",
                              file=sys.stderr)
                    result["throughput"][str(replicas)] = runs
                    if replicas == 2:
                        for _ in range(args.rollouts):
                            version += 1
                            upload(s3, model, f"repo/{MODEL}/{version}", bucket=BUCKET)
                            uploaded = time.monotonic()
                            wait_until(lambda d=deployment, v=version: routed(d) == [v], 300,
                                       f"the flip to version {version}", interval=0.05)
                            seconds = round(time.monotonic() - uploaded, 3)
                            result["rollout_seconds"].append(seconds)
                            print(f"  rollout to {version}: {seconds} s", file=sys.stderr)
                finally:
                    deployment.stop()
                    cluster.stop()  # idle Ray processes would take CPU from the next run
        finally:
            for cluster in clusters:
                cluster.stop()
            moto.stop()
    result["notes"] = (
        "rollout_seconds: from the last object of version N+1 uploaded to the watcher routing "
        f"it; includes S3 settling (two listings {config['watch']['poll_interval_seconds']} s "
        "apart), the fetch and load on both replicas, and the hold barrier."
    )
    write_result(args.out, result)


if __name__ == "__main__":
    main()
