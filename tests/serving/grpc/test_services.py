"""The gRPC API end to end: a real manager loading TF Serving's test models, the real
GrpcServer on 127.0.0.1, and TF Serving's own client stubs over a real channel."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from loader.app.parts import selection_policy
from loader.base import Code, InvalidArgument, ServingError, VersionRef
from loader.config.schema import ConfigError, ModelConfig
from loader.config.tfs_model_config import parse_model_server_config
from loader.manager.manager import Manager, ModelSpec
from loader.servables.savedmodel import load_saved_model
from loader.servables.tensor_proto import from_numpy, to_numpy
from loader.serving.dataplane import DataPlane
from loader.serving.decode_budget import DecodeBudget
from loader.serving.grpc.predict_inputs import INLINE_DECODED_BYTES
from loader.serving.grpc.server import GrpcServer
from loader.serving.grpc.services import GrpcApi
from loader.serving.metrics import Metrics
from policies.transition import TRANSITIONS

TIMEOUT = 60.0


class Serving:
    """A real Manager and DataPlane. `apply` is the test's honest stand-in for the
    daemon's reload: serve exactly these models, scan their folders, and wait (as TF
    Serving's reload does) until the versions they aspire to are available."""

    def __init__(self) -> None:
        self.manager = Manager(
            lambda model, version, ref: load_saved_model(ref.uri), load_retries=0
        )
        self.dataplane = DataPlane(self.manager)

    def reload(
        self, config: model_server_config_pb2.ModelServerConfig, timeout: float | None
    ) -> None:
        """What the daemon does with a HandleReloadConfigRequest's config (the caller's
        deadline aside: these models load in well under any test's deadline)."""
        try:
            models = parse_model_server_config(config)
        except ConfigError as error:
            raise InvalidArgument(str(error)) from None
        self.apply(models)

    def apply(self, models: list[ModelConfig]) -> None:
        self.manager.set_models([
            ModelSpec(
                m.name, selection_policy(m), TRANSITIONS[m.transition], dict(m.version_labels)
            )
            for m in models
        ])
        wanted: dict[str, frozenset[int]] = {}
        for model in models:
            ready = {
                int(p.name): VersionRef(str(p), p.name)
                for p in Path(model.base_path).iterdir() if p.name.isdigit()
            }
            wanted[model.name] = selection_policy(model)(ready.keys())
            self.manager.on_versions(model.name, ready)
        if not self.manager.wait_until(lambda: self._serving(wanted), TIMEOUT):
            raise ServingError(f"models did not become available: {sorted(wanted)}")

    def _serving(self, wanted: dict[str, frozenset[int]]) -> bool:
        if self.manager.models() != sorted(wanted):
            return False
        for name, versions in wanted.items():
            try:
                statuses = self.manager.status(name)
            except ServingError:
                return False
            if {s.version for s in statuses if s.state == "AVAILABLE"} != versions:
                return False
        return True


def config_text(testdata: Path, *models: tuple[str, str, str]) -> str:
    entries = "".join(
        f'config {{ name: "{name}" base_path: "{testdata / folder}" model_platform: '
        f'"tensorflow" {extra} }} '
        for name, folder, extra in models
    )
    return f"model_config_list {{ {entries}}}"


DEFAULT = ("default", "saved_model_half_plus_two_cpu", "")
TWO = ("two", "saved_model_half_plus_two_2_versions",
       'model_version_policy { all {} } version_labels { key: "stable" value: 123 } '
       'version_labels { key: "canary" value: 124 }')
ONE_OF_TWO = ("b", "saved_model_half_plus_two_2_versions", "")
NO_MODELS = "model_config_list {}"


@pytest.fixture(scope="module")
def serving(tfserving_testdata: Path) -> Iterator[Serving]:
    built = Serving()
    built.apply(parse_model_server_config(config_text(tfserving_testdata, DEFAULT, TWO)))
    yield built
    built.manager.stop()


@dataclass
class Client:
    server: GrpcServer
    channel: grpc.Channel
    predict: prediction_service_pb2_grpc.PredictionServiceStub
    models: model_service_pb2_grpc.ModelServiceStub


@pytest.fixture
def connect() -> Iterator[Any]:
    started: list[Client] = []

    def start(api: GrpcApi) -> Client:
        server = GrpcServer(api, "127.0.0.1", 0, max_workers=4)
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        client = Client(
            server,
            channel,
            prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(channel),
        )
        started.append(client)
        return client

    yield start
    for client in started:
        client.channel.close()
        client.server.stop(0)
        client.server.join(10)


@pytest.fixture
def client(serving: Serving, connect: Any) -> Client:
    return connect(GrpcApi(serving.dataplane))


def failure(call: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=TIMEOUT)
    return raised.value.code(), raised.value.details()


def predict_request(
    model: str = "default", x: Any = ((2.0,), (3.0,)), **spec: Any
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    if x is not None:
        from_numpy(np.asarray(x, np.float32), proto=request.inputs["x"])
    return request


def example_input(target: Any, *xs: float, context: float | None = None) -> None:
    listed = target.example_list_with_context if context is not None else target.example_list
    if context is not None:
        listed.context.features.feature["x"].float_list.value.append(context)
    for x in xs:
        added = listed.examples.add()
        if x == x:  # NaN means: leave x to the context
            added.features.feature["x"].float_list.value.append(x)


# ---- Predict ------------------------------------------------------------------------


def test_predict_latest_answers_with_typed_fields_and_the_model_spec(client: Client) -> None:
    response = client.predict.Predict(predict_request(), timeout=TIMEOUT)
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("default", 123, "serving_default")
    y = response.outputs["y"]
    assert y.dtype == types_pb2.DT_FLOAT and list(y.float_val) == [3.0, 3.5]
    assert [d.size for d in y.tensor_shape.dim] == [2, 1] and not y.tensor_content


def test_predict_takes_a_flat_batch_as_tf_serving_does(client: Client) -> None:
    response = client.predict.Predict(predict_request(x=[2.0, 3.0, 4.0]), timeout=TIMEOUT)
    assert to_numpy(response.outputs["y"]).tolist() == [3.0, 3.5, 4.0]


@pytest.mark.parametrize("rows", [10_000, 40_000], ids=["on-the-loop", "on-a-thread"])
def test_predict_of_a_large_tensor_answers_whole(client: Client, rows: int) -> None:
    # 40,000 floats (160 KB) pass INLINE_DECODED_BYTES: decoded, run and encoded on a
    # worker thread; 10,000 stay on the event loop. Both answer the same way.
    x = np.arange(rows, dtype=np.float32).reshape(rows, 1)
    assert (x.nbytes > INLINE_DECODED_BYTES) == (rows == 40_000)
    response = client.predict.Predict(predict_request(x=x), timeout=TIMEOUT)
    assert np.array_equal(to_numpy(response.outputs["y"]), x / 2 + 2)
    assert response.model_spec.version.value == 123


def filled_out(rows: int, model: str = "default") -> predict_pb2.PredictRequest:
    """A few bytes on the wire that TensorFlow's fill rule makes into `rows` x 1 floats."""
    request = predict_request(model, x=None)
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add().size = rows
    request.inputs["x"].tensor_shape.dim.add().size = 1
    request.inputs["x"].float_val.append(1.0)
    return request


def test_a_filled_out_tensor_is_decoded_by_its_decoded_size(client: Client) -> None:
    # Small on the wire, large decoded: decoded off the event loop, answered whole.
    request = filled_out(40_000)
    assert request.ByteSize() < 100
    y = to_numpy(client.predict.Predict(request, timeout=TIMEOUT).outputs["y"])
    assert y.shape == (40_000, 1) and bool((y == 2.5).all())


def test_a_fill_out_past_the_limit_is_refused_and_counted(serving: Serving, connect: Any) -> None:
    metrics = Metrics()
    client = connect(GrpcApi(serving.dataplane, metrics=metrics, max_decoded_bytes=1 << 20))
    assert failure(client.predict.Predict, filled_out(1 << 28)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "the request's inputs would take 1073741824 bytes decoded, more than "
        "server.max_decoded_tensor_bytes (1048576); the largest is x, a DT_FLOAT tensor of "
        "shape [268435456,1]",
    )
    registry = metrics.registry
    assert registry.get_sample_value(
        "modelwatch_refused_total", {"transport": "grpc", "reason": "decoded_tensor_too_large"}
    ) == 1
    assert registry.get_sample_value("modelwatch_requests_total", {
        "model": "default", "api": "predict", "transport": "grpc", "status": "INVALID_ARGUMENT",
    }) == 1
    assert client.predict.Predict(filled_out(1000), timeout=TIMEOUT).outputs["y"]


def test_inputs_the_signature_lacks_are_refused_by_name_without_decoding(client: Client) -> None:
    request = predict_request()
    for alias in ("z1", "z2"):
        request.inputs[alias].CopyFrom(filled_out(1 << 40).inputs["x"])
    code, message = failure(client.predict.Predict, request)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("input size does not match signature: 3!=1")
    assert "Sent extra: {z1,z2}" in message


def test_an_answer_past_the_send_limit_is_refused_and_counted(
    serving: Serving, connect: Any
) -> None:
    metrics = Metrics()
    client = connect(GrpcApi(serving.dataplane, metrics=metrics, max_message_bytes=1 << 20))
    code, message = failure(client.predict.Predict, filled_out(400_000))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert message.startswith("the answer would take 16")
    assert message.endswith("bytes, more than the server sends (server.max_request_bytes: 1048576)")
    assert metrics.registry.get_sample_value(
        "modelwatch_refused_total", {"transport": "grpc", "reason": "response_too_large"}
    ) == 1
    assert metrics.registry.get_sample_value("modelwatch_requests_total", {
        "model": "default", "api": "predict", "transport": "grpc", "status": "RESOURCE_EXHAUSTED",
    }) == 1


def test_large_inputs_wait_for_room_in_the_decode_budget(serving: Serving, connect: Any) -> None:
    metrics = Metrics()
    budget = DecodeBudget(1 << 20, wait_seconds=0.05)
    client = connect(GrpcApi(serving.dataplane, metrics=metrics, decode_budget=budget))
    assert budget.try_reserve(budget.limit)  # others hold all of it
    code, message = failure(client.predict.Predict, filled_out(40_000))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert message.startswith("the server is busy decoding other requests")
    # Small inputs take no part; once there is room, large ones are answered.
    assert client.predict.Predict(predict_request(), timeout=TIMEOUT).outputs["y"]
    budget.release(budget.limit)
    assert client.predict.Predict(filled_out(40_000), timeout=TIMEOUT).outputs["y"]
    assert budget.used == 0
    # One that could never fit is refused at once.
    code, message = failure(client.predict.Predict, filled_out(1 << 19))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "more than server.max_decoding_bytes (1048576)" in message
    assert metrics.registry.get_sample_value(
        "modelwatch_refused_total", {"transport": "grpc", "reason": "decode_budget"}
    ) == 2


@pytest.mark.parametrize(
    ("spec", "served"),
    [({}, 124), ({"version": 123}, 123), ({"version_label": "stable"}, 123),
     ({"version_label": "canary"}, 124)],
    ids=["latest", "version", "label-stable", "label-canary"],
)
def test_predict_routes_versions_and_labels(
    client: Client, spec: dict[str, Any], served: int
) -> None:
    response = client.predict.Predict(
        predict_request("two", signature_name="serving_default", **spec), timeout=TIMEOUT
    )
    assert response.model_spec.version.value == served
    assert to_numpy(response.outputs["y"]).tolist() == [[3.0], [3.5]]


def test_predict_output_filter(client: Client) -> None:
    request = predict_request()
    request.output_filter.append("y")
    assert list(client.predict.Predict(request, timeout=TIMEOUT).outputs) == ["y"]
    request.output_filter[:] = ["z"]
    assert failure(client.predict.Predict, request) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "output tensor alias not found in signature: z Outputs expected to be in the set {y}.",
    )


@pytest.mark.parametrize(
    ("request_", "status", "message"),
    [
        (predict_request(signature_name="foo"), grpc.StatusCode.FAILED_PRECONDITION,
         'Serving signature key "foo" not found.'),
        (predict_request("nope"), grpc.StatusCode.NOT_FOUND,
         "Servable not found for request: Latest(nope)"),
        (predict_request(version=7), grpc.StatusCode.NOT_FOUND,
         "Servable not found for request: Specific(default, 7)"),
        (predict_request("two", version_label="beta"), grpc.StatusCode.INVALID_ARGUMENT,
         "Unrecognized servable version label: beta"),
        (predict_pb2.PredictRequest(), grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
        (predict_request(x=None), grpc.StatusCode.INVALID_ARGUMENT,
         "input size does not match signature: 0!=1 len({}) != len({x}). Sent extra: {}. "
         "Missing but required: {x}."),
    ],
    ids=["signature", "model", "version", "label", "no-spec", "no-input"],
)
def test_predict_errors_are_tf_serving_statuses(
    client: Client, request_: predict_pb2.PredictRequest, status: grpc.StatusCode, message: str
) -> None:
    assert failure(client.predict.Predict, request_) == (status, message)


def test_predict_refuses_a_tensor_of_the_wrong_type(client: Client) -> None:
    request = predict_request(x=None)
    from_numpy(np.array([[2]], np.int32), proto=request.inputs["x"])
    assert failure(client.predict.Predict, request) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Expects arg[0] to be float but int32 is provided"
    )


def test_predict_refuses_a_malformed_tensor(client: Client) -> None:
    request = predict_request(x=None)
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add().size = 2
    request.inputs["x"].tensor_content = b"\0" * 5
    assert failure(client.predict.Predict, request) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "tensor parsing error: x: tensor_content has 5 bytes but a DT_FLOAT tensor of shape "
        "[2] needs 8",
    )


def test_predict_reads_tensor_content_and_can_answer_with_it(
    serving: Serving, connect: Any
) -> None:
    client = connect(GrpcApi(serving.dataplane, tensor_content=True))
    request = predict_request(x=None)
    from_numpy(np.array([[2.0]], np.float32), tensor_content=True, proto=request.inputs["x"])
    y = client.predict.Predict(request, timeout=TIMEOUT).outputs["y"]
    assert y.tensor_content and not y.float_val
    assert to_numpy(y).tolist() == [[3.0]]


# ---- Classify, Regress, MultiInference -------------------------------------------------


def test_classify(client: Client) -> None:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "classify_x_to_y"
    example_input(request.input, 2.0)
    response = client.predict.Classify(request, timeout=TIMEOUT)
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("default", 123, "classify_x_to_y")
    ((only,),) = [c.classes for c in response.result.classifications]
    assert (only.label, only.score) == ("", 3.0)


@pytest.mark.parametrize(
    ("signature", "answers"),
    [("regress_x_to_y", [3.0, 7.0]), ("regress_x_to_y2", [4.0, 8.0])],
)
def test_regress_with_context(client: Client, signature: str, answers: list[float]) -> None:
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = signature
    example_input(request.input, 2.0, float("nan"), context=10.0)
    response = client.predict.Regress(request, timeout=TIMEOUT)
    assert [r.value for r in response.result.regressions] == answers
    assert response.model_spec.signature_name == signature


def test_classify_and_regress_errors(client: Client) -> None:
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "default"
    example_input(request.input, 2.0)
    code, message = failure(client.predict.Regress, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("No regression inputs found in SignatureDef: ")
    request.model_spec.signature_name = "regress_x_to_y"
    request.input.Clear()
    assert failure(client.predict.Regress, request) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Input is empty."
    )
    assert failure(client.predict.Classify, classification_pb2.ClassificationRequest()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"
    )


def test_multi_inference(client: Client) -> None:
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress_x_to_y", "tensorflow/serving/regress"),
                              ("classify_x_to_y", "tensorflow/serving/classify")):
        task = request.tasks.add(method_name=method)
        task.model_spec.name = "two"
        task.model_spec.signature_name = signature
        task.model_spec.version_label = "stable"
    example_input(request.input, 2.0)
    regression, classification = client.predict.MultiInference(request, timeout=TIMEOUT).results
    assert regression.model_spec.version.value == 123
    assert regression.model_spec.signature_name == "regress_x_to_y"
    assert [r.value for r in regression.regression_result.regressions] == [3.0]
    assert classification.classification_result.classifications[0].classes[0].score == 3.0
    request.tasks[1].model_spec.name = "default"
    assert failure(client.predict.MultiInference, request) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
    )


# ---- GetModelMetadata -----------------------------------------------------------------


def test_metadata_matches_tf_servings_reference(client: Client, tfserving_testdata: Path) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "default"
    response = client.predict.GetModelMetadata(request, timeout=TIMEOUT)
    assert (response.model_spec.name, response.model_spec.version.value) == ("default", 123)
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_defs)
    printed = json_format.MessageToDict(
        signature_defs, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    reference = json.loads((tfserving_testdata / "half_plus_two_model_metadata.json").read_text())
    assert printed == reference["metadata"]["signature_def"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [([], "GetModelMetadataRequest must specify at least one metadata_field"),
     (["signature_def", "graph"], "Metadata field graph is not supported")],
)
def test_metadata_fields_are_checked(client: Client, fields: list[str], message: str) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
    request.model_spec.name = "default"
    assert failure(client.predict.GetModelMetadata, request) == (
        grpc.StatusCode.INVALID_ARGUMENT, message
    )


# ---- ModelService -------------------------------------------------------------------


def status_request(model: str, version: int | None = None) -> Any:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    return request


def test_model_status(client: Client) -> None:
    response = client.models.GetModelStatus(status_request("two"), timeout=TIMEOUT)
    assert [(s.version, s.state, s.status.error_code, s.status.error_message)
            for s in response.model_version_status] == [
        (124, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0, ""),
        (123, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0, ""),
    ]
    response = client.models.GetModelStatus(status_request("two", 123), timeout=TIMEOUT)
    assert [s.version for s in response.model_version_status] == [123]
    assert failure(client.models.GetModelStatus, status_request("nope")) == (
        grpc.StatusCode.NOT_FOUND, "Could not find any versions of model nope"
    )
    assert failure(client.models.GetModelStatus, status_request("default", 7)) == (
        grpc.StatusCode.NOT_FOUND, "Could not find version 7 of model default"
    )


def reload_request(text: str) -> model_management_pb2.ReloadConfigRequest:
    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(parse_text(text))
    return request


def parse_text(text: str) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def test_reload_without_a_reload_function_is_unimplemented(client: Client) -> None:
    code, _ = failure(client.models.HandleReloadConfigRequest, reload_request(NO_MODELS))
    assert code == grpc.StatusCode.UNIMPLEMENTED


@pytest.fixture
def reloadable(tfserving_testdata: Path, connect: Any) -> Iterator[tuple[Serving, Client]]:
    fresh = Serving()
    fresh.apply(parse_model_server_config(config_text(tfserving_testdata, DEFAULT)))
    yield fresh, connect(GrpcApi(fresh.dataplane, reload=fresh.reload))
    fresh.manager.stop()


def test_reload_adds_and_removes_models(
    reloadable: tuple[Serving, Client], tfserving_testdata: Path
) -> None:
    serving, client = reloadable
    both = reload_request(config_text(tfserving_testdata, DEFAULT, ONE_OF_TWO))
    response = client.models.HandleReloadConfigRequest(both, timeout=TIMEOUT)
    assert response.status.error_code == 0 and response.status.error_message == ""
    answer = client.predict.Predict(predict_request("b"), timeout=TIMEOUT)
    assert answer.model_spec.version.value == 124
    only_b = reload_request(config_text(tfserving_testdata, ONE_OF_TWO))
    client.models.HandleReloadConfigRequest(only_b, timeout=TIMEOUT)
    assert serving.manager.models() == ["b"]
    code, _ = failure(client.predict.Predict, predict_request("default"))
    assert code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('model_config_list { config { name: "x" base_path: "/x" model_platform: "pytorch" } }',
         'config[0] (model "x"): model_platform "pytorch" is not supported; modelwatch serves '
         'only "tensorflow"'),
        ('custom_model_config { type_url: "x" }',
         "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
         "ModelConfigList is currently supported"),
    ],
    ids=["platform", "custom"],
)
def test_an_invalid_reload_changes_nothing(
    reloadable: tuple[Serving, Client], text: str, message: str
) -> None:
    serving, client = reloadable
    assert failure(client.models.HandleReloadConfigRequest, reload_request(text)) == (
        grpc.StatusCode.INVALID_ARGUMENT, message
    )
    assert serving.manager.models() == ["default"]
    answer = client.predict.Predict(predict_request(), timeout=TIMEOUT)
    assert answer.model_spec.version.value == 123


def test_a_reload_that_fails_reports_its_error(serving: Serving, connect: Any) -> None:
    def refuse(config: model_server_config_pb2.ModelServerConfig, timeout: float | None) -> None:
        raise ServingError("1 model(s) did not become available", Code.UNKNOWN)

    client = connect(GrpcApi(serving.dataplane, reload=refuse))
    assert failure(client.models.HandleReloadConfigRequest, reload_request(NO_MODELS)) == (
        grpc.StatusCode.UNKNOWN, "1 model(s) did not become available"
    )


def test_requests_are_counted_with_their_status(serving: Serving, connect: Any) -> None:
    metrics = Metrics()
    client = connect(GrpcApi(serving.dataplane, metrics=metrics))
    client.predict.Predict(predict_request(), timeout=TIMEOUT)
    failure(client.predict.Predict, predict_request(signature_name="foo"))

    def count(status: str) -> float | None:
        labels = {"model": "default", "api": "predict", "transport": "grpc", "status": status}
        return metrics.registry.get_sample_value("modelwatch_requests_total", labels)

    assert (count("OK"), count("FAILED_PRECONDITION")) == (1.0, 1.0)


# ---- the server's life ----------------------------------------------------------------


def test_long_messages_are_cut_like_tf_serving(serving: Serving, connect: Any) -> None:
    def refuse(config: model_server_config_pb2.ModelServerConfig, timeout: float | None) -> None:
        raise ServingError("x" * 2000, Code.INVALID_ARGUMENT)

    client = connect(GrpcApi(serving.dataplane, reload=refuse))
    _, message = failure(client.models.HandleReloadConfigRequest, reload_request(NO_MODELS))
    assert message == "x" * 1024 + "...TRUNCATED"


def test_stop_lets_rpcs_in_flight_finish_and_refuses_new_ones(serving: Serving) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_reload(
        config: model_server_config_pb2.ModelServerConfig, timeout: float | None
    ) -> None:
        entered.set()
        release.wait(TIMEOUT)

    server = GrpcServer(GrpcApi(serving.dataplane, reload=slow_reload), max_workers=2)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        in_flight = models.HandleReloadConfigRequest.future(
            reload_request(NO_MODELS), timeout=TIMEOUT
        )
        assert entered.wait(TIMEOUT)
        assert any(t.name.startswith("modelwatch-grpc") for t in threading.enumerate())
        server.stop(grace_seconds=TIMEOUT)
        server.stop(grace_seconds=0)  # idempotent: the first grace period holds
        with pytest.raises(grpc.RpcError) as refused:
            models.GetModelStatus(status_request("default"), timeout=TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert refused.value.details() == "the server is shutting down"
        release.set()
        assert in_flight.result(TIMEOUT).status.error_code == 0
    server.join(TIMEOUT)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", server.port)) != 0  # the port closed after
    assert not [t for t in threading.enumerate() if t.name.startswith("modelwatch-grpc")]


def test_a_port_in_use_is_refused(client: Client, serving: Serving) -> None:
    with pytest.raises(OSError, match=f"cannot listen for gRPC on 127.0.0.1:{client.server.port}"):
        GrpcServer(GrpcApi(serving.dataplane), "127.0.0.1", client.server.port)


def test_an_unstarted_server_stops_and_joins(serving: Serving) -> None:
    server = GrpcServer(GrpcApi(serving.dataplane))
    assert server.port > 0
    server.stop(0)
    server.join(5)
