"""The Ray cluster against one daemon: REST and gRPC predict, interleaved rounds, and the
rollout time.

Two sides run at once on this machine, each serving the MLP of bench/throughput.py
(64-512-512-10, the same batching and thread pools):

- **cluster**: a real local Ray cluster (a head and a second node, `ray start`, one CPU
  each; tests/cluster/ray_cluster.py) running `modelwatch ray` with 2 replicas that load
  from moto's S3 server; requests go to the balancer (HAProxy) at the cluster's endpoint;
- **daemon**: one `modelwatch serve` loading the same model from a local folder.

In each round, each side in turn (the order alternates by round), each transport: hey
(REST, one instance a request) or h2load replaying one framed PredictRequest (gRPC;
bench/grpc_load.py), per concurrency one window of D seconds (a discarded warm-up at the
highest concurrency in the first round). Per window: answers/s, exact p50/p99, non-200
answers, gRPC calls not OK (counted by the servers: every replica's Prometheus counter on
the cluster's side), and the side's CPU-seconds over its whole process tree per 1,000
requests (bench/proc_cpu.py: for the cluster the Ray nodes with everything they started,
GCS, raylets, Serve's controller, the watcher, the replicas, the balancer and HAProxy, and
the `modelwatch ray` driver; the load generators and moto are not counted on either side).
Then, with the cluster, version N+1 is uploaded and the time from the upload's last object
to the flip (the watcher's rollout routing N+1) is recorded, --rollouts times. Everything
shares this machine's cores: figures are for comparing, not for capacity planning.

    .venv/bin/python bench/ray_serve.py [--duration 10] [--rounds 2] [--concurrency 1,8,32]
        [--rollouts 3]

Writes bench/results/ray_serve.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    default_out,
    ensure_hey,
    hey_version,
    instances_body,
    parse_list,
    write_mlp,
    write_result,
)
from bench.grpc_load import (  # noqa: E402
    PREDICT_PATH,
    ensure_h2load,
    grpc_frame,
    h2load_version,
    predict_request_bytes,
)
from bench.haproxy_hop import admin_socket, balancer_counters, counters_between  # noqa: E402
from bench.proc_cpu import become_subreaper, read_all, tree  # noqa: E402
from bench.rounds import median_round, ratios_over  # noqa: E402
from bench.throughput import DEFAULT_BATCHING, DEFAULT_TENSORFLOW  # noqa: E402
from bench.windows import measured_window  # noqa: E402
from loader.cluster.balancer import haproxy_threads  # noqa: E402
from tests.cluster.ray_cluster import Deployment, LocalRayCluster  # noqa: E402
from tests.daemon_process import DaemonProcess, free_port, wait_until  # noqa: E402
from tests.s3_storage import CREDENTIALS, upload  # noqa: E402

SIZES = (64, 512, 512, 10)
MODEL, BUCKET = "mlp", "models"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class Side:
    """One server under test: where its REST and gRPC answer, which processes it is, and
    where its servers count their gRPC calls."""

    name: str
    rest_url: str
    grpc_url: str
    roots: Callable[[], list[int]]
    metrics_urls: Callable[[], list[str]]

    def cpu_snapshot(self) -> dict[tuple[int, int], Any]:
        stats = read_all()
        found: dict[tuple[int, int], Any] = {}
        for root in self.roots():
            found.update(tree(stats, root))
        return found


def one_window(side: Side, transport: str, concurrency: int, duration_s: float, body: str,
               frame: bytes) -> dict[str, Any]:
    """One measured window, with the side's CPU around it (and over REST, on the cluster's
    side, the requests HAProxy sent each replica and the connections it opened to them)."""
    if transport == "grpc":
        summary = measured_window(side.cpu_snapshot, side.grpc_url, concurrency, duration_s,
                                  frame=frame, counted_at=side.metrics_urls())
    else:
        sock = admin_socket(side.cpu_snapshot())
        before = balancer_counters(sock)
        summary = measured_window(side.cpu_snapshot, side.rest_url, concurrency, duration_s,
                                  body=body)
        if sock is not None:
            summary["balancer"] = counters_between(before, balancer_counters(sock))
    summary["load_average_1m"] = round(os.getloadavg()[0], 2)  # the machine is shared
    return summary


def serving(deployment: Deployment) -> list[dict[str, Any]]:
    try:
        table = deployment.replicas()["replicas"]
    except Exception:
        return []
    return [r for r in table if r["live"] and r["serving"] and r.get("endpoint")]


def routed(deployment: Deployment) -> list[int]:
    rollout = deployment.replicas()["rollouts"].get(MODEL, {})
    return list(rollout.get("routed", []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per window")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of discarded load")
    parser.add_argument("--concurrency", type=parse_list, default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--rollouts", type=int, default=3, help="rollouts timed")
    parser.add_argument("--out", default=default_out("ray_serve"))
    args = parser.parse_args()
    ensure_hey()
    ensure_h2load()
    become_subreaper()  # a daemonised Ray process stays in its side's tree
    os.environ.update(CREDENTIALS)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto: one line per S3 call
    import boto3
    from moto.server import ThreadedMotoServer

    body = instances_body(SIZES[0])
    instance = json.loads(body)["instances"][0]
    frame = grpc_frame(predict_request_bytes(MODEL, instance))
    model_entry = {"name": MODEL, "batching": DEFAULT_BATCHING}
    result: dict[str, Any] = {
        "benchmark": "ray_serve", "model": "mlp " + "-".join(map(str, SIZES)),
        "hey": hey_version(), "h2load": h2load_version(), "duration_s": args.duration,
        "rounds": args.rounds, "batching": DEFAULT_BATCHING, "tensorflow": DEFAULT_TENSORFLOW,
        "haproxy_threads": haproxy_threads(),
        "runs": {}, "rollout_seconds": [],
    }
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    cluster: LocalRayCluster | None = None
    deployment: Deployment | None = None
    daemon: DaemonProcess | None = None
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        work = Path(tmp)
        try:
            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            s3.create_bucket(Bucket=BUCKET)
            model = write_mlp(work / "model", SIZES, seed=0)
            upload(s3, model, f"repo/{MODEL}/1", bucket=BUCKET)
            (work / "local" / MODEL).mkdir(parents=True)
            (work / "local" / MODEL / "1").symlink_to(model, target_is_directory=True)
            (work / "daemon").mkdir()
            daemon = DaemonProcess(work / "daemon", {
                "server": {"host": "127.0.0.1", "rest_port": 0, "grpc_port": free_port()},
                "storage": {"cache_dir": str(work / "daemon-cache")},
                "tensorflow": DEFAULT_TENSORFLOW,
                "models": [{**model_entry, "base_path": str(work / "local" / MODEL)}],
            }).start(timeout=180)
            cluster = LocalRayCluster(work, head_cpus=1, node_cpus=1, env=CREDENTIALS).start()
            deployment = Deployment(work, cluster, CREDENTIALS, {
                "storage": {"cache_dir": str(work / "cache"),
                            "s3": {"endpoint_url": endpoint, "region": "us-east-1"}},
                "watch": {"poll_interval_seconds": 0.5},
                "tensorflow": DEFAULT_TENSORFLOW,
                "models": [{**model_entry, "base_path": f"s3://{BUCKET}/repo/{MODEL}"}],
            }, replicas=2)
            started = time.monotonic()
            wait_until(lambda: len(serving(deployment)) == 2, 600, "2 serving replicas",
                       interval=0.5)
            result["cluster_start_s"] = round(time.monotonic() - started, 1)
            dep, clu, dae = deployment, cluster, daemon
            daemon_url = str(dae.client.base_url).rstrip("/")
            sides = [
                Side("cluster", f"{dep.url}/v1/models/{MODEL}:predict",
                     f"http://{dep.grpc_target}{PREDICT_PATH}",
                     lambda: [*clu.pids, dep.pid],
                     lambda: [f"http://{r['endpoint']['rest']}" for r in serving(dep)]),
                Side("daemon", f"{daemon_url}/v1/models/{MODEL}:predict",
                     f"http://127.0.0.1:{dae.grpc_port}{PREDICT_PATH}",
                     lambda: [dae.pid], lambda: [daemon_url]),
            ]
            runs: dict[str, list[dict[str, Any]]] = {
                f"{s.name}_{t}": [] for s in sides for t in ("rest", "grpc")}
            for number in range(args.rounds):
                order = sides if number % 2 == 0 else sides[::-1]
                for side in order:
                    for transport in ("rest", "grpc"):
                        if number == 0:
                            one_window(side, transport, max(args.concurrency), args.warmup,
                                       body, frame)
                        by_concurrency = {}
                        for c in args.concurrency:
                            summary = one_window(side, transport, c, args.duration, body, frame)
                            by_concurrency[str(c)] = summary
                            log(f"  round {number} {side.name} {transport} c={c}: "
                                f"{summary['throughput_rps']} rps, p50 {summary['p50_ms']} "
                                f"p99 {summary['p99_ms']} ms, non-200 {summary['non_200']}, "
                                f"non-OK {summary.get('grpc_non_ok', '-')}, "
                                f"CPU {summary['cpu_s_per_1000']} s/1000, "
                                f"load {summary['load_average_1m']}, "
                                f"balancer {summary.get('balancer', '-')}")
                        runs[f"{side.name}_{transport}"].append(
                            {"round": number, "by_concurrency": by_concurrency})
            result["runs"] = runs
            result["median"] = {key: median_round(value)["by_concurrency"]
                                for key, value in runs.items()}
            result["cluster_over_daemon"] = {
                transport: {str(c): ratios_over(runs[f"cluster_{transport}"],
                                                runs[f"daemon_{transport}"], str(c))
                            for c in args.concurrency}
                for transport in ("rest", "grpc")
            }
            daemon.stop()  # idle, but the rollouts are the cluster's alone
            daemon = None
            version = 1
            for _ in range(args.rollouts):
                version += 1
                upload(s3, model, f"repo/{MODEL}/{version}", bucket=BUCKET)
                uploaded = time.monotonic()
                wait_until(lambda v=version: routed(dep) == [v], 300,
                           f"the flip to version {version}", interval=0.05)
                seconds = round(time.monotonic() - uploaded, 3)
                result["rollout_seconds"].append(seconds)
                log(f"  rollout to {version}: {seconds} s")
        finally:
            if daemon is not None:
                daemon.stop()
            if deployment is not None:
                deployment.stop()
            if cluster is not None:
                cluster.stop()
            moto.stop()
    result["notes"] = (
        "rollout_seconds: from the last object of version N+1 uploaded to the watcher routing "
        "it; includes S3 settling (two listings 0.5 s apart), the fetch and load on both "
        "replicas, and the hold barrier. cpu_s_per_1000: the side's whole process tree "
        "(cluster: both Ray nodes and all they started, HAProxy included, and the driver)."
    )
    write_result(args.out, result)


if __name__ == "__main__":
    main()
