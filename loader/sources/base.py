"""What a source is: it watches storage and reports, for each model, the complete set of
versions that are ready to load. A *fetcher* turns a reported version into a local folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from loader.base import VersionRef


@dataclass(frozen=True)
class ModelLocation:
    """A model name and the base path its numbered versions sit under."""

    name: str
    base_path: str


class VersionsCallback(Protocol):
    """Receives a model's complete set of ready versions after every successful scan."""

    def __call__(self, model: str, versions: Mapping[int, VersionRef]) -> None: ...


class Source(Protocol):
    """Watches storage for a set of models and reports their ready versions.

    A source calls its callback with the *complete* set on every successful scan, so a
    version left out means it is no longer present. A scan that fails reports nothing,
    and so does one that finds no ready version while a complete one is settling: until a
    model's first report, the daemon keeps its ports closed (TF Serving's order).
    """

    def set_models(self, models: Sequence[ModelLocation]) -> None: ...

    def recheck(self, model: str, version: int, fingerprint: str) -> None:
        """Content `fingerprint` of this version failed to load: look at the version on
        every scan until its content changes, so a fixed upload is reported at once."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...


class Fetcher(Protocol):
    """Makes a reported version available as a local folder, and forgets it again."""

    def fetch(self, model: str, version: int, ref: VersionRef) -> str: ...

    def release(self, model: str, version: int, ref: VersionRef) -> None: ...
