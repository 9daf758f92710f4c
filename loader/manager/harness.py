"""The life of one model version: its phase, its status and its loaded servable.

The manager owns every harness and changes it only while holding its own lock; a harness
checks that each move is one its state machine allows, so a bug shows up as an error
instead of a version in an impossible state.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from loader.base import Code, VersionRef
from loader.manager.handles import Handle
from policies.base import Phase

log = logging.getLogger("modelwatch.versions")

_ALLOWED = {
    Phase.NEW: {Phase.LOADING, Phase.END},
    Phase.LOADING: {Phase.AVAILABLE, Phase.ERROR},
    Phase.AVAILABLE: {Phase.UNLOADING},
    Phase.UNLOADING: {Phase.END},
    Phase.ERROR: {Phase.END},
    Phase.END: set(),
}


@dataclass(frozen=True)
class VersionStatus:
    """What a status request reports for one version."""

    model: str
    version: int
    state: str
    error_code: Code
    error_message: str
    memory_bytes: int = 0  # expected (START, LOADING) or measured (AVAILABLE); 0: unknown


@dataclass(frozen=True)
class Transition:
    """One move of one version, for logs and metrics."""

    model: str
    version: int
    previous: Phase
    phase: Phase
    seconds: float  # time spent in `previous`
    error: str | None
    fingerprint: str = ""  # of the content moved (which content failed, for a source)


class Harness:
    """One version of one model, from START to END."""

    def __init__(self, model: str, version: int, ref: VersionRef) -> None:
        self.model = model
        self.version = version
        self.ref = ref
        self.phase = Phase.NEW
        self.error_code = Code.OK
        self.error_message = ""
        self.handle: Handle | None = None
        self.estimate_bytes = 0  # the peak a load is expected to add (manager.memory)
        self.resident_bytes: int | None = None  # what the load was seen to add and keep
        self._since = time.monotonic()

    def move(
        self, phase: Phase, error_code: Code = Code.OK, error_message: str = ""
    ) -> Transition:
        """Move to `phase`, log one line, and describe the move."""
        if phase not in _ALLOWED[self.phase]:
            raise RuntimeError(
                f"version {self.version} of model {self.model} cannot go from "
                f"{self.phase.name} to {phase.name}"
            )
        now = time.monotonic()
        seconds, self._since = now - self._since, now
        previous, self.phase = self.phase, phase
        if phase is Phase.ERROR or previous is Phase.NEW:  # a load starting clears a refusal
            self.error_code, self.error_message = error_code, error_message
        transition = Transition(
            self.model, self.version, previous, phase, seconds, error_message or None,
            self.ref.fingerprint,
        )
        if transition.error:
            log.warning(
                "model=%s version=%d state=%s after %.3fs error=%s",
                self.model, self.version, phase.name, seconds, transition.error,
            )
        else:
            log.info(
                "model=%s version=%d state=%s after %.3fs",
                self.model, self.version, phase.name, seconds,
            )
        return transition

    def refuse(self, error_code: Code, error_message: str) -> bool:
        """A load that may not start yet (no memory for it): the version stays START with
        this status until it can (the figures in the message are kept current). True if
        it was not refused before (worth a log line and a count)."""
        assert self.phase is Phase.NEW
        changed = self.error_code is not error_code
        self.error_code, self.error_message = error_code, error_message
        if changed and error_code is not Code.OK:
            log.warning(
                "model=%s version=%d state=START error=%s",
                self.model, self.version, error_message,
            )
        return changed

    def seconds_in_phase(self) -> float:
        return time.monotonic() - self._since

    def status(self) -> VersionStatus:
        memory = self.resident_bytes if self.resident_bytes is not None else self.estimate_bytes
        return VersionStatus(
            self.model, self.version, self.phase.state_name, self.error_code, self.error_message,
            memory,
        )
