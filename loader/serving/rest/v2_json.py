"""The Open Inference Protocol's REST bodies: an infer request's JSON head and binary
tail into an `InferRequest`, and an `InferAnswer` into a JSON head and binary tail, as
Triton reads and writes them (its binary tensor data extension included).

A request with an `Inference-Header-Content-Length` header is that many bytes of JSON,
then the raw inputs whose `parameters.binary_data_size` say so, in the order of `inputs`;
every byte of the tail must belong to one input. Raw inputs stay views of the body (no
copy); what they must hold is checked by `loader.serving.v2.datatypes`. An answer is
binary when any output that is sent as binary holds bytes (Triton's rule): then its head's
length goes back in the same header, and the body is `application/octet-stream`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from loader.base import InvalidArgument
from loader.serving.rest.json_values import parse_body
from loader.serving.v2 import datatypes
from loader.serving.v2.inference import (
    MAX_TENSORS,
    InferAnswer,
    InferRequest,
    InputTensor,
    RequestedOutput,
    too_many,
)

HEADER_LENGTH = b"inference-header-content-length"


def header_length(value: bytes | None, body_size: int) -> int | None:
    """The JSON head's length from the `Inference-Header-Content-Length` header (None: no
    header, the body is all JSON), in [0, the body's size], Triton's words otherwise."""
    if value is None:
        return None
    text = value.decode("latin-1")
    stripped = text.strip()
    digits = stripped[1:] if stripped[:1] in "+-" else stripped
    if not digits.isdigit() or not digits.isascii():
        raise InvalidArgument(f"Unable to parse Inference-Header-Content-Length, got: {text}")
    length = int(stripped)
    if not 0 <= length <= body_size:
        raise InvalidArgument(
            f"inference header size should be in range (0, {body_size}), got: {text}"
        )
    return length


def split(body: bytes, length: int | None) -> tuple[bytes, memoryview]:
    """The JSON head (a copy: it is parsed, then dropped) and the binary tail (a view)."""
    if length is None or length == len(body):
        return body, memoryview(b"")
    return body[:length], memoryview(body)[length:]


def parse_request(
    model: str, version: int | None, head: bytes, tail: memoryview
) -> InferRequest:
    """An infer request from its parsed parts (see the module's docstring)."""
    document = parse_body(head)
    inputs_json = document.get("inputs")
    if type(inputs_json) is not list:
        raise InvalidArgument("Unable to parse 'inputs'")
    if len(inputs_json) > MAX_TENSORS:  # each costs work before the signature could refuse it
        raise too_many("inputs", len(inputs_json))
    inputs, offset = [], 0
    for item in inputs_json:
        tensor, offset = _input(item, tail, offset, model)
        inputs.append(tensor)
    if offset != len(tail):
        raise InvalidArgument(f"unexpected additional input data for model '{model}'")
    outputs_json = document.get("outputs", _NO_OUTPUTS)
    if type(outputs_json) is not list:
        raise InvalidArgument("Unable to parse 'outputs'")
    if len(outputs_json) > MAX_TENSORS:
        raise too_many("requested outputs", len(outputs_json))
    parameters = _parameters(document)
    if parameters and type(parameters.get("binary_data_output", False)) is not bool:
        raise InvalidArgument("Unable to parse 'binary_data_output'")
    request_id = document.get("id")
    if request_id is not None and type(request_id) is not str:
        raise InvalidArgument("Unable to parse 'id'")
    return InferRequest(
        model, version, inputs, [_output(item) for item in outputs_json] if outputs_json else (),
        request_id, parameters,
    )


# What a request without parameters or outputs has (most have neither): one shared empty
# dict and list, never changed, rather than new ones per request and per input.
_NO_PARAMETERS: dict[str, Any] = {}
_NO_OUTPUTS: list[Any] = []


def _parameters(item: Mapping[str, Any]) -> dict[str, Any]:
    parameters = item.get("parameters", _NO_PARAMETERS)
    if type(parameters) is not dict:
        raise InvalidArgument("Unable to parse 'parameters'")
    return parameters


def _input(
    item: Any, tail: memoryview, offset: int, model: str
) -> tuple[InputTensor, int]:
    if type(item) is not dict:
        raise InvalidArgument("Unable to parse 'inputs'")
    name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
    if type(name) is not str:
        raise InvalidArgument("Unable to parse 'name'")
    if type(datatype) is not str:
        raise InvalidArgument("Unable to parse 'datatype'")
    if type(shape) is not list:
        raise InvalidArgument("Unable to parse 'shape'")
    # Each dimension a non-negative integer, and the count bounded, before anything else.
    datatypes.element_count(shape, f"input '{name}'")
    parameters = _parameters(item)
    size = parameters.get("binary_data_size") if parameters else None
    if "data" in item:
        if size is None:
            return InputTensor(name, datatype, tuple(shape), item["data"], None,
                               parameters), offset
        raise InvalidArgument(
            "Input must set only one of the following fields: 'data', 'binary_data_size' in "
            "'parameters', 'shared_memory_region' in 'parameters'. But set 'data' "
            "'binary_data_size'"
        )
    if size is None:
        raise InvalidArgument(
            "Input must set only one of the following fields: 'data', 'binary_data_size' in "
            "'parameters', 'shared_memory_region' in 'parameters'. But no field is set"
        )
    if type(size) is not int or size < 0:
        raise InvalidArgument("Unable to parse 'binary_data_size'")
    if offset + size > len(tail):
        raise InvalidArgument(
            f"unexpected size for input '{name}', expecting {offset + size - len(tail)} "
            f"additional bytes for model '{model}'"
        )
    raw = tail[offset:offset + size]
    return InputTensor(name, datatype, tuple(shape), raw=raw, parameters=parameters), offset + size


def _output(item: Any) -> RequestedOutput:
    if type(item) is not dict or type(item.get("name")) is not str:
        raise InvalidArgument("Unable to parse 'name'")
    parameters = _parameters(item)
    binary = parameters.get("binary_data")
    if binary is not None and type(binary) is not bool:
        raise InvalidArgument("Unable to parse 'binary_data'")
    return RequestedOutput(item["name"], binary, parameters)


def encode_answer(answer: InferAnswer, request: InferRequest) -> tuple[bytes, int | None]:
    """The answer's body, and the length of its JSON head when binary data follows it."""
    default = bool(request.parameters.get("binary_data_output", False))
    asked = {output.name: output.binary_data for output in request.outputs}
    outputs, tails = [], []
    for tensor in answer.outputs:
        wanted = asked.get(tensor.name) if asked else None
        if default if wanted is None else wanted:
            raw = datatypes.to_raw(tensor.array, tensor.datatype)
            if raw:
                tails.append(raw)
            outputs.append({
                "name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape,
                "parameters": {"binary_data_size": len(raw)},
            })
        else:
            outputs.append({
                "name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape,
                "data": _json_data(tensor.array, tensor.datatype, tensor.name),
            })
    document: dict[str, Any] = {
        "model_name": answer.model_name, "model_version": answer.model_version,
    }
    if answer.id is not None:
        document["id"] = answer.id
    document["outputs"] = outputs
    head = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not tails:
        return head, None
    return b"".join((head, *tails)), len(head)


def _json_data(array: np.ndarray, datatype: str, name: str) -> Any:
    """An output's JSON data: numbers as one flat array (orjson writes numpy's own; `ravel`
    copies only an array that is not contiguous, which orjson could not write)."""
    if datatype == "BYTES":
        return datatypes.to_json(array, datatype, f"output '{name}'")
    return array.ravel()
