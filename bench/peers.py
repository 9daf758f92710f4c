"""modelwatch side by side with the Python model servers users compare it with.

The same MLP as bench/throughput.py (64-512-512-10, float32, fixed-seed weights, one TF2
SavedModel), one instance a request, served in turn by each peer (bench/peer_specs.py):
Flask + gunicorn (the seed's design), Ray Serve, MLServer, LitServe, BentoML, PyTriton
(Triton's C++ server) and modelwatch over REST and gRPC, each configured as its own docs
recommend, with its own batching (max batch 32, ~2 ms wait; modelwatch with its documented
`batch_timeout_micros: 0`) and one worker/replica a core where it has the knob.

For each peer in each round: start it; check its answer to one fixed instance against the
model called in-process (max |difference| <= 1e-5, else flagged); a discarded warm-up at
the highest concurrency; then per concurrency C one window of D seconds: `hey -c C -z D`
(REST) or `h2load -c C -m 1 -D D` (gRPC; bench/grpc_load.py), exact p50/p99 from the
per-request rows, answers/s, non-200 count, and the server's CPU-seconds (utime + stime
+ reaped children's, over its whole process tree, from /proc; bench/proc_cpu.py) before
and after the window, per 1,000 requests. Rounds are interleaved (A B C ..., repeated);
the highest concurrency is measured in every round, the others in the first
--low-rounds rounds only (to fit the run in ~20 minutes). Per peer and concurrency the
median round (by answers/s), all rounds, the spread, the median CPU per 1,000 requests,
and ratios over Flask per round and of the medians.

    make bench-install             # once: the peers' venvs, hey and h2load
    .venv/bin/python bench/peers.py [--rounds 5] [--duration 5] [--concurrency 1,8,32]
        [--peers flask,ray_serve,...] [--low-rounds 3]
    .venv/bin/python bench/peers.py --render   # the docs table from bench/results/peers.json

A peer that is not installed, does not start or answers wrongly is reported with the
reason (one that does not start is not tried again in later rounds). Writes
bench/results/peers.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import peer_report  # noqa: E402
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
    grpc_predict,
    h2load_version,
    predict_request_bytes,
)
from bench.peer_specs import (  # noqa: E402
    BY_NAME,
    MODEL,
    PEERS,
    Peer,
    PeerServer,
    install_peer,
    not_installed_reason,
    versions,
)
from bench.proc_cpu import become_subreaper, descendants_cpu  # noqa: E402
from bench.throughput import DEFAULT_BATCHING, DEFAULT_TENSORFLOW, SIZES  # noqa: E402
from bench.windows import measured_window  # noqa: E402
from tests.daemon_process import free_port  # noqa: E402

TOLERANCE = 1e-5
START_TIMEOUT_S = 180.0


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def check_answer(peer: Peer, server: PeerServer, instance: list[float],
                 expected: list[float]) -> dict[str, Any]:
    """One request; its answer against the in-process model's."""
    import httpx

    if peer.grpc:
        got = grpc_predict(server.grpc_port, MODEL, instance)
        via = "tensorflow-serving-api PredictionService stub"
    else:
        response = httpx.post(server.url, json=peer.body(instance), timeout=30)
        response.raise_for_status()
        got = peer.answer(response.json())
        via = f"POST {peer.path}"
    if len(got) != len(expected):
        return {"equal": False, "max_abs_difference": None, "via": via,
                "got_length": len(got), "expected_length": len(expected)}
    difference = max((abs(a - b) for a, b in zip(got, expected, strict=True)), default=0.0)
    return {"equal": difference <= TOLERANCE, "max_abs_difference": difference, "via": via,
            "tolerance": TOLERANCE}


@dataclass(frozen=True)
class Fixture:
    """What every peer is given and asked: the model, the fixed instance, the in-process
    answer, and the framed gRPC PredictRequest."""

    model: Path
    instance: list[float]
    expected: list[float]
    frame: bytes


def one_window(peer: Peer, server: PeerServer, concurrency: int, duration_s: float,
               fixture: Fixture) -> dict[str, Any]:
    """One measured window: load for `duration_s`, with the server tree's CPU around it."""
    body = json.dumps(peer.body(fixture.instance), separators=(",", ":"))
    if peer.grpc:
        return measured_window(
            descendants_cpu, f"http://127.0.0.1:{server.grpc_port}{PREDICT_PATH}", concurrency,
            duration_s, frame=fixture.frame, counted_at=[f"http://127.0.0.1:{server.port}"])
    return measured_window(descendants_cpu, server.url, concurrency, duration_s, body=body)


def run_peer(peer: Peer, round_number: int, levels: list[int], work: Path, fixture: Fixture,
             args: argparse.Namespace) -> dict[str, Any]:
    """One peer's round: start, check, warm up, one window per concurrency, stop."""
    import httpx

    result: dict[str, Any] = {"round": round_number}
    server = PeerServer(peer, work / f"{peer.name}-{round_number}", fixture.model, free_port(),
                        free_port(), free_port(), args.modelwatch)
    try:
        server.start()
        payload = peer.body(fixture.instance)
        result["start_s"] = server.wait_ready(
            lambda: httpx.post(server.url, json=payload, timeout=10).status_code,
            START_TIMEOUT_S)
        result["answer_check"] = check_answer(peer, server, fixture.instance, fixture.expected)
        if not result["answer_check"]["equal"]:
            log(f"  {peer.name}: ANSWER DIFFERS {result['answer_check']}")
        one_window(peer, server, max(levels), args.warmup, fixture)  # warm-up, discarded
        result["by_concurrency"] = {}
        for c in levels:
            summary = one_window(peer, server, c, args.duration, fixture)
            result["by_concurrency"][str(c)] = summary
            log(f"  {peer.name} c={c}: {summary['throughput_rps']} rps, p50 "
                f"{summary['p50_ms']} ms, p99 {summary['p99_ms']} ms, non-200 "
                f"{summary['non_200']}, CPU {summary['cpu_s_per_1000']} s/1000 req")
    except Exception as error:  # a peer's failure is a result, not a crash
        result["error"] = f"{type(error).__name__}: {error}"[-3000:]
        log(f"  {peer.name} failed: {result['error'][:500]}")
    finally:
        stopping = time.monotonic()
        server.stop()
        result["stop_s"] = round(time.monotonic() - stopping, 1)
    return result


def render(result: Path) -> None:
    """The docs table and figure from a recorded result."""
    import matplotlib

    from bench.plots import plot_peers

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "modelwatch"  # the same figure, the same file
    matplotlib.rcParams["svg.fonttype"] = "none"
    figure = plot_peers(json.loads(result.read_text()), ROOT / "docs" / "img")
    peer_report.render(result, ROOT / "docs" / "benchmarks.md",
                       str(figure.relative_to(ROOT / "docs")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per window")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of discarded load")
    parser.add_argument("--concurrency", type=parse_list, default=[1, 8, 32])
    parser.add_argument("--low-rounds", type=int, default=3,
                        help="rounds that also measure the concurrencies below the highest")
    parser.add_argument("--peers", default=",".join(p.name for p in PEERS),
                        help=f"comma-separated, of {', '.join(p.name for p in PEERS)}")
    parser.add_argument("--install", action="store_true",
                        help="build the peers' venvs (idempotent), then exit")
    parser.add_argument("--render", action="store_true",
                        help="print the docs table from --out and update docs/benchmarks.md")
    parser.add_argument("--out", default=default_out("peers"))
    args = parser.parse_args()
    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BY_NAME))
    if unknown:
        parser.error(f"unknown peers {unknown}; choose from {', '.join(BY_NAME)}")
    peers = [BY_NAME[n] for n in names]
    if args.install:
        failed = {p.name: reason for p in peers if (reason := install_peer(p, log))}
        for name, reason in failed.items():
            log(f"{name} could not be installed (the run will report it):\n{reason[-800:]}")
        return
    if args.render:
        render(Path(args.out))
        return
    ensure_hey()
    if any(p.grpc for p in peers):
        ensure_h2load()
    become_subreaper()
    args.modelwatch = {"model": {"batching": DEFAULT_BATCHING},
                       "daemon": {"tensorflow": DEFAULT_TENSORFLOW}}
    instance = json.loads(instances_body(SIZES[0]))["instances"][0]
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = write_mlp(work / "mlp", SIZES, seed=0)
        import numpy as np
        import tensorflow as tf

        expected = tf.saved_model.load(str(model)).signatures["serving_default"](
            x=tf.constant(np.asarray([instance], np.float32)))["y"].numpy()[0].tolist()
        fixture = Fixture(model, instance, expected,
                          grpc_frame(predict_request_bytes(MODEL, instance)))
        skipped = {p.name: reason for p in peers if (reason := not_installed_reason(p))}
        runnable = [p for p in peers if p.name not in skipped]
        rounds: dict[str, list[dict[str, Any]]] = {p.name: [] for p in runnable}
        top = max(args.concurrency)
        lower = [c for c in args.concurrency if c != top]
        log(f"{len(runnable)} servers x {args.rounds} interleaved rounds; c={top} in every "
            f"round" + (f", c={','.join(map(str, lower))} in the first "
                        f"{min(args.low_rounds, args.rounds)} only" if lower else "")
            + "".join(f"\nnot run: {name}: {reason.splitlines()[0]}"
                      for name, reason in skipped.items()))
        gave_up: set[str] = set()  # did not start once: not tried again (a hang costs minutes)
        for number in range(1, args.rounds + 1):
            levels = args.concurrency if number <= args.low_rounds else [top]
            for peer in (p for p in runnable if p.name not in gave_up):
                log(f"{peer.name} (round {number} of {args.rounds}, c={levels}):")
                outcome = run_peer(peer, number, levels, work, fixture, args)
                rounds[peer.name].append(outcome)
                if "start_s" not in outcome:
                    gave_up.add(peer.name)
                    log(f"  {peer.name} did not start: not tried in the later rounds")
    write_result(args.out, {
        "benchmark": "peers",
        "parameters": {"rounds": args.rounds, "duration_s": args.duration,
                       "warmup_s": args.warmup, "concurrency": args.concurrency,
                       "low_rounds": args.low_rounds, "peers": names,
                       "wall_s": round(time.monotonic() - started, 1)},
        "method": peer_report.METHOD,
        "model": {"sizes": list(SIZES), "dtype": "float32", "seed": 0},
        "load_generators": {"hey": hey_version(),
                            "h2load": h2load_version() if any(p.grpc for p in peers) else None},
        "peers": {p.name: {"label": p.label, "configuration": p.configuration or
                           peer_report.modelwatch_configuration(args.modelwatch, p.grpc),
                           "versions": versions(p)} for p in peers},
        "not_run": skipped,
        **peer_report.aggregate(rounds, args.concurrency),
    })


if __name__ == "__main__":
    main()
