"""Serves a TensorFlow Lite model: the `model.tflite` of a version folder, as TF Serving
serves it with `--prefer_tflite_model` (`servables/tensorflow/tflite_session.cc`).

**Runtime.** LiteRT (`ai_edge_litert`), Google's maintained TFLite runtime. TensorFlow
2.21 still ships `tf.lite.Interpreter`, but every construction warns that it is
deprecated and "scheduled for deletion", and points to this package: the same
interpreter, signature runners and builtin kernels, which live beside TensorFlow in one
process. As in TF Serving, builtin ops only (no Select TF ops, no custom ops).

**Signatures**, in TF Serving's order (`TfLiteSession::Create`), with one addition:
1. SignatureDefs TF Serving's tools stored in the model's metadata
   (`signature_defs_metadata`, as in its `_with_sigdef` test model): names, aliases and
   method names as written; a tensor name that lost its `:0` in conversion is matched
   without it, as TF Serving matches it.
2. The model's own signatures (what `TFLiteConverter` writes for a SavedModel or a
   `tf.function`), each run through its signature runner, method `predict`. TF Serving
   does not read these yet and would make (3) instead; serving the names the model was
   exported with is what its clients expect.
3. Neither: one `serving_default` made from the main subgraph's inputs and outputs,
   each keyed by its tensor name without `:0` (TF Serving's generated signature).

Shapes are the model's shape signatures (-1 for a dimension that varies), where TF
Serving prints the dims an interpreter happens to be allocated with.

**Running.** An interpreter is not thread-safe, so a version keeps a pool of them (TF
Serving's `--num_tflite_pools`; one per CPU by default), made as calls need them; a call
holds one interpreter for its run. Inputs of another shape resize the interpreter's
inputs (not strictly, as TF Serving: a 1-D batch fed to a [1, 1] input runs on the
shape given), so batches of any size run. An interpreter whose run failed is dropped,
never handed to the next call in an unknown state.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter
from flatbuffers import flexbuffers
from google.protobuf import message
from tensorflow.core.protobuf import meta_graph_pb2

from loader.base import (
    Code,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServingError,
)
from loader.servables import signature_io
from loader.servables.runtime import read_through

MODEL_FILE = "model.tflite"
SIGNATURE_DEFS_METADATA = "signature_defs_metadata"  # tflite::kSignatureDefsMetadataName
_PREDICT = "tensorflow/serving/predict"
_DEFAULT = "serving_default"


@dataclass(frozen=True)
class _Plan:
    """How one signature runs: by its signature runner, or by tensor index on the main
    subgraph (alias -> index) for the signatures TF Serving reads or makes."""

    runner: str | None
    inputs: Mapping[str, int]
    outputs: Mapping[str, int]


class _InterpreterPool:
    """Up to `size` interpreters, made on demand; each is used by one call at a time."""

    def __init__(self, make: Callable[[], Interpreter], size: int, first: Interpreter) -> None:
        self._make = make
        self._size = size
        self._idle = [first]
        self._alive = 1  # idle, in use, or being made
        self._closed = False
        self._changed = threading.Condition()

    @contextmanager
    def interpreter(self) -> Iterator[Interpreter]:
        """An interpreter for one run; it returns to the pool only if the run succeeded."""
        with self._changed:
            while not self._idle and self._alive >= self._size and not self._closed:
                self._changed.wait()
            if self._closed:
                raise FailedPrecondition("the TFLite model has been unloaded")
            found = self._idle.pop() if self._idle else None
            if found is None:
                self._alive += 1
        succeeded = False
        try:
            interpreter = found if found is not None else self._make()
            yield interpreter
            succeeded = True
        finally:
            with self._changed:
                if succeeded and not self._closed:
                    self._idle.append(interpreter)
                else:
                    self._alive -= 1
                self._changed.notify()

    def close(self) -> None:
        """Drops the idle interpreters; those in use are dropped when their run ends."""
        with self._changed:
            self._closed = True
            self._idle.clear()
            self._changed.notify_all()


class TfLiteServable(signature_io.DescribedBySignatures):
    """A loaded `model.tflite`; implements `loader.base.Servable`.

    `run` is safe to call from many threads at once. `unload` must not race with `run`
    (the manager's ref-counted handles ensure it); a `run` after `unload` raises.
    """

    def __init__(self, path: str, model: bytes, *, num_interpreters: int, num_threads: int | None) -> None:
        self.path = path
        self._model = model  # the interpreters read their weights from these bytes

        def make() -> Interpreter:
            interpreter = Interpreter(model_content=self._model, num_threads=num_threads)
            interpreter.allocate_tensors()
            return interpreter

        first = make()
        signature_defs, self._plans = _signatures(first, model, path)
        self._signatures = signature_io.Signatures(signature_defs)
        self._pool: _InterpreterPool | None = _InterpreterPool(make, num_interpreters, first)

    def run(
        self,
        signature_name: str,
        inputs: Mapping[str, Any],
        output_keys: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Runs a signature on `inputs` (alias -> array); returns the requested outputs."""
        pool = self._pool
        if pool is None:
            raise FailedPrecondition(f"the model at {self.path} has been unloaded")
        sig = self._signatures.get(signature_name)
        feeds = signature_io.feeds(sig, {}, inputs)
        outputs = signature_io.output_aliases(sig, output_keys)
        plan = self._plans[signature_name]
        try:
            with pool.interpreter() as interpreter:
                return _invoke(interpreter, plan, feeds, outputs)
        except (ValueError, RuntimeError) as exc:
            # Resizing, allocating or invoking refused the inputs' shapes or values.
            raise InvalidArgument(
                f"the TFLite model cannot run signature {signature_name} on these inputs: "
                f"{str(exc).strip()}"
            ) from exc

    def unload(self) -> None:
        """Releases the interpreters. Idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


def _invoke(
    interpreter: Interpreter, plan: _Plan, feeds: dict[str, np.ndarray], outputs: list[str]
) -> dict[str, np.ndarray]:
    if plan.runner is not None:
        results = interpreter.get_signature_runner(plan.runner)(**feeds)
        return {alias: results[alias] for alias in outputs}
    for alias, value in feeds.items():
        # TFLite makes this a no-op when the shape is the one the input has already.
        interpreter.resize_tensor_input(plan.inputs[alias], list(value.shape), strict=False)
    interpreter.allocate_tensors()  # cheap unless a resize changed something
    for alias, value in feeds.items():
        interpreter.set_tensor(plan.inputs[alias], value)
    interpreter.invoke()
    return {alias: interpreter.get_tensor(plan.outputs[alias]) for alias in outputs}


# ---- signatures ----------------------------------------------------------------------


def _signatures(
    interpreter: Interpreter, model: bytes, path: str
) -> tuple[dict[str, meta_graph_pb2.SignatureDef], dict[str, _Plan]]:
    stored = _stored_signature_defs(model, path)
    if stored:
        return _from_stored(interpreter, stored, path)
    runners = interpreter.get_signature_list()
    if runners:
        return _from_runners(interpreter, runners)
    return _generated(interpreter)


def _stored_signature_defs(model: bytes, path: str) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs in the model's `signature_defs_metadata`, if it has any: a
    FlexBuffer map of signature name -> serialized SignatureDef (tflite's signature_def_util)."""
    root = schema.Model.GetRootAs(model, 0)
    for i in range(root.MetadataLength()):
        entry = root.Metadata(i)
        if entry is None or entry.Name() != SIGNATURE_DEFS_METADATA.encode():
            continue
        data = bytes(root.Buffers(entry.Buffer()).DataAsNumpy())
        try:
            stored = flexbuffers.GetRoot(data).AsMap
            return {
                key.AsKey: meta_graph_pb2.SignatureDef.FromString(value.AsStringBytes)
                for key, value in zip(stored.Keys, stored.Values, strict=True)
            }
        except (ValueError, TypeError, IndexError, message.DecodeError) as exc:
            raise DataLoss(f"Invalid SignatureDefs found in TfLite model at {path}: {exc}") from exc
    return {}


def _from_stored(
    interpreter: Interpreter, stored: dict[str, meta_graph_pb2.SignatureDef], path: str
) -> tuple[dict[str, meta_graph_pb2.SignatureDef], dict[str, _Plan]]:
    inputs = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    outputs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    plans = {}
    for name, sig in stored.items():
        feeds: dict[str, int] = {}
        fetches: dict[str, int] = {}
        for kind, infos, tensors, found in (
            ("input", sig.inputs, inputs, feeds), ("output", sig.outputs, outputs, fetches)
        ):
            for alias, info in infos.items():
                tensor = info.name if info.name in tensors else info.name.split(":", 1)[0]
                if tensor not in tensors:
                    raise InvalidArgument(
                        f"Signature {kind} {alias} references an unknown tensor "
                        f"'{info.name}' in the TFLite model at {path}"
                    )
                info.name = tensor
                found[alias] = tensors[tensor]
        plans[name] = _Plan(None, feeds, fetches)
    return stored, plans


def _from_runners(
    interpreter: Interpreter, runners: Mapping[str, Any]
) -> tuple[dict[str, meta_graph_pb2.SignatureDef], dict[str, _Plan]]:
    sigs, plans = {}, {}
    for name in runners:
        runner = interpreter.get_signature_runner(name)
        sig = sigs[name] = meta_graph_pb2.SignatureDef(method_name=_PREDICT)
        for alias, detail in runner.get_input_details().items():
            sig.inputs[alias].CopyFrom(_tensor_info(detail))
        for alias, detail in runner.get_output_details().items():
            sig.outputs[alias].CopyFrom(_tensor_info(detail))
        plans[name] = _Plan(name, {}, {})
    return sigs, plans


def _generated(
    interpreter: Interpreter,
) -> tuple[dict[str, meta_graph_pb2.SignatureDef], dict[str, _Plan]]:
    sig = meta_graph_pb2.SignatureDef(method_name=_PREDICT)
    feeds: dict[str, int] = {}
    fetches: dict[str, int] = {}
    for details, infos, found in (
        (interpreter.get_input_details(), sig.inputs, feeds),
        (interpreter.get_output_details(), sig.outputs, fetches),
    ):
        for detail in details:
            alias = detail["name"].split(":", 1)[0]
            infos[alias].CopyFrom(_tensor_info(detail))
            found[alias] = detail["index"]
    return {_DEFAULT: sig}, {_DEFAULT: _Plan(None, feeds, fetches)}


def _tensor_info(detail: Mapping[str, Any]) -> meta_graph_pb2.TensorInfo:
    info = meta_graph_pb2.TensorInfo(
        name=detail["name"], dtype=tf.as_dtype(detail["dtype"]).as_datatype_enum
    )
    for size in detail.get("shape_signature", detail["shape"]):
        info.tensor_shape.dim.add(size=int(size))
    return info


# ---- loading -------------------------------------------------------------------------


def load_tflite_model(
    path: str | Path, *, num_interpreters: int | None = None, num_threads: int | None = None
) -> TfLiteServable:
    """Loads `path/model.tflite` with up to `num_interpreters` interpreters (default: one
    per CPU), each running a call on up to `num_threads` threads (default: LiteRT's).

    Raises a `ServingError` naming the folder when the model cannot be loaded.
    """
    read_through(path)
    file = Path(path) / MODEL_FILE
    try:
        model = file.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"no {MODEL_FILE} in {path}") from None
    try:
        return TfLiteServable(
            str(path), model, num_interpreters=max(1, num_interpreters or os.cpu_count() or 1),
            num_threads=num_threads,
        )
    except ServingError as exc:
        raise type(exc)(f"cannot load the TFLite model at {path}: {exc.message}", exc.code) from exc
    except Exception as exc:
        # The interpreter raises ValueError for bytes that are not a TFLite model, and
        # RuntimeError for ops it does not have; the flatbuffer reader, what it raises.
        raise ServingError(
            f"cannot load the TFLite model at {path}: {str(exc).strip() or repr(exc)}",
            Code.INVALID_ARGUMENT,
        ) from exc
