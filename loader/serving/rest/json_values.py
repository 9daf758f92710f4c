"""The JSON layer under TF Serving's REST codecs (`json_tensors`, `json_examples`).

Parses a request body as TF Serving's rapidjson does (`parse_body`) and reads its
signature name (`signature_name_of`); writes JSON values into error messages as TF
Serving quotes them (`json_value_to_string`); decodes `{"b64": ...}` objects and JSON
strings into bytes. Error texts are TF Serving's (`tensorflow_serving/util/json_tensor.cc`).

Where this differs on purpose: JSON values quoted in error messages are cut at 1,000
characters.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from loader.base import DEFAULT_SIGNATURE, InvalidArgument

_MAX_VALUE_CHARS = 1000


# --- parsing ---------------------------------------------------------------------------

class _NumberTooBig(ValueError):
    pass


def _parse_int(text: str) -> int | float:
    value = int(text)
    if -(2**63) <= value < 2**64:
        return value
    return _parse_float(text)  # rapidjson (and orjson) keep wider integers as doubles


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NumberTooBig(text)
    return value


_RAPIDJSON_ERRORS = {  # Python's json messages -> rapidjson's GetParseError_En texts
    "Expecting value": "Invalid value.",
    "Extra data": "The document root must not be followed by other values.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid \\escape": "Invalid escape character in string.",
    "Invalid \\uXXXX escape": "Incorrect hex digit after \\u escape in string.",
    "Invalid control character at": "Invalid encoding in string.",
}


def parse_body(body: bytes | bytearray | memoryview | str) -> dict[str, Any]:
    """Parse a request body as TF Serving's rapidjson does; the top level must be an object.

    `NaN`, `Infinity` and `-Infinity` are accepted (kParseNanAndInfFlag), as are invalid
    UTF-8 bytes inside strings. orjson parses the common case; only a body it rejects is
    parsed again with Python's json module, to accept those extensions.
    """
    if isinstance(body, (bytearray, memoryview)):
        body = bytes(body)
    if not body:
        raise InvalidArgument("JSON Parse error: The document is empty")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = parse_lenient(body)
    if type(doc) is not dict:
        raise format_error(doc, "Is not object")
    return doc


def parse_lenient(body: bytes | str) -> Any:
    """Parse JSON with rapidjson's extensions (NaN, Infinity, invalid UTF-8 in strings,
    integers past 64 bits), as Python's json module can; errors in rapidjson's words."""
    text = body if isinstance(body, str) else body.decode("utf-8", "surrogateescape")
    if not text.strip(" \t\n\r"):
        raise InvalidArgument(f"JSON Parse error: The document is empty. at offset: {len(text)}")
    try:
        return json.loads(text, parse_int=_parse_int, parse_float=_parse_float)
    except json.JSONDecodeError as exc:
        message = _RAPIDJSON_ERRORS.get(exc.msg, exc.msg)
        raise InvalidArgument(f"JSON Parse error: {message} at offset: {exc.pos}") from None
    except _NumberTooBig:
        raise InvalidArgument("JSON Parse error: Number too big to be stored in double.") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python's digit limit
        raise InvalidArgument(f"JSON Parse error: {exc}") from None
    except RecursionError:
        raise InvalidArgument("JSON Parse error: the document is nested too deeply") from None


def signature_name_of(request: Mapping[str, Any]) -> str:
    """The request's "signature_name", or "serving_default" when absent or empty."""
    if "signature_name" not in request:
        return DEFAULT_SIGNATURE
    name = request["signature_name"]
    if type(name) is not str:
        raise InvalidArgument(
            f"JSON Value: {json_value_to_string(request)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return name or DEFAULT_SIGNATURE


# --- describing JSON values in errors, as TF Serving's JsonValueToString does ----------

def json_type_name(value: Any) -> str:
    """rapidjson's type name for a parsed JSON value ("Number", "String", "Object"...)."""
    if value is None:
        return "Null"
    if value is True or value is False:
        return str(value)
    if type(value) is dict:
        return "Object"
    if type(value) is list:
        return "Array"
    return "String" if type(value) is str else "Number"


def json_value_to_string(value: Any) -> str:
    """A parsed JSON value written as TF Serving quotes it in errors (rapidjson PrettyWriter).

    A top-level double is written with TF Serving's WriteDecimal (as float when in float
    range); nested values as rapidjson writes them. Output past 1,000 characters is cut.
    """
    if type(value) is float:
        return _write_decimal(value, float32=abs(value) <= 3.4028234e38)
    parts: list[str] = []
    length = 0
    stack: list[tuple[Any, bool, list[bool]]] = []  # (iterator, is_object, [first])
    pending, has_pending = value, True
    while length <= _MAX_VALUE_CHARS:
        if has_pending:
            has_pending = False
            kind = type(pending)
            if (kind is dict or kind is list) and pending:
                text = "{" if kind is dict else "["
                items = iter(pending.items()) if kind is dict else iter(pending)
                stack.append((items, kind is dict, [True]))
            else:
                text = "{}" if kind is dict else "[]" if kind is list else _scalar_text(pending)
            parts.append(text)
            length += len(text)
        if not stack:
            return "".join(parts)
        items, is_object, first = stack[-1]
        item: Any = next(items, _END)
        indent = "    " * len(stack)
        if item is _END:
            stack.pop()
            text = "\n" + indent[4:] + ("}" if is_object else "]")
        else:
            text = ("\n" if first[0] else ",\n") + indent
            first[0] = False
            if is_object:
                text += _quote(item[0]) + ": "
                item = item[1]
            pending, has_pending = item, True
        parts.append(text)
        length += len(text)
    return "".join(parts)[:_MAX_VALUE_CHARS] + "..."


_END = object()


def _quote(text: str) -> str:
    try:
        return orjson.dumps(text).decode()
    except TypeError:  # lone surrogates (from \\uD800 escapes or invalid UTF-8 bytes)
        return json.dumps(text)


def _scalar_text(value: Any) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if type(value) is str:
        return _quote(value)
    if type(value) is float:
        return _rapidjson_double(value)
    return str(value)


def _write_decimal(value: float, *, float32: bool) -> str:
    """TF Serving's WriteDecimal: `%g`, else max_digits10 digits, and ".0" on whole numbers."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if float32:
        value = float(np.float32(value))
        text = f"{value:g}"
        if float(np.float32(float(text))) != value:
            text = f"{value:.9g}"
    else:
        text = f"{value:g}"
        if float(text) != value:
            text = f"{value:.17g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _rapidjson_double(value: float) -> str:
    """A double as rapidjson's Writer writes it (Grisu shortest digits, then Prettify)."""
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0.0"
    mantissa, _, exp_text = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    exponent = int(exp_text or 0) - len(fraction) + len(digits) - len(digits.rstrip("0"))
    digits = digits.rstrip("0")
    k, kk = exponent, len(digits) + exponent  # value = digits * 10**k, 10**(kk-1) <= value
    if k >= 0 and kk <= 21:
        text = digits + "0" * k + ".0"
    elif 0 < kk <= 21:
        text = digits[:kk] + "." + digits[kk:]
    elif -6 < kk <= 0:
        text = "0." + "0" * -kk + digits
    elif len(digits) == 1:
        text = f"{digits}e{kk - 1}"
    else:
        text = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return sign + text


def format_error(value: Any, message: str) -> InvalidArgument:
    """TF Serving's error for a JSON value that is not formatted as expected: the value, then
    `message`."""
    return InvalidArgument(f"JSON Value: {json_value_to_string(value)} {message}")


def lossy_decimal_error(value: Any, target: str) -> InvalidArgument:
    """TF Serving's error for a number that `target` ("float", "double") cannot hold."""
    return InvalidArgument(
        f"Cannot convert JSON value: {json_value_to_string(value)} to {target} "
        "without loss of precision."
    )


# --- b64 objects and strings -------------------------------------------------------------

def is_b64_object(value: Any) -> bool:
    """Whether a JSON value is `{"b64": "<string>"}` (exactly one key, a string value)."""
    return type(value) is dict and len(value) == 1 and type(value.get("b64")) is str


_B64_BODY = re.compile(r"[A-Za-z0-9+/]*([=.]{0,2})")  # absl also pads with "."
_WHITESPACE = re.compile(r"[ \t\n\r\f\v]+")


def decode_b64_object(value: Any) -> bytes:
    """The bytes of a `{"b64": ...}` object, standard alphabet, padding optional (absl's rules)."""
    if not is_b64_object(value):
        raise InvalidArgument(
            f"JSON Value: {json_value_to_string(value)} not formatted correctly for base64 data"
        )
    text = _WHITESPACE.sub("", value["b64"])
    match = _B64_BODY.fullmatch(text)
    body = len(text) - len(match.group(1)) if match else 0
    if not match or body % 4 == 1 or (match.group(1) and len(text) % 4):
        raise InvalidArgument("Unable to base64 decode")
    try:
        return base64.b64decode(text[:body] + "=" * (-body % 4))
    except (binascii.Error, ValueError):  # pragma: no cover - the checks above rule it out
        raise InvalidArgument("Unable to base64 decode") from None


def object_array(items: list[Any]) -> np.ndarray:
    """A 1-D object array of `items` as they are (np.array would nest lists and bytes)."""
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def utf8(text: str) -> bytes:
    """A JSON string's bytes; invalid UTF-8 the client sent comes back byte for byte."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise InvalidArgument(
            "JSON Parse error: The surrogate pair in string is invalid."
        ) from None

