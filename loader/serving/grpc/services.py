"""TF Serving's gRPC API (`PredictionService`, `ModelService`) over the data plane.

The servicers are thin: they turn requests into data-plane calls and answers into
protos, and every `ServingError` into a gRPC status with the same code and message
(messages over 1,024 characters are cut the way TF Serving cuts them). Where TF Serving's
gRPC path words an error differently from its REST path, the gRPC wording is used here:
an unknown Predict signature is FAILED_PRECONDITION `Serving signature key "x" not
found.`, a tensor that does not parse is `tensor parsing error: x`, a tensor of the wrong
type `Expects arg[0] to be float but int32 is provided` (TensorFlow's session check).
A Predict's inputs are checked and sized before they are decoded (`predict_inputs`).

`grpc_server.GrpcServer` runs the servicers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, cast

import grpc
from google.protobuf import message
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from loader.base import (
    DEFAULT_SIGNATURE,
    FailedPrecondition,
    InvalidArgument,
    SignatureInfo,
)
from loader.manager.handles import Lease
from loader.servables.inference import (
    CLASSIFY_METHOD,
    Classes,
    Task,
    check_one_model,
    classify,
    multi_inference,
    regress,
    serialized_examples,
    signature_def_map,
)
from loader.serving.dataplane import DataPlane
from loader.serving.decode_budget import DecodeBudget
from loader.serving.grpc.answers import Answerer, Response
from loader.serving.grpc.health import HealthService
from loader.serving.grpc.open_inference_grpc_pb2_grpc import (
    add_GRPCInferenceServiceServicer_to_server,
)
from loader.serving.grpc.predict_inputs import (
    DEFAULT_MAX_DECODED_BYTES,
    DEFAULT_MAX_DECODING_BYTES,
    PredictInputs,
)
from loader.serving.grpc.reload_auth import ReloadGuard
from loader.serving.grpc.reload_config import ConfigReload, ReloadFn
from loader.serving.grpc.v2_service import InferenceService
from loader.serving.metrics import Metrics
from loader.serving.prediction_protos import (
    fill_classifications,
    fill_predict_response,
    fill_regressions,
    set_spec,
)
from loader.serving.request_log import RequestLog

SIGNATURE_DEF = "signature_def"
# Answers of up to this many values are encoded on the event loop (microseconds); larger
# ones on a worker thread.
INLINE_OUTPUT_VALUES = 16 * 1024


def _requested(spec_holder: Any) -> tuple[str, int | None, str | None]:
    """Model name, version and label of a request's model_spec (TF Serving's checks)."""
    if not spec_holder.HasField("model_spec"):
        raise InvalidArgument("Missing ModelSpec")
    return _spec_target(spec_holder.model_spec)


def _spec_target(spec: model_pb2.ModelSpec) -> tuple[str, int | None, str | None]:
    choice = spec.WhichOneof("version_choice")
    version = spec.version.value if choice == "version" else None
    label = spec.version_label if choice == "version_label" else None
    return spec.name, version, label


def _signature(lease: Lease, name: str) -> SignatureInfo:
    """The signature a Predict names, with TF Serving's gRPC wording when it is not there."""
    signature = lease.servable.signatures.get(name)
    if signature is None:
        raise FailedPrecondition(f'Serving signature key "{name}" not found.')
    return signature


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress, MultiInference and GetModelMetadata."""

    def __init__(
        self,
        dataplane: DataPlane,
        answer: Answerer,
        *,
        check_method_name: bool,
        tensor_content: bool,
        inputs: PredictInputs,
        request_log: RequestLog,
    ) -> None:
        self._dataplane = dataplane
        self._answer = answer
        self._check_method_name = check_method_name
        self._tensor_content = tensor_content
        self._inputs = inputs
        self._log = request_log

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        """On the event loop: a batched Predict waits for its batch without a thread."""
        return await self._answer.answer_async(
            context, "predict", request.model_spec.name,
            lambda: self._predict_async(request, context.time_remaining()),
        )

    def Classify(
        self, request: classification_pb2.ClassificationRequest, context: grpc.ServicerContext
    ) -> classification_pb2.ClassificationResponse:
        return self._answer(
            context, "classify", request.model_spec.name, lambda: self._classify(request)
        )

    def Regress(
        self, request: regression_pb2.RegressionRequest, context: grpc.ServicerContext
    ) -> regression_pb2.RegressionResponse:
        return self._answer(
            context, "regress", request.model_spec.name, lambda: self._regress(request)
        )

    def MultiInference(
        self, request: inference_pb2.MultiInferenceRequest, context: grpc.ServicerContext
    ) -> inference_pb2.MultiInferenceResponse:
        model = request.tasks[0].model_spec.name if request.tasks else ""
        return self._answer(
            context, "multi_inference", model, lambda: self._multi_inference(request)
        )

    def GetModelMetadata(
        self,
        request: get_model_metadata_pb2.GetModelMetadataRequest,
        context: grpc.ServicerContext,
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        return self._answer(
            context, "metadata", request.model_spec.name, lambda: self._metadata(request)
        )

    async def _predict_async(
        self, request: predict_pb2.PredictRequest, remaining: float | None
    ) -> predict_pb2.PredictResponse:
        """Predict on the event loop: the inputs are checked and sized first, then decoded
        (`PredictInputs`) and queued for their batch or run (`DataPlane.run_async`), which
        drops it if the call's deadline (`remaining` seconds from now) passes first."""
        deadline = None if remaining is None else time.monotonic() + remaining
        loop = asyncio.get_running_loop()
        model, version, label = _requested(request)
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        output_filter = list(request.output_filter) or None
        with await self._dataplane.hold_async(model, version, label) as lease:
            plan = self._inputs.plan(request.inputs, _signature(lease, signature_name))
            outputs = await self._inputs.run(plan, lambda inputs: self._dataplane.run_async(
                lease, signature_name, inputs, output_filter, deadline
            ))
            served = lease.version
        if sum(value.size for value in outputs.values()) <= INLINE_OUTPUT_VALUES:
            response = self._predict_response(model, served, signature_name, outputs)
        else:
            response = await loop.run_in_executor(None, lambda: self._inputs.bounded(
                self._predict_response(model, served, signature_name, outputs)))
        return self._logged("predict_log", request, response, response.model_spec)

    def _predict_response(
        self, model: str, served: int, signature_name: str, outputs: dict[str, Any]
    ) -> predict_pb2.PredictResponse:
        response = predict_pb2.PredictResponse()
        fill_predict_response(response, model, served, signature_name, outputs,
                              tensor_content=self._tensor_content)
        return response

    def _logged(
        self, kind: str, request: message.Message, response: Response, spec: model_pb2.ModelSpec
    ) -> Response:
        """`response`, once a sampled request and its answer are handed to the request log
        (copied into its record on the log's thread: gRPC only reads them meanwhile)."""
        target = self._log.sample(spec.name)
        if target is not None:
            def fill(record: prediction_log_pb2.PredictionLog) -> None:
                entry = getattr(record, kind)
                entry.request.CopyFrom(request)
                entry.response.CopyFrom(response)

            self._log.record(spec.name, target, (spec.name, spec.version.value,
                             spec.signature_name), fill, request.ByteSize() + response.ByteSize())
        return response

    def _classify(
        self, request: classification_pb2.ClassificationRequest
    ) -> classification_pb2.ClassificationResponse:
        model, served, results = self._on_examples(request, classify)
        response = classification_pb2.ClassificationResponse()
        set_spec(response.model_spec, model, served, request.model_spec.signature_name)
        fill_classifications(response.result, results)
        return self._logged("classify_log", request, response, response.model_spec)

    def _regress(
        self, request: regression_pb2.RegressionRequest
    ) -> regression_pb2.RegressionResponse:
        model, served, values = self._on_examples(request, regress)
        response = regression_pb2.RegressionResponse()
        set_spec(response.model_spec, model, served, request.model_spec.signature_name)
        fill_regressions(response.result, values)
        return self._logged("regress_log", request, response, response.model_spec)

    def _on_examples(self, request: Any, infer: Callable[..., Any]) -> tuple[str, int, Any]:
        """Run classify or regress on a request's examples: (model, served version, results)."""
        model, version, label = _requested(request)
        examples = serialized_examples(request.input)
        with self._dataplane.hold(model, version, label) as lease:
            results = infer(
                lease.servable,
                request.model_spec.signature_name,
                examples,
                check_method_name=self._check_method_name,
            )
            return model, lease.version, results

    def _multi_inference(
        self, request: inference_pb2.MultiInferenceRequest
    ) -> inference_pb2.MultiInferenceResponse:
        # As in TF Serving: the first task's model_spec picks the servable.
        first = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
        with self._dataplane.hold(*_spec_target(first)) as lease:
            check_one_model(task.model_spec.name for task in request.tasks)
            results = multi_inference(
                lease.servable,
                [Task(t.model_spec.signature_name, t.method_name) for t in request.tasks],
                serialized_examples(request.input),
                check_method_name=self._check_method_name,
            )
            served = lease.version
        response = inference_pb2.MultiInferenceResponse()
        for task, result in zip(request.tasks, results):
            answer = response.results.add()
            answer.model_spec.CopyFrom(task.model_spec)
            answer.model_spec.version.value = served
            if task.method_name == CLASSIFY_METHOD:
                fill_classifications(answer.classification_result, cast(list[Classes], result))
            else:
                fill_regressions(answer.regression_result, cast(list[float], result))
        spec = response.results[0].model_spec if response.results else first
        return self._logged("multi_inference_log", request, response, spec)

    def _metadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        model, version, label = _requested(request)
        if not request.metadata_field:
            raise InvalidArgument(
                "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for field in request.metadata_field:
            if field != SIGNATURE_DEF:
                raise InvalidArgument(f"Metadata field {field} is not supported")
        with self._dataplane.hold(model, version, label) as lease:
            signature_defs = signature_def_map(lease.servable)
            served = lease.version
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = model
        response.model_spec.version.value = served
        response.metadata[SIGNATURE_DEF].Pack(signature_defs)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus and HandleReloadConfigRequest."""

    def __init__(
        self, dataplane: DataPlane, answer: Answerer, reload: ReloadFn | None, guard: ReloadGuard
    ) -> None:
        self._dataplane = dataplane
        self._answer = answer
        self._reload_config = ConfigReload(reload)
        self._guard = guard

    def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        return self._answer(
            context, "status", request.model_spec.name, lambda: self._status(request)
        )

    def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        # The caller's deadline, taken now: waiting for another reload counts against it.
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining

        def reload() -> model_management_pb2.ReloadConfigResponse:
            self._guard.check(context.invocation_metadata())
            return self._reload_config(request, deadline)

        return self._answer(context, "reload", "", reload)

    def _status(
        self, request: get_model_status_pb2.GetModelStatusRequest
    ) -> get_model_status_pb2.GetModelStatusResponse:
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in self._dataplane.status(*_requested(request)):
            added = response.model_version_status.add(
                version=status.version,
                state=get_model_status_pb2.ModelVersionStatus.State.Value(status.state),
            )
            added.status.error_code = status.error_code.value
            added.status.error_message = status.error_message
        return response


class GrpcApi:
    """TF Serving's servicers and the Open Inference Protocol's (`v2_service`) over one data
    plane; `add_to` registers them on a `grpc.Server`.

    `reload`, when given, applies a `HandleReloadConfigRequest`; without it that RPC
    answers UNIMPLEMENTED. Requests are counted in `metrics` (transport "grpc").
    `check_method_name` is TF Serving's `--enable_signature_method_name_check` (off, as
    there). `tensor_content` makes Predict answer with raw bytes instead of TF Serving's
    default typed fields. A Predict whose inputs decode to more than `max_decoded_bytes`
    is refused; large ones reserve their size in `decode_budget` (shared with REST); a
    large answer past `max_message_bytes` (the server's send limit) is RESOURCE_EXHAUSTED.
    Answered requests of the models `request_log` samples are logged.
    """

    def __init__(
        self,
        dataplane: DataPlane,
        reload: ReloadFn | None = None,
        *,
        metrics: Metrics | None = None,
        check_method_name: bool = False,
        tensor_content: bool = False,
        guard: ReloadGuard | None = None,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
        decode_budget: DecodeBudget | None = None,
        max_message_bytes: int | None = None,
        request_log: RequestLog | None = None,
    ) -> None:
        metrics = metrics or Metrics()
        answer = self._answer = Answerer(metrics)
        inputs = PredictInputs(metrics, decode_budget or DecodeBudget(
            DEFAULT_MAX_DECODING_BYTES), max_decoded_bytes, max_message_bytes)
        self.prediction = PredictionService(
            dataplane, answer, check_method_name=check_method_name, tensor_content=tensor_content,
            inputs=inputs, request_log=request_log or RequestLog(metrics),
        )
        self.inference = InferenceService(dataplane, answer, inputs, metrics)
        self.model = ModelService(dataplane, answer, reload, guard or ReloadGuard(None, "127.0.0.1"))
        self.health = HealthService(dataplane)

    def drain(self) -> None:
        """Answer every new call UNAVAILABLE (and health checks NOT_SERVING) from now on;
        those in flight go on."""
        self._answer.drain()
        self.health.drain()

    @property
    def in_flight(self) -> int:
        """Calls being answered now."""
        return self._answer.in_flight

    def add_to(self, server: grpc.aio.Server) -> None:
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            self.prediction, server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(self.model, server)
        add_GRPCInferenceServiceServicer_to_server(self.inference, server)
        self.health.add_to(server)
