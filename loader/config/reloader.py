"""Config hot reload: applies edits to the config file's `models` without a restart.

watchdog watches the file's folder (editors often save by writing a new file and renaming
it over the old one); a burst of events becomes one reload. The path is kept as given, not
resolved: a Kubernetes ConfigMap volume reaches its files through a `..data` symlink that it
swaps to a new folder on every update, so the file is re-read whenever the path leads
somewhere new, though the file itself sees no event. A file that does not validate
is logged and ignored, so the running config stays in place. Only `models` can change at
runtime; a change to other sections is reported as needing a restart.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from loader.config.schema import Config, ConfigError, ModelConfig, load_config

log = logging.getLogger("modelwatch.config")

_CHANGES = frozenset({"created", "modified", "moved", "closed"})


class ConfigReloader:
    """Reloads the config file on `reload()`, and on its own whenever the file changes."""

    def __init__(
        self,
        path: str | Path,
        current: Config,
        apply: Callable[[Sequence[ModelConfig]], None],
        *,
        debounce_seconds: float = 0.2,
        load: Callable[[Path], Config] = load_config,
        poll_interval_seconds: float | None = None,
    ) -> None:
        self._path = Path(path).absolute()
        self._target = os.path.realpath(self._path)  # where the path leads now
        self._load = load  # reads the file into a Config
        self._poll = poll_interval_seconds  # also reload this often, events or not
        self._current = current
        self._apply = apply
        self._debounce = debounce_seconds
        self._lock = threading.Lock()
        self._wake = threading.Condition()
        self._pending: str | None = None  # why a reload was asked for
        self._stopped = False
        self._observer = Observer()
        self._observer.name = "modelwatch-config-watch"
        self._thread = threading.Thread(target=self._run, name="modelwatch-config-reload", daemon=True)

    def start(self) -> None:
        handler = FileSystemEventHandler()
        handler.on_any_event = self._on_event  # type: ignore[method-assign]
        self._observer.schedule(handler, str(self._path.parent), recursive=False)
        self._observer.start()
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        if self._observer.is_alive():
            self._observer.stop()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._observer.is_alive():
            self._observer.join(timeout)

    def request(self, reason: str) -> None:
        """Reload soon (safe from a signal handler: it only sets a flag and wakes a thread)."""
        with self._wake:
            self._pending = reason
            self._wake.notify()

    def reload(self, reason: str = "requested") -> bool:
        """Read the file now and apply its models; False if it was not applied."""
        quiet = reason == "poll"  # a timer's routine re-read says nothing unless it changes
        with self._lock:
            try:
                config = self._load(self._path)
            except ConfigError as error:
                log.warning("config not reloaded, the running one stays: %s", error)
                return False
            if config == self._current:
                log.log(logging.DEBUG if quiet else logging.INFO, "config checked: unchanged")
                return True
            restart = [
                key for key in ("server", "storage", "watch", "loading", "tensorflow")
                if getattr(config, key) != getattr(self._current, key)
            ]
            if restart:
                log.warning(
                    "config: changes to %s take effect after a restart; applying models only",
                    ", ".join(restart),
                )
            if config.models != self._current.models:
                try:
                    self._apply(config.models)
                except ConfigError as error:  # refused before it changed a thing
                    log.warning("config not reloaded, the running one stays: %s", error)
                    return False
                log.info("config reloaded: %d model(s)", len(config.models))
            self._current = config
            return True

    def _on_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _CHANGES:
            return
        paths = {os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")}
        target = os.path.realpath(self._path)
        if str(self._path) in paths or target != self._target:
            self._target = target
            self.request("the file changed")

    def _run(self) -> None:
        while True:
            with self._wake:
                woken = self._wake.wait_for(
                    lambda: self._pending is not None or self._stopped, self._poll
                )
                if not woken:
                    self._pending = "poll"
                # Let a burst of writes (truncate, write, close, rename) finish first.
                reason = None
                while self._pending is not None and not self._stopped:
                    reason, self._pending = self._pending, None
                    self._wake.wait(self._debounce)
                if self._stopped:
                    return
            if reason != "poll":
                log.info("config reload: %s", reason)
            self.reload(reason or "requested")
