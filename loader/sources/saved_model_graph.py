"""Whether a SavedModel's graph restores variables, read from the bytes of its
saved_model.pb (or .pbtxt) without TensorFlow, so a source can tell a version whose
variables are still on their way from one that has none.

TensorFlow restores variables when a MetaGraphDef has a SaverDef: its loader runs the
SaverDef's restore op from variables/variables.index and the shards it names. TF2 always
writes a SaverDef (and a checkpoint, even with no variables); TF1's SavedModel builder writes
one only when the graph has variables. A graph with no SaverDef needs no variables folder.

The binary proto is walked field by field through a reader of byte ranges: the large
GraphDef is skipped by its length, so a frozen graph of hundreds of MB costs a few small
reads (ranged GETs on S3), not a download.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

# (offset, length) -> the bytes there; fewer at the end of the object or file.
RangeReader = Callable[[int, int], bytes]

# Field numbers: SavedModel.meta_graphs and MetaGraphDef.saver_def (tensorflow/core/protobuf).
_META_GRAPHS = 2
_SAVER_DEF = 3
_LENGTH_DELIMITED, _VARINT, _FIXED64, _FIXED32 = 2, 0, 1, 5
# Bytes asked for per read: one read holds the whole of most graphs' headers.
_WINDOW = 64 * 1024
# A text graph is parsed whole; past this it is not read, and nothing is assumed of it.
_MAX_TEXT_BYTES = 16 * 1024 * 1024
_TEXT_SAVER_DEF = re.compile(rb"(?m)^[ \t]*saver_def[ \t]*:?[ \t]*[{<]")


class _Unreadable(Exception):
    """The bytes are not a whole SavedModel proto (corrupt, or a file still being written)."""


def graph_restores_variables(name: str, size: int, read: RangeReader) -> bool | None:
    """Whether the graph file `name` ("saved_model.pb" or "saved_model.pbtxt") of `size`
    bytes restores variables; None when that cannot be told (the file is not a whole
    SavedModel proto): the load then tries it and says what is wrong."""
    if name.endswith(".pbtxt"):
        if size > _MAX_TEXT_BYTES:
            return None
        return _TEXT_SAVER_DEF.search(read(0, size)) is not None
    window = _Window(read, size)
    meta_graphs = 0
    try:
        for start, end in _fields(window, 0, size, _META_GRAPHS):
            if any(True for _ in _fields(window, start, end, _SAVER_DEF)):
                return True
            meta_graphs += 1
    except _Unreadable:
        return None
    return False if meta_graphs else None


class _Window:
    """Reads through `read` a window at a time, keeping the last window."""

    def __init__(self, read: RangeReader, size: int) -> None:
        self._read = read
        self._size = size
        self._start = 0
        self._data = b""

    def get(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset` (fewer only at the end)."""
        length = min(length, self._size - offset)
        if offset < self._start or offset + length > self._start + len(self._data):
            self._start, self._data = offset, self._read(offset, max(length, _WINDOW))
        return self._data[offset - self._start : offset - self._start + length]


def _varint(window: _Window, pos: int, end: int) -> tuple[int, int]:
    value = 0
    for i, byte in enumerate(window.get(pos, min(10, end - pos))):
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise _Unreadable


def _fields(window: _Window, pos: int, end: int, wanted: int) -> Iterator[tuple[int, int]]:
    """The (start, end) of each length-delimited field numbered `wanted` in [pos, end)."""
    while pos < end:
        tag, pos = _varint(window, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == _VARINT:
            _, pos = _varint(window, pos, end)
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _FIXED32:
            pos += 4
        elif wire_type == _LENGTH_DELIMITED:
            length, pos = _varint(window, pos, end)
            if number == wanted and pos + length <= end:
                yield pos, pos + length
            pos += length
        else:  # groups (deprecated, never in these protos) or not a proto at all
            raise _Unreadable
        if pos > end or number == 0:
            raise _Unreadable
