"""A large predict body decoded a slice at a time, so what it costs follows what it makes.

Parsing a whole body builds a Python object for every JSON value: 10M rows of `[NaN]`
(60 MB) become 10M lists, over a gigabyte, and the parse holds the interpreter lock (and
so every other client) for seconds. The most common large body is one array of numbers
for a signature's one input (`{"instances": [[1.5], ...]}` or `{"inputs": [...]}`, maybe
with a "signature_name"). For that body, `split_body` finds the array's top-level commas
with numpy (no objects), and `decode_in_slices` parses about SLICE_BYTES of it at a time
(orjson, else the lenient parser for NaN and Infinity), turns each slice into an array by
`json_predict`'s fast path and lets its objects go: the peak is the arrays plus one
slice, and the lock is let go between slices.

A slice is the array's values between two top-level commas, so each one parsed as a list
checks that part of the document; together they check all of it. Anything else (another
key, strings, objects, a slice the fast path refuses, rows of different shapes) returns
None, and the caller decodes the whole body the exact way, with TF Serving's error.
"""

from __future__ import annotations

import gc
import re
from typing import Any, NamedTuple

import numpy as np
import orjson

from loader.base import DEFAULT_SIGNATURE, ServingError, SignatureInfo
from loader.serving.rest.json_predict import PredictRequest, fast_instances, input_specs
from loader.serving.rest.json_tensors import MAX_RANK, dense_shape, fast_tensor
from loader.serving.rest.json_values import parse_lenient

# What parsing and decoding a JSON body whole may take, per byte of it, at most: a parsed
# JSON value is a Python object, and the densest are nested lists, 64 bytes (a list with
# its GC header, rounded by pymalloc) for every 2 bytes of "[]" (measured: 33x for rows of
# [], 23x RSS for rows of [1.5] or [NaN]). Only bodies past INLINE_BODY_BYTES reserve.
JSON_DECODE_FACTOR = 32
# What splitting a body and decoding it a slice at a time takes per byte, answer included:
# the array's bytes, its comma offsets, one slice's objects, the tensors and the encoded
# answer (measured: two 60 MB bodies of [NaN] rows at once, +595 MiB of RSS).
SLICED_DECODE_FACTOR = 5
# Per JSON value (a comma, "[" or "{" starts one) and per object, what parsing makes of it
# at most beyond twice its text: a list, float, int or short string is under 128 bytes
# with its pointer, a dict under 256 more.
_VALUE_BYTES, _OBJECT_BYTES = 128, 256


def whole_parse_bytes(body: bytes) -> int:
    """What parsing `body` whole may take at most (on a worker thread: four passes over
    the bytes, in C): its values' objects from its structure, never more than
    JSON_DECODE_FACTOR times its size."""
    objects = body.count(b"{")
    values = body.count(b",") + body.count(b"[") + objects
    estimate = 2 * len(body) + _VALUE_BYTES * values + _OBJECT_BYTES * objects
    return min(estimate, JSON_DECODE_FACTOR * len(body))


# Every step below that runs in C holds the interpreter lock, and the event loop waits for
# the whole step each time it wants the lock back: a decode thread that holds it for
# milliseconds at a time makes every other client wait that long for each read and
# answer, over and over (steady clients' p99 went from 9 ms to 360 ms while two 60 MB
# bodies were split in 1 MB blocks and parsed in 256 KiB slices). So each step takes a
# fraction of a millisecond.
SLICE_BYTES = 64 * 1024  # parsed at once: about half a millisecond of the lock
_BLOCK = 64 * 1024  # bytes of the array scanned for commas at once

_NAME = rb'"signature_name"\s*:\s*"([A-Za-z0-9_.\-/]*)"'
_HEAD = re.compile(rb'\s*\{\s*(?:' + _NAME + rb'\s*,\s*)?"(instances|inputs)"\s*:\s*\[')
_TAIL = re.compile(rb'\]\s*(?:,\s*' + _NAME + rb'\s*)?\}\s*\Z')

# What each byte of the array is to the scan: nesting steps for the brackets, a comma, or
# a string or object (then the body is not one array of numbers: the whole-body way).
_OPEN, _CLOSE, _COMMA, _NOT_NUMBERS = 1, 2, 3, 4
_KIND = np.zeros(256, np.uint8)
_KIND[ord("[")], _KIND[ord("]")], _KIND[ord(",")] = _OPEN, _CLOSE, _COMMA
_KIND[[ord('"'), ord("{"), ord("}")]] = _NOT_NUMBERS
_STEP = np.zeros(5, np.int8)
_STEP[_OPEN], _STEP[_CLOSE] = 1, -1


class SlicedBody(NamedTuple):
    """A predict body that is one array: its key, its signature name and the array's
    values (without the outer brackets) split at their top-level commas."""

    row_format: bool  # "instances"
    signature_name: str
    values: memoryview  # a view of the body: copying tens of MB held the interpreter lock
    commas: np.ndarray  # offsets of the top-level commas in `values`


def split_body(body: bytes) -> SlicedBody | None:
    """The body as one array of values split at its top-level commas, or None when it is
    anything else (then parse it whole)."""
    head = _HEAD.match(body)
    tail = _TAIL.search(body, max(0, len(body) - 512))
    if head is None or tail is None or head.end() > tail.start():
        return None
    if head.group(1) is not None and tail.group(1) is not None:
        return None  # the name twice: which one counts is the whole-body parser's to say
    name = head.group(1) if head.group(1) is not None else tail.group(1)
    values = memoryview(body)[head.end() : tail.start()]
    commas = _top_level_commas(values)
    if commas is None:
        return None
    return SlicedBody(
        head.group(2) == b"instances", (name or b"").decode() or DEFAULT_SIGNATURE, values, commas
    )


def _top_level_commas(values: memoryview) -> np.ndarray | None:
    """Offsets of the commas outside any bracket; None if the brackets do not balance or
    the values hold strings or objects."""
    chars = np.frombuffer(values, np.uint8)
    found, depth = [], 0
    for start in range(0, len(chars), _BLOCK):
        kinds = _KIND[chars[start : start + _BLOCK]]
        if kinds.max(initial=0) == _NOT_NUMBERS:
            return None
        depths = np.cumsum(_STEP[kinds], dtype=np.int32)
        depths += depth
        if depths.min() < 0:
            return None
        depth = int(depths[-1])
        found.append(np.flatnonzero((kinds == _COMMA) & (depths == 0)) + start)
    if depth != 0:
        return None
    return np.concatenate(found) if found else np.zeros(0, np.intp)


def decode_in_slices(body: SlicedBody, signature: SignatureInfo) -> PredictRequest | None:
    """The request, decoded a slice at a time; None when the body must be decoded whole
    (a signature of several inputs, a slice that does not parse or that the fast path
    refuses, rows that differ in shape)."""
    specs = input_specs(signature)
    if len(specs) != 1:
        return None
    ((alias, spec),) = specs.items()
    parts: list[np.ndarray] = []
    values, commas, start = body.values, body.commas, 0
    while start < len(values):
        cut = int(np.searchsorted(commas, start + SLICE_BYTES))
        end = int(commas[cut]) if cut < len(commas) else len(values)
        part = _decode_slice(b"[" + values[start:end] + b"]", body.row_format, alias, spec)
        if part is None or (parts and (part.shape[1:], part.dtype) != (
            parts[0].shape[1:], parts[0].dtype
        )):
            return None
        parts.append(part)
        start = end + 1
    if not parts or start != len(values) + 1:  # empty, or a trailing comma
        return None
    tensor = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return PredictRequest(body.signature_name, body.row_format, {alias: tensor})


def _decode_slice(text: bytes, row_format: bool, alias: str, spec: Any) -> np.ndarray | None:
    """One slice's array, with the cyclic garbage collector paused while its objects live:
    they have no cycles and are gone when this returns, but tens of thousands of new lists
    would otherwise start full collections, each walking every object of the process (a
    second and more with TensorFlow loaded, measured), with the interpreter lock held."""
    paused = gc.isenabled()
    gc.disable()
    try:
        return _parse_slice(text, row_format, alias, spec)
    finally:
        if paused:
            gc.enable()


def _parse_slice(text: bytes, row_format: bool, alias: str, spec: Any) -> np.ndarray | None:
    try:
        try:
            rows = orjson.loads(text)
        except orjson.JSONDecodeError:
            rows = parse_lenient(text)  # NaN, Infinity, numbers past 64 bits
    except ServingError:
        return None
    if type(rows) is not list or not rows:
        return None
    if row_format:
        decoded = fast_instances(rows, {alias: spec})
        return None if decoded is None else decoded[alias]
    shape = dense_shape(rows)
    return fast_tensor(rows, shape, spec) if len(shape) <= MAX_RANK else None
