"""Hostile clients (issue 21): what each attack costs the clients that behave.

For each attack chosen (bench/hostile_attacks.py; 0 is the run with no attack), a fresh
daemon serving the demo model half_plus_two on 127.0.0.1, REST and gRPC on ephemeral
ports, with the default limits and a soft limit of `--daemon-open-files` descriptors
(1,024, Linux's usual default; the attacker raises its own to the hard limit). A fresh
daemon per attack, so every attack starts from the same RSS and nothing one attack leaves
behind (a filled cache, a decode still running) is charged to the next; the cost is a
TensorFlow start (~10 s) each. Then:

1. the attacker starts in a child process of its own (no GIL shared with the steady
   client) and prepares its bodies;
2. two steady clients predict one instance each at a fixed `--rate`: REST with httpx on a
   new connection each request, gRPC through tensorflow-serving-api's stub on one
   channel; each request has a `--timeout`, and a timeout, an error, a non-200/non-OK
   status or a wrong answer is a failure; latency counts from when the request was due,
   not when it left, so requests held up behind a stalled one count their wait (wrk2's
   correction), and the percentiles are over all requests, failed ones included;
3. after a 2 s warm-up, a baseline window of `--baseline` s, then the attack window: the
   attacker goes, attacks for at most `--duration` s (an answer in flight is waited for up
   to 30 s more), and the window ends `--tail` s after it returns;
4. the daemon's RSS from /proc/<pid>/statm every 10 ms in each window; "before" is the
   baseline window's peak. Then a predict must still answer (30 s), the log lines and
   tracebacks the attack caused, and `modelwatch_refused_total` where the daemon has it.

Targets for every attack (issue 21): steady p99 <= 250 ms on both transports, no failure,
peak RSS within +512 MiB of before, the daemon still answering. An attack the server
refuses quickly is simply cheap.

    .venv/bin/python bench/hostile.py [--attacks 0,1,2,3,4,5,6,7,8] [--duration 20]
        [--baseline 10] [--tail 3] [--rate 50] [--timeout 5] [--daemon-open-files 1024]
        [--note "..."] [--out bench/results/hostile.json]
    .venv/bin/python bench/hostile.py --render   # docs/benchmarks.md's table from the json

Writes bench/results/hostile.json. Attacks 4, 5 and 8 took several GB before issue 21.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import queue
import resource
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import daemon_config, default_out, mib, parse_list, write_result  # noqa: E402
from bench.hostile_attacks import ATTACKS, GRACE_S, Target, attacker  # noqa: E402
from bench.hostile_report import TARGETS, Request, render, summarize, verdict  # noqa: E402
from tests.daemon_process import DaemonProcess, ResidentSampler, free_port  # noqa: E402

MODEL = "half_plus_two"  # loader/app/demo.py; the latest version answers 0.5x + 3
ANSWER = 3.5  # for x = 1
WARMUP_S = 2.0


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Steady:
    """One call at a fixed rate on a thread of its own until stopped; every request kept
    as (when it was due, seconds from then to its answer, failure or None)."""

    def __init__(self, name: str, call: Callable[[], str | None], rate: float,
                 timeout: float) -> None:
        self._call, self._rate, self._timeout = call, rate, timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"steady-{name}", daemon=True)
        self.requests: list[Request] = []

    def start(self) -> Steady:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        begin = time.monotonic()
        for number in itertools.count():
            due = begin + number / self._rate
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            sent = time.monotonic()
            try:
                failure = self._call()
            except Exception as error:  # what a client would see: counted, not raised
                failure = type(error).__name__
            if failure is None and time.monotonic() - sent > self._timeout:
                failure = "timeout"  # httpx times each phase, not the whole request
            self.requests.append((due, time.monotonic() - due, failure))


def rest_call(port: int, timeout: float) -> tuple[Callable[[], str | None], Callable[[], None]]:
    import httpx

    # A new connection each request, as a client without a pool: what a newcomer meets
    # (accepting included: silent connections and connection caps hit there) counts.
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=timeout,
                          limits=httpx.Limits(max_keepalive_connections=0))
    path, body = f"/v1/models/{MODEL}:predict", b'{"instances": [[1.0]]}'

    def call() -> str | None:
        try:
            response = client.post(path, content=body,
                                   headers={"content-type": "application/json"})
        except httpx.TimeoutException:
            return "timeout"
        if response.status_code != 200:
            return f"HTTP {response.status_code}"
        return None if response.json().get("predictions") == [[ANSWER]] else "wrong answer"

    return call, client.close


def grpc_call(port: int, timeout: float) -> tuple[Callable[[], str | None], Callable[[], None]]:
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from bench.grpc_load import predict_request_bytes

    request = predict_pb2.PredictRequest()
    request.ParseFromString(predict_request_bytes(MODEL, [1.0]))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def call() -> str | None:
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            return "timeout" if code == grpc.StatusCode.DEADLINE_EXCEEDED else str(code)
        return None if list(response.outputs["y"].float_val) == [ANSWER] else "wrong answer"

    return call, channel.close


def start_daemon(work: Path, base: Path) -> DaemonProcess:
    run = Path(tempfile.mkdtemp(prefix="daemon-", dir=work))
    config = daemon_config(run, [{"name": MODEL, "base_path": str(base)}])
    config["server"]["grpc_port"] = free_port()
    daemon = DaemonProcess(run, config).start(timeout=180)
    daemon.wait_for_states(MODEL, {2: "AVAILABLE"}, timeout=120)
    return daemon


def open_files_limit(pid: int) -> int | None:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return None


def refusals(daemon: DaemonProcess) -> dict[str, Any]:
    """modelwatch_refused_total by its labels (empty where the daemon has no such counter)."""
    from bench.common import prometheus

    try:
        samples = prometheus(daemon)
    except Exception as error:  # the daemon may be too far gone to answer
        return {"unavailable": type(error).__name__}
    return {key: value for key, value in samples.items()
            if key.startswith("modelwatch_refused_total{") and value}


def answers(daemon: DaemonProcess) -> bool:
    assert daemon.client is not None
    try:
        return daemon.client.post(f"/v1/models/{MODEL}:predict", json={"instances": [[1.0]]},
                                  timeout=30).status_code == 200
    except Exception:
        return False


def stop_all(steady: list[Steady], clients: list[tuple[Any, Callable[[], None]]],
             timeout: float) -> None:
    """Stop the steady clients and close their connections (again is harmless)."""
    for client in steady:
        client.stop()
    for client in steady:
        client.join(timeout)
    for _, close in clients:
        close()


def measure(number: int, work: Path, base: Path, args: argparse.Namespace,
            payload: Any) -> dict[str, Any]:
    """One attack against a fresh daemon: baseline window, attack window, aftermath."""
    row: dict[str, Any] = {"number": number, "name": ATTACKS[number]}
    context = multiprocessing.get_context("spawn")
    try:
        daemon = start_daemon(work, base)
    except (AssertionError, RuntimeError) as error:  # it did not start: say so, go on
        return {**row, "error": f"the daemon did not start: {str(error).splitlines()[0]}",
                "daemon_log": str(error)[-2000:]}
    child = None
    clients: list[tuple[Callable[[], str | None], Callable[[], None]]] = []
    steady: list[Steady] = []
    try:
        row["daemon_open_files_limit"] = open_files_limit(daemon.pid)
        ready, go, results = context.Event(), context.Event(), context.Queue()
        target = Target(int(daemon.client.base_url.port or 0), daemon.grpc_port, MODEL)
        child = context.Process(target=attacker, name=f"attack-{number}", daemon=True,
                                args=(number, target, args.duration, payload, ready, go, results))
        child.start()
        if not ready.wait(180):
            raise RuntimeError("the attacker did not get ready in 180 s")
        clients += [rest_call(target.rest_port, args.timeout),
                    grpc_call(daemon.grpc_port, args.timeout)]
        steady += [Steady(name, call, args.rate, args.timeout).start()
                   for name, (call, _) in zip(("rest", "grpc"), clients)]
        time.sleep(WARMUP_S)
        with ResidentSampler(daemon.pid, interval=0.01) as before:
            baseline = (time.monotonic(), time.monotonic() + args.baseline)
            time.sleep(args.baseline)
        logged = len(daemon.log())
        with ResidentSampler(daemon.pid, interval=0.01) as during:
            started = time.monotonic()
            go.set()
            try:
                row["attacker"] = results.get(timeout=args.duration + GRACE_S + 60)
            except queue.Empty:
                row["attacker"] = {"saw": "the attacker did not finish", "error": "timeout"}
            time.sleep(args.tail)
            window = (started, time.monotonic())
        stop_all(steady, clients, args.timeout + 5)
        for name, client in zip(("rest", "grpc"), steady):
            row.setdefault("baseline", {})[name] = summarize(client.requests, baseline)
            row.setdefault("attack", {})[name] = summarize(client.requests, window)
        row["window_s"] = round(window[1] - window[0], 2)
        row["rss_before_mib"] = mib(before.peak)
        row["rss_peak_mib"] = mib(during.peak)
        row["rss_delta_mib"] = round(row["rss_peak_mib"] - row["rss_before_mib"], 1)
        row["alive_after"] = answers(daemon)
        since = daemon.log()[logged:]  # what the attack and its aftermath logged
        row["log_lines_during"] = since.count("\n")
        row["tracebacks_during"] = since.count("Traceback")
        row["refused"] = refusals(daemon)
        row["verdict"] = verdict(row)
    except Exception:
        row["error"] = traceback.format_exc()[-3000:]
    finally:
        stop_all(steady, clients, args.timeout + 5)
        if child is not None:
            child.join(10)
            if child.is_alive():
                child.kill()
        try:
            row["daemon_exit"] = daemon.stop(timeout=60)
        except AssertionError as error:
            row["daemon_exit"] = f"did not stop on SIGTERM: {str(error)[:200]}"
    return row


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from loader.app.demo import prepare_demo_repository

    base = prepare_demo_repository(work / "models")
    payload = None
    if 4 in args.attacks:
        from bench.hostile_attacks import fillout_requests

        payload = fillout_requests(MODEL)
    rows = []
    for number in args.attacks:
        log(f"attack {number}: {ATTACKS[number]}")
        row = measure(number, work, base, args, payload if number == 4 else None)
        rows.append(row)
        if "error" in row:
            log(f"  did not run: {row['error'].splitlines()[-1]}")
        else:
            log(f"  REST {row['attack']['rest']} gRPC {row['attack']['grpc']} "
                f"RSS {row['rss_delta_mib']:+} MiB; {row['attacker'].get('saw')}; "
                f"misses {row['verdict']}")
    return {
        "benchmark": "hostile",
        "parameters": {"attacks": args.attacks, "duration_s": args.duration,
                       "baseline_s": args.baseline, "tail_s": args.tail, "rate": args.rate,
                       "timeout_s": args.timeout, "warmup_s": WARMUP_S,
                       "daemon_open_files": args.daemon_open_files, "note": args.note},
        "method": (__doc__ or "").split("\n\n", 1)[1].split("\n\n    ")[0],
        "targets": TARGETS,
        "attacks": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--attacks", type=parse_list, default=list(ATTACKS),
                        help="attack numbers, e.g. 0,1,5 (0: no attack)")
    parser.add_argument("--duration", type=float, default=20.0, help="attack seconds, at most")
    parser.add_argument("--baseline", type=float, default=10.0, help="seconds before the attack")
    parser.add_argument("--tail", type=float, default=3.0, help="seconds after the attacker ends")
    parser.add_argument("--rate", type=float, default=50.0, help="steady requests/s per transport")
    parser.add_argument("--timeout", type=float, default=5.0, help="a steady request's timeout")
    parser.add_argument("--daemon-open-files", type=int, default=1024,
                        help="the daemon's soft RLIMIT_NOFILE (it inherits this process's)")
    parser.add_argument("--note", default="", help="kept with the parameters (e.g. the machine)")
    parser.add_argument("--out", default=default_out("hostile"))
    parser.add_argument("--render", action="store_true",
                        help="write docs/benchmarks.md's table from --out and stop")
    args = parser.parse_args()
    if args.render:
        render(Path(args.out), ROOT / "docs" / "benchmarks.md")
        return
    unknown = [n for n in args.attacks if n not in ATTACKS]
    if unknown:
        parser.error(f"no attack {unknown}; there are {sorted(ATTACKS)}")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(args.daemon_open_files, hard), hard))
    with tempfile.TemporaryDirectory(prefix="modelwatch-hostile-") as work:
        write_result(args.out, run(args, Path(work)))


if __name__ == "__main__":
    main()
