"""Honest fakes for manager and source tests: a servable that answers with its version, a
loader whose loads can be held, failed or counted, a clock set by hand, and a source
callback that remembers every report."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from loader.base import SignatureInfo, VersionRef


class FakeServable:
    """Answers every call with its own version; remembers whether it was unloaded."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.unloaded = False

    @property
    def signatures(self) -> Mapping[str, SignatureInfo]:
        return {}

    def signature_def_json(self) -> dict[str, Any]:
        return {"signature_def": {}}

    def run(
        self, signature_name: str, inputs: Mapping[str, Any], output_keys: Sequence[str] | None = None
    ) -> dict[str, Any]:
        assert not self.unloaded, "a request reached an unloaded servable"
        return {"version": self.version}

    def unload(self) -> None:
        self.unloaded = True


class FakeLoader:
    """A load function whose behaviour each test sets per version."""

    def __init__(self) -> None:
        self.calls: Counter[int] = Counter()
        self.failing: set[int] = set()
        self.gates: dict[int, threading.Event] = {}
        self.loaded: dict[int, FakeServable] = {}
        self.released: list[int] = []

    def hold(self, version: int) -> threading.Event:
        """Make loads of `version` wait until the returned event is set."""
        self.gates[version] = threading.Event()
        return self.gates[version]

    def __call__(self, model: str, version: int, ref: VersionRef) -> FakeServable:
        self.calls[version] += 1
        gate = self.gates.get(version)
        if gate is not None and not gate.wait(10):
            raise TimeoutError("test gate never opened")
        if version in self.failing:
            raise ValueError(f"version {version} is corrupt ({ref.fingerprint})")
        servable = FakeServable(version)
        self.loaded[version] = servable
        return servable

    def release(self, model: str, version: int, ref: VersionRef) -> None:
        self.released.append(version)


def refs(*versions: int, fingerprint: str = "f") -> dict[int, VersionRef]:
    return {v: VersionRef(f"/models/m/{v}", f"{fingerprint}{v}") for v in versions}


class FakeClock:
    """A clock that moves only when a test sets `now`."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Reports:
    """A source callback that remembers every report."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[int, VersionRef]]] = []
        self.last: dict[str, dict[int, VersionRef]] = {}
        self.lock = threading.Lock()

    def __call__(self, model: str, versions: Mapping[int, VersionRef]) -> None:
        with self.lock:
            self.calls.append((model, dict(versions)))
            self.last[model] = dict(versions)
