"""The protocol's requests and answers, whatever the transport: health, server and model
metadata, and `infer` through the one `DataPlane`.

A v2 model is a modelwatch model, its versions are our versions, and its inputs and
outputs are a signature's (`serving_default`, or the request parameter `signature_name`).
A request is checked against the signature before anything is decoded or run, with
Triton's words where it has them, and then runs exactly as a TF Serving predict does (the
same version resolution, on-demand loading, batching and deadline), so a v2 request and a
TF Serving request share a batch. Errors are `loader.base`'s: NOT_FOUND for an unknown
model or version, INVALID_ARGUMENT for a request that does not fit, UNAVAILABLE for a
version still loading.
"""

from __future__ import annotations

import importlib.metadata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from loader.base import InvalidArgument, NotFound, SignatureInfo, TensorInfo
from loader.manager.handles import Lease
from loader.serving.dataplane import DataPlane
from loader.serving.decode_budget import DecodeBudget
from loader.serving.v2 import datatypes
from loader.serving.v2.datatypes import shape_text
from loader.serving.v2.signature_view import view_of

# Triton's name for a TensorFlow SavedModel (the model configuration's `platform`).
PLATFORM = "tensorflow_savedmodel"
SERVER_NAME = "modelwatch"
# The protocol's extensions every transport serves (a transport adds its own).
EXTENSIONS: tuple[str, ...] = ("binary_tensor_data", "parameters")
# Called with what a request ran: the signature's name, the version, inputs and outputs.
Observer = Callable[[str, int, dict[str, np.ndarray], dict[str, Any]], None]

# The request and answer types are slotted dataclasses, not frozen ones: a frozen one's
# __init__ sets each field through object.__setattr__, about 1 us more per object, and a
# request makes several. Nothing changes them once built; treat them as values.

# What one request may name: a client controls these counts, and each input or output
# costs work before the model's signature could refuse it (a body of a few megabytes holds
# a million empty inputs).
MAX_TENSORS = 4096  # inputs, and requested outputs

# Inputs that decode to more than this reserve it in the decode budget and decode on a
# worker thread; smaller ones decode on the event loop, as small TF Serving bodies do.
SMALL_DECODE_BYTES = 16 * 1024


@dataclass(slots=True)
class InputTensor:
    """One input of a request, not decoded yet: `raw` bytes (the binary tensor data
    extension, gRPC's raw contents) or `data` (JSON data, gRPC's typed contents)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any = None
    raw: bytes | memoryview | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    """An output a request asks for; `binary_data` as the request says it (None: not said)."""

    name: str
    binary_data: bool | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    """One inference request: the model, the version (None: the latest), the inputs, the
    outputs asked for (none: all of the signature's), its `id` and `parameters`."""

    model: str
    version: int | None
    inputs: Sequence[InputTensor]
    outputs: Sequence[RequestedOutput] = ()
    id: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def signature_name(self) -> str:
        """The signature the request names in its `signature_name` parameter ("": the
        default)."""
        name = self.parameters.get("signature_name", "")
        if not isinstance(name, str):
            raise InvalidArgument("parameter 'signature_name' must be a string")
        return name


@dataclass(slots=True)
class OutputTensor:
    """One output of an answer."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray


@dataclass(slots=True)
class InferAnswer:
    """The answer to an `InferRequest`: the version that served it (as a string, as the
    protocol has it), the request's `id`, and the outputs in the order asked for."""

    model_name: str
    model_version: str
    id: str | None
    outputs: list[OutputTensor]


class TooMany(InvalidArgument):
    """A request names more inputs or outputs (gRPC: or parameters) than are served."""


def too_many(what: str, count: int, limit: int = MAX_TENSORS) -> TooMany:
    """The refusal of a request naming `count` `what`s, more than `limit`."""
    return TooMany(f"the request has {count} {what}; at most {limit} are served")


# --- health and metadata -------------------------------------------------------------------

def server_ready(dataplane: DataPlane) -> bool:
    """Whether every configured model can serve (an on-demand one: can load)."""
    return all(dataplane.readiness().values())


def model_ready(dataplane: DataPlane, model: str, version: int | None = None) -> bool:
    """Whether `model` (or that version of it) serves now; False for an unknown one."""
    if version is None:
        return dataplane.readiness().get(model, False)
    try:
        return any(s.state == "AVAILABLE" for s in dataplane.status(model, version))
    except NotFound:
        return False


def server_metadata(extensions: Sequence[str] = EXTENSIONS) -> dict[str, Any]:
    """The server's metadata: its name, its version and the extensions it serves."""
    try:
        version = importlib.metadata.version(SERVER_NAME)
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        version = "unknown"
    return {"name": SERVER_NAME, "version": version, "extensions": list(extensions)}


def model_metadata(
    dataplane: DataPlane, model: str, version: int | None = None, signature_name: str = ""
) -> dict[str, Any]:
    """A model's metadata: its available versions, Triton's platform name, and the inputs
    and outputs of its signature (-1 for an unknown dimension). NOT_FOUND for an unknown
    model or version; the version must be loaded (this never loads one on demand)."""
    try:
        lease = dataplane.hold_loaded(model, version)
    except NotFound:
        raise not_found(model, version) from None
    with lease:
        signature = dataplane.signature(lease, signature_name)
    versions = sorted(s.version for s in dataplane.status(model) if s.state == "AVAILABLE")
    return {
        "name": model,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": _tensors_metadata(signature.inputs),
        "outputs": _tensors_metadata(signature.outputs),
    }


def not_found(model: str, version: int | None) -> NotFound:
    """A model or version not served, in Triton's words (for the NOT_FOUND a hold raised)."""
    named = f"'{model}'" if version is None else f"'{model}' version {version}"
    return NotFound(f"Request for unknown model: {named} is not found")


def _tensors_metadata(tensors: Mapping[str, TensorInfo]) -> list[dict[str, Any]]:
    return [
        {
            "name": key,
            "datatype": datatypes.from_tf(info.dtype),
            "shape": [-1] if info.shape is None else list(info.shape),
        }
        for key, info in sorted(tensors.items())
    ]


# --- inference -----------------------------------------------------------------------------

def check(request: InferRequest, signature: SignatureInfo, model: str) -> None:
    """Refuse (INVALID_ARGUMENT) a request whose inputs or outputs do not fit the signature:
    unknown, missing or repeated inputs, a datatype or a shape the signature does not
    take, an unknown output. Nothing is decoded or run before this passes."""
    view = view_of(signature)
    inputs = request.inputs
    if len(inputs) > 1:
        names = [tensor.name for tensor in inputs]
        if len(set(names)) != len(names):  # counted once, not once per name (quadratic)
            counts = Counter(names)
            repeated = next(name for name in names if counts[name] > 1)
            raise InvalidArgument(f"input '{repeated}' given more than once for model '{model}'")
    for tensor in inputs:
        found = view.inputs.get(tensor.name)
        if found is None:
            raise InvalidArgument(f"unexpected inference input '{tensor.name}' for model '{model}'")
        if tensor.datatype != found.datatype:
            raise InvalidArgument(
                f"inference input '{tensor.name}' data-type is '{tensor.datatype}', but model "
                f"'{model}' expects '{found.datatype}'"
            )
        if not found.fits(tensor.shape):
            assert found.shape is not None
            raise InvalidArgument(
                f"unexpected shape for input '{tensor.name}' for model '{model}'. Expected "
                f"{shape_text(found.shape)}, got {shape_text(tensor.shape)}"
            )
    if len(inputs) < len(view.inputs):  # every input given is known and given once
        names = [tensor.name for tensor in inputs]
        missing = sorted(set(view.inputs) - set(names))
        raise InvalidArgument(
            f"expected {len(view.inputs)} inputs but got {len(names)} inputs for model "
            f"'{model}'. Got input(s) {sorted(names)}, but missing required input(s) "
            f"{missing}. Please provide all required input(s)."
        )
    for output in request.outputs:
        if output.name not in view.outputs:
            raise InvalidArgument(
                f"unexpected inference output '{output.name}' for model '{model}'"
            )


def decoded_nbytes(request: InferRequest) -> int:
    """What the request's inputs take once decoded, from their shapes (bounded first)."""
    return sum(
        datatypes.decoded_nbytes(
            tensor.datatype, tensor.shape, len(tensor.raw) if tensor.raw is not None else 0
        )
        for tensor in request.inputs
    )


def check_sizes(request: InferRequest) -> None:
    """Refuse inputs whose raw bytes or data cannot be their shapes (before reserving what
    their shapes would decode to: a huge shape with a few bytes is refused, not reserved)."""
    for tensor in request.inputs:
        what = f"input '{tensor.name}'"
        if tensor.raw is not None:
            datatypes.check_raw_size(tensor.datatype, tensor.shape, len(tensor.raw), what)
        elif tensor.data is not None:
            datatypes.check_data_count(tensor.shape, tensor.data, what)


def decode_inputs(request: InferRequest) -> dict[str, np.ndarray]:
    """The request's inputs as arrays, each checked to be exactly its shape's size."""
    return {tensor.name: decode_input(tensor) for tensor in request.inputs}


def decode_input(tensor: InputTensor) -> np.ndarray:
    """One input as an array, from its raw bytes or its data."""
    what = f"input '{tensor.name}'"
    if tensor.raw is not None:
        return datatypes.from_raw(tensor.datatype, tensor.shape, tensor.raw, what)
    if tensor.data is None:
        raise InvalidArgument(f"{what} has no data")
    return datatypes.from_json(tensor.datatype, tensor.shape, tensor.data, what)


def output_keys(request: InferRequest) -> list[str] | None:
    """The signature outputs to compute (None: all)."""
    return [output.name for output in request.outputs] or None


def answer(
    request: InferRequest, version: int, signature: SignatureInfo, outputs: Mapping[str, Any]
) -> InferAnswer:
    """The answer to `request` from the outputs its run gave, in the order asked for."""
    names = [output.name for output in request.outputs] if request.outputs else outputs
    declared = view_of(signature).outputs
    tensors = []
    for name in names:
        array = np.asarray(outputs[name])
        datatype = declared.get(name) or datatypes.of_array(array)
        tensors.append(OutputTensor(name, datatype, array.shape, array))
    return InferAnswer(request.model, str(version), request.id, tensors)


async def infer(
    dataplane: DataPlane,
    request: InferRequest,
    *,
    budget: DecodeBudget | None = None,
    deadline: float | Callable[[], float | None] | None = None,
    observe: Observer | None = None,
) -> InferAnswer:
    """Run `request` on the version it names (held until answered) and answer it.

    Inputs that decode to more than SMALL_DECODE_BYTES reserve that in `budget` (which may
    raise `BudgetBusy` or `BudgetNeverFits`: the caller counts the refusal) and decode on
    a worker thread. `deadline` is a `time.monotonic()` time, or a callable giving it when
    the model is asked (a REST request is timed from there); a run still waiting for its
    batch or a worker thread then is dropped (DEADLINE_EXCEEDED). `observe` is called
    with what ran (for the request log).
    """
    need = decoded_nbytes(request)
    held = 0
    if budget is not None and need > SMALL_DECODE_BYTES:
        check_sizes(request)
        held = await budget.reserve(need, "this request's inputs")
    try:
        try:
            lease = await dataplane.hold_async(request.model, request.version)
        except NotFound:
            raise not_found(request.model, request.version) from None
        with lease:
            name, inputs = await _checked_inputs(dataplane, lease, request, need)
            when = deadline() if callable(deadline) else deadline
            outputs = await dataplane.run_async(
                lease, name, inputs, output_keys(request), deadline=when
            )
            if observe is not None:
                observe(name, lease.version, inputs, outputs)
            return answer(request, lease.version, dataplane.signature(lease, name), outputs)
    finally:
        if held:
            assert budget is not None
            budget.release(held)


def prepare(
    dataplane: DataPlane, lease: Lease, request: InferRequest
) -> tuple[str, SignatureInfo, dict[str, np.ndarray]]:
    """Check `request` against its signature in the held version and decode its inputs on
    this thread: the signature's name, the signature, the inputs. For a transport that
    queues small requests for their batch itself (`DataPlane.submit`), then `answer`s."""
    name = request.signature_name
    signature = dataplane.signature(lease, name)
    check(request, signature, request.model)
    return name, signature, decode_inputs(request)


async def _checked_inputs(
    dataplane: DataPlane, lease: Lease, request: InferRequest, need: int
) -> tuple[str, dict[str, np.ndarray]]:
    if need <= SMALL_DECODE_BYTES:
        name, _, inputs = prepare(dataplane, lease, request)
        return name, inputs
    name = request.signature_name
    check(request, dataplane.signature(lease, name), request.model)
    return name, await run_in_threadpool(decode_inputs, request)
