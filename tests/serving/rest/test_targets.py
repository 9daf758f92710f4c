"""The REST routes' targets: TF Serving's patterns on the raw path, parts decoded once
matched, and the fast path's target cache bounded in bytes."""

from __future__ import annotations

import tracemalloc

import pytest

from loader.serving.rest import targets
from loader.serving.rest.targets import (
    MAX_KEPT_TARGET_BYTES,
    MAX_TARGET_CACHE_BYTES,
    model_of,
    parse_prediction,
    prediction_target,
)


@pytest.mark.parametrize(("path", "target"), [
    (b"/v1/models/m:predict", ("predict", "m", None, None)),
    (b"/V1/MODELS/m/Versions/12:REGRESS", ("regress", "m", "12", None)),
    (b"/v1/models/%6d/labels/st%61ble:classify", ("classify", "m", None, "stable")),
    (b"/v1/models/m%2Fversions%2F1:predict", ("predict", "m/versions/1", None, None)),
    (b"/v1/models/m%3Apredict:predict", ("predict", "m:predict", None, None)),
    (b"/v1/models/%C3%A9%ff:predict", ("predict", "\u00e9\ufffd", None, None)),
    (b"/v1/models/m%3apredict", None),
    (b"/v1/models/m/versions/%D9%A1:predict", None),
    (b"/v1/models/m/versions/\xd9\xa1:predict", None),
    (b"/v1/models/m/versions/-1:predict", None),
    (b"/v2/models/m/infer", ("infer", "m", None, None)),
    (b"/v2/models/m%2Fx/versions/3/infer", ("infer", "m/x", "3", None)),
    (b"/v2/models/m/versions/x/infer", None),
    (b"/V2/models/m/infer", None),  # Triton's routes are case-sensitive
])
def test_predictions_are_routed_raw_then_decoded(path, target):
    assert parse_prediction(path) == target


def test_the_fast_path_leaves_escapes_and_queries_to_asgi():
    assert prediction_target(b"/v1/models/m/versions/1:predict") == ("predict", "m", "1", None)
    for url in (b"/v1/models/%6d:predict", b"/v1/models/m:predict?x", b"/v1/models/m:predict#f",
                "/v1/models/m/versions/\u0661:predict".encode()):
        assert prediction_target(url) is None


def test_the_fast_path_takes_v2_infer_as_it_takes_predictions():
    assert prediction_target(b"/v2/models/m/versions/2/infer") == ("infer", "m", "2", None)
    for url in (b"/v2/models/%6d/infer", b"/v2/models/m/infer?x", b"/v2/models/m/ready"):
        assert prediction_target(url) is None


def test_model_of_names_the_decoded_model():
    assert model_of({"raw_path": b"/v1/models/a%2Fb/versions/1"}) == "a/b"
    assert model_of({"raw_path": b"/v1/models"}) is None
    assert model_of({"raw_path": b"/healthz"}) is None
    assert model_of({"path": "/v1/models/a%b/labels/x:predict"}) == "a%b"  # no raw_path: escaped again


def test_long_targets_are_decoded_each_time_and_never_kept():
    targets._TARGETS.clear()
    name = b"m" * (1024 * 1024)
    assert prediction_target(b"/v1/models/" + name + b":predict") == (
        "predict", name.decode(), None, None,
    )
    assert targets._TARGETS == {}


def test_the_target_cache_is_bounded_in_bytes():
    """10,000 different targets, up to 8 KiB long, hold at most the cache's budget."""
    targets._TARGETS.clear()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(10_000):
            length = (64, MAX_KEPT_TARGET_BYTES, 8192)[i % 3] - len(b"/v1/models/:predict")
            url = b"/v1/models/" + b"%08d" % i + b"m" * (length - 8) + b":predict"
            assert prediction_target(url) is not None
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held <= MAX_TARGET_CACHE_BYTES, held
    assert targets._TARGETS  # the short ones are kept
    targets._TARGETS.clear()
