"""RateLimitedLog (one line per kind per interval, and a count of those left out) and the
refusal counter every server limit reports to."""

from __future__ import annotations

import logging

import pytest

from loader.serving.metrics import Metrics
from loader.serving.rate_limited_log import RateLimitedLog


def test_one_line_per_kind_per_interval_and_the_count_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    log = RateLimitedLog(logging.getLogger("test.ratelimited"), interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.ratelimited"):
        assert log.warning("header", "header too large from %s", "a")
        assert not log.warning("header", "header too large from %s", "b")
        assert not log.warning("header", "header too large from %s", "c")
        assert log.warning("body", "body too large")  # another kind is not held back
        now[0] += 10.0
        assert log.warning("header", "header too large from %s", "d")
    assert [r.getMessage() for r in caplog.records] == [
        "header too large from a",
        "body too large",
        "header too large from d (2 more like it in the last 10 s not logged)",
    ]


def test_refusals_are_exported_by_transport_and_reason() -> None:
    metrics = Metrics()
    metrics.refuse("rest", "header_too_large")
    metrics.refuse("rest", "header_too_large")
    metrics.refuse("grpc", "decode_budget")
    text = metrics.exposition().decode()
    assert 'modelwatch_refused_total{reason="header_too_large",transport="rest"} 2.0' in text
    assert 'modelwatch_refused_total{reason="decode_budget",transport="grpc"} 1.0' in text
