"""Batching: concurrent requests for one signature run as one call of the servable.

`BatchingServable` wraps a servable the way TF Serving's BatchingSession wraps a session.
Requests for the same signature, the same input names and the same requested outputs
share a queue (`loader.servables.batch_queue`); a batch's inputs are concatenated along the first
dimension, run once, and the outputs are split back by each request's row count.

Where TF Serving fails a whole batch, this one isolates requests:
- a request that cannot be batched (a scalar input, inputs of unequal first dimension,
  no rows, input names or output keys the signature does not have) runs alone, unbatched,
  and gets exactly the servable's own answer or error;
- within a batch, requests are merged only with requests of the same dtypes and the same
  non-batch dims (or, with `pad_variable_length_inputs`, the same ranks);
- if a merged run fails, each of its requests is run again alone, so only the culprit
  sees the error, of the type the servable raised;
- if an output has no batch dimension to split, that batch's requests run one by one and
  the signature (with those output keys) is no longer batched.

A request may carry a deadline (`time.monotonic()` seconds): one whose deadline has passed
when its batch is taken is answered DEADLINE_EXCEEDED and left out of the batch, so a
caller that gave up costs no model run. (TF Serving fails a batch only when every task in
it has expired, and runs the others with the latest deadline of the batch.)

Padding follows TF Serving's batching_util: with `allowed_batch_sizes` the batch is
padded up to the next allowed size by repeating the first row of its last request; with
`pad_variable_length_inputs` each request's tensor is padded up to the largest dims in
its batch with that tensor's own first element. Outputs are only ever cut by rows, as in
TF Serving: a request in a padded batch gets its outputs at the batch's padded length.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from loader.base import FailedPrecondition, Internal, Servable, SignatureInfo, TensorInfo
from loader.servables.batch_padding import allowed_size, pad_to_common_shape, shape_key_padded
from loader.servables.batch_queue import BatchScheduler
from loader.servables.batch_request import BatchRequest, Done, Waiter, expired

log = logging.getLogger(__name__)

# Kinds of request remembered as batchable or not, each with a queue of its own. Only
# kinds made of the signature's own names are kept (a client's other names would be kept
# at whatever length it sent them); past this many, a new kind runs alone.
_MAX_FIT_CACHE = 1024

# (signature, requested output keys or None for all, sorted input names)
_QueueKey = tuple[str, tuple[str, ...] | None, tuple[str, ...]]


class BatchingParameters(Protocol):
    """TF Serving's BatchingParameters, as the config (`BatchingConfig`) validates them."""

    @property
    def max_batch_size(self) -> int: ...

    @property
    def batch_timeout_micros(self) -> int: ...

    @property
    def max_enqueued_batches(self) -> int: ...

    @property
    def num_batch_threads(self) -> int: ...

    @property
    def allowed_batch_sizes(self) -> Sequence[int]: ...

    @property
    def pad_variable_length_inputs(self) -> bool: ...


class BatchingServable:
    """A servable that batches concurrent `run` calls on `inner`; implements `Servable`.

    `on_batch(size)` is called after each batched call of `inner` with the number of rows
    it ran (after padding, TF Serving's "processed batch size"). `batches_run` counts
    those calls and `requests_batched` the requests in them (a request run again alone
    after its batch failed counts twice); `queued` is the queue depth. `on_expired(n)` is
    called with the number of requests of a batch dropped for their deadline.
    """

    def __init__(
        self,
        inner: Servable,
        params: BatchingParameters,
        *,
        name: str = "",
        on_batch: Callable[[int], None] | None = None,
        on_expired: Callable[[int], None] | None = None,
    ) -> None:
        self._inner = inner
        self._on_expired = on_expired
        self._allowed = tuple(params.allowed_batch_sizes)
        self._pad_lengths = params.pad_variable_length_inputs
        self._on_batch = on_batch
        self._scheduler: BatchScheduler[_QueueKey, BatchRequest] = BatchScheduler(
            self._process,
            max_batch_size=params.max_batch_size,
            batch_timeout_micros=params.batch_timeout_micros,
            max_enqueued_batches=params.max_enqueued_batches,
            num_batch_threads=params.num_batch_threads,
            name=name,
        )
        # (signature, output keys) whose outputs have no batch dimension to split. Batch
        # threads add to it and callers read it; a set's add and `in` are atomic.
        self._unbatchable: set[tuple[str, tuple[str, ...] | None]] = set()
        # (signature, output keys, sorted input names) -> whether such requests batch.
        self._fit_cache: dict[tuple[str, tuple[str, ...] | None, tuple[str, ...]], bool] = {}
        self._stats_lock = threading.Lock()
        self._unload_lock = threading.Lock()
        self._unloaded = False
        self.batches_run = 0
        self.requests_batched = 0

    @property
    def signatures(self) -> Mapping[str, SignatureInfo]:
        """The inner servable's signatures."""
        return self._inner.signatures

    @property
    def queued(self) -> int:
        """Requests waiting for a batch thread (a queue-depth gauge)."""
        return self._scheduler.queued

    def signature_def_json(self) -> dict[str, Any]:
        """The inner servable's `signature_def` metadata."""
        return self._inner.signature_def_json()

    def run(
        self,
        signature_name: str,
        inputs: Mapping[str, Any],
        output_keys: Sequence[str] | None = None,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """Runs `signature_name` on `inputs` as part of a batch; blocks until answered.

        Raises what `submit` raises, otherwise what `inner` raised for this request.
        """
        waiter = Waiter()
        if not self.submit(signature_name, inputs, output_keys, waiter, deadline):
            return self._inner.run(signature_name, inputs, output_keys)
        return waiter.wait()

    def submit(
        self,
        signature_name: str,
        inputs: Mapping[str, Any],
        output_keys: Sequence[str] | None,
        done: Done,
        deadline: float | None = None,
    ) -> bool:
        """Queues a run without waiting for it; False when it cannot be batched.

        `done(result, error)` is then called exactly once, on a batch thread. A request
        that cannot be batched is not queued (and `done` never called): the caller runs
        it with `run`, which gives the servable's own answer. Raises InvalidArgument when
        the request has more rows than max_batch_size and QueueFull (a ResourceExhausted)
        when its queue has no room, with TF Serving's messages. A request still queued at
        its `deadline` (monotonic seconds) is not run: `done` gets DeadlineExceeded.
        """
        if self._scheduler.stopped:
            raise FailedPrecondition(
                f"batching for {self._scheduler.name or 'this model'} has stopped"
            )
        # Sorted: the order a client names its outputs in makes no other batch, nor queue.
        keys = tuple(sorted(output_keys)) if output_keys else None
        names = tuple(inputs) if len(inputs) == 1 else tuple(sorted(inputs))
        request = self._request(signature_name, inputs, names, keys, done, deadline)
        if request is None:
            return False
        self._scheduler.schedule((signature_name, keys, names), request, request.rows)
        return True

    def unload(self) -> None:
        """Refuses new requests, runs what is queued, stops the threads, unloads `inner`.

        Idempotent; the manager calls it only after in-flight requests ended.
        """
        with self._unload_lock:
            if self._unloaded:
                return
            self._scheduler.stop()
            self._scheduler.join()
            self._inner.unload()
            self._unloaded = True

    # ---- admission: what can be batched ---------------------------------------------

    def _request(
        self,
        signature_name: str,
        inputs: Mapping[str, Any],
        names: tuple[str, ...],
        keys: tuple[str, ...] | None,
        done: Done,
        deadline: float | None,
    ) -> BatchRequest | None:
        """The request as a batchable task, or None when it must run alone. `names` are
        the input names, sorted."""
        if not names or (signature_name, keys) in self._unbatchable:
            return None
        arrays: dict[str, np.ndarray] = {}
        rows = -1
        for name in names:
            value = inputs[name]
            if type(value) is not np.ndarray:
                try:
                    value = np.asarray(value)
                except (ValueError, TypeError, OverflowError):  # ragged: the servable says why
                    return None
            if value.ndim == 0 or (rows >= 0 and value.shape[0] != rows):
                return None
            rows = value.shape[0]
            arrays[name] = value
        if rows == 0:
            return None
        fit_key = (signature_name, keys, names)
        fits = self._fit_cache.get(fit_key)
        if fits is None:  # a servable's signatures never change: decide once per kind
            if len(self._fit_cache) >= _MAX_FIT_CACHE:
                return None
            signatures = self._inner.signatures
            sig = signatures.get(signature_name)
            if sig is None:
                fits = not signatures  # an unknown signature: the servable's own error
            else:
                fits = self._fits(sig, arrays, keys)
                if sig.inputs.keys() >= set(names) and (keys is None or sig.outputs.keys() >= set(keys)):
                    self._fit_cache[fit_key] = fits
        if not fits:
            return None
        if self._pad_lengths:
            shapes = tuple(shape_key_padded(a) for a in arrays.values())
        elif len(arrays) == 1:  # the usual request, without a comprehension
            shapes = ((value.dtype, value.shape[1:]),)
        else:  # dtypes compare (and hash) as their `.str` would, without making one
            shapes = tuple([(a.dtype, a.shape[1:]) for a in arrays.values()])
        return BatchRequest(arrays, rows, shapes, done, deadline)

    def _fits(
        self, sig: SignatureInfo, arrays: Mapping[str, np.ndarray], keys: tuple[str, ...] | None
    ) -> bool:
        """Whether the signature takes exactly these inputs and batches these outputs."""
        if set(arrays) != set(sig.inputs):  # missing ones may have defaults: run alone
            return False
        wanted = keys or tuple(sig.outputs)
        if len(set(wanted)) != len(wanted) or not set(wanted) <= set(sig.outputs):
            return False
        return all(_may_batch(sig.inputs[n]) for n in arrays) and all(
            _may_batch(sig.outputs[k]) for k in wanted
        )

    # ---- running a batch (on a batch thread) ------------------------------------------

    def _process(self, key: _QueueKey, requests: list[BatchRequest]) -> None:
        try:
            groups: dict[tuple[Any, ...], list[BatchRequest]] = {}
            late = expired(requests)
            if late and self._on_expired is not None:
                self._on_expired(late)
            for request in requests:
                if not request.finished:
                    groups.setdefault(request.shapes, []).append(request)
            for group in groups.values():
                self._run_merged(key, group)
        finally:
            for request in requests:
                if not request.finished:  # only a bug gets here; never leave a caller hanging
                    request.finish(error=Internal("the batch this request was in failed"))

    def _run_merged(self, key: _QueueKey, group: list[BatchRequest]) -> None:
        signature, keys, _ = key
        if (signature, keys) in self._unbatchable:  # learned while these waited
            self._run_each(signature, keys, group)
            return
        merged, size = self._merge(group)
        self._count(len(group), size)
        try:
            outputs = self._inner.run(signature, merged, keys)
        except Exception as exc:
            if len(group) == 1:
                group[0].finish(error=exc)
            else:
                for request in group:
                    self._run_merged(key, [request])
            return
        if not all(
            isinstance(v, np.ndarray) and v.ndim and v.shape[0] == size for v in outputs.values()
        ):
            self._unbatchable.add((signature, keys))
            log.info("outputs of %r have no batch dimension; not batching it", signature)
            if len(group) == 1 and merged is group[0].inputs:
                group[0].finish(result=outputs)  # it ran as it was sent: that is its answer
            else:
                self._run_each(signature, keys, group)
            return
        start = 0  # plain slices: np.split costs ~2.5x as much for a batch of 32
        for request in group:
            stop = start + request.rows
            request.finish(result={name: value[start:stop] for name, value in outputs.items()})
            start = stop

    def _run_each(
        self, signature: str, keys: tuple[str, ...] | None, group: list[BatchRequest]
    ) -> None:
        for request in group:
            try:
                request.finish(result=self._inner.run(signature, request.inputs, keys))
            except Exception as exc:
                request.finish(error=exc)

    def _merge(self, group: list[BatchRequest]) -> tuple[dict[str, np.ndarray], int]:
        """The group's inputs as one batch, and its row count after padding."""
        rows = sum(r.rows for r in group)
        size = allowed_size(self._allowed, rows)
        if len(group) == 1 and size == rows:
            return group[0].inputs, size  # nothing to merge or pad: no copy
        merged = {}
        for name in group[0].inputs:
            parts = [r.inputs[name] for r in group]
            if self._pad_lengths:
                parts = pad_to_common_shape(parts)
            if size > rows:
                parts.append(np.repeat(parts[-1][:1], size - rows, axis=0))
            merged[name] = np.concatenate(parts)
        return merged, size

    def _count(self, requests: int, size: int) -> None:
        with self._stats_lock:
            self.batches_run += 1
            self.requests_batched += requests
        if self._on_batch is not None:
            try:
                self._on_batch(size)
            except Exception:  # a metrics hook must not fail requests
                log.exception("on_batch hook failed")


def _may_batch(info: TensorInfo) -> bool:
    """False when a signature's tensor declares no batch dimension: a scalar, or a fixed
    first dimension (unknown shapes may batch; a run tells)."""
    return info.shape is None or (len(info.shape) > 0 and info.shape[0] < 0)
