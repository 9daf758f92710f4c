"""A real local Ray cluster for the tests (and `modelwatch ray` deployed on it): a head and a second node, each a `ray start
--block` process in its own session, so stopping them (and whatever they started) never
touches another test run's Ray, as `ray stop` would."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import httpx
import psutil
import yaml

from tests.daemon_process import free_port

RAY = str(Path(sys.executable).with_name("ray"))
# This checkout: Ray's workers import `loader` from it, not from wherever the venv's
# editable install points (another worktree's code would run in the replicas).
ROOT = Path(__file__).resolve().parent.parent.parent
# Ray rewrites 127.0.0.1 (and "localhost") into the machine's interface address, so the
# nodes take other loopback addresses, which it leaves alone. A driver on this machine
# passes `_node_ip_address=HEAD_IP` to `ray.init`.
HEAD_IP, NODE_IP = "127.0.0.2", "127.0.0.3"
OBJECT_STORE_BYTES = 100 * 1024 * 1024


# A separate driver's view of Serve: the applications and the named actors still alive.
_SERVE_STATE = (
    "import json, sys, ray; from ray import serve; "
    f"ray.init(address=sys.argv[1], logging_level='ERROR', _node_ip_address='{HEAD_IP}'); "
    "print(json.dumps({'applications': sorted(serve.status().applications), "
    "'actors': sorted(a['name'] for a in ray.util.list_named_actors(all_namespaces=True))}))"
)


class LocalRayCluster:
    """`ray start` twice on 127.0.0.1: a head with `head_cpus` and a node with `node_cpus`."""

    def __init__(self, log_dir: Path, *, head_cpus: int = 1, node_cpus: int = 1,
                 env: Mapping[str, str] | None = None) -> None:
        self.port = free_port()
        self.address = f"{HEAD_IP}:{self.port}"
        self._log_dir = log_dir
        self._cpus = (head_cpus, node_cpus)
        # Short: Ray puts its sockets under this folder, and socket paths are limited.
        self.temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        # Token authentication, said explicitly, with a token of this cluster's own: left
        # unset, Ray 2.60's `ray start --head` turns it on whenever ~/.ray/auth_token exists
        # (any earlier local `ray.init()` writes one) while a driver connecting by address
        # stays off and is refused. `env` is what every process of the cluster's needs.
        token = Path(self.temp_dir) / "auth_token"
        token.write_text(secrets.token_hex(32))
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
        self._env = {**os.environ, **(env or {}), "RAY_USAGE_STATS_ENABLED": "0",
                     "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                 os.environ.get("PYTHONPATH")])),
                     **self.env}
        self._processes: list[subprocess.Popen[bytes]] = []

    def start(self, timeout: float = 120) -> LocalRayCluster:
        common = ["--block", "--disable-usage-stats", f"--object-store-memory={OBJECT_STORE_BYTES}"]
        head = [RAY, "start", "--head", f"--node-ip-address={HEAD_IP}", f"--port={self.port}",
                "--include-dashboard=false", f"--num-cpus={self._cpus[0]}",
                f"--temp-dir={self.temp_dir}", *common]
        self._spawn(head, "head")
        self._wait_for_nodes(1, timeout)
        node = [RAY, "start", f"--address={self.address}", f"--node-ip-address={NODE_IP}",
                f"--num-cpus={self._cpus[1]}", *common]
        self._spawn(node, "node")
        self._wait_for_nodes(2, timeout)
        return self

    def stop(self, timeout: float = 30) -> None:
        """Stop both nodes and everything they started; idempotent."""
        for process in reversed(self._processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in reversed(self._processes):
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for process in self._processes:  # whatever is left of each session
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(10)
        self._processes.clear()

    @property
    def pids(self) -> list[int]:
        """The `ray start` processes: every process of the cluster descends from one."""
        return [process.pid for process in self._processes]

    def processes(self, title: str) -> list[psutil.Process]:
        """This cluster's processes (never another run's) whose command line has `title`,
        e.g. Ray's "ServeReplica:modelwatch:ReplicaDeployment"."""
        ours = {process.pid for process in self._processes}
        found = []
        for process in psutil.process_iter(["cmdline"]):
            try:
                if title in " ".join(process.info["cmdline"] or ()) and any(
                    parent.pid in ours for parent in process.parents()
                ):
                    found.append(process)
            except psutil.Error:
                pass
        return found

    def log(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self._log_dir.glob("ray-*.log"))
        )

    def _spawn(self, argv: list[str], name: str, env: Mapping[str, str] | None = None) -> None:
        out = open(self._log_dir / f"ray-{name}.log", "wb")
        self._processes.append(subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**self._env, **(env or {})},
            start_new_session=True,
        ))

    def _wait_for_nodes(self, count: int, timeout: float) -> None:
        probe = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', "
                 f"_node_ip_address='{HEAD_IP}'); "
                 "print(sum(n['Alive'] for n in ray.nodes()))")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self._processes:
                if process.poll() is not None:
                    raise AssertionError(f"ray start exited {process.returncode}:\n{self.log()}")
            result = subprocess.run([sys.executable, "-c", probe, self.address],
                                    capture_output=True, text=True, timeout=60, env=self._env)
            if result.returncode == 0 and result.stdout.strip().splitlines()[-1:] == [str(count)]:
                return
            time.sleep(0.5)
        raise AssertionError(f"{count} Ray node(s) did not come up in {timeout}s:\n{self.log()}")


class Deployment:
    """`python -m loader ray` as a subprocess; stopped with SIGTERM (and killed if need be).
    As a context manager: stopped at the end, its log and the cluster's printed on a failure."""

    def __init__(self, tmp_path: Path, cluster: LocalRayCluster, env: Mapping[str, str],
                 config: dict[str, Any], replicas: int = 2) -> None:
        self.config = config
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        self.port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"  # the balancer's REST port
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self._log = tmp_path / "modelwatch-ray.log"
        self._cluster = cluster
        argv = [sys.executable, "-m", "loader", "ray", "--config", str(path),
                "--address", cluster.address, "--node-ip", HEAD_IP, "--replicas", str(replicas),
                "--http-port", str(self.port), "--grpc-port", str(self.grpc_port),
                "--hold-seconds", "5"]
        self._process = subprocess.Popen(
            argv, stdout=open(self._log, "wb"), stderr=subprocess.STDOUT,
            env={**os.environ, **env, **cluster.env}, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self._process.pid

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            print(self.log())
            print(self._cluster.log())
        self.stop()

    def log(self) -> str:
        return self._log.read_text(errors="replace")[-6000:]

    def stop(self) -> int:
        """SIGTERM, as Kubernetes and systemd stop it; the exit code (-9: it had to be killed)."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(10)
        return self._process.returncode

    def replicas(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/modelwatch/replicas", timeout=10)
        response.raise_for_status()
        return dict(response.json())

    def answer(self, client: httpx.Client | None = None) -> float:
        post = (client or httpx).post  # type: ignore[attr-defined]
        response = post(f"{self.url}/v1/models/m:predict", json={"instances": [[2.0]]},
                        timeout=30)
        assert response.status_code == 200, response.text
        return float(response.json()["predictions"][0][0])

    def serves(self, value: float) -> bool:
        assert self._process.poll() is None, self.log()
        try:
            return self.answer() == value
        except (httpx.HTTPError, AssertionError):
            return False


def serve_state(cluster: LocalRayCluster) -> dict[str, list[str]]:
    """Serve's applications and the named actors alive on `cluster`, from a driver of its own."""
    result = subprocess.run([sys.executable, "-c", _SERVE_STATE, cluster.address],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, **cluster.env})
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def application_deleted(cluster: LocalRayCluster) -> bool:
    """No modelwatch application on `cluster`, and none of its replicas alive."""
    state = serve_state(cluster)
    return not state["applications"] and not any(
        name.startswith("SERVE_REPLICA::modelwatch#") for name in state["actors"])
