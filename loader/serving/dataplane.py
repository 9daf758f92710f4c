"""One transport-agnostic data plane: status, metadata and inference over the manager.

REST and gRPC are thin adapters over this, so their behaviour cannot drift apart: both
resolve versions and labels, find signatures and report errors the same way.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool

from loader.base import (
    DEFAULT_SIGNATURE,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    SignatureInfo,
    Unavailable,
)
from loader.manager.handles import Lease
from loader.manager.harness import VersionStatus
from loader.manager.manager import Manager
from loader.manager.memory import Usage

# While a request waits for an on-demand load, it asks the manager again this often: a
# load refused for memory can start once a request in flight elsewhere ends (which makes
# its model evictable, and sends no event).
DEMAND_RECHECK_SECONDS = 0.25
# The retry hint of a 503 for a model still loading, and for one waiting for memory.
RETRY_LOADING_SECONDS, RETRY_NO_MEMORY_SECONDS = 1, 5

# What a batched run calls on the event loop: (outputs, None) or (None, the error).
Answer = Callable[[dict[str, Any] | None, BaseException | None], None]
# A run whose deadline passed while it waited for a worker thread (TF Serving's batching
# queue words, for the queue it has here).
THREAD_QUEUE_TIMEOUT = "Run() timeout exceeded while waiting for a worker thread"


class DataPlane:
    """What every transport asks of the server."""

    def __init__(
        self,
        manager: Manager,
        *,
        on_demand_wait_seconds: float = 30.0,
        on_expired: Callable[[str], None] | None = None,
    ) -> None:
        self._manager = manager
        self._on_demand_wait = on_demand_wait_seconds
        # Called with the model's name for a run dropped because its deadline passed
        # while it waited for a worker thread.
        self._on_expired = on_expired
        # One per event loop that awaits batched runs (the REST server has one); weak, so
        # a test's loop that closed leaves nothing behind.
        self._mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = (
            weakref.WeakKeyDictionary()
        )

    def status(
        self, model: str, version: int | None = None, label: str | None = None
    ) -> list[VersionStatus]:
        """The state of every version of `model`, or of the one named or labelled."""
        if label is not None:
            version = self._manager.resolve_label(model, label)
        return self._manager.status(model, version)

    def overview(self) -> list[tuple[str, dict[str, int], list[VersionStatus]]]:
        """Every configured model with its labels and the status of its versions."""
        listed = []
        for model in self._manager.models():
            try:
                statuses = self.status(model)
            except NotFound:
                statuses = []
            listed.append((model, self._manager.labels(model), statuses))
        return listed

    def readiness(self) -> dict[str, bool]:
        """For every configured model, whether some version of it is available (for an
        on-demand model: whether one is there to load on a request)."""
        ready = {}
        for model in self._manager.models():
            wanted = {"AVAILABLE", "START", "LOADING"} if self._manager.is_on_demand(model) else {
                "AVAILABLE"
            }
            try:
                ready[model] = any(s.state in wanted for s in self.status(model))
            except NotFound:
                ready[model] = False
        return ready

    def memory(self) -> Usage:
        """The process's resident memory, the limit, and what loads running reserve."""
        return self._manager.memory_report().usage

    def is_on_demand(self, model: str) -> bool:
        """Whether `model` loads on its first request (`models[].load: on_demand`)."""
        return self._manager.is_on_demand(model)

    def waits(self, model: str) -> bool:
        """Whether a request for `model` may wait before a version is chosen for it (here:
        an on-demand load), so that it must take `hold_async` rather than `hold`."""
        return self.is_on_demand(model)

    def hold(self, model: str, version: int | None = None, label: str | None = None) -> Lease:
        """Hold the version a request names (or the latest) until the lease is released.

        An on-demand model that is not loaded is loaded now: the request waits for it up
        to `loading.on_demand_wait_seconds`, then gets UNAVAILABLE with a retry hint.
        Blocking: on the event loop, use `hold_async`.
        """
        try:
            return self._manager.acquire(model, version, label)
        except (NotFound, Unavailable):  # Unavailable: its handle closed, being evicted
            if not self._manager.is_on_demand(model):
                raise
        deadline = time.monotonic() + self._on_demand_wait
        while True:
            wanted = self._manager.demand(model, version, label)
            try:
                return self._manager.acquire(model, version, label)
            except (NotFound, Unavailable):
                if wanted is None:  # no such version, or its load failed: nothing to wait for
                    raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise _still_loading(model, wanted)
            self._wait_for_change(model, version, label, wanted, min(left, DEMAND_RECHECK_SECONDS))

    def _wait_for_change(
        self, model: str, version: int | None, label: str | None, seen: VersionStatus,
        timeout: float,
    ) -> None:
        self._manager.wait_until(
            lambda: self._manager.wanted_status(model, version, label) != seen, timeout
        )

    def hold_loaded(self, model: str, version: int | None = None) -> Lease:
        """Hold a version only if it is loaded now (never loads one on demand)."""
        return self._manager.acquire(model, version)

    async def hold_async(
        self, model: str, version: int | None = None, label: str | None = None
    ) -> Lease:
        """`hold` for the event loop: waiting for an on-demand load happens on a worker
        thread, never on the loop."""
        if not self._manager.is_on_demand(model):
            return self.hold(model, version, label)
        try:
            return self._manager.acquire(model, version, label)
        except (NotFound, Unavailable):
            return await run_in_threadpool(self.hold, model, version, label)

    def signature(self, lease: Lease, name: str) -> SignatureInfo:
        """The signature a request names; "" means the default one, as in TF Serving."""
        name = name or DEFAULT_SIGNATURE
        found = lease.servable.signatures.get(name)
        if found is None:
            raise InvalidArgument(f'Serving signature name: "{name}" not found in signature def')
        return found

    def metadata(self, lease: Lease) -> dict[str, Any]:
        """The `signature_def` metadata of the held version, as TF Serving reports it."""
        return lease.servable.signature_def_json()

    def run(
        self,
        lease: Lease,
        signature_name: str,
        inputs: Mapping[str, Any],
        output_keys: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Run a signature of the held version (blocking: call it off the event loop)."""
        self.signature(lease, signature_name)
        return lease.servable.run(signature_name or DEFAULT_SIGNATURE, inputs, output_keys)

    def submit(
        self,
        lease: Lease,
        signature_name: str,
        inputs: Mapping[str, Any],
        done: Answer,
        output_keys: Sequence[str] | None = None,
        deadline: float | None = None,
    ) -> bool:
        """Queue a run of a batching servable; `done(result, error)` is then called once, on
        the running event loop. False (and `done` never called) when the held version does
        not batch this request: run it with `run_async`. A run still queued at `deadline`
        (`time.monotonic()` seconds) is dropped: `done` gets DEADLINE_EXCEEDED.

        No thread and no task waits for the batch, so a thousand requests in flight cost a
        thousand callbacks.
        """
        self.signature(lease, signature_name)
        submit = getattr(lease.servable, "submit", None)
        if submit is None:
            return False
        post = self._mailbox(asyncio.get_running_loop()).post
        return bool(submit(
            signature_name or DEFAULT_SIGNATURE, inputs, output_keys,
            lambda result, error: post(done, result, error), deadline,
        ))

    async def run_async(
        self,
        lease: Lease,
        signature_name: str,
        inputs: Mapping[str, Any],
        output_keys: Sequence[str] | None = None,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """`run` for the event loop, which it never blocks: a batching servable answers a
        future (see `submit`); anything else runs on a worker thread, unless `deadline`
        passed while it waited for one (DEADLINE_EXCEEDED, and the model never runs)."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if self.submit(lease, signature_name, inputs, functools.partial(_settle, future),
                       output_keys, deadline):
            return await future
        name = signature_name or DEFAULT_SIGNATURE
        if deadline is None:
            return await run_in_threadpool(lease.servable.run, name, inputs, output_keys)
        return await run_in_threadpool(
            self._run_in_time, deadline, lease, name, inputs, output_keys
        )

    def _run_in_time(
        self, deadline: float, lease: Lease, name: str, inputs: Mapping[str, Any],
        output_keys: Sequence[str] | None,
    ) -> dict[str, Any]:
        self.check_deadline(lease, deadline)
        return lease.servable.run(name, inputs, output_keys)

    def check_deadline(self, lease: Lease, deadline: float | None) -> None:
        """Raise DEADLINE_EXCEEDED (and count it as expired) when `deadline` has passed:
        for a run that waited for a worker thread, before its model runs."""
        if deadline is not None and time.monotonic() >= deadline:
            if self._on_expired is not None:
                self._on_expired(lease.model)
            raise DeadlineExceeded(THREAD_QUEUE_TIMEOUT)

    def _mailbox(self, loop: asyncio.AbstractEventLoop) -> _Mailbox:
        mailbox = self._mailboxes.get(loop)
        if mailbox is None:
            mailbox = self._mailboxes[loop] = _Mailbox(loop)
        return mailbox


def _still_loading(model: str, wanted: VersionStatus) -> Unavailable:
    if wanted.error_message:  # refused for now: RESOURCE_EXHAUSTED, with the numbers
        return Unavailable(
            f"version {wanted.version} of model {model} is waiting for memory to load: "
            f"{wanted.error_message}",
            retry_after_seconds=RETRY_NO_MEMORY_SECONDS,
        )
    return Unavailable(
        f"version {wanted.version} of model {model} is loading on demand; try again",
        retry_after_seconds=RETRY_LOADING_SECONDS,
    )


class _Mailbox:
    """Answers from batch threads to one event loop, delivered by one callback per wake-up.

    A batch answers all its requests in a row; one `call_soon_threadsafe` per request would
    queue a callback (and may wake the loop) for each. Here the first answer posted after a
    delivery schedules the next delivery, and the others join it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._answers: list[tuple[Answer, Any, Any]] = []

    def post(
        self, done: Answer, result: dict[str, Any] | None, error: BaseException | None
    ) -> None:
        """Called on any thread: call `done(result, error)` on the loop soon."""
        with self._lock:
            self._answers.append((done, result, error))
            first = len(self._answers) == 1
        if first:
            try:
                self._loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the loop closed: nobody waits for these any more
                with self._lock:
                    self._answers.clear()

    def _deliver(self) -> None:
        with self._lock:
            answers, self._answers = self._answers, []
        for done, result, error in answers:
            done(result, error)


def _settle(
    future: asyncio.Future[dict[str, Any]],
    result: dict[str, Any] | None,
    error: BaseException | None,
) -> None:
    if future.done():  # cancelled: the server is shutting down
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result if result is not None else {})
