"""What makes a folder a version, and when a version is complete enough to load.

These rules are shared by every source, so a local folder and an S3 prefix agree on what
"ready" means. Everything here is pure: file listings in, decisions out.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

_VERSION_NAME = re.compile(r"[0-9]+")
_SHARD = re.compile(r"variables/variables\.data-([0-9]{5})-of-([0-9]{5})")
GRAPH_FILES = ("saved_model.pb", "saved_model.pbtxt")
VARIABLES_INDEX = "variables/variables.index"
TFLITE_FILE = "model.tflite"  # TF Serving's kTfLiteModelFilename

# Versions above this are refused: the number must fit TF Serving's int64 version field.
MAX_VERSION = 2**63 - 1


def parse_version(name: str) -> int | None:
    """The version number a child folder name stands for, or None if it is not a version.

    Only a plain non-negative decimal integer counts ("00000123" is 123); hidden,
    temporary and other names are not versions.
    """
    if not _VERSION_NAME.fullmatch(name):
        return None
    number = int(name)
    return number if number <= MAX_VERSION else None


def incompleteness(
    files: Iterable[str],
    ready_marker: str | None = None,
    graph_restores_variables: Callable[[str], bool | None] | None = None,
) -> str | None:
    """Why a version folder is not complete yet, or None when it is.

    `files` are the paths of the version's files relative to the version folder, with
    forward slashes. A version is complete when its graph is there; the variables index
    too if the graph restores variables or anything is under variables/; every data shard
    the shards' names imply (at least one) if the index is there; and the ready marker, if
    one is configured.

    `graph_restores_variables(name)` reads the graph file `name` (see `saved_model_graph`).
    It is asked only while the index is missing and nothing else says variables are coming:
    a graph copied first looks complete on its own. None (cannot tell) and no reader at
    all count as "no variables", and the load then has its say.

    A TFLite version is one file: `model.tflite` alone is complete. A version that also
    holds a SavedModel (or the start of one) is complete when that SavedModel is, so which
    of the two gets loaded never depends on which file landed first.
    """
    present = set(files)
    if ready_marker is not None and ready_marker not in present:
        return f"the ready marker {ready_marker!r} is not there yet"
    if TFLITE_FILE in present and not any(
        path in GRAPH_FILES or path.startswith("variables/") for path in present
    ):
        return None
    graph = next((name for name in GRAPH_FILES if name in present), None)
    if graph is None:
        return "saved_model.pb is not there yet"
    shards = [m for m in map(_SHARD.fullmatch, present) if m]
    if VARIABLES_INDEX not in present:
        if any(path.startswith("variables/") for path in present):
            return "variables/variables.index is not there yet"
        if graph_restores_variables is not None and graph_restores_variables(graph):
            return f"variables/variables.index is not there yet ({graph} restores variables)"
    if shards:
        counts = {int(m.group(2)) for m in shards}
        if len(counts) != 1:
            return "the variables' data shards disagree on their count"
        (count,) = counts
        indices = {int(m.group(1)) for m in shards}
        missing = sorted(set(range(count)) - indices)
        if missing:
            return f"{len(missing)} of {count} variables data shards are not there yet"
    elif VARIABLES_INDEX in present:
        return "variables/variables.data-* is not there yet"
    return None


def fingerprint(entries: Iterable[tuple[str, int, str]]) -> str:
    """A digest of a version's listing: (relative path, size, mtime or ETag) per file."""
    digest = hashlib.sha256()
    for path, size, stamp in sorted(entries):
        digest.update(f"{path}\0{size}\0{stamp}\n".encode())
    return digest.hexdigest()[:16]


@dataclass
class _Seen:
    fingerprint: str
    since: float
    settled: bool = False  # quiet for a whole period by the storage's word when first seen


class SettleTracker:
    """Tells when a version's listing has stopped changing for `settle_seconds`.

    This is the only memory a source keeps between scans, and only for versions that are
    not settled yet or were seen on the last scan; `forget_others` drops the rest.
    """

    def __init__(self, settle_seconds: float) -> None:
        self._settle_seconds = settle_seconds
        self._seen: dict[tuple[str, int], _Seen] = {}
        self._lock = threading.Lock()  # a source may scan several models at once

    def observe(
        self, key: tuple[str, int], fingerprint: str, now: float, *, quiet_for: float = 0.0
    ) -> bool:
        """Record a listing; True once the same fingerprint has been seen long enough.

        `quiet_for`: seconds for which the storage says the listing has not changed
        already (a local folder's newest ctime, S3's LastModified against its Date). A new
        listing quiet for a whole settle period is settled at once; any other new listing
        starts its settle period now, as if it had just changed, because clocks other than
        `now`'s may only shorten a wait that was already over.
        """
        with self._lock:
            seen = self._seen.get(key)
            if seen is None or seen.fingerprint != fingerprint:
                # A flag, not `since = now - settle_seconds`: now - (now - s) is not
                # always s in floating point, and the settled-at-once answer must be exact.
                seen = self._seen[key] = _Seen(fingerprint, now, quiet_for >= self._settle_seconds)
            return seen.settled or now - seen.since >= self._settle_seconds

    def remaining(self, key: tuple[str, int], now: float) -> float:
        """Seconds until `key` could settle if nothing changes (0 when unknown or due)."""
        with self._lock:
            seen = self._seen.get(key)
            if seen is None or seen.settled:
                return 0.0
            return max(0.0, seen.since + self._settle_seconds - now)

    def forget_others(self, model: str, keep: Iterable[int]) -> None:
        """Drop what is remembered of `model`'s versions that were not seen this scan."""
        keep = set(keep)
        with self._lock:
            for key in [k for k in self._seen if k[0] == model and k[1] not in keep]:
                del self._seen[key]
