"""Running one load or one unload of a version, outside the manager's lock.

A load is tried `retries + 1` times with doubling backoff (TF Serving's LoaderHarness retry
loop), each attempt bounded by a deadline; a version that cannot load gives its fetched
files back. An unload first waits for the requests holding the version (its handle drains),
then unloads and releases the files. Neither touches the manager's state: the manager
records the outcome under its own lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from loader.base import Code, Servable, ServingError, VersionRef
from loader.manager.deadline import call_with_deadline
from loader.manager.harness import Harness

log = logging.getLogger("modelwatch.manager")

LoadFn = Callable[[str, int, VersionRef], Servable]
ReleaseFn = Callable[[str, int, VersionRef], None]


def describe_error(exc: BaseException) -> tuple[Code, str]:
    """A status code and one sentence for an exception raised by a load."""
    if isinstance(exc, ServingError):
        return exc.code, exc.message
    code_number = getattr(exc, "error_code", None)  # TensorFlow's OpError carries one
    try:
        code = Code(code_number) if isinstance(code_number, int) else Code.UNKNOWN
    except ValueError:
        code = Code.UNKNOWN
    message = str(getattr(exc, "message", None) or exc).strip()
    return code, message.splitlines()[0] if message else type(exc).__name__


@dataclass(frozen=True)
class Loading:
    """How versions are loaded and unloaded: the functions, retries and time limits."""

    load_fn: LoadFn
    release_fn: ReleaseFn | None = None
    retries: int = 2
    backoff_seconds: float = 1.0
    timeout_seconds: float | None = None  # per attempt; None: no limit
    drain_timeout_seconds: float | None = None  # for requests in flight before an unload

    def load(self, harness: Harness, stopping: threading.Event) -> tuple[Servable | None, Code, str]:
        """The loaded servable, or None with the last attempt's code and message."""
        servable: Servable | None = None
        code, message = Code.CANCELLED, "the server is stopping"
        for attempt in range(self.retries + 1):
            if stopping.is_set():
                break
            try:
                servable = call_with_deadline(
                    lambda: self.load_fn(harness.model, harness.version, harness.ref),
                    self.timeout_seconds,
                    what=f"loading version {harness.version} of model {harness.model}",
                    discard=lambda late: late.unload(),
                )
                break
            except Exception as exc:  # a load may fail in any way; the version reports it
                code, message = describe_error(exc)
                if code is Code.DEADLINE_EXCEEDED:
                    break  # a load that hung once would hang again: do not pile up threads
                log.warning(
                    "model=%s version=%d load attempt %d of %d failed: %s",
                    harness.model, harness.version, attempt + 1, self.retries + 1, message,
                )
                if attempt < self.retries:
                    stopping.wait(self.backoff_seconds * 2**attempt)
        # A fetched copy of a version that cannot load is of no use, unless a timed-out
        # load is still reading it.
        if servable is None and code is not Code.DEADLINE_EXCEEDED:
            self._release(harness)
        return servable, code, message

    def unload(self, harness: Harness) -> None:
        """Wait for the version's requests to finish, unload it, release its files."""
        handle = harness.handle
        assert handle is not None
        if not handle.close_and_wait(self.drain_timeout_seconds):
            log.warning(
                "model=%s version=%d unloading with %d requests still running after %ss",
                harness.model, harness.version, handle.users, self.drain_timeout_seconds,
            )
        try:
            handle.servable.unload()
        except Exception:  # an unload that fails must not stop the others
            log.exception("model=%s version=%d unload failed", harness.model, harness.version)
        self._release(harness)

    def _release(self, harness: Harness) -> None:
        if self.release_fn is None:
            return
        try:
            self.release_fn(harness.model, harness.version, harness.ref)
        except Exception:
            log.exception(
                "model=%s version=%d could not release its files", harness.model, harness.version
            )
