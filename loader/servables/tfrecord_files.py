"""Uncompressed TFRecord files under one name prefix, a new file begun once the current
one holds `max_bytes`: where the request log's `PredictionLog`s go.

Written with TensorFlow's own `tf.io.TFRecordWriter`, so the framing (length, masked
CRC32C of each) is exactly what `tf.data.TFRecordDataset` and TFX read. Files are named
`<prefix>-<start time>-<pid>-<sequence>.tfrecord`: the start time and the process id keep
a restarted server (a container's pid is always 1) from writing over its predecessor's
files, the sequence numbers one process's files in order. Not thread-safe: one writer
thread owns each instance.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import tensorflow as tf

# A record's framing: its length (8 bytes), the length's CRC and the data's CRC (4 each).
FRAMING_BYTES = 16


class RecordFiles:
    """TFRecord files `<prefix>-...`, rotated once one holds `max_bytes` (every file holds
    at least one record, so a record larger than that has a file of its own)."""

    def __init__(self, prefix: str, max_bytes: int) -> None:
        self.prefix = prefix
        self._max_bytes = max_bytes
        self._stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self._sequence = 0
        self._writer: tf.io.TFRecordWriter | None = None
        self._size = 0

    def write(self, record: bytes) -> None:
        """Append one record, opening a file first if none is open. Raises `OSError` (or
        TensorFlow's error) when the file cannot be opened or written."""
        if self._writer is None:
            self._writer = tf.io.TFRecordWriter(self._next_path())
            self._size = 0
        self._writer.write(record)
        self._size += len(record) + FRAMING_BYTES
        if self._size >= self._max_bytes:
            self.close()

    def flush(self) -> None:
        """Hand what was written to the operating system (readers see it)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Finish the open file, if any; the next record opens a new one."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def _next_path(self) -> str:
        while True:
            path = f"{self.prefix}-{self._stamp}-{os.getpid()}-{self._sequence:05d}.tfrecord"
            self._sequence += 1
            if not Path(path).exists():  # never truncate a file that is there
                return path
