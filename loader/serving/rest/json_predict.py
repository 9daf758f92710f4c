"""TF Serving's REST predict request: `{"instances": [...]}` (row format) or
`{"inputs": ...}` (columnar), decoded into the signature's input tensors.

A request body is parsed once (`parse_body`), its signature name read (`signature_name_of`)
so the caller can resolve the signature (both in `json_values`), then its tensors decoded
here (`decode_predict_request`), each value by `json_tensors`. Like TF Serving's
`FillTensorMapFromInstancesList` and `FillTensorMapFromInputsMap`: the same error texts, and a
fast path over all instances at once that falls back to TF Serving's walk only when it sees
anything wrong. Responses are written by `json_responses`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import chain
from typing import Any, NamedTuple

import numpy as np

from loader.base import InvalidArgument, ServingError, SignatureInfo
from loader.serving.rest.json_tensors import (
    MAX_RANK,
    DType,
    build_tensor,
    check_rank,
    decode_value,
    dense_shape,
    dtype_spec,
    exact_leaves,
    fast_floats,
    fast_tensor,
)
from loader.serving.rest.json_values import (
    format_error,
    is_b64_object,
    json_value_to_string,
    parse_body,
    signature_name_of,
)


class PredictRequest(NamedTuple):
    """A decoded predict request: which signature, which format, and its input tensors."""

    signature_name: str
    row_format: bool  # "instances" (answer with "predictions") rather than "inputs"
    inputs: dict[str, np.ndarray]


def decode_predict_request(
    request: Mapping[str, Any] | bytes | str, signature: SignatureInfo
) -> PredictRequest:
    """Decode a predict request (a body from `parse_body`, or raw bytes) for `signature`.

    Row format `{"instances": [...]}` batches the instances along a new first dimension;
    columnar `{"inputs": ...}` gives each tensor as is. Raises InvalidArgument with TF
    Serving's messages.
    """
    # `type is dict` first: an ABC's isinstance costs each request ~0.4 us.
    doc = request if type(request) is dict or isinstance(request, Mapping) else parse_body(request)
    name = signature_name_of(doc)
    if not signature.inputs:
        raise InvalidArgument(
            f"Failed to get input map for signature: {doc.get('signature_name') or 'DEFAULT'}"
        )
    specs = input_specs(signature)
    if "instances" in doc:
        if "inputs" in doc:
            raise format_error(
                doc, "Not formatted correctly expecting only one of 'inputs' or 'instances' "
                "keys to exist "
            )
        instances = doc["instances"]
        if type(instances) is not list:
            raise format_error(doc, "Excepting 'instances' to be an list/array")
        if not instances:
            raise format_error(doc, "No values in 'instances' array")
        inputs = fast_instances(instances, specs)
        if inputs is None:
            inputs = _exact_instances(instances, specs)
        if len(inputs) > 1:  # in the signature's order
            inputs = {alias: inputs[alias] for alias in specs}
        return PredictRequest(name, True, inputs)
    if "inputs" in doc:
        return PredictRequest(name, False, _decode_inputs(doc["inputs"], specs))
    raise InvalidArgument("Missing 'inputs' or 'instances' key")


# The dtypes of the signatures met last, by identity: a loaded version's SignatureInfo is
# made once and never changes, and building the map again costs each request ~0.5 us.
# Each entry holds its signature, so its id cannot be reused while it is here.
_SPECS: dict[int, tuple[SignatureInfo, dict[str, DType]]] = {}
_MAX_SPECS = 256


def input_specs(signature: SignatureInfo) -> dict[str, DType]:
    """How each input of `signature` converts from JSON (cached by signature)."""
    cached = _SPECS.get(id(signature))
    if cached is not None and cached[0] is signature:
        return cached[1]
    specs = {alias: dtype_spec(info.dtype) for alias, info in signature.inputs.items()}
    if len(_SPECS) >= _MAX_SPECS:  # versions come and go: forget the old ones now and then
        _SPECS.clear()
    _SPECS[id(signature)] = (signature, specs)
    return specs


def _decode_inputs(value: Any, specs: Mapping[str, DType]) -> dict[str, np.ndarray]:
    """TF Serving's FillTensorMapFromInputsMap (extra keys in the object are ignored)."""
    if type(value) is not dict or is_b64_object(value):
        if len(specs) > 1:
            raise InvalidArgument(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        ((alias, spec),) = specs.items()
        return {alias: decode_value(value, spec)}
    for alias in sorted(specs):
        if alias not in value:
            raise InvalidArgument(f"Missing named input: {alias} in 'inputs' object.")
    return {alias: decode_value(value[alias], spec) for alias, spec in specs.items()}


def _is_element_object(value: Any) -> bool:
    return type(value) is dict and not is_b64_object(value)


def fast_instances(
    instances: list[Any], specs: Mapping[str, DType]
) -> dict[str, np.ndarray] | None:
    """All instances batched at once, or None to let the exact walk decide."""
    columns: dict[str, list[Any]]
    if _is_element_object(instances[0]):
        if specs.keys() == {"b64"} or set(map(type, instances)) != {dict}:
            return None
        if any(instance.keys() != specs.keys() for instance in instances):
            return None
        columns = {alias: [instance[alias] for instance in instances] for alias in specs}
    elif len(specs) == 1:
        ((alias, spec),) = specs.items()
        if spec.kind == "float":
            array = _fast_float_rows(instances, spec)
            if array is not None:
                return {alias: array}
        columns = {alias: instances}
    else:
        return None
    result = {}
    for alias, column in columns.items():
        shape = dense_shape(column)
        if len(shape) > MAX_RANK:
            return None
        array = fast_tensor(column, shape, specs[alias])
        if array is None:
            return None
        result[alias] = array
    return result


def _fast_float_rows(instances: list[Any], spec: DType) -> np.ndarray | None:
    """The most common request, one float input sent as rows of numbers (or as numbers),
    in fewer steps than `fast_tensor`; None for anything else."""
    first = instances[0]
    if type(first) is not list:
        return fast_floats(instances, set(map(type, instances)), spec)
    width = len(first)
    if not width:
        return None
    if len(instances) == 1:  # one instance, the usual request: nothing to flatten
        leaves = first
    elif set(map(type, instances)) != {list} or set(map(len, instances)) != {width}:
        return None
    else:
        leaves = list(chain.from_iterable(instances))
    array = fast_floats(leaves, set(map(type, leaves)), spec)
    return None if array is None else array.reshape(len(instances), width)


def _exact_instances(
    instances: list[Any], specs: Mapping[str, DType]
) -> dict[str, np.ndarray]:
    """TF Serving's FillTensorMapFromInstancesList, instance by instance, key by key."""
    names = sorted(specs)
    first = instances[0]
    # TF Serving would go on with a b64 object first and several inputs; we stop here.
    if len(names) > 1 and not _is_element_object(first):
        raise InvalidArgument(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    objects = _is_element_object(first)
    leaves: dict[str, list[Any]] = {}
    shapes: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}

    def add_item(item: Any, alias: str) -> None:
        if alias not in specs:
            raise InvalidArgument(f"JSON object: does not have named input: {alias}")
        shape = dense_shape(item)
        check_rank([len(instances), *shape])
        values = exact_leaves(item, shape, specs[alias])
        if alias not in shapes:
            shapes[alias], sizes[alias], leaves[alias] = shape, len(values), values
            return
        if sizes[alias] != len(values):
            raise InvalidArgument(
                f"Expecting tensor size: {sizes[alias]} but got: {len(values)}"
            )
        if shapes[alias] != shape:
            raise InvalidArgument(
                f"Expecting shape {_shape_text(shapes[alias])} but got: {_shape_text(shape)}"
            )
        leaves[alias].extend(values)

    for index, instance in enumerate(instances):
        if objects:
            if not _is_element_object(instance):
                raise InvalidArgument(
                    f"Expecting object but got list at item {index} of input list"
                )
            for alias, item in instance.items():
                _wrapped(add_item, item, alias, f"{index} key: {alias}")
            if instance.keys() != specs.keys():
                raise InvalidArgument(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{json_value_to_string(instance)} keys must be equal to: {','.join(names)}"
                )
        else:
            if _is_element_object(instance):
                raise InvalidArgument(
                    f"Expecting value/list but got object at item {index} of input list"
                )
            _wrapped(add_item, instance, names[0], str(index))
    return {
        alias: build_tensor(leaves[alias], [len(instances), *shapes[alias]], specs[alias])
        for alias in names
    }


def _wrapped(add_item: Callable[[Any, str], None], item: Any, alias: str, where: str) -> None:
    try:
        add_item(item, alias)
    except ServingError as exc:
        raise InvalidArgument(
            f"Failed to process element: {where} of 'instances' list. "
            f"Error: {exc.code.name}: {exc.message}"
        ) from None


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"
