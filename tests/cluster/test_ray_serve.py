"""End to end on a real local Ray cluster (a head and a second node, `ray start` on this
machine) with `modelwatch ray` deploying 2 replicas that serve from moto's S3 server:
version 2 is published while 8 clients send requests through Serve's HTTP proxy.

Version v of the test model answers y = 0.5 * x + v, so every answer names its version.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster.ray_cluster import Deployment, LocalRayCluster
from tests.daemon_process import wait_until
from tests.s3_storage import CREDENTIALS, bucket_client
from tests.s3_storage import upload as _upload

pytest.importorskip("ray", reason="Ray Serve is not installed: pip install 'modelwatch[ray]'")
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

BUCKET = "models"
CLIENTS = 8
upload = partial(_upload, bucket=BUCKET)


@pytest.fixture
def s3(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    yield from bucket_client(moto_server, BUCKET, monkeypatch)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalRayCluster]:
    # One CPU per node and one per replica: the two replicas land on different nodes.
    ray_cluster = LocalRayCluster(tmp_path, head_cpus=1, node_cpus=1, env=CREDENTIALS)
    try:
        yield ray_cluster.start()
    finally:
        ray_cluster.stop()


def version_of(answer: float) -> int:
    return round(answer - 0.5 * 2.0)


def test_a_rollout_flips_every_replica_at_once_with_no_failed_request_and_no_going_back(
    tmp_path: Path, s3: Any, moto_server: str, cluster: LocalRayCluster, model_builder: Any
) -> None:
    upload(s3, model_builder.built(1), "repo/m/1")
    deployment = Deployment(tmp_path, cluster, CREDENTIALS, {
        "storage": {"cache_dir": str(tmp_path / "cache"),
                    "s3": {"endpoint_url": moto_server, "region": "us-east-1"}},
        "watch": {"poll_interval_seconds": 0.3},
        "loading": {"max_retries": 0},
        "models": [{"name": "m", "base_path": f"s3://{BUCKET}/repo/m"}],
    })
    try:
        wait_until(lambda: deployment.serves(1 + 1.0), 400, "version 1 to serve through Serve")

        def serving_nodes() -> set[str]:
            table = deployment.replicas()["replicas"]
            return {r["node"] for r in table if r["live"] and r["serving"]}

        wait_until(lambda: len(serving_nodes()) == 2, 300, "a serving replica on each node")

        seen: list[list[int]] = [[] for _ in range(CLIENTS)]
        failures: list[str] = []
        stop = threading.Event()

        def client(index: int) -> None:
            with httpx.Client() as http:
                while not stop.is_set():
                    try:
                        seen[index].append(version_of(deployment.answer(http)))
                    except Exception as exc:  # every failure counts, whatever it is
                        failures.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: all(seen), 60, "every client to be answered")
            upload(s3, model_builder.built(2), "repo/m/2")

            def all_on_2() -> bool:
                live = [r for r in deployment.replicas()["replicas"] if r["live"]]
                return len(live) == 2 and all(
                    r["models"]["m"]["routed"] == [2] and r["models"]["m"]["available"] == [2]
                    for r in live
                )

            wait_until(all_on_2, 300, "both replicas to route version 2 and unload version 1")
            counts = [len(s) for s in seen]
            wait_until(lambda: all(len(s) > c for s, c in zip(seen, counts)), 60,
                       "every client to be answered after the rollout")
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        assert not failures, failures[:5]
        for versions in seen:
            assert versions[-1] == 2
            first_2 = versions.index(2)
            assert set(versions[first_2:]) == {2}, "a client saw version 2, then version 1"
        rollouts = deployment.replicas()["rollouts"]["m"]
        assert (rollouts["routed"], rollouts["stage"]) == ([2], "steady")
        status = httpx.get(f"{deployment.url}/v1/models/m", timeout=10).json()
        assert status["model_version_status"][0]["version"] == "2"
        assert status["model_version_status"][0]["state"] == "AVAILABLE"
    except BaseException:
        print(deployment.log())
        print(cluster.log())
        raise
    finally:
        deployment.stop()
