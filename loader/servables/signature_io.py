"""A version's signatures, and a request checked against one of them as TF Serving
checks it before it runs a model (`PreProcessPrediction` and
`saved_model::GetInputValues`).

Shared by every kind of servable, so a SavedModel and a TFLite model describe their
signatures alike and refuse the same bad request with the same words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from loader.base import InvalidArgument, SignatureInfo
from loader.servables.saved_model_proto import signature_def_map_json, signature_infos


class Signatures:
    """A version's SignatureDefs by name, with what status and metadata show of them."""

    def __init__(self, signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]) -> None:
        meta_graph = meta_graph_pb2.MetaGraphDef()
        for name, sig in signature_defs.items():
            meta_graph.signature_def[name].CopyFrom(sig)
        # Copies, so a servable does not keep a whole graph proto alive through them.
        self.defs = dict(meta_graph.signature_def)
        self.infos: Mapping[str, SignatureInfo] = signature_infos(meta_graph)
        self.json: dict[str, Any] = signature_def_map_json(meta_graph)

    def get(self, name: str) -> meta_graph_pb2.SignatureDef:
        """The signature a request names, else TF Serving's error for a name not found."""
        sig = self.defs.get(name)
        if sig is None:
            raise InvalidArgument(f'Serving signature name: "{name}" not found in signature def')
        return sig


class DescribedBySignatures:
    """A servable's `signatures` and `signature_def_json` (the Servable Protocol's), from
    the `Signatures` it sets as `_signatures` when it loads."""

    _signatures: Signatures

    @property
    def signatures(self) -> Mapping[str, SignatureInfo]:
        """Signature name -> its method, inputs and outputs, as the SignatureDefs say."""
        return self._signatures.infos

    def signature_def_json(self) -> dict[str, Any]:
        """The `signature_def` object of TF Serving's REST model metadata."""
        return self._signatures.json


def feeds(
    sig: meta_graph_pb2.SignatureDef, defaults: Mapping[str, np.ndarray], inputs: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """Every input of `sig` as an array of its dtype: the request's, else its default."""
    sent, expected = sorted(inputs), sorted(sig.inputs)
    if len(sent) > len(expected) or (len(sent) < len(expected) and not defaults):
        raise InvalidArgument(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(sent)}}}) != len({{{','.join(expected)}}}). "
            f"Sent extra: {{{','.join(sorted(set(sent) - set(expected)))}}}. "
            f"Missing but required: {{{','.join(sorted(set(expected) - set(sent)))}}}."
        )
    arrays = {}
    for alias in expected:
        info = sig.inputs[alias]
        if not info.name:
            raise InvalidArgument(
                f"signature input {alias} is not a dense tensor, which is not supported"
            )
        if alias in inputs:
            arrays[alias] = as_array(alias, inputs[alias], info.dtype)
        elif alias in defaults:
            arrays[alias] = defaults[alias]
        else:
            raise InvalidArgument(
                f"Signature input alias: {alias}(feed name: {info.name}) not found in request "
                f"and no default value provided. Inputs expected to be in the request "
                f"{{{','.join(sent)}}}, or default input alias set: "
                f"{','.join(sorted(defaults))}"
            )
    unknown = set(sent) - set(expected)
    if unknown:
        raise InvalidArgument(
            f"Inputs contains invalid name. Used request inputs: "
            f"{','.join(sorted(set(sent) & set(expected)))}, request input: {','.join(sent)}"
        )
    return arrays


def output_aliases(
    sig: meta_graph_pb2.SignatureDef, output_keys: Sequence[str] | None
) -> list[str]:
    """The outputs a request asks for (all of them, sorted, when it names none)."""
    if not output_keys:
        return sorted(sig.outputs)
    seen: list[str] = []
    for alias in output_keys:
        if alias not in sig.outputs:
            raise InvalidArgument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be "
                f"in the set {{{','.join(sorted(sig.outputs))}}}."
            )
        if alias in seen:
            raise InvalidArgument(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen


def as_array(alias: str, value: Any, dtype: int) -> np.ndarray:
    """`value` as an array of the signature's dtype; strings as an object array of bytes."""
    if dtype == types_pb2.DT_STRING:
        array = np.asarray(value, dtype=object)
        encode = np.vectorize(
            lambda v: v.encode("utf-8") if isinstance(v, str) else v, otypes=[object]
        )
        return encode(array) if array.size else array
    try:
        return np.asarray(value, dtype=tf.as_dtype(dtype).as_numpy_dtype)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"input {alias} cannot be converted to {types_pb2.DataType.Name(dtype)}: {exc}"
        ) from exc
