"""REST predicts into the request log, over both ways a request reaches the prediction
routes (the fast path and ASGI), for a batching model whose answer arrives in a callback
on the event loop: logged as the PredictRequest a gRPC client sends, with its answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from loader.base import VersionRef
from loader.config.schema import BatchingConfig
from loader.manager.manager import Manager, ModelSpec
from loader.servables.batching import BatchingServable
from loader.serving.dataplane import DataPlane
from loader.serving.metrics import Metrics
from loader.serving.request_log import LogTarget, RequestLog
from loader.serving.rest.app import RestApi
from loader.serving.rest.server import RestServer, bind
from policies.selection import All
from policies.transition import availability_preserving
from tests.fakes import refs
from tests.servables.test_batching import RecordingServable


@pytest.fixture(params=["fast", "asgi"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[httpx.Client, RequestLog]]:
    def load(model: str, version: int, ref: VersionRef) -> BatchingServable:
        return BatchingServable(RecordingServable(), BatchingConfig(num_batch_threads=1), name=model)

    manager = Manager(load, load_retries=0)
    manager.set_models([ModelSpec("m", All(), availability_preserving)])
    manager.on_versions("m", refs(4))
    assert manager.wait_until(lambda: manager.status("m")[0].state == "AVAILABLE", 10)
    metrics = Metrics()
    request_log = RequestLog(metrics)
    request_log.configure({"m": LogTarget(1.0, str(tmp_path / "m"))})
    request_log.start()
    api = RestApi(DataPlane(manager), metrics, request_log=request_log)
    server = RestServer(api.app, bind("127.0.0.1", 0), fast_path=request.param == "fast")
    server.start()
    assert server.wait_started(10)
    http = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30)
    yield http, request_log
    http.close()
    server.stop()
    server.join(10)
    request_log.stop()
    request_log.join(10)
    manager.stop()
    manager.join()


def test_a_batched_predict_is_logged_as_the_grpc_request_with_its_answer(
    client: tuple[httpx.Client, RequestLog], tmp_path: Path
) -> None:
    http, request_log = client
    answer = http.post("/v1/models/m/labels/stable:predict",
                       json={"signature_name": "double", "instances": [[1.0], [2.0]]})
    assert answer.status_code == 400  # no such label: nothing to log
    answer = http.post("/v1/models/m:predict",
                       json={"signature_name": "double", "instances": [[1.0], [2.0]]})
    assert answer.status_code == 200, answer.text
    request_log.stop()
    request_log.join(10)
    (record,) = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in
                 tf.data.TFRecordDataset([str(p) for p in tmp_path.glob("m-*")])]
    logged = record.predict_log
    assert logged.request.model_spec.name == "m"
    assert logged.request.model_spec.signature_name == "double"
    assert tf.make_ndarray(logged.request.inputs["x"]).tolist() == [[1.0], [2.0]]
    assert tf.make_ndarray(logged.response.outputs["y"]).tolist() == [[2.0], [4.0]]
    assert tf.make_ndarray(logged.response.outputs["z"]).tolist() == [[2.0], [3.0]]
    assert logged.response.model_spec.version.value == 4
    assert (record.log_metadata.model_spec.name, record.log_metadata.model_spec.version.value,
            record.log_metadata.model_spec.signature_name) == ("m", 4, "double")
