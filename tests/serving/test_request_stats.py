"""RequestStats: the request metrics export exactly what prometheus_client's own metric
objects export for the same requests, and lose no count between threads."""

from __future__ import annotations

import re
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from loader.serving.request_stats import Family, RequestStats

BOUNDS = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0)
# (model, api, transport, status, seconds): on a bound, between bounds, past the last one
ANSWERS = [
    ("m", "predict", "rest", "OK", 0.001),
    ("m", "predict", "rest", "OK", 0.0042),
    ("m", "predict", "grpc", "OK", 0.00005),
    ("", "predict", "rest", "NOT_FOUND", 0.0003),
    ("m", "classify", "rest", "INVALID_ARGUMENT", 42.0),
]


def ours() -> tuple[CollectorRegistry, RequestStats]:
    registry = CollectorRegistry()
    stats = RequestStats(BOUNDS)
    for family in (stats.requests_family, stats.latency_family, stats.in_flight_family):
        registry.register(Family(family))
    return registry, stats


def without_times(text: bytes) -> str:
    return re.sub(r"(_created\{[^}]*\}) \S+", r"\1 T", text.decode())


def test_the_exposition_is_prometheus_clients_own() -> None:
    theirs = CollectorRegistry()
    requests = Counter("modelwatch_requests", "Requests answered, by model, API, transport and "
                       "status.", ["model", "api", "transport", "status"], registry=theirs)
    latency = Histogram("modelwatch_request_latency_seconds", "Time to answer a request.",
                        ["model", "api", "transport"], buckets=BOUNDS, registry=theirs)
    in_flight = Gauge("modelwatch_requests_in_flight", "Requests being answered now.",
                      ["transport"], registry=theirs)
    registry, stats = ours()
    for model, api, transport, status, seconds in ANSWERS:
        in_flight.labels(transport).inc()
        stats.started(transport)
        in_flight.labels(transport).dec()
        requests.labels(model, api, transport, status).inc()
        latency.labels(model, api, transport).observe(seconds)
        stats.answered((model, api, transport, status), seconds)
    in_flight.labels("rest").inc()
    stats.started("rest")

    expected = without_times(generate_latest(theirs))
    assert without_times(generate_latest(registry)) == expected
    assert 'le="0.001",model="m",transport="rest"} 1.0' in expected  # the bound is inclusive
    assert 'modelwatch_requests_in_flight{transport="rest"} 1.0' in expected


def test_no_count_is_lost_between_threads() -> None:
    registry, stats = ours()
    per_thread = 2000

    def answer() -> None:
        for _ in range(per_thread):
            stats.started("grpc")
            stats.answered(("m", "predict", "grpc", "OK"), 0.002)

    threads = [threading.Thread(target=answer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    labels = {"model": "m", "api": "predict", "transport": "grpc"}
    assert registry.get_sample_value(
        "modelwatch_requests_total", {**labels, "status": "OK"}
    ) == 4 * per_thread
    assert registry.get_sample_value(
        "modelwatch_request_latency_seconds_bucket", {**labels, "le": "0.01"}
    ) == 4 * per_thread
    assert registry.get_sample_value(
        "modelwatch_requests_in_flight", {"transport": "grpc"}
    ) == 0.0
