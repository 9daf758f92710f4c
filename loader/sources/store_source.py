"""A source that watches model versions under object store prefixes (S3, GCS, Azure Blob).

Each poll lists a model's version "folders" with one delimited listing, then lists
the objects of only those versions that have not settled yet. A settled version keeps its
last fingerprint and is re-listed only once every `reverify_every` polls, so a poll costs
about one request per model plus one per unsettled version, however many files there are
(and, for a version whose graph is there without its variables index, a ranged read or two
of the graph to learn whether it restores variables).

A version whose load failed (`recheck`) is listed on every poll until its content changes,
so a fixed upload is loaded within a poll or two rather than at its next re-verification.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor as ThreadPool
from dataclasses import dataclass, field
from datetime import UTC, datetime

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from loader.base import VersionRef
from loader.sources import versions
from loader.sources.base import ModelLocation, VersionsCallback
from loader.sources.object_store import (
    ObjectStore,
    RequestCounter,
    StoreError,
    VersionObject,
    listing_fingerprint,
    parse_store_uri,
)
from loader.sources.saved_model_graph import graph_restores_variables

log = logging.getLogger(__name__)

# The default settle time, as a share of the poll interval (see StoreSource.__init__).
_SETTLE_SLACK = 0.9

def reverify_due(poll_index: int, model: str, version: int, every: int) -> bool:
    """Whether a settled version is re-listed on this poll.

    Each version gets a fixed offset from a hash of its name, so the re-listings of many
    versions that settled on the same poll are spread over `every` polls.
    """
    offset = zlib.crc32(f"{model}/{version}".encode())
    return (poll_index + offset) % every == 0


@dataclass
class _VersionState:
    prefix: str
    ready: VersionRef | None = None  # the last ready listing; kept while a change settles
    settled: bool = False  # True: not re-listed until re-verification is due
    failing: bool = False  # listing its objects failed on the last try
    settling: bool = False  # complete, and waiting for a second matching listing


@dataclass
class _ModelState:
    bucket: str
    prefix: str
    versions: dict[int, _VersionState] = field(default_factory=dict)
    failing: bool = False  # the model's listing failed on the last poll


PollHook = Callable[[str, float, bool], None]


class StoreSource:
    """Polls an object store's prefixes and reports each model's complete set of ready versions.

    A version is ready when it is complete (`versions.incompleteness`) and its listing has
    not changed for `settle_seconds`. Polls run on an APScheduler job after `start()`;
    `poll_once()` runs one synchronously. The settle time defaults to one poll interval
    (the same listing on two consecutive polls), or 0 when a `ready_marker` is configured.

    The store's calls are the `ObjectStore`'s; everything else here is the same for every
    store. For metrics: `requests_last_poll` (listing pages and reads the last poll cost),
    `last_poll_seconds`, `poll_errors_total` (failed model and version listings), and the
    optional `on_poll(model, seconds, ok)` hook, called once per model per poll.
    """

    def __init__(
        self,
        models: Sequence[ModelLocation],
        callback: VersionsCallback,
        store: ObjectStore,
        *,
        poll_interval_seconds: float = 1.0,
        settle_seconds: float | None = None,
        ready_marker: str | None = None,
        reverify_every: int = 30,
        clock: Callable[[], float] = time.monotonic,
        on_poll: PollHook | None = None,
        max_parallel_listings: int = 16,
    ) -> None:
        if poll_interval_seconds <= 0:
            raise ValueError("poll_interval_seconds must be positive")
        if reverify_every < 1:
            raise ValueError("reverify_every must be at least 1")
        if settle_seconds is None and ready_marker is not None:
            settle_seconds = 0.0
        elif settle_seconds is None:
            # "The same listing on two consecutive polls": a little under one interval,
            # because a scheduled poll can start a few milliseconds earlier after its tick
            # than the one before it did.
            settle_seconds = poll_interval_seconds * _SETTLE_SLACK
        self._callback = callback
        self._store = store
        self._interval = poll_interval_seconds
        self._ready_marker = ready_marker
        self._reverify_every = reverify_every
        self._clock = clock
        self._on_poll = on_poll
        self._tracker = versions.SettleTracker(settle_seconds)
        self._models_lock = threading.Lock()
        self._models: dict[str, tuple[str, str]] = {}
        self._states: dict[str, _ModelState] = {}
        self._poll_lock = threading.Lock()  # one poll at a time; join() waits on it
        self._poll_index = 0
        self._stopping = threading.Event()
        self._scheduler: BackgroundScheduler | None = None
        self.requests_last_poll = 0
        self.last_poll_seconds = 0.0
        self.poll_errors_total = 0
        self._errors_lock = threading.Lock()
        self._parallel = max_parallel_listings
        # (model, version) -> the fingerprint of content that failed to load
        self._failed: dict[tuple[str, int], str] = {}
        self._failed_lock = threading.Lock()  # the manager reports from its own threads
        self.set_models(models)

    def set_models(self, models: Sequence[ModelLocation]) -> None:
        """Replace the watched models; the next poll scans the new set."""
        parsed: dict[str, tuple[str, str]] = {}
        for model in models:
            if model.name in parsed:
                raise ValueError(f"model {model.name!r} is listed twice")
            scheme, bucket, prefix = parse_store_uri(model.base_path)
            if scheme != self._store.scheme:
                raise ValueError(f"{model.base_path!r} is not a {self._store.scheme}:// path")
            parsed[model.name] = (bucket, prefix)
        with self._models_lock:
            self._models = parsed

    def start(self) -> None:
        """Start polling every `poll_interval_seconds`, the first poll right away."""
        if self._scheduler is not None or self._stopping.is_set():
            raise RuntimeError("a StoreSource can be started only once")
        # One worker is enough: max_instances=1 never runs two polls at once.
        # The worker is named so the tests' thread-leak check sees a poll outliving join().
        executor = ThreadPoolExecutor(
            1, pool_kwargs={"thread_name_prefix": f"{self._store.scheme}-source-poll"}
        )
        scheduler = BackgroundScheduler(executors={"default": executor})
        scheduler.add_job(
            self._poll_job,
            "interval",
            seconds=self._interval,
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
        )
        scheduler.start()
        self._scheduler = scheduler

    def stop(self) -> None:
        """Stop polling; a poll in flight ends after its current model and reports no more."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)

    def join(self, timeout: float | None = None) -> None:
        """Wait until a poll in flight has finished (call after `stop()`)."""
        if self._poll_lock.acquire(timeout=-1 if timeout is None else timeout):
            self._poll_lock.release()

    def poll_once(self) -> None:
        """Scan every watched model once and report each one whose listing worked.

        Does nothing once the source is stopped.
        """
        self._poll(None)

    def poll_models(self, names: Iterable[str]) -> None:
        """Scan just these models now, re-listing every one of their versions (a storage
        event said something under them changed); other models wait for the next poll."""
        self._poll(set(names))

    def recheck(self, model: str, version: int, fingerprint: str) -> None:
        """Content `fingerprint` of this version failed to load: list the version on every
        poll until its listing differs (a fixed upload), however settled it was."""
        with self._models_lock:
            if model not in self._models:
                return  # another source's model
        with self._failed_lock:
            self._failed[(model, version)] = fingerprint

    def models_under(self, bucket: str, key: str) -> list[str]:
        """The watched models whose base path holds the object `key` of `bucket`."""
        with self._models_lock:
            return [
                name for name, (b, prefix) in self._models.items()
                if b == bucket and key.startswith(prefix)
            ]

    def _poll(self, only: set[str] | None) -> None:
        if self._stopping.is_set():
            return
        with self._poll_lock:
            started = time.monotonic()
            now = self._clock()
            with self._models_lock:
                models = dict(self._models)
            self._drop_unwatched(models)
            if only is None:
                self._poll_index += 1
            else:
                models = {name: where for name, where in models.items() if name in only}
            counter = RequestCounter()

            def scan(name: str, bucket: str, prefix: str) -> None:
                if self._stopping.is_set():
                    return
                model_started = time.monotonic()
                ready = self._scan_model(name, bucket, prefix, now, counter, relist=only is not None)
                if self._on_poll is not None:
                    self._on_poll(name, time.monotonic() - model_started, ready is not None)
                # Nothing ready yet but a complete version settling: the answer is one
                # listing away, so give none (the daemon waits for it before serving).
                known = self._states.get(name)
                settling = known is not None and any(v.settling for v in known.versions.values())
                if ready is not None and not self._stopping.is_set() and (ready or not settling):
                    self._callback(name, ready)

            # Listings wait on the network, so models are listed side by side: at 1,000
            # models one after the other, a poll would take far longer than its interval.
            if len(models) <= 1 or self._parallel == 1:
                for name, (bucket, prefix) in models.items():
                    scan(name, bucket, prefix)
            else:
                with ThreadPool(min(self._parallel, len(models)), "store-source-list") as pool:
                    for _ in pool.map(lambda item: scan(item[0], *item[1]), models.items()):
                        pass
            if only is None:
                self.requests_last_poll = counter.count
                self.last_poll_seconds = time.monotonic() - started

    def _poll_job(self) -> None:
        # A bug must not end the polling for good; log it loudly and try again next time.
        try:
            self.poll_once()
        except Exception:
            log.exception("polling %s for model versions failed unexpectedly", self._store.scheme)

    def _count_error(self) -> None:
        with self._errors_lock:
            self.poll_errors_total += 1

    def _drop_unwatched(self, models: Mapping[str, tuple[str, str]]) -> None:
        for name in list(self._states):
            state = self._states[name]
            if models.get(name) != (state.bucket, state.prefix):
                del self._states[name]
                self._tracker.forget_others(name, ())
                self._forget_failed(name, ())

    def _scan_model(
        self,
        name: str,
        bucket: str,
        prefix: str,
        now: float,
        counter: RequestCounter,
        *,
        relist: bool = False,
    ) -> dict[int, VersionRef] | None:
        state = self._states.setdefault(name, _ModelState(bucket, prefix))
        try:
            folders = self._store.list_version_folders(bucket, prefix, counter)
        except StoreError as error:
            self._count_error()
            if not state.failing:
                log.warning(
                    "Could not list the versions of model %r at %s://%s/%s, so its versions "
                    "are left as they are until the listing works again: %s",
                    name, self._store.scheme, bucket, prefix, error,
                )
            state.failing = True
            return None
        if state.failing:
            log.info(
                "Listing the versions of model %r at %s://%s/%s works again",
                name, self._store.scheme, bucket, prefix,
            )
            state.failing = False
        scanned = {
            version: self._scan_version(name, bucket, version, folder, state, now, counter, relist)
            for version, folder in folders.items()
        }
        state.versions = scanned
        self._tracker.forget_others(name, scanned)
        self._forget_failed(name, scanned)
        return {v: s.ready for v, s in scanned.items() if s.ready is not None}

    def _forget_failed(self, model: str, keep: Iterable[int]) -> None:
        keep = set(keep)
        with self._failed_lock:
            for key in [k for k in self._failed if k[0] == model and k[1] not in keep]:
                del self._failed[key]

    def _scan_version(
        self,
        name: str,
        bucket: str,
        version: int,
        folder: str,
        model: _ModelState,
        now: float,
        counter: RequestCounter,
        relist: bool = False,
    ) -> _VersionState:
        state = model.versions.get(version)
        if state is None or state.prefix != folder:
            state = _VersionState(folder)
        with self._failed_lock:
            failed = self._failed.get((name, version))
        if state.settled and not relist and failed is None and not reverify_due(
            self._poll_index, name, version, self._reverify_every
        ):
            return state
        try:
            objects = self._store.list_version_objects(bucket, folder, counter)
            missing = versions.incompleteness(
                (o.relpath for o in objects), self._ready_marker,
                self._graph_reader(bucket, objects, counter),
            )
        except StoreError as error:
            # Keep what we knew: one failed request must not unload a serving version.
            self._count_error()
            if not state.failing:
                log.warning(
                    "Could not list version %d of model %r at %s://%s/%s, so it is left as "
                    "it is until the listing works again: %s",
                    version, name, self._store.scheme, bucket, folder, error,
                )
            state.failing = True
            return state
        state.failing = False
        fingerprint = listing_fingerprint(objects)
        if failed is not None and fingerprint != failed:
            with self._failed_lock:  # new content: it settles and is reported as usual
                if self._failed.get((name, version)) == failed:
                    del self._failed[(name, version)]
        settled = self._tracker.observe((name, version), fingerprint, now)
        state.settled = settled and missing is None
        state.settling = missing is None and not settled
        if state.settled:
            state.ready = VersionRef(
                f"{self._store.scheme}://{bucket}/{folder}", fingerprint, sum(o.size for o in objects)
            )
        # Otherwise `ready` keeps the last ready listing: a settled version whose content is
        # being rewritten stays reported (and served) until the new content settles.
        return state

    def _graph_reader(
        self, bucket: str, objects: Iterable[VersionObject], counter: RequestCounter
    ) -> Callable[[str], bool | None]:
        """Reads a version's graph file with ranged reads (for `versions.incompleteness`)."""
        by_path = {o.relpath: o for o in objects}

        def restores_variables(name: str) -> bool | None:
            obj = by_path[name]

            def read(offset: int, length: int) -> bytes:
                last = min(obj.size, offset + length) - 1
                if last < offset:
                    return b""
                counter.add()
                return self._store.read_range(bucket, obj, offset, last)

            return graph_restores_variables(name, obj.size, read)

        return restores_variables
