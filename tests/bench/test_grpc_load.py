"""The gRPC frame and h2load's output (bench/grpc_load.py)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.grpc_load import grpc_frame, parse_log, parse_summary, predict_request_bytes


def test_a_frame_is_the_flag_the_big_endian_length_and_the_message() -> None:
    message = bytes(range(200)) * 3
    frame = grpc_frame(message)
    assert frame[0] == 0
    assert int.from_bytes(frame[1:5], "big") == 600
    assert frame[5:] == message
    assert grpc_frame(b"") == b"\x00\x00\x00\x00\x00"


def test_the_framed_predict_request_parses_back_to_the_instance() -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    instance = [0.25 * i - 3 for i in range(64)]
    frame = grpc_frame(predict_request_bytes("mlp", instance))
    length = int.from_bytes(frame[1:5], "big")
    request = predict_pb2.PredictRequest()
    request.ParseFromString(frame[5:5 + length])
    assert len(frame) == 5 + length
    assert request.model_spec.name == "mlp"
    assert request.model_spec.signature_name == "serving_default"
    x = tf.make_ndarray(request.inputs["x"])
    assert x.dtype == np.float32 and x.shape == (1, 64)
    assert np.array_equal(x[0], np.asarray(instance, np.float32))


def test_log_rows_become_offsets_from_the_first_start_in_seconds() -> None:
    text = ("1700000000002000\t200\t1500\n"
            "garbage line\n"
            "1700000000000000\t200\t900\n"
            "1700000000001000\t503\t12000\n")
    rows = parse_log(text)
    assert [(r.offset_s, r.status, r.latency_s) for r in rows] == [
        (0.0, 200, 0.0009), (0.001, 503, 0.012), (0.002, 200, 0.0015)]
    assert parse_log("") == ()


SUMMARY = """
finished in 2.00s, 1475.00 req/s, 190.20KB/s
requests: 2950 total, 2951 started, 2950 done, 2940 succeeded, 10 failed, 3 errored, 1 timeout
status codes: 2950 2xx, 0 3xx, 0 4xx, 0 5xx
"""


def test_the_summary_counts_are_read() -> None:
    assert parse_summary(SUMMARY) == {"total": 2950, "started": 2951, "done": 2950,
                                      "succeeded": 2940, "failed": 10, "errored": 3,
                                      "timeout": 1}
    with pytest.raises(RuntimeError, match="no request counts"):
        parse_summary("connect error")
