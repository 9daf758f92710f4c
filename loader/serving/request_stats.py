"""The request metrics: requests answered, their latency, and those in flight.

Counted on every request of every transport, so at a cost per request of one lock and a
few dictionary steps: prometheus_client's labelled Counter, Histogram and Gauge took
about 3 us a request (a lock per increment, a call chain per child, a bucket walk in
Python). The registry reads the counts as the same families those metrics export
(`modelwatch_requests` with `_total` and `_created`, `modelwatch_request_latency_seconds`
with `_bucket`, `_count`, `_sum` and `_created`, `modelwatch_requests_in_flight`).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

# How prometheus_client writes a bucket's bound (`le`): Go's float formatting. Typed here,
# as prometheus_client does not annotate it.
_bound_text: Callable[[float], str] = floatToGoString

# (model, api, transport, status) of a requests series; (model, api, transport) of latency.
AnsweredKey = tuple[str, str, str, str]
LatencyKey = tuple[str, str, str]


class _Latency:
    """One latency series: a count per bucket (the last one +Inf), the sum, its creation."""

    __slots__ = ("buckets", "created", "total")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size
        self.total = 0.0
        self.created = time.time()


class RequestStats:
    """Counts requests as they start and as they are answered; thread-safe."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = tuple(bounds)
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self._answered: dict[AnsweredKey, list[float]] = {}  # [count, created]
        self._latency: dict[LatencyKey, _Latency] = {}

    def started(self, transport: str) -> None:
        """A request of `transport` is in flight."""
        with self._lock:
            self._in_flight[transport] = self._in_flight.get(transport, 0) + 1

    def answered(self, key: AnsweredKey, seconds: float) -> None:
        """A request `started` before was answered under `key` in `seconds`: count it and
        its latency, and take it out of the requests in flight."""
        bucket = bisect.bisect_left(self._bounds, seconds)  # the first bound >= seconds
        model, api, transport, _ = key
        with self._lock:
            self._in_flight[transport] = self._in_flight.get(transport, 0) - 1
            counted = self._answered.get(key)
            if counted is None:
                counted = self._answered[key] = [0, time.time()]
            counted[0] += 1
            latency = self._latency.get((model, api, transport))
            if latency is None:
                latency = self._latency[(model, api, transport)] = _Latency(len(self._bounds) + 1)
            latency.buckets[bucket] += 1
            latency.total += seconds

    def requests_family(self) -> Metric:
        family = CounterMetricFamily(
            "modelwatch_requests", "Requests answered, by model, API, transport and status.",
            labels=["model", "api", "transport", "status"],
        )
        with self._lock:
            answered = [(key, count, created) for key, (count, created) in self._answered.items()]
        for key, count, created in answered:
            family.add_metric(key, float(count), created=created)
        return family

    def latency_family(self) -> Metric:
        name = "modelwatch_request_latency_seconds"
        family = HistogramMetricFamily(
            name, "Time to answer a request.", labels=["model", "api", "transport"]
        )
        with self._lock:
            series = [(key, list(s.buckets), s.total, s.created) for key, s in self._latency.items()]
        bounds = [_bound_text(b) for b in self._bounds] + ["+Inf"]
        for key, buckets, total, created in series:
            cumulative, running = [], 0
            for bound, count in zip(bounds, buckets, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            family.add_metric(key, cumulative, total)
            # HistogramMetricFamily has no `created`; the exposition writes these apart.
            labels = dict(zip(("model", "api", "transport"), key, strict=True))
            family.samples.append(Sample(f"{name}_created", labels, created))
        return family

    def in_flight_family(self) -> Metric:
        family = GaugeMetricFamily(
            "modelwatch_requests_in_flight", "Requests being answered now.", labels=["transport"]
        )
        with self._lock:
            in_flight = list(self._in_flight.items())
        for transport, count in in_flight:
            family.add_metric([transport], float(count))
        return family


class Family(Collector):
    """One family of the request metrics, as the registry and the operator view read it."""

    def __init__(self, family: Callable[[], Metric]) -> None:
        self._family = family

    def collect(self) -> Iterator[Metric]:
        yield self._family()
