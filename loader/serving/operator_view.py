"""What the operator page shows, gathered from what the daemon already knows.

Transport-agnostic: one JSON-able snapshot of every model (labels, versions with state and
error), the last transitions, each model's request rate and p99 over a short window,
storage health per model, and the batching queue depth. The REST app serves it as a page,
a JSON document and a stream of server-sent events (`loader.serving.rest.operator_page`).

Nothing here changes the server: the manager is only read, and a version is held for the
instant it takes to read its queue depth.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from loader.base import ServingError
from loader.manager.harness import Transition
from loader.serving.dataplane import DataPlane
from loader.serving.metrics import Metrics

# The page lists this many transitions, newest first; older ones are forgotten.
KEPT_TRANSITIONS = 50
# Request rates and p99 cover about this much of the recent past.
RATE_WINDOW_SECONDS = 30.0


@dataclass(frozen=True)
class TransitionRecord:
    """One version move, stamped with the wall-clock time it was seen."""

    time: float
    model: str
    version: int
    previous: str
    state: str
    seconds: float  # time spent in `previous`
    error: str | None


class TransitionLog:
    """A bounded ring of the latest transitions; a manager observer (cheap, lock-safe)."""

    def __init__(self, size: int = KEPT_TRANSITIONS, clock: Callable[[], float] = time.time) -> None:
        self.size = size
        self._records: deque[TransitionRecord] = deque(maxlen=size)
        self._lock = threading.Lock()
        self._clock = clock

    def observe(self, transition: Transition) -> None:
        """Record one move (the manager calls this under its own lock: keep it quick)."""
        record = TransitionRecord(
            self._clock(), transition.model, transition.version,
            transition.previous.name, transition.phase.name, transition.seconds, transition.error,
        )
        with self._lock:
            self._records.append(record)

    def recent(self) -> list[TransitionRecord]:
        """The kept transitions, newest first."""
        with self._lock:
            return list(reversed(self._records))


@dataclass(frozen=True)
class PollRecord:
    """How listing one model's storage has gone lately."""

    last_poll: float  # wall-clock time of the latest listing
    last_ok: float | None  # of the latest one that succeeded
    seconds: float  # how long the latest listing took
    failures_in_row: int
    failures_total: int
    polls_total: int


class PollHealth:
    """Per-model storage health, fed by the sources' `on_poll(model, seconds, ok)` hook."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._records: dict[str, PollRecord] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def observe(self, model: str, seconds: float, ok: bool) -> None:
        now = self._clock()
        with self._lock:
            old = self._records.get(model)
            self._records[model] = PollRecord(
                last_poll=now,
                last_ok=now if ok else (old.last_ok if old else None),
                seconds=seconds,
                failures_in_row=0 if ok else (old.failures_in_row if old else 0) + 1,
                failures_total=(old.failures_total if old else 0) + (0 if ok else 1),
                polls_total=(old.polls_total if old else 0) + 1,
            )

    def of(self, model: str) -> PollRecord | None:
        with self._lock:
            return self._records.get(model)


@dataclass(frozen=True)
class _Totals:
    """One model's cumulative request counts and latency buckets at one moment."""

    requests: float
    errors: float
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count)


@dataclass(frozen=True)
class Rates:
    """One model's traffic over the window: requests and errors per second, and p99."""

    requests_per_second: float
    errors_per_second: float
    p99_seconds: float | None  # None without requests in the window


class RequestRates:
    """Rates and p99 per model over a short window, from the metrics' own counter and
    histogram (read as objects, not as exposition text).

    Samples are taken when a snapshot is asked for (about once a second while the page is
    open), so nothing runs while nobody looks; the first answer has no rates yet.
    """

    def __init__(
        self,
        metrics: Metrics,
        window_seconds: float = RATE_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self.window_seconds = window_seconds
        self._clock = clock
        self._samples: deque[tuple[float, dict[str, _Totals]]] = deque()
        self._lock = threading.Lock()

    def sample(self) -> dict[str, Rates]:
        """Take a sample now; rates against the oldest sample still in the window."""
        now, totals = self._clock(), self._totals()
        with self._lock:
            samples = self._samples
            samples.append((now, totals))
            # Keep one sample at or beyond the window's start as the base to compare with,
            # but none from long before it (the page was closed a while): rates over an
            # hour would read as if they were the last seconds'.
            start = now - self.window_seconds
            while len(samples) > 1 and (
                samples[0][0] < start - self.window_seconds or samples[1][0] <= start
            ):
                samples.popleft()
            then, before = samples[0]
        if now <= then:
            return {}
        return {
            model: _rates(before.get(model), current, now - then)
            for model, current in totals.items()
        }

    def _totals(self) -> dict[str, _Totals]:
        requests: dict[str, float] = {}
        errors: dict[str, float] = {}
        buckets: dict[str, dict[float, float]] = {}
        for family in self._metrics.requests.collect():
            for s in family.samples:
                if s.name.endswith("_total") and s.labels["model"]:
                    model = s.labels["model"]
                    requests[model] = requests.get(model, 0.0) + s.value
                    if s.labels["status"] != "OK":
                        errors[model] = errors.get(model, 0.0) + s.value
        for family in self._metrics.request_latency.collect():
            for s in family.samples:
                if s.name.endswith("_bucket") and s.labels["model"]:
                    per_bound = buckets.setdefault(s.labels["model"], {})
                    bound = float(s.labels["le"])
                    per_bound[bound] = per_bound.get(bound, 0.0) + s.value
        return {
            model: _Totals(count, errors.get(model, 0.0), tuple(sorted(buckets.get(model, {}).items())))
            for model, count in requests.items()
        }


def _rates(before: _Totals | None, now: _Totals, seconds: float) -> Rates:
    base = before or _Totals(0.0, 0.0, ())
    start = dict(base.buckets)
    deltas = [(bound, count - start.get(bound, 0.0)) for bound, count in now.buckets]
    return Rates(
        (now.requests - base.requests) / seconds,
        (now.errors - base.errors) / seconds,
        quantile(0.99, deltas),
    )


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The q-quantile of a histogram's cumulative (upper bound, count) buckets, as
    Prometheus' histogram_quantile estimates it (linear within the bucket); None if empty."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower  # past the last finite bound: that bound is all we know
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


class OperatorView:
    """Everything the operator page shows, as one JSON-able snapshot."""

    def __init__(
        self,
        dataplane: DataPlane,
        metrics: Metrics,
        *,
        base_paths: Callable[[], Mapping[str, str]] = dict,
        transitions: TransitionLog | None = None,
        polls: PollHealth | None = None,
        rates: RequestRates | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dataplane = dataplane
        self._metrics = metrics
        self._base_paths = base_paths
        self.transitions = transitions or TransitionLog()
        self.polls = polls or PollHealth()
        self._rates = rates or RequestRates(metrics)
        self._clock = clock
        self._started = clock()

    def snapshot(self) -> dict[str, Any]:
        """The page's whole state now: models, transitions and server figures."""
        rates = self._rates.sample()
        transitions = self.transitions.recent()
        since: dict[tuple[str, int], float] = {}
        for record in reversed(transitions):  # oldest first: the newest move wins
            since[(record.model, record.version)] = record.time
        base_paths = self._base_paths()
        models = []
        for name, labels, statuses in self._dataplane.overview():
            labelled: dict[int, list[str]] = {}
            for label, version in sorted(labels.items()):
                labelled.setdefault(version, []).append(label)
            poll = self.polls.of(name)
            rate = rates.get(name)
            models.append({
                "name": name,
                "base_path": base_paths.get(name),
                "labels": labels,
                "versions": [
                    {
                        "version": s.version,
                        "state": s.state,
                        "error_code": s.error_code.name,
                        "error_message": s.error_message,
                        "memory_bytes": s.memory_bytes,
                        "labels": labelled.get(s.version, []),
                        "since": since.get((name, s.version)),
                    }
                    for s in statuses
                ],
                "requests": asdict(rate) if rate is not None else None,
                "source": asdict(poll) if poll is not None else None,
                "queued": self._queued(name, [s.version for s in statuses if s.state == "AVAILABLE"]),
            })
        return {
            "time": self._clock(),
            "started": self._started,
            "in_flight": sum(
                s.value for f in self._metrics.in_flight.collect() for s in f.samples
            ),
            "memory": asdict(self._dataplane.memory()),
            "rate_window_seconds": self._rates.window_seconds,
            "models": models,
            "transitions": [asdict(r) for r in transitions],
            "kept_transitions": self.transitions.size,
        }

    def _queued(self, model: str, versions: list[int]) -> int | None:
        """Requests waiting for a batch across the model's available versions; None when
        the model does not batch."""
        total: int | None = None
        for version in versions:
            try:
                lease = self._dataplane.hold_loaded(model, version)
            except ServingError:  # unloaded since the status was read
                continue
            with lease:
                queued = getattr(lease.servable, "queued", None)
            if isinstance(queued, int):
                total = (total or 0) + queued
        return total
