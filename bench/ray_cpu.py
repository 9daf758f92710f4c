"""Where the cluster's CPU per request goes, process by process.

One local Ray cluster (as bench/ray_serve.py starts it: two nodes, `modelwatch ray` with 2
replicas of the MLP from moto's S3 server, requests through the balancer) per variant; in
each, an idle window, then hey at one concurrency over REST, both of D seconds. Every
process of the cluster's tree (bench/proc_cpu.py) is named by its command line (HAProxy,
each replica, the watcher, the balancer's actor, Serve's controller, raylet, GCS, the
dashboard agent, the log monitor, the `modelwatch ray` driver...) and its CPU-seconds in
each window are reported, with the load's CPU-seconds per 1,000 requests for each.

Variants (--variants, comma-separated): `as_is`, the bench's cluster as it stands; `quiet`,
with Ray's background work the application does not use switched off by Ray's own settings
(QUIET_ENV); `batch_wait`, the replicas' batches waiting 1 ms to fill; `haproxy_one_thread`
and `haproxy_two_threads`, HAProxy's threads; `one_replica`, one replica. The machine is
shared: compare processes within a run, not runs across days.

    .venv/bin/python bench/ray_cpu.py [--duration 8] [--concurrency 32] [--variants as_is,quiet]

Writes bench/results/ray_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import default_out, ensure_hey, instances_body, write_mlp, write_result  # noqa: E402
from bench.haproxy_hop import admin_socket, balancer_counters, counters_between  # noqa: E402
from bench.proc_cpu import ProcStat, become_subreaper, read_all, tree  # noqa: E402
from bench.ray_serve import BUCKET, MODEL, SIZES, serving  # noqa: E402
from bench.throughput import DEFAULT_BATCHING, DEFAULT_TENSORFLOW  # noqa: E402
from bench.windows import measured_window  # noqa: E402
from tests.cluster.ray_cluster import Deployment, LocalRayCluster  # noqa: E402
from tests.daemon_process import wait_until  # noqa: E402
from tests.s3_storage import CREDENTIALS, upload  # noqa: E402

# Ray's background work that `modelwatch ray` does not use: its metrics (the application
# exports its own Prometheus metrics) and the task events the dashboard's state API reads.
QUIET_ENV = {
    "RAY_enable_metrics_collection": "0",
    "RAY_task_events_report_interval_ms": "0",
}
# name: (the cluster's environment, the model's batching over the bench's own, replicas)
VARIANTS: dict[str, tuple[dict[str, str], dict[str, Any], int]] = {
    "as_is": ({}, {}, 2),
    "quiet": (QUIET_ENV, {}, 2),
    # Each replica sees half the clients: let a batch wait 1 ms for more of them.
    "batch_wait": ({}, {"batch_timeout_micros": 1000}, 2),
    # HAProxy's threads (Ray's own setting): two is HAProxy's default on these 2 cores.
    "haproxy_two_threads": ({"RAY_SERVE_HAPROXY_NBTHREAD": "2"}, {}, 2),
    "haproxy_one_thread": ({"RAY_SERVE_HAPROXY_NBTHREAD": "1"}, {}, 2),
    # What splitting the clients over two replicas costs on one machine's cores.
    "one_replica": ({}, {}, 1),
}

# (what the command line contains, the process's name here), the first match wins.
NAMES = (
    ("haproxy", "haproxy"),
    ("ServeReplica:modelwatch:ReplicaDeployment", "replica"),
    ("ServeReplica:modelwatch:WatcherDeployment", "watcher"),
    ("ServeReplica:modelwatch:BalancerDeployment", "balancer actor"),
    ("ServeController", "serve controller"),
    ("gcs_server", "gcs"),
    ("raylet", "raylet"),
    ("dashboard_agent", "dashboard agent"),
    ("dashboard.py", "dashboard"),
    ("log_monitor", "log monitor"),
    ("monitor.py", "autoscaler monitor"),
    ("runtime_env", "runtime env agent"),
    ("loader ray", "modelwatch ray driver"),
    ("ray start", "ray start"),
    ("default_worker", "idle ray worker"),
)


def name_of(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    for marker, name in NAMES:
        if marker in cmdline:
            return name
    return Path(cmdline.split(" ")[0]).name or "?"


def by_process(before: dict[tuple[int, int], ProcStat], after: dict[tuple[int, int], ProcStat],
               names: dict[int, str]) -> dict[str, float]:
    """CPU-seconds per named process between two snapshots (own time and reaped children's)."""
    spent: dict[str, float] = defaultdict(float)
    for key, stat in after.items():
        earlier = before.get(key)
        own = stat.own_s + stat.children_s
        if earlier is not None:
            own -= earlier.own_s + earlier.children_s
        name = names.setdefault(stat.pid, name_of(stat.pid))
        spent[f"{name} {stat.pid}" if name in ("replica", "raylet") else name] += own
    return {k: round(v, 3) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}


def measure(work: Path, endpoint: str, variant: str, args: Any, body: str) -> dict[str, Any]:
    env, batching, replicas = VARIANTS[variant]
    cluster = LocalRayCluster(work, head_cpus=1, node_cpus=1, env={**CREDENTIALS, **env}).start()
    deployment: Deployment | None = None
    try:
        deployment = Deployment(work, cluster, {**CREDENTIALS, **env}, {
            "storage": {"cache_dir": str(work / f"cache-{variant}"),
                        "s3": {"endpoint_url": endpoint, "region": "us-east-1"}},
            "watch": {"poll_interval_seconds": 0.5},
            "tensorflow": DEFAULT_TENSORFLOW,
            "models": [{"name": MODEL, "batching": {**DEFAULT_BATCHING, **batching},
                        "base_path": f"s3://{BUCKET}/repo/{MODEL}"}],
        }, replicas=replicas)
        dep = deployment
        wait_until(lambda: len(serving(dep)) == replicas, 600, f"{replicas} serving replica(s)",
                   interval=0.5)
        roots = [*cluster.pids, dep.pid]

        def snapshot() -> dict[tuple[int, int], ProcStat]:
            stats, found = read_all(), {}
            for root in roots:
                found.update(tree(stats, root))
            return found

        url = f"{dep.url}/v1/models/{MODEL}:predict"
        measured_window(snapshot, url, args.concurrency, args.warmup, body=body)  # warm-up
        names: dict[int, str] = {}
        idle_before = snapshot()
        time.sleep(args.duration)  # the window itself: nothing to wait for
        idle = by_process(idle_before, snapshot(), names)
        load_before = snapshot()
        sock = admin_socket(load_before)
        counted_before = balancer_counters(sock)
        summary = measured_window(snapshot, url, args.concurrency, args.duration, body=body)
        load = by_process(load_before, snapshot(), names)
        counted = counters_between(counted_before, balancer_counters(sock))
        summary["load_average_1m"] = round(os.getloadavg()[0], 2)  # the machine is shared
        print(f"  HAProxy's REST servers over the window: {counted}", file=sys.stderr, flush=True)
        answered = summary["requests_answered"]
        per_1000 = {k: round(v / answered * 1000, 4) for k, v in load.items()} if answered else {}
        print(f"{variant}: {summary['throughput_rps']} rps, CPU {summary['cpu_s_per_1000']} s/1000",
              file=sys.stderr, flush=True)
        for name, seconds in load.items():
            print(f"  {name:28} idle {idle.get(name, 0.0):7.3f} s  load {seconds:7.3f} s  "
                  f"{per_1000.get(name, 0.0):.4f} s/1000", file=sys.stderr, flush=True)
        return {"env": env, "replicas": replicas, "batching": {**DEFAULT_BATCHING, **batching}, "window": summary, "balancer": counted, "idle_cpu_s": idle, "load_cpu_s": load,
                "load_cpu_s_per_1000": per_1000}
    finally:
        if deployment is not None:
            deployment.stop()
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--variants", default="as_is,quiet")
    parser.add_argument("--out", default=default_out("ray_cpu"))
    args = parser.parse_args()
    ensure_hey()
    become_subreaper()
    os.environ.update(CREDENTIALS)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto: one line per S3 call
    import boto3
    from moto.server import ThreadedMotoServer

    body = instances_body(SIZES[0])
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    result: dict[str, Any] = {"benchmark": "ray_cpu", "model": "mlp " + "-".join(map(str, SIZES)),
                              "duration_s": args.duration, "concurrency": args.concurrency,
                              "variants": {}}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-ray-cpu-") as tmp:
            work = Path(tmp)
            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            s3.create_bucket(Bucket=BUCKET)
            upload(s3, write_mlp(work / "model", SIZES, seed=0), f"repo/{MODEL}/1", bucket=BUCKET)
            for number, variant in enumerate(args.variants.split(",")):
                # A variant named twice (A,B,A,B: pairs in alternating order) keeps each.
                key = variant if variant not in result["variants"] else f"{variant} #{number}"
                result["variants"][key] = measure(work, endpoint, variant, args, body)
    finally:
        moto.stop()
    result["notes"] = ("CPU-seconds per process of the cluster's tree; the machine's 2 cores "
                       "were shared with other work during the run.")
    write_result(args.out, json.loads(json.dumps(result)))


if __name__ == "__main__":
    main()
