"""The Open Inference Protocol's gRPC service (`inference.GRPCInferenceService`, KServe v2)
over the data plane, beside TF Serving's services on the same server.

A thin adapter: requests become `loader.serving.v2.inference` requests, answers become
protos, errors become statuses with the core's words (NOT_FOUND for an unknown model or
version, INVALID_ARGUMENT for a request that does not fit). Inputs come as
`raw_input_contents` (one per input, in order) or as each input's typed `contents`, not both
(as Triton refuses); outputs always go in `raw_output_contents`, as Triton's do
(tritonclient's `as_numpy` reads only those). The limits are TF Serving Predict's over gRPC
(`PredictInputs`): the decoded size, the decode budget, the send limit, the deadline.
The code under `open_inference_grpc_pb2*` is generated at build time (setup.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import numpy as np

from loader.base import InvalidArgument, NotFound
from loader.serving.dataplane import DataPlane
from loader.serving.grpc import open_inference_grpc_pb2 as pb
from loader.serving.grpc import open_inference_grpc_pb2_grpc as pb_grpc
from loader.serving.grpc.answers import Answerer
from loader.serving.grpc.predict_inputs import PredictInputs
from loader.serving.metrics import Metrics
from loader.serving.v2 import datatypes, inference
from loader.serving.v2.datatypes import shape_text
from loader.serving.v2.inference import (
    MAX_TENSORS,
    InferAnswer,
    InferRequest,
    InputTensor,
    RequestedOutput,
    TooMany,
    too_many,
)

# What one request may name beyond MAX_TENSORS inputs and requested outputs: a client
# controls these counts too (a 64 MiB message holds millions of empty parameters).
MAX_PARAMETERS = 256  # the request's, and each input's and output's
# Answers of up to this many bytes of outputs are built on the event loop; larger ones on a
# worker thread, measured against the send limit.
INLINE_OUTPUT_BYTES = 64 * 1024
# Each datatype's typed field of InferTensorContents (FP16 has none: raw only).
_CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
_FIELD_DTYPES = {  # each numeric field's own type
    "bool_contents": np.dtype(np.bool_), "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64), "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64), "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}


def parameters(given: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """A request's parameters as plain values (an unset one is None)."""
    if not given:  # the usual case, and reading an empty map still costs
        return {}
    return {
        key: getattr(value, choice) if (choice := value.WhichOneof("parameter_choice")) else None
        for key, value in given.items()
    }


def version_number(model: str, version: str) -> int | None:
    """A request's version: "" is the latest; a version that is no number names none."""
    if not version:
        return None
    if not version.isdigit():
        raise NotFound(f"Request for unknown model: '{model}' version {version} is not found")
    return int(version)


def infer_request(
    request: pb.ModelInferRequest, limit: Callable[[int], None]
) -> InferRequest:
    """The core's request from the proto: each input with its raw bytes, typed contents
    made raw (BYTES: a list). `limit(bytes)` sees what the inputs decode to, from their
    shapes, before any typed contents are converted (packed zeros are a byte each on the
    wire and eight in an INT64 array)."""
    model = request.model_name
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"expected {len(request.inputs)} raw_input_contents, one for each input, for model "
            f"'{model}', got {len(raw)}"
        )
    total = 0
    shapes = []
    for index, tensor in enumerate(request.inputs):
        if raw and tensor.HasField("contents"):
            raise InvalidArgument(
                f"contents field must not be specified when using raw_input_contents for "
                f"'{tensor.name}' for model '{model}'"
            )
        shape = tuple(tensor.shape)
        datatypes.element_count(shape, f"input '{tensor.name}'")  # named if it is no shape
        wire = len(raw[index]) if raw else _typed_count(model, tensor, shape)
        if tensor.datatype in datatypes.DATATYPES:  # otherwise the core's check names it
            total += datatypes.decoded_nbytes(tensor.datatype, shape, wire)
        shapes.append(shape)
    limit(total)
    inputs = [
        InputTensor(tensor.name, tensor.datatype, shape, parameters=parameters(tensor.parameters),
                    **({"raw": raw[index]} if raw else _typed(tensor)))
        for index, (tensor, shape) in enumerate(zip(request.inputs, shapes))
    ]
    return InferRequest(
        model,
        version_number(model, request.model_version),
        inputs,
        [RequestedOutput(o.name, parameters=parameters(o.parameters)) for o in request.outputs],
        id=request.id or None,
        parameters=parameters(request.parameters),
    )


def _typed_count(
    model: str, tensor: pb.ModelInferRequest.InferInputTensor, shape: tuple[int, ...]
) -> int:
    """How many typed values an input has (BYTES: their bytes), checked against its shape
    without converting any."""
    if tensor.datatype == "FP16":
        raise InvalidArgument(
            f"input '{tensor.name}' is FP16, which has no typed contents: send it in "
            f"raw_input_contents (model '{model}')"
        )
    field = _CONTENTS.get(tensor.datatype)
    if field is None:
        return 0
    values = getattr(tensor.contents, field)
    what = f"input '{tensor.name}'"
    count = datatypes.element_count(shape, what)
    if len(values) != count:
        raise InvalidArgument(
            f"unexpected number of elements for {what}: shape {shape_text(shape)} needs "
            f"{count}, got {len(values)}"
        )
    return sum(map(len, values)) if tensor.datatype == "BYTES" else 0


def _typed(tensor: pb.ModelInferRequest.InferInputTensor) -> dict[str, Any]:
    """An input's typed contents as the core takes them: raw bytes, or BYTES as a list."""
    field = _CONTENTS.get(tensor.datatype)
    if field is None:
        return {}
    values = getattr(tensor.contents, field)
    if tensor.datatype == "BYTES":
        return {"data": list(values)}
    # Read in the field's own type (no list of Python numbers), then narrowed, checked.
    wide = np.fromiter(values, _FIELD_DTYPES[field], len(values))
    dtype = datatypes.DATATYPES[tensor.datatype]
    if dtype.kind in "iu" and wide.size and (
        wide.min() < np.iinfo(dtype).min or wide.max() > np.iinfo(dtype).max
    ):
        raise InvalidArgument(
            f"unable to parse the contents of input '{tensor.name}': a value is out of range "
            f"for {tensor.datatype}"
        )
    return {"raw": wide.astype(dtype).tobytes()}


def infer_response(answer: InferAnswer) -> pb.ModelInferResponse:
    """The proto of an answer, every output's bytes in `raw_output_contents`."""
    response = pb.ModelInferResponse(
        model_name=answer.model_name, model_version=answer.model_version, id=answer.id or ""
    )
    for output in answer.outputs:
        response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        response.raw_output_contents.append(datatypes.to_raw(output.array, output.datatype))
    return response


def _check_counts(request: pb.ModelInferRequest) -> None:
    counts = [("inputs", len(request.inputs), MAX_TENSORS),
              ("requested outputs", len(request.outputs), MAX_TENSORS),
              ("parameters", len(request.parameters), MAX_PARAMETERS)]
    for what, count, limit in counts:
        if count > limit:
            raise too_many(what, count, limit)
    # Each input's and output's own parameters, named only when one has too many (a name
    # written per tensor per request costs more than the check).
    for tensors in (request.inputs, request.outputs):
        for tensor in tensors:
            if len(tensor.parameters) > MAX_PARAMETERS:
                raise too_many(f"parameters of '{tensor.name}'", len(tensor.parameters),
                               MAX_PARAMETERS)


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer.

    Counted in the metrics under the APIs `server_live`, `server_ready`, `server_metadata`,
    `model_ready`, `model_metadata` and `infer` (those of the REST side where it has them).
    """

    def __init__(
        self, dataplane: DataPlane, answer: Answerer, inputs: PredictInputs, metrics: Metrics
    ) -> None:
        self._dataplane = dataplane
        self._answer = answer
        self._inputs = inputs
        self._metrics = metrics

    def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.ServicerContext
    ) -> pb.ServerLiveResponse:
        return self._answer(context, "server_live", "", lambda: pb.ServerLiveResponse(live=True))

    def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.ServicerContext
    ) -> pb.ServerReadyResponse:
        return self._answer(context, "server_ready", "", lambda: pb.ServerReadyResponse(
            ready=inference.server_ready(self._dataplane)))

    def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.ServicerContext
    ) -> pb.ModelReadyResponse:
        def ready() -> pb.ModelReadyResponse:
            try:
                version = version_number(request.name, request.version)
            except NotFound:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(
                ready=inference.model_ready(self._dataplane, request.name, version))

        return self._answer(context, "model_ready", request.name, ready)

    def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return self._answer(context, "server_metadata", "", lambda: pb.ServerMetadataResponse(
            **inference.server_metadata()))

    def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ModelMetadataResponse:
        def metadata() -> pb.ModelMetadataResponse:
            version = version_number(request.name, request.version)
            found = inference.model_metadata(self._dataplane, request.name, version)
            return pb.ModelMetadataResponse(**found)

        return self._answer(context, "model_metadata", request.name, metadata)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        """On the event loop, as TF Serving's Predict: a batched request waits for its batch
        without a thread."""
        return await self._answer.answer_async(
            context, "infer", request.model_name,
            lambda: self._infer(request, context.time_remaining()),
        )

    async def _infer(
        self, request: pb.ModelInferRequest, remaining: float | None
    ) -> pb.ModelInferResponse:
        deadline = None if remaining is None else time.monotonic() + remaining
        try:
            _check_counts(request)
        except TooMany:
            self._metrics.refuse("grpc", "too_many_tensors")
            raise
        asked = infer_request(request, self._inputs.check_decoded)
        answer = await self._inputs.budgeted(lambda budget: inference.infer(
            self._dataplane, asked, budget=budget, deadline=deadline))
        if sum(output.array.nbytes for output in answer.outputs) <= INLINE_OUTPUT_BYTES:
            return infer_response(answer)
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: self._inputs.bounded(infer_response(answer)))
