"""Warmup: replays a version's recorded requests before it becomes available.

As in TF Serving (`saved_model_warmup_util.cc`, `saved_model_warmup.cc`), a SavedModel may
carry `assets.extra/tf_serving_warmup_requests`, a TFRecord file of serialized
`PredictionLog`s. Each record is replayed `iterations` times (TF Serving's
`ModelWarmupOptions.num_request_iterations`) so that lazy initialisation, tracing and
allocation happen at load time instead of on the first real requests. TF Serving's rules:

- no file: nothing to do;
- at most 1,000 records, or the load fails (INVALID_ARGUMENT);
- a file that is not TFRecord, or is truncated or corrupt, fails the load (DATA_LOSS), as
  does a record that is not a `PredictionLog` (INVALID_ARGUMENT) or a file that cannot be
  opened (the reader's own code);
- `predict_log`, `classify_log`, `regress_log` and `multi_inference_log` are replayed; any
  other log type fails the load (UNIMPLEMENTED) -- TF Serving's TFRT path fails them all,
  its session path only `session_run_log`; the stricter rule catches a wrong file sooner;
- a request that fails fails the load, with the request's own error.

Batch shapes: when batching is on, the first batch at each allowed size would still pay
for tracing and allocation at that shape. With `batch_sizes`, every distinct run the
replay made that the batching layer would batch (at most `MAX_BATCH_SHAPES`, told apart
by signature, output keys, dtypes and non-batch dims) runs once more at each size, its
inputs tiled along the first dimension. This is TF Serving's
`enable_all_batch_sizes_warmup` in spirit. Without a warmup file there are no inputs to
build from, so batch shapes are not warmed. A failure here only logs a warning: the
batching layer runs a failed batch's requests again one by one, so the version serves.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Generator, Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import message

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # after the log level, which it reads at import
from tensorflow.python.util import deprecation
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis.prediction_log_pb2 import PredictionLog

from loader.base import (
    DEFAULT_SIGNATURE,
    Code,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    Servable,
    ServingError,
    SignatureInfo,
    TensorInfo,
)
from loader.servables.inference import (
    Task,
    check_one_model,
    classify,
    multi_inference,
    regress,
    serialized_examples,
)
from loader.servables.request_tensors import decode_inputs

log = logging.getLogger(__name__)

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
"""Where a version's warmup requests live, relative to its folder (TF Serving's name)."""
MAX_RECORDS = 1000  # TF Serving's WarmupConsts::kMaxNumRecords
MAX_BATCH_SHAPES = 4  # distinct runs warmed at each batch size

_Run = tuple[str, dict[str, np.ndarray], tuple[str, ...] | None]  # signature, inputs, outputs


@dataclass(frozen=True)
class WarmupReport:
    """What warming up a version did."""

    records: int  # warmup records read and replayed (each `iterations` times)
    seconds: float  # wall time, batch shapes included
    batch_sizes: tuple[int, ...] = ()  # sizes every distinct batchable run also ran at


def warm_up(
    servable: Servable,
    folder: str | Path,
    *,
    iterations: int = 1,
    batch_sizes: Sequence[int] = (),
) -> WarmupReport:
    """Replays `folder/assets.extra/tf_serving_warmup_requests` against `servable`.

    Call it on the servable itself, before any batching wraps it, so warmup is not
    traffic. Raises `ServingError` with TF Serving's code and text when the file cannot
    be read, holds more than `MAX_RECORDS` records or a log type that cannot be
    replayed, or when a request fails; the caller should then unload the servable.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, not {iterations}")
    start = time.monotonic()
    path = Path(folder) / WARMUP_FILE
    if not path.exists():
        log.info("No warmup data file found at %s", path)
        return WarmupReport(0, time.monotonic() - start)
    recorder = _Recorder(servable)
    records = 0
    with closing(_read_records(path)) as raw_records:
        for raw in raw_records:
            records += 1
            if records > MAX_RECORDS:
                raise InvalidArgument(
                    f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}"
                )
            prediction_log = _parse(raw, path)
            for _ in range(iterations):
                _replay(recorder, prediction_log)
    warmed = _warm_batch_sizes(servable, recorder.runs, batch_sizes)
    report = WarmupReport(records, time.monotonic() - start, warmed)
    log.info(
        "warmed up %s: %d record(s) x %d iteration(s), batch sizes %s, in %.3f s",
        folder, records, iterations, list(warmed) or "none", report.seconds,
    )
    return report


def write_warmup_file(folder: str | Path, logs: Iterable[PredictionLog]) -> Path:
    """Writes `logs` as the warmup file of the SavedModel in `folder`; returns its path.

    Build each log as in TF Serving's SavedModel Warmup guide, for example::

        request = predict_pb2.PredictRequest(inputs={"x": tf.make_tensor_proto([[1.0]])})
        request.model_spec.signature_name = "serving_default"
        write_warmup_file(version_folder, [prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request))])

    Write it before publishing the version. The file is written beside its final name
    and renamed into place, so a load never reads half of it.
    """
    target = Path(folder) / WARMUP_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(handle)
    try:
        with tf.io.TFRecordWriter(staging) as writer:
            for prediction_log in logs:
                writer.write(prediction_log.SerializeToString())
        os.replace(staging, target)
    finally:
        if os.path.exists(staging):
            os.remove(staging)
    return target


# ---- reading ------------------------------------------------------------------------


def _read_records(path: Path) -> Generator[bytes, None, None]:
    """The file's records, read lazily with TensorFlow's RecordReader (TF Serving's)."""
    try:
        with deprecation.silence():  # the v1 iterator still is the plain reader
            records = tf.compat.v1.io.tf_record_iterator(str(path))
        yield from records
    except tf.errors.DataLossError as exc:
        # A truncated file ends in DATA_LOSS too: the reader never waits for more bytes.
        raise DataLoss(
            f"{exc.message}. Please verify your warmup data is in TFRecord format."
        ) from exc
    except tf.errors.OpError as exc:  # TensorFlow's file errors name the file
        raise ServingError(exc.message, Code(exc.error_code)) from exc


def _parse(raw: bytes, path: Path) -> PredictionLog:
    try:
        return PredictionLog.FromString(raw)
    except message.DecodeError:
        # TF Serving quotes the whole record; a bounded, escaped prefix stays readable.
        raise InvalidArgument(
            f"Failed to parse warmup record: {raw[:64]!r} from {path}"
        ) from None


# ---- replaying ----------------------------------------------------------------------


def _replay(servable: Servable, prediction_log: PredictionLog) -> None:
    """TF Serving's RunWarmupRequest: runs one logged request and drops its answer."""
    kind = prediction_log.WhichOneof("log_type")
    if kind == "predict_log":
        _predict(servable, prediction_log.predict_log.request)
    elif kind == "classify_log":
        request = prediction_log.classify_log.request
        classify(servable, request.model_spec.signature_name, serialized_examples(request.input))
    elif kind == "regress_log":
        request = prediction_log.regress_log.request
        regress(servable, request.model_spec.signature_name, serialized_examples(request.input))
    elif kind == "multi_inference_log":
        request = prediction_log.multi_inference_log.request
        check_one_model(task.model_spec.name for task in request.tasks)
        tasks = [Task(t.model_spec.signature_name, t.method_name) for t in request.tasks]
        multi_inference(servable, tasks, serialized_examples(request.input))
    else:
        # TF Serving prints the LogTypeCase, which is the oneof field's number (0 if unset).
        number = PredictionLog.DESCRIPTOR.fields_by_name[kind].number if kind else 0
        raise ServingError(f"Unsupported log_type for warmup: {number}", Code.UNIMPLEMENTED)


def _predict(servable: Servable, request: predict_pb2.PredictRequest) -> None:
    """TF Serving's RunPredict, up to running the signature (as the gRPC API decodes)."""
    name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature = servable.signatures.get(name)
    if signature is None:
        raise FailedPrecondition(f'Serving signature key "{name}" not found.')
    servable.run(name, decode_inputs(request.inputs, signature), list(request.output_filter) or None)


class _Recorder:
    """Passes runs to a servable and keeps the first few distinct batchable ones."""

    def __init__(self, inner: Servable) -> None:
        self._inner = inner
        self.runs: dict[tuple[Any, ...], _Run] = {}

    @property
    def signatures(self) -> Mapping[str, SignatureInfo]:
        return self._inner.signatures

    def signature_def_json(self) -> dict[str, Any]:
        return self._inner.signature_def_json()

    def run(
        self,
        signature_name: str,
        inputs: Mapping[str, Any],
        output_keys: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        result = self._inner.run(signature_name, inputs, output_keys)
        keys = tuple(output_keys) if output_keys else None
        if len(self.runs) < MAX_BATCH_SHAPES:
            arrays = {alias: np.asarray(value) for alias, value in inputs.items()}
            signature = self._inner.signatures.get(signature_name)
            if signature is not None and _batchable(signature, arrays, keys):
                shapes = tuple((a, v.dtype.str, v.shape[1:]) for a, v in sorted(arrays.items()))
                self.runs.setdefault((signature_name, keys, shapes), (signature_name, arrays, keys))
        return result

    def unload(self) -> None:
        """Does nothing: the servable belongs to whoever asked for the warmup."""


def _batchable(
    signature: SignatureInfo, inputs: Mapping[str, np.ndarray], keys: tuple[str, ...] | None
) -> bool:
    """Whether `loader.servables.batching` would batch this run (its admission rules)."""
    if not inputs or set(inputs) != set(signature.inputs):
        return False  # missing inputs may have defaults: batching runs such requests alone
    rows = {v.shape[0] if v.ndim else 0 for v in inputs.values()}
    if len(rows) != 1 or 0 in rows:
        return False  # a scalar, no rows, or unequal first dimensions
    wanted = keys or tuple(signature.outputs)
    if len(set(wanted)) != len(wanted) or not set(wanted) <= set(signature.outputs):
        return False
    return all(_has_batch_dim(signature.inputs[a]) for a in inputs) and all(
        _has_batch_dim(signature.outputs[k]) for k in wanted
    )


def _has_batch_dim(info: TensorInfo) -> bool:
    return info.shape is None or (len(info.shape) > 0 and info.shape[0] < 0)


def _warm_batch_sizes(
    servable: Servable, runs: Mapping[Any, _Run], batch_sizes: Sequence[int]
) -> tuple[int, ...]:
    """Runs each recorded run at each batch size; returns the sizes where all succeeded."""
    warmed = []
    for size in sorted(set(batch_sizes)) if runs else ():
        try:
            for name, inputs, keys in runs.values():
                servable.run(name, {a: _tile(v, size) for a, v in inputs.items()}, keys)
        except ServingError as exc:
            log.warning(
                "warming batch size %d failed: %s; batches of that size will run their "
                "requests one by one if they fail too", size, exc.message,
            )
            continue
        warmed.append(size)
    return tuple(warmed)


def _tile(value: np.ndarray, rows: int) -> np.ndarray:
    """`value` repeated along its first dimension to exactly `rows` rows."""
    tiled: np.ndarray = np.take(value, np.arange(rows) % value.shape[0], axis=0)
    return tiled
