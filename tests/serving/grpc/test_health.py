"""gRPC's standard health service on a real GrpcServer over a real manager, asked with
grpcio-health-checking's own stub (what Kubernetes' gRPC probes send)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis.prediction_service_pb2_grpc import PredictionServiceStub

from loader.app.parts import selection_policy
from loader.config.schema import ModelConfig
from loader.config.tfs_model_config import parse_model_server_config
from loader.manager.manager import ModelSpec
from loader.serving.grpc.server import GrpcServer
from loader.serving.grpc.services import GrpcApi
from policies.transition import TRANSITIONS
from tests.serving.grpc.test_services import DEFAULT, TIMEOUT, Serving, config_text, predict_request

Status = health_pb2.HealthCheckResponse.ServingStatus


@pytest.fixture(scope="module")
def serving(tfserving_testdata: Path) -> Iterator[Serving]:
    built = Serving()
    built.apply(parse_model_server_config(config_text(tfserving_testdata, DEFAULT)))
    yield built
    built.manager.stop()


@pytest.fixture
def served(serving: Serving) -> Iterator[tuple[GrpcApi, grpc.Channel]]:
    api = GrpcApi(serving.dataplane)
    server = GrpcServer(api, "127.0.0.1", 0, max_workers=2)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield api, channel
    channel.close()
    server.stop(0)
    server.join(10)


def check(channel: grpc.Channel, service: str) -> Any:
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT
    ).status


@pytest.mark.parametrize(
    "service", ["", "default", "tensorflow.serving.PredictionService",
                "tensorflow.serving.ModelService",
                "PredictionService", "ModelService"]  # the names TF Serving sets (server.cc)
)
def test_a_server_whose_models_are_available_is_serving(served: Any, service: str) -> None:
    _, channel = served
    assert check(channel, service) == Status.SERVING


def test_an_unknown_service_is_not_found(served: Any) -> None:
    _, channel = served
    with pytest.raises(grpc.RpcError) as raised:
        check(channel, "nope")
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "unknown service 'nope'"


def test_a_model_without_an_available_version_is_not_serving_nor_is_the_server(
    tfserving_testdata: Path, tmp_path: Path
) -> None:
    own = Serving()  # a manager of this test's own: its models change here
    try:
        models = parse_model_server_config(config_text(tfserving_testdata, DEFAULT))
        own.apply(models)
        models.append(ModelConfig(name="empty", base_path=str(tmp_path)))  # no version in it
        own.manager.set_models([
            ModelSpec(m.name, selection_policy(m), TRANSITIONS[m.transition], {}) for m in models
        ])
        api = GrpcApi(own.dataplane)
        server = GrpcServer(api, "127.0.0.1", 0, max_workers=2)
        server.start()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                assert check(channel, "empty") == Status.NOT_SERVING
                assert check(channel, "") == Status.NOT_SERVING
                assert check(channel, "default") == Status.SERVING
                own.manager.set_models([
                    ModelSpec(m.name, selection_policy(m), TRANSITIONS[m.transition], {})
                    for m in models[:1]
                ])
                assert check(channel, "") == Status.SERVING
        finally:
            server.stop(0)
            server.join(10)
    finally:
        own.manager.stop()


def test_a_draining_server_is_not_serving_and_refuses_predictions(served: Any) -> None:
    api, channel = served
    api.drain()
    assert check(channel, "") == Status.NOT_SERVING
    assert check(channel, "default") == Status.NOT_SERVING
    with pytest.raises(grpc.RpcError) as raised:
        PredictionServiceStub(channel).Predict(predict_request(), timeout=TIMEOUT)
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE


def test_watch_sends_the_status_now_and_unknown_services_as_such(served: Any) -> None:
    _, channel = served
    stub = health_pb2_grpc.HealthStub(channel)
    for service, status in (("", Status.SERVING), ("nope", Status.SERVICE_UNKNOWN)):
        stream = stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert next(stream).status == status
        stream.cancel()


def test_a_watch_hears_the_drain_and_its_stream_ends(served: Any) -> None:
    # A watcher must not hold the server's stop up for its whole grace period.
    api, channel = served
    stream = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT
    )
    assert next(stream).status == Status.SERVING
    api.drain()
    assert [answer.status for answer in stream] == [Status.NOT_SERVING]  # then the end
