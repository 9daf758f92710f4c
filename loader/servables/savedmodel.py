"""Loads a TensorFlow SavedModel version into a servable that runs its signatures.

Two ways to run a SavedModel:

- **session** (the default for every model): a TF1 `Session` on the SavedModel's own
  graph, running a signature by feeding and fetching the tensor names its SignatureDef
  lists. TF Serving serves every model this way, TF2's included, and it is the only way
  that serves every TF1-era model. It is also the cheap one: a call takes 60-70 us of
  the calling thread's CPU (interpreter lock held) against 430-490 us through a restored
  TF2 function (an MLP, 1 row; bench/tf_call_cost.py), which decides how many requests
  one process can batch.
- **tf2**: `tf.saved_model.load` and the restored signature functions, for a model TF2
  wrote (TensorFlow's own "write version 2" test) that the session cannot load.

This is the one module (with `loader.app.demo`) that loads TensorFlow models; reading a
SavedModel's proto without loading it is `saved_model_proto`'s.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # after the log level, which it reads at import
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
from tensorflow.python.saved_model import loader_impl

from loader.base import Code, FailedPrecondition, InvalidArgument, ServingError
from loader.servables import signature_io
from loader.servables.runtime import read_through, return_freed_memory
from loader.servables.saved_model_proto import (
    read_saved_model,
    select_meta_graph,
    written_by_tf2,
)

log = logging.getLogger(__name__)

Backend = Literal["auto", "tf2", "session"]
_INIT_OP_SIGNATURE = "__saved_model_init_op"
# Session callables kept per version, one per signature and set of outputs fetched.
# Clients choose the outputs (gRPC's output_filter): past this many, a new set is answered
# from the callable that fetches all of the signature's outputs.
MAX_CALLABLES = 64


# ---- the two ways to run -----------------------------------------------------------


class _Runner(Protocol):
    """Runs one signature on already validated feeds (alias -> array)."""

    def run(
        self,
        name: str,
        sig: meta_graph_pb2.SignatureDef,
        feeds: dict[str, np.ndarray],
        outputs: list[str],
    ) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class _SessionRunner:
    """A TF1 session on the model's own graph, run through `Session` callables."""

    def __init__(self, path: str, tags: Sequence[str]) -> None:
        self._session = tf.compat.v1.Session(
            graph=tf.Graph(),
            # Models exported with device pins (say /gpu:0) still load on a CPU host.
            config=tf.compat.v1.ConfigProto(allow_soft_placement=True),
        )
        try:
            # What tf.compat.v1.saved_model.loader.load runs, without its deprecation
            # warning (it logs "Use tf.saved_model.load instead" at every first load).
            loader_impl.SavedModelLoader(path).load(self._session, list(tags))
        except BaseException:
            self._session.close()
            raise
        self._callables: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._lock = threading.Lock()  # guards creating callables only, never running them

    def run(
        self,
        name: str,
        sig: meta_graph_pb2.SignatureDef,
        feeds: dict[str, np.ndarray],
        outputs: list[str],
    ) -> dict[str, np.ndarray]:
        aliases = sorted(feeds)
        # A set of tensors, in one order: the order the client named them in is no other key.
        fetch_names = sorted({sig.outputs[alias].name for alias in outputs})
        key = (name, tuple(fetch_names))
        run_callable = self._callables.get(key)
        if run_callable is None:
            with self._lock:
                if key not in self._callables and len(self._callables) >= MAX_CALLABLES:
                    fetch_names = sorted({info.name for info in sig.outputs.values()})
                    key = (name, tuple(fetch_names))
                run_callable = self._callables.get(key)
                if run_callable is None:
                    options = config_pb2.CallableOptions(
                        feed=[sig.inputs[alias].name for alias in aliases], fetch=fetch_names
                    )
                    # A callable skips `Session.run`'s Python-side check of feed shapes,
                    # which TF Serving's C++ session does not make either: a 1-D batch fed
                    # to a [-1, 1] input then runs on the shape given.
                    run_callable = self._session._make_callable_from_options(options)
                    self._callables[key] = run_callable
        values = run_callable(*(feeds[alias] for alias in aliases))
        by_name = dict(zip(fetch_names, values, strict=True))
        return {alias: np.asarray(by_name[sig.outputs[alias].name]) for alias in outputs}

    def close(self) -> None:
        # Callables release their handles only while the session is open.
        self._callables.clear()
        self._session.close()


class _Tf2Runner:
    """`tf.saved_model.load` and its restored signature functions."""

    def __init__(self, path: str, tags: Sequence[str], signatures: Mapping[str, Any]) -> None:
        self._loaded = tf.saved_model.load(path, tags=list(tags))
        self._functions = dict(self._loaded.signatures)
        missing = set(signatures) - set(self._functions) - {_INIT_OP_SIGNATURE}
        if missing:
            raise ValueError(f"tf.saved_model.load did not restore signatures {sorted(missing)}")

    def run(
        self,
        name: str,
        sig: meta_graph_pb2.SignatureDef,
        feeds: dict[str, np.ndarray],
        outputs: list[str],
    ) -> dict[str, np.ndarray]:
        function = self._functions[name]
        kwargs, expanded = {}, False
        try:
            for alias, value in feeds.items():
                if _lacks_trailing_one(value.ndim, _dims(sig.inputs[alias])):
                    value, expanded = value[..., np.newaxis], True
                # Tensors, not arrays: the function then binds by dtype and runs on the
                # shape given, as the session does.
                kwargs[alias] = tf.convert_to_tensor(
                    value, dtype=tf.as_dtype(sig.inputs[alias].dtype)
                )
            results = function(**kwargs)
        except (TypeError, ValueError) as exc:  # the values do not fit the function
            raise InvalidArgument(str(exc)) from exc
        arrays = {alias: results[alias].numpy() for alias in outputs}
        if expanded:
            # Give back the rank the caller used, as the session path does.
            for alias, array in arrays.items():
                if (
                    _lacks_trailing_one(array.ndim - 1, _dims(sig.outputs[alias]))
                    and array.shape[-1] == 1
                ):
                    arrays[alias] = array[..., 0]
        return arrays

    def close(self) -> None:
        self._functions.clear()
        del self._loaded


def _dims(info: meta_graph_pb2.TensorInfo) -> tuple[int, ...] | None:
    return None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim)


def _lacks_trailing_one(rank: int, shape: tuple[int, ...] | None) -> bool:
    """True when `rank` is that of `shape` less a trailing dimension of 1 (1-D for [-1, 1])."""
    return shape is not None and len(shape) >= 2 and shape[-1] == 1 and rank == len(shape) - 1


# ---- the servable ------------------------------------------------------------------


class SavedModelServable(signature_io.DescribedBySignatures):
    """A loaded SavedModel version; implements `loader.base.Servable`.

    `run` is safe to call from many threads at once. `unload` must not race with `run`
    (the manager's ref-counted handles ensure it); a `run` after `unload` raises.
    """

    def __init__(self, path: str, tags: Sequence[str], backend: Backend = "auto") -> None:
        self.path = path
        saved_model = read_saved_model(Path(path))
        meta_graph = select_meta_graph(saved_model, tags, path)
        self._signatures = signature_io.Signatures(meta_graph.signature_def)
        self._defaults = {
            name: {alias: tf.make_ndarray(proto) for alias, proto in sig.defaults.items()}
            for name, sig in self._signatures.defs.items()
        }
        used, runner = _open_runner(
            path, tags, backend, written_by_tf2(saved_model), self._signatures.defs
        )
        self.backend: str = used  # "tf2" or "session": the path this version runs on
        self._runner: _Runner | None = runner

    def run(
        self,
        signature_name: str,
        inputs: Mapping[str, Any],
        output_keys: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Runs a signature on `inputs` (alias -> array); returns the requested outputs."""
        runner = self._runner
        if runner is None:
            raise FailedPrecondition(f"the model at {self.path} has been unloaded")
        sig = self._signatures.get(signature_name)
        if signature_name == _INIT_OP_SIGNATURE:
            # Listed in the metadata as TF Serving lists it, but it is the load-time init op.
            raise InvalidArgument(f'Serving signature name: "{signature_name}" cannot be run')
        # Checks and messages follow TF Serving's PreProcessPrediction.
        feeds = signature_io.feeds(sig, self._defaults[signature_name], inputs)
        outputs = signature_io.output_aliases(sig, output_keys)
        try:
            return runner.run(signature_name, sig, feeds, outputs)
        except tf.errors.OpError as exc:
            raise ServingError(exc.message, Code(exc.error_code)) from exc
        except UnicodeDecodeError as exc:
            # TensorFlow could not decode its own error text, which quoted input bytes
            # that are not UTF-8 (a malformed serialized Example, say): the input's fault.
            raise InvalidArgument(bytes(exc.object).decode("utf-8", "replace")) from None

    def unload(self) -> None:
        """Releases the model's graph, session and variables. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.close()
            del runner  # our last reference, so the collection below can free the graph
            # TF1 graphs are reference cycles: only a full collection returns their memory.
            gc.collect()
            return_freed_memory()


def _open_runner(
    path: str,
    tags: Sequence[str],
    backend: Backend,
    written_by_tf2: bool,
    signatures: Mapping[str, Any],
) -> tuple[str, _Runner]:
    try:
        if backend == "tf2":
            return "tf2", _Tf2Runner(path, tags, signatures)
        try:
            return "session", _SessionRunner(path, tags)
        except Exception as exc:  # a TF2 model may still load the TF2 way
            if backend == "session" or not written_by_tf2:
                raise
            log.warning("session load of %s failed (%r); loading it with TF2", path, exc)
        return "tf2", _Tf2Runner(path, tags, signatures)
    except tf.errors.OpError as exc:
        raise ServingError(
            f"cannot load the SavedModel at {path}: {exc.message}", Code(exc.error_code)
        ) from exc
    except Exception as exc:
        # TensorFlow's loaders raise plain Python errors for models they cannot make sense of.
        raise ServingError(f"cannot load the SavedModel at {path}: {exc!r}") from exc


def load_saved_model(
    path: str | Path, tags: Sequence[str] = ("serve",), *, backend: Backend = "auto"
) -> SavedModelServable:
    """Loads the SavedModel in folder `path` (its MetaGraphDef tagged `tags`).

    `backend="auto"` runs every model in a session, as TF Serving does, and falls back to
    the TF2 path for a model TF2 wrote that the session cannot load; "tf2" or "session"
    forces one. Raises a `ServingError` naming the folder when the model cannot be loaded.
    """
    read_through(path)
    return SavedModelServable(str(path), tuple(tags), backend)
