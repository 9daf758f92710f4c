"""gRPC load without a Python client: h2load (Debian's nghttp2-client) replaying one framed
PredictRequest, and the real tensorflow-serving-api stub to check the answer.

A unary gRPC call is an HTTP/2 POST to `/<service>/<method>` with `content-type:
application/grpc` and `te: trailers`, whose body is the message framed as 1 byte
"compressed" (0) + 4 bytes big-endian length + the serialized protobuf. h2load sends that
body from a file on C connections, one stream each (`-c C -m 1`, as hey's C clients), for
D seconds (`-D`), and logs every request (`--log-file`: start in microseconds since the
epoch, HTTP status, microseconds to the end of the answer), from which the percentiles are
exact, as with hey's CSV.

gRPC's own status travels in the trailers (`grpc-status`), which h2load does not read:
HTTP 200 only says the call reached the server. So the gRPC status is judged on the
server's side (modelwatch counts each call by its status code) and a sample call is made
with the real stub, whose answer is compared with the model's.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import HeyRow, HeyRun

PREDICT_PATH = "/tensorflow.serving.PredictionService/Predict"


def grpc_frame(message: bytes) -> bytes:
    """The gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length."""
    if len(message) >= 2**32:
        raise ValueError("a gRPC message is at most 4 GiB")
    return b"\x00" + len(message).to_bytes(4, "big") + message


def predict_request_bytes(model: str, instance: list[float], signature: str = "serving_default",
                          input_name: str = "x") -> bytes:
    """A serialized PredictRequest for one float32 instance, as a TF Serving client sends it
    (`tf.make_tensor_proto`)."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs[input_name].CopyFrom(
        tf.make_tensor_proto(np.asarray([instance], np.float32)))
    return bytes(request.SerializeToString())


def grpc_predict(port: int, model: str, instance: list[float], output: str = "y",
                 timeout_s: float = 30.0) -> list[float]:
    """One Predict through tensorflow-serving-api's stub; the first row of `output`."""
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.ParseFromString(predict_request_bytes(model, instance))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=timeout_s)
    return [float(v) for v in np.asarray(tf.make_ndarray(response.outputs[output]))[0]]


def parse_log(text: str) -> tuple[HeyRow, ...]:
    """h2load's --log-file rows as hey rows (offsets from the first request's start)."""
    rows = []
    for line in text.splitlines():
        cells = line.split("\t")
        if len(cells) < 3 or not cells[0].strip().isdigit():
            continue
        rows.append((int(cells[0]), int(cells[1]), int(cells[2])))
    if not rows:
        return ()
    first = min(start for start, _, _ in rows)
    return tuple(HeyRow(elapsed / 1e6, status, (start - first) / 1e6)
                 for start, status, elapsed in sorted(rows))


_COUNTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                     r"(\d+) failed, (\d+) errored, (\d+) timeout")


def parse_summary(text: str) -> dict[str, int]:
    """h2load's closing counts ('requests: N total, N started, ...')."""
    found = _COUNTS.search(text)
    if not found:
        raise RuntimeError(f"h2load printed no request counts:\n{text[-1500:]}")
    names = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    return dict(zip(names, (int(x) for x in found.groups()), strict=True))


def ensure_h2load() -> str:
    found = shutil.which("h2load")
    if not found:
        raise SystemExit("the gRPC load generator h2load is missing: `make bench-install` "
                         "installs it (Debian's nghttp2-client), or `apt-get install "
                         "nghttp2-client`")
    return found


def h2load_version() -> str | None:
    try:
        done = subprocess.run([ensure_h2load(), "--version"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


@dataclass(frozen=True)
class H2LoadResult:
    run: HeyRun
    counts: dict[str, int]


class H2Load:
    """One h2load run of D seconds at C connections, started now and collected by wait()."""

    def __init__(self, url: str, frame: bytes, concurrency: int, duration_s: float) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="h2load-"))
        body = self._dir / "request.bin"
        body.write_bytes(frame)
        self._log = self._dir / "requests.tsv"
        self.command = (ensure_h2load(), "-c", str(concurrency), "-m", "1", "-t", "1",
                        "-D", f"{duration_s:g}", "-d", str(body),
                        "-H", "content-type: application/grpc", "-H", "te: trailers",
                        "--log-file", str(self._log), url)
        self.concurrency = concurrency
        self.duration_s = duration_s
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> H2Load:
        self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True)
        return self

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def wait(self) -> H2LoadResult:
        assert self._process is not None
        try:
            out, _ = self._process.communicate(timeout=self.duration_s + 120)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.communicate()
            raise RuntimeError(f"h2load ran too long: {' '.join(self.command)}") from None
        try:
            if self._process.returncode != 0:
                raise RuntimeError(f"h2load failed ({self._process.returncode}): {out[-2000:]}")
            rows = parse_log(self._log.read_text()) if self._log.exists() else ()
            run = HeyRun(rows, self.concurrency, None, self.duration_s, self.command)
            return H2LoadResult(run, parse_summary(out))
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)


def run_h2load(url: str, frame: bytes, concurrency: int, duration_s: float) -> H2LoadResult:
    return H2Load(url, frame, concurrency, duration_s).start().wait()


def summary_extra(result: H2LoadResult) -> dict[str, Any]:
    """What h2load itself counted, beside the per-request rows."""
    return {"h2load_counts": result.counts,
            "grpc_status_note": "h2load sees HTTP status only; gRPC status from the server's "
                                "counter (grpc_non_ok) and a stub call"}
