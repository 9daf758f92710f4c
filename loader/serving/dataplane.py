"""One transport-agnostic data plane: status, metadata and inference over the manager.

REST and gRPC are thin adapters over this, so their behaviour cannot drift apart: both
resolve versions and labels, find signatures and report errors the same way.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool

from loader.base import DEFAULT_SIGNATURE, InvalidArgument, NotFound, SignatureInfo
from loader.manager.handles import Lease
from loader.manager.harness import VersionStatus
from loader.manager.manager import Manager

# What a batched run calls on the event loop: (outputs, None) or (None, the error).
Answer = Callable[[dict[str, Any] | None, BaseException | None], None]


class DataPlane:
    """What every transport asks of the server."""

    def __init__(self, manager: Manager) -> None:
        self._manager = manager
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
        """For every configured model, whether some version of it is available."""
        ready = {}
        for model in self._manager.models():
            try:
                ready[model] = any(s.state == "AVAILABLE" for s in self.status(model))
            except NotFound:
                ready[model] = False
        return ready

    def hold(self, model: str, version: int | None = None, label: str | None = None) -> Lease:
        """Hold the version a request names (or the latest) until the lease is released."""
        return self._manager.acquire(model, version, label)

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
    ) -> bool:
        """Queue a run of a batching servable; `done(result, error)` is then called once, on
        the running event loop. False (and `done` never called) when the held version does
        not batch this request: run it with `run_async`.

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
            lambda result, error: post(done, result, error),
        ))

    async def run_async(
        self,
        lease: Lease,
        signature_name: str,
        inputs: Mapping[str, Any],
        output_keys: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """`run` for the event loop, which it never blocks: a batching servable answers a
        future (see `submit`); anything else runs on a worker thread."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if self.submit(lease, signature_name, inputs, functools.partial(_settle, future),
                       output_keys):
            return await future
        name = signature_name or DEFAULT_SIGNATURE
        return await run_in_threadpool(lease.servable.run, name, inputs, output_keys)

    def _mailbox(self, loop: asyncio.AbstractEventLoop) -> _Mailbox:
        mailbox = self._mailboxes.get(loop)
        if mailbox is None:
            mailbox = self._mailboxes[loop] = _Mailbox(loop)
        return mailbox


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
