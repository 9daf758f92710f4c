"""Ref-counted handles: a version is unloaded only after every request holding it is done."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Self

from loader.base import Servable


class Handle:
    """Counts the requests using a servable and lets its unload wait for them to finish."""

    def __init__(self, servable: Servable) -> None:
        self.servable = servable
        # Requests take and drop the plain lock (cheaper than entering the Condition);
        # the unload waits on the Condition built on it.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._users = 0
        self._closed = False

    def try_acquire(self) -> bool:
        """Take a reference; False once the handle is closed for unloading."""
        with self._lock:
            if self._closed:
                return False
            self._users += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._closed:
                self._cond.notify_all()

    @property
    def users(self) -> int:
        with self._lock:
            return self._users

    def close_if_idle(self) -> bool:
        """Refuse new references, but only if none is held now (an eviction): False if one is."""
        with self._lock:
            if self._users:
                return False
            self._closed = True
            return True

    def close_and_wait(self, timeout: float | None = None) -> bool:
        """Refuse new references, then wait until the last one is released.

        Returns False if `timeout` passed with references still held.
        """
        with self._cond:
            self._closed = True
            return self._cond.wait_for(lambda: self._users == 0, timeout)


class Lease:
    """A request's hold on one version; use it as a context manager."""

    def __init__(self, handle: Handle, model: str, version: int) -> None:
        self._handle = handle
        self.model = model
        self.version = version
        self.servable = handle.servable

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._handle.release()

    def release(self) -> None:
        """Let go of the version (for a holder that cannot use `with`: a callback chain)."""
        self._handle.release()
