"""What the benchmarks share: the load generator (hey) and exact percentiles from its
per-request rows, an RSS sampler, an MLP SavedModel writer, the daemon's config and
publishing helpers, and the result writer that records the machine and the method.

Heavy libraries (TensorFlow, psutil) are imported by the functions that need them, so
`s3_poll_cost.py` runs without TensorFlow.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# ---- results -----------------------------------------------------------------------


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and how busy it was at that moment."""
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    status = _git("status", "--porcelain")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(memory / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_worktree_dirty": bool(status) if status is not None else None,
    }


def replace_between(docs: Path, start: str, end: str, text: str) -> None:
    """Put `text` between the markers `start` and `end` in `docs`, if both are there (a
    benchmark's `--render` writing its table into docs/benchmarks.md)."""
    page = docs.read_text()
    if start in page and end in page:
        before, rest = page.split(start, 1)
        _, after = rest.split(end, 1)
        docs.write_text(f"{before}{start}\n{text}\n{end}{after}")


def write_result(out: str | Path, result: Mapping[str, Any]) -> Path:
    """Write `result` as JSON (with the machine and the time) and print it."""
    document = {
        "benchmark": result["benchmark"],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        **{k: v for k, v in result.items() if k != "benchmark"},
    }
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document, indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return path


def default_out(name: str) -> str:
    return str(RESULTS / f"{name}.json")


# ---- hey: load, and exact percentiles from its rows --------------------------------


def ensure_hey() -> str:
    """The path of `hey`, installing the Debian package when it is missing."""
    found = shutil.which("hey")
    if found:
        return found
    print("hey is not installed; trying `apt-get install -y hey`", file=sys.stderr)
    try:
        subprocess.run(["apt-get", "install", "-y", "hey"], check=True, timeout=600,
                       stdout=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SystemExit(
            f"the load generator `hey` is missing and could not be installed ({exc}); "
            "install it with `apt-get install hey` (Debian/Ubuntu) or "
            "`go install github.com/rakyll/hey@latest`, then run this again"
        ) from None
    found = shutil.which("hey")
    if not found:
        raise SystemExit("apt-get installed hey, but it is not on PATH")
    return found


def hey_version() -> str | None:
    """hey has no --version; ask the package manager."""
    try:
        done = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "hey"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0 or not done.stdout.strip():
        return None
    return done.stdout.strip()


@dataclass(frozen=True)
class HeyRow:
    """One answered request: hey's `response-time`, `status-code` and `offset` (seconds
    from hey's start to the request's start). hey prints times to 0.1 ms."""

    latency_s: float
    status: int
    offset_s: float

    @property
    def end_s(self) -> float:
        return self.offset_s + self.latency_s


@dataclass(frozen=True)
class HeyRun:
    rows: tuple[HeyRow, ...]
    concurrency: int
    requested: int | None  # -n; None for a -z (duration) run
    duration_s: float | None  # -z
    command: tuple[str, ...]

    @property
    def connection_errors(self) -> int | None:
        """Requests that got no HTTP answer. hey's CSV leaves them out, so they can only be
        counted when the number of requests was fixed (-n); None for a -z run."""
        return None if self.requested is None else self.requested - len(self.rows)


class Hey:
    """One run of hey (`-o csv`), started now and collected by `wait()`."""

    def __init__(
        self,
        url: str,
        body: str,
        concurrency: int,
        *,
        duration_s: float | None = None,
        requests: int | None = None,
        timeout_s: int = 20,
    ) -> None:
        if (duration_s is None) == (requests is None):
            raise ValueError("give exactly one of duration_s and requests")
        if requests is not None:
            # Each of hey's workers sends n // c requests, so make n a multiple of c.
            requests = math.ceil(requests / concurrency) * concurrency
        command = [ensure_hey(), "-m", "POST", "-T", "application/json", "-d", body,
                   "-c", str(concurrency), "-t", str(timeout_s), "-o", "csv"]
        command += ["-z", f"{duration_s:g}s"] if duration_s is not None else ["-n", str(requests)]
        command.append(url)
        self.command = tuple(command)
        self.concurrency = concurrency
        self.requests = requests
        self.duration_s = duration_s
        self.started_at = 0.0  # time.monotonic() when hey was started
        self._limit = (duration_s or 0) + 120 + (requests or 0) / 50
        self._out = tempfile.TemporaryFile()
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Hey:
        self._process = subprocess.Popen(self.command, stdout=self._out, stderr=subprocess.PIPE)
        self.started_at = time.monotonic()
        return self

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait(self) -> HeyRun:
        assert self._process is not None
        try:
            _, err = self._process.communicate(timeout=self._limit)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.communicate()
            raise RuntimeError(
                f"hey ran longer than {self._limit:.0f}s: {' '.join(self.command)}"
            ) from None
        if self._process.returncode != 0:
            raise RuntimeError(f"hey failed ({self._process.returncode}): {err.decode()[-2000:]}")
        self._out.seek(0)
        text = self._out.read().decode()
        self._out.close()
        return HeyRun(parse_hey_csv(text), self.concurrency, self.requests, self.duration_s,
                      self.command)


def run_hey(url: str, body: str, concurrency: int, **kwargs: Any) -> HeyRun:
    return Hey(url, body, concurrency, **kwargs).start().wait()


def parse_hey_csv(text: str) -> tuple[HeyRow, ...]:
    lines = text.strip().splitlines()
    if not lines or not lines[0].startswith("response-time"):
        raise RuntimeError(f"hey printed no CSV header:\n{text[:500]}")
    header = lines[0].split(",")
    at = {name: header.index(name) for name in ("response-time", "status-code", "offset")}
    rows = []
    for line in lines[1:]:
        cells = line.split(",")
        rows.append(HeyRow(float(cells[at["response-time"]]), int(cells[at["status-code"]]),
                           float(cells[at["offset"]])))
    return tuple(rows)


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """The nearest-rank percentile: the smallest value with at least p% at or below it."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(
    run: HeyRun, window: tuple[float, float] | None = None
) -> dict[str, Any]:
    """Counts, failures, p50/p99/max latency (ms) and throughput of a hey run.

    Latency percentiles are over the 200 answers. With a `window` (seconds from hey's
    start), only requests that started inside it count, and throughput is answers that
    ended inside it per second of window; otherwise throughput is 200 answers per second
    from hey's start to the last answer.
    """
    rows = run.rows
    if window is not None:
        rows = tuple(r for r in rows if window[0] <= r.offset_s < window[1])
    ok = sorted(r.latency_s for r in rows if r.status == 200)
    statuses: dict[str, int] = {}
    for r in rows:
        if r.status != 200:
            statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    if window is not None:
        span = window[1] - window[0]
        answered = sum(1 for r in run.rows if r.status == 200 and window[0] <= r.end_s < window[1])
    else:
        span = max((r.end_s for r in rows), default=0.0)
        answered = len(ok)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 2)

    summary: dict[str, Any] = {
        "requests_answered": len(rows),
        "ok": len(ok),
        "non_200": sum(statuses.values()),
        "non_200_by_status": statuses,
        "p50_ms": ms(percentile(ok, 50)),
        "p99_ms": ms(percentile(ok, 99)),
        "max_ms": ms(ok[-1] if ok else None),
        "throughput_rps": round(answered / span, 1) if span > 0 else None,
        "seconds": round(span, 3),
    }
    if window is None and run.connection_errors is not None:
        summary["connection_errors"] = run.connection_errors
    return summary


# ---- memory ------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


class RssSampler:
    """Samples a process's RSS every `interval` seconds on its own thread."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        import psutil

        self._process = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.samples: list[tuple[float, int]] = []  # (time.monotonic(), rss bytes)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)

    def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic(), int(self._process.memory_info().rss)))
            if self._stop.wait(self._interval):
                self.samples.append((time.monotonic(), int(self._process.memory_info().rss)))
                return


def daemon_pid(config_path: Path) -> int:
    """The pid of this process's child running `serve --config config_path`."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            if str(config_path) in child.cmdline():
                return int(child.pid)
        except psutil.Error:
            continue
    raise RuntimeError(f"no child process serves {config_path}")


def mib(n: float) -> float:
    return round(n / 2**20, 1)


# ---- models ------------------------------------------------------------------------


def write_mlp(path: Path, sizes: Sequence[int], seed: int = 0) -> Path:
    """A TF2 SavedModel of a ReLU MLP with layer widths `sizes` and random weights.

    Its `serving_default` signature takes `x` (float32 [None, sizes[0]]) and returns `y`
    (float32 [None, sizes[-1]]). Written beside `path` and renamed into place.
    """
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    module = tf.Module()
    module.kernels = [
        tf.Variable(rng.standard_normal((a, b), dtype=np.float32) * np.float32(math.sqrt(2 / a)),
                    name=f"kernel_{i}")
        for i, (a, b) in enumerate(itertools.pairwise(sizes))
    ]
    module.biases = [tf.Variable(np.zeros(b, np.float32), name=f"bias_{i}")
                     for i, b in enumerate(sizes[1:])]
    last = len(sizes) - 2

    @tf.function(input_signature=[tf.TensorSpec([None, sizes[0]], tf.float32, name="x")])
    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        h = x
        for i, (kernel, bias) in enumerate(zip(module.kernels, module.biases)):
            h = tf.matmul(h, kernel) + bias
            if i < last:
                h = tf.nn.relu(h)
        return {"y": h}

    module.serve = serve
    staging = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    path.parent.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(module, str(staging), signatures={"serving_default": module.serve})
    os.replace(staging, path)
    return path


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def instances_body(width: int, rows: int = 1, seed: int = 1) -> str:
    """A row-format predict request: {"instances": [[width floats], ...]}."""
    import random

    rng = random.Random(seed)
    instances = [[round(rng.uniform(-1, 1), 4) for _ in range(width)] for _ in range(rows)]
    return json.dumps({"instances": instances}, separators=(",", ":"))


# ---- the daemon --------------------------------------------------------------------


def daemon_config(work: Path, models: list[dict[str, Any]], poll: float = 1.0) -> dict[str, Any]:
    """A daemon config on 127.0.0.1 with an ephemeral REST port and gRPC off."""
    return {"server": {"host": "127.0.0.1", "rest_port": 0, "grpc_port": 0},
            "storage": {"cache_dir": str(work / "cache")},
            "watch": {"poll_interval_seconds": poll}, "models": models}


def publish(model: Path, base: Path, version: int) -> float:
    """Copy `model` beside `base/version` and rename it into place; the rename's time."""
    tmp = base / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    shutil.copytree(model, tmp)
    renamed = time.monotonic()
    os.rename(tmp, base / str(version))
    return renamed


def wait_states(
    daemon: Any, model: str, expected: Mapping[int, str], timeout: float = 120,
    interval: float = 0.01,
) -> float:
    """Poll the status API until every version in `expected` has its state; the time then.

    A version the daemon no longer lists counts as END.
    """
    deadline = time.monotonic() + timeout
    while True:
        states = daemon.states(model)
        now = time.monotonic()
        if all(states.get(v, "END") == state for v, state in expected.items()):
            return now
        if now > deadline:
            raise RuntimeError(f"{model}: waited {timeout}s for {dict(expected)}; now {states}\n"
                               f"{daemon.log()[-3000:]}")
        time.sleep(interval)


def prometheus(daemon: Any) -> dict[str, float]:
    """The daemon's Prometheus samples as {'name{label="v",...}': value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = daemon.client.get("/monitoring/prometheus/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def metric_sum(samples: Mapping[str, float], name: str, **labels: str) -> float:
    """The sum of every sample of `name` whose labels include `labels`."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for key, v in samples.items()
               if key.split("{", 1)[0] == name and all(w in key for w in wanted))


class _MetricsAt:
    """A server's REST address as `prometheus()` expects it (an object with `.client`)."""

    def __init__(self, base_url: str) -> None:
        import httpx

        self.client = httpx.Client(base_url=base_url, timeout=30)


def grpc_counts(base_urls: Sequence[str]) -> tuple[float, float]:
    """The gRPC predicts these modelwatch servers (their REST addresses) counted: (all,
    not OK), their view of the trailers, which a load generator may not read."""
    total = non_ok = 0.0
    name = "modelwatch_requests_total"
    for base_url in base_urls:
        metrics = _MetricsAt(base_url)
        try:
            samples = prometheus(metrics)
        finally:
            metrics.client.close()
        counted = metric_sum(samples, name, api="predict", transport="grpc")
        total += counted
        non_ok += counted - metric_sum(samples, name, api="predict", transport="grpc",
                                       status="OK")
    return total, non_ok


def parse_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]
