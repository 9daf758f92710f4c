"""The Open Inference Protocol (KServe v2) against TF Serving's API on one daemon: requests
per second and the server's CPU per request, same model, same rows per request.

For each round a fresh daemon serves the MLP of `bench/throughput.py` with batching; each
variant gets a warm-up, then a measured window (hey over REST, h2load over gRPC) with the
daemon's CPU read from /proc around it. The variants alternate within a round and their
order turns round by round (A B, B A, ...), so the machine's slow spells hit all of them.
Every variant's answer is checked against TF Serving REST's first. Variants:

- `tfs_rest`: `POST /v1/models/mlp:predict`, `{"instances": [[64 floats]]}`
- `v2_rest`: `POST /v2/models/mlp/infer`, the same row as JSON `data`
- `tfs_grpc`: `tensorflow.serving.PredictionService/Predict`, the row as a TensorProto
- `v2_grpc`: `inference.GRPCInferenceService/ModelInfer`, the row in `raw_input_contents`
  (as tritonclient.grpc sends it)

    .venv/bin/python bench/v2_protocol.py [--variants tfs_rest,v2_rest] [--rounds 4]
        [--duration 10] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import daemon_config, default_out, instances_body, write_mlp, write_result
from bench.grpc_load import grpc_frame, grpc_predict, predict_request_bytes
from bench.proc_cpu import read_all, tree
from bench.throughput import DEFAULT_BATCHING, DEFAULT_TENSORFLOW, MODEL, SIZES
from bench.windows import measured_window
from tests.daemon_process import DaemonProcess, free_port


@dataclass(frozen=True)
class Variant:
    """One way to ask the model for the same row: over `transport` at `path` (a REST path,
    or a gRPC method's), with the request `payload` builds from the row, and `answer`
    reading the outputs of one request (for the check)."""

    transport: str  # "rest" or "grpc"
    path: str
    payload: Callable[[list[float]], str | bytes]
    answer: Callable[[DaemonProcess, list[float]], list[float]]


def _tfs_rest_answer(daemon: DaemonProcess, row: list[float]) -> list[float]:
    assert daemon.client is not None
    answer = daemon.client.post(f"/v1/models/{MODEL}:predict", json={"instances": [row]})
    return [float(v) for v in answer.json()["predictions"][0]]


def _v2_body(row: list[float]) -> str:
    return json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, len(row)], "data": row}
    ]}, separators=(",", ":"))


def _v2_rest_answer(daemon: DaemonProcess, row: list[float]) -> list[float]:
    assert daemon.client is not None
    answer = daemon.client.post(f"/v2/models/{MODEL}/infer", content=_v2_body(row))
    return [float(v) for v in answer.json()["outputs"][0]["data"]]


def _tfs_grpc_answer(daemon: DaemonProcess, row: list[float]) -> list[float]:
    return [float(v) for v in grpc_predict(daemon.grpc_port, MODEL, row)]


def _v2_grpc_request(row: list[float]) -> bytes:
    from loader.serving.grpc import open_inference_grpc_pb2 as pb

    request = pb.ModelInferRequest(
        model_name=MODEL, raw_input_contents=[struct.pack(f"<{len(row)}f", *row)])
    request.inputs.add(name="x", datatype="FP32", shape=[1, len(row)])
    return request.SerializeToString()


def _v2_grpc_answer(daemon: DaemonProcess, row: list[float]) -> list[float]:
    import grpc

    from loader.serving.grpc import open_inference_grpc_pb2 as pb
    from loader.serving.grpc import open_inference_grpc_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{daemon.grpc_port}") as channel:
        answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            pb.ModelInferRequest.FromString(_v2_grpc_request(row)), timeout=30)
    raw = answer.raw_output_contents[0]
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


VARIANTS: dict[str, Variant] = {
    "tfs_rest": Variant("rest", f"/v1/models/{MODEL}:predict",
                        lambda row: json.dumps({"instances": [row]}, separators=(",", ":")),
                        _tfs_rest_answer),
    "v2_rest": Variant("rest", f"/v2/models/{MODEL}/infer", _v2_body, _v2_rest_answer),
    "tfs_grpc": Variant("grpc", "/tensorflow.serving.PredictionService/Predict",
                        lambda row: grpc_frame(predict_request_bytes(MODEL, row)),
                        _tfs_grpc_answer),
    "v2_grpc": Variant("grpc", "/inference.GRPCInferenceService/ModelInfer",
                       lambda row: grpc_frame(_v2_grpc_request(row)), _v2_grpc_answer),
}


def one_round(work: Path, model: Path, names: list[str], args: argparse.Namespace,
              round_: int) -> list[dict[str, Any]]:
    folder = Path(tempfile.mkdtemp(prefix=f"round-{round_}-", dir=work))
    entry = {"name": MODEL, "base_path": str(model.parent), "batching": DEFAULT_BATCHING}
    config = daemon_config(folder, [entry])
    config["tensorflow"] = DEFAULT_TENSORFLOW
    config["server"]["grpc_port"] = free_port()
    daemon = DaemonProcess(folder, config).start()
    row = json.loads(instances_body(SIZES[0]))["instances"][0]
    runs = []
    try:
        daemon.wait_for_states(MODEL, {1: "AVAILABLE"})
        assert daemon.client is not None
        rest, grpc = str(daemon.client.base_url), f"http://127.0.0.1:{daemon.grpc_port}"
        expected = _tfs_rest_answer(daemon, row)
        for name in names if round_ % 2 else names[::-1]:
            variant = VARIANTS[name]
            got = variant.answer(daemon, row)
            if max(abs(a - b) for a, b in zip(got, expected, strict=True)) > 1e-4:
                raise AssertionError(f"{name} answered {got}, TF Serving REST {expected}")
            payload = variant.payload(row)
            url = (rest if variant.transport == "rest" else grpc) + variant.path
            load: dict[str, Any] = (
                {"body": payload} if isinstance(payload, str) else {"frame": payload}
            )

            def snapshot() -> dict[tuple[int, int], Any]:
                return tree(read_all(), daemon.pid)

            measured_window(snapshot, url, args.concurrency, args.warmup, **load)
            summary = measured_window(snapshot, url, args.concurrency, args.duration, **load)
            run = {"variant": name, "round": round_} | summary
            print(json.dumps(run), file=sys.stderr)
            runs.append(run)
    finally:
        daemon.stop()
    return runs


def medians(runs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, float]]:
    keys = ("throughput_rps", "cpu_s_per_1000")
    return {
        name: {key: statistics.median(r[key] for r in runs if r["variant"] == name and r[key])
               for key in keys}
        for name in names
    }


def ratios(runs: list[dict[str, Any]], ours: str, theirs: str) -> dict[str, Any]:
    """`ours` over `theirs` per round (same daemon) for requests per second and CPU per
    request, and the median of those."""
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for run in runs:
        by_round.setdefault(run["round"], {})[run["variant"]] = run
    out: dict[str, Any] = {}
    for key in ("throughput_rps", "cpu_s_per_1000"):
        per_round = [round(r[ours][key] / r[theirs][key], 3) for r in by_round.values()
                     if ours in r and theirs in r and r[theirs][key]]
        out[key] = {"per_round": per_round,
                    "median": statistics.median(per_round) if per_round else None}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="tfs_rest,v2_rest",
                        help=f"which to alternate, of {', '.join(VARIANTS)}")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", default=default_out("v2_protocol"))
    args = parser.parse_args()
    names = args.variants.split(",")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="v2-protocol-") as tmp:
        work = Path(tmp)
        model = write_mlp(work / "models" / MODEL / "1", SIZES)
        for round_ in range(1, args.rounds + 1):
            runs += one_round(work, model, names, args, round_)
    pairs = {f"{a}/{b}": ratios(runs, a, b) for a, b in (("v2_rest", "tfs_rest"),
                                                         ("v2_grpc", "tfs_grpc"))
             if a in names and b in names}
    write_result(args.out, {
        "benchmark": "v2_protocol",
        "method": (
            f"daemon serving an MLP {'-'.join(map(str, SIZES))} with batching {DEFAULT_BATCHING} "
            f"and tensorflow {DEFAULT_TENSORFLOW}, one row of {SIZES[0]} floats per request; "
            f"per round a fresh daemon and per variant {args.warmup:g} s warm-up, then "
            f"{args.duration:g} s at {args.concurrency} clients (hey for REST, h2load for gRPC), "
            "the daemon's process tree's CPU from /proc around it divided by the answers; "
            "variants alternate, their order turning each round"
        ),
        "runs": runs,
        "medians": medians(runs, names),
        "ratios": pairs,
    })


if __name__ == "__main__":
    main()
