"""Watches model repositories in local folders.

watchdog's inotify events trigger a debounced scan of the model they touch; an APScheduler
job rescans everything every `poll_interval_seconds` as a safety net for missed events.
A version folder renamed into place under the base path is complete by construction (the
writer used the atomic-publish pattern), so it is ready at once; a folder written in place
must also keep the same listing for `settle_seconds`; one in which nothing has changed for
that long when first seen (by ctime) is settled at once, so versions already there at
start-up load without waiting.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler
from watchdog.events import DirMovedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

from loader.base import VersionRef
from loader.sources.base import ModelLocation, VersionsCallback
from loader.sources.saved_model_graph import graph_restores_variables
from loader.sources.versions import SettleTracker, fingerprint, incompleteness, parse_version

log = logging.getLogger("modelwatch.source.local")

DEFAULT_SETTLE_SECONDS = 1.0


def list_version(folder: str) -> tuple[list[tuple[str, int, str]], int]:
    """(relative path, size, mtime) of every file in a version folder, and the newest
    status-change time (ctime, in ns) of the folder, its subfolders and its files."""
    entries: list[tuple[str, int, str]] = []
    changed = 0
    for root, dirs, files in os.walk(folder, onerror=_raise):
        dirs.sort()
        changed = max(changed, os.stat(root).st_ctime_ns)
        for name in files:
            path = os.path.join(root, name)
            stat = os.stat(path)
            relative = os.path.relpath(path, folder).replace(os.sep, "/")
            entries.append((relative, stat.st_size, str(stat.st_mtime_ns)))
            changed = max(changed, stat.st_ctime_ns)
    return entries, changed


def _raise(error: OSError) -> None:
    raise error


def graph_reader(folder: str) -> Callable[[str], bool | None]:
    """Reads a version folder's graph file (for `incompleteness`)."""

    def restores_variables(name: str) -> bool | None:
        with open(os.path.join(folder, name), "rb") as graph:

            def read(offset: int, length: int) -> bytes:
                graph.seek(offset)
                return graph.read(length)

            return graph_restores_variables(name, os.fstat(graph.fileno()).st_size, read)

    return restores_variables


class _Debouncer:
    """Collects scan requests per model and runs each once its quiet period is over.

    Two kinds of request: file events (a burst pushes its scan back until the burst is
    over) and settle wake-ups (a scan when a version could have settled). They are kept
    apart so that a far-off settle wake-up never delays the scan an event asked for.
    """

    def __init__(self, scan: Callable[[str], None]) -> None:
        self._scan = scan
        self._events: dict[str, float] = {}  # model -> when its debounced scan is due
        self._wakeups: dict[str, float] = {}  # model -> earliest settle wake-up
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="modelwatch-local-scan", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self, model: str, delay: float) -> None:
        """Scan `model` once events have been quiet for `delay` seconds."""
        with self._cond:
            self._events[model] = max(self._events.get(model, 0.0), time.monotonic() + delay)
            self._cond.notify()

    def wake_up(self, model: str, delay: float) -> None:
        """Scan `model` in `delay` seconds at the latest (a version may have settled)."""
        with self._cond:
            due = time.monotonic() + delay
            self._wakeups[model] = min(self._wakeups.get(model, due), due)
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _due(self) -> dict[str, float]:
        due = dict(self._wakeups)
        for model, when in self._events.items():
            due[model] = min(due.get(model, when), when)
        return due

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    now = time.monotonic()
                    due = self._due()
                    ready = [m for m, when in due.items() if when <= now]
                    if ready:
                        for model in ready:
                            self._events.pop(model, None)
                            self._wakeups.pop(model, None)
                        break
                    self._cond.wait(min(due.values(), default=now + 3600) - now)
                if self._stopped:
                    return
            for model in ready:
                self._scan(model)


# Reads (opened, closed without writing) change nothing, and our own scans cause them.
_CHANGES = frozenset({"created", "deleted", "modified", "moved", "closed"})


class _Events(FileSystemEventHandler):
    def __init__(self, source: LocalSource) -> None:
        self._source = source

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _CHANGES:
            self._source._on_event(event)


class LocalSource:
    """A source for models whose base path is a local folder."""

    def __init__(
        self,
        models: Sequence[ModelLocation],
        callback: VersionsCallback,
        *,
        poll_interval_seconds: float = 1.0,
        settle_seconds: float | None = None,
        ready_marker: str | None = None,
        debounce_seconds: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        on_poll: Callable[[str, float, bool], None] | None = None,
    ) -> None:
        if settle_seconds is None:
            settle_seconds = 0.0 if ready_marker else DEFAULT_SETTLE_SECONDS
        self._callback = callback
        self._poll_interval = poll_interval_seconds
        self._ready_marker = ready_marker
        self._debounce = debounce_seconds
        self._clock = clock
        self._on_poll = on_poll
        self._settle = SettleTracker(settle_seconds)
        self._lock = threading.RLock()  # one scan at a time; guards everything below
        self._models: dict[str, Path] = {}
        self._watches: dict[str, tuple[ObservedWatch, int]] = {}
        self._published: set[tuple[str, int]] = set()
        self._failing: set[str] = set()
        self._observer = Observer()
        self._observer.name = "modelwatch-watchdog"
        self._handler = _Events(self)
        self._debouncer = _Debouncer(self.scan)
        self._scheduler = BackgroundScheduler(daemon=True)
        self._started = False
        self._stopped = False
        self.set_models(models)

    def set_models(self, models: Sequence[ModelLocation]) -> None:
        """Watch exactly these models from now on."""
        with self._lock:
            self._models = {m.name: Path(m.base_path) for m in models}
            for name in list(self._watches):
                if name not in self._models:
                    self._unwatch(name)
            if self._started:
                self._ensure_watches()
                for name in self._models:
                    self._debouncer.request(name, 0.0)

    def start(self) -> None:
        with self._lock:
            self._started = True
            self._ensure_watches()
        self._observer.start()
        self._debouncer.start()
        self._scheduler.add_job(
            self.rescan, "interval", seconds=self._poll_interval,
            max_instances=1, coalesce=True, id="local-rescan",
        )
        self._scheduler.start()
        self.rescan()

    def stop(self) -> None:
        if self._stopped or not self._started:
            self._stopped = True
            return
        self._stopped = True
        self._scheduler.shutdown(wait=True)
        self._debouncer.stop()
        self._observer.stop()

    def join(self, timeout: float | None = None) -> None:
        self._debouncer.join(timeout)
        if self._observer.is_alive():
            self._observer.join(timeout)

    def recheck(self, model: str, version: int, fingerprint: str) -> None:
        """Nothing to do: every scan lists every version's files, so a failed version's new
        content is seen on the next scan."""

    def rescan(self) -> None:
        """Scan every model now (the safety net behind the events)."""
        with self._lock:
            self._ensure_watches()
            names = list(self._models)
        for name in names:
            self.scan(name)

    def scan(self, model: str) -> None:
        """List one model's versions and report the ready ones (nothing if listing fails)."""
        with self._lock:
            base = self._models.get(model)
            if base is None or self._stopped:
                return
            started = time.perf_counter()
            try:
                ready, wake_in = self._ready_versions(model, base)
            except OSError as exc:
                self._polled(model, started, ok=False)
                if model not in self._failing:
                    self._failing.add(model)
                    log.warning(
                        "cannot list model %s at %s (%s); keeping what is loaded",
                        model, base, exc.strerror or exc,
                    )
                if isinstance(exc, FileNotFoundError) and not base.exists():
                    # No folder is an answer: no versions (the manager keeps what it
                    # serves on an empty report), so the daemon need not wait for one.
                    self._callback(model, {})
                return
            self._polled(model, started, ok=True)
            if model in self._failing:
                self._failing.discard(model)
                log.info("model %s at %s can be listed again", model, base)
            if wake_in is not None:
                self._debouncer.wake_up(model, wake_in)
                if not ready:
                    # Nothing ready yet but a complete version settling: the answer is
                    # one settle period away, so give none (the daemon waits for it).
                    return
            self._callback(model, ready)

    def _polled(self, model: str, started: float, *, ok: bool) -> None:
        if self._on_poll is not None:
            self._on_poll(model, time.perf_counter() - started, ok)

    def _ready_versions(self, model: str, base: Path) -> tuple[dict[int, VersionRef], float | None]:
        now = self._clock()
        ready: dict[int, VersionRef] = {}
        seen: list[int] = []
        wake_in: float | None = None
        with os.scandir(base) as entries:
            folders = [(e.name, e.path) for e in entries if e.is_dir()]
        for name, path in folders:
            version = parse_version(name)
            if version is None:
                continue
            try:
                listing, changed_ns = list_version(path)
                reason = incompleteness(
                    (e[0] for e in listing), self._ready_marker, graph_reader(path)
                )
            except FileNotFoundError:
                continue  # removed while we looked: it is simply not there any more
            seen.append(version)
            key = (model, version)
            digest = fingerprint(listing)
            # Nothing in it has changed for this long (ctime, which copying tools cannot
            # set back, unlike mtime): a version long complete when first seen (at
            # start-up, say) is settled at once instead of one settle period later.
            # A file still being written changes its size and mtime, so its version
            # settles only once the writing has paused for a whole settle period.
            quiet = max(0.0, time.time() - changed_ns / 1e9)
            settled = self._settle.observe(key, digest, now, quiet_for=quiet)
            if reason is not None:
                log.debug("model=%s version=%d not ready: %s", model, version, reason)
                continue
            if settled or key in self._published:
                ready[version] = VersionRef(path, digest, sum(e[1] for e in listing))
            else:
                remaining = self._settle.remaining(key, now)
                wake_in = remaining if wake_in is None else min(wake_in, remaining)
        self._settle.forget_others(model, seen)
        self._published = {k for k in self._published if k[0] != model or k[1] in seen}
        return ready, wake_in

    def _on_event(self, event: FileSystemEvent) -> None:
        path = os.fsdecode(getattr(event, "dest_path", "") or event.src_path)
        with self._lock:
            for name, base in self._models.items():
                if path == str(base) or path.startswith(str(base) + os.sep):
                    if isinstance(event, DirMovedEvent) and Path(path).parent == base:
                        version = parse_version(Path(path).name)
                        if version is not None:
                            self._published.add((name, version))
                    self._debouncer.request(name, self._debounce)

    def _ensure_watches(self) -> None:
        """Watch every model folder that exists; re-watch one that was replaced."""
        for name, base in self._models.items():
            try:
                inode = base.stat().st_ino
            except OSError:
                inode = None
            current = self._watches.get(name)
            if current is not None and current[1] == inode:
                continue
            if current is not None:
                self._unwatch(name)
            if inode is not None:
                watch = self._observer.schedule(self._handler, str(base), recursive=True)
                self._watches[name] = (watch, inode)

    def _unwatch(self, name: str) -> None:
        watch, _ = self._watches.pop(name)
        try:
            self._observer.unschedule(watch)
        except KeyError:
            pass  # watchdog already dropped a watch whose folder was deleted
