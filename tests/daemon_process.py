"""The daemon as a real subprocess on an ephemeral port, driven over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Self

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port that was free a moment ago (for gRPC, where port 0 means "off")."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        tick.wait(interval)


class ResidentSampler:
    """A process's resident memory, read from /proc/<pid>/statm every `interval` seconds on
    a thread while the `with` block runs (`samples`, `peak`)."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self._pid, self._interval = pid, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-resident-sampler")
        self.samples: list[int] = []

    @property
    def peak(self) -> int:
        return max(self.samples, default=0)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        from loader.manager.process_memory import resident_bytes

        while True:
            rss = resident_bytes(self._pid)
            if rss is not None:
                self.samples.append(rss)
            if self._stop.wait(self._interval):
                return


class DaemonProcess:
    """`python -m loader serve` with a config written for one test."""

    def __init__(
        self, workdir: Path, config: Mapping[str, Any], env: Mapping[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        """`preexec_fn` runs in the child before the daemon starts (e.g. to lower its limits)."""
        self.workdir = workdir
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(dict(config)))
        self._ports_file = workdir / "ports.json"
        self._log_path = workdir / "daemon.log"
        # PYTHONFAULTHANDLER: a daemon that will not stop is sent SIGABRT, and every
        # thread's stack goes to its log for the failure message.
        self._env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONFAULTHANDLER": "1",
                     **(env or {})}
        self._preexec_fn = preexec_fn
        self._process: subprocess.Popen[bytes] | None = None
        self.client: httpx.Client | None = None

    def start(self, timeout: float = 60.0) -> DaemonProcess:
        self._ports_file.unlink(missing_ok=True)
        with open(self._log_path, "ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "loader", "serve", "--config", str(self.config_path),
                 "--rest-port", "0", "--ports-file", str(self._ports_file)],
                cwd=ROOT, env=self._env, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=self._preexec_fn,
            )
        wait_until(
            lambda: self._ports_file.exists() or self._process.poll() is not None,
            timeout, "the daemon to write its ports",
        )
        if self._process.poll() is not None:
            raise AssertionError(f"the daemon exited early:\n{self.log()}")
        self.pid = self._process.pid
        ports = json.loads(self._ports_file.read_text())
        self.grpc_port = int(ports.get("grpc_port", 0))
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{ports['rest_port']}", timeout=30.0)
        return self

    def log(self) -> str:
        return self._log_path.read_text(errors="replace") if self._log_path.exists() else ""

    def states(self, model: str) -> dict[int, str]:
        assert self.client is not None
        response = self.client.get(f"/v1/models/{model}")
        if response.status_code == 404:
            return {}
        response.raise_for_status()
        return {int(s["version"]): s["state"] for s in response.json()["model_version_status"]}

    def wait_for_states(self, model: str, expected: Mapping[int, str], timeout: float = 60.0) -> None:
        """Wait until the versions listed in `expected` have those states."""
        def matches() -> bool:
            states = self.states(model)
            return all(states.get(v) == s for v, s in expected.items())

        try:
            wait_until(matches, timeout, f"{model} states {dict(expected)}")
        except AssertionError as error:
            raise AssertionError(f"{error}; now {self.states(model)}\n{self.log()[-4000:]}") from None

    def predict(self, path: str, body: Any) -> httpx.Response:
        assert self.client is not None
        return self.client.post(f"/v1/models/{path}:predict", json=body)

    def answer(self, model_path: str, x: float = 2.0) -> float:
        """y for one x, from whichever version the path reaches."""
        response = self.predict(model_path, {"instances": [[x]]})
        assert response.status_code == 200, response.text
        return float(response.json()["predictions"][0][0])

    def signal(self, signum: int) -> None:
        assert self._process is not None
        self._process.send_signal(signum)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit code."""
        if self.client is not None:
            self.client.close()
        if self._process is None:
            return 0
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.send_signal(signal.SIGABRT)  # the stacks, then the end
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            raise AssertionError(f"the daemon did not stop on SIGTERM:\n{self.log()[-12000:]}") from None
