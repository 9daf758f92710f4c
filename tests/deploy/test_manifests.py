"""The container and Kubernetes files (Dockerfile, deploy/): valid against Kubernetes' own
schemas, and consistent with modelwatch: the config they mount validates, ports, probes,
users, paths and grace periods agree with the image and with the daemon, and the probe
paths answer 200 on a real daemon run with the ConfigMap's config."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from loader.app.daemon import DRAIN_SECONDS
from loader.config.schema import Config, parse_config
from tests.daemon_process import DaemonProcess

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.32"  # a version every supported cluster (1.29+) reads these as


def _resources() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            found[doc["kind"]] = doc
    return found


RESOURCES = _resources()
DEPLOYMENT = RESOURCES["Deployment"]
POD = DEPLOYMENT["spec"]["template"]
CONTAINER = POD["spec"]["containers"][0]


def _config(text: str) -> Config:
    return parse_config(yaml.safe_load(text), "config")


CONFIG = _config(RESOURCES["ConfigMap"]["data"]["config.yaml"])


def _dockerfile() -> list[tuple[str, str]]:
    """The final stage's instructions, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    stages: list[list[tuple[str, str]]] = []
    for line in lines:
        op, _, rest = line.partition(" ")
        if op.upper() == "FROM":
            stages.append([])
        stages[-1].append((op.upper(), rest.strip()))
    return stages[-1]


def _instruction(op: str) -> list[str]:
    values = [rest for name, rest in _dockerfile() if name == op]
    assert len(values) == 1, f"one {op} in the Dockerfile's final stage"
    return list(json.loads(values[0])) if values[0].startswith("[") else shlex.split(values[0])


@pytest.mark.parametrize("kind", sorted(RESOURCES))
def test_every_manifest_is_valid_for_kubernetes(kind: str) -> None:
    kubernetes_validate.validate(RESOURCES[kind], KUBERNETES_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    present = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == present


def test_the_configmap_config_serves_beyond_loopback_on_tf_servings_ports() -> None:
    assert CONFIG.server.host == "0.0.0.0"
    assert (CONFIG.server.rest_port, CONFIG.server.grpc_port) == (8501, 8500)
    assert all(m.base_path.startswith("s3://") for m in CONFIG.models)


def test_ports_agree_between_config_container_and_service() -> None:
    ports = {p["name"]: p["containerPort"] for p in CONTAINER["ports"]}
    assert ports == {"rest": CONFIG.server.rest_port, "grpc": CONFIG.server.grpc_port}
    service = RESOURCES["Service"]["spec"]
    assert {p["targetPort"] for p in service["ports"]} == set(ports)
    assert POD["metadata"]["annotations"]["prometheus.io/port"] == str(ports["rest"])


def test_selectors_match_the_pods() -> None:
    labels = POD["metadata"]["labels"]
    for selector in (
        DEPLOYMENT["spec"]["selector"]["matchLabels"],
        RESOURCES["Service"]["spec"]["selector"],
        RESOURCES["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    target = RESOURCES["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", DEPLOYMENT["metadata"]["name"])


def test_probes_are_readiness_on_readyz_and_liveness_on_healthz() -> None:
    probes = {key: CONTAINER[key]["httpGet"] for key in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/healthz"
    assert {p["port"] for p in probes.values()} == {"rest"}
    # Ports open after the initial loads, at the latest after their bound: the startup probe
    # must outlast it, or a slow first load gets the pod killed before it could serve.
    startup = CONTAINER["startupProbe"]
    bound = CONFIG.loading.initial_load_timeout_seconds
    assert bound is not None, "an unbounded initial load needs no liveness probe at all"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= bound + 30


def test_the_grace_period_covers_pre_stop_and_the_daemons_drain() -> None:
    command = CONTAINER["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert POD["spec"]["terminationGracePeriodSeconds"] >= int(command[1]) + DRAIN_SECONDS


def test_the_config_is_mounted_where_the_args_read_it() -> None:
    args = CONTAINER["args"]
    config_path = Path(args[args.index("--config") + 1])
    mounts = {Path(m["mountPath"]): m["name"] for m in CONTAINER["volumeMounts"]}
    volumes = {v["name"]: v for v in POD["spec"]["volumes"]}
    volume = volumes[mounts[config_path.parent]]
    assert volume["configMap"]["name"] == RESOURCES["ConfigMap"]["metadata"]["name"]
    assert config_path.name in RESOURCES["ConfigMap"]["data"]


def test_a_read_only_root_leaves_the_cache_writable() -> None:
    assert CONTAINER["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in CONTAINER["volumeMounts"]}
    volumes = {v["name"]: v for v in POD["spec"]["volumes"]}
    for path in (CONFIG.storage.cache_dir, "/tmp"):
        assert "emptyDir" in volumes[mounts[path]], path


def test_s3_credentials_come_from_the_secret() -> None:
    secret = RESOURCES["Secret"]
    refs = [e["secretRef"]["name"] for e in CONTAINER["envFrom"]]
    assert refs == [secret["metadata"]["name"]]
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_the_image_runs_modelwatch_serve_as_the_pods_user() -> None:
    user = _instruction("USER")
    assert user != ["0"] and user != ["root"]
    assert int(user[0]) == POD["spec"]["securityContext"]["runAsUser"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert _instruction("ENTRYPOINT") == ["modelwatch", "serve"] and "modelwatch" in scripts
    assert _instruction("CMD") == CONTAINER["args"]
    assert {int(p) for p in _instruction("EXPOSE")} == {p["containerPort"] for p in CONTAINER["ports"]}


def test_the_images_default_config_validates_and_its_cache_is_made_for_the_user() -> None:
    copies = [shlex.split(rest) for op, rest in _dockerfile() if op == "COPY" and "--from" not in rest]
    (source, _), = [c for c in copies if c[-1] == _instruction("CMD")[-1]]
    default = _config((ROOT / source).read_text())
    assert default.server.host == "0.0.0.0"
    runs = " ".join(rest for op, rest in _dockerfile() if op == "RUN")
    assert f"chown modelwatch {default.storage.cache_dir}" in runs


def test_the_build_copies_what_exists_and_is_not_ignored() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    text = (ROOT / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            source = shlex.split(line)[1]
            assert (ROOT / source).exists(), source
            assert source not in ignored and source.split("/")[0] not in ignored, source


@pytest.mark.e2e
def test_the_probe_paths_answer_on_a_daemon_with_the_configmaps_config(
    tmp_path: Path, model_builder: Any
) -> None:
    """The ConfigMap's config with local storage and loopback ports: every path a probe or
    Prometheus' annotation names answers 200 once the model is loaded."""
    data = yaml.safe_load(RESOURCES["ConfigMap"]["data"]["config.yaml"])
    data["server"].update(host="127.0.0.1", rest_port=0, grpc_port=0)
    data["storage"] = {"cache_dir": str(tmp_path / "cache")}
    model = data["models"][0]
    model["base_path"] = str(tmp_path / "repo")
    model_builder.publish(tmp_path / "repo", 1)
    daemon = DaemonProcess(tmp_path, data).start()
    try:
        daemon.wait_for_states(model["name"], {1: "AVAILABLE"})
        paths = [CONTAINER[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe", "startupProbe")]
        paths.append(POD["metadata"]["annotations"]["prometheus.io/path"])
        for path in paths:
            assert daemon.client.get(path).status_code == 200, path
    finally:
        assert daemon.stop() == 0


def test_both_images_build_with_setup_py_which_generates_the_v2_grpc_code() -> None:
    for dockerfile in (ROOT / "Dockerfile", ROOT / "deploy" / "kuberay" / "Dockerfile"):
        copies = [line.split() for line in dockerfile.read_text().splitlines()
                  if line.startswith("COPY")]
        assert any("pyproject.toml" in c and "setup.py" in c for c in copies), dockerfile
