"""Prometheus metrics: requests, loads and unloads, versions, swaps, source polls, memory.

Each daemon has its own registry, so several servers in one process (tests) never share
counters. The names are modelwatch's own; the REST server exposes them at TF Serving's
path, `/monitoring/prometheus/metrics`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Self

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from loader.base import Code
from loader.manager.harness import Transition
from loader.manager.memory_guard import MemoryReport
from loader.serving.request_stats import AnsweredKey, Family, RequestStats
from policies.base import Phase

CONTENT_TYPE = CONTENT_TYPE_LATEST

# From 100 µs (a tiny model on the hot path) to 60 s (a large load).
_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


class RequestOutcome:
    """One request being counted and timed: the handler fills in the model and the status.

    A context manager (from `Metrics.request`); on exit it counts the request under its
    model, API, transport and status, and records its latency. An exception escaping the
    block counts as INTERNAL.
    """

    __slots__ = ("_api", "_metrics", "_started", "_transport", "code", "model")

    def __init__(self, metrics: Metrics, transport: str, api: str) -> None:
        self._metrics = metrics
        self._transport = transport
        self._api = api
        self.model = ""
        self.code = Code.OK

    def __enter__(self) -> Self:
        self._metrics.stats.started(self._transport)
        self._started = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        elapsed = time.perf_counter() - self._started
        if exc_type is not None:
            self.code = Code.INTERNAL
        self._metrics.answered(self.model, self._api, self._transport, self.code, elapsed)


class Metrics:
    """Every metric modelwatch exports, in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._available: dict[str, int] = {}  # the manager calls observers under its lock
        # The series key of each (model, api, transport, OK) answered; dict get and set
        # are atomic, and two threads making the same key make equal ones.
        self._answered_keys: dict[tuple[str, str, str, Code], AnsweredKey] = {}
        # Which model names requests are counted under; the daemon asks its manager.
        self.known_model: Callable[[str], bool] = lambda name: True
        r = self.registry
        # Requests answered, their latency and those in flight (request_stats.py: on every
        # request, so not prometheus_client's own metric objects).
        self.stats = RequestStats(_BUCKETS)
        self.requests = Family(self.stats.requests_family)
        self.request_latency = Family(self.stats.latency_family)
        self.in_flight = Family(self.stats.in_flight_family)
        for family in (self.requests, self.request_latency, self.in_flight):
            r.register(family)
        self.loads = Counter(
            "modelwatch_loads", "Version loads that ended, by outcome (ok or error).",
            ["model", "outcome"], registry=r,
        )
        self.load_latency = Histogram(
            "modelwatch_load_latency_seconds", "Time to load a version (fetch included).",
            ["model"], buckets=_BUCKETS, registry=r,
        )
        self.unloads = Counter("modelwatch_unloads", "Versions unloaded.", ["model"], registry=r)
        self.unload_latency = Histogram(
            "modelwatch_unload_latency_seconds",
            "Time from leaving the routing table to memory released (in-flight requests included).",
            ["model"], buckets=_BUCKETS, registry=r,
        )
        self.available = Gauge(
            "modelwatch_versions_available", "Versions available to requests.", ["model"],
            registry=r,
        )
        self.swaps = Counter(
            "modelwatch_swaps", "Times a version became available while another one served.",
            ["model"], registry=r,
        )
        self.batch_size = Histogram(
            "modelwatch_batch_size", "Rows in each batch run (padding included).", ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=r,
        )
        self.polls = Counter(
            "modelwatch_source_polls", "Storage listings of a model, by outcome.",
            ["model", "outcome"], registry=r,
        )
        self.poll_latency = Histogram(
            "modelwatch_source_poll_duration_seconds", "Time to list a model's versions.",
            ["model"], buckets=_BUCKETS, registry=r,
        )
        # Requests and connections turned away before they reach a model (a header, body,
        # tensor or connection over a server.* limit, a bad Host, a stream too many): the
        # reason is a fixed word of the code's, never a client's text.
        self.refused = Counter(
            "modelwatch_refused",
            "Requests, connections and streams refused for passing a server limit, by reason.",
            ["transport", "reason"], registry=r,
        )
        # -- request logging (issue 23; loader/serving/request_log.py) --
        self.request_log_records = Counter(
            "modelwatch_request_log_records", "Sampled requests written to the request log.",
            ["model"], registry=r,
        )
        self.request_log_dropped = Counter(
            "modelwatch_request_log_dropped",
            "Sampled requests not written to the request log, by reason (queue_full, error, stopped).",
            ["model", "reason"], registry=r,
        )
        # Deadlines: requests dropped before their model ran, their deadline (a REST
        # timeout, a gRPC call's own) gone while they waited for a batch or a worker thread.
        self.expired = Counter(
            "modelwatch_requests_expired",
            "Requests dropped before their model ran: their deadline passed while they queued.",
            ["model"], registry=r,
        )

    def refuse(self, transport: str, reason: str) -> None:
        """Count one refusal: `transport` is rest or grpc, `reason` a fixed snake_case word."""
        self.refused.labels(transport, reason).inc()

    def expire(self, model: str, count: int = 1) -> None:
        """Count requests for `model` dropped before it ran: their deadline passed."""
        self.expired.labels(model if self.known_model(model) else "").inc(count)

    def observe_transition(self, transition: Transition) -> None:
        """A manager observer: count loads, unloads, swaps and available versions."""
        model, phase = transition.model, transition.phase
        if phase is Phase.AVAILABLE:
            self.loads.labels(model, "ok").inc()
            self.load_latency.labels(model).observe(transition.seconds)
            if self._available.get(model, 0) > 0:
                self.swaps.labels(model).inc()
            self._set_available(model, +1)
        elif phase is Phase.ERROR:
            self.loads.labels(model, "error").inc()
            self.load_latency.labels(model).observe(transition.seconds)
        elif phase is Phase.UNLOADING:
            self._set_available(model, -1)
        elif phase is Phase.END and transition.previous is Phase.UNLOADING:
            self.unloads.labels(model).inc()
            self.unload_latency.labels(model).observe(transition.seconds)

    def _set_available(self, model: str, change: int) -> None:
        self._available[model] = self._available.get(model, 0) + change
        self.available.labels(model).set(self._available[model])

    def watch_memory(self, report: Callable[[], MemoryReport]) -> None:
        """Export the manager's memory figures, read at each scrape."""
        self.registry.register(_MemoryCollector(report))

    def observe_poll(self, model: str, seconds: float, ok: bool) -> None:
        """A source hook: one listing of one model."""
        self.polls.labels(model, "ok" if ok else "error").inc()
        self.poll_latency.labels(model).observe(seconds)

    def request(self, transport: str, api: str) -> RequestOutcome:
        """Count and time one request: `with metrics.request("rest", "predict") as outcome`."""
        return RequestOutcome(self, transport, api)

    def answered(self, model: str, api: str, transport: str, code: Code, seconds: float) -> None:
        """A request left: no longer in flight; count it and record its latency."""
        found = (model, api, transport, code)
        # A name already counted as answered OK is a model's (only a configured one can
        # answer OK), and asking again costs each request a call.
        key = self._answered_keys.get(found) if code is Code.OK else None
        if key is None:
            if model and not self.known_model(model):
                model = ""  # any name a client sends would otherwise become a labelled series
            key = (model, api, transport, code.name)
            if code is Code.OK:
                self._answered_keys[found] = key
        self.stats.answered(key, seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _MemoryCollector(Collector):
    """The memory figures, read from the manager when Prometheus scrapes."""

    def __init__(self, report: Callable[[], MemoryReport]) -> None:
        self._report = report

    def collect(self) -> Iterator[Metric]:
        report = self._report()
        usage = report.usage
        yield GaugeMetricFamily(
            "modelwatch_memory_resident_bytes",
            "The process's resident memory (RSS), which loading.memory_limit_bytes bounds.",
            value=usage.resident_bytes,
        )
        if usage.limit_bytes is not None:
            yield GaugeMetricFamily(
                "modelwatch_memory_limit_bytes", "loading.memory_limit_bytes.",
                value=usage.limit_bytes,
            )
        yield GaugeMetricFamily(
            "modelwatch_memory_reserved_bytes",
            "Bytes reserved by loads running (their estimates).", value=usage.reserved_bytes,
        )
        versions = GaugeMetricFamily(
            "modelwatch_version_memory_bytes",
            "Per version: the memory its load is expected to take (to load, loading) or "
            "was seen to keep (loaded).", labels=["model", "version"],
        )
        for (model, version), value in sorted(report.estimates.items()):
            versions.add_metric([model, str(version)], value)
        yield versions
        evictions = CounterMetricFamily(
            "modelwatch_evictions", "On-demand models unloaded to make room for a load.",
            labels=["model"],
        )
        for model, count in sorted(report.evictions.items()):
            evictions.add_metric([model], count)
        yield evictions
        refusals = CounterMetricFamily(
            "modelwatch_load_refusals",
            "Loads not started because they would pass loading.memory_limit_bytes.",
            labels=["model"],
        )
        for model, count in sorted(report.refusals.items()):
            refusals.add_metric([model], count)
        yield refusals
