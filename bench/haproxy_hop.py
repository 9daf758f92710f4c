"""What the balancer's hop costs: HAProxy, as the cluster configures it, in front of one
daemon, against the same daemon straight, and against variants of the configuration.

The cluster's HAProxy (loader/cluster/balancer.py) costs 57-69 us of CPU a request in
bench/ray_cpu.py's runs. Here it runs without Ray: one `modelwatch serve` of the MLP (the
throughput benchmark's model, batching and thread pools), HAProxy with the cluster's
configuration (`haproxy_config`) and two servers that are both that daemon (the cluster's
two replicas, without a second model in memory), and hey over REST at one concurrency. In
interleaved rounds (the order rotates), each variant gets one window: answers/s, p50/p99,
HAProxy's CPU-seconds per 1,000 requests and the daemon's, and from HAProxy's own counters
(`show stat`) the connections it opened to the servers and the requests each server got.

Variants (--variants): `direct` (no HAProxy); `two_threads` (the configuration as it was,
HAProxy's default of a thread per core, the binary the cluster picks); the others change
one thing each, see VARIANTS.

    .venv/bin/python bench/haproxy_hop.py [--duration 8] [--rounds 3] [--concurrency 32]

Writes bench/results/haproxy_hop.json.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import default_out, ensure_hey, instances_body, write_mlp, write_result  # noqa: E402
from bench.proc_cpu import read_all, tree  # noqa: E402
from bench.throughput import DEFAULT_BATCHING, DEFAULT_TENSORFLOW  # noqa: E402
from bench.windows import measured_window  # noqa: E402
from loader.cluster.balancer import Listen, haproxy_binary, haproxy_config  # noqa: E402
from loader.cluster.messages import Endpoint  # noqa: E402
from tests.daemon_process import DaemonProcess, free_port, wait_until  # noqa: E402

SIZES = (64, 512, 512, 10)
MODEL = "mlp"


def _drop(line: str) -> Callable[[str], str]:
    return lambda text: "".join(kept + "\n" for kept in text.splitlines() if kept.strip() != line)


def _after(anchor: str, extra: str) -> Callable[[str], str]:
    return lambda text: text.replace(anchor + "\n", anchor + "\n" + extra + "\n", 1)


# name: (HAProxy's threads, a change to the configuration, the binary: None for the
# cluster's own choice). Two threads: HAProxy's own default on these 2 cores, the cluster's
# configuration before it said `nbthread`.
VARIANTS: dict[str, tuple[int, Callable[[str], str], str | None]] = {
    "two_threads": (2, lambda text: text, None),
    "one_thread": (1, lambda text: text, None),
    "debian_binary": (2, lambda text: text, "/usr/sbin/haproxy"),
    "no_buffer_request": (2, _drop("option http-buffer-request"), None),
    "reuse_always": (2, _after("defaults", "    http-reuse always"), None),
    "no_log": (2, _drop("log global"), None),
    "one_thread_reuse_always": (1, _after("defaults", "    http-reuse always"), None),
}


def backend_stat(admin_socket: Path, backend: str = "rest_replicas") -> dict[str, dict[str, str]]:
    """HAProxy's `show stat` for one backend of the cluster's configuration: server name
    (and BACKEND) -> its counters (`stot` requests, `connect` connections opened, `reuse`
    requests sent over an idle one, `status`...)."""
    with socket.socket(socket.AF_UNIX) as admin:
        admin.settimeout(5)
        admin.connect(str(admin_socket))
        admin.sendall(b"show stat\n")
        chunks = []
        while chunk := admin.recv(65536):
            chunks.append(chunk)
    lines = b"".join(chunks).decode().strip().splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
    return {r["svname"]: r for r in rows if r["pxname"] == backend}


def admin_socket(processes: Iterable[tuple[int, int]]) -> Path | None:
    """The admin socket of the cluster's HAProxy among `processes` ((pid, start) keys of
    a bench/proc_cpu.py snapshot): beside the configuration it was given."""
    for pid, _ in processes:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        if "haproxy" in argv[0] and "-f" in argv:
            return Path(argv[argv.index("-f") + 1]).with_name("admin.sock")
    return None


def balancer_counters(sock: Path | None) -> dict[str, dict[str, int]]:
    """Per server of the REST backend (and the backend's total): requests, connections
    opened, requests sent over an idle connection, and whether its checks say it is UP."""
    if sock is None:
        return {}
    return {name: {"requests": int(row.get("stot") or 0), "connect": int(row.get("connect") or 0),
                   "reuse": int(row.get("reuse") or 0), "up": int(row.get("status") == "UP")}
            for name, row in backend_stat(sock).items()}


def counters_between(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
                     ) -> dict[str, dict[str, int]]:
    """What balancer_counters counted between two readings (`up`: as at the second)."""
    return {name: {k: v if k == "up" else v - before.get(name, {}).get(k, 0)
                   for k, v in row.items()} for name, row in after.items()}


class HAProxy:
    """One HAProxy for a variant, in front of `servers` (name -> REST port)."""

    def __init__(self, work: Path, variant: str, servers: dict[str, int]) -> None:
        threads, change, binary = VARIANTS[variant]
        self.dir = work / f"haproxy-{variant}"
        self.dir.mkdir()
        self.port = free_port()
        backends = {name: Endpoint("127.0.0.1", port, 0) for name, port in servers.items()}
        text = change(haproxy_config(Listen("127.0.0.1", self.port, 0), backends, self.dir,
                                     threads))
        (self.dir / "haproxy.cfg").write_text(text)
        (self.dir / "servers.state").touch()
        self.binary = binary or haproxy_binary()
        self.process = subprocess.Popen(
            [self.binary, "-W", "-db", "-f", str(self.dir / "haproxy.cfg")],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "haproxy.log", "wb"))
        wait_until(lambda: self._up(servers), 30, f"HAProxy ({variant}) with its servers up")

    def stat(self) -> dict[str, dict[str, str]]:
        """`show stat` of the REST backend: server name -> HAProxy's counters."""
        return backend_stat(self.dir / "admin.sock")

    def _up(self, servers: dict[str, int]) -> bool:
        if self.process.poll() is not None:
            raise AssertionError((self.dir / "haproxy.log").read_text())
        try:
            stat = self.stat()
        except OSError:
            return False
        return all(stat.get(name, {}).get("status") == "UP" for name in servers)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def counters(stat: dict[str, dict[str, str]], servers: list[str]) -> dict[str, int]:
    def total(field: str) -> int:
        return sum(int(stat[s].get(field) or 0) for s in servers)

    return {"connect": total("connect"), "reuse": total("reuse"),
            **{f"requests_{s}": int(stat[s].get("stot") or 0) for s in servers}}


def window(daemon: DaemonProcess, proxy: HAProxy | None, url: str, args: Any, body: str,
           servers: list[str]) -> dict[str, Any]:
    stats_before = proxy.stat() if proxy is not None else None
    daemon_before = tree(read_all(), daemon.pid)
    proxy_snapshot = (lambda: tree(read_all(), proxy.process.pid)) if proxy else dict
    summary = measured_window(proxy_snapshot, url, args.concurrency, args.duration, body=body)
    daemon_after = tree(read_all(), daemon.pid)
    answered = summary["requests_answered"] or 1
    daemon_cpu = sum(s.cpu_s for s in daemon_after.values()) - sum(
        s.cpu_s for s in daemon_before.values())
    row = {"throughput_rps": summary["throughput_rps"], "p50_ms": summary["p50_ms"],
           "p99_ms": summary["p99_ms"], "non_200": summary["non_200"],
           "requests": summary["requests_answered"],
           "haproxy_us_per_request": round(summary["server_cpu_s"] / answered * 1e6, 1)
           if proxy else 0.0,
           "daemon_us_per_request": round(daemon_cpu / answered * 1e6, 1)}
    if proxy is not None and stats_before is not None:
        after, before = counters(proxy.stat(), servers), counters(stats_before, servers)
        row |= {k: after[k] - before[k] for k in after}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per window")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--variants", default="direct," + ",".join(VARIANTS))
    parser.add_argument("--out", default=default_out("haproxy_hop"))
    args = parser.parse_args()
    ensure_hey()
    variants = args.variants.split(",")
    body = instances_body(SIZES[0])
    servers = ["replica_a", "replica_b"]
    result: dict[str, Any] = {"benchmark": "haproxy_hop", "model": "mlp " + "-".join(map(str, SIZES)),
                              "duration_s": args.duration, "concurrency": args.concurrency,
                              "rounds": args.rounds, "binaries": {}, "runs": {v: [] for v in variants}}
    with tempfile.TemporaryDirectory(prefix="bench-haproxy-") as tmp:
        work = Path(tmp)
        model = write_mlp(work / "model", SIZES, seed=0)
        (work / "repo" / MODEL).mkdir(parents=True)
        (work / "repo" / MODEL / "1").symlink_to(model, target_is_directory=True)
        (work / "daemon").mkdir()
        daemon = DaemonProcess(work / "daemon", {
            "server": {"host": "127.0.0.1", "rest_port": 0, "grpc_port": 0},
            "storage": {"cache_dir": str(work / "cache")},
            "tensorflow": DEFAULT_TENSORFLOW,
            "models": [{"name": MODEL, "base_path": str(work / "repo" / MODEL),
                        "batching": DEFAULT_BATCHING}],
        }).start(timeout=180)
        assert daemon.client is not None
        daemon_port = int(str(daemon.client.base_url).rstrip("/").rsplit(":", 1)[1])
        proxies: dict[str, HAProxy] = {}
        try:
            for variant in variants:
                if variant != "direct":
                    proxies[variant] = HAProxy(work, variant, dict.fromkeys(servers, daemon_port))
                    result["binaries"][variant] = proxies[variant].binary
            for number in range(args.rounds):
                shift = number % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    proxy = proxies.get(variant)
                    port = proxy.port if proxy else daemon_port
                    url = f"http://127.0.0.1:{port}/v1/models/{MODEL}:predict"
                    if number == 0:  # warm-up: the server's connections and caches
                        measured_window(dict, url, args.concurrency, 2.0, body=body)
                    row = window(daemon, proxy, url, args, body, servers)
                    result["runs"][variant].append(row)
                    print(f"round {number} {variant}: {json.dumps(row)}", file=sys.stderr,
                          flush=True)
        finally:
            for proxy in proxies.values():
                proxy.stop()
            daemon.stop()
    result["median"] = {
        variant: {key: statistics.median(r[key] for r in rows)
                  for key in rows[0] if isinstance(rows[0][key], (int, float))}
        for variant, rows in result["runs"].items() if rows}
    result["load_average"] = list(__import__("os").getloadavg())
    result["notes"] = ("Both servers of the backend are the one daemon; us_per_request: CPU "
                       "microseconds per answered request; connect/reuse: HAProxy's counters "
                       "of connections opened to the servers and of requests that reused one.")
    write_result(args.out, result)
    time.sleep(0)


if __name__ == "__main__":
    main()
