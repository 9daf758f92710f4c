"""Where a REST request goes: TF Serving's routes, matched on the request's path as it
arrived, with the parts they capture (model name, label) percent-decoded once matched.

TF Serving matches its RE2 patterns (model_servers/http_rest_api_util.cc) on the path
libevent hands it undecoded, then unescapes the model name and the label
(`curl_easy_unescape`): an escaped `:` or `/` is part of a name, never a verb or a path
separator. RE2's `\\d` is ASCII; Python's matches any Unicode digit, so versions here are
`[0-9]` and the patterns work on bytes.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote_to_bytes

from starlette.types import Scope

_VERSION_OR_LABEL = rb"(?:/versions/([0-9]+)|/labels/([^/:]+))?"
# Groups: model, version, label, verb.
PREDICTION_API = re.compile(
    rb"/v1/models/([^/:]+)" + _VERSION_OR_LABEL + rb":(classify|regress|predict)", re.IGNORECASE
)
# Groups: model (None: all models), version, label, "metadata" (None: status).
MODEL_STATUS_API = re.compile(
    rb"/v1/models(?:/([^/:]+))?" + _VERSION_OR_LABEL + rb"(?:/(metadata))?", re.IGNORECASE
)
# The raw request target of a prediction the fast path takes, in ASCII; anything else (a
# query, a fragment, a percent-escape, an absolute URI, other bytes) goes the ASGI way,
# where the app matches its raw path with PREDICTION_API.
FAST_TARGET = re.compile(
    rb"/v1/models/([^/:?%#]+)(?:/versions/([0-9]+)|/labels/([^/:?%#]+))?"
    rb":(classify|regress|predict)",
    re.IGNORECASE,
)

# The Open Inference Protocol's infer (Triton's model route, case-sensitive as Triton's):
# groups model, version. On the fast path, as FAST_TARGET, in ASCII without escapes.
V2_INFER_API = re.compile(rb"/v2/models/([^/]+)(?:/versions/([0-9]+))?/infer")
V2_FAST_TARGET = re.compile(rb"/v2/models/([^/?%#]+)(?:/versions/([0-9]+))?/infer")

# What a prediction's target names: the API, the model, the version's text, the label.
Target = tuple[str, str, "str | None", "str | None"]

# The fast path's targets met last, decoded: clients send the same few over and over, and
# matching and decoding one costs ~1 us. Clients choose them, so the cache is bounded in
# bytes (each entry charged its key twice, for the key and the decoded strings, plus what
# a dict slot, a tuple and four str objects take), and a target longer than any a config
# can name (model and label names are at most 128 characters) is decoded each time, never
# kept.
_TARGETS: dict[bytes, Target] = {}
MAX_KEPT_TARGET_BYTES = 512
MAX_TARGET_CACHE_BYTES = 1024 * 1024
_ENTRY_BYTES = 512
_cached_bytes = 0


def raw_path(scope: Scope) -> bytes:
    """The request's path as it arrived (ASGI's `raw_path`, which uvicorn always sets;
    without it, the decoded path escaped again so that it routes the same)."""
    raw: bytes | None = scope.get("raw_path")
    if raw is None:
        return quote(scope["path"], safe="/:").encode("ascii")
    return raw


def decode_part(raw: bytes) -> str:
    """A matched part of a path, percent-decoded (UTF-8; bytes that are not, as U+FFFD)."""
    if b"%" not in raw:
        return raw.decode("utf-8", "replace")
    return unquote_to_bytes(raw).decode("utf-8", "replace")


def _target(match: re.Match[bytes]) -> Target:
    model, version, label, verb = match.groups()
    return (
        verb.decode().lower(), decode_part(model), version.decode() if version else None,
        decode_part(label) if label else None,
    )


def _v2_target(match: re.Match[bytes]) -> Target:
    model, version = match.groups()
    return "infer", decode_part(model), version.decode() if version else None, None


def parse_prediction(path: bytes) -> Target | None:
    """What the raw path of a prediction (or a v2 infer) names; None when it is not one."""
    match = PREDICTION_API.fullmatch(path)
    if match is not None:
        return _target(match)
    match = V2_INFER_API.fullmatch(path)
    return None if match is None else _v2_target(match)


def prediction_target(url: bytes) -> Target | None:
    """What the raw target of a prediction (or a v2 infer) on the fast path names; None
    when it is not one (see FAST_TARGET, V2_FAST_TARGET)."""
    global _cached_bytes
    target = _TARGETS.get(url)
    if target is not None:
        return target
    if not url.isascii():
        return None
    match = FAST_TARGET.fullmatch(url)
    if match is not None:
        target = _target(match)
    else:
        match = V2_FAST_TARGET.fullmatch(url)
        if match is None:
            return None
        target = _v2_target(match)
    if len(url) <= MAX_KEPT_TARGET_BYTES:
        charge = 2 * len(url) + _ENTRY_BYTES
        if _cached_bytes + charge > MAX_TARGET_CACHE_BYTES:
            _TARGETS.clear()
            _cached_bytes = 0
        _TARGETS[url] = target
        _cached_bytes += charge
    return target


def model_of(scope: Scope) -> str | None:
    """The model a TF Serving route of this request names, if any."""
    path = raw_path(scope)
    match = PREDICTION_API.fullmatch(path) or MODEL_STATUS_API.fullmatch(path)
    if match is None or match.group(1) is None:
        return None
    return decode_part(match.group(1))
