"""The request log's writer: records in TFRecord files TensorFlow reads back, files rotated
by size, a bounded queue whose overflow is dropped and counted, flushed on stop."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from loader.serving.metrics import Metrics
from loader.serving.request_log import LogTarget, RequestLog
from tests.daemon_process import wait_until


def read_logs(prefix: Path) -> list[prediction_log_pb2.PredictionLog]:
    files = sorted(str(p) for p in prefix.parent.glob(prefix.name + "-*"))
    return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(files)]


def open_files(name_start: str) -> list[str]:
    """The files this process holds open whose names start so."""
    fds = Path("/proc/self/fd")
    names = []
    for fd in fds.iterdir():
        try:
            names.append(os.readlink(fd))
        except OSError:  # closed meanwhile
            pass
    return [n for n in names if Path(n).name.startswith(name_start)]


def filler(model: str, payload: bytes = b"") -> object:
    def fill(record: prediction_log_pb2.PredictionLog) -> None:
        record.predict_log.request.model_spec.name = model
        record.predict_log.request.inputs["x"].string_val.append(payload)
    return fill


def counted(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def running() -> Iterator[list[RequestLog]]:
    logs: list[RequestLog] = []
    yield logs
    for request_log in logs:
        request_log.stop()
        request_log.join(30)


def test_records_carry_their_metadata_and_are_on_disk_after_stop(tmp_path: Path) -> None:
    metrics = Metrics()
    request_log = RequestLog(metrics, saved_model_tags=["serve"])
    target = LogTarget(1.0, str(tmp_path / "logs" / "m"))
    request_log.configure({"m": target})
    request_log.start()
    for _ in range(3):
        chosen = request_log.sample("m")
        assert chosen == target
        request_log.record("m", chosen, ("m", 7, "serving_default"), filler("m"), 10)
    assert request_log.sample("other") is None  # not configured: never logged
    request_log.stop()
    request_log.join(30)
    logs = read_logs(tmp_path / "logs" / "m")
    assert len(logs) == 3
    metadata = logs[0].log_metadata
    assert (metadata.model_spec.name, metadata.model_spec.version.value,
            metadata.model_spec.signature_name) == ("m", 7, "serving_default")
    assert metadata.sampling_config.sampling_rate == 1.0
    assert list(metadata.saved_model_tags) == ["serve"]
    assert metadata.timestamp_secs > 0
    assert logs[0].predict_log.request.model_spec.name == "m"
    assert counted(metrics, "modelwatch_request_log_records_total", model="m") == 3


def test_a_sampling_rate_of_zero_chooses_nothing(tmp_path: Path) -> None:
    request_log = RequestLog(Metrics())
    request_log.configure({"m": LogTarget(0.0, str(tmp_path / "m"))})
    assert all(request_log.sample("m") is None for _ in range(1000))


def test_files_are_rotated_by_size_and_every_one_reads_back(
    tmp_path: Path, running: list[RequestLog]
) -> None:
    request_log = RequestLog(Metrics(), file_bytes=10_000)
    running.append(request_log)
    target = LogTarget(1.0, str(tmp_path / "m"))
    request_log.configure({"m": target})
    request_log.start()
    for i in range(20):
        request_log.record("m", target, ("m", 1, "s"), filler("m", bytes([i]) * 2000), 2000)
    request_log.stop()
    request_log.join(30)
    files = sorted(tmp_path.glob("m-*.tfrecord"))
    assert len(files) >= 4  # five records of ~2 KB fill a 10 KB file
    assert all(f.stat().st_size < 10_000 + 2_200 for f in files)
    payloads = [log.predict_log.request.inputs["x"].string_val[0][0] for log in read_logs(tmp_path / "m")]
    assert payloads == list(range(20))  # in order, none lost across files


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    metrics = Metrics()
    request_log = RequestLog(metrics, queue_bytes=64 * 1024)
    target = LogTarget(1.0, str(tmp_path / "m"))
    request_log.configure({"m": target})
    # The writer is not started yet: nothing leaves the queue.
    request_log.record("m", target, ("m", 1, "s"), filler("m"), 40 * 1024)
    request_log.record("m", target, ("m", 1, "s"), filler("m"), 40 * 1024)
    assert counted(metrics, "modelwatch_request_log_dropped_total", model="m",
                   reason="queue_full") == 1
    request_log.start()
    request_log.stop()
    request_log.join(30)
    assert len(read_logs(tmp_path / "m")) == 1
    request_log.record("m", target, ("m", 1, "s"), filler("m"), 10)  # after stop: not kept
    assert counted(metrics, "modelwatch_request_log_dropped_total", model="m",
                   reason="stopped") == 1


def test_a_record_that_cannot_be_written_is_counted_and_the_next_one_written(
    tmp_path: Path, running: list[RequestLog]
) -> None:
    metrics = Metrics()
    request_log = RequestLog(metrics)
    running.append(request_log)
    folder = tmp_path / "logs"
    target = LogTarget(1.0, str(folder / "m"))
    request_log.configure({"m": target})
    shutil.rmtree(folder)  # gone under the running server
    request_log.start()
    request_log.record("m", target, ("m", 1, "s"), filler("m"), 10)
    wait_until(lambda: counted(metrics, "modelwatch_request_log_dropped_total", model="m",
                               reason="error") == 1, 30, "the failed write to be counted")
    folder.mkdir()
    request_log.record("m", target, ("m", 1, "s"), filler("m"), 10)
    request_log.stop()
    request_log.join(30)
    assert len(read_logs(folder / "m")) == 1


def test_a_prefix_whose_folder_cannot_be_made_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError):
        RequestLog(Metrics()).configure({"m": LogTarget(1.0, str(tmp_path / "a_file" / "m"))})


def test_a_reload_moves_a_model_to_its_new_prefix_and_closes_the_old_files(
    tmp_path: Path, running: list[RequestLog]
) -> None:
    request_log = RequestLog(Metrics())
    running.append(request_log)
    before, after = LogTarget(1.0, str(tmp_path / "before")), LogTarget(0.5, str(tmp_path / "after"))
    request_log.configure({"m": before})
    request_log.start()
    request_log.record("m", before, ("m", 1, "s"), filler("m"), 10)
    request_log.configure({"m": after})
    assert request_log.sample("m") in (None, after)
    request_log.record("m", after, ("m", 1, "s"), filler("m"), 10)
    # The old prefix's file is closed while the log runs on.
    wait_until(lambda: open_files("after-") and not open_files("before-"), 30,
               "the old file closed, the new one open")
    assert len(read_logs(tmp_path / "before")) == 1
    request_log.stop()
    request_log.join(30)
    (logged,) = read_logs(tmp_path / "after")
    assert logged.log_metadata.sampling_config.sampling_rate == 0.5
