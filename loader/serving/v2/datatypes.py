"""The protocol's datatypes and their tensors: the v2 names against numpy's dtypes and a
signature's TensorFlow dtypes, and a tensor's two wire forms, raw bytes (the binary tensor
data extension, gRPC's `raw_*_contents`) and JSON `data`.

Raw tensors are little-endian and row-major; a BYTES tensor is each element's 4-byte
little-endian length followed by its bytes, as Triton's `serialize_byte_tensor` writes it.
Every size is checked before anything is allocated: the element count from the shape
(bounded, so no shape overflows) times the item size must be exactly the bytes given, and
JSON data must hold exactly the shape's element count. Nothing is filled out or padded.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from loader.base import InvalidArgument

# The v2 name of each datatype served, and its numpy dtype (BYTES: objects holding bytes).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

# A signature's TensorFlow dtype (SignatureInfo's names) -> its v2 datatype. BF16 is named
# for metadata, as Triton names it, but not served (numpy has no bfloat16).
_FROM_TF = {
    "DT_BOOL": "BOOL", "DT_INT8": "INT8", "DT_INT16": "INT16", "DT_INT32": "INT32",
    "DT_INT64": "INT64", "DT_UINT8": "UINT8", "DT_UINT16": "UINT16", "DT_UINT32": "UINT32",
    "DT_UINT64": "UINT64", "DT_HALF": "FP16", "DT_FLOAT": "FP32", "DT_DOUBLE": "FP64",
    "DT_STRING": "BYTES", "DT_BFLOAT16": "BF16",
}

MAX_RANK = 64  # numpy's limit
# Larger than any tensor a request can carry (element counts past this are refused before
# multiplying on), and within int64, which numpy's shapes are.
MAX_ELEMENTS = 2**53
_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix
# What one decoded BYTES element takes beyond its bytes: the bytes object's header and its
# slot in the object array (for the decode budget).
BYTES_ELEMENT_OVERHEAD = 33 + 8


def from_tf(tf_dtype: str) -> str:
    """The v2 datatype of a signature's TensorFlow dtype ("DT_FLOAT" -> "FP32"); a dtype
    the protocol has no name for keeps TensorFlow's, so it shows in metadata and errors."""
    return _FROM_TF.get(tf_dtype, tf_dtype)


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a v2 datatype; INVALID_ARGUMENT for a name not served."""
    found = DATATYPES.get(datatype)
    if found is None:
        raise InvalidArgument(f"invalid datatype '{datatype}'")
    return found


def of_array(array: np.ndarray) -> str:
    """The v2 datatype of an output array (object arrays of bytes or str are BYTES)."""
    kind = array.dtype
    if kind.kind in "OSU":
        return "BYTES"
    for name, dtype in DATATYPES.items():
        if dtype == kind.newbyteorder("<") and name != "BYTES":
            return name
    raise InvalidArgument(f"an output of dtype {kind} has no v2 datatype")


def element_count(shape: Sequence[int], what: str) -> int:
    """The element count of `shape`, checked: at most MAX_RANK dimensions, none negative,
    the product at most MAX_ELEMENTS (so no shape overflows anything downstream)."""
    if len(shape) > MAX_RANK:
        raise InvalidArgument(f"{what} has {len(shape)} dimensions; at most {MAX_RANK} served")
    count = 1
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise InvalidArgument(f"{what} has an invalid shape {shape_text(shape)}")
        count *= dim
        if count > MAX_ELEMENTS:
            raise InvalidArgument(f"{what} has a shape {shape_text(shape)} too large to serve")
    return count


def raw_byte_size(datatype: str, shape: Sequence[int], what: str) -> int | None:
    """The exact raw size of a fixed-size tensor; None for BYTES (its size is its own)."""
    count = element_count(shape, what)
    dtype = numpy_dtype(datatype)
    return None if datatype == "BYTES" else count * dtype.itemsize


def decoded_nbytes(datatype: str, shape: Sequence[int], wire_bytes: int) -> int:
    """What a tensor takes once decoded (for the decode budget): its array for a fixed-size
    datatype; for BYTES, its bytes plus each element's object."""
    count = element_count(shape, "a tensor")
    if datatype == "BYTES":
        return wire_bytes + count * BYTES_ELEMENT_OVERHEAD
    return count * numpy_dtype(datatype).itemsize


def check_raw_size(datatype: str, shape: Sequence[int], size: int, what: str) -> int:
    """Refuse raw bytes that cannot be a tensor of `shape`: not exactly its size (fixed-size
    datatypes), or too few for its elements' lengths (BYTES). Returns the element count."""
    count = element_count(shape, what)
    if datatype == "BYTES":
        if count * _LENGTH.size > size:  # each element needs its length at least
            raise InvalidArgument(
                f"unexpected number of string elements for {what}: {size} bytes cannot hold "
                f"{count} elements"
            )
        return count
    expected = count * numpy_dtype(datatype).itemsize
    if size != expected:
        raise InvalidArgument(f"unexpected total byte size {size} for {what}, expecting {expected}")
    return count


def from_raw(datatype: str, shape: Sequence[int], raw: bytes | memoryview, what: str) -> np.ndarray:
    """A tensor from its raw bytes, which must be exactly what `shape` needs."""
    count = check_raw_size(datatype, shape, len(raw), what)
    if datatype == "BYTES":
        return _bytes_from_raw(count, shape, raw, what)
    return np.frombuffer(raw, numpy_dtype(datatype)).reshape(shape)


def _bytes_from_raw(
    count: int, shape: Sequence[int], raw: bytes | memoryview, what: str
) -> np.ndarray:
    view = memoryview(raw)
    values = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if offset + _LENGTH.size > len(view):
            raise InvalidArgument(
                f"unexpected number of string elements {index} for {what}, expecting {count}"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if offset + length > len(view):
            raise InvalidArgument(
                f"element {index} of {what} is {length} bytes long, past the tensor's end"
            )
        values[index] = bytes(view[offset:offset + length])
        offset += length
    if offset != len(view):
        raise InvalidArgument(
            f"unexpected total byte size {len(view)} for {what}, expecting {offset}"
        )
    return values.reshape(shape)


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    """A tensor's raw bytes (little-endian, row-major; BYTES length-prefixed)."""
    if datatype == "BYTES":
        return b"".join(
            _LENGTH.pack(len(item)) + item for item in map(_as_bytes, array.reshape(-1))
        )
    return np.ascontiguousarray(array, DATATYPES[datatype]).tobytes()


def _as_bytes(item: Any) -> bytes:
    return item.encode() if isinstance(item, str) else bytes(item)


def from_json(datatype: str, shape: Sequence[int], data: Any, what: str) -> np.ndarray:
    """A tensor from JSON `data` (or gRPC's typed contents): flat or nested lists, read
    row-major, holding exactly the shape's element count of values of the datatype's kind."""
    dtype = numpy_dtype(datatype)
    flat, kinds = _leaves(shape, data, what)
    count = len(flat)
    accepted = _JSON_KINDS[dtype.kind]
    if not kinds <= accepted:
        wrong = next(value for value in flat if type(value) not in accepted)
        raise InvalidArgument(
            f"unable to parse 'data' of {what}: expected {datatype} values, got {wrong!r}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = [value.encode() if type(value) is str else value for value in flat]
        return array.reshape(shape)
    try:
        return np.array(flat, dtype=dtype).reshape(shape)
    except OverflowError:
        raise InvalidArgument(
            f"unable to parse 'data' of {what}: a value is out of range for {datatype}"
        ) from None


def check_data_count(shape: Sequence[int], data: Any, what: str) -> list[Any]:
    """Refuse data that does not hold exactly the shape's element count; its values, flat."""
    return _leaves(shape, data, what)[0]


def _leaves(shape: Sequence[int], data: Any, what: str) -> tuple[list[Any], set[type]]:
    """`check_data_count`, and the types of the values (found in the same pass, in C: a
    Python loop over the values costs 3 times as much)."""
    count = element_count(shape, what)
    flat = [data] if type(data) is not list else data
    kinds = set(map(type, flat))
    if list in kinds:
        flat = _flatten(flat)
        kinds = set(map(type, flat))
    if len(flat) != count:
        raise InvalidArgument(
            f"unexpected number of elements for {what}: shape {shape_text(shape)} needs {count}, "
            f"got {len(flat)}"
        )
    return flat, kinds


# The JSON values each numpy kind takes (a bool is no number here, as in Triton).
_JSON_KINDS: dict[str, frozenset[type]] = {
    "b": frozenset({bool}),
    "i": frozenset({int}),
    "u": frozenset({int}),
    "f": frozenset({int, float}),
    "O": frozenset({str, bytes}),  # bytes: gRPC's bytes_contents
}


def _flatten(data: list[Any]) -> list[Any]:
    """Nested lists to one flat list, row-major, in one pass without recursion (each list
    met is walked once, however deep or ragged)."""
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if type(value) is list:
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def to_json(array: np.ndarray, datatype: str, what: str) -> list[Any]:
    """A tensor as flat JSON `data` (row-major); BYTES as text, which must be UTF-8."""
    flat = array.reshape(-1)
    if datatype != "BYTES":
        return list(flat.tolist())
    try:
        return [item.decode() if isinstance(item, bytes) else str(item) for item in flat]
    except UnicodeDecodeError:
        raise InvalidArgument(
            f"{what} holds bytes that are not UTF-8 text: ask for it as binary data"
        ) from None


def shape_text(shape: Sequence[Any]) -> str:
    """A shape as Triton writes it: [2,4]."""
    return "[" + ",".join(str(dim) for dim in shape) + "]"

