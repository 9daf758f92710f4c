"""Triton's model repository extension (`/v2/repository/...`) over the config's models.

The repository is the config: its models and their base paths (Triton's is a folder of
model folders; ours names each model's folder or prefix). So:

- **index** lists every model of the config, each version with its state in Triton's
  words (READY, LOADING, UNLOADING, UNAVAILABLE with the reason), and a model unloaded
  through the extension as UNAVAILABLE, "unloaded".
- **unload** stops serving a model of the config: its versions leave as a config reload
  that drops it would take them (in-flight requests finish first), and it stays unloaded
  through config reloads until it is loaded again or leaves the config.
- **load** serves a model of the config again (or, if it serves, leaves it as it is) and
  answers once its versions have settled: 200 if it is ready then. A model the config does
  not name is NOT_FOUND: add it to the config (hot reload, or TF Serving's
  HandleReloadConfigRequest) instead, since a model uploaded through the extension would
  not survive the next reload or restart. Triton's `config` and `file:` parameters (a
  model configuration or files sent with the load) are refused for the same reason.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from loader.base import Code, InvalidArgument, NotFound, ServingError
from loader.serving.dataplane import DataPlane

EXTENSION = "model_repository"  # its name in the server metadata's extensions
# Our states (`VersionStatus.state`) in Triton's words.
_STATES = {"AVAILABLE": "READY", "LOADING": "LOADING", "START": "LOADING",
           "UNLOADING": "UNLOADING", "END": "UNAVAILABLE"}
UNLOADED = "unloaded"

# Serves the config's models again, less those `Repository.unloaded` names (the daemon's).
ApplyFn = Callable[[], None]
# Waits until a condition holds or the seconds pass; whether it held (the manager's).
WaitFn = Callable[[Callable[[], bool], float], bool]


class Repository:
    """Index, load and unload over the config's models (`configured()` names them)."""

    def __init__(
        self,
        dataplane: DataPlane,
        configured: Callable[[], Sequence[str]],
        apply: ApplyFn,
        wait_until: WaitFn,
        load_wait_seconds: float,
    ) -> None:
        self._dataplane = dataplane
        self._configured = configured
        self._apply = apply
        self._wait_until = wait_until
        self._load_wait = load_wait_seconds
        self._lock = threading.Lock()  # guards `_unloaded`
        self._unloaded: frozenset[str] = frozenset()

    @property
    def unloaded(self) -> frozenset[str]:
        """The config's models unloaded through the extension."""
        return self._unloaded

    def retain(self, configured: Iterable[str]) -> None:
        """Forget unloads of models the config no longer names (a config reload's)."""
        with self._lock:
            self._unloaded = self._unloaded & frozenset(configured)

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model of the config and its versions, in Triton's words."""
        entries = []
        for model in sorted(self._configured()):
            if model in self._unloaded:
                entries.append({"name": model, "state": "UNAVAILABLE", "reason": UNLOADED})
                continue
            try:
                statuses = self._dataplane.status(model)
            except ServingError:  # not reported by storage yet
                statuses = []
            for status in statuses:
                entry = {"name": model, "version": str(status.version),
                         "state": _STATES.get(status.state, "UNAVAILABLE")}
                if status.error_code is not Code.OK:
                    entry.update(state="UNAVAILABLE", reason=status.error_message)
                entries.append(entry)
        return [e for e in entries if e["state"] == "READY"] if ready_only else entries

    def load(self, model: str, parameters: Mapping[str, Any]) -> None:
        """Serve `model` again and wait (blocking) until it is ready: INVALID_ARGUMENT for
        parameters that send a configuration or files, NOT_FOUND for a model not in the
        config, UNAVAILABLE if it is not ready once its versions settle or the wait ends."""
        sent = sorted(key for key in parameters if key == "config" or key.startswith("file:"))
        if sent:
            raise InvalidArgument(
                f"failed to load '{model}': the parameters {sent} are not supported; the "
                "repository is the config's models and base paths"
            )
        self._check_configured(model, "load")
        if self._change(lambda unloaded: unloaded - {model}):
            self._apply()
        if not self._wait_until(lambda: self._settled(model), self._load_wait):
            raise ServingError(
                f"failed to load '{model}': not ready after {self._load_wait:g} s; it goes on "
                "loading", Code.UNAVAILABLE)
        if not self._dataplane.readiness().get(model):
            reasons = sorted({s.error_message for s in self._statuses(model) if s.error_message})
            raise ServingError(
                f"failed to load '{model}': no version is available"
                + (f" ({'; '.join(reasons)})" if reasons else ""), Code.UNAVAILABLE)

    def unload(self, model: str) -> None:
        """Stop serving `model` (NOT_FOUND for a model not in the config); it leaves as
        its requests in flight finish."""
        self._check_configured(model, "unload")
        if self._change(lambda unloaded: unloaded | {model}):
            self._apply()

    def _change(self, change: Callable[[frozenset[str]], frozenset[str]]) -> bool:
        """Change the unloaded set; whether it changed. (Applied after, outside the lock:
        applying takes the daemon's reload lock, which a config reload holds to `retain`.)"""
        with self._lock:
            before, self._unloaded = self._unloaded, change(self._unloaded)
            return self._unloaded != before

    def _check_configured(self, model: str, verb: str) -> None:
        if model not in self._configured():
            raise NotFound(
                f"failed to {verb} '{model}': the config has no model '{model}' (the "
                "repository is the config's models and base paths)"
            )

    def _statuses(self, model: str) -> list[Any]:
        try:
            return list(self._dataplane.status(model))
        except ServingError:
            return []

    def _settled(self, model: str) -> bool:
        """Ready, or every version it has ended or failed (its status says why)."""
        if self._dataplane.readiness().get(model):
            return True
        statuses = self._statuses(model)
        return bool(statuses) and all(
            s.state == "END" or s.error_code is not Code.OK for s in statuses
        )
