"""Request logging: a sample of each model's requests, written as TF Serving's
`PredictionLog` records to TFRecord files (TF Serving's `logging_config`).

A model with a `LogTarget` has each answered request chosen with its sampling rate
(`sample`, as `core/request_logger.cc` does: a uniform draw below the rate). A chosen
request is handed to `record` with a function that fills the record's request and
response; the record itself (`log_metadata` with the model spec, the sampling config and
the SavedModel tags, as `RequestLogger::Log` fills it) is made, serialized and written on
the log's one writer thread, so a request pays only for the draw and, if chosen, for an
estimate of its size and queueing a reference. Logging never blocks or fails a request:
the queue holds at most `queue_bytes` (by those estimates); a record that does not fit is
dropped, as is one that cannot be made or written, and each drop is counted
(`modelwatch_request_log_dropped_total{model, reason}`: queue_full, error, stopped).
Files go through `loader.servables.tfrecord_files`, one set per filename prefix, flushed
whenever the queue runs empty and closed by `stop`, which first writes everything queued.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loader.serving.metrics import Metrics
from loader.serving.rate_limited_log import RateLimitedLog

if TYPE_CHECKING:  # both import TensorFlow: imported where records are written, so the
    # config checks that import this module run before TensorFlow's (noisy) start
    from tensorflow_serving.apis import prediction_log_pb2

    from loader.servables.tfrecord_files import RecordFiles

log = logging.getLogger("modelwatch.request_log")

DEFAULT_FILE_BYTES = 64 * 1024 * 1024  # server.request_log_file_bytes
DEFAULT_QUEUE_BYTES = 64 * 1024 * 1024  # server.request_log_queue_bytes
# What a record costs beyond the estimate its caller gives (its metadata and framing).
RECORD_OVERHEAD_BYTES = 256
SERVE_TAGS = ("serve",)

# Fills a PredictionLog's request and response (its log_type), on the writer thread.
Fill = Callable[["prediction_log_pb2.PredictionLog"], None]


@dataclass(frozen=True)
class LogTarget:
    """Where a model's sampled requests go (TF Serving's LoggingConfig of type "file")."""

    sampling_rate: float
    filename_prefix: str


@dataclass(frozen=True)
class _Record:
    model: str
    target: LogTarget
    spec: tuple[str, int, str]  # name, served version, signature name
    timestamp: int
    fill: Fill
    size: int


@dataclass(frozen=True)
class _Close:
    """Close the files of a prefix no model logs to any more."""

    prefix: str
    size: int = 0


class RequestLog:
    """Every model's request logging, one bounded queue and one writer thread for all.

    `configure` says which models log where (and may be called again on a reload);
    `start`, an idempotent `stop` and `join` run the writer thread.
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        file_bytes: int = DEFAULT_FILE_BYTES,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        saved_model_tags: Sequence[str] = SERVE_TAGS,
    ) -> None:
        self._metrics = metrics
        self._file_bytes = file_bytes
        self._queue_bytes = queue_bytes
        self._tags = list(saved_model_tags)
        self._targets: Mapping[str, LogTarget] = {}
        self._cond = threading.Condition()
        self._queue: deque[_Record | _Close] = deque()
        self._queued_bytes = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="modelwatch-request-log",
                                         daemon=True)
        self._warnings = RateLimitedLog(log)

    def configure(self, targets: Mapping[str, LogTarget]) -> None:
        """Log these models' requests from now on (the others' no longer). Makes each
        prefix's folder; raises `OSError` when one cannot be made."""
        for target in targets.values():
            Path(target.filename_prefix).parent.mkdir(parents=True, exist_ok=True)
        gone = {t.filename_prefix for t in self._targets.values()} - {
            t.filename_prefix for t in targets.values()
        }
        self._targets = dict(targets)
        with self._cond:
            self._queue.extend(_Close(prefix) for prefix in sorted(gone))
            self._cond.notify()

    def sample(self, model: str) -> LogTarget | None:
        """Where this request of `model` is to be logged, if it is chosen; None mostly."""
        target = self._targets.get(model)
        if target is None or random.random() >= target.sampling_rate:
            return None
        return target

    def record(
        self, model: str, target: LogTarget, spec: tuple[str, int, str], fill: Fill, size: int
    ) -> None:
        """Queue a chosen request's record: `spec` is the answer's model spec (name,
        version, signature name), `size` about what its request and response take.
        Never blocks or raises: a record that does not fit the queue is dropped, counted."""
        entry = _Record(model, target, spec, int(time.time()), fill,
                        size + RECORD_OVERHEAD_BYTES)
        with self._cond:
            if self._stopping:
                refused = "stopped"
            elif self._queued_bytes + entry.size > self._queue_bytes:
                refused = "queue_full"
            else:
                refused = ""
                self._queue.append(entry)
                self._queued_bytes += entry.size
                self._cond.notify()
        if refused:
            self._dropped(model, refused)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, close the files and end the writer thread (see `join`);
        records offered from now on are dropped."""
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        files: dict[str, RecordFiles] = {}
        unflushed: set[str] = set()
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    break
                entry = self._queue.popleft()
            if isinstance(entry, _Close):
                closing = files.pop(entry.prefix, None)
                unflushed.discard(entry.prefix)
                if closing is not None:
                    self._safely(closing.close, entry.prefix)
            else:
                self._write(entry, files)
                unflushed.add(entry.target.filename_prefix)
            with self._cond:
                self._queued_bytes -= entry.size
                idle = not self._queue
            if idle:  # readers (and a crash) see everything written so far
                for prefix in unflushed:
                    if prefix in files:
                        self._safely(files[prefix].flush, prefix)
                unflushed.clear()
        for prefix, open_files in files.items():
            self._safely(open_files.close, prefix)

    def _write(self, entry: _Record, files: dict[str, RecordFiles]) -> None:
        from tensorflow_serving.apis import prediction_log_pb2

        from loader.servables.tfrecord_files import RecordFiles

        prefix = entry.target.filename_prefix
        try:
            prediction_log = prediction_log_pb2.PredictionLog()
            metadata = prediction_log.log_metadata
            name, version, signature_name = entry.spec
            metadata.model_spec.name = name
            metadata.model_spec.version.value = version
            metadata.model_spec.signature_name = signature_name
            metadata.sampling_config.sampling_rate = entry.target.sampling_rate
            metadata.saved_model_tags.extend(self._tags)
            metadata.timestamp_secs = entry.timestamp
            entry.fill(prediction_log)
            record = prediction_log.SerializeToString()
        except Exception as error:  # a bug: this record is lost, the request was answered
            self._warnings.warning(
                "request_log_record", "a request of model %s could not be logged: %s: %s",
                entry.model, type(error).__name__, error,
            )
            self._dropped(entry.model, "error")
            return
        if prefix not in files:
            files[prefix] = RecordFiles(prefix, self._file_bytes)
        try:
            files[prefix].write(record)
        except Exception as error:  # OSError, or TensorFlow's own for a file it cannot write
            self._warnings.warning(
                "request_log_write", "cannot write the request log %s-*: %s", prefix, error
            )
            self._dropped(entry.model, "error")
            self._safely(files.pop(prefix).close, prefix)  # the next record opens a new file
            return
        self._metrics.request_log_records.labels(entry.model).inc()

    def _safely(self, action: Callable[[], None], prefix: str) -> None:
        try:
            action()
        except Exception as error:
            self._warnings.warning(
                "request_log_write", "cannot write the request log %s-*: %s", prefix, error
            )

    def _dropped(self, model: str, reason: str) -> None:
        self._metrics.request_log_dropped.labels(model, reason).inc()

