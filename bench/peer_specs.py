"""The peers of bench/peers.py: how each is installed, started, asked and answered.

Every peer but modelwatch and the Flask baseline (both in the project's own .venv, the
`bench` extra) runs from a virtual environment of its own, `bench/.venvs/<peer>`, built
from `bench/peer_servers/<peer>/requirements.txt` (their pins would fight ours), with its
server in `bench/peer_servers/<peer>/server.py`. `install()` builds the environments,
once per version of each requirements file (a stamp holds the file's hash); a peer that
cannot be installed keeps the reason in `install-error.txt`, and the run reports it.

`PeerServer` starts one peer as a subprocess in a session of its own on 127.0.0.1 and an
ephemeral port, waits until it answers the fixed request with 200, and stops it (SIGTERM,
then SIGKILL for its process group and anything left below the bench).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.common import ROOT, daemon_config
from bench.proc_cpu import descendants_cpu

SERVERS = ROOT / "bench" / "peer_servers"
VENVS = ROOT / "bench" / ".venvs"
MODEL = "mlp"


def tf_serving_body(instance: list[float]) -> Any:
    return {"instances": [instance]}


def v2_body(instance: list[float]) -> Any:
    return {"inputs": [{"name": "x", "shape": [1, len(instance)], "datatype": "FP32",
                        "data": instance}]}


def tf_serving_answer(answer: Any) -> list[float]:
    return [float(v) for v in answer["predictions"][0]]


def v2_answer(answer: Any) -> list[float]:
    return [float(v) for v in answer["outputs"][0]["data"]]


@dataclass(frozen=True)
class Peer:
    """One server under test."""

    name: str
    label: str
    configuration: str  # what the docs table says about its set-up
    path: str  # the predict URL's path
    body: Callable[[list[float]], Any]
    answer: Callable[[Any], list[float]]
    distributions: tuple[str, ...]  # whose versions the result records
    venv: str | None = None  # bench/.venvs/<venv>; None: the project's .venv
    grpc: bool = False  # load over gRPC (h2load) instead of REST (hey)
    side_ports: bool = False  # its server.py also takes --grpc-port and --metrics-port

    @property
    def python(self) -> Path:
        return VENVS / self.venv / "bin" / "python" if self.venv else Path(sys.executable)

    @property
    def requirements(self) -> Path | None:
        return SERVERS / self.venv / "requirements.txt" if self.venv else None


PEERS: tuple[Peer, ...] = (
    Peer("flask", "Flask + gunicorn (the seed's design)",
         "gunicorn 2 workers x 8 threads (gthread), one model call a request, no batching",
         f"/v1/models/{MODEL}:predict", tf_serving_body, tf_serving_answer,
         ("flask", "gunicorn", "tensorflow")),
    Peer("ray_serve", "Ray Serve", "2 replicas, @serve.batch(max_batch_size=32, "
         "batch_wait_timeout_s=0.002), Serve's HTTP proxy", "/predict", tf_serving_body,
         tf_serving_answer, ("ray", "tensorflow"), venv="ray_serve"),
    Peer("mlserver", "MLServer", "custom runtime, parallel_workers 2, adaptive batching "
         "max_batch_size 32, max_batch_time 0.002 s, V2 REST", f"/v2/models/{MODEL}/infer",
         v2_body, v2_answer, ("mlserver", "tensorflow"), venv="mlserver", side_ports=True),
    Peer("litserve", "LitServe", "workers_per_device 2 (CPU), max_batch_size 32, "
         "batch_timeout 0.002 s", "/predict", tf_serving_body, tf_serving_answer,
         ("litserve", "tensorflow"), venv="litserve"),
    Peer("bentoml", "BentoML", "workers 2, @bentoml.api(batchable=True, max_batch_size=32) "
         "(adaptive window)", "/predict", tf_serving_body, lambda answer: [
             float(v) for v in answer[0]], ("bentoml", "tensorflow"), venv="bentoml"),
    Peer("pytriton", "PyTriton (Triton's C++ server)", "2 model instances, dynamic batcher "
         "max_batch_size 32, max_queue_delay 2,000 us, KServe v2 REST",
         f"/v2/models/{MODEL}/infer", v2_body, v2_answer, ("nvidia-pytriton", "tensorflow"),
         venv="pytriton", side_ports=True),
    Peer("modelwatch_rest", "modelwatch, REST", "", f"/v1/models/{MODEL}:predict",
         tf_serving_body, tf_serving_answer, ("modelwatch", "tensorflow")),
    Peer("modelwatch_grpc", "modelwatch, gRPC", "", f"/v1/models/{MODEL}:predict",
         tf_serving_body, tf_serving_answer, ("modelwatch", "tensorflow"), grpc=True),
)
BY_NAME = {peer.name: peer for peer in PEERS}


# ---- install ------------------------------------------------------------------------


def _stamp(peer: Peer) -> Path:
    assert peer.venv is not None
    return VENVS / peer.venv / ".requirements-sha256"


def _error_file(peer: Peer) -> Path:
    assert peer.venv is not None
    return VENVS / peer.venv / "install-error.txt"


def requirements_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def installed(peer: Peer) -> bool:
    """The peer's environment is built from its current requirements file."""
    if peer.requirements is None:
        return True
    stamp = _stamp(peer)
    return stamp.exists() and stamp.read_text().strip() == requirements_hash(peer.requirements)


def install_peer(peer: Peer, log: Callable[[str], None] = print) -> str | None:
    """Build the peer's environment unless its stamp matches; the error text if it fails."""
    if peer.venv is None or installed(peer):
        return None
    assert peer.requirements is not None
    folder = VENVS / peer.venv
    log(f"installing {peer.name} into {folder.relative_to(ROOT)} (pip, a few minutes)")
    commands = [[sys.executable, "-m", "venv", str(folder)],
                [str(peer.python), "-m", "pip", "install", "--quiet",
                 "--disable-pip-version-check", "-r", str(peer.requirements)]]
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            reason = f"`{' '.join(command[-3:])}` failed:\n{(done.stderr or done.stdout)[-3000:]}"
            folder.mkdir(parents=True, exist_ok=True)
            _error_file(peer).write_text(reason)
            _stamp(peer).unlink(missing_ok=True)
            return reason
    _error_file(peer).unlink(missing_ok=True)
    _stamp(peer).write_text(requirements_hash(peer.requirements) + "\n")
    return None


def not_installed_reason(peer: Peer) -> str | None:
    if installed(peer):
        return None
    error = _error_file(peer) if peer.venv else None
    if error is not None and error.exists():
        return "could not be installed: " + error.read_text().strip()[-1500:]
    return "not installed: run `make bench-install` (or bench/peers.py --install)"


def versions(peer: Peer) -> dict[str, str | None]:
    """The installed versions of the peer's distributions, asked of its own interpreter."""
    script = ("import json, sys, importlib.metadata as m\n"
              "def v(n):\n"
              "    try: return m.version(n)\n"
              "    except m.PackageNotFoundError: return None\n"
              "print(json.dumps({n: v(n) for n in sys.argv[1:]}))")
    try:
        done = subprocess.run([str(peer.python), "-c", script, *peer.distributions],
                              capture_output=True, text=True, timeout=60)
        return dict(json.loads(done.stdout))
    except (OSError, subprocess.SubprocessError, ValueError):
        return dict.fromkeys(peer.distributions)


# ---- start and stop -----------------------------------------------------------------


@dataclass
class PeerServer:
    """One peer serving `model` on 127.0.0.1:`port` (and `grpc_port`, `metrics_port` for
    the servers that open them)."""

    peer: Peer
    work: Path
    model: Path
    port: int
    grpc_port: int
    metrics_port: int
    modelwatch: dict[str, Any] = field(default_factory=dict)  # batching/tensorflow blocks
    _process: subprocess.Popen[bytes] | None = None
    _log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.peer.path}"

    @property
    def log_path(self) -> Path:
        return self.work / f"{self.peer.name}.log"

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        """The argv, the extra environment and the working folder."""
        peer, model, port = self.peer, str(self.model), str(self.port)
        if peer.name == "flask":
            return ([str(peer.python), "-m", "gunicorn", "--workers", "2", "--worker-class",
                     "gthread", "--threads", "8", "--bind", f"127.0.0.1:{port}", "--timeout",
                     "120", "flask_app:create_app()"], {"MODEL_DIR": model},
                    ROOT / "bench" / "baselines")
        if peer.name.startswith("modelwatch"):
            base = self.work / "models" / MODEL
            base.mkdir(parents=True, exist_ok=True)
            if not (base / "1").exists():
                (base / "1").symlink_to(self.model.resolve(), target_is_directory=True)
            entry = {"name": MODEL, "base_path": str(base), **self.modelwatch.get("model", {})}
            config = daemon_config(self.work, [entry])
            config["server"].update(rest_port=self.port, grpc_port=self.grpc_port)
            config.update(self.modelwatch.get("daemon", {}))
            path = self.work / "modelwatch.yaml"
            path.write_text(yaml.safe_dump(config))
            return ([str(peer.python), "-m", "loader", "serve", "--config", str(path)], {}, ROOT)
        folder = SERVERS / (peer.venv or peer.name)
        if peer.name == "bentoml":
            bentoml = str(peer.python.with_name("bentoml"))
            return ([bentoml, "serve", "server:MLP", "--host", "127.0.0.1", "--port", port],
                    {"MODEL_DIR": model, "BENTOML_DO_NOT_TRACK": "true"}, folder)
        argv = [str(peer.python), "server.py", "--model", model, "--port", port]
        if peer.side_ports:
            argv += ["--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port)]
        return argv, {}, folder

    def start(self) -> PeerServer:
        argv, env, cwd = self.command()
        self.work.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env}
        environment.pop("PYTHONPATH", None)
        self._process = subprocess.Popen(argv, cwd=cwd, env=environment, stdout=self._log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def exited(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def wait_ready(self, request: Callable[[], int], timeout_s: float) -> float:
        """Call `request` (an HTTP status) until it gives 200; the seconds it took."""
        started = time.monotonic()
        while True:
            if self.exited() is not None:
                raise RuntimeError(f"{self.peer.name} exited with {self.exited()}:\n"
                                   f"{self.log_tail()}")
            try:
                if request() == 200:
                    return round(time.monotonic() - started, 1)
            except Exception:  # not listening yet, connection reset, ...
                pass
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"{self.peer.name} did not answer within {timeout_s:.0f} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.25)

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM to the server, then SIGKILL to whatever is left of it and of
        anything else below this process (orphans re-parented here); idempotent."""
        if self._process is not None:
            if self._process.poll() is None:
                # The main process only: it shuts its own children down in order (Ray's
                # driver tells the cluster, gunicorn its workers); the group is killed after.
                self._process.send_signal(signal.SIGTERM)
                try:
                    self._process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    pass
            _signal_group(self._process.pid, signal.SIGKILL)
            if self._process.poll() is None:
                self._process.kill()
                self._process.wait(10)
            for pid, _ in descendants_cpu():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _reap_orphans()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _reap_orphans() -> None:
    """Collect the zombies of orphans re-parented to this process (the subreaper)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if not descendants_cpu():
                return
            time.sleep(0.05)
