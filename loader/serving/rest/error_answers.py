"""REST answers to errors: TF Serving's HTTP status for each code and its `{"error":
message}` body, and the refusals of a request's body (413, 408) that only REST has.
"""

from __future__ import annotations

import json

import orjson

from loader.base import Code, InvalidArgument, ServingError
from loader.serving.decode_budget import BudgetNeverFits

# TF Serving's mapping (model_servers/http_server.cc: ToHTTPStatusCode).
HTTP_STATUS = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}

class TooLarge(ServingError):
    """The body passes server.max_request_bytes: 413."""

    code = Code.RESOURCE_EXHAUSTED


def too_large(limit: int) -> TooLarge:
    return TooLarge(f"the request body is larger than server.max_request_bytes ({limit} bytes)")


class BodyTimeout(ServingError):
    """The client stopped sending its body: 408, and the connection is closed."""

    code = Code.DEADLINE_EXCEEDED


def body_timeout(seconds: float, size: int) -> BodyTimeout:
    return BodyTimeout(
        f"no part of the request body arrived for {seconds:g} seconds "
        f"(server.body_timeout_seconds); {size} bytes were read"
    )


def error_answer(error: ServingError) -> tuple[int, bytes]:
    """`{"error": message}` and TF Serving's HTTP status for it."""
    if isinstance(error, (TooLarge, BudgetNeverFits)):
        status = 413
    elif isinstance(error, BodyTimeout):
        status = 408
    else:
        status = HTTP_STATUS.get(error.code, 500)
    try:
        return status, orjson.dumps({"error": error.message})
    except orjson.JSONEncodeError:  # a lone surrogate quoted from the client's text
        return status, json.dumps({"error": error.message}).encode()  # escapes it as \udXXX


def parse_version(text: str | None) -> int | None:
    """The version a path names, as TF Serving parses it (None: the latest)."""
    if not text:
        return None
    try:
        version = int(text)
    except ValueError:
        version = -1
    if not 0 <= version < 2**63:
        raise InvalidArgument(f"Failed to convert version: {text} to numeric.")
    return version
