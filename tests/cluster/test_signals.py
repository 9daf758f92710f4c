"""`modelwatch ray` stops on SIGTERM (what Kubernetes and systemd send) as on SIGINT: it
exits 0 and deletes its Serve application, so no replica outlives it. Ray's driver takes
SIGTERM over in `ray.init` (and aborts on it); loader/cluster/application.py takes it back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.ray_cluster import HEAD_IP, Deployment, LocalRayCluster
from tests.daemon_process import wait_until

pytest.importorskip("ray", reason="Ray Serve is not installed: pip install 'modelwatch[ray]'")
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

# A separate driver's view of Serve: the applications and the named actors still alive.
PROBE = (
    "import json, sys, ray; from ray import serve; "
    f"ray.init(address=sys.argv[1], logging_level='ERROR', _node_ip_address='{HEAD_IP}'); "
    "print(json.dumps({'applications': sorted(serve.status().applications), "
    "'actors': sorted(a['name'] for a in ray.util.list_named_actors(all_namespaces=True))}))"
)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalRayCluster]:
    ray_cluster = LocalRayCluster(tmp_path)
    try:
        yield ray_cluster.start()
    finally:
        ray_cluster.stop()


def serve_state(cluster: LocalRayCluster) -> dict[str, list[str]]:
    result = subprocess.run([sys.executable, "-c", PROBE, cluster.address], capture_output=True,
                            text=True, timeout=120, env={**os.environ, **cluster.env})
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_sigterm_exits_0_and_deletes_the_application(
    tmp_path: Path, cluster: LocalRayCluster, model_builder: Any
) -> None:
    model_builder.publish(tmp_path / "repo" / "m", 1)  # y = 0.5 * x + 1
    with Deployment(tmp_path, cluster, {}, {
        "storage": {"cache_dir": str(tmp_path / "cache")},
        "models": [{"name": "m", "base_path": str(tmp_path / "repo" / "m")}],
    }, replicas=1) as deployment:
        wait_until(lambda: deployment.serves(2.0), 400, "version 1 to serve through Serve")
        assert "modelwatch" in serve_state(cluster)["applications"]
        assert deployment.stop() == 0, deployment.log()

        def deleted() -> bool:
            state = serve_state(cluster)
            return not state["applications"] and not any(
                name.startswith("SERVE_REPLICA::modelwatch#") for name in state["actors"])

        wait_until(deleted, 120, "the application and its replicas to be gone", interval=1)
