"""The KubeRay files (deploy/kuberay/): the RayService is valid for KubeRay's own CRD schema
(tests/deploy/kuberay/, offline), strictly, as `kubectl apply --validate=strict` would
check it; its Serve config is valid for Ray Serve and builds modelwatch's application from
the ConfigMap's config; every Ray pod has the config, the credentials and the same Serve
settings; the Ray versions agree."""

from __future__ import annotations

import copy
import functools
import importlib.metadata
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from loader.config.schema import parse_config
from tests.deploy.crd_schema import CrdSchema
from tests.deploy.test_manifests import KUBERNETES_VERSION

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "deploy" / "kuberay"
CRD = Path(__file__).resolve().parent / "kuberay" / "ray.io_rayservices.yaml"

RAY_SERVICE = yaml.safe_load((KUBERAY / "rayservice.yaml").read_text())
CONFIG_MAP = yaml.safe_load((KUBERAY / "configmap.yaml").read_text())
SERVE_CONFIG = yaml.safe_load(RAY_SERVICE["spec"]["serveConfigV2"])
(APPLICATION,) = SERVE_CONFIG["applications"]
CLUSTER = RAY_SERVICE["spec"]["rayClusterConfig"]
GROUPS = [CLUSTER["headGroupSpec"], *CLUSTER["workerGroupSpecs"]]


@functools.cache
def _schema() -> CrdSchema:
    return CrdSchema(CRD, "v1")


def _errors(document: dict[str, Any]) -> list[str]:
    return _schema().errors(document)


def _containers() -> list[dict[str, Any]]:
    return [c for group in GROUPS for c in group["template"]["spec"]["containers"]]


def test_the_rayservice_is_valid_for_kuberays_crd() -> None:
    assert (RAY_SERVICE["apiVersion"], RAY_SERVICE["kind"]) == ("ray.io/v1", "RayService")
    assert _errors(RAY_SERVICE) == []


def test_the_crd_check_refuses_a_misspelt_field_and_a_wrong_type() -> None:
    misspelt = copy.deepcopy(RAY_SERVICE)
    misspelt["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "imagePullPolcy"] = "IfNotPresent"
    assert any("imagePullPolcy" in error for error in _errors(misspelt))
    wrong_type = copy.deepcopy(RAY_SERVICE)
    wrong_type["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "2"
    assert any("replicas" in error for error in _errors(wrong_type))


def test_the_configmap_is_valid_for_kubernetes_and_its_config_validates() -> None:
    kubernetes_validate.validate(CONFIG_MAP, KUBERNETES_VERSION, strict=True)
    config = parse_config(yaml.safe_load(CONFIG_MAP["data"]["config.yaml"]), "config")
    assert all(m.base_path.startswith("s3://") for m in config.models)


def test_the_serve_config_is_ray_serves_and_builds_modelwatchs_application(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray Serve is not installed: pip install 'modelwatch[ray]'")
    from ray.serve.schema import ServeDeploySchema

    from loader.cluster.application import build

    ServeDeploySchema.model_validate(SERVE_CONFIG)
    assert APPLICATION["import_path"] == "loader.cluster.application:build"
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG_MAP["data"]["config.yaml"])
    assert build({**APPLICATION["args"], "config": str(config)}) is not None


def test_every_ray_pod_reads_the_config_where_the_builder_does_and_the_s3_secret() -> None:
    config_dir = Path(APPLICATION["args"]["config"]).parent
    config_name = CONFIG_MAP["metadata"]["name"]
    for group in GROUPS:
        pod = group["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            mounts = {Path(m["mountPath"]): m["name"] for m in container["volumeMounts"]}
            assert volumes[mounts[config_dir]]["configMap"]["name"] == config_name
            assert [e["secretRef"]["name"] for e in container["envFrom"]] == ["modelwatch-s3"]


def test_the_workers_have_room_for_every_replica_and_the_cache() -> None:
    args = APPLICATION["args"]
    needed = int(args["replicas"]) * float(args["num_cpus"])
    workers = CLUSTER["workerGroupSpecs"]
    assert sum(g["minReplicas"] * float(g["rayStartParams"]["num-cpus"]) for g in workers) >= needed
    cache_dir = parse_config(yaml.safe_load(CONFIG_MAP["data"]["config.yaml"]), "config").storage.cache_dir
    for group in workers:
        pod = group["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts[cache_dir]]


def test_the_ray_versions_agree_with_the_image_and_the_tests() -> None:
    version = CLUSTER["rayVersion"]
    (base,) = [line.split()[1] for line in (KUBERAY / "Dockerfile").read_text().splitlines()
               if line.startswith("FROM ")]
    assert base.startswith(f"rayproject/ray:{version}-")
    pytest.importorskip("ray", reason="Ray Serve is not installed: pip install 'modelwatch[ray]'")
    assert importlib.metadata.version("ray") == version
    images = {c["image"] for c in _containers()}
    assert len(images) == 1, "every Ray pod runs the same image"


def test_the_endpoint_is_modelwatchs_balancer_on_the_head_not_serves_proxy() -> None:
    # Serve's Python proxy off: requests go from the balancer straight to the replicas.
    assert SERVE_CONFIG["proxy_location"] == "Disabled"
    args = APPLICATION["args"]
    assert args["host"] == "0.0.0.0"
    (head,) = CLUSTER["headGroupSpec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert (ports["rest"], ports["grpc"]) == (int(args["rest_port"]), int(args["grpc_port"]))
