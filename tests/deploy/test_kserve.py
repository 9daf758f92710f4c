"""The KServe files (deploy/kserve/): the ServingRuntime and the InferenceService are valid
for KServe's own CRD schemas (tests/deploy/kserve/, offline), strictly, as `kubectl apply
--validate=strict` would check them; the InferenceService picks the runtime by name, format
and protocol; the runtime's args are TF Serving flags modelwatch reads, with the ports and
paths KServe expects."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

from loader.config.tfs_flags import parse_tfs_flags
from tests.deploy.crd_schema import CrdSchema

ROOT = Path(__file__).resolve().parents[2]
KSERVE = ROOT / "deploy" / "kserve"
CRDS = Path(__file__).resolve().parent / "kserve"

RUNTIME = yaml.safe_load((KSERVE / "servingruntime.yaml").read_text())
SERVICE = yaml.safe_load((KSERVE / "inferenceservice.yaml").read_text())
(CONTAINER,) = RUNTIME["spec"]["containers"]
MODEL = SERVICE["spec"]["predictor"]["model"]
KSERVE_REST_PORT = 8080  # where KServe sends REST (and Knative's queue proxy)
KSERVE_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts storageUri


@functools.cache
def _schema(crd: str, version: str) -> CrdSchema:
    return CrdSchema(CRDS / crd, version)


def _runtime_errors(document: dict[str, Any]) -> list[str]:
    return _schema("serving.kserve.io_servingruntimes.yaml", "v1alpha1").errors(document)


def _service_errors(document: dict[str, Any]) -> list[str]:
    return _schema("serving.kserve.io_inferenceservices.yaml", "v1beta1").errors(document)


def test_the_serving_runtime_is_valid_for_kserves_crd() -> None:
    assert (RUNTIME["apiVersion"], RUNTIME["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    assert _runtime_errors(RUNTIME) == []


def test_the_inference_service_is_valid_for_kserves_crd() -> None:
    assert (SERVICE["apiVersion"], SERVICE["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert _service_errors(SERVICE) == []


def test_the_crd_checks_refuse_a_misspelt_field_and_a_wrong_type() -> None:
    misspelt = copy.deepcopy(RUNTIME)
    misspelt["spec"]["containers"][0]["imagePullPolcy"] = "IfNotPresent"
    assert any("imagePullPolcy" in error for error in _runtime_errors(misspelt))
    wrong_type = copy.deepcopy(SERVICE)
    wrong_type["spec"]["predictor"]["model"]["modelFormat"] = "tensorflow"
    assert any("modelFormat" in error for error in _service_errors(wrong_type))


def test_the_service_selects_the_runtime_by_name_format_and_protocol() -> None:
    assert MODEL["runtime"] == RUNTIME["metadata"]["name"]
    formats = {f["name"] for f in RUNTIME["spec"]["supportedModelFormats"]}
    assert formats == {"tensorflow"} and MODEL["modelFormat"]["name"] == "tensorflow"
    assert MODEL["protocolVersion"] == "v2"
    # The Open Inference Protocol and TF Serving's (KServe's v1 is TF Serving's REST predict).
    assert set(RUNTIME["spec"]["protocolVersions"]) == {"v2", "grpc-v2", "v1", "grpc-v1"}
    assert MODEL["storageUri"].startswith("s3://")


def test_the_args_are_tf_serving_flags_serving_kserves_model_dir_on_its_port() -> None:
    args = [arg.replace("{{.Name}}", SERVICE["metadata"]["name"]) for arg in CONTAINER["args"]]
    serve = parse_tfs_flags(args, environ={}, cwd=ROOT)
    (model,) = serve.config.models
    assert (model.name, model.base_path) == (SERVICE["metadata"]["name"], KSERVE_MODEL_DIR)
    assert serve.config.server.host == "0.0.0.0"
    assert serve.rest_api_enabled and serve.config.server.rest_port == KSERVE_REST_PORT
    assert [p["containerPort"] for p in CONTAINER["ports"]] == [KSERVE_REST_PORT]
    annotations = RUNTIME["spec"]["annotations"]
    assert int(annotations["prometheus.kserve.io/port"]) == KSERVE_REST_PORT
    assert annotations["prometheus.kserve.io/path"] == serve.metrics_path
    for probe in ("readinessProbe", "livenessProbe"):
        assert CONTAINER[probe]["httpGet"]["port"] == KSERVE_REST_PORT
