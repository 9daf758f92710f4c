"""The vocabulary every layer of modelwatch shares: what a version is, what a servable
offers, and the errors a request or a load ends in, with TF Serving's status codes.

A *servable* is a loaded version that answers requests. Every layer raises `ServingError`;
each transport maps its `code` to its own form (an HTTP status and `{"error": message}` for
REST, a gRPC status for gRPC), so the message is the same everywhere. Nothing here imports
an implementation or a third-party library.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

# TensorFlow's kDefaultServingSignatureDefKey: the signature a request without a name gets.
DEFAULT_SIGNATURE = "serving_default"


@dataclass(frozen=True)
class VersionRef:
    """Where a ready version lives, and a fingerprint that changes with its content."""

    uri: str
    fingerprint: str
    size_bytes: int = 0  # the files' total size, for memory estimates; 0: not known


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a signature, as its SignatureDef describes it."""

    name: str  # the graph tensor name, e.g. "x:0"
    dtype: str  # TensorFlow's DataType name, e.g. "DT_FLOAT"
    shape: tuple[int, ...] | None  # -1 for an unknown dimension; None for unknown rank


@dataclass(frozen=True)
class SignatureInfo:
    """A signature of a loaded version: its method and its named inputs and outputs."""

    method_name: str
    inputs: Mapping[str, TensorInfo] = field(default_factory=dict)
    outputs: Mapping[str, TensorInfo] = field(default_factory=dict)


FeatureKind = Literal["bytes_list", "float_list", "int64_list"]


class Feature(NamedTuple):
    """One `tf.train.Feature`: its list kind and values (kind None: an empty list)."""

    kind: FeatureKind | None
    values: list[Any]  # float for float_list, int for int64_list, bytes for bytes_list


Features = dict[str, Feature]


class Servable(Protocol):
    """A loaded model version.

    `run` is called from many threads at once and must be safe for that.
    """

    @property
    def signatures(self) -> Mapping[str, SignatureInfo]: ...

    def signature_def_json(self) -> dict[str, Any]: ...

    def run(
        self,
        signature_name: str,
        inputs: Mapping[str, Any],
        output_keys: Sequence[str] | None = None,
    ) -> dict[str, Any]: ...

    def unload(self) -> None: ...

class Code(enum.Enum):
    """The subset of `tensorflow::error::Code` that modelwatch answers with."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class ServingError(Exception):
    """A failure with a status code and a message meant for the client or the operator."""

    code = Code.UNKNOWN
    # When to try again, for a failure that will pass (REST sends it as Retry-After).
    retry_after_seconds: int | None = None

    def __init__(
        self, message: str, code: Code | None = None, *, retry_after_seconds: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retry_after_seconds is not None:
            self.retry_after_seconds = retry_after_seconds


class InvalidArgument(ServingError):
    code = Code.INVALID_ARGUMENT


class NotFound(ServingError):
    code = Code.NOT_FOUND


class FailedPrecondition(ServingError):
    code = Code.FAILED_PRECONDITION


class Unavailable(ServingError):
    code = Code.UNAVAILABLE


class DeadlineExceeded(ServingError):
    """A request's deadline passed (a REST timeout, a gRPC call's own deadline)."""

    code = Code.DEADLINE_EXCEEDED


class ResourceExhausted(ServingError):
    code = Code.RESOURCE_EXHAUSTED


class Internal(ServingError):
    code = Code.INTERNAL


class DataLoss(ServingError):
    code = Code.DATA_LOSS
